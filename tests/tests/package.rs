//! The Debian package as an admin installs it: built by `scripts/build-deb.sh`,
//! installed with `dpkg -i` on this machine, its systemd unit accepted by
//! `systemd-analyze verify`, its configuration one the installed daemon would start
//! with, and purged again.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

use std::process::{Command, Output};

use system_tests::repo_root;

const UNIT: &str = "/lib/systemd/system/lava-dispatcher.service";

fn run(command: &mut Command) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Purges the package however the test ends.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", "lava-dispatcher"])
            .output();
    }
}

#[test]
fn the_package_installs_a_unit_systemd_accepts_and_a_daemon_that_would_start() {
    let installed = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "lava-dispatcher"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&installed.stdout).contains("install ok installed"),
        "lava-dispatcher is installed on this machine already: this test would replace it"
    );
    let built = run(Command::new("bash")
        .arg(repo_root().join("scripts/build-deb.sh"))
        .env("PROFILE", "dev"));
    let deb = String::from_utf8_lossy(&built.stdout).trim().to_string();
    let contents =
        String::from_utf8_lossy(&run(Command::new("dpkg-deb").args(["--contents", &deb])).stdout)
            .into_owned();
    for file in [
        "./usr/bin/dispatcher",
        "./usr/lib/lava-dispatcher/node-agent-static",
        "./usr/share/lava-dispatcher/device-types/kvm.toml",
        "./etc/lava-dispatcher/dispatcher.toml",
        "./lib/systemd/system/lava-dispatcher.service",
        "./usr/share/man/man1/dispatcher-submit.1.gz",
        "./usr/share/bash-completion/completions/dispatcher",
    ] {
        assert!(contents.contains(file), "{file} in:\n{contents}");
    }

    let _purge = Purge;
    run(Command::new("dpkg").args(["-i", &deb]));
    let verified = run(Command::new("systemd-analyze").args(["verify", UNIT]));
    let said = String::from_utf8_lossy(&verified.stderr);
    assert!(!said.contains("lava-dispatcher"), "{said}");
    // The same check refuses a broken unit: it is a check.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("lava-dispatcher.service");
    let unit = std::fs::read_to_string(UNIT).unwrap();
    std::fs::write(
        &broken,
        unit.replace(
            "ExecStart=/usr/bin/dispatcher",
            "ExecStart=dispatcher-not-there",
        ),
    )
    .unwrap();
    let refused = Command::new("systemd-analyze")
        .args(["verify"])
        .arg(&broken)
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "a unit naming no executable is refused"
    );

    // The installed daemon would start with the installed configuration: the lab key
    // was made, the node agent and device types are where it says.
    let key = std::fs::metadata("/etc/lava-dispatcher/lab_ed25519").unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
        0o600
    );
    let checked = run(Command::new("/usr/bin/dispatcher").args([
        "serve",
        "--check",
        "--config",
        "/etc/lava-dispatcher/dispatcher.toml",
    ]));
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(
        said.starts_with("ok: /etc/lava-dispatcher/dispatcher.toml would start: 6 device type(s)"),
        "{said}"
    );
    let page = run(Command::new("man").args(["-w", "dispatcher-submit"]));
    assert!(String::from_utf8_lossy(&page.stdout).contains("dispatcher-submit.1"));

    run(Command::new("dpkg").args(["--purge", "lava-dispatcher"]));
    assert!(!std::path::Path::new("/usr/bin/dispatcher").exists());
    assert!(!std::path::Path::new("/etc/lava-dispatcher").exists());
}
