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

/// Where a VM's files are, fetched (and built) for `node`; failures are the job's
/// (its URLs, its archives), reported under `stage`.
pub async fn local_images(
    store: &ImageStore,
    boot: &VmBoot,
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
