//! Jobs across several workers: a `device_group` whose devices no one worker has runs
//! on the devices of several, when they share a PostgreSQL database and one standalone
//! coordinator. Whichever worker plans the job reserves all its devices at once; each
//! worker that owns some of them runs its part (the nodes on its devices, see
//! `runner::run_part`), all parts meeting in the job's one coordinator group; the job
//! ends with its last part, its results merged here.

use std::collections::HashSet;
use std::sync::Arc;

use runner::coordination::Coordination;
use runner::report::{JobReport, NodeReport};
use store::{JobRecord, LostWorker, PartEnd, StoreError};
use tokio::sync::watch;

use super::{Shared, Started, run_job, service};

/// How the parts' ends make the job's (the store's [`store::MergeParts`]): every
/// part's nodes in one report; the outcome is that of a part that ended without a
/// report (its worker was lost, or it could not start) if one did, else what the
/// nodes together say.
pub fn merge(parts: Vec<PartEnd>) -> PartEnd {
    let reports: Vec<JobReport> = parts
        .iter()
        .filter_map(|p| serde_json::from_value(p.results.clone()?).ok())
        .collect();
    let unreported = parts
        .iter()
        .find(|p| p.results.is_none() && p.outcome.error.is_some())
        .map(|p| p.outcome.clone());
    let Some(first) = reports.first() else {
        return store::first_failed_part(parts);
    };
    let nodes: Vec<NodeReport> = reports.iter().flat_map(|r| r.nodes.clone()).collect();
    let outcome = unreported.unwrap_or_else(|| JobReport::outcome_of(&nodes));
    let (error_class, error) = match &outcome.error {
        Some((class, message)) => (Some(*class), Some(message.clone())),
        None => (None, None),
    };
    let merged = JobReport {
        job_id: first.job_id,
        job_name: first.job_name.clone(),
        health: outcome.health,
        error_class,
        error,
        duration_secs: reports.iter().map(|r| r.duration_secs).fold(0.0, f64::max),
        nodes,
        timeline: reports.iter().flat_map(|r| r.timeline.clone()).collect(),
    };
    PartEnd {
        outcome,
        results: serde_json::to_value(&merged).ok(),
    }
}

/// The nodes of job `record` that run on `devices`: its members paired with the
/// devices reserved for them.
pub fn nodes_on(record: &JobRecord, devices: &HashSet<String>) -> Vec<String> {
    record
        .members
        .iter()
        .flatten()
        .zip(&record.assigned)
        .filter(|(_, device)| devices.contains(*device))
        .map(|(member, _)| member.node.clone())
        .collect()
}

/// Fails `nodes` of job `record` in its coordinator group, naming `reason`, so the
/// other parts' MultiNode calls that wait for them return at once. The group is made
/// first when no part has made it yet: a part that joins it later finds them failed.
pub async fn fail_in_group(
    coordination: &Coordination,
    record: &JobRecord,
    nodes: &[String],
    reason: &str,
) {
    if nodes.is_empty() || record.summary.state.is_finished() {
        return;
    }
    let members: Vec<(String, String)> = record
        .members
        .iter()
        .flatten()
        .map(|m| (m.node.clone(), m.role.clone()))
        .collect();
    let group = coordination.group_id(record.summary.id);
    if let Err(err) = coordination.join_group(&group, &members, &[]).await {
        tracing::warn!(group, %err, "cannot reach the job's coordinator group");
    }
    for node in nodes {
        tracing::warn!(group, node, reason, "node of a job across workers failed");
        coordination.fail_node(&group, node, reason);
    }
}

/// The devices worker `worker` owns, by the database.
pub(super) async fn devices_of(
    shared: &Shared,
    worker: &str,
) -> Result<HashSet<String>, StoreError> {
    Ok(shared
        .store
        .devices()
        .await?
        .into_iter()
        .filter(|d| d.worker.as_deref() == Some(worker))
        .map(|d| d.hostname)
        .collect())
}

/// Fails this worker's nodes of job `id` in its group (see [`fail_in_group`]): its
/// part ended without running them.
pub async fn fail_nodes_of(shared: &Shared, id: u64, reason: &str) {
    let Some(me) = shared.store.worker() else {
        return;
    };
    let found = async {
        let record = shared.store.job(id).await?;
        let mine = devices_of(shared, me).await?;
        Ok::<_, StoreError>(record.map(|r| (nodes_on(&r, &mine), r)))
    };
    match found.await {
        Ok(Some((nodes, record))) => {
            fail_in_group(&shared.coordination, &record, &nodes, reason).await;
        }
        Ok(None) => {}
        Err(err) => tracing::warn!(job = id, %err, "cannot read the job's part"),
    }
}

/// Starts this worker's parts of jobs across workers that another worker reserved
/// (or this one, before a restart). Called on every notice of a reservation and on the
/// backstop pass, so a lost notice only delays a part.
pub async fn start_waiting(shared: &Arc<Shared>) -> Result<(), StoreError> {
    for id in shared.store.parts_to_start().await? {
        if shared.running.lock().contains_key(&id) {
            continue;
        }
        let Some(record) = shared.store.job(id).await? else {
            continue;
        };
        let state = shared.lab();
        let definition = record.definition.clone();
        let checked =
            tokio::task::spawn_blocking(move || state.validate_for_run(&definition).map(|v| v.job))
                .await;
        let job = match checked {
            Ok(Ok(job)) => job,
            // Valid where it was submitted, not here (a file only that machine may
            // read): this part cannot run, and the job ends with it.
            Ok(Err(report)) => {
                let message = format!(
                    "worker {} cannot run its part:\n{}",
                    shared.store.worker().unwrap_or_default(),
                    report.render(&format!("job {id}"))
                );
                tracing::warn!(job = id, %message, "part refused");
                fail_nodes_of(shared, id, &message).await;
                let outcome = states::Outcome::incomplete(states::ErrorClass::Job, message);
                let ended = shared.store.finish_part(id, outcome, None, None).await?;
                if ended.ended_job {
                    after_part(shared, id, &ended.state).await;
                }
                continue;
            }
            Err(err) => {
                tracing::error!(job = id, %err, "validating a part panicked");
                continue;
            }
        };
        let (switch, cancel) = watch::channel(false);
        {
            let mut running = shared.running.lock();
            if running.contains_key(&id) {
                continue;
            }
            running.insert(id, switch);
        }
        let device_types = service::device_types_of(&job, &shared.lab().lab);
        tracing::info!(job = id, "starting this worker's part");
        tokio::spawn(run_job(
            shared.clone(),
            Started {
                id,
                job,
                devices: record.assigned,
                device_types,
                health_check_of: None,
                part: true,
            },
            cancel,
        ));
    }
    Ok(())
}

/// After a part ended with the job in `state`: the job's last part closes its
/// coordinator group.
pub async fn after_part(shared: &Shared, id: u64, state: &states::JobState) {
    if matches!(state, states::JobState::Finished(_)) {
        let group = shared.coordination.group_id(id);
        shared.coordination.close_group(&group).await;
    }
}

/// A worker was declared lost: the nodes it drove in jobs whose other parts run on are
/// failed in their groups, naming it, so the peers' MultiNode calls return at once;
/// the groups of the jobs that ended with it are closed.
pub async fn release_lost(shared: &Shared, lost: &LostWorker, reason: &str) {
    if !matches!(
        shared.coordination.admin,
        runner::coordination::Admin::Remote(_)
    ) {
        return;
    }
    for &id in &lost.jobs {
        let group = shared.coordination.group_id(id);
        shared.coordination.close_group(&group).await;
    }
    if lost.parts.is_empty() {
        return;
    }
    let theirs = match devices_of(shared, &lost.name).await {
        Ok(devices) => devices,
        Err(err) => {
            tracing::warn!(%err, "cannot read the lost worker's devices");
            return;
        }
    };
    for &id in &lost.parts {
        let record = match shared.store.job(id).await {
            Ok(Some(record)) => record,
            Ok(None) => continue,
            Err(err) => {
                tracing::warn!(job = id, %err, "cannot read a job of the lost worker");
                continue;
            }
        };
        let nodes = nodes_on(&record, &theirs);
        fail_in_group(&shared.coordination, &record, &nodes, reason).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner::report::NodeStatus;
    use states::{ErrorClass, Health, Outcome};

    fn report(nodes: &[(&str, Option<ErrorClass>)]) -> serde_json::Value {
        let nodes: Vec<NodeReport> = nodes
            .iter()
            .map(|(node, failed)| NodeReport {
                node: node.to_string(),
                role: node.to_string(),
                status: match failed {
                    None => NodeStatus::Done,
                    Some(class) => NodeStatus::Failed {
                        class: *class,
                        action: "test".into(),
                        message: "it broke".into(),
                    },
                },
                results: Vec::new(),
                attachments: Vec::new(),
            })
            .collect();
        let outcome = JobReport::outcome_of(&nodes);
        serde_json::to_value(JobReport {
            job_id: 7,
            job_name: None,
            health: outcome.health,
            error_class: None,
            error: None,
            duration_secs: 1.0,
            nodes,
            timeline: Vec::new(),
        })
        .unwrap_or_default()
    }

    #[test]
    fn the_parts_nodes_make_one_report_and_its_outcome() {
        let merged = merge(vec![
            PartEnd {
                outcome: Outcome::complete(),
                results: Some(report(&[("a", None)])),
            },
            PartEnd {
                outcome: Outcome::incomplete(ErrorClass::Test, "x"),
                results: Some(report(&[("b", Some(ErrorClass::Infrastructure))])),
            },
        ]);
        assert_eq!(merged.outcome.health, Health::Incomplete);
        assert!(matches!(
            merged.outcome.error,
            Some((ErrorClass::Infrastructure, ref m)) if m.starts_with("b (b)")
        ));
        let nodes: Vec<String> = merged
            .results
            .and_then(|r| serde_json::from_value::<JobReport>(r).ok())
            .map(|r| r.nodes.into_iter().map(|n| n.node).collect())
            .unwrap_or_default();
        assert_eq!(nodes, ["a", "b"]);
    }

    #[test]
    fn a_part_that_ended_without_a_report_gives_the_outcome() {
        let lost = Outcome::incomplete(ErrorClass::Infrastructure, "worker w2 lost");
        let merged = merge(vec![
            PartEnd {
                outcome: Outcome::complete(),
                results: Some(report(&[("a", None)])),
            },
            PartEnd {
                outcome: lost.clone(),
                results: None,
            },
        ]);
        assert_eq!(merged.outcome, lost);
    }
}
