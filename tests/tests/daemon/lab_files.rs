//! The lab's files under a running daemon: one broken device file takes that device
//! offline, not the daemon; `dispatcher devices reload` and SIGHUP put changed files in
//! use without a restart, and a job running meanwhile keeps its device.

use serde_json::{Value, json};
use system_tests::{SshHost, SshLab, test_images};

/// The device named `name` in the daemon's list.
fn listed(api: &system_tests::ApiClient, name: &str) -> Option<Value> {
    api.devices().unwrap()["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["hostname"] == name)
        .cloned()
}

/// A one-command job on the device `target`.
fn on_target(target: &str, command: &str) -> String {
    json!({
        "job_name": format!("on {target}"),
        "target": target,
        "timeout": 300,
        "actions": [{"command": "lava_command_run", "parameters": {"commands": [command]}}]
    })
    .to_string()
}

#[test]
fn a_broken_device_file_takes_only_its_device_offline_and_reloads_need_no_restart() {
    let lab = SshLab::new();
    let devices = lab.dir.path().join("devices");
    let broken = devices.join("broken-01.toml");
    std::fs::write(
        &broken,
        "hostname = \"broken-01\"\ndevice_type = \"ssh-host\"\n\n[ssh]\nadress = \"10.0.0.9\"\n\
         host_key = \"trust-on-first-use\"\n",
    )
    .unwrap();
    let (daemon, api) = lab.serve();
    let shown = listed(&api, "broken-01").expect("the broken device is listed");
    assert_eq!(shown["state"]["state"], "offline", "{shown:#}");
    let error = shown["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("broken-01.toml:5:1 at /ssh/adress")
            && error.contains("did you mean \"address\"?"),
        "{shown:#}"
    );
    let mut browser = system_tests::Browser::start();
    browser.sign_in(&daemon.url, api.token());
    let page = browser.show(
        &format!("{}/#/devices", daemon.url),
        "#devices",
        "did you mean",
        "devices-broken-file.png",
    );
    assert!(page.contains("broken-01.toml:5:1 at /ssh/adress"), "{page}");

    // The good device takes a job, held at a gate until the reloads are done.
    let gate = lab.dir.path().join("gate");
    nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let held = api
        .submit(&on_target(
            "ssh-host-01",
            &format!("read line < {}", gate.display()),
        ))
        .unwrap();
    api.follow_until(held, "LAVA_SIGNAL_STARTRUN").unwrap();

    // A new device file: refused by name until the lab is reloaded.
    let images = test_images();
    let second = SshHost::start(Some((&images.lab_key, &images.lab_pubkey)));
    second.device_file(lab.dir.path(), "ssh-host-02", false);
    let (status, answer) = api
        .request(
            "POST",
            "/api/v1/jobs",
            on_target("ssh-host-02", "true").as_bytes(),
        )
        .unwrap();
    assert_eq!(status, 400, "{answer}");
    let reload = daemon.cli(api.token(), &["devices", "reload", "--format", "json"]);
    assert!(
        reload.status.success(),
        "{}",
        String::from_utf8_lossy(&reload.stderr)
    );
    let reloaded: Value = serde_json::from_slice(&reload.stdout).unwrap();
    assert_eq!(
        reloaded["devices"],
        json!(["ssh-host-01", "ssh-host-02"]),
        "{reloaded:#}"
    );
    assert_eq!(reloaded["refused"], json!(["broken-01"]), "{reloaded:#}");
    let new_job = api.submit(&on_target("ssh-host-02", "true")).unwrap();
    api.follow_log(new_job).unwrap();
    assert_eq!(api.job_state(new_job).unwrap()["health"], "complete");

    // The broken file fixed, and SIGHUP: the device joins, idle, with no error.
    std::fs::write(
        &broken,
        "hostname = \"broken-01\"\ndevice_type = \"ssh-host\"\n\n[ssh]\naddress = \"10.0.0.9\"\n\
         host_key = \"trust-on-first-use\"\n",
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(daemon.pid()).unwrap()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let shown = listed(&api, "broken-01").unwrap();
        if shown.get("error").is_none() {
            assert_eq!(shown["state"]["state"], "idle", "{shown:#}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload: {shown:#}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // The job that ran through both reloads was not disturbed.
    std::fs::write(&gate, b"go\n").unwrap();
    api.follow_log(held).unwrap();
    assert_eq!(api.job_state(held).unwrap()["health"], "complete");
}
