//! Launching VMs on a host device over SSH, and stopping them.
//!
//! A VM is launched from its job's `launch_with` commands (all but the last prepare;
//! the last attaches to the console) or from its device type's qemu template. The
//! console is an SSH pty whose command becomes qemu, so qemu's `-serial stdio` *is* the
//! console. The launching shell prints its process group first, so teardown can stop
//! exactly this VM's processes (QMP `quit`, then signals to the group), never anything
//! found by a name pattern.

use std::time::Duration;

use regex::Regex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::console::{Console, ConsoleError, ConsoleLog, Login};
pub use crate::launch::{GroupLan, ISOLATED_USER_NETDEV, VmImages, VmNetwork};
use crate::launch::{LanError, qemu_command};
use crate::ssh::{SshError, SshSession, shell_quote};
use lab::accel::Accel;
use lab::qemu_template::QemuTemplate;

/// How to start one VM on a host.
#[derive(Debug, Clone)]
pub struct VmPlan {
    /// Unique on the host (e.g. "job42-client-1").
    pub name: String,
    /// The VM's own directory on the host; removed at teardown.
    pub workdir: String,
    /// Commands run (in `workdir`) before the VM starts; each must succeed.
    pub prepare: Vec<String>,
    /// The shell command that starts the VM in the foreground on the console.
    pub attach: String,
    /// QMP socket, when the plan created one.
    pub qmp_socket: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("VM {vm}: `{command}` failed with {status:?}: {stderr}")]
    Prepare {
        vm: String,
        command: String,
        status: Option<u32>,
        stderr: String,
    },
    #[error("VM {vm}: {source}")]
    Console { vm: String, source: ConsoleError },
    /// What the image lacks to bring the group LAN up with (a NIC driver, `ip` and
    /// `ifconfig`): the job's error.
    #[error("VM {vm}: the group LAN: {lacks}")]
    GuestLan { vm: String, lacks: String },
    #[error("VM {vm}: launch_with is empty")]
    NoCommand { vm: String },
}

impl VmPlan {
    /// A plan from a device type's qemu template (see [`qemu_command`]).
    pub fn from_template(
        name: &str,
        workdir: &str,
        template: &QemuTemplate,
        accel: Accel,
        images: &VmImages,
        network: &VmNetwork,
    ) -> Self {
        let command = qemu_command(template, accel, name, workdir, images, network);
        Self {
            name: name.to_string(),
            workdir: workdir.to_string(),
            prepare: Vec::new(),
            attach: command
                .argv
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
            qmp_socket: command.qmp_socket,
        }
    }

    /// A plan from a job's `launch_with` commands (run on the host as written: the test
    /// writer owns them).
    pub fn from_launch_with(
        name: &str,
        workdir: &str,
        commands: &[String],
    ) -> Result<Self, VmError> {
        let (attach, prepare) = commands.split_last().ok_or_else(|| VmError::NoCommand {
            vm: name.to_string(),
        })?;
        Ok(Self {
            name: name.to_string(),
            workdir: workdir.to_string(),
            prepare: prepare.to_vec(),
            attach: attach.clone(),
            qmp_socket: None,
        })
    }
}

/// A VM that is running on a host, with its console.
pub struct RunningVm {
    pub name: String,
    pub console: Console<crate::ssh::PtyStream>,
    /// The process group of the launching session: the VM and anything it started.
    pub process_group: u32,
    workdir: String,
    qmp_socket: Option<String>,
}

const PGID_MARKER: &str = "LAVA-VM-PGID=";

/// Starts a VM on the host and attaches its console.
pub async fn launch(
    session: &SshSession,
    plan: &VmPlan,
    log: ConsoleLog,
) -> Result<RunningVm, VmError> {
    let workdir = shell_quote(&plan.workdir);
    session
        .run(
            &format!("rm -rf {workdir} && mkdir -p {workdir}"),
            Duration::from_secs(30),
        )
        .await?;
    for command in &plan.prepare {
        let output = session
            .exec(
                &format!("cd {workdir} && {command}"),
                Duration::from_secs(600),
            )
            .await?;
        if !output.success() {
            return Err(VmError::Prepare {
                vm: plan.name.clone(),
                command: command.clone(),
                status: output.status,
                stderr: output.stderr_text().trim().to_string(),
            });
        }
    }
    // sshd makes the command's shell a session (and group) leader: `$$` is the group
    // of everything this VM runs. `exec` keeps that group for the VM itself.
    let console_command = format!(
        "cd {workdir} && echo {PGID_MARKER}$$ && exec {}",
        plan.attach
    );
    let stream = session.pty(&console_command).await?;
    let mut console = Console::new(stream, log);
    let marker = Regex::new(&format!(r"{PGID_MARKER}(\d+)")).map_err(|e| VmError::Console {
        vm: plan.name.clone(),
        source: ConsoleError::Io(std::io::Error::other(e.to_string())),
    })?;
    let found = console
        .expect(&marker, Duration::from_secs(30))
        .await
        .map_err(|source| VmError::Console {
            vm: plan.name.clone(),
            source,
        })?;
    let process_group = found
        .text
        .trim_start_matches(PGID_MARKER)
        .parse()
        .unwrap_or(0);
    tracing::info!(vm = %plan.name, process_group, "VM launched");
    Ok(RunningVm {
        name: plan.name.clone(),
        console,
        process_group,
        workdir: plan.workdir.clone(),
        qmp_socket: plan.qmp_socket.clone(),
    })
}

impl RunningVm {
    /// Waits for the shell prompt on the VM's console, logging in first when `login`
    /// is given.
    pub async fn wait_for_prompt(
        &mut self,
        prompt: &Regex,
        login: Option<&Login>,
        timeout: Duration,
    ) -> Result<(), VmError> {
        self.console
            .boot_to_prompt(prompt, login, timeout)
            .await
            .map(drop)
            .map_err(|source| VmError::Console {
                vm: self.name.clone(),
                source,
            })
    }

    /// Brings up the group LAN inside the VM (its NIC with the LAN's MAC) from its console.
    pub async fn configure_lan(&mut self, lan: &GroupLan, prompt: &Regex) -> Result<(), VmError> {
        lan.bring_up(&mut self.console, prompt)
            .await
            .map_err(|err| match err {
                LanError::Console(source) => VmError::Console {
                    vm: self.name.clone(),
                    source,
                },
                LanError::Guest(lacks) => VmError::GuestLan {
                    vm: self.name.clone(),
                    lacks,
                },
                LanError::Failed {
                    command,
                    code,
                    output,
                } => VmError::Prepare {
                    vm: self.name.clone(),
                    command,
                    status: u32::try_from(code).ok(),
                    stderr: output,
                },
            })
    }

    /// Stops the VM: QMP `quit` when it has a QMP socket, then TERM and finally KILL to
    /// its process group, then removes its directory. Safe to call on a VM that already
    /// exited.
    pub async fn stop(self, session: &SshSession) -> Result<(), VmError> {
        if let Some(socket) = &self.qmp_socket
            && let Err(err) = qmp_quit(session, socket).await
        {
            tracing::debug!(vm = %self.name, %err, "QMP quit failed, signalling instead");
        }
        drop(self.console);
        if self.process_group > 1 {
            let group = self.process_group;
            // Polls the group in the remote shell; gives it 5 s after TERM before KILL.
            let script = format!(
                "kill -TERM -- -{group} 2>/dev/null; \
                 for i in $(seq 50); do kill -0 -- -{group} 2>/dev/null || break; sleep 0.1; done; \
                 kill -KILL -- -{group} 2>/dev/null; true"
            );
            session.run(&script, Duration::from_secs(30)).await?;
        }
        session
            .run(
                &format!("rm -rf {}", shell_quote(&self.workdir)),
                Duration::from_secs(30),
            )
            .await?;
        tracing::info!(vm = %self.name, "VM stopped");
        Ok(())
    }
}

/// Asks qemu to quit through its QMP socket on the host.
async fn qmp_quit(session: &SshSession, socket: &str) -> Result<(), VmError> {
    let stream = session.unix_socket(socket).await?;
    send_qmp_quit(stream).await.map_err(|e| {
        VmError::Ssh(SshError::Protocol {
            target: socket.to_string(),
            message: e.to_string(),
        })
    })
}

/// Speaks QMP's `quit` on a connected QMP socket (local or through SSH) and waits up to
/// 5 s for qemu to close it, which it does as it exits.
pub async fn send_qmp_quit<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
) -> std::io::Result<()> {
    stream
        .write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n")
        .await?;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut sink)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_plan_is_the_one_qemu_command_quoted_for_the_host_shell() {
        let lab = lab::Lab::builtin().unwrap();
        let vm_type = lab.vm_type("kvm").unwrap();
        let images = VmImages {
            kernel: Some("/c/vmlinuz".into()),
            ..Default::default()
        };
        let network = VmNetwork::group_vm(2, GroupLan::of_job(9, 2));
        let plan = VmPlan::from_template(
            "lava-9-a",
            "/h/vms/a",
            vm_type.qemu,
            Accel::Kvm,
            &images,
            &network,
        );
        let command = qemu_command(
            vm_type.qemu,
            Accel::Kvm,
            "lava-9-a",
            "/h/vms/a",
            &images,
            &network,
        );
        let quoted: Vec<String> = command.argv.iter().map(|a| shell_quote(a)).collect();
        assert_eq!(plan.attach, quoted.join(" "));
        assert!(
            plan.attach
                .contains("-append 'console=ttyS0 panic=-1 quiet no_timer_check'"),
            "{}",
            plan.attach
        );
        assert!(
            plan.attach.contains("mac=52:54:00:12:34:12,"),
            "{}",
            plan.attach
        );
        assert_eq!(plan.qmp_socket.as_deref(), Some("/h/vms/a/qmp.sock"));
    }

    #[test]
    fn launch_with_splits_preparation_from_attach() {
        let plan = VmPlan::from_launch_with(
            "vm",
            "/w",
            &[
                "cp a b".to_string(),
                "qemu-system-x86_64 -m 256".to_string(),
            ],
        )
        .unwrap();
        assert_eq!(plan.prepare, ["cp a b"]);
        assert_eq!(plan.attach, "qemu-system-x86_64 -m 256");
        assert!(VmPlan::from_launch_with("vm", "/w", &[]).is_err());
    }
}
