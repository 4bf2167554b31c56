//! The `dispatcher` binary as a user runs it: output and exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn dispatcher(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dispatcher"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn validate_prints_valid_for_the_seed_example() {
    let out = dispatcher(&["validate", "tests/jobs/valid/seed-vm-groups.json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(": valid"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn validate_prints_all_three_mistakes_with_pointers() {
    let out = dispatcher(&["validate", "tests/jobs/invalid/three-mistakes.json"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    for pointer in [
        "/vm_group/vms/1/cont",
        "/actions/0/command",
        "/actions/2/parameters/role",
    ] {
        assert!(
            err.contains(&format!("at {pointer}\n")),
            "{pointer} missing in:\n{err}"
        );
    }
    assert!(err.contains("3 errors"), "{err}");
}

#[test]
fn validate_json_output_is_machine_readable() {
    let out = dispatcher(&[
        "validate",
        "--format",
        "json",
        "tests/jobs/invalid/three-mistakes.json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["valid"], false);
    assert_eq!(value["diagnostics"].as_array().unwrap().len(), 3);
    assert_eq!(value["diagnostics"][0]["severity"], "error");
}

#[test]
fn validate_exit_2_when_the_file_cannot_be_read() {
    let out = dispatcher(&["validate", "no/such/job.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read no/such/job.json"));
}

#[test]
fn validate_respects_file_roots() {
    let out = dispatcher(&[
        "validate",
        "--file-root",
        "/srv/lava",
        "tests/jobs/valid/seed-vm-groups.json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("outside the allowed roots"));
}

#[test]
fn shipped_device_types_and_devices_pass_the_check() {
    let out = dispatcher(&["devices", "check", "device-types"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for name in [
        "kvm",
        "kvm-arm",
        "kvm-aarch64",
        "qemu-host",
        "ssh-host",
        "arndale",
    ] {
        assert!(stdout.contains(name), "{name} missing: {stdout}");
    }
}

#[test]
fn devices_check_reports_every_problem_with_file_and_place() {
    let dir = tempfile::tempdir().unwrap();
    let types = dir.path();
    std::fs::create_dir(types.join("devices")).unwrap();
    std::fs::write(
        types.join("kvm.toml"),
        std::fs::read_to_string(repo().join("device-types/kvm.toml"))
            .unwrap()
            .replace("{memory_mib}", "{memroy_mib}"),
    )
    .unwrap();
    std::fs::write(
        types.join("ssh-host.toml"),
        "name = \"ssh-host\"\nkind = \"ssh-host\"\ndescripton = \"typo\"\n",
    )
    .unwrap();
    std::fs::write(
        types.join("devices/box-1.toml"),
        "hostname = \"box-1\"\ndevice_type = \"ssh-hots\"\n",
    )
    .unwrap();
    std::fs::write(
        types.join("devices/box-2.toml"),
        "hostname = \"box-2\"\ndevice_type = \"kvm\"\n[ssh]\naddress = \"h\"\nhost_key = \"SHA256:abc\"\n",
    )
    .unwrap();
    let out = dispatcher(&["devices", "check", types.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    for needle in [
        "kvm.toml at /qemu/args/",
        "unknown placeholder {memroy_mib}",
        "ssh-host.toml:3:1",
        "did you mean \"description\"?",
        "box-1.toml at /device_type",
        "unknown device type \"ssh-hots\"",
        "box-2.toml:5:12",
        "43 base64 characters",
    ] {
        assert!(err.contains(needle), "{needle:?} missing in:\n{err}");
    }
}

/// A board's file with four mistakes of different kinds (a misspelt key, a port that
/// is a string, a host key that is no fingerprint, no console): one run names all four,
/// each with its line and key, and says nothing twice.
#[test]
fn devices_check_reports_four_mistakes_of_one_file_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let types = dir.path();
    std::fs::create_dir(types.join("devices")).unwrap();
    std::fs::copy(
        repo().join("device-types/arndale.toml"),
        types.join("arndale.toml"),
    )
    .unwrap();
    std::fs::write(
        types.join("devices/board-1.toml"),
        "hostname = \"board-1\"\ndevice_type = \"arndale\"\ntgas = [\"usb\"]\n\n\
         [ssh]\naddress = \"board-1.lab\"\nport = \"22\"\nhost_key = \"SHA256:short\"\n\n\
         [power]\non = \"pdu on 3\"\noff = \"pdu off 3\"\nreset = \"pdu reset 3\"\n",
    )
    .unwrap();
    let out = dispatcher(&["devices", "check", types.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    for needle in [
        "board-1.toml:3:1 at /tgas",
        "did you mean \"tags\"?",
        "board-1.toml:7:8 at /ssh/port",
        "board-1.toml:8:12 at /ssh/host_key",
        "43 base64 characters",
        "board-1.toml at /console",
        "missing [console]",
    ] {
        assert!(err.contains(needle), "{needle:?} missing in:\n{err}");
    }
    assert_eq!(err.matches("error:").count(), 4, "{err}");
}

#[test]
fn builtin_device_types_match_the_shipped_directory() {
    let mut shipped: Vec<String> = std::fs::read_dir(repo().join("device-types"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    shipped.sort();
    let mut builtin: Vec<String> = lab::BUILTIN_DEVICE_TYPES
        .iter()
        .map(|(name, _)| name.to_string())
        .collect();
    builtin.sort();
    assert_eq!(builtin, shipped);
    lab::Lab::builtin().unwrap();
}

/// `dispatcher run` refuses what it cannot run before touching any device, saying why.
#[test]
fn run_explains_an_invalid_job_and_a_lab_without_a_fitting_device() {
    let dir = tempfile::tempdir().unwrap();
    let devices = dir.path().join("devices");
    std::fs::create_dir_all(&devices).unwrap();
    let agent = dir.path().join("node-agent");
    std::fs::write(&agent, b"").unwrap();
    let state = dir.path().join("state");
    let run = |job: &str| {
        dispatcher(&[
            "run",
            job,
            "--devices",
            devices.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--node-agent",
            agent.to_str().unwrap(),
        ])
    };
    let out = run("tests/jobs/invalid/three-mistakes.json");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("/vm_group/vms/1/cont"),
        "{}",
        text(&out.stderr)
    );
    // A job this lab could never run is refused like any invalid job, naming the
    // shortfall (and the files it names that are not here).
    let out = run("tests/jobs/valid/vm-group-auto-start-false.json");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    for expected in [
        "the job needs 1 device(s) of device_type \"ssh-host\"; the lab has 0",
        "at /vm_group/host/device_type",
        "file refused: /srv/lava/images/guest/initramfs.cpio.gz",
    ] {
        assert!(
            text(&out.stderr).contains(expected),
            "{expected}: {}",
            text(&out.stderr)
        );
    }
    // Nothing was started or written for a job that could not run.
    assert!(!state.join("jobs").exists());
}

#[test]
fn the_readme_shows_the_configuration_the_package_installs() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let shipped = std::fs::read_to_string(repo().join("packaging/dispatcher.toml")).unwrap();
    let marker = "<!-- packaging/dispatcher.toml -->\n```toml\n";
    let start = readme.find(marker).expect("the marked block") + marker.len();
    let end = start + readme[start..].find("```\n").expect("its end");
    assert_eq!(readme[start..end], shipped, "README.md's copy differs");
}

#[test]
fn completions_and_manual_pages_come_from_the_commands() {
    let bash = dispatcher(&["completions", "bash"]);
    assert_eq!(bash.status.code(), Some(0));
    let script = text(&bash.stdout);
    for word in ["submit", "wait", "--follow", "--format"] {
        assert!(script.contains(word), "{word} in the bash completion");
    }
    let dir = tempfile::tempdir().unwrap();
    let pages = dispatcher(&["manpage", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(pages.status.code(), Some(0), "{}", text(&pages.stderr));
    for page in [
        "dispatcher.1",
        "dispatcher-submit.1",
        "dispatcher-devices-health.1",
    ] {
        let roff = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(roff.contains(".TH"), "{page}: {roff}");
    }
}
