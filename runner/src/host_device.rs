//! Bringing the job's host device up by its kind, and down again after the job.

use super::{Failure, RunSettings};
use crate::images;
use crate::joblog::{JobLog, Level};
use crate::nodes::VmBoot;
use hostctl::console::ConsoleLog;
use hostctl::host::{self, UpHost};
use hostctl::images::ImageStore;
use hostctl::launch::VmImages;
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

/// Brings a host device up by its kind. `boot` is what the job deploys to the host's
/// role: a qemu-host boots it (over the device's own images), other kinds boot as their
/// lab says (validation warned the job's author).
pub async fn bring_up_host(
    device: &Device,
    boot: &VmBoot,
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
            let accel =
                accel::decide_for(qemu.accel(), HostFacts::probe_local(), &device_type.arch).accel;
            // One directory per host device: a device_group may boot several.
            let workdir = settings.work_dir.join(format!("host-{}", device.hostname));
            std::fs::create_dir_all(&workdir).map_err(|e| Failure::infra("boot", e))?;
            let store = ImageStore::new(&settings.image_store, settings.fetch.clone())
                .map_err(|e| Failure::infra("boot", e))?;
            let job_images =
                images::local_images(&store, boot, qemu, log, &device.hostname, "boot").await?;
            let mut images = over_device_images(images, job_images, boot);
            images::disk_formats(&mut images).await.map_err(|e| {
                let class = if boot.deploys() {
                    ErrorClass::Job
                } else {
                    ErrorClass::Infrastructure
                };
                Failure::new(class, "boot", format!("{}: {e}", device.hostname))
            })?;
            images::check_template(&images, qemu, &device_type.name, &device.hostname, "boot")?;
            let prompt = boot
                .prompt(None, prompt)
                .map_err(|e| Failure::new(ErrorClass::Job, "boot", format!("shell prompt: {e}")))?;
            let login = boot
                .console_login(device_type.login.as_ref())
                .map_err(|e| Failure::new(ErrorClass::Job, "boot", format!("login prompt: {e}")))?;
            host::boot_qemu_host(
                &device.hostname,
                qemu,
                &images,
                accel,
                &ssh_target(ssh, settings),
                &workdir,
                &host::ConsoleBoot {
                    prompt: &prompt,
                    login: login.as_ref(),
                    timeout: boot_timeout,
                },
                console_log(),
            )
            .await
            .map_err(|e| match e {
                // The job's own images that do not boot are the job's.
                host::HostError::Boot { ref source, .. } if boot.deploys() => {
                    super::context::guest_boot_failure(source, e.to_string())
                }
                e => Failure::infra("boot", e),
            })
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

/// A qemu-host's images with a job's over them: a job's disk `image` replaces them all
/// (it boots by itself); an `nfsrootfs` (the job's ramdisk now) replaces the device's
/// ramdisk and root disk; otherwise each image the job gives replaces the device's of
/// the same kind.
fn over_device_images(device: &VmImages, job: VmImages, boot: &VmBoot) -> VmImages {
    if job.image.is_some() {
        return job;
    }
    let mut images = device.clone();
    if boot.nfsrootfs.is_some() {
        images.rootfs = None;
    }
    for (kind, path) in job.iter() {
        images.set(kind, path.clone());
    }
    images.kernel_args.extend(job.kernel_args);
    images
}

pub async fn shut_down_host(up: UpHost, device: &Device, log: &JobLog) {
    up.shut_down().await;
    if let DeviceKind::Board { power, .. } = &device.kind
        && let Err(err) = host::power_off_board(&device.hostname, power).await
    {
        log.line(Level::Warning, None, format!("powering off: {err}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> VmImages {
        VmImages {
            kernel: Some("/lab/vmlinuz".into()),
            ramdisk: Some("/lab/initrd".into()),
            rootfs: Some("/lab/root.img".into()),
            ..VmImages::default()
        }
    }

    #[test]
    fn a_jobs_images_go_over_a_qemu_hosts_own() {
        let url = |u: &str| url::Url::parse(u).ok();
        // Only a kernel: the lab's ramdisk and root disk stay.
        let kernel_only = VmImages {
            kernel: Some("/store/job-vmlinuz".into()),
            ..VmImages::default()
        };
        let images = over_device_images(&device(), kernel_only, &VmBoot::default());
        assert_eq!(images.kernel.as_deref(), Some("/store/job-vmlinuz"));
        assert_eq!(images.rootfs.as_deref(), Some("/lab/root.img"));
        assert_eq!(images.ramdisk.as_deref(), Some("/lab/initrd"));
        // An nfsrootfs: its initramfs replaces the ramdisk, and no root disk is attached.
        let boot = VmBoot {
            nfsrootfs: url("https://example.org/rootfs.tar.gz"),
            ..VmBoot::default()
        };
        let from_tarball = VmImages {
            kernel: Some("/store/job-vmlinuz".into()),
            ramdisk: Some("/store/initramfs.cpio".into()),
            kernel_args: vec!["rdinit=/sbin/init".into()],
            ..VmImages::default()
        };
        let images = over_device_images(&device(), from_tarball, &boot);
        assert_eq!(images.ramdisk.as_deref(), Some("/store/initramfs.cpio"));
        assert_eq!(images.rootfs, None);
        assert_eq!(images.kernel_args, ["rdinit=/sbin/init"]);
        // A disk image boots by itself: nothing of the lab's is kept.
        let disk = VmImages {
            image: Some("/store/disk.img".into()),
            ..VmImages::default()
        };
        let images = over_device_images(&device(), disk.clone(), &VmBoot::default());
        assert_eq!(images, disk);
    }
}
