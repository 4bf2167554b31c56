//! Deciding between KVM and TCG for the machine that will run qemu.
//!
//! `/dev/kvm` opening is not enough: some clouds expose a PVM `/dev/kvm` on which stock
//! guest kernels hang forever. KVM is chosen only when the CPU advertises hardware
//! virtualization (`vmx`/`svm`), `/dev/kvm` opens read-write, and no PVM module is loaded.

use std::fmt;
use std::fs::OpenOptions;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What an admin asks for in a device type or device file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// Detect on the machine that runs qemu.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// The accelerator qemu is started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// The value for qemu's `-accel`.
    pub fn as_qemu_arg(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_qemu_arg())
    }
}

/// What was observed on the machine that will run qemu (local or, via SSH, a host device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostFacts {
    /// `/dev/kvm` exists and opens read-write.
    pub kvm_device_usable: bool,
    /// The CPU flags include `vmx` or `svm`.
    pub cpu_has_virtualization: bool,
    /// The PVM module (`/sys/module/kvm_pvm`) is loaded.
    pub pvm_loaded: bool,
    /// What the machine's CPU runs natively (`uname -m`); KVM runs guests of that
    /// architecture only.
    pub arch: Arch,
}

/// A CPU architecture family, as KVM sees it: a guest runs under KVM only on a
/// machine of its own family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Arch {
    X86_64,
    Aarch64,
    Armv7,
    /// Anything else, or not known: never the same as a guest's.
    #[default]
    Other,
}

impl Arch {
    /// From `uname -m` or a device type's `arch` (`x86_64`, `amd64`, `aarch64`,
    /// `arm64`, `armv7l`, `armv7`, `armhf`...).
    pub fn parse(name: &str) -> Self {
        match name.trim() {
            "x86_64" | "amd64" => Arch::X86_64,
            "aarch64" | "arm64" => Arch::Aarch64,
            name if name.starts_with("armv7") || name == "armhf" || name == "arm" => Arch::Armv7,
            _ => Arch::Other,
        }
    }
}

/// The decision and the reason for it, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelDecision {
    pub accel: Accel,
    pub reason: String,
}

impl HostFacts {
    /// Observes this machine.
    pub fn probe_local() -> Self {
        Self::probe_under(Path::new("/"))
    }

    /// Observes a machine whose root file system is at `root` (tests use a fake tree).
    pub fn probe_under(root: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
        Self {
            kvm_device_usable: OpenOptions::new()
                .read(true)
                .write(true)
                .open(root.join("dev/kvm"))
                .is_ok(),
            cpu_has_virtualization: cpu_flags_have_virtualization(&cpuinfo),
            pvm_loaded: root.join("sys/module/kvm_pvm").exists(),
            arch: Arch::parse(std::env::consts::ARCH),
        }
    }
}

/// A shell command whose output [`HostFacts::from_probe_output`] reads: the same
/// observations made on another machine (a host device, over SSH).
pub const PROBE_COMMAND: &str = "{ [ -r /dev/kvm ] && [ -w /dev/kvm ] && echo kvm-usable; \
    [ -d /sys/module/kvm_pvm ] && echo pvm-loaded; echo \"machine $(uname -m)\"; \
    grep -m1 '^flags' /proc/cpuinfo; } 2>/dev/null; true";

impl HostFacts {
    /// Reads the output of [`PROBE_COMMAND`].
    pub fn from_probe_output(output: &str) -> Self {
        Self {
            kvm_device_usable: output.lines().any(|l| l.trim() == "kvm-usable"),
            cpu_has_virtualization: cpu_flags_have_virtualization(output),
            pvm_loaded: output.lines().any(|l| l.trim() == "pvm-loaded"),
            arch: output
                .lines()
                .find_map(|l| l.trim().strip_prefix("machine "))
                .map_or(Arch::Other, Arch::parse),
        }
    }
}

fn cpu_flags_have_virtualization(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .flat_map(|line| line.split_whitespace())
        .any(|flag| flag == "vmx" || flag == "svm")
}

/// Decides the accelerator for a guest of `guest_arch` (its device type's `arch`): an
/// explicit choice wins; `auto` picks KVM only on a machine of the guest's own
/// architecture where KVM works, TCG (emulation) otherwise.
pub fn decide_for(choice: AccelChoice, facts: HostFacts, guest_arch: &str) -> AccelDecision {
    let guest = Arch::parse(guest_arch);
    if choice == AccelChoice::Auto && (guest == Arch::Other || guest != facts.arch) {
        return AccelDecision {
            accel: Accel::Tcg,
            reason: format!(
                "a {guest_arch} guest on a {:?} machine runs emulated",
                facts.arch
            ),
        };
    }
    decide(choice, facts)
}

/// Decides the accelerator: an explicit choice wins; `auto` picks KVM only when it works.
pub fn decide(choice: AccelChoice, facts: HostFacts) -> AccelDecision {
    let (accel, reason) = match choice {
        AccelChoice::Kvm => (Accel::Kvm, "kvm set in the configuration".to_string()),
        AccelChoice::Tcg => (Accel::Tcg, "tcg set in the configuration".to_string()),
        AccelChoice::Auto if facts.pvm_loaded => (
            Accel::Tcg,
            "/dev/kvm is PVM (kvm_pvm loaded), on which stock kernels hang".to_string(),
        ),
        // x86 CPUs list their virtualization extension; ARM ones do not, and there a
        // usable /dev/kvm is the test.
        AccelChoice::Auto if facts.arch == Arch::X86_64 && !facts.cpu_has_virtualization => {
            (Accel::Tcg, "the CPU has no vmx/svm flag".to_string())
        }
        AccelChoice::Auto if !facts.kvm_device_usable => (
            Accel::Tcg,
            "/dev/kvm is missing or cannot be opened read-write".to_string(),
        ),
        AccelChoice::Auto => (
            Accel::Kvm,
            "vmx/svm present and /dev/kvm usable".to_string(),
        ),
    };
    AccelDecision { accel, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_root(kvm: bool, flags: &str, pvm: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::fs::write(
            dir.path().join("proc/cpuinfo"),
            format!("processor\t: 0\nflags\t\t: fpu sse2 {flags}\n\n"),
        )
        .unwrap();
        if kvm {
            std::fs::create_dir_all(dir.path().join("dev")).unwrap();
            std::fs::write(dir.path().join("dev/kvm"), "").unwrap();
        }
        if pvm {
            std::fs::create_dir_all(dir.path().join("sys/module/kvm_pvm")).unwrap();
        }
        dir
    }

    fn auto(kvm: bool, flags: &str, pvm: bool) -> Accel {
        let root = fake_root(kvm, flags, pvm);
        decide(AccelChoice::Auto, HostFacts::probe_under(root.path())).accel
    }

    #[test]
    fn kvm_only_with_flags_device_and_no_pvm() {
        assert_eq!(auto(true, "svm", false), Accel::Kvm);
        assert_eq!(auto(true, "vmx", false), Accel::Kvm);
        assert_eq!(auto(true, "svm", true), Accel::Tcg, "PVM must give TCG");
        assert_eq!(auto(true, "hypervisor", false), Accel::Tcg);
        assert_eq!(auto(false, "svm", false), Accel::Tcg);
        assert_eq!(auto(true, "svmx", false), Accel::Tcg, "whole flags only");
    }

    #[test]
    fn the_probe_command_reads_the_same_facts() {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(PROBE_COMMAND)
            .output()
            .unwrap();
        let remote = HostFacts::from_probe_output(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(remote, HostFacts::probe_local());
        let parsed = HostFacts::from_probe_output("kvm-usable\nflags\t: fpu svm sse\n");
        assert!(parsed.kvm_device_usable && parsed.cpu_has_virtualization && !parsed.pvm_loaded);
    }

    #[test]
    fn explicit_choice_overrides_detection() {
        let facts = HostFacts::default();
        assert_eq!(decide(AccelChoice::Kvm, facts).accel, Accel::Kvm);
        let good = HostFacts {
            kvm_device_usable: true,
            cpu_has_virtualization: true,
            pvm_loaded: false,
            arch: Arch::X86_64,
        };
        assert_eq!(decide(AccelChoice::Tcg, good).accel, Accel::Tcg);
    }

    #[test]
    fn a_guest_of_another_architecture_is_emulated() {
        let x86 = HostFacts {
            kvm_device_usable: true,
            cpu_has_virtualization: true,
            pvm_loaded: false,
            arch: Arch::X86_64,
        };
        assert_eq!(
            decide_for(AccelChoice::Auto, x86, "x86_64").accel,
            Accel::Kvm
        );
        assert_eq!(
            decide_for(AccelChoice::Auto, x86, "aarch64").accel,
            Accel::Tcg
        );
        assert_eq!(
            decide_for(AccelChoice::Auto, x86, "armv7").accel,
            Accel::Tcg
        );
        assert_eq!(
            decide_for(AccelChoice::Auto, x86, "sparc").accel,
            Accel::Tcg
        );
        let reason = decide_for(AccelChoice::Auto, x86, "aarch64").reason;
        assert!(reason.contains("aarch64"), "{reason}");
        assert_eq!(Arch::parse("arm64"), Arch::Aarch64);
        assert_eq!(Arch::parse("armv7l"), Arch::Armv7);
        let parsed = HostFacts::from_probe_output("machine aarch64\n");
        assert_eq!(parsed.arch, Arch::Aarch64);
    }

    #[test]
    fn this_machine_is_consistent_with_its_facts() {
        // On a PVM machine (as in this project's CI) auto must give TCG; elsewhere the
        // decision must follow what the machine shows.
        let facts = HostFacts::probe_local();
        let decision = decide(AccelChoice::Auto, facts);
        let kvm_ok = facts.kvm_device_usable && facts.cpu_has_virtualization && !facts.pvm_loaded;
        assert_eq!(
            decision.accel == Accel::Kvm,
            kvm_ok,
            "{decision:?} for {facts:?}"
        );
        if Path::new("/sys/module/kvm_pvm").exists() {
            assert_eq!(decision.accel, Accel::Tcg);
        }
    }
}
