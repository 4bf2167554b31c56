//! `dispatcher serve` against clients that do not play fair, as a real process over
//! real sockets: slow readers of a huge console, followers of a huge growing log, a
//! thousand idle connections, half-sent headers, a job whose validation is costly,
//! ids past what the database holds, and the web page's token in the address bar.
//!
//! Each test reads the daemon's memory and descriptors from `/proc` and asserts
//! bounds on them, never on time: times are measured and printed (`--nocapture`).
//!
//! The lab is `kvm` devices put in maintenance, so submitted jobs stay queued and no
//! VM is started: what is probed is the daemon, and the files a job would have are
//! written into its directory by the test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use system_tests::{Daemon, create_token, jobs_dir, json_of, kvm_devices};

/// A lab of two kvm devices, a daemon configuration for it and a token.
struct Lab {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Lab {
    fn new(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let devices = kvm_devices(dir.path(), &["kvm-01", "kvm-02"]);
        let config = dir.path().join("dispatcher.toml");
        Self::write_config(&config, dir.path(), &devices, extra);
        Self { dir, config }
    }

    fn write_config(config: &Path, dir: &Path, devices: &Path, extra: &str) {
        // No job runs here (the devices are in maintenance): the key and the agent
        // are never used, only there (the daemon checks that they are).
        let (key, agent) = (dir.join("lab-key"), dir.join("agent"));
        std::fs::write(&key, "unused").unwrap();
        std::fs::write(&agent, "unused").unwrap();
        std::fs::write(
            config,
            format!(
                "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\ndevices = \"{}\"\n\
                 lab_key = \"{}\"\nnode_agent = \"{}\"\n{extra}",
                dir.join("state").display(),
                devices.display(),
                key.display(),
                agent.display(),
            ),
        )
        .unwrap();
    }

    /// A lab, a token, its daemon, and the daemon's address; the devices are in
    /// maintenance, so submitted jobs stay queued.
    fn serve_held() -> (Self, String, Daemon, String) {
        let lab = Self::new("");
        let token = lab.token();
        let daemon = Daemon::start(&lab.config);
        let addr = daemon.addr();
        hold_the_queue(&addr, &token);
        (lab, token, daemon, addr)
    }

    fn token(&self) -> String {
        create_token(&self.config, &["ci"])
    }

    fn job_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join("state/jobs").join(id.to_string())
    }
}

fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, String) {
    system_tests::http(addr, method, path, token, body).unwrap_or_else(|e| panic!("{e}"))
}

/// Both devices in maintenance: a submitted job stays queued.
fn hold_the_queue(addr: &str, token: &str) {
    for device in ["kvm-01", "kvm-02"] {
        let (status, body) = http(
            addr,
            "PUT",
            &format!("/api/v1/devices/{device}/health"),
            Some(token),
            br#"{"health": "maintenance"}"#,
        );
        assert_eq!(status, 200, "{body}");
    }
}

/// A two-node device_group job with `warnings` ignored `submit_results` actions.
fn job_with_warnings(warnings: usize) -> String {
    // Its images over HTTP from a public name: a daemon allows no `file://` by default,
    // and these jobs never run (the devices are in maintenance), so nothing is fetched.
    let text = std::fs::read_to_string(jobs_dir().join("valid/device-group-two-kvm.json"))
        .unwrap()
        .replace("file:///srv/lava/images/", "http://images.example.org/");
    let mut job: Value = serde_json::from_str(&text).unwrap();
    let actions = job["actions"].as_array_mut().unwrap();
    for _ in 0..warnings {
        actions.push(serde_json::json!({
            "command": "submit_results",
            "parameters": {"server": "http://localhost/RPC2/", "stream": "/anonymous/test/"}
        }));
    }
    serde_json::to_string_pretty(&job).unwrap()
}

fn submit(addr: &str, token: &str, job: &str) -> (u64, Value) {
    let (status, body) = http(addr, "POST", "/api/v1/jobs", Some(token), job.as_bytes());
    assert_eq!(status, 201, "{body}");
    let answer = json_of(&body);
    (answer["id"].as_u64().unwrap(), answer)
}

/// Sends a GET and returns the stream, positioned after the response's headers, with
/// the status line and headers.
fn get_streaming(addr: &str, path: &str, token: &str) -> (BufReader<TcpStream>, String) {
    get_within(addr, path, token, Duration::from_secs(120))
}

/// [`get_streaming`], each step (connecting, every read) failing after `wait`.
fn get_within(
    addr: &str,
    path: &str,
    token: &str,
    wait: Duration,
) -> (BufReader<TcpStream>, String) {
    let socket: std::net::SocketAddr = addr.parse().unwrap();
    let mut stream = TcpStream::connect_timeout(&socket, wait).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Token {token}\r\n\
         Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    (reader, head)
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

#[test]
fn ten_slow_readers_of_a_100_mb_console_cost_the_daemon_little_memory() {
    let (lab, token, daemon, addr) = Lab::serve_held();
    let (id, _) = submit(&addr, &token, &job_with_warnings(0));
    let size: usize = 100 * 1024 * 1024;
    std::fs::create_dir_all(lab.job_dir(id)).unwrap();
    let console = lab.job_dir(id).join("console-server.log");
    let line = b"[    1.234567] a console line that a slow client reads very slowly indeed\r\n";
    let chunk: Vec<u8> = line.iter().copied().cycle().take(1024 * 1024).collect();
    let mut file = std::fs::File::create(&console).unwrap();
    for _ in 0..size / chunk.len() {
        file.write_all(&chunk).unwrap();
    }
    drop(file);
    let before = daemon.status_kb("VmRSS");

    // Ten readers each take the headers and the first megabyte, then stop reading.
    let started = Instant::now();
    let mut readers: Vec<BufReader<TcpStream>> = (0..10)
        .map(|_| {
            let (mut reader, head) =
                get_streaming(&addr, &format!("/api/v1/jobs/{id}/console/server"), &token);
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert!(
                head.to_ascii_lowercase()
                    .contains(&format!("content-length: {size}")),
                "{head}"
            );
            let mut first = vec![0; 1024 * 1024];
            reader.read_exact(&mut first).unwrap();
            assert_eq!(&first[..line.len()], line);
            reader
        })
        .collect();
    let stalled = daemon.status_kb("VmRSS");
    println!(
        "10 stalled readers of a 100 MB console: daemon RSS {:.1} MB before, {:.1} MB with them ({:?} to start them)",
        mb(before),
        mb(stalled),
        started.elapsed()
    );
    assert!(
        stalled < 100 * 1024,
        "the daemon holds {:.1} MB for 10 readers",
        mb(stalled)
    );

    // Then they read on to the end: every byte arrives.
    let drained = Instant::now();
    let handles: Vec<_> = readers
        .drain(..)
        .map(|mut reader| {
            std::thread::spawn(move || {
                let mut total = 1024 * 1024;
                let mut buffer = vec![0; 256 * 1024];
                loop {
                    match reader.read(&mut buffer).unwrap() {
                        0 => return total,
                        n => total += n,
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().unwrap(), size);
    }
    let peak = daemon.status_kb("VmHWM");
    println!(
        "10 readers read 100 MB each in {:?}; daemon peak RSS {:.1} MB",
        drained.elapsed(),
        mb(peak)
    );
    assert!(peak < 100 * 1024, "peak RSS {:.1} MB", mb(peak));
}

/// One job log line as the dispatcher writes it.
fn log_line(node: &str, msg: &str) -> String {
    format!(
        "{{\"dt\":\"2026-12-01T10:00:00.000Z\",\"lvl\":\"target\",\"node\":\"{node}\",\"msg\":\"{msg}\"}}\n"
    )
}

#[test]
fn ten_followers_of_a_large_growing_log_cost_little_and_healthz_answers() {
    let (lab, token, daemon, addr) = Lab::serve_held();
    let (id, _) = submit(&addr, &token, &job_with_warnings(0));
    std::fs::create_dir_all(lab.job_dir(id)).unwrap();
    let path = lab.job_dir(id).join("job.log");
    let mut log = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let filler = "x".repeat(160);
    let mut lines = 0u64;
    while log.get_ref().metadata().unwrap().len() < 64 * 1024 * 1024 {
        for _ in 0..1000 {
            log.write_all(log_line("server", &filler).as_bytes())
                .unwrap();
            lines += 1;
        }
        log.flush().unwrap();
    }
    drop(log);
    let before = daemon.status_kb("VmRSS");

    // Ten followers read until they see the line written after they started, say so,
    // and read on until the job ends and the daemon ends the answer.
    let (saw_newest, seen) = std::sync::mpsc::channel();
    let followers: Vec<_> = (0..10)
        .map(|_| {
            let (mut reader, head) =
                get_streaming(&addr, &format!("/api/v1/jobs/{id}/log?follow=1"), &token);
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            let saw_newest = saw_newest.clone();
            std::thread::spawn(move || {
                let mut count = 0u64;
                let mut newest = false;
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap() == 0 {
                        return (count, newest);
                    }
                    // Lines of the file; the job is queued (its devices are held), so
                    // a follower also hears why it waits, which is not in the file.
                    if line.contains("\"msg\":\"") && !line.contains("\"msg\":\"queued: ") {
                        count += 1;
                    }
                    if line.contains("the newest line") {
                        newest = true;
                        let _ = saw_newest.send(());
                    }
                }
            })
        })
        .collect();

    // While they read: /healthz answers.
    let asked = Instant::now();
    let (status, _) = http(&addr, "GET", "/healthz", None, b"");
    assert_eq!(status, 200);
    let healthz = asked.elapsed();

    let mut writer = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    writer
        .write_all(log_line("client-1", "the newest line").as_bytes())
        .unwrap();
    drop(writer);
    // RSS sampled while they read, until all ten have the newest line (a bounded
    // wait: each sample waits at most 100 ms for a follower's word).
    let mut samples = Vec::new();
    let mut arrived = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while arrived < followers.len() {
        assert!(
            Instant::now() < deadline,
            "{arrived} of 10 followers got the newest line"
        );
        samples.push(daemon.status_kb("VmRSS"));
        if seen.recv_timeout(Duration::from_millis(100)).is_ok() {
            arrived += 1;
        }
    }
    // Followers of a job follow until it ends.
    let (status, body) = http(
        &addr,
        "POST",
        &format!("/api/v1/jobs/{id}/cancel"),
        Some(&token),
        b"",
    );
    assert_eq!(status, 200, "{body}");
    let results: Vec<(u64, bool)> = followers.into_iter().map(|f| f.join().unwrap()).collect();
    let max = samples.iter().copied().max().unwrap_or(0);
    let peak = daemon.status_kb("VmHWM");
    println!(
        "10 followers of a 64 MB log: daemon RSS {:.1} MB before, at most {:.1} MB sampled, \
         peak {:.1} MB; /healthz answered in {healthz:?}",
        mb(before),
        mb(max),
        mb(peak)
    );
    for (count, newest) in results {
        assert!(newest, "a follower missed the newest line");
        assert_eq!(count, lines + 1, "every line once");
    }
    assert!(peak < 150 * 1024, "peak RSS {:.1} MB", mb(peak));
}

/// Whether the daemon closed `stream` (EOF or reset) within `wait`.
fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut byte = [0u8; 1024];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn a_thousand_idle_connections_leave_the_api_answering() {
    // The soft limit of this test process, for its own thousand sockets.
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < 2000 {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    let lab = Lab::new("");
    let token = lab.token();
    // 256 descriptors: the daemon caps itself at 128 connections.
    let limit = 256;
    let daemon = Daemon::start_with_fd_limit(&lab.config, limit);
    let addr = daemon.addr();
    let fds_before = daemon.open_fds();

    let opened = Instant::now();
    let mut idle: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let opening = opened.elapsed();

    // Asked with a bounded wait: a daemon out of descriptors never answers.
    let asked = Instant::now();
    let (mut reader, head) = get_within(&addr, "/healthz", &token, Duration::from_secs(60));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (mut devices, head) = get_within(&addr, "/api/v1/devices", &token, Duration::from_secs(60));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = String::new();
    reader.read_to_string(&mut body).unwrap();
    devices.read_to_string(&mut body).unwrap();
    assert!(body.contains("kvm-02"), "{body}");
    let answered = asked.elapsed();
    let fds = daemon.open_fds();
    assert!(
        fds <= usize::try_from(limit).unwrap(),
        "{fds} descriptors open"
    );
    // The oldest idle connections were closed to make room.
    let closed = idle
        .iter_mut()
        .take(100)
        .map(|s| closed_within(s, Duration::from_secs(10)))
        .filter(|closed| *closed)
        .count();
    println!(
        "1000 idle connections (opened in {opening:?}) against a daemon limited to {limit} \
         descriptors: {fds_before} fds before, {fds} after; the API answered two requests in \
         {answered:?}; {closed} of the first 100 connections closed by the daemon"
    );
    assert_eq!(closed, 100, "the oldest idle connections are closed");
}

#[test]
fn half_sent_headers_and_silent_connections_are_closed() {
    let lab = Lab::new(
        "http_header_timeout_secs = 2\nhttp_idle_timeout_secs = 3\nhttp_body_timeout_secs = 2\n",
    );
    let token = lab.token();
    let daemon = Daemon::start(&lab.config);
    let addr = daemon.addr();
    let started = Instant::now();
    // Slowloris: 300 connections that start a request and never finish its headers.
    let mut slow: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut stream = TcpStream::connect(&addr).unwrap();
            write!(stream, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ").unwrap();
            stream
        })
        .collect();
    let mut silent: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    // A kept-alive connection after its answer is idle like the silent ones.
    let mut kept = TcpStream::connect(&addr).unwrap();
    write!(kept, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut answer = [0u8; 512];
    let n = kept.read(&mut answer).unwrap();
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"));

    let (status, _) = http(&addr, "GET", "/healthz", None, b"");
    assert_eq!(status, 200, "answered while they hang");
    // A job whose body stops a tenth of the way: 408, and the connection is not kept.
    let mut slow_body = TcpStream::connect(&addr).unwrap();
    write!(
        slow_body,
        "POST /api/v1/jobs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Token {token}\r\n\
         Content-Length: 100\r\n\r\n{{\"job_name\""
    )
    .unwrap();
    slow_body
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut answer = [0u8; 512];
    let n = slow_body.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    for stream in slow.iter_mut().chain(silent.iter_mut()) {
        assert!(
            closed_within(stream, Duration::from_secs(60)),
            "a connection stayed open"
        );
    }
    assert!(closed_within(&mut kept, Duration::from_secs(60)));
    assert!(closed_within(&mut slow_body, Duration::from_secs(60)));
    println!(
        "300 half-sent headers (2 s limit), 10 silent and 1 kept-alive connection (3 s idle \
         limit), a stalled body (2 s limit, 408): all closed by the daemon {:?} after they opened",
        started.elapsed()
    );
}

#[test]
fn a_stored_job_is_read_back_without_validating_it_again() {
    let (lab, token, daemon, addr) = Lab::serve_held();
    let job = job_with_warnings(4000);

    // Submission validates on the blocking pool: /healthz answers meanwhile.
    let submitted = Instant::now();
    let submitter = {
        let (addr, token) = (addr.clone(), token.clone());
        std::thread::spawn(move || submit(&addr, &token, &job))
    };
    let (status, _) = http(&addr, "GET", "/healthz", None, b"");
    assert_eq!(status, 200);
    let healthz_during_submit = submitted.elapsed();
    let (id, answer) = submitter.join().unwrap();
    let submit_took = submitted.elapsed();
    // At most 100 warnings are listed; the rest are counted.
    assert_eq!(answer["warnings"].as_array().unwrap().len(), 100);
    assert_eq!(answer["omitted_warnings"], 3900);
    let members = answer["nodes"].clone();
    assert_eq!(members.as_array().unwrap().len(), 2, "{members}");

    // The lab changes so that the job no longer validates (two nodes, one allowed):
    // a GET that validated again would have no members to show.
    daemon.stop();
    let mut config = std::fs::read_to_string(&lab.config).unwrap();
    config.push_str("max_group_size = 1\n");
    std::fs::write(&lab.config, config).unwrap();
    let daemon = Daemon::start(&lab.config);
    let addr = daemon.addr();

    let read = Instant::now();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (addr, token) = (addr.clone(), token.clone());
            std::thread::spawn(move || {
                http(
                    &addr,
                    "GET",
                    &format!("/api/v1/jobs/{id}"),
                    Some(&token),
                    b"",
                )
            })
        })
        .collect();
    let (status, _) = http(&addr, "GET", "/healthz", None, b"");
    assert_eq!(status, 200);
    let healthz_during_reads = read.elapsed();
    let answers: Vec<(u16, String)> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    println!(
        "a job with 4000 warnings: submitted in {submit_took:?} (/healthz answered after \
         {healthz_during_submit:?}); two GETs in {:?} (/healthz after {healthz_during_reads:?})",
        read.elapsed()
    );
    for (status, body) in answers {
        assert_eq!(status, 200, "{body}");
        assert_eq!(json_of(&body)["members"], members, "{body}");
    }
}

#[test]
fn ids_past_the_database_are_missing_jobs_and_words_are_no_ids() {
    let (_lab, token, _daemon, addr) = Lab::serve_held();
    for id in [
        "18446744073709551615",
        "9223372036854775808",
        "99999999999999999999999",
    ] {
        for (method, path) in [
            ("GET", format!("/api/v1/jobs/{id}")),
            ("GET", format!("/api/v1/jobs/{id}/log")),
            ("GET", format!("/api/v1/jobs/{id}/log?follow=1")),
            ("GET", format!("/api/v1/jobs/{id}/results")),
            ("GET", format!("/api/v1/jobs/{id}/console/server")),
            ("POST", format!("/api/v1/jobs/{id}/cancel")),
        ] {
            let (status, body) = http(&addr, method, &path, Some(&token), b"");
            assert_eq!(status, 404, "{method} {path}: {body}");
            assert_eq!(
                json_of(&body)["error"],
                format!("there is no job {id}"),
                "{path}"
            );
        }
    }
    let (status, body) = http(&addr, "GET", "/api/v1/jobs/abc/log", Some(&token), b"");
    assert_eq!(status, 400, "{body}");
    assert!(
        json_of(&body)["error"]
            .as_str()
            .unwrap()
            .contains("\"abc\""),
        "{body}"
    );
}

/// The value of header `name` in a raw HTTP answer's head.
fn header_of(addr: &str, path: &str, name: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let head = answer
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string();
    head.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        key.eq_ignore_ascii_case(name)
            .then(|| value.trim().to_string())
    })
}

#[test]
fn every_answer_says_nosniff_and_the_page_runs_under_its_policy_with_no_token_in_an_address() {
    let (_lab, token, daemon, addr) = Lab::serve_held();
    for path in [
        "/",
        "/healthz",
        "/metrics",
        "/api/v1/jobs",
        "/api/v1/jobs/1",
        "/nowhere",
    ] {
        assert_eq!(
            header_of(&addr, path, "x-content-type-options").as_deref(),
            Some("nosniff"),
            "{path}"
        );
        assert!(
            header_of(&addr, path, "content-security-policy").is_some(),
            "{path}"
        );
    }
    let policy = header_of(&addr, "/", "content-security-policy").unwrap();
    assert!(policy.starts_with("default-src 'self'"), "{policy}");
    assert!(policy.contains("script-src 'sha256-"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");

    // A job, so the page has something to show once signed in.
    let (id, _) = submit(&addr, &token, &job_with_warnings(0));
    // Under its policy the page still runs: its script signs in and reads the API.
    let mut browser = system_tests::Browser::start();
    browser.sign_in(&daemon.url, &token);
    let page = browser.show(
        &format!("{}/#/", daemon.url),
        "#jobs",
        &id.to_string(),
        "csp-jobs.png",
    );
    assert!(page.contains(&format!("href=\"#/job/{id}\"")), "{page}");
    // The token is in no address the page went to, and the session's cookie is out
    // of the page's scripts' reach.
    let seen = browser.eval("location.href + ' ' + document.referrer + ' ' + document.cookie");
    assert!(
        !seen.as_str().unwrap_or_default().contains(&token),
        "{seen}"
    );
    assert_eq!(browser.eval("document.cookie"), "");
    let page = browser.show(
        &format!("{}/#/devices", daemon.url),
        "#devices",
        "kvm-01",
        "csp-devices.png",
    );
    assert!(page.contains("kvm-01"), "{page}");
}

/// Followers of logs and readers of consoles hold their requests in flight, which no
/// eviction touches: they get at most half the connection cap, and past it a 503, so
/// the rest of the API still has connections to answer on.
#[test]
fn readers_of_logs_cannot_take_every_connection() {
    let lab = Lab::new("max_connections = 8\n");
    let token = lab.token();
    let daemon = Daemon::start(&lab.config);
    let addr = daemon.addr();
    hold_the_queue(&addr, &token);
    let (id, _) = submit(&addr, &token, &job_with_warnings(0));
    // The job stays queued: its log is followed until the test lets go.
    let path = format!("/api/v1/jobs/{id}/log?follow=1");
    let held: Vec<_> = (0..4)
        .map(|_| get_streaming(&addr, &path, &token))
        .collect();
    for (_, head) in &held {
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    let (_, head) = get_streaming(&addr, &path, &token);
    assert!(head.starts_with("HTTP/1.1 503"), "a fifth follower: {head}");
    let (status, body) = http(&addr, "GET", "/api/v1/devices", Some(&token), b"");
    assert_eq!(status, 200, "{body}");
    drop(held);
}

/// A write without a valid token is refused from its headers: the daemon does not
/// read (and buffer) up to `max_job_bytes` of body for a client that may not write.
#[test]
fn an_anonymous_write_is_refused_before_its_body_is_read() {
    let lab = Lab::new("");
    let daemon = Daemon::start(&lab.config);
    let addr = daemon.addr();
    for path in ["/api/v1/jobs", "/api/v1/devices/kvm-01/health"] {
        let method = if path.ends_with("health") {
            "PUT"
        } else {
            "POST"
        };
        let mut stream = TcpStream::connect(&addr).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1000000\r\n\r\n"
        )
        .unwrap();
        // Not one byte of the body is sent.
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut answer = [0u8; 512];
        let n = stream.read(&mut answer).unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 401"), "{path}: {answer}");
    }
}
