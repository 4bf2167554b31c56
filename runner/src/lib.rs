//! Running a job: the pipeline each node goes through, as named actions with their own
//! timeouts and log sections.
//!
//! A vm_group job runs as one host pipeline and one pipeline per VM, side by side:
//!
//! * host: `boot` (by the device's kind, until there is an SSH session), `deploy`
//!   (the node agent and every VM image onto the host, through the SHA-256 cache), then
//!   its first `test` shell, `wait-for-vms`, any further `test` shells (which so run only
//!   once every VM has closed), `finalize`;
//! * each VM: `wait-for-start` (unless `auto_start_vms`: the host's `lava-start-vms`),
//!   `boot` (launch on the host, console to the prompt, group LAN up), its `test`
//!   shells, `finalize` (`lava_vm_stop` sent for it, VM stopped, its directory removed).
//!
//! Test shells reach the coordinator through console markers this module relays, as
//! the node itself (see [`shell`]); so a node needs no network path to the dispatcher.
//! A node whose pipeline fails is marked failed in the coordinator at once, so peers
//! waiting for it fail at once too, naming it. Whatever happens, every VM started is
//! stopped and the job's directory on the host removed before the report is returned.

mod context;
pub mod coordination;
mod device_group;
mod files;
pub mod formats;
mod helpers;
mod host_device;
mod host_node;
mod images;
pub mod joblog;
pub mod nodes;
pub mod oneshot;
pub mod report;
pub mod shell;
pub mod testdef;
pub mod validation;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use job_schemas::{Job, Topology, VmGroup};
use parking_lot::Mutex;
use proto::multinode::{VM_START_MESSAGE, VM_STOP_MESSAGE};
use regex::Regex;

use crate::joblog::{JobLog, Level};
use context::{GroupContext, NodeDirs, failed_report};
pub use coordination::Coordination;
use hostctl::images::ImageStore;
use hostctl::launch::{GroupLan, VmImages, VmNetwork};
use hostctl::ssh::{SshSession, shell_quote};
use hostctl::transfer;
use hostctl::vm::{self, RunningVm, VmPlan};
use lab::accel::{self, HostFacts};
use lab::device::Device;
use lab::{Lab, VmType};
use nodes::{GroupPlan, VmNode};
use report::{JobReport, NodeReport};
use states::ErrorClass;

/// Where a run keeps its files, and what it puts on devices.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub job_id: u64,
    /// This job's directory here: its log, console logs, results.
    pub work_dir: PathBuf,
    /// The dispatcher's image store (downloads, decompressed copies).
    pub image_store: PathBuf,
    /// What the job's URLs may reach and bring (the lab's policy).
    pub fetch: Arc<hostctl::fetch::FetchPolicy>,
    /// The static node agent, installed on hosts as the `lava-*` commands.
    pub node_agent: PathBuf,
    /// The lab's SSH key, for devices whose file names none.
    pub lab_key: PathBuf,
    /// The lab's known-hosts file (trust on first use).
    pub known_hosts: PathBuf,
    /// The dispatcher's directory on host devices (job directories, the image cache).
    pub host_dir: String,
    /// Becomes `true` when the job is canceled: the pipelines stop and everything is
    /// cleaned up as after a timeout.
    pub cancel: tokio::sync::watch::Receiver<bool>,
}

/// Writes a finished job's results into its directory in every format
/// (`results.json`, `results.xml`, `results.tap`).
pub fn write_results(dir: &std::path::Path, report: &JobReport) -> std::io::Result<()> {
    use formats::ResultsFormat;
    for format in [
        ResultsFormat::Json,
        ResultsFormat::Junit,
        ResultsFormat::Tap,
    ] {
        std::fs::write(dir.join(format.file_name()), format.render(report))?;
    }
    Ok(())
}

/// Resolves when `cancel` becomes true (never, if its sender is gone without saying so).
pub async fn canceled(mut cancel: tokio::sync::watch::Receiver<bool>) {
    loop {
        if *cancel.borrow_and_update() {
            return;
        }
        if cancel.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Why a node's pipeline stopped.
#[derive(Debug, Clone)]
struct Failure {
    class: ErrorClass,
    action: &'static str,
    message: String,
}

impl Failure {
    fn new(class: ErrorClass, action: &'static str, message: impl ToString) -> Self {
        Self {
            class,
            action,
            message: message.to_string(),
        }
    }

    fn infra(action: &'static str, message: impl ToString) -> Self {
        Self::new(ErrorClass::Infrastructure, action, message)
    }
}

/// Runs a job on the devices given to it (one per need, in `scheduler::needs` order: a
/// vm_group's host; a device per node otherwise) and reports how it went.
pub async fn run_job(
    job: &Job,
    lab: &Lab,
    devices: &[Device],
    coordination: &Coordination,
    settings: &RunSettings,
    log: &JobLog,
) -> JobReport {
    let all: Vec<Option<&Device>> = devices.iter().map(Some).collect();
    run_part(job, lab, &all, coordination, settings, log).await
}

/// Runs this worker's part of a `device_group` job whose devices several workers own:
/// `devices` has one entry per node, in `Job::members` order, `None` for a node
/// another worker drives. The nodes meet in one coordinator group, which this part
/// joins and leaves open (the job's last part to end closes it); the report covers
/// this part's nodes. With every device given, it is [`run_job`].
pub async fn run_part(
    job: &Job,
    lab: &Lab,
    devices: &[Option<&Device>],
    coordination: &Coordination,
    settings: &RunSettings,
    log: &JobLog,
) -> JobReport {
    let started = std::time::Instant::now();
    let whole = devices.iter().all(Option::is_some);
    let nodes = match (&job.topology, devices.first()) {
        (Topology::VmGroup(group), Some(Some(host))) if whole => {
            run_vm_group(job, group, lab, host, coordination, settings, log).await
        }
        (Topology::Single { .. } | Topology::DeviceGroup { .. }, _)
            if devices.len() == job.members().len() =>
        {
            run_device_group(job, devices, coordination, settings, log).await
        }
        _ => fail_all_roles(
            job,
            Failure::infra(
                "schedule",
                format!(
                    "{} device(s) were given to the job, which needs others",
                    devices.len()
                ),
            ),
        ),
    };
    let outcome = JobReport::outcome_of(&nodes);
    let (error_class, error) = match outcome.error {
        Some((class, message)) => (Some(class), Some(message)),
        None => (None, None),
    };
    let report = JobReport {
        job_id: settings.job_id,
        job_name: job.name.clone(),
        health: outcome.health,
        error_class,
        error,
        duration_secs: started.elapsed().as_secs_f64(),
        nodes,
        timeline: log.timeline(),
    };
    log.line(
        Level::Info,
        None,
        format!(
            "job finished: {:?} {}",
            report.health,
            report.error.as_deref().unwrap_or("")
        ),
    );
    report
}

/// A vm_group job: its host, its VMs, and what their pipelines share.
struct GroupRun<'a> {
    ctx: GroupContext<'a>,
    group: &'a VmGroup,
    plan: GroupPlan,
    /// The device type of each of `plan.vms`, in order.
    vm_types: Vec<VmType<'a>>,
    /// The job's directory on the host.
    job_dir: String,
    /// Process groups of the VMs launched, for the last-resort cleanup.
    launched: Arc<Mutex<Vec<u32>>>,
}

impl<'a> std::ops::Deref for GroupRun<'a> {
    type Target = GroupContext<'a>;

    fn deref(&self) -> &GroupContext<'a> {
        &self.ctx
    }
}

async fn run_vm_group(
    job: &Job,
    group: &VmGroup,
    lab: &Lab,
    host: &Device,
    coordination: &Coordination,
    settings: &RunSettings,
    log: &JobLog,
) -> Vec<NodeReport> {
    let plan = GroupPlan::new(job, group);
    // The job names its VMs' types; validation checked them against this lab.
    let vm_types = match plan
        .vms
        .iter()
        .map(|vm| {
            lab.vm_type(&vm.spec.device_type).ok_or_else(|| {
                Failure::new(
                    ErrorClass::Job,
                    "plan",
                    format!(
                        "{}: \"{}\" is not a vm device type of this lab",
                        vm.id, vm.spec.device_type
                    ),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(types) => types,
        Err(failure) => return fail_all_roles(job, failure),
    };
    let members = plan.members();
    let ctx = match GroupContext::create(job, settings, log, coordination, members.clone(), members)
        .await
    {
        Ok(ctx) => ctx,
        Err(failure) => return fail_all_roles(job, failure),
    };
    log.line(
        Level::Info,
        None,
        format!(
            "vm_group job {}: host {} ({}), {} VM(s): {}",
            settings.job_id,
            host.hostname,
            host.device_type.name,
            plan.vms.len(),
            plan.vms
                .iter()
                .map(|v| v.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let run = GroupRun {
        ctx,
        group,
        plan,
        vm_types,
        job_dir: format!("{}/jobs/{}", settings.host_dir, settings.job_id),
        launched: Arc::default(),
    };
    let reports = run.run(host).await;
    run.close().await;
    reports
}

/// A device_group (or single-device) job: a node per device.
async fn run_device_group(
    job: &Job,
    devices: &[Option<&Device>],
    coordination: &Coordination,
    settings: &RunSettings,
    log: &JobLog,
) -> Vec<NodeReport> {
    let members: Vec<(String, String)> = job
        .members()
        .into_iter()
        .map(|m| (m.node, m.role))
        .collect();
    let here: Vec<(String, String)> = members
        .iter()
        .zip(devices)
        .filter(|(_, device)| device.is_some())
        .map(|(member, _)| member.clone())
        .collect();
    let whole = here.len() == members.len();
    let ctx = match GroupContext::create(job, settings, log, coordination, members, here).await {
        Ok(ctx) => ctx,
        Err(failure) => {
            return devices
                .iter()
                .zip(job.members())
                .filter(|(device, _)| device.is_some())
                .map(|(_, m)| failed_report(&m.node, &m.role, &failure))
                .collect();
        }
    };
    let group_nodes: Vec<device_group::DeviceNode> = ctx
        .members
        .iter()
        .zip(devices)
        .enumerate()
        .filter_map(|(index, ((id, role), device))| {
            Some(device_group::DeviceNode {
                id: id.clone(),
                role: role.clone(),
                index: u8::try_from(index).unwrap_or(u8::MAX),
                device: (*device)?,
            })
        })
        .collect();
    log.line(
        Level::Info,
        None,
        format!(
            "job {}: {}",
            settings.job_id,
            group_nodes
                .iter()
                .map(|n| format!("{} on {}", n.id, n.device.hostname))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let cut_short = device_group::run(&ctx, &group_nodes).await;
    // A part leaves the group to the job's last part: the others may still be in it,
    // and are told at once that this part's nodes were cut short.
    if whole {
        ctx.close().await;
    } else if let Some(failure) = &cut_short {
        for (node, _) in &ctx.here {
            ctx.coordination
                .fail_node(&ctx.group_id, node, &failure.message);
        }
    }
    ctx.reports(cut_short)
}

/// Every role failed with `failure` (no group could be formed).
fn fail_all_roles(job: &Job, failure: Failure) -> Vec<NodeReport> {
    job.roles()
        .iter()
        .map(|r| failed_report(&r.name, &r.name, &failure))
        .collect()
}

impl GroupRun<'_> {
    async fn run(&self, host: &Device) -> Vec<NodeReport> {
        let up = {
            let _section = self.log.section(Some(&self.plan.host_id), "boot");
            let boot = nodes::host_boot(self.job, &self.plan.host_role);
            tokio::select! {
                up = host_device::bring_up_host(host, &boot, self.settings, self.log) => up,
                () = canceled(self.settings.cancel.clone()) => Err(Failure::new(
                    ErrorClass::Canceled,
                    "boot",
                    "the job was canceled",
                )),
            }
        };
        let up = match up {
            Ok(up) => up,
            Err(failure) => {
                self.fail_all(&self.plan.host_id, &failure);
                return self.reports(None);
            }
        };
        let pipelines = async {
            let prepared = {
                let _section = self.log.section(Some(&self.plan.host_id), "deploy");
                self.deploy(&up.ssh).await
            };
            match prepared {
                Err(failure) => self.fail_all(&self.plan.host_id, &failure),
                Ok(deployed) => {
                    let vms =
                        futures::future::join_all(self.plan.vms.iter().zip(&self.vm_types).map(
                            |(vm, vm_type)| self.vm_pipeline(&up.ssh, vm, *vm_type, &deployed),
                        ));
                    tokio::join!(self.host_pipeline(&up.ssh), vms);
                }
            }
        };
        let cut_short = self.until_done(pipelines).await;
        if up.ssh.is_closed() {
            // The nodes' failures say what broke for each; this says why.
            self.log.line(
                Level::Error,
                Some(&self.plan.host_id),
                format!("the SSH connection to {} was lost", host.hostname),
            );
        }
        {
            let _section = self.log.section(None, "finalize");
            self.clean_host(&up.ssh).await;
            host_device::shut_down_host(up, host, self.log).await;
        }
        self.reports(cut_short)
    }

    /// The node agent and every VM image onto the host; the accelerator its VMs get.
    async fn deploy(&self, session: &SshSession) -> Result<Deployed, Failure> {
        let dirs = self.host_dirs();
        host_node::make_job_dir(session, &dirs).await?;
        // The node agent, the host's facts and the images are independent: they go
        // side by side over the one connection (each step is a round trip or more).
        let ((), probe, images) = tokio::try_join!(
            host_node::deploy_agent(self, session, &self.plan.host_id, &dirs),
            async {
                session
                    .run(accel::PROBE_COMMAND, Duration::from_secs(30))
                    .await
                    .map_err(|e| Failure::infra("deploy", e))
            },
            self.deploy_images(session, &dirs.cache),
        )?;
        let facts = HostFacts::from_probe_output(&probe);
        Ok(Deployed { images, facts })
    }

    fn host_dirs(&self) -> host_node::HostDirs {
        host_node::HostDirs::new(&self.settings.host_dir, self.job_dir.clone())
    }

    /// Every VM image fetched (or built) here and uploaded into the host's cache (each
    /// file once); the host paths, by VM.
    async fn deploy_images(
        &self,
        session: &SshSession,
        cache: &str,
    ) -> Result<BTreeMap<String, VmImages>, Failure> {
        let store = ImageStore::new(&self.settings.image_store, self.settings.fetch.clone())
            .map_err(|e| Failure::infra("deploy", e))?;
        let mut images = BTreeMap::new();
        let mut uploaded: BTreeMap<String, String> = BTreeMap::new();
        for (vm, vm_type) in self.plan.vms.iter().zip(&self.vm_types) {
            let local =
                images::local_images(&store, &vm.boot, vm_type.qemu, self.log, &vm.id, "deploy")
                    .await?;
            let mut paths = VmImages {
                kernel_args: local.kernel_args.clone(),
                image_format: local.image_format,
                rootfs_format: local.rootfs_format,
                ..VmImages::default()
            };
            for (kind, path) in local.iter() {
                let remote = match uploaded.get(path.as_str()) {
                    Some(remote) => remote.clone(),
                    None => {
                        let remote = self.upload_image(session, cache, vm, kind, path).await?;
                        uploaded.insert(path.clone(), remote.clone());
                        remote
                    }
                };
                paths.set(kind, remote);
            }
            images.insert(vm.id.clone(), paths);
        }
        Ok(images)
    }

    /// One local file into the host's cache; its path there.
    async fn upload_image(
        &self,
        session: &SshSession,
        cache: &str,
        vm: &VmNode,
        kind: &str,
        local: &str,
    ) -> Result<String, Failure> {
        let mut upload = context::progress_logger(self.log, &vm.id, &format!("{kind} upload"));
        let sent = transfer::upload_cached(
            session,
            std::path::Path::new(local),
            cache,
            |done, total| upload(done, Some(total)),
        )
        .await
        .map_err(|e| Failure::infra("deploy", format!("{} {kind}: {e}", vm.id)))?;
        if sent.replaced_poisoned {
            self.log.line(
                Level::Warning,
                Some(&vm.id),
                format!(
                    "the host's cached copy of {kind} {local} had been altered since it was \
                     sent; sent again"
                ),
            );
        }
        self.log.line(
            Level::Info,
            Some(&vm.id),
            format!(
                "{kind} {local}: {} bytes, {} sent (sha256 {})",
                sent.size, sent.bytes_sent, sent.sha256
            ),
        );
        Ok(sent.remote_path)
    }

    /// The host's test shells, with the wait for the VMs after the first.
    async fn host_pipeline(&self, session: &SshSession) {
        let node = self.plan.host_id.as_str();
        let shells = nodes::test_shells(self.job, &self.plan.host_role);
        let mut results = Vec::new();
        let outcome = async {
            let mut relay = self.relay(node)?;
            for (index, (shell, timeout)) in shells.iter().enumerate() {
                if index == 1 {
                    self.wait_for_vms(node).await?;
                }
                results.extend(
                    host_node::run_shell(
                        self,
                        session,
                        &mut relay,
                        node,
                        &self.plan.host_role,
                        &NodeDirs::vm_group_host(&self.job_dir),
                        index,
                        shell,
                        *timeout,
                    )
                    .await?,
                );
            }
            if shells.len() < 2 {
                self.wait_for_vms(node).await?;
            }
            Ok::<(), Failure>(())
        }
        .await;
        self.finish_node(node, &self.plan.host_role, outcome, results)
            .await;
    }

    /// As the host: tells the VMs this side is done and waits until every VM is.
    async fn wait_for_vms(&self, node: &str) -> Result<(), Failure> {
        let _section = self.log.section(Some(node), "wait-for-vms");
        let mut client = self.client(node)?;
        let deadline = SystemTime::now() + Duration::from_secs(self.job.timeout_secs);
        client
            .wait_for_vms(Some(deadline))
            .await
            .map_err(|e| Failure::new(ErrorClass::Test, "wait-for-vms", e))
    }

    /// One VM: wait for the start signal, boot, test shells, stop.
    async fn vm_pipeline(
        &self,
        session: &SshSession,
        vm: &VmNode,
        vm_type: VmType<'_>,
        deployed: &Deployed,
    ) {
        let node = vm.id.as_str();
        let mut results = Vec::new();
        let mut running: Option<RunningVm> = None;
        let outcome = async {
            if !self.group.auto_start_vms {
                let _section = self.log.section(Some(node), "wait-for-start");
                let mut client = self.client(node)?;
                let deadline = SystemTime::now() + Duration::from_secs(self.job.timeout_secs);
                client
                    .wait(VM_START_MESSAGE, Some(deadline))
                    .await
                    .map_err(|e| Failure::new(ErrorClass::Test, "wait-for-start", e))?;
            }
            let prompt = {
                let _section = self.log.section(Some(node), "boot");
                let (vm_running, prompt) = self.boot_vm(session, vm, vm_type, deployed).await?;
                running = Some(vm_running);
                prompt
            };
            let Some(guest) = running.as_mut() else {
                return Err(Failure::infra("boot", "the VM is gone"));
            };
            results = self
                .console_shells(&mut guest.console, &prompt, node, &vm.role)
                .await?;
            Ok(())
        }
        .await;
        if let Some(guest) = running {
            let _section = self.log.section(Some(node), "finalize");
            if let Err(err) = guest.stop(session).await {
                self.log.line(
                    Level::Warning,
                    Some(node),
                    format!("stopping the VM: {err}"),
                );
            }
        }
        // `lava_vm_stop` only once the VM is gone: the host's `lava-wait-for-vms`, and
        // so its next test shell, must see every VM closed.
        let outcome = match outcome {
            Ok(()) => match self.client(node) {
                Ok(mut client) => client
                    .send(VM_STOP_MESSAGE, Default::default())
                    .await
                    .map_err(|e| Failure::infra("finalize", e)),
                Err(failure) => Err(failure),
            },
            Err(failure) => Err(failure),
        };
        self.finish_node(node, &vm.role, outcome, results).await;
    }

    async fn boot_vm(
        &self,
        session: &SshSession,
        vm: &VmNode,
        vm_type: VmType<'_>,
        deployed: &Deployed,
    ) -> Result<(RunningVm, Regex), Failure> {
        // The job's own prompt, compiled once for this VM; else its type's.
        let prompt = vm
            .boot
            .prompt(vm.spec.shell_prompt.as_deref(), &vm_type.device_type.prompt)
            .map_err(|e| Failure::new(ErrorClass::Job, "boot", format!("shell prompt: {e}")))?;
        let login = vm
            .boot
            .console_login(vm_type.device_type.login.as_ref())
            .map_err(|e| Failure::new(ErrorClass::Job, "boot", format!("login prompt: {e}")))?;
        let name = format!("lava-{}-{}", self.settings.job_id, vm.id);
        let workdir = format!("{}/vms/{}", self.job_dir, vm.id);
        let lan = GroupLan::of_job(self.settings.job_id, vm.index);
        let plan = if vm.spec.launch_with.is_empty() {
            let accel = accel::decide_for(
                vm_type.qemu.accel(),
                deployed.facts,
                &vm_type.device_type.arch,
            )
            .accel;
            let images = deployed.images.get(&vm.id).cloned().unwrap_or_default();
            images::check_template(
                &images,
                vm_type.qemu,
                &vm_type.device_type.name,
                &vm.id,
                "boot",
            )?;
            VmPlan::from_template(
                &name,
                &workdir,
                vm_type.qemu,
                accel,
                &images,
                &VmNetwork::group_vm(vm.index, lan.clone()),
            )
        } else {
            VmPlan::from_launch_with(&name, &workdir, &vm.spec.launch_with)
                .map_err(|e| Failure::new(ErrorClass::Job, "boot", e))?
        };
        for command in plan.prepare.iter().chain([&plan.attach]) {
            self.log.line(
                Level::Debug,
                Some(&vm.id),
                format!("launching (in {}): {command}", plan.workdir),
            );
        }
        let mut running = vm::launch(session, &plan, self.console_log(&vm.id))
            .await
            .map_err(|e| Failure::infra("boot", e))?;
        self.launched.lock().push(running.process_group);
        let booted = async {
            running
                .wait_for_prompt(&prompt, login.as_ref(), vm_type.device_type.boot_timeout)
                .await
                .map_err(|e| match &e {
                    vm::VmError::Console { source, .. } => {
                        context::guest_boot_failure(source, e.to_string())
                    }
                    _ => Failure::infra("boot", e),
                })?;
            self.log
                .line(Level::Info, Some(&vm.id), "at the shell prompt".to_string());
            if vm.spec.launch_with.is_empty() {
                running
                    .configure_lan(&lan, &prompt)
                    .await
                    .map_err(|e| match e {
                        vm::VmError::GuestLan { .. } => Failure::new(ErrorClass::Job, "boot", e),
                        _ => Failure::infra("boot", e),
                    })?;
            }
            Ok::<(), Failure>(())
        }
        .await;
        match booted {
            Ok(()) => Ok((running, prompt)),
            Err(failure) => {
                if let Err(err) = running.stop(session).await {
                    self.log.line(
                        Level::Warning,
                        Some(&vm.id),
                        format!("stopping the VM: {err}"),
                    );
                }
                Err(failure)
            }
        }
    }

    /// Last resort after the pipelines: kills any VM process group still there (a
    /// pipeline cut short by the job timeout did not stop its VM) and removes the
    /// job's directory on the host.
    async fn clean_host(&self, session: &SshSession) {
        let groups = self.launched.lock().clone();
        let mut script = String::new();
        for group in groups.iter().filter(|g| **g > 1) {
            script.push_str(&format!("kill -KILL -- -{group} 2>/dev/null; "));
        }
        script.push_str(&format!("rm -rf {}", shell_quote(&self.job_dir)));
        host_node::clean(self, session, &self.plan.host_id, &script).await;
    }
}

/// The images each VM boots, as paths on the host, and what the host offers VMs.
struct Deployed {
    images: BTreeMap<String, VmImages>,
    facts: HostFacts,
}
