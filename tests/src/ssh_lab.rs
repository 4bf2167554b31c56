//! A lab as the daemon tests and the benchmarks run it: `ssh-host` devices (sshd in
//! network namespaces of their own) that may boot the test images, and the daemon's
//! configuration for them.

use std::path::PathBuf;

use crate::{
    ApiClient, Daemon, SEED_JOB, SshHost, create_token, daemon_config, e2e_job, test_images,
};

/// The `max_job_bytes` of the daemon tests' labs ([`SshLab::configured`]): small, so
/// a test crosses it cheaply.
pub const TEST_MAX_JOB_BYTES: usize = 65_536;

/// A lab of ssh-host devices (`ssh-host-01` ...) and a daemon configuration for it, in
/// a directory removed with the lab.
pub struct SshLab {
    /// `ssh-host-01`.
    pub host: SshHost,
    /// Hosts after the first (`ssh-host-02` ...), alive as long as the lab.
    _more_hosts: Vec<SshHost>,
    pub dir: tempfile::TempDir,
    /// `dir/dispatcher.toml`.
    pub config: PathBuf,
}

impl SshLab {
    /// The daemon tests' lab of one host.
    pub fn new() -> Self {
        Self::with_hosts(1)
    }

    /// The daemon tests' lab of `count` hosts.
    pub fn with_hosts(count: usize) -> Self {
        Self::configured(count, "")
    }

    /// The daemon tests' lab of `count` hosts: `max_job_bytes` is
    /// [`TEST_MAX_JOB_BYTES`], and the configuration has `extra` lines.
    pub fn configured(count: usize, extra: &str) -> Self {
        Self::start(
            count,
            &format!("max_job_bytes = {TEST_MAX_JOB_BYTES}\n{extra}"),
        )
    }

    /// A lab of `count` hosts whose daemon configuration ([`daemon_config`]) has
    /// `extra` lines and nothing else of a test's.
    pub fn start(count: usize, extra: &str) -> Self {
        let images = test_images();
        let start = || SshHost::start(Some((&images.lab_key, &images.lab_pubkey)));
        let host = start();
        let more_hosts: Vec<SshHost> = (1..count).map(|_| start()).collect();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        // No identity in the device file: the daemon's lab key is used.
        let devices = host.device_files(dir.path(), false);
        for (i, more) in more_hosts.iter().enumerate() {
            more.device_file(dir.path(), &format!("ssh-host-{:02}", i + 2), false);
        }
        let config = daemon_config(dir.path(), &devices, &host, extra);
        Self {
            host,
            _more_hosts: more_hosts,
            dir,
            config,
        }
    }

    /// `dispatcher token create ARGS` on this lab's daemon: the new token.
    pub fn token(&self, args: &[&str]) -> String {
        create_token(&self.config, args)
    }

    /// The daemon serving this lab, and a client of its API with a new token `ci`.
    pub fn serve(&self) -> (Daemon, ApiClient) {
        let token = self.token(&["ci"]);
        let daemon = Daemon::start(&self.config);
        let api = daemon.api(&token);
        (daemon, api)
    }

    /// The seed job (a host and two VMs) with this machine's test images, its host
    /// an `ssh-host`.
    pub fn seed_job(&self) -> String {
        e2e_job(SEED_JOB, "ssh-host")
    }
}

impl Default for SshLab {
    fn default() -> Self {
        Self::new()
    }
}
