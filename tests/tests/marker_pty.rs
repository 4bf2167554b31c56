//! The `lava-*` commands' console marker transport through a real pty: a shell on the
//! pty runs `lava-*` commands, and the test plays the dispatcher, relaying the markers it
//! reads on the pty to a real coordinator (gRPC on loopback) and typing the replies back.
//! Another node of the group talks to the coordinator over gRPC directly.
//!
//! Every case runs against each implementation of the commands: the node agent, and the
//! POSIX shell helpers (`node-agent/lava-helpers.sh`, what a guest without the agent
//! gets) under dash with GNU tools and under busybox with nothing but its applets. One
//! set of cases for all of them is what keeps them from drifting apart.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
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

/// One implementation of the `lava-*` commands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Commands {
    /// The node agent, through the links `node-agent install` makes.
    Agent,
    /// `lava-helpers.sh` run by dash, with Debian's (GNU) tools.
    ShellDash,
    /// `lava-helpers.sh` run by busybox's sh, with only busybox's applets on PATH.
    ShellBusybox,
}

const EVERY: [Commands; 3] = [Commands::Agent, Commands::ShellDash, Commands::ShellBusybox];

/// Installs `commands` into `dir/bin`; returns the PATH a test shell gets.
fn install(commands: Commands, dir: &Path) -> String {
    let bin = dir.join("bin");
    let helpers = system_tests::repo_root().join("node-agent/lava-helpers.sh");
    let status = match commands {
        Commands::Agent => Command::new(system_tests::binary("node-agent"))
            .arg("install")
            .arg(&bin)
            .status()
            .unwrap(),
        Commands::ShellDash => {
            let script = dir.join("lava-helpers");
            std::fs::copy(&helpers, &script).unwrap();
            Command::new("dash")
                .arg(&script)
                .arg("--install")
                .arg(&bin)
                .status()
                .unwrap()
        }
        Commands::ShellBusybox => {
            let applets = dir.join("busybox");
            std::fs::create_dir_all(&applets).unwrap();
            let ok = Command::new("busybox")
                .arg("--install")
                .arg("-s")
                .arg(&applets)
                .status()
                .unwrap();
            assert!(ok.success(), "busybox --install");
            // The helpers' own shebang names /bin/sh: run them with busybox's instead.
            let text = std::fs::read_to_string(&helpers).unwrap();
            let script = dir.join("lava-helpers");
            let body = text.split_once('\n').unwrap().1;
            std::fs::write(&script, format!("#!{}/sh\n{body}", applets.display())).unwrap();
            Command::new(applets.join("sh"))
                .arg(&script)
                .arg("--install")
                .arg(&bin)
                .env("PATH", &applets)
                .status()
                .unwrap()
        }
    };
    assert!(status.success(), "installing {commands:?}");
    match commands {
        Commands::ShellBusybox => format!("{}:{}", bin.display(), dir.join("busybox").display()),
        _ => format!("{}:/usr/bin:/bin", bin.display()),
    }
}

/// Runs `script` in a shell on a pty as node "guest" (marker transport, no coordinator
/// address), with `commands`, relaying its markers. Returns the exit status and
/// everything it printed.
async fn run_on_pty(group: &Group, commands: Commands, script: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = install(commands, dir.path());
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
    let cache = dir.path().join("cache.txt");
    let shell = match commands {
        Commands::ShellBusybox => dir.path().join("busybox/sh"),
        _ => PathBuf::from("sh"),
    };
    let mut child = Command::new(shell)
        .arg("-c")
        .arg(script)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", path)
        .env("HOME", dir.path())
        .env("LAVA_BACKGROUND_DIR", dir.path().join("background"))
        .env(
            "LAVA_MULTI_NODE_NETWORK_CACHE",
            dir.path().join("network.txt"),
        )
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
    for commands in EVERY {
        let group = group().await;
        let mut host = group.client("host").await;
        let host_side = tokio::spawn(async move {
            let deadline = Some(SystemTime::now() + Duration::from_secs(120));
            let ready = host.wait("ready", deadline).await.unwrap();
            host.send("hello", [("from".to_string(), "host".to_string())].into())
                .await
                .unwrap();
            host.sync("done", deadline).await.unwrap();
            let network = host.wait("network_info", deadline).await.unwrap();
            host.send(
                "network_info",
                [
                    ("hostname".to_string(), "hostbox".to_string()),
                    ("ipv4".to_string(), "10.1.2.3".to_string()),
                ]
                .into(),
            )
            .await
            .unwrap();
            (ready, network)
        });
        let script = r#"set -e
            lava-send ready ip=10.0.0.9 'note=a b>c:d=e'
            lava-wait hello
            echo "CACHE[$(cat "$LAVA_MULTI_NODE_CACHE")]"
            lava-wait-all hello host
            lava-sync done
            echo "SELF[$(lava-self)] ROLE[$(lava-role)] ROLES[$(lava-role list | tr '\n' ,)]"
            lava-group
            echo "CLIENTS[$(lava-group guest)]"
            lava-network broadcast lo
            lava-network collect lo host
            echo "QUERY[$(lava-network query host ipv4) $(lava-network query hostbox ipv4)]"
            lava-network alias-hosts hosts.txt
            echo "HOSTS[$(cat hosts.txt)]"
            echo GUEST-DONE"#;
        let (code, output) = run_on_pty(&group, commands, script).await;
        assert_eq!(code, 0, "{commands:?}: {output}");
        for expected in [
            "CACHE[host:from=host]",
            "SELF[guest] ROLE[guest] ROLES[host,guest,]",
            "host\thost\nguest\tguest\n",
            "CLIENTS[guest]",
            "TEST_CASE_ID=multinode-sync-done RESULT=pass",
            "TEST_CASE_ID=multinode-network-broadcast-lo RESULT=pass",
            "TEST_CASE_ID=multinode-network-collect-network_info RESULT=pass",
            "QUERY[10.1.2.3 10.1.2.3]",
            "10.1.2.3\thostbox\thost01]",
            "GUEST-DONE",
        ] {
            assert!(
                output.contains(expected),
                "{commands:?}: no {expected:?} in {output}"
            );
        }
        // The value with spaces and marker characters arrived intact over the console.
        let (ready, network) = host_side.await.unwrap();
        assert_eq!(ready["guest"]["ip"], "10.0.0.9", "{commands:?}");
        assert_eq!(ready["guest"]["note"], "a b>c:d=e", "{commands:?}");
        let lo = &network["guest"];
        assert_eq!(lo["ipv4"], "127.0.0.1", "{commands:?}: {lo:?}");
        assert_eq!(lo["netmask"], "255.0.0.0", "{commands:?}: {lo:?}");
        assert!(!lo["hostname"].is_empty(), "{commands:?}: {lo:?}");
        group.running.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_over_the_console_exits_1_with_the_reason() {
    for commands in EVERY {
        let group = group().await;
        let (code, output) = run_on_pty(
            &group,
            commands,
            "lava-wait-all x nosuchrole; echo \"rc=$?\"",
        )
        .await;
        assert_eq!(code, 0, "{output}");
        assert!(output.contains("rc=1"), "{commands:?}: {output}");
        assert!(
            output.contains("lava-wait-all: ")
                && output.contains("no role \"nosuchrole\" in this group"),
            "{commands:?}: {output}"
        );
        assert!(
            output.contains("TEST_CASE_ID=multinode-wait-all-x RESULT=fail"),
            "{commands:?}: {output}"
        );
        group.running.shutdown().await;
    }
}

/// The helpers that print signals, attach files and run things, with LAVA's flag
/// orders: every implementation prints the same lines, which read back as the signals
/// meant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_implementation_prints_the_same_signals() {
    let script = r#"
        lava-test-case plain --result pass
        lava-test-case measured --units ms --measurement 3.5 --result fail
        lava-test-case ran --shell 'test 1 = 1 && echo inside'
        lava-test-case failed --shell false; echo "shell-rc=$?"
        lava-test-set start setup
        lava-test-set stop
        lava-test-reference bug-7 --reference https://bugs.example.org/7 --result skip
        printf 'line one\nline two\n' > notes.txt
        head -c 3000 /dev/zero | tr '\0' x > big.log
        lava-test-case-attach plain notes.txt text/plain
        lava-test-run-attach big.log
        echo "ipv4[$(lava-echo-ipv4 lo)]"
        lava-background-process-start ticker --cmd 'echo started; exec sleep 600'
        echo "bgpid $(cat "$LAVA_BACKGROUND_DIR/ticker/pid")"
        lava-background-process-stop ticker --attach notes.txt text/plain
        lava-test-case 'back\slash' --result pass; echo "backslash-rc=$?"
        cp notes.txt .hidden && lava-test-run-attach .hidden
        cp notes.txt ./-dash.txt && lava-test-run-attach ./-dash.txt text/plain
        LAVA_ATTACH_MAX_BYTES=100 lava-test-run-attach big.log; echo "too-big-rc=$?"
        lava-test-case-attach plain missing.txt; echo "missing-rc=$?"
        for bad in 'lava-test-case' 'lava-test-case x' 'lava-test-case x --result maybe' \
            'lava-test-case "a b" --result pass' 'lava-test-case x --result pass --units' \
            'lava-test-reference x --result pass' 'lava-test-set' 'lava-send' 'lava-send x y' \
            'lava-send a=b' 'lava-wait' 'lava-sync a b' 'lava-echo-ipv4' \
            'lava-network frob' 'lava-test-run-attach' 'lava-background-process-start x' \
            'lava-network broadcast no-such-if0' 'lava-test-case x --result pass --measurement ""' \
            'lava-test-run-attach notes.txt ""' 'lava-test-case-attach x notes.txt ""'; do
            eval "$bad" >/dev/null 2>&1; echo "usage[$bad]=$?"
        done
        lava-test-raise "cannot go on > here"; echo "raise-rc=$?"
    "#;
    let mut outputs = Vec::new();
    for commands in EVERY {
        let group = group().await;
        let (code, output) = run_on_pty(&group, commands, script).await;
        assert_eq!(code, 0, "{commands:?}: {output}");
        let pid: u32 = output
            .lines()
            .find_map(|l| l.strip_prefix("bgpid "))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("{commands:?}: no background pid: {output}"));
        assert!(
            system_tests::wait_until_gone(pid, Duration::from_secs(20)),
            "{commands:?}: the background process {pid} is still running"
        );
        let lines: Vec<String> = output
            .lines()
            .filter(|l| !l.starts_with("bgpid "))
            .map(str::to_string)
            .collect();
        outputs.push((commands, lines, output));
        group.running.shutdown().await;
    }
    let (_, agent, agent_output) = &outputs[0];
    for (commands, lines, output) in &outputs[1..] {
        assert_eq!(
            lines, agent,
            "{commands:?} differs from the agent:\n{output}\n---\n{agent_output}"
        );
    }
    let signals: Vec<proto::signal::Signal> = agent
        .iter()
        .filter_map(|l| proto::signal::Signal::find(l).map(Result::unwrap))
        .collect();
    use proto::signal::{Attachment, Outcome, Signal, TestCase};
    let expected_start = [
        Signal::TestCase(TestCase::new("plain", Outcome::Pass)),
        Signal::TestCase(TestCase {
            id: "measured".into(),
            result: Outcome::Fail,
            measurement: Some("3.5".into()),
            units: Some("ms".into()),
        }),
        Signal::StartTc { id: "ran".into() },
        Signal::EndTc { id: "ran".into() },
        Signal::TestCase(TestCase::new("ran", Outcome::Pass)),
        Signal::StartTc {
            id: "failed".into(),
        },
        Signal::EndTc {
            id: "failed".into(),
        },
        Signal::TestCase(TestCase::new("failed", Outcome::Fail)),
        Signal::TestSetStart {
            name: "setup".into(),
        },
        Signal::TestSetStop,
        Signal::TestReference {
            id: "bug-7".into(),
            result: Outcome::Skip,
            reference: "https://bugs.example.org/7".into(),
        },
        Signal::Attach(Attachment {
            name: "notes.txt".into(),
            size: 18,
            case: Some("plain".into()),
            mimetype: Some("text/plain".into()),
        }),
        Signal::AttachEnd {
            name: "notes.txt".into(),
        },
        Signal::Attach(Attachment {
            name: "big.log".into(),
            size: 3000,
            case: None,
            mimetype: None,
        }),
        Signal::AttachEnd {
            name: "big.log".into(),
        },
    ];
    assert_eq!(
        &signals[..expected_start.len()],
        &expected_start,
        "{agent_output}"
    );
    // The attached bytes come back from the base64 lines between the markers.
    let text = agent.join("\n");
    assert!(text.contains("<LAVA_SIGNAL_ATTACH NAME=notes.txt SIZE=18 CASE=plain MIMETYPE=text/plain>\nbGluZSBvbmUKbGluZSB0d28K\n<LAVA_SIGNAL_ATTACHEND NAME=notes.txt>"), "{agent_output}");
    for expected in [
        "shell-rc=0",
        "ipv4[127.0.0.1]",
        "too-big-rc=1",
        "missing-rc=1",
        "raise-rc=1",
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=back\\slash RESULT=pass>",
        "<LAVA_SIGNAL_ATTACH NAME=_hidden SIZE=18>",
        "<LAVA_SIGNAL_ATTACH NAME=-dash.txt SIZE=18 MIMETYPE=text/plain>",
        "<LAVA_SIGNAL_TESTRAISE cannot go on ) here>",
    ] {
        assert!(
            agent.iter().any(|l| l.contains(expected)),
            "no {expected:?}: {agent_output}"
        );
    }
    for line in agent.iter().filter(|l| l.starts_with("usage[")) {
        assert!(
            line.ends_with("]=2"),
            "not a usage error: {line}\n{agent_output}"
        );
    }
    // Stopping the background process attached what it was asked to.
    assert!(
        agent_output.contains("<LAVA_SIGNAL_ATTACH NAME=notes.txt SIZE=18 MIMETYPE=text/plain>"),
        "{agent_output}"
    );
}

/// The shell helpers and the node agent answer to the same command names.
#[test]
fn the_shell_helpers_have_every_command_of_the_agent() {
    let names = |commands| {
        let dir = tempfile::tempdir().unwrap();
        install(commands, dir.path());
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("bin"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("lava-"))
            .collect();
        names.sort();
        names
    };
    let agent = names(Commands::Agent);
    assert!(agent.len() >= 21, "{agent:?}");
    assert_eq!(names(Commands::ShellDash), agent);
}
