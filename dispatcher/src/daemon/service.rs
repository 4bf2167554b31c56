//! What the daemon does for its clients, with no HTTP in it: [`Dispatcher`] takes typed
//! requests (a token, a job's text, an id) and gives typed answers or a
//! [`ServiceError`]. The HTTP API (`api.rs`) only parses requests, calls it, and turns
//! its answers into responses (and its errors into statuses, in one place).
//!
//! Store calls are async (the store keeps its blocking work off the async threads);
//! job validation, which costs time in proportion to the job, runs on the blocking
//! pool here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use super::{DaemonConfig, Shared};
use job_schemas::{Diagnostic, Report};
use runner::formats::ResultsFormat;
use runner::report::JobReport;
use runner::validation;
use states::{DeviceHealth, DeviceState, JobState};
use store::{JOB_STATE_NAMES, JobSummary, Member, Missing, NewJob, StoreError, TokenScope};

/// The daemon's service: every request a client can make. Cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    shared: Arc<Shared>,
}

/// What a request wants to do with the daemon's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Jobs, logs, results and devices; no token needed when reads are public.
    Read,
    /// Submit, cancel, set a device's health: a token that may write.
    Write,
}

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("this needs an `Authorization: Token <secret>` header (dispatcher token create)")]
    NoToken,
    #[error("unknown token")]
    UnknownToken,
    #[error("token {0} is read-only (dispatcher token create NAME without --read-only)")]
    ReadOnlyToken(String),
    /// The request itself is malformed (not UTF-8, a body of the wrong shape, a word
    /// for an id, ...).
    #[error("{0}")]
    BadRequest(String),
    /// The job failed validation: every problem found.
    #[error("the job is not valid: {} problem(s)", .0.error_count())]
    InvalidJob(Box<Report>),
    /// A job id no job has (also one too large for any job: the id as given).
    #[error("there is no job {0}")]
    NoSuchJob(String),
    #[error("job {id} has no console log for {node}")]
    NoConsole { id: u64, node: String },
    #[error("job {id} has no attachment {file:?}")]
    NoAttachment { id: u64, file: String },
    #[error("job {id} has no results yet (it is {state})")]
    NoResultsYet { id: u64, state: JobState },
    /// The request's body did not arrive within the deadline, in seconds.
    #[error("the request body did not arrive within {0} s")]
    BodyTimeout(u64),
    /// Every place for a long-lived answer is taken.
    #[error("too many logs and consoles are being read at once; try again later")]
    Busy,
    /// Work on the blocking pool died before answering.
    #[error("{0}")]
    Internal(String),
    /// What was asked is on another worker, which cannot be reached.
    #[error("{0}")]
    Unreachable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A queued job: `POST /api/v1/jobs`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Submitted {
    pub id: u64,
    /// Every node the job will have, with its role.
    pub nodes: Vec<Member>,
    /// What validation warned about (the job runs all the same).
    pub warnings: Vec<Diagnostic>,
    /// Warnings found beyond those in `warnings`.
    pub omitted_warnings: usize,
}

/// One job: `GET /api/v1/jobs/{id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobView {
    #[serde(flatten)]
    pub job: JobSummary,
    /// The nodes of the job's results, once it has them (else null).
    #[schema(value_type = Option<Vec<runner::report::NodeReport>>)]
    pub nodes: Value,
    /// The nodes the job has (or will have): for the web page's group diagram.
    pub members: Vec<Member>,
    /// Once it ended incomplete: its class and the failure that decided it (see
    /// `JobReport::outcome_of`), for the page's header.
    #[serde(skip_serializing_if = "Value::is_null")]
    #[schema(value_type = Option<states::ErrorClass>)]
    pub error_class: Value,
    #[serde(skip_serializing_if = "Value::is_null")]
    #[schema(value_type = Option<String>)]
    pub error: Value,
    /// Every node's actions with when they started and how long they took, once it
    /// ended (older jobs: null).
    #[serde(skip_serializing_if = "Value::is_null")]
    #[schema(value_type = Option<Vec<runner::report::ActionSpan>>)]
    pub timeline: Value,
    /// How long it ran, in seconds, as its report measured it.
    #[serde(skip_serializing_if = "Value::is_null")]
    #[schema(value_type = Option<f64>)]
    pub duration_secs: Value,
    /// Why it waits, while it is queued: what the last scheduling pass saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

/// A job in a listing: `GET /api/v1/jobs`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobListed {
    #[serde(flatten)]
    pub job: JobSummary,
    /// Why it waits, while it is queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

/// A page of jobs, and how many the filter matches in all.
#[derive(Debug, Serialize)]
pub struct JobListing {
    pub jobs: Vec<JobListed>,
    pub total: u64,
}

/// A job's results as JSON: `GET /api/v1/jobs/{id}/results`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobResults {
    pub id: u64,
    pub state: JobState,
    /// The job's report, once it has one.
    #[schema(value_type = Option<runner::report::JobReport>)]
    pub results: Option<Value>,
}

/// A job's results, in the format asked for.
#[derive(Debug)]
pub enum Results {
    Json(JobResults),
    /// Rendered as JUnit or TAP.
    Rendered {
        content_type: &'static str,
        text: String,
    },
}

/// A job's state after a cancel: `POST /api/v1/jobs/{id}/cancel`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Canceled {
    pub id: u64,
    pub state: JobState,
}

/// A device with its tags: `GET /api/v1/devices`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceView {
    pub hostname: String,
    pub device_type: String,
    pub state: DeviceState,
    pub health: DeviceHealth,
    pub tags: Vec<String>,
    /// The worker that owns it, when several share the database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Its file's errors, when it has any: the device is offline until they are fixed
    /// and the lab reloaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A device's health as set: `PUT /api/v1/devices/{hostname}/health`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HealthSet {
    pub hostname: String,
    pub health: DeviceHealth,
    pub reason: String,
}

/// One device in full: `GET /api/v1/devices/{hostname}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceDetail {
    #[serde(flatten)]
    pub device: DeviceView,
    /// When its last health check ended (unix seconds).
    pub last_check_at: Option<i64>,
    /// Jobs it ran since its last health check.
    pub jobs_since_check: u32,
    /// Its type's health check, if it has one.
    pub health_check: Option<HealthCheckView>,
    /// Its health changes, newest first.
    pub history: Vec<store::HealthEvent>,
}

/// A device type's health check.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HealthCheckView {
    /// The job's file.
    pub job: String,
    pub every_hours: Option<u32>,
    pub every_jobs: Option<u32>,
}

/// A device type of the lab: `GET /api/v1/device-types`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceTypeView {
    pub name: String,
    pub kind: &'static str,
    pub description: String,
    pub arch: String,
    pub virtualization: bool,
}

/// A file of a job's directory as far as it got: a node's console log, or an
/// attachment; its file and length when asked.
pub struct Console {
    pub file: tokio::fs::File,
    pub length: u64,
}

/// The daemon's numbers (`GET /metrics`).
#[derive(Debug)]
pub struct Metrics {
    /// Jobs by state name, every state named.
    pub jobs_by_state: Vec<(&'static str, u64)>,
    /// Finished jobs by health name, every health named.
    pub finished_by_health: Vec<(&'static str, u64)>,
    /// Jobs waiting for devices.
    pub queued: u64,
    /// Devices by (state, health) names.
    pub devices: BTreeMap<(String, String), u64>,
    /// Each device's (name, type, health).
    pub device_health: Vec<(String, String, String)>,
    /// The embedded coordinator's groups and blocked calls (a standalone one serves
    /// its own numbers).
    pub coordinator: Option<(usize, usize)>,
    /// Image and agent bytes sent to hosts.
    pub transfer_bytes: u64,
}

impl Dispatcher {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    pub fn config(&self) -> &DaemonConfig {
        &self.shared.config
    }

    /// Checks a request's token (`None`: it has none) for `access`; reads pass without
    /// one when reads are public.
    /// Whether `token` may do what `access` asks; the token's name when there is one
    /// (a public read needs none).
    pub async fn authorize(
        &self,
        token: Option<&str>,
        access: Access,
    ) -> Result<Option<String>, ServiceError> {
        if access == Access::Read && self.shared.config.public_reads {
            return Ok(None);
        }
        let token = token.ok_or(ServiceError::NoToken)?;
        match self.shared.store.token_scope(token).await? {
            Some((name, TokenScope::ReadOnly)) if access == Access::Write => {
                Err(ServiceError::ReadOnlyToken(name))
            }
            Some((name, _)) => Ok(Some(name)),
            None => Err(ServiceError::UnknownToken),
        }
    }

    /// Who `token` is: its name, and whether it is read-only (for signing in, which
    /// needs a real token even where reads are public).
    pub async fn token_info(&self, token: &str) -> Result<(String, bool), ServiceError> {
        match self.shared.store.token_scope(token).await? {
            Some((name, scope)) => Ok((name, scope == TokenScope::ReadOnly)),
            None => Err(ServiceError::UnknownToken),
        }
    }

    /// Whether anyone may read without a token.
    pub fn public_reads(&self) -> bool {
        self.shared.config.public_reads
    }

    /// Validates and queues a job (`text` as submitted, by the token named
    /// `submitter`), and wakes the scheduler.
    pub async fn submit(
        &self,
        text: Vec<u8>,
        submitter: Option<String>,
    ) -> Result<Submitted, ServiceError> {
        let text = String::from_utf8(text)
            .map_err(|e| ServiceError::BadRequest(format!("the job is not UTF-8: {e}")))?;
        self.queue(text, None, 0, submitter).await
    }

    /// Validates and queues `text`, a resubmission of `from` if given.
    async fn queue(
        &self,
        text: String,
        from: Option<u64>,
        auto_retries: u32,
        submitter: Option<String>,
    ) -> Result<Submitted, ServiceError> {
        let state = self.shared.lab();
        let lab = state.clone();
        let (validated, text) = off_thread(move || {
            let validated = state.validate_for_run(&text);
            (validated, text)
        })
        .await?;
        let validated = validated.map_err(|report| ServiceError::InvalidJob(Box::new(report)))?;
        let job = validated.job;
        let mut warnings = validated.warnings;
        if self.shared.config.smtp_relay.is_none() {
            for (key, addresses) in [
                ("/notify", &job.notify),
                ("/notify_on_incomplete", &job.notify_on_incomplete),
            ] {
                if !addresses.is_empty() {
                    warnings.push(
                        Diagnostic::warning(key, "this lab sends no mail: nobody will be mailed")
                            .hint("its daemon has no smtp_relay; callbacks reach an HTTP receiver"),
                    );
                }
            }
        }
        let nodes = members_of(&job);
        let id = self
            .shared
            .store
            .submit(NewJob {
                name: job.name.clone(),
                definition: text,
                priority: job.priority.value(),
                members: nodes.clone(),
                health_check_of: None,
                resubmitted_from: from,
                auto_retries,
                device_types: device_types_of(&job, &lab.lab),
                submitter,
            })
            .await?;
        self.shared.remember_validated(id, job, None);
        self.shared.wake.submitted(id);
        Ok(Submitted {
            id,
            nodes,
            warnings,
            omitted_warnings: validated.omitted_warnings,
        })
    }

    /// Submits job `id` again as it was written, validated against the lab as it is now;
    /// the new job and the old one are linked. `automatic`: a retry after an
    /// `infrastructure` failure, made only while the chain of such retries is shorter
    /// than `retry_infrastructure` (`None` past it), in the name of the job's own
    /// submitter; else by the token named `submitter`.
    pub async fn resubmit(
        &self,
        id: u64,
        automatic: bool,
        submitter: Option<String>,
    ) -> Result<Option<Submitted>, ServiceError> {
        let record = self.job_record(id).await?;
        let (auto_retries, submitter) = if automatic {
            if record.auto_retries >= self.shared.config.retry_infrastructure {
                return Ok(None);
            }
            (record.auto_retries + 1, record.summary.submitter.clone())
        } else {
            (0, submitter)
        };
        self.queue(record.definition, Some(id), auto_retries, submitter)
            .await
            .map(Some)
    }

    /// Jobs, newest first, all or those in the state named `state`; a queued one with
    /// why it waits.
    /// A page of the jobs `filter` matches, newest first, and how many it matches.
    pub async fn jobs(&self, filter: &store::JobFilter) -> Result<JobListing, ServiceError> {
        let page = self.shared.store.job_page(filter).await?;
        Ok(JobListing {
            jobs: page
                .jobs
                .into_iter()
                .map(|job| JobListed {
                    waiting_for: self.waiting_for(&job),
                    job,
                })
                .collect(),
            total: page.total,
        })
    }

    /// Job `id` as it was submitted, byte for byte, unless it has callback tokens:
    /// those are the keys of the callbacks' signatures, and a reader (a read-only
    /// token, anyone where reads are public) must not learn them, so they are hidden
    /// (the JSON then re-written).
    pub async fn definition(&self, id: u64) -> Result<String, ServiceError> {
        let text = self.job_record(id).await?.definition;
        Ok(hide_callback_tokens(&text).unwrap_or(text))
    }

    fn waiting_for(&self, job: &JobSummary) -> Option<String> {
        (job.state == JobState::Submitted)
            .then(|| self.shared.waiting_for(job.id))
            .flatten()
    }

    /// Changes whenever a queued job's reason to wait does.
    pub fn waiting_changes(&self) -> watch::Receiver<u64> {
        self.shared.waiting_changes()
    }

    /// Why queued job `id` waits now (`None` once it runs).
    pub fn waiting_reason(&self, id: u64) -> Option<String> {
        self.shared.waiting_for(id)
    }

    /// Job `id` with its nodes. The nodes were kept from its validation at submission,
    /// so reading a job never validates it again; a job submitted before the store
    /// kept them is validated once, and the answer kept.
    pub async fn job_view(&self, id: u64) -> Result<JobView, ServiceError> {
        let mut record = self.job_record(id).await?;
        let members = match record.members.take() {
            Some(members) => members,
            None => {
                let state = self.shared.lab();
                let definition = std::mem::take(&mut record.definition);
                let members = off_thread(move || {
                    validation::validate_job(&definition, &state.lab, &state.policy)
                        .map(|v| members_of(&v.job))
                        .unwrap_or_default()
                })
                .await?;
                self.shared.store.set_members(id, members.clone()).await?;
                members
            }
        };
        let of_results = |key: &str| {
            record
                .results
                .as_ref()
                .and_then(|r| r.get(key))
                .cloned()
                .unwrap_or(Value::Null)
        };
        Ok(JobView {
            waiting_for: self.waiting_for(&record.summary),
            nodes: of_results("nodes"),
            error_class: of_results("error_class"),
            error: of_results("error"),
            timeline: of_results("timeline"),
            duration_secs: of_results("duration_secs"),
            job: record.summary,
            members,
        })
    }

    /// Job `id`'s results: as stored (JSON), or rendered as JUnit or TAP once it has
    /// them.
    pub async fn results(&self, id: u64, format: ResultsFormat) -> Result<Results, ServiceError> {
        let record = self.job_record(id).await?;
        let state = record.summary.state;
        if format == ResultsFormat::Json {
            return Ok(Results::Json(JobResults {
                id,
                state,
                results: record.results,
            }));
        }
        let report: JobReport = record
            .results
            .and_then(|r| serde_json::from_value(r).ok())
            .ok_or(ServiceError::NoResultsYet { id, state })?;
        Ok(Results::Rendered {
            content_type: format.content_type(),
            text: format.render(&report),
        })
    }

    /// Cancels job `id`: a queued one ends now, a running one is told to stop.
    pub async fn cancel(&self, id: u64) -> Result<Canceled, ServiceError> {
        let state = self.shared.store.cancel(id).await?;
        if matches!(state, JobState::Canceling) {
            self.shared.cancel_running(id);
        }
        if state.is_finished() {
            // A queued job ends here, not in a job task: its followers are told now,
            // and the scheduler's copy of it goes. So does a job across workers whose
            // parts had all ended but those that never started: its group is closed.
            self.shared.forget_validated(id);
            self.shared.job_ended();
            if !self.job_record(id).await?.assigned.is_empty() {
                let group = self.shared.coordination.group_id(id);
                self.shared.coordination.close_group(&group).await;
            }
        }
        self.shared.wake.changed();
        Ok(Canceled { id, state })
    }

    /// Job `id`'s state, or `None` when there is no such job.
    pub async fn job_state(&self, id: u64) -> Result<Option<JobState>, ServiceError> {
        Ok(self.shared.store.job_state(id).await?)
    }

    /// The API address of the worker that ran job `id`, when that is another worker
    /// (its files are there); `None`: this one, or no worker yet (a queued job).
    pub async fn ran_elsewhere(&self, id: u64) -> Result<Option<String>, ServiceError> {
        let Some(me) = self.shared.store.worker() else {
            return Ok(None);
        };
        let record = self.job_record(id).await?;
        let Some(first) = record.summary.devices.first() else {
            return Ok(None);
        };
        let devices = self.shared.store.devices().await?;
        let owner = devices
            .iter()
            .find(|d| &d.hostname == first)
            .and_then(|d| d.worker.clone());
        let Some(owner) = owner.filter(|o| o != me) else {
            return Ok(None);
        };
        let workers = self.shared.store.workers().await?.unwrap_or_default();
        match workers.into_iter().find(|w| w.name == owner) {
            Some(worker) if worker.state == "alive" => Ok(Some(worker.api_url)),
            _ => Err(ServiceError::Unreachable(format!(
                "job {id} ran on worker {owner}, which is lost: its files are there"
            ))),
        }
    }

    /// The file of job `id`'s log (it may not exist yet).
    pub async fn log_path(&self, id: u64) -> Result<PathBuf, ServiceError> {
        self.job_exists(id).await?;
        Ok(self.shared.config.job_dir(id).join("job.log"))
    }

    /// Job `id`'s log while the job runs here: followers take its feed of writes.
    pub fn job_log(&self, id: u64) -> Option<runner::joblog::JobLog> {
        self.shared.job_log(id)
    }

    /// Changes whenever a job ends.
    pub fn job_ends(&self) -> watch::Receiver<u64> {
        self.shared.job_ends()
    }

    /// Node `node`'s console log of job `id`, as far as it got now.
    pub async fn console(&self, id: u64, node: &str) -> Result<Console, ServiceError> {
        self.job_exists(id).await?;
        // Node ids are role names with an optional `-N`: nothing that could leave the
        // job's directory.
        if node.is_empty()
            || !node
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        {
            return Err(ServiceError::BadRequest(format!(
                "{node:?} is not a node name"
            )));
        }
        let path = self
            .shared
            .config
            .job_dir(id)
            .join(format!("console-{node}.log"));
        let missing = || ServiceError::NoConsole {
            id,
            node: node.to_string(),
        };
        let file = tokio::fs::File::open(&path).await.map_err(|_| missing())?;
        let length = file.metadata().await.map_err(|_| missing())?.len();
        Ok(Console { file, length })
    }

    /// An attachment of job `id` (`file`: `N-name`, as its results list it under
    /// `attachments/`). Only a file the results list is served, so no name can reach
    /// anything else in the job's directory.
    pub async fn attachment(&self, id: u64, file: &str) -> Result<Console, ServiceError> {
        let record = self.job_record(id).await?;
        let missing = || ServiceError::NoAttachment {
            id,
            file: file.to_string(),
        };
        let wanted = format!("attachments/{file}");
        let listed = record
            .results
            .as_ref()
            .and_then(|r| r.get("nodes"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|node| node.get("attachments").and_then(Value::as_array))
            .flatten()
            .any(|a| a.get("file").and_then(Value::as_str) == Some(wanted.as_str()));
        if !listed || file.contains('/') || file.starts_with('.') {
            return Err(missing());
        }
        let path = self.shared.config.job_dir(id).join(&wanted);
        let file = tokio::fs::File::open(&path).await.map_err(|_| missing())?;
        let length = file.metadata().await.map_err(|_| missing())?.len();
        Ok(Console { file, length })
    }

    /// The workers sharing the database; with a database of its own, this daemon alone.
    pub async fn workers(&self) -> Result<Vec<store::WorkerRecord>, ServiceError> {
        if let Some(workers) = self.shared.store.workers().await? {
            return Ok(workers);
        }
        let devices = self.shared.store.devices().await?;
        Ok(vec![store::WorkerRecord {
            name: self.shared.config.worker_name(),
            state: "alive".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            api_url: self.shared.api_url.clone(),
            epoch: 1,
            joined_at: self.shared.started_at,
            last_beat_secs: 0.0,
            devices: devices
                .into_iter()
                .filter(|d| d.health != DeviceHealth::Retired)
                .map(|d| d.hostname)
                .collect(),
        }])
    }

    /// Every device, with its tags from the lab files.
    pub async fn devices(&self) -> Result<Vec<DeviceView>, ServiceError> {
        let devices = self.shared.store.devices().await?;
        let mut views: Vec<DeviceView> = devices.into_iter().map(|d| self.device_view(d)).collect();
        // A device whose file has errors and never loaded: offline, with its errors.
        let state = self.shared.lab();
        for (hostname, refused) in &state.lab.refused_devices {
            if views.iter().all(|v| v.hostname != *hostname) {
                views.push(DeviceView {
                    hostname: hostname.clone(),
                    device_type: refused.device_type.clone().unwrap_or_default(),
                    state: DeviceState::Offline,
                    health: DeviceHealth::Unknown,
                    tags: Vec::new(),
                    worker: self.shared.store.worker().map(str::to_string),
                    error: Some(refused.errors.clone()),
                });
            }
        }
        views.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        Ok(views)
    }

    /// Sets a device's health with the admin's reason (its health history keeps
    /// both), and wakes the scheduler (the device may serve now, or get its check).
    pub async fn set_health(
        &self,
        hostname: String,
        health: DeviceHealth,
        reason: Option<String>,
    ) -> Result<HealthSet, ServiceError> {
        let reason = reason
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| "set by an admin".to_string());
        self.shared
            .store
            .set_device_health(&hostname, health, &reason)
            .await?;
        tracing::info!(device = %hostname, ?health, %reason, "device health set by an admin");
        self.shared.wake.changed();
        Ok(HealthSet {
            hostname,
            health,
            reason,
        })
    }

    /// One device: its state, health, health check and health history.
    pub async fn device(&self, hostname: &str) -> Result<DeviceDetail, ServiceError> {
        let record = self
            .shared
            .store
            .devices()
            .await?
            .into_iter()
            .find(|d| d.hostname == hostname)
            .ok_or_else(|| {
                ServiceError::Store(StoreError::NotFound(Missing::Device(hostname.to_string())))
            })?;
        let history = self.shared.store.health_history(hostname).await?;
        let state = self.shared.lab();
        let check = state
            .lab
            .devices
            .get(hostname)
            .and_then(|d| d.device_type.health_check.as_ref())
            .map(|check| HealthCheckView {
                job: check.path.display().to_string(),
                every_hours: match check.every {
                    Some(lab::HealthFrequency::Hours(h)) => Some(h),
                    _ => None,
                },
                every_jobs: match check.every {
                    Some(lab::HealthFrequency::Jobs(n)) => Some(n),
                    _ => None,
                },
            });
        Ok(DeviceDetail {
            last_check_at: record.last_check_at,
            jobs_since_check: record.jobs_since_check,
            device: self.device_view(record),
            health_check: check,
            history,
        })
    }

    fn device_view(&self, d: store::DeviceRecord) -> DeviceView {
        let error = self
            .shared
            .lab()
            .lab
            .refused_devices
            .get(&d.hostname)
            .map(|r| r.errors.clone());
        DeviceView {
            tags: d.tags,
            worker: d.worker,
            hostname: d.hostname,
            device_type: d.device_type,
            state: d.state,
            health: d.health,
            error,
        }
    }

    /// Reads the lab files again and puts them in use (see [`super::Shared::reload`]).
    pub async fn reload(&self) -> Result<super::Reloaded, ServiceError> {
        Ok(self.shared.reload().await?)
    }

    /// The lab's device types.
    pub fn device_types(&self) -> Vec<DeviceTypeView> {
        self.shared
            .lab()
            .lab
            .device_types
            .values()
            .map(|t| DeviceTypeView {
                name: t.name.clone(),
                kind: t.kind.as_str(),
                description: t.description.clone(),
                arch: t.arch.clone(),
                virtualization: t.virtualization,
            })
            .collect()
    }

    /// `Ok` when the store answers.
    pub async fn check_store(&self) -> Result<(), ServiceError> {
        self.shared.store.job_state(0).await?;
        Ok(())
    }

    /// The daemon's numbers now.
    pub async fn metrics(&self) -> Result<Metrics, ServiceError> {
        // Counted by the database: a scrape reads no job.
        let counts = self.shared.store.job_counts().await?;
        let devices = self.shared.store.devices().await?;
        let count = |map: &BTreeMap<String, u64>, name: &str| map.get(name).copied().unwrap_or(0);
        let jobs_by_state: Vec<(&'static str, u64)> = JOB_STATE_NAMES
            .iter()
            .map(|&name| (name, count(&counts.by_state, name)))
            .collect();
        let finished_by_health = ["complete", "incomplete", "canceled"]
            .into_iter()
            .map(|name| (name, count(&counts.finished_by_health, name)))
            .collect();
        let mut by_state_and_health = BTreeMap::new();
        let mut device_health = Vec::new();
        for device in devices {
            // The names the API shows: the serde names of the state and health.
            let state = serde_json::to_value(device.state).unwrap_or_default();
            let health = serde_json::to_value(device.health).unwrap_or_default();
            let key = (
                state["state"].as_str().unwrap_or_default().to_string(),
                health.as_str().unwrap_or_default().to_string(),
            );
            device_health.push((
                device.hostname.clone(),
                device.device_type.clone(),
                key.1.clone(),
            ));
            *by_state_and_health.entry(key).or_default() += 1;
        }
        Ok(Metrics {
            jobs_by_state,
            finished_by_health,
            queued: count(&counts.by_state, "submitted"),
            devices: by_state_and_health,
            device_health,
            coordinator: self.shared.coordination.gauges(),
            transfer_bytes: hostctl::transfer::BYTES_SENT.load(Ordering::Relaxed),
        })
    }

    /// `/metrics` as OpenMetrics text: the numbers now, and the histograms kept.
    pub async fn metrics_text(&self) -> Result<String, ServiceError> {
        let now = self.metrics().await?;
        Ok(self.shared.metrics.render(&now))
    }

    async fn job_record(&self, id: u64) -> Result<store::JobRecord, ServiceError> {
        self.shared.store.job(id).await?.ok_or_else(|| no_job(id))
    }

    /// That job `id` exists (its state read alone, not its definition).
    async fn job_exists(&self, id: u64) -> Result<(), ServiceError> {
        self.shared
            .store
            .job_state(id)
            .await?
            .map(drop)
            .ok_or_else(|| no_job(id))
    }
}

fn no_job(id: u64) -> ServiceError {
    ServiceError::Store(StoreError::NotFound(Missing::Job(id)))
}

/// Runs `f` (validation: CPU in proportion to the job) on the blocking pool, so the
/// async threads keep answering meanwhile.
async fn off_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServiceError::Internal(format!("validation did not complete: {e}")))
}

/// Every node the job will have, with its role.
/// `definition` with each `callbacks[].token` replaced by `"(hidden)"`; `None` when it
/// has none (or is not JSON), to be served as it is.
fn hide_callback_tokens(definition: &str) -> Option<String> {
    let mut job: Value = serde_json::from_str(definition).ok()?;
    let mut hidden = false;
    for callback in job
        .get_mut("callbacks")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(token) = callback.get_mut("token") {
            *token = Value::String("(hidden)".into());
            hidden = true;
        }
    }
    hidden
        .then(|| serde_json::to_string_pretty(&job).ok())
        .flatten()
}

/// The device types `job`'s nodes need, as listings filter them: a job that names
/// only its target device needs that device's type.
pub(super) fn device_types_of(job: &job_schemas::Job, lab: &lab::Lab) -> Vec<String> {
    if let job_schemas::Topology::Single {
        device_type: None,
        target: Some(target),
    } = &job.topology
    {
        return lab
            .devices
            .get(target)
            .map(|d| vec![d.device_type.name.clone()])
            .unwrap_or_default();
    }
    job.roles().into_iter().map(|r| r.device_type).collect()
}

pub(super) fn members_of(job: &job_schemas::Job) -> Vec<Member> {
    job.members()
        .into_iter()
        .map(|m| Member {
            node: m.node,
            role: m.role,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::hide_callback_tokens;

    #[test]
    fn callback_tokens_are_hidden_and_other_definitions_kept_byte_for_byte() {
        let with = r#"{"job_name": "x", "callbacks": [{"url": "http://r/", "token": "s3cret"},
            {"url": "http://q/"}]}"#;
        let shown = hide_callback_tokens(with).expect("a token to hide");
        assert!(
            !shown.contains("s3cret") && shown.contains("(hidden)"),
            "{shown}"
        );
        assert!(shown.contains("http://q/"), "{shown}");
        assert_eq!(hide_callback_tokens(r#"{"job_name":  "x"}"#), None);
        assert_eq!(hide_callback_tokens("not json"), None);
    }
}
