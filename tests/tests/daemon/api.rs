use system_tests::{
    Browser, SshLab, binary, diagnostic_pointers, http, jobs_dir, json_of, parse_junit, parse_tap,
    run_in_terminal,
};

#[test]
fn the_api_checks_tokens_and_jobs_and_runs_a_vm_group_job() {
    let lab = SshLab::new();
    let (daemon, api) = lab.serve();
    let (addr, token) = (daemon.addr(), api.token().to_string());

    let (status, _) = http(&addr, "GET", "/api/v1/devices", None, b"").unwrap();
    assert_eq!(status, 401, "reads need a token unless public_reads is set");
    let (status, _) = http(&addr, "GET", "/api/v1/devices", Some("wrong"), b"").unwrap();
    assert_eq!(status, 401);
    let (status, body) = api.request("GET", "/api/v1/devices", b"").unwrap();
    assert_eq!(status, 200, "{body}");
    let devices = json_of(&body);
    assert_eq!(devices["devices"][0]["hostname"], "ssh-host-01", "{body}");
    assert_eq!(devices["devices"][0]["state"]["state"], "idle", "{body}");

    let invalid = std::fs::read(jobs_dir().join("invalid/three-mistakes.json")).unwrap();
    let (status, body) = api.request("POST", "/api/v1/jobs", &invalid).unwrap();
    assert_eq!(status, 400, "{body}");
    let found = diagnostic_pointers(&body);
    assert!(
        found.iter().any(|p| p == "/vm_group/vms/1/cont"),
        "{found:?}"
    );
    assert!(found.len() >= 3, "every problem at once: {found:?}");

    let huge = vec![b' '; 100_000];
    let (status, _) = http(&addr, "POST", "/api/v1/jobs", Some(&token), &huge).unwrap();
    assert_eq!(status, 413, "a job past max_job_bytes");

    // A read-only token reads, and may neither submit, cancel nor set health.
    let reader = daemon.api(&lab.token(&["dashboard", "--read-only"]));
    let (status, body) = reader.request("GET", "/api/v1/devices", b"").unwrap();
    assert_eq!(status, 200, "{body}");
    let seed = lab.seed_job();
    for (method, path, body) in [
        ("POST", "/api/v1/jobs", seed.as_bytes()),
        ("POST", "/api/v1/jobs/1/cancel", &b""[..]),
        (
            "PUT",
            "/api/v1/devices/ssh-host-01/health",
            &br#"{"health":"bad"}"#[..],
        ),
    ] {
        let (status, answer) = reader.request(method, path, body).unwrap();
        assert_eq!(status, 403, "{method} {path}: {answer}");
        assert!(answer.contains("token dashboard is read-only"), "{answer}");
    }

    let job = lab.dir.path().join("seed.json");
    std::fs::write(&job, lab.seed_job()).unwrap();
    // Submitted and followed in a terminal, as a person does: progress lines while
    // the images go up and the VMs boot, then the results and their counts.
    let run = run_in_terminal(
        &binary("dispatcher"),
        &["submit", job.to_str().unwrap(), "--follow"],
        &[
            ("LAVA_DISPATCHER_URL", daemon.url.as_str()),
            ("LAVA_DISPATCHER_TOKEN", token.as_str()),
        ],
        "submit-follow",
    );
    let seen = &run.text;
    assert_eq!(run.exit, Some(0), "{seen}");
    assert!(
        seen.contains("client.client-side.ping-server -- PASS")
            && seen.contains("server.server-side.sync-all-up -- PASS"),
        "{seen}"
    );
    assert!(
        seen.contains("[server] info: start: boot"),
        "the log was followed: {seen}"
    );
    let upload =
        regex::Regex::new(r"\[(server|client)\] \w+ upload \[[=> ]{30}\] [0-9.]+ [KMG]?i?B/")
            .unwrap();
    assert!(
        upload.is_match(seen),
        "a progress bar while uploading: {seen}"
    );
    let boot = regex::Regex::new(r"\[(server|client)\] boot +[0-9]+s").unwrap();
    assert!(boot.is_match(seen), "a progress line while booting: {seen}");
    let summary =
        regex::Regex::new(r"job 1: complete in [0-9.]+ s: ([0-9]+) passed, 0 failed \(3 nodes\)")
            .unwrap();
    let passed: usize = summary
        .captures(seen)
        .unwrap_or_else(|| panic!("a summary with counts: {seen}"))[1]
        .parse()
        .unwrap();
    assert!(passed >= 7, "{seen}");
    let coloured = regex::Regex::new(r"(\x1b\[[0-9;]*m)+PASS").unwrap();
    assert!(coloured.is_match(&run.raw), "PASS in colour on a terminal");
    assert!(
        !run.screen.contains(" upload [") && run.screen.contains("0 failed (3 nodes)"),
        "the progress lines are gone at the end, the summary stays:\n{}",
        run.screen
    );
    // Into a pipe that closes early: the first line, no panic.
    let head = std::process::Command::new("bash")
        .args([
            "-c",
            "\"$0\" results 1 | head -1; echo \"status ${PIPESTATUS[0]}\"",
        ])
        .arg(binary("dispatcher"))
        .env("LAVA_DISPATCHER_URL", &daemon.url)
        .env("LAVA_DISPATCHER_TOKEN", &token)
        .output()
        .unwrap();
    let (first, stderr) = (
        String::from_utf8_lossy(&head.stdout),
        String::from_utf8_lossy(&head.stderr),
    );
    assert!(
        first.ends_with(" -- PASS\nstatus 0\n") && stderr.is_empty(),
        "{first}{stderr}"
    );

    let (status, body) = api.request("GET", "/api/v1/jobs/1", b"").unwrap();
    assert_eq!(status, 200);
    let job = json_of(&body);
    assert_eq!(job["state"]["state"], "finished", "{body}");
    assert_eq!(job["state"]["health"], "complete", "{body}");
    let devices = api.devices().unwrap();
    assert_eq!(devices["devices"][0]["state"]["state"], "idle", "{devices}");
    lab.host.assert_no_qemu();

    // Results as JUnit and TAP, from the CLI, read by independent parsers.
    let junit = daemon.cli(&token, &["results", "1", "--format", "junit"]);
    let cases = parse_junit(&String::from_utf8_lossy(&junit.stdout));
    assert!(
        cases.len() >= 7 && cases.iter().all(|(_, o)| o == "pass"),
        "{cases:?}"
    );
    let tap = daemon.cli(&token, &["results", "1", "--format", "tap"]);
    let (passed, failed, _, good_plan) = parse_tap(&String::from_utf8_lossy(&tap.stdout));
    assert_eq!((passed, failed, good_plan), (cases.len(), 0, true));

    // The web page shows the finished job: its group, its log, its results.
    let mut browser = Browser::start();
    browser.sign_in(&daemon.url, &token);
    let page = browser.show(
        &format!("{}/#/job/1", daemon.url),
        "#results-table",
        "ping-server",
        "job-finished.png",
    );
    assert!(page.contains("id=\"results-table\""), "{page}");
    assert!(
        page.contains("ping-server") && page.contains("class=\"pass\""),
        "{page}"
    );
    assert!(
        page.contains("data-node=\"client\""),
        "the group diagram: {page}"
    );
    // The timeline: a lane for the host and each VM, each with its boot and test.
    let lanes = browser.eval(
        "Object.fromEntries([...document.querySelectorAll('#timeline .lane')].map(l => \
         [l.dataset.node, [...l.querySelectorAll('.bar')].map(b => b.dataset.action)]))",
    );
    for node in ["host", "server", "client"] {
        let actions = lanes[node].as_array().cloned().unwrap_or_default();
        for action in ["boot", "test"] {
            assert!(actions.contains(&action.into()), "{node} {action}: {lanes}");
        }
    }
    let list = browser.show(
        &format!("{}/#/", daemon.url),
        "#jobs",
        "ssh-host-01",
        "jobs.png",
    );
    assert!(
        list.contains("ssh-host-01") && list.contains("#/job/1"),
        "{list}"
    );

    // Each node's raw console, downloadable; nothing outside the job's directory.
    let (status, console) = api
        .request("GET", "/api/v1/jobs/1/console/server", b"")
        .unwrap();
    assert_eq!(status, 200);
    assert!(console.contains("LAVA_TEST_SHELL_DONE"), "{console}");
    let (status, _) = http(
        &addr,
        "GET",
        "/api/v1/jobs/1/console/..%2Fjob.json",
        Some(&token),
        b"",
    )
    .unwrap();
    assert!(status == 400 || status == 404, "{status}");

    // The file the server's test shell attached: listed with its results, served as
    // a download, in JUnit; only listed files are served.
    let (_, body) = api.request("GET", "/api/v1/jobs/1", b"").unwrap();
    let view = json_of(&body);
    let server = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "server")
        .unwrap()
        .clone();
    let attached = &server["attachments"][0];
    assert_eq!(attached["name"], "uname.txt", "{server:#}");
    let file = attached["file"].as_str().unwrap();
    let (status, text) = api
        .request("GET", &format!("/api/v1/jobs/1/{file}"), b"")
        .unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.starts_with("Linux guest "), "{text}");
    assert_eq!(attached["size"], text.len() as u64);
    for path in [
        "/api/v1/jobs/1/attachments/..%2Fjob.json",
        "/api/v1/jobs/1/attachments/99-uname.txt",
        "/api/v1/jobs/1/attachments/job.log",
    ] {
        let (status, _) = api.request("GET", path, b"").unwrap();
        assert_eq!(status, 404, "{path}");
    }
    let junit = daemon.cli(&token, &["results", "1", "--format", "junit"]);
    assert!(
        String::from_utf8_lossy(&junit.stdout).contains(&format!("[[ATTACHMENT|{file}]]")),
        "{}",
        String::from_utf8_lossy(&junit.stdout)
    );
    assert!(
        page.contains("id=\"attachments\"") && page.contains(file),
        "the web page lists the attachment: {page}"
    );
    assert!(
        page.contains("https://www.kernel.org/doc/"),
        "the web page shows the reference: {page}"
    );

    let (status, body) = http(&addr, "GET", "/healthz", None, b"").unwrap();
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, metrics) = http(&addr, "GET", "/metrics", None, b"").unwrap();
    assert_eq!(status, 200);
    for line in [
        "dispatcher_jobs{state=\"finished\"} 1",
        "dispatcher_jobs_finished{health=\"complete\"} 1",
        "dispatcher_queue_length 0",
        "dispatcher_devices{state=\"idle\",health=\"unknown\"} 1",
        "dispatcher_coordinator_waiters 0",
        // The job's run and its wait, observed per device type; each device's health.
        "dispatcher_job_duration_seconds_count{device_type=\"ssh-host\",health=\"complete\"} 1",
        "dispatcher_queue_wait_seconds_count{device_type=\"ssh-host\"} 1",
        "dispatcher_device_health{device=\"ssh-host-01\",device_type=\"ssh-host\",health=\"unknown\"} 1",
        "dispatcher_device_health{device=\"ssh-host-01\",device_type=\"ssh-host\",health=\"bad\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    let sent: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("dispatcher_transfer_bytes_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(sent > 1_000_000, "the images went to the host: {metrics}");
}
