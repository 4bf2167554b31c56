//! The daemon's persistent state: jobs, devices and API tokens.
//!
//! Everything the daemon must not forget across a restart lives here, and every change
//! that must be atomic (reserving all of a job's devices, finishing a job and freeing its
//! devices) is one transaction.
//!
//! Why SQLite: one file next to the lab configuration, nothing to install or run beside
//! the dispatcher (the library is bundled), and in WAL mode readers (the CLI, the API)
//! never block the writer. Everything goes through this one synchronous interface, so a
//! PostgreSQL backend can be put behind it later without touching its callers. The
//! daemon calls it from `spawn_blocking` (`daemon::Shared::blocking`, and the
//! scheduling pass), so a slow query never stalls the API's async threads; only while
//! starting, before it serves anything, does it call it directly.
//!
//! Job and device states are stored as the JSON their serde derives produce, so they
//! round-trip exactly; the plain `state`/`health` columns beside them exist for queries
//! and for humans reading the file with `sqlite3`.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::Type;
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior, params};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use scheduler::DeviceView;
use states::{
    DeviceHealth, DeviceState, ErrorClass, IllegalTransition, JobEvent, JobState, Outcome,
    schedulable,
};

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
];

/// The message of jobs that were cut short by a dispatcher restart.
pub const RESTART_MESSAGE: &str = "dispatcher restarted";

const JOB_STATE_NAMES: [&str; 5] = ["submitted", "scheduled", "running", "canceling", "finished"];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot encode a state as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the database schema is version {found}, newer than this dispatcher's {known}")]
    SchemaTooNew { found: i64, known: usize },
    #[error("there is no job {0}")]
    NoSuchJob(u64),
    #[error("there is no device {0}")]
    NoSuchDevice(String),
    #[error("job {job}: {source}")]
    Illegal {
        job: u64,
        #[source]
        source: IllegalTransition,
    },
    #[error("device {hostname} is not free: it is {state:?} with health {health:?}")]
    DeviceNotFree {
        hostname: String,
        state: DeviceState,
        health: DeviceHealth,
    },
    #[error("priority {0} is out of range (0 to 100)")]
    BadPriority(u8),
    #[error("unknown job state {0:?}")]
    UnknownState(String),
    #[error("a token named {0} already exists")]
    DuplicateToken(String),
    /// The thread running a store call died (it panicked) before answering.
    #[error("a database call did not complete: {0}")]
    Blocking(String),
}

/// A job as stored. Timestamps are unix seconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRecord {
    pub id: u64,
    pub name: Option<String>,
    /// The submitted JSON, byte for byte.
    pub definition: String,
    pub priority: u8,
    pub state: JobState,
    pub submitted_at: i64,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub results: Option<serde_json::Value>,
    /// The job's nodes, as validation found them at submission; `None` for a job
    /// submitted before the store kept them (see [`Store::set_members`]).
    pub members: Option<Vec<Member>>,
}

/// One node a job has (or will have): its id and its role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node: String,
    pub role: String,
}

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenScope {
    /// Read jobs, logs, results and devices; submit, cancel and set health.
    ReadWrite,
    /// Read only: for dashboards and CI jobs that only fetch results.
    ReadOnly,
}

/// A queued job as the scheduler needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    pub id: u64,
    pub priority: u8,
    pub submitted_at: i64,
}

/// A device as stored (its tags live in the lab files, not here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceRecord {
    pub hostname: String,
    pub device_type: String,
    pub state: DeviceState,
    pub health: DeviceHealth,
}

impl DeviceRecord {
    /// The scheduler's view, with the tags from the lab files.
    pub fn into_view(self, tags: std::collections::BTreeSet<String>) -> DeviceView {
        DeviceView {
            hostname: self.hostname,
            device_type: self.device_type,
            tags,
            state: self.state,
            health: self.health,
        }
    }
}

pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if missing) the database at `path` and brings its schema up to
    /// date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let mut conn = Connection::open(path)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "SQLite refused WAL journal mode");
        }
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        migrate(&mut conn)?;
        tracing::debug!(path = %path.display(), "store opened");
        Ok(Store {
            conn: Mutex::new(conn),
        })
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
    fn write<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    /// Queues a new job; returns its id. Its members are not known (see
    /// [`Store::submit_with_members`]).
    pub fn submit(
        &self,
        name: Option<&str>,
        definition: &str,
        priority: u8,
    ) -> Result<u64, StoreError> {
        self.insert_job(name, definition, priority, None)
    }

    /// Queues a new job with the nodes its validation found; returns its id.
    pub fn submit_with_members(
        &self,
        name: Option<&str>,
        definition: &str,
        priority: u8,
        members: &[Member],
    ) -> Result<u64, StoreError> {
        self.insert_job(name, definition, priority, Some(members))
    }

    fn insert_job(
        &self,
        name: Option<&str>,
        definition: &str,
        priority: u8,
        members: Option<&[Member]>,
    ) -> Result<u64, StoreError> {
        if priority > 100 {
            return Err(StoreError::BadPriority(priority));
        }
        let state = JobState::Submitted;
        let members = members.map(serde_json::to_string).transpose()?;
        let id: u64 = self.lock().query_row(
            "INSERT INTO jobs (name, definition, priority, submitted_at, state, state_json,
                 members)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
            params![
                name,
                definition,
                priority,
                now(),
                state.name(),
                serde_json::to_string(&state)?,
                members
            ],
            |row| row.get(0),
        )?;
        tracing::info!(job = id, ?name, priority, "job submitted");
        Ok(id)
    }

    /// Job `id`; `None` when there is none (an id past SQLite's integers included).
    pub fn job(&self, id: u64) -> Result<Option<JobRecord>, StoreError> {
        if !storable(id) {
            return Ok(None);
        }
        let conn = self.lock();
        let sql = format!("{JOB_COLUMNS} WHERE id = ?1");
        Ok(conn.query_row(&sql, [id], job_from_row).optional()?)
    }

    /// Job `id`'s state alone (what a followed log checks), without its definition.
    pub fn job_state(&self, id: u64) -> Result<Option<JobState>, StoreError> {
        if !storable(id) {
            return Ok(None);
        }
        let conn = self.lock();
        Ok(conn
            .query_row("SELECT state_json FROM jobs WHERE id = ?1", [id], |row| {
                json_column(row, 0)
            })
            .optional()?)
    }

    /// Records the members of a job submitted before the store kept them, found once
    /// by validating its definition.
    pub fn set_members(&self, id: u64, members: &[Member]) -> Result<(), StoreError> {
        if !storable(id) {
            return Err(StoreError::NoSuchJob(id));
        }
        let changed = self.lock().execute(
            "UPDATE jobs SET members = ?2 WHERE id = ?1",
            params![id, serde_json::to_string(members)?],
        )?;
        if changed == 0 {
            return Err(StoreError::NoSuchJob(id));
        }
        Ok(())
    }

    /// Jobs, newest first, all or only those in the state named `state` ("running").
    pub fn jobs(&self, state: Option<&str>) -> Result<Vec<JobRecord>, StoreError> {
        if let Some(name) = state.filter(|s| !JOB_STATE_NAMES.contains(s)) {
            return Err(StoreError::UnknownState(name.to_string()));
        }
        let conn = self.lock();
        let sql = format!("{JOB_COLUMNS} WHERE ?1 IS NULL OR state = ?1 ORDER BY id DESC");
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map([state], job_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The queue, oldest first, without the job definitions: what a scheduling pass
    /// reads every time (definitions are read once per job, see [`Store::job`]).
    pub fn queue(&self) -> Result<Vec<Queued>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT id, priority, submitted_at FROM jobs WHERE state = 'submitted' ORDER BY id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(Queued {
                id: row.get(0)?,
                priority: row.get(1)?,
                submitted_at: row.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Applies `event` to job `id` and returns the new state. Finishing frees the job's
    /// devices. (To schedule a job use [`Store::reserve`], which also takes devices.)
    pub fn apply(&self, id: u64, event: JobEvent) -> Result<JobState, StoreError> {
        self.write(|tx| transition(tx, id, event))
    }

    /// Gives `hostnames` to job `job_id`, all or none: each must be schedulable and the
    /// job queued, else nothing changes and the error names the first culprit.
    pub fn reserve(&self, job_id: u64, hostnames: &[String]) -> Result<(), StoreError> {
        self.write(|tx| {
            transition(tx, job_id, JobEvent::Scheduled)?;
            let reserved = serde_json::to_string(&DeviceState::Reserved(job_id))?;
            for hostname in hostnames {
                // Checked one by one after the previous ones were taken, so a hostname
                // listed twice is refused too; any error rolls the whole lot back.
                let device = device_in(tx, hostname)?
                    .ok_or_else(|| StoreError::NoSuchDevice(hostname.clone()))?;
                if !schedulable(device.state, device.health) {
                    return Err(StoreError::DeviceNotFree {
                        hostname: hostname.clone(),
                        state: device.state,
                        health: device.health,
                    });
                }
                tx.execute(
                    "UPDATE devices SET state = ?2, job_id = ?3 WHERE hostname = ?1",
                    params![hostname, reserved, job_id],
                )?;
            }
            tracing::info!(job = job_id, devices = ?hostnames, "devices reserved");
            Ok(())
        })
    }

    /// The job starts running on the devices reserved for it.
    pub fn start(&self, job_id: u64) -> Result<(), StoreError> {
        self.write(|tx| transition(tx, job_id, JobEvent::Started).map(drop))
    }

    /// The job ended with `outcome` (a job being canceled ends canceled whatever its
    /// nodes did); its devices become idle. Returns the final state.
    pub fn finish(
        &self,
        job_id: u64,
        outcome: &Outcome,
        results: Option<&serde_json::Value>,
    ) -> Result<JobState, StoreError> {
        self.write(|tx| {
            // An infrastructure failure leaves the job's devices not known to be good
            // (LAVA's "unknown"): still schedulable, but an admin sees which devices
            // had trouble. Set before the transition releases them.
            if matches!(outcome.error, Some((ErrorClass::Infrastructure, _))) {
                tx.execute(
                    "UPDATE devices SET health = ?2 WHERE job_id = ?1 AND health = ?3",
                    params![
                        job_id,
                        enum_text(&DeviceHealth::Unknown)?,
                        enum_text(&DeviceHealth::Good)?
                    ],
                )?;
            }
            let state = transition(tx, job_id, JobEvent::Ended(outcome.clone()))?;
            let results = results.map(serde_json::to_string).transpose()?;
            tx.execute(
                "UPDATE jobs SET results = ?2 WHERE id = ?1",
                params![job_id, results],
            )?;
            Ok(state)
        })
    }

    /// After a restart nothing is running any more: every job that held devices ends
    /// incomplete (an infrastructure error, so CI may retry it) and its devices are
    /// freed; queued jobs stay queued. Returns the ids it finished.
    pub fn recover_after_restart(&self) -> Result<Vec<u64>, StoreError> {
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

    /// Makes the devices table match the lab files: new devices come in idle with
    /// unknown health; known ones keep their state and health; devices gone from the lab
    /// are retired (and offline once no job holds them). A device that comes back after
    /// being retired this way is idle with unknown health again.
    pub fn sync_devices(&self, devices: &[(String, String)]) -> Result<(), StoreError> {
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
            for (hostname, device_type) in devices {
                tx.execute("INSERT OR IGNORE INTO temp.lab VALUES (?1)", [hostname])?;
                tx.execute(
                    "INSERT INTO devices (hostname, device_type, state, health)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (hostname) DO UPDATE SET device_type = excluded.device_type",
                    params![hostname, device_type, idle, unknown],
                )?;
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

    pub fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!("{DEVICE_COLUMNS} ORDER BY hostname"))?;
        let rows = stmt.query_map([], device_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Sets what an admin says about a device; its state is left alone.
    pub fn set_device_health(
        &self,
        hostname: &str,
        health: DeviceHealth,
    ) -> Result<(), StoreError> {
        let changed = self.lock().execute(
            "UPDATE devices SET health = ?2 WHERE hostname = ?1",
            params![hostname, enum_text(&health)?],
        )?;
        if changed == 0 {
            return Err(StoreError::NoSuchDevice(hostname.to_string()));
        }
        tracing::info!(device = hostname, ?health, "device health set");
        Ok(())
    }

    /// A new API token named `name` that may do anything.
    pub fn create_token(&self, name: &str) -> Result<String, StoreError> {
        self.create_scoped_token(name, TokenScope::ReadWrite)
    }

    /// A new API token named `name` with `scope`. The secret is returned once and never
    /// stored: only its SHA-256 is, so a copy of the database grants nothing.
    pub fn create_scoped_token(&self, name: &str, scope: TokenScope) -> Result<String, StoreError> {
        let secret = hex::encode(rand::random::<[u8; 32]>());
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
                Err(StoreError::DuplicateToken(name.to_string()))
            }
            Err(e) => Err(e.into()),
            Ok(_) => {
                tracing::info!(token = name, "API token created");
                Ok(secret)
            }
        }
    }

    /// The name of the token `token`, or `None` if it is not one of ours.
    pub fn check_token(&self, token: &str) -> Result<Option<String>, StoreError> {
        Ok(self.token_scope(token)?.map(|(name, _)| name))
    }

    /// The name and scope of the token `token`, or `None` if it is not one of ours.
    pub fn token_scope(&self, token: &str) -> Result<Option<(String, TokenScope)>, StoreError> {
        let found = self
            .lock()
            .query_row(
                "SELECT name, read_only FROM tokens WHERE sha256 = ?1",
                [sha256_hex(token)],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, bool>(1)?)),
            )
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
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let known = MIGRATIONS.len();
    let start = usize::try_from(found)
        .ok()
        .filter(|v| *v <= known)
        .ok_or(StoreError::SchemaTooNew { found, known })?;
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
fn transition(tx: &Connection, id: u64, event: JobEvent) -> Result<JobState, StoreError> {
    if !storable(id) {
        return Err(StoreError::NoSuchJob(id));
    }
    let json: String = tx
        .query_row("SELECT state_json FROM jobs WHERE id = ?1", [id], |row| {
            row.get(0)
        })
        .optional()?
        .ok_or(StoreError::NoSuchJob(id))?;
    let current: JobState = serde_json::from_str(&json)?;
    let next = current
        .apply(event)
        .map_err(|source| StoreError::Illegal { job: id, source })?;
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
fn write_state(tx: &Connection, id: u64, state: &JobState) -> Result<(), StoreError> {
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
fn release_devices(tx: &Connection, id: u64) -> Result<(), StoreError> {
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

fn device_in(tx: &Connection, hostname: &str) -> Result<Option<DeviceRecord>, StoreError> {
    let sql = format!("{DEVICE_COLUMNS} WHERE hostname = ?1");
    Ok(tx.query_row(&sql, [hostname], device_from_row).optional()?)
}

const JOB_COLUMNS: &str = "SELECT id, name, definition, priority, state_json, submitted_at,
    started_at, ended_at, results, members FROM jobs";

/// Whether `id` can be a job's id: SQLite's integers are signed 64-bit, so a larger id
/// names no job (rather than failing to bind as a query parameter).
fn storable(id: u64) -> bool {
    i64::try_from(id).is_ok()
}

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    Ok(JobRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        definition: row.get(2)?,
        priority: row.get(3)?,
        state: json_column(row, 4)?,
        submitted_at: row.get(5)?,
        started_at: row.get(6)?,
        ended_at: row.get(7)?,
        results: row
            .get::<_, Option<String>>(8)?
            .map(|text| parse_json(8, &text))
            .transpose()?,
        members: row
            .get::<_, Option<String>>(9)?
            .map(|text| parse_json(9, &text))
            .transpose()?,
    })
}

const DEVICE_COLUMNS: &str = "SELECT hostname, device_type, state, health FROM devices";

fn device_from_row(row: &Row<'_>) -> rusqlite::Result<DeviceRecord> {
    let health: String = row.get(3)?;
    Ok(DeviceRecord {
        hostname: row.get(0)?,
        device_type: row.get(1)?,
        state: json_column(row, 2)?,
        // Stored as the bare serde name ("good"), so it reads back as a JSON string.
        health: serde_json::from_value(serde_json::Value::String(health))
            .map_err(|e| conversion_error(3, e))?,
    })
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

/// A unit enum's serde name ("incomplete"), the same text the API shows.
fn enum_text<T: Serialize>(value: &T) -> Result<String, StoreError> {
    Ok(serde_json::to_string(value)?.trim_matches('"').to_string())
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Unix seconds now (0 on a clock set before 1970 rather than failing a write).
fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use states::Health;

    fn temp_store() -> (tempfile::TempDir, std::path::PathBuf, Store) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dispatcher.sqlite");
        let store = Store::open(&path).unwrap();
        (dir, path, store)
    }

    fn lab(names: &[&str]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|n| (n.to_string(), "kvm".to_string()))
            .collect()
    }

    fn hosts(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn device_state(store: &Store, hostname: &str) -> DeviceState {
        let devices = store.devices().unwrap();
        devices
            .into_iter()
            .find(|d| d.hostname == hostname)
            .unwrap()
            .state
    }

    fn job_state(store: &Store, id: u64) -> JobState {
        store.job(id).unwrap().unwrap().state
    }

    #[test]
    fn a_job_lives_through_its_states_and_frees_its_devices() {
        let (_dir, _path, store) = temp_store();
        store.sync_devices(&lab(&["kvm-01", "kvm-02"])).unwrap();
        let definition = r#"{"job_name": "boot", "priority": "high"}"#;
        let id = store.submit(Some("boot"), definition, 100).unwrap();
        let job = store.job(id).unwrap().unwrap();
        assert_eq!(job.state, JobState::Submitted);
        assert_eq!(job.definition, definition, "the definition is kept as is");
        assert_eq!((job.priority, job.started_at), (100, None));

        store.reserve(id, &hosts(&["kvm-01", "kvm-02"])).unwrap();
        assert_eq!(job_state(&store, id), JobState::Scheduled);
        assert_eq!(device_state(&store, "kvm-02"), DeviceState::Reserved(id));

        store.start(id).unwrap();
        assert_eq!(job_state(&store, id), JobState::Running);
        assert_eq!(device_state(&store, "kvm-01"), DeviceState::Running(id));
        assert!(store.job(id).unwrap().unwrap().started_at.is_some());

        let results = json!({"lava": {"boot": "pass"}});
        let outcome = Outcome::incomplete(ErrorClass::Test, "lava-test-raise");
        let end = store.finish(id, &outcome, Some(&results)).unwrap();
        assert_eq!(end, JobState::Finished(outcome));
        let job = store.job(id).unwrap().unwrap();
        assert_eq!(job.state, end, "the outcome round-trips exactly");
        assert_eq!(job.results, Some(results));
        assert!(job.ended_at.is_some());
        assert_eq!(device_state(&store, "kvm-01"), DeviceState::Idle);
        assert_eq!(device_state(&store, "kvm-02"), DeviceState::Idle);

        let second = store.submit(None, "{}", 50).unwrap();
        let all: Vec<u64> = store.jobs(None).unwrap().iter().map(|j| j.id).collect();
        assert_eq!(all, [second, id], "newest first");
        let finished = store.jobs(Some("finished")).unwrap();
        assert_eq!(finished.len(), 1);
        assert_eq!(finished[0].id, id);
        assert!(matches!(
            store.jobs(Some("done")),
            Err(StoreError::UnknownState(_))
        ));
    }

    #[test]
    fn canceling_a_scheduled_job_frees_its_devices() {
        let (_dir, _path, store) = temp_store();
        store.sync_devices(&lab(&["kvm-01"])).unwrap();
        let id = store.submit(None, "{}", 50).unwrap();
        store.reserve(id, &hosts(&["kvm-01"])).unwrap();
        let state = store.apply(id, JobEvent::CancelRequested).unwrap();
        assert!(matches!(
            state,
            JobState::Finished(Outcome {
                health: Health::Canceled,
                ..
            })
        ));
        assert_eq!(device_state(&store, "kvm-01"), DeviceState::Idle);
    }

    #[test]
    fn an_illegal_transition_is_refused_and_changes_nothing() {
        let (_dir, _path, store) = temp_store();
        let id = store.submit(None, "{}", 50).unwrap();
        let before = store.job(id).unwrap().unwrap();

        let err = store.apply(id, JobEvent::Started).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("submitted") && message.contains("Started"),
            "{message}"
        );
        assert!(matches!(
            store.finish(id, &Outcome::complete(), Some(&json!({"x": 1}))),
            Err(StoreError::Illegal { .. })
        ));
        assert_eq!(store.job(id).unwrap().unwrap(), before);
        assert!(matches!(
            store.apply(id + 1, JobEvent::Started),
            Err(StoreError::NoSuchJob(_))
        ));
    }

    #[test]
    fn reserve_is_all_or_nothing() {
        let (_dir, _path, store) = temp_store();
        store
            .sync_devices(&lab(&["kvm-01", "kvm-02", "kvm-03", "kvm-04"]))
            .unwrap();
        let first = store.submit(None, "{}", 50).unwrap();
        store.reserve(first, &hosts(&["kvm-02"])).unwrap();
        store
            .set_device_health("kvm-04", DeviceHealth::Maintenance)
            .unwrap();

        let second = store.submit(None, "{}", 50).unwrap();
        // kvm-01 would be taken before the busy kvm-02 is reached: it must be rolled back.
        let err = store
            .reserve(second, &hosts(&["kvm-01", "kvm-02", "kvm-03"]))
            .unwrap_err();
        assert!(err.to_string().contains("kvm-02"), "{err}");
        assert_eq!(job_state(&store, second), JobState::Submitted);
        assert_eq!(device_state(&store, "kvm-01"), DeviceState::Idle);
        assert_eq!(device_state(&store, "kvm-02"), DeviceState::Reserved(first));
        assert_eq!(device_state(&store, "kvm-03"), DeviceState::Idle);

        let err = store
            .reserve(second, &hosts(&["kvm-01", "kvm-04"]))
            .unwrap_err();
        assert!(
            err.to_string().contains("kvm-04"),
            "maintenance is not free"
        );
        let err = store
            .reserve(second, &hosts(&["kvm-01", "kvm-01"]))
            .unwrap_err();
        assert!(
            err.to_string().contains("kvm-01"),
            "a device serves one node"
        );
        let err = store
            .reserve(second, &hosts(&["kvm-01", "kvm-99"]))
            .unwrap_err();
        assert!(matches!(err, StoreError::NoSuchDevice(ref h) if h == "kvm-99"));
        assert_eq!(device_state(&store, "kvm-01"), DeviceState::Idle);

        // A job that is not queued cannot take devices either.
        assert!(matches!(
            store.reserve(first, &hosts(&["kvm-03"])),
            Err(StoreError::Illegal { .. })
        ));
        assert_eq!(device_state(&store, "kvm-03"), DeviceState::Idle);
        store
            .reserve(second, &hosts(&["kvm-01", "kvm-03"]))
            .unwrap();
        assert_eq!(
            device_state(&store, "kvm-03"),
            DeviceState::Reserved(second)
        );
    }

    #[test]
    fn reopening_the_file_keeps_everything() {
        let (_dir, path, store) = temp_store();
        store.sync_devices(&lab(&["kvm-01", "kvm-02"])).unwrap();
        store
            .set_device_health("kvm-02", DeviceHealth::Bad)
            .unwrap();
        let id = store.submit(Some("kept"), r#"{"a": 1}"#, 7).unwrap();
        store.reserve(id, &hosts(&["kvm-01"])).unwrap();
        store.start(id).unwrap();
        let token = store.create_token("ci").unwrap();
        let job = store.job(id).unwrap().unwrap();
        let devices = store.devices().unwrap();
        drop(store);

        let store = Store::open(&path).unwrap();
        assert_eq!(store.job(id).unwrap().unwrap(), job);
        assert_eq!(store.devices().unwrap(), devices);
        assert_eq!(devices[1].health, DeviceHealth::Bad);
        assert_eq!(store.check_token(&token).unwrap().as_deref(), Some("ci"));
        let next = store.submit(None, "{}", 50).unwrap();
        assert!(next > id, "ids are not reused");

        let raw = Connection::open(&path).unwrap();
        let version: i64 = raw
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        let mode: String = raw
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!((version, mode.as_str()), (3, "wal"));
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let (_dir, path, store) = temp_store();
        drop(store);
        let raw = Connection::open(&path).unwrap();
        raw.pragma_update(None, "user_version", 4).unwrap();
        drop(raw);
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::SchemaTooNew { found: 4, known: 3 })
        ));
    }

    #[test]
    fn a_database_of_the_previous_version_gains_the_members_column() {
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

        let store = Store::open(&path).unwrap();
        let old = store.jobs(None).unwrap()[0].clone();
        assert_eq!(old.members, None, "not known yet");
        let members = vec![Member {
            node: "host".into(),
            role: "host".into(),
        }];
        store.set_members(old.id, &members).unwrap();
        assert_eq!(store.job(old.id).unwrap().unwrap().members, Some(members));
        let new = store.submit_with_members(None, "{}", 50, &[]).unwrap();
        assert_eq!(store.job(new).unwrap().unwrap().members, Some(vec![]));
        assert_eq!(store.job_state(new).unwrap(), Some(JobState::Submitted));
    }

    #[test]
    fn an_id_past_sqlite_integers_names_no_job() {
        let (_dir, _path, store) = temp_store();
        assert_eq!(store.job(u64::MAX).unwrap(), None);
        assert_eq!(store.job_state(u64::MAX).unwrap(), None);
        assert!(matches!(
            store.apply(u64::MAX, JobEvent::CancelRequested),
            Err(StoreError::NoSuchJob(u64::MAX))
        ));
    }

    #[test]
    fn recovery_after_restart_ends_active_jobs_and_keeps_the_queue() {
        let (_dir, path, store) = temp_store();
        store
            .sync_devices(&lab(&["kvm-01", "kvm-02", "kvm-03", "kvm-04"]))
            .unwrap();
        let running = store.submit(None, "{}", 50).unwrap();
        store
            .reserve(running, &hosts(&["kvm-01", "kvm-02"]))
            .unwrap();
        store.start(running).unwrap();
        let scheduled = store.submit(None, "{}", 50).unwrap();
        store.reserve(scheduled, &hosts(&["kvm-03"])).unwrap();
        let canceling = store.submit(None, "{}", 50).unwrap();
        store.reserve(canceling, &hosts(&["kvm-04"])).unwrap();
        store.start(canceling).unwrap();
        store.apply(canceling, JobEvent::CancelRequested).unwrap();
        let done = store.submit(None, "{}", 50).unwrap();
        let canceled = store.apply(done, JobEvent::CancelRequested).unwrap();
        let queued = store.submit(None, "{}", 50).unwrap();
        drop(store);

        let store = Store::open(&path).unwrap();
        let ended = store.recover_after_restart().unwrap();
        assert_eq!(ended, [running, scheduled, canceling]);
        let restarted = JobState::Finished(Outcome::incomplete(
            ErrorClass::Infrastructure,
            RESTART_MESSAGE,
        ));
        for id in [running, scheduled, canceling] {
            assert_eq!(job_state(&store, id), restarted);
            assert!(store.job(id).unwrap().unwrap().ended_at.is_some());
        }
        for device in store.devices().unwrap() {
            assert_eq!(device.state, DeviceState::Idle, "{}", device.hostname);
        }
        assert_eq!(
            job_state(&store, done),
            canceled,
            "finished jobs are untouched"
        );
        assert_eq!(job_state(&store, queued), JobState::Submitted);
        assert!(store.recover_after_restart().unwrap().is_empty());
    }

    #[test]
    fn syncing_devices_keeps_known_ones_and_retires_departed_ones() {
        let (_dir, _path, store) = temp_store();
        store.sync_devices(&lab(&["a", "b", "c"])).unwrap();
        store.set_device_health("a", DeviceHealth::Good).unwrap();
        let id = store.submit(None, "{}", 50).unwrap();
        store.reserve(id, &hosts(&["c"])).unwrap();

        store.sync_devices(&lab(&["a", "d"])).unwrap();
        let by_name = |name: &str| {
            store
                .devices()
                .unwrap()
                .into_iter()
                .find(|d| d.hostname == name)
                .unwrap()
        };
        assert_eq!(by_name("a").health, DeviceHealth::Good, "kept");
        assert_eq!(
            (by_name("b").state, by_name("b").health),
            (DeviceState::Offline, DeviceHealth::Retired)
        );
        // A departed device still holding a job keeps it until the job ends.
        assert_eq!(by_name("c").state, DeviceState::Reserved(id));
        assert_eq!(by_name("c").health, DeviceHealth::Retired);
        assert_eq!(
            (by_name("d").state, by_name("d").health),
            (DeviceState::Idle, DeviceHealth::Unknown)
        );
        store.apply(id, JobEvent::CancelRequested).unwrap();
        assert_eq!(by_name("c").state, DeviceState::Offline);

        store.sync_devices(&lab(&["a", "b", "d"])).unwrap();
        assert_eq!(
            (by_name("b").state, by_name("b").health),
            (DeviceState::Idle, DeviceHealth::Unknown),
            "a device back in the lab is usable again"
        );
        assert!(matches!(
            store.set_device_health("zz", DeviceHealth::Bad),
            Err(StoreError::NoSuchDevice(ref h)) if h == "zz"
        ));
    }

    #[test]
    fn an_infrastructure_failure_leaves_its_devices_unknown() {
        let (_dir, _path, store) = temp_store();
        store.sync_devices(&lab(&["kvm-01", "kvm-02"])).unwrap();
        for host in ["kvm-01", "kvm-02"] {
            store.set_device_health(host, DeviceHealth::Good).unwrap();
        }
        let health = |store: &Store, host: &str| {
            store
                .devices()
                .unwrap()
                .into_iter()
                .find(|d| d.hostname == host)
                .map(|d| (d.state, d.health))
                .unwrap()
        };
        let failed = store.submit(None, "{}", 50).unwrap();
        store.reserve(failed, &hosts(&["kvm-01"])).unwrap();
        store.start(failed).unwrap();
        store
            .finish(
                failed,
                &Outcome::incomplete(ErrorClass::Infrastructure, "host lost"),
                None,
            )
            .unwrap();
        assert_eq!(
            health(&store, "kvm-01"),
            (DeviceState::Idle, DeviceHealth::Unknown)
        );
        // A test failure says nothing about the device.
        let test_failed = store.submit(None, "{}", 50).unwrap();
        store.reserve(test_failed, &hosts(&["kvm-02"])).unwrap();
        store.start(test_failed).unwrap();
        store
            .finish(
                test_failed,
                &Outcome::incomplete(ErrorClass::Test, "a case failed"),
                None,
            )
            .unwrap();
        assert_eq!(
            health(&store, "kvm-02"),
            (DeviceState::Idle, DeviceHealth::Good)
        );
    }

    #[test]
    fn a_read_only_token_says_so() {
        let (_dir, _path, store) = temp_store();
        let reader = store
            .create_scoped_token("dashboard", TokenScope::ReadOnly)
            .unwrap();
        let writer = store.create_token("ci").unwrap();
        assert_eq!(
            store.token_scope(&reader).unwrap(),
            Some(("dashboard".to_string(), TokenScope::ReadOnly))
        );
        assert_eq!(
            store.token_scope(&writer).unwrap(),
            Some(("ci".to_string(), TokenScope::ReadWrite))
        );
        assert_eq!(store.token_scope("nope").unwrap(), None);
    }

    #[test]
    fn tokens_are_stored_only_as_hashes() {
        let (_dir, path, store) = temp_store();
        let secret = store.create_token("ci").unwrap();
        let other = store.create_token("admin").unwrap();
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

        assert_eq!(store.check_token(&secret).unwrap().as_deref(), Some("ci"));
        assert_eq!(store.check_token(&other).unwrap().as_deref(), Some("admin"));
        assert_eq!(
            store.check_token(&ci[1]).unwrap(),
            None,
            "the hash is no token"
        );
        assert_eq!(store.check_token("wrong").unwrap(), None);
        assert!(matches!(
            store.create_token("ci"),
            Err(StoreError::DuplicateToken(ref n)) if n == "ci"
        ));
        assert_eq!(store.check_token(&secret).unwrap().as_deref(), Some("ci"));
    }
}
