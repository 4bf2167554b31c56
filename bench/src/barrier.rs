//! Barrier latency: one `lava-sync` round across N nodes on loopback.
//!
//! Four ways to run the same barrier: our coordinator over gRPC (one connection per
//! node, as separate test shells have), our coordinator's LAVA port driven by LAVA's own
//! client code (Debian's lava-dispatcher `MultinodeProtocol`, one thread per node), and
//! Debian's `lava-coordinator` driven by the same client code with `poll_delay` 3 (as
//! Debian ships it) and 1. A round starts with every node released at once and ends when
//! the last node has its reply.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coordinator::AdminClient;
use tokio::sync::Barrier;

use crate::local::{self, ADMIN_TOKEN};
use crate::report::Table;
use crate::stats::{Sample, human};

/// How long Debian's coordinator gets for a group of over 256 nodes.
const DEBIAN_BUDGET: Duration = Duration::from_secs(120);

/// What every node does at once in a round.
#[derive(Clone, Copy)]
enum Call {
    /// `lava-sync`: the barrier.
    Sync,
    /// `lava-send` of a message of its own: answered at once, with no barrier, so the
    /// round is what a call per node costs the transport and the runtime (the floor
    /// under any barrier).
    Send,
}

/// Rounds of `call` over gRPC, one connection per node.
async fn grpc_rounds(
    endpoint: &str,
    n: usize,
    rounds: usize,
    call: Call,
) -> Result<Vec<Duration>, String> {
    let err = |e: coordinator::ClientError| e.to_string();
    let mut admin = AdminClient::connect(endpoint, ADMIN_TOKEN)
        .await
        .map_err(err)?;
    let nodes: Vec<(String, String)> = (0..n).map(|i| (format!("node-{i}"), "r".into())).collect();
    let (group, clients) = local::group(&mut admin, endpoint, &nodes).await?;
    let mut times = Vec::with_capacity(rounds);
    // Round "warm" opens every connection; it is not counted.
    for round in 0..=rounds {
        let start_line = Arc::new(Barrier::new(n + 1));
        let id = format!("round-{round}");
        let tasks: Vec<_> = clients
            .iter()
            .cloned()
            .map(|mut c| {
                let (start_line, id) = (start_line.clone(), id.clone());
                tokio::spawn(async move {
                    start_line.wait().await;
                    match call {
                        Call::Sync => c.sync(&id, None).await,
                        Call::Send => c.send(&id, std::collections::BTreeMap::new()).await,
                    }
                })
            })
            .collect();
        start_line.wait().await;
        let started = Instant::now();
        for task in tasks {
            task.await.map_err(|e| e.to_string())?.map_err(err)?;
        }
        if round > 0 {
            times.push(started.elapsed());
        }
    }
    admin.close_group(&group).await.map_err(err)?;
    Ok(times)
}

/// Sync rounds by LAVA's own client code (tests/lava-compat/lava_clients.py barrier).
/// For each poll delay in `delays`: the round times, and how many connections the
/// coordinator reset or refused on the way. One group of LAVA clients does every delay
/// in turn (tests/lava-compat/lava_clients.py barrier).
fn lava_client_rounds(
    port: u16,
    n: usize,
    rounds: usize,
    delays: &[u32],
    give_up: Option<Duration>,
) -> Result<Vec<(Vec<Duration>, u64)>, String> {
    let script = system_tests::repo_root().join("tests/lava-compat/lava_clients.py");
    let list: Vec<String> = delays.iter().map(u32::to_string).collect();
    let output = Command::new("python3")
        .arg(&script)
        .args([
            "barrier",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .args(["--nodes", &n.to_string(), "--rounds", &rounds.to_string()])
        .args(["--poll-delays", &list.join(",")])
        .args([
            "--give-up",
            &give_up.map_or(0.0, |g| g.as_secs_f64()).to_string(),
        ])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(text.trim())
        .map_err(|e| format!("lava_clients.py barrier printed {text:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!("LAVA clients failed: {}", report["errors"]));
    }
    Ok(list
        .iter()
        .map(|delay| {
            let times = report["rounds_s"][delay]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(serde_json::Value::as_f64)
                        .map(Duration::from_secs_f64)
                        .collect()
                })
                .unwrap_or_default();
            let resets = report["connection_errors"][delay].as_u64().unwrap_or(0);
            (times, resets)
        })
        .collect())
}

/// Debian's `lava-coordinator`, stopped when dropped.
struct LavaCoordinator {
    child: Child,
    port: u16,
}

impl LavaCoordinator {
    fn start() -> Result<Self, String> {
        let port = system_tests::free_port();
        let script = system_tests::repo_root().join("tests/lava-compat/lava_clients.py");
        let child = Command::new("python3")
            .arg(&script)
            .args([
                "reference",
                "--port",
                &port.to_string(),
                "--loglevel",
                "INFO",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("lava-coordinator: {e}"))?;
        let mut this = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        // It prints nothing when it listens; a connection is the only sign. (An empty
        // connection only makes it log "Invalid message".)
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || this.child.try_wait().ok().flatten().is_some() {
                return Err("Debian's lava-coordinator did not start listening".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(this)
    }
}

impl Drop for LavaCoordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One table row; a sample with no round (the clients gave up after `budget`) shows as
/// more than the budget.
fn row(
    table: &mut Table,
    n: usize,
    who: &str,
    sample: &Sample,
    reference: &Sample,
    budget: Duration,
) {
    let median = |s: &Sample| {
        if s.len() == 0 {
            budget.as_secs_f64()
        } else {
            s.median().as_secs_f64().max(1e-9)
        }
    };
    let ratio = match (reference.len(), sample.len()) {
        (_, 0) => "-".to_string(),
        (0, _) => format!("> {:.0}x", median(reference) / median(sample)),
        _ => format!("{:.0}x", median(reference) / median(sample)),
    };
    let (mid, tail) = if sample.len() == 0 {
        (
            format!("none within {:.0} s", budget.as_secs_f64()),
            "-".to_string(),
        )
    } else {
        (human(sample.median()), human(sample.p99()))
    };
    table.row(vec![
        n.to_string(),
        who.to_string(),
        sample.len().to_string(),
        mid,
        tail,
        ratio,
    ]);
}

/// Runs every variant for each N in `sizes`.
pub fn run(runtime: &tokio::runtime::Runtime, sizes: &[usize]) -> Result<Table, String> {
    let running = local::start(runtime, true)?;
    let endpoint = format!("http://{}", running.grpc_addr);
    // The same, keeping every group on disk (every arrival written before it is
    // answered), to show what surviving a restart costs.
    let state_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let keeping = local::start_keeping(runtime, false, Some(state_dir.path()))?;
    let keeping_endpoint = format!("http://{}", keeping.grpc_addr);
    let legacy_port = running
        .legacy_addr
        .map(|a| a.port())
        .ok_or("the coordinator serves no LAVA port")?;
    let debian = LavaCoordinator::start()?;
    let mut table = Table::new(
        "Barrier: one `lava-sync` round across N nodes, loopback",
        "bash scripts/bench.sh barrier",
        &[
            "nodes",
            "coordinator, clients",
            "rounds",
            "median",
            "p99",
            "lava-coordinator (poll_delay 3) ÷ this",
        ],
    );
    let mut resets = Vec::new();
    for &n in sizes {
        eprintln!("bench: barrier, {n} nodes");
        let (grpc_rounds_n, lava_rounds_n) = match n {
            0..=16 => (200, 5),
            _ => (50, 3),
        };
        let ours =
            Sample::new(runtime.block_on(grpc_rounds(&endpoint, n, grpc_rounds_n, Call::Sync))?);
        let floor =
            Sample::new(runtime.block_on(grpc_rounds(&endpoint, n, grpc_rounds_n, Call::Send))?);
        let ours_kept = Sample::new(runtime.block_on(grpc_rounds(
            &keeping_endpoint,
            n,
            grpc_rounds_n,
            Call::Sync,
        ))?);
        // Debian's coordinator listens with a backlog of 1: with a thousand clients most
        // connection attempts are dropped and retried with TCP's growing back-off, so a
        // round can take many minutes. What finished within the budget is reported.
        let budget = (n > 256).then_some(DEBIAN_BUDGET);
        let mut legacy = lava_client_rounds(legacy_port, n, lava_rounds_n * 2, &[3], None)?;
        let mut debian_rounds = lava_client_rounds(debian.port, n, lava_rounds_n, &[3, 1], budget)?;
        let (
            Some((legacy_times, legacy_errors)),
            Some((lava1_times, lava1_errors)),
            Some((lava3_times, lava3_errors)),
        ) = (legacy.pop(), debian_rounds.pop(), debian_rounds.pop())
        else {
            return Err("the LAVA clients reported no rounds".into());
        };
        let lava3 = Sample::new(lava3_times);
        for (who, sample) in [
            ("ours, gRPC (Rust client)", ours),
            (
                "floor: one `lava-send` per node at once, no barrier (gRPC)",
                floor,
            ),
            ("ours, gRPC, groups kept on disk (--state-dir)", ours_kept),
            (
                "ours, LAVA port (LAVA's client, poll_delay 3)",
                Sample::new(legacy_times),
            ),
            ("Debian lava-coordinator, poll_delay 3", lava3.clone()),
            (
                "Debian lava-coordinator, poll_delay 1",
                Sample::new(lava1_times),
            ),
        ] {
            row(
                &mut table,
                n,
                who,
                &sample,
                &lava3,
                budget.unwrap_or(DEBIAN_BUDGET),
            );
        }
        if legacy_errors + lava3_errors + lava1_errors > 0 {
            resets.push(format!(
                "N={n}: ours {legacy_errors}, lava-coordinator {lava3_errors} (poll_delay 3) and \
                 {lava1_errors} (poll_delay 1)"
            ));
        }
    }
    drop(debian);
    runtime.block_on(running.shutdown());
    runtime.block_on(keeping.shutdown());
    table.notes.push(
        "LAVA's client (lava-dispatcher 2023.01 from Debian, `MultinodeProtocol`, one thread \
         per node in one Python process) polls: each `wait` reply costs it `poll_delay` \
         seconds of sleep, and Debian's coordinator answers every first `lava_sync` with \
         `wait`. Our LAVA port holds a blocking request open until its condition holds \
         (`--legacy-hold`, 10 s by default), so the same client gets its answer without \
         sleeping; its rows are bounded by the Python client itself."
            .into(),
    );
    if !resets.is_empty() {
        table.notes.push(format!(
            "Connections reset or refused under the LAVA clients (each costs that client a \
             `poll_delay`; Debian's lava-coordinator listens with a backlog of 1): {}.",
            resets.join("; ")
        ));
    }
    Ok(table)
}
