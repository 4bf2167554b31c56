//! Whole vm_group jobs through `dispatcher run` (and a device_group of every kind of
//! device through `dispatcher serve`), on real qemu: an `ssh-host` device
//! (sshd in a network namespace), the guest image deployed to it, VMs launched there,
//! test shells in host and guests talking through the coordinator, results read back,
//! and nothing left running.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use system_tests::{
    Daemon, GitDaemon, SEED_JOB, SshHost, binary, create_token, daemon_config, debian_image,
    e2e_job, free_port, kvm_devices, parse_junit, parse_tap, static_node_agent, test_images,
};

/// A job from `tests/jobs/e2e/`, with the test images filled in, written into `dir`.
fn job(name: &str, host_type: &str, dir: &Path) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, e2e_job(name, host_type)).unwrap();
    path
}

/// Runs `dispatcher run` and returns its JSON report and exit status.
fn dispatcher_run(job: &Path, devices: &Path, state: &Path, host_dir: &str) -> (Value, i32) {
    let out = Command::new(binary("dispatcher"))
        .arg("run")
        .arg(job)
        .arg("--devices")
        .arg(devices)
        .arg("--state-dir")
        .arg(state)
        .arg("--host-dir")
        .arg(host_dir)
        .arg("--node-agent")
        .arg(static_node_agent())
        .args(["--format", "json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); stdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (report, out.status.code().unwrap_or(-1))
}

/// `node.suite.case -> result` of every case in a report.
fn results(report: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for node in report["nodes"].as_array().unwrap() {
        for case in node["results"].as_array().unwrap() {
            found.push((
                format!(
                    "{}.{}.{}",
                    node["node"].as_str().unwrap(),
                    case["suite"].as_str().unwrap(),
                    case["case"].as_str().unwrap()
                ),
                case["result"].as_str().unwrap().to_string(),
            ));
        }
    }
    found.sort();
    found
}

#[test]
fn the_seed_job_runs_end_to_end_on_an_ssh_host() {
    let (report, status, _host, dir) = run_on_ssh_host_keeping(SEED_JOB);
    // The log shows transfers as they go and who each MultiNode wait waited for.
    let log =
        std::fs::read_to_string(only_job_dir(&dir.path().join("state")).join("job.log")).unwrap();
    assert!(log.contains("kernel upload: 100%"), "{log}");
    assert!(log.contains("lava-sync 'all-up' waits for"), "{log}");
    let found = results(&report);
    let failed: Vec<&(String, String)> = found.iter().filter(|(_, r)| r != "pass").collect();
    assert!(
        failed.is_empty(),
        "cases not passing: {failed:?}\n{report:#}"
    );
    for case in [
        "client.client-side.ping-server",
        "client.client-side.sync-all-up",
        "host.host-side.host-shell",
        "host.host-side.sees-group",
        "host.host-side.sync-all-up",
        "server.server-side.lan-address",
        "server.server-side.sync-all-up",
        // The node agent reports its MultiNode calls as cases, as LAVA does.
        "client.client-side.multinode-wait-server-ready",
        "server.server-side.multinode-send-server-ready",
    ] {
        assert!(
            found.iter().any(|(name, _)| name == case),
            "{case} missing from {found:?}"
        );
    }
    assert_eq!(report["health"], "complete", "{report:#}");
    assert_eq!(status, 0);
}

/// Runs `script` in `dir` with no user or system git configuration.
fn sh_in(dir: &Path, script: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .status()
        .unwrap();
    assert!(status.success(), "{script}");
}

/// A repository of test definitions with a script beside them: branch `stable` at the
/// first commit, `main` one commit further (a file `lava/newer` the job must not see).
/// The definitions install a second repository, `tools_url`, and a Bazaar branch
/// (`helpers`, made here), and run their scripts.
fn definitions_repository(base: &Path, tools_url: &str) {
    let helpers = base.join("bzr").join("helpers");
    std::fs::create_dir_all(&helpers).unwrap();
    std::fs::write(helpers.join("hi.sh"), "#!/bin/sh\necho hi from bzr\n").unwrap();
    sh_in(
        &helpers,
        "chmod +x hi.sh && BRZ_EMAIL='t <t@t>' brz init -q . && brz add -q hi.sh \
         && BRZ_EMAIL='t <t@t>' brz commit -q -m helpers",
    );
    let helpers_url = format!("file://{}", helpers.display());
    let tools = base.join("tools.git");
    std::fs::create_dir_all(&tools).unwrap();
    std::fs::write(tools.join("greet.sh"), "#!/bin/sh\necho hello from tools\n").unwrap();
    sh_in(
        &tools,
        "chmod +x greet.sh && git init -q -b main . && git config user.email t@t \
         && git config user.name t && git add -A && git commit -q -m tools",
    );
    let repo = base.join("tests.git");
    std::fs::create_dir_all(repo.join("lava")).unwrap();
    let definition = |name: &str| {
        format!(
            "metadata:\n  name: {name}-from-git\n  format: Lava-Test Test Definition 1.0\n\
             params:\n  GREETING: the definition's default\n\
             install:\n  git-repos:\n    - url: {tools_url}\n      destination: tools\n\
             \x20 bzr-repos:\n    - {helpers_url}\n\
             run:\n  steps:\n    - ./lava/check.sh {name} \"$GREETING\"\n\
             \x20   - lava-test-case {name}-install-bzr-repos --shell ./helpers/hi.sh\n\
             \x20   - lava-test-case {name}-install-git-repos --shell 'test \"$(./tools/greet.sh)\" = \"hello from tools\"'\n"
        )
    };
    std::fs::write(repo.join("lava/host.yaml"), definition("host")).unwrap();
    std::fs::write(repo.join("lava/guest.yaml"), definition("guest")).unwrap();
    // Runs at the repository's top: `lava/check.sh` is there, the job's parameter
    // replaced the definition's default, and the tree is the revision the job named.
    std::fs::write(
        repo.join("lava/check.sh"),
        r#"#!/bin/sh
[ -f lava/host.yaml ] && r=pass || r=fail; lava-test-case "$1-at-top" --result $r
case "$2" in "from the job's $1 entry") r=pass;; *) r=fail;; esac
lava-test-case "$1-parameter" --result $r
[ -f lava/newer ] && r=fail || r=pass; lava-test-case "$1-revision" --result $r
"#,
    )
    .unwrap();
    sh_in(
        &repo,
        "chmod +x lava/check.sh && git init -q -b main . && git config user.email t@t \
         && git config user.name t && git add -A && git commit -q -m first \
         && git branch stable && echo later > lava/newer && git add -A \
         && git commit -q -m second",
    );
}

#[test]
fn test_definitions_from_a_git_daemon_run_with_their_scripts_in_host_and_guest() {
    let (report, status, daemon) =
        run_git_job_on_ssh_host("git-repo-testdefs.json", "tests.git", |served, daemon| {
            definitions_repository(served, &daemon.url("tools.git"))
        });
    assert_passed(
        &report,
        &[
            "host.host-from-git.host-at-top",
            "host.host-from-git.host-parameter",
            "host.host-from-git.host-revision",
            "guest.guest-from-git.guest-at-top",
            "guest.guest-from-git.guest-parameter",
            "guest.guest-from-git.guest-revision",
            // install.git-repos: fetched here, used by a step in host and guest.
            "host.host-from-git.host-install-git-repos",
            "guest.guest-from-git.guest-install-git-repos",
            // install.bzr-repos: branched here with Breezy, used in host and guest.
            "host.host-from-git.host-install-bzr-repos",
            "guest.guest-from-git.guest-install-bzr-repos",
        ],
    );
    assert_eq!(report["health"], "complete", "{report:#}");
    assert_eq!(status, 0);
    // Both nodes' definitions came from one fetch, and both nodes' installs from one:
    // each branch was resolved once.
    assert_eq!(daemon.connections(), 2);
}

/// Runs the e2e job `name` on a fresh ssh-host with its `@GIT_URL@` the repository
/// `repo` of a real `git daemon`, whose directory `setup` fills first; returns the
/// report, the exit status and the daemon (to count its connections). No VM is left.
fn run_git_job_on_ssh_host(
    name: &str,
    repo: &str,
    setup: impl FnOnce(&Path, &GitDaemon),
) -> (Value, i32, GitDaemon) {
    let images = test_images();
    let host = SshHost::start(Some((&images.lab_key, &images.lab_pubkey)));
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let daemon = GitDaemon::serve(&served);
    setup(&served, &daemon);
    let path = dir.path().join(name);
    std::fs::write(
        &path,
        e2e_job(name, "ssh-host").replace("@GIT_URL@", &daemon.url(repo)),
    )
    .unwrap();
    let devices = host.device_files(dir.path(), true);
    let (report, status) =
        dispatcher_run(&path, &devices, &dir.path().join("state"), &host.scratch());
    assert_no_vm_left(&host);
    (report, status, daemon)
}

/// Runs an e2e job on a fresh ssh-host; returns the report, the exit status and the
/// host (to look at what is left on it).
fn run_on_ssh_host(name: &str) -> (Value, i32, SshHost) {
    let (report, status, host, _state) = run_on_ssh_host_keeping(name);
    (report, status, host)
}

/// As [`run_on_ssh_host`], also keeping the dispatcher's state directory.
fn run_on_ssh_host_keeping(name: &str) -> (Value, i32, SshHost, tempfile::TempDir) {
    let images = test_images();
    let host = SshHost::start(Some((&images.lab_key, &images.lab_pubkey)));
    let dir = tempfile::tempdir().unwrap();
    let job = job(name, "ssh-host", dir.path());
    let devices = host.device_files(dir.path(), true);
    let (report, status) =
        dispatcher_run(&job, &devices, &dir.path().join("state"), &host.scratch());
    assert_no_vm_left(&host);
    (report, status, host, dir)
}

fn assert_no_vm_left(host: &SshHost) {
    host.assert_no_qemu();
    let jobs = Path::new(&host.scratch()).join("jobs");
    let leftovers = std::fs::read_dir(&jobs).map(|d| d.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "job directories left on the host");
}

fn result_of(report: &Value, case: &str) -> Option<String> {
    results(report)
        .into_iter()
        .find(|(name, _)| name == case)
        .map(|(_, result)| result)
}

#[test]
fn vms_started_by_the_host_and_a_host_shell_after_they_closed() {
    let (report, status, _host) = run_on_ssh_host("auto-start-false.json");
    assert_passed(
        &report,
        &[
            "host.start-vms.started",
            "host.start-vms.guest-ran-before-wait",
            "host.start-vms.vms-done",
            "guest.guest.guest-booted",
            // The second host shell ran after the VM was stopped.
            "host.after-vms.vms-gone",
        ],
    );
    assert_eq!(report["health"], "complete", "{report:#}");
    assert_eq!(status, 0);
}

#[test]
fn three_clients_of_one_role_reach_the_server_with_wait_all() {
    let (report, status, _host) = run_on_ssh_host("three-clients.json");
    assert_eq!(
        result_of(&report, "server.server.heard-all-clients").as_deref(),
        Some("pass"),
        "{report:#}"
    );
    assert_eq!(
        result_of(&report, "server.server.three-values").as_deref(),
        Some("pass"),
        "{report:#}"
    );
    for client in ["client-1", "client-2", "client-3"] {
        assert_eq!(
            result_of(&report, &format!("{client}.client.sent")).as_deref(),
            Some("pass"),
            "{report:#}"
        );
    }
    assert_eq!(report["health"], "complete", "{report:#}");
    assert_eq!(status, 0);
}

#[test]
fn a_failing_case_fails_in_a_complete_job() {
    let (report, status, _host, dir) = run_on_ssh_host_keeping("failing-case.json");
    let state = dir.path().join("state");
    assert_eq!(report["health"], "complete", "{report:#}");
    assert_eq!(
        result_of(&report, "guest.checks.broken").as_deref(),
        Some("fail")
    );
    assert_eq!(
        result_of(&report, "guest.checks.works").as_deref(),
        Some("pass")
    );
    let timing = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["results"].as_array().unwrap())
        .find(|c| c["case"] == "timing")
        .unwrap();
    assert_eq!(
        (timing["measurement"].as_f64(), timing["units"].as_str()),
        (Some(1.5), Some("s"))
    );
    assert_eq!(status, 1, "a failed case makes `dispatcher run` exit 1");
    // The same results as JUnit XML and TAP, read back by independent parsers.
    let job_dir = only_job_dir(&state);
    let junit = parse_junit(&std::fs::read_to_string(job_dir.join("results.xml")).unwrap());
    assert!(
        junit.contains(&("guest.checks.broken".to_string(), "failure".to_string()))
            && junit.contains(&("guest.checks.works".to_string(), "pass".to_string())),
        "{junit:?}"
    );
    let (passed, failed, _, good_plan) =
        parse_tap(&std::fs::read_to_string(job_dir.join("results.tap")).unwrap());
    assert_eq!((failed, good_plan), (1, true));
    assert_eq!(passed + failed, junit.len());
}

#[test]
fn a_guest_that_never_reaches_its_prompt_fails_the_job_and_releases_the_others() {
    let (report, status, _host) = run_on_ssh_host("guest-never-boots.json");
    assert_eq!(report["health"], "incomplete", "{report:#}");
    // The guest's image is the job's: its panic is the job's failure, not the lab's.
    assert_eq!(report["error_class"], "job", "{report:#}");
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains("guest") && error.contains("kernel panic"),
        "{error}"
    );
    // The peers' sync failed at once, naming the guest, instead of at the job timeout.
    for node in ["host", "peer"] {
        assert_eq!(
            result_of(&report, &format!("{node}.{node}.sync-failed-fast")).as_deref(),
            Some("pass"),
            "{report:#}"
        );
    }
    assert_eq!(status, 3);
}

/// A lab of one `qemu-host` device booting the test images, its device file in
/// `dir/devices`.
fn qemu_host_device(dir: &Path) -> PathBuf {
    let images = test_images();
    let devices = dir.join("devices");
    std::fs::create_dir_all(&devices).unwrap();
    std::fs::write(
        devices.join("qemu-host-01.toml"),
        format!(
            "hostname = \"qemu-host-01\"\ndevice_type = \"qemu-host\"\n\n[ssh]\naddress = \"127.0.0.1\"\n\
             port = {}\nidentity_file = \"{}\"\nhost_key = \"{}\"\n\n[qemu]\nkernel = \"{}\"\n\
             ramdisk = \"{}\"\nrootfs = \"{}\"\n",
            free_port(),
            images.lab_key.display(),
            images.hostdev_fingerprint,
            images.hostdev_kernel.display(),
            images.hostdev_initramfs.display(),
            images.hostdev_rootfs.display()
        ),
    )
    .unwrap();
    devices
}

/// A job's deploy for the host role on a `qemu-host`: the host-device VM boots the
/// job's kernel on the job's `nfsrootfs` tarball (the device's own disk not attached),
/// is reached over SSH as always, and runs its guest nested.
#[test]
fn a_qemu_host_boots_the_jobs_kernel_on_an_nfsrootfs_tarball() {
    let dir = tempfile::tempdir().unwrap();
    let job = job("qemu-host-nfsrootfs.json", "qemu-host", dir.path());
    let devices = qemu_host_device(dir.path());
    let state = dir.path().join("state");
    let (report, status) = dispatcher_run(&job, &devices, &state, "/var/lib/lava-dispatcher");
    assert_passed(
        &report,
        &[
            "host.host-root.root-from-the-tarball",
            "host.host-root.no-root-disk",
            "guest.guest.guest-ran",
        ],
    );
    assert_eq!(report["health"], "complete", "{report:#}");
    assert_eq!(status, 0);
    let log = std::fs::read_to_string(only_job_dir(&state).join("job.log")).unwrap();
    assert!(log.contains("from 1 tar archive(s)"), "{log}");
    assert_nothing_runs_from(
        &only_job_dir(&state).join("host-qemu-host-01"),
        "the host-device VM still runs",
    );
}

/// The seed job on a `qemu-host` device: the dispatcher boots the host-device VM here,
/// and the guests run inside it with nested KVM.
#[test]
fn the_seed_job_runs_on_a_qemu_host_with_nested_vms() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(SEED_JOB, "qemu-host", dir.path());
    let devices = qemu_host_device(dir.path());
    let state = dir.path().join("state");
    let (report, status) = dispatcher_run(&job, &devices, &state, "/var/lib/lava-dispatcher");
    let found = results(&report);
    assert!(
        found.iter().all(|(_, r)| r == "pass") && found.len() >= 7,
        "{report:#}"
    );
    assert_eq!(report["health"], "complete", "{report:#}");
    assert_eq!(status, 0);
    // The host-device VM itself is gone: its console log ends and no qemu runs with
    // this job's host directory.
    let job_dir = only_job_dir(&state);
    assert_nothing_runs_from(
        &job_dir.join("host-qemu-host-01"),
        "the host-device VM still runs",
    );
}

/// (e) A device_group job of two `kvm` devices: VMs the dispatcher starts on its own
/// machine, talking through the coordinator and over their shared LAN.
#[test]
fn a_device_group_of_two_kvm_devices_runs_here() {
    let dir = tempfile::tempdir().unwrap();
    let job = job("device-group-two-kvm.json", "kvm", dir.path());
    let devices = kvm_devices(dir.path(), &["kvm-01", "kvm-02"]);
    let state = dir.path().join("state");
    let (report, status) = dispatcher_run(&job, &devices, &state, "/var/lib/lava-dispatcher");
    assert_passed(
        &report,
        &[
            "server.server.synced",
            "client.client.ping-server",
            "client.client.synced",
        ],
    );
    assert_eq!(report["health"], "complete", "{report:#}");
    assert_eq!(status, 0);
    // Both VMs are gone: no qemu runs with this job's directory on its command line.
    assert_nothing_runs_from(&only_job_dir(&state), "a VM of the job still runs");
}

/// A device_group of every kind of device at once, scheduled by the daemon: an
/// ssh-host (sshd in a network namespace), a qemu-host (its host-device VM booted
/// here) and a kvm device (a VM here). `dispatcher serve` reserves the three together;
/// test shells on the hosts run over SSH with the node agent, the VM's on its console
/// with the shell helpers; all three send, wait (each checks what the others sent) and
/// sync through the job's coordinator group, and each host is cleaned and shut down
/// afterwards.
#[test]
fn a_device_group_of_an_ssh_host_a_qemu_host_and_a_kvm_device_runs_under_the_daemon() {
    let images = test_images();
    let host = SshHost::start(Some((&images.lab_key, &images.lab_pubkey)));
    let dir = tempfile::tempdir().unwrap();
    let job = e2e_job("device-group-every-kind.json", "kvm");
    host.device_file(dir.path(), "ssh-host-01", true);
    qemu_host_device(dir.path());
    let devices = kvm_devices(dir.path(), &["kvm-01"]);
    let config = daemon_config(dir.path(), &devices, &host, "");
    let token = create_token(&config, &["ci"]);
    let daemon = Daemon::start(&config);
    let api = daemon.api(&token);
    let id = api.submit(&job).unwrap();
    let end = api
        .wait_for_state(id, "finished", std::time::Duration::from_secs(900))
        .unwrap();
    let results = daemon.cli(&token, &["results", &id.to_string(), "--format", "json"]);
    let results: Value = serde_json::from_slice(&results.stdout).unwrap();
    let report = &results["results"];
    let mut expected = Vec::new();
    for (role, others) in [
        ("ssh", ["qemuhost", "guest"]),
        ("qemuhost", ["ssh", "guest"]),
        ("guest", ["ssh", "qemuhost"]),
    ] {
        for case in [
            format!("heard-{}", others[0]),
            format!("heard-{}", others[1]),
            "synced".to_string(),
            "sees-group".to_string(),
        ] {
            expected.push(format!("{role}.{role}-side.{case}"));
        }
    }
    assert_passed(
        report,
        &expected.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(end["health"], "complete", "{end:#}\n{results:#}");
    // The daemon gave the job one device of each kind.
    let summary = api.job(id).unwrap();
    let mut given: Vec<&str> = summary["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    given.sort_unstable();
    assert_eq!(
        given,
        ["kvm-01", "qemu-host-01", "ssh-host-01"],
        "{summary:#}"
    );
    // Each host's node ran where it should: the qemu-host's shell in its own VM.
    let state = dir.path().join("state");
    let log = std::fs::read_to_string(only_job_dir(&state).join("job.log")).unwrap();
    assert!(
        log.contains("bringing up qemu-host-01 (qemu-host)"),
        "{log}"
    );
    assert!(log.contains("bringing up ssh-host-01 (ssh-host)"), "{log}");
    assert_no_vm_left(&host);
    assert_nothing_runs_from(&only_job_dir(&state), "a VM of the job still runs");
}

/// A single-device job on a `kvm` device that deploys a disk image and no kernel: the
/// VM boots from the disk (no `-append` reaches qemu), and its test shell cannot reach
/// a service on this machine's loopback through qemu's user network (10.0.2.2).
#[test]
fn a_single_kvm_device_boots_an_image_and_cannot_reach_this_machine() {
    let dir = tempfile::tempdir().unwrap();
    // A service only this machine should reach; after the job, its queue must be empty.
    let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = service.local_addr().unwrap().port();
    let job = job("single-kvm-image.json", "kvm", dir.path());
    let text = std::fs::read_to_string(&job)
        .unwrap()
        .replace("@LOOPBACK_PORT@", &port.to_string());
    std::fs::write(&job, text).unwrap();
    let devices = kvm_devices(dir.path(), &["kvm-01"]);
    let state = dir.path().join("state");
    let (report, status) = dispatcher_run(&job, &devices, &state, "/var/lib/lava-dispatcher");
    assert_passed(
        &report,
        &[
            "device.isolation.booted-from-disk",
            "device.isolation.dispatcher-loopback-closed",
        ],
    );
    assert_eq!(report["health"], "complete", "{report:#}");
    assert_eq!(status, 0);
    service.set_nonblocking(true).unwrap();
    let reached = service.accept();
    assert!(
        matches!(&reached, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the guest connected to this machine's loopback: {reached:?}"
    );
    let log = std::fs::read_to_string(only_job_dir(&state).join("job.log")).unwrap();
    assert!(
        !log.contains("-append"),
        "an image boot passed -append to qemu"
    );
    assert_nothing_runs_from(&only_job_dir(&state), "the VM of the job still runs");
}

/// Fails if `secret` is in any file of the job's directory but the job as submitted
/// (`job.json`): its log, report and consoles.
fn assert_only_the_job_has(job_dir: &Path, secret: &str) {
    for entry in std::fs::read_dir(job_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && path.file_name().is_some_and(|n| n != "job.json") {
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            assert!(
                !text.contains(secret),
                "the secret is in {}",
                path.display()
            );
        }
    }
}

/// Fails unless every case named passed.
fn assert_passed(report: &Value, cases: &[&str]) {
    for case in cases {
        assert_eq!(
            result_of(report, case).as_deref(),
            Some("pass"),
            "{case}: {report:#}"
        );
    }
}

/// The one job directory under `state/jobs`.
fn only_job_dir(state: &Path) -> PathBuf {
    std::fs::read_dir(state.join("jobs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
}

/// Fails if a process runs with `dir` on its command line (a VM of the job: its QMP
/// socket lives there).
fn assert_nothing_runs_from(dir: &Path, what: &str) {
    let pgrep = Command::new("pgrep")
        .arg("-f")
        .arg(dir.display().to_string())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&pgrep.stdout).trim().is_empty(),
        "{what}"
    );
}

/// A LAVA v1 job naming its device by `target` (no `device_type`) and running
/// `lava_command_run`: it runs on exactly that device of two, each command in one shell
/// on the guest's console is a case (a failing one fails only itself), output lines
/// are results through the default pattern or the job's parser, and no VM is left.
#[test]
fn lava_command_run_on_the_device_named_by_target() {
    let dir = tempfile::tempdir().unwrap();
    let job = job("command-run-on-target.json", "kvm", dir.path());
    let devices = kvm_devices(dir.path(), &["kvm-01", "kvm-02"]);
    let state = dir.path().join("state");
    let (report, status) = dispatcher_run(&job, &devices, &state, "/var/lib/lava-dispatcher");
    assert_passed(
        &report,
        &[
            "device.lava-command.cd_proc",
            // Run in the directory the previous command changed to.
            "device.lava-command.test_-r_version",
            "device.lava-command.export_GREETING_hello",
            // With the variable the previous command exported.
            "device.lava-command.test_GREETING_hello",
            "device.lava-command.answer",
            "device.lava-command.check",
        ],
    );
    assert_eq!(
        result_of(&report, "device.lava-command.false").as_deref(),
        Some("fail"),
        "{report:#}"
    );
    assert_eq!(
        result_of(&report, "device.lava-command.other").as_deref(),
        Some("fail"),
        "{report:#}"
    );
    // Twice: the second action's commands ran for each of its two iterations.
    let checks = results(&report)
        .into_iter()
        .filter(|(name, _)| name == "device.lava-command.check")
        .count();
    assert_eq!(checks, 2, "{report:#}");
    // A failed case fails the tests, not the job.
    assert_eq!(report["health"], "complete", "{report:#}");
    assert_eq!(status, 1, "a failed case exits 1");
    let log = std::fs::read_to_string(only_job_dir(&state).join("job.log")).unwrap();
    assert!(log.contains("starting kvm-02 on this machine"), "{log}");
    assert!(!log.contains("starting kvm-01"), "{log}");
    assert_nothing_runs_from(&only_job_dir(&state), "the VM of the job still runs");
}

/// A single `kvm` device running test definitions as LAVA ran them: `install.deps`
/// on the busybox guest, which has no package manager, fails the shell saying so
/// before any run step; with `skip_install: deps` the install steps run before the run
/// steps, a null parameter is empty, a definition's `parameters` are over its
/// `params`, LAVA's early `NAME=value` list is read, and a Python parse pattern with a
/// look-ahead leaves out the lines it excludes.
#[test]
fn test_definitions_install_their_dependencies_or_skip_them_as_lava_did() {
    let dir = tempfile::tempdir().unwrap();
    let run = |skip: &str| {
        let job = job("testdef-install.json", "kvm", dir.path());
        let text = std::fs::read_to_string(&job)
            .unwrap()
            .replace("@SKIP@", skip);
        let job = dir.path().join(format!("testdef-install-{skip}.json"));
        std::fs::write(&job, text).unwrap();
        let devices = kvm_devices(dir.path(), &["kvm-01"]);
        let state = dir.path().join(format!("state-{skip}"));
        let (report, status) = dispatcher_run(&job, &devices, &state, "/var/lib/lava-dispatcher");
        assert_nothing_runs_from(&only_job_dir(&state), "the VM of the job still runs");
        (report, status)
    };

    // Nothing but repositories skipped: the guest cannot install hdparm.
    let (report, status) = run("repos");
    assert_eq!(report["health"], "incomplete", "{report:#}");
    assert_eq!(report["error_class"], "job", "{report:#}");
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains("install-params-parse: install.deps: the target has no package manager")
            && error.contains("hdparm"),
        "{error}"
    );
    assert!(results(&report).is_empty(), "run steps ran: {report:#}");
    assert_eq!(status, 3);

    // Dependencies skipped: everything else runs.
    let (report, status) = run("deps");
    assert_eq!(report["health"], "complete", "{report:#}");
    assert_eq!(
        results(&report),
        [
            ("device.early-params.list-params", "pass"),
            ("device.install-params-parse.definition-parameters", "pass"),
            ("device.install-params-parse.install-steps", "pass"),
            ("device.install-params-parse.lookahead", "pass"),
            ("device.install-params-parse.null-param", "pass"),
        ]
        .map(|(case, result)| (case.to_string(), result.to_string())),
        "{report:#}"
    );
    assert_eq!(status, 0);
}

/// Writes `files` (`path`, contents) under a fresh directory and packs them as a
/// gzip-compressed tar archive, as a test writer would make an overlay.
fn overlay(dir: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let tree = dir.join(name);
    for (path, contents) in files {
        let path = tree.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
    let archive = dir.join(format!("{name}.tar.gz"));
    let status = Command::new("tar")
        .arg("-C")
        .arg(&tree)
        .args(["--owner=0", "--group=0", "-czf"])
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success(), "tar {name}");
    archive
}

/// LAVA v1's deploy keys on VMs: one boots the guest's ramdisk with two overlays over
/// it (the first turns its console into a `getty` login with a password, the second
/// adds files; the later wins), logs in with the deploy's login keys and finds the
/// boot action's `test_image_prompt`; the other boots from the guest's tree as an
/// `nfsrootfs` tarball with an overlay. Nothing is left running and the password is
/// in no log (only in the job as submitted).
#[test]
fn overlays_a_console_login_and_an_nfsrootfs_tarball_boot_the_vms() {
    let images = test_images();
    let dir = tempfile::tempdir().unwrap();
    let inittab = "::sysinit:/etc/init.d/rcS\n\
                   ttyS0::respawn:/bin/getty -L 115200 ttyS0 vt100\n\
                   ::shutdown:/bin/umount -a -r\n";
    // The hash of "s3cret-Pw", the job's password.
    let passwd = "root:$1$lavasalt$sZ3gCPoIg5S/vqwrvdw2i1:0:0:root:/root:/bin/sh\n";
    let login = overlay(
        dir.path(),
        "login",
        &[
            ("etc/inittab", inittab),
            ("etc/passwd", passwd),
            ("opt/overlay/order.txt", "first"),
        ],
    );
    let files = overlay(
        dir.path(),
        "files",
        &[
            ("opt/overlay/hello.txt", "hello from an overlay"),
            ("opt/overlay/order.txt", "second"),
        ],
    );
    let job = dir.path().join("root-file-systems.json");
    let text = e2e_job("root-file-systems.json", "ssh-host")
        .replace("@LOGIN_OVERLAY@", &login.display().to_string())
        .replace("@FILES_OVERLAY@", &files.display().to_string());
    std::fs::write(&job, text).unwrap();
    let host = SshHost::start(Some((&images.lab_key, &images.lab_pubkey)));
    let devices = host.device_files(dir.path(), true);
    let state = dir.path().join("state");
    let (report, status) = dispatcher_run(&job, &devices, &state, &host.scratch());
    assert_no_vm_left(&host);
    assert_passed(
        &report,
        &[
            "host.host.host-ran",
            "overlaid.overlays.overlay-file",
            "overlaid.overlays.later-overlay-wins",
            "overlaid.overlays.logged-in-through-getty",
            "overlaid.overlays.not-the-tarball",
            "tarball.nfsrootfs.root-from-the-tarball",
            "tarball.nfsrootfs.overlay-over-the-tarball",
            "tarball.nfsrootfs.owned-by-root",
        ],
    );
    assert_eq!(report["health"], "complete", "{report:#}");
    assert_eq!(status, 0);
    let job_dir = only_job_dir(&state);
    let console = std::fs::read_to_string(job_dir.join("console-overlaid.log")).unwrap();
    assert!(console.contains("login:"), "no login prompt: {console}");
    // Only the job as submitted (job.json) has it: no log, report or console.
    assert_only_the_job_has(&job_dir, "s3cret-Pw");
}

/// `dispatcher run` stopped by SIGTERM (or Ctrl-C) while its VM runs: the job ends
/// `canceled` with its report, and the qemu it started is stopped, not left behind.
#[test]
fn sigterm_cancels_a_one_shot_run_and_stops_its_vm() {
    let dir = tempfile::tempdir().unwrap();
    let job = job("single-kvm-image.json", "kvm", dir.path());
    let devices = kvm_devices(dir.path(), &["kvm-01"]);
    let state = dir.path().join("state");
    let child = Command::new(binary("dispatcher"))
        .arg("run")
        .arg(&job)
        .arg("--devices")
        .arg(&devices)
        .arg("--state-dir")
        .arg(&state)
        .arg("--node-agent")
        .arg(static_node_agent())
        .args(["--format", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Until the job's log says its VM was started.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let job_dir = loop {
        let started = std::fs::read_dir(state.join("jobs"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.path())
            .filter(|d| {
                std::fs::read_to_string(d.join("job.log"))
                    .is_ok_and(|log| log.contains("starting kvm-01 on this machine"))
            });
        if let Some(job_dir) = started {
            break job_dir;
        }
        assert!(std::time::Instant::now() < deadline, "the VM never started");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let out = child.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no report ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["health"], "canceled", "{report:#}");
    assert_eq!(out.status.code(), Some(3));
    assert_nothing_runs_from(&job_dir, "the job's VM still runs");
}

/// A disk image given as qcow2 boots as qcow2: its format is read from the file (the
/// name says `.img`), not assumed raw. A qcow2 that names a backing file, which qemu
/// would open on this machine for the guest, is refused as the job's fault.
#[test]
fn a_qcow2_image_boots_and_one_with_a_backing_file_is_refused() {
    let images = test_images();
    let dir = tempfile::tempdir().unwrap();
    let qemu_img = |args: &[&str]| {
        let out = Command::new("qemu-img").args(args).output().unwrap();
        assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
    };
    let qcow2 = dir.path().join("guest-disk.img");
    let disk = images.guest_disk.display().to_string();
    qemu_img(&[
        "convert",
        "-O",
        "qcow2",
        &disk,
        &qcow2.display().to_string(),
    ]);
    let layered = dir.path().join("layered.img");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        &disk,
        "-F",
        "raw",
        &layered.display().to_string(),
    ]);
    let run = |image: &Path, name: &str| {
        let job = job("single-kvm-image.json", "kvm", dir.path());
        let text = std::fs::read_to_string(&job)
            .unwrap()
            .replace(&disk, &image.display().to_string())
            .replace("@LOOPBACK_PORT@", "9");
        let job = dir.path().join(format!("{name}.json"));
        std::fs::write(&job, text).unwrap();
        let devices = kvm_devices(dir.path(), &["kvm-01"]);
        let state = dir.path().join(format!("state-{name}"));
        let (report, status) = dispatcher_run(&job, &devices, &state, "/var/lib/lava-dispatcher");
        let log = std::fs::read_to_string(only_job_dir(&state).join("job.log")).unwrap();
        assert_nothing_runs_from(&only_job_dir(&state), "the VM of the job still runs");
        (report, status, log)
    };
    let (report, status, log) = run(&qcow2, "qcow2");
    assert_passed(&report, &["device.isolation.booted-from-disk"]);
    assert_eq!(report["health"], "complete", "{report:#}");
    assert_eq!(status, 0);
    assert!(log.contains("format=qcow2"), "{log}");
    let (report, status, _) = run(&layered, "layered");
    assert_eq!(report["health"], "incomplete", "{report:#}");
    assert_eq!(report["error_class"], "job", "{report:#}");
    let error = report["error"].as_str().unwrap();
    assert!(error.contains("backing file"), "{error}");
    assert_eq!(status, 3);
}

/// A Debian guest as distributions ship disk images (`scripts/build-debian-image.sh`): a
/// qcow2 disk, deployed with UEFI firmware (OVMF) and no kernel, whose own boot loader
/// (systemd-boot on its EFI partition) starts Debian's kernel and initramfs; systemd
/// brings up a getty, the console logs in with the deploy's password, and the test
/// shell runs there. The firmware's and systemd's escape sequences are on the console.
#[test]
fn a_qcow2_debian_disk_boots_through_its_own_boot_loader_under_uefi() {
    let dir = tempfile::tempdir().unwrap();
    let job = job("single-uefi-qcow2.json", "kvm", dir.path());
    let devices = kvm_devices(dir.path(), &["kvm-01"]);
    let state = dir.path().join("state");
    let (report, status) = dispatcher_run(&job, &devices, &state, "/var/lib/lava-dispatcher");
    assert_passed(
        &report,
        &[
            "device.uefi-debian.booted-by-uefi",
            "device.uefi-debian.loaded-by-systemd-boot",
            "device.uefi-debian.systemd-is-init",
            "device.uefi-debian.root-on-the-second-partition",
            "device.uefi-debian.no-kernel-from-qemu",
        ],
    );
    assert_eq!(report["health"], "complete", "{report:#}");
    assert_eq!(status, 0);
    let job_dir = only_job_dir(&state);
    let log = std::fs::read_to_string(job_dir.join("job.log")).unwrap();
    assert!(log.contains("format=qcow2"), "{log}");
    assert!(log.contains("-bios"), "{log}");
    assert!(!log.contains(" -kernel "), "{log}");
    let console = std::fs::read_to_string(job_dir.join("console-device.log")).unwrap();
    assert!(console.contains("debian-uefi login:"), "{console}");
    assert_only_the_job_has(&job_dir, &debian_image().password);
    assert_nothing_runs_from(&job_dir, "the VM of the job still runs");
}

/// The seed's vm_group with guests as a distribution would have them: a `login:`
/// prompt and a root password (given in the deploy actions, as v1 jobs do), and
/// nothing of the dispatcher's in the image. The `lava-*` shell helpers are typed in,
/// and every MultiNode call (send, wait, sync, network broadcast/collect/query) passes;
/// a file attached to a case and one to the run come back into the job's directory
/// and its results (JSON and JUnit), and a reference is recorded with its URL.
#[test]
fn guests_with_a_login_prompt_and_no_agent_run_the_seed_job() {
    let (report, status, _host, dir) = run_on_ssh_host_keeping("seed-vm-group-login.json");
    let found = results(&report);
    let failed: Vec<&(String, String)> = found.iter().filter(|(_, r)| r != "pass").collect();
    assert!(
        failed.is_empty(),
        "cases not passing: {failed:?}\n{report:#}"
    );
    assert_passed(
        &report,
        &[
            "server.server-side.no-agent-in-image",
            "client.client-side.no-agent-in-image",
            "server.server-side.logged-in-as-root",
            "server.server-side.multinode-network-broadcast-eth1",
            "server.server-side.multinode-send-server-ready",
            "server.server-side.multinode-sync-all-up",
            "client.client-side.multinode-wait-server-ready",
            "client.client-side.multinode-network-collect-network_info",
            "client.client-side.network-query",
            "client.client-side.ping-server",
            "client.client-side.sync-all-up",
            "host.host-side.sync-all-up",
            "server.server-side.kernel-docs",
            "server.server-side.measured",
        ],
    );
    assert_eq!(report["health"], "complete", "{report:#}");
    assert_eq!(status, 0);
    let server = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "server")
        .unwrap();
    let reference = server["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["case"] == "kernel-docs")
        .unwrap();
    assert_eq!(
        reference["reference"], "https://www.kernel.org/doc/html/latest/",
        "{reference:#}"
    );
    let attachments = server["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 2, "{server:#}");
    let job_dir = only_job_dir(&dir.path().join("state"));
    let by_name = |name: &str| {
        attachments
            .iter()
            .find(|a| a["name"] == name)
            .unwrap_or_else(|| panic!("no attachment {name}: {server:#}"))
    };
    let boot_log = by_name("boot-log.txt");
    assert_eq!(boot_log["case"], "lan-address");
    assert_eq!(boot_log["mimetype"], "text/plain");
    let uname = by_name("uname.txt");
    assert!(uname.get("case").is_none(), "{uname:#}");
    let uname_text =
        std::fs::read_to_string(job_dir.join(uname["file"].as_str().unwrap())).unwrap();
    assert!(uname_text.starts_with("Linux guest "), "{uname_text}");
    assert_eq!(uname["size"], uname_text.len() as u64);
    let boot_text =
        std::fs::read_to_string(job_dir.join(boot_log["file"].as_str().unwrap())).unwrap();
    assert!(boot_text.contains("Linux version"), "{boot_text}");
    // JUnit lists them as the attachments plugin reads them.
    let junit = runner::formats::junit(&serde_json::from_value(report.clone()).unwrap());
    assert!(
        junit.contains(&format!(
            "[[ATTACHMENT|{}]]",
            uname["file"].as_str().unwrap()
        )),
        "{junit}"
    );
    // The console went through the login, and the password is in no log.
    let console = std::fs::read_to_string(job_dir.join("console-server.log")).unwrap();
    assert!(console.contains("login:"), "no login prompt: {console}");
    assert_only_the_job_has(&job_dir, &test_images().guest_password);
}

/// A guest whose login is refused (the job gives the wrong password) fails its boot at
/// once, naming the login prompt it saw again, as the job's error; the host's
/// `lava-sync` with it is released with a failure instead of waiting, and nothing is
/// left running.
#[test]
fn a_refused_login_fails_the_guest_at_once_and_releases_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let mut job: Value =
        serde_json::from_str(&e2e_job("seed-vm-group-login.json", "ssh-host")).unwrap();
    job["actions"][0]["parameters"]["password"] = "not-the-password".into();
    let path = dir.path().join("refused.json");
    std::fs::write(&path, job.to_string()).unwrap();
    let images = test_images();
    let host = SshHost::start(Some((&images.lab_key, &images.lab_pubkey)));
    let devices = host.device_files(dir.path(), true);
    let (report, status) =
        dispatcher_run(&path, &devices, &dir.path().join("state"), &host.scratch());
    assert_no_vm_left(&host);
    assert_eq!(report["health"], "incomplete", "{report:#}");
    assert_eq!(report["error_class"], "job", "{report:#}");
    let error = report["error"].as_str().unwrap();
    assert!(error.contains("server"), "{error}");
    assert!(error.contains("the login was refused"), "{error}");
    assert!(error.contains("login:"), "{error}");
    assert!(!error.contains("not-the-password"), "{error}");
    assert_eq!(
        result_of(&report, "host.host-side.multinode-sync-all-up").as_deref(),
        Some("fail"),
        "{report:#}"
    );
    assert_eq!(status, 3);
}

/// A git repository of one test definition for ARM guests, with its script beside it
/// (run from the repository's top, as LAVA v1 did) and the architecture `uname -m`
/// must print as a parameter (`ARCH`, aarch64 unless the job says otherwise).
fn arm_definitions(served: &Path) {
    let repo = served.join("arm.git");
    std::fs::create_dir_all(repo.join("lava")).unwrap();
    std::fs::write(
        repo.join("lava/arm.yaml"),
        "metadata:\n  name: arm-from-git\n  format: Lava-Test Test Definition 1.0\n\
         params:\n  ARCH: aarch64\n\
         run:\n  steps:\n    - ./lava/arch.sh \"$ARCH\"\n",
    )
    .unwrap();
    std::fs::write(
        repo.join("lava/arch.sh"),
        r#"#!/bin/sh
[ "$(uname -m)" = "$1" ] && r=pass || r=fail; lava-test-case "uname-$1" --result $r
[ -f lava/arm.yaml ] && r=pass || r=fail; lava-test-case at-repo-top --result $r
grep -q console=ttyAMA0 /proc/cmdline && r=pass || r=fail; lava-test-case console-ttyAMA0 --result $r
"#,
    )
    .unwrap();
    sh_in(
        &repo,
        "chmod +x lava/arch.sh && git init -q -b main . && git config user.email t@t \
         && git config user.name t && git add -A && git commit -q -m arm",
    );
}

/// Runs the single-device ARM job `job_name` on a device of `device_type` here (emulated
/// by `qemu`): the guest (Debian's kernel and busybox, a `login:` prompt, nothing of
/// ours) logs in on `ttyAMA0` as `hostname` and runs the test definition from a git
/// repository with the script beside it, which finds `uname -m` to be `machine`.
fn an_arm_guest_runs_a_definition_from_git(
    job_name: &str,
    device_type: &str,
    qemu: &str,
    hostname: &str,
    machine: &str,
) {
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let daemon = GitDaemon::serve(&served);
    arm_definitions(&served);
    let path = dir.path().join(job_name);
    std::fs::write(
        &path,
        e2e_job(job_name, device_type).replace("@GIT_URL@", &daemon.url("arm.git")),
    )
    .unwrap();
    let devices = dir.path().join("devices");
    std::fs::create_dir_all(&devices).unwrap();
    std::fs::write(
        devices.join("arm-01.toml"),
        format!("hostname = \"arm-01\"\ndevice_type = \"{device_type}\"\n"),
    )
    .unwrap();
    let state = dir.path().join("state");
    let (report, status) = dispatcher_run(&path, &devices, &state, "/var/lib/lava-dispatcher");
    assert_passed(
        &report,
        &[
            &format!("device.arm-from-git.uname-{machine}"),
            "device.arm-from-git.at-repo-top",
            "device.arm-from-git.console-ttyAMA0",
        ],
    );
    assert_eq!(report["health"], "complete", "{report:#}");
    assert_eq!(status, 0);
    let job_dir = only_job_dir(&state);
    let log = std::fs::read_to_string(job_dir.join("job.log")).unwrap();
    assert!(log.contains(qemu), "{log}");
    assert!(
        log.contains("-accel tcg"),
        "emulated on this x86_64 machine: {log}"
    );
    let console = std::fs::read_to_string(job_dir.join("console-device.log")).unwrap();
    assert!(console.contains(&format!("{hostname} login:")), "{console}");
    assert_nothing_runs_from(&job_dir, "the ARM VM still runs");
}

/// An aarch64 guest as a single-device job on a `kvm-aarch64` device.
#[test]
fn an_aarch64_guest_logs_in_and_runs_a_definition_from_git() {
    an_arm_guest_runs_a_definition_from_git(
        "single-arm64.json",
        "kvm-aarch64",
        "qemu-system-aarch64",
        "arm64",
        "aarch64",
    );
}

/// A 32-bit ARM guest (armhf) as a single-device job on a `kvm-arm` device, the job
/// giving the definition's `ARCH` parameter.
#[test]
fn an_armhf_guest_logs_in_and_runs_a_definition_from_git() {
    an_arm_guest_runs_a_definition_from_git(
        "single-armhf.json",
        "kvm-arm",
        "qemu-system-arm",
        "armhf",
        "armv7l",
    );
}

/// A vm_group on an `ssh-host` that launches an x86_64 guest and an aarch64 guest
/// (qemu-system-aarch64 emulating on this x86_64 machine) side by side, both with a
/// login and nothing of ours: MultiNode calls and the group's LAN work between them as
/// between x86_64 guests, and no VM is left. (On a `qemu-host` the aarch64 guest would
/// be emulated inside an emulated host: here that took over 300 s to print its first
/// line, so the group runs where each guest is emulated once, as on a lab's x86 server.)
#[test]
fn an_x86_64_and_an_aarch64_guest_talk_in_one_vm_group_on_an_ssh_host() {
    let (report, status, _daemon) =
        run_git_job_on_ssh_host("vm-group-x86-and-arm64.json", "arm.git", |served, _| {
            arm_definitions(served)
        });
    assert_passed(
        &report,
        &[
            "arm.arm-from-git.uname-aarch64",
            "arm.arm-from-git.at-repo-top",
            "arm.arm-from-git.console-ttyAMA0",
            "arm.arm-side.multinode-network-broadcast-eth1",
            "arm.arm-side.sync-all-up",
            "x86.x86-side.arm-says-aarch64",
            "x86.x86-side.ping-arm",
            "x86.x86-side.sync-all-up",
            "host.host-side.sync-all-up",
        ],
    );
    assert_eq!(report["health"], "complete", "{report:#}");
    assert_eq!(status, 0);
}
