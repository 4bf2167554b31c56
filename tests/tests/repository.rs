//! What the repository ships: no private key of any kind (LAVA v1 shipped a shared
//! insecure root key; every lab key here is made on the machine that uses it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

use std::process::Command;

use system_tests::repo_root;

#[test]
fn no_private_key_is_committed() {
    let listed = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(listed.status.success(), "git ls-files failed");
    // Spelled in two pieces so this file does not match itself.
    let armour = format!("{}{}", "PRIVATE ", "KEY-----");
    let files: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .split('\0')
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect();
    assert!(files.len() > 50, "the listing looks wrong: {files:?}");
    let offenders: Vec<&String> = files
        .iter()
        .filter(|f| {
            std::fs::read(repo_root().join(f))
                .map(|bytes| String::from_utf8_lossy(&bytes).contains(&armour))
                .unwrap_or(false)
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "private keys committed: {offenders:?}"
    );
}
