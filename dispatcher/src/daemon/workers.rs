//! What a daemon does as one of several workers sharing a PostgreSQL database: it
//! hears the others' changes (their notices wake its scheduler, and a change of their
//! devices is read again), and since a notice can be lost it also looks at everything
//! now and then on its own.

use std::sync::Arc;
use std::time::Duration;

use store::Change;
use tokio::sync::{mpsc, watch};

use super::{LabState, Shared, other_workers_devices};

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
                shared.wake.changed();
            }
            _ = backstop.tick() => shared.wake.changed(),
            _ = stopped.changed() => return,
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
    });
    Ok(())
}
