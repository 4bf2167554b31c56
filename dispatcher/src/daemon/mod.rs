//! The dispatcher daemon (`dispatcher serve`): the lab's devices, the job queue in the
//! store, the HTTP API, the scheduler, and the jobs it runs, with the coordinator
//! embedded in the same process or, when the configuration names one, a standalone
//! coordinator.
//!
//! The scheduler runs when something changes (a job submitted or ended, a device's
//! health set, a periodic health check falling due), never on a polling tick: it
//! queues the health checks that are due (`health.rs`), reads the queue and the
//! devices from the store,
//! asks [`scheduler::plan`] which jobs get which devices, reserves each job's
//! devices all at once in one transaction, and starts the job. A restart loses nothing
//! submitted: queued jobs stay queued, and jobs that were running end `incomplete`
//! ("dispatcher restarted"), their devices back in the pool.
//!
//! `schedule.rs` is that loop: a pass reads the whole queue, except when only jobs
//! were submitted since a pass that left no device free (then those jobs can only
//! wait, and their reasons are worked out alone).
//!
//! `service.rs` is what clients can ask of the daemon (typed requests and answers);
//! `api.rs` is the HTTP API over it. The store is an `Arc<dyn store::Store>` (SQLite
//! by default), whose calls keep their blocking work off the async threads.

pub mod api;
pub mod config;
pub mod database;
mod forward;
mod health;
pub mod http;
mod logs;
mod mail;
mod metrics;
pub mod notify;
mod parts;
mod schedule;
pub mod service;
mod sessions;
mod workers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use job_schemas::Job;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::DaemonConfig;
use lab::Lab;
use runner::joblog::{JobLog, Level};
use runner::validation::JobPolicy;
use runner::{self, Coordination, RunSettings};

use states::{ErrorClass, Outcome};
use store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("the lab configuration is not valid:\n{0}")]
    Lab(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the database: {0}")]
    Store(#[from] StoreError),
    #[error("the coordinator: {0}")]
    Coordinator(String),
    #[error("the configuration names paths that are not there:\n  {}", .0.join("\n  "))]
    MissingPaths(Vec<String>),
}

/// The lab as its files say now, with the job policy made from it. A reload replaces
/// it whole; a job keeps the one it started with to its end, so a reload never changes
/// a running job's devices.
pub struct LabState {
    pub lab: Lab,
    pub policy: JobPolicy,
    /// The devices of each other worker sharing the database, as if idle: with these
    /// a job is possible even when this worker's devices could never run it.
    pub others: Vec<Vec<scheduler::DeviceView>>,
    /// A job may run on several workers' devices together (see `parts`): workers share
    /// the database and a standalone coordinator.
    pub span: bool,
}

impl LabState {
    /// [`validation::validate_for_run`] in the whole lab, other workers' devices too.
    pub fn validate_for_run(
        &self,
        text: &str,
    ) -> Result<job_schemas::Validated, job_schemas::Report> {
        runner::validation::validate_for_run_with(
            text,
            &self.lab,
            &self.policy,
            &self.others,
            self.span,
        )
    }
}

/// What a reload of the lab files found.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Reloaded {
    /// The devices in use now.
    pub devices: Vec<String>,
    /// Device files with errors, by file name: those devices are offline.
    pub refused: Vec<String>,
    /// Errors in all the files.
    pub errors: usize,
    /// Every problem, compiler style, with file, line and key.
    pub problems: String,
}

/// What the service, the scheduler and the job tasks share.
pub struct Shared {
    pub config: DaemonConfig,
    /// Swapped whole by [`Shared::reload`].
    lab: parking_lot::RwLock<Arc<LabState>>,
    /// Held by a reload and by each scheduling pass: a pass sees the lab and the store's
    /// devices of one reload, and a reload's fresh start (no cached validation) is not
    /// undone by a pass under way.
    reloading: tokio::sync::Mutex<()>,
    pub store: Arc<dyn Store>,
    pub coordination: Coordination,
    /// Wakes the scheduler, saying whether only submissions happened since its last pass.
    pub wake: schedule::Wake,
    /// Counts the jobs that ended (finished or canceled): log followers wait on it, and
    /// a counter, unlike a notification, cannot be missed between two looks.
    job_ends: watch::Sender<u64>,
    /// Cancel switches of the jobs running now.
    running: Mutex<HashMap<u64, watch::Sender<bool>>>,
    /// Queued jobs as validated, by id: the lab does not change while the daemon runs,
    /// so a queued job is validated once, not on every scheduling pass (which would
    /// make a long queue cost its length on every submission).
    validated: Mutex<HashMap<u64, Arc<QueuedJob>>>,
    /// One copy of each set of needs the queued jobs have: jobs that need the same
    /// devices share it, and the scheduler works out their reason to wait once.
    needs: Mutex<HashMap<Vec<scheduler::Need>, Arc<[scheduler::Need]>>>,
    /// Each running job's log: followers take its feed of writes.
    logs: Mutex<HashMap<u64, JobLog>>,
    /// Why each queued job waits, as the last scheduling pass saw it.
    waiting: Mutex<HashMap<u64, Arc<str>>>,
    /// Counts the passes that changed a reason in `waiting`: what followers of a queued
    /// job's log wait on.
    waiting_changed: watch::Sender<u64>,
    /// What `/metrics` shows.
    pub metrics: metrics::LabMetrics,
    /// Told when this worker finds itself fenced (see `workers::beat`): the process
    /// must stop.
    pub fenced: tokio::sync::Notify,
    /// Where this daemon's API answers.
    pub api_url: String,
    /// When this daemon started (unix seconds).
    pub started_at: i64,
}

impl Shared {
    /// The lab now (a job holds the one it started with).
    pub fn lab(&self) -> Arc<LabState> {
        self.lab.read().clone()
    }

    /// Reads the lab files again and puts what they say in use without a restart: new
    /// devices join, a device whose file now has errors goes offline naming them, a
    /// device gone from the files is retired; a running job keeps its devices as they
    /// were. Queued jobs are validated again against the new lab by the next pass.
    pub async fn reload(self: &Arc<Self>) -> Result<Reloaded, StoreError> {
        let _one_at_a_time = self.reloading.lock().await;
        let config = self.config.clone();
        let loaded = tokio::task::spawn_blocking(move || load_lab(&config, true))
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!("loading the lab did not complete: {e}"))
            })?;
        let (state, report) = match loaded {
            Ok(loaded) => loaded,
            Err(err) => return Err(StoreError::Unavailable(err.to_string())),
        };
        self.store.sync_devices(lab_devices(&state.lab)).await?;
        let state = LabState {
            others: other_workers_devices(&*self.store).await?,
            ..state
        };
        let reloaded = Reloaded {
            devices: state.lab.devices.keys().cloned().collect(),
            refused: state.lab.refused_devices.keys().cloned().collect(),
            errors: report.error_count(),
            problems: report.render(),
        };
        *self.lab.write() = Arc::new(state);
        self.validated.lock().clear();
        tracing::info!(
            devices = reloaded.devices.len(),
            refused = reloaded.refused.len(),
            errors = reloaded.errors,
            "lab files reloaded"
        );
        self.wake.changed();
        Ok(reloaded)
    }

    /// Remembers a queued job as validated at submission; `checks`: the device it is
    /// the health check of.
    pub fn remember_validated(&self, id: u64, job: job_schemas::Job, checks: Option<&str>) {
        let queued_job = self.queued_job(job, checks);
        self.validated.lock().insert(id, Arc::new(queued_job));
    }

    /// Forgets queued job `id` (it was canceled before it ran).
    pub fn forget_validated(&self, id: u64) {
        self.validated.lock().remove(&id);
    }

    /// `job` ready for the scheduler; `checks`: the device it is the health check of,
    /// the only one it may run on.
    fn queued_job(&self, job: Job, checks: Option<&str>) -> QueuedJob {
        let mut needs = scheduler::needs(&job);
        if let (Some(device), [need]) = (checks, needs.as_mut_slice()) {
            need.hostname = Some(device.to_string());
        }
        let mut known = self.needs.lock();
        if known.len() >= 1024 {
            // Sets no queued job has any more go.
            known.retain(|_, shared| Arc::strong_count(shared) > 1);
        }
        let needs = known
            .entry(needs)
            .or_insert_with_key(|needs| needs.as_slice().into())
            .clone();
        QueuedJob {
            job,
            needs,
            checks: checks.map(str::to_string),
        }
    }

    /// Job `id`'s log while the job runs here.
    pub fn job_log(&self, id: u64) -> Option<JobLog> {
        self.logs.lock().get(&id).cloned()
    }

    /// Changes whenever a job ends.
    pub fn job_ends(&self) -> watch::Receiver<u64> {
        self.job_ends.subscribe()
    }

    /// Tells the followers of every log that a job ended.
    pub fn job_ended(&self) {
        self.job_ends
            .send_modify(|ends| *ends = ends.wrapping_add(1));
    }

    /// Why queued job `id` waits, as the last scheduling pass saw it.
    pub fn waiting_for(&self, id: u64) -> Option<String> {
        self.waiting
            .lock()
            .get(&id)
            .map(|reason| reason.to_string())
    }

    /// Changes whenever a queued job's reason to wait does.
    pub fn waiting_changes(&self) -> watch::Receiver<u64> {
        self.waiting_changed.subscribe()
    }

    /// The reasons of a pass replace the last pass's; followers are told of a change.
    fn set_waiting(&self, reasons: Vec<(u64, Arc<str>)>) {
        let reasons: HashMap<u64, Arc<str>> = reasons.into_iter().collect();
        let mut waiting = self.waiting.lock();
        if *waiting == reasons {
            return;
        }
        for (job, reason) in &reasons {
            if waiting.get(job) != Some(reason) {
                tracing::debug!(job, %reason, "job waits");
            }
        }
        *waiting = reasons;
        drop(waiting);
        self.waiting_changed.send_modify(|n| *n += 1);
    }

    /// Reasons of jobs new to the queue, added to the last pass's.
    fn add_waiting(&self, reasons: Vec<(u64, Arc<str>)>) {
        if reasons.is_empty() {
            return;
        }
        let mut waiting = self.waiting.lock();
        for (job, reason) in reasons {
            tracing::debug!(job, %reason, "job waits");
            waiting.insert(job, reason);
        }
        drop(waiting);
        self.waiting_changed.send_modify(|n| *n += 1);
    }

    /// Asks a running job to stop; `false` when it is not running here.
    pub fn cancel_running(&self, job_id: u64) -> bool {
        let switch = self.running.lock().get(&job_id).cloned();
        switch.is_some_and(|switch| switch.send(true).is_ok())
    }
}

/// A queued job as validated, with the devices it needs: a pass over a long queue
/// neither validates its jobs again nor works out their needs again.
#[derive(Clone)]
pub struct QueuedJob {
    job: Job,
    needs: Arc<[scheduler::Need]>,
    /// The device it is the health check of.
    checks: Option<String>,
}

/// A started daemon.
pub struct Daemon {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    scheduler: JoinHandle<()>,
    /// The embedded coordinator; `None` with a standalone one.
    coordinator: Option<coordinator::Running>,
}

impl Daemon {
    /// Loads the lab, opens the store (recovering from a restart), starts the embedded
    /// coordinator, the HTTP API and the scheduler. A lab file with errors refuses what
    /// it describes (logged, and shown offline in the device list), not the daemon.
    pub async fn start(config: DaemonConfig) -> Result<Daemon, DaemonError> {
        let missing = config.missing_paths();
        if !missing.is_empty() {
            return Err(DaemonError::MissingPaths(missing));
        }
        let (lab_state, _report) = load_lab(&config, true)?;
        for dir in [config.state_dir.clone(), config.jobs_dir()] {
            std::fs::create_dir_all(&dir).map_err(|source| DaemonError::Io {
                what: format!("cannot create {}", dir.display()),
                source,
            })?;
        }
        // Listening first: a worker joins with the address its API answers at.
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| DaemonError::Io {
                what: format!("cannot listen on {}", config.listen),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| DaemonError::Io {
            what: "listening socket".into(),
            source,
        })?;
        let api_url = config
            .api_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        let (coordination, coordinator) = match &config.coordinator_url {
            Some(url) => (standalone_coordinator(&config, url).await?, None),
            None => {
                let coordinator = coordinator::start(coordinator::Config::new(
                    config.coordinator_listen,
                    hex::encode(rand::random::<[u8; 32]>()),
                ))
                .await
                .map_err(|e| DaemonError::Coordinator(e.to_string()))?;
                let coordination = Coordination::embedded(
                    coordinator.store(),
                    format!("http://{}", coordinator.grpc_addr),
                );
                (coordination, Some(coordinator))
            }
        };
        let store = database::open(&config).await?;
        // Before its devices are touched: joining fences an earlier instance of this
        // worker, and brings back its devices if the others declared it lost.
        store
            .join(&store::WorkerInfo {
                version: env!("CARGO_PKG_VERSION").to_string(),
                device_types: lab_state.lab.device_types.keys().cloned().collect(),
                api_url: api_url.clone(),
                heartbeat: Duration::from_secs(config.heartbeat_secs),
                coordinator: match &coordination.admin {
                    runner::coordination::Admin::Remote(_) => Some(format!(
                        "{} (groups {}job-N)",
                        coordination.target.url, coordination.group_prefix
                    )),
                    runner::coordination::Admin::Embedded(_) => None,
                },
            })
            .await?;
        store.sync_devices(lab_devices(&lab_state.lab)).await?;
        let lab_state = LabState {
            others: other_workers_devices(&*store).await?,
            ..lab_state
        };
        let cut_short = store.recover_after_restart().await?;
        for &job in &cut_short {
            tracing::warn!(
                job,
                "ended as incomplete: the dispatcher restarted while it ran"
            );
            quit_local_vms(&config.job_dir(job)).await;
        }
        // A standalone coordinator outlived the jobs a crash cut short: end their groups
        // (in the background: a coordinator that is away must not hold up the start).
        // A part of a job whose other parts run on only fails its nodes there.
        if matches!(coordination.admin, runner::coordination::Admin::Remote(_)) {
            let mine: std::collections::HashSet<String> =
                lab_state.lab.devices.keys().cloned().collect();
            for job in cut_short {
                let (coordination, group) = (coordination.clone(), coordination.group_id(job));
                let running = store
                    .job(job)
                    .await?
                    .filter(|r| !r.summary.state.is_finished());
                let mine = mine.clone();
                tokio::spawn(async move {
                    match running {
                        Some(record) => {
                            let nodes = parts::nodes_on(&record, &mine);
                            parts::fail_in_group(
                                &coordination,
                                &record,
                                &nodes,
                                store::RESTART_MESSAGE,
                            )
                            .await;
                        }
                        None => coordination.close_group(&group).await,
                    }
                });
            }
        }
        hostctl::console::set_max_log_bytes(config.max_console_bytes);
        let fd_limit = http::raise_fd_limit();
        let max_connections = match config.max_connections {
            Some(configured) => {
                if configured as u64 >= fd_limit {
                    tracing::warn!(
                        configured,
                        fd_limit,
                        "max_connections is not below the open-file limit: connections \
                         past it are refused by the kernel, not by eviction"
                    );
                }
                configured
            }
            None => http::connection_cap(fd_limit),
        };
        let limits = http::Limits {
            max_connections,
            header_timeout: Duration::from_secs(config.http_header_timeout_secs),
            idle_timeout: Duration::from_secs(config.http_idle_timeout_secs),
        };
        tracing::info!(?limits, "HTTP limits");
        let embedded_coordinator = coordination.gauges().is_some();
        let shared = Arc::new(Shared {
            config,
            lab: parking_lot::RwLock::new(Arc::new(lab_state)),
            reloading: tokio::sync::Mutex::new(()),
            store,
            coordination,
            wake: schedule::Wake::default(),
            job_ends: watch::Sender::new(0),
            running: Mutex::default(),
            validated: Mutex::default(),
            needs: Mutex::default(),
            logs: Mutex::default(),
            waiting: Mutex::default(),
            waiting_changed: watch::channel(0).0,
            metrics: metrics::LabMetrics::new(embedded_coordinator),
            fenced: tokio::sync::Notify::new(),
            api_url,
            started_at: now_secs(),
        });
        // Before the API answers: a device that needs its health check has it queued
        // ahead of any job a client could submit.
        health::queue_due_checks(&shared).await?;
        let (stop, stopped) = watch::channel(false);
        // Half of the connections at most for long-lived answers (followed logs,
        // console downloads): the other half stays free for everything else.
        let router = api::router(
            service::Dispatcher::new(shared.clone()),
            max_connections / 2,
        );
        let server = tokio::spawn(http::serve(listener, router, limits, stopped.clone()));
        if let Some(changes) = shared.store.subscribe().await {
            tokio::spawn(workers::follow_other_workers(
                shared.clone(),
                changes,
                stopped.clone(),
            ));
            tokio::spawn(workers::beat(shared.clone(), stopped.clone()));
        }
        let scheduler = tokio::spawn(schedule::schedule_forever(shared.clone(), stopped));
        tracing::info!(%addr, "dispatcher daemon listening");
        Ok(Daemon {
            addr,
            shared,
            stop,
            server,
            scheduler,
            coordinator,
        })
    }

    /// Graceful shutdown: no new requests or jobs, running jobs canceled and cleaned
    /// up (their VMs stopped), queued jobs kept for the next start.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        // The scheduler first: a pass under way may still start a job, which must be
        // among the switches below.
        let _ = self.scheduler.await;
        let switches: Vec<watch::Sender<bool>> =
            self.shared.running.lock().values().cloned().collect();
        for switch in &switches {
            let _ = switch.send(true);
        }
        // Each job task removes its switch when it has cleaned up and recorded its end.
        for switch in switches {
            switch.closed().await;
        }
        let _ = self.server.await;
        if let Some(coordinator) = self.coordinator {
            coordinator.shutdown().await;
        }
        // Its jobs ended: sharing a database, this worker leaves, so that it may join
        // again at once (a restart) and the others do not declare it lost.
        match self.shared.store.leave().await {
            // The parts it had not started ended: the other parts are told.
            Ok(left) => {
                let reason = format!("worker {} stopped", left.name);
                parts::release_lost(&self.shared, &left, &reason).await;
            }
            Err(err) => tracing::warn!(%err, "cannot record that this worker leaves"),
        }
    }
}

/// What `dispatcher serve --check` and the start of the daemon agree on: the paths
/// the configuration names are there and the lab loads. The report holds the lab
/// files' warnings and the errors of files that take only their device out of use
/// (the daemon starts with those); the lab itself: its device types and devices.
pub fn check(config: &DaemonConfig) -> Result<(Lab, lab::LabReport), DaemonError> {
    let missing = config.missing_paths();
    if !missing.is_empty() {
        return Err(DaemonError::MissingPaths(missing));
    }
    // The caller prints the report itself: no log lines as well.
    let (state, report) = load_lab(config, false)?;
    Ok((state.lab, report))
}

/// Reads the lab files as the configuration names them, leniently: a file with errors
/// refuses only what it describes (`log_refused`: and its problems are logged). Fails
/// only when the shipped device types themselves do not load.
fn load_lab(
    config: &DaemonConfig,
    log_refused: bool,
) -> Result<(LabState, lab::LabReport), DaemonError> {
    let (lab, report) = match &config.device_types {
        Some(dir) => Lab::load_lenient(dir, Some(&config.devices)),
        None => Lab::load_lenient_with_builtin_types(&config.devices)
            .map_err(|report| DaemonError::Lab(report.render()))?,
    };
    let refused = report.files.iter().filter(|f| f.report.error_count() > 0);
    for file in refused.filter(|_| log_refused) {
        tracing::error!(
            file = %file.path.display(),
            problems = %file.report.render(&file.path.display().to_string()),
            "lab file refused"
        );
    }
    // The devices' own keys are secrets no job may read.
    let device_keys: Vec<PathBuf> = lab
        .devices
        .values()
        .filter_map(|d| d.ssh().and_then(|s| s.identity_file.clone()))
        .collect();
    let policy = config.job_policy(&device_keys);
    let state = LabState {
        lab,
        policy,
        others: Vec::new(),
        span: config.database_url.is_some() && config.coordinator_url.is_some(),
    };
    Ok((state, report))
}

/// Every device in use, as the lab files give it: what the store is synced to.
fn lab_devices(lab: &Lab) -> Vec<store::LabDevice> {
    lab.devices
        .values()
        .map(|d| store::LabDevice {
            hostname: d.hostname.clone(),
            device_type: d.device_type.name.clone(),
            tags: d.tags.to_vec(),
        })
        .collect()
}

/// The devices each other worker sharing the store owns, retired ones left out, as if
/// idle: what could ever serve a job besides this worker's own.
async fn other_workers_devices(
    store: &dyn Store,
) -> Result<Vec<Vec<scheduler::DeviceView>>, StoreError> {
    let Some(me) = store.worker() else {
        return Ok(Vec::new());
    };
    let mut by_worker: std::collections::BTreeMap<String, Vec<scheduler::DeviceView>> =
        std::collections::BTreeMap::new();
    for d in store.devices().await? {
        let Some(worker) = d.worker.filter(|w| w != me) else {
            continue;
        };
        if d.health == states::DeviceHealth::Retired {
            continue;
        }
        by_worker
            .entry(worker)
            .or_default()
            .push(scheduler::DeviceView::as_if_idle(
                d.hostname,
                d.device_type,
                d.tags,
            ));
    }
    Ok(by_worker.into_values().collect())
}

/// Connects to the standalone coordinator the configuration names, and checks that it
/// takes our admin token, so a wrong token is found at start, not at the first job.
async fn standalone_coordinator(
    config: &DaemonConfig,
    url: &str,
) -> Result<Coordination, DaemonError> {
    let cannot_read = |path: &std::path::Path| {
        let what = format!("cannot read {}", path.display());
        move |source| DaemonError::Io { what, source }
    };
    let token_file = config.coordinator_token_file.as_deref().ok_or_else(|| {
        DaemonError::Coordinator("coordinator_url needs coordinator_token_file".into())
    })?;
    let token = coordinator::auth::token_from_file(token_file).map_err(cannot_read(token_file))?;
    let target = coordinator::Target {
        url: url.to_string(),
        ca_pem: config
            .coordinator_ca
            .as_deref()
            .map(|ca| std::fs::read(ca).map_err(cannot_read(ca)))
            .transpose()?,
    };
    let mut admin = coordinator::AdminClient::connect(target.clone(), &token)
        .await
        .map_err(|e| DaemonError::Coordinator(e.to_string()))?;
    match admin.close_group("dispatcher-start-check").await {
        Err(coordinator::ClientError::Refused(why)) => Err(DaemonError::Coordinator(format!(
            "{url} refused the token in {}: {why}",
            token_file.display()
        ))),
        Err(coordinator::ClientError::Invalid(_)) | Ok(()) => {
            tracing::info!(url, "using the standalone coordinator");
            let group_prefix = match &config.coordinator_group_prefix {
                Some(prefix) => prefix.clone(),
                // Workers of one database share their groups (a job across workers
                // meets in one): the same prefix on every machine, the database's name
                // (labs of other databases on the same coordinator have their own).
                None if let Some(url) = &config.database_url => format!("{}-", url.name()),
                None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|name| format!("{}-", name.trim()))
                    .unwrap_or_default(),
            };
            Ok(Coordination {
                admin: runner::coordination::Admin::Remote(admin),
                target,
                group_prefix,
            })
        }
        Err(other) => Err(DaemonError::Coordinator(other.to_string())),
    }
}

/// VMs this machine ran for a job cut short by a crash (a qemu-host's qemu, a kvm
/// device's VM) outlive the dispatcher: each has a QMP socket in the job's directory,
/// so each is told to quit there. (VMs on a remote host stopped with the SSH session
/// they were attached to.)
async fn quit_local_vms(job_dir: &std::path::Path) {
    let mut sockets = Vec::new();
    // Each qemu-host's in `host-HOSTNAME/`, each kvm device's in `vms/NODE/`.
    if let Ok(entries) = std::fs::read_dir(job_dir) {
        sockets.extend(
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("host-"))
                .map(|e| e.path().join("qmp.sock")),
        );
    }
    if let Ok(vms) = std::fs::read_dir(job_dir.join("vms")) {
        sockets.extend(vms.flatten().map(|vm| vm.path().join("qmp.sock")));
    }
    for socket in sockets.into_iter().filter(|s| s.exists()) {
        let connected = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::UnixStream::connect(&socket),
        )
        .await;
        if let Ok(Ok(stream)) = connected {
            tracing::warn!(socket = %socket.display(), "stopping a VM left by the crash");
            let _ = hostctl::vm::send_qmp_quit(stream).await;
        }
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A job given its devices, about to run.
struct Started {
    id: u64,
    job: Job,
    devices: Vec<String>,
    /// The types of the devices it needs (for the metrics).
    device_types: Vec<String>,
    /// The device it is the health check of.
    health_check_of: Option<String>,
    /// This worker's part of a job across several workers: it runs the nodes on its
    /// own devices among `devices` (one per node, in the job's order).
    part: bool,
}

/// Runs one job on its reserved devices and records how it ended, with what that
/// says of its devices' health.
async fn run_job(shared: Arc<Shared>, started: Started, cancel: watch::Receiver<bool>) {
    let Started {
        id: job_id,
        job,
        devices,
        device_types,
        health_check_of,
        part,
    } = started;
    let began = std::time::Instant::now();
    tracing::info!(
        job = job_id,
        devices = %devices.join(", "),
        health_check = health_check_of.is_some(),
        "job started"
    );
    // `cancel` is held until the end is recorded: graceful shutdown waits for every
    // job's receiver to close, and must not stop the runtime (cancelling the pending
    // store call) between the job's cleanup and its record.
    let outcome = run_job_inner(&shared, job_id, &job, &devices, part, cancel.clone()).await;
    let (outcome, results, failed_cases) = match outcome {
        Ok(report) => {
            if let Err(err) = runner::write_results(&shared.config.job_dir(job_id), &report) {
                tracing::warn!(job = job_id, %err, "cannot write the result files");
            }
            let outcome = runner::report::JobReport::outcome_of(&report.nodes);
            let failed = report.failed_cases();
            (outcome, serde_json::to_value(&report).ok(), failed)
        }
        Err(outcome) => (outcome, None, Vec::new()),
    };
    if part && results.is_none() {
        // This part never ran its nodes (it could not start): the other parts' nodes
        // must not wait for them.
        let reason = outcome.error.as_ref().map_or("", |(_, m)| m.as_str());
        parts::fail_nodes_of(&shared, job_id, reason).await;
    }
    let change = health::after_job(job_id, health_check_of.is_some(), &outcome, &failed_cases);
    let health = outcome.health;
    let health_name = serde_json::to_value(health).unwrap_or_default();
    shared.metrics.job_ended(
        &device_types,
        health_name.as_str().unwrap_or_default(),
        began.elapsed(),
    );
    let finished = patiently("recording a job's end", || {
        shared
            .store
            .finish_part(job_id, outcome.clone(), results.clone(), change.clone())
    })
    .await;
    match finished {
        // This part ended; other workers' parts of the job run on, or one of them (a
        // cancel, a lost worker) ended the job before.
        Ok(ended) if !ended.ended_job => {
            tracing::info!(job = job_id, ?health, state = %ended.state, "this worker's part ended");
        }
        Ok(store::PartFinished { state, .. }) => {
            if part {
                parts::after_part(&shared, job_id, &state).await;
            }
            // The job's own end decides (a job being canceled ends canceled, a job
            // across workers as its parts together did).
            let class = match &state {
                states::JobState::Finished(end) => end.error.as_ref().map(|(class, _)| *class),
                _ => None,
            };
            let retry = health_check_of.is_none()
                && notify::retries(class, 0, shared.config.retry_infrastructure);
            let class = outcome.error.as_ref().map(|(class, _)| *class);
            notify::job_ended(&shared, job_id, &job);
            if retry {
                let service = service::Dispatcher::new(shared.clone());
                match service.resubmit(job_id, true, None).await {
                    Ok(Some(again)) => tracing::info!(
                        job = job_id,
                        retry = again.id,
                        "infrastructure failure: the job is submitted again"
                    ),
                    Ok(None) => {}
                    Err(err) => tracing::error!(job = job_id, %err, "cannot retry the job"),
                }
            }
            tracing::info!(
                job = job_id,
                ?health,
                class = ?class,
                duration_secs = began.elapsed().as_secs(),
                %state,
                "job ended"
            );
            if let Some(change) = change {
                for device in &devices {
                    tracing::info!(
                        device = %device,
                        health = ?change.health,
                        reason = %change.reason,
                        "device health after job {job_id}"
                    );
                }
            }
        }
        Err(err) => tracing::error!(job = job_id, %err, "cannot record the job's end"),
    }
    shared.running.lock().remove(&job_id);
    // Dropped after the lock is let go: the last handle of a log appends its kept tail.
    let log = shared.logs.lock().remove(&job_id);
    drop(log);
    shared.job_ended();
    shared.wake.changed();
    drop(cancel);
}

/// How long a job's start or end waits for a database that is away.
const STORE_PATIENCE: Duration = Duration::from_secs(600);

/// `call`, again while the database is unavailable (restarting, or the network to it
/// broken), 100 ms after the first try, doubling to 5 s between tries, for at most
/// [`STORE_PATIENCE`]: a job's start and end must reach the database, not be lost to
/// a moment's outage. Any other answer is returned at once.
async fn patiently<T, F, Fut>(what: &str, mut call: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let deadline = tokio::time::Instant::now() + STORE_PATIENCE;
    let mut pause = Duration::from_millis(100);
    loop {
        match call().await {
            Err(StoreError::Unavailable(why)) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(what, %why, "the database is away: trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            answer => return answer,
        }
    }
}

async fn run_job_inner(
    shared: &Arc<Shared>,
    job_id: u64,
    job: &Job,
    devices: &[String],
    part: bool,
    cancel: watch::Receiver<bool>,
) -> Result<runner::report::JobReport, Outcome> {
    let infra = |message: String| Outcome::incomplete(ErrorClass::Infrastructure, message);
    match patiently("recording a job's start", || shared.store.start(job_id)).await {
        Ok(()) => {}
        // A try whose commit went through though its answer was lost (the connection
        // broke): the job is running already.
        Err(StoreError::IllegalTransition { .. })
            if matches!(
                shared.store.job_state(job_id).await,
                Ok(Some(states::JobState::Running))
            ) => {}
        Err(e) => return Err(infra(format!("cannot start: {e}"))),
    }
    let job_dir = shared.config.job_dir(job_id);
    std::fs::create_dir_all(&job_dir)
        .map_err(|e| infra(format!("cannot create {}: {e}", job_dir.display())))?;
    let log = JobLog::open(&job_dir.join("job.log"), shared.config.max_log_bytes)
        .map_err(|e| infra(format!("cannot open the job log: {e}")))?;
    shared.logs.lock().insert(job_id, log.clone());
    log.line(
        Level::Info,
        None,
        format!("job {job_id} running on {}", devices.join(", ")),
    );
    // The lab as it is now, kept to the job's end whatever a reload does meanwhile.
    let state = shared.lab();
    // A part's nodes on other workers' devices are theirs: `None` here.
    let mine = match (part, shared.store.worker()) {
        (true, Some(me)) => Some(
            parts::devices_of(shared, me)
                .await
                .map_err(|e| infra(format!("cannot read the devices: {e}")))?,
        ),
        _ => None,
    };
    let devices: Vec<Option<_>> = devices
        .iter()
        .map(|d| match (state.lab.devices.get(d), &mine) {
            (_, Some(mine)) if !mine.contains(d) => Ok(None),
            (Some(device), _) => Ok(Some(device.clone())),
            (None, _) => Err(infra(format!("device {d} left the lab"))),
        })
        .collect::<Result<_, _>>()?;
    let settings = RunSettings {
        job_id,
        work_dir: job_dir,
        image_store: shared.config.state_dir.join("images"),
        fetch: state.policy.fetch.clone(),
        node_agent: shared.config.node_agent.clone(),
        lab_key: shared.config.lab_key.clone(),
        known_hosts: shared.config.state_dir.join("known_hosts"),
        host_dir: shared.config.host_dir.clone(),
        cancel,
    };
    let report = if part {
        let devices: Vec<Option<&lab::device::Device>> =
            devices.iter().map(Option::as_ref).collect();
        runner::run_part(
            job,
            &state.lab,
            &devices,
            &shared.coordination,
            &settings,
            &log,
        )
        .await
    } else {
        let whole: Vec<lab::device::Device> = devices.into_iter().flatten().collect();
        runner::run_job(
            job,
            &state.lab,
            &whole,
            &shared.coordination,
            &settings,
            &log,
        )
        .await
    };
    // The log's kept tail (past half its limit) is in it before the job is recorded
    // as finished, which is when followers stop reading.
    log.finish();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_store_call_is_tried_again_while_the_database_is_away_and_only_then() {
        let tries = std::sync::atomic::AtomicU32::new(0);
        let answer = patiently("a test", || {
            let n = tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                match n {
                    0 | 1 => Err(StoreError::Unavailable("restarting".into())),
                    _ => Ok(n),
                }
            }
        })
        .await;
        assert_eq!(answer.ok(), Some(2), "the third try answered");
        let tries = std::sync::atomic::AtomicU32::new(0);
        let answer: Result<(), StoreError> = patiently("a test", || {
            tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Err(StoreError::Backend("no such column".into())) }
        })
        .await;
        assert!(matches!(answer, Err(StoreError::Backend(_))));
        assert_eq!(
            tries.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "a refusal is no outage: not tried again"
        );
    }
}
