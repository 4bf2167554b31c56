//! A node that is a host device reached over SSH (a vm_group's host, or a device_group
//! node on an ssh-host, qemu-host or board): its job directory there, the node agent
//! installed as its `lava-*` commands, its test shells run on SSH ptys with their
//! MultiNode calls relayed as console markers, and the directory removed afterwards,
//! over a new connection when the old one is what failed.

use std::time::Duration;

use coordinator::relay::Relay;
use hostctl::console::Console;
use hostctl::ssh::{SshSession, shell_quote};
use hostctl::transfer;
use job_schemas::TestShell;

use super::Failure;
use crate::context::{self, GroupContext, NodeDirs, raised_failure, shell_failure};
use crate::files;
use crate::joblog::Level;
use crate::report::CaseReport;
use crate::shell;

/// Where a node's files go on its host.
#[derive(Debug, Clone)]
pub struct HostDirs {
    /// The node's job directory: `bin/` (the `lava-*` commands), `tests/`, caches.
    pub job_dir: String,
    /// The dispatcher's cache on the host (node agent, images), shared by jobs.
    pub cache: String,
}

impl HostDirs {
    pub fn new(host_dir: &str, job_dir: String) -> Self {
        Self {
            job_dir,
            cache: format!("{host_dir}/cache"),
        }
    }

    pub fn bin(&self) -> String {
        format!("{}/bin", self.job_dir)
    }
}

/// A fresh, empty job directory with its `bin/` on the host.
pub async fn make_job_dir(session: &SshSession, dirs: &HostDirs) -> Result<(), Failure> {
    session
        .run(
            &format!(
                "rm -rf {0} && mkdir -p {1}",
                shell_quote(&dirs.job_dir),
                shell_quote(&dirs.bin())
            ),
            Duration::from_secs(60),
        )
        .await
        .map(drop)
        .map_err(|e| Failure::infra("deploy", e))
}

/// The node agent into the host's cache, installed as the job's `lava-*` commands.
pub async fn deploy_agent(
    ctx: &GroupContext<'_>,
    session: &SshSession,
    node: &str,
    dirs: &HostDirs,
) -> Result<(), Failure> {
    let mut progress = context::progress_logger(ctx.log, node, "node agent upload");
    let agent = transfer::upload_cached(
        session,
        &ctx.settings.node_agent,
        &dirs.cache,
        |done, total| progress(done, Some(total)),
    )
    .await
    .map_err(|e| Failure::infra("deploy", format!("node agent: {e}")))?;
    if agent.replaced_poisoned {
        ctx.log.line(
            Level::Warning,
            Some(node),
            "the host's cached node agent had been altered since it was sent; sent again",
        );
    }
    session
        .run(
            &format!(
                "cp {src} {bin}/node-agent && chmod 755 {bin}/node-agent && {bin}/node-agent install {bin}",
                src = shell_quote(&agent.remote_path),
                bin = shell_quote(&dirs.bin())
            ),
            Duration::from_secs(60),
        )
        .await
        .map_err(|e| Failure::infra("deploy", format!("node agent: {e}")))?;
    Ok(())
}

/// One of a node's test shells on its host: its files written over SFTP, `run.sh` run
/// on a pty in the job directory and driven to its end; the cases it reported.
#[allow(clippy::too_many_arguments)] // One shell: who, where, which, and how long.
pub async fn run_shell(
    ctx: &GroupContext<'_>,
    session: &SshSession,
    relay: &mut Relay,
    node: &str,
    role: &str,
    dirs: &NodeDirs,
    index: usize,
    shell: &TestShell,
    timeout: Option<u64>,
) -> Result<Vec<CaseReport>, Failure> {
    let _section = ctx.log.section(Some(node), "test");
    let dir = format!("{}/tests/{index}", dirs.job_dir);
    let definitions = ctx.definitions(shell, index).await?;
    let files = ctx.scripts(node, role, &definitions, &dir, dirs);
    files::write_host_files(session, &files)
        .await
        .map_err(|e| Failure::infra("test", e))?;
    let command = format!(
        "cd {} && {}",
        shell_quote(&dirs.job_dir),
        shell::run_command(&format!("{dir}/run.sh"))
    );
    let pty = session
        .pty(&command)
        .await
        .map_err(|e| Failure::infra("test", e))?;
    let mut console = Console::new(pty, ctx.console_log(node));
    let outcome = shell::drive(
        &mut console,
        relay,
        &definitions
            .iter()
            .map(|(d, _)| d.reader())
            .collect::<Result<Vec<_>, _>>()?,
        ctx.shell_timeout(timeout),
        ctx.log,
        node,
    )
    .await
    .map_err(shell_failure)?;
    let raised = raised_failure(&outcome);
    let results = ctx.collect(node, outcome.results).await;
    raised.map(|()| results)
}

/// Runs `script` (the host's cleanup) over `session`, or over a new connection when
/// that one is gone: the connection may be what failed.
pub async fn clean(ctx: &GroupContext<'_>, session: &SshSession, node: &str, script: &str) {
    let warn = |what: String| ctx.log.line(Level::Warning, Some(node), what);
    if !session.is_closed() {
        match session.run(script, Duration::from_secs(60)).await {
            Ok(_) => return,
            Err(err) => warn(format!("cleaning the host: {err}")),
        }
    }
    ctx.log.line(
        Level::Info,
        Some(node),
        "the SSH connection to the host is gone; cleaning over a new one".to_string(),
    );
    match session.reconnect(Duration::from_secs(30)).await {
        Ok(fresh) => {
            if let Err(err) = fresh.run(script, Duration::from_secs(60)).await {
                warn(format!("cleaning the host: {err}"));
            }
            fresh.close().await;
        }
        Err(err) => warn(format!("cannot reconnect to clean the host: {err}")),
    }
}
