//! A job's end told to the world: callbacks to a real HTTP server (Python's), signed,
//! retried after a server error and delivered once; `notify` mail through a real SMTP
//! server (Python's); resubmission by hand and, after an infrastructure failure, by
//! the daemon itself (`retry_infrastructure`).

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};

use serde_json::{Value, json};
use system_tests::{SshLab, free_port, repo_root};

use crate::CLIENT_TESTING;

/// A child process killed when dropped, and its stdout read line by line.
struct Server {
    child: Child,
    lines: BufReader<ChildStdout>,
}

impl Server {
    fn start(command: &mut Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{command:?}: {e}"));
        let lines = BufReader::new(child.stdout.take().unwrap());
        Self { child, lines }
    }

    /// The next line it prints (blocks until it does).
    fn line(&mut self) -> String {
        let mut line = String::new();
        let read = self.lines.read_line(&mut line).unwrap();
        assert!(read > 0, "the server ended");
        line
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A quick job on the lab's ssh-host with `extra` top-level keys.
fn quick_job(name: &str, extra: Value) -> String {
    let mut job = json!({
        "job_name": name,
        "device_type": "ssh-host",
        "timeout": 120,
        "actions": [{"command": "lava_command_run", "parameters": {"commands": ["true"]}}]
    });
    if let (Some(job), Some(extra)) = (job.as_object_mut(), extra.as_object()) {
        job.extend(extra.clone());
    }
    job.to_string()
}

#[test]
fn callbacks_are_signed_retried_after_a_server_error_and_delivered_once() {
    let lab = SshLab::configured(1, "fetch_allow_networks = [\"127.0.0.0/8\"]\n");
    let (daemon, api) = lab.serve();
    let script = repo_root().join("tests/http/callback_receiver.py");
    let mut receiver = Server::start(Command::new("python3").arg(&script).args(["s3cret", "1"]));
    let port: Value = serde_json::from_str(&receiver.line()).unwrap();
    let url = format!("http://127.0.0.1:{}/hooks/lava", port["port"]);
    let callback = |dataset: &str| {
        json!({"callbacks": [{"url": url, "token": "s3cret", "token_header": "X-Ci-Token",
                              "dataset": dataset}]})
    };

    let first = api
        .submit(&quick_job("with results", callback("results")))
        .unwrap();
    api.follow_log(first).unwrap();
    // The first attempt got a 500; the retry got through. Both signed, both the same.
    let failed: Value = serde_json::from_str(&receiver.line()).unwrap();
    let delivered: Value = serde_json::from_str(&receiver.line()).unwrap();
    assert_eq!(failed["status"], 500, "{failed:#}");
    assert_eq!(delivered["status"], 200, "{delivered:#}");
    for request in [&failed, &delivered] {
        assert_eq!(request["method"], "POST");
        assert_eq!(request["path"], "/hooks/lava");
        assert_eq!(request["token"], "s3cret");
        assert_eq!(request["signature_valid"], true, "{request:#}");
        assert_eq!(request["body"]["id"], first);
        assert_eq!(request["body"]["health"], "complete");
    }
    assert_eq!(failed["body"], delivered["body"]);
    assert_eq!(
        delivered["body"]["results"]["nodes"][0]["status"], "done",
        "{delivered:#}"
    );

    // Resubmitted by hand (CLI): the new job names the old one, and its own end is
    // told once, with its log.
    let again = daemon.cli(
        api.token(),
        &["resubmit", &first.to_string(), "--format", "json"],
    );
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let again: Value = serde_json::from_slice(&again.stdout).unwrap();
    let second = again["id"].as_u64().unwrap();
    api.follow_log(second).unwrap();
    assert_eq!(api.job(second).unwrap()["resubmitted_from"], first);
    assert_eq!(api.job(first).unwrap()["resubmitted_as"], second);
    let told: Value = serde_json::from_str(&receiver.line()).unwrap();
    assert_eq!(told["status"], 200);
    assert_eq!(
        told["body"]["id"], second,
        "nothing more of the first job: {told:#}"
    );
    assert_eq!(told["body"]["resubmitted_from"], first);
    assert_eq!(told["signature_valid"], true);

    // A job whose log is asked for.
    let third = api
        .submit(&quick_job("with its log", callback("log")))
        .unwrap();
    api.follow_log(third).unwrap();
    let told: Value = serde_json::from_str(&receiver.line()).unwrap();
    assert_eq!(told["body"]["id"], third);
    assert!(
        told["body"]["log"]
            .as_str()
            .is_some_and(|log| log.contains("job finished: Complete")),
        "{told:#}"
    );
    // Once each: a last job's callback is the next request the server gets, so no
    // job's end was told twice.
    let last = api.submit(&quick_job("last", callback("state"))).unwrap();
    api.follow_log(last).unwrap();
    let told: Value = serde_json::from_str(&receiver.line()).unwrap();
    assert_eq!(told["body"]["id"], last, "{told:#}");
}

#[test]
fn notify_addresses_are_mailed_through_the_labs_relay() {
    let port = free_port();
    let mut relay = Server::start(
        Command::new("python3")
            .args([
                "-u",
                "-W",
                "ignore",
                "-m",
                "smtpd",
                "-n",
                "-c",
                "DebuggingServer",
            ])
            .arg(format!("127.0.0.1:{port}")),
    );
    let lab = SshLab::configured(
        1,
        &format!("smtp_relay = \"127.0.0.1:{port}\"\nmail_from = \"lab@example.org\"\n"),
    );
    let (_daemon, api) = lab.serve();
    let job = api
        .submit(&quick_job(
            "mailed",
            json!({"notify": ["alice@example.org"], "notify_on_incomplete": ["bob@example.org"]}),
        ))
        .unwrap();
    api.follow_log(job).unwrap();
    // The relay prints each message between its markers.
    let mut next_message = || {
        let mut message = String::new();
        loop {
            let line = relay.line();
            if line.contains("END MESSAGE") {
                return message;
            }
            message.push_str(&line);
        }
    };
    let message = next_message();
    assert!(message.contains("To: alice@example.org"), "{message}");
    assert!(
        !message.contains("bob@example.org"),
        "complete: only notify: {message}"
    );
    assert!(message.contains("From: lab@example.org"), "{message}");
    assert!(
        message.contains(&format!("Subject: job {job} complete: mailed")),
        "{message}"
    );

    // A job that ends incomplete mails both lists, a message each (in the addresses'
    // order); its messages are the next the relay gets (so the complete job's was its
    // only one: bob got none).
    let mut broken = system_tests::shell_job("broken", "ssh-host", &["lava-test-raise broken"]);
    broken["notify"] = json!(["alice@example.org"]);
    broken["notify_on_incomplete"] = json!(["bob@example.org"]);
    let incomplete = api.submit(&broken.to_string()).unwrap();
    api.follow_log(incomplete).unwrap();
    assert_eq!(api.job_state(incomplete).unwrap()["health"], "incomplete");
    for to in ["alice@example.org", "bob@example.org"] {
        let message = next_message();
        assert!(
            message.contains(&format!("Subject: job {incomplete} incomplete: broken")),
            "{message}"
        );
        assert!(message.contains(&format!("To: {to}")), "{message}");
        assert!(message.contains("raised: broken"), "{message}");
    }
}

#[test]
fn retry_infrastructure_reruns_a_job_whose_host_dropped_its_ssh_connection() {
    let lab = SshLab::configured(1, "retry_infrastructure = 1\n");
    let (_daemon, api) = lab.serve();
    let job = api.submit(&lab.seed_job()).unwrap();
    api.follow_until(job, CLIENT_TESTING).unwrap();
    assert!(lab.host.drop_connections() > 0, "a session to cut");
    api.follow_log(job).unwrap();
    assert_eq!(api.job_state(job).unwrap()["error"][0], "infrastructure");
    // The retry is submitted right after the failed job's end is recorded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let retry = loop {
        if let Some(retry) = api.job(job).unwrap()["resubmitted_as"].as_u64() {
            break retry;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job {job} was not retried"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(api.job(retry).unwrap()["resubmitted_from"], job);
    // The retry's connection is cut too: with one retry allowed, it is not retried.
    api.follow_until(retry, CLIENT_TESTING).unwrap();
    assert!(lab.host.drop_connections() > 0, "a session to cut");
    api.follow_log(retry).unwrap();
    let retried = api.job(retry).unwrap();
    assert_eq!(
        retried["state"]["error"][0], "infrastructure",
        "{retried:#}"
    );
    // A job queued after it runs to its end on the same device: by then a retry of
    // the retry, were there one, would have been queued long before.
    let after = api
        .submit(&quick_job("after the retries", json!({})))
        .unwrap();
    api.follow_log(after).unwrap();
    assert_eq!(api.job_state(after).unwrap()["health"], "complete");
    let jobs = api.get_json("/api/v1/jobs").unwrap();
    let ids: Vec<u64> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["id"].as_u64())
        .collect();
    assert_eq!(ids, [after, retry, job], "{jobs:#}");
    assert!(api.job(retry).unwrap().get("resubmitted_as").is_none());
}
