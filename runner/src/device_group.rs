//! A `device_group` job (and a single-device job, a group of one) on `vm`-kind devices:
//! each node is a VM the dispatcher starts on its own machine from the device type's
//! qemu template, with its console on qemu's stdio. Per node: `deploy` (its role's
//! images, fetched into the image store), `boot` (to the prompt, group LAN up), `test`,
//! `finalize` (the VM stopped). The nodes share a LAN segment, as a vm_group's VMs do.

use std::path::Path;
use std::time::Duration;

use regex::Regex;

use super::context::GroupContext;
use super::{Failure, nodes};
use crate::joblog::Level;
use hostctl::images::ImageStore;
use hostctl::launch::{GroupLan, LanError, QemuCommand, VmImages, VmNetwork, qemu_command};
use hostctl::local::LocalProcess;
use lab::accel::{self, Accel, HostFacts};
use lab::device::{Device, DeviceKind};
use lab::qemu_template::QemuTemplate;
use states::ErrorClass;

/// One node and the device it runs on.
pub struct DeviceNode<'a> {
    pub id: String,
    pub role: String,
    /// Its place on the group LAN.
    pub index: u8,
    pub device: &'a Device,
}

/// Runs every node's pipeline side by side; reports come through `ctx`.
pub async fn run(ctx: &GroupContext<'_>, nodes: &[DeviceNode<'_>]) {
    futures::future::join_all(nodes.iter().map(|node| pipeline(ctx, node))).await;
}

async fn pipeline(ctx: &GroupContext<'_>, node: &DeviceNode<'_>) {
    let mut vm: Option<LocalProcess> = None;
    let outcome = async {
        let (process, prompt) = {
            let _section = ctx.log.section(Some(&node.id), "boot");
            boot(ctx, node).await?
        };
        let process = vm.insert(process);
        ctx.console_shells(&mut process.console, &prompt, &node.id, &node.role)
            .await
    }
    .await;
    if let Some(process) = vm {
        let _section = ctx.log.section(Some(&node.id), "finalize");
        process.stop(Duration::from_secs(10)).await;
    }
    let (outcome, results) = match outcome {
        Ok(results) => (Ok(()), results),
        Err(failure) => (Err(failure), Vec::new()),
    };
    ctx.finish_node(&node.id, &node.role, outcome, results)
        .await;
}

/// The node's VM as it starts here: its name, qemu command and place on the LAN.
struct NodeVm {
    name: String,
    command: QemuCommand,
    lan: GroupLan,
}

impl NodeVm {
    /// Node `node_id`, the `index`-th of job `job_id`, from its device's template.
    fn new(
        job_id: u64,
        node_id: &str,
        index: u8,
        qemu: &QemuTemplate,
        accel: Accel,
        workdir: &Path,
        images: &VmImages,
    ) -> Self {
        let name = format!("lava-{job_id}-{node_id}");
        let lan = GroupLan::of_job(job_id, index);
        let command = qemu_command(
            qemu,
            accel,
            &name,
            &workdir.display().to_string(),
            images,
            &VmNetwork::device_vm(index, lan.clone()),
        );
        Self { name, command, lan }
    }
}

/// Starts the node's VM here and brings it to its prompt with its LAN up.
async fn boot(
    ctx: &GroupContext<'_>,
    node: &DeviceNode<'_>,
) -> Result<(LocalProcess, Regex), Failure> {
    let device_type = &node.device.device_type;
    let DeviceKind::Vm { qemu } = &node.device.kind else {
        return Err(Failure::new(
            ErrorClass::Job,
            "boot",
            format!(
                "device_group nodes on {} devices ({}) cannot run in this version; vm devices can",
                node.device.kind.as_str(),
                node.device.hostname
            ),
        ));
    };
    let boot = nodes::boot_for(ctx.job, &node.role, None);
    let prompt = boot
        .prompt(None, &device_type.prompt)
        .map_err(|e| Failure::new(ErrorClass::Job, "boot", format!("shell prompt: {e}")))?;
    let login = boot
        .console_login(device_type.login.as_ref())
        .map_err(|e| Failure::new(ErrorClass::Job, "boot", format!("login prompt: {e}")))?;
    let workdir = ctx.settings.work_dir.join("vms").join(&node.id);
    std::fs::create_dir_all(&workdir).map_err(|e| Failure::infra("boot", e))?;
    let accel = accel::decide_for(qemu.accel(), HostFacts::probe_local(), &device_type.arch).accel;
    let store = ImageStore::new(&ctx.settings.image_store, ctx.settings.fetch.clone())
        .map_err(|e| Failure::infra("boot", e))?;
    let images =
        super::images::local_images(&store, &boot, qemu, ctx.log, &node.id, "boot").await?;
    super::images::check_template(&images, qemu, &device_type.name, &node.id, "boot")?;
    let NodeVm { name, command, lan } = NodeVm::new(
        ctx.settings.job_id,
        &node.id,
        node.index,
        qemu,
        accel,
        &workdir,
        &images,
    );
    ctx.log.line(
        Level::Info,
        Some(&node.id),
        format!(
            "starting {} on this machine: {}",
            node.device.hostname,
            command.argv.join(" ")
        ),
    );
    let mut process = LocalProcess::spawn(
        &name,
        &command.argv,
        ctx.console_log(&node.id),
        command.qmp_socket,
    )
    .map_err(|e| Failure::infra("boot", e))?;
    let booted = async {
        process
            .console
            .boot_to_prompt(&prompt, login.as_ref(), device_type.boot_timeout)
            .await
            .map_err(|e| super::context::guest_boot_failure(&e, format!("{name}: {e}")))?;
        // A lone node has nobody on the LAN: its image need not be able to bring it up.
        if ctx.job.node_count() < 2 {
            return Ok(());
        }
        lan.bring_up(&mut process.console, &prompt)
            .await
            .map_err(|e| match e {
                LanError::Guest(_) => Failure::new(ErrorClass::Job, "boot", e),
                _ => Failure::infra("boot", e),
            })
    }
    .await;
    match booted {
        Ok(()) => Ok((process, prompt)),
        Err(failure) => {
            process.stop(Duration::from_secs(10)).await;
            Err(failure)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_device_starts_with_its_own_kernel_command_line_and_the_jobs_lan() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("vm-1.toml"),
            "hostname = \"vm-1\"\ndevice_type = \"kvm\"\n\
             [qemu]\nmemory_mib = 512\nappend = \"console=ttyS0 init=/bin/sh\"\n",
        )
        .unwrap();
        let (lab, _) = lab::Lab::load_with_builtin_types(dir.path()).unwrap();
        let DeviceKind::Vm { qemu } = &lab.devices["vm-1"].kind else {
            panic!("vm-1 is not a vm");
        };
        let images = VmImages {
            kernel: Some("/s/vmlinuz".into()),
            ..Default::default()
        };
        let vm = NodeVm::new(
            77,
            "client",
            1,
            qemu,
            Accel::Tcg,
            Path::new("/j/vms/client"),
            &images,
        );
        assert_eq!(vm.name, "lava-77-client");
        assert_eq!(vm.lan, GroupLan::of_job(77, 1));
        let argv = vm.command.argv.join(" ");
        assert!(argv.contains("-m 512 "), "{argv}");
        assert!(
            argv.contains("-append console=ttyS0 init=/bin/sh "),
            "{argv}"
        );
        assert!(argv.contains("user,id=n0,restrict=on"), "{argv}");
        assert!(argv.contains("mac=52:54:00:12:35:11,"), "{argv}");
        assert!(argv.contains(&vm.lan.netdev), "{argv}");
        assert_eq!(
            vm.command.qmp_socket.as_deref(),
            Some("/j/vms/client/qmp.sock")
        );
    }
}
