//! The lab: device types and devices, as lab admins describe them in TOML files.
//!
//! Loading checks everything at once and reports every problem with its file, line and
//! key, the same way job validation does, so a daemon never starts on a half-understood
//! lab and `dispatcher devices check DIR` can be run before deploying a change.

pub mod accel;
mod builtin;
pub mod device;
pub mod device_type;
pub mod qemu_template;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use job_schemas::{DeviceCatalog, DeviceTypeClass, Diagnostic, Report};
use serde::de::DeserializeOwned;

pub use builtin::BUILTIN_DEVICE_TYPES;
use device::Device;
use device_type::{DeviceKind, DeviceType};

/// A loaded, checked lab.
#[derive(Debug, Clone, Default)]
pub struct Lab {
    pub device_types: BTreeMap<String, DeviceType>,
    pub devices: BTreeMap<String, Device>,
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
        let mut report = LabReport::default();
        let mut sources = Vec::new();
        collect_toml(types_dir, &mut sources, &mut report);
        let mut lab = Lab::default();
        for (path, text) in &sources {
            if let Some(t) = parse_file::<DeviceType>(path, text, &mut report) {
                lab.add_type(path, t, &mut report);
            }
        }
        if let Some(devices_dir) = devices_dir {
            lab.add_devices(devices_dir, &mut report);
        }
        if report.has_errors() {
            Err(report)
        } else {
            Ok((lab, report))
        }
    }

    /// The device types built into the binary (the ones shipped in `device-types/`),
    /// with no devices.
    pub fn builtin() -> Result<Lab, LabReport> {
        let mut report = LabReport::default();
        let mut lab = Lab::default();
        for (file, text) in BUILTIN_DEVICE_TYPES {
            let path = Path::new("device-types").join(file);
            if let Some(t) = parse_file::<DeviceType>(&path, text, &mut report) {
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
        let mut lab = Lab::builtin()?;
        let mut report = LabReport::default();
        lab.add_devices(devices_dir, &mut report);
        if report.has_errors() {
            Err(report)
        } else {
            Ok((lab, report))
        }
    }

    /// The device types as job validation sees them.
    pub fn catalog(&self) -> DeviceCatalog {
        let mut catalog = DeviceCatalog::new();
        for (name, t) in &self.device_types {
            let class = match t.kind {
                DeviceKind::Vm => DeviceTypeClass::Virtual,
                _ => DeviceTypeClass::Host {
                    virtualization: t.virtualization,
                },
            };
            catalog.insert(name.clone(), class);
        }
        catalog
    }

    fn add_type(&mut self, path: &Path, t: DeviceType, report: &mut LabReport) {
        let mut problems = check_type(path, &t);
        if self.device_types.contains_key(&t.name) {
            problems.push(Diagnostic::error(
                "/name",
                format!("device type \"{}\" is defined twice", t.name),
            ));
        }
        let has_errors = problems.iter().any(Diagnostic::is_error);
        report.add(path, problems);
        if !has_errors {
            self.device_types.insert(t.name.clone(), t);
        }
    }

    /// Every device file (`*.toml`) in `dir`.
    fn add_devices(&mut self, dir: &Path, report: &mut LabReport) {
        let mut sources = Vec::new();
        collect_toml(dir, &mut sources, report);
        for (path, text) in &sources {
            if let Some(d) = parse_file::<Device>(path, text, report) {
                self.add_device(path, d, report);
            }
        }
    }

    fn add_device(&mut self, path: &Path, d: Device, report: &mut LabReport) {
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
        match self.device_types.get(&d.device_type) {
            None => {
                let known: Vec<&str> = self.device_types.keys().map(String::as_str).collect();
                problems.push(
                    Diagnostic::error(
                        "/device_type",
                        format!("unknown device type \"{}\"", d.device_type),
                    )
                    .expected(format!(
                        "one of {}",
                        job_schemas::one_of(known.iter().copied())
                    ))
                    .maybe_hint(job_schemas::did_you_mean(
                        &d.device_type,
                        known.iter().copied(),
                    )),
                );
            }
            Some(t) => problems.extend(check_device_for_kind(&d, t.kind)),
        }
        let has_errors = problems.iter().any(Diagnostic::is_error);
        report.add(path, problems);
        if !has_errors {
            self.devices.insert(d.hostname.clone(), d);
        }
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

/// Parses one TOML file into `T`, reporting a parse error with its line and column.
fn parse_file<T: DeserializeOwned>(path: &Path, text: &str, report: &mut LabReport) -> Option<T> {
    match toml::from_str::<T>(text) {
        Ok(value) => Some(value),
        Err(err) => {
            report.add(path, vec![toml_diagnostic(text, &err)]);
            None
        }
    }
}

fn toml_diagnostic(text: &str, err: &toml::de::Error) -> Diagnostic {
    let message = err.message().to_string();
    let mut d = Diagnostic::error("", message.clone());
    if let Some(span) = err.span() {
        let before = &text[..span.start.min(text.len())];
        d.line = Some(before.matches('\n').count() + 1);
        d.column = Some(before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1);
    }
    // serde's wording: "unknown field `x`, expected one of `a`, `b`"
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((field, expected)) = rest.split_once('`')
    {
        let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        d = d.maybe_hint(job_schemas::did_you_mean(field, known.iter().copied()));
    }
    d
}

fn check_type(path: &Path, t: &DeviceType) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if file_stem(path) != t.name {
        out.push(
            Diagnostic::error("/name", "name and file name differ")
                .expected(format!("\"{}\" (the file name)", file_stem(path)))
                .found(format!("\"{}\"", t.name)),
        );
    }
    if let Err(err) = regex::Regex::new(&t.shell_prompt) {
        out.push(
            Diagnostic::error(
                "/shell_prompt",
                "shell_prompt is not a valid regular expression",
            )
            .found(
                err.to_string()
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            ),
        );
    }
    if t.boot_timeout == 0 {
        out.push(
            Diagnostic::error("/boot_timeout", "boot_timeout must be more than 0 seconds")
                .found("0"),
        );
    }
    let needs_qemu = matches!(t.kind, DeviceKind::Vm | DeviceKind::QemuHost);
    match (&t.qemu, needs_qemu) {
        (None, true) => out.push(
            Diagnostic::error(
                "/qemu",
                format!("a \"{}\" device type needs a [qemu] table", t.kind.as_str()),
            )
            .expected("binary, memory_mib, cpus, cpu and args"),
        ),
        (Some(_), false) => out.push(Diagnostic::error(
            "/qemu",
            format!(
                "a \"{}\" device type is not started with qemu; remove [qemu]",
                t.kind.as_str()
            ),
        )),
        (Some(qemu), true) => {
            for err in qemu.check() {
                out.push(
                    Diagnostic::error(err.pointer().unwrap_or("/qemu/args"), err.to_string())
                        .expected(format!(
                            "one of {}",
                            job_schemas::one_of(
                                qemu_template::ALWAYS_SET
                                    .iter()
                                    .chain(qemu_template::OPTIONAL)
                                    .copied()
                            )
                        )),
                );
            }
            if qemu.memory_mib == 0 || qemu.cpus == 0 {
                out.push(Diagnostic::error(
                    "/qemu",
                    "memory_mib and cpus must be more than 0",
                ));
            }
        }
        (None, false) => {}
    }
    if t.kind == DeviceKind::Vm && t.virtualization {
        out.push(Diagnostic::error(
            "/virtualization",
            "virtualization applies to host devices (a VM cannot host VMs here)",
        ));
    }
    out
}

/// What each kind of device needs in its device file.
fn check_device_for_kind(d: &Device, kind: DeviceKind) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut require = |present: bool, table: &str, why: &str| {
        if !present {
            out.push(
                Diagnostic::error(format!("/{table}"), format!("missing [{table}]: {why}"))
                    .hint(format!("a \"{}\" device needs [{table}]", kind.as_str())),
            );
        }
    };
    match kind {
        DeviceKind::Vm => {}
        DeviceKind::QemuHost => {
            require(
                d.ssh.is_some(),
                "ssh",
                "the dispatcher reaches the booted host over SSH",
            );
            let boots = d
                .qemu
                .as_ref()
                .is_some_and(|q| q.kernel.is_some() || q.image.is_some());
            require(boots, "qemu", "kernel or image of the host device to boot");
        }
        DeviceKind::SshHost => {
            require(d.ssh.is_some(), "ssh", "the host is reached over SSH");
        }
        DeviceKind::Board => {
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
        }
    }
    if matches!(kind, DeviceKind::SshHost | DeviceKind::Board) && d.qemu.is_some() {
        out.push(Diagnostic::error(
            "/qemu",
            "this device is not started with qemu; remove [qemu]",
        ));
    }
    out
}
