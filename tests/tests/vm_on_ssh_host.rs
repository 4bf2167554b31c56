//! VMs on an `ssh-host` device (sshd in a network namespace), on real qemu: images
//! uploaded by SFTP, the VM launched from the `kvm` device type's template over SSH,
//! its serial console attached through the SSH pty, prompt reached, a command run,
//! and teardown leaving no qemu behind.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

use std::time::Duration;

use hostctl::console::ConsoleLog;
use hostctl::ssh::SshSession;
use hostctl::transfer;
use hostctl::vm::{self, GroupLan, VmImages, VmNetwork, VmPlan};
use lab::Lab;
use lab::accel::{self, AccelChoice, HostFacts};
use regex::Regex;
use system_tests::{SshHost, test_images};

async fn connect(host: &SshHost, known_hosts: &std::path::Path) -> SshSession {
    let target = host.pinned_target(known_hosts.to_path_buf());
    SshSession::connect(&target, Duration::from_secs(30))
        .await
        .unwrap()
}

/// A fresh ssh-host with the guest kernel and initramfs uploaded into its cache.
struct Prepared {
    host: SshHost,
    session: SshSession,
    kernel: transfer::Uploaded,
    initrd: transfer::Uploaded,
    _known_hosts: tempfile::TempDir,
}

async fn prepared_host(images: &system_tests::TestImages) -> Prepared {
    let host = SshHost::start(None);
    let known_hosts = tempfile::tempdir().unwrap();
    let session = connect(&host, &known_hosts.path().join("known_hosts")).await;
    let cache = format!("{}/cache", host.scratch());
    let kernel = transfer::upload_cached(&session, &images.guest_kernel, &cache, |_, _| {})
        .await
        .unwrap();
    let initrd = transfer::upload_cached(&session, &images.guest_initramfs, &cache, |_, _| {})
        .await
        .unwrap();
    Prepared {
        host,
        session,
        kernel,
        initrd,
        _known_hosts: known_hosts,
    }
}

/// Boots `count` guests at once on one ssh-host and checks each reaches its prompt and
/// runs a command; then stops them all and checks no qemu is left.
async fn boot_guests(count: usize) {
    let images = test_images();
    let Prepared {
        host,
        session,
        kernel,
        initrd,
        ..
    } = prepared_host(&images).await;
    let facts = HostFacts::from_probe_output(
        &session
            .run(accel::PROBE_COMMAND, Duration::from_secs(30))
            .await
            .unwrap(),
    );
    let accel = accel::decide(AccelChoice::Auto, facts).accel;
    let lab = Lab::builtin().unwrap();
    let template = lab.device_types["kvm"].qemu().unwrap().clone();
    let prompt = Regex::new(&images.guest_prompt).unwrap();
    let mut launched = Vec::new();
    for i in 0..count {
        let name = format!("guest-{i}");
        let plan = VmPlan::from_template(
            &name,
            &format!("{}/vms/{name}", host.scratch()),
            &template,
            accel,
            &VmImages {
                kernel: Some(kernel.remote_path.clone()),
                ramdisk: Some(initrd.remote_path.clone()),
                ..Default::default()
            },
            &VmNetwork {
                netdev: Some("user,id=n0".into()),
                mac: Some(format!("52:54:00:12:34:{:02x}", 0x10 + i)),
                lan: Some(GroupLan::member(1, u8::try_from(i).unwrap())),
            },
        );
        launched.push(
            vm::launch(&session, &plan, ConsoleLog::default())
                .await
                .unwrap(),
        );
    }
    let booted = futures::future::join_all(
        launched
            .iter_mut()
            .map(|vm| vm.wait_for_prompt(&prompt, None, Duration::from_secs(240))),
    )
    .await;
    for (vm, result) in launched.iter().zip(booted) {
        result.unwrap_or_else(|e| panic!("{}: {e}", vm.name));
    }
    // The group LAN: every VM reaches the next one directly.
    for (i, vm) in launched.iter_mut().enumerate() {
        vm.configure_lan(&GroupLan::member(1, u8::try_from(i).unwrap()), &prompt)
            .await
            .unwrap();
    }
    for (i, vm) in launched.iter_mut().enumerate() {
        let peer = GroupLan::member(1, u8::try_from((i + 1) % count).unwrap());
        let (out, code) = vm
            .console
            .run(
                &format!("ping -c 1 -W 10 {}", peer.ip()),
                &prompt,
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert_eq!(code, 0, "{} cannot reach {}: {out}", vm.name, peer.ip());
    }
    // And the host device, through the VM's own NIC.
    let (banner, _) = launched[0]
        .console
        .run(
            &format!("echo | nc -w 10 {} 22", host.address),
            &prompt,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(
        banner.contains("SSH-2.0"),
        "the guest cannot reach the host: {banner}"
    );
    for vm in &mut launched {
        let (out, code) = vm
            .console
            .run(
                "cat /proc/sys/kernel/hostname",
                &prompt,
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        assert_eq!(code, 0, "{}: {out}", vm.name);
    }
    assert_eq!(
        host.processes()
            .iter()
            .filter(|p| p.starts_with("qemu-system"))
            .count(),
        count,
        "{:?}",
        host.processes()
    );
    for vm in launched {
        vm.stop(&session).await.unwrap();
    }
    host.assert_no_qemu();
    let workdirs = session
        .run(
            &format!("ls {}/vms | wc -l", host.scratch()),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(workdirs.trim(), "0", "VM work directories left behind");
    session.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_boots_on_an_ssh_host_and_leaves_nothing_behind() {
    boot_guests(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_guests_boot_at_once_on_one_host() {
    boot_guests(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_with_commands_prepare_then_attach_the_console() {
    let images = test_images();
    let Prepared {
        host,
        session,
        kernel,
        initrd,
        ..
    } = prepared_host(&images).await;
    // As a test writer would write them in the job: all but the last prepare, the last
    // attaches to the console.
    let commands = vec![
        format!("cp {} vmlinuz", kernel.remote_path),
        format!("cp {} initrd.gz", initrd.remote_path),
        "qemu-system-x86_64 -accel tcg -m 256 -nodefaults -nographic -no-reboot -serial stdio \
         -kernel vmlinuz -initrd initrd.gz -append 'console=ttyS0 panic=-1'"
            .to_string(),
    ];
    let plan = VmPlan::from_launch_with(
        "custom",
        &format!("{}/vms/custom", host.scratch()),
        &commands,
    )
    .unwrap();
    let mut vm = vm::launch(&session, &plan, ConsoleLog::default())
        .await
        .unwrap();
    vm.wait_for_prompt(
        &Regex::new(&images.guest_prompt).unwrap(),
        None,
        Duration::from_secs(240),
    )
    .await
    .unwrap();
    vm.stop(&session).await.unwrap();
    assert!(
        !host.processes().iter().any(|p| p.starts_with("qemu")),
        "{:?}",
        host.processes()
    );
    // A preparation command that fails stops the launch with its error.
    let bad = VmPlan::from_launch_with(
        "bad",
        &format!("{}/vms/bad", host.scratch()),
        &["false".into(), "true".into()],
    )
    .unwrap();
    let err = vm::launch(&session, &bad, ConsoleLog::default())
        .await
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("`false` failed"), "{err}");
    session.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_kernel_panic_is_reported_as_a_panic() {
    let images = test_images();
    let Prepared {
        host,
        session,
        kernel,
        ..
    } = prepared_host(&images).await;
    // No initramfs and no root device: the kernel cannot mount a root and panics.
    let commands = vec![format!(
        "qemu-system-x86_64 -accel tcg -m 256 -nodefaults -nographic -no-reboot -serial stdio -kernel {} -append 'console=ttyS0 panic=-1'",
        kernel.remote_path
    )];
    let plan = VmPlan::from_launch_with(
        "panics",
        &format!("{}/vms/panics", host.scratch()),
        &commands,
    )
    .unwrap();
    let mut vm = vm::launch(&session, &plan, ConsoleLog::default())
        .await
        .unwrap();
    let err = vm
        .wait_for_prompt(
            &Regex::new(&images.guest_prompt).unwrap(),
            None,
            Duration::from_secs(240),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("kernel panic on the console"),
        "{err}"
    );
    vm.stop(&session).await.unwrap();
    assert!(
        !host.processes().iter().any(|p| p.starts_with("qemu")),
        "{:?}",
        host.processes()
    );
    session.close().await;
}
