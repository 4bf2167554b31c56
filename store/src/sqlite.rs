//! The SQLite backend of [`Store`]: one database file in WAL mode; a connection for
//! writes and a few read-only ones beside it; new jobs stored by a thread of their own
//! in group commits, every other call run on tokio's blocking pool.
//!
//! Job and device states are stored as the JSON their serde derives produce, so they
//! round-trip exactly; the plain `state`/`health` columns beside them exist for queries
//! and for humans reading the file with `sqlite3`.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::types::Type;
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior, params};
use serde::de::DeserializeOwned;

use crate::encode::{
    HEALTH_HISTORY_LIMIT, JOB_HEALTH_NAMES, NEW_IN_THE_LAB, enum_of, enum_text, job_sets_health,
    name_list, names_of, new_secret, sha256_hex,
};
use crate::{
    Conflict, DeviceRecord, HealthChange, HealthEvent, Invalid, JOB_STATE_NAMES, JobCounts,
    JobFilter, JobPage, JobRecord, JobSummary, LabDevice, Member, Missing, NewJob, Queued,
    RESTART_MESSAGE, Store, StoreError, TokenScope,
};
use states::{DeviceHealth, DeviceState, ErrorClass, JobEvent, JobState, Outcome, schedulable};

/// How long a writer waits for another process's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations: `MIGRATIONS[n]` brings `user_version` from `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: jobs, devices, tokens.
    "CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT,
        definition TEXT NOT NULL,
        priority INTEGER NOT NULL CHECK (priority BETWEEN 0 AND 100),
        submitted_at INTEGER NOT NULL,
        started_at INTEGER,
        ended_at INTEGER,
        state TEXT NOT NULL,
        state_json TEXT NOT NULL,
        health TEXT,
        error_class TEXT,
        error TEXT,
        results TEXT
    );
    CREATE INDEX jobs_state ON jobs (state);
    CREATE TABLE devices (
        hostname TEXT PRIMARY KEY,
        device_type TEXT NOT NULL,
        state TEXT NOT NULL,
        job_id INTEGER REFERENCES jobs (id),
        health TEXT NOT NULL
    );
    CREATE INDEX devices_job ON devices (job_id);
    CREATE TABLE tokens (
        name TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
    );",
    // 2: the scheduler's view of the queue from the index alone (a row's later columns
    // sit behind its definition, in overflow pages); tokens that may only read.
    "CREATE INDEX jobs_queue ON jobs (state, id, priority, submitted_at);
    ALTER TABLE tokens ADD COLUMN read_only INTEGER NOT NULL DEFAULT 0;",
    // 3: a job's nodes as found when it was validated at submission (JSON `[{"node",
    // "role"}]`), so reading a job never validates it again. NULL for jobs submitted
    // before this column existed: filled in on their first read.
    "ALTER TABLE jobs ADD COLUMN members TEXT;",
    // 4: health checks: the device a job checks (NULL: an ordinary job), when each
    // device was last checked and how many jobs it ran since, and every change of a
    // device's health with who or what made it.
    "ALTER TABLE jobs ADD COLUMN health_check_of TEXT;
    DROP INDEX jobs_queue;
    CREATE INDEX jobs_queue ON jobs (state, id, priority, submitted_at, health_check_of);
    ALTER TABLE devices ADD COLUMN last_check_at INTEGER;
    ALTER TABLE devices ADD COLUMN jobs_since_check INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE device_health (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        hostname TEXT NOT NULL,
        at INTEGER NOT NULL,
        health TEXT NOT NULL,
        job_id INTEGER,
        reason TEXT NOT NULL
    );
    CREATE INDEX device_health_host ON device_health (hostname, id);",
    // 5: resubmissions: the job a job was resubmitted from, the newest job resubmitted
    // from it, and how many automatic retries (retry_infrastructure) led to it.
    "ALTER TABLE jobs ADD COLUMN resubmitted_from INTEGER;
    ALTER TABLE jobs ADD COLUMN resubmitted_as INTEGER;
    ALTER TABLE jobs ADD COLUMN auto_retries INTEGER NOT NULL DEFAULT 0;",
    // 6: what job listings filter and show: the device types a job needs and the
    // devices it was given (each ` a b `, space-delimited, so ` a ` finds one whole
    // name), and the token that submitted it. NULL for older jobs.
    "ALTER TABLE jobs ADD COLUMN device_types TEXT;
    ALTER TABLE jobs ADD COLUMN devices TEXT;
    ALTER TABLE jobs ADD COLUMN submitter TEXT;",
    // 7: job counts by state and health (what `/metrics` shows) from an index alone:
    // in the table those columns sit behind the definition, in its overflow pages, so
    // counting read every job's definition.
    "CREATE INDEX jobs_state_health ON jobs (state, health);",
    // 8: a device's tags as its lab file gives them (a name list, see migration 6).
    "ALTER TABLE devices ADD COLUMN tags TEXT;",
];

/// The default [`Store`]: a SQLite file. Needs a tokio runtime (its calls run on the
/// runtime's blocking pool).
#[derive(Clone)]
pub struct SqliteStore {
    db: Arc<Db>,
    /// New jobs, stored by the committer thread in group commits.
    submissions: std::sync::mpsc::Sender<Submission>,
}

/// A job to store, and where its id (or why it was not stored) goes.
type Submission = (
    NewJob,
    tokio::sync::oneshot::Sender<Result<u64, StoreError>>,
);

/// The most jobs stored in one commit.
const MAX_GROUP: usize = 256;

impl SqliteStore {
    /// Opens (creating if missing) the database at `path` and brings its schema up to
    /// date.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let path = path.to_path_buf();
        let db = Arc::new(blocking(move || Db::open(&path)).await?);
        let submissions = spawn_committer(db.clone())?;
        Ok(SqliteStore { db, submissions })
    }

    /// Runs `f` on the blocking pool, so the caller's async thread keeps going.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Db) -> Result<T, Fail> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        blocking(move || f(&db)).await
    }
}

/// Group commit: the submissions that arrive while a commit is under way are stored
/// together in the next one. A commit waits for the disk (the WAL is synced, so an
/// answered submission survives a power cut); sharing that wait among every job that
/// came meanwhile is what lets many clients submit at once. The thread ends when the
/// last clone of the store is dropped.
fn spawn_committer(db: Arc<Db>) -> Result<std::sync::mpsc::Sender<Submission>, StoreError> {
    let (sender, receiver) = std::sync::mpsc::channel::<Submission>();
    std::thread::Builder::new()
        .name("store-commit".into())
        .spawn(move || {
            while let Ok(first) = receiver.recv() {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match receiver.try_recv() {
                        Ok(next) => group.push(next),
                        Err(_) => break,
                    }
                }
                // A panic answers the group's submitters (their answers are dropped:
                // "the committer stopped") and the next group is stored as usual.
                let stored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    db.submit_group(group)
                }));
                if stored.is_err() {
                    tracing::error!("storing a group of new jobs panicked; they were not stored");
                }
            }
        })
        .map_err(|e| StoreError::Unavailable(format!("cannot start the committer: {e}")))?;
    Ok(sender)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Fail> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(StoreError::from),
        // The thread died (a panic) before answering; a transaction it had open rolled
        // back when dropped.
        Err(err) => Err(StoreError::Unavailable(format!(
            "a database call did not complete: {err}"
        ))),
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn submit(&self, job: NewJob) -> Result<u64, StoreError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.submissions
            .send((job, answer))
            .map_err(|_| StoreError::Unavailable("the committer has stopped".into()))?;
        answered.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the committer stopped before answering".into(),
            ))
        })
    }

    async fn job(&self, id: u64) -> Result<Option<JobRecord>, StoreError> {
        self.call(move |db| db.job(id)).await
    }

    async fn job_state(&self, id: u64) -> Result<Option<JobState>, StoreError> {
        self.call(move |db| db.job_state(id)).await
    }

    async fn set_members(&self, id: u64, members: Vec<Member>) -> Result<(), StoreError> {
        self.call(move |db| db.set_members(id, &members)).await
    }

    async fn job_page(&self, filter: &JobFilter) -> Result<JobPage, StoreError> {
        let filter = filter.clone();
        self.call(move |db| db.job_page(&filter)).await
    }

    async fn job_counts(&self) -> Result<JobCounts, StoreError> {
        self.call(Db::job_counts).await
    }

    async fn queue(&self) -> Result<Vec<Queued>, StoreError> {
        self.call(Db::queue).await
    }

    async fn reserve(&self, job: u64, hostnames: &[String]) -> Result<(), StoreError> {
        let hostnames = hostnames.to_vec();
        self.call(move |db| db.reserve(job, &hostnames)).await
    }

    async fn start(&self, job: u64) -> Result<(), StoreError> {
        self.call(move |db| db.apply(job, JobEvent::Started).map(drop))
            .await
    }

    async fn finish(
        &self,
        job: u64,
        outcome: Outcome,
        results: Option<serde_json::Value>,
        health: Option<HealthChange>,
    ) -> Result<JobState, StoreError> {
        self.call(move |db| db.finish(job, outcome, results.as_ref(), health.as_ref()))
            .await
    }

    async fn cancel(&self, job: u64) -> Result<JobState, StoreError> {
        self.call(move |db| db.apply(job, JobEvent::CancelRequested))
            .await
    }

    async fn recover_after_restart(&self) -> Result<Vec<u64>, StoreError> {
        self.call(Db::recover_after_restart).await
    }

    async fn sync_devices(&self, devices: Vec<LabDevice>) -> Result<(), StoreError> {
        self.call(move |db| db.sync_devices(&devices)).await
    }

    async fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.call(Db::devices).await
    }

    async fn set_device_health(
        &self,
        hostname: &str,
        health: DeviceHealth,
        reason: &str,
    ) -> Result<(), StoreError> {
        let (hostname, reason) = (hostname.to_string(), reason.to_string());
        self.call(move |db| db.set_device_health(&hostname, health, &reason))
            .await
    }

    async fn health_history(&self, hostname: &str) -> Result<Vec<HealthEvent>, StoreError> {
        let hostname = hostname.to_string();
        self.call(move |db| db.health_history(&hostname)).await
    }

    async fn create_token(&self, name: &str, scope: TokenScope) -> Result<String, StoreError> {
        let name = name.to_string();
        self.call(move |db| db.create_token(&name, scope)).await
    }

    async fn token_scope(&self, token: &str) -> Result<Option<(String, TokenScope)>, StoreError> {
        let token = token.to_string();
        self.call(move |db| db.token_scope(&token)).await
    }
}

/// Why a call failed inside this backend: a [`StoreError`] already, or a SQLite or
/// JSON error still to be told as one. Private, so no `rusqlite` type reaches the
/// public API.
enum Fail {
    Store(StoreError),
    Sql(rusqlite::Error),
    Json(serde_json::Error),
}

impl From<StoreError> for Fail {
    fn from(err: StoreError) -> Self {
        Fail::Store(err)
    }
}

impl From<rusqlite::Error> for Fail {
    fn from(err: rusqlite::Error) -> Self {
        Fail::Sql(err)
    }
}

impl From<serde_json::Error> for Fail {
    fn from(err: serde_json::Error) -> Self {
        Fail::Json(err)
    }
}

impl From<Fail> for StoreError {
    fn from(fail: Fail) -> Self {
        match fail {
            Fail::Store(err) => err,
            // Another process holds the lock past the busy timeout, or the file cannot
            // be opened or written: the database is there, just not usable now.
            Fail::Sql(err)
                if matches!(
                    err.sqlite_error_code(),
                    Some(
                        ErrorCode::DatabaseBusy
                            | ErrorCode::DatabaseLocked
                            | ErrorCode::CannotOpen
                            | ErrorCode::ReadOnly
                            | ErrorCode::DiskFull
                    )
                ) =>
            {
                StoreError::Unavailable(err.to_string())
            }
            Fail::Sql(err) => StoreError::Backend(err.to_string()),
            Fail::Json(err) => StoreError::Backend(format!("a stored value as JSON: {err}")),
        }
    }
}

/// The connections and the synchronous calls the async ones run on the blocking pool.
struct Db {
    /// Every write, and reads inside a write's transaction.
    conn: Mutex<Connection>,
    /// Reads alone: WAL lets them go on while a write waits for the disk, so a token
    /// check or a scheduling pass's look at the queue never queues behind a commit or
    /// behind each other.
    readers: Vec<Mutex<Connection>>,
    /// Which reader a read waits for when every reader is busy.
    next_reader: std::sync::atomic::AtomicUsize,
}

/// Read-only connections beside the writer.
const READERS: usize = 4;

impl Db {
    fn open(path: &Path) -> Result<Db, Fail> {
        let mut conn = Connection::open(path)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "SQLite refused WAL journal mode");
        }
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        migrate(&mut conn)?;
        let readers = (0..READERS)
            .map(|_| {
                let reader = Connection::open_with_flags(
                    path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                reader.busy_timeout(BUSY_TIMEOUT)?;
                Ok(Mutex::new(reader))
            })
            .collect::<Result<_, Fail>>()?;
        tracing::debug!(path = %path.display(), "store opened");
        Ok(Db {
            conn: Mutex::new(conn),
            readers,
            next_reader: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// A reader connection: a free one, or else the next in turn.
    fn read(&self) -> MutexGuard<'_, Connection> {
        for reader in &self.readers {
            match reader.try_lock() {
                Ok(guard) => return guard,
                Err(std::sync::TryLockError::Poisoned(poisoned)) => return poisoned.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        let turn = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % self.readers.len();
        self.readers[turn]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A panic while holding the lock cannot leave a half-done change behind (an
    /// unfinished transaction rolls back when dropped), so a poisoned lock is still
    /// safe to use.
    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` in one transaction, committed only if `f` succeeds. IMMEDIATE takes the
    /// write lock up front, so a concurrent writer waits (busy_timeout) instead of
    /// failing halfway through with SQLITE_BUSY.
    fn write<T>(&self, f: impl FnOnce(&Connection) -> Result<T, Fail>) -> Result<T, Fail> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    /// Stores `group` in one transaction, each job in a savepoint of its own (a job
    /// that cannot be stored is refused alone), and answers each.
    fn submit_group(&self, group: Vec<Submission>) {
        let mut conn = self.lock();
        let stored = (|| -> Result<Vec<Result<u64, Fail>>, Fail> {
            let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut ids = Vec::with_capacity(group.len());
            for (job, _) in &group {
                let savepoint = tx.savepoint()?;
                match insert_job(&savepoint, job) {
                    Ok(id) => {
                        savepoint.commit()?;
                        ids.push(Ok(id));
                    }
                    // This job's own fault (a value out of range, a job it names that
                    // does not exist): the savepoint, dropped, rolls it back alone.
                    Err(fail @ Fail::Store(_)) => ids.push(Err(fail)),
                    // The database's (disk full, I/O): SQLite may have rolled back the
                    // whole transaction already, so nothing of the group is kept and
                    // every submitter is told.
                    Err(fail) => return Err(fail),
                }
            }
            tx.commit()?;
            Ok(ids)
        })();
        drop(conn);
        match stored {
            Ok(ids) => {
                for ((job, answer), id) in group.into_iter().zip(ids) {
                    if let Ok(id) = id {
                        tracing::info!(job = id, name = ?job.name, priority = job.priority, "job submitted");
                    }
                    // A submitter that left (its client hung up) needs no answer.
                    let _ = answer.send(id.map_err(StoreError::from));
                }
            }
            Err(fail) => {
                let err = StoreError::from(fail);
                for (_, answer) in group {
                    let _ = answer.send(Err(match &err {
                        StoreError::Unavailable(why) => StoreError::Unavailable(why.clone()),
                        other => StoreError::Backend(other.to_string()),
                    }));
                }
            }
        }
    }
}

/// Stores one new job in the transaction `tx`: its id.
fn insert_job(tx: &Connection, job: &NewJob) -> Result<u64, Fail> {
    if job.priority > 100 {
        return Err(StoreError::Invalid(Invalid::Priority(job.priority)).into());
    }
    let state = JobState::Submitted;
    // Run for every submission: the statement is kept prepared.
    let id: u64 = tx
        .prepare_cached(
            "INSERT INTO jobs (name, definition, priority, submitted_at, state, state_json,
                 members, health_check_of, resubmitted_from, auto_retries, device_types,
                 submitter)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) RETURNING id",
        )?
        .query_row(
            params![
                job.name,
                job.definition,
                job.priority,
                now(),
                state.name(),
                serde_json::to_string(&state)?,
                serde_json::to_string(&job.members)?,
                job.health_check_of,
                job.resubmitted_from,
                job.auto_retries,
                name_list(&job.device_types),
                job.submitter
            ],
            |row| row.get(0),
        )?;
    if let Some(from) = job.resubmitted_from {
        let linked = tx.execute(
            "UPDATE jobs SET resubmitted_as = ?2 WHERE id = ?1",
            params![from, id],
        )?;
        if linked == 0 {
            return Err(StoreError::NotFound(Missing::Job(from)).into());
        }
    }
    Ok(id)
}

impl Db {
    fn job(&self, id: u64) -> Result<Option<JobRecord>, Fail> {
        if !storable(id) {
            return Ok(None);
        }
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS}, definition, results, members, auto_retries FROM jobs
             WHERE id = ?1"
        );
        Ok(self.read().query_row(&sql, [id], job_from_row).optional()?)
    }

    fn job_state(&self, id: u64) -> Result<Option<JobState>, Fail> {
        if !storable(id) {
            return Ok(None);
        }
        Ok(self
            .read()
            .query_row("SELECT state_json FROM jobs WHERE id = ?1", [id], |row| {
                json_column(row, 0)
            })
            .optional()?)
    }

    fn set_members(&self, id: u64, members: &[Member]) -> Result<(), Fail> {
        let changed = if storable(id) {
            self.lock().execute(
                "UPDATE jobs SET members = ?2 WHERE id = ?1",
                params![id, serde_json::to_string(members)?],
            )?
        } else {
            0
        };
        if changed == 0 {
            return Err(StoreError::NotFound(Missing::Job(id)).into());
        }
        Ok(())
    }

    fn job_page(&self, filter: &JobFilter) -> Result<JobPage, Fail> {
        if let Some(name) = filter
            .state
            .as_deref()
            .filter(|s| !JOB_STATE_NAMES.contains(s))
        {
            return Err(StoreError::Invalid(Invalid::JobState(name.to_string())).into());
        }
        if let Some(health) = filter
            .health
            .as_deref()
            .filter(|h| !JOB_HEALTH_NAMES.contains(h))
        {
            return Err(StoreError::Invalid(Invalid::JobHealth(health.to_string())).into());
        }
        // Each condition holds when its parameter is NULL; LIKE's wildcards in the
        // user's text are escaped, so "50%" finds "50%" and not everything.
        let text = filter.text.as_deref().map(|t| {
            let escaped = t
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        });
        let id: Option<i64> = filter.text.as_deref().and_then(|t| t.trim().parse().ok());
        // A whole name, exactly: ` kvm ` in ` kvm ssh-host ` (instr: no wildcards, and
        // case counts, as in device type names).
        let device_type = filter.device_type.as_deref().map(|t| format!(" {t} "));
        let conditions = "(?1 IS NULL OR state = ?1)
             AND (?2 IS NULL OR health = ?2)
             AND (?3 IS NULL OR instr(device_types, ?3) > 0)
             AND (?4 IS NULL OR name LIKE ?4 ESCAPE '\\' OR id = ?5)";
        let params = params![filter.state, filter.health, device_type, text, id];
        let mut conn = self.read();
        // One snapshot for the total and the page, so they agree.
        let conn = conn.transaction()?;
        let total: u64 = conn.query_row(
            &format!("SELECT count(*) FROM jobs WHERE {conditions}"),
            params,
            |row| row.get(0),
        )?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM jobs WHERE {conditions}
             ORDER BY id DESC LIMIT ?6 OFFSET ?7"
        ))?;
        let limit = i64::from(filter.limit);
        let offset = i64::try_from(filter.offset).unwrap_or(i64::MAX);
        let rows = stmt.query_map(
            params![
                filter.state,
                filter.health,
                device_type,
                text,
                id,
                limit,
                offset
            ],
            summary_from_row,
        )?;
        Ok(JobPage {
            jobs: rows.collect::<Result<_, _>>()?,
            total,
        })
    }

    fn job_counts(&self) -> Result<JobCounts, Fail> {
        let conn = self.read();
        let mut counts = JobCounts::default();
        let mut stmt = conn.prepare("SELECT state, health, count(*) FROM jobs GROUP BY 1, 2")?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, Option<String>>(1)?,
                row.get::<_, u64>(2)?,
            ))
        })?;
        for row in rows {
            let (state, health, n) = row?;
            *counts.by_state.entry(state).or_default() += n;
            if let Some(health) = health {
                *counts.finished_by_health.entry(health).or_default() += n;
            }
        }
        Ok(counts)
    }

    fn queue(&self) -> Result<Vec<Queued>, Fail> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT id, priority, submitted_at, health_check_of FROM jobs
             WHERE state = 'submitted' ORDER BY id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(Queued {
                id: row.get(0)?,
                priority: row.get(1)?,
                submitted_at: row.get(2)?,
                health_check_of: row.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Applies `event` to job `id` and returns the new state. Finishing frees the job's
    /// devices.
    fn apply(&self, id: u64, event: JobEvent) -> Result<JobState, Fail> {
        self.write(|tx| transition(tx, id, event))
    }

    fn reserve(&self, job_id: u64, hostnames: &[String]) -> Result<(), Fail> {
        self.write(|tx| {
            transition(tx, job_id, JobEvent::Scheduled)?;
            let reserved = serde_json::to_string(&DeviceState::Reserved(job_id))?;
            for hostname in hostnames {
                // Checked one by one after the previous ones were taken, so a hostname
                // listed twice is refused too; any error rolls the whole lot back.
                let device = device_in(tx, hostname)?
                    .ok_or_else(|| StoreError::NotFound(Missing::Device(hostname.clone())))?;
                if !schedulable(device.state, device.health) {
                    return Err(StoreError::Conflict(Conflict::DeviceNotFree {
                        hostname: hostname.clone(),
                        state: device.state,
                        health: device.health,
                    })
                    .into());
                }
                tx.execute(
                    "UPDATE devices SET state = ?2, job_id = ?3 WHERE hostname = ?1",
                    params![hostname, reserved, job_id],
                )?;
            }
            tx.execute(
                "UPDATE jobs SET devices = ?2 WHERE id = ?1",
                params![job_id, name_list(hostnames)],
            )?;
            tracing::info!(job = job_id, devices = ?hostnames, "devices reserved");
            Ok(())
        })
    }

    fn finish(
        &self,
        job_id: u64,
        outcome: Outcome,
        results: Option<&serde_json::Value>,
        health: Option<&HealthChange>,
    ) -> Result<JobState, Fail> {
        self.write(|tx| {
            // Set before the transition releases the devices (it finds them by job).
            let checked: Option<String> = tx
                .query_row(
                    "SELECT health_check_of FROM jobs WHERE id = ?1",
                    [job_id],
                    |row| row.get(0),
                )
                .optional()?
                .flatten();
            // A check that said something (a canceled one did not) starts the count again.
            if checked.is_some() && health.is_some() {
                tx.execute(
                    "UPDATE devices SET last_check_at = ?2, jobs_since_check = 0 WHERE job_id = ?1",
                    params![job_id, now()],
                )?;
            } else if checked.is_none() {
                tx.execute(
                    "UPDATE devices SET jobs_since_check = jobs_since_check + 1 WHERE job_id = ?1",
                    [job_id],
                )?;
            }
            if let Some(change) = health {
                let hostnames: Vec<(String, DeviceHealth)> = {
                    let mut stmt =
                        tx.prepare("SELECT hostname, health FROM devices WHERE job_id = ?1")?;
                    let rows =
                        stmt.query_map([job_id], |row| Ok((row.get(0)?, enum_column(row, 1)?)))?;
                    rows.collect::<Result<_, _>>()?
                };
                let new = enum_text(&change.health)?;
                for (hostname, old) in hostnames {
                    if !job_sets_health(old, change.health, checked.is_some()) {
                        continue;
                    }
                    tx.execute(
                        "UPDATE devices SET health = ?2 WHERE hostname = ?1",
                        params![hostname, new],
                    )?;
                    record_health(tx, &hostname, change.health, Some(job_id), &change.reason)?;
                }
            }
            let state = transition(tx, job_id, JobEvent::Ended(outcome))?;
            let results = results.map(serde_json::to_string).transpose()?;
            tx.execute(
                "UPDATE jobs SET results = ?2 WHERE id = ?1",
                params![job_id, results],
            )?;
            Ok(state)
        })
    }

    fn recover_after_restart(&self) -> Result<Vec<u64>, Fail> {
        self.write(|tx| {
            let mut stmt = tx.prepare(
                "SELECT id FROM jobs WHERE state IN ('scheduled', 'running', 'canceling')
                 ORDER BY id",
            )?;
            let ids = stmt
                .query_map([], |row| row.get(0))?
                .collect::<Result<Vec<u64>, _>>()?;
            // Not `JobState::apply`: a restart is no event of the job's own life, and a
            // job being canceled must not end "canceled" as if its nodes stopped cleanly.
            let ended = JobState::Finished(Outcome::incomplete(
                ErrorClass::Infrastructure,
                RESTART_MESSAGE,
            ));
            for &id in &ids {
                write_state(tx, id, &ended)?;
                release_devices(tx, id)?;
            }
            if !ids.is_empty() {
                tracing::warn!(jobs = ?ids, "jobs cut short by a restart ended incomplete");
            }
            Ok(ids)
        })
    }

    fn sync_devices(&self, devices: &[LabDevice]) -> Result<(), Fail> {
        let idle = serde_json::to_string(&DeviceState::Idle)?;
        let offline = serde_json::to_string(&DeviceState::Offline)?;
        let unknown = enum_text(&DeviceHealth::Unknown)?;
        let retired = enum_text(&DeviceHealth::Retired)?;
        self.write(|tx| {
            tx.execute(
                "CREATE TEMP TABLE IF NOT EXISTS lab (hostname TEXT PRIMARY KEY)",
                [],
            )?;
            tx.execute("DELETE FROM temp.lab", [])?;
            for device in devices {
                let hostname = &device.hostname;
                let tags = name_list(&device.tags);
                tx.execute("INSERT OR IGNORE INTO temp.lab VALUES (?1)", [hostname])?;
                let added = tx.execute(
                    "INSERT OR IGNORE INTO devices (hostname, device_type, state, health, tags)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![hostname, device.device_type, idle, unknown, tags],
                )?;
                if added > 0 {
                    record_health(tx, hostname, DeviceHealth::Unknown, None, NEW_IN_THE_LAB)?;
                } else {
                    tx.execute(
                        "UPDATE devices SET device_type = ?2, tags = ?3 WHERE hostname = ?1",
                        params![hostname, device.device_type, tags],
                    )?;
                }
            }
            let revived = tx.execute(
                "UPDATE devices SET state = ?1, health = ?2
                 WHERE state = ?3 AND health = ?4 AND hostname IN (SELECT hostname FROM temp.lab)",
                params![idle, unknown, offline, retired],
            )?;
            let gone = tx.execute(
                "UPDATE devices SET health = ?1,
                     state = CASE WHEN job_id IS NULL THEN ?2 ELSE state END
                 WHERE hostname NOT IN (SELECT hostname FROM temp.lab)
                   AND NOT (health = ?1 AND state = ?2)",
                params![retired, offline],
            )?;
            tracing::info!(
                lab = devices.len(),
                revived,
                retired = gone,
                "devices synced"
            );
            Ok(())
        })
    }

    fn devices(&self) -> Result<Vec<DeviceRecord>, Fail> {
        let conn = self.read();
        let mut stmt = conn.prepare(&format!("{DEVICE_COLUMNS} ORDER BY hostname"))?;
        let rows = stmt.query_map([], device_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn set_device_health(
        &self,
        hostname: &str,
        health: DeviceHealth,
        reason: &str,
    ) -> Result<(), Fail> {
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE devices SET health = ?2 WHERE hostname = ?1",
                params![hostname, enum_text(&health)?],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound(Missing::Device(hostname.to_string())).into());
            }
            record_health(tx, hostname, health, None, reason)
        })?;
        tracing::info!(
            device = hostname,
            ?health,
            reason,
            "device health set by an admin"
        );
        Ok(())
    }

    fn health_history(&self, hostname: &str) -> Result<Vec<HealthEvent>, Fail> {
        let conn = self.read();
        let mut stmt = conn.prepare(
            "SELECT at, health, job_id, reason FROM device_health
             WHERE hostname = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![hostname, HEALTH_HISTORY_LIMIT], |row| {
            Ok(HealthEvent {
                at: row.get(0)?,
                health: enum_column(row, 1)?,
                job: row.get(2)?,
                reason: row.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn create_token(&self, name: &str, scope: TokenScope) -> Result<String, Fail> {
        let secret = new_secret();
        let inserted = self.lock().execute(
            "INSERT INTO tokens (name, sha256, created_at, read_only) VALUES (?1, ?2, ?3, ?4)",
            params![
                name,
                sha256_hex(&secret),
                now(),
                scope == TokenScope::ReadOnly
            ],
        );
        match inserted {
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                Err(StoreError::Conflict(Conflict::DuplicateToken(name.to_string())).into())
            }
            Err(e) => Err(e.into()),
            Ok(_) => {
                tracing::info!(token = name, "API token created");
                Ok(secret)
            }
        }
    }

    fn token_scope(&self, token: &str) -> Result<Option<(String, TokenScope)>, Fail> {
        // Asked on every request: the statement is kept prepared.
        let found = self
            .read()
            .prepare_cached("SELECT name, read_only FROM tokens WHERE sha256 = ?1")?
            .query_row([sha256_hex(token)], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, bool>(1)?))
            })
            .optional()?;
        Ok(found.map(|(name, read_only)| {
            let scope = if read_only {
                TokenScope::ReadOnly
            } else {
                TokenScope::ReadWrite
            };
            (name, scope)
        }))
    }
}

/// Brings the schema from its `user_version` up to `MIGRATIONS.len()`, each step in a
/// transaction with its version bump, so a crash never leaves half a migration.
fn migrate(conn: &mut Connection) -> Result<(), Fail> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let known = MIGRATIONS.len();
    let start = usize::try_from(found)
        .ok()
        .filter(|v| *v <= known)
        .ok_or_else(|| {
            StoreError::Unavailable(format!(
                "the database schema is version {found}, newer than this dispatcher's {known}"
            ))
        })?;
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(start) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
        tracing::info!(version = version + 1, "store schema migrated");
    }
    Ok(())
}

/// Reads job `id`'s state, applies `event`, writes the result and its consequences for
/// the job's devices. Runs inside the caller's transaction.
fn transition(tx: &Connection, id: u64, event: JobEvent) -> Result<JobState, Fail> {
    let missing = || Fail::Store(StoreError::NotFound(Missing::Job(id)));
    if !storable(id) {
        return Err(missing());
    }
    let json: String = tx
        .query_row("SELECT state_json FROM jobs WHERE id = ?1", [id], |row| {
            row.get(0)
        })
        .optional()?
        .ok_or_else(missing)?;
    let current: JobState = serde_json::from_str(&json)?;
    let next = current
        .apply(event)
        .map_err(|source| StoreError::IllegalTransition { job: id, source })?;
    write_state(tx, id, &next)?;
    match next {
        JobState::Running => {
            let running = serde_json::to_string(&DeviceState::Running(id))?;
            tx.execute(
                "UPDATE devices SET state = ?2 WHERE job_id = ?1",
                params![id, running],
            )?;
        }
        JobState::Finished(_) => release_devices(tx, id)?,
        _ => {}
    }
    tracing::info!(job = id, from = %current, to = %next, "job state changed");
    Ok(next)
}

/// Stores `state` for job `id`, stamping the start (first time running) and end times
/// and copying a finished job's outcome into plain columns for queries.
fn write_state(tx: &Connection, id: u64, state: &JobState) -> Result<(), Fail> {
    let (health, class, message) = match state {
        JobState::Finished(outcome) => (
            Some(enum_text(&outcome.health)?),
            outcome
                .error
                .as_ref()
                .map(|(c, _)| enum_text(c))
                .transpose()?,
            outcome.error.as_ref().map(|(_, m)| m.clone()),
        ),
        _ => (None, None, None),
    };
    tx.execute(
        "UPDATE jobs SET state = ?2, state_json = ?3, health = ?4, error_class = ?5,
             error = ?6,
             started_at = CASE WHEN ?2 = 'running' THEN coalesce(started_at, ?7)
                          ELSE started_at END,
             ended_at = CASE WHEN ?2 = 'finished' THEN ?7 ELSE ended_at END
         WHERE id = ?1",
        params![
            id,
            state.name(),
            serde_json::to_string(state)?,
            health,
            class,
            message,
            now()
        ],
    )?;
    Ok(())
}

/// The devices of job `id` become idle, or offline if they were retired meanwhile.
fn release_devices(tx: &Connection, id: u64) -> Result<(), Fail> {
    tx.execute(
        "UPDATE devices SET job_id = NULL,
             state = CASE WHEN health = ?2 THEN ?3 ELSE ?4 END
         WHERE job_id = ?1",
        params![
            id,
            enum_text(&DeviceHealth::Retired)?,
            serde_json::to_string(&DeviceState::Offline)?,
            serde_json::to_string(&DeviceState::Idle)?
        ],
    )?;
    Ok(())
}

/// One line of a device's health history.
fn record_health(
    tx: &Connection,
    hostname: &str,
    health: DeviceHealth,
    job: Option<u64>,
    reason: &str,
) -> Result<(), Fail> {
    tx.execute(
        "INSERT INTO device_health (hostname, at, health, job_id, reason)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![hostname, now(), enum_text(&health)?, job, reason],
    )?;
    Ok(())
}

fn device_in(tx: &Connection, hostname: &str) -> Result<Option<DeviceRecord>, Fail> {
    let sql = format!("{DEVICE_COLUMNS} WHERE hostname = ?1");
    Ok(tx.query_row(&sql, [hostname], device_from_row).optional()?)
}

/// A job's columns up to its definition, in [`summary_from_row`]'s order.
const SUMMARY_COLUMNS: &str = "id, name, priority, state_json, submitted_at, started_at, \
    ended_at, health_check_of, resubmitted_from, resubmitted_as, device_types, devices, \
    submitter";
/// How many columns [`SUMMARY_COLUMNS`] names: a job's other columns come after them.
const SUMMARY_COUNT: usize = 13;

/// Whether `id` can be a job's id: SQLite's integers are signed 64-bit, so a larger id
/// names no job (rather than failing to bind as a query parameter).
fn storable(id: u64) -> bool {
    i64::try_from(id).is_ok()
}

fn summary_from_row(row: &Row<'_>) -> rusqlite::Result<JobSummary> {
    Ok(JobSummary {
        id: row.get(0)?,
        name: row.get(1)?,
        priority: row.get(2)?,
        state: json_column(row, 3)?,
        submitted_at: row.get(4)?,
        started_at: row.get(5)?,
        ended_at: row.get(6)?,
        health_check_of: row.get(7)?,
        resubmitted_from: row.get(8)?,
        resubmitted_as: row.get(9)?,
        device_types: names_of(row.get(10)?),
        devices: names_of(row.get(11)?),
        submitter: row.get(12)?,
    })
}

/// [`SUMMARY_COLUMNS`], then definition, results and members.
fn job_from_row(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    Ok(JobRecord {
        summary: summary_from_row(row)?,
        definition: row.get(SUMMARY_COUNT)?,
        results: row
            .get::<_, Option<String>>(SUMMARY_COUNT + 1)?
            .map(|text| parse_json(SUMMARY_COUNT + 1, &text))
            .transpose()?,
        members: row
            .get::<_, Option<String>>(SUMMARY_COUNT + 2)?
            .map(|text| parse_json(SUMMARY_COUNT + 2, &text))
            .transpose()?,
        auto_retries: row.get(SUMMARY_COUNT + 3)?,
        // One worker runs every job whole.
        assigned: Vec::new(),
    })
}

const DEVICE_COLUMNS: &str = "SELECT hostname, device_type, state, health, last_check_at,
    jobs_since_check, tags FROM devices";

fn device_from_row(row: &Row<'_>) -> rusqlite::Result<DeviceRecord> {
    Ok(DeviceRecord {
        hostname: row.get(0)?,
        device_type: row.get(1)?,
        state: json_column(row, 2)?,
        health: enum_column(row, 3)?,
        last_check_at: row.get(4)?,
        jobs_since_check: row.get(5)?,
        tags: names_of(row.get(6)?),
        worker: None,
    })
}

/// A unit enum stored as its bare serde name ("good"), read back as a JSON string.
fn enum_column<T: DeserializeOwned>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T> {
    let text: String = row.get(idx)?;
    enum_of(&text).map_err(|e| conversion_error(idx, e))
}

fn json_column<T: DeserializeOwned>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T> {
    let text: String = row.get(idx)?;
    parse_json(idx, &text)
}

fn parse_json<T: DeserializeOwned>(idx: usize, text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| conversion_error(idx, e))
}

fn conversion_error(idx: usize, e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e))
}

/// Unix seconds now (0 on a clock set before 1970 rather than failing a write).
fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    //! The SQLite backend through the [`Store`] trait, as the daemon uses it; raw
    //! connections only to look at the file itself.

    use super::*;

    async fn open(path: &Path) -> Arc<dyn Store> {
        Arc::new(SqliteStore::open(path).await.unwrap())
    }

    /// A new store in a temporary directory with the `kvm` devices `devices`.
    async fn temp_store(
        devices: &[&str],
    ) -> (tempfile::TempDir, std::path::PathBuf, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dispatcher.sqlite");
        let store = open(&path).await;
        store.sync_devices(lab(devices)).await.unwrap();
        (dir, path, store)
    }

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

    async fn summary(store: &dyn Store, id: u64) -> JobSummary {
        store.job(id).await.unwrap().unwrap().summary
    }

    async fn token_name(store: &dyn Store, token: &str) -> Option<String> {
        store
            .token_scope(token)
            .await
            .unwrap()
            .map(|(name, _)| name)
    }

    #[tokio::test]
    async fn counting_jobs_and_reading_the_queue_read_no_definition() {
        let (_dir, path, _store) = temp_store(&["kvm-01"]).await;
        let raw = Connection::open(&path).unwrap();
        let plan = |sql: &str| -> String {
            let mut stmt = raw.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = stmt.query_map([], |r| r.get::<_, String>(3)).unwrap();
            rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
        };
        // The statements of `job_counts` and `queue`: served by an index alone.
        let counts = plan("SELECT state, health, count(*) FROM jobs GROUP BY 1, 2");
        assert!(
            counts.contains("COVERING INDEX jobs_state_health"),
            "{counts}"
        );
        let queue = plan(
            "SELECT id, priority, submitted_at, health_check_of FROM jobs
             WHERE state = 'submitted' ORDER BY id",
        );
        assert!(queue.contains("COVERING INDEX jobs_queue"), "{queue}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn submissions_at_once_are_each_stored_and_a_bad_one_is_refused_alone() {
        let (_dir, path, store) = temp_store(&["kvm-01"]).await;
        let submitted: Vec<_> = (0..200u64)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut job = new_job(Some(&format!("job {i}")), "{}", 50);
                    if i == 100 {
                        // Resubmitted from a job that does not exist: refused.
                        job.resubmitted_from = Some(999_999);
                    }
                    (i, store.submit(job).await)
                })
            })
            .collect();
        let mut ids = Vec::new();
        for task in submitted {
            let (i, answer) = task.await.unwrap();
            match answer {
                Ok(id) => {
                    assert_ne!(i, 100);
                    assert_eq!(
                        summary(&*store, id).await.name.as_deref(),
                        Some(&*format!("job {i}"))
                    );
                    ids.push(id);
                }
                Err(err) => {
                    assert_eq!(i, 100, "{err}");
                    assert!(
                        matches!(err, StoreError::NotFound(Missing::Job(999_999))),
                        "{err}"
                    );
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(
            ids.len(),
            199,
            "every other job stored once, each with its own id"
        );
        // What was answered is on disk: another connection reads it.
        drop(store);
        let raw = Connection::open(&path).unwrap();
        let count: u64 = raw
            .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 199);
    }

    #[tokio::test]
    async fn reopening_the_file_keeps_everything() {
        let (_dir, path, store) = temp_store(&["kvm-01", "kvm-02"]).await;
        store
            .set_device_health("kvm-02", DeviceHealth::Bad, "admin")
            .await
            .unwrap();
        let id = store
            .submit(new_job(Some("kept"), r#"{"a": 1}"#, 7))
            .await
            .unwrap();
        store.reserve(id, &hosts(&["kvm-01"])).await.unwrap();
        store.start(id).await.unwrap();
        let token = store
            .create_token("ci", TokenScope::ReadWrite)
            .await
            .unwrap();
        let job = store.job(id).await.unwrap().unwrap();
        let devices = store.devices().await.unwrap();
        drop(store);

        let store = open(&path).await;
        assert_eq!(store.job(id).await.unwrap().unwrap(), job);
        assert_eq!(store.devices().await.unwrap(), devices);
        assert_eq!(devices[1].health, DeviceHealth::Bad);
        assert_eq!(token_name(&*store, &token).await.as_deref(), Some("ci"));
        let next = store.submit(new_job(None, "{}", 50)).await.unwrap();
        assert!(next > id, "ids are not reused");

        let raw = Connection::open(&path).unwrap();
        let version: i64 = raw
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        let mode: String = raw
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!((version, mode.as_str()), (MIGRATIONS.len() as i64, "wal"));
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let (_dir, path, store) = temp_store(&[]).await;
        drop(store);
        let raw = Connection::open(&path).unwrap();
        let newer = MIGRATIONS.len() + 1;
        raw.pragma_update(None, "user_version", newer).unwrap();
        drop(raw);
        let err = SqliteStore::open(&path).await.err().unwrap();
        let expected = format!(
            "version {newer}, newer than this dispatcher's {}",
            MIGRATIONS.len()
        );
        assert!(
            matches!(&err, StoreError::Unavailable(why) if why.contains(&expected)),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_database_of_the_previous_version_gains_the_members_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        // What the previous dispatcher made: schema version 2, a job in it.
        let mut raw = Connection::open(&path).unwrap();
        for (version, sql) in MIGRATIONS[..2].iter().enumerate() {
            let tx = raw.transaction().unwrap();
            tx.execute_batch(sql).unwrap();
            tx.pragma_update(None, "user_version", version + 1).unwrap();
            tx.commit().unwrap();
        }
        raw.execute(
            "INSERT INTO jobs (name, definition, priority, submitted_at, state, state_json)
             VALUES ('old', '{}', 50, 1, 'submitted', '{\"state\":\"submitted\"}')",
            [],
        )
        .unwrap();
        drop(raw);

        let store = open(&path).await;
        let old = store.jobs(None).await.unwrap()[0].id;
        assert_eq!(
            store.job(old).await.unwrap().unwrap().members,
            None,
            "not known yet"
        );
        let members = vec![Member {
            node: "host".into(),
            role: "host".into(),
        }];
        store.set_members(old, members.clone()).await.unwrap();
        assert_eq!(
            store.job(old).await.unwrap().unwrap().members,
            Some(members)
        );
        let new = store.submit(new_job(None, "{}", 50)).await.unwrap();
        assert_eq!(store.job(new).await.unwrap().unwrap().members, Some(vec![]));
        assert_eq!(
            store.job_state(new).await.unwrap(),
            Some(JobState::Submitted)
        );
    }

    #[tokio::test]
    async fn tokens_are_stored_only_as_hashes_each_with_its_scope() {
        let (_dir, path, store) = temp_store(&[]).await;
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

        let raw = Connection::open(&path).unwrap();
        let mut stmt = raw
            .prepare("SELECT name, sha256, CAST(created_at AS TEXT) FROM tokens")
            .unwrap();
        let rows: Vec<[String; 3]> = stmt
            .query_map([], |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?]))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows.len(), 2);
        for row in &rows {
            assert!(
                row.iter()
                    .all(|v| !v.contains(&secret) && !v.contains(&other)),
                "a secret is in the table: {row:?}"
            );
        }
        let ci = rows.iter().find(|r| r[0] == "ci").unwrap();
        assert_eq!(ci[1], sha256_hex(&secret));

        assert_eq!(
            store.token_scope(&secret).await.unwrap(),
            Some(("ci".to_string(), TokenScope::ReadWrite))
        );
        assert_eq!(
            store.token_scope(&other).await.unwrap(),
            Some(("dashboard".to_string(), TokenScope::ReadOnly))
        );
        assert_eq!(
            token_name(&*store, &ci[1]).await,
            None,
            "the hash is no token"
        );
        assert_eq!(token_name(&*store, "wrong").await, None);
        assert!(matches!(
            store.create_token("ci", TokenScope::ReadWrite).await,
            Err(StoreError::Conflict(Conflict::DuplicateToken(ref n))) if n == "ci"
        ));
        assert_eq!(token_name(&*store, &secret).await.as_deref(), Some("ci"));
    }
}
