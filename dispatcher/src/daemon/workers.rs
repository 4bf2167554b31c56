//! What a daemon does as one of several workers sharing a PostgreSQL database: it
//! hears the others' changes (their notices wake its scheduler, and a change of their
//! devices is read again), and since a notice can be lost it also looks at everything
//! now and then on its own; it beats, and declares lost the workers whose beats
//! stopped.

use std::sync::Arc;
use std::time::Duration;

use store::{Change, Conflict, StoreError};
use tokio::sync::{mpsc, watch};

use super::{LabState, Shared, other_workers_devices, parts};

/// How many of its own heartbeats a worker may miss before it is declared lost.
const SILENT_BEATS: u32 = 3;

/// How often a worker makes a whole scheduling pass though no notice came: the most a
/// lost notice delays a job.
const BACKSTOP: Duration = Duration::from_secs(15);

/// Follows `changes` until the daemon stops (or the store stops telling).
pub(super) async fn follow_other_workers(
    shared: Arc<Shared>,
    mut changes: mpsc::Receiver<Change>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut backstop = tokio::time::interval(BACKSTOP);
    backstop.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            change = changes.recv() => {
                let Some(change) = change else { return };
                tracing::debug!(?change, "another worker's change");
                let devices_changed = match &change {
                    Change::Notified { what, .. } => what == "devices",
                    // Whatever was missed meanwhile may include devices.
                    Change::Reconnected => true,
                };
                if devices_changed && let Err(err) = refresh_others(&shared).await {
                    tracing::warn!(%err, "cannot read the other workers' devices");
                }
                let job_of = |prefix: &str| match &change {
                    Change::Notified { what, .. } => what
                        .strip_prefix(prefix)
                        .and_then(|id| id.parse::<u64>().ok()),
                    Change::Reconnected => None,
                };
                // A cancel asked of another worker, for a job that runs here.
                if let Some(id) = job_of("canceling ") {
                    shared.cancel_running(id);
                }
                if matches!(change, Change::Reconnected) {
                    cancel_asked_meanwhile(&shared).await;
                }
                // Devices reserved by another worker for a job across workers, some of
                // them this worker's: its part starts.
                if job_of("reserved ").is_some() || matches!(change, Change::Reconnected) {
                    start_parts(&shared).await;
                }
                // A job submitted elsewhere is, here too, only one more job: a pass
                // after a pass that left no device free looks at it alone.
                match job_of("submitted ") {
                    Some(id) => shared.wake.submitted(id),
                    None => shared.wake.changed(),
                }
            }
            _ = backstop.tick() => {
                cancel_asked_meanwhile(&shared).await;
                start_parts(&shared).await;
                shared.wake.changed();
            }
            _ = stopped.changed() => return,
        }
    }
}

/// Starts this worker's parts of jobs across workers that wait for it.
async fn start_parts(shared: &Arc<Shared>) {
    if let Err(err) = parts::start_waiting(shared).await {
        tracing::warn!(%err, "cannot start this worker's parts of jobs");
    }
}

/// Stops the jobs running here whose cancel another worker recorded while its notice
/// was lost.
async fn cancel_asked_meanwhile(shared: &Shared) {
    let running: Vec<u64> = shared.running.lock().keys().copied().collect();
    for id in running {
        if let Ok(Some(states::JobState::Canceling)) = shared.store.job_state(id).await {
            shared.cancel_running(id);
        }
    }
}

/// Reads the other workers' devices again, for the checks of new jobs.
async fn refresh_others(shared: &Shared) -> Result<(), store::StoreError> {
    // Not while a reload swaps the lab, which would undo this or be undone by it.
    let _one_at_a_time = shared.reloading.lock().await;
    let others = other_workers_devices(&*shared.store).await?;
    let now = shared.lab();
    *shared.lab.write() = Arc::new(LabState {
        lab: now.lab.clone(),
        policy: now.policy.clone(),
        others,
        span: now.span,
    });
    Ok(())
}

/// Beats every `heartbeat_secs` until the daemon stops, and after each beat declares
/// lost the workers silent for three beats. A worker told it is fenced (the others
/// declared it lost, or it joined again elsewhere) stops beating and says so through
/// `Shared::fenced`: its jobs were ended meanwhile, and its process must stop.
pub(super) async fn beat(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let every = Duration::from_secs(shared.config.heartbeat_secs);
    let silence = every * SILENT_BEATS;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Since when this worker's beats have gone through without a break. Only a worker
    // that has itself been beating for the whole silence declares others lost: after
    // the database was away (a restart), every worker's beats stopped alike, and each
    // gets the time to beat again before anyone is judged.
    let mut beating_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => return,
        }
        match shared.store.beat().await {
            Ok(()) => {
                beating_since.get_or_insert_with(tokio::time::Instant::now);
            }
            Err(StoreError::Conflict(Conflict::Fenced(worker))) => {
                tracing::error!(
                    worker,
                    "this worker was declared lost (or joined again elsewhere) while its \
                     beats did not reach the database: its jobs were ended; it stops"
                );
                shared.fenced.notify_one();
                return;
            }
            Err(err) => {
                beating_since = None;
                tracing::warn!(%err, "cannot beat: the database is away");
                continue;
            }
        }
        if beating_since.is_none_or(|since| since.elapsed() < silence) {
            continue;
        }
        match shared.store.reap_lost_workers(SILENT_BEATS).await {
            Ok(lost) => {
                for worker in &lost {
                    tracing::warn!(
                        worker = worker.name,
                        jobs = ?worker.jobs,
                        parts = ?worker.parts,
                        "worker lost: its jobs ended incomplete, its devices are offline"
                    );
                    parts::release_lost(&shared, worker, &store::lost_message(&worker.name)).await;
                }
                if !lost.is_empty() {
                    shared.wake.changed();
                }
            }
            Err(err) => tracing::warn!(%err, "cannot look for lost workers"),
        }
    }
}
