//! Device health, LAVA's model: a device type may name a health-check job; it runs on
//! a device of the type whose health is `unknown` (new in the lab, after an
//! `infrastructure` failure of a job on it, or an admin said so) before any other job
//! may have the device, and again on a good device every `every_hours` or `every_jobs`.
//! A check that completes with no failed case makes the device `good`; any other end
//! makes it `bad`, and a bad device takes no job until an admin acts.
//!
//! Who is blamed is decided by how a job failed: only an `infrastructure` failure says
//! something about the device (`unknown`, so it is checked before its next job); a
//! job's own image that panics or never boots (`job`), a failed test (`test`) or a
//! timeout leave the device as it was.

use std::time::{Duration, SystemTime};

use lab::{HealthCheck, HealthFrequency};
use states::{DeviceHealth, DeviceState, ErrorClass, Health, Outcome};
use store::{HealthChange, NewJob, StoreError};

use super::{Shared, now_secs};

/// Device `hostname`'s health check: its type's, if it has one.
pub fn check_of<'a>(lab: &'a lab::Lab, hostname: &str) -> Option<&'a HealthCheck> {
    lab.devices
        .get(hostname)
        .and_then(|d| d.device_type.health_check.as_ref())
}

/// What a job's end says of its devices' health; `None`: nothing.
pub fn after_job(
    job_id: u64,
    health_check: bool,
    outcome: &Outcome,
    failed_cases: &[String],
) -> Option<HealthChange> {
    let error = outcome.error.as_ref();
    if health_check {
        return match (outcome.health, error) {
            // Canceled: the check said nothing; an unknown device is checked again.
            (Health::Canceled, _) => None,
            (Health::Complete, _) if failed_cases.is_empty() => Some(HealthChange {
                health: DeviceHealth::Good,
                reason: format!("health check job {job_id} passed"),
            }),
            (Health::Complete, _) => Some(HealthChange {
                health: DeviceHealth::Bad,
                reason: format!(
                    "health check job {job_id}: failed case(s): {}",
                    failed_cases.join(", ")
                ),
            }),
            (_, error) => Some(HealthChange {
                health: DeviceHealth::Bad,
                reason: match error {
                    Some((class, message)) => {
                        format!("health check job {job_id} incomplete ({class}): {message}")
                    }
                    None => format!("health check job {job_id} incomplete"),
                },
            }),
        };
    }
    match error {
        Some((ErrorClass::Infrastructure, message)) => Some(HealthChange {
            health: DeviceHealth::Unknown,
            reason: format!("job {job_id} failed with an infrastructure error: {message}"),
        }),
        _ => None,
    }
}

/// Why device `record` needs its health check now, if it does.
fn due(record: &store::DeviceRecord, check: &HealthCheck, now: i64) -> Option<String> {
    match record.health {
        DeviceHealth::Unknown => return Some("its health is unknown".to_string()),
        DeviceHealth::Good => {}
        _ => return None,
    }
    match check.every? {
        HealthFrequency::Jobs(n) if record.jobs_since_check >= n => Some(format!(
            "{} job(s) since its last check (every_jobs = {n})",
            record.jobs_since_check
        )),
        HealthFrequency::Hours(h) => match record.last_check_at {
            None => Some("it was never checked".to_string()),
            Some(at) if now - at >= i64::from(h) * 3600 => {
                Some(format!("{h} hour(s) since its last check"))
            }
            Some(_) => None,
        },
        HealthFrequency::Jobs(_) => None,
    }
}

/// Queues the health check of every idle device that needs one and has none queued.
/// A check that the lab's policy refuses (a file it may not read, say) makes the
/// device `bad` naming why, rather than queueing a job that could never run. Returns
/// when the next periodic check falls due.
pub async fn queue_due_checks(
    shared: &std::sync::Arc<Shared>,
) -> Result<Option<SystemTime>, StoreError> {
    let devices = shared.store.devices().await?;
    // The queue is read only when an idle device has a check (a long queue is read
    // once per pass, by the pass, otherwise).
    let mut queued: Option<Vec<store::Queued>> = None;
    let now = now_secs();
    let mut next: Option<i64> = None;
    let state = shared.lab();
    for record in devices {
        let Some(check) = check_of(&state.lab, &record.hostname) else {
            continue;
        };
        if let (DeviceHealth::Good, Some(HealthFrequency::Hours(h)), Some(at)) =
            (record.health, check.every, record.last_check_at)
        {
            let at = at + i64::from(h) * 3600;
            // A check already due waits for its device to be idle, which a job's end
            // announces: only a time still ahead needs waking for.
            if at > now {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        if record.state != DeviceState::Idle {
            continue;
        }
        let queued = match &mut queued {
            Some(queued) => queued,
            None => queued.insert(shared.store.queue().await?),
        };
        let pending = queued
            .iter()
            .any(|q| q.health_check_of.as_deref() == Some(record.hostname.as_str()));
        if pending {
            continue;
        }
        let Some(why) = due(&record, check, now) else {
            continue;
        };
        let definition = check.definition.clone();
        let pass = state.clone();
        let validated = tokio::task::spawn_blocking(move || pass.validate_for_run(&definition))
            .await
            .map_err(|e| StoreError::Unavailable(format!("validation did not complete: {e}")))?;
        let hostname = record.hostname.clone();
        match validated {
            Ok(validated) => {
                let job = validated.job;
                let id = shared
                    .store
                    .submit(NewJob {
                        name: Some(
                            job.name
                                .clone()
                                .unwrap_or_else(|| format!("health check of {hostname}")),
                        ),
                        definition: check.definition.clone(),
                        priority: 100,
                        members: super::service::members_of(&job),
                        health_check_of: Some(hostname.clone()),
                        resubmitted_from: None,
                        auto_retries: 0,
                        device_types: super::service::device_types_of(&job, &state.lab),
                        submitter: None,
                    })
                    .await?;
                shared.remember_validated(id, job, Some(&hostname));
                tracing::info!(device = %hostname, job = id, %why, "health check queued");
            }
            Err(report) => {
                let reason = format!(
                    "its health check {} cannot run here:\n{}",
                    check.path.display(),
                    report.render(&check.path.display().to_string())
                );
                tracing::error!(device = %hostname, %reason, "device marked bad");
                shared
                    .store
                    .set_device_health(&hostname, DeviceHealth::Bad, &reason)
                    .await?;
            }
        }
    }
    Ok(next.map(|at| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(at).unwrap_or(0))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_infrastructure_failure_or_a_health_check_says_anything_of_a_device() {
        let infra = Outcome::incomplete(ErrorClass::Infrastructure, "host lost");
        let change = after_job(7, false, &infra, &[]).unwrap();
        assert_eq!(change.health, DeviceHealth::Unknown);
        assert!(change.reason.contains("job 7") && change.reason.contains("host lost"));
        // A guest's kernel panic is the job's image: the device is not blamed.
        for class in [ErrorClass::Job, ErrorClass::Test, ErrorClass::Timeout] {
            let outcome = Outcome::incomplete(class, "kernel panic");
            assert_eq!(after_job(7, false, &outcome, &[]), None);
        }
        assert_eq!(after_job(7, false, &Outcome::complete(), &[]), None);

        let passed = after_job(8, true, &Outcome::complete(), &[]).unwrap();
        assert_eq!(passed.health, DeviceHealth::Good);
        let failed = after_job(8, true, &Outcome::complete(), &["check.disk.rw".into()]).unwrap();
        assert_eq!(failed.health, DeviceHealth::Bad);
        assert!(failed.reason.contains("check.disk.rw"));
        let raised = Outcome::incomplete(ErrorClass::Test, "no disk");
        let bad = after_job(8, true, &raised, &[]).unwrap();
        assert_eq!(bad.health, DeviceHealth::Bad);
        assert!(bad.reason.contains("no disk"), "{}", bad.reason);
        assert_eq!(
            after_job(8, true, &Outcome::canceled("by admin"), &[]),
            None
        );
    }

    #[test]
    fn a_check_falls_due_when_unknown_or_by_its_frequency() {
        let record = |health, last_check_at, jobs_since_check| store::DeviceRecord {
            hostname: "kvm-01".into(),
            device_type: "kvm".into(),
            state: DeviceState::Idle,
            health,
            last_check_at,
            jobs_since_check,
            tags: Vec::new(),
            worker: None,
        };
        let check = |every| HealthCheck {
            path: "kvm.health.json".into(),
            definition: String::new(),
            every,
        };
        let now = 100_000;
        let none = check(None);
        assert!(due(&record(DeviceHealth::Unknown, None, 0), &none, now).is_some());
        assert!(due(&record(DeviceHealth::Good, None, 50), &none, now).is_none());
        assert!(due(&record(DeviceHealth::Bad, None, 0), &none, now).is_none());
        let jobs = check(Some(HealthFrequency::Jobs(3)));
        assert!(due(&record(DeviceHealth::Good, Some(now), 2), &jobs, now).is_none());
        assert!(due(&record(DeviceHealth::Good, Some(now), 3), &jobs, now).is_some());
        let hours = check(Some(HealthFrequency::Hours(2)));
        assert!(
            due(
                &record(DeviceHealth::Good, Some(now - 3600), 9),
                &hours,
                now
            )
            .is_none()
        );
        assert!(
            due(
                &record(DeviceHealth::Good, Some(now - 7200), 0),
                &hours,
                now
            )
            .is_some()
        );
        assert!(due(&record(DeviceHealth::Good, None, 0), &hours, now).is_some());
        assert!(due(&record(DeviceHealth::Maintenance, None, 0), &hours, now).is_none());
    }
}
