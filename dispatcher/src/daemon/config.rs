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
        toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// What submitted jobs are checked against.
    pub fn job_policy(&self) -> crate::validation::JobPolicy {
        crate::validation::JobPolicy {
            limits: job_schemas::Limits {
                max_count: self.max_count,
                max_group_size: self.max_group_size,
            },
            ..crate::validation::JobPolicy::default()
        }
    }

    pub fn database(&self) -> PathBuf {
        self.state_dir.join("dispatcher.db")
    }

    pub fn jobs_dir(&self) -> PathBuf {
        self.state_dir.join("jobs")
    }

    pub fn job_dir(&self, id: u64) -> PathBuf {
        self.jobs_dir().join(id.to_string())
    }
}
