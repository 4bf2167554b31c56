//! The one way qemu is started from a device type's template, wherever it runs: a
//! `qemu-host` device here ([`crate::host`]), a vm_group's VMs on their host
//! ([`crate::vm`]), a `vm` device of a device_group here.
//!
//! [`qemu_command`] turns the template (a device's, with its settings applied when the
//! lab loaded), the images and the network into the command line; the network's MAC
//! addresses come from [`Nic::mac`] and a group's LAN from [`GroupLan`], nowhere else.

use std::time::Duration;

use regex::Regex;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::console::{Console, ConsoleError};
use lab::accel::Accel;
pub use lab::qemu_template::VmImages;
use lab::qemu_template::{LaunchValues, QemuTemplate};

/// qemu user networking for a VM on the dispatcher's own machine: no route out of the
/// VM (`restrict=on`), so neither this machine's loopback (10.0.2.2) nor any network it
/// reaches is open to a job; forwarded ports still work.
pub const ISOLATED_USER_NETDEV: &str = "user,id=n0,restrict=on";

/// qemu user networking for a VM on a vm_group host: it reaches the host device at
/// 10.0.2.2 and anything the host reaches, NATed.
pub const HOST_USER_NETDEV: &str = "user,id=n0";

/// A NIC the dispatcher gives a VM, which decides its MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nic {
    /// The NIC of a `qemu-host` device.
    QemuHost,
    /// The first NIC of the `n`-th VM of a vm_group.
    GroupVm(u8),
    /// The first NIC of the `n`-th node of a device_group (a `vm` device here).
    DeviceVm(u8),
    /// The NIC of the `member`-th VM on the LAN of subnet `subnet`.
    Lan { subnet: u8, member: u8 },
}

impl Nic {
    /// Its MAC address: qemu's locally administered prefix `52:54:00`, then three bytes
    /// that tell the NICs apart.
    pub fn mac(self) -> String {
        let [a, b, c] = match self {
            Nic::QemuHost => [0x00, 0x00, 0x01],
            Nic::GroupVm(n) => numbered(0x12, 0x3410, n),
            Nic::DeviceVm(n) => numbered(0x12, 0x3510, n),
            Nic::Lan { subnet, member } => [0x99, subnet, member],
        };
        format!("52:54:00:{a:02x}:{b:02x}:{c:02x}")
    }
}

/// `[first, base + n]` as three bytes (`base + n` fits in two: at most 0x360f).
fn numbered(first: u8, base: u16, n: u8) -> [u8; 3] {
    let [hi, lo] = (base + u16::from(n)).to_be_bytes();
    [first, hi, lo]
}

/// A VM's network: its own NIC and, in a group, a second NIC on the group's LAN where
/// the group's VMs reach each other directly.
#[derive(Debug, Clone, Default)]
pub struct VmNetwork {
    /// `-netdev` of the first NIC, e.g. `user,id=n0`.
    pub netdev: Option<String>,
    pub mac: Option<String>,
    pub lan: Option<GroupLan>,
}

impl VmNetwork {
    /// A `qemu-host` device: isolated like a VM here (it runs the job's code too), with
    /// `ssh_port` on this machine's loopback forwarded to its port 22.
    pub fn qemu_host(ssh_port: u16) -> Self {
        Self {
            netdev: Some(format!(
                "{ISOLATED_USER_NETDEV},hostfwd=tcp:127.0.0.1:{ssh_port}-:22"
            )),
            mac: Some(Nic::QemuHost.mac()),
            lan: None,
        }
    }

    /// The `n`-th VM of a vm_group, on its host.
    pub fn group_vm(n: u8, lan: GroupLan) -> Self {
        Self {
            netdev: Some(HOST_USER_NETDEV.into()),
            mac: Some(Nic::GroupVm(n).mac()),
            lan: Some(lan),
        }
    }

    /// The `n`-th node of a device_group, a VM on the dispatcher's machine.
    ///
    /// `restrict=on`: the guest runs the job's code on the dispatcher's own machine, and
    /// qemu's user networking would otherwise route 10.0.2.2 to this machine's loopback
    /// (the API, the coordinator's ports, anything listening there) and on to every
    /// network the dispatcher reaches. Its console carries the MultiNode calls and its
    /// group LAN the traffic between nodes, so it needs neither.
    pub fn device_vm(n: u8, lan: GroupLan) -> Self {
        Self {
            netdev: Some(ISOLATED_USER_NETDEV.into()),
            mac: Some(Nic::DeviceVm(n).mac()),
            lan: Some(lan),
        }
    }
}

/// Exit statuses of [`GroupLan::up_command`] that say what the guest lacks.
const NO_NET_TOOL: i32 = 3;
const NO_NIC: i32 = 4;

/// One VM's place on its group's LAN: a qemu multicast socket segment (no bridge, no
/// root on the host, nothing to clean up), one per group, told apart by port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLan {
    pub netdev: String,
    pub mac: String,
    /// The VM's address on the LAN, with prefix (`10.99.7.2/24`).
    pub address: String,
}

impl GroupLan {
    /// The LAN of group `group` (any number; it picks the port and subnet) for the
    /// `member`-th VM of the group (from 0).
    pub fn member(group: u32, member: u8) -> Self {
        let port = 20_000 + group % 40_000;
        let subnet = u8::try_from(group % 250).unwrap_or(0);
        Self {
            netdev: format!("socket,id=n1,mcast=230.0.0.1:{port},localaddr=127.0.0.1"),
            mac: Nic::Lan { subnet, member }.mac(),
            address: format!("10.99.{subnet}.{}/24", u16::from(member) + 2),
        }
    }

    /// The LAN of job `job_id`'s group (a vm_group's VMs, a device_group's nodes).
    pub fn of_job(job_id: u64, member: u8) -> Self {
        let group = u32::try_from(job_id % u64::from(u32::MAX)).unwrap_or(0);
        Self::member(group, member)
    }

    /// The shell command that brings the LAN up inside the VM: the NIC found by its MAC
    /// (images name NICs their own way: `eth1`, `enp0s4`...), then `ip`, else busybox's
    /// or net-tools' `ifconfig`. Exits with [`NO_NIC`] or [`NO_NET_TOOL`] when the guest
    /// has no such NIC (no driver) or neither tool. In a subshell: the console's shell
    /// must outlive it. Short: it is typed into every VM's console, at tens of bytes a
    /// second under nested emulation.
    pub fn up_command(&self) -> String {
        let mac = &self.mac;
        format!(
            "(n=$(grep -lx {mac} /sys/class/net/*/address)||{{ echo no NIC has MAC {mac};exit {NO_NIC};}};\
             n=${{n%%/address*}};n=${{n##*/}};\
             if command -v ip >/dev/null;then ip link set $n up&&ip addr add {addr} dev $n;\
             elif command -v ifconfig >/dev/null;then ifconfig $n {ip} netmask {mask} up;\
             else echo the group LAN needs ip or ifconfig;exit {NO_NET_TOOL};fi)",
            addr = self.address,
            ip = self.ip(),
            mask = self.netmask(),
        )
    }

    /// The dotted netmask of the address's prefix, for `ifconfig`.
    fn netmask(&self) -> std::net::Ipv4Addr {
        let prefix = self
            .address
            .split_once('/')
            .and_then(|(_, p)| p.parse::<u32>().ok())
            .filter(|p| *p <= 32)
            .unwrap_or(32);
        let bits = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
        std::net::Ipv4Addr::from(bits)
    }

    /// The address without its prefix.
    pub fn ip(&self) -> &str {
        self.address.split('/').next().unwrap_or(&self.address)
    }

    /// Brings the LAN up inside the VM from its console, at its prompt.
    pub async fn bring_up<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        console: &mut Console<S>,
        prompt: &Regex,
    ) -> Result<(), LanError> {
        let command = self.up_command();
        let (output, code) = console
            .run(&command, prompt, Duration::from_secs(30))
            .await?;
        if code == NO_NET_TOOL || code == NO_NIC {
            return Err(LanError::Guest(output.trim().to_string()));
        }
        if code != 0 {
            return Err(LanError::Failed {
                command,
                code,
                output: output.trim().to_string(),
            });
        }
        Ok(())
    }
}

/// Why a VM's LAN did not come up.
#[derive(Debug, thiserror::Error)]
pub enum LanError {
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// What the guest lacks (a NIC driver, `ip` and `ifconfig`), as it said: the job's
    /// image's doing, not the lab's.
    #[error("the group LAN: {0}")]
    Guest(String),
    #[error("`{command}` exited with {code}: {output}")]
    Failed {
        command: String,
        code: i32,
        output: String,
    },
}

/// The command line that starts one VM, and its QMP socket when the command has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuCommand {
    pub argv: Vec<String>,
    pub qmp_socket: Option<String>,
}

/// The qemu command line of VM `name` from `template`, in `workdir` (its QMP socket
/// is `workdir/qmp.sock`), booting `images` on `network`. The template's kernel
/// command line (`append`, the device's when the device sets one) goes with a kernel
/// boot.
pub fn qemu_command(
    template: &QemuTemplate,
    accel: Accel,
    name: &str,
    workdir: &str,
    images: &VmImages,
    network: &VmNetwork,
) -> QemuCommand {
    let qmp = format!("{workdir}/qmp.sock");
    let mut values = LaunchValues::new(template, accel, name, workdir, &qmp);
    values.set_images(images);
    if let (Some(netdev), Some(mac)) = (&network.netdev, &network.mac) {
        values.set("netdev", netdev.as_str());
        values.set("mac", mac.as_str());
    }
    if let Some(lan) = &network.lan {
        values.set("lan", lan.netdev.as_str());
        values.set("lan_mac", lan.mac.as_str());
    }
    let argv = template.render(&values);
    let uses_qmp = argv.iter().any(|a| a.contains(&qmp));
    QemuCommand {
        argv,
        qmp_socket: uses_qmp.then_some(qmp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lab::Lab;

    /// The LAN's command as dash and busybox's ash run it, with stand-ins for `ip` and
    /// `ifconfig` that record their arguments (no NIC of this machine is touched): the
    /// NIC found by its MAC (here loopback's, the first NIC with all zeroes), `ip` first,
    /// `ifconfig` without it, and the exit statuses that say what the guest lacks.
    #[test]
    fn the_lan_command_finds_the_nic_by_mac_and_uses_ip_or_ifconfig() {
        let zero_mac = "00:00:00:00:00:00";
        let mut named: Vec<_> = std::fs::read_dir("/sys/class/net")
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        named.sort();
        let nic = named
            .iter()
            .find(|p| {
                std::fs::read_to_string(p.join("address")).is_ok_and(|a| a.trim() == zero_mac)
            })
            .and_then(|p| p.file_name())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let lan = GroupLan {
            mac: zero_mac.into(),
            ..GroupLan::member(7, 0)
        };
        let absent = GroupLan::member(7, 0);
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls");
        let tools = |names: &[&str]| {
            let bin = dir.path().join(names.join("-") + "-bin");
            std::fs::create_dir_all(&bin).unwrap();
            std::os::unix::fs::symlink("/bin/grep", bin.join("grep")).unwrap();
            for name in names {
                let stub = bin.join(name);
                std::fs::write(
                    &stub,
                    format!("#!/bin/sh\necho \"{name} $*\" >>{}\n", log.display()),
                )
                .unwrap();
                std::fs::set_permissions(
                    &stub,
                    std::os::unix::fs::PermissionsExt::from_mode(0o755),
                )
                .unwrap();
            }
            bin.display().to_string()
        };
        let (grep_only, with_ip, with_ifconfig) =
            (tools(&[]), tools(&["ip", "ifconfig"]), tools(&["ifconfig"]));
        for shell in [&["/bin/sh"][..], &["/bin/busybox", "sh"][..]] {
            let run = |lan: &GroupLan, path: &str| {
                let _ = std::fs::remove_file(&log);
                let out = std::process::Command::new(shell[0])
                    .args(&shell[1..])
                    .arg("-c")
                    .arg(lan.up_command())
                    .env_clear()
                    .env("PATH", path)
                    .output()
                    .unwrap();
                let calls = std::fs::read_to_string(&log).unwrap_or_default();
                (
                    out.status.code(),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    calls,
                )
            };
            let (code, said, _) = run(&absent, &with_ip);
            assert_eq!(code, Some(NO_NIC), "{shell:?}: {said}");
            assert!(
                said.contains(&format!("no NIC has MAC {}", absent.mac)),
                "{said}"
            );
            let (code, said, _) = run(&lan, &grep_only);
            assert_eq!(code, Some(NO_NET_TOOL), "{shell:?}: {said}");
            assert!(said.contains("needs ip or ifconfig"), "{said}");
            let (code, _, calls) = run(&lan, &with_ip);
            assert_eq!(code, Some(0), "{shell:?}");
            assert_eq!(
                calls,
                format!("ip link set {nic} up\nip addr add 10.99.7.2/24 dev {nic}\n"),
                "{shell:?}"
            );
            let (code, _, calls) = run(&lan, &with_ifconfig);
            assert_eq!(code, Some(0), "{shell:?}");
            assert_eq!(
                calls,
                format!("ifconfig {nic} 10.99.7.2 netmask 255.255.255.0 up\n"),
                "{shell:?}"
            );
        }
    }

    #[test]
    fn macs_follow_one_scheme() {
        assert_eq!(Nic::QemuHost.mac(), "52:54:00:00:00:01");
        assert_eq!(Nic::GroupVm(0).mac(), "52:54:00:12:34:10");
        assert_eq!(Nic::GroupVm(3).mac(), "52:54:00:12:34:13");
        assert_eq!(Nic::DeviceVm(0).mac(), "52:54:00:12:35:10");
        assert_eq!(Nic::DeviceVm(1).mac(), "52:54:00:12:35:11");
        assert_eq!(
            Nic::Lan {
                subnet: 7,
                member: 2
            }
            .mac(),
            "52:54:00:99:07:02"
        );
        // A vm_group has up to 250 VMs: every MAC stays six bytes and distinct.
        let macs: std::collections::BTreeSet<String> = (0..=u8::MAX)
            .flat_map(|n| [Nic::GroupVm(n).mac(), Nic::DeviceVm(n).mac()])
            .collect();
        assert_eq!(macs.len(), 512);
        assert!(macs.iter().all(|m| m.len() == 17), "{macs:?}");
    }

    #[test]
    fn group_lans_differ_by_group_and_member() {
        let a = GroupLan::member(7, 0);
        let b = GroupLan::member(7, 1);
        let other = GroupLan::member(8, 0);
        assert_eq!(a.netdev, b.netdev);
        assert_ne!(a.netdev, other.netdev);
        assert_ne!(a.mac, b.mac);
        assert_eq!((a.ip(), b.ip()), ("10.99.7.2", "10.99.7.3"));
        assert_eq!(b.mac, "52:54:00:99:07:01");
        assert_eq!(
            a.netdev,
            "socket,id=n1,mcast=230.0.0.1:20007,localaddr=127.0.0.1"
        );
        assert_eq!(GroupLan::of_job(7, 1), b);
        assert_eq!(
            GroupLan::of_job(u64::from(u32::MAX) + 7, 1),
            b,
            "a job id past u32 wraps"
        );
    }

    fn kvm() -> QemuTemplate {
        Lab::builtin().unwrap().device_types["kvm"]
            .qemu()
            .unwrap()
            .clone()
    }

    fn kernel_boot() -> VmImages {
        VmImages {
            kernel: Some("/c/vmlinuz".into()),
            ramdisk: Some("/c/initrd".into()),
            ..Default::default()
        }
    }

    /// The value after `flag` in `argv`.
    fn after<'a>(argv: &'a [String], flag: &str) -> Option<&'a str> {
        let at = argv.iter().position(|a| a == flag)?;
        argv.get(at + 1).map(String::as_str)
    }

    #[test]
    fn a_group_vm_has_its_nic_its_lan_and_the_kernel_command_line() {
        let lan = GroupLan::of_job(42, 1);
        let command = qemu_command(
            &kvm(),
            Accel::Tcg,
            "lava-42-client",
            "/h/vms/client",
            &kernel_boot(),
            &VmNetwork::group_vm(1, lan.clone()),
        );
        let argv = &command.argv;
        assert_eq!(argv[0], "qemu-system-x86_64");
        assert_eq!(after(argv, "-kernel"), Some("/c/vmlinuz"));
        assert_eq!(
            after(argv, "-append"),
            Some("console=ttyS0 panic=-1 quiet no_timer_check")
        );
        assert!(argv.contains(&"user,id=n0".to_string()), "{argv:?}");
        assert!(argv.contains(&lan.netdev), "{argv:?}");
        assert!(
            argv.iter()
                .any(|a| a.contains("netdev=n0,mac=52:54:00:12:34:11,")),
            "{argv:?}"
        );
        assert!(
            argv.iter()
                .any(|a| a.contains(&format!("mac={},", lan.mac))),
            "{argv:?}"
        );
        assert_eq!(
            command.qmp_socket.as_deref(),
            Some("/h/vms/client/qmp.sock")
        );
    }

    #[test]
    fn a_device_vm_is_isolated_on_its_own_macs() {
        let command = qemu_command(
            &kvm(),
            Accel::Kvm,
            "lava-1-a",
            "/w/vms/a",
            &VmImages {
                image: Some("/i/disk.img".into()),
                ..Default::default()
            },
            &VmNetwork::device_vm(0, GroupLan::of_job(1, 0)),
        );
        let argv = &command.argv;
        assert!(argv.contains(&ISOLATED_USER_NETDEV.to_string()), "{argv:?}");
        assert!(
            argv.iter().any(|a| a.contains("mac=52:54:00:12:35:10,")),
            "{argv:?}"
        );
        // A disk image boot: no kernel, so no kernel command line.
        assert!(!argv.contains(&"-append".to_string()), "{argv:?}");
        assert!(argv.contains(&"file=/i/disk.img,if=virtio,format=raw,snapshot=on".into()));
    }

    #[test]
    fn a_qemu_host_forwards_its_ssh_port_and_has_no_lan() {
        let command = qemu_command(
            &kvm(),
            Accel::Tcg,
            "host",
            "/w/host",
            &kernel_boot(),
            &VmNetwork::qemu_host(2222),
        );
        let argv = &command.argv;
        assert!(
            argv.contains(&format!(
                "{ISOLATED_USER_NETDEV},hostfwd=tcp:127.0.0.1:2222-:22"
            )),
            "{argv:?}"
        );
        assert!(
            argv.iter().any(|a| a.contains("mac=52:54:00:00:00:01,")),
            "{argv:?}"
        );
        assert!(!argv.iter().any(|a| a.contains("netdev=n1")), "{argv:?}");
    }
}
