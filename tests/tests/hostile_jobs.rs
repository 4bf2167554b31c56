//! Jobs written to reach beyond their own devices, submitted to a real daemon: every
//! field that names a file or a URL is refused at submission when it points at the
//! dispatcher machine's files, its secrets, a device node or its loopback, and so is a
//! job no set of the lab's devices could ever run. Nothing refused is stored.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

use std::path::Path;

use serde_json::{Value, json};
use system_tests::{Daemon, create_token, e2e_job, http, json_of, kvm_daemon_config, test_images};

/// A daemon with two `kvm` devices whose jobs may name the test images (and nothing
/// else) with `file://`; its token.
fn daemon(dir: &Path) -> (Daemon, String) {
    let config = kvm_daemon_config(dir, "max_job_timeout = 3600\n");
    let token = create_token(&config, &["ci"]);
    (Daemon::start(&config), token)
}

/// A single-device kvm job booting `kernel` with `testdef_urls`.
fn kvm_job(kernel: &str, testdef_urls: &[&str]) -> Value {
    let images = test_images();
    let mut shell = json!({
        "testdef_repos": [{ "inline": {
            "metadata": { "name": "smoke", "format": "Lava-Test Test Definition 1.0" },
            "run": { "steps": ["true"] }
        }}]
    });
    if !testdef_urls.is_empty() {
        shell["testdef_urls"] = json!(testdef_urls);
    }
    json!({
        "job_name": "probe",
        "timeout": 600,
        "device_type": "kvm",
        "actions": [
            { "command": "deploy_linaro_kernel", "parameters": {
                "kernel": kernel,
                "ramdisk": format!("file://{}", images.guest_initramfs.display())
            }},
            { "command": "boot_linaro_image" },
            { "command": "lava_test_shell", "parameters": shell }
        ]
    })
}

/// Submits `job`; the status and the answer.
fn submit(daemon: &Daemon, token: &str, job: &Value) -> (u16, Value) {
    let (status, body) = http(
        &daemon.addr(),
        "POST",
        "/api/v1/jobs",
        Some(token),
        job.to_string().as_bytes(),
    )
    .unwrap();
    (status, json_of(&body))
}

/// Fails unless `job` is refused with a diagnostic at `pointer` whose message holds
/// `says`.
fn assert_refused(daemon: &Daemon, token: &str, job: &Value, pointer: &str, says: &str) {
    let (status, answer) = submit(daemon, token, job);
    assert_eq!(status, 400, "{answer:#}");
    let found = answer["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["pointer"] == pointer && d["message"].as_str().unwrap().contains(says));
    assert!(found, "no \"{says}\" at {pointer}: {answer:#}");
}

#[test]
fn jobs_cannot_name_the_dispatchers_files_its_loopback_or_more_devices_than_the_lab_has() {
    let images = test_images();
    let dir = tempfile::tempdir().unwrap();
    let (daemon, token) = daemon(dir.path());
    let kernel = format!("file://{}", images.guest_kernel.display());
    let kernel_at = "/actions/0/parameters/kernel";
    let testdef_at = "/actions/2/parameters/testdef_urls/0";

    // The machine's own files, through every field that names one.
    let shadow = "file:///etc/shadow";
    assert_refused(
        &daemon,
        &token,
        &kvm_job(shadow, &[]),
        kernel_at,
        "outside the allowed roots",
    );
    assert_refused(
        &daemon,
        &token,
        &kvm_job(&kernel, &[shadow]),
        testdef_at,
        "outside the allowed roots",
    );
    // The lab key sits beside the images, under an allowed root: still refused.
    let key = format!("file://{}", images.lab_key.display());
    assert_refused(
        &daemon,
        &token,
        &kvm_job(&key, &[]),
        kernel_at,
        "dispatcher's own files",
    );
    assert_refused(
        &daemon,
        &token,
        &kvm_job(&kernel, &[&key]),
        testdef_at,
        "dispatcher's own files",
    );
    // A symlink under the root that points out of it.
    let link = images.lab_key.parent().unwrap().join("probe-link.img");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("/etc/shadow", &link).unwrap();
    let linked = format!("file://{}", link.display());
    assert_refused(
        &daemon,
        &token,
        &kvm_job(&linked, &[]),
        kernel_at,
        "outside the lab's file roots",
    );
    std::fs::remove_file(&link).unwrap();
    // A device node.
    assert_refused(
        &daemon,
        &token,
        &kvm_job("file:///dev/zero", &[]),
        kernel_at,
        "outside the allowed roots",
    );
    // A comma that would add a qemu option.
    let comma = format!("file://{},id=x", images.guest_kernel.display());
    assert_refused(
        &daemon,
        &token,
        &kvm_job(&comma, &[]),
        kernel_at,
        "file refused",
    );

    // The dispatcher's loopback, by address and by name, as an image or a definition.
    let metrics = format!("http://{}/metrics", daemon.addr());
    assert_refused(
        &daemon,
        &token,
        &kvm_job(&metrics, &[]),
        kernel_at,
        "loopback address",
    );
    assert_refused(
        &daemon,
        &token,
        &kvm_job(&kernel, &[&metrics]),
        testdef_at,
        "loopback address",
    );
    let by_name = metrics.replace("127.0.0.1", "localhost");
    assert_refused(
        &daemon,
        &token,
        &kvm_job(&kernel, &[&by_name]),
        testdef_at,
        "loopback address",
    );
    let metadata = "http://169.254.169.254/latest/meta-data/";
    assert_refused(
        &daemon,
        &token,
        &kvm_job(metadata, &[]),
        kernel_at,
        "link-local address",
    );

    // More devices than the lab has, ever.
    let mut greedy = kvm_job(&kernel, &[]);
    greedy.as_object_mut().unwrap().remove("device_type");
    greedy["device_group"] = json!([{ "role": "node", "count": 64, "device_type": "kvm" }]);
    for action in greedy["actions"].as_array_mut().unwrap() {
        if let Some(params) = action.get_mut("parameters") {
            params["role"] = json!("node");
        }
    }
    assert_refused(
        &daemon,
        &token,
        &greedy,
        "/device_group",
        "the job needs 64 device(s) of device_type \"kvm\"; the lab has 2",
    );
    // A timeout past the lab's maximum.
    let mut long = kvm_job(&kernel, &[]);
    long["timeout"] = json!(7200);
    assert_refused(
        &daemon,
        &token,
        &long,
        "/timeout",
        "longer than this lab allows",
    );

    // Nothing refused was stored; the same job with its own files is accepted.
    let (_, listed) = http(&daemon.addr(), "GET", "/api/v1/jobs", Some(&token), b"").unwrap();
    assert_eq!(
        json_of(&listed)["jobs"],
        json!([]),
        "refused jobs were stored"
    );
    let (status, answer) = submit(&daemon, &token, &kvm_job(&kernel, &[]));
    assert_eq!(status, 201, "{answer:#}");
}

/// A job's guest on one of the daemon's `kvm` devices (a VM on the daemon's own
/// machine) connects to 10.0.2.2, which qemu's user networking would route to this
/// machine's loopback: the connection fails, and the loopback service never sees it.
#[test]
fn a_guest_on_the_daemons_machine_cannot_reach_its_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, token) = daemon(dir.path());
    let api = daemon.api(&token);
    let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = service.local_addr().unwrap().port();
    let job = e2e_job("single-kvm-image.json", "kvm").replace("@LOOPBACK_PORT@", &port.to_string());
    let id = api.submit(&job).unwrap();
    // A followed log ends with the job.
    api.follow_log(id).unwrap();
    let (status, body) = api
        .request("GET", &format!("/api/v1/jobs/{id}/results"), b"")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let results = json_of(&body);
    let cases: Vec<(String, String)> = results["results"]["nodes"][0]["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {results:#}"))
        .iter()
        .map(|c| {
            (
                c["case"].as_str().unwrap().to_string(),
                c["result"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for case in ["booted-from-disk", "dispatcher-loopback-closed"] {
        assert!(
            cases.contains(&(case.to_string(), "pass".to_string())),
            "{case}: {results:#}"
        );
    }
    service.set_nonblocking(true).unwrap();
    let reached = service.accept();
    assert!(
        matches!(&reached, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the guest connected to this machine's loopback: {reached:?}"
    );
}
