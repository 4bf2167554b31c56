//! The node agent's console marker transport through a real pty: a shell on the pty
//! runs `lava-*` commands, and the test plays the dispatcher, relaying the markers it
//! reads on the pty to a real coordinator (gRPC on loopback) and typing the replies back.
//! Another node of the group talks to the coordinator over gRPC directly.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use coordinator::relay::Relay;
use coordinator::{AdminClient, NodeClient};
use proto::markers::Scanner;

struct Group {
    running: coordinator::Running,
    endpoint: String,
    group_id: String,
    tokens: Vec<(String, String)>,
}

async fn group() -> Group {
    let running = coordinator::start(coordinator::Config::new(
        "127.0.0.1:0".parse().unwrap(),
        "admin-token-for-tests",
    ))
    .await
    .unwrap();
    let endpoint = format!("http://{}", running.grpc_addr);
    let mut admin = AdminClient::connect(&endpoint, "admin-token-for-tests")
        .await
        .unwrap();
    let nodes = [
        ("host".to_string(), "host".to_string()),
        ("guest".to_string(), "guest".to_string()),
    ];
    let (group_id, creds) = admin.create_group("", &nodes).await.unwrap();
    Group {
        running,
        endpoint,
        group_id,
        tokens: creds.into_iter().map(|c| (c.node_id, c.token)).collect(),
    }
}

impl Group {
    async fn client(&self, node: &str) -> NodeClient {
        let token = &self.tokens.iter().find(|(n, _)| n == node).unwrap().1;
        NodeClient::connect(&self.endpoint, &self.group_id, node, token)
            .await
            .unwrap()
    }
}

/// Runs `script` in `sh` on a pty as node "guest" (marker transport, no coordinator
/// address), relaying its markers. Returns the exit status and everything it printed.
async fn run_on_pty(group: &Group, script: &str) -> (i32, String) {
    let bin = tempfile::tempdir().unwrap();
    let installed = Command::new(system_tests::binary("node-agent"))
        .arg("install")
        .arg(bin.path())
        .status()
        .unwrap();
    assert!(installed.success());
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
    let cache = bin.path().join("cache.txt");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin.path().display()))
        .env("LAVA_NODE_ID", "guest")
        .env("LAVA_NODE_ROLE", "guest")
        .env("LAVA_GROUP", "host\thost\nguest\tguest")
        .env("LAVA_MULTI_NODE_CACHE", &cache)
        .env("LAVA_MULTINODE_TIMEOUT", "120")
        .stdin(slave(&pty.slave))
        .stdout(slave(&pty.slave))
        .stderr(slave(&pty.slave))
        .spawn()
        .unwrap();
    drop(pty.slave);
    let mut reader = std::fs::File::from(pty.master.try_clone().unwrap());
    let mut writer = std::fs::File::from(pty.master);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // Ends with EIO once the shell (the last holder of the slave) exits.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut relay = Relay::new(group.client("guest").await, Duration::from_secs(120));
    let mut scanner = Scanner::new();
    let mut output = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        output.extend_from_slice(&chunk);
        for call in scanner.feed(&chunk) {
            let call = call.unwrap();
            if let Some(reply) = relay.answer(&call).await.unwrap() {
                writer.write_all(format!("{reply}\n").as_bytes()).unwrap();
            }
        }
    }
    let status = child.wait().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output).replace('\r', ""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marker_calls_through_a_pty_reach_grpc_nodes_and_back() {
    let group = group().await;
    let mut host = group.client("host").await;
    let host_side = tokio::spawn(async move {
        let deadline = Some(SystemTime::now() + Duration::from_secs(120));
        let ready = host.wait("ready", deadline).await.unwrap();
        host.send("hello", [("from".to_string(), "host".to_string())].into())
            .await
            .unwrap();
        host.sync("done", deadline).await.unwrap();
        ready
    });
    let script = r#"set -e
        lava-send ready ip=10.0.0.9 'note=a b>c:d=e'
        lava-wait hello
        echo "CACHE[$(cat "$LAVA_MULTI_NODE_CACHE")]"
        lava-wait-all hello host
        lava-sync done
        echo "SELF[$(lava-self)] ROLE[$(lava-role)]"
        lava-group
        echo GUEST-DONE"#;
    let (code, output) = run_on_pty(&group, script).await;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("CACHE[host:from=host]"), "{output}");
    assert!(output.contains("SELF[guest] ROLE[guest]"), "{output}");
    assert!(output.contains("host\thost\nguest\tguest\n"), "{output}");
    assert!(
        output.contains("TEST_CASE_ID=multinode-sync-done RESULT=pass"),
        "{output}"
    );
    assert!(output.contains("GUEST-DONE"), "{output}");
    // The value with spaces and marker characters arrived intact over the console.
    let ready = host_side.await.unwrap();
    assert_eq!(ready["guest"]["ip"], "10.0.0.9");
    assert_eq!(ready["guest"]["note"], "a b>c:d=e");
    group.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_over_the_console_exits_1_with_the_reason() {
    let group = group().await;
    let (code, output) = run_on_pty(&group, "lava-wait-all x nosuchrole; echo \"rc=$?\"").await;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("rc=1"), "{output}");
    assert!(
        output.contains("no role \"nosuchrole\" in this group"),
        "{output}"
    );
    assert!(
        output.contains("TEST_CASE_ID=multinode-wait-all-x RESULT=fail"),
        "{output}"
    );
    group.running.shutdown().await;
}
