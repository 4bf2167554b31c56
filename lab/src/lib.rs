//! The lab: device types and devices, as lab admins describe them in TOML files.
//!
//! Loading checks everything at once and reports every problem with its file, line and
//! key, the same way job validation does, so a daemon never starts on a half-understood
//! lab and `dispatcher devices check DIR` can be run before deploying a change.
//!
//! What loading produces is the runtime model, not the files: a [`DeviceType`] has its
//! prompt compiled and its timeout as a `Duration`; a [`Device`] holds its type and,
//! as a [`DeviceKind`] variant, exactly what its kind needs (a `qemu-host` its checked
//! qemu template, boot images and SSH settings; a `board` its power and console
//! commands). The file shapes, full of `Option`s, stay inside this crate: nothing that
//! runs a job can hold a device that was not checked.

pub mod accel;
mod builtin;
pub mod device;
pub mod device_type;
pub mod login;
mod parse;
pub mod qemu_template;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use job_schemas::{DeviceCatalog, DeviceTypeClass, Diagnostic, Report};
use serde::de::DeserializeOwned;

pub use builtin::BUILTIN_DEVICE_TYPES;
pub use device::{Device, DeviceKind};
use device::{DeviceFile, QemuOverridesFile};
pub use device_type::{DeviceType, HealthCheck, HealthFrequency, TypeKind};
use device_type::{DeviceTypeFile, HealthCheckFile, KindFile};
pub use login::ConsoleLogin;
use qemu_template::{Overrides, QemuTemplate, VmImages};

/// A loaded, checked lab.
#[derive(Debug, Clone, Default)]
pub struct Lab {
    pub device_types: BTreeMap<String, Arc<DeviceType>>,
    pub devices: BTreeMap<String, Device>,
    /// Types whose file had errors, with that file: a device of one is refused
    /// naming it.
    refused_types: BTreeMap<String, PathBuf>,
    /// Device files that had errors, by file name (without `.toml`): such a device is
    /// not in the lab, and a daemon shows it offline with these errors.
    pub refused_devices: BTreeMap<String, RefusedDevice>,
}

/// A device file with errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedDevice {
    pub path: PathBuf,
    /// Its `device_type`, when the file got that far.
    pub device_type: Option<String>,
    /// Its problems, compiler style, with file, line and key.
    pub errors: String,
}

/// A `vm` device type with its template: what a vm_group job's VMs are started as.
#[derive(Debug, Clone, Copy)]
pub struct VmType<'a> {
    pub device_type: &'a DeviceType,
    pub qemu: &'a QemuTemplate,
}

/// The problems of one file.
#[derive(Debug, Clone)]
pub struct FileReport {
    pub path: PathBuf,
    pub report: Report,
}

/// Every problem found while loading a lab (errors and warnings).
#[derive(Debug, Clone, Default, thiserror::Error)]
pub struct LabReport {
    pub files: Vec<FileReport>,
}

impl LabReport {
    pub fn error_count(&self) -> usize {
        self.files.iter().map(|f| f.report.error_count()).sum()
    }

    pub fn has_errors(&self) -> bool {
        self.error_count() > 0
    }

    fn add(&mut self, path: &Path, diagnostics: Vec<Diagnostic>) {
        if !diagnostics.is_empty() {
            self.files.push(FileReport {
                path: path.to_path_buf(),
                report: Report::new(diagnostics),
            });
        }
    }

    /// Every file's diagnostics, compiler style.
    pub fn render(&self) -> String {
        self.files
            .iter()
            .map(|f| f.report.render(&f.path.display().to_string()))
            .collect()
    }
}

impl fmt::Display for LabReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} error(s) in the lab configuration",
            self.error_count()
        )
    }
}

impl Lab {
    /// Loads `types_dir/*.toml` as device types and, if given, `devices_dir/*.toml` as
    /// devices. Returns the lab and its warnings, or every problem found.
    pub fn load(
        types_dir: &Path,
        devices_dir: Option<&Path>,
    ) -> Result<(Lab, LabReport), LabReport> {
        let (lab, report) = Self::load_lenient(types_dir, devices_dir);
        if report.has_errors() {
            Err(report)
        } else {
            Ok((lab, report))
        }
    }

    /// As [`Lab::load`], but a file with errors refuses only what it describes: the
    /// lab of everything else, and every problem found. What a running daemon uses,
    /// so one typo takes one device offline, not the lab.
    pub fn load_lenient(types_dir: &Path, devices_dir: Option<&Path>) -> (Lab, LabReport) {
        let mut report = LabReport::default();
        let mut sources = Vec::new();
        collect_toml(types_dir, &mut sources, &mut report);
        let mut lab = Lab::default();
        let mut health_checks = Vec::new();
        for (path, text) in &sources {
            if let Some(mut t) = read_file::<DeviceTypeFile>(path, text, &mut report) {
                if let Some(check) = t.value.health_check.take() {
                    health_checks.push((path.clone(), t.value.name.clone(), check));
                }
                lab.add_type(path, t, &mut report);
            }
        }
        // Once every type is known: a health check is a job, checked against them.
        for (path, name, check) in health_checks {
            lab.add_health_check(&path, &name, &check, &mut report);
        }
        if let Some(devices_dir) = devices_dir {
            lab.add_devices(devices_dir, &mut report);
        }
        (lab, report)
    }

    /// The device types built into the binary (the ones shipped in `device-types/`),
    /// with no devices.
    pub fn builtin() -> Result<Lab, LabReport> {
        let mut report = LabReport::default();
        let mut lab = Lab::default();
        for (file, text) in BUILTIN_DEVICE_TYPES {
            let path = Path::new("device-types").join(file);
            if let Some(t) = read_file::<DeviceTypeFile>(&path, text, &mut report) {
                lab.add_type(&path, t, &mut report);
            }
        }
        if report.has_errors() {
            Err(report)
        } else {
            Ok(lab)
        }
    }

    /// The built-in device types plus the device files in `devices_dir`.
    pub fn load_with_builtin_types(devices_dir: &Path) -> Result<(Lab, LabReport), LabReport> {
        let (lab, report) = Self::load_lenient_with_builtin_types(devices_dir)?;
        if report.has_errors() {
            Err(report)
        } else {
            Ok((lab, report))
        }
    }

    /// As [`Lab::load_with_builtin_types`], refusing only the devices whose files have
    /// errors (the built-in types have none: a test holds them to it).
    pub fn load_lenient_with_builtin_types(
        devices_dir: &Path,
    ) -> Result<(Lab, LabReport), LabReport> {
        let mut lab = Lab::builtin()?;
        let mut report = LabReport::default();
        lab.add_devices(devices_dir, &mut report);
        Ok((lab, report))
    }

    /// The device types as job validation sees them.
    pub fn catalog(&self) -> DeviceCatalog {
        let mut catalog = DeviceCatalog::new();
        for (name, t) in &self.device_types {
            let class = match t.kind {
                TypeKind::Vm(_) => DeviceTypeClass::Virtual,
                _ => DeviceTypeClass::Host {
                    virtualization: t.virtualization,
                    boots_job_images: matches!(t.kind, TypeKind::QemuHost(_)),
                },
            };
            catalog.insert(name.clone(), class);
        }
        catalog
    }

    /// The `vm` device type `name`, as a job names it for its VMs.
    pub fn vm_type(&self, name: &str) -> Option<VmType<'_>> {
        let device_type = self.device_types.get(name)?;
        match &device_type.kind {
            TypeKind::Vm(qemu) => Some(VmType { device_type, qemu }),
            _ => None,
        }
    }

    fn add_type(&mut self, path: &Path, read: Read<DeviceTypeFile>, report: &mut LabReport) {
        let t = read.value;
        let (checked, checks) = check_type(path, &t);
        let mut problems = read.problems;
        problems.extend(
            checks
                .into_iter()
                .filter(|d| !read.removed.covers(&d.pointer)),
        );
        if self.device_types.contains_key(&t.name) || self.refused_types.contains_key(&t.name) {
            problems.push(Diagnostic::error(
                "/name",
                format!("device type \"{}\" is defined twice", t.name),
            ));
        }
        let has_errors = problems.iter().any(Diagnostic::is_error);
        report.add(path, problems);
        match checked {
            Some(checked) if !has_errors => {
                self.device_types.insert(t.name, Arc::new(checked));
            }
            _ => {
                self.refused_types
                    .entry(t.name)
                    .or_insert_with(|| path.to_path_buf());
            }
        }
    }

    /// Reads and checks the health-check job of type `name` (from `path`): valid against
    /// the lab's types, on exactly one device of this type, at most one frequency. A
    /// type whose check has an error is refused, so its devices are too.
    fn add_health_check(
        &mut self,
        path: &Path,
        name: &str,
        check: &HealthCheckFile,
        report: &mut LabReport,
    ) {
        if !self.device_types.contains_key(name) {
            return; // refused already; its own errors say why
        }
        let job_path = path
            .parent()
            .map_or_else(|| check.job.clone(), |dir| dir.join(&check.job));
        let mut problems = Vec::new();
        let error = |message: String| Diagnostic::error("/health_check/job", message);
        let definition = match std::fs::read_to_string(&job_path) {
            Ok(text) => Some(text),
            Err(err) => {
                problems.push(error(format!("cannot read {}: {err}", job_path.display())));
                None
            }
        };
        if let Some(text) = &definition {
            let context = job_schemas::ValidationContext::new(self.catalog());
            match job_schemas::validate_str(text, &context) {
                Err(job_report) => {
                    problems.push(error(format!(
                        "the health check job {} is not valid ({} error(s), listed under it)",
                        job_path.display(),
                        job_report.error_count()
                    )));
                    report.add(&job_path, job_report.into_diagnostics());
                }
                Ok(validated) => {
                    let on_this_type = match &validated.job.topology {
                        job_schemas::Topology::Single {
                            device_type,
                            target: None,
                        } => device_type.as_deref() == Some(name),
                        job_schemas::Topology::VmGroup(group) => group.host_device_type == name,
                        _ => false,
                    };
                    if !on_this_type {
                        problems.push(
                            error(format!(
                                "the health check job {} does not run on one device of this type",
                                job_path.display()
                            ))
                            .expected(format!(
                                "a job with \"device_type\": \"{name}\" and no target, or a \
                                 vm_group whose host is a \"{name}\" (the dispatcher picks \
                                 the device)"
                            )),
                        );
                    }
                }
            }
        }
        let every = match (check.every_hours, check.every_jobs) {
            (Some(_), Some(_)) => {
                problems.push(Diagnostic::error(
                    "/health_check",
                    "give every_hours or every_jobs, not both",
                ));
                None
            }
            (Some(0), None) | (None, Some(0)) => {
                problems.push(Diagnostic::error(
                    "/health_check",
                    "every_hours and every_jobs must be more than 0",
                ));
                None
            }
            (Some(hours), None) => Some(HealthFrequency::Hours(hours)),
            (None, Some(jobs)) => Some(HealthFrequency::Jobs(jobs)),
            (None, None) => None,
        };
        let has_errors = problems.iter().any(Diagnostic::is_error);
        report.add(path, problems);
        match definition {
            Some(definition) if !has_errors => {
                if let Some(t) = self.device_types.get_mut(name) {
                    Arc::make_mut(t).health_check = Some(HealthCheck {
                        path: job_path,
                        definition,
                        every,
                    });
                }
            }
            _ => {
                self.device_types.remove(name);
                self.refused_types
                    .insert(name.to_string(), path.to_path_buf());
            }
        }
    }

    /// Every device file (`*.toml`) in `dir`; a file with errors is a refused device.
    fn add_devices(&mut self, dir: &Path, report: &mut LabReport) {
        let mut sources = Vec::new();
        collect_toml(dir, &mut sources, report);
        for (path, text) in &sources {
            let device_type = match read_file::<DeviceFile>(path, text, report) {
                Some(d) => {
                    let device_type = d.value.device_type.clone();
                    if self.add_device(path, d, report) {
                        continue;
                    }
                    Some(device_type)
                }
                None => None,
            };
            let errors = report
                .files
                .iter()
                .filter(|f| f.path == *path)
                .map(|f| f.report.render(&path.display().to_string()))
                .collect();
            self.refused_devices.insert(
                file_stem(path),
                RefusedDevice {
                    path: path.clone(),
                    device_type,
                    errors,
                },
            );
        }
    }

    /// Checks a device file and adds the device; whether it was added.
    fn add_device(&mut self, path: &Path, read: Read<DeviceFile>, report: &mut LabReport) -> bool {
        let d = read.value;
        let mut problems = Vec::new();
        if file_stem(path) != d.hostname {
            problems.push(
                Diagnostic::error("/hostname", "hostname and file name differ")
                    .expected(format!("\"{}\" (the file name)", file_stem(path)))
                    .found(format!("\"{}\"", d.hostname)),
            );
        }
        if self.devices.contains_key(&d.hostname) {
            problems.push(Diagnostic::error(
                "/hostname",
                format!("device \"{}\" is defined twice", d.hostname),
            ));
        }
        let kind = match self.device_types.get(&d.device_type) {
            Some(t) => device_kind(&d, t, &mut problems).map(|kind| (t.clone(), kind)),
            None => {
                problems.push(self.unknown_type(&d.device_type));
                None
            }
        };
        problems.retain(|d| !read.removed.covers(&d.pointer));
        problems.splice(0..0, read.problems);
        let has_errors = problems.iter().any(Diagnostic::is_error);
        report.add(path, problems);
        match (kind, has_errors) {
            (Some((device_type, kind)), false) => {
                self.devices.insert(
                    d.hostname.clone(),
                    Device {
                        hostname: d.hostname,
                        device_type,
                        description: d.description,
                        tags: d.tags,
                        kind,
                    },
                );
                true
            }
            _ => false,
        }
    }

    /// A device's type that is not in the lab: refused (its file says why) or unknown.
    fn unknown_type(&self, name: &str) -> Diagnostic {
        if let Some(file) = self.refused_types.get(name) {
            return Diagnostic::error(
                "/device_type",
                format!(
                    "device type \"{name}\" was refused: {} has errors",
                    file.display()
                ),
            );
        }
        let known: Vec<&str> = self.device_types.keys().map(String::as_str).collect();
        Diagnostic::error("/device_type", format!("unknown device type \"{name}\""))
            .expected(format!(
                "one of {}",
                job_schemas::one_of(known.iter().copied())
            ))
            .maybe_hint(job_schemas::did_you_mean(name, known.iter().copied()))
    }
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Reads every `*.toml` in `dir`, sorted by name.
fn collect_toml(dir: &Path, out: &mut Vec<(PathBuf, String)>, report: &mut LabReport) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) => {
            report.add(
                dir,
                vec![Diagnostic::error(
                    "",
                    format!("cannot read directory: {err}"),
                )],
            );
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
        .collect();
    paths.sort();
    for path in paths {
        match std::fs::read_to_string(&path) {
            Ok(text) => out.push((path, text)),
            Err(err) => report.add(
                &path,
                vec![Diagnostic::error("", format!("cannot read file: {err}"))],
            ),
        }
    }
}

/// A file read into its shape as far as it could be: its problems so far, and the
/// keys taken out for them (later checks say nothing more about those).
struct Read<T> {
    value: T,
    problems: Vec<Diagnostic>,
    removed: parse::Removed,
}

/// Reads one TOML file into `T` with every problem it has ([`parse`]); a file that
/// could not be read at all has its problems in `report` and gives `None`.
fn read_file<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    report: &mut LabReport,
) -> Option<Read<T>> {
    let mut parsed = parse::parse::<T>(text);
    // Found in serde's order (keys sorted): told in the file's.
    parsed.problems.sort_by_key(|d| (d.line, d.column));
    match parsed.value {
        Some(value) => Some(Read {
            value,
            problems: parsed.problems,
            removed: parsed.removed,
        }),
        None => {
            report.add(path, parsed.problems);
            None
        }
    }
}

/// The checked device type and every problem of its file (the type is `None` when
/// one of them is an error).
fn check_type(path: &Path, t: &DeviceTypeFile) -> (Option<DeviceType>, Vec<Diagnostic>) {
    let mut out = Vec::new();
    if file_stem(path) != t.name {
        out.push(
            Diagnostic::error("/name", "name and file name differ")
                .expected(format!("\"{}\" (the file name)", file_stem(path)))
                .found(format!("\"{}\"", t.name)),
        );
    }
    let prompt = login::compile("shell_prompt", "/shell_prompt", &t.shell_prompt, &mut out);
    if t.boot_timeout == 0 {
        out.push(
            Diagnostic::error("/boot_timeout", "boot_timeout must be more than 0 seconds")
                .found("0"),
        );
    }
    let needs_qemu = matches!(t.kind, KindFile::Vm | KindFile::QemuHost);
    let qemu = match (&t.qemu, needs_qemu) {
        (None, true) => {
            out.push(
                Diagnostic::error(
                    "/qemu",
                    format!("a \"{}\" device type needs a [qemu] table", t.kind.as_str()),
                )
                .expected("binary, memory_mib, cpus, cpu and args"),
            );
            None
        }
        (Some(_), false) => {
            out.push(Diagnostic::error(
                "/qemu",
                format!(
                    "a \"{}\" device type is not started with qemu; remove [qemu]",
                    t.kind.as_str()
                ),
            ));
            None
        }
        (Some(qemu), true) => {
            if qemu.memory_mib == 0 || qemu.cpus == 0 {
                out.push(Diagnostic::error(
                    "/qemu",
                    "memory_mib and cpus must be more than 0",
                ));
            }
            match qemu.check() {
                Ok(template) => Some(template),
                Err(errors) => {
                    for err in errors {
                        out.push(Diagnostic::error(err.pointer(), err.to_string()).expected(
                            format!(
                                "one of {}",
                                job_schemas::one_of(
                                    qemu_template::ALWAYS_SET
                                        .iter()
                                        .chain(qemu_template::OPTIONAL)
                                        .copied()
                                )
                            ),
                        ));
                    }
                    None
                }
            }
        }
        (None, false) => None,
    };
    if t.kind == KindFile::Vm && t.virtualization {
        out.push(Diagnostic::error(
            "/virtualization",
            "virtualization applies to host devices (a VM cannot host VMs here)",
        ));
    }
    let kind = match (t.kind, qemu) {
        (KindFile::Vm, Some(qemu)) => Some(TypeKind::Vm(qemu)),
        (KindFile::QemuHost, Some(qemu)) => Some(TypeKind::QemuHost(qemu)),
        (KindFile::SshHost, _) => Some(TypeKind::SshHost),
        (KindFile::Board, _) => Some(TypeKind::Board),
        (KindFile::Vm | KindFile::QemuHost, None) => None,
    };
    let login = t.login.as_ref().map(|file| login::check(file, &mut out));
    let checked = match (kind, prompt, login) {
        (_, _, Some(None)) => None,
        (Some(kind), Some(prompt), login) if t.boot_timeout > 0 => Some(DeviceType {
            name: t.name.clone(),
            kind,
            description: t.description.clone(),
            arch: t.arch.clone(),
            virtualization: t.virtualization,
            prompt,
            boot_timeout: Duration::from_secs(t.boot_timeout),
            login: login.flatten(),
            health_check: None,
        }),
        _ => None,
    };
    (checked, out)
}

/// What a device of type `t` is, from its file; `None` with the reasons in `out` when
/// the file lacks what the kind needs.
fn device_kind(d: &DeviceFile, t: &DeviceType, out: &mut Vec<Diagnostic>) -> Option<DeviceKind> {
    let kind = t.kind.as_str();
    let mut require = |present: bool, table: &str, why: &str| {
        if !present {
            out.push(
                Diagnostic::error(format!("/{table}"), format!("missing [{table}]: {why}"))
                    .hint(format!("a \"{kind}\" device needs [{table}]")),
            );
        }
        present
    };
    let checked = match &t.kind {
        TypeKind::Vm(qemu) => Some(DeviceKind::Vm {
            qemu: device_template(d, qemu),
        }),
        TypeKind::QemuHost(qemu) => {
            let images = d.qemu.as_ref().map(host_images).unwrap_or_default();
            let has_ssh = require(
                d.ssh.is_some(),
                "ssh",
                "the dispatcher reaches the booted host over SSH",
            );
            let boots = require(
                images.kernel.is_some() || images.image.is_some(),
                "qemu",
                "kernel or image of the host device to boot",
            );
            match (&d.ssh, has_ssh && boots) {
                (Some(ssh), true) => Some(DeviceKind::QemuHost {
                    qemu: device_template(d, qemu),
                    images: Box::new(images),
                    ssh: ssh.clone(),
                }),
                _ => None,
            }
        }
        TypeKind::SshHost => {
            require(d.ssh.is_some(), "ssh", "the host is reached over SSH");
            d.ssh.clone().map(|ssh| DeviceKind::SshHost { ssh })
        }
        TypeKind::Board => {
            require(
                d.ssh.is_some(),
                "ssh",
                "the booted board is reached over SSH",
            );
            require(d.power.is_some(), "power", "on, off and reset commands");
            require(
                d.console.is_some(),
                "console",
                "the console connection command",
            );
            match (&d.ssh, &d.power, &d.console) {
                (Some(ssh), Some(power), Some(console)) => Some(DeviceKind::Board {
                    ssh: ssh.clone(),
                    power: power.clone(),
                    console: console.clone(),
                }),
                _ => None,
            }
        }
    };
    match (&t.kind, &d.qemu) {
        (TypeKind::SshHost | TypeKind::Board, Some(_)) => out.push(Diagnostic::error(
            "/qemu",
            "this device is not started with qemu; remove [qemu]",
        )),
        (TypeKind::Vm(_) | TypeKind::QemuHost(_), Some(qemu)) => {
            if qemu.memory_mib == Some(0) || qemu.cpus == Some(0) {
                out.push(Diagnostic::error(
                    "/qemu",
                    "memory_mib and cpus must be more than 0",
                ));
            }
            let images = [
                ("kernel", &qemu.kernel),
                ("ramdisk", &qemu.ramdisk),
                ("rootfs", &qemu.rootfs),
                ("image", &qemu.image),
            ];
            if matches!(t.kind, TypeKind::Vm(_)) {
                for (key, _) in images.iter().filter(|(_, path)| path.is_some()) {
                    out.push(Diagnostic::warning(
                        format!("/qemu/{key}"),
                        "a vm device boots the images its job gives; this one is not used",
                    ));
                }
            }
        }
        (_, None) => {}
    }
    checked
}

/// The device's template: its type's, with the device's settings applied.
fn device_template(d: &DeviceFile, qemu: &QemuTemplate) -> QemuTemplate {
    let o = d.qemu.as_ref();
    qemu.with_overrides(Overrides {
        accel: d.accel,
        memory_mib: o.and_then(|o| o.memory_mib),
        cpus: o.and_then(|o| o.cpus),
        append: o.and_then(|o| o.append.as_deref()),
    })
}

/// The images a `qemu-host` device boots, from its `[qemu]` table.
fn host_images(o: &QemuOverridesFile) -> VmImages {
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    VmImages {
        kernel: path(&o.kernel),
        ramdisk: path(&o.ramdisk),
        dtb: None,
        image: path(&o.image),
        rootfs: path(&o.rootfs),
        ..VmImages::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM_TYPE: &str = r#"
name = "vmx"
kind = "vm"
description = "a VM"
arch = "x86_64"
shell_prompt = '[#$] ?$'
boot_timeout = 30

[qemu]
binary = "qemu-system-x86_64"
memory_mib = 256
cpus = 1
cpu = { kvm = "host", tcg = "max" }
append = "console=ttyS0"
args = [["-m", "{memory_mib}"], ["-kernel", "{kernel}"], ["-append", "{append}"]]
"#;

    /// A lab directory with `types` and `devices` as `(file stem, contents)`.
    fn lab_dir(types: &[(&str, &str)], devices: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("types")).unwrap();
        std::fs::create_dir_all(dir.path().join("devices")).unwrap();
        for (name, text) in types {
            std::fs::write(dir.path().join(format!("types/{name}.toml")), text).unwrap();
        }
        for (name, text) in devices {
            std::fs::write(dir.path().join(format!("devices/{name}.toml")), text).unwrap();
        }
        dir
    }

    fn load(dir: &tempfile::TempDir) -> Result<(Lab, LabReport), LabReport> {
        Lab::load(&dir.path().join("types"), Some(&dir.path().join("devices")))
    }

    /// `(file name, pointer, message)` of every error.
    fn errors(report: &LabReport) -> Vec<(String, String, String)> {
        report
            .files
            .iter()
            .flat_map(|f| {
                f.report.errors().map(|d| {
                    (
                        f.path.file_name().unwrap().to_string_lossy().into_owned(),
                        d.pointer.clone(),
                        d.message.clone(),
                    )
                })
            })
            .collect()
    }

    #[test]
    fn a_device_whose_type_lacks_a_template_is_refused_at_load() {
        let no_qemu = VM_TYPE.split("[qemu]").next().unwrap();
        let dir = lab_dir(
            &[("vmx", no_qemu)],
            &[("vm-1", "hostname = \"vm-1\"\ndevice_type = \"vmx\"\n")],
        );
        let report = load(&dir).unwrap_err();
        let errors = errors(&report);
        assert!(
            errors
                .iter()
                .any(|(file, pointer, message)| file == "vmx.toml"
                    && pointer == "/qemu"
                    && message.contains("needs a [qemu] table")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|(file, pointer, message)| file == "vm-1.toml"
                    && pointer == "/device_type"
                    && message.contains("\"vmx\" was refused")
                    && message.contains("vmx.toml has errors")),
            "{errors:?}"
        );
        let rendered = report.render();
        assert!(rendered.contains("vmx.toml at /qemu"), "{rendered}");
        assert!(rendered.contains("vm-1.toml at /device_type"), "{rendered}");
    }

    #[test]
    fn the_prompt_is_compiled_once_and_shared_by_the_types_devices() {
        let dir = lab_dir(
            &[("vmx", VM_TYPE)],
            &[
                ("vm-1", "hostname = \"vm-1\"\ndevice_type = \"vmx\"\n"),
                ("vm-2", "hostname = \"vm-2\"\ndevice_type = \"vmx\"\n"),
            ],
        );
        let (lab, _) = load(&dir).unwrap();
        let vmx = &lab.device_types["vmx"];
        for device in lab.devices.values() {
            // The device holds its type, not its type's name: one compiled prompt.
            assert!(Arc::ptr_eq(&device.device_type, vmx));
        }
        assert!(vmx.prompt.is_match("root@vm:~# "));
        assert_eq!(vmx.shell_prompt(), "[#$] ?$");
        assert_eq!(vmx.boot_timeout, Duration::from_secs(30));
        assert!(lab.vm_type("vmx").is_some());

        let bad = VM_TYPE.replace("'[#$] ?$'", "'[#$'");
        let dir = lab_dir(&[("vmx", &bad)], &[]);
        let errors = errors(&load(&dir).unwrap_err());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].1, "/shell_prompt");
    }

    #[test]
    fn a_types_default_login_is_checked_and_kept_with_its_password_hidden() {
        let with_login = format!(
            "{}\n[login]\nlogin_prompt = 'login: ?$'\nusername = \"root\"\n\
             password_prompt = 'Password: ?$'\npassword = \"lab-Pw\"\n",
            VM_TYPE
        );
        let dir = lab_dir(&[("vmx", &with_login)], &[]);
        let (lab, _) = load(&dir).unwrap();
        let login = lab.device_types["vmx"].login.clone().unwrap();
        assert!(login.login_prompt.is_match("guest login: "));
        assert_eq!(login.username, "root");
        let (prompt, password) = login.password.clone().unwrap();
        assert!(prompt.is_match("Password: "));
        assert_eq!(password, "lab-Pw");
        assert!(!format!("{login:?}").contains("lab-Pw"));
        // Without [login], none.
        let dir = lab_dir(&[("vmx", VM_TYPE)], &[]);
        assert!(load(&dir).unwrap().0.device_types["vmx"].login.is_none());
        // A password without its prompt, and a prompt that does not compile: the type
        // is refused, each named.
        let bad = format!(
            "{}\n[login]\nlogin_prompt = 'login: ('\nusername = \"root\"\npassword = \"x\"\n",
            VM_TYPE
        );
        let dir = lab_dir(&[("vmx", &bad)], &[]);
        let mut pointers: Vec<String> = errors(&load(&dir).unwrap_err())
            .into_iter()
            .map(|(_, pointer, _)| pointer)
            .collect();
        pointers.sort();
        assert_eq!(pointers, ["/login", "/login/login_prompt"]);
    }

    #[test]
    fn a_devices_settings_are_in_its_template_and_its_kind_has_what_it_needs() {
        let host_type = VM_TYPE
            .replace("name = \"vmx\"", "name = \"hostx\"")
            .replace("kind = \"vm\"", "kind = \"qemu-host\"");
        let ssh =
            "[ssh]\naddress = \"127.0.0.1\"\nport = 2222\nhost_key = \"trust-on-first-use\"\n";
        let dir = lab_dir(
            &[("vmx", VM_TYPE), ("hostx", &host_type)],
            &[
                (
                    "vm-1",
                    "hostname = \"vm-1\"\ndevice_type = \"vmx\"\naccel = \"tcg\"\n\
                     [qemu]\nmemory_mib = 512\nappend = \"console=ttyS0 quiet\"\n",
                ),
                (
                    "host-1",
                    &format!(
                        "hostname = \"host-1\"\ndevice_type = \"hostx\"\n{ssh}\
                         [qemu]\nkernel = \"/srv/bzImage\"\nappend = \"console=ttyS0 x\"\n"
                    ),
                ),
            ],
        );
        let (lab, warnings) = load(&dir).unwrap();
        assert!(!warnings.has_errors());
        let DeviceKind::Vm { qemu } = &lab.devices["vm-1"].kind else {
            panic!("vm-1 is not a vm");
        };
        assert_eq!(qemu.memory_mib(), 512);
        assert_eq!(qemu.cpus(), 1);
        assert_eq!(qemu.append(), Some("console=ttyS0 quiet"));
        assert_eq!(qemu.accel(), accel::AccelChoice::Tcg);
        // The type's own template is untouched.
        assert_eq!(
            lab.device_types["vmx"].qemu().unwrap().append(),
            Some("console=ttyS0")
        );
        let DeviceKind::QemuHost { qemu, images, ssh } = &lab.devices["host-1"].kind else {
            panic!("host-1 is not a qemu-host");
        };
        assert_eq!(qemu.append(), Some("console=ttyS0 x"));
        assert_eq!(images.kernel.as_deref(), Some("/srv/bzImage"));
        assert_eq!(ssh.port, 2222);
        assert!(
            lab.vm_type("hostx").is_none(),
            "a host type is not a VM type"
        );

        let dir = lab_dir(
            &[("hostx", &host_type)],
            &[("host-2", "hostname = \"host-2\"\ndevice_type = \"hostx\"\n")],
        );
        let errors = errors(&load(&dir).unwrap_err());
        let pointers: Vec<&str> = errors.iter().map(|e| e.1.as_str()).collect();
        assert_eq!(pointers, ["/ssh", "/qemu"], "{errors:?}");
    }

    #[test]
    fn a_health_check_is_a_valid_job_on_one_device_of_its_type() {
        const SSH_TYPE: &str = "name = \"sshx\"\nkind = \"ssh-host\"\ndescription = \"x\"\n\
            arch = \"x86_64\"\nshell_prompt = '# $'\nboot_timeout = 30\n";
        let job = |device_type: &str| {
            format!(
                r#"{{"device_type": "{device_type}", "timeout": 60, "actions": [
                    {{"command": "lava_command_run", "parameters": {{"commands": ["true"]}}}}]}}"#
            )
        };
        let with_check =
            |extra: &str| format!("{SSH_TYPE}[health_check]\njob = \"sshx.health.json\"\n{extra}");
        let dir = lab_dir(&[("sshx", &with_check("every_jobs = 5\n"))], &[]);
        std::fs::write(dir.path().join("types/sshx.health.json"), job("sshx")).unwrap();
        let (lab, _) = load(&dir).unwrap();
        let check = lab.device_types["sshx"].health_check.clone().unwrap();
        assert_eq!(check.every, Some(HealthFrequency::Jobs(5)));
        assert!(check.definition.contains("lava_command_run"));

        // On another type, two frequencies, a job that is not valid, a missing file:
        // each named, and the type (so its devices) refused.
        for (extra, job_text, wanted) in [
            (
                "",
                Some(job("vmx")),
                "does not run on one device of this type",
            ),
            (
                "every_jobs = 5\nevery_hours = 2\n",
                Some(job("sshx")),
                "not both",
            ),
            (
                "",
                Some("{\"device_type\": \"sshx\"}".to_string()),
                "is not valid",
            ),
            ("", None, "cannot read"),
        ] {
            let dir = lab_dir(
                &[("sshx", &with_check(extra)), ("vmx", VM_TYPE)],
                &[("h-1", "hostname = \"h-1\"\ndevice_type = \"sshx\"\n")],
            );
            if let Some(text) = &job_text {
                std::fs::write(dir.path().join("types/sshx.health.json"), text).unwrap();
            }
            let report = load(&dir).unwrap_err();
            let errors = errors(&report);
            assert!(
                errors
                    .iter()
                    .any(|(file, _, message)| file == "sshx.toml" && message.contains(wanted)),
                "{wanted}: {errors:?}"
            );
            assert!(
                errors
                    .iter()
                    .any(|(file, _, message)| file == "h-1.toml" && message.contains("refused")),
                "{errors:?}"
            );
        }
    }

    #[test]
    fn the_builtin_types_load_with_their_kinds() {
        let lab = Lab::builtin().unwrap();
        for (name, kind) in [
            ("kvm", "vm"),
            ("qemu-host", "qemu-host"),
            ("ssh-host", "ssh-host"),
            ("arndale", "board"),
        ] {
            assert_eq!(lab.device_types[name].kind.as_str(), kind);
        }
        assert!(lab.vm_type("kvm").is_some());
        assert!(lab.vm_type("ssh-host").is_none());
    }
}
