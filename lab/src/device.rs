//! Devices: one file per device instance (`<devices dir>/<hostname>.toml`), read as a
//! [`DeviceFile`] and kept, checked and resolved to its type, as a [`Device`].

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Deserializer};

use super::accel::AccelChoice;
use super::device_type::DeviceType;
use super::qemu_template::{QemuTemplate, VmImages};

/// One device file, as written (unchecked).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceFile {
    /// Unique in the lab; must equal the file name without `.toml`.
    pub hostname: String,
    pub device_type: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Overrides the device type's accelerator choice.
    #[serde(default)]
    pub accel: Option<AccelChoice>,
    #[serde(default)]
    pub ssh: Option<SshSettings>,
    #[serde(default)]
    pub power: Option<PowerCommands>,
    #[serde(default)]
    pub console: Option<ConsoleSettings>,
    #[serde(default)]
    pub qemu: Option<QemuOverridesFile>,
}

/// Per-device qemu settings and, for `qemu-host` devices, the host image to boot.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct QemuOverridesFile {
    #[serde(default)]
    pub memory_mib: Option<u32>,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    #[serde(default)]
    pub ramdisk: Option<PathBuf>,
    #[serde(default)]
    pub rootfs: Option<PathBuf>,
    #[serde(default)]
    pub image: Option<PathBuf>,
    #[serde(default)]
    pub append: Option<String>,
}

/// A checked device, resolved to its device type.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Device {
    /// Unique in the lab; the file name without `.toml`.
    pub hostname: String,
    pub device_type: Arc<DeviceType>,
    pub description: Option<String>,
    /// Jobs select devices by tags (every tag a job asks for must be here).
    pub tags: Vec<String>,
    pub kind: DeviceKind,
}

/// How the dispatcher gets the device to a shell, with everything that needs: the
/// variant is the device type's kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceKind {
    /// A VM started on the dispatcher's machine from its type's template, with the
    /// device's settings applied; it boots its job's images.
    Vm { qemu: QemuTemplate },
    /// A host device booted here with qemu from `images`, then reached over SSH (`ssh`
    /// gives the local port forwarded to its port 22).
    QemuHost {
        qemu: QemuTemplate,
        /// Paths on this machine; a kernel or a disk image at least. Boxed: the
        /// largest variant by far otherwise, and read once per boot.
        images: Box<VmImages>,
        ssh: SshSettings,
    },
    /// A running machine reached over SSH.
    SshHost { ssh: SshSettings },
    /// A board powered by the admin's commands, its console the admin's command, then
    /// reached over SSH.
    Board {
        ssh: SshSettings,
        power: PowerCommands,
        console: ConsoleSettings,
    },
}

impl DeviceKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            DeviceKind::Vm { .. } => "vm",
            DeviceKind::QemuHost { .. } => "qemu-host",
            DeviceKind::SshHost { .. } => "ssh-host",
            DeviceKind::Board { .. } => "board",
        }
    }
}

impl Device {
    /// How the device is reached over SSH, for the kinds that are.
    pub fn ssh(&self) -> Option<&SshSettings> {
        match &self.kind {
            DeviceKind::QemuHost { ssh, .. }
            | DeviceKind::SshHost { ssh }
            | DeviceKind::Board { ssh, .. } => Some(ssh),
            DeviceKind::Vm { .. } => None,
        }
    }
}

/// How to reach the device over SSH once it is up.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshSettings {
    /// Host name or IP address.
    pub address: String,
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    #[serde(default = "default_ssh_user")]
    pub user: String,
    /// Private key for this device; unset: the lab's key from the daemon configuration.
    #[serde(default)]
    pub identity_file: Option<PathBuf>,
    /// The host key to expect.
    pub host_key: HostKeyPolicy,
}

fn default_ssh_port() -> u16 {
    22
}

fn default_ssh_user() -> String {
    "root".to_string()
}

/// How a device's SSH host key is verified. There is no "don't check".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// The key's OpenSSH SHA-256 fingerprint, `SHA256:` and 43 base64 characters
    /// (as `ssh-keygen -lf` prints it).
    Fingerprint(String),
    /// Accept the first key seen and record it in the lab's known-hosts file; refuse
    /// any other key afterwards.
    TrustOnFirstUse,
}

pub const TRUST_ON_FIRST_USE: &str = "trust-on-first-use";

impl HostKeyPolicy {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == TRUST_ON_FIRST_USE {
            return Ok(Self::TrustOnFirstUse);
        }
        let Some(digest) = text.strip_prefix("SHA256:") else {
            return Err(format!(
                "expected \"SHA256:<43 base64 characters>\" or \"{TRUST_ON_FIRST_USE}\", found \"{text}\""
            ));
        };
        let base64 = |c: char| c.is_ascii_alphanumeric() || c == '+' || c == '/';
        if digest.len() != 43 || !digest.chars().all(base64) {
            return Err(format!(
                "a SHA256 fingerprint has 43 base64 characters after \"SHA256:\", found \"{digest}\""
            ));
        }
        Ok(Self::Fingerprint(text.to_string()))
    }
}

impl<'de> Deserialize<'de> for HostKeyPolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        HostKeyPolicy::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Commands the dispatcher runs on its own machine to power a board.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerCommands {
    pub on: String,
    pub off: String,
    pub reset: String,
}

/// A command whose stdin/stdout is the board's serial console (e.g. `telnet ser2net 7001`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSettings {
    pub command: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_key_policies_parse_strictly() {
        assert_eq!(
            HostKeyPolicy::parse("trust-on-first-use"),
            Ok(HostKeyPolicy::TrustOnFirstUse)
        );
        let good = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s";
        assert_eq!(
            HostKeyPolicy::parse(good),
            Ok(HostKeyPolicy::Fingerprint(good.into()))
        );
        assert!(HostKeyPolicy::parse("SHA256:short").is_err());
        assert!(HostKeyPolicy::parse("MD5:aa:bb").is_err());
        assert!(HostKeyPolicy::parse("none").is_err());
    }
}
