//! The store's contract: what the daemon may rely on from any [`Store`], run against
//! both backends: SQLite (a file in a temporary directory) and PostgreSQL (a
//! throwaway server, see [`PgCluster`]). Then what only a shared database has: several
//! workers, each owning its devices.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use states::{DeviceHealth, DeviceState, ErrorClass, Health, JobState, Outcome};
use store::{
    Change, Conflict, DeviceRecord, HealthChange, Invalid, JobFilter, JobSummary, LabDevice,
    Missing, NewJob, PgStore, RESTART_MESSAGE, SqliteStore, Store, StoreError, TokenScope,
    WorkerInfo,
};
use system_tests::PgCluster;

/// Where a test's store lives; the store goes with it.
enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres { url: String, _server: PgCluster },
}

impl Backend {
    fn sqlite() -> Self {
        Backend::Sqlite(tempfile::tempdir().unwrap())
    }

    fn postgres() -> Self {
        let server = PgCluster::start();
        let url = server.create_database("dispatcher");
        Backend::Postgres {
            url,
            _server: server,
        }
    }

    /// The store, opened (again) as the daemon opens it.
    async fn open(&self) -> Arc<dyn Store> {
        match self {
            Backend::Sqlite(dir) => Arc::new(
                SqliteStore::open(&dir.path().join("dispatcher.db"))
                    .await
                    .unwrap(),
            ),
            Backend::Postgres { url, .. } => {
                Arc::new(PgStore::connect(url, "worker-1").await.unwrap())
            }
        }
    }

    /// The store with the `kvm` devices `devices`.
    async fn store(&self, devices: &[&str]) -> Arc<dyn Store> {
        let store = self.open().await;
        store.sync_devices(lab(devices)).await.unwrap();
        store
    }
}

/// Each test, once per backend: `NAME::sqlite` and `NAME::postgres`.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sqlite() {
                    super::$name(super::Backend::sqlite()).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn postgres() {
                    super::$name(super::Backend::postgres()).await
                }
            }
        )*
    };
}

contract!(
    a_job_lives_through_its_states_and_frees_its_devices,
    canceling_a_scheduled_job_frees_its_devices,
    listings_filter_page_and_count_in_the_database,
    an_illegal_transition_is_refused_and_changes_nothing,
    reserve_is_all_or_nothing,
    an_id_past_the_databases_integers_names_no_job,
    recovery_after_restart_ends_active_jobs_and_keeps_the_queue,
    syncing_devices_keeps_known_ones_and_retires_departed_ones,
    a_jobs_end_sets_the_health_it_is_given_and_keeps_its_history,
    out_of_range_values_are_refused,
    a_listing_summarizes_without_definitions,
    concurrent_reservations_never_share_a_device,
    tokens_are_known_by_their_secret_with_their_scope,
);

fn new_job(name: Option<&str>, definition: &str, priority: u8) -> NewJob {
    NewJob {
        name: name.map(str::to_string),
        definition: definition.to_string(),
        priority,
        members: Vec::new(),
        health_check_of: None,
        resubmitted_from: None,
        auto_retries: 0,
        device_types: vec!["kvm".to_string()],
        submitter: None,
    }
}

fn lab(names: &[&str]) -> Vec<LabDevice> {
    names
        .iter()
        .map(|n| LabDevice {
            hostname: n.to_string(),
            device_type: "kvm".to_string(),
            tags: vec![format!("tag-of-{n}")],
        })
        .collect()
}

fn hosts(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

async fn device_state(store: &dyn Store, hostname: &str) -> DeviceState {
    device(store, hostname).await.state
}

async fn summary(store: &dyn Store, id: u64) -> JobSummary {
    store.job(id).await.unwrap().unwrap().summary
}

async fn job_state(store: &dyn Store, id: u64) -> JobState {
    summary(store, id).await.state
}

async fn device(store: &dyn Store, hostname: &str) -> DeviceRecord {
    let devices = store.devices().await.unwrap();
    devices
        .into_iter()
        .find(|d| d.hostname == hostname)
        .unwrap()
}

async fn a_job_lives_through_its_states_and_frees_its_devices(backend: Backend) {
    let store = backend.store(&["kvm-01", "kvm-02"]).await;
    let definition = r#"{"job_name": "boot", "priority": "high"}"#;
    let id = store
        .submit(new_job(Some("boot"), definition, 100))
        .await
        .unwrap();
    let job = store.job(id).await.unwrap().unwrap();
    assert_eq!(job.summary.state, JobState::Submitted);
    assert_eq!(job.definition, definition, "the definition is kept as is");
    assert_eq!((job.summary.priority, job.summary.started_at), (100, None));

    store
        .reserve(id, &hosts(&["kvm-01", "kvm-02"]))
        .await
        .unwrap();
    assert_eq!(job_state(&*store, id).await, JobState::Scheduled);
    assert_eq!(
        device_state(&*store, "kvm-02").await,
        DeviceState::Reserved(id)
    );

    store.start(id).await.unwrap();
    assert_eq!(job_state(&*store, id).await, JobState::Running);
    assert_eq!(
        device_state(&*store, "kvm-01").await,
        DeviceState::Running(id)
    );
    assert!(summary(&*store, id).await.started_at.is_some());

    let results = json!({"lava": {"boot": "pass"}});
    let outcome = Outcome::incomplete(ErrorClass::Test, "lava-test-raise");
    let end = store
        .finish(id, outcome.clone(), Some(results.clone()), None)
        .await
        .unwrap();
    assert_eq!(end, JobState::Finished(outcome));
    let job = store.job(id).await.unwrap().unwrap();
    assert_eq!(job.summary.state, end, "the outcome round-trips exactly");
    assert_eq!(job.results, Some(results));
    assert!(job.summary.ended_at.is_some());
    assert_eq!(device_state(&*store, "kvm-01").await, DeviceState::Idle);
    assert_eq!(device_state(&*store, "kvm-02").await, DeviceState::Idle);

    let second = store.submit(new_job(None, "{}", 50)).await.unwrap();
    let all: Vec<u64> = store
        .jobs(None)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(all, [second, id], "newest first");
    let finished = store.jobs(Some("finished")).await.unwrap();
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].id, id);
    assert!(matches!(
        store.jobs(Some("done")).await,
        Err(StoreError::Invalid(Invalid::JobState(_)))
    ));
}

async fn canceling_a_scheduled_job_frees_its_devices(backend: Backend) {
    let store = backend.store(&["kvm-01"]).await;
    let id = store.submit(new_job(None, "{}", 50)).await.unwrap();
    store.reserve(id, &hosts(&["kvm-01"])).await.unwrap();
    let state = store.cancel(id).await.unwrap();
    assert!(matches!(
        state,
        JobState::Finished(Outcome {
            health: Health::Canceled,
            ..
        })
    ));
    assert_eq!(device_state(&*store, "kvm-01").await, DeviceState::Idle);
}

async fn listings_filter_page_and_count_in_the_database(backend: Backend) {
    let store = backend.store(&["kvm-01", "ssh-01"]).await;
    let submit = |name: &str, types: &[&str]| NewJob {
        device_types: types.iter().map(|t| t.to_string()).collect(),
        submitter: Some("ci".into()),
        ..new_job(Some(name), "{}", 50)
    };
    let boot = store.submit(submit("boot 50%", &["kvm"])).await.unwrap();
    let smoke = store
        .submit(submit("smoke_test", &["kvm", "ssh-host"]))
        .await
        .unwrap();
    let ssh = store
        .submit(submit("Ssh only", &["ssh-host"]))
        .await
        .unwrap();
    store.reserve(boot, &["kvm-01".to_string()]).await.unwrap();
    store.start(boot).await.unwrap();
    store
        .finish(boot, Outcome::complete(), None, None)
        .await
        .unwrap();
    let page = |filter: JobFilter| {
        let store = store.clone();
        async move {
            let page = store
                .job_page(&JobFilter {
                    limit: if filter.limit == 0 { 100 } else { filter.limit },
                    ..filter
                })
                .await
                .unwrap();
            (
                page.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
                page.total,
            )
        }
    };
    let kvm = |t: &str| JobFilter {
        device_type: Some(t.into()),
        ..JobFilter::default()
    };
    assert_eq!(page(kvm("kvm")).await, (vec![smoke, boot], 2));
    assert_eq!(page(kvm("ssh")).await, (vec![], 0), "whole names only");
    assert_eq!(page(kvm("KVM")).await, (vec![], 0), "as named");
    assert_eq!(page(kvm("ssh_host")).await, (vec![], 0), "_ is no wildcard");
    let text = |t: &str| JobFilter {
        text: Some(t.into()),
        ..JobFilter::default()
    };
    assert_eq!(page(text("ssh")).await, (vec![ssh], 1), "any case");
    assert_eq!(page(text("50%")).await, (vec![boot], 1));
    assert_eq!(page(text("%")).await, (vec![boot], 1), "% is no wildcard");
    assert_eq!(
        page(text("e_t")).await,
        (vec![smoke], 1),
        "_ is no wildcard"
    );
    assert_eq!(page(text(&smoke.to_string())).await.0, vec![smoke]);
    let complete = JobFilter {
        health: Some("complete".into()),
        ..JobFilter::default()
    };
    assert_eq!(page(complete).await, (vec![boot], 1));
    let second_page = JobFilter {
        limit: 1,
        offset: 1,
        ..JobFilter::default()
    };
    assert_eq!(
        page(second_page).await,
        (vec![smoke], 3),
        "the total of all pages"
    );
    let listed = store.job(boot).await.unwrap().unwrap().summary;
    assert_eq!(listed.devices, ["kvm-01"]);
    assert_eq!(listed.device_types, ["kvm"]);
    assert_eq!(listed.submitter.as_deref(), Some("ci"));
    assert!(matches!(
        store
            .job_page(&JobFilter {
                health: Some("green".into()),
                ..JobFilter::default()
            })
            .await,
        Err(StoreError::Invalid(Invalid::JobHealth(_)))
    ));
    let counts = store.job_counts().await.unwrap();
    assert_eq!(counts.by_state.get("submitted"), Some(&2));
    assert_eq!(counts.by_state.get("finished"), Some(&1));
    assert_eq!(counts.finished_by_health.get("complete"), Some(&1));
}

async fn an_illegal_transition_is_refused_and_changes_nothing(backend: Backend) {
    let store = backend.store(&[]).await;
    let id = store.submit(new_job(None, "{}", 50)).await.unwrap();
    let before = store.job(id).await.unwrap().unwrap();

    let err = store.start(id).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("submitted") && message.contains("Started"),
        "{message}"
    );
    assert!(matches!(
        store
            .finish(id, Outcome::complete(), Some(json!({"x": 1})), None)
            .await,
        Err(StoreError::IllegalTransition { .. })
    ));
    assert_eq!(store.job(id).await.unwrap().unwrap(), before);
    assert!(matches!(
        store.start(id + 1).await,
        Err(StoreError::NotFound(Missing::Job(_)))
    ));
}

async fn reserve_is_all_or_nothing(backend: Backend) {
    let store = backend
        .store(&["kvm-01", "kvm-02", "kvm-03", "kvm-04"])
        .await;
    let first = store.submit(new_job(None, "{}", 50)).await.unwrap();
    store.reserve(first, &hosts(&["kvm-02"])).await.unwrap();
    store
        .set_device_health("kvm-04", DeviceHealth::Maintenance, "admin")
        .await
        .unwrap();

    let second = store.submit(new_job(None, "{}", 50)).await.unwrap();
    for (asked, culprit, why) in [
        (
            &["kvm-01", "kvm-02", "kvm-03"][..],
            "kvm-02",
            "kvm-01 would be taken before the busy kvm-02 is reached",
        ),
        (&["kvm-01", "kvm-04"], "kvm-04", "maintenance is not free"),
        (&["kvm-01", "kvm-01"], "kvm-01", "a device serves one node"),
        (&["kvm-01", "kvm-99"], "kvm-99", "no such device"),
    ] {
        let err = store.reserve(second, &hosts(asked)).await.unwrap_err();
        assert!(err.to_string().contains(culprit), "{why}: {err}");
        // Everything rolled back.
        assert_eq!(job_state(&*store, second).await, JobState::Submitted);
        for (host, state) in [
            ("kvm-01", DeviceState::Idle),
            ("kvm-02", DeviceState::Reserved(first)),
            ("kvm-03", DeviceState::Idle),
        ] {
            assert_eq!(device_state(&*store, host).await, state, "{why}");
        }
    }
    assert!(matches!(
        store.reserve(second, &hosts(&["kvm-99"])).await,
        Err(StoreError::NotFound(Missing::Device(ref h))) if h == "kvm-99"
    ));

    // A job that is not queued cannot take devices either.
    assert!(matches!(
        store.reserve(first, &hosts(&["kvm-03"])).await,
        Err(StoreError::IllegalTransition { .. })
    ));
    assert_eq!(device_state(&*store, "kvm-03").await, DeviceState::Idle);
    store
        .reserve(second, &hosts(&["kvm-01", "kvm-03"]))
        .await
        .unwrap();
    assert_eq!(
        device_state(&*store, "kvm-03").await,
        DeviceState::Reserved(second)
    );
}

async fn an_id_past_the_databases_integers_names_no_job(backend: Backend) {
    let store = backend.store(&[]).await;
    assert_eq!(store.job(u64::MAX).await.unwrap(), None);
    assert_eq!(store.job_state(u64::MAX).await.unwrap(), None);
    assert!(matches!(
        store.cancel(u64::MAX).await,
        Err(StoreError::NotFound(Missing::Job(u64::MAX)))
    ));
}

async fn recovery_after_restart_ends_active_jobs_and_keeps_the_queue(backend: Backend) {
    let store = backend
        .store(&["kvm-01", "kvm-02", "kvm-03", "kvm-04"])
        .await;
    let running = store.submit(new_job(None, "{}", 50)).await.unwrap();
    store
        .reserve(running, &hosts(&["kvm-01", "kvm-02"]))
        .await
        .unwrap();
    store.start(running).await.unwrap();
    let scheduled = store.submit(new_job(None, "{}", 50)).await.unwrap();
    store.reserve(scheduled, &hosts(&["kvm-03"])).await.unwrap();
    let canceling = store.submit(new_job(None, "{}", 50)).await.unwrap();
    store.reserve(canceling, &hosts(&["kvm-04"])).await.unwrap();
    store.start(canceling).await.unwrap();
    store.cancel(canceling).await.unwrap();
    let done = store.submit(new_job(None, "{}", 50)).await.unwrap();
    let canceled = store.cancel(done).await.unwrap();
    let queued = store.submit(new_job(None, "{}", 50)).await.unwrap();
    drop(store);

    let store = backend.open().await;
    let ended = store.recover_after_restart().await.unwrap();
    assert_eq!(ended, [running, scheduled, canceling]);
    let restarted = JobState::Finished(Outcome::incomplete(
        ErrorClass::Infrastructure,
        RESTART_MESSAGE,
    ));
    for id in [running, scheduled, canceling] {
        assert_eq!(job_state(&*store, id).await, restarted);
        assert!(summary(&*store, id).await.ended_at.is_some());
    }
    for device in store.devices().await.unwrap() {
        assert_eq!(device.state, DeviceState::Idle, "{}", device.hostname);
    }
    assert_eq!(
        job_state(&*store, done).await,
        canceled,
        "finished jobs are untouched"
    );
    assert_eq!(job_state(&*store, queued).await, JobState::Submitted);
    assert!(store.recover_after_restart().await.unwrap().is_empty());
}

async fn syncing_devices_keeps_known_ones_and_retires_departed_ones(backend: Backend) {
    let store = backend.store(&["a", "b", "c"]).await;
    store
        .set_device_health("a", DeviceHealth::Good, "admin")
        .await
        .unwrap();
    let id = store.submit(new_job(None, "{}", 50)).await.unwrap();
    store.reserve(id, &hosts(&["c"])).await.unwrap();

    assert_eq!(
        device(&*store, "a").await.tags,
        ["tag-of-a"],
        "tags are kept"
    );
    store.sync_devices(lab(&["a", "d"])).await.unwrap();
    assert_eq!(
        device(&*store, "a").await.health,
        DeviceHealth::Good,
        "kept"
    );
    assert_eq!(
        (
            device(&*store, "b").await.state,
            device(&*store, "b").await.health
        ),
        (DeviceState::Offline, DeviceHealth::Retired)
    );
    // A departed device still holding a job keeps it until the job ends.
    assert_eq!(device(&*store, "c").await.state, DeviceState::Reserved(id));
    assert_eq!(device(&*store, "c").await.health, DeviceHealth::Retired);
    assert_eq!(
        (
            device(&*store, "d").await.state,
            device(&*store, "d").await.health
        ),
        (DeviceState::Idle, DeviceHealth::Unknown)
    );
    store.cancel(id).await.unwrap();
    assert_eq!(device(&*store, "c").await.state, DeviceState::Offline);

    store.sync_devices(lab(&["a", "b", "d"])).await.unwrap();
    assert_eq!(
        (
            device(&*store, "b").await.state,
            device(&*store, "b").await.health
        ),
        (DeviceState::Idle, DeviceHealth::Unknown),
        "a device back in the lab is usable again"
    );
    assert!(matches!(
        store.set_device_health("zz", DeviceHealth::Bad, "admin").await,
        Err(StoreError::NotFound(Missing::Device(ref h))) if h == "zz"
    ));
}

async fn a_jobs_end_sets_the_health_it_is_given_and_keeps_its_history(backend: Backend) {
    let store = backend.store(&["kvm-01", "kvm-02"]).await;
    store
        .set_device_health("kvm-01", DeviceHealth::Good, "checked by hand")
        .await
        .unwrap();
    let unknown = HealthChange {
        health: DeviceHealth::Unknown,
        reason: "job 1: host lost".into(),
    };
    let id = store.submit(new_job(None, "{}", 50)).await.unwrap();
    store.reserve(id, &hosts(&["kvm-01"])).await.unwrap();
    store.start(id).await.unwrap();
    let outcome = Outcome::incomplete(ErrorClass::Infrastructure, "host lost");
    store
        .finish(id, outcome, None, Some(unknown.clone()))
        .await
        .unwrap();
    let after = device(&*store, "kvm-01").await;
    assert_eq!(
        (after.state, after.health),
        (DeviceState::Idle, DeviceHealth::Unknown)
    );
    assert_eq!((after.jobs_since_check, after.last_check_at), (1, None));
    let history = store.health_history("kvm-01").await.unwrap();
    let lines: Vec<(DeviceHealth, Option<u64>, &str)> = history
        .iter()
        .map(|e| (e.health, e.job, e.reason.as_str()))
        .collect();
    assert_eq!(
        lines,
        [
            (DeviceHealth::Unknown, Some(id), "job 1: host lost"),
            (DeviceHealth::Good, None, "checked by hand"),
            (DeviceHealth::Unknown, None, "new in the lab"),
        ]
    );

    // A health check job: the device is checked now, its count starts again.
    let check = store
        .submit(NewJob {
            health_check_of: Some("kvm-01".into()),
            ..new_job(None, "{}", 100)
        })
        .await
        .unwrap();
    let queued = store.queue().await.unwrap();
    assert_eq!(queued[0].health_check_of.as_deref(), Some("kvm-01"));
    store.reserve(check, &hosts(&["kvm-01"])).await.unwrap();
    store.start(check).await.unwrap();
    let good = HealthChange {
        health: DeviceHealth::Good,
        reason: "health check passed".into(),
    };
    store
        .finish(check, Outcome::complete(), None, Some(good))
        .await
        .unwrap();
    let checked = device(&*store, "kvm-01").await;
    assert_eq!(checked.health, DeviceHealth::Good);
    assert_eq!(checked.jobs_since_check, 0);
    assert!(checked.last_check_at.is_some());
    assert_eq!(
        store
            .job(check)
            .await
            .unwrap()
            .unwrap()
            .summary
            .health_check_of
            .as_deref(),
        Some("kvm-01")
    );

    // A check that ended saying nothing (canceled) does not count as one.
    let user = store.submit(new_job(None, "{}", 50)).await.unwrap();
    store.reserve(user, &hosts(&["kvm-01"])).await.unwrap();
    store.start(user).await.unwrap();
    store
        .finish(user, Outcome::complete(), None, None)
        .await
        .unwrap();
    let canceled = store
        .submit(NewJob {
            health_check_of: Some("kvm-01".into()),
            ..new_job(None, "{}", 100)
        })
        .await
        .unwrap();
    store.reserve(canceled, &hosts(&["kvm-01"])).await.unwrap();
    store.start(canceled).await.unwrap();
    store
        .finish(canceled, Outcome::canceled("by an admin"), None, None)
        .await
        .unwrap();
    let after = device(&*store, "kvm-01").await;
    assert_eq!(after.jobs_since_check, 1);
    assert_eq!(after.last_check_at, checked.last_check_at);

    // An admin's maintenance stands over a job's verdict.
    store
        .set_device_health("kvm-02", DeviceHealth::Maintenance, "new cable")
        .await
        .unwrap();
    let id = store.submit(new_job(None, "{}", 50)).await.unwrap();
    // Maintenance is not schedulable: reserve it as the store would refuse, so
    // put it back to good for the reservation and to maintenance while it runs.
    store
        .set_device_health("kvm-02", DeviceHealth::Good, "x")
        .await
        .unwrap();
    store.reserve(id, &hosts(&["kvm-02"])).await.unwrap();
    store
        .set_device_health("kvm-02", DeviceHealth::Maintenance, "new cable")
        .await
        .unwrap();
    store.start(id).await.unwrap();
    store
        .finish(id, Outcome::complete(), None, Some(unknown))
        .await
        .unwrap();
    assert_eq!(
        device(&*store, "kvm-02").await.health,
        DeviceHealth::Maintenance
    );
}

async fn out_of_range_values_are_refused(backend: Backend) {
    let store = backend.store(&[]).await;
    assert!(matches!(
        store.submit(new_job(None, "{}", 101)).await,
        Err(StoreError::Invalid(Invalid::Priority(101)))
    ));
    assert!(store.jobs(None).await.unwrap().is_empty(), "nothing stored");
    for id in [1, u64::MAX] {
        assert!(matches!(
            store.set_members(id, Vec::new()).await,
            Err(StoreError::NotFound(Missing::Job(got))) if got == id
        ));
    }
}

async fn a_listing_summarizes_without_definitions(backend: Backend) {
    let store = backend.store(&[]).await;
    let id = store
        .submit(new_job(
            Some("big"),
            &format!("{{\"x\": \"{}\"}}", "a".repeat(1000)),
            3,
        ))
        .await
        .unwrap();
    let record = store.job(id).await.unwrap().unwrap();
    assert_eq!(
        (record.summary.name.as_deref(), record.summary.priority),
        (Some("big"), 3)
    );
    let listed = store.jobs(Some("submitted")).await.unwrap();
    assert_eq!(listed, [record.summary]);
    assert!(store.jobs(Some("running")).await.unwrap().is_empty());
}

/// Many callers at once, as the daemon's tasks are: each device goes to exactly one
/// job, and every job gets all of its devices or none.
async fn concurrent_reservations_never_share_a_device(backend: Backend) {
    let store = backend.store(&["a", "b", "c"]).await;
    let mut tasks = Vec::new();
    for pair in [["a", "b"], ["b", "c"], ["c", "a"], ["a", "b"]] {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = store.submit(new_job(None, "{}", 50)).await.unwrap();
            store.reserve(id, &hosts(&pair)).await.map(|()| (id, pair))
        }));
    }
    let mut won = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(got) => won.push(got),
            Err(err) => assert!(matches!(err, StoreError::Conflict(_)), "{err}"),
        }
    }
    // Any two of the pairs share a device: exactly one job got its pair.
    assert_eq!(won.len(), 1, "{won:?}");
    let (id, pair) = won[0];
    for host in ["a", "b", "c"] {
        let expected = if pair.contains(&host) {
            DeviceState::Reserved(id)
        } else {
            DeviceState::Idle
        };
        assert_eq!(device_state(&*store, host).await, expected, "{host}");
    }
    let queued = store.queue().await.unwrap();
    assert_eq!(queued.len(), 3, "the losers stay queued: {queued:?}");
}

async fn tokens_are_known_by_their_secret_with_their_scope(backend: Backend) {
    let store = backend.store(&[]).await;
    let secret = store
        .create_token("ci", TokenScope::ReadWrite)
        .await
        .unwrap();
    let other = store
        .create_token("dashboard", TokenScope::ReadOnly)
        .await
        .unwrap();
    assert_eq!(secret.len(), 64);
    assert_ne!(secret, other);
    assert_eq!(
        store.token_scope(&secret).await.unwrap(),
        Some(("ci".to_string(), TokenScope::ReadWrite))
    );
    assert_eq!(
        store.token_scope(&other).await.unwrap(),
        Some(("dashboard".to_string(), TokenScope::ReadOnly))
    );
    assert_eq!(store.token_scope("wrong").await.unwrap(), None);
    assert!(matches!(
        store.create_token("ci", TokenScope::ReadOnly).await,
        Err(StoreError::Conflict(Conflict::DuplicateToken(ref n))) if n == "ci"
    ));
    assert_eq!(
        store.token_scope(&secret).await.unwrap(),
        Some(("ci".to_string(), TokenScope::ReadWrite)),
        "the refused duplicate changed nothing"
    );
}

// What only a shared database has: several workers.

/// Worker `name` on the database at `url`, with the `kvm` devices `devices`.
async fn worker(url: &str, name: &str, devices: &[&str]) -> Arc<dyn Store> {
    let store = Arc::new(PgStore::connect(url, name).await.unwrap());
    store.sync_devices(lab(devices)).await.unwrap();
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_share_jobs_and_tokens_and_each_keeps_its_own_devices() {
    let server = PgCluster::start();
    let url = server.create_database("lab");
    let one = worker(&url, "worker-1", &["a", "b"]).await;
    let two = worker(&url, "worker-2", &["x", "y"]).await;
    let names = |devices: Vec<DeviceRecord>| -> Vec<String> {
        devices.into_iter().map(|d| d.hostname).collect()
    };
    assert_eq!(names(one.devices().await.unwrap()), ["a", "b", "x", "y"]);
    assert_eq!(names(two.devices().await.unwrap()), ["a", "b", "x", "y"]);
    let x = device(&*one, "x").await;
    assert_eq!(
        (x.tags, x.worker.as_deref()),
        (vec!["tag-of-x".to_string()], Some("worker-2"))
    );

    // A job submitted through one is the other's to read, queue and schedule; one job
    // may hold devices of both.
    let id = one.submit(new_job(Some("spans"), "{}", 50)).await.unwrap();
    assert_eq!(summary(&*two, id).await.name.as_deref(), Some("spans"));
    assert_eq!(two.queue().await.unwrap()[0].id, id);
    two.reserve(id, &hosts(&["a", "x"])).await.unwrap();
    one.start(id).await.unwrap();
    assert_eq!(device_state(&*two, "a").await, DeviceState::Running(id));
    let token = two.create_token("ci", TokenScope::ReadWrite).await.unwrap();
    assert_eq!(
        one.token_scope(&token).await.unwrap(),
        Some(("ci".to_string(), TokenScope::ReadWrite))
    );

    // A worker's lab files change its own devices only: b leaves worker 1's files,
    // y stays worker 2's though worker 1 does not list it.
    one.sync_devices(lab(&["a"])).await.unwrap();
    assert_eq!(device(&*one, "b").await.health, DeviceHealth::Retired);
    assert_eq!(device(&*one, "y").await.health, DeviceHealth::Unknown);
    // A device in two workers' files is refused, naming its owner; nothing changes.
    let err = one.sync_devices(lab(&["a", "x"])).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(Conflict::DeviceOfAnotherWorker { hostname, worker })
            if hostname == "x" && worker == "worker-2"),
        "{err}"
    );
    assert_eq!(device_state(&*one, "x").await, DeviceState::Running(id));
    // A device its worker dropped (retired, no job) may move to another worker.
    one.sync_devices(lab(&["a", "b", "y"])).await.unwrap_err();
    two.sync_devices(lab(&["x"])).await.unwrap();
    one.sync_devices(lab(&["a", "b", "y"])).await.unwrap();
    let moved = device(&*one, "y").await;
    assert_eq!(
        (moved.worker.as_deref(), moved.health, moved.state),
        (Some("worker-1"), DeviceHealth::Unknown, DeviceState::Idle)
    );
    two.sync_devices(lab(&["x", "y"])).await.unwrap_err();
    two.sync_devices(lab(&["x"])).await.unwrap();

    // Worker 2 restarts: its part of the job on both workers' devices ends, freeing its
    // device, and the job ends with worker 1's part, naming the restart; a job on
    // worker 1's devices alone runs on.
    let own = one.submit(new_job(Some("own"), "{}", 50)).await.unwrap();
    one.sync_devices(lab(&["a", "b"])).await.unwrap();
    one.reserve(own, &hosts(&["b"])).await.unwrap();
    one.start(own).await.unwrap();
    drop(two);
    let two = worker(&url, "worker-2", &["x", "y"]).await;
    assert_eq!(two.recover_after_restart().await.unwrap(), [id]);
    assert_eq!(job_state(&*one, id).await, JobState::Running);
    assert_eq!(device_state(&*one, "x").await, DeviceState::Idle);
    assert_eq!(device_state(&*one, "a").await, DeviceState::Running(id));
    one.finish(id, Outcome::complete(), None, None)
        .await
        .unwrap();
    assert_eq!(
        job_state(&*one, id).await,
        JobState::Finished(Outcome::incomplete(
            ErrorClass::Infrastructure,
            RESTART_MESSAGE
        ))
    );
    assert_eq!(device_state(&*one, "a").await, DeviceState::Idle);
    assert_eq!(job_state(&*one, own).await, JobState::Running);
    assert_eq!(device_state(&*one, "b").await, DeviceState::Running(own));
}

/// A job on the devices of two workers runs in two parts: each worker starts its own
/// (the job runs from the first), the end of each frees that worker's devices, and the
/// job ends with the last, every part's end merged. A part that has not started when
/// the job is canceled never will; a lost worker's part ends naming it, and the job
/// ends with the other part.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_across_workers_runs_in_parts_and_ends_with_the_last() {
    let server = PgCluster::start();
    let url = server.create_database("lab");
    let one = worker(&url, "worker-1", &["a"]).await;
    let two = worker(&url, "worker-2", &["x"]).await;
    let id = one.submit(new_job(None, "{}", 50)).await.unwrap();
    // Planned by either, in the order of the job's nodes.
    two.reserve(id, &hosts(&["x", "a"])).await.unwrap();
    assert_eq!(one.job(id).await.unwrap().unwrap().assigned, ["x", "a"]);
    assert_eq!(one.parts_to_start().await.unwrap(), [id]);
    assert_eq!(two.parts_to_start().await.unwrap(), [id]);
    one.start(id).await.unwrap();
    one.start(id).await.unwrap();
    assert_eq!(job_state(&*two, id).await, JobState::Running);
    assert!(one.parts_to_start().await.unwrap().is_empty());
    two.start(id).await.unwrap();
    let first = serde_json::json!({"part": "worker-1"});
    let state = one
        .finish(id, Outcome::complete(), Some(first.clone()), None)
        .await
        .unwrap();
    assert_eq!(state, JobState::Running, "worker 2's part runs on");
    assert_eq!(device_state(&*one, "a").await, DeviceState::Idle);
    assert_eq!(device_state(&*one, "x").await, DeviceState::Running(id));
    let failed = Outcome::incomplete(ErrorClass::Test, "x broke");
    let state = two
        .finish(
            id,
            failed.clone(),
            Some(serde_json::json!({"part": "worker-2"})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(state, JobState::Finished(failed));
    assert_eq!(device_state(&*one, "x").await, DeviceState::Idle);
    assert_eq!(one.job(id).await.unwrap().unwrap().results, Some(first));

    // Canceled while worker 1's part runs and before worker 2's starts.
    let canceled = one.submit(new_job(None, "{}", 50)).await.unwrap();
    one.reserve(canceled, &hosts(&["a", "x"])).await.unwrap();
    one.start(canceled).await.unwrap();
    assert_eq!(two.cancel(canceled).await.unwrap(), JobState::Canceling);
    assert!(two.parts_to_start().await.unwrap().is_empty());
    assert_eq!(device_state(&*one, "x").await, DeviceState::Idle);
    let err = two.start(canceled).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(Conflict::PartOver { .. })),
        "{err}"
    );
    one.finish(canceled, Outcome::complete(), None, None)
        .await
        .unwrap();
    assert!(matches!(
        job_state(&*one, canceled).await,
        JobState::Finished(Outcome {
            health: Health::Canceled,
            ..
        })
    ));

    // Worker 2 lost while both parts run.
    let info = |every| WorkerInfo {
        heartbeat: every,
        ..joining(&["kvm"])
    };
    one.join(&info(Duration::from_secs(3600))).await.unwrap();
    two.join(&info(Duration::ZERO)).await.unwrap();
    let cut = one.submit(new_job(None, "{}", 50)).await.unwrap();
    one.reserve(cut, &hosts(&["a", "x"])).await.unwrap();
    one.start(cut).await.unwrap();
    two.start(cut).await.unwrap();
    let lost = one.reap_lost_workers(3).await.unwrap();
    assert_eq!(lost.len(), 1);
    assert_eq!(
        (lost[0].jobs.as_slice(), lost[0].parts.as_slice()),
        (&[][..], &[cut][..])
    );
    assert_eq!(job_state(&*one, cut).await, JobState::Running);
    assert_eq!(device_state(&*one, "x").await, DeviceState::Offline);
    one.finish(cut, Outcome::complete(), None, None)
        .await
        .unwrap();
    assert_eq!(
        job_state(&*one, cut).await,
        JobState::Finished(Outcome::incomplete(
            ErrorClass::Infrastructure,
            store::lost_message("worker-2")
        ))
    );
    assert_eq!(device_state(&*one, "a").await, DeviceState::Idle);

    // Worker 3 stops (a graceful stop) before starting its part: the part ends naming
    // it, and its device is offline until it joins again.
    let three = worker(&url, "worker-3", &["m"]).await;
    three.join(&info(Duration::from_secs(3600))).await.unwrap();
    let left = one.submit(new_job(None, "{}", 50)).await.unwrap();
    one.reserve(left, &hosts(&["a", "m"])).await.unwrap();
    one.start(left).await.unwrap();
    let left_parts = three.leave().await.unwrap();
    assert_eq!(
        (left_parts.jobs.as_slice(), left_parts.parts.as_slice()),
        (&[][..], &[left][..])
    );
    assert_eq!(device_state(&*one, "m").await, DeviceState::Offline);
    // Nothing more is given to a worker that left.
    let later = one.submit(new_job(None, "{}", 50)).await.unwrap();
    let err = one.reserve(later, &hosts(&["m"])).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(Conflict::WorkerGone(w)) if w == "worker-3"),
        "{err}"
    );
    assert_eq!(job_state(&*one, left).await, JobState::Running);
    let ended = one
        .finish_part(left, Outcome::complete(), None, None)
        .await
        .unwrap();
    assert!(ended.ended_job);
    assert_eq!(
        ended.state,
        JobState::Finished(Outcome::incomplete(
            ErrorClass::Infrastructure,
            "worker worker-3 stopped"
        ))
    );
    three.join(&info(Duration::from_secs(3600))).await.unwrap();
    assert_eq!(device_state(&*one, "m").await, DeviceState::Idle);
}

/// Workers that start together on a new database make its tables once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_starting_at_once_migrate_the_database_once() {
    let server = PgCluster::start();
    let url = server.create_database("lab");
    let starts: Vec<_> = (1..=3)
        .map(|n| {
            let url = url.clone();
            tokio::spawn(async move { PgStore::connect(&url, &format!("worker-{n}")).await })
        })
        .collect();
    let mut stores = Vec::new();
    for start in starts {
        stores.push(start.await.unwrap().unwrap());
    }
    let id = stores[0].submit(new_job(None, "{}", 50)).await.unwrap();
    assert_eq!(
        stores[2].job_state(id).await.unwrap(),
        Some(JobState::Submitted)
    );
}

/// The database goes away and comes back: calls meanwhile fail as unavailable (never
/// hang), and the same store works again afterwards with everything kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_restart_is_unavailable_meanwhile_and_loses_nothing() {
    let mut server = PgCluster::start();
    let url = server.create_database("lab");
    let store = worker(&url, "worker-1", &["a"]).await;
    let id = store.submit(new_job(Some("kept"), "{}", 50)).await.unwrap();
    server.stop();
    let err = store.queue().await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    server.restart();
    assert_eq!(summary(&*store, id).await.name.as_deref(), Some("kept"));
    let next = store.submit(new_job(None, "{}", 50)).await.unwrap();
    assert!(next > id);
    assert_eq!(store.queue().await.unwrap().len(), 2);
}

/// A worker hears what the others do, as they commit it, and not its own doings.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_is_told_what_the_others_change() {
    let server = PgCluster::start();
    let url = server.create_database("lab");
    let one = worker(&url, "worker-1", &["a"]).await;
    let two = worker(&url, "worker-2", &["x"]).await;
    let mut heard = two.subscribe().await.unwrap();
    // Listening starts with a notice that anything before it was not heard.
    assert_eq!(heard.recv().await, Some(Change::Reconnected));
    let own = two.submit(new_job(None, "{}", 50)).await.unwrap();
    let id = one.submit(new_job(None, "{}", 50)).await.unwrap();
    one.cancel(id).await.unwrap();
    let told = |what: String| Change::Notified {
        worker: "worker-1".into(),
        what,
    };
    assert_eq!(heard.recv().await, Some(told(format!("submitted {id}"))));
    assert_eq!(heard.recv().await, Some(told(format!("finished {id}"))));
    two.cancel(own).await.unwrap();
    one.set_device_health("a", DeviceHealth::Good, "checked")
        .await
        .unwrap();
    assert_eq!(
        heard.recv().await,
        Some(told("health a".into())),
        "worker 2's own changes are not told to it"
    );
}

fn joining(types: &[&str]) -> WorkerInfo {
    WorkerInfo {
        version: "1.0".into(),
        device_types: types.iter().map(|t| t.to_string()).collect(),
        api_url: "http://127.0.0.1:1".into(),
        heartbeat: Duration::from_secs(3600),
        coordinator: None,
    }
}

/// A worker whose beats stop for three of its own heartbeats is declared lost by
/// another, once: the jobs on its devices end naming it, its devices go offline, and
/// the other workers' jobs run on. It is fenced until it joins again; then its devices
/// are its to give again. Another instance of a live worker may not join; one that
/// left may.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_worker_is_declared_lost_once_and_fenced_until_it_joins_again() {
    let server = PgCluster::start();
    let url = server.create_database("lab");
    let stores: Vec<Arc<dyn Store>> = vec![
        Arc::new(PgStore::connect(&url, "worker-1").await.unwrap()),
        Arc::new(PgStore::connect(&url, "worker-2").await.unwrap()),
        Arc::new(PgStore::connect(&url, "worker-3").await.unwrap()),
    ];
    // Worker 2 beats every 0 s: any silence is three of its beats. The others beat
    // hourly.
    for (store, (devices, every)) in stores.iter().zip([
        (["a"], Duration::from_secs(3600)),
        (["x"], Duration::ZERO),
        (["m"], Duration::from_secs(3600)),
    ]) {
        let info = WorkerInfo {
            heartbeat: every,
            ..joining(&["kvm"])
        };
        store.join(&info).await.unwrap();
        store.sync_devices(lab(&devices)).await.unwrap();
    }
    let (one, two, three) = (&stores[0], &stores[1], &stores[2]);
    let theirs = one.submit(new_job(None, "{}", 50)).await.unwrap();
    two.reserve(theirs, &hosts(&["x"])).await.unwrap();
    two.start(theirs).await.unwrap();
    let ours = one.submit(new_job(None, "{}", 50)).await.unwrap();
    one.reserve(ours, &hosts(&["a"])).await.unwrap();
    one.start(ours).await.unwrap();

    let lost = three.reap_lost_workers(3).await.unwrap();
    let names: Vec<&str> = lost.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["worker-2"], "each by its own heartbeat");
    assert_eq!(lost[0].jobs, [theirs]);
    assert!(
        one.reap_lost_workers(3).await.unwrap().is_empty(),
        "a lost worker is declared once"
    );
    assert_eq!(
        job_state(&**one, theirs).await,
        JobState::Finished(Outcome::incomplete(
            ErrorClass::Infrastructure,
            store::lost_message("worker-2")
        ))
    );
    assert_eq!(device_state(&**one, "x").await, DeviceState::Offline);
    assert_eq!(job_state(&**one, ours).await, JobState::Running);

    // Worker 2 comes back: what it would write is refused, its beat too.
    let fenced = |err: StoreError| matches!(err, StoreError::Conflict(Conflict::Fenced(_)));
    assert!(fenced(two.beat().await.unwrap_err()));
    let outcome = Outcome::complete();
    assert!(fenced(
        two.finish(theirs, outcome, None, None).await.unwrap_err()
    ));
    let listed = one.workers().await.unwrap().unwrap();
    let state_of = |name: &str| {
        let w = listed.iter().find(|w| w.name == name).unwrap();
        (w.state.clone(), w.epoch, w.devices.clone())
    };
    assert_eq!(
        state_of("worker-2"),
        ("lost".to_string(), 1, vec!["x".to_string()])
    );
    assert_eq!(state_of("worker-1").0, "alive");

    // It joins again: a new epoch, its device idle; the old epoch stays fenced.
    let again: Arc<dyn Store> = Arc::new(PgStore::connect(&url, "worker-2").await.unwrap());
    again.join(&joining(&["kvm"])).await.unwrap();
    assert_eq!(device_state(&**one, "x").await, DeviceState::Idle);
    again.beat().await.unwrap();
    assert!(fenced(two.beat().await.unwrap_err()));
    let next = one.submit(new_job(None, "{}", 50)).await.unwrap();
    assert!(fenced(two.reserve(next, &hosts(&["x"])).await.unwrap_err()));
    again.reserve(next, &hosts(&["x"])).await.unwrap();
    let listed = one.workers().await.unwrap().unwrap();
    let w2 = listed.iter().find(|w| w.name == "worker-2").unwrap();
    assert_eq!((w2.state.as_str(), w2.epoch), ("alive", 2));

    // A second instance of worker 1, which beats: refused. Once it left: welcome.
    let twin = PgStore::connect(&url, "worker-1").await.unwrap();
    let err = twin.join(&joining(&["kvm"])).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(Conflict::WorkerAlive { worker, .. }) if worker == "worker-1"),
        "{err}"
    );
    one.leave().await.unwrap();
    twin.join(&joining(&["kvm"])).await.unwrap();
    assert!(fenced(one.beat().await.unwrap_err()), "the one that left");
}

/// A worker of another version, or knowing other device types, may not join while
/// a worker that differs is alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_that_differs_from_a_live_one_may_not_join() {
    let server = PgCluster::start();
    let url = server.create_database("lab");
    let one = PgStore::connect(&url, "worker-1").await.unwrap();
    one.join(&joining(&["kvm", "ssh-host"])).await.unwrap();
    let two = PgStore::connect(&url, "worker-2").await.unwrap();
    let err = two.join(&joining(&["kvm"])).await.unwrap_err();
    assert!(
        err.to_string().contains(
            "worker worker-1 runs device types kvm ssh-host and this one device types kvm"
        ),
        "{err}"
    );
    let newer = WorkerInfo {
        version: "2.0".into(),
        ..joining(&["ssh-host", "kvm"])
    };
    let err = two.join(&newer).await.unwrap_err();
    assert!(err.to_string().contains("version 1.0"), "{err}");
    // The same, in another order, is the same.
    two.join(&joining(&["ssh-host", "kvm"])).await.unwrap();
    assert!(
        SqliteStore::open(&tempfile::tempdir().unwrap().path().join("d.db"))
            .await
            .unwrap()
            .workers()
            .await
            .unwrap()
            .is_none(),
        "one SQLite daemon is no shared lab"
    );
}
