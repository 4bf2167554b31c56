//! The qemu command line a device type describes, as groups of arguments with
//! `{placeholders}`.
//!
//! A group is dropped when one of its optional placeholders has no value (no `-initrd`
//! without a ramdisk), so one template serves disk-image and kernel boots alike.
//! Placeholders are checked when the device type loads, not when a VM starts.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::accel::{Accel, AccelChoice};

/// Placeholders every launch supplies.
pub const ALWAYS_SET: &[&str] = &[
    "accel",
    "cpu",
    "memory_mib",
    "cpus",
    "name",
    "workdir",
    "qmp_socket",
];

/// Placeholders a launch may leave unset; their groups are then dropped.
pub const OPTIONAL: &[&str] = &[
    "kernel", "ramdisk", "dtb", "append", "image", "rootfs", "netdev", "mac", "lan", "lan_mac",
];

/// The `[qemu]` table of a device type (and, overridden, of a device).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuTemplate {
    /// The qemu program, e.g. `qemu-system-x86_64`.
    pub binary: String,
    pub memory_mib: u32,
    pub cpus: u32,
    #[serde(default)]
    pub accel: AccelChoice,
    /// `-cpu` model per accelerator.
    pub cpu: CpuModels,
    /// Default kernel command line for kernel boots.
    #[serde(default)]
    pub append: Option<String>,
    /// Argument groups after the binary.
    pub args: Vec<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuModels {
    pub kvm: String,
    pub tcg: String,
}

/// Values for one launch. Keys are placeholder names.
#[derive(Debug, Clone, Default)]
pub struct LaunchValues {
    values: BTreeMap<&'static str, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown placeholder {{{name}}}")]
    Unknown { name: String, pointer: String },
    #[error("unclosed '{{' in \"{arg}\"")]
    Unclosed { arg: String, pointer: String },
    #[error("placeholder {{{0}}} must be set for every launch")]
    Missing(String),
}

impl TemplateError {
    /// Where in the `[qemu]` table the problem is, as a JSON-pointer-like path.
    pub fn pointer(&self) -> Option<&str> {
        match self {
            TemplateError::Unknown { pointer, .. } | TemplateError::Unclosed { pointer, .. } => {
                Some(pointer)
            }
            TemplateError::Missing(_) => None,
        }
    }
}

impl LaunchValues {
    /// The values every launch has.
    pub fn new(
        template: &QemuTemplate,
        accel: Accel,
        name: &str,
        workdir: &str,
        qmp_socket: &str,
    ) -> Self {
        let cpu = match accel {
            Accel::Kvm => &template.cpu.kvm,
            Accel::Tcg => &template.cpu.tcg,
        };
        let mut values = BTreeMap::new();
        values.insert("accel", accel.as_qemu_arg().to_string());
        values.insert("cpu", cpu.clone());
        values.insert("memory_mib", template.memory_mib.to_string());
        values.insert("cpus", template.cpus.to_string());
        values.insert("name", name.to_string());
        values.insert("workdir", workdir.to_string());
        values.insert("qmp_socket", qmp_socket.to_string());
        if let Some(append) = &template.append {
            values.insert("append", append.clone());
        }
        Self { values }
    }

    /// Sets an optional placeholder. Unknown names are ignored by design: the set of
    /// names is fixed by [`OPTIONAL`].
    pub fn set(&mut self, name: &str, value: impl Into<String>) -> &mut Self {
        if let Some(known) = OPTIONAL.iter().find(|k| **k == name) {
            self.values.insert(known, value.into());
        }
        self
    }
}

impl QemuTemplate {
    /// Checks every placeholder names a known value.
    pub fn check(&self) -> Vec<TemplateError> {
        let mut errors = Vec::new();
        for (g, group) in self.args.iter().enumerate() {
            for (a, arg) in group.iter().enumerate() {
                let pointer = format!("/qemu/args/{g}/{a}");
                match placeholders(arg) {
                    Err(()) => errors.push(TemplateError::Unclosed {
                        arg: arg.clone(),
                        pointer,
                    }),
                    Ok(names) => {
                        for name in names {
                            if !ALWAYS_SET.contains(&name) && !OPTIONAL.contains(&name) {
                                errors.push(TemplateError::Unknown {
                                    name: name.to_string(),
                                    pointer: pointer.clone(),
                                });
                            }
                        }
                    }
                }
            }
        }
        errors
    }

    /// The full command line: binary, then every group whose placeholders all have values.
    pub fn render(&self, values: &LaunchValues) -> Result<Vec<String>, TemplateError> {
        let mut argv = vec![self.binary.clone()];
        'groups: for group in &self.args {
            let mut rendered = Vec::with_capacity(group.len());
            for arg in group {
                let names = placeholders(arg).map_err(|()| TemplateError::Unclosed {
                    arg: arg.clone(),
                    pointer: String::new(),
                })?;
                let mut text = arg.clone();
                for name in names {
                    match values.values.get(name) {
                        Some(value) => text = text.replace(&format!("{{{name}}}"), value),
                        None if OPTIONAL.contains(&name) => continue 'groups,
                        None => return Err(TemplateError::Missing(name.to_string())),
                    }
                }
                rendered.push(text);
            }
            argv.extend(rendered);
        }
        Ok(argv)
    }
}

/// The `{names}` in one argument, or `Err` for an unclosed brace.
fn placeholders(arg: &str) -> Result<Vec<&str>, ()> {
    let mut names = Vec::new();
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or(())?;
        names.push(&after[..close]);
        rest = &after[close + 1..];
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(args: &[&[&str]]) -> QemuTemplate {
        QemuTemplate {
            binary: "qemu-system-x86_64".into(),
            memory_mib: 256,
            cpus: 1,
            accel: AccelChoice::Auto,
            cpu: CpuModels {
                kvm: "host".into(),
                tcg: "max".into(),
            },
            append: Some("console=ttyS0".into()),
            args: args
                .iter()
                .map(|g| g.iter().map(|s| s.to_string()).collect())
                .collect(),
        }
    }

    #[test]
    fn renders_and_drops_groups_without_values() {
        let t = template(&[
            &["-accel", "{accel}", "-cpu", "{cpu}"],
            &["-m", "{memory_mib}"],
            &["-kernel", "{kernel}"],
            &["-initrd", "{ramdisk}"],
            &["-append", "{append}"],
            &["-qmp", "unix:{qmp_socket},server=on,wait=off"],
        ]);
        let mut values = LaunchValues::new(&t, Accel::Tcg, "vm1", "/w", "/w/qmp.sock");
        values.set("kernel", "/w/vmlinuz");
        let argv = t.render(&values).unwrap();
        assert_eq!(
            argv,
            [
                "qemu-system-x86_64",
                "-accel",
                "tcg",
                "-cpu",
                "max",
                "-m",
                "256",
                "-kernel",
                "/w/vmlinuz",
                "-append",
                "console=ttyS0",
                "-qmp",
                "unix:/w/qmp.sock,server=on,wait=off"
            ]
        );
    }

    #[test]
    fn check_names_unknown_and_unclosed_placeholders() {
        let t = template(&[&["-m", "{memroy_mib}"], &["-x", "{accel"]]);
        let errors = t.check();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].pointer(), Some("/qemu/args/0/1"));
        assert!(errors[0].to_string().contains("memroy_mib"));
        assert_eq!(errors[1].pointer(), Some("/qemu/args/1/1"));
    }
}
