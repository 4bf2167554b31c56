//! Benchmark: one `lava-sync` round across N nodes, over gRPC on loopback.
//!
//! Each node has its own connection (as separate test shells would). A round starts
//! with every node released at once and ends when the last node has its reply; the
//! time is what a test writer sees when the whole group reaches the barrier together.
//! Prints median and p99 per N.
//!
//! Run: `cargo bench -p coordinator --bench sync_round` (add `-- 2 16` for some N only).

#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark: a panic is a report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coordinator::{AdminClient, NodeClient};
use tokio::sync::Barrier;

async fn rounds(endpoint: &str, n: usize, rounds: usize) -> Vec<Duration> {
    let mut admin = AdminClient::connect(endpoint, "bench-admin-token-0123")
        .await
        .unwrap();
    let nodes: Vec<(String, String)> = (0..n)
        .map(|i| (format!("node-{i}"), "r".to_string()))
        .collect();
    let (group, creds) = admin.create_group("", &nodes).await.unwrap();
    let mut clients = Vec::new();
    for c in &creds {
        clients.push(
            NodeClient::connect(endpoint, &group, &c.node_id, &c.token)
                .await
                .unwrap(),
        );
    }
    // Warm every connection once.
    let warm: Vec<_> = clients
        .iter()
        .cloned()
        .map(|mut c| tokio::spawn(async move { c.sync("warm", None).await.unwrap() }))
        .collect();
    for w in warm {
        w.await.unwrap();
    }
    let mut times = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let start_line = Arc::new(Barrier::new(n + 1));
        let id = format!("round-{round}");
        let tasks: Vec<_> = clients
            .iter()
            .cloned()
            .map(|mut c| {
                let start_line = start_line.clone();
                let id = id.clone();
                tokio::spawn(async move {
                    start_line.wait().await;
                    c.sync(&id, None).await.unwrap();
                })
            })
            .collect();
        start_line.wait().await;
        let started = Instant::now();
        for t in tasks {
            t.await.unwrap();
        }
        times.push(started.elapsed());
    }
    admin.close_group(&group).await.unwrap();
    times
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn main() {
    let wanted: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if wanted.is_empty() {
        vec![2, 16, 256, 1024]
    } else {
        wanted
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config =
            coordinator::Config::new("127.0.0.1:0".parse().unwrap(), "bench-admin-token-0123");
        let running = coordinator::start(config).await.unwrap();
        let endpoint = format!("http://{}", running.grpc_addr);
        println!("| nodes | rounds | median | p99 |");
        println!("|---:|---:|---:|---:|");
        for n in sizes {
            let count = match n {
                0..=16 => 200,
                17..=256 => 50,
                _ => 20,
            };
            let mut times = rounds(&endpoint, n, count).await;
            times.sort();
            println!(
                "| {n} | {count} | {:.2} ms | {:.2} ms |",
                percentile(&times, 0.5).as_secs_f64() * 1e3,
                percentile(&times, 0.99).as_secs_f64() * 1e3
            );
        }
        running.shutdown().await;
    });
}
