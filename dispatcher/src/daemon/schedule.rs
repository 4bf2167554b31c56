//! The scheduling loop: when something changes, a pass asks [`scheduler::plan`] which
//! queued jobs get which devices, reserves them and starts the jobs; and [`Wake`], which
//! tells the loop whether only submissions happened since its last pass.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use scheduler::Request;
use store::StoreError;
use tokio::sync::{Notify, watch};

use super::{LabState, QueuedJob, Shared, Started, health, now_secs, run_job, service};

/// Wakes the scheduler and keeps what it was woken for.
#[derive(Debug)]
pub struct Wake {
    notify: Notify,
    pending: Mutex<Pending>,
}

#[derive(Debug)]
struct Pending {
    /// Something other than a submission happened: a job ended or was canceled, a
    /// device's health was set, the lab was reloaded, a health check fell due.
    changed: bool,
    /// Jobs submitted since the last pass.
    submitted: Vec<u64>,
}

/// What a pass has to look at.
#[derive(Debug)]
pub enum Work {
    Everything,
    /// Only these jobs were submitted.
    Submitted(Vec<u64>),
}

impl Default for Wake {
    fn default() -> Self {
        Self {
            notify: Notify::new(),
            // The first pass looks at everything.
            pending: Mutex::new(Pending {
                changed: true,
                submitted: Vec::new(),
            }),
        }
    }
}

impl Wake {
    /// Something that can free a device or change the queue other than by adding to
    /// it: the next pass looks at everything.
    pub fn changed(&self) {
        self.pending.lock().changed = true;
        self.notify.notify_one();
    }

    /// Job `id` was queued.
    pub fn submitted(&self, id: u64) {
        self.pending.lock().submitted.push(id);
        self.notify.notify_one();
    }

    async fn notified(&self) {
        self.notify.notified().await;
    }

    /// What happened since the last take.
    fn take(&self) -> Work {
        let mut pending = self.pending.lock();
        let submitted = std::mem::take(&mut pending.submitted);
        if std::mem::take(&mut pending.changed) {
            Work::Everything
        } else {
            Work::Submitted(submitted)
        }
    }
}

/// The longest a scheduling pass waits after the last one (see `schedule_forever`).
const MAX_PAUSE: Duration = Duration::from_millis(100);

/// The longest wait after passes that failed (200 ms after the first, doubling).
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub(super) async fn schedule_forever(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    // What the last pass left: the first pass looks at everything.
    let mut outlook = Outlook::default();
    // Passes that failed in a row: each waits longer before the next (a database
    // that is away is not asked ten times a second).
    let mut failures: u32 = 0;
    loop {
        if *stopped.borrow() {
            return;
        }
        // A task of its own, so a panic in a pass is logged and the next pass runs.
        let pass = shared.clone();
        let began = tokio::time::Instant::now();
        let work = shared.wake.take();
        let last = outlook;
        outlook = match tokio::spawn(async move { schedule_once(&pass, work, last).await }).await {
            Ok(Ok(outlook)) => {
                failures = 0;
                outlook
            }
            Ok(Err(err)) => {
                tracing::error!(%err, "scheduling failed");
                shared.wake.changed();
                failures += 1;
                Outlook::default()
            }
            Err(err) => {
                tracing::error!(%err, "the scheduling pass panicked");
                shared.wake.changed();
                failures += 1;
                Outlook::default()
            }
        };
        if failures > 0 {
            let backoff = (MAX_PAUSE * 2u32.saturating_pow(failures.min(6))).min(MAX_BACKOFF);
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stopped.changed() => return,
            }
        }
        let took = began.elapsed();
        tracing::debug!(took_ms = took.as_secs_f64() * 1e3, "scheduling pass");
        // A pass costs time in proportion to the queue. Under a stream of submissions
        // each would wake the next pass at once, and passes back to back would take a
        // core from the API; so the next starts no sooner than this one took (at most
        // MAX_PAUSE: a pass that waited long, as the first after a restart validating
        // the whole queue, does not hold back the next), taking every wake that came
        // meanwhile at once. With a short queue that is a millisecond or less.
        tokio::select! {
            () = tokio::time::sleep(took.min(MAX_PAUSE)) => {}
            _ = stopped.changed() => return,
        }
        // Woken by a change; or when a device's periodic health check falls due,
        // which no event announces.
        let due = async {
            match outlook.next_check {
                Some(at) => {
                    let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
                    tokio::time::sleep(wait).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shared.wake.notified() => {}
            () = due => shared.wake.changed(),
            _ = stopped.changed() => return,
        }
    }
}

/// What a pass leaves for the next.
#[derive(Debug, Clone, Copy, Default)]
struct Outlook {
    /// When the next periodic health check falls due, if one will.
    next_check: Option<SystemTime>,
    /// No device was left that a submitted job could take.
    all_taken: bool,
}

/// One scheduling pass: over the whole queue, unless only jobs were submitted since a
/// pass that left every device taken (then over those jobs alone: under a stream of
/// submissions to a busy lab, a long queue is not read for each).
async fn schedule_once(
    shared: &Arc<Shared>,
    work: Work,
    last: Outlook,
) -> Result<Outlook, PassError> {
    let _no_reload = shared.reloading.lock().await;
    if let (Work::Submitted(ids), true) = (work, last.all_taken)
        && fresh_pass(shared, ids).await?
    {
        return Ok(last);
    }
    full_pass(shared).await
}

/// Why a scheduling pass stopped short.
#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Validation or planning on the blocking pool died (a panic).
    #[error("validation or planning panicked: {0}")]
    Panicked(#[from] tokio::task::JoinError),
}

/// A pass over the whole queue: the health checks that are due are queued, then every
/// job that can get all its devices now starts. Store calls are async; validating a job
/// queued before a restart and planning cost CPU, so they run on the blocking pool.
async fn full_pass(shared: &Arc<Shared>) -> Result<Outlook, PassError> {
    let next_check = health::queue_due_checks(shared).await?;
    let queued = shared.store.queue().await?;
    // Jobs validated at submission are looked up in place (cheap clones of shared
    // parts); those queued before this daemon started are validated once, here.
    let now = now_secs();
    let mut requests = Vec::with_capacity(queued.len());
    let mut unknown = Vec::new();
    {
        let mut known = shared.validated.lock();
        let newest = queued.last().map_or(0, |r| r.id);
        for record in queued {
            match known.get(&record.id) {
                Some(queued_job) => requests.push(request_of(&record, queued_job, now)),
                None => unknown.push(record),
            }
        }
        if known.len() > requests.len() {
            // A job that left the queue without this daemon's scheduler (a cancel, or a
            // start by a pass that validated it before its submission remembered it)
            // is forgotten. Ids only grow: one newer than the queue read is a job
            // submitted since, kept.
            let queued: HashSet<u64> = requests.iter().map(|r| r.job_id).collect();
            known.retain(|id, _| *id > newest || queued.contains(id));
        }
    }
    for record in unknown {
        if let Some(queued_job) = learn(shared, record.id).await? {
            requests.push(request_of(&record, &queued_job, now));
        }
    }
    if requests.is_empty() {
        shared.set_waiting(Vec::new());
        return Ok(Outlook {
            next_check,
            all_taken: false,
        });
    }
    let lab_now = shared.lab();
    let devices = device_views(shared, &lab_now, Whose::Mine).await?;
    // With jobs across workers, the others' devices as they are now: what a job no one
    // worker serves may be given.
    let theirs = if lab_now.span {
        device_views(shared, &lab_now, Whose::Others).await?
    } else {
        Vec::new()
    };
    let elsewhere_reason = elsewhere_reason(shared);
    let others = lab_now.others.clone();
    let (plan, waited, all_taken) = tokio::task::spawn_blocking(move || {
        let (requests, elsewhere) = split_elsewhere(requests, &devices, elsewhere_reason);
        let mut plan = scheduler::plan_explained(&requests, &devices, scheduler::Policy::default());
        let all_taken = !scheduler::any_left_for_jobs(&devices, &plan.assignments);
        let (across, elsewhere) = across_workers(elsewhere, &others, !theirs.is_empty());
        plan.waiting
            .extend(elsewhere.into_iter().map(|(r, reason)| (r.job_id, reason)));
        let mut assignments: Vec<(scheduler::Assignment, bool)> =
            plan.assignments.into_iter().map(|a| (a, false)).collect();
        if !across.is_empty() {
            let all = whole_lab(devices, theirs, &assignments);
            let spanning = scheduler::plan_explained(&across, &all, scheduler::Policy::default());
            plan.waiting.extend(spanning.waiting);
            assignments.extend(spanning.assignments.into_iter().map(|a| (a, true)));
        }
        let assigned: HashSet<u64> = assignments.iter().map(|(a, _)| a.job_id).collect();
        let waited: HashMap<u64, Duration> = requests
            .iter()
            .chain(&across)
            .filter(|r| assigned.contains(&r.job_id))
            .map(|r| (r.job_id, r.waited))
            .collect();
        plan.assignments = Vec::new();
        (Planned { plan, assignments }, waited, all_taken)
    })
    .await?;
    let Planned { plan, assignments } = plan;
    shared.set_waiting(plan.waiting);
    for (assignment, across) in assignments {
        // Every planned job is in the map (reloads wait for the pass), unless it was
        // canceled meanwhile: then it is not started.
        let Some(queued_job) = shared.validated.lock().remove(&assignment.job_id) else {
            continue;
        };
        // Planned across workers over devices whose owners this worker knew from an
        // earlier read: one worker alone may serve it after all, and is left to.
        if across && owners(shared, &assignment.devices).await? < 2 {
            tracing::debug!(
                job = assignment.job_id,
                "left to the one worker owning its devices"
            );
            continue;
        }
        let QueuedJob {
            job,
            checks: health_check_of,
            ..
        } = Arc::unwrap_or_clone(queued_job);
        match shared
            .store
            .reserve(assignment.job_id, &assignment.devices)
            .await
        {
            Ok(()) => {}
            // Another worker took the job first (or it was canceled meanwhile): its
            // devices were not taken, and the next pass plans without it.
            Err(
                err @ (StoreError::IllegalTransition { .. }
                | StoreError::Conflict(
                    store::Conflict::DeviceNotFree { .. }
                    | store::Conflict::DeviceOfAnotherWorker { .. }
                    | store::Conflict::WorkerGone(_),
                )),
            ) => {
                tracing::debug!(job = assignment.job_id, %err, "job not reserved here");
                shared.wake.changed();
                continue;
            }
            Err(err) => return Err(err.into()),
        }
        // Across workers: each runs its own part; this one has none, or runs its own.
        if across
            && !assignment
                .devices
                .iter()
                .any(|d| lab_now.lab.devices.contains_key(d))
        {
            tracing::info!(job = assignment.job_id, devices = ?assignment.devices,
                "job across workers reserved: their parts start there");
            continue;
        }
        let (switch, cancel) = watch::channel(false);
        {
            let mut running = shared.running.lock();
            // Once only: this worker's part of a job across workers may have been
            // started from the reservation's notice meanwhile.
            if running.contains_key(&assignment.job_id) {
                continue;
            }
            running.insert(assignment.job_id, switch);
        }
        let device_types = service::device_types_of(&job, &lab_now.lab);
        shared.metrics.job_started(
            &device_types,
            waited.get(&assignment.job_id).copied().unwrap_or_default(),
        );
        tokio::spawn(run_job(
            shared.clone(),
            Started {
                id: assignment.job_id,
                job,
                devices: assignment.devices,
                device_types,
                health_check_of,
                part: across,
            },
            cancel,
        ));
    }
    Ok(Outlook {
        next_check,
        all_taken,
    })
}

/// Validates queued job `id`, which this daemon has not seen (queued before it
/// started, or submitted to another worker), and keeps it validated; `None`: it is no
/// longer queued, or it is not this daemon's to run.
async fn learn(shared: &Arc<Shared>, id: u64) -> Result<Option<Arc<QueuedJob>>, PassError> {
    let Some(stored) = shared.store.job(id).await? else {
        return Ok(None);
    };
    if stored.summary.state != states::JobState::Submitted {
        return Ok(None);
    }
    let health_check_of = stored.summary.health_check_of.clone();
    let state = shared.lab();
    let validated = tokio::task::spawn_blocking(move || {
        state.validate_for_run(&stored.definition).map(|v| v.job)
    })
    .await?;
    let job = match validated {
        Ok(job) => job,
        // Another worker's job: it was valid where it was submitted, and what this
        // worker refuses (a file only that machine may read) is not its to judge.
        Err(report) if shared.store.worker().is_some() => {
            tracing::debug!(
                job = id,
                report = %report.render(&format!("job {id}")),
                "a queued job this worker cannot run is left to the others"
            );
            return Ok(None);
        }
        Err(report) => {
            // The lab changed under a queued job: it can never run as written.
            let message = format!(
                "the job no longer fits the lab:\n{}",
                report.render(&format!("job {id}"))
            );
            shared.store.cancel(id).await?;
            tracing::warn!(job = id, %message, "queued job dropped");
            return Ok(None);
        }
    };
    let queued_job = Arc::new(shared.queued_job(job, health_check_of.as_deref()));
    shared.validated.lock().insert(id, queued_job.clone());
    Ok(Some(queued_job))
}

/// A pass over jobs submitted since the last, when that pass left no device a job could
/// take: nothing has freed one since (that would have been a change), so these jobs
/// can only wait, and only their reasons are new. Their reasons do not depend on the
/// rest of the queue (no device is free to be given or held), so the queue is not read.
/// `false` when a device turned out free after all: the caller makes a full pass.
async fn fresh_pass(shared: &Arc<Shared>, mut submitted: Vec<u64>) -> Result<bool, PassError> {
    // A full pass may have read a job from the queue and started it before its
    // submission remembered it (and told of it): a job that runs does not wait.
    {
        let running = shared.running.lock();
        submitted.retain(|id| !running.contains_key(id));
    }
    // A job submitted to another worker is not known here: with no device of this
    // worker free, it can only wait, and the next whole pass (a device freed) learns it.
    let requests: Vec<Request> = {
        let known = shared.validated.lock();
        submitted
            .iter()
            .filter_map(|id| {
                let queued_job = known.get(id)?;
                Some(queued_job.request(*id, queued_job.job.priority.value(), Duration::ZERO))
            })
            .collect()
    };
    if requests.is_empty() {
        return Ok(true);
    }
    let lab_now = shared.lab();
    let devices = device_views(shared, &lab_now, Whose::Mine).await?;
    let (requests, elsewhere) = split_elsewhere(requests, &devices, elsewhere_reason(shared));
    let mut plan = scheduler::plan_explained(&requests, &devices, scheduler::Policy::default());
    if !plan.assignments.is_empty() {
        return Ok(false);
    }
    let (across, elsewhere) = across_workers(elsewhere, &lab_now.others, lab_now.span);
    if !across.is_empty() {
        // Other workers' devices may be free: a whole pass plans these.
        return Ok(false);
    }
    plan.waiting
        .extend(elsewhere.into_iter().map(|(r, reason)| (r.job_id, reason)));
    shared.add_waiting(plan.waiting);
    Ok(true)
}

/// Why a job waits that no set of this worker's devices could ever serve, when other
/// workers share the lab (`None`: this daemon has the whole lab).
fn elsewhere_reason(shared: &Shared) -> Option<Arc<str>> {
    let me = shared.store.worker()?;
    Some(Arc::from(format!(
        "waiting for another worker: no set of {me}'s devices serves it"
    )))
}

/// `requests` parted into those this worker's `devices` could serve and, with
/// `reason`, those left to the other workers: planned here, they would only be told
/// this worker's lab has no such device. Without a reason (one daemon has the whole
/// lab) every request is planned here.
fn split_elsewhere(
    requests: Vec<Request>,
    devices: &[scheduler::DeviceView],
    reason: Option<Arc<str>>,
) -> (Vec<Request>, Vec<(Request, Arc<str>)>) {
    let Some(reason) = reason else {
        return (requests, Vec::new());
    };
    let (ours, theirs): (Vec<Request>, Vec<Request>) = requests
        .into_iter()
        .partition(|r| scheduler::shortfall(&r.needs, devices).is_none());
    let theirs = theirs.into_iter().map(|r| (r, reason.clone())).collect();
    (ours, theirs)
}

/// What one scheduling pass gives: each job's devices, and whether it runs across
/// workers (planned over every worker's devices).
struct Planned {
    plan: scheduler::Plan,
    assignments: Vec<(scheduler::Assignment, bool)>,
}

/// The jobs left to other workers parted into those no one worker could ever serve,
/// planned here over every worker's devices when jobs may run across workers (`span`),
/// and those one other worker serves, which wait for it.
fn across_workers(
    elsewhere: Vec<(Request, Arc<str>)>,
    others: &[Vec<scheduler::DeviceView>],
    span: bool,
) -> (Vec<Request>, Vec<(Request, Arc<str>)>) {
    if !span {
        return (Vec::new(), elsewhere);
    }
    let (across, theirs): (Vec<_>, Vec<_>) = elsewhere.into_iter().partition(|(r, _)| {
        !others
            .iter()
            .any(|devices| scheduler::shortfall(&r.needs, devices).is_none())
    });
    (across.into_iter().map(|(r, _)| r).collect(), theirs)
}

/// Every worker's devices as they are now, this worker's `mine` taken by the jobs
/// `assigned` this pass.
fn whole_lab(
    mut mine: Vec<scheduler::DeviceView>,
    theirs: Vec<scheduler::DeviceView>,
    assigned: &[(scheduler::Assignment, bool)],
) -> Vec<scheduler::DeviceView> {
    for (assignment, _) in assigned {
        for device in mine
            .iter_mut()
            .filter(|d| assignment.devices.contains(&d.hostname))
        {
            device.state = states::DeviceState::Reserved(assignment.job_id);
        }
    }
    mine.extend(theirs);
    mine
}

/// How many workers own `devices`.
async fn owners(shared: &Shared, devices: &[String]) -> Result<usize, StoreError> {
    let owners: HashSet<Option<String>> = shared
        .store
        .devices()
        .await?
        .into_iter()
        .filter(|d| devices.contains(&d.hostname))
        .map(|d| d.worker)
        .collect();
    Ok(owners.len())
}

/// Which workers' devices [`device_views`] gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Whose {
    /// This worker's own, which it gives to jobs it runs whole.
    Mine,
    /// The other workers', given here only to jobs across workers.
    Others,
}

/// The store's devices as the scheduler sees them, with their tags and health checks
/// from the lab files (another worker's: its tags as stored, the health check of its
/// type, since workers of one database agree on types).
async fn device_views(
    shared: &Shared,
    lab_now: &LabState,
    whose: Whose,
) -> Result<Vec<scheduler::DeviceView>, StoreError> {
    let me = shared.store.worker();
    let mine = |d: &store::DeviceRecord| d.worker.is_none() || d.worker.as_deref() == me;
    Ok(shared
        .store
        .devices()
        .await?
        .into_iter()
        .filter(|d| mine(d) == (whose == Whose::Mine))
        .map(|d| {
            if whose == Whose::Others {
                let checked = lab_now
                    .lab
                    .device_types
                    .get(&d.device_type)
                    .is_some_and(|t| t.health_check.is_some());
                let tags = d.tags.iter().cloned().collect();
                return d.into_view(tags, checked);
            }
            let tags = lab_now
                .lab
                .devices
                .get(&d.hostname)
                .map(|device| device.tags.iter().cloned().collect())
                .unwrap_or_default();
            let checked = health::check_of(&lab_now.lab, &d.hostname).is_some();
            let refused = lab_now.lab.refused_devices.contains_key(&d.hostname);
            let mut view = d.into_view(tags, checked);
            if refused {
                // Retired by the sync, but only until its file is fixed: a job waiting
                // for it is told it is offline.
                view.state = states::DeviceState::Offline;
                view.health = states::DeviceHealth::Unknown;
            }
            view
        })
        .collect())
}

/// What the scheduler needs of queued job `record`, `now` (seconds since the epoch).
fn request_of(record: &store::Queued, queued_job: &QueuedJob, now: i64) -> Request {
    let waited = Duration::from_secs(u64::try_from(now - record.submitted_at).unwrap_or(0));
    queued_job.request(record.id, record.priority, waited)
}

impl QueuedJob {
    /// The job as the scheduler sees it (it is job `job_id`).
    fn request(&self, job_id: u64, priority: u8, waited: Duration) -> Request {
        Request {
            job_id,
            priority,
            waited,
            needs: self.needs.clone(),
            health_check: self.checks.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_submissions_since_the_last_pass_are_a_pass_over_them_alone() {
        let wake = Wake::default();
        // The first pass looks at everything.
        assert!(matches!(wake.take(), Work::Everything));
        wake.submitted(4);
        wake.submitted(5);
        assert!(matches!(wake.take(), Work::Submitted(ids) if ids == [4, 5]));
        assert!(matches!(wake.take(), Work::Submitted(ids) if ids.is_empty()));
        // Any other change makes the next pass a whole one, and takes the submissions
        // with it.
        wake.submitted(6);
        wake.changed();
        wake.submitted(7);
        assert!(matches!(wake.take(), Work::Everything));
        assert!(matches!(wake.take(), Work::Submitted(ids) if ids.is_empty()));
    }
}
