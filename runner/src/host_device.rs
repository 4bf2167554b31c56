//! Bringing the job's host device up by its kind, and down again after the job.

use super::{Failure, RunSettings};
use crate::joblog::{JobLog, Level};
use hostctl::console::ConsoleLog;
use hostctl::host::{self, UpHost};
use hostctl::ssh::{SshSession, SshTarget};
use lab::accel::{self, HostFacts};
use lab::device::{Device, DeviceKind, SshSettings};
use states::ErrorClass;

/// How this dispatcher reaches a device's SSH: the device's key, or the lab's.
fn ssh_target(ssh: &SshSettings, settings: &RunSettings) -> SshTarget {
    SshTarget {
        host: ssh.address.clone(),
        port: ssh.port,
        user: ssh.user.clone(),
        identity: ssh
            .identity_file
            .clone()
            .unwrap_or_else(|| settings.lab_key.clone()),
        host_key: ssh.host_key.clone(),
        known_hosts: settings.known_hosts.clone(),
    }
}

/// Brings a host device up by its kind.
pub async fn bring_up_host(
    device: &Device,
    settings: &RunSettings,
    log: &JobLog,
) -> Result<UpHost, Failure> {
    let device_type = &device.device_type;
    let boot_timeout = device_type.boot_timeout;
    let prompt = &device_type.prompt;
    let console_log = || {
        let path = settings
            .work_dir
            .join(format!("console-{}.log", device.hostname));
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(ConsoleLog::appending)
            .unwrap_or_default()
    };
    log.line(
        Level::Info,
        None,
        format!("bringing up {} ({})", device.hostname, device.kind.as_str()),
    );
    match &device.kind {
        DeviceKind::SshHost { ssh } => {
            SshSession::connect(&ssh_target(ssh, settings), boot_timeout)
                .await
                .map(|ssh| UpHost { ssh, local: None })
                .map_err(|e| Failure::infra("boot", e))
        }
        DeviceKind::QemuHost { qemu, images, ssh } => {
            let accel = accel::decide(qemu.accel(), HostFacts::probe_local()).accel;
            let workdir = settings.work_dir.join("host");
            std::fs::create_dir_all(&workdir).map_err(|e| Failure::infra("boot", e))?;
            host::boot_qemu_host(
                &device.hostname,
                qemu,
                images,
                accel,
                &ssh_target(ssh, settings),
                &workdir,
                prompt,
                boot_timeout,
                console_log(),
            )
            .await
            .map_err(|e| Failure::infra("boot", e))
        }
        DeviceKind::Board {
            ssh,
            power,
            console,
        } => host::boot_board(
            &device.hostname,
            power,
            &console.command,
            &ssh_target(ssh, settings),
            prompt,
            boot_timeout,
            console_log(),
        )
        .await
        .map_err(|e| Failure::infra("boot", e)),
        DeviceKind::Vm { .. } => Err(Failure::new(
            ErrorClass::Job,
            "boot",
            format!("{} is a VM type, not a host", device_type.name),
        )),
    }
}

pub async fn shut_down_host(up: UpHost, device: &Device, log: &JobLog) {
    up.shut_down().await;
    if let DeviceKind::Board { power, .. } = &device.kind
        && let Err(err) = host::power_off_board(&device.hostname, power).await
    {
        log.line(Level::Warning, None, format!("powering off: {err}"));
    }
}
