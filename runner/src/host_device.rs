//! Bringing the job's host device up by its kind, and down again after the job.

use std::time::Duration;

use regex::Regex;

use super::{Failure, RunSettings};
use crate::joblog::{JobLog, Level};
use hostctl::console::ConsoleLog;
use hostctl::host::{self, UpHost};
use hostctl::ssh::{SshSession, SshTarget};
use lab::accel::{self, HostFacts};
use lab::device::Device;
use lab::device_type::{DeviceKind, DeviceType};
use states::ErrorClass;

/// Brings a host device up by its kind.
pub async fn bring_up_host(
    device: &Device,
    device_type: &DeviceType,
    settings: &RunSettings,
    log: &JobLog,
) -> Result<UpHost, Failure> {
    let ssh = device.ssh.as_ref().ok_or_else(|| {
        Failure::infra(
            "boot",
            format!("device {} has no [ssh] section", device.hostname),
        )
    })?;
    let target = SshTarget {
        host: ssh.address.clone(),
        port: ssh.port,
        user: ssh.user.clone(),
        identity: ssh
            .identity_file
            .clone()
            .unwrap_or_else(|| settings.lab_key.clone()),
        host_key: ssh.host_key.clone(),
        known_hosts: settings.known_hosts.clone(),
    };
    let boot_timeout = Duration::from_secs(device_type.boot_timeout);
    let prompt = Regex::new(&device_type.shell_prompt).map_err(|e| {
        Failure::infra(
            "boot",
            format!("device type {}: shell_prompt: {e}", device_type.name),
        )
    })?;
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
        format!(
            "bringing up {} ({})",
            device.hostname,
            device_type.kind.as_str()
        ),
    );
    let up = match device_type.kind {
        DeviceKind::SshHost => SshSession::connect(&target, boot_timeout)
            .await
            .map(|ssh| UpHost { ssh, local: None })
            .map_err(|e| Failure::infra("boot", e)),
        DeviceKind::QemuHost => {
            let template = device_type.qemu.as_ref().ok_or_else(|| {
                Failure::infra(
                    "boot",
                    format!("device type {} has no qemu template", device_type.name),
                )
            })?;
            let choice = device.accel.unwrap_or(template.accel);
            let accel = accel::decide(choice, HostFacts::probe_local()).accel;
            let workdir = settings.work_dir.join("host");
            std::fs::create_dir_all(&workdir).map_err(|e| Failure::infra("boot", e))?;
            host::boot_qemu_host(
                &device.hostname,
                template,
                &device.qemu.clone().unwrap_or_default(),
                accel,
                &target,
                &workdir,
                &prompt,
                boot_timeout,
                console_log(),
            )
            .await
            .map_err(|e| Failure::infra("boot", e))
        }
        DeviceKind::Board => {
            let (Some(power), Some(console)) = (&device.power, &device.console) else {
                return Err(Failure::infra(
                    "boot",
                    format!("board {} needs [power] and [console]", device.hostname),
                ));
            };
            host::boot_board(
                &device.hostname,
                power,
                &console.command,
                &target,
                &prompt,
                boot_timeout,
                console_log(),
            )
            .await
            .map_err(|e| Failure::infra("boot", e))
        }
        DeviceKind::Vm => Err(Failure::new(
            ErrorClass::Job,
            "boot",
            format!("{} is a VM type, not a host", device_type.name),
        )),
    }?;
    Ok(up)
}

pub async fn shut_down_host(up: UpHost, device: &Device, log: &JobLog) {
    up.shut_down().await;
    if let Some(power) = &device.power
        && let Err(err) = host::power_off_board(&device.hostname, power).await
    {
        log.line(Level::Warning, None, format!("powering off: {err}"));
    }
}
