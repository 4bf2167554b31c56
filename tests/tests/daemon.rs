//! The daemon as a lab runs it: `dispatcher serve` as a real process with its SQLite
//! database, its HTTP API spoken over real sockets (and by the `dispatcher` CLI), jobs
//! scheduled onto an `ssh-host` device (sshd in a network namespace) and run on real
//! qemu; and a daemon killed mid-job that, restarted, has lost nothing submitted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use system_tests::{
    CoordinatorProcess, Daemon, SshHost, binary, create_token, daemon_config, jobs_dir, json_of,
    kvm_daemon_config, parse_junit, parse_tap, repo_root, test_images,
};

/// A lab of ssh-host devices (`ssh-host-01` ...) and a daemon configuration for it.
struct Lab {
    host: SshHost,
    /// Hosts after the first (`ssh-host-02` ...), alive as long as the lab.
    _more_hosts: Vec<SshHost>,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Lab {
    fn new() -> Self {
        Self::with_hosts(1)
    }

    fn with_hosts(count: usize) -> Self {
        Self::configured(count, "")
    }

    /// A lab of `count` hosts whose daemon configuration has `extra` lines.
    fn configured(count: usize, extra: &str) -> Self {
        let images = test_images();
        let start = || SshHost::start(Some((&images.lab_key, &images.lab_pubkey)));
        let host = start();
        let more_hosts: Vec<SshHost> = (1..count).map(|_| start()).collect();
        let dir = tempfile::tempdir().unwrap();
        // No identity in the device file: the daemon's lab key is used.
        let devices = host.device_files(dir.path(), false);
        for (i, more) in more_hosts.iter().enumerate() {
            more.device_file(dir.path(), &format!("ssh-host-{:02}", i + 2), false);
        }
        let config = daemon_config(
            dir.path(),
            &devices,
            &host,
            &format!("max_job_bytes = 65536\n{extra}"),
        );
        Self {
            host,
            _more_hosts: more_hosts,
            dir,
            config,
        }
    }

    fn token(&self) -> String {
        self.token_with(&["ci"])
    }

    /// A token, the daemon started on this lab, and its address.
    fn serve(&self) -> (String, Daemon, String) {
        let token = self.token();
        let daemon = Daemon::start(&self.config);
        let addr = daemon.addr();
        (token, daemon, addr)
    }

    /// `dispatcher token create ARGS`: the new token.
    fn token_with(&self, args: &[&str]) -> String {
        create_token(&self.config, args)
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

/// One HTTP/1.1 request to the daemon: status and body.
fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, String) {
    system_tests::http(addr, method, path, token, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
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

/// [`chromium`] until the page shows `expected`, at most three times: on a busy
/// machine a browser's virtual-time budget can end before the page's last fetch has
/// been answered, which says nothing about the page.
fn chromium_showing(url: &str, millis: u32, screenshot: &str, expected: &str) -> String {
    let mut page = String::new();
    for _ in 0..3 {
        page = chromium(url, millis, screenshot);
        if page.contains(expected) {
            break;
        }
    }
    page
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
    let (token, daemon, addr) = lab.serve();

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
    let found = pointers(&body);
    assert!(
        found.iter().any(|p| p == "/vm_group/vms/1/cont"),
        "{found:?}"
    );
    assert!(found.len() >= 3, "every problem at once: {found:?}");

    let huge = vec![b' '; 100_000];
    let (status, _) = http(&addr, "POST", "/api/v1/jobs", Some(&token), &huge);
    assert_eq!(status, 413, "a job past max_job_bytes");

    // A read-only token reads, and may neither submit, cancel nor set health.
    let reader = lab.token_with(&["dashboard", "--read-only"]);
    let (status, body) = http(&addr, "GET", "/api/v1/devices", Some(&reader), b"");
    assert_eq!(status, 200, "{body}");
    let seed = lab.seed_job();
    for (method, path, body) in [
        ("POST", "/api/v1/jobs", seed.as_bytes()),
        ("POST", "/api/v1/jobs/1/cancel", &b""[..]),
        (
            "PUT",
            "/api/v1/devices/ssh-host-01/health",
            &br#"{"health":"bad"}"#[..],
        ),
    ] {
        let (status, answer) = http(&addr, method, path, Some(&reader), body);
        assert_eq!(status, 403, "{method} {path}: {answer}");
        assert!(answer.contains("token dashboard is read-only"), "{answer}");
    }

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
    let page = chromium_showing(
        &format!("{}/?token={token}#/job/1", daemon.url),
        5000,
        "job-finished.png",
        "id=\"results-table\"",
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
    let (token, daemon, addr) = lab.serve();
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
    let (token, daemon, addr) = lab.serve();
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
    let state = dir.path().join("state");
    let config = kvm_daemon_config(dir.path(), "public_reads = true\n");
    let token = create_token(&config, &["ci"]);
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

/// A tiny deterministic generator (xorshift), so a failure names a reproducible case.
struct Cases(u64);

impl Cases {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A value of another JSON type than `original`.
fn wrong_type(original: &Value, pick: usize) -> Value {
    let candidates = [
        Value::from(42),
        Value::from("text"),
        Value::Array(vec![]),
        serde_json::json!({}),
        Value::Null,
        Value::Bool(true),
    ];
    let same = |v: &Value| {
        std::mem::discriminant(v) == std::mem::discriminant(original)
            || (v.is_number() && original.is_number())
    };
    let others: Vec<&Value> = candidates.iter().filter(|v| !same(v)).collect();
    others[pick % others.len()].clone()
}

/// The pointers of a 400 answer's diagnostics.
fn pointers(answer: &str) -> Vec<String> {
    json_of(answer)["diagnostics"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|d| d["pointer"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// 1,000 bad jobs: bytes that are not JSON, cut-off JSON, nesting thousands deep, wrong
/// types, missing and unknown fields, invalid UTF-8, bodies past the size limit. Each
/// gets a 4xx whose body names the problem (and, for a job that parses, where); the
/// daemon stays up and stores none of them.
#[test]
fn a_thousand_malformed_jobs_get_clear_4xx_answers() {
    let lab = Lab::new();
    let (token, _daemon, addr) = lab.serve();
    let seed_text = lab.seed_job();
    let seed: Value = serde_json::from_str(&seed_text).unwrap();
    let typed = [
        "/job_name",
        "/timeout",
        "/vm_group",
        "/vm_group/host",
        "/vm_group/host/device_type",
        "/vm_group/host/role",
        "/vm_group/auto_start_vms",
        "/vm_group/vms",
        "/vm_group/vms/0",
        "/vm_group/vms/0/role",
        "/vm_group/vms/0/shell_prompt",
        "/actions",
        "/actions/0/command",
        "/actions/0/parameters",
    ];
    let required = [
        ("", "actions"),
        ("", "timeout"),
        ("/vm_group", "host"),
        ("/vm_group", "vms"),
        ("/vm_group/host", "device_type"),
        ("/vm_group/vms/0", "device_type"),
        ("/actions/0", "command"),
    ];
    let mut cases = Cases(0x2545_F491_4F6C_DD1D);
    let mut by_kind = [0usize; 8];
    for i in 0..1000 {
        let kind = i % 8;
        by_kind[kind] += 1;
        // What the answer must show: a status and a text (or pointer) in its body.
        let (body, status_wanted, must_name): (Vec<u8>, u16, String) = match kind {
            0 => {
                let len = 1 + cases.below(200);
                let bytes = (0..len).map(|_| (cases.next() >> 24) as u8).collect();
                (bytes, 400, String::new())
            }
            1 => {
                let cut = 1 + cases.below(seed_text.len() - 2);
                (seed_text.as_bytes()[..cut].to_vec(), 400, "line".into())
            }
            2 => {
                let depth = 200 + cases.below(5000);
                let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
                (text.into_bytes(), 400, String::new())
            }
            3 => {
                let pointer = typed[cases.below(typed.len())];
                let mut job = seed.clone();
                let original = job.pointer(pointer).unwrap().clone();
                *job.pointer_mut(pointer).unwrap() = wrong_type(&original, cases.below(6));
                (job.to_string().into_bytes(), 400, pointer.to_string())
            }
            4 => {
                let (parent, key) = required[cases.below(required.len())];
                let mut job = seed.clone();
                job.pointer_mut(parent)
                    .unwrap()
                    .as_object_mut()
                    .unwrap()
                    .remove(key);
                (job.to_string().into_bytes(), 400, key.to_string())
            }
            5 => {
                let mut job = seed.clone();
                let key = format!("bogus_{i}");
                job["vm_group"][&key] = Value::from(1);
                (
                    job.to_string().into_bytes(),
                    400,
                    format!("/vm_group/{key}"),
                )
            }
            6 => {
                let mut job = seed_text.clone().into_bytes();
                job.extend(std::iter::repeat_n(b' ', 65_536 + cases.below(100_000)));
                (job, 413, String::new())
            }
            _ => {
                let mut job = seed_text.clone().into_bytes();
                let at = seed_text.find("vm-groups").unwrap();
                job[at] = 0xff;
                (job, 400, "UTF-8".into())
            }
        };
        let (status, answer) = http(&addr, "POST", "/api/v1/jobs", Some(&token), &body);
        assert_eq!(status, status_wanted, "case {i} (kind {kind}): {answer}");
        if status == 400 {
            let error = json_of(&answer)["error"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(!error.is_empty(), "case {i}: no error text in {answer}");
            if kind == 3 || kind == 5 {
                let found = pointers(&answer);
                assert!(
                    found.iter().any(|p| p == &must_name),
                    "case {i}: {must_name} not among {found:?}"
                );
            } else if !must_name.is_empty() {
                assert!(
                    answer.contains(&must_name),
                    "case {i}: {must_name:?} not in {answer}"
                );
            }
        }
    }
    assert_eq!(by_kind.iter().sum::<usize>(), 1000);
    let (status, _) = http(&addr, "GET", "/healthz", None, b"");
    assert_eq!(status, 200, "the daemon is still up");
    let (status, body) = http(&addr, "GET", "/api/v1/jobs", Some(&token), b"");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json_of(&body)["jobs"].as_array().map(Vec::len),
        Some(0),
        "no bad job was stored: {body}"
    );
}

/// The limits in the daemon's configuration apply to submitted jobs, each refusal
/// naming the limit and where the job crosses it.
#[test]
fn configured_limits_refuse_jobs_past_them() {
    let lab = Lab::new();
    let mut config = std::fs::read_to_string(&lab.config).unwrap();
    config.push_str("max_group_size = 2\nmax_count = 1\n");
    std::fs::write(&lab.config, config).unwrap();
    let (token, _daemon, addr) = lab.serve();
    // The seed job: a host and two VMs, three nodes.
    let (status, answer) = http(
        &addr,
        "POST",
        "/api/v1/jobs",
        Some(&token),
        lab.seed_job().as_bytes(),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        pointers(&answer).contains(&"/vm_group/vms".to_string()),
        "{answer}"
    );
    assert!(answer.contains("at most 2 nodes in one job"), "{answer}");
    let mut job: Value = serde_json::from_str(&lab.seed_job()).unwrap();
    job["vm_group"]["vms"][0]["count"] = Value::from(2);
    let (status, answer) = http(
        &addr,
        "POST",
        "/api/v1/jobs",
        Some(&token),
        job.to_string().as_bytes(),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        pointers(&answer)
            .iter()
            .any(|p| p == "/vm_group/vms/0/count"),
        "{answer}"
    );
}

/// The whole log of a job, followed until the job ends: its lines, in order.
fn follow_to_end(addr: &str, token: &str, job: u64) -> Vec<Value> {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /api/v1/jobs/{job}/log?follow=1 HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Token {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let (head, mut rest) = (
        String::from_utf8_lossy(&answer[..split]),
        &answer[split + 4..],
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The log streams with chunked encoding: undo it before splitting lines.
    let mut body = Vec::new();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16)
                .unwrap();
            if size == 0 {
                break;
            }
            body.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[eol + 2 + size + 2..];
        }
    } else {
        body.extend_from_slice(rest);
    }
    String::from_utf8_lossy(&body)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line {l:?}: {e}")))
        .collect()
}

/// The job's id from a log line `job ID running on DEVICE`, and the device.
fn running_on(line: &Value) -> Option<(u64, String)> {
    let msg = line["msg"].as_str()?.strip_prefix("job ")?;
    let (id, device) = msg.split_once(" running on ")?;
    Some((id.parse().ok()?, device.to_string()))
}

/// Waits (bounded) until no qemu runs on the host: a VM whose console was hung up stops
/// on its own, and nothing announces it.
fn until_no_qemu(host: &SshHost) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !host.pids_of("qemu").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    host.assert_no_qemu();
}

/// After a fault: the job ended incomplete with `class`, its host directory is gone,
/// no VM is left, and the device is back in the pool (health `unknown` after an
/// `infrastructure` failure).
fn assert_fault_handled(lab: &Lab, addr: &str, token: &str, job: u64, class: &str) -> Value {
    let state = job_state(addr, token, job);
    assert_eq!(state["state"], "finished", "{state}");
    assert_eq!(state["health"], "incomplete", "{state}");
    assert_eq!(state["error"][0], class, "{state}");
    until_no_qemu(&lab.host);
    let job_dir = Path::new(&lab.host.scratch())
        .join("jobs")
        .join(job.to_string());
    assert!(!job_dir.exists(), "{} left on the host", job_dir.display());
    let (_, body) = http(addr, "GET", "/api/v1/devices", Some(token), b"");
    let device = json_of(&body)["devices"][0].clone();
    // Back in the pool: idle, or already running the next queued job.
    assert!(
        device["state"]["state"] == "idle" || device["state"]["job"] != job,
        "{body}"
    );
    // The device was marked good before the job (mark_good): an infrastructure
    // failure leaves it unknown, any other failure says nothing about it.
    let health = if class == "infrastructure" {
        "unknown"
    } else {
        "good"
    };
    assert_eq!(device["health"], health, "{body}");
    state
}

/// An admin marks the lab's device good.
fn mark_good(addr: &str, token: &str) {
    let (status, body) = http(
        addr,
        "PUT",
        "/api/v1/devices/ssh-host-01/health",
        Some(token),
        br#"{"health":"good"}"#,
    );
    assert_eq!(status, 200, "{body}");
}

/// A VM's qemu killed mid-test: the job fails naming that VM, the other nodes' MultiNode
/// calls are released by the failure (not by their timeouts), and everything is cleaned.
#[test]
fn a_killed_vm_fails_the_job_and_releases_its_group() {
    let lab = Lab::new();
    let (token, _daemon, addr) = lab.serve();
    mark_good(&addr, &token);
    let job = submit_job(&addr, &token, &lab.seed_job());
    follow_until(
        &addr,
        &token,
        job,
        "\"node\":\"client\",\"msg\":\"start: test\"",
    );
    let qemus = lab.host.pids_of("qemu");
    assert_eq!(qemus.len(), 2, "two VMs run");
    for pid in &qemus {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let log = follow_to_end(&addr, &token, job);
    let state = assert_fault_handled(&lab, &addr, &token, job, "infrastructure");
    // It names the VM (which step it was in when killed, boot or test, varies).
    let error = state["error"][1].as_str().unwrap_or_default();
    assert!(
        (error.starts_with("server (server): ") || error.starts_with("client (client): "))
            && error.contains("the console closed"),
        "{state}"
    );
    // The host was waiting in lava-sync for the VMs: the failure released it.
    assert!(
        released(&log, "host", "lava-sync"),
        "the host's lava-sync was not released by the failure: {log:#?}"
    );
}

/// Whether `node`'s `call` failed because another node failed (not by its deadline).
fn released(log: &[Value], node: &str, call: &str) -> bool {
    log.iter().any(|l| {
        l["node"] == node
            && l["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with(&format!("{call}: ")) && m.contains(" failed ("))
    })
}

/// The SSH connection to the host cut mid-test: the job ends incomplete saying so, the
/// dispatcher reconnects to clean the host, and the next job runs normally.
#[test]
fn a_dropped_ssh_connection_fails_the_job_and_the_next_one_runs() {
    let lab = Lab::new();
    let (token, _daemon, addr) = lab.serve();
    mark_good(&addr, &token);
    let job = submit_job(&addr, &token, &lab.seed_job());
    let next = submit_job(&addr, &token, &lab.seed_job());
    follow_until(
        &addr,
        &token,
        job,
        "\"node\":\"client\",\"msg\":\"start: test\"",
    );
    assert!(lab.host.drop_connections() > 0, "a session to cut");
    let log = follow_to_end(&addr, &token, job);
    assert_fault_handled(&lab, &addr, &token, job, "infrastructure");
    assert!(
        log.iter()
            .any(|l| l["msg"] == "the SSH connection to ssh-host-01 was lost"),
        "the log does not say the connection was lost: {log:#?}"
    );
    assert!(
        log.iter().any(|l| l["msg"]
            .as_str()
            .is_some_and(|m| m.contains("cleaning over a new one"))),
        "{log:#?}"
    );
    follow_to_end(&addr, &token, next);
    assert_eq!(job_state(&addr, &token, next)["health"], "complete");
}

/// A test shell that hangs past its action's timeout: the job ends `timeout`, naming
/// the action, and the nodes waiting for the hung one are released.
#[test]
fn a_hung_test_shell_times_out_and_releases_the_group() {
    let lab = Lab::new();
    let (token, _daemon, addr) = lab.serve();
    mark_good(&addr, &token);
    let mut job: Value = serde_json::from_str(&lab.seed_job()).unwrap();
    let host_test = job
        .pointer_mut("/actions/2/parameters")
        .unwrap()
        .as_object_mut()
        .unwrap();
    // Long enough for both VMs to boot and block in lava-sync first, even on a busy CI
    // machine.
    host_test.insert("timeout".into(), Value::from(40));
    *job.pointer_mut("/actions/2/parameters/testdef_repos/0/inline/run/steps")
        .unwrap() = serde_json::json!(["sleep 3600"]);
    let id = submit_job(&addr, &token, &job.to_string());
    let log = follow_to_end(&addr, &token, id);
    let state = assert_fault_handled(&lab, &addr, &token, id, "timeout");
    assert!(
        state["error"][1]
            .as_str()
            .is_some_and(|e| e.contains("host")),
        "the error names the hung node: {state}"
    );
    // Both VMs were waiting in lava-sync for the host: its failure released them.
    for vm in ["server", "client"] {
        assert!(
            released(&log, vm, "lava-sync"),
            "{vm} not released: {log:#?}"
        );
    }
}

/// 200 jobs submitted at once to a lab of 4 devices: every job runs exactly once and
/// completes, no device ever holds two jobs at a time, and 50 clients following the
/// last job's log (through its whole wait in the queue) each get all of it.
#[test]
fn two_hundred_jobs_on_four_devices_each_run_once() {
    let lab = Lab::with_hosts(4);
    let (token, _daemon, addr) = lab.serve();
    // The VM is a shell its launch_with starts on the host: the jobs are about the
    // queue, not about booting (its image is uploaded, and cached, all the same).
    let job = std::fs::read_to_string(jobs_dir().join("e2e/shell-vm.json"))
        .unwrap()
        .replace(
            "@GUEST_KERNEL@",
            &test_images().guest_kernel.display().to_string(),
        );
    let ids: Vec<u64> = (0..200).map(|_| submit_job(&addr, &token, &job)).collect();
    let last = ids[ids.len() - 1];
    let followers: Vec<_> = (0..50)
        .map(|_| {
            let (addr, token) = (addr.clone(), token.clone());
            std::thread::spawn(move || follow_to_end(&addr, &token, last))
        })
        .collect();
    // Per device: (first log time, last log time, job) of every job it ran.
    let mut runs: std::collections::BTreeMap<String, Vec<(String, String, u64)>> =
        std::collections::BTreeMap::new();
    for &id in &ids {
        let log = follow_to_end(&addr, &token, id);
        let state = job_state(&addr, &token, id);
        assert_eq!(state["health"], "complete", "job {id}: {state}\n{log:#?}");
        let starts: Vec<(u64, String)> = log.iter().filter_map(running_on).collect();
        assert_eq!(starts.len(), 1, "job {id} ran once: {starts:?}");
        assert_eq!(starts[0].0, id);
        let time = |line: &Value| line["dt"].as_str().unwrap_or_default().to_string();
        runs.entry(starts[0].1.clone()).or_default().push((
            time(&log[0]),
            time(&log[log.len() - 1]),
            id,
        ));
    }
    assert_eq!(runs.len(), 4, "every device took jobs: {:?}", runs.keys());
    for (device, spans) in &mut runs {
        // RFC 3339 times of one format sort as they happened.
        spans.sort();
        for pair in spans.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "{device} ran two jobs at once: {pair:?}"
            );
        }
    }
    let whole = follow_to_end(&addr, &token, last);
    for follower in followers {
        assert_eq!(follower.join().unwrap(), whole, "a follower missed lines");
    }
}

/// A daemon using a standalone coordinator that is killed (SIGKILL) mid-job, while the
/// host's test shell is blocked in `lava-sync`, and started again with its state
/// directory: the job carries on and completes. The guest arrives at the barrier only
/// after the restart, and each node reads the message the other sent, one of them
/// before the restart.
#[test]
fn a_standalone_coordinator_restarted_mid_job_loses_nothing() {
    let mut coordinator = CoordinatorProcess::start_keeping_state();
    let lab = Lab::configured(
        1,
        &format!(
            "coordinator_url = \"{}\"\ncoordinator_token_file = \"{}\"\n",
            coordinator.grpc,
            coordinator.token_file.display()
        ),
    );
    let (token, daemon, addr) = lab.serve();
    let go = lab.dir.path().join("go.fifo");
    nix::unistd::mkfifo(&go, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut job: Value = serde_json::from_str(
        &std::fs::read_to_string(jobs_dir().join("e2e/shell-vm.json"))
            .unwrap()
            .replace(
                "@GUEST_KERNEL@",
                &test_images().guest_kernel.display().to_string(),
            ),
    )
    .unwrap();
    // The shell started as the VM finds the job's lava-* commands (the VM's working
    // directory is JOB/vms/ID on the host).
    job["vm_group"]["vms"][0]["launch_with"] =
        Value::from("env PS1='guest:~# ' PATH=\"$PWD/../../bin:$PATH\" sh -i");
    let steps = |steps: &[&str]| {
        serde_json::json!([{
            "inline": {
                "metadata": {"name": "restart", "format": "Lava-Test Test Definition 1.0"},
                "run": {"steps": steps}
            }
        }])
    };
    job["actions"][0]["parameters"]["testdef_repos"] = steps(&[
        "lava-send hello from=host",
        "lava-sync restart",
        "lava-wait-all hello",
        "lava-test-case guest-message --shell grep -qx guest:from=guest \"$LAVA_MULTI_NODE_CACHE\"",
    ]);
    let guest_read = format!("read go < {}", go.display());
    job["actions"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "command": "lava_test_shell",
            "parameters": {"role": "guest", "testdef_repos": steps(&[
                &guest_read,
                "lava-send hello from=guest",
                "lava-sync restart",
                "lava-wait-all hello",
            ])}
        }));
    let id = submit_job(&addr, &token, &job.to_string());
    // The host is blocked in the barrier (the daemon logs waits it watches on the
    // standalone coordinator).
    follow_until(&addr, &token, id, "lava-sync 'restart' waits for 1: guest");
    coordinator.kill_and_restart();
    // Opening a FIFO for writing blocks until the guest reads it.
    std::fs::write(&go, "go\n").unwrap();
    let log = follow_to_end(&addr, &token, id);
    let state = job_state(&addr, &token, id);
    assert_eq!(state["health"], "complete", "{state}\n{log:#?}");
    let results = dispatcher_cli(&daemon, &token, &["results", &id.to_string()]);
    let results = json_of(&String::from_utf8_lossy(&results.stdout));
    let passed: Vec<String> = results["results"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|node| {
            let name = node["node"].as_str().unwrap_or_default().to_string();
            node["results"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["result"] == "pass")
                .map(move |r| format!("{name}.{}", r["case"].as_str().unwrap_or_default()))
        })
        .collect();
    for case in [
        "host.multinode-sync-restart",
        "host.multinode-wait-all-hello",
        "host.guest-message",
        "guest.multinode-sync-restart",
        "guest.multinode-wait-all-hello",
    ] {
        assert!(passed.iter().any(|p| p == case), "{case}: {results:#}");
    }
    lab.host.assert_no_qemu();
}

/// A daemon configured with a standalone coordinator that refuses its token, or that
/// is not there, does not start, and says why.
#[test]
fn a_standalone_coordinator_that_refuses_the_token_or_is_away_stops_the_start() {
    let coordinator = CoordinatorProcess::start();
    let wrong = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(wrong.path(), "not-the-admin-token-at-all\n").unwrap();
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let away = format!("http://{}", unused.local_addr().unwrap());
    drop(unused);
    for (url, token_file, expected) in [
        (
            coordinator.grpc.clone(),
            wrong.path().to_path_buf(),
            "refused the token in",
        ),
        (
            away.clone(),
            coordinator.token_file.clone(),
            "cannot reach the coordinator at",
        ),
    ] {
        let lab = Lab::configured(
            1,
            &format!(
                "coordinator_url = \"{url}\"\ncoordinator_token_file = \"{}\"\n",
                token_file.display()
            ),
        );
        let out = Command::new(binary("dispatcher"))
            .args(["serve", "--config"])
            .arg(&lab.config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(stderr.contains(&url), "names the coordinator: {stderr}");
    }
}
