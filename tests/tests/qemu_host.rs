//! A `qemu-host` device on real qemu: the project's host-device image booted here under
//! TCG with a CPU that has SVM and nested paging, reached over SSH with its pinned host key,
//! the guest image uploaded into it by SFTP, and a guest launched inside it with nested
//! KVM and brought to its prompt. Nothing is left running afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

use std::time::Duration;

use hostctl::console::ConsoleLog;
use hostctl::host;
use hostctl::ssh::SshTarget;
use hostctl::transfer;
use hostctl::vm::{self, VmImages, VmNetwork, VmPlan};
use lab::Lab;
use lab::accel::{self, Accel, AccelChoice, HostFacts};
use lab::device::HostKeyPolicy;
use regex::Regex;
use system_tests::{free_port, test_images};

/// How to reach the project's host-device image booted here, and its images.
fn host_device(dir: &tempfile::TempDir) -> (SshTarget, VmImages) {
    let images = test_images();
    let ssh = SshTarget {
        host: "127.0.0.1".into(),
        port: free_port(),
        user: "root".into(),
        identity: images.lab_key.clone(),
        host_key: HostKeyPolicy::Fingerprint(images.hostdev_fingerprint.clone()),
        known_hosts: dir.path().join("known_hosts"),
    };
    let boot = VmImages {
        kernel: Some(images.hostdev_kernel.display().to_string()),
        ramdisk: Some(images.hostdev_initramfs.display().to_string()),
        rootfs: Some(images.hostdev_rootfs.display().to_string()),
        ..Default::default()
    };
    (ssh, boot)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_runs_with_nested_kvm_inside_a_qemu_host() {
    let images = test_images();
    let lab = Lab::builtin().unwrap();
    let host_type = &lab.device_types["qemu-host"];
    let dir = tempfile::tempdir().unwrap();
    let (ssh, boot) = host_device(&dir);
    let local_accel = accel::decide(AccelChoice::Auto, HostFacts::probe_local()).accel;
    let up = host::boot_qemu_host(
        "qemu-host-test",
        host_type.qemu().unwrap(),
        &boot,
        local_accel,
        &ssh,
        dir.path(),
        &host::ConsoleBoot {
            prompt: &Regex::new(&images.hostdev_prompt).unwrap(),
            login: None,
            timeout: host_type.boot_timeout,
        },
        ConsoleLog::default(),
    )
    .await
    .unwrap();
    let qemu_pid = up.local.as_ref().and_then(|p| p.pid()).unwrap();

    // Inside the host device, KVM works (nested, on TCG's emulated SVM).
    let facts = HostFacts::from_probe_output(
        &up.ssh
            .run(accel::PROBE_COMMAND, Duration::from_secs(30))
            .await
            .unwrap(),
    );
    let guest_accel = accel::decide(AccelChoice::Auto, facts);
    assert_eq!(guest_accel.accel, Accel::Kvm, "{guest_accel:?}");

    let cache = transfer::DEFAULT_REMOTE_CACHE;
    let kernel = transfer::upload_cached(&up.ssh, &images.guest_kernel, cache, |_, _| {})
        .await
        .unwrap();
    let initrd = transfer::upload_cached(&up.ssh, &images.guest_initramfs, cache, |_, _| {})
        .await
        .unwrap();
    assert!(kernel.bytes_sent > 0 && initrd.bytes_sent > 0);
    let again = transfer::upload_cached(&up.ssh, &images.guest_kernel, cache, |_, _| {})
        .await
        .unwrap();
    assert_eq!(again.bytes_sent, 0);

    // The kvm type boots `quiet`: serial output is slow under nested KVM (the guest
    // reaches its prompt in ~12 s with it, ~24 s without).
    let template = lab.device_types["kvm"].qemu().unwrap().clone();
    let plan = VmPlan::from_template(
        "guest",
        "/var/lib/lava-dispatcher/vms/guest",
        &template,
        guest_accel.accel,
        &VmImages {
            kernel: Some(kernel.remote_path.clone()),
            ramdisk: Some(initrd.remote_path.clone()),
            ..Default::default()
        },
        &VmNetwork {
            netdev: Some("user,id=n0".into()),
            mac: Some("52:54:00:12:34:56".to_string()),
            lan: None,
        },
    );
    let mut guest = vm::launch(&up.ssh, &plan, ConsoleLog::default())
        .await
        .unwrap();
    let prompt = Regex::new(&images.guest_prompt).unwrap();
    guest
        .wait_for_prompt(&prompt, None, Duration::from_secs(300))
        .await
        .unwrap();
    let (out, code) = guest
        .console
        .run(
            "grep -c processor /proc/cpuinfo",
            &prompt,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    guest.stop(&up.ssh).await.unwrap();
    let left = up
        .ssh
        .exec("pgrep -c qemu-system", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        left.stdout_text().trim(),
        "0",
        "a guest qemu is still running in the host"
    );
    up.shut_down().await;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(qemu_pid).unwrap());
    assert!(
        nix::sys::signal::kill(pid, None).is_err(),
        "the host's qemu ({qemu_pid}) is still running"
    );
}

/// Processes whose command line holds `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

/// A host device that never shows its prompt: the boot fails at its timeout saying so,
/// and its qemu is stopped (nothing is left running).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_never_reaches_its_prompt_fails_and_leaves_nothing() {
    let lab = Lab::builtin().unwrap();
    let host_type = &lab.device_types["qemu-host"];
    let dir = tempfile::tempdir().unwrap();
    let (ssh, boot) = host_device(&dir);
    let name = format!("qemu-host-silent-{}", std::process::id());
    let local_accel = accel::decide(AccelChoice::Auto, HostFacts::probe_local()).accel;
    let booted = host::boot_qemu_host(
        &name,
        host_type.qemu().unwrap(),
        &boot,
        local_accel,
        &ssh,
        dir.path(),
        &host::ConsoleBoot {
            prompt: &Regex::new("this prompt never appears").unwrap(),
            login: None,
            timeout: Duration::from_secs(15),
        },
        ConsoleLog::default(),
    )
    .await;
    let Err(err) = booted else {
        panic!("a host without its prompt came up");
    };
    // It names the host, the prompt it waited for, how long, and what it saw last.
    let text = err.to_string();
    for part in [
        name.as_str(),
        "did not boot",
        "/this prompt never appears/",
        "within 15s",
        "last output",
    ] {
        assert!(text.contains(part), "{part:?} not in {text}");
    }
    assert!(
        processes_with(&name).is_empty(),
        "qemu left: {:?}",
        processes_with(&name)
    );
}
