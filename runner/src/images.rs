//! A VM's images on the dispatcher's machine: each URL the job gives fetched through
//! the lab's policy (the image store), and a root file system given as tar archives
//! (`nfsrootfs`, `overlays`) made into one initramfs the VM's kernel unpacks into
//! memory. From here the files go to the VM's qemu as they are: on this machine, or
//! uploaded to the host that runs it.

use std::path::{Path, PathBuf};

use hostctl::images::{ImageError, ImageStore};
use hostctl::launch::VmImages;
use lab::qemu_template::QemuTemplate;
use states::ErrorClass;

use crate::Failure;
use crate::context::progress_logger;
use crate::joblog::{JobLog, Level};
use crate::nodes::VmBoot;

/// Refuses images the VM's qemu template has no place for (a `firmware` or `dtb` on a
/// type without `{firmware}` or `{dtb}`), which qemu would otherwise never see.
pub fn check_template(
    images: &VmImages,
    qemu: &QemuTemplate,
    type_name: &str,
    node: &str,
    stage: &'static str,
) -> Result<(), Failure> {
    let unused: Vec<&str> = images
        .iter()
        .map(|(kind, _)| kind)
        .filter(|kind| !qemu.uses(kind))
        .collect();
    if unused.is_empty() {
        return Ok(());
    }
    Err(Failure::new(
        ErrorClass::Job,
        stage,
        format!(
            "{node}: device type {type_name} has no place for {} in its qemu command line \
             (no {{{}}} placeholder)",
            unused.join(", "),
            unused.join("}, {")
        ),
    ))
}

/// The lab's UEFI firmware for `bootloadertype: "uefi"`: none configured for the device
/// type is the job's error (it asked a type that has none), a configured file that is
/// missing the lab's.
fn uefi_firmware<'q>(
    qemu: &'q QemuTemplate,
    node: &str,
    stage: &'static str,
) -> Result<&'q Path, Failure> {
    let Some(firmware) = qemu.uefi_firmware() else {
        return Err(Failure::new(
            ErrorClass::Job,
            stage,
            format!(
                "{node}: bootloadertype \"uefi\", but its device type has no UEFI firmware \
                 (uefi_firmware in the type's [qemu] table)"
            ),
        ));
    };
    if !firmware.is_file() {
        return Err(Failure::new(
            ErrorClass::Infrastructure,
            stage,
            format!(
                "{node}: the device type's UEFI firmware {} is not on this machine",
                firmware.display()
            ),
        ));
    }
    Ok(firmware)
}

/// Reads the formats of `images`' disk image and root disk from the files, which are
/// on this machine.
pub async fn disk_formats(images: &mut VmImages) -> Result<(), ImageError> {
    if let Some(path) = &images.image {
        images.image_format = hostctl::images::disk_format(Path::new(path)).await?;
    }
    if let Some(path) = &images.rootfs {
        images.rootfs_format = hostctl::images::disk_format(Path::new(path)).await?;
    }
    Ok(())
}

/// Where a VM's files are, fetched (and built) for `node`, whose qemu is `qemu`;
/// failures are the job's (its URLs, its archives), reported under `stage`.
pub async fn local_images(
    store: &ImageStore,
    boot: &VmBoot,
    qemu: &QemuTemplate,
    log: &JobLog,
    node: &str,
    stage: &'static str,
) -> Result<VmImages, Failure> {
    let fetch = |kind: &'static str, url: &url::Url| {
        let progress = progress_logger(log, node, &format!("{kind} download"));
        let url = url.clone();
        async move {
            store
                .fetch(&url, progress)
                .await
                .map_err(|e| Failure::new(ErrorClass::Job, stage, format!("{node} {kind}: {e}")))
        }
    };
    let mut local = VmImages::default();
    for (kind, url) in boot.images.iter() {
        local.set(kind, fetch(kind, url).await?.display().to_string());
    }
    if boot.uefi && local.firmware.is_none() {
        let firmware = uefi_firmware(qemu, node, stage)?;
        log.line(
            Level::Info,
            Some(node),
            format!("UEFI firmware {}", firmware.display()),
        );
        local.firmware = Some(firmware.display().to_string());
    }
    disk_formats(&mut local)
        .await
        .map_err(|e| Failure::new(ErrorClass::Job, stage, format!("{node}: {e}")))?;
    if !boot.builds_initramfs() {
        return Ok(local);
    }
    let mut trees: Vec<PathBuf> = Vec::with_capacity(boot.overlays.len() + 1);
    if let Some(url) = &boot.nfsrootfs {
        trees.push(fetch("nfsrootfs", url).await?);
    }
    for url in &boot.overlays {
        trees.push(fetch("overlay", url).await?);
    }
    // Overlays go over the root file system: the nfsrootfs tree, else the ramdisk.
    let base = match boot.nfsrootfs {
        Some(_) => None,
        None => local.ramdisk.as_deref().map(Path::new),
    };
    let built = store
        .initramfs(base, &trees)
        .await
        .map_err(|e| Failure::new(ErrorClass::Job, stage, format!("{node} initramfs: {e}")))?;
    log.line(
        Level::Info,
        Some(node),
        format!(
            "initramfs {} from {} tar archive(s){}",
            built.path.display(),
            trees.len(),
            if base.is_some() {
                " over the ramdisk"
            } else {
                ""
            }
        ),
    );
    local.ramdisk = Some(built.path.display().to_string());
    // The kernel runs /init from an initramfs; a root file system made for a disk or
    // NFS has /sbin/init instead.
    if boot.nfsrootfs.is_some() && !built.has_init {
        local.kernel_args.push("rdinit=/sbin/init".to_string());
    }
    Ok(local)
}

#[cfg(test)]
mod tests {
    use lab::Lab;

    use super::*;

    #[test]
    fn uefi_is_the_jobs_error_on_a_type_without_firmware_and_the_labs_when_it_is_missing() {
        let builtin = Lab::builtin().unwrap();
        let arm = builtin.vm_type("kvm-arm").unwrap();
        let failure = uefi_firmware(arm.qemu, "device", "boot").unwrap_err();
        assert_eq!(failure.class, ErrorClass::Job);
        assert!(failure.message.contains("uefi_firmware"), "{failure:?}");

        let dir = tempfile::tempdir().unwrap();
        let types = dir.path().join("device-types");
        std::fs::create_dir_all(&types).unwrap();
        let kvm = lab::BUILTIN_DEVICE_TYPES
            .iter()
            .find(|(file, _)| *file == "kvm.toml")
            .unwrap()
            .1
            .replace("/usr/share/ovmf/OVMF.fd", "/nonexistent/OVMF.fd");
        std::fs::write(types.join("kvm.toml"), kvm).unwrap();
        let (lab, _) = Lab::load(&types, None).unwrap();
        let kvm = lab.vm_type("kvm").unwrap();
        let failure = uefi_firmware(kvm.qemu, "device", "boot").unwrap_err();
        assert_eq!(failure.class, ErrorClass::Infrastructure);
        assert!(
            failure.message.contains("/nonexistent/OVMF.fd"),
            "{failure:?}"
        );
    }
}
