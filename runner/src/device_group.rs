//! A `device_group` job (and a single-device job, a group of one) on `vm`-kind devices:
//! each node is a VM the dispatcher starts on its own machine from the device type's
//! qemu template, with its console on qemu's stdio. Per node: `deploy` (its role's
//! images, fetched into the image store), `boot` (to the prompt, group LAN up), `test`,
//! `finalize` (the VM stopped). The nodes share a LAN segment, as a vm_group's VMs do.

use std::time::Duration;

use regex::Regex;

use super::context::GroupContext;
use super::{Failure, nodes};
use crate::joblog::Level;
use hostctl::images::ImageStore;
use hostctl::local::LocalProcess;
use hostctl::vm::GroupLan;
use lab::accel::{self, HostFacts};
use lab::device::Device;
use lab::device_type::DeviceKind;
use lab::qemu_template::LaunchValues;
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

/// Starts the node's VM here and brings it to its prompt with its LAN up.
async fn boot(
    ctx: &GroupContext<'_>,
    node: &DeviceNode<'_>,
) -> Result<(LocalProcess, Regex), Failure> {
    let device_type = ctx
        .lab
        .device_types
        .get(&node.device.device_type)
        .ok_or_else(|| {
            Failure::infra(
                "boot",
                format!("unknown device type {}", node.device.device_type),
            )
        })?;
    if device_type.kind != DeviceKind::Vm {
        return Err(Failure::new(
            ErrorClass::Job,
            "boot",
            format!(
                "device_group nodes on {} devices ({}) cannot run in this version; vm devices can",
                device_type.kind.as_str(),
                node.device.hostname
            ),
        ));
    }
    let mut template = device_type.qemu.clone().ok_or_else(|| {
        Failure::infra("boot", format!("{} has no qemu template", device_type.name))
    })?;
    if let Some(overrides) = &node.device.qemu {
        if let Some(memory) = overrides.memory_mib {
            template.memory_mib = memory;
        }
        if let Some(cpus) = overrides.cpus {
            template.cpus = cpus;
        }
    }
    let prompt = Regex::new(&device_type.shell_prompt)
        .map_err(|e| Failure::infra("boot", format!("{}: shell_prompt: {e}", device_type.name)))?;
    let workdir = ctx.settings.work_dir.join("vms").join(&node.id);
    std::fs::create_dir_all(&workdir).map_err(|e| Failure::infra("boot", e))?;
    let qmp = workdir.join("qmp.sock").display().to_string();
    let name = format!("lava-{}-{}", ctx.settings.job_id, node.id);
    let accel = accel::decide(
        node.device.accel.unwrap_or(template.accel),
        HostFacts::probe_local(),
    )
    .accel;
    let mut values = LaunchValues::new(
        &template,
        accel,
        &name,
        &workdir.display().to_string(),
        &qmp,
    );
    let store = ImageStore::new(&ctx.settings.image_store, ctx.settings.fetch.clone())
        .map_err(|e| Failure::infra("boot", e))?;
    let images = nodes::images_for(ctx.job, &node.role, None);
    for (kind, url) in images.iter() {
        let download =
            super::context::progress_logger(ctx.log, &node.id, &format!("{kind} download"));
        let local = store.fetch(url, download).await.map_err(|e| {
            Failure::new(ErrorClass::Job, "boot", format!("{} {kind}: {e}", node.id))
        })?;
        values.set(kind, local.display().to_string());
    }
    let lan_group = u32::try_from(ctx.settings.job_id % u64::from(u32::MAX)).unwrap_or(0);
    let lan = GroupLan::member(lan_group, node.index);
    // `restrict=on`: the guest runs the job's code on the dispatcher's own machine, and
    // qemu's user networking would otherwise route 10.0.2.2 to this machine's loopback
    // (the API, the coordinator's ports, anything listening there) and on to every
    // network the dispatcher reaches. Its console carries the MultiNode calls and its
    // group LAN the traffic between nodes, so it needs neither.
    values.set("netdev", hostctl::vm::ISOLATED_USER_NETDEV);
    values.set(
        "mac",
        format!("52:54:00:12:35:{:02x}", 0x10 + u32::from(node.index)),
    );
    values.set("lan", lan.netdev.as_str());
    values.set("lan_mac", lan.mac.as_str());
    let argv = template
        .render(&values)
        .map_err(|e| Failure::new(ErrorClass::Job, "boot", e))?;
    ctx.log.line(
        Level::Info,
        Some(&node.id),
        format!(
            "starting {} on this machine: {}",
            node.device.hostname,
            argv.join(" ")
        ),
    );
    let mut process = LocalProcess::spawn(&name, &argv, ctx.console_log(&node.id), Some(qmp))
        .map_err(|e| Failure::infra("boot", e))?;
    let booted = async {
        process
            .console
            .expect(&prompt, Duration::from_secs(device_type.boot_timeout))
            .await
            .map_err(|e| super::context::guest_boot_failure(&e, format!("{name}: {e}")))?;
        let command = lan.up_command();
        let (output, code) = process
            .console
            .run(&command, &prompt, Duration::from_secs(30))
            .await
            .map_err(|e| Failure::infra("boot", e))?;
        if code != 0 {
            return Err(Failure::infra(
                "boot",
                format!("`{command}` exited with {code}: {}", output.trim()),
            ));
        }
        Ok::<(), Failure>(())
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
