//! `coordinator`: the MultiNode coordinator as a standalone daemon.
//!
//! Prints one line `listening grpc=ADDR legacy=ADDR|off` once it serves (so a caller that
//! asked for port 0 learns the port), then serves until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use coordinator::legacy::LegacyLimits;
use coordinator::server::TlsFiles;
use coordinator::store::LegacyBounds;

#[derive(Debug, Parser)]
#[command(
    name = "coordinator",
    version,
    about = "MultiNode coordinator (gRPC and LAVA legacy protocol)"
)]
struct Args {
    /// gRPC address.
    #[arg(long, default_value = "127.0.0.1:7079")]
    listen: SocketAddr,
    /// Address for LAVA's legacy protocol (LAVA's default port is 3079). It has no
    /// authentication: keep it on a trusted network.
    #[arg(long, default_value = "127.0.0.1:3079", conflicts_with = "no_legacy")]
    legacy_listen: SocketAddr,
    /// Do not serve LAVA's legacy protocol.
    #[arg(long)]
    no_legacy: bool,
    /// Seconds a blocking legacy request is held open, answered the moment its condition
    /// holds, before it is answered `wait` (0: at once, as LAVA's own coordinator does).
    #[arg(long, default_value_t = 10)]
    legacy_hold: u64,
    /// Most LAVA legacy groups at once; a request that would create one more is
    /// answered `nack` (the legacy port has no authentication, so anyone reaching it
    /// can create groups).
    #[arg(long, default_value_t = LegacyBounds::default().max_groups, value_name = "N")]
    legacy_max_groups: usize,
    /// Seconds after which a legacy group that no request has named is dropped.
    #[arg(long, default_value_t = LegacyBounds::default().idle_expiry.as_secs(), value_name = "SECS")]
    legacy_idle_expiry: u64,
    /// Most bytes of names and data one legacy group may hold.
    #[arg(long, default_value_t = LegacyLimits::default().max_group_bytes, value_name = "BYTES")]
    legacy_max_group_bytes: usize,
    /// File holding the admin token dispatchers use (first line).
    #[arg(long, value_name = "FILE")]
    admin_token_file: PathBuf,
    /// Longest a MultiNode call waits when it gives no deadline, in seconds.
    #[arg(long, default_value_t = 3600)]
    default_wait: u64,
    /// Keep every group in DIR, so a restarted coordinator carries on with the groups
    /// it had (without it, groups live in memory and end with the process).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// After a restart with --state-dir, seconds a node that was attached (`node-agent
    /// run`) has to attach again before it is failed and the calls waiting on it end.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    reattach_grace: u64,
    /// TLS certificate (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COORDINATOR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let token = match coordinator::auth::token_from_file(&args.admin_token_file) {
        Ok(token) => token,
        Err(err) => {
            eprintln!(
                "coordinator: cannot read {}: {err}",
                args.admin_token_file.display()
            );
            return ExitCode::from(2);
        }
    };
    if token.len() < 16 {
        eprintln!("coordinator: the admin token must be at least 16 characters");
        return ExitCode::from(2);
    }
    let mut config = coordinator::Config::new(args.listen, token);
    config.legacy_listen = (!args.no_legacy).then_some(args.legacy_listen);
    config.legacy.hold = Duration::from_secs(args.legacy_hold);
    config.legacy.groups.max_groups = args.legacy_max_groups;
    config.legacy.groups.idle_expiry = Duration::from_secs(args.legacy_idle_expiry);
    config.legacy.max_group_bytes = args.legacy_max_group_bytes;
    config.wait.default_wait = Duration::from_secs(args.default_wait);
    config.state_dir = args.state_dir;
    config.reattach_grace = Duration::from_secs(args.reattach_grace);
    config.tls = args
        .tls_cert
        .zip(args.tls_key)
        .map(|(cert, key)| TlsFiles { cert, key });
    let running = match coordinator::start(config).await {
        Ok(running) => running,
        Err(err) => {
            eprintln!("coordinator: {err}");
            return ExitCode::from(1);
        }
    };
    let legacy = running
        .legacy_addr
        .map_or("off".to_string(), |a| a.to_string());
    println!("listening grpc={} legacy={legacy}", running.grpc_addr);
    wait_for_signal().await;
    running.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
