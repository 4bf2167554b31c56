//! Benchmark: an image onto a host, the dispatcher's SFTP upload (pipelined writes,
//! verified by SHA-256 on the far side, into the content-addressed cache) against
//! OpenSSH's `sftp` and `scp` to the same real `sshd`, in a network namespace on this
//! machine (as an `ssh-host` device). Also the cached re-run, which must send nothing.
//!
//! Run: `cargo bench -p system-tests --bench image_transfer` (add `-- 64` for the size in
//! MiB; default 512). Prints the median of 3 runs each and the ratio to OpenSSH `sftp`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark: a panic is a report.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dispatcher::lab::device::HostKeyPolicy;
use dispatcher::ssh::{SshSession, SshTarget};
use dispatcher::transfer;
use system_tests::SshHost;

const RUNS: usize = 3;

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn openssh(host: &SshHost, program: &str, local: &std::path::Path, remote: &str) -> Duration {
    let options = [
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
    ];
    let started = Instant::now();
    let status = if program == "sftp" {
        let mut child = Command::new("sftp")
            .args(options)
            .arg("-i")
            .arg(&host.identity)
            .args(["-b", "-"])
            .arg(format!("root@{}", host.address))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        writeln!(
            child.stdin.take().unwrap(),
            "put {} {remote}",
            local.display()
        )
        .unwrap();
        child.wait().unwrap()
    } else {
        Command::new("scp")
            .args(options)
            .arg("-i")
            .arg(&host.identity)
            .arg(local)
            .arg(format!("root@{}:{remote}", host.address))
            .status()
            .unwrap()
    };
    assert!(status.success(), "{program} failed");
    started.elapsed()
}

fn main() {
    let mib: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(512);
    let host = SshHost::start(None);
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.bin");
    // Incompressible content, as a disk image mostly is not, but as compression never
    // helps either side here.
    let status = Command::new("head")
        .args(["-c", &(mib << 20).to_string(), "/dev/urandom"])
        .stdout(std::fs::File::create(&image).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let target = SshTarget {
        host: host.address.clone(),
        port: host.port,
        user: "root".into(),
        identity: host.identity.clone(),
        host_key: HostKeyPolicy::Fingerprint(host.fingerprint.clone()),
        known_hosts: dir.path().join("known_hosts"),
    };
    let scratch = host.scratch();
    let mut ours = Vec::new();
    let mut cached = Vec::new();
    runtime.block_on(async {
        let session = SshSession::connect(&target, Duration::from_secs(30))
            .await
            .unwrap();
        for run in 0..RUNS {
            let cache = format!("{scratch}/cache-{run}");
            let started = Instant::now();
            let sent = transfer::upload_cached(&session, &image, &cache, |_, _| {})
                .await
                .unwrap();
            ours.push(started.elapsed());
            assert_eq!(sent.bytes_sent, mib << 20);
            let started = Instant::now();
            let again = transfer::upload_cached(&session, &image, &cache, |_, _| {})
                .await
                .unwrap();
            cached.push(started.elapsed());
            assert_eq!(again.bytes_sent, 0, "the cache must send nothing");
            session
                .run(&format!("rm -rf {cache}"), Duration::from_secs(60))
                .await
                .unwrap();
        }
        session.close().await;
    });
    std::fs::create_dir_all(&scratch).unwrap();
    let remote = format!("{scratch}/openssh.bin");
    let sftp: Vec<Duration> = (0..RUNS)
        .map(|_| openssh(&host, "sftp", &image, &remote))
        .collect();
    let scp: Vec<Duration> = (0..RUNS)
        .map(|_| openssh(&host, "scp", &image, &remote))
        .collect();
    let rate = |d: Duration| (mib as f64) / d.as_secs_f64();
    let (ours, cached, sftp, scp) = (median(ours), median(cached), median(sftp), median(scp));
    println!("image transfer, {mib} MiB to sshd in a netns, median of {RUNS}:");
    println!("| tool | time | MiB/s | vs OpenSSH sftp |");
    println!("|---|---:|---:|---:|");
    println!(
        "| dispatcher (SFTP + SHA-256 check on the host) | {:.2} s | {:.0} | {:.2}x |",
        ours.as_secs_f64(),
        rate(ours),
        rate(ours) / rate(sftp)
    );
    println!(
        "| dispatcher, cached re-run (0 bytes sent) | {:.3} s | - | - |",
        cached.as_secs_f64()
    );
    println!(
        "| OpenSSH sftp | {:.2} s | {:.0} | 1.00x |",
        sftp.as_secs_f64(),
        rate(sftp)
    );
    println!(
        "| OpenSSH scp | {:.2} s | {:.0} | {:.2}x |",
        scp.as_secs_f64(),
        rate(scp),
        rate(scp) / rate(sftp)
    );
}
