//! A `board` device through the admin's power and console commands, with stand-ins: the
//! "console server" is a script that stays silent until the power-on command writes to
//! its power line, then boots (prints a boot log) to a shell; the board's SSH side is a
//! real sshd in a network namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

use std::time::Duration;

use hostctl::console::ConsoleLog;
use hostctl::host;
use hostctl::ssh::SshTarget;
use lab::device::{HostKeyPolicy, PowerCommands};
use regex::Regex;
use system_tests::SshHost;

#[tokio::test]
async fn a_board_is_powered_on_watched_to_its_prompt_and_reached_over_ssh() {
    let sshd = SshHost::start(None);
    let dir = tempfile::tempdir().unwrap();
    let line = dir.path().join("power-line");
    let state = dir.path().join("power-state");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&line)
            .status()
            .unwrap()
            .success()
    );
    let power = PowerCommands {
        on: format!(
            "echo on > {0} && echo on > {1}",
            state.display(),
            line.display()
        ),
        off: format!("echo off > {}", state.display()),
        reset: format!("echo reset > {}", state.display()),
    };
    let console = format!(
        "read power < {}; echo 'U-Boot 2014.04 (Arndale)'; echo 'Starting kernel ...'; PS1='root@arndale:~# ' exec sh -i 2>&1",
        line.display()
    );
    let ssh = SshTarget {
        host: sshd.address.clone(),
        port: sshd.port,
        user: "root".into(),
        identity: sshd.identity.clone(),
        host_key: HostKeyPolicy::Fingerprint(sshd.fingerprint.clone()),
        known_hosts: dir.path().join("known_hosts"),
    };
    let log = ConsoleLog::default();
    let prompt = Regex::new(r"root@arndale:~# $").unwrap();
    let mut up = host::boot_board(
        "arndale-01",
        &power,
        &console,
        &ssh,
        &prompt,
        Duration::from_secs(60),
        log.clone(),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read_to_string(&state).unwrap().trim(), "on");
    let boot_log = String::from_utf8_lossy(&log.contents()).into_owned();
    assert!(boot_log.contains("U-Boot 2014.04"), "{boot_log}");
    assert_eq!(
        up.ssh
            .run("echo over-ssh", Duration::from_secs(10))
            .await
            .unwrap(),
        "over-ssh\n"
    );
    let console = up.local.as_mut().unwrap();
    let (out, code) = console
        .console
        .run("echo on-console", &prompt, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!((out.trim(), code), ("on-console", 0));
    up.shut_down().await;
    host::power_off_board("arndale-01", &power).await.unwrap();
    assert_eq!(std::fs::read_to_string(&state).unwrap().trim(), "off");
}

#[tokio::test]
async fn a_failing_power_command_is_reported_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let power = PowerCommands {
        on: "echo 'pdu01: port 3: no route to host' >&2; exit 1".into(),
        off: "true".into(),
        reset: "true".into(),
    };
    let ssh = SshTarget {
        host: "127.0.0.1".into(),
        port: 1,
        user: "root".into(),
        identity: dir.path().join("none"),
        host_key: HostKeyPolicy::TrustOnFirstUse,
        known_hosts: dir.path().join("known_hosts"),
    };
    let err = host::boot_board(
        "b",
        &power,
        "cat",
        &ssh,
        &Regex::new("#").unwrap(),
        Duration::from_secs(5),
        ConsoleLog::default(),
    )
    .await
    .err()
    .expect("must fail");
    assert!(err.to_string().contains("no route to host"), "{err}");
}
