use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use system_tests::{Browser, Daemon, SshLab, create_token, e2e_job, kvm_daemon_config};

use crate::CLIENT_TESTING;

#[test]
fn a_restarted_daemon_loses_no_job_and_leaves_no_vm() {
    let lab = SshLab::new();
    let (daemon, api) = lab.serve();
    let token = api.token().to_string();
    let job = lab.seed_job();
    let first = api.submit(&job).unwrap();
    // One device: the second job waits in the queue.
    let second = api.submit(&job).unwrap();
    // The first job's VMs are up and its test shells running.
    api.follow_until(first, CLIENT_TESTING).unwrap();
    let state = api.job_state(second).unwrap();
    assert_eq!(state["state"], "submitted", "{state}");

    daemon.kill();
    // The VMs were attached to the daemon's SSH session: with it gone, sshd hangs up
    // their consoles and they stop. Nothing announces that, so look, for a bounded time.
    lab.host.until_no_qemu(Duration::from_secs(60));
    lab.host.assert_no_qemu();

    let daemon = Daemon::start(&lab.config);
    let api = daemon.api(&token);
    let state = api.job_state(first).unwrap();
    assert_eq!(state["state"], "finished", "{state}");
    assert_eq!(state["health"], "incomplete", "{state}");
    assert_eq!(state["error"][0], "infrastructure", "{state}");
    assert_eq!(state["error"][1], "dispatcher restarted", "{state}");
    // The queued job survived the restart and now runs to the end.
    let out = daemon.cli(&token, &["logs", &second.to_string(), "--follow"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = api.job_state(second).unwrap();
    assert_eq!(state["health"], "complete", "{state}");
    // The followed log had every node interleaved, and it ended with the job.
    let followed = String::from_utf8_lossy(&out.stdout);
    for node in ["[host]", "[server]", "[client]"] {
        assert!(followed.contains(node), "{node} missing from:\n{followed}");
    }
    assert!(followed.contains("job finished: Complete"), "{followed}");
    let one = daemon.cli(&token, &["logs", &second.to_string(), "--node", "client"]);
    let err = String::from_utf8_lossy(&one.stderr).into_owned();
    let one = String::from_utf8_lossy(&one.stdout);
    assert!(
        one.lines().count() > 5 && one.lines().all(|l| l.contains(" [client] ")),
        "{one}{err}"
    );
    lab.host.assert_no_qemu();
}

#[test]
fn cancel_and_a_graceful_shutdown_stop_running_jobs_and_keep_the_queue() {
    let lab = SshLab::new();
    let (mut daemon, api) = lab.serve();
    let token = api.token().to_string();
    let job = lab.seed_job();
    let submit = || api.submit(&job).unwrap();
    let (first, second) = (submit(), submit());
    api.follow_until(first, CLIENT_TESTING).unwrap();
    let out = daemon.cli(&token, &["cancel", &first.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `logs --follow` returns once the job has ended, its exit status the job's: 3,
    // canceled.
    let out = daemon.cli(&token, &["logs", &first.to_string(), "--follow"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = api.job_state(first).unwrap();
    assert_eq!(state["health"], "canceled", "{state}");
    lab.host.assert_no_qemu();

    // The device is free again: the second job runs; a third waits behind it.
    api.follow_until(second, CLIENT_TESTING).unwrap();
    let third = submit();
    let status = daemon.terminate().unwrap();
    assert!(status.success(), "a graceful shutdown exits 0: {status}");
    lab.host.assert_no_qemu();

    let daemon = Daemon::start(&lab.config);
    let api = daemon.api(&token);
    assert_eq!(api.job_state(second).unwrap()["health"], "canceled");
    let state = api.job_state(third).unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = kvm_daemon_config(dir.path(), "public_reads = true\n");
    let token = create_token(&config, &["ci"]);
    // Keep the server busy so the job is still running when the daemon dies.
    let job = e2e_job("device-group-two-kvm.json", "kvm").replace(
        "lava-sync done && lava-test-case synced",
        "sleep 600; lava-sync done && lava-test-case synced",
    );
    let daemon = Daemon::start(&config);
    let api = daemon.api(&token);
    let id = api.submit(&job).unwrap();
    api.follow_until(id, "\"node\":\"server\",\"msg\":\"start: test\"")
        .unwrap();
    // The web page follows the running job's log live, every node interleaved.
    // (Reads are public in this lab: no sign-in.)
    let mut browser = Browser::start();
    browser.show(
        &format!("{}/#/job/{id}", daemon.url),
        "#job-state",
        "running",
        "job-running.png",
    );
    for node in ["server", "client"] {
        browser.wait_for("#log .who", node);
    }
    // Its actions so far on the timeline, the running ones still open.
    let page = browser.wait_for("#timeline .lane[data-node=\"server\"] .bar.open", "test");
    browser.screenshot("job-running.png");
    assert!(page.contains("data-action=\"boot\""), "{page}");
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
    let state = daemon.api(&token).job_state(id).unwrap();
    assert_eq!(state["error"][1], "dispatcher restarted", "{state}");
}
