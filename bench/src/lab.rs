//! The lab of the benchmarks that need the daemon: the system tests' [`SshLab`] (one
//! `ssh-host` device, sshd in a network namespace) served by the `dispatcher` built
//! next to this benchmark binary, and the harness's API client with a token.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;
use system_tests::{ApiClient, Daemon, SEED_JOB, SshLab, e2e_job, try_create_token};

/// A binary built beside this one (same profile).
pub fn sibling(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let path = exe.with_file_name(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is not built (cargo build --release -p {name})",
            path.display()
        ))
    }
}

pub struct Lab {
    /// Stopped before the lab's host goes.
    daemon: Daemon,
    pub api: ApiClient,
    pub ssh: SshLab,
}

impl Lab {
    pub fn start() -> Result<Self, String> {
        let ssh = SshLab::start(1, "");
        let dispatcher = sibling("dispatcher")?;
        let token = try_create_token(&dispatcher, &ssh.config, &["bench"])?;
        let mut command = Command::new(&dispatcher);
        // BENCH_DAEMON_LOG=FILE keeps the daemon's log (at DISPATCHER_LOG's level) for a look
        // at what a run did.
        match std::env::var_os("BENCH_DAEMON_LOG") {
            Some(path) => {
                let file = std::fs::File::create(&path).map_err(|e| e.to_string())?;
                command.stderr(file);
            }
            None => {
                command.env("RUST_LOG", "warn").stderr(Stdio::null());
            }
        }
        let daemon = Daemon::try_start(command, &ssh.config)?;
        let api = ApiClient::new(&daemon.url, &token)?;
        Ok(Self { daemon, api, ssh })
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// The daemon's resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        self.daemon.try_status_kb("VmRSS").unwrap_or(0)
    }

    /// SIGTERM (graceful shutdown: running jobs end canceled, their VMs stopped) and
    /// waits for the daemon to exit.
    pub fn stop(mut self) -> Result<(), String> {
        let status = self.daemon.terminate()?;
        if !status.success() {
            return Err(format!("the daemon exited with {status}"));
        }
        Ok(())
    }
}

/// The seed job (a host and two VMs) with this machine's test images.
pub fn seed_job() -> Result<Value, String> {
    serde_json::from_str(&e2e_job(SEED_JOB, "ssh-host")).map_err(|e| e.to_string())
}
