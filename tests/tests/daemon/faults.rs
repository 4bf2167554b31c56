use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use system_tests::{ApiClient, Daemon, SEED_HOST_STEPS, SshLab};

use crate::CLIENT_TESTING;

/// After a fault: the job ended incomplete with `class`, its host directory is gone,
/// no VM is left, and the device is back in the pool (health `unknown` after an
/// `infrastructure` failure).
fn assert_fault_handled(lab: &SshLab, api: &ApiClient, job: u64, class: &str) -> Value {
    let state = api.job_state(job).unwrap();
    assert_eq!(state["state"], "finished", "{state}");
    assert_eq!(state["health"], "incomplete", "{state}");
    assert_eq!(state["error"][0], class, "{state}");
    lab.host.until_no_qemu(Duration::from_secs(60));
    lab.host.assert_no_qemu();
    let job_dir = Path::new(&lab.host.scratch())
        .join("jobs")
        .join(job.to_string());
    assert!(!job_dir.exists(), "{} left on the host", job_dir.display());
    let devices = api.devices().unwrap();
    let device = devices["devices"][0].clone();
    // Back in the pool: idle, or already running the next queued job.
    assert!(
        device["state"]["state"] == "idle" || device["state"]["job"] != job,
        "{devices}"
    );
    // The device was marked good before the job (serve_marked_good): an infrastructure
    // failure leaves it unknown, any other failure says nothing about it.
    let health = if class == "infrastructure" {
        "unknown"
    } else {
        "good"
    };
    assert_eq!(device["health"], health, "{devices}");
    state
}

/// The daemon serving `lab`, its API client, and the lab's device marked good by an
/// admin.
fn serve_marked_good(lab: &SshLab) -> (Daemon, ApiClient) {
    let (daemon, api) = lab.serve();
    api.set_health("ssh-host-01", "good").unwrap();
    (daemon, api)
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

/// A VM's qemu killed mid-test: the job fails naming that VM, the other nodes' MultiNode
/// calls are released by the failure (not by their timeouts), and everything is cleaned.
#[test]
fn a_killed_vm_fails_the_job_and_releases_its_group() {
    let lab = SshLab::new();
    let (_daemon, api) = serve_marked_good(&lab);
    let job = api.submit(&lab.seed_job()).unwrap();
    api.follow_until(job, CLIENT_TESTING).unwrap();
    let qemus = lab.host.pids_of("qemu");
    assert_eq!(qemus.len(), 2, "two VMs run");
    for pid in &qemus {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let log = api.follow_log(job).unwrap();
    let state = assert_fault_handled(&lab, &api, job, "infrastructure");
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

/// The SSH connection to the host cut mid-test: the job ends incomplete saying so, the
/// dispatcher reconnects to clean the host, and the next job runs normally.
#[test]
fn a_dropped_ssh_connection_fails_the_job_and_the_next_one_runs() {
    let lab = SshLab::new();
    let (_daemon, api) = serve_marked_good(&lab);
    let job = api.submit(&lab.seed_job()).unwrap();
    let next = api.submit(&lab.seed_job()).unwrap();
    api.follow_until(job, CLIENT_TESTING).unwrap();
    assert!(lab.host.drop_connections() > 0, "a session to cut");
    let log = api.follow_log(job).unwrap();
    assert_fault_handled(&lab, &api, job, "infrastructure");
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
    api.follow_log(next).unwrap();
    assert_eq!(api.job_state(next).unwrap()["health"], "complete");
}

/// A test shell that hangs past its action's timeout: the job ends `timeout`, naming
/// the action, and the nodes waiting for the hung one are released.
#[test]
fn a_hung_test_shell_times_out_and_releases_the_group() {
    let lab = SshLab::new();
    let (_daemon, api) = serve_marked_good(&lab);
    let mut job: Value = serde_json::from_str(&lab.seed_job()).unwrap();
    let host_test = job
        .pointer_mut("/actions/2/parameters")
        .unwrap()
        .as_object_mut()
        .unwrap();
    // Long enough for both VMs to boot and block in lava-sync first, even on a busy CI
    // machine.
    host_test.insert("timeout".into(), Value::from(40));
    *job.pointer_mut(SEED_HOST_STEPS).unwrap() = serde_json::json!(["sleep 3600"]);
    let id = api.submit(&job.to_string()).unwrap();
    let log = api.follow_log(id).unwrap();
    let state = assert_fault_handled(&lab, &api, id, "timeout");
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
