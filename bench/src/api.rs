//! The HTTP API under load: vm_group jobs of about 5 KB submitted by concurrent
//! clients, each validated against the schema and stored (SQLite, WAL) before the
//! answer; and the daemon's memory, idle and with a queue.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use system_tests::{ApiClient, SEED_HOST_STEPS};

use crate::lab::{Lab, seed_job};
use crate::report::Table;
use crate::stats::Sample;

const CLIENTS: usize = 8;
/// Timed submissions, on top of [`BACKLOG`].
const SUBMISSIONS: usize = 4000;
/// Jobs queued before the memory is read the first time.
const QUEUED: usize = 50;
/// Jobs queued (behind the running one) before the timed submissions start: a lab's
/// busy day, so the queue's size is part of what each submission costs.
const BACKLOG: usize = 10_000;

/// The seed job padded with harmless host test steps to at least `bytes`.
fn job_of_size(bytes: usize) -> Result<String, String> {
    let mut job = seed_job()?;
    let mut i = 0;
    while job.to_string().len() < bytes {
        job.pointer_mut(SEED_HOST_STEPS)
            .and_then(Value::as_array_mut)
            .ok_or("the seed job's host test has no steps")?
            .push(json!(format!(
                "echo 'padding step {i}, as large as a real job'"
            )));
        i += 1;
    }
    Ok(job.to_string())
}

/// A job that keeps the device busy: the host's test shell sleeps and never starts
/// its VMs.
fn long_job() -> Result<String, String> {
    let mut job = seed_job()?;
    job["vm_group"]["auto_start_vms"] = json!(false);
    *job.pointer_mut(SEED_HOST_STEPS)
        .ok_or("the seed job's host test has no steps")? = json!(["sleep 3600"]);
    Ok(job.to_string())
}

/// Idle memory, taken before any job.
pub fn idle_rss(lab: &Lab) -> u64 {
    lab.rss_kib()
}

pub fn run(lab: &Lab, idle_rss_kib: u64) -> Result<Table, String> {
    // One job running (it holds the only device) and 50 behind it.
    let running = lab.api.submit(&long_job()?)?;
    let seed = seed_job()?.to_string();
    for _ in 0..QUEUED {
        lab.api.submit(&seed)?;
    }
    // Until the job runs: the scheduler starts it as soon as it is stored, and the
    // daemon's memory is read with the job under way.
    lab.api
        .wait_for_state(running, "running", Duration::from_secs(60))
        .map_err(|e| format!("job {running} did not start: {e}"))?;
    let busy_rss = lab.rss_kib();
    let job = job_of_size(5 * 1024)?;
    // A client each; every submission is a fresh connection.
    let clients = (0..CLIENTS)
        .map(|_| ApiClient::new(lab.api.url(), lab.api.token()))
        .collect::<Result<Vec<_>, _>>()?;
    eprintln!("bench: api, {BACKLOG} jobs queued first");
    let (_, backlog_wall) = submit_from_all(&clients, &job, BACKLOG - QUEUED)?;
    let backlog_rss = lab.rss_kib();
    eprintln!(
        "bench: api, {SUBMISSIONS} submissions of {} bytes by {CLIENTS} clients",
        job.len()
    );
    let (latencies, wall) = submit_from_all(&clients, &job, SUBMISSIONS)?;
    let loaded_rss = lab.rss_kib();
    let sample = Sample::new(latencies);
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    let mut table = Table::new(
        "API: job submissions and the daemon's memory",
        "bash scripts/bench.sh api",
        &["measure", "value"],
    );
    let count = sample.len();
    let size = job.len();
    table.row(vec![
        format!("submissions of a {size}-byte vm_group job, {CLIENTS} clients, {BACKLOG} queued"),
        count.to_string(),
    ]);
    table.row(vec![
        "submissions per second".into(),
        format!("{:.0}", count as f64 / wall.as_secs_f64()),
    ]);
    table.row(vec!["latency, median".into(), ms(sample.median())]);
    table.row(vec!["latency, p99".into(), ms(sample.p99())]);
    table.row(vec![
        "daemon RSS, idle".into(),
        format!("{:.1} MiB", idle_rss_kib as f64 / 1024.0),
    ]);
    table.row(vec![
        format!("daemon RSS, 1 running + {QUEUED} queued jobs"),
        format!("{:.1} MiB", busy_rss as f64 / 1024.0),
    ]);
    table.row(vec![
        format!("daemon RSS, 1 running + {BACKLOG} queued jobs"),
        format!("{:.1} MiB", backlog_rss as f64 / 1024.0),
    ]);
    table.row(vec![
        format!("daemon RSS, 1 running + {} queued jobs", BACKLOG + count),
        format!("{:.1} MiB", loaded_rss as f64 / 1024.0),
    ]);
    table.notes.push(format!(
        "Each submission is a fresh HTTP/1.1 connection with a token, answered 201 once the \
         job is validated against the schema and committed to SQLite. The daemon runs \
         with the overhead benchmark's jobs already behind it (when run by `all`); the \
         {BACKLOG} jobs queued before the timed submissions took {:.1} s to submit.",
        backlog_wall.as_secs_f64()
    ));
    Ok(table)
}

/// `total` submissions of `job` shared among `clients`, each on its own thread: every
/// submission's latency, and the wall time of them all.
pub(crate) fn submit_from_all(
    clients: &[ApiClient],
    job: &str,
    total: usize,
) -> Result<(Vec<Duration>, Duration), String> {
    let started = Instant::now();
    let latencies = std::thread::scope(|scope| {
        let workers: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(i, api)| {
                // The first clients take one more when `total` does not divide evenly.
                let share = total / clients.len() + usize::from(i < total % clients.len());
                scope.spawn(move || {
                    let mut times = Vec::with_capacity(share);
                    for _ in 0..share {
                        let t = Instant::now();
                        api.submit(job)?;
                        times.push(t.elapsed());
                    }
                    Ok::<_, String>(times)
                })
            })
            .collect();
        let mut all = Vec::new();
        for worker in workers {
            all.extend(
                worker
                    .join()
                    .map_err(|_| "a client panicked".to_string())??,
            );
        }
        Ok::<_, String>(all)
    })?;
    Ok((latencies, started.elapsed()))
}
