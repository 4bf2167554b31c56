//! One worker against several: submissions per second and the time from a
//! submission to its job's start, side by side for one worker on SQLite, one on
//! PostgreSQL and three on one PostgreSQL database (a throwaway server on this
//! machine, reached over its Unix socket).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use system_tests::{ApiClient, Database, WorkerLab, shell_job};

use crate::api::submit_from_all;
use crate::lab::sibling;
use crate::report::Table;
use crate::stats::Sample;

const CLIENTS: usize = 8;
/// Timed submissions per setup.
const SUBMISSIONS: usize = 2000;
/// Jobs started one at a time per setup, for the time from submission to start.
const STARTS: usize = 40;

pub fn run() -> Result<Table, String> {
    let dispatcher = sibling("dispatcher")?;
    let job = shell_job("quick", "ssh-host", &["lava-test-case quick --result pass"]).to_string();
    let mut table = Table::new(
        "Several workers: submissions and the time to start",
        "bash scripts/bench.sh workers",
        &[
            "setup",
            "submissions per second",
            "submission latency, median / p99",
            "submission to start, median / p90",
        ],
    );
    for (label, count, database) in [
        ("1 worker, SQLite", 1, Database::Sqlite),
        ("1 worker, PostgreSQL", 1, Database::Postgres),
        ("3 workers, one PostgreSQL database", 3, Database::Postgres),
    ] {
        eprintln!("bench: workers, {label}");
        let quiet = dispatcher.clone();
        let lab = WorkerLab::start(
            count,
            database,
            |_| vec![],
            "",
            Box::new(move || {
                let mut command = Command::new(&quiet);
                command.env("RUST_LOG", "warn").stderr(Stdio::null());
                command
            }),
        )?;
        let starts = Sample::new(time_to_start(&lab, count, &job)?);
        // Every device in maintenance: the submissions only queue, as on a busy day.
        let admin = lab.api(0);
        for n in 1..=count {
            admin.set_health(&format!("ssh-host-{n:02}"), "maintenance")?;
        }
        let clients = (0..CLIENTS)
            .map(|c| ApiClient::new(&lab.daemons[c % count].url, &lab.token))
            .collect::<Result<Vec<_>, _>>()?;
        let (latencies, wall) = submit_from_all(&clients, &job, SUBMISSIONS)?;
        let submitted = Sample::new(latencies);
        let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
        table.row(vec![
            label.to_string(),
            format!("{:.0}", submitted.len() as f64 / wall.as_secs_f64()),
            format!("{} / {} ms", ms(submitted.median()), ms(submitted.p99())),
            format!("{} / {} ms", ms(starts.median()), ms(starts.quantile(0.9))),
        ]);
    }
    table.notes.push(format!(
        "Each setup: {STARTS} single-device jobs (an `ssh-host` test shell) submitted one \
         at a time to each worker in turn, every device idle, the time from sending the \
         submission to the job's state reading `running` (its state polled every 2 ms); \
         then, every device in maintenance so that jobs only queue, {SUBMISSIONS} \
         submissions of the same {}-byte job from {CLIENTS} clients spread over the \
         workers, each a fresh connection answered once the job is stored. PostgreSQL is \
         Debian's, a cluster made for the run with fsync off (SQLite syncs its WAL).",
        job.len()
    ));
    Ok(table)
}

/// For [`STARTS`] jobs, one at a time, the time from submission to running.
fn time_to_start(lab: &WorkerLab, count: usize, job: &str) -> Result<Vec<Duration>, String> {
    let mut times = Vec::with_capacity(STARTS);
    for i in 0..STARTS {
        let api = lab.api(i % count);
        let sent = Instant::now();
        let id = api.submit(job)?;
        loop {
            let state = api.job_state(id)?;
            if state["state"] == "running" || state["state"] == "finished" {
                break;
            }
            if sent.elapsed() > Duration::from_secs(60) {
                return Err(format!("job {id} did not start within a minute: {state}"));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        times.push(sent.elapsed());
        api.wait_for_state(id, "finished", Duration::from_secs(120))?;
    }
    Ok(times)
}
