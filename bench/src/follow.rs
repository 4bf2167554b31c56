//! Following a running job's log: many clients follow one job's log over HTTP while
//! its test shell prints numbered lines at a steady pace; measured are the daemon's
//! CPU time per second of log and whether every follower got every line.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Barrier;

use crate::lab::Lab;
use crate::report::Table;

/// Lines the job prints, one every [`PACE_MS`].
const LINES: usize = 1000;
const PACE_MS: u32 = 10;
/// What each printed line starts with, then its number.
const MARK: &str = "follow-line ";

/// A job on the lab's ssh-host whose test shell prints [`LINES`] numbered lines, one
/// every [`PACE_MS`] ms.
fn paced_job() -> String {
    let step = format!(
        "i=0; while [ $i -lt {LINES} ]; do i=$((i+1)); echo \"{MARK}$i\"; sleep 0.0{PACE_MS}; done"
    );
    system_tests::shell_job("a log followed by many", "ssh-host", &[&step]).to_string()
}

/// What one run with some followers measured.
struct Measured {
    followers: usize,
    /// From the first printed line to the last, as the clock follower saw them.
    log_secs: f64,
    /// The daemon's CPU time over the same span.
    cpu_secs: f64,
    /// Followers (besides the clock) that got every printed line exactly once.
    complete: usize,
}

pub fn run(
    lab: &Lab,
    runtime: &tokio::runtime::Runtime,
    followers: usize,
) -> Result<Table, String> {
    let mut table = Table::new(
        "Following one running job's log",
        "bash scripts/bench.sh follow",
        &[
            "followers",
            "lines",
            "seconds of log",
            "daemon CPU, ms per second of log",
            "followers that got every line",
        ],
    );
    for count in [0, followers] {
        eprintln!("bench: follow, {count} followers");
        let m = runtime.block_on(measure(lab, count))?;
        table.row(vec![
            m.followers.to_string(),
            LINES.to_string(),
            format!("{:.1}", m.log_secs),
            format!("{:.1}", m.cpu_secs * 1e3 / m.log_secs),
            if m.followers == 0 {
                "-".into()
            } else {
                format!("{} of {}", m.complete, m.followers)
            },
        ]);
    }
    table.notes.push(format!(
        "One job on the ssh-host prints {LINES} lines, one every {PACE_MS} ms; each follower \
         is a `GET /api/v1/jobs/ID/log?follow=1` connection opened before the job starts, \
         all in one client process on the same cores as the daemon. CPU is the daemon's \
         user and system time (/proc) from the first printed line to the last, as a further \
         follower saw them; the row without followers is the job alone."
    ));
    Ok(table)
}

async fn measure(lab: &Lab, followers: usize) -> Result<Measured, String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    // Held in the queue until every follower is connected: the device is put in
    // maintenance, the job submitted, the followers attached, the device let go.
    let device = "ssh-host-01";
    lab.api.set_health(device, "maintenance")?;
    let id = lab.api.submit(&paced_job())?;
    let url = format!("{}/api/v1/jobs/{id}/log?follow=1", lab.api.url());
    let connected = Arc::new(Barrier::new(followers + 2));
    let mut tasks = Vec::new();
    for _ in 0..followers {
        tasks.push(tokio::spawn(follow(
            client.clone(),
            url.clone(),
            lab.api.token().to_string(),
            connected.clone(),
            None,
        )));
    }
    let pid = lab.pid();
    let clock = tokio::spawn(follow(
        client.clone(),
        url,
        lab.api.token().to_string(),
        connected.clone(),
        Some(pid),
    ));
    connected.wait().await;
    lab.api.set_health(device, "good")?;
    let clocked = clock.await.map_err(|e| e.to_string())??;
    let mut complete = 0;
    for task in tasks {
        let got = task.await.map_err(|e| e.to_string())??;
        complete += usize::from(got.every_line);
    }
    let state = lab.api.job_state(id)?;
    if state["health"] != "complete" {
        return Err(format!("the followed job ended {state}"));
    }
    let (first, last) = clocked
        .span
        .ok_or("the clock follower did not see every line")?;
    Ok(Measured {
        followers,
        log_secs: last.0.duration_since(first.0).as_secs_f64(),
        cpu_secs: last.1 - first.1,
        complete,
    })
}

/// What a follower got.
struct Followed {
    every_line: bool,
    /// For the clock: when it got the first and the last printed line, and the daemon's
    /// CPU seconds then.
    span: Option<((Instant, f64), (Instant, f64))>,
}

/// Follows the log at `url` to its end, noting which numbered lines came (each must
/// come once); the clock (given the daemon's `pid`) also reads the daemon's CPU time at
/// the first and the last.
async fn follow(
    client: reqwest::Client,
    url: String,
    token: String,
    connected: Arc<Barrier>,
    clock: Option<u32>,
) -> Result<Followed, String> {
    let mut response = client
        .get(&url)
        .header("Authorization", format!("Token {token}"))
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    connected.wait().await;
    if !response.status().is_success() {
        return Err(format!("GET {url}: HTTP {}", response.status()));
    }
    let mut seen = vec![0u32; LINES + 1];
    let mut rest = Vec::new();
    let mut first = None;
    let mut last = None;
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("{url}: {e}"))? {
        rest.extend_from_slice(&chunk);
        let whole = rest.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        for line in rest[..whole].split(|b| *b == b'\n') {
            let Some(n) = number_in(line) else { continue };
            seen[n] += 1;
            if let Some(pid) = clock {
                if n == 1 {
                    first = Some((Instant::now(), cpu_secs(pid)?));
                } else if n == LINES {
                    last = Some((Instant::now(), cpu_secs(pid)?));
                }
            }
        }
        rest.drain(..whole);
    }
    Ok(Followed {
        every_line: seen[1..].iter().all(|n| *n == 1),
        span: first.zip(last),
    })
}

/// The number of a printed line (`"msg":"follow-line N"` in a log line).
fn number_in(line: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(line).ok()?;
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let n = value["msg"]
        .as_str()?
        .trim()
        .strip_prefix(MARK)?
        .parse()
        .ok()?;
    (1..=LINES).contains(&n).then_some(n)
}

/// The user and system CPU time of process `pid`, in seconds.
fn cpu_secs(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // After the command's name in parentheses: state is field 3; utime and stime are
    // fields 14 and 15.
    let after = stat
        .rsplit_once(") ")
        .ok_or("no command name in /proc/PID/stat")?
        .1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64, String> {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<f64>().ok())
            .ok_or_else(|| format!("field {i} of /proc/{pid}/stat"))
    };
    // In USER_HZ ticks, which Linux fixes at 100 a second for /proc.
    Ok((ticks(14)? + ticks(15)?) / 100.0)
}
