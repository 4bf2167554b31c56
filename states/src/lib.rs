//! The states of jobs and devices, and the only transitions between them.
//!
//! A job's health exists only once it has finished, and a finished job has one; a
//! device holds a job id exactly when it is reserved or running one. The types say so,
//! so no code can build a "running job with health Complete".

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a job did not complete, so CI can retry infrastructure failures only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// The lab failed: a device did not boot, SSH dropped, the dispatcher restarted.
    Infrastructure,
    /// The job itself is wrong in a way validation could not see (an image 404s).
    Job,
    /// The test shell raised (`lava-test-raise`) or a MultiNode call failed.
    Test,
    Timeout,
    Canceled,
}

impl std::fmt::Display for ErrorClass {
    /// The name the API and reports use (`infrastructure`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorClass::Infrastructure => "infrastructure",
            ErrorClass::Job => "job",
            ErrorClass::Test => "test",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Canceled => "canceled",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Complete,
    Incomplete,
    Canceled,
}

/// How a finished job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Outcome {
    pub health: Health,
    /// Set exactly when the health is not `Complete`: `[class, message]`.
    #[schema(value_type = Option<Vec<String>>)]
    pub error: Option<(ErrorClass, String)>,
}

impl Outcome {
    pub fn complete() -> Self {
        Self {
            health: Health::Complete,
            error: None,
        }
    }

    pub fn incomplete(class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            health: Health::Incomplete,
            error: Some((class, message.into())),
        }
    }

    pub fn canceled(message: impl Into<String>) -> Self {
        Self {
            health: Health::Canceled,
            error: Some((ErrorClass::Canceled, message.into())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum JobState {
    Submitted,
    /// Devices reserved for every node of the job (all of them, or none).
    Scheduled,
    Running,
    /// A cancel arrived while running; the nodes are being torn down.
    Canceling,
    Finished(Outcome),
}

/// Something that happens to a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEvent {
    Scheduled,
    Started,
    CancelRequested,
    Ended(Outcome),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {from} job cannot go through {event:?}")]
pub struct IllegalTransition {
    pub from: String,
    pub event: JobEvent,
}

impl JobState {
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Submitted => "submitted",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Canceling => "canceling",
            JobState::Finished(_) => "finished",
        }
    }

    pub fn is_finished(&self) -> bool {
        matches!(self, JobState::Finished(_))
    }

    /// The state after `event`, or why it cannot happen.
    pub fn apply(&self, event: JobEvent) -> Result<JobState, IllegalTransition> {
        use JobEvent as E;
        use JobState as S;
        let next = match (self, &event) {
            (S::Submitted, E::Scheduled) => S::Scheduled,
            (S::Scheduled, E::Started) => S::Running,
            // Nothing runs yet: canceling is immediate.
            (S::Submitted | S::Scheduled, E::CancelRequested) => {
                S::Finished(Outcome::canceled("canceled before it ran"))
            }
            (S::Running, E::CancelRequested) => S::Canceling,
            (S::Canceling, E::CancelRequested) => S::Canceling,
            (S::Running, E::Ended(outcome)) => S::Finished(outcome.clone()),
            // However the nodes ended, a job being canceled ends canceled.
            (S::Canceling, E::Ended(_)) => S::Finished(Outcome::canceled("canceled while running")),
            // A scheduled job whose devices could not be prepared never ran.
            (S::Scheduled, E::Ended(outcome)) if outcome.health != Health::Complete => {
                S::Finished(outcome.clone())
            }
            _ => {
                return Err(IllegalTransition {
                    from: self.name().to_string(),
                    event,
                });
            }
        };
        Ok(next)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What an admin says about a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeviceHealth {
    Good,
    /// Not known to be good: after an infrastructure failure, or never checked.
    Unknown,
    Bad,
    Maintenance,
    Retired,
}

/// What a device is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "state", content = "job", rename_all = "lowercase")]
pub enum DeviceState {
    Idle,
    Reserved(u64),
    Running(u64),
    Offline,
}

/// Whether the scheduler may give this device to a job.
pub fn schedulable(state: DeviceState, health: DeviceHealth) -> bool {
    state == DeviceState::Idle && matches!(health, DeviceHealth::Good | DeviceHealth::Unknown)
}

/// A test case's result, as `lava-test-case` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TestResult {
    Pass,
    Fail,
    Skip,
    Unknown,
}

impl TestResult {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pass" => Some(Self::Pass),
            "fail" => Some(Self::Fail),
            "skip" => Some(Self::Skip),
            "unknown" => Some(Self::Unknown),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_runs_through_its_states() {
        let s = JobState::Submitted;
        let s = s.apply(JobEvent::Scheduled).unwrap();
        let s = s.apply(JobEvent::Started).unwrap();
        let s = s.apply(JobEvent::Ended(Outcome::complete())).unwrap();
        assert_eq!(s, JobState::Finished(Outcome::complete()));
        assert!(s.apply(JobEvent::Started).is_err(), "finished is final");
    }

    #[test]
    fn cancel_is_immediate_before_running_and_wins_while_running() {
        let queued = JobState::Submitted
            .apply(JobEvent::CancelRequested)
            .unwrap();
        assert!(matches!(
            queued,
            JobState::Finished(Outcome {
                health: Health::Canceled,
                ..
            })
        ));
        let running = JobState::Running.apply(JobEvent::CancelRequested).unwrap();
        assert_eq!(running, JobState::Canceling);
        let ended = running
            .apply(JobEvent::Ended(Outcome::incomplete(
                ErrorClass::Infrastructure,
                "VM killed",
            )))
            .unwrap();
        assert!(matches!(
            ended,
            JobState::Finished(Outcome {
                health: Health::Canceled,
                ..
            })
        ));
    }

    #[test]
    fn illegal_transitions_are_refused_by_name() {
        let err = JobState::Submitted.apply(JobEvent::Started).unwrap_err();
        assert_eq!(err.to_string(), "a submitted job cannot go through Started");
        assert!(
            JobState::Scheduled
                .apply(JobEvent::Ended(Outcome::complete()))
                .is_err()
        );
    }

    #[test]
    fn only_idle_healthy_devices_are_schedulable() {
        assert!(schedulable(DeviceState::Idle, DeviceHealth::Good));
        assert!(schedulable(DeviceState::Idle, DeviceHealth::Unknown));
        assert!(!schedulable(DeviceState::Idle, DeviceHealth::Maintenance));
        assert!(!schedulable(DeviceState::Reserved(3), DeviceHealth::Good));
        assert!(!schedulable(DeviceState::Offline, DeviceHealth::Good));
    }

    #[test]
    fn states_serialize_for_the_api() {
        let json = serde_json::to_value(JobState::Finished(Outcome::incomplete(
            ErrorClass::Timeout,
            "boot",
        )))
        .unwrap();
        assert_eq!(json["state"], "finished");
        assert_eq!(json["health"], "incomplete");
        assert_eq!(
            serde_json::to_value(DeviceState::Running(7)).unwrap(),
            serde_json::json!({"state": "running", "job": 7})
        );
    }
}
