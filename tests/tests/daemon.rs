//! The daemon as a lab runs it: `dispatcher serve` as a real process with its SQLite
//! database, its HTTP API spoken over real sockets (and by the `dispatcher` CLI), jobs
//! scheduled onto an `ssh-host` device (sshd in a network namespace) and run on real
//! qemu; and a daemon killed mid-job that, restarted, has lost nothing submitted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use system_tests::{
    SshHost, binary, jobs_dir, kvm_devices, parse_junit, parse_tap, repo_root, static_node_agent,
    test_images,
};

/// A `dispatcher serve` process; killed when dropped.
struct Daemon {
    child: Child,
    url: String,
    /// Kept open: the daemon must never write into a closed pipe.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Daemon {
    fn start(config: &Path) -> Self {
        let mut child = Command::new(binary("dispatcher"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stdout = BufReader::new(stdout);
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let url = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("daemon did not start: {first:?}"))
            .to_string();
        Self {
            child,
            url,
            _stdout: stdout,
        }
    }

    fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    /// SIGKILL: the daemon gets no chance to clean up.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A lab of one ssh-host device and a daemon configuration for it.
struct Lab {
    host: SshHost,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Lab {
    fn new() -> Self {
        let images = test_images();
        let host = SshHost::start(Some((&images.lab_key, &images.lab_pubkey)));
        let dir = tempfile::tempdir().unwrap();
        // No identity in the device file: the daemon's lab key is used.
        let devices = host.device_files(dir.path(), false);
        let config = dir.path().join("dispatcher.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\ndevices = \"{}\"\nlab_key = \"{}\"\n\
                 node_agent = \"{}\"\nhost_dir = \"{}\"\nmax_job_bytes = 65536\n",
                dir.path().join("state").display(),
                devices.display(),
                images.lab_key.display(),
                static_node_agent().display(),
                host.scratch()
            ),
        )
        .unwrap();
        Self { host, dir, config }
    }

    fn token(&self) -> String {
        let out = Command::new(binary("dispatcher"))
            .args(["token", "create", "ci", "--config"])
            .arg(&self.config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The seed job with this machine's test images.
    fn seed_job(&self) -> String {
        let images = test_images();
        std::fs::read_to_string(jobs_dir().join("e2e/seed-vm-group.json"))
            .unwrap()
            .replace("@GUEST_KERNEL@", &images.guest_kernel.display().to_string())
            .replace(
                "@GUEST_INITRD@",
                &images.guest_initramfs.display().to_string(),
            )
            .replace("@HOST_TYPE@", "ssh-host")
    }
}

/// One HTTP/1.1 request; returns the status and the body (chunked bodies decoded
/// loosely: enough for JSON and NDJSON answers).
fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Token {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut answer = Vec::new();
    // The server may close the connection before reading a body it refuses.
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn json_of(body: &str) -> Value {
    // A chunked body: the JSON object between the chunk-size lines.
    let start = body.find('{').unwrap_or(0);
    let end = body.rfind('}').map_or(body.len(), |e| e + 1);
    serde_json::from_str(&body[start..end]).unwrap_or(Value::Null)
}

/// Headless Chromium (Debian's) on a page of the daemon: the DOM after the page's
/// scripts ran for `millis`, and a screenshot kept under `target/test-artifacts/`.
fn chromium(url: &str, millis: u32, screenshot: &str) -> String {
    let artifacts = repo_root().join("target").join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1280,1000",
    ];
    // Virtual time: the page's fetches and timers run as if `millis` passed, then the
    // DOM is taken (a followed log keeps its request open; the budget still ends).
    let budget = format!("--virtual-time-budget={millis}");
    let run = |mode: String| {
        let out = Command::new("timeout")
            .args(["120", "chromium"])
            .args(flags)
            .arg(&budget)
            .arg(mode)
            .arg(url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    run(format!(
        "--screenshot={}",
        artifacts.join(screenshot).display()
    ));
    String::from_utf8_lossy(&run("--dump-dom".to_string())).into_owned()
}

/// Submits a job over the API; returns its id.
fn submit_job(addr: &str, token: &str, job: &str) -> u64 {
    let (status, body) = http(addr, "POST", "/api/v1/jobs", Some(token), job.as_bytes());
    assert_eq!(status, 201, "{body}");
    json_of(&body)["id"].as_u64().unwrap()
}

fn dispatcher_cli(daemon: &Daemon, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(binary("dispatcher"))
        .args(args)
        .env("LAVA_DISPATCHER_URL", &daemon.url)
        .env("LAVA_DISPATCHER_TOKEN", token)
        .current_dir(repo_root())
        .output()
        .unwrap()
}

#[test]
fn the_api_checks_tokens_and_jobs_and_runs_a_vm_group_job() {
    let lab = Lab::new();
    let token = lab.token();
    let daemon = Daemon::start(&lab.config);
    let addr = daemon.addr();

    let (status, _) = http(&addr, "GET", "/api/v1/devices", None, b"");
    assert_eq!(status, 401, "reads need a token unless public_reads is set");
    let (status, _) = http(&addr, "GET", "/api/v1/devices", Some("wrong"), b"");
    assert_eq!(status, 401);
    let (status, body) = http(&addr, "GET", "/api/v1/devices", Some(&token), b"");
    assert_eq!(status, 200, "{body}");
    let devices = json_of(&body);
    assert_eq!(devices["devices"][0]["hostname"], "ssh-host-01", "{body}");
    assert_eq!(devices["devices"][0]["state"]["state"], "idle", "{body}");

    let invalid = std::fs::read(jobs_dir().join("invalid/three-mistakes.json")).unwrap();
    let (status, body) = http(&addr, "POST", "/api/v1/jobs", Some(&token), &invalid);
    assert_eq!(status, 400, "{body}");
    let pointers: Vec<String> = json_of(&body)["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["pointer"].as_str().map(str::to_string))
        .collect();
    assert!(
        pointers.iter().any(|p| p == "/vm_group/vms/1/cont"),
        "{pointers:?}"
    );
    assert!(pointers.len() >= 3, "every problem at once: {pointers:?}");

    let huge = vec![b' '; 100_000];
    let (status, _) = http(&addr, "POST", "/api/v1/jobs", Some(&token), &huge);
    assert_eq!(status, 413, "a job past max_job_bytes");

    let job = lab.dir.path().join("seed.json");
    std::fs::write(&job, lab.seed_job()).unwrap();
    let out = dispatcher_cli(
        &daemon,
        &token,
        &["submit", job.to_str().unwrap(), "--follow"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("client.client-side.ping-server -- PASS")
            && stdout.contains("server.server-side.sync-all-up -- PASS"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("[server] info: start: boot"),
        "the log was followed: {stdout}"
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}");

    let (status, body) = http(&addr, "GET", "/api/v1/jobs/1", Some(&token), b"");
    assert_eq!(status, 200);
    let job = json_of(&body);
    assert_eq!(job["state"]["state"], "finished", "{body}");
    assert_eq!(job["state"]["health"], "complete", "{body}");
    let (_, body) = http(&addr, "GET", "/api/v1/devices", Some(&token), b"");
    assert_eq!(
        json_of(&body)["devices"][0]["state"]["state"],
        "idle",
        "{body}"
    );
    lab.host.assert_no_qemu();

    // Results as JUnit and TAP, from the CLI, read by independent parsers.
    let junit = dispatcher_cli(&daemon, &token, &["results", "1", "--format", "junit"]);
    let cases = parse_junit(&String::from_utf8_lossy(&junit.stdout));
    assert!(
        cases.len() >= 7 && cases.iter().all(|(_, o)| o == "pass"),
        "{cases:?}"
    );
    let tap = dispatcher_cli(&daemon, &token, &["results", "1", "--format", "tap"]);
    let (passed, failed, _, good_plan) = parse_tap(&String::from_utf8_lossy(&tap.stdout));
    assert_eq!((passed, failed, good_plan), (cases.len(), 0, true));

    // The web page shows the finished job: its group, its log, its results.
    let page = chromium(
        &format!("{}/?token={token}#/job/1", daemon.url),
        5000,
        "job-finished.png",
    );
    assert!(page.contains("id=\"results-table\""), "{page}");
    assert!(
        page.contains("ping-server") && page.contains("class=\"pass\""),
        "{page}"
    );
    assert!(
        page.contains("data-node=\"client\""),
        "the group diagram: {page}"
    );
    let list = chromium(
        &format!("{}/?token={token}#/", daemon.url),
        3000,
        "jobs.png",
    );
    assert!(
        list.contains("ssh-host-01") && list.contains("#/job/1"),
        "{list}"
    );

    // Each node's raw console, downloadable; nothing outside the job's directory.
    let (status, console) = http(
        &addr,
        "GET",
        "/api/v1/jobs/1/console/server",
        Some(&token),
        b"",
    );
    assert_eq!(status, 200);
    assert!(console.contains("LAVA_TEST_SHELL_DONE"), "{console}");
    let (status, _) = http(
        &addr,
        "GET",
        "/api/v1/jobs/1/console/..%2Fjob.json",
        Some(&token),
        b"",
    );
    assert!(status == 400 || status == 404, "{status}");

    let (status, body) = http(&addr, "GET", "/healthz", None, b"");
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, metrics) = http(&addr, "GET", "/metrics", None, b"");
    assert_eq!(status, 200);
    for line in [
        "dispatcher_jobs{state=\"finished\"} 1",
        "dispatcher_jobs_finished{health=\"complete\"} 1",
        "dispatcher_queue_length 0",
        "dispatcher_devices{state=\"idle\",health=\"unknown\"} 1",
        "dispatcher_coordinator_waiters 0",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    let sent: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("dispatcher_transfer_bytes_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(sent > 1_000_000, "the images went to the host: {metrics}");
}

/// Reads a followed log until a line contains `needle`.
fn follow_until(addr: &str, token: &str, job: u64, needle: &str) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /api/v1/jobs/{job}/log?follow=1 HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Token {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains(needle) {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the log ended before {needle:?}: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[test]
fn a_restarted_daemon_loses_no_job_and_leaves_no_vm() {
    let lab = Lab::new();
    let token = lab.token();
    let daemon = Daemon::start(&lab.config);
    let addr = daemon.addr();
    let job = lab.seed_job();
    let first = submit_job(&addr, &token, &job);
    // One device: the second job waits in the queue.
    let second = submit_job(&addr, &token, &job);
    // The first job's VMs are up and its test shells running.
    follow_until(
        &addr,
        &token,
        first,
        "\"node\":\"client\",\"msg\":\"start: test\"",
    );
    let (_, body) = http(
        &addr,
        "GET",
        &format!("/api/v1/jobs/{second}"),
        Some(&token),
        b"",
    );
    assert_eq!(json_of(&body)["state"]["state"], "submitted", "{body}");

    daemon.kill();
    // The VMs were attached to the daemon's SSH session: with it gone, sshd hangs up
    // their consoles and they stop. Nothing announces that, so look, for a bounded time.
    let deadline = Instant::now() + Duration::from_secs(60);
    while lab.host.processes().iter().any(|p| p.starts_with("qemu")) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    lab.host.assert_no_qemu();

    let daemon = Daemon::start(&lab.config);
    let addr = daemon.addr();
    let (_, body) = http(
        &addr,
        "GET",
        &format!("/api/v1/jobs/{first}"),
        Some(&token),
        b"",
    );
    let state = json_of(&body)["state"].clone();
    assert_eq!(state["state"], "finished", "{body}");
    assert_eq!(state["health"], "incomplete", "{body}");
    assert_eq!(state["error"][0], "infrastructure", "{body}");
    assert_eq!(state["error"][1], "dispatcher restarted", "{body}");
    // The queued job survived the restart and now runs to the end.
    let out = dispatcher_cli(&daemon, &token, &["logs", &second.to_string(), "--follow"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, body) = http(
        &addr,
        "GET",
        &format!("/api/v1/jobs/{second}"),
        Some(&token),
        b"",
    );
    let state = json_of(&body)["state"].clone();
    assert_eq!(state["health"], "complete", "{body}");
    // The followed log had every node interleaved, and it ended with the job.
    let followed = String::from_utf8_lossy(&out.stdout);
    for node in ["[host]", "[server]", "[client]"] {
        assert!(followed.contains(node), "{node} missing from:\n{followed}");
    }
    assert!(followed.contains("job finished: Complete"), "{followed}");
    let one = dispatcher_cli(
        &daemon,
        &token,
        &["logs", &second.to_string(), "--node", "client"],
    );
    let err = String::from_utf8_lossy(&one.stderr).into_owned();
    let one = String::from_utf8_lossy(&one.stdout);
    assert!(
        one.lines().count() > 5 && one.lines().all(|l| l.contains(" [client] ")),
        "{one}{err}"
    );
    lab.host.assert_no_qemu();
}

fn job_state(addr: &str, token: &str, id: u64) -> Value {
    let (_, body) = http(addr, "GET", &format!("/api/v1/jobs/{id}"), Some(token), b"");
    json_of(&body)["state"].clone()
}

#[test]
fn cancel_and_a_graceful_shutdown_stop_running_jobs_and_keep_the_queue() {
    let lab = Lab::new();
    let token = lab.token();
    let daemon = Daemon::start(&lab.config);
    let addr = daemon.addr();
    let job = lab.seed_job();
    let submit = || submit_job(&addr, &token, &job);
    let (first, second) = (submit(), submit());
    follow_until(
        &addr,
        &token,
        first,
        "\"node\":\"client\",\"msg\":\"start: test\"",
    );
    let out = dispatcher_cli(&daemon, &token, &["cancel", &first.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `logs --follow` returns once the job has ended.
    let out = dispatcher_cli(&daemon, &token, &["logs", &first.to_string(), "--follow"]);
    assert!(out.status.success());
    let state = job_state(&addr, &token, first);
    assert_eq!(state["health"], "canceled", "{state}");
    lab.host.assert_no_qemu();

    // The device is free again: the second job runs; a third waits behind it.
    follow_until(
        &addr,
        &token,
        second,
        "\"node\":\"client\",\"msg\":\"start: test\"",
    );
    let third = submit();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(daemon.child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut daemon = daemon;
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "a graceful shutdown exits 0: {status}");
    lab.host.assert_no_qemu();

    let daemon = Daemon::start(&lab.config);
    let addr = daemon.addr();
    assert_eq!(job_state(&addr, &token, second)["health"], "canceled");
    let state = job_state(&addr, &token, third);
    assert!(
        ["submitted", "scheduled", "running"].contains(&state["state"].as_str().unwrap_or("")),
        "the queued job is kept: {state}"
    );
}

/// Processes whose command line mentions `dir` (the VMs of a job: their QMP sockets
/// live in its directory).
fn processes_under(dir: &Path) -> String {
    let out = Command::new("pgrep")
        .arg("-f")
        .arg(dir.display().to_string())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// VMs the daemon ran on its own machine outlive a crash; the restarted daemon stops
/// them through their QMP sockets.
#[test]
fn a_restarted_daemon_stops_the_local_vms_a_crash_left() {
    let images = test_images();
    let dir = tempfile::tempdir().unwrap();
    let devices = kvm_devices(dir.path(), &["kvm-01", "kvm-02"]);
    let state = dir.path().join("state");
    let config = dir.path().join("dispatcher.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\ndevices = \"{}\"\nlab_key = \"{}\"\n\
             node_agent = \"{}\"\npublic_reads = true\n",
            state.display(),
            devices.display(),
            images.lab_key.display(),
            static_node_agent().display(),
        ),
    )
    .unwrap();
    let token = String::from_utf8_lossy(
        &Command::new(binary("dispatcher"))
            .args(["token", "create", "ci", "--config"])
            .arg(&config)
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_string();
    let job = std::fs::read_to_string(jobs_dir().join("e2e/device-group-two-kvm.json"))
        .unwrap()
        .replace("@GUEST_KERNEL@", &images.guest_kernel.display().to_string())
        .replace(
            "@GUEST_INITRD@",
            &images.guest_initramfs.display().to_string(),
        )
        // Keep the server busy so the job is still running when the daemon dies.
        .replace(
            "lava-sync done && lava-test-case synced",
            "sleep 600; lava-sync done && lava-test-case synced",
        );
    let daemon = Daemon::start(&config);
    let addr = daemon.addr();
    let id = submit_job(&addr, &token, &job);
    follow_until(
        &addr,
        &token,
        id,
        "\"node\":\"server\",\"msg\":\"start: test\"",
    );
    // The web page follows the running job's log live, every node interleaved.
    let page = chromium(
        &format!("{}/?token={token}#/job/{id}", daemon.url),
        4000,
        "job-running.png",
    );
    for node in ["server", "client"] {
        assert!(
            page.contains(&format!(">{node}</span>")),
            "no live log lines of {node}: {page}"
        );
    }
    assert!(page.contains("id=\"job-state\">running<"), "{page}");
    daemon.kill();
    let job_dir = state.join("jobs").join(id.to_string());
    assert!(
        !processes_under(&job_dir).is_empty(),
        "the job's VMs should still run after the crash"
    );
    let daemon = Daemon::start(&config);
    // The restarted daemon told them to quit before it listened; they take a moment
    // to exit, which nothing announces: look, for a bounded time.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !processes_under(&job_dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        processes_under(&job_dir),
        "",
        "VMs left by the crash still run"
    );
    let state = job_state(&daemon.addr(), &token, id);
    assert_eq!(state["error"][1], "dispatcher restarted", "{state}");
}
