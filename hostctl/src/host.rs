//! Bringing a host device up by its kind, until there is an SSH session to it: a
//! `qemu-host` is booted here with qemu and reached through a forwarded port; an
//! `ssh-host` is already up; a `board` is powered on with the admin's commands and its
//! console watched until its prompt.

use std::path::Path;
use std::time::Duration;

use regex::Regex;

use crate::console::{ConsoleError, ConsoleLog, Login};
use crate::launch::{QemuCommand, VmImages, VmNetwork, qemu_command};
use crate::local::{LocalError, LocalProcess};
use crate::ssh::{SshError, SshSession, SshTarget};
use lab::accel::Accel;
use lab::device::PowerCommands;
use lab::qemu_template::QemuTemplate;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error("host {host} did not boot: {source}")]
    Boot { host: String, source: ConsoleError },
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("host {host}: power command `{command}` failed: {message}")]
    Power {
        host: String,
        command: String,
        message: String,
    },
}

/// A host device that is up: its SSH session, and the local process behind it (the
/// qemu of a qemu-host, the console command of a board) when there is one.
pub struct UpHost {
    pub ssh: SshSession,
    pub local: Option<LocalProcess>,
}

impl UpHost {
    /// Ends the SSH session and stops the local process (a qemu-host's qemu quits).
    pub async fn shut_down(self) {
        self.ssh.close().await;
        if let Some(local) = self.local {
            local.stop(Duration::from_secs(10)).await;
        }
    }
}

/// The qemu command of a `qemu-host` device booted on this machine from `images`,
/// in `workdir`, its port 22 forwarded to `ssh_port` on this machine's loopback.
pub fn qemu_host_command(
    name: &str,
    qemu: &QemuTemplate,
    images: &VmImages,
    accel: Accel,
    ssh_port: u16,
    workdir: &Path,
) -> QemuCommand {
    qemu_command(
        qemu,
        accel,
        name,
        &workdir.display().to_string(),
        images,
        &VmNetwork::qemu_host(ssh_port),
    )
}

/// How a booting host's console reaches its shell prompt: a login on the way when
/// `login` is given, all within `timeout`.
#[derive(Debug, Clone, Copy)]
pub struct ConsoleBoot<'a> {
    pub prompt: &'a Regex,
    pub login: Option<&'a Login>,
    pub timeout: Duration,
}

/// Boots a `qemu-host` device on this machine and connects to it. `ssh.port` is the
/// local port forwarded to the VM's port 22.
#[allow(clippy::too_many_arguments)]
pub async fn boot_qemu_host(
    name: &str,
    qemu: &QemuTemplate,
    images: &VmImages,
    accel: Accel,
    ssh: &SshTarget,
    workdir: &Path,
    console: &ConsoleBoot<'_>,
    log: ConsoleLog,
) -> Result<UpHost, HostError> {
    let command = qemu_host_command(name, qemu, images, accel, ssh.port, workdir);
    tracing::info!(host = name, argv = ?command.argv, "booting qemu-host");
    let process = LocalProcess::spawn(name, &command.argv, log, command.qmp_socket)?;
    prompt_then_ssh(name, process, console, ssh).await
}

/// The common end of every local boot: the prompt on the console, then SSH. On failure
/// the console process is stopped before the error is returned.
async fn prompt_then_ssh(
    name: &str,
    mut console: LocalProcess,
    boot: &ConsoleBoot<'_>,
    ssh: &SshTarget,
) -> Result<UpHost, HostError> {
    let outcome = match console
        .console
        .boot_to_prompt(boot.prompt, boot.login, boot.timeout)
        .await
    {
        Err(source) => Err(HostError::Boot {
            host: name.to_string(),
            source,
        }),
        Ok(_) => SshSession::connect(ssh, boot.timeout)
            .await
            .map_err(HostError::from),
    };
    match outcome {
        Ok(session) => Ok(UpHost {
            ssh: session,
            local: Some(console),
        }),
        Err(err) => {
            console.stop(Duration::from_secs(5)).await;
            Err(err)
        }
    }
}

/// Runs one of the admin's power commands on this machine.
async fn power(host: &str, command: &str) -> Result<(), HostError> {
    let failed = |message: String| HostError::Power {
        host: host.to_string(),
        command: command.to_string(),
        message,
    };
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| failed("no answer within 120 s".into()))?
    .map_err(|e| failed(e.to_string()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(failed(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Boots a physical board: power off, attach the console, power on, wait for the
/// prompt on the console, then connect over SSH.
pub async fn boot_board(
    name: &str,
    power_commands: &PowerCommands,
    console_command: &str,
    ssh: &SshTarget,
    prompt: &Regex,
    boot_timeout: Duration,
    log: ConsoleLog,
) -> Result<UpHost, HostError> {
    power(name, &power_commands.off).await?;
    // The console is attached before power-on so no boot output is lost.
    let console = LocalProcess::spawn_shell(name, console_command, log)?;
    if let Err(err) = power(name, &power_commands.on).await {
        console.stop(Duration::from_secs(5)).await;
        return Err(err);
    }
    let boot = ConsoleBoot {
        prompt,
        login: None,
        timeout: boot_timeout,
    };
    let up = prompt_then_ssh(name, console, &boot, ssh).await;
    if up.is_err() {
        // A board that did not come up is not left powered.
        let _ = power(name, &power_commands.off).await;
    }
    up
}

/// Powers a board off (after its job, or when giving up on it).
pub async fn power_off_board(name: &str, power_commands: &PowerCommands) -> Result<(), HostError> {
    power(name, &power_commands.off).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use lab::device::DeviceKind;

    #[test]
    fn a_qemu_host_boots_with_its_devices_kernel_command_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("host-1.toml"),
            "hostname = \"host-1\"\ndevice_type = \"qemu-host\"\n\
             [ssh]\naddress = \"127.0.0.1\"\nport = 2222\nhost_key = \"trust-on-first-use\"\n\
             [qemu]\nkernel = \"/srv/bzImage\"\nrootfs = \"/srv/root.img\"\n\
             append = \"console=ttyS0 init=/sbin/agent\"\n",
        )
        .unwrap();
        let (lab, _) = lab::Lab::load_with_builtin_types(dir.path()).unwrap();
        let DeviceKind::QemuHost { qemu, images, ssh } = &lab.devices["host-1"].kind else {
            panic!("not a qemu-host");
        };
        let command = qemu_host_command(
            "host-1",
            qemu,
            images,
            Accel::Tcg,
            ssh.port,
            Path::new("/w/host"),
        );
        let argv = command.argv.join(" ");
        assert!(argv.contains("-kernel /srv/bzImage"), "{argv}");
        assert!(
            argv.contains("-append console=ttyS0 init=/sbin/agent "),
            "{argv}"
        );
        assert!(argv.contains("hostfwd=tcp:127.0.0.1:2222-:22"), "{argv}");
        assert!(argv.contains("mac=52:54:00:00:00:01"), "{argv}");
        assert!(argv.contains("file=/srv/root.img,"), "{argv}");
        assert_eq!(command.qmp_socket.as_deref(), Some("/w/host/qmp.sock"));
    }
}
