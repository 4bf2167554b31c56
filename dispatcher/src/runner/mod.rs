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

mod files;
mod host_device;
pub mod nodes;
pub mod oneshot;
pub mod report;
pub mod shell;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use coordinator::group::{VM_START_MESSAGE, VM_STOP_MESSAGE};
use coordinator::relay::Relay;
use coordinator::store::Store;
use coordinator::{NodeClient, Target};
use job_schemas::{Job, TestDefinitionSource, TestShell, Topology, VmGroup};
use regex::Regex;

use crate::console::{Console, ConsoleLog};
use crate::images::ImageStore;
use crate::joblog::{JobLog, Level};
use crate::lab::Lab;
use crate::lab::accel::{self, HostFacts};
use crate::lab::device::Device;
use crate::ssh::{SshSession, shell_quote};
use crate::states::ErrorClass;
use crate::testdef::{self, ResultParser};
use crate::transfer;
use crate::vm::{self, GroupLan, RunningVm, VmImages, VmNetwork, VmPlan};
use nodes::{GroupPlan, VmNode};
use report::{CaseReport, JobReport, NodeReport, NodeStatus};
use shell::{Definition, DefinitionResults};

/// Where a run keeps its files, and what it puts on devices.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub job_id: u64,
    /// This job's directory here: its log, console logs, results.
    pub work_dir: PathBuf,
    /// The dispatcher's image store (downloads, decompressed copies).
    pub image_store: PathBuf,
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

/// The coordinator the job's group lives in (embedded in this process).
#[derive(Clone)]
pub struct Coordination {
    pub store: Arc<Store>,
    /// Its gRPC address as this process reaches it, e.g. `http://127.0.0.1:7079`.
    pub url: String,
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

/// Runs a job on the devices given to it and reports how it went. Only vm_group jobs
/// run today; other topologies are reported incomplete, class `job`, saying so.
pub async fn run_job(
    job: &Job,
    lab: &Lab,
    host: &Device,
    coordination: &Coordination,
    settings: &RunSettings,
    log: &JobLog,
) -> JobReport {
    let started = std::time::Instant::now();
    let nodes = match &job.topology {
        Topology::VmGroup(group) => {
            run_vm_group(job, group, lab, host, coordination, settings, log).await
        }
        Topology::Single { .. } | Topology::DeviceGroup { .. } => job
            .roles()
            .iter()
            .map(|role| NodeReport {
                node: role.name.clone(),
                role: role.name.clone(),
                status: NodeStatus::Failed {
                    class: ErrorClass::Job,
                    action: "schedule".into(),
                    message: "only vm_group jobs can run in this version".into(),
                },
                results: Vec::new(),
            })
            .collect(),
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

/// Everything the pipelines of one vm_group job share.
struct GroupRun<'a> {
    job: &'a Job,
    group: &'a VmGroup,
    plan: GroupPlan,
    lab: &'a Lab,
    settings: &'a RunSettings,
    log: &'a JobLog,
    coordination: &'a Coordination,
    group_id: String,
    clients: BTreeMap<String, NodeClient>,
    /// The job's directory on the host.
    job_dir: String,
    /// Process groups of the VMs launched, for the last-resort cleanup.
    launched: Arc<Mutex<Vec<u32>>>,
    /// Reports of nodes whose pipeline ended, by node id.
    finished: Arc<Mutex<BTreeMap<String, NodeReport>>>,
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
    let plan = match GroupPlan::new(job, group) {
        Ok(plan) => plan,
        Err(err) => return fail_all_roles(job, Failure::new(ErrorClass::Job, "plan", err)),
    };
    let members = plan.members();
    let group_id = format!("job-{}", settings.job_id);
    let credentials = match coordination
        .store
        .create_group(Some(group_id.clone()), members.clone())
    {
        Ok((_, credentials)) => credentials,
        Err(err) => return fail_all(&plan, Failure::infra("plan", format!("coordinator: {err}"))),
    };
    let mut clients = BTreeMap::new();
    for credential in credentials {
        match NodeClient::connect(
            Target::plain(&coordination.url),
            &group_id,
            &credential.node_id,
            &credential.token,
        )
        .await
        {
            Ok(client) => {
                clients.insert(credential.node_id, client);
            }
            Err(err) => {
                let _ = coordination.store.close_group(&group_id);
                return fail_all(&plan, Failure::infra("plan", format!("coordinator: {err}")));
            }
        }
    }
    let run = GroupRun {
        job,
        group,
        plan,
        lab,
        settings,
        log,
        coordination,
        group_id: group_id.clone(),
        clients,
        job_dir: format!("{}/jobs/{}", settings.host_dir, settings.job_id),
        launched: Arc::default(),
        finished: Arc::default(),
    };
    log.line(
        Level::Info,
        None,
        format!(
            "vm_group job {}: host {} ({}), {} VM(s): {}",
            settings.job_id,
            host.hostname,
            host.device_type,
            run.plan.vms.len(),
            run.plan
                .vms
                .iter()
                .map(|v| v.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let reports = run.run(host).await;
    let _ = coordination.store.close_group(&group_id);
    reports
}

fn fail_all_roles(job: &Job, failure: Failure) -> Vec<NodeReport> {
    job.roles()
        .iter()
        .map(|r| failed_report(&r.name, &r.name, &failure))
        .collect()
}

fn fail_all(plan: &GroupPlan, failure: Failure) -> Vec<NodeReport> {
    plan.members()
        .iter()
        .map(|(node, role)| failed_report(node, role, &failure))
        .collect()
}

fn failed_report(node: &str, role: &str, failure: &Failure) -> NodeReport {
    NodeReport {
        node: node.to_string(),
        role: role.to_string(),
        status: NodeStatus::Failed {
            class: failure.class,
            action: failure.action.to_string(),
            message: failure.message.clone(),
        },
        results: Vec::new(),
    }
}

impl GroupRun<'_> {
    async fn run(&self, host: &Device) -> Vec<NodeReport> {
        let Some(host_type) = self.lab.device_types.get(&host.device_type) else {
            return fail_all(
                &self.plan,
                Failure::infra("boot", format!("unknown device type {}", host.device_type)),
            );
        };
        let up = {
            let _section = self.log.section(Some(&self.plan.host_id), "boot");
            tokio::select! {
                up = host_device::bring_up_host(host, host_type, self.settings, self.log) => up,
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
                self.log.line(
                    Level::Error,
                    Some(&self.plan.host_id),
                    failure.message.as_str(),
                );
                return fail_all(&self.plan, failure);
            }
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.job.timeout_secs);
        let pipelines = async {
            let prepared = {
                let _section = self.log.section(Some(&self.plan.host_id), "deploy");
                self.deploy(&up.ssh).await
            };
            match prepared {
                Err(failure) => {
                    self.log.line(
                        Level::Error,
                        Some(&self.plan.host_id),
                        failure.message.as_str(),
                    );
                    for (node, role) in self.plan.members() {
                        self.record(failed_report(&node, &role, &failure));
                    }
                }
                Ok(deployed) => {
                    let vms = futures::future::join_all(
                        self.plan
                            .vms
                            .iter()
                            .map(|vm| self.vm_pipeline(&up.ssh, vm, &deployed)),
                    );
                    tokio::join!(self.host_pipeline(&up.ssh), vms);
                }
            }
        };
        let cut_short = tokio::select! {
            ended = tokio::time::timeout_at(deadline, pipelines) => match ended {
                Ok(()) => None,
                Err(_) => Some(Failure::new(
                    ErrorClass::Timeout,
                    "job",
                    format!("the job timeout of {} s passed", self.job.timeout_secs),
                )),
            },
            () = canceled(self.settings.cancel.clone()) => Some(Failure::new(
                ErrorClass::Canceled,
                "job",
                "the job was canceled",
            )),
        };
        if let Some(failure) = &cut_short {
            self.log.line(Level::Error, None, failure.message.as_str());
        }
        {
            let _section = self.log.section(None, "finalize");
            self.clean_host(&up.ssh).await;
            host_device::shut_down_host(up, host, self.log).await;
        }
        let finished = self.finished.lock().map(|f| f.clone()).unwrap_or_default();
        self.plan
            .members()
            .into_iter()
            .map(|(node, role)| {
                finished.get(&node).cloned().unwrap_or_else(|| {
                    let failure = cut_short.clone().unwrap_or_else(|| {
                        Failure::infra("job", "the node's pipeline did not report")
                    });
                    failed_report(&node, &role, &failure)
                })
            })
            .collect()
    }

    fn record(&self, report: NodeReport) {
        if let NodeStatus::Failed {
            message, action, ..
        } = &report.status
        {
            // Peers waiting for this node fail now, naming it, instead of at their
            // deadline.
            let _ = self.coordination.store.fail_node(
                &self.group_id,
                &report.node,
                &format!("{action}: {message}"),
            );
        }
        if let Ok(mut finished) = self.finished.lock() {
            finished.insert(report.node.clone(), report);
        }
    }

    fn client(&self, node: &str) -> Result<NodeClient, Failure> {
        self.clients
            .get(node)
            .cloned()
            .ok_or_else(|| Failure::infra("plan", format!("no coordinator client for {node}")))
    }

    fn relay(&self, node: &str) -> Result<Relay, Failure> {
        Ok(Relay::new(
            self.client(node)?,
            Duration::from_secs(self.job.timeout_secs),
        ))
    }

    /// The node agent and every VM image onto the host; the accelerator its VMs get.
    async fn deploy(&self, session: &SshSession) -> Result<Deployed, Failure> {
        let cache = format!("{}/cache", self.settings.host_dir);
        let bin = format!("{}/bin", self.job_dir);
        session
            .run(
                &format!(
                    "rm -rf {0} && mkdir -p {1}",
                    shell_quote(&self.job_dir),
                    shell_quote(&bin)
                ),
                Duration::from_secs(60),
            )
            .await
            .map_err(|e| Failure::infra("deploy", e))?;
        let agent = transfer::upload_cached(session, &self.settings.node_agent, &cache, |_, _| {})
            .await
            .map_err(|e| Failure::infra("deploy", format!("node agent: {e}")))?;
        session
            .run(
                &format!(
                    "cp {src} {bin}/node-agent && chmod 755 {bin}/node-agent && {bin}/node-agent install {bin}",
                    src = shell_quote(&agent.remote_path),
                    bin = shell_quote(&bin)
                ),
                Duration::from_secs(60),
            )
            .await
            .map_err(|e| Failure::infra("deploy", format!("node agent: {e}")))?;
        let facts = HostFacts::from_probe_output(
            &session
                .run(accel::PROBE_COMMAND, Duration::from_secs(30))
                .await
                .map_err(|e| Failure::infra("deploy", e))?,
        );
        let store =
            ImageStore::new(&self.settings.image_store).map_err(|e| Failure::infra("deploy", e))?;
        let mut images = BTreeMap::new();
        let mut uploaded: BTreeMap<String, String> = BTreeMap::new();
        for vm in &self.plan.vms {
            let mut paths = VmImages::default();
            for (kind, url) in vm.images.iter() {
                let remote = match uploaded.get(url.as_str()) {
                    Some(remote) => remote.clone(),
                    None => {
                        let local = store.fetch(url, |_, _| {}).await.map_err(|e| {
                            Failure::new(
                                ErrorClass::Job,
                                "deploy",
                                format!("{} {kind}: {e}", vm.id),
                            )
                        })?;
                        let sent = transfer::upload_cached(session, &local, &cache, |_, _| {})
                            .await
                            .map_err(|e| {
                                Failure::infra("deploy", format!("{} {kind}: {e}", vm.id))
                            })?;
                        self.log.line(
                            Level::Info,
                            Some(&vm.id),
                            format!(
                                "{kind} {url}: {} bytes, {} sent (sha256 {})",
                                sent.size, sent.bytes_sent, sent.sha256
                            ),
                        );
                        uploaded.insert(url.to_string(), sent.remote_path.clone());
                        sent.remote_path
                    }
                };
                let slot = match kind {
                    "kernel" => &mut paths.kernel,
                    "ramdisk" => &mut paths.ramdisk,
                    "dtb" => &mut paths.dtb,
                    "rootfs" => &mut paths.rootfs,
                    _ => &mut paths.image,
                };
                *slot = Some(remote);
            }
            images.insert(vm.id.clone(), paths);
        }
        Ok(Deployed { images, facts })
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
                let _section = self.log.section(Some(node), "test");
                let dir = format!("{}/tests/{index}", self.job_dir);
                let definitions = self.definitions(shell, index).await?;
                let files = self.scripts(node, &self.plan.host_role, &definitions, &dir, true);
                files::write_host_files(session, &files)
                    .await
                    .map_err(|e| Failure::infra("test", e))?;
                let command = format!(
                    "cd {} && {}",
                    shell_quote(&self.job_dir),
                    shell::run_command(&format!("{dir}/run.sh"))
                );
                let pty = session
                    .pty(&command)
                    .await
                    .map_err(|e| Failure::infra("test", e))?;
                let mut console = Console::new(pty, self.console_log(node));
                let timeout = self.shell_timeout(*timeout);
                let outcome = shell::drive(
                    &mut console,
                    &mut relay,
                    &definitions
                        .iter()
                        .map(|(d, _)| d.reader())
                        .collect::<Result<Vec<_>, _>>()?,
                    timeout,
                    self.log,
                    node,
                )
                .await
                .map_err(shell_failure)?;
                results.extend(case_reports(outcome.results));
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

    async fn finish_node(
        &self,
        node: &str,
        role: &str,
        outcome: Result<(), Failure>,
        results: Vec<CaseReport>,
    ) {
        let status = match outcome {
            Ok(()) => {
                if let Ok(mut client) = self.client(node) {
                    let _ = client.finish().await;
                }
                NodeStatus::Done
            }
            Err(failure) => {
                self.log.line(
                    Level::Error,
                    Some(node),
                    format!("{} failed: {}", failure.action, failure.message),
                );
                NodeStatus::Failed {
                    class: failure.class,
                    action: failure.action.to_string(),
                    message: failure.message,
                }
            }
        };
        self.record(NodeReport {
            node: node.to_string(),
            role: role.to_string(),
            status,
            results,
        });
    }

    /// One VM: wait for the start signal, boot, test shells, stop.
    async fn vm_pipeline(&self, session: &SshSession, vm: &VmNode, deployed: &Deployed) {
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
                let (vm_running, prompt) = self.boot_vm(session, vm, deployed).await?;
                running = Some(vm_running);
                prompt
            };
            let Some(guest) = running.as_mut() else {
                return Err(Failure::infra("boot", "the VM is gone"));
            };
            let mut relay = self.relay(node)?;
            for (index, (shell, timeout)) in nodes::test_shells(self.job, &vm.role)
                .into_iter()
                .enumerate()
            {
                let _section = self.log.section(Some(node), "test");
                let dir = format!("/tmp/lava-{}/tests/{index}", self.settings.job_id);
                let definitions = self.definitions(shell, index).await?;
                let files = self.scripts(node, &vm.role, &definitions, &dir, false);
                for (path, content) in &files {
                    files::write_console_file(&mut guest.console, &prompt, path, content)
                        .await
                        .map_err(|e| Failure::infra("test", format!("cannot write {path}: {e}")))?;
                }
                guest
                    .console
                    .send_line(&shell::run_command(&format!("{dir}/run.sh")))
                    .await
                    .map_err(|e| Failure::infra("test", e))?;
                let outcome = shell::drive(
                    &mut guest.console,
                    &mut relay,
                    &definitions
                        .iter()
                        .map(|(d, _)| d.reader())
                        .collect::<Result<Vec<_>, _>>()?,
                    self.shell_timeout(timeout),
                    self.log,
                    node,
                )
                .await
                .map_err(shell_failure)?;
                results.extend(case_reports(outcome.results));
                guest
                    .console
                    .expect(&prompt, Duration::from_secs(60))
                    .await
                    .map_err(|e| Failure::infra("test", e))?;
            }
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
        deployed: &Deployed,
    ) -> Result<(RunningVm, Regex), Failure> {
        let vm_type = self
            .lab
            .device_types
            .get(&vm.spec.device_type)
            .ok_or_else(|| {
                Failure::infra(
                    "boot",
                    format!("unknown device type {}", vm.spec.device_type),
                )
            })?;
        let prompt_text = vm
            .spec
            .shell_prompt
            .as_deref()
            .unwrap_or(&vm_type.shell_prompt);
        let prompt = Regex::new(prompt_text)
            .map_err(|e| Failure::new(ErrorClass::Job, "boot", format!("shell_prompt: {e}")))?;
        let name = format!("lava-{}-{}", self.settings.job_id, vm.id);
        let workdir = format!("{}/vms/{}", self.job_dir, vm.id);
        let lan_group = u32::try_from(self.settings.job_id % u64::from(u32::MAX)).unwrap_or(0);
        let lan = GroupLan::member(lan_group, vm.index);
        let plan = if vm.spec.launch_with.is_empty() {
            let template = vm_type.qemu.as_ref().ok_or_else(|| {
                Failure::infra(
                    "boot",
                    format!("device type {} has no qemu template", vm_type.name),
                )
            })?;
            let accel = accel::decide(template.accel, deployed.facts).accel;
            let images = deployed.images.get(&vm.id).cloned().unwrap_or_default();
            VmPlan::from_template(
                &name,
                &workdir,
                template,
                accel,
                &images,
                &VmNetwork {
                    netdev: Some("user,id=n0".into()),
                    mac: Some(format!("52:54:00:12:34:{:02x}", 0x10 + u32::from(vm.index))),
                    lan: Some(lan.clone()),
                },
            )
        } else {
            VmPlan::from_launch_with(&name, &workdir, &vm.spec.launch_with)
        }
        .map_err(|e| Failure::new(ErrorClass::Job, "boot", e))?;
        let mut running = vm::launch(session, &plan, self.console_log(&vm.id))
            .await
            .map_err(|e| Failure::infra("boot", e))?;
        if let Ok(mut launched) = self.launched.lock() {
            launched.push(running.process_group);
        }
        let booted = async {
            running
                .wait_for_prompt(&prompt, Duration::from_secs(vm_type.boot_timeout))
                .await
                .map_err(|e| Failure::infra("boot", e))?;
            if vm.spec.launch_with.is_empty() {
                running
                    .configure_lan(&lan, &prompt)
                    .await
                    .map_err(|e| Failure::infra("boot", e))?;
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

    /// The definitions of one test shell, fetched and checked, with their scripts.
    async fn definitions(
        &self,
        shell: &TestShell,
        shell_index: usize,
    ) -> Result<Vec<(PreparedDefinition, String)>, Failure> {
        let mut prepared = Vec::new();
        for (index, source) in shell.definitions.iter().enumerate() {
            let (definition, parameters) = match source {
                TestDefinitionSource::Inline {
                    definition,
                    parameters,
                } => (definition.clone(), parameters.clone()),
                TestDefinitionSource::Url(url) => {
                    let store = ImageStore::new(&self.settings.image_store)
                        .map_err(|e| Failure::infra("test", e))?;
                    let path = store.fetch(url, |_, _| {}).await.map_err(|e| {
                        Failure::new(ErrorClass::Job, "test", format!("{url}: {e}"))
                    })?;
                    let text = tokio::fs::read_to_string(&path).await.map_err(|e| {
                        Failure::new(ErrorClass::Job, "test", format!("{url}: {e}"))
                    })?;
                    let definition = testdef::from_yaml(url.as_str(), &text)
                        .map_err(|e| Failure::new(ErrorClass::Job, "test", e))?;
                    (definition, BTreeMap::new())
                }
            };
            let name = definition.metadata.name.clone();
            let run_id = format!("{shell_index}.{index}_{}", sanitize(&name));
            let script = testdef::script(&definition, &parameters, &run_id);
            prepared.push((
                PreparedDefinition {
                    run_id,
                    name,
                    definition,
                },
                script,
            ));
        }
        Ok(prepared)
    }

    /// The files of one test shell: each definition's script and `run.sh`, which sets
    /// the node's environment and runs them in order.
    fn scripts(
        &self,
        node: &str,
        role: &str,
        definitions: &[(PreparedDefinition, String)],
        dir: &str,
        on_host: bool,
    ) -> Vec<(String, String)> {
        let mut env = vec![
            ("LAVA_JOB_ID", self.settings.job_id.to_string()),
            ("LAVA_NODE_ID", node.to_string()),
            ("LAVA_NODE_ROLE", role.to_string()),
            ("LAVA_GROUP", self.plan.group_listing()),
            ("LAVA_MULTINODE_TRANSPORT", "marker".to_string()),
            ("LAVA_MULTINODE_TIMEOUT", self.job.timeout_secs.to_string()),
        ];
        if on_host {
            // VMs reach their host at qemu user networking's gateway.
            env.push(("_LAVA_VM_GROUP_HOST_IP", "10.0.2.2".to_string()));
            env.push((
                "LAVA_MULTI_NODE_CACHE",
                format!("{}/multinode-cache.txt", self.job_dir),
            ));
            env.push((
                "LAVA_MULTI_NODE_NETWORK_CACHE",
                format!("{}/multinode-network-cache.txt", self.job_dir),
            ));
        }
        let mut run = String::from("#!/bin/sh\n");
        for (key, value) in &env {
            run.push_str(&format!("export {key}={}\n", shell_quote(value)));
        }
        if on_host {
            run.push_str(&format!(
                "export PATH={}:\"$PATH\"\n",
                shell_quote(&format!("{}/bin", self.job_dir))
            ));
        }
        let mut files = Vec::new();
        for (definition, script) in definitions {
            let path = format!("{dir}/{}.sh", definition.run_id);
            run.push_str(&format!("sh {}\n", shell_quote(&path)));
            files.push((path, script.clone()));
        }
        files.push((format!("{dir}/run.sh"), run));
        files
    }

    fn shell_timeout(&self, action_timeout: Option<u64>) -> Duration {
        Duration::from_secs(action_timeout.unwrap_or(self.job.timeout_secs))
    }

    fn console_log(&self, node: &str) -> ConsoleLog {
        let path = self.settings.work_dir.join(format!("console-{node}.log"));
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            Ok(file) => ConsoleLog::to_writer(file),
            Err(err) => {
                self.log.line(
                    Level::Warning,
                    Some(node),
                    format!(
                        "cannot write {}: {err}; console kept in memory",
                        path.display()
                    ),
                );
                ConsoleLog::default()
            }
        }
    }

    /// Last resort after the pipelines: kills any VM process group still there (a
    /// pipeline cut short by the job timeout did not stop its VM) and removes the
    /// job's directory on the host.
    async fn clean_host(&self, session: &SshSession) {
        let groups = self.launched.lock().map(|g| g.clone()).unwrap_or_default();
        let mut script = String::new();
        for group in groups.iter().filter(|g| **g > 1) {
            script.push_str(&format!("kill -KILL -- -{group} 2>/dev/null; "));
        }
        script.push_str(&format!("rm -rf {}", shell_quote(&self.job_dir)));
        if let Err(err) = session.run(&script, Duration::from_secs(60)).await {
            self.log
                .line(Level::Warning, None, format!("cleaning the host: {err}"));
        }
    }
}

/// The images each VM boots, as paths on the host, and what the host offers VMs.
struct Deployed {
    images: BTreeMap<String, VmImages>,
    facts: HostFacts,
}

/// A definition ready to run: its run id and what its results are read with.
struct PreparedDefinition {
    run_id: String,
    name: String,
    definition: job_schemas::TestDefinition,
}

impl PreparedDefinition {
    /// The shell driver's view of this definition: its run id, name and result reader.
    fn reader(&self) -> Result<Definition, Failure> {
        Ok(Definition {
            run_id: self.run_id.clone(),
            name: self.name.clone(),
            parser: ResultParser::new(Some(&self.definition)).map_err(|e| {
                Failure::new(
                    ErrorClass::Job,
                    "test",
                    format!("{}: parse pattern: {e}", self.name),
                )
            })?,
        })
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn shell_failure(err: shell::ShellError) -> Failure {
    match err {
        shell::ShellError::Timeout { .. } => Failure::new(ErrorClass::Timeout, "test", err),
        shell::ShellError::Console(_) => Failure::infra("test", err),
    }
}

fn case_reports(results: Vec<DefinitionResults>) -> Vec<CaseReport> {
    results
        .into_iter()
        .flat_map(|d| {
            let suite = d.name;
            d.cases.into_iter().map(move |c| CaseReport {
                suite: suite.clone(),
                case: c.name,
                result: c.result,
                measurement: c.measurement,
                units: c.units,
            })
        })
        .collect()
}
