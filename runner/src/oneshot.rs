//! Running one job here and now, without a daemon (`dispatcher run`): the lab is
//! loaded, the job validated, its devices picked as the scheduler would, a
//! coordinator embedded for the job's group, the job run, and its log and results
//! written to the job's directory.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::joblog::JobLog;
use crate::validation::{self, JobPolicy};
use job_schemas::Report;
use lab::Lab;
use lab::device::Device;
use scheduler::{self, Request};

use super::report::JobReport;
use super::{Coordination, RunSettings, run_job};

/// Where a one-shot run finds its lab and keeps its files.
#[derive(Debug, Clone)]
pub struct OneShot {
    pub lab: Lab,
    /// A device to use; `None`: the first device of the host's type with every tag.
    pub device: Option<String>,
    /// Parent of the job's directory.
    pub jobs_dir: PathBuf,
    pub image_store: PathBuf,
    pub node_agent: PathBuf,
    pub lab_key: PathBuf,
    pub known_hosts: PathBuf,
    pub host_dir: String,
    pub policy: JobPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum OneShotError {
    #[error("the job is not valid:\n{0}")]
    Invalid(String),
    #[error("no device can run this job: {0}")]
    NoDevice(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("cannot start the embedded coordinator: {0}")]
    Coordinator(String),
}

/// The outcome of a one-shot run: the report, and where its files are.
pub struct Ran {
    pub report: JobReport,
    pub job_dir: PathBuf,
}

impl OneShot {
    /// Runs the job in `text` (from `source`); `cancel` turning true (the user's
    /// Ctrl-C or SIGTERM) ends it `canceled`, its VMs and host device stopped.
    pub async fn run(
        &self,
        source: &str,
        text: &str,
        cancel: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Ran, OneShotError> {
        let validated = validation::validate_for_run(text, &self.lab, &self.policy)
            .map_err(|report: Report| OneShotError::Invalid(report.render(source)))?;
        let job = validated.job;
        let devices = self.pick_devices(&job)?;
        let job_id = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let job_dir = self.jobs_dir.join(job_id.to_string());
        std::fs::create_dir_all(&job_dir).map_err(|source| OneShotError::Io {
            what: format!("cannot create {}", job_dir.display()),
            source,
        })?;
        std::fs::write(job_dir.join("job.json"), text).map_err(|source| OneShotError::Io {
            what: "cannot keep the job definition".into(),
            source,
        })?;
        let log = JobLog::open(&job_dir.join("job.log"), 64 * 1024 * 1024).map_err(|source| {
            OneShotError::Io {
                what: "cannot open the job log".into(),
                source,
            }
        })?;
        let admin_token = hex_token();
        let coordinator = coordinator::start(coordinator::Config::new(
            ([127, 0, 0, 1], 0).into(),
            admin_token,
        ))
        .await
        .map_err(|e| OneShotError::Coordinator(e.to_string()))?;
        let coordination = Coordination::embedded(
            coordinator.store(),
            format!("http://{}", coordinator.grpc_addr),
        );
        let settings = RunSettings {
            job_id,
            work_dir: job_dir.clone(),
            image_store: self.image_store.clone(),
            fetch: self.policy.fetch.clone(),
            node_agent: self.node_agent.clone(),
            lab_key: self.lab_key.clone(),
            known_hosts: self.known_hosts.clone(),
            host_dir: self.host_dir.clone(),
            cancel,
        };
        let report = run_job(&job, &self.lab, &devices, &coordination, &settings, &log).await;
        coordinator.shutdown().await;
        super::write_results(&job_dir, &report).map_err(|source| OneShotError::Io {
            what: "cannot write the results".into(),
            source,
        })?;
        Ok(Ran { report, job_dir })
    }

    /// Devices for the job, as the daemon's scheduler would pick them from an idle
    /// lab (`--device` narrows the first need to that device).
    fn pick_devices(&self, job: &job_schemas::Job) -> Result<Vec<Device>, OneShotError> {
        let mut needs = scheduler::needs(job);
        if let (Some(name), Some(first)) = (&self.device, needs.first_mut()) {
            if !self.lab.devices.contains_key(name) {
                return Err(OneShotError::NoDevice(format!(
                    "no device named {name} in the lab"
                )));
            }
            first.hostname = Some(name.clone());
        }
        let views = validation::views(&self.lab);
        let request = Request {
            job_id: 0,
            priority: 0,
            waited: std::time::Duration::ZERO,
            needs: needs.clone().into(),
            health_check: false,
        };
        let plan = scheduler::plan(&[request], &views, scheduler::Policy::default());
        let Some(assignment) = plan.first() else {
            let wanted: Vec<String> = needs
                .iter()
                .map(|n| {
                    let device_type = n.device_type.as_deref().unwrap_or("any device type");
                    match &n.hostname {
                        Some(h) => format!("{h} ({device_type})"),
                        None if n.tags.is_empty() => device_type.to_string(),
                        None => format!("{device_type} with tags {:?}", n.tags),
                    }
                })
                .collect();
            return Err(OneShotError::NoDevice(format!(
                "the job needs {}; the lab has {}",
                wanted.join(", "),
                if self.lab.devices.is_empty() {
                    "no devices".to_string()
                } else {
                    self.lab
                        .devices
                        .values()
                        .map(|d| format!("{} ({})", d.hostname, d.device_type.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )));
        };
        Ok(assignment
            .devices
            .iter()
            .filter_map(|d| self.lab.devices.get(d).cloned())
            .collect())
    }
}

/// A random token for the embedded coordinator's admin calls (it never leaves this
/// process, but the gRPC port is open to the machine).
fn hex_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// The job directory's files, for messages.
pub fn describe_files(job_dir: &Path) -> String {
    format!(
        "log: {}\nresults: {}",
        job_dir.join("job.log").display(),
        job_dir.join("results.json").display()
    )
}
