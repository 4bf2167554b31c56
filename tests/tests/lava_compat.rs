//! LAVA's own client code, from Debian 12's packages, against our coordinator's legacy
//! port: `status.py` (lava-coordinator's health check) and two `MultinodeProtocol`
//! clients (lava-dispatcher) doing the start barrier, send, wait, wait-all, sync and
//! clear_group. `scripts/install-lava-clients.sh` fetches the packages (no LAVA code is
//! kept in this repository); `tests/lava-compat/lava_clients.py` drives them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

use std::process::Command;

use system_tests::{CoordinatorProcess, repo_root};

fn lava_pythonpath() -> String {
    let output = Command::new("bash")
        .arg(repo_root().join("scripts/install-lava-clients.sh"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cannot fetch LAVA's clients from Debian:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn driver(pythonpath: &str, args: &[&str]) -> (i32, String) {
    let output = Command::new("/usr/bin/python3")
        .arg(repo_root().join("tests/lava-compat/lava_clients.py"))
        .args(args)
        .env("PYTHONPATH", pythonpath)
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn lavas_status_check_passes_against_our_legacy_port() {
    let pythonpath = lava_pythonpath();
    let coordinator = CoordinatorProcess::start();
    let port = coordinator.legacy_port.to_string();
    let (code, output) = driver(
        &pythonpath,
        &[
            "status",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--deadline",
            "60",
        ],
    );
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("status check complete. No errors"),
        "{output}"
    );
}

#[test]
fn two_lava_dispatcher_clients_send_wait_and_sync_through_us() {
    let pythonpath = lava_pythonpath();
    let coordinator = CoordinatorProcess::start();
    let port = coordinator.legacy_port.to_string();
    let (code, output) = driver(
        &pythonpath,
        &[
            "pair",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--poll-delay",
            "1",
            "--deadline",
            "120",
        ],
    );
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("pair ok"), "{output}");
}
