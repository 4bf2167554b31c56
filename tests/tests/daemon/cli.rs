//! The `dispatcher` client against a real daemon, as a person and a script use it:
//! tables instead of JSON, exit statuses that are the job's result, errors that name
//! what to fix, and output into a pipe whose reader is gone.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use system_tests::{Daemon, binary, create_token, jobs_dir, kvm_devices};

/// A daemon whose two kvm devices are in maintenance (jobs stay queued), and a token.
fn held_daemon(dir: &Path) -> (Daemon, String) {
    let devices = kvm_devices(dir, &["kvm-01", "kvm-02"]);
    // Never used (no job runs), only there: the daemon refuses paths that are not.
    let (key, agent) = (dir.join("lab-key"), dir.join("agent"));
    std::fs::write(&key, "unused").unwrap();
    std::fs::write(&agent, "unused").unwrap();
    let config = dir.join("dispatcher.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\ndevices = \"{}\"\n\
             lab_key = \"{}\"\nnode_agent = \"{}\"\n",
            dir.join("state").display(),
            devices.display(),
            key.display(),
            agent.display()
        ),
    )
    .unwrap();
    let token = create_token(&config, &["cli"]);
    let daemon = Daemon::start(&config);
    for device in ["kvm-01", "kvm-02"] {
        let set = daemon.cli(&token, &["devices", "health", device, "maintenance"]);
        assert!(set.status.success(), "{}", text(&set.stderr));
        assert_eq!(
            text(&set.stdout),
            format!("{device}: health maintenance (set by an admin)\n")
        );
    }
    (daemon, token)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `dispatcher ARGS` with its stdout a pipe whose reader has already gone.
fn into_a_closed_pipe(daemon: &Daemon, token: &str, args: &[&str]) -> Output {
    let mut child = Command::new(binary("dispatcher"))
        .args(args)
        .env("LAVA_DISPATCHER_URL", &daemon.url)
        .env("LAVA_DISPATCHER_TOKEN", token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

#[test]
fn a_person_reads_tables_a_script_reads_json_and_exit_statuses_are_the_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, token) = held_daemon(dir.path());

    // Without a token: the message names the variable to set.
    let anonymous = Command::new(binary("dispatcher"))
        .args(["devices", "list"])
        .env("LAVA_DISPATCHER_URL", &daemon.url)
        .env_remove("LAVA_DISPATCHER_TOKEN")
        .output()
        .unwrap();
    assert_eq!(anonymous.status.code(), Some(4));
    assert!(
        text(&anonymous.stderr).contains("set LAVA_DISPATCHER_TOKEN or pass --token"),
        "{}",
        text(&anonymous.stderr)
    );

    // Devices as a table for people, JSON for scripts.
    let listed = daemon.cli(&token, &["devices", "list"]);
    let table = text(&listed.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("DEVICE  TYPE  STATE  HEALTH"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("kvm-01  kvm   idle   maintenance"),
        "{table}"
    );
    let listed = daemon.cli(&token, &["devices", "list", "--format", "json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["devices"][1]["hostname"], "kvm-02", "{listed}");

    // A queued job: its status says why it waits, in words and times, not JSON.
    let job = dir.path().join("job.json");
    let definition = std::fs::read_to_string(jobs_dir().join("valid/device-group-two-kvm.json"))
        .unwrap()
        .replace("file:///srv/lava/images/", "http://images.example.org/");
    std::fs::write(&job, &definition).unwrap();
    let submitted = daemon.cli(&token, &["submit", job.to_str().unwrap()]);
    assert_eq!(text(&submitted.stdout), "job 1 submitted\n");
    let status = daemon.cli(&token, &["status", "1"]);
    let shown = text(&status.stdout);
    assert_eq!(status.status.code(), Some(0), "a queued job is no failure");
    assert!(shown.starts_with("job 1  two kvm devices\n"), "{shown}");
    assert!(shown.contains("  state      submitted\n"), "{shown}");
    assert!(
        shown.contains("  waiting    waiting for ") && shown.contains("kvm-01 is in maintenance"),
        "{shown}"
    );
    assert!(shown.contains("\nserver  server  -"), "its nodes: {shown}");
    assert!(!shown.contains('{'), "no JSON: {shown}");

    // A node the job does not have is an error naming the ones it has.
    let logs = daemon.cli(&token, &["logs", "1", "--node", "nosuch"]);
    assert_eq!(logs.status.code(), Some(2));
    assert!(
        text(&logs.stderr).contains("job 1 has no node \"nosuch\"; its nodes: server, client"),
        "{}",
        text(&logs.stderr)
    );

    // Canceled: `cancel` says so, and `status`, `logs` and `wait` exit 3.
    let canceled = daemon.cli(&token, &["cancel", "1"]);
    assert_eq!(text(&canceled.stdout), "job 1: finished: canceled\n");
    for args in [&["status", "1"][..], &["logs", "1"], &["wait", "1"]] {
        let out = daemon.cli(&token, args);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let waited = daemon.cli(&token, &["wait", "1"]);
    assert_eq!(
        text(&waited.stdout),
        "job 1: finished: canceled\n  [canceled] canceled before it ran\n"
    );
    let results = daemon.cli(&token, &["results", "1"]);
    assert_eq!(
        text(&results.stdout),
        "job 1 has no results (finished: canceled)\n"
    );

    // Jobs as a table, filtered and a page at a time, by the token that sent them.
    std::fs::write(&job, definition.replace("two kvm devices", "nightly boot")).unwrap();
    let second = daemon.cli(&token, &["submit", job.to_str().unwrap()]);
    assert_eq!(text(&second.stdout), "job 2 submitted\n");
    let listed = |args: &[&str]| {
        let out = daemon.cli(&token, &[&["jobs", "list"][..], args].concat());
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let all = listed(&[]);
    let rows: Vec<&str> = all.lines().collect();
    assert!(rows[0].starts_with("ID  STATE"), "{all}");
    assert!(
        rows[1].starts_with("2   submitted           (kvm)    cli"),
        "the types it waits for, its submitter: {all}"
    );
    assert!(
        rows[1].ends_with("nightly boot") && rows[2].starts_with("1 "),
        "{all}"
    );
    assert_eq!(rows[3], "jobs 1-2 of 2");
    assert!(listed(&["--limit", "1"]).ends_with("jobs 1-1 of 2 (next: --offset 1)\n"));
    let second_page = listed(&["--limit", "1", "--offset", "1"]);
    assert!(second_page.contains("two kvm devices"), "{second_page}");
    assert!(second_page.ends_with("jobs 2-2 of 2\n"), "{second_page}");
    let found = listed(&["--search", "NIGHTLY"]);
    assert!(
        found.contains("nightly boot") && found.ends_with("jobs 1-1 of 1\n"),
        "{found}"
    );
    let canceled = listed(&["--health", "canceled"]);
    assert!(
        canceled.contains("two kvm devices") && !canceled.contains("nightly"),
        "{canceled}"
    );
    assert_eq!(
        listed(&["--device-type", "ssh-host"]).lines().last(),
        Some("no jobs here (0 match)")
    );
    let page: Value =
        serde_json::from_str(&listed(&["--state", "submitted", "--format", "json"])).unwrap();
    assert_eq!(
        (page["total"].as_u64(), page["jobs"][0]["id"].as_u64()),
        (Some(1), Some(2))
    );
    for bad in ["limit=0", "limit=1001", "colour=red", "health=green"] {
        let (status, body) = system_tests::http(
            &daemon.addr(),
            "GET",
            &format!("/api/v1/jobs?{bad}"),
            Some(&token),
            b"",
        )
        .unwrap();
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // A job as it was sent, byte for byte.
    let sent = daemon.cli(&token, &["jobs", "definition", "1"]);
    assert_eq!(text(&sent.stdout).trim_end(), definition.trim_end());

    // Output into a pipe nobody reads any more: no panic, the status unchanged.
    for args in [
        &["devices", "list"][..],
        &["status", "1", "--format", "json"],
        &["results", "1", "--format", "json"],
        &["completions", "bash"],
    ] {
        let out = into_a_closed_pipe(&daemon, &token, args);
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            matches!(out.status.code(), Some(0 | 3)),
            "{args:?}: {:?} {stderr}",
            out.status
        );
    }
}

#[test]
fn serve_refuses_a_configuration_whose_paths_are_not_there() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dispatcher.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\ndevices = \"{}\"\n\
             lab_key = \"/nonexistent/lab-key\"\nnode_agent = \"/nonexistent/agent\"\n",
            dir.path().join("state").display(),
            dir.path().join("no-devices").display(),
        ),
    )
    .unwrap();
    for check in [false, true] {
        let mut serve = Command::new(binary("dispatcher"));
        serve.args(["serve", "--config", config.to_str().unwrap()]);
        if check {
            serve.arg("--check");
        }
        let out = serve.output().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        for named in [
            format!(
                "devices = {} (not found)",
                dir.path().join("no-devices").display()
            ),
            "lab_key = /nonexistent/lab-key (not found)".to_string(),
            "node_agent = /nonexistent/agent (not found)".to_string(),
        ] {
            assert!(stderr.contains(&named), "{named} in:\n{stderr}");
        }
        assert!(!text(&out.stdout).contains("listening"), "it did not start");
    }
    assert!(
        !dir.path().join("state").exists(),
        "a refused start leaves nothing behind"
    );
}
