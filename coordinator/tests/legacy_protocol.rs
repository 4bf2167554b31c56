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
