//! The daemon's configuration file (TOML), checked as strictly as the lab files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `dispatcher serve --config FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Where the HTTP API listens.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The daemon's state: `dispatcher.db`, `jobs/ID/`, `images/`, `known_hosts`.
    pub state_dir: PathBuf,
    /// Device files of the lab.
    pub devices: PathBuf,
    /// Device types; unset: the ones built into the binary.
    #[serde(default)]
    pub device_types: Option<PathBuf>,
    /// The lab's SSH key, for devices whose file names none.
    pub lab_key: PathBuf,
    /// The static node agent installed on hosts.
    pub node_agent: PathBuf,
    /// The dispatcher's directory on host devices.
    #[serde(default = "default_host_dir")]
    pub host_dir: String,
    /// Whether reading (jobs, logs, results, devices) needs no token.
    #[serde(default)]
    pub public_reads: bool,
    /// Largest job definition accepted, in bytes.
    #[serde(default = "default_max_job_bytes")]
    pub max_job_bytes: usize,
    /// Where the embedded coordinator's gRPC listens (port 0: any).
    #[serde(default = "default_coordinator_listen")]
    pub coordinator_listen: SocketAddr,
    /// A standalone coordinator to use instead of the embedded one (`http://` or
    /// `https://`), so MultiNode groups outlive a dispatcher restart and, with the
    /// coordinator's `--state-dir`, a coordinator restart. Needs
    /// `coordinator_token_file`.
    #[serde(default)]
    pub coordinator_url: Option<String>,
    /// The file whose first line is the standalone coordinator's admin token.
    #[serde(default)]
    pub coordinator_token_file: Option<PathBuf>,
    /// The CA certificate (PEM) an `https://` coordinator's certificate chains to.
    #[serde(default)]
    pub coordinator_ca: Option<PathBuf>,
    /// What this dispatcher's group ids start with on a standalone coordinator, which
    /// several dispatchers may share; unset: this machine's host name and a dash, or
    /// for workers sharing a database (which must all have the same) its name and a
    /// dash.
    #[serde(default)]
    pub coordinator_group_prefix: Option<String>,
    /// Largest number of nodes (host, VMs, devices) in one job.
    #[serde(default = "default_max_group_size")]
    pub max_group_size: u64,
    /// Largest `count` of one VM or device role.
    #[serde(default = "default_max_count")]
    pub max_count: u64,
    /// Largest job log, in bytes; past it the log ends with a truncation marker (the
    /// job goes on, and its results are still recorded).
    #[serde(default = "default_max_log_bytes")]
    pub max_log_bytes: u64,
    /// Directories whose files jobs may name with `file://` (after symlinks are
    /// resolved); none by default: jobs fetch over HTTP(S). The state directory, the
    /// lab key and the coordinator token are never reachable, even under a root.
    #[serde(default)]
    pub file_roots: Vec<PathBuf>,
    /// Networks (CIDR) jobs may fetch from besides public addresses, e.g. the lab's
    /// own mirror `["10.20.0.0/16"]`; none by default: no loopback, private or
    /// link-local address is reached for a job.
    #[serde(default)]
    pub fetch_allow_networks: Vec<ipnet::IpNet>,
    /// Largest download of one image, in bytes.
    #[serde(default = "default_max_download_bytes")]
    pub max_download_bytes: u64,
    /// Largest image once decompressed, in bytes.
    #[serde(default = "default_max_unpacked_bytes")]
    pub max_unpacked_bytes: u64,
    /// Largest test definition, in bytes.
    #[serde(default = "default_max_testdef_bytes")]
    pub max_testdef_bytes: u64,
    /// Longest job timeout accepted, in seconds.
    #[serde(default = "default_max_job_timeout")]
    pub max_job_timeout: u64,
    /// Largest raw console log of one node (`console-NODE.log`), in bytes; past it the
    /// file ends with a one-line truncation marker (the console is still read and
    /// matched, only no longer kept).
    #[serde(default = "default_max_log_bytes")]
    pub max_console_bytes: u64,
    /// Most HTTP connections open at once; unset: half the open-file limit (raised to
    /// its hard limit at start), at most 4096. At the cap a new connection closes the
    /// one idle the longest (no request in flight), so idle clients cannot lock out
    /// the rest.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Seconds a client has to send a request's headers once it started them.
    #[serde(default = "default_http_header_timeout_secs")]
    pub http_header_timeout_secs: u64,
    /// Seconds a connection with no request in flight stays open.
    #[serde(default = "default_http_idle_timeout_secs")]
    pub http_idle_timeout_secs: u64,
    /// Seconds a client has to send a request's body (a job, a health change).
    #[serde(default = "default_http_body_timeout_secs")]
    pub http_body_timeout_secs: u64,
    /// Times a job that ended `infrastructure` is submitted again by itself, each new
    /// job linked to the one it retries; 0: never.
    #[serde(default)]
    pub retry_infrastructure: u32,
    /// Attempts to deliver one job callback while its receiver fails (5xx) or cannot be
    /// reached, 1 s, 2 s, 4 s... apart (at most a minute).
    #[serde(default = "default_callback_attempts")]
    pub callback_attempts: u32,
    /// The PostgreSQL database several workers share (`postgres://USER@HOST/DB`; a
    /// Unix socket with `?host=/run/postgresql`); unset: SQLite in the state directory,
    /// for one machine.
    #[serde(default)]
    pub database_url: Option<DatabaseUrl>,
    /// This worker's name among those sharing `database_url`, which owns the devices of
    /// its lab files; unset: this machine's host name.
    #[serde(default)]
    pub worker_id: Option<String>,
    /// The URL other workers reach this one's API at (for the files of the jobs it
    /// ran); unset: `http://` and `listen`, which must then name an address (not
    /// 0.0.0.0) when `database_url` is set.
    #[serde(default)]
    pub api_url: Option<String>,
    /// Seconds between a worker's heartbeats in the shared database; one silent for
    /// three of them is declared lost by the others (its jobs end, its devices go
    /// offline).
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u64,
    /// The SMTP relay (`host:port`, plain SMTP on the lab's network) that mails jobs'
    /// `notify` addresses; unset: this lab sends no mail (submission warns).
    #[serde(default)]
    pub smtp_relay: Option<String>,
    /// The sender of that mail.
    #[serde(default = "default_mail_from")]
    pub mail_from: String,
}

fn default_heartbeat_secs() -> u64 {
    5
}

fn default_callback_attempts() -> u32 {
    6
}

fn default_mail_from() -> String {
    "lava-dispatcher@localhost".to_string()
}

fn default_max_download_bytes() -> u64 {
    hostctl::fetch::FetchLimits::default().max_download_bytes
}

fn default_max_unpacked_bytes() -> u64 {
    hostctl::fetch::FetchLimits::default().max_unpacked_bytes
}

fn default_max_testdef_bytes() -> u64 {
    hostctl::fetch::FetchLimits::default().max_testdef_bytes
}

/// A day: longer than any test run a lab schedules, short enough that a forgotten
/// job gives its devices back.
fn default_max_job_timeout() -> u64 {
    24 * 60 * 60
}

fn default_http_header_timeout_secs() -> u64 {
    10
}

fn default_http_idle_timeout_secs() -> u64 {
    60
}

fn default_http_body_timeout_secs() -> u64 {
    30
}

fn default_max_group_size() -> u64 {
    job_schemas::Limits::default().max_group_size
}

fn default_max_count() -> u64 {
    job_schemas::Limits::default().max_count
}

fn default_max_log_bytes() -> u64 {
    64 * 1024 * 1024
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8079))
}

fn default_coordinator_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn default_host_dir() -> String {
    "/var/lib/lava-dispatcher".to_string()
}

fn default_max_job_bytes() -> usize {
    1024 * 1024
}

/// `database_url`, which may carry the database's password: never printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(pub String);

impl DatabaseUrl {
    /// The database's name (the URL's path), `lab` when it names none.
    pub fn name(&self) -> String {
        url::Url::parse(&self.0)
            .ok()
            .and_then(|u| {
                u.path_segments()?
                    .next()
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "lab".to_string())
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseUrl(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl DaemonConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let config: Self = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        config.check().map_err(|message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })?;
        Ok(config)
    }

    /// What the file's types alone cannot say.
    fn check(&self) -> Result<(), String> {
        if let Some(DatabaseUrl(url)) = &self.database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err("database_url must be a postgres:// or postgresql:// URL".into());
        }
        if self.database_url.is_some()
            && self.api_url.is_none()
            && self.listen.ip().is_unspecified()
        {
            return Err(format!(
                "listen = \"{}\" is no address other workers can reach: set api_url \
                 (e.g. \"http://worker-1.lab:8079\")",
                self.listen
            ));
        }
        if self.heartbeat_secs == 0 {
            return Err("heartbeat_secs must be at least 1".into());
        }
        if let Some(worker) = &self.worker_id
            && (worker.is_empty() || worker.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(format!(
                "worker_id {worker:?} must be a non-empty name without spaces"
            ));
        }
        match (&self.coordinator_url, &self.coordinator_token_file) {
            (Some(_), None) => Err("coordinator_url needs coordinator_token_file".into()),
            (None, Some(_)) => Err("coordinator_token_file is set without coordinator_url".into()),
            (None, None) if self.coordinator_ca.is_some() => {
                Err("coordinator_ca is set without coordinator_url".into())
            }
            _ => Ok(()),
        }
    }

    /// The paths this configuration names that are not there, each as `key = path
    /// (what is wrong)`: the daemon refuses to start on any, since every job would fail
    /// on it later (a missing node agent only shows when a host is booted).
    pub fn missing_paths(&self) -> Vec<String> {
        let mut wanted: Vec<(&str, &Path, bool)> = vec![
            ("devices", &self.devices, true),
            ("lab_key", &self.lab_key, false),
            ("node_agent", &self.node_agent, false),
        ];
        if let Some(types) = &self.device_types {
            wanted.push(("device_types", types, true));
        }
        if let Some(token) = &self.coordinator_token_file {
            wanted.push(("coordinator_token_file", token, false));
        }
        if let Some(ca) = &self.coordinator_ca {
            wanted.push(("coordinator_ca", ca, false));
        }
        for root in &self.file_roots {
            wanted.push(("file_roots", root, true));
        }
        wanted
            .into_iter()
            .filter_map(|(key, path, dir)| {
                let problem = match std::fs::metadata(path) {
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => "not found".into(),
                    Err(err) => err.to_string(),
                    Ok(meta) if dir && !meta.is_dir() => "not a directory".to_string(),
                    Ok(meta) if !dir && meta.is_dir() => "a directory, not a file".to_string(),
                    Ok(_) => return None,
                };
                Some(format!("{key} = {} ({problem})", path.display()))
            })
            .collect()
    }

    /// What submitted jobs are checked against. `secrets` are more files no job may
    /// read (the devices' own SSH keys), besides the daemon's.
    pub fn job_policy(&self, secrets: &[PathBuf]) -> runner::validation::JobPolicy {
        // The lab's own files too: device files can carry power commands with their
        // credentials.
        let mut denied = vec![
            self.state_dir.clone(),
            self.lab_key.clone(),
            self.devices.clone(),
        ];
        denied.extend(self.device_types.clone());
        denied.extend(self.coordinator_token_file.clone());
        denied.extend(secrets.iter().cloned());
        runner::validation::JobPolicy {
            limits: job_schemas::Limits {
                max_count: self.max_count,
                max_group_size: self.max_group_size,
            },
            fetch: std::sync::Arc::new(hostctl::fetch::FetchPolicy::restricted(
                &self.file_roots,
                &denied,
                self.fetch_allow_networks.clone(),
                hostctl::fetch::FetchLimits {
                    max_download_bytes: self.max_download_bytes,
                    max_unpacked_bytes: self.max_unpacked_bytes,
                    max_testdef_bytes: self.max_testdef_bytes,
                },
            )),
            max_job_timeout_secs: Some(self.max_job_timeout),
        }
    }

    pub fn database(&self) -> PathBuf {
        self.state_dir.join("dispatcher.db")
    }

    /// This worker's name: `worker_id`, or else the machine's host name.
    pub fn worker_name(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|name| name.trim().to_string())
                .ok()
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| "worker".to_string())
        })
    }

    pub fn jobs_dir(&self) -> PathBuf {
        self.state_dir.join("jobs")
    }

    pub fn job_dir(&self, id: u64) -> PathBuf {
        self.jobs_dir().join(id.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(extra: &str) -> Result<DaemonConfig, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("dispatcher.toml");
        let text = format!(
            "state_dir = \"/s\"\ndevices = \"/d\"\nlab_key = \"/k\"\nnode_agent = \"/a\"\n{extra}"
        );
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        DaemonConfig::load(&path).map_err(|e| e.to_string())
    }

    #[test]
    fn a_database_is_a_postgres_url_and_a_worker_a_plain_name() {
        let config = load("database_url = \"postgres://d@db/lava\"\nworker_id = \"rack-2\"\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.worker_name(), "rack-2");
        // Its name starts the groups of a standalone coordinator the workers share.
        let name = |url: &str| DatabaseUrl(url.to_string()).name();
        assert_eq!(name("postgres://d@db/lava"), "lava");
        assert_eq!(name("postgres://d@db/lava?host=/run/postgresql"), "lava");
        assert_eq!(name("postgres://d@db"), "lab");
        let secret = load("database_url = \"postgres://d:hunter2@db/lava\"\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !format!("{secret:?}").contains("hunter2"),
            "the password is never printed"
        );
        for (extra, said) in [
            (
                "database_url = \"postgres://db/lava\"\nlisten = \"0.0.0.0:8079\"",
                "set api_url",
            ),
            (
                "database_url = \"mysql://db/lava\"",
                "postgres:// or postgresql://",
            ),
            ("worker_id = \"rack 2\"", "without spaces"),
            ("worker_id = \"\"", "non-empty"),
        ] {
            let err = load(extra).err().unwrap_or_default();
            assert!(err.contains(said), "{extra}: {err}");
        }
        let unnamed = load("").unwrap_or_else(|e| panic!("{e}"));
        assert!(!unnamed.worker_name().is_empty(), "the host name");
    }

    /// The configuration the package installs (and the README shows) loads, and so
    /// does every key it only shows commented out: a renamed key fails here, not in a
    /// lab.
    #[test]
    fn the_shipped_configuration_and_every_key_it_shows_load() {
        let shipped = include_str!("../../../packaging/dispatcher.toml");
        let mut shown = 0;
        let uncommented: Vec<String> = shipped
            .lines()
            .map(|line| match commented_option(line) {
                Some(setting) => {
                    shown += 1;
                    setting
                }
                None => line.to_string(),
            })
            .collect();
        assert!(shown > 20, "{shown} keys shown");
        for text in [shipped.to_string(), uncommented.join("\n")] {
            let config: DaemonConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
            config.check().unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// `# key = value   # comment` as `key = value`; other lines `None`.
    fn commented_option(line: &str) -> Option<String> {
        let rest = line.strip_prefix("# ")?;
        let (key, value) = rest.split_once(" = ")?;
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return None;
        }
        let value = value.split("  #").next().unwrap_or(value).trim();
        Some(format!("{key} = {value}"))
    }

    #[test]
    fn every_missing_path_is_named_with_its_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key");
        std::fs::write(&key, "k").expect("key");
        let path = dir.path().join("dispatcher.toml");
        let text = format!(
            "state_dir = \"/s\"\ndevices = \"{}\"\nlab_key = \"{}\"\n\
             node_agent = \"/nonexistent/agent\"\ndevice_types = \"{}\"\n",
            dir.path().display(),
            key.display(),
            key.display()
        );
        std::fs::write(&path, text).expect("config");
        let config = DaemonConfig::load(&path).expect("valid");
        let missing = config.missing_paths();
        assert_eq!(missing.len(), 2, "{missing:?}");
        assert_eq!(missing[0], "node_agent = /nonexistent/agent (not found)");
        assert_eq!(
            missing[1],
            format!("device_types = {} (not a directory)", key.display())
        );
    }

    #[test]
    fn a_standalone_coordinator_needs_its_token() {
        let config = load("").expect("embedded by default");
        assert!(config.coordinator_url.is_none());
        let both = load("coordinator_url = \"http://c:7079\"\ncoordinator_token_file = \"/t\"\n")
            .expect("url and token");
        assert_eq!(both.coordinator_url.as_deref(), Some("http://c:7079"));
        for (extra, error) in [
            (
                "coordinator_url = \"http://c:7079\"\n",
                "coordinator_url needs coordinator_token_file",
            ),
            (
                "coordinator_token_file = \"/t\"\n",
                "coordinator_token_file is set without coordinator_url",
            ),
            (
                "coordinator_ca = \"/ca.pem\"\n",
                "coordinator_ca is set without coordinator_url",
            ),
        ] {
            let err = load(extra).expect_err(extra);
            assert!(err.ends_with(error), "{err}");
            assert!(err.contains("dispatcher.toml"), "names the file: {err}");
        }
    }

    #[test]
    fn the_http_limits_have_defaults_and_can_be_set() {
        let config = load("").expect("defaults");
        assert_eq!(config.max_connections, None, "derived from the fd limit");
        assert_eq!(
            (
                config.http_header_timeout_secs,
                config.http_idle_timeout_secs,
                config.http_body_timeout_secs,
                config.max_console_bytes
            ),
            (10, 60, 30, 64 * 1024 * 1024)
        );
        let set =
            load("max_connections = 50\nhttp_idle_timeout_secs = 5\nmax_console_bytes = 1024\n")
                .expect("set");
        assert_eq!(
            (
                set.max_connections,
                set.http_idle_timeout_secs,
                set.max_console_bytes
            ),
            (Some(50), 5, 1024)
        );
    }
}
