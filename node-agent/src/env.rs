//! What the dispatcher tells a test shell through its environment.

use std::path::PathBuf;
use std::time::Duration;

/// The coordinator's gRPC endpoint, e.g. `http://10.0.2.2:7079`.
pub const COORDINATOR: &str = "LAVA_COORDINATOR";
/// For an `https://` coordinator: the CA certificate (PEM file) to trust.
pub const COORDINATOR_CA: &str = "LAVA_COORDINATOR_CA";
pub const GROUP_ID: &str = "LAVA_GROUP_ID";
/// This node's id (what `lava-self` prints).
pub const NODE_ID: &str = "LAVA_NODE_ID";
/// This node's role (what `lava-role` prints).
pub const NODE_ROLE: &str = "LAVA_NODE_ROLE";
/// This node's secret token for the coordinator.
pub const NODE_TOKEN: &str = "LAVA_NODE_TOKEN";
/// The group as `lava-group` prints it: lines of `node<TAB>role`. Needed by the marker
/// transport, which cannot ask the coordinator.
pub const GROUP: &str = "LAVA_GROUP";
/// `grpc`, `marker` or `auto` (default: gRPC when LAVA_COORDINATOR is set).
pub const TRANSPORT: &str = "LAVA_MULTINODE_TRANSPORT";
/// Seconds a blocking call may wait.
pub const TIMEOUT: &str = "LAVA_MULTINODE_TIMEOUT";
pub const CACHE: &str = "LAVA_MULTI_NODE_CACHE";
pub const NETWORK_CACHE: &str = "LAVA_MULTI_NODE_NETWORK_CACHE";
/// The host's address the VMs reach it at (what `lava-start-vms` announces).
pub const VM_GROUP_HOST_IP: &str = "_LAVA_VM_GROUP_HOST_IP";

/// The largest file `lava-*-attach` sends (bytes); the dispatcher's limit.
pub const ATTACH_MAX_BYTES: &str = "LAVA_ATTACH_MAX_BYTES";
/// Where `lava-background-process-start` keeps each process's pid and output.
pub const BACKGROUND_DIR: &str = "LAVA_BACKGROUND_DIR";

pub const DEFAULT_CACHE: &str = "/tmp/lava_multi_node_cache.txt";
pub const DEFAULT_NETWORK_CACHE: &str = "/tmp/lava_multi_node_network_cache.txt";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

/// The coordinator to connect to, with its CA when one is configured.
pub fn coordinator_target() -> Result<coordinator_client::Target, String> {
    let url = var(COORDINATOR).ok_or_else(|| format!("{COORDINATOR} is not set"))?;
    let ca_pem = match var(COORDINATOR_CA) {
        None => None,
        Some(path) => {
            Some(std::fs::read(&path).map_err(|e| format!("{COORDINATOR_CA}={path}: {e}"))?)
        }
    };
    Ok(coordinator_client::Target { url, ca_pem })
}

pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

pub fn cache_file() -> PathBuf {
    PathBuf::from(var(CACHE).unwrap_or_else(|| DEFAULT_CACHE.into()))
}

pub fn network_cache_file() -> PathBuf {
    PathBuf::from(var(NETWORK_CACHE).unwrap_or_else(|| DEFAULT_NETWORK_CACHE.into()))
}

/// The per-call timeout; an unreadable value is an error rather than a silent default.
pub fn timeout() -> Result<Duration, String> {
    match var(TIMEOUT) {
        None => Ok(DEFAULT_TIMEOUT),
        Some(text) => text
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{TIMEOUT}={text:?} is not a whole number of seconds above 0")),
    }
}

/// Parses `LAVA_GROUP` lines `node<TAB>role`.
pub fn group_from_env() -> Option<Vec<(String, String)>> {
    let text = var(GROUP)?;
    Some(
        text.lines()
            .filter_map(|line| {
                let (node, role) = line.trim_end_matches('\r').split_once('\t')?;
                Some((node.to_string(), role.to_string()))
            })
            .collect(),
    )
}
