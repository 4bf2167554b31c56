//! Device types: what a lab admin says about a kind of device (`device-types/<name>.toml`).

use serde::Deserialize;

use super::qemu_template::QemuTemplate;

/// How the dispatcher gets a device of this type to a shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    /// A virtual machine: launched with qemu on a vm_group host, or on the dispatcher
    /// machine when it is a device of its own.
    Vm,
    /// A host device that is itself a qemu VM the dispatcher boots locally and then
    /// reaches over SSH.
    QemuHost,
    /// An already running machine reached over SSH.
    SshHost,
    /// A physical board: powered by the admin's commands, its console reached by the
    /// admin's connection command, then reached over SSH.
    Board,
}

impl DeviceKind {
    pub fn is_host(self) -> bool {
        !matches!(self, DeviceKind::Vm)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Vm => "vm",
            DeviceKind::QemuHost => "qemu-host",
            DeviceKind::SshHost => "ssh-host",
            DeviceKind::Board => "board",
        }
    }
}

/// One device type file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceType {
    /// Must equal the file name without `.toml`.
    pub name: String,
    pub kind: DeviceKind,
    pub description: String,
    /// CPU architecture of the device (`x86_64`, `armv7`, `aarch64`).
    pub arch: String,
    /// Host kinds: can this device run VMs, i.e. be a vm_group host?
    #[serde(default)]
    pub virtualization: bool,
    /// Regular expression matching the shell prompt, unless a job gives its own.
    pub shell_prompt: String,
    /// Seconds from power-on or launch to the shell prompt before boot is a failure.
    pub boot_timeout: u64,
    /// The qemu command line, for `vm` and `qemu-host` kinds.
    #[serde(default)]
    pub qemu: Option<QemuTemplate>,
}
