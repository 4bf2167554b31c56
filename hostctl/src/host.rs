//! Bringing a host device up by its kind, until there is an SSH session to it: a
//! `qemu-host` is booted here with qemu and reached through a forwarded port; an
//! `ssh-host` is already up; a `board` is powered on with the admin's commands and its
//! console watched until its prompt.

use std::path::Path;
use std::time::Duration;

use regex::Regex;

use crate::console::{ConsoleError, ConsoleLog};
use crate::local::{LocalError, LocalProcess};
use crate::ssh::{SshError, SshSession, SshTarget};
use lab::accel::Accel;
use lab::device::QemuOverrides;
use lab::qemu_template::{LaunchValues, QemuTemplate, TemplateError};

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("host {host}: {source}")]
    Template { host: String, source: TemplateError },
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

/// Boots a `qemu-host` device on this machine and connects to it. `ssh.port` is the
/// local port forwarded to the VM's port 22.
#[allow(clippy::too_many_arguments)]
pub async fn boot_qemu_host(
    name: &str,
    template: &QemuTemplate,
    overrides: &QemuOverrides,
    accel: Accel,
    ssh: &SshTarget,
    workdir: &Path,
    prompt: &Regex,
    boot_timeout: Duration,
    log: ConsoleLog,
) -> Result<UpHost, HostError> {
    let mut template = template.clone();
    if let Some(memory) = overrides.memory_mib {
        template.memory_mib = memory;
    }
    if let Some(cpus) = overrides.cpus {
        template.cpus = cpus;
    }
    if let Some(append) = &overrides.append {
        template.append = Some(append.clone());
    }
    let qmp = workdir.join("qmp.sock").display().to_string();
    let mut values =
        LaunchValues::new(&template, accel, name, &workdir.display().to_string(), &qmp);
    for (key, path) in [
        ("kernel", &overrides.kernel),
        ("ramdisk", &overrides.ramdisk),
        ("rootfs", &overrides.rootfs),
        ("image", &overrides.image),
    ] {
        if let Some(path) = path {
            values.set(key, path.display().to_string());
        }
    }
    values.set(
        "netdev",
        // Isolated like a local VM (see `vm::ISOLATED_USER_NETDEV`): the host device
        // runs the job's code too; the forwarded SSH port still reaches it.
        format!(
            "{},hostfwd=tcp:127.0.0.1:{}-:22",
            crate::vm::ISOLATED_USER_NETDEV,
            ssh.port
        ),
    );
    values.set("mac", "52:54:00:00:00:01");
    let argv = template
        .render(&values)
        .map_err(|source| HostError::Template {
            host: name.to_string(),
            source,
        })?;
    tracing::info!(host = name, ?argv, "booting qemu-host");
    let process = LocalProcess::spawn(name, &argv, log, Some(qmp))?;
    prompt_then_ssh(name, process, prompt, ssh, boot_timeout).await
}

/// The common end of every local boot: the prompt on the console, then SSH. On failure
/// the console process is stopped before the error is returned.
async fn prompt_then_ssh(
    name: &str,
    mut console: LocalProcess,
    prompt: &Regex,
    ssh: &SshTarget,
    boot_timeout: Duration,
) -> Result<UpHost, HostError> {
    let outcome = match console.console.expect(prompt, boot_timeout).await {
        Err(source) => Err(HostError::Boot {
            host: name.to_string(),
            source,
        }),
        Ok(_) => SshSession::connect(ssh, boot_timeout)
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
    power_commands: &lab::device::PowerCommands,
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
    let up = prompt_then_ssh(name, console, prompt, ssh, boot_timeout).await;
    if up.is_err() {
        // A board that did not come up is not left powered.
        let _ = power(name, &power_commands.off).await;
    }
    up
}

/// Powers a board off (after its job, or when giving up on it).
pub async fn power_off_board(
    name: &str,
    power_commands: &lab::device::PowerCommands,
) -> Result<(), HostError> {
    power(name, &power_commands.off).await
}
