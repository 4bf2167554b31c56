use std::process::Command;

use serde_json::Value;
use system_tests::{CoordinatorProcess, SshLab, binary, e2e_job, json_of};

/// A daemon using a standalone coordinator that is killed (SIGKILL) mid-job, while the
/// host's test shell is blocked in `lava-sync`, and started again with its state
/// directory: the job carries on and completes. The guest arrives at the barrier only
/// after the restart, and each node reads the message the other sent, one of them
/// before the restart.
#[test]
fn a_standalone_coordinator_restarted_mid_job_loses_nothing() {
    let mut coordinator = CoordinatorProcess::start_keeping_state();
    let lab = SshLab::configured(
        1,
        &format!(
            "coordinator_url = \"{}\"\ncoordinator_token_file = \"{}\"\n",
            coordinator.grpc,
            coordinator.token_file.display()
        ),
    );
    let (daemon, api) = lab.serve();
    let go = lab.dir.path().join("go.fifo");
    nix::unistd::mkfifo(&go, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut job: Value = serde_json::from_str(&e2e_job("shell-vm.json", "ssh-host")).unwrap();
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
    let id = api.submit(&job.to_string()).unwrap();
    // The host is blocked in the barrier (the daemon logs waits it watches on the
    // standalone coordinator).
    api.follow_until(id, "lava-sync 'restart' waits for 1: guest")
        .unwrap();
    coordinator.kill_and_restart();
    // Opening a FIFO for writing blocks until the guest reads it.
    std::fs::write(&go, "go\n").unwrap();
    let log = api.follow_log(id).unwrap();
    let state = api.job_state(id).unwrap();
    assert_eq!(state["health"], "complete", "{state}\n{log:#?}");
    let results = daemon.cli(
        api.token(),
        &["results", &id.to_string(), "--format", "json"],
    );
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
        let lab = SshLab::configured(
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
        // Said once, in words (not as the percent-encoded gRPC header it came in).
        assert_eq!(stderr.matches(expected).count(), 1, "{stderr}");
        assert!(!stderr.contains("%20"), "{stderr}");
    }
}
