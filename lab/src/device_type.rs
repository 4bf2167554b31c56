//! Device types: what a lab admin says about a kind of device
//! (`device-types/<name>.toml`), read as a [`DeviceTypeFile`] and kept, checked, as a
//! [`DeviceType`].

use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

use super::login::{ConsoleLogin, LoginFile};
use super::qemu_template::{QemuTemplate, QemuTemplateFile};

/// The `kind` of a device type file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum KindFile {
    Vm,
    QemuHost,
    SshHost,
    Board,
}

impl KindFile {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            KindFile::Vm => "vm",
            KindFile::QemuHost => "qemu-host",
            KindFile::SshHost => "ssh-host",
            KindFile::Board => "board",
        }
    }
}

/// One device type file, as written (unchecked).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceTypeFile {
    /// Must equal the file name without `.toml`.
    pub name: String,
    pub kind: KindFile,
    pub description: String,
    pub arch: String,
    #[serde(default)]
    pub virtualization: bool,
    pub shell_prompt: String,
    /// Seconds.
    pub boot_timeout: u64,
    #[serde(default)]
    pub qemu: Option<QemuTemplateFile>,
    /// The console login of devices of this type, unless a job gives its own.
    #[serde(default)]
    pub login: Option<LoginFile>,
    #[serde(default)]
    pub health_check: Option<HealthCheckFile>,
}

/// `[health_check]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthCheckFile {
    /// The job's file, relative to the type's file.
    pub job: PathBuf,
    #[serde(default)]
    pub every_hours: Option<u32>,
    #[serde(default)]
    pub every_jobs: Option<u32>,
}

/// A device type's health check: the job that tells whether a device of the type is
/// fit to take jobs (LAVA's health check). It runs on a device whose health is
/// `unknown` before any other job, and again when [`HealthCheck::every`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The job's file, as the lab names it in messages.
    pub path: PathBuf,
    /// The job as written (LAVA v1 JSON); it validated against the lab when loaded and
    /// runs on exactly one device of the type.
    pub definition: String,
    pub every: Option<HealthFrequency>,
}

/// How often a good device's health check runs again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthFrequency {
    /// After this many hours since the last check.
    Hours(u32),
    /// After this many jobs since the last check.
    Jobs(u32),
}

/// A checked device type.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeviceType {
    /// Unique in the lab; the file name without `.toml`.
    pub name: String,
    pub kind: TypeKind,
    pub description: String,
    /// CPU architecture of the device (`x86_64`, `armv7`, `aarch64`).
    pub arch: String,
    /// Host kinds: can this device run VMs, i.e. be a vm_group host? Never set on a
    /// `vm` type.
    pub virtualization: bool,
    /// The shell prompt, unless a job gives its own; compiled once, at load.
    pub prompt: Regex,
    /// From power-on or launch to the shell prompt before boot is a failure; more
    /// than zero.
    pub boot_timeout: Duration,
    /// How its console logs in when a job's deploy gives no login keys: the lab's
    /// default for the images it boots.
    pub login: Option<ConsoleLogin>,
    /// Its health check; none: a device's health is what jobs and admins say.
    pub health_check: Option<HealthCheck>,
}

/// How the dispatcher gets a device of a type to a shell, with what the type gives
/// for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeKind {
    /// A virtual machine: launched with qemu on a vm_group host, or on the dispatcher
    /// machine when it is a device of its own.
    Vm(QemuTemplate),
    /// A host device that is itself a qemu VM the dispatcher boots locally and then
    /// reaches over SSH.
    QemuHost(QemuTemplate),
    /// An already running machine reached over SSH.
    SshHost,
    /// A physical board: powered by the admin's commands, its console reached by the
    /// admin's connection command, then reached over SSH.
    Board,
}

impl TypeKind {
    pub fn is_host(&self) -> bool {
        !matches!(self, TypeKind::Vm(_))
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            TypeKind::Vm(_) => "vm",
            TypeKind::QemuHost(_) => "qemu-host",
            TypeKind::SshHost => "ssh-host",
            TypeKind::Board => "board",
        }
    }
}

impl DeviceType {
    /// The qemu template of a kind started with qemu (`vm`, `qemu-host`).
    pub fn qemu(&self) -> Option<&QemuTemplate> {
        match &self.kind {
            TypeKind::Vm(qemu) | TypeKind::QemuHost(qemu) => Some(qemu),
            TypeKind::SshHost | TypeKind::Board => None,
        }
    }

    /// The shell prompt as written.
    pub fn shell_prompt(&self) -> &str {
        self.prompt.as_str()
    }
}
