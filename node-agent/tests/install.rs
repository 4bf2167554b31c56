//! `node-agent install DIR` makes the `lava-*` commands, also when DIR is where the
//! agent itself lives (as on a host device, where the dispatcher puts it next to them).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

use std::process::Command;

#[test]
fn installing_next_to_itself_keeps_the_agent_and_links_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("node-agent");
    std::fs::copy(env!("CARGO_BIN_EXE_node-agent"), &agent).unwrap();
    for _ in 0..2 {
        let status = Command::new(&agent)
            .arg("install")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
    assert!(
        std::fs::symlink_metadata(&agent)
            .unwrap()
            .file_type()
            .is_file(),
        "the agent was replaced by a link"
    );
    let out = Command::new(dir.path().join("lava-self"))
        .env("LAVA_NODE_ID", "client-2")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "client-2");
}
