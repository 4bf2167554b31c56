//! A `device_group` job (and a single-device job, a group of one): a node per device,
//! of any kind, side by side.
//!
//! * A `vm` device is a VM the dispatcher starts on its own machine from the device
//!   type's qemu template, its console on qemu's stdio: `boot` (its role's images,
//!   fetched into the image store, to the prompt, group LAN up), `test` (on the
//!   console), `finalize` (the VM stopped). Such nodes share a LAN segment, as a
//!   vm_group's VMs do.
//! * An ssh-host, qemu-host or board is brought up by its kind (a qemu-host boots its
//!   role's deploy over its own images) until there is an SSH session: `boot`,
//!   `deploy` (the node agent), `test` (on SSH ptys), `finalize` (its job directory
//!   removed, the device shut down as its kind is).
//!
//! Every node's MultiNode calls go through the job's coordinator group as console
//! markers the runner relays, so no node needs a network path to the dispatcher.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use regex::Regex;

use super::context::{GroupContext, NodeDirs};
use super::host_node::{self, HostDirs};
use super::{Failure, host_device, nodes};
use crate::joblog::Level;
use hostctl::host::UpHost;
use hostctl::images::ImageStore;
use hostctl::launch::{GroupLan, LanError, QemuCommand, VmImages, VmNetwork, qemu_command};
use hostctl::local::LocalProcess;
use hostctl::ssh::shell_quote;
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

/// Runs every node's pipeline side by side until they end, the job times out or is
/// canceled (which it returns); reports come through `ctx`. Hosts brought up are
/// cleaned and shut down afterwards in every case: they are kept outside the pipelines,
/// which a timeout drops.
pub async fn run(ctx: &GroupContext<'_>, nodes: &[DeviceNode<'_>]) -> Option<crate::Failure> {
    let hosts: Vec<OnceLock<UpHost>> = nodes.iter().map(|_| OnceLock::new()).collect();
    let pipelines = nodes.iter().zip(&hosts).map(|(node, up)| async move {
        match &node.device.kind {
            DeviceKind::Vm { qemu } => vm_pipeline(ctx, node, qemu).await,
            _ => host_pipeline(ctx, node, up).await,
        }
    });
    let cut_short = ctx
        .until_done(async {
            futures::future::join_all(pipelines).await;
        })
        .await;
    futures::future::join_all(
        nodes
            .iter()
            .zip(hosts)
            .map(|(node, up)| finalize_host(ctx, node, up.into_inner())),
    )
    .await;
    cut_short
}

/// A host node's end, whatever cut its pipeline short: its directory removed and the
/// device shut down as its kind is. A board cut short while booting (no session yet)
/// may be powered on already: it is powered off. A VM node has nothing here.
async fn finalize_host(ctx: &GroupContext<'_>, node: &DeviceNode<'_>, up: Option<UpHost>) {
    let Some(up) = up else {
        if let DeviceKind::Board { power, .. } = &node.device.kind
            && let Err(err) = hostctl::host::power_off_board(&node.device.hostname, power).await
        {
            ctx.log.line(
                Level::Warning,
                Some(&node.id),
                format!("powering off: {err}"),
            );
        }
        return;
    };
    let _section = ctx.log.section(Some(&node.id), "finalize");
    let dirs = host_dirs(ctx, node);
    let script = format!(
        "rm -rf {}; rmdir {} 2>/dev/null; true",
        shell_quote(&dirs.job_dir),
        shell_quote(&job_parent(ctx))
    );
    host_node::clean(ctx, &up.ssh, &node.id, &script).await;
    host_device::shut_down_host(up, node.device, ctx.log).await;
}

/// The directory of the job's nodes on a host: one per node below it, since hosts
/// may share a file system (ssh-hosts on one machine).
fn job_parent(ctx: &GroupContext<'_>) -> String {
    format!("{}/jobs/{}", ctx.settings.host_dir, ctx.settings.job_id)
}

fn host_dirs(ctx: &GroupContext<'_>, node: &DeviceNode<'_>) -> HostDirs {
    HostDirs::new(
        &ctx.settings.host_dir,
        format!("{}/{}", job_parent(ctx), node.id),
    )
}

/// A node on a host device: brought up (kept in `up` for the cleanup), the node agent
/// deployed, its role's test shells run over SSH.
async fn host_pipeline(ctx: &GroupContext<'_>, node: &DeviceNode<'_>, up: &OnceLock<UpHost>) {
    let mut results = Vec::new();
    let outcome = async {
        let up = {
            let _section = ctx.log.section(Some(&node.id), "boot");
            let boot = nodes::boot_for(ctx.job, &node.role, None);
            let brought =
                host_device::bring_up_host(node.device, &boot, ctx.settings, ctx.log).await?;
            up.get_or_init(|| brought)
        };
        let dirs = host_dirs(ctx, node);
        {
            let _section = ctx.log.section(Some(&node.id), "deploy");
            host_node::make_job_dir(&up.ssh, &dirs).await?;
            host_node::deploy_agent(ctx, &up.ssh, &node.id, &dirs).await?;
        }
        let mut relay = ctx.relay(&node.id)?;
        let node_dirs = NodeDirs::host(&dirs.job_dir);
        for (index, (shell, timeout)) in nodes::test_shells(ctx.job, &node.role).iter().enumerate()
        {
            results.extend(
                host_node::run_shell(
                    ctx, &up.ssh, &mut relay, &node.id, &node.role, &node_dirs, index, shell,
                    *timeout,
                )
                .await?,
            );
        }
        Ok(())
    }
    .await;
    if let (Err(_), Some(up)) = (&outcome, up.get())
        && up.ssh.is_closed()
    {
        ctx.log.line(
            Level::Error,
            Some(&node.id),
            format!("the SSH connection to {} was lost", node.device.hostname),
        );
    }
    ctx.finish_node(&node.id, &node.role, outcome, results)
        .await;
}

async fn vm_pipeline(ctx: &GroupContext<'_>, node: &DeviceNode<'_>, qemu: &QemuTemplate) {
    let mut vm: Option<LocalProcess> = None;
    let outcome = async {
        let (process, prompt) = {
            let _section = ctx.log.section(Some(&node.id), "boot");
            boot(ctx, node, qemu).await?
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
    qemu: &QemuTemplate,
) -> Result<(LocalProcess, Regex), Failure> {
    let device_type = &node.device.device_type;
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
