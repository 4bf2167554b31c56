//! `bench`: the project's benchmarks side by side with the tools a lab would otherwise
//! use (Debian's `lava-coordinator` driven by LAVA's own client code, OpenSSH's `sftp`
//! and `scp`, qemu started by hand), all on this machine in one run. Prints each table
//! and, for `all`, writes them into BENCHMARKS.md between its markers.
//!
//! Run: `bash scripts/bench.sh` (builds in release mode, then `bench all`).

mod api;
mod barrier;
mod follow;
mod lab;
mod local;
mod overhead;
mod report;
mod stats;
mod throughput;
mod transfer;
mod workers;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bench",
    about = "Benchmarks against the tools a lab would otherwise use"
)]
struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Everything below, then BENCHMARKS.md updated.
    All {
        /// The file to write the tables into.
        #[arg(long, default_value = "BENCHMARKS.md")]
        write: PathBuf,
    },
    /// One `lava-sync` across N nodes: ours (gRPC, LAVA port) and Debian's lava-coordinator.
    Barrier {
        #[arg(default_values_t = [2usize, 16, 128, 1024])]
        nodes: Vec<usize>,
    },
    /// `lava-send` + `lava-wait` pairs per second, 1 group and 100 at once.
    Throughput,
    /// An image upload against OpenSSH sftp and scp.
    Transfer {
        #[arg(long, default_value_t = 512)]
        mib: u64,
    },
    /// POST to VM prompts against the same qemu started by hand.
    Overhead,
    /// Submissions per second, latency, and the daemon's memory.
    Api,
    /// Submissions per second and time to start: 1 worker on SQLite, 1 and 3 on PostgreSQL.
    Workers,
    /// The daemon's CPU time with many followers of one running job's log.
    Follow {
        #[arg(default_value_t = 1000)]
        followers: usize,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

fn today() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The lab benchmarks share one daemon: memory idle first, then the overhead runs and
/// the followed log, then the API load (which leaves a queue behind).
fn lab_tables(runtime: &tokio::runtime::Runtime) -> Result<Vec<report::Table>, String> {
    let lab = lab::Lab::start()?;
    let idle = api::idle_rss(&lab);
    let overhead = overhead::run(&lab)?;
    let follow = follow::run(&lab, runtime, 1000)?;
    let api = api::run(&lab, idle)?;
    lab.stop()?;
    Ok(vec![overhead, follow, api])
}

fn run(what: What) -> Result<(), String> {
    let runtime = runtime()?;
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    let tables = match &what {
        What::All { .. } => {
            // One benchmark failing must not lose the others' figures: each is tried,
            // what was measured is written, and the run still fails.
            let attempts = [
                barrier::run(&runtime, &[2, 16, 128, 1024]).map(|t| vec![t]),
                throughput::run(&runtime).map(|t| vec![t]),
                transfer::run(&runtime, 512).map(|t| vec![t]),
                lab_tables(&runtime),
                workers::run().map(|t| vec![t]),
            ];
            let mut tables = Vec::new();
            for attempt in attempts {
                match attempt {
                    Ok(done) => tables.extend(done),
                    Err(err) => failures.push(err),
                }
            }
            tables
        }
        What::Barrier { nodes } => vec![barrier::run(&runtime, nodes)?],
        What::Workers => vec![workers::run()?],
        What::Throughput => vec![throughput::run(&runtime)?],
        What::Transfer { mib } => vec![transfer::run(&runtime, *mib)?],
        What::Overhead => {
            let lab = lab::Lab::start()?;
            let table = overhead::run(&lab)?;
            lab.stop()?;
            vec![table]
        }
        What::Follow { followers } => {
            let lab = lab::Lab::start()?;
            let table = follow::run(&lab, &runtime, *followers)?;
            lab.stop()?;
            vec![table]
        }
        What::Api => {
            let lab = lab::Lab::start()?;
            let idle = api::idle_rss(&lab);
            let table = api::run(&lab, idle)?;
            lab.stop()?;
            vec![table]
        }
    };
    for table in &tables {
        println!("{}", table.markdown());
    }
    eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
    if let What::All { write } = what {
        report::write_into(&write, &today(), "bash scripts/bench.sh", &tables)
            .map_err(|e| format!("{}: {e}", write.display()))?;
        eprintln!("bench: wrote {}", write.display());
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

fn main() -> ExitCode {
    match run(Args::parse().what) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench: {err}");
            ExitCode::FAILURE
        }
    }
}
