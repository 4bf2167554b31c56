//! Our coordinator in this process, and groups of node clients connected to it, as the
//! coordinator benchmarks use them.

use coordinator::{AdminClient, NodeClient};

/// The admin token of the benchmarks' coordinator.
pub const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";

/// Starts a coordinator on loopback ports; with `legacy`, also LAVA's protocol.
pub fn start(
    runtime: &tokio::runtime::Runtime,
    legacy: bool,
) -> Result<coordinator::Running, String> {
    start_keeping(runtime, legacy, None)
}

/// [`start`], keeping groups in `state_dir` when given (`coordinator --state-dir`).
pub fn start_keeping(
    runtime: &tokio::runtime::Runtime,
    legacy: bool,
    state_dir: Option<&std::path::Path>,
) -> Result<coordinator::Running, String> {
    let any = || "127.0.0.1:0".parse().map_err(|e| format!("{e}"));
    let mut config = coordinator::Config::new(any()?, ADMIN_TOKEN);
    if legacy {
        config.legacy_listen = Some(any()?);
    }
    config.state_dir = state_dir.map(std::path::Path::to_path_buf);
    runtime
        .block_on(coordinator::start(config))
        .map_err(|e| e.to_string())
}

/// Creates a group of `nodes` (id, role) and connects one client per node, each on its
/// own connection (as separate test shells would). Returns the group id and clients.
pub async fn group(
    admin: &mut AdminClient,
    endpoint: &str,
    nodes: &[(String, String)],
) -> Result<(String, Vec<NodeClient>), String> {
    let err = |e: coordinator::ClientError| e.to_string();
    let (group, creds) = admin.create_group("", nodes).await.map_err(err)?;
    let mut clients = Vec::new();
    for c in &creds {
        clients.push(
            NodeClient::connect(endpoint, &group, &c.node_id, &c.token)
                .await
                .map_err(err)?,
        );
    }
    Ok((group, clients))
}
