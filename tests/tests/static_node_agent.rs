//! The node agent builds as a static executable that runs with no libraries at all, as
//! in a busybox guest: checked in a chroot holding nothing but the binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

use std::process::Command;

use system_tests::static_node_agent;

#[test]
fn the_static_node_agent_runs_in_an_empty_root() {
    let binary = static_node_agent();
    let root = tempfile::tempdir().unwrap();
    std::fs::copy(&binary, root.path().join("node-agent")).unwrap();
    std::os::unix::fs::symlink("node-agent", root.path().join("lava-self")).unwrap();
    let output = Command::new("/usr/sbin/chroot")
        .arg(root.path())
        .arg("/lava-self")
        .env_clear()
        .env("LAVA_NODE_ID", "guest-1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "guest-1\n");
}
