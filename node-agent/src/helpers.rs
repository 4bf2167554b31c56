//! LAVA's test shell helpers beyond MultiNode: references, attachments, addresses,
//! packages and background processes. Their outputs are `proto::signal` values; the
//! shell helpers (`lava-helpers.sh`) print the same.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use base64::prelude::{BASE64_STANDARD, Engine as _};
use proto::signal::{Attachment, Signal};

use crate::transport::Failure;
use crate::{env, netinfo};

/// The largest file an attachment may have unless the dispatcher says otherwise
/// (`LAVA_ATTACH_MAX_BYTES`): what the dispatcher accepts by default.
pub const DEFAULT_ATTACH_MAX_BYTES: u64 = 1024 * 1024;

/// Bytes per base64 line, as `base64` wraps them.
const BASE64_LINE: usize = 76;

/// Sends `file` through the console: a header, base64 lines, an end.
pub fn attach(case: Option<&str>, file: &str, mimetype: Option<&str>) -> Result<(), Failure> {
    let path = Path::new(file);
    if !path.is_file() {
        return Err(Failure::MultiNode(format!("file {file} not found")));
    }
    let max = env::var(env::ATTACH_MAX_BYTES)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_ATTACH_MAX_BYTES);
    let size = std::fs::metadata(path)
        .map_err(|e| Failure::MultiNode(format!("cannot read {file}: {e}")))?
        .len();
    if size > max {
        return Err(Failure::MultiNode(format!(
            "{file} is {size} bytes, more than the {max} an attachment may have"
        )));
    }
    let bytes =
        std::fs::read(path).map_err(|e| Failure::MultiNode(format!("cannot read {file}: {e}")))?;
    let name = attachment_name(path);
    let header = Signal::Attach(Attachment {
        name: name.clone(),
        size: bytes.len() as u64,
        case: case.map(str::to_string),
        mimetype: mimetype.map(str::to_string),
    });
    let encoded = BASE64_STANDARD.encode(&bytes);
    let mut out = std::io::stdout().lock();
    let io = |e: std::io::Error| Failure::Infrastructure(format!("cannot write output: {e}"));
    writeln!(out, "{header}").map_err(io)?;
    for line in encoded.as_bytes().chunks(BASE64_LINE) {
        out.write_all(line)
            .and_then(|()| out.write_all(b"\n"))
            .map_err(io)?;
    }
    writeln!(out, "{}", Signal::AttachEnd { name }).map_err(io)?;
    out.flush().map_err(io)
}

/// A file's base name with every byte but `A-Za-z0-9._+-` made `_`, and a leading dot
/// too, so it is one word of the marker and a plain file name (the shell helper does
/// the same).
fn attachment_name(path: &Path) -> String {
    let mut name: String = path
        .file_name()
        .map(|n| n.as_encoded_bytes())
        .unwrap_or(b"attachment")
        .iter()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'+' | b'-' => char::from(*b),
            _ => '_',
        })
        .collect();
    // A leading dot would hide the file: the dispatcher refuses such names.
    if name.starts_with('.') {
        name.replace_range(..1, "_");
    }
    name
}

/// The IPv4 address of `iface`.
pub fn ipv4_of(iface: &str) -> Result<String, Failure> {
    let info = netinfo::gather(iface)?;
    if info.ipv4.is_empty() {
        return Err(Failure::MultiNode("no IPv4 address".into()));
    }
    Ok(info.ipv4)
}

/// The address of the interface the default route leaves by, else of the first
/// interface (not `lo`) that has one.
pub fn target_ip() -> Result<String, Failure> {
    let route = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let default = route.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.get(1) == Some(&"00000000"))
            .then(|| cols.first().map(|c| c.to_string()))
            .flatten()
    });
    let mut interfaces: Vec<String> = default.into_iter().collect();
    if let Ok(entries) = std::fs::read_dir("/sys/class/net") {
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        interfaces.extend(names);
    }
    interfaces
        .iter()
        .filter(|i| i.as_str() != "lo")
        .find_map(|i| ipv4_of(i).ok())
        .ok_or_else(|| Failure::MultiNode("no IPv4 address".into()))
}

/// The package manager this system has, as `install.deps` picks it.
fn package_manager() -> Option<&'static str> {
    ["apt-get", "dnf", "yum", "zypper", "apk", "opkg"]
        .into_iter()
        .find(|pm| on_path(pm))
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

pub async fn install_packages(packages: &[String]) -> Result<(), Failure> {
    let pm = package_manager().ok_or_else(|| {
        Failure::MultiNode("no package manager found (apt-get, dnf, yum, zypper, apk, opkg)".into())
    })?;
    let mut command = tokio::process::Command::new(pm);
    match pm {
        "apt-get" => command
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q"]),
        "dnf" | "yum" => command.args(["install", "-y"]),
        "zypper" => command.args(["--non-interactive", "install"]),
        "apk" => command.arg("add"),
        _ => command.arg("install"),
    };
    let status = command
        .args(packages)
        .status()
        .await
        .map_err(|e| Failure::Infrastructure(format!("cannot run {pm}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Failure::MultiNode(format!(
            "{pm} could not install {}",
            packages.join(" ")
        )))
    }
}

fn background_dir(name: &str) -> PathBuf {
    PathBuf::from(env::var(env::BACKGROUND_DIR).unwrap_or_else(|| "/tmp/lava-background".into()))
        .join(name)
}

/// Starts `command` in a session of its own, its output in the process's directory,
/// and leaves it running.
pub fn background_start(name: &str, command: &str) -> Result<(), Failure> {
    let dir = background_dir(name);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Failure::Infrastructure(format!("cannot make {}: {e}", dir.display())))?;
    if let Ok(pid) = std::fs::read_to_string(dir.join("pid"))
        && let Ok(pid) = pid.trim().parse::<i32>()
        && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
    {
        return Err(Failure::MultiNode(format!(
            "a background process named {name} is already running"
        )));
    }
    let output = std::fs::File::create(dir.join("output"))
        .map_err(|e| Failure::Infrastructure(format!("cannot write {}: {e}", dir.display())))?;
    let errors = output
        .try_clone()
        .map_err(|e| Failure::Infrastructure(e.to_string()))?;
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(output)
        .stderr(errors)
        // Its own process group, so stopping it stops what it started.
        .process_group(0)
        .spawn()
        .map_err(|e| Failure::Infrastructure(format!("cannot run sh: {e}")))?;
    std::fs::write(dir.join("pid"), format!("{}\n", child.id()))
        .map_err(|e| Failure::Infrastructure(format!("cannot write {}: {e}", dir.display())))
}

/// Stops the process `name` started (its whole process group).
pub fn background_stop(name: &str) -> Result<(), Failure> {
    let dir = background_dir(name);
    let pid = std::fs::read_to_string(dir.join("pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .ok_or_else(|| Failure::MultiNode(format!("no background process named {name}")))?;
    let group = nix::unistd::Pid::from_raw(pid);
    if nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM).is_err() {
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGTERM);
    }
    let _ = std::fs::remove_file(dir.join("pid"));
    Ok(())
}
