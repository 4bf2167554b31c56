use serde_json::Value;
use system_tests::{SshLab, e2e_job};

/// The job's id from a log line `job ID running on DEVICE`, and the device.
fn running_on(line: &Value) -> Option<(u64, String)> {
    let msg = line["msg"].as_str()?.strip_prefix("job ")?;
    let (id, device) = msg.split_once(" running on ")?;
    Some((id.parse().ok()?, device.to_string()))
}

/// 200 jobs submitted at once to a lab of 4 devices: every job runs exactly once and
/// completes, no device ever holds two jobs at a time, and 50 clients following the
/// last job's log (through its whole wait in the queue) each get all of it.
#[test]
fn two_hundred_jobs_on_four_devices_each_run_once() {
    let lab = SshLab::with_hosts(4);
    let (_daemon, api) = lab.serve();
    // The VM is a shell its launch_with starts on the host: the jobs are about the
    // queue, not about booting (its image is uploaded, and cached, all the same).
    let job = e2e_job("shell-vm.json", "ssh-host");
    let ids: Vec<u64> = (0..200).map(|_| api.submit(&job).unwrap()).collect();
    let last = ids[ids.len() - 1];
    let followers: Vec<_> = (0..50)
        .map(|_| {
            let api = api.clone();
            std::thread::spawn(move || api.follow_log(last).unwrap())
        })
        .collect();
    // Per device: (first log time, last log time, job) of every job it ran.
    let mut runs: std::collections::BTreeMap<String, Vec<(String, String, u64)>> =
        std::collections::BTreeMap::new();
    for &id in &ids {
        let log = api.follow_log(id).unwrap();
        let state = api.job_state(id).unwrap();
        assert_eq!(state["health"], "complete", "job {id}: {state}\n{log:#?}");
        let starts: Vec<(u64, String)> = log.iter().filter_map(running_on).collect();
        assert_eq!(starts.len(), 1, "job {id} ran once: {starts:?}");
        assert_eq!(starts[0].0, id);
        let time = |line: &Value| line["dt"].as_str().unwrap_or_default().to_string();
        runs.entry(starts[0].1.clone()).or_default().push((
            time(&log[0]),
            time(&log[log.len() - 1]),
            id,
        ));
    }
    assert_eq!(runs.len(), 4, "every device took jobs: {:?}", runs.keys());
    for (device, spans) in &mut runs {
        // RFC 3339 times of one format sort as they happened.
        spans.sort();
        for pair in spans.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "{device} ran two jobs at once: {pair:?}"
            );
        }
    }
    let whole = api.follow_log(last).unwrap();
    for follower in followers {
        // Following it through the queue, each also heard why it waited (lines that are
        // not in the file, so not in a read of the finished job's log).
        let (queued, lines): (Vec<Value>, Vec<Value>) =
            follower.join().unwrap().into_iter().partition(|l| {
                l["msg"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("queued: waiting for a free ssh-host: "))
            });
        assert!(
            !queued.is_empty(),
            "a follower never heard why the job waited"
        );
        assert_eq!(lines, whole, "a follower missed lines");
    }
}

/// Polls job `id` until its `waiting_for` contains `needle`, at most a minute (the
/// scheduling pass that finds the new reason runs after the event that changed it).
fn until_waiting_for(api: &system_tests::ApiClient, id: u64, needle: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let job = api.job(id).unwrap();
        if let Some(reason) = job["waiting_for"].as_str()
            && reason.contains(needle)
        {
            return reason.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job {id} never said it waits for \"{needle}\": {job}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Releases job `id` from the gate once it is there (the write waits until its reader
/// opens the FIFO; waiting for the job's shell first keeps the write from going to the
/// previous job's reader, still closing).
fn release(api: &system_tests::ApiClient, id: u64, gate: &std::path::Path) {
    api.follow_until(id, "LAVA_SIGNAL_STARTRUN").unwrap();
    std::fs::write(gate, b"go\n").unwrap();
}

/// A job no device of the lab could ever run is refused at submission naming what is
/// missing; a queued job says why it waits (API, CLI, its followed log, the web page),
/// and the reason changes when the job blocking it ends.
#[test]
fn a_queued_job_says_why_it_waits_and_the_reason_follows_the_lab() {
    let lab = SshLab::new();
    let (daemon, api) = lab.serve();
    let no_device = serde_json::json!({
        "job_name": "for a board the lab has none of",
        "device_type": "arndale",
        "timeout": 60,
        "actions": [{"command": "lava_command_run", "parameters": {"commands": ["true"]}}]
    });
    let (status, answer) = api
        .request("POST", "/api/v1/jobs", no_device.to_string().as_bytes())
        .unwrap();
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.contains("device_type \\\"arndale\\\"; the lab has 0"),
        "{answer}"
    );

    // Jobs that wait at a gate (a FIFO on the ssh-host, which shares this machine's
    // file system) until the test lets them through, one at a time.
    let gate = lab.dir.path().join("gate");
    nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let gated = |name: &str, priority: &str| {
        serde_json::json!({
            "job_name": name,
            "device_type": "ssh-host",
            "priority": priority,
            "timeout": 300,
            "actions": [{"command": "lava_command_run", "parameters": {
                "commands": [format!("read line < {}", gate.display())]}}]
        })
        .to_string()
    };
    let first = api.submit(&gated("first", "medium")).unwrap();
    let low = api.submit(&gated("low", "low")).unwrap();
    let high = api.submit(&gated("high", "high")).unwrap();
    let reason = until_waiting_for(&api, low, &format!("ssh-host-01 runs job {first}"));
    assert_eq!(
        reason,
        format!("waiting for a free ssh-host: ssh-host-01 runs job {first}")
    );
    until_waiting_for(&api, high, &format!("runs job {first}"));
    let status = daemon.cli(api.token(), &["status", &low.to_string()]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(&reason),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    let listed = api.get_json("/api/v1/jobs?state=submitted").unwrap();
    assert!(
        listed["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == low && j["waiting_for"] == reason.as_str()),
        "{listed}"
    );
    let mut browser = system_tests::Browser::start();
    browser.sign_in(&daemon.url, api.token());
    let page = browser.show(
        &format!("{}/#/job/{low}", daemon.url),
        "#waiting-for",
        &format!("runs job {first}"),
        "job-waiting.png",
    );
    assert!(page.contains("id=\"waiting-for\""), "{page}");
    assert!(page.contains(&format!("runs job {first}")), "{page}");
    // A follower of the queued job's log gets each new reason as it comes: the
    // current one first (read before the first job is let go, so the follower's
    // start cannot race the change), then each change.
    let mut follower = std::process::Command::new(system_tests::binary("dispatcher"))
        .args(["logs", &low.to_string(), "--follow"])
        .env("LAVA_DISPATCHER_URL", &daemon.url)
        .env("LAVA_DISPATCHER_TOKEN", api.token())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(follower.stdout.take().unwrap()));
    let mut followed = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let current = line.contains(&format!("runs job {first}"));
        followed.push(line);
        if current {
            break;
        }
    }

    // The first job ends: the high-priority one runs next, and the low one now waits
    // for it.
    release(&api, first, &gate);
    let reason = until_waiting_for(&api, low, &format!("ssh-host-01 runs job {high}"));
    let page = browser.show(
        &format!("{}/#/job/{low}", daemon.url),
        "#waiting-for",
        &format!("runs job {high}"),
        "job-waiting-next.png",
    );
    assert!(page.contains(&reason), "{page}");
    release(&api, high, &gate);
    release(&api, low, &gate);
    followed.extend(lines.map(Result::unwrap));
    follower.wait().unwrap();
    let text = followed.join("\n");
    for id in [first, high] {
        assert!(
            text.contains(&format!(
                "queued: waiting for a free ssh-host: ssh-host-01 runs job {id}"
            )),
            "{text}"
        );
    }
    for id in [first, high, low] {
        let state = api.job_state(id).unwrap();
        assert_eq!(
            state["health"],
            "complete",
            "job {id}: {state}\n{:#?}",
            api.follow_log(id).unwrap()
        );
    }
    assert!(api.job(low).unwrap().get("waiting_for").is_none());
}
