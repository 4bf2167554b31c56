//! The MultiNode API end to end with real processes: the standalone coordinator binary,
//! and test shells (`sh`) running the node agent's `lava-*` commands over gRPC.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

use std::process::{Child, Output};

use coordinator::AdminClient;
use proto::v1::group_event;
use system_tests::{CoordinatorProcess, NodeEnv, kill_group};

/// Creates a group on the coordinator and returns each node's environment.
async fn create_group(
    coordinator: &CoordinatorProcess,
    nodes: &[(String, String)],
    cache_dir: &std::path::Path,
) -> Vec<NodeEnv> {
    let mut admin = AdminClient::connect(&coordinator.grpc, &coordinator.admin_token)
        .await
        .unwrap();
    let (group_id, credentials) = admin.create_group("", nodes).await.unwrap();
    credentials
        .into_iter()
        .map(|c| NodeEnv {
            coordinator: coordinator.grpc.clone(),
            group_id: group_id.clone(),
            cache: cache_dir.join(format!("{}.cache", c.node_id)),
            node_id: c.node_id,
            role: c.role,
            token: c.token,
        })
        .collect()
}

fn roles(clients: usize) -> Vec<(String, String)> {
    let mut nodes = vec![
        ("host".to_string(), "host".to_string()),
        ("server".to_string(), "server".to_string()),
    ];
    nodes.extend((1..=clients).map(|i| (format!("client-{i}"), "client".to_string())));
    nodes
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Starts `command` with its stdin, stdout and stderr piped to the test.
fn with_pipes(mut command: std::process::Command) -> Child {
    command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for every node to end; returns each one's output.
async fn outputs_of(children: Vec<(String, Child)>) -> Vec<(String, Output)> {
    tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|(id, child)| (id, child.wait_with_output().unwrap()))
            .collect()
    })
    .await
    .unwrap()
}

/// Runs the VM-group conversation in a group of `size` nodes: the host starts the VMs,
/// the server publishes data the clients wait for, the server waits for every client,
/// everyone syncs, and the host waits for the VMs to finish.
async fn vm_group_conversation(size: usize) {
    let coordinator = CoordinatorProcess::start();
    let cache_dir = tempfile::tempdir().unwrap();
    let clients = size - 2;
    let nodes = create_group(&coordinator, &roles(clients), cache_dir.path()).await;
    let mut children: Vec<(String, Child)> = Vec::new();
    for node in &nodes {
        let script = match node.role.as_str() {
            "host" => "set -e
                lava-start-vms
                lava-sync up
                lava-wait-for-vms
                test \"$(lava-group | wc -l)\" -eq $EXPECTED_SIZE
                test \"$(lava-role list | tr '\\n' ' ')\" = \"$EXPECTED_ROLES\""
                .to_string(),
            "server" => format!(
                "set -e
                lava-wait lava_vm_start
                grep -qx 'host:host_ip=10.0.2.15' \"$LAVA_MULTI_NODE_CACHE\"
                lava-send ready port=8080 'motd=hello world'
                {}
                lava-sync up
                lava-send lava_vm_stop",
                if clients > 0 {
                    "lava-wait-all hello client
                test \"$(grep -c ':from=client-' \"$LAVA_MULTI_NODE_CACHE\")\" -eq $EXPECTED_CLIENTS"
                } else {
                    ""
                }
            ),
            _ => "set -e
                lava-wait lava_vm_start
                lava-wait ready
                grep -qx 'server:port=8080' \"$LAVA_MULTI_NODE_CACHE\"
                grep -qx 'server:motd=hello world' \"$LAVA_MULTI_NODE_CACHE\"
                lava-send hello from=$(lava-self)
                test \"$(lava-role)\" = client
                lava-sync up
                lava-send lava_vm_stop"
                .to_string(),
        };
        let expected_roles = if clients > 0 {
            "host server client "
        } else {
            "host server "
        };
        let child = node
            .shell(&script)
            .env("_LAVA_VM_GROUP_HOST_IP", "10.0.2.15")
            .env("EXPECTED_SIZE", size.to_string())
            .env("EXPECTED_CLIENTS", clients.to_string())
            .env("EXPECTED_ROLES", expected_roles)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        children.push((node.node_id.clone(), child));
    }
    let outputs = outputs_of(children).await;
    for (id, output) in &outputs {
        assert!(
            output.status.success(),
            "{id} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            output.status,
            text(&output.stdout),
            text(&output.stderr)
        );
    }
    // Every API call is recorded as a passing test case, LAVA style.
    let host_out = text(&outputs[0].1.stdout);
    for case in [
        "multinode-start-vms-lava_vm_start",
        "multinode-sync-up",
        "multinode-wait-for-vms-lava_vm_stop",
    ] {
        assert!(
            host_out.contains(&format!("TEST_CASE_ID={case} RESULT=pass")),
            "{host_out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_2_does_every_call() {
    vm_group_conversation(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_16_does_every_call() {
    vm_group_conversation(16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_256_does_every_call() {
    vm_group_conversation(256).await;
}

/// Waits until `count` different nodes are blocked in `call` on message `id`, from the
/// group's event stream.
async fn until_waiting(
    coordinator: &CoordinatorProcess,
    group_id: &str,
    call: &str,
    id: &str,
    count: usize,
) {
    until_waiting_and_active(coordinator, group_id, (call, id, count), &[]).await;
}

/// Waits until `count` different nodes are blocked in `call` on message `id`, and every
/// node of `active` is active (attached, for `node-agent run`), from the group's event
/// stream (its opening snapshot included).
async fn until_waiting_and_active(
    coordinator: &CoordinatorProcess,
    group_id: &str,
    (call, id, count): (&str, &str, usize),
    active: &[&str],
) {
    let mut admin = AdminClient::connect(&coordinator.grpc, &coordinator.admin_token)
        .await
        .unwrap();
    let mut events = admin.watch_group(group_id).await.unwrap();
    let mut waiting = std::collections::BTreeSet::new();
    let mut seen_active = std::collections::BTreeSet::new();
    while waiting.len() < count || active.iter().any(|n| !seen_active.contains(*n)) {
        // A bound so a broken node fails the test instead of hanging it.
        let event = tokio::time::timeout(std::time::Duration::from_secs(120), events.message())
            .await
            .expect("nodes never all reached the call")
            .unwrap()
            .expect("event stream ended");
        match event.kind {
            Some(group_event::Kind::Waiting(w)) if w.call == call && w.message_id == id => {
                waiting.insert(w.node_id);
            }
            Some(group_event::Kind::NodeChanged(n))
                if n.state == proto::v1::NodeState::Active as i32 =>
            {
                seen_active.insert(n.node_id);
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dies_mid_sync_fails_every_waiter_naming_it() {
    let coordinator = CoordinatorProcess::start();
    let cache_dir = tempfile::tempdir().unwrap();
    let nodes: Vec<(String, String)> = (0..5)
        .map(|i| (format!("client-{i}"), "client".to_string()))
        .collect();
    let nodes = create_group(&coordinator, &nodes, cache_dir.path()).await;
    let mut children = Vec::new();
    for node in &nodes {
        // Each node runs attached to the coordinator (as the dispatcher runs test
        // shells), so its death is noticed without anyone reporting it.
        let script = if node.node_id == "client-3" {
            "exec node-agent run -- sh -c 'read never'".to_string()
        } else {
            "node-agent run -- lava-sync ready".to_string()
        };
        let child = with_pipes(node.shell(&script));
        children.push((node.node_id.clone(), child));
    }
    until_waiting(&coordinator, &nodes[0].group_id, "sync", "ready", 4).await;
    let started = std::time::Instant::now();
    let (_, victim) = children
        .iter_mut()
        .find(|(id, _)| id == "client-3")
        .unwrap();
    kill_group(victim);
    let survivors: Vec<(String, Output)> = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .filter(|(id, _)| id != "client-3")
            .map(|(id, child)| (id, child.wait_with_output().unwrap()))
            .collect()
    })
    .await
    .unwrap();
    eprintln!("waiters failed {:?} after the kill", started.elapsed());
    for (id, output) in survivors {
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{id}: {stderr}");
        assert!(
            stderr.contains("lava-sync 'ready': client-3 (client) failed (connection lost)"),
            "{id}: {stderr}"
        );
        assert!(
            stderr.contains("waiting for 1/5: client-3 (client)"),
            "{id}: {stderr}"
        );
        // Failed because the node died, not because a deadline (300 s) passed.
        assert!(!stderr.contains("deadline"), "{id}: {stderr}");
        assert!(text(&output.stdout).contains("TEST_CASE_ID=multinode-sync-ready RESULT=fail"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_the_dispatcher_reports_failed_releases_the_waiters() {
    let coordinator = CoordinatorProcess::start();
    let cache_dir = tempfile::tempdir().unwrap();
    let nodes = create_group(&coordinator, &roles(2), cache_dir.path()).await;
    let mut children = Vec::new();
    for node in nodes.iter().filter(|n| n.node_id != "client-2") {
        let child = node
            .shell("lava-wait-all hello client")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        children.push(child);
    }
    let group_id = nodes[0].group_id.clone();
    let mut admin = AdminClient::connect(&coordinator.grpc, &coordinator.admin_token)
        .await
        .unwrap();
    until_waiting(&coordinator, &group_id, "wait-all", "hello", 3).await;
    admin
        .fail_node(&group_id, "client-2", "kernel panic on the console")
        .await
        .unwrap();
    for child in children {
        let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("client-2 (client) failed (kernel panic on the console)"),
            "{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_names_the_nodes_still_missing() {
    let coordinator = CoordinatorProcess::start();
    let cache_dir = tempfile::tempdir().unwrap();
    let nodes = create_group(&coordinator, &roles(2), cache_dir.path()).await;
    let output = nodes[0]
        .shell("lava-sync never")
        .env("LAVA_MULTINODE_TIMEOUT", "1")
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("lava-sync 'never': deadline passed; waiting for 3/4: server (server), client-1 (client), client-2 (client)"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_and_cross_group_access_are_refused() {
    let coordinator = CoordinatorProcess::start();
    let cache_dir = tempfile::tempdir().unwrap();
    let group_a = create_group(&coordinator, &roles(1), cache_dir.path()).await;
    let group_b = create_group(&coordinator, &roles(1), cache_dir.path()).await;
    // A node of group A with its own, valid token, claiming to be in group B.
    let mut cross = group_a[1].clone();
    cross.group_id = group_b[1].group_id.clone();
    // A node of group A claiming to be another node of group A.
    let mut impostor = group_a[1].clone();
    impostor.node_id = group_a[2].node_id.clone();
    let mut wrong = group_a[1].clone();
    wrong.token = "0".repeat(64);
    for (what, node) in [
        ("cross-group", cross),
        ("other node", impostor),
        ("wrong token", wrong),
    ] {
        let output = node.shell("lava-send x k=v").output().unwrap();
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(3), "{what}: {stderr}");
        assert!(
            stderr.contains("refused: not authorized for node"),
            "{what}: {stderr}"
        );
    }
    // A node token is no admin token.
    let mut admin = AdminClient::connect(&coordinator.grpc, &group_a[0].token)
        .await
        .unwrap();
    let err = admin
        .fail_node(&group_a[0].group_id, "server", "x")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    // And the legitimate node still works.
    let ok = group_a[1].shell("lava-send x k=v").output().unwrap();
    assert!(ok.status.success(), "{}", text(&ok.stderr));
}

/// Message ids and values are data, never shell: `$(...)`, backquotes, `;` and `|` in
/// them travel to the other node's cache file verbatim and run nothing on either side;
/// a key holding them is refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_metacharacters_in_ids_keys_and_values_run_nothing() {
    let coordinator = CoordinatorProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let nodes = create_group(
        &coordinator,
        &[
            ("a".to_string(), "sender".to_string()),
            ("b".to_string(), "waiter".to_string()),
        ],
        dir.path(),
    )
    .await;
    // The shells run in `dir`, so a relative name is the canary (ids are at most 128
    // bytes). No white space either: ${IFS} stands in for it.
    let canary = dir.path().join("pwned");
    let evil = "$(touch${IFS}pwned)`touch${IFS}pwned`;touch${IFS}pwned|touch${IFS}pwned";
    // Single-quoted, so `sh` hands them to the commands untouched. Keys are names
    // (letters, digits, '_' and '-'): one with metacharacters is refused, not sent.
    let sender = format!(
        "set -e\nif lava-send x 'k{evil}=v'; then exit 9; fi\n\
         lava-send 'id{evil}' 'key=v {evil}'\nlava-sync 's{evil}'"
    );
    let waiter = format!(
        "set -e\nlava-wait 'id{evil}'\nlava-sync 's{evil}'\ncat \"$LAVA_MULTI_NODE_CACHE\""
    );
    let spawn = |node: &NodeEnv, script: &str| {
        node.shell(script)
            .current_dir(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children = vec![spawn(&nodes[0], &sender), spawn(&nodes[1], &waiter)];
    let outputs: Vec<Output> = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect()
    })
    .await
    .unwrap();
    for output in &outputs {
        assert!(
            output.status.success(),
            "stdout:\n{}\nstderr:\n{}",
            text(&output.stdout),
            text(&output.stderr)
        );
    }
    let cache = text(&outputs[1].stdout);
    assert!(
        cache.lines().any(|l| l == format!("a:key=v {evil}")),
        "the pair arrives verbatim: {cache}"
    );
    assert!(!canary.exists(), "a metacharacter ran a command");
    assert!(
        text(&outputs[0].stderr).contains("must be letters, digits"),
        "the bad key was refused clearly: {}",
        text(&outputs[0].stderr)
    );
}

/// The coordinator killed (SIGKILL) while nodes are blocked in `lava-sync`, and started
/// again with its state directory: the blocked calls reconnect and pass the barrier
/// once the last node arrives after the restart, messages sent before it are still
/// there, and the group's file goes when the group is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_mid_group_carries_on_after_its_restart() {
    let mut coordinator = CoordinatorProcess::start_keeping_state();
    let cache_dir = tempfile::tempdir().unwrap();
    let nodes = create_group(&coordinator, &roles(2)[1..], cache_dir.path()).await;
    let mut children: Vec<(String, Child)> = Vec::new();
    for node in &nodes {
        // client-1 starts only when the test says so: after the restart.
        let wait_for_go = if node.node_id == "client-1" {
            "read go\n"
        } else {
            ""
        };
        let script = format!(
            "set -e
            {wait_for_go}lava-send hello from=$(lava-self)
            lava-sync restart
            lava-wait-all hello
            test \"$(grep -c ':from=' \"$LAVA_MULTI_NODE_CACHE\")\" -ge 2
            lava-sync after"
        );
        let child = with_pipes(node.shell(&format!(
            "exec node-agent run -- sh -c {}",
            shell_words(&script)
        )));
        children.push((node.node_id.clone(), child));
    }
    let group_id = nodes[0].group_id.clone();
    until_waiting(&coordinator, &group_id, "sync", "restart", 2).await;
    coordinator.kill_and_restart();
    let (_, late) = children
        .iter_mut()
        .find(|(id, _)| id == "client-1")
        .unwrap();
    use std::io::Write;
    late.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let outputs = outputs_of(children).await;
    for (id, output) in &outputs {
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        assert!(
            output.status.success(),
            "{id} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
            output.status
        );
        for case in ["sync-restart", "wait-all-hello", "sync-after"] {
            assert!(
                stdout.contains(&format!("TEST_CASE_ID=multinode-{case} RESULT=pass")),
                "{id}: {stdout}"
            );
        }
    }
    let state = coordinator.state_dir.clone().unwrap().join("groups");
    let files = || std::fs::read_dir(&state).unwrap().count();
    assert_eq!(files(), 1, "the live group has its file");
    AdminClient::connect(&coordinator.grpc, &coordinator.admin_token)
        .await
        .unwrap()
        .close_group(&group_id)
        .await
        .unwrap();
    assert_eq!(files(), 0, "a closed group's file is removed");
}

/// `script` as one single-quoted shell word.
fn shell_words(script: &str) -> String {
    format!("'{}'", script.replace('\'', "'\\''"))
}

/// A node that dies while the coordinator is away (killed, then the coordinator
/// restarted): nobody saw its presence end, so after the restart it has
/// `--reattach-grace` to attach again; it does not, so it is failed and the nodes
/// waiting for it are released naming it, long before their deadline. The survivors,
/// attached too, attach again in time and are not failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dies_while_the_coordinator_is_away_is_failed_after_the_restart() {
    let mut coordinator = CoordinatorProcess::start_with(true, &["--reattach-grace", "10"]);
    let cache_dir = tempfile::tempdir().unwrap();
    let nodes: Vec<(String, String)> = (0..3)
        .map(|i| (format!("client-{i}"), "client".to_string()))
        .collect();
    let nodes = create_group(&coordinator, &nodes, cache_dir.path()).await;
    let mut children = Vec::new();
    for node in &nodes {
        let script = if node.node_id == "client-2" {
            "exec node-agent run -- sh -c 'read never'"
        } else {
            "exec node-agent run -- lava-sync ready"
        };
        children.push((node.node_id.clone(), with_pipes(node.shell(script))));
    }
    let group_id = nodes[0].group_id.clone();
    until_waiting_and_active(&coordinator, &group_id, ("sync", "ready", 2), &["client-2"]).await;
    coordinator.kill();
    let (_, victim) = children
        .iter_mut()
        .find(|(id, _)| id == "client-2")
        .unwrap();
    kill_group(victim);
    coordinator.restart();
    let survivors: Vec<(String, Child)> = children
        .into_iter()
        .filter(|(id, _)| id != "client-2")
        .collect();
    for (id, output) in outputs_of(survivors).await {
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{id}: {stderr}");
        assert!(
            stderr.contains(
                "lava-sync 'ready': client-2 (client) failed (its presence did not come back \
                 within 10 s of the coordinator restart)"
            ),
            "{id}: {stderr}"
        );
        // Only the dead node was failed: the survivors attached again in time.
        assert!(
            !stderr.contains("client-0 (client) failed"),
            "{id}: {stderr}"
        );
        assert!(
            !stderr.contains("client-1 (client) failed"),
            "{id}: {stderr}"
        );
        assert!(!stderr.contains("deadline"), "{id}: {stderr}");
    }
}
