//! LAVA's legacy coordinator protocol, replayed frame by frame against a real server on
//! loopback: every request type in the shapes LAVA's clients send, and malformed input.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A coordinator that answers `wait` at once, as LAVA's own does, so each replayed frame
/// gets LAVA's exact reply.
async fn server() -> coordinator::Running {
    server_holding(Duration::ZERO).await
}

async fn server_holding(hold: Duration) -> coordinator::Running {
    let mut config =
        coordinator::Config::new("127.0.0.1:0".parse().unwrap(), "admin-token-for-tests");
    config.legacy_listen = Some("127.0.0.1:0".parse().unwrap());
    config.legacy.hold = hold;
    coordinator::start(config).await.unwrap()
}

/// Sends raw bytes on a fresh connection; returns the raw reply.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    reply
}

/// Parses a framed reply; `None` when the server closed without replying.
fn parse(reply: &[u8]) -> Option<Value> {
    if reply.is_empty() {
        return None;
    }
    let len = usize::from_str_radix(std::str::from_utf8(&reply[..8]).unwrap(), 16).unwrap();
    assert_eq!(reply.len(), 8 + len, "header length must match the body");
    Some(serde_json::from_slice(&reply[8..]).unwrap())
}

fn frame(body: &Value) -> Vec<u8> {
    let text = body.to_string();
    let mut bytes = format!("{:08X}", text.len()).into_bytes();
    bytes.extend_from_slice(text.as_bytes());
    bytes
}

/// A request as LAVA's MultinodeProtocol builds it.
fn lava(request: &str, client: &str, role: &str, extra: Value) -> Value {
    let mut body = json!({
        "port": 3079, "blocksize": 4096, "poll_delay": 3, "host": "localhost",
        "hostname": "worker-1", "client_name": client, "group_name": "g-1234", "role": role,
        "request": request,
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

async fn ask(addr: SocketAddr, body: Value) -> Option<Value> {
    parse(&raw(addr, &frame(&body)).await)
}

#[tokio::test]
async fn a_held_request_is_answered_when_its_condition_holds() {
    // An hour of hold: only the other node's request can end these, never a `wait`.
    let running = server_holding(Duration::from_secs(3600)).await;
    let addr = running.legacy_addr.unwrap();
    let sync = |client: &str| {
        lava(
            "lava_sync",
            client,
            "r",
            json!({"group_size": 2, "messageID": "round"}),
        )
    };
    // A one-shot client (no poll_delay, like LAVA's status.py) is answered at once.
    let mut one_shot = lava(
        "lava_wait",
        "a.0",
        "r",
        json!({"group_size": 2, "messageID": "x"}),
    );
    one_shot.as_object_mut().unwrap().remove("poll_delay");
    assert_eq!(ask(addr, one_shot).await, Some(json!({"response": "wait"})));
    let first = tokio::spawn(ask(addr, sync("a.0")));
    let passed = Some(json!({"response": "ack", "message": "round"}));
    assert_eq!(ask(addr, sync("b.1")).await, passed);
    assert_eq!(first.await.unwrap(), passed);

    let waiting = tokio::spawn(ask(
        addr,
        lava("lava_wait_all", "b.1", "r", json!({"messageID": "m"})),
    ));
    let send = lava(
        "lava_send",
        "a.0",
        "r",
        json!({"messageID": "m", "message": {"k": "v"}}),
    );
    assert_eq!(ask(addr, send).await, Some(json!({"response": "ack"})));
    assert_eq!(
        waiting.await.unwrap(),
        Some(json!({"response": "ack", "message": {"a.0": {"k": "v"}}}))
    );
}

#[tokio::test]
async fn every_request_type_in_lavas_shapes() {
    let running = server().await;
    let addr = running.legacy_addr.unwrap();
    let size = json!({"group_size": 2});

    // group_data: the start barrier.
    assert_eq!(
        ask(addr, lava("group_data", "1.0", "server", size.clone())).await,
        Some(json!({"response": "wait"}))
    );
    let roles = json!({"response": "group_data", "roles": {"1.0": "server", "1.1": "client"}});
    assert_eq!(
        ask(addr, lava("group_data", "1.1", "client", size.clone())).await,
        Some(roles.clone())
    );
    assert_eq!(
        ask(addr, lava("group_data", "1.0", "server", size.clone())).await,
        Some(roles)
    );

    // lava_send / lava_wait / lava_wait_all with and without a role.
    let send = lava(
        "lava_send",
        "1.0",
        "server",
        json!({"messageID": "ready", "message": {"ip": "10.0.0.1"}}),
    );
    assert_eq!(ask(addr, send).await, Some(json!({"response": "ack"})));
    let data = json!({"1.0": {"ip": "10.0.0.1"}});
    let wait = lava(
        "lava_wait",
        "1.1",
        "client",
        json!({"messageID": "ready", "nodeID": "1.1"}),
    );
    assert_eq!(
        ask(addr, wait).await,
        Some(json!({"response": "ack", "message": data}))
    );
    let wait_role = lava(
        "lava_wait_all",
        "1.1",
        "client",
        json!({"messageID": "ready", "waitrole": "server"}),
    );
    assert_eq!(
        ask(addr, wait_role).await,
        Some(json!({"response": "ack", "message": data}))
    );
    let wait_all = lava(
        "lava_wait_all",
        "1.0",
        "server",
        json!({"messageID": "results"}),
    );
    assert_eq!(
        ask(addr, wait_all.clone()).await,
        Some(json!({"response": "wait"}))
    );
    let results = lava(
        "lava_send",
        "1.1",
        "client",
        json!({"messageID": "results", "message": {}}),
    );
    assert_eq!(ask(addr, results).await, Some(json!({"response": "ack"})));
    assert_eq!(
        ask(addr, wait_all).await,
        Some(json!({"response": "ack", "message": {"1.1": {}}}))
    );

    // lava_sync: the barrier; the id comes back as the message.
    let sync =
        |client: &str, role: &str| lava("lava_sync", client, role, json!({"messageID": "done"}));
    assert_eq!(
        ask(addr, sync("1.0", "server")).await,
        Some(json!({"response": "wait"}))
    );
    let passed = Some(json!({"response": "ack", "message": "done"}));
    assert_eq!(ask(addr, sync("1.1", "client")).await, passed);
    assert_eq!(ask(addr, sync("1.0", "server")).await, passed);

    // aggregate (LAVA v1): the .0 node gets every bundle once all are in.
    let bundle = |client: &str, sub_id: &str| {
        lava(
            "aggregate",
            client,
            "x",
            json!({"bundle": format!("sha-{client}"), "sub_id": sub_id}),
        )
    };
    assert_eq!(
        ask(addr, bundle("1.0", "1234.0")).await,
        Some(json!({"response": "wait"}))
    );
    assert_eq!(
        ask(addr, bundle("1.1", "1234.1")).await,
        Some(json!({"response": "ack"}))
    );
    assert_eq!(
        ask(addr, bundle("1.0", "1234.0")).await,
        Some(
            json!({"response": "ack", "message": {"bundle": {"1.0": "sha-1.0", "1.1": "sha-1.1"}}})
        )
    );

    // complete: closed without a reply.
    assert_eq!(
        ask(addr, lava("complete", "1.0", "server", json!({}))).await,
        None
    );

    // clear_group: the group goes once every node has cleared.
    assert_eq!(
        ask(addr, lava("clear_group", "1.0", "server", size.clone())).await,
        Some(json!({"response": "ack"}))
    );
    assert_eq!(
        ask(addr, lava("clear_group", "1.1", "client", size)).await,
        Some(json!({"response": "ack"}))
    );
    let gone = lava("lava_wait", "1.1", "client", json!({"messageID": "ready"}));
    assert_eq!(
        ask(addr, gone).await,
        Some(json!({"response": "nack"})),
        "group is gone, no size to recreate it"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn wait_all_for_a_role_waits_for_every_member() {
    let running = server().await;
    let addr = running.legacy_addr.unwrap();
    let size = json!({"group_size": 3});
    for (client, role) in [("a", "server"), ("b", "client"), ("c", "client")] {
        ask(addr, lava("group_data", client, role, size.clone())).await;
    }
    let wait = lava(
        "lava_wait_all",
        "a",
        "server",
        json!({"messageID": "hi", "waitrole": "client"}),
    );
    ask(
        addr,
        lava(
            "lava_send",
            "b",
            "client",
            json!({"messageID": "hi", "message": {"n": "1"}}),
        ),
    )
    .await;
    // LAVA answers ack once the first client has sent; every client must have.
    assert_eq!(
        ask(addr, wait.clone()).await,
        Some(json!({"response": "wait"}))
    );
    ask(
        addr,
        lava(
            "lava_send",
            "c",
            "client",
            json!({"messageID": "hi", "message": {"n": "2"}}),
        ),
    )
    .await;
    assert_eq!(
        ask(addr, wait).await,
        Some(json!({"response": "ack", "message": {"b": {"n": "1"}, "c": {"n": "2"}}}))
    );
    running.shutdown().await;
}

#[tokio::test]
async fn malformed_input_gets_nack_and_never_crashes_the_server() {
    let running = server().await;
    let addr = running.legacy_addr.unwrap();
    let nack = Some(json!({"response": "nack"}));
    assert_eq!(
        parse(&raw(addr, b"0000zz1A{}").await),
        nack,
        "header not hex"
    );
    assert_eq!(
        parse(&raw(addr, b"FFFFFFFF").await),
        nack,
        "over the size limit, refused unread"
    );
    assert_eq!(
        parse(&raw(addr, b"00000005hello").await),
        nack,
        "body not JSON"
    );
    assert_eq!(
        ask(addr, json!({"group_name": "g", "client_name": "c"})).await,
        nack,
        "no request"
    );
    assert_eq!(
        ask(addr, lava("lava_dance", "c", "r", json!({"group_size": 2}))).await,
        nack,
        "unknown request"
    );
    assert_eq!(
        ask(
            addr,
            json!({"request": "group_data", "group_name": "g", "group_size": 2})
        )
        .await,
        nack,
        "no client"
    );
    let sizeless = lava(
        "group_data",
        "c",
        "r",
        json!({"group_name": "never-created"}),
    );
    assert_eq!(ask(addr, sizeless).await, nack, "new group without a size");
    let no_id = lava(
        "lava_send",
        "c",
        "r",
        json!({"group_size": 2, "message": {}}),
    );
    assert_eq!(ask(addr, no_id).await, nack, "send without a message id");
    // A stranger cannot join a full group.
    ask(addr, lava("group_data", "a", "r", json!({"group_size": 1}))).await;
    let mut stranger = lava("group_data", "b", "r", json!({"group_size": 1}));
    stranger["group_name"] = json!("g-1234");
    assert_eq!(ask(addr, stranger).await, nack, "group already full");

    // Garbage of every length, then the server still answers properly.
    let mut seed: u32 = 12345;
    for round in 0..300 {
        let len = (round * 7) % 64;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (seed >> 16) as u8
            })
            .collect();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream.write_all(&bytes).await;
        let _ = stream.shutdown().await;
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink).await;
    }
    let ok = lava(
        "group_data",
        "solo",
        "r",
        json!({"group_size": 1, "group_name": "after-garbage"}),
    );
    assert_eq!(
        ask(addr, ok).await,
        Some(json!({"response": "group_data", "roles": {"solo": "r"}}))
    );
    running.shutdown().await;
}

#[tokio::test]
async fn frames_are_read_by_bytes_not_blocks() {
    let running = server().await;
    let addr = running.legacy_addr.unwrap();
    // A request dribbled one byte at a time.
    let bytes = frame(&lava(
        "group_data",
        "slow",
        "r",
        json!({"group_size": 1, "group_name": "dribble"}),
    ));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    for byte in &bytes {
        stream.write_all(&[*byte]).await.unwrap();
        stream.flush().await.unwrap();
    }
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    assert_eq!(
        parse(&reply),
        Some(json!({"response": "group_data", "roles": {"slow": "r"}}))
    );
    // A body far larger than LAVA's 4096-byte block, with non-ASCII text.
    let big = "é".repeat(6000);
    let send = lava(
        "lava_send",
        "slow",
        "r",
        json!({"group_name": "dribble", "messageID": "big", "message": {"k": big}}),
    );
    assert_eq!(ask(addr, send).await, Some(json!({"response": "ack"})));
    let wait = lava(
        "lava_wait",
        "slow",
        "r",
        json!({"group_name": "dribble", "messageID": "big"}),
    );
    let reply = raw(addr, &frame(&wait)).await;
    assert!(
        reply.is_ascii(),
        "replies are ASCII: LAVA counts characters"
    );
    assert_eq!(parse(&reply).unwrap()["message"]["slow"]["k"], json!(big));
    running.shutdown().await;
}

/// The `coordinator` binary, run with a state directory and `args`, killed on drop.
struct Daemon {
    child: std::process::Child,
    legacy: SocketAddr,
    state: tempfile::TempDir,
}

impl Daemon {
    fn start(args: &[&str]) -> Self {
        use std::io::BufRead;
        let state = tempfile::tempdir().unwrap();
        let token = state.path().join("admin.token");
        std::fs::write(&token, "admin-token-for-tests\n").unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_coordinator"))
            .args(["--listen", "127.0.0.1:0", "--legacy-listen", "127.0.0.1:0"])
            // `wait` at once, as LAVA's own coordinator answers.
            .args(["--legacy-hold", "0"])
            .arg("--admin-token-file")
            .arg(&token)
            .arg("--state-dir")
            .arg(state.path())
            .args(args)
            .env("COORDINATOR_LOG", "error")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "listening grpc=ADDR legacy=ADDR"
        let legacy = line
            .trim()
            .rsplit("legacy=")
            .next()
            .unwrap()
            .parse()
            .unwrap();
        Self {
            child,
            legacy,
            state,
        }
    }

    /// A field of /proc/PID/status, in kB.
    fn status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("no {field} in {status}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    /// Legacy group files in the state directory.
    fn legacy_files(&self) -> usize {
        std::fs::read_dir(self.state.path().join("groups"))
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with("legacy-")
            })
            .count()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first request of a node of a new two-node group `group`.
fn joining(group: &str, client: &str) -> Value {
    lava(
        "group_data",
        client,
        "r",
        json!({"group_size": 2, "group_name": group}),
    )
}

/// Issue #13: every new legacy group cost a 4,096-slot event channel and an open
/// journal file, without limit: 12,000 group names took the coordinator from 83 MB to
/// 6.6 GB and 12,024 descriptors. Now the groups past the cap are refused, and those
/// kept hold neither.
#[tokio::test]
async fn a_flood_of_legacy_groups_is_capped_and_costs_no_descriptors() {
    let daemon = Daemon::start(&["--legacy-max-groups", "1000"]);
    let addr = daemon.legacy;
    let fds_before = daemon.open_fds();
    let started = std::time::Instant::now();
    let mut refusals = Vec::new();
    for n in 0..12_000 {
        let reply = ask(addr, joining(&format!("flood-{n}"), "a"))
            .await
            .unwrap();
        if reply["response"] == "nack" {
            refusals.push(reply);
        } else {
            assert_eq!(reply, json!({"response": "wait"}), "group {n}");
        }
    }
    let rss_mb = daemon.status_kb("VmRSS:") / 1024;
    let fds = daemon.open_fds();
    eprintln!(
        "12,000 group names: {rss_mb} MB resident, {fds} descriptors ({fds_before} before), {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(refusals.len(), 11_000);
    let why = refusals[0]["message"].as_str().unwrap();
    assert!(
        why.contains("1000") && why.contains("--legacy-max-groups"),
        "{why}"
    );
    // Bounds an order of magnitude under what the flood cost before.
    assert!(rss_mb < 200, "{rss_mb} MB resident");
    assert!(fds < 200, "{fds} descriptors open");
    assert_eq!(daemon.legacy_files(), 1000);
    // The groups made before the cap still work.
    assert_eq!(
        ask(addr, joining("flood-0", "b")).await,
        Some(json!({"response": "group_data", "roles": {"a": "r", "b": "r"}}))
    );
}

#[tokio::test]
async fn an_idle_legacy_group_expires_and_frees_its_place() {
    let daemon = Daemon::start(&["--legacy-max-groups", "1", "--legacy-idle-expiry", "1"]);
    let addr = daemon.legacy;
    assert_eq!(
        ask(addr, joining("old", "a")).await,
        Some(json!({"response": "wait"}))
    );
    assert_eq!(daemon.legacy_files(), 1);
    // The cap is full until "old" has been idle for its second: poll for the new group
    // to be let in (bounded, so a group that never expires fails the test).
    let mut attempts = 0;
    loop {
        let reply = ask(addr, joining("new", "a")).await.unwrap();
        if reply["response"] == "wait" {
            break;
        }
        assert_eq!(reply["response"], "nack");
        attempts += 1;
        assert!(attempts < 300, "the idle group never expired: {reply}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // "old" is gone, with its file; naming it without a size finds nothing.
    assert_eq!(daemon.legacy_files(), 1);
    let old = lava(
        "lava_wait",
        "a",
        "r",
        json!({"group_name": "old", "messageID": "m"}),
    );
    assert_eq!(ask(addr, old).await, Some(json!({"response": "nack"})));
}

#[tokio::test]
async fn what_one_legacy_group_holds_is_bounded() {
    let mut config =
        coordinator::Config::new("127.0.0.1:0".parse().unwrap(), "admin-token-for-tests");
    config.legacy_listen = Some("127.0.0.1:0".parse().unwrap());
    config.legacy.hold = Duration::ZERO;
    config.legacy.max_group_bytes = 4096;
    let running = coordinator::start(config).await.unwrap();
    let addr = running.legacy_addr.unwrap();
    let send = |id: &str, value: &str| {
        lava(
            "lava_send",
            "a",
            "r",
            json!({"group_size": 1, "messageID": id, "message": {"k": value}}),
        )
    };
    assert_eq!(
        ask(addr, send("first", &"x".repeat(3000))).await,
        Some(json!({"response": "ack"}))
    );
    let over = ask(addr, send("second", &"x".repeat(3000))).await.unwrap();
    assert_eq!(over["response"], "nack");
    let why = over["message"].as_str().unwrap();
    assert!(
        why.contains("4096") && why.contains("--legacy-max-group-bytes"),
        "{why}"
    );
    // A barrier message counts too; a small one still fits.
    let sync = |message: Value| {
        lava(
            "lava_sync",
            "a",
            "r",
            json!({"messageID": "s", "message": message}),
        )
    };
    assert_eq!(
        ask(addr, sync(json!({"big": "y".repeat(2000)})))
            .await
            .unwrap()["response"],
        "nack"
    );
    assert_eq!(
        ask(addr, sync(json!({"small": "y"}))).await,
        Some(json!({"response": "ack", "message": {"small": "y"}}))
    );
    // Names are bounded apart from any group.
    let long = lava(
        "group_data",
        "a",
        "r",
        json!({"group_size": 1, "group_name": "g".repeat(300)}),
    );
    let reply = ask(addr, long).await.unwrap();
    assert_eq!(reply["response"], "nack");
    assert!(reply["message"].as_str().unwrap().contains("256"));
    running.shutdown().await;
}

/// Slow clients sending large bodies could hold `max_frame` (1 MiB) each while they
/// took their read timeout: 1,000 of them took the coordinator to 1,019 MB. Large
/// bodies now share 64 MiB, and small requests are still answered meanwhile.
#[tokio::test]
async fn slow_large_bodies_share_a_bounded_room() {
    let daemon = Daemon::start(&[]);
    let addr = daemon.legacy;
    let mut stalled = Vec::new();
    for _ in 0..1000 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // A 1 MiB body, one byte short: the coordinator waits for the rest.
        let mut frame = b"00100000".to_vec();
        frame.resize(8 + 1024 * 1024 - 1, b' ');
        stalled.push(tokio::spawn(async move {
            stream.write_all(&frame).await.unwrap();
            stream
        }));
    }
    let mut streams = Vec::new();
    for writer in stalled {
        streams.push(writer.await.unwrap());
    }
    assert_eq!(
        ask(addr, joining("while-stalled", "a")).await,
        Some(json!({"response": "wait"}))
    );
    let rss_mb = daemon.status_kb("VmRSS:") / 1024;
    eprintln!("1,000 stalled 1 MiB bodies: {rss_mb} MB resident");
    assert!(rss_mb < 300, "{rss_mb} MB resident");
    drop(streams);
}
