//! Image transfer: the dispatcher's upload (SFTP with many writes in flight, SHA-256
//! checked on the host, into the content-addressed cache) against OpenSSH's `sftp` and
//! `scp` to the same real `sshd`, which runs in a network namespace as an `ssh-host`
//! device does. Also the cached re-run, which must send nothing.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hostctl::ssh::SshSession;
use hostctl::transfer;
use system_tests::SshHost;

use crate::report::Table;
use crate::stats::Sample;

const RUNS: usize = 3;

fn openssh(host: &SshHost, program: &str, local: &Path, remote: &str) -> Result<Duration, String> {
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
            .map_err(|e| format!("sftp: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            writeln!(stdin, "put {} {remote}", local.display()).map_err(|e| e.to_string())?;
        }
        child.wait()
    } else {
        Command::new("scp")
            .args(options)
            .arg("-i")
            .arg(&host.identity)
            .arg(local)
            .arg(format!("root@{}:{remote}", host.address))
            .status()
    }
    .map_err(|e| format!("{program}: {e}"))?;
    if !status.success() {
        return Err(format!("{program} failed: {status}"));
    }
    Ok(started.elapsed())
}

pub fn run(runtime: &tokio::runtime::Runtime, mib: u64) -> Result<Table, String> {
    let host = SshHost::start(None);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let image = dir.path().join("image.bin");
    // Incompressible, so compression could help neither side.
    let file = std::fs::File::create(&image).map_err(|e| e.to_string())?;
    let status = Command::new("head")
        .args(["-c", &(mib << 20).to_string(), "/dev/urandom"])
        .stdout(file)
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err("cannot write the test image".into());
    }
    let target = host.pinned_target(dir.path().join("known_hosts"));
    let scratch = host.scratch();
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let remote = format!("{scratch}/openssh.bin");
    let (mut ours, mut cached, mut sftp, mut scp) = (vec![], vec![], vec![], vec![]);
    eprintln!("bench: transfer, {mib} MiB x {RUNS}");
    runtime.block_on(async {
        let session = SshSession::connect(&target, Duration::from_secs(30))
            .await
            .map_err(|e| e.to_string())?;
        // Interleaved, so a slow moment of the machine hits every tool alike.
        for run in 0..RUNS {
            let cache = format!("{scratch}/cache-{run}");
            let started = Instant::now();
            let sent = transfer::upload_cached(&session, &image, &cache, |_, _| {})
                .await
                .map_err(|e| e.to_string())?;
            ours.push(started.elapsed());
            if sent.bytes_sent != mib << 20 {
                return Err(format!("sent {} bytes of {}", sent.bytes_sent, mib << 20));
            }
            let started = Instant::now();
            let again = transfer::upload_cached(&session, &image, &cache, |_, _| {})
                .await
                .map_err(|e| e.to_string())?;
            cached.push(started.elapsed());
            if again.bytes_sent != 0 {
                return Err("the cached re-run sent bytes".into());
            }
            session
                .run(&format!("rm -rf {cache}"), Duration::from_secs(60))
                .await
                .map_err(|e| e.to_string())?;
            sftp.push(openssh(&host, "sftp", &image, &remote)?);
            scp.push(openssh(&host, "scp", &image, &remote)?);
        }
        session.close().await;
        Ok::<(), String>(())
    })?;
    let (ours, cached, sftp, scp) = (
        Sample::new(ours),
        Sample::new(cached),
        Sample::new(sftp),
        Sample::new(scp),
    );
    let rate = |d: Duration| (mib as f64) / d.as_secs_f64();
    let mut table = Table::new(
        &format!("Image transfer: {mib} MiB to sshd in a network namespace"),
        &format!("bash scripts/bench.sh transfer --mib {mib}"),
        &["tool", "runs", "median", "MiB/s", "speed vs OpenSSH sftp"],
    );
    let mut row = |tool: &str, s: &Sample, with_rate: bool| {
        let median = s.median();
        table.row(vec![
            tool.to_string(),
            s.len().to_string(),
            format!("{:.3} s", median.as_secs_f64()),
            if with_rate {
                format!("{:.0}", rate(median))
            } else {
                "-".into()
            },
            if with_rate {
                format!("{:.2}x", rate(median) / rate(sftp.median()))
            } else {
                "-".into()
            },
        ]);
    };
    row(
        "dispatcher: SFTP upload + SHA-256 check on the host",
        &ours,
        true,
    );
    row("dispatcher: cached re-run (0 bytes sent)", &cached, false);
    row("OpenSSH sftp", &sftp, true);
    row("OpenSSH scp", &scp, true);
    table.notes.push(
        "Incompressible data; every tool talks to the same sshd. OpenSSH verifies nothing \
         after the copy; the dispatcher checks SHA-256 on the host (OpenSSL's, on the \
         CPU's SHA instructions, where the host has it) before the image enters the cache."
            .into(),
    );
    Ok(table)
}
