//! The qemu command line a device type describes, as groups of arguments with
//! `{placeholders}`.
//!
//! A group is dropped when one of its optional placeholders has no value (no `-initrd`
//! without a ramdisk), so one template serves disk-image and kernel boots alike.
//! Placeholders are checked when the device type loads, not when a VM starts: a
//! [`QemuTemplate`] exists only checked (from [`QemuTemplateFile::check`]), so
//! rendering it cannot fail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    "kernel",
    "ramdisk",
    "dtb",
    "append",
    "image",
    "rootfs",
    "firmware",
    "image_format",
    "rootfs_format",
    "netdev",
    "mac",
    "lan",
    "lan_mac",
];

/// A disk image's format, as qemu's `format=` names it. Read from the file itself, never
/// from its name (`{image_format}`, `{rootfs_format}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DiskFormat {
    #[default]
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_qemu_arg(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// The `[qemu]` table of a device type file, as written (unchecked).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QemuTemplateFile {
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
    /// The UEFI firmware on the dispatcher's machine (e.g. OVMF from Debian's `ovmf`)
    /// a job's `bootloadertype: "uefi"` boots with, as its `{firmware}`.
    #[serde(default)]
    pub uefi_firmware: Option<PathBuf>,
    /// Argument groups after the binary.
    pub args: Vec<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuModels {
    pub kvm: String,
    pub tcg: String,
}

/// A device type's qemu command line, checked: every placeholder is a known one and
/// every brace is closed. A device's template has the device's own settings (memory,
/// CPUs, kernel command line, accelerator) applied; a VM's launch never looks at the
/// device file again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuTemplate {
    binary: String,
    memory_mib: u32,
    cpus: u32,
    accel: AccelChoice,
    cpu: CpuModels,
    append: Option<String>,
    uefi_firmware: Option<PathBuf>,
    args: Vec<Vec<Arg>>,
}

/// One argument of the template, split at its placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Arg(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// One of [`ALWAYS_SET`] or [`OPTIONAL`].
    Value(&'static str),
}

/// A device's settings over its type's template (the `[qemu]` table and `accel` of a
/// device file).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Overrides<'a> {
    pub accel: Option<AccelChoice>,
    pub memory_mib: Option<u32>,
    pub cpus: Option<u32>,
    pub append: Option<&'a str>,
}

/// The images one VM boots, each a `T`: a path on the machine its qemu runs on
/// ([`VmImages`]), or a URL as a job gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images<T> {
    pub kernel: Option<T>,
    pub ramdisk: Option<T>,
    pub dtb: Option<T>,
    pub image: Option<T>,
    pub rootfs: Option<T>,
    /// What the VM's firmware is (`-bios`), instead of qemu's default.
    pub firmware: Option<T>,
    /// Kernel command-line words these images need (e.g. `rdinit=/sbin/init` for a
    /// root file system given as an initramfs), after the template's `append`.
    pub kernel_args: Vec<String>,
    /// The formats of `image` and `rootfs` (raw when not read from the file).
    pub image_format: DiskFormat,
    pub rootfs_format: DiskFormat,
}

/// The images one VM boots, as paths on the machine its qemu runs on.
pub type VmImages = Images<String>;

impl<T> Default for Images<T> {
    fn default() -> Self {
        Self {
            kernel: None,
            ramdisk: None,
            dtb: None,
            image: None,
            rootfs: None,
            firmware: None,
            kernel_args: Vec::new(),
            image_format: DiskFormat::Raw,
            rootfs_format: DiskFormat::Raw,
        }
    }
}

impl<T> Images<T> {
    /// Sets the image of `kind`, the name of its placeholder (`kernel`, `ramdisk`,
    /// `dtb`, `rootfs`, `firmware`; anything else is the disk image).
    pub fn set(&mut self, kind: &str, value: T) {
        let slot = match kind {
            "kernel" => &mut self.kernel,
            "ramdisk" => &mut self.ramdisk,
            "dtb" => &mut self.dtb,
            "rootfs" => &mut self.rootfs,
            "firmware" => &mut self.firmware,
            _ => &mut self.image,
        };
        *slot = Some(value);
    }

    /// `(placeholder, image)` of every image given.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &T)> {
        [
            ("kernel", &self.kernel),
            ("ramdisk", &self.ramdisk),
            ("dtb", &self.dtb),
            ("image", &self.image),
            ("rootfs", &self.rootfs),
            ("firmware", &self.firmware),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| (name, v)))
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
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
}

impl TemplateError {
    /// Where in the `[qemu]` table the problem is, as a JSON-pointer-like path.
    pub fn pointer(&self) -> &str {
        match self {
            TemplateError::Unknown { pointer, .. } | TemplateError::Unclosed { pointer, .. } => {
                pointer
            }
        }
    }
}

impl LaunchValues {
    /// The values every launch has, and the template's kernel command line.
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

    /// Sets every image given, and appends the images' kernel arguments to the kernel
    /// command line.
    pub fn set_images(&mut self, images: &VmImages) -> &mut Self {
        for (name, path) in images.iter() {
            self.set(name, path.as_str());
        }
        if images.image.is_some() {
            self.set("image_format", images.image_format.as_qemu_arg());
        }
        if images.rootfs.is_some() {
            self.set("rootfs_format", images.rootfs_format.as_qemu_arg());
        }
        if !images.kernel_args.is_empty() {
            let words = images.kernel_args.join(" ");
            let append = match self.values.get("append") {
                Some(append) => format!("{append} {words}"),
                None => words,
            };
            self.set("append", append);
        }
        self
    }

    fn has(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }
}

impl QemuTemplateFile {
    /// The checked template, or every unknown placeholder and unclosed brace, each with
    /// where it is.
    pub(crate) fn check(&self) -> Result<QemuTemplate, Vec<TemplateError>> {
        let mut errors = Vec::new();
        let mut args = Vec::with_capacity(self.args.len());
        for (g, group) in self.args.iter().enumerate() {
            let mut parsed = Vec::with_capacity(group.len());
            for (a, arg) in group.iter().enumerate() {
                match parse_arg(arg, &format!("/qemu/args/{g}/{a}")) {
                    Ok(arg) => parsed.push(arg),
                    Err(mut found) => errors.append(&mut found),
                }
            }
            args.push(parsed);
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(QemuTemplate {
            binary: self.binary.clone(),
            memory_mib: self.memory_mib,
            cpus: self.cpus,
            accel: self.accel,
            cpu: self.cpu.clone(),
            append: self.append.clone(),
            uefi_firmware: self.uefi_firmware.clone(),
            args,
        })
    }
}

impl QemuTemplate {
    /// Whether an argument of the template has the placeholder `name` (`firmware`,
    /// `dtb`...): an image given for one it has not would not reach qemu.
    pub fn uses(&self, name: &str) -> bool {
        self.args
            .iter()
            .flatten()
            .any(|arg| arg.placeholders().any(|p| p == name))
    }

    /// This template with a device's settings applied.
    pub(crate) fn with_overrides(&self, overrides: Overrides<'_>) -> Self {
        let mut template = self.clone();
        if let Some(accel) = overrides.accel {
            template.accel = accel;
        }
        if let Some(memory) = overrides.memory_mib {
            template.memory_mib = memory;
        }
        if let Some(cpus) = overrides.cpus {
            template.cpus = cpus;
        }
        if let Some(append) = overrides.append {
            template.append = Some(append.to_string());
        }
        template
    }

    /// The qemu program.
    pub fn binary(&self) -> &str {
        &self.binary
    }

    pub fn memory_mib(&self) -> u32 {
        self.memory_mib
    }

    pub fn cpus(&self) -> u32 {
        self.cpus
    }

    /// The accelerator asked for (the device's, when it names one).
    pub fn accel(&self) -> AccelChoice {
        self.accel
    }

    /// The kernel command line of kernel boots.
    pub fn append(&self) -> Option<&str> {
        self.append.as_deref()
    }

    /// The UEFI firmware (a file on the dispatcher's machine) of `bootloadertype: "uefi"`.
    pub fn uefi_firmware(&self) -> Option<&Path> {
        self.uefi_firmware.as_deref()
    }

    /// The full command line: binary, then every group whose placeholders all have values.
    pub fn render(&self, values: &LaunchValues) -> Vec<String> {
        let mut argv = vec![self.binary.clone()];
        'groups: for group in &self.args {
            let mut rendered = Vec::with_capacity(group.len());
            for arg in group {
                for name in arg.placeholders() {
                    // A kernel command line means nothing without a kernel, and qemu
                    // refuses `-append` alone: an image boot drops it.
                    if name == "append" && !values.has("kernel") {
                        continue 'groups;
                    }
                    // Every always-set value is there ([`LaunchValues::new`]): a value
                    // missing is an optional one, whose group is dropped.
                    if !values.has(name) {
                        continue 'groups;
                    }
                }
                rendered.push(arg.substitute(values));
            }
            argv.extend(rendered);
        }
        argv
    }
}

/// Placeholders whose values are qemu option lists the dispatcher composes itself
/// (`user,id=n0`), put in as they are.
const OPTION_LISTS: &[&str] = &["netdev", "lan"];

impl Arg {
    fn placeholders(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.iter().filter_map(|p| match p {
            Piece::Value(name) => Some(*name),
            Piece::Text(_) => None,
        })
    }

    /// The argument with its placeholders replaced, so a value that contains
    /// `{something}` is never expanded. A value inside a longer argument
    /// (`file={image},if=virtio`) is part of a qemu option list, where `,` separates
    /// options: its commas are doubled, qemu's escape, so a path like `/a,id=x` stays
    /// one path instead of adding an option. An argument that is only the placeholder
    /// (`-kernel {kernel}`) is taken by qemu as it is.
    fn substitute(&self, values: &LaunchValues) -> String {
        let whole = matches!(self.0.as_slice(), [Piece::Value(_)]);
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Value(name) => {
                    let value = values.values.get(name).map(String::as_str).unwrap_or("");
                    if whole || OPTION_LISTS.contains(name) {
                        out.push_str(value);
                    } else {
                        out.push_str(&value.replace(',', ",,"));
                    }
                }
            }
        }
        out
    }
}

/// One argument split at its `{names}`, or every problem in it.
fn parse_arg(arg: &str, pointer: &str) -> Result<Arg, Vec<TemplateError>> {
    let mut pieces = Vec::new();
    let mut errors = Vec::new();
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_string()));
        }
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            errors.push(TemplateError::Unclosed {
                arg: arg.to_string(),
                pointer: pointer.to_string(),
            });
            rest = "";
            break;
        };
        let name = &after[..close];
        match ALWAYS_SET.iter().chain(OPTIONAL).find(|k| **k == name) {
            Some(known) => pieces.push(Piece::Value(known)),
            None => errors.push(TemplateError::Unknown {
                name: name.to_string(),
                pointer: pointer.to_string(),
            }),
        }
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_string()));
    }
    if errors.is_empty() {
        Ok(Arg(pieces))
    } else {
        Err(errors)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn template_file(args: &[&[&str]]) -> QemuTemplateFile {
        QemuTemplateFile {
            binary: "qemu-system-x86_64".into(),
            memory_mib: 256,
            cpus: 1,
            accel: AccelChoice::Auto,
            cpu: CpuModels {
                kvm: "host".into(),
                tcg: "max".into(),
            },
            append: Some("console=ttyS0".into()),
            uefi_firmware: None,
            args: args
                .iter()
                .map(|g| g.iter().map(|s| s.to_string()).collect())
                .collect(),
        }
    }

    fn template(args: &[&[&str]]) -> QemuTemplate {
        template_file(args).check().unwrap()
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
        let argv = t.render(&values);
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
        let errors = template_file(&[&["-m", "{memroy_mib}"], &["-x", "{accel"]])
            .check()
            .unwrap_err();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].pointer(), "/qemu/args/0/1");
        assert!(errors[0].to_string().contains("memroy_mib"));
        assert_eq!(errors[1].pointer(), "/qemu/args/1/1");
        assert!(errors[1].to_string().contains("unclosed"));
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
        let argv = t.render(&values);
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

    #[test]
    fn overrides_change_only_what_they_name() {
        let t = template(&[&["-m", "{memory_mib}"], &["-append", "{append}"]]);
        let same = t.with_overrides(Overrides::default());
        assert_eq!(same, t);
        let changed = t.with_overrides(Overrides {
            accel: Some(AccelChoice::Tcg),
            memory_mib: Some(1024),
            cpus: None,
            append: Some("console=ttyS0 init=/bin/sh"),
        });
        assert_eq!(changed.accel(), AccelChoice::Tcg);
        assert_eq!((changed.memory_mib(), changed.cpus()), (1024, 1));
        assert_eq!(changed.append(), Some("console=ttyS0 init=/bin/sh"));
    }

    #[test]
    fn images_go_to_their_placeholders() {
        let t = template(&[
            &["-kernel", "{kernel}"],
            &["-dtb", "{dtb}"],
            &["-drive", "file={image}"],
        ]);
        let mut images = VmImages::default();
        images.set("kernel", "/k".into());
        images.set("dtb", "/d".into());
        images.set("image", "/i".into());
        let mut values = LaunchValues::new(&t, Accel::Kvm, "vm", "/w", "/w/q");
        values.set_images(&images);
        assert_eq!(
            t.render(&values),
            [
                "qemu-system-x86_64",
                "-kernel",
                "/k",
                "-dtb",
                "/d",
                "-drive",
                "file=/i"
            ]
        );
    }
}
