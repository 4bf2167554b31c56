//! The daemon's persistent state: jobs, devices and API tokens.
//!
//! Everything the daemon must not forget across a restart lives behind the [`Store`]
//! trait, and every change that must be atomic (reserving all of a job's devices,
//! finishing a job and freeing its devices, ending the jobs a restart cut short) is one
//! call, which a backend makes one transaction.
//!
//! The trait is async and its errors ([`StoreError`]) name no backend's types, so the
//! daemon holds an `Arc<dyn Store>` and a PostgreSQL backend could replace the SQLite
//! one without touching its callers. A backend that blocks does so off the async
//! threads itself: [`SqliteStore`] runs every call on tokio's blocking pool, so no
//! caller has to remember to, and a slow query never stalls the async threads.
//!
//! [`SqliteStore`] is the default backend: one file next to the lab configuration,
//! nothing to install or run beside the dispatcher (the library is bundled). In WAL
//! mode another process reading the file (`sqlite3`) does not block the daemon's
//! writes; within the daemon, calls take turns on one connection, each a short
//! transaction.

mod encode;
mod postgres;
mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use scheduler::DeviceView;
use states::{DeviceHealth, DeviceState, IllegalTransition, JobState, Outcome};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// The message of jobs that were cut short by a dispatcher restart.
pub const RESTART_MESSAGE: &str = "dispatcher restarted";

/// The names [`Store::jobs`] filters on, as [`JobState::name`] gives them.
pub const JOB_STATE_NAMES: [&str; 5] =
    ["submitted", "scheduled", "running", "canceling", "finished"];

/// The daemon's persistent state. Every method is one atomic step: it happens whole or
/// not at all.
#[async_trait]
pub trait Store: Send + Sync {
    /// Queues a new job; returns its id (never reused). A resubmission is linked both
    /// ways in the same step: the job it came from names it as `resubmitted_as`.
    async fn submit(&self, job: NewJob) -> Result<u64, StoreError>;

    /// Job `id`; `None` when there is none (an id past the backend's integers included).
    async fn job(&self, id: u64) -> Result<Option<JobRecord>, StoreError>;

    /// Job `id`'s state alone (what a followed log checks), without its definition.
    async fn job_state(&self, id: u64) -> Result<Option<JobState>, StoreError>;

    /// Records the members of a job submitted before the store kept them, found once
    /// by validating its definition.
    async fn set_members(&self, id: u64, members: Vec<Member>) -> Result<(), StoreError>;

    /// Jobs, newest first, all or only those in the state named `state` ("running";
    /// see [`JOB_STATE_NAMES`]), without their definitions and results.
    async fn jobs(&self, state: Option<&str>) -> Result<Vec<JobSummary>, StoreError> {
        let filter = JobFilter {
            state: state.map(str::to_string),
            limit: u32::MAX,
            ..JobFilter::default()
        };
        Ok(self.job_page(&filter).await?.jobs)
    }

    /// A page of the jobs `filter` matches, newest first, and how many it matches.
    async fn job_page(&self, filter: &JobFilter) -> Result<JobPage, StoreError>;

    /// Jobs counted by state, and finished ones by health.
    async fn job_counts(&self) -> Result<JobCounts, StoreError>;

    /// The queue, oldest first, without the job definitions: what a scheduling pass
    /// reads every time (definitions are read once per job, see [`Store::job`]).
    async fn queue(&self) -> Result<Vec<Queued>, StoreError>;

    /// Gives `hostnames` to queued job `job`, all or none: each must be schedulable,
    /// else nothing changes and the error names the first culprit.
    async fn reserve(&self, job: u64, hostnames: &[String]) -> Result<(), StoreError>;

    /// The job starts running on the devices reserved for it.
    async fn start(&self, job: u64) -> Result<(), StoreError>;

    /// The job ended with `outcome` (a job being canceled ends canceled whatever its
    /// nodes did) and `results`; its devices become idle, with `health` if given (not
    /// over an admin's maintenance or retired), each change in their health history. A
    /// health check job marks its device checked now; any other job counts one more
    /// job since the check. Returns the final state.
    async fn finish(
        &self,
        job: u64,
        outcome: Outcome,
        results: Option<serde_json::Value>,
        health: Option<HealthChange>,
    ) -> Result<JobState, StoreError>;

    /// Asks for job `job` to end: one not running yet ends canceled at once (its
    /// devices freed), a running one becomes canceling. Returns the new state.
    async fn cancel(&self, job: u64) -> Result<JobState, StoreError>;

    /// After a restart nothing is running any more: every job that held devices ends
    /// incomplete ([`RESTART_MESSAGE`], an infrastructure error, so CI may retry it)
    /// and its devices are freed; queued jobs stay queued. Returns the ids it ended.
    async fn recover_after_restart(&self) -> Result<Vec<u64>, StoreError>;

    /// Makes this worker's devices match its lab files: new devices come in idle with
    /// unknown health; known ones keep their state and health (their type and tags
    /// follow the files); devices gone from the files are retired (and offline once no
    /// job holds them). A device that comes back after being retired this way is idle
    /// with unknown health again. A device another worker owns is refused.
    async fn sync_devices(&self, devices: Vec<LabDevice>) -> Result<(), StoreError>;

    /// The worker this store speaks for, when several share the database (`None`:
    /// the one daemon of a SQLite file, which owns every device).
    fn worker(&self) -> Option<&str> {
        None
    }

    /// Changes other workers made, as they commit them (`None`: no one else writes
    /// to this database). Best effort: a notice can be lost, and
    /// [`Change::Reconnected`] says some may have been.
    async fn subscribe(&self) -> Option<tokio::sync::mpsc::Receiver<Change>> {
        None
    }

    /// Every device, by hostname.
    async fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError>;

    /// Sets what an admin says about a device, and why (in its health history); its
    /// state is left alone.
    async fn set_device_health(
        &self,
        hostname: &str,
        health: DeviceHealth,
        reason: &str,
    ) -> Result<(), StoreError>;

    /// Device `hostname`'s health changes, newest first (at most the last 200).
    async fn health_history(&self, hostname: &str) -> Result<Vec<HealthEvent>, StoreError>;

    /// A new API token named `name` with `scope`. The secret is returned once and never
    /// stored: only its SHA-256 is, so a copy of the database grants nothing.
    async fn create_token(&self, name: &str, scope: TokenScope) -> Result<String, StoreError>;

    /// The name and scope of the token `token`, or `None` if it is not one of ours.
    async fn token_scope(&self, token: &str) -> Result<Option<(String, TokenScope)>, StoreError>;

    /// This worker joins the workers sharing the database (or comes back): it is
    /// alive from now, under a new epoch that fences any earlier instance of it (whose
    /// heartbeats are refused from now on), and its devices that went offline when it
    /// was lost come back idle. Refused while another live worker runs a different
    /// version or knows other device types. A store no other worker shares does nothing.
    async fn join(&self, _worker: &WorkerInfo) -> Result<(), StoreError> {
        Ok(())
    }

    /// This worker is alive, by the database's clock. [`Conflict::Fenced`] when it was
    /// declared lost, or another instance of it joined, meanwhile: nothing it decided
    /// while away may be written any more.
    async fn beat(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Declares lost every live worker silent for more than `beats` of its own
    /// heartbeats, by the database's clock: the jobs on its devices end incomplete
    /// ("worker W lost", an infrastructure error) and free their devices, and its
    /// devices go offline. Each lost worker is declared by one caller only.
    async fn reap_lost_workers(&self, _beats: u32) -> Result<Vec<LostWorker>, StoreError> {
        Ok(Vec::new())
    }

    /// This worker stops (a graceful shutdown): it is neither alive nor lost, and may
    /// join again at once. What still held its devices (a part of a job across workers
    /// it had not started) ends as a lost worker's would: returned so, for the daemon
    /// to tell the other parts.
    async fn leave(&self) -> Result<LostWorker, StoreError> {
        Ok(LostWorker {
            name: self.worker().unwrap_or_default().to_string(),
            jobs: Vec::new(),
            parts: Vec::new(),
        })
    }

    /// Every worker that joined, by name; `None`: no other worker shares this store.
    async fn workers(&self) -> Result<Option<Vec<WorkerRecord>>, StoreError> {
        Ok(None)
    }

    /// [`Store::finish`] of this worker's part of a job across several workers: its
    /// devices only; the job ends when this was its last part running, with every
    /// part's end merged, and `ended_job` says whether this call ended it (not when
    /// another part, a cancel or a lost worker ended it before). A job of one worker:
    /// `finish`.
    async fn finish_part(
        &self,
        job: u64,
        outcome: Outcome,
        results: Option<serde_json::Value>,
        health: Option<HealthChange>,
    ) -> Result<PartFinished, StoreError> {
        let state = self.finish(job, outcome, results, health).await?;
        Ok(PartFinished {
            ended_job: state.is_finished(),
            state,
        })
    }

    /// Jobs across several workers whose devices were reserved (by whichever worker
    /// planned them) with a part for this worker that has not started: each is this
    /// worker's to run, on its own devices. [`Store::start`] starts a part and
    /// [`Store::finish`] ends it; the job ends with its last part.
    async fn parts_to_start(&self) -> Result<Vec<u64>, StoreError> {
        Ok(Vec::new())
    }
}

/// Why a store call failed, whatever the backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The job or device named does not exist.
    #[error("there is no {0}")]
    NotFound(Missing),
    /// The change conflicts with what is stored.
    #[error("{0}")]
    Conflict(Conflict),
    /// The job's state does not allow the change.
    #[error("job {job}: {source}")]
    IllegalTransition {
        job: u64,
        #[source]
        source: IllegalTransition,
    },
    /// A value the caller gave is out of range.
    #[error("{0}")]
    Invalid(Invalid),
    /// The backend failed (a query, a stored value that does not decode).
    #[error("database error: {0}")]
    Backend(String),
    /// The backend cannot be used now (it is locked, cannot be opened, or its schema
    /// is newer than this dispatcher's); trying again later may work.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
}

/// What a [`StoreError::NotFound`] did not find.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Missing {
    #[error("job {0}")]
    Job(u64),
    #[error("device {0}")]
    Device(String),
}

/// What a worker says of itself when it joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// The dispatcher's version.
    pub version: String,
    /// The device types it knows, by name.
    pub device_types: Vec<String>,
    /// Where its API answers.
    pub api_url: String,
    /// How often it beats: it is declared lost after three of these in silence.
    pub heartbeat: Duration,
    /// The standalone coordinator its jobs' groups live in (its URL and group
    /// prefix), `None` for one in its own process. Workers of one database must agree,
    /// since a job across several workers meets in one group.
    pub coordinator: Option<String>,
}

/// What [`Store::finish_part`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct PartFinished {
    /// The job's state after.
    pub state: JobState,
    /// This part's end ended the job.
    pub ended_job: bool,
}

/// How one worker's part of a job across several workers ended.
#[derive(Debug, Clone, PartialEq)]
pub struct PartEnd {
    pub outcome: Outcome,
    pub results: Option<serde_json::Value>,
}

/// How the parts of a job across several workers, all ended (in the order the
/// workers' names sort), make the job's end. The store keeps results as documents it
/// does not read; the daemon, which knows their shape, says how they merge.
pub type MergeParts = fn(Vec<PartEnd>) -> PartEnd;

/// The merge a store uses unless told another: the first part that did not complete
/// gives the outcome (all complete: complete), the first results stand.
pub fn first_failed_part(parts: Vec<PartEnd>) -> PartEnd {
    let outcome = parts
        .iter()
        .map(|p| p.outcome.clone())
        .find(|o| o.error.is_some())
        .unwrap_or_else(Outcome::complete);
    PartEnd {
        outcome,
        results: parts.into_iter().find_map(|p| p.results),
    }
}

/// A worker as the shared database knows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct WorkerRecord {
    pub name: String,
    /// `alive`; `lost` (its beats stopped) or `left` (it stopped), until it joins again.
    pub state: String,
    pub version: String,
    pub api_url: String,
    /// How many times it joined.
    pub epoch: u64,
    /// When it last joined (unix seconds).
    pub joined_at: i64,
    /// Seconds since its last beat, by the database's clock.
    pub last_beat_secs: f64,
    /// Its devices, by hostname.
    pub devices: Vec<String>,
}

/// A worker declared lost, and the jobs that ended with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostWorker {
    pub name: String,
    /// Jobs that ended (their last part, or all of them, was the lost worker's).
    pub jobs: Vec<u64>,
    /// Jobs across several workers whose lost worker's part ended while other parts
    /// still run: those parts' nodes must be told its nodes are gone.
    pub parts: Vec<u64>,
}

/// The message of jobs that ended because the worker running them was lost.
pub fn lost_message(worker: &str) -> String {
    format!("worker {worker} lost")
}

/// What a [`StoreError::Conflict`] ran into.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    #[error("device {hostname} is not free: it is {state:?} with health {health:?}")]
    DeviceNotFree {
        hostname: String,
        state: DeviceState,
        health: DeviceHealth,
    },
    #[error("a token named {0} already exists")]
    DuplicateToken(String),
    /// A device asked for belongs to a worker that is not alive (it left, or was lost).
    #[error("worker {0} is not alive: its devices cannot be given")]
    WorkerGone(String),
    /// A part of a job across several workers that may not start: the job is over
    /// (or going), or the part ran already.
    #[error("job {job} is {state}: the part of worker {worker} cannot start")]
    PartOver {
        job: u64,
        worker: String,
        state: String,
    },
    /// Two workers' lab files name one device: each device has one worker, which
    /// drives it.
    #[error("device {hostname} belongs to worker {worker}")]
    DeviceOfAnotherWorker { hostname: String, worker: String },
    /// A worker that would join differs from a live one.
    #[error(
        "worker {worker} runs {theirs} and this one {ours}: workers of one database must agree"
    )]
    WorkerMismatch {
        worker: String,
        theirs: String,
        ours: String,
    },
    /// Another instance of this worker is alive.
    #[error(
        "worker {worker} is alive (it beat {millis} ms ago): another instance runs with this worker_id"
    )]
    WorkerAlive { worker: String, millis: u64 },
    /// This worker was declared lost, or joined again elsewhere, since it joined.
    #[error("worker {0} was fenced: it was declared lost or joined again meanwhile")]
    Fenced(String),
}

/// What a [`StoreError::Invalid`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("priority {0} is out of range (0 to 100)")]
    Priority(u8),
    #[error("unknown job state {0:?}")]
    JobState(String),
    #[error("unknown job health {0:?} (complete, incomplete or canceled)")]
    JobHealth(String),
}

/// A job to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub name: Option<String>,
    /// The submitted JSON, kept byte for byte.
    pub definition: String,
    /// 0 to 100.
    pub priority: u8,
    /// The job's nodes, as its validation found them.
    pub members: Vec<Member>,
    /// The device this job is the health check of; `None` for an ordinary job.
    pub health_check_of: Option<String>,
    /// The job this one is a resubmission of (it is linked back to this one).
    pub resubmitted_from: Option<u64>,
    /// Automatic retries (after `infrastructure` failures) that led to this job.
    pub auto_retries: u32,
    /// The device types its nodes need (for listing jobs by device type).
    pub device_types: Vec<String>,
    /// The name of the token that submitted it; `None`: the daemon itself (a health
    /// check, an automatic retry) or a lab with public writes.
    pub submitter: Option<String>,
}

/// Which jobs a listing shows, and which page of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// A state name (see [`JOB_STATE_NAMES`]).
    pub state: Option<String>,
    /// A finished job's health: `complete`, `incomplete` or `canceled`.
    pub health: Option<String>,
    /// Jobs with a node of this device type.
    pub device_type: Option<String>,
    /// Jobs whose name holds this text (any case), or whose id it is.
    pub text: Option<String>,
    /// At most this many, newest first...
    pub limit: u32,
    /// ...after skipping this many.
    pub offset: u64,
}

/// One page of a listing, and how many jobs the filter matches in all.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobPage {
    pub jobs: Vec<JobSummary>,
    pub total: u64,
}

/// How many jobs there are in each state, and finished ones by health: what
/// `/metrics` shows, counted by the database rather than read job by job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobCounts {
    pub by_state: std::collections::BTreeMap<String, u64>,
    pub finished_by_health: std::collections::BTreeMap<String, u64>,
}

/// A device's health as a job's end sets it, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChange {
    pub health: DeviceHealth,
    pub reason: String,
}

/// One change of a device's health. `at` is unix seconds; `job` the job whose end
/// made it (none: an admin, or the device joining the lab).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct HealthEvent {
    pub at: i64,
    pub health: DeviceHealth,
    pub job: Option<u64>,
    pub reason: String,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRecord {
    #[serde(flatten)]
    pub summary: JobSummary,
    /// The submitted JSON, byte for byte.
    pub definition: String,
    pub results: Option<serde_json::Value>,
    /// The job's nodes, as validation found them at submission; `None` for a job
    /// submitted before the store kept them (see [`Store::set_members`]).
    pub members: Option<Vec<Member>>,
    /// Automatic retries (after `infrastructure` failures) that led to this job.
    #[serde(skip)]
    pub auto_retries: u32,
    /// The devices reserved for a job across several workers, one per node in the
    /// order of its needs (which worker drives which node); empty otherwise.
    #[serde(skip)]
    pub assigned: Vec<String>,
}

/// A job without its definition and results: what a listing shows. Timestamps are
/// unix seconds.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct JobSummary {
    pub id: u64,
    pub name: Option<String>,
    pub priority: u8,
    pub state: JobState,
    pub submitted_at: i64,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    /// The device this job is the health check of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_of: Option<String>,
    /// The job this one was resubmitted from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resubmitted_from: Option<u64>,
    /// The newest job resubmitted from this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resubmitted_as: Option<u64>,
    /// The device types its nodes need (empty for jobs stored before these were kept).
    pub device_types: Vec<String>,
    /// The devices it was given, once scheduled.
    pub devices: Vec<String>,
    /// Who submitted it: a token's name (none: the daemon itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub submitter: Option<String>,
}

/// One node a job has (or will have): its id and its role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Member {
    pub node: String,
    pub role: String,
}

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenScope {
    /// Read jobs, logs, results and devices; submit, cancel and set health.
    ReadWrite,
    /// Read only: for dashboards and CI jobs that only fetch results.
    ReadOnly,
}

/// A queued job as the scheduler needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub id: u64,
    pub priority: u8,
    pub submitted_at: i64,
    /// The device it is the health check of.
    pub health_check_of: Option<String>,
}

/// A device as a worker's lab files describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabDevice {
    pub hostname: String,
    pub device_type: String,
    pub tags: Vec<String>,
}

/// What another worker did, as its notice says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Worker `worker` changed something (`what`: "submitted 12", "finished 12",
    /// "devices"...).
    Notified { worker: String, what: String },
    /// The notices' connection came back after breaking: what happened meanwhile was
    /// not told.
    Reconnected,
}

/// A device as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceRecord {
    pub hostname: String,
    pub device_type: String,
    /// Its tags, as its lab file gives them.
    pub tags: Vec<String>,
    /// The worker that owns it, when several share the database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    pub state: DeviceState,
    pub health: DeviceHealth,
    /// When its last health check ended (unix seconds).
    pub last_check_at: Option<i64>,
    /// Jobs it ran since its last health check.
    pub jobs_since_check: u32,
}

impl DeviceRecord {
    /// The scheduler's view, with the tags from the lab files; `checked_type`: the
    /// device's type has a health check, so an `unknown` device awaits it.
    pub fn into_view(
        self,
        tags: std::collections::BTreeSet<String>,
        checked_type: bool,
    ) -> DeviceView {
        DeviceView {
            awaiting_check: checked_type && self.health == DeviceHealth::Unknown,
            hostname: self.hostname,
            device_type: self.device_type,
            tags,
            state: self.state,
            health: self.health,
        }
    }
}
