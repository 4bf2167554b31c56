//! SSH and SFTP to a real OpenSSH server in a network namespace (an `ssh-host`
//! device): commands, host-key verification, the image cache.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

use std::time::Duration;

use hostctl::ssh::{SshError, SshSession, SshTarget};
use hostctl::transfer;
use lab::device::HostKeyPolicy;
use system_tests::{SshHost, ssh_keygen};

#[tokio::test]
async fn commands_run_with_status_and_streams_on_one_connection() {
    let host = SshHost::start(None);
    let dir = tempfile::tempdir().unwrap();
    let pinned = HostKeyPolicy::Fingerprint(host.fingerprint.clone());
    let session = SshSession::connect(
        &host.target(pinned, dir.path().join("kh")),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let out = session
        .exec("echo out; echo err >&2; exit 3", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        (out.status, out.stdout_text(), out.stderr_text()),
        (Some(3), "out\n".into(), "err\n".into())
    );
    // Many channels at once over the one connection.
    let commands: Vec<String> = (0..20).map(|i| format!("echo {i}")).collect();
    let runs = commands
        .iter()
        .map(|c| session.run(c, Duration::from_secs(30)));
    let outputs = futures::future::join_all(runs).await;
    for (i, out) in outputs.into_iter().enumerate() {
        assert_eq!(out.unwrap(), format!("{i}\n"));
    }
    let err = session
        .exec("sleep 5", Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, SshError::Timeout { .. }), "{err}");
    session.close().await;
}

/// A console nobody reads (a VM booting while the next one launches) must not stall
/// the connection it shares with commands.
#[tokio::test]
async fn an_unread_console_does_not_stall_the_connection() {
    use tokio::io::AsyncReadExt;

    let host = SshHost::start(None);
    let dir = tempfile::tempdir().unwrap();
    let pinned = HostKeyPolicy::Fingerprint(host.fingerprint.clone());
    let session = SshSession::connect(
        &host.target(pinned, dir.path().join("kh")),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    // Far more output than russh queues for a channel (about 100 packets of 32 KiB).
    let mut console = session
        .pty("head -c 20000000 /dev/zero | tr '\\0' x; echo; echo END-OF-OUTPUT; sleep 600")
        .await
        .unwrap();
    // While the console is unread, commands on the same connection still complete.
    for i in 0..5 {
        let out = session
            .run(&format!("echo {i}"), Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(out, format!("{i}\n"));
    }
    // And nothing the console said was lost.
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while !String::from_utf8_lossy(&seen[seen.len().saturating_sub(64)..]).contains("END-OF-OUTPUT")
    {
        let n = tokio::time::timeout(Duration::from_secs(60), console.read(&mut buf))
            .await
            .expect("console output stopped")
            .unwrap();
        assert!(n > 0, "console closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    let xs = seen.iter().filter(|b| **b == b'x').count();
    assert_eq!(xs, 20_000_000);
    drop(console);
    session.close().await;
}

#[tokio::test]
async fn a_host_key_mismatch_is_refused_with_both_fingerprints() {
    let host = SshHost::start(None);
    let dir = tempfile::tempdir().unwrap();
    let wrong = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s".to_string();
    let err = SshSession::connect(
        &host.target(
            HostKeyPolicy::Fingerprint(wrong.clone()),
            dir.path().join("kh"),
        ),
        Duration::from_secs(30),
    )
    .await
    .err()
    .expect("a wrong host key must be refused");
    let message = err.to_string();
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{message}");
    assert!(
        message.contains(&wrong) && message.contains(&host.fingerprint),
        "{message}"
    );
}

#[tokio::test]
async fn trust_on_first_use_records_the_key_and_refuses_another() {
    let host = SshHost::start(None);
    let dir = tempfile::tempdir().unwrap();
    let known = dir.path().join("known_hosts");
    let tofu = host.target(HostKeyPolicy::TrustOnFirstUse, known.clone());
    SshSession::connect(&tofu, Duration::from_secs(30))
        .await
        .unwrap()
        .close()
        .await;
    let recorded = std::fs::read_to_string(&known).unwrap();
    assert!(recorded.contains(&host.address), "{recorded}");
    SshSession::connect(&tofu, Duration::from_secs(30))
        .await
        .unwrap()
        .close()
        .await;
    // Another machine now answers at that address: a different key is refused.
    let other = tempfile::tempdir().unwrap();
    let key = other.path().join("k");
    ssh_keygen(&key);
    let other_key = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let mut fields = other_key.split_whitespace();
    let line = format!(
        "{} {} {}\n",
        host.address,
        fields.next().unwrap(),
        fields.next().unwrap()
    );
    std::fs::write(&known, line).unwrap();
    let err = SshSession::connect(&tofu, Duration::from_secs(30))
        .await
        .err()
        .expect("must refuse");
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err}");
}

#[tokio::test]
async fn nothing_listening_is_unreachable_after_the_patience() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = SshTarget {
        host: "127.0.0.1".into(),
        port: 1,
        user: "root".into(),
        identity: {
            let key = dir.path().join("k");
            ssh_keygen(&key);
            key
        },
        host_key: HostKeyPolicy::TrustOnFirstUse,
        known_hosts: dir.path().join("kh"),
    };
    let err = SshSession::connect(&nowhere, Duration::from_secs(1))
        .await
        .err()
        .expect("nothing listens");
    assert!(matches!(err, SshError::Unreachable { .. }), "{err}");
}

#[tokio::test]
async fn an_image_is_uploaded_once_and_verified() {
    let host = SshHost::start(None);
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("guest.img");
    let data: Vec<u8> = (0..20 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&image, &data).unwrap();
    let pinned = HostKeyPolicy::Fingerprint(host.fingerprint.clone());
    let session = SshSession::connect(
        &host.target(pinned, dir.path().join("kh")),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let cache = format!("{}/cache", host.scratch());
    let mut reported = 0;
    let first = transfer::upload_cached(&session, &image, &cache, |sent, _| reported = sent)
        .await
        .unwrap();
    assert_eq!(first.bytes_sent, data.len() as u64);
    assert_eq!(reported, data.len() as u64);
    let remote = session
        .run(
            &format!("sha256sum {}", first.remote_path),
            // A bound, not a speed check: hashing 20 MiB took over 30 s on a loaded
            // 2-core machine; the dispatcher's own hash command allows 600 s.
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    assert!(
        remote.starts_with(&first.sha256),
        "{remote} vs {}",
        first.sha256
    );
    let second = transfer::upload_cached(&session, &image, &cache, |_, _| {})
        .await
        .unwrap();
    assert_eq!(
        second.bytes_sent, 0,
        "the cache must make the second upload free"
    );
    assert_eq!(second.remote_path, first.remote_path);
    assert!(!second.replaced_poisoned);
    // A job on the host rewrites the cached image in place, same size: the next upload
    // must not take it for the image, but send the image again.
    session
        .run(
            &format!(
                "printf POISON | dd of={} bs=1 seek=4096 conv=notrunc 2>/dev/null",
                first.remote_path
            ),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let third = transfer::upload_cached(&session, &image, &cache, |_, _| {})
        .await
        .unwrap();
    assert!(third.replaced_poisoned, "the altered entry was noticed");
    assert_eq!(third.bytes_sent, data.len() as u64, "and replaced");
    let remote = session
        .run(
            &format!("sha256sum {}", third.remote_path),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(remote.starts_with(&first.sha256), "{remote}");
    session
        .run(&format!("rm -rf {cache}"), Duration::from_secs(30))
        .await
        .unwrap();
    session.close().await;
}
