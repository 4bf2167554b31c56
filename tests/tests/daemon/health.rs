//! Health checks on real devices: a device type names its check job, the daemon runs
//! it on a device whose health is unknown before any other job may have the device,
//! and its end decides the device's health; who is blamed for a failure is decided by
//! how the job failed.

use std::path::Path;

use serde_json::{Value, json};
use system_tests::{
    ApiClient, Browser, SshLab, device_types_dir, kvm_devices, shell_job, test_images,
};

use crate::CLIENT_TESTING;

/// The shipped device types, plus, for each `(name, steps)`, an ssh-host type `name`
/// whose health check runs `steps` (the job file beside the type's file).
fn types_with_checks(dir: &Path, checks: &[(&str, &[&str])]) -> std::path::PathBuf {
    let types = dir.join("types");
    std::fs::create_dir_all(&types).unwrap();
    for entry in std::fs::read_dir(device_types_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            std::fs::copy(&path, types.join(path.file_name().unwrap())).unwrap();
        }
    }
    let ssh_host = std::fs::read_to_string(device_types_dir().join("ssh-host.toml")).unwrap();
    for (name, steps) in checks {
        let text = ssh_host.replace("name = \"ssh-host\"", &format!("name = \"{name}\""));
        std::fs::write(
            types.join(format!("{name}.toml")),
            format!("{text}\n[health_check]\njob = \"{name}.health.json\"\n"),
        )
        .unwrap();
        let check = shell_job(&format!("{name} health check"), name, steps);
        std::fs::write(
            types.join(format!("{name}.health.json")),
            serde_json::to_string_pretty(&check).unwrap(),
        )
        .unwrap();
    }
    types
}

/// A lab of `types.len()` ssh-hosts, `ssh-host-0N` of type `types[N-1]`, whose types
/// have the health checks `checks`.
fn checked_lab(types: &[&str], checks: &[(&str, &[&str])]) -> (SshLab, tempfile::TempDir) {
    let types_dir = tempfile::tempdir().unwrap();
    let types_path = types_with_checks(types_dir.path(), checks);
    let lab = SshLab::configured(
        types.len(),
        &format!("device_types = \"{}\"\n", types_path.display()),
    );
    for (i, device_type) in types.iter().enumerate() {
        let file = lab
            .dir
            .path()
            .join(format!("devices/ssh-host-{:02}.toml", i + 1));
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(
            &file,
            text.replace(
                "device_type = \"ssh-host\"",
                &format!("device_type = \"{device_type}\""),
            ),
        )
        .unwrap();
    }
    (lab, types_dir)
}

/// The health check jobs of `device`, oldest first.
fn checks_of(api: &ApiClient, device: &str) -> Vec<Value> {
    let jobs = api.get_json("/api/v1/jobs").unwrap();
    let mut checks: Vec<Value> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["health_check_of"] == device)
        .cloned()
        .collect();
    checks.reverse();
    checks
}

/// `GET /api/v1/devices/NAME`.
fn device(api: &ApiClient, name: &str) -> Value {
    api.get_json(&format!("/api/v1/devices/{name}")).unwrap()
}

/// A device's health history as `(health, job, reason)`, newest first.
fn history(api: &ApiClient, name: &str) -> Vec<(String, Option<u64>, String)> {
    device(api, name)["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["health"].as_str().unwrap().to_string(),
                e["job"].as_u64(),
                e["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Follows a device's one queued health check to its end; its id.
fn run_first_check(api: &ApiClient, name: &str) -> u64 {
    let checks = checks_of(api, name);
    assert_eq!(
        checks.len(),
        1,
        "one check queued at start for {name}: {checks:?}"
    );
    let id = checks[0]["id"].as_u64().unwrap();
    api.follow_log(id).unwrap();
    id
}

const PASSING: &[&str] = &["df / >/dev/null && lava-test-case root-fs --result pass"];
/// A check that fails until the file `fixed` exists (the ssh-host shares this
/// machine's file system).
fn failing_until(fixed: &Path) -> Vec<String> {
    vec![
        "lava-test-case root-fs --result pass".to_string(),
        format!(
            "test -e {} || lava-test-raise no-usable-disk",
            fixed.display()
        ),
    ]
}

/// Two new devices, one whose check passes (`good`) and one whose check fails (`bad`);
/// a job for the bad one's type waits, told it is bad, until the device is fixed and an
/// admin asks for a check, which passes: the device is good and the job runs. Each
/// device's history says when, which job and why.
#[test]
fn a_passing_check_makes_a_device_good_and_a_failing_one_bad_until_an_admin_acts() {
    let fixed_dir = tempfile::tempdir().unwrap();
    let fixed = fixed_dir.path().join("disk-replaced");
    let flaky_steps = failing_until(&fixed);
    let flaky_steps: Vec<&str> = flaky_steps.iter().map(String::as_str).collect();
    let (lab, _types) = checked_lab(
        &["ssh-checked", "ssh-flaky"],
        &[("ssh-checked", PASSING), ("ssh-flaky", &flaky_steps)],
    );
    let (daemon, api) = lab.serve();
    let waiting = api
        .submit(
            &shell_job(
                "needs a flaky host",
                "ssh-flaky",
                &["lava-test-case ran --result pass"],
            )
            .to_string(),
        )
        .unwrap();
    let good_check = run_first_check(&api, "ssh-host-01");
    let bad_check = run_first_check(&api, "ssh-host-02");
    assert_eq!(device(&api, "ssh-host-01")["health"], "good");
    assert_eq!(api.job_state(bad_check).unwrap()["health"], "incomplete");
    let flaky = device(&api, "ssh-host-02");
    assert_eq!(flaky["health"], "bad", "{flaky:#}");
    assert_eq!(
        flaky["health_check"]["job"]
            .as_str()
            .map(|p| p.ends_with("ssh-flaky.health.json")),
        Some(true)
    );
    // A bad device takes no job: the scheduler, looking again after the check, keeps
    // the job for its type queued and says why.
    api.follow_until(waiting, "ssh-host-02 is bad").unwrap();
    assert_eq!(api.job_state(waiting).unwrap()["state"], "submitted");
    assert!(
        api.job(waiting).unwrap()["waiting_for"]
            .as_str()
            .is_some_and(|r| r.contains("ssh-host-02 is bad")),
        "{}",
        api.job(waiting).unwrap()
    );

    let history_01 = history(&api, "ssh-host-01");
    assert_eq!(history_01[0].0, "good");
    assert_eq!(history_01[0].1, Some(good_check));
    assert_eq!(history_01[1].2, "new in the lab");
    let history_02 = history(&api, "ssh-host-02");
    assert_eq!(history_02[0].0, "bad");
    assert_eq!(history_02[0].1, Some(bad_check));
    assert!(history_02[0].2.contains("no-usable-disk"), "{history_02:?}");

    // The disk is replaced and the admin asks for a check, through the CLI, with a
    // reason; the check passes, the device is good, and the job runs on it.
    std::fs::write(&fixed, b"").unwrap();
    let set = daemon.cli(
        api.token(),
        &[
            "devices",
            "health",
            "ssh-host-02",
            "unknown",
            "--reason",
            "disk replaced",
        ],
    );
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let log = api.follow_log(waiting).unwrap();
    assert_eq!(
        api.job_state(waiting).unwrap()["health"],
        "complete",
        "{log:#?}"
    );
    let checks = checks_of(&api, "ssh-host-02");
    assert_eq!(checks.len(), 2, "{checks:#?}");
    let recheck = checks[1]["id"].as_u64().unwrap();
    assert_eq!(api.job_state(recheck).unwrap()["health"], "complete");
    let history_02 = history(&api, "ssh-host-02");
    let said: Vec<(&str, Option<u64>)> = history_02
        .iter()
        .map(|(h, j, _)| (h.as_str(), *j))
        .collect();
    assert_eq!(
        said[..3],
        [
            ("good", Some(recheck)),
            ("unknown", None),
            ("bad", Some(bad_check))
        ],
        "{history_02:#?}"
    );
    assert_eq!(history_02[1].2, "disk replaced");
    let shown = daemon.cli(
        api.token(),
        &["devices", "show", "ssh-host-02", "--format", "json"],
    );
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["history"][1]["reason"], "disk replaced", "{shown:#}");
    assert_eq!(shown["history"][0]["health"], "good");
    assert_eq!(shown["jobs_since_check"], 1);

    // The device's page tells the same story.
    let mut browser = Browser::start();
    browser.sign_in(&daemon.url, api.token());
    let page = browser.show(
        &format!("{}/#/device/ssh-host-02", daemon.url),
        "#health-history",
        "disk replaced",
        "device-health.png",
    );
    assert!(page.contains("id=\"health-history\""), "{page}");
    assert!(
        page.contains("disk replaced") && page.contains("no-usable-disk"),
        "{page}"
    );
    assert!(page.contains("ssh-flaky.health.json"), "{page}");
}

/// An `infrastructure` failure (the host's SSH connection cut mid-job) leaves the
/// device `unknown`, and its health check runs before the next job, which was queued
/// all along.
#[test]
fn an_infrastructure_failure_is_followed_by_a_check_before_the_next_job() {
    let (lab, _types) = checked_lab(&["ssh-host"], &[("ssh-host", PASSING)]);
    // The daemon's own log, at its info level, as journald would keep it.
    let journal = lab.dir.path().join("daemon.log");
    let mut command = std::process::Command::new(system_tests::binary("dispatcher"));
    command
        .env("DISPATCHER_LOG", "info")
        .stderr(std::fs::File::create(&journal).unwrap());
    let daemon = system_tests::Daemon::try_start(command, &lab.config).unwrap();
    let api = daemon.api(&lab.token(&["ci"]));
    let first_check = run_first_check(&api, "ssh-host-01");
    assert_eq!(device(&api, "ssh-host-01")["health"], "good");
    let cut = api.submit(&lab.seed_job()).unwrap();
    let next = api
        .submit(&shell_job("next", "ssh-host", &["lava-test-case ran --result pass"]).to_string())
        .unwrap();
    api.follow_until(cut, CLIENT_TESTING).unwrap();
    assert!(lab.host.drop_connections() > 0, "a session to cut");
    api.follow_log(cut).unwrap();
    assert_eq!(api.job_state(cut).unwrap()["error"][0], "infrastructure");
    api.follow_log(next).unwrap();
    assert_eq!(api.job_state(next).unwrap()["health"], "complete");

    let checks = checks_of(&api, "ssh-host-01");
    assert_eq!(checks.len(), 2, "{checks:#?}");
    let second = &checks[1];
    // In the order of the logs' millisecond times (RFC 3339, UTC: they sort as text):
    // the check's last line, then the next job's first.
    let check_log = api.follow_log(second["id"].as_u64().unwrap()).unwrap();
    let next_log = api.follow_log(next).unwrap();
    let check_ended = check_log.last().unwrap()["dt"]
        .as_str()
        .unwrap()
        .to_string();
    let next_began = next_log.first().unwrap()["dt"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        check_ended <= next_began,
        "the check did not end before the next job started: {check_log:#?} / {next_log:#?}"
    );
    let lines = history(&api, "ssh-host-01");
    let said: Vec<(&str, Option<u64>)> = lines.iter().map(|(h, j, _)| (h.as_str(), *j)).collect();
    assert_eq!(
        said[..3],
        [
            ("good", second["id"].as_u64()),
            ("unknown", Some(cut)),
            ("good", Some(first_check)),
        ],
        "{lines:#?}"
    );
    assert!(lines[1].2.contains("infrastructure"), "{lines:#?}");

    // The daemon said what it did, a line each, without a terminal's escape codes: the
    // cut job's start and end (health, class, duration) and the device's health after
    // it, the checks and the next job.
    let said = std::fs::read_to_string(&journal).unwrap();
    assert!(!said.contains('\x1b'), "{said}");
    let line_of = |job: u64, what: &str| -> String {
        said.lines()
            .find(|l| l.contains(what) && l.contains(&format!("job={job} ")))
            .unwrap_or_else(|| panic!("no \"{what}\" line for job {job}:\n{said}"))
            .to_string()
    };
    line_of(cut, "job started");
    let ended = line_of(cut, "job ended");
    for field in [
        "health=Incomplete",
        "class=Some(Infrastructure)",
        "duration_secs=",
    ] {
        assert!(ended.contains(field), "{field}: {ended}");
    }
    assert!(
        said.lines()
            .any(|l| l.contains(&format!("device health after job {cut}"))
                && l.contains("device=ssh-host-01")
                && l.contains("health=Unknown")),
        "{said}"
    );
    for job in [first_check, second["id"].as_u64().unwrap(), next] {
        line_of(job, "job started");
        line_of(job, "job ended");
    }
}

/// A user's image whose kernel panics is the job's fault: the job ends `job`-class and
/// the device stays `good`, its history untouched.
#[test]
fn a_users_panicking_image_does_not_make_the_device_bad() {
    let images = test_images();
    let lab = SshLab::new();
    kvm_devices(lab.dir.path(), &["kvm-01"]);
    let (_daemon, api) = lab.serve();
    api.set_health("kvm-01", "good").unwrap();
    let before = history(&api, "kvm-01");
    // The guest kernel with no root file system: it panics ("VFS: Unable to mount
    // root fs") before any prompt.
    let job = json!({
        "job_name": "a kernel that panics",
        "device_type": "kvm",
        "timeout": 300,
        "actions": [
            {"command": "deploy_linaro_kernel", "parameters": {
                "kernel": format!("file://{}", images.guest_kernel.display())}},
            {"command": "boot_linaro_image", "parameters": {}}
        ]
    });
    let id = api.submit(&job.to_string()).unwrap();
    api.follow_log(id).unwrap();
    let state = api.job_state(id).unwrap();
    assert_eq!(state["health"], "incomplete", "{state}");
    assert_eq!(state["error"][0], "job", "{state}");
    assert!(
        state["error"][1].as_str().unwrap().contains("panic"),
        "{state}"
    );
    assert_eq!(device(&api, "kvm-01")["health"], "good");
    assert_eq!(history(&api, "kvm-01"), before);
}
