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
                for name in &names {
                    // A kernel command line means nothing without a kernel, and qemu
                    // refuses `-append` alone: an image boot drops it.
                    if *name == "append" && !values.values.contains_key("kernel") {
                        continue 'groups;
                    }
                    if values.values.contains_key(name) {
                        continue;
                    }
                    if OPTIONAL.contains(name) {
                        continue 'groups;
                    }
                    return Err(TemplateError::Missing(name.to_string()));
                }
                rendered.push(substitute(arg, &values.values));
            }
            argv.extend(rendered);
        }
        Ok(argv)
    }
}

/// Placeholders whose values are qemu option lists the dispatcher composes itself
/// (`user,id=n0`), put in as they are.
const OPTION_LISTS: &[&str] = &["netdev", "lan"];

/// `arg` with its placeholders replaced in one pass, so a value that contains
/// `{something}` is never expanded again. A value inside a longer argument
/// (`file={image},if=virtio`) is part of a qemu option list, where `,` separates
/// options: its commas are doubled, qemu's escape, so a path like `/a,id=x` stays one
/// path instead of adding an option. An argument that is only the placeholder
/// (`-kernel {kernel}`) is taken by qemu as it is.
fn substitute(arg: &str, values: &BTreeMap<&'static str, String>) -> String {
    let whole = arg.starts_with('{') && arg.ends_with('}') && arg.matches('{').count() == 1;
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            break;
        };
        let name = &after[..close];
        let value = values.get(name).map(String::as_str).unwrap_or_default();
        if whole || OPTION_LISTS.contains(&name) {
            out.push_str(value);
        } else {
            out.push_str(&value.replace(',', ",,"));
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
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

    #[test]
    fn an_image_boot_has_no_append_and_values_cannot_add_options() {
        let t = template(&[
            &["-kernel", "{kernel}"],
            &["-append", "{append}"],
            &["-drive", "file={image},if=virtio,format=raw"],
            &["-netdev", "{netdev}"],
        ]);
        let mut values = LaunchValues::new(&t, Accel::Tcg, "vm1", "/w", "/w/qmp.sock");
        values.set("image", "/srv/a,id=evil,file=/etc/shadow{qmp_socket}");
        values.set("netdev", "user,id=n0,restrict=on");
        let argv = t.render(&values).unwrap();
        assert_eq!(
            argv,
            [
                "qemu-system-x86_64",
                "-drive",
                "file=/srv/a,,id=evil,,file=/etc/shadow{qmp_socket},if=virtio,format=raw",
                "-netdev",
                "user,id=n0,restrict=on",
            ]
        );
    }
}
