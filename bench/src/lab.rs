//! A lab for the benchmarks that need the daemon: `dispatcher serve` (the build next to
//! this benchmark binary) with one `ssh-host` device, sshd in a network namespace, as
//! the daemon tests use; and a small HTTP client for its API.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use system_tests::{SshHost, daemon_config, jobs_dir, test_images};

/// A binary built beside this one (same profile).
pub fn sibling(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let path = exe.with_file_name(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is not built (cargo build --release -p {name})",
            path.display()
        ))
    }
}

pub struct Lab {
    pub host: SshHost,
    daemon: Child,
    pub addr: String,
    pub token: String,
    _stdout: BufReader<std::process::ChildStdout>,
    _dir: tempfile::TempDir,
}

impl Lab {
    pub fn start() -> Result<Self, String> {
        let images = test_images();
        let host = SshHost::start(Some((&images.lab_key, &images.lab_pubkey)));
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let devices = host.device_files(dir.path(), false);
        let config = daemon_config(dir.path(), &devices, &host, "");
        let dispatcher = sibling("dispatcher")?;
        let out = Command::new(&dispatcher)
            .args(["token", "create", "bench", "--config"])
            .arg(&config)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let mut daemon = Command::new(&dispatcher)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdout = daemon.stdout.take().ok_or("no stdout")?;
        let mut stdout = BufReader::new(stdout);
        let mut first = String::new();
        stdout.read_line(&mut first).map_err(|e| e.to_string())?;
        let Some(url) = first.trim().strip_prefix("listening on ") else {
            let _ = daemon.kill();
            let _ = daemon.wait();
            return Err(format!("the daemon did not start: {first:?}"));
        };
        Ok(Self {
            host,
            addr: url.trim_start_matches("http://").to_string(),
            daemon,
            token,
            _stdout: stdout,
            _dir: dir,
        })
    }

    /// The daemon's resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.daemon.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    pub fn submit(&self, job: &str) -> Result<u64, String> {
        let (status, body) = http(
            &self.addr,
            "POST",
            "/api/v1/jobs",
            Some(&self.token),
            job.as_bytes(),
        )?;
        if status != 201 {
            return Err(format!("submit: HTTP {status}: {body}"));
        }
        system_tests::json_of(&body)["id"]
            .as_u64()
            .ok_or_else(|| format!("no id in {body}"))
    }

    /// Follows the job's log until the job ends (the daemon closes the stream then);
    /// returns its lines.
    pub fn follow(&self, id: u64) -> Result<Vec<Value>, String> {
        let (_, body) = http(
            &self.addr,
            "GET",
            &format!("/api/v1/jobs/{id}/log?follow=1"),
            Some(&self.token),
            b"",
        )?;
        Ok(body
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
            .filter(|v| v.get("msg").is_some())
            .collect())
    }

    pub fn job(&self, id: u64) -> Result<Value, String> {
        let (_, body) = http(
            &self.addr,
            "GET",
            &format!("/api/v1/jobs/{id}"),
            Some(&self.token),
            b"",
        )?;
        Ok(system_tests::json_of(&body))
    }

    /// SIGTERM (graceful shutdown: running jobs end canceled, their VMs stopped) and
    /// waits for the daemon to exit.
    pub fn stop(mut self) -> Result<(), String> {
        let pid =
            nix::unistd::Pid::from_raw(i32::try_from(self.daemon.id()).map_err(|e| e.to_string())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .map_err(|e| e.to_string())?;
        let status = self.daemon.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("the daemon exited with {status}"));
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// The seed job (a host and two VMs) with this machine's test images.
pub fn seed_job() -> Result<Value, String> {
    let images = test_images();
    let text = std::fs::read_to_string(jobs_dir().join("e2e/seed-vm-group.json"))
        .map_err(|e| e.to_string())?
        .replace("@GUEST_KERNEL@", &images.guest_kernel.display().to_string())
        .replace(
            "@GUEST_INITRD@",
            &images.guest_initramfs.display().to_string(),
        )
        .replace("@HOST_TYPE@", "ssh-host");
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// One HTTP/1.1 request on a fresh connection: status and body.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> Result<(u16, String), String> {
    system_tests::http(addr, method, path, token, body).map_err(|e| format!("{addr}: {e}"))
}
