//! The coordinator a job's group lives in, as the runner sees it: embedded in this
//! process (called directly) or a standalone coordinator (over gRPC, with its admin
//! token). Either way the nodes' MultiNode calls go over gRPC, through the relay.

use std::sync::Arc;

use coordinator::store::Store;
use coordinator::{AdminClient, ClientError, Credential, Target};
use proto::v1::GroupEvent;
use proto::v1::group_event::Kind;

use crate::joblog::{JobLog, Level};

/// How the dispatcher makes, fails and ends groups.
#[derive(Clone)]
pub enum Admin {
    /// The coordinator runs in this process.
    Embedded(Arc<Store>),
    /// A standalone coordinator (`coordinator --state-dir ...`): its groups outlive
    /// both a dispatcher and a coordinator restart.
    Remote(AdminClient),
}

/// The coordinator of a job's group.
#[derive(Clone)]
pub struct Coordination {
    pub admin: Admin,
    /// Its gRPC API as this process reaches it (the relay's node clients).
    pub target: Target,
    /// Starts every group id this dispatcher makes, so dispatchers sharing a
    /// standalone coordinator never pick the same id.
    pub group_prefix: String,
}

impl Coordination {
    pub fn embedded(store: Arc<Store>, url: String) -> Self {
        Self {
            admin: Admin::Embedded(store),
            target: Target::plain(&url),
            group_prefix: String::new(),
        }
    }

    /// The coordinator group of job `job_id`.
    pub fn group_id(&self, job_id: u64) -> String {
        format!("{}job-{job_id}", self.group_prefix)
    }

    /// Makes sure group `group_id` of `members` exists and returns the credentials of
    /// `here`, the members this process drives: all of them (a stale group of that id
    /// is replaced), or its part of a job that runs across several workers (whichever
    /// part comes first creates the group; the others take new tokens for their nodes
    /// in it; none: the group is only made to exist).
    pub async fn join_group(
        &self,
        group_id: &str,
        members: &[(String, String)],
        here: &[(String, String)],
    ) -> Result<Vec<Credential>, String> {
        let keep = |credentials: Vec<Credential>| {
            credentials
                .into_iter()
                .filter(|c| here.iter().any(|(id, _)| *id == c.node_id))
                .collect::<Vec<_>>()
        };
        match &self.admin {
            Admin::Embedded(store) => {
                match store.create_group(Some(group_id.to_string()), members.to_vec()) {
                    Ok((_, credentials)) => Ok(keep(credentials)),
                    Err(coordinator::store::CallError::Exists(_)) => store
                        .issue_tokens(group_id, here)
                        .map_err(|e| e.to_string()),
                    Err(err) => Err(err.to_string()),
                }
            }
            Admin::Remote(client) => {
                let mut client = client.clone();
                match client.create_group(group_id, members).await {
                    Ok((_, credentials)) => return Ok(keep(credentials)),
                    Err(ClientError::Exists(_)) => {}
                    Err(err) => return Err(err.to_string()),
                }
                // A part of a job across workers: the group is another part's (or this
                // one's whose answer a coordinator restart lost), and its nodes get new
                // tokens in it.
                if here.len() < members.len() {
                    return client
                        .issue_tokens(group_id, here)
                        .await
                        .map_err(|e| e.to_string());
                }
                // A whole job: ids are this dispatcher's own, so the group is one of its
                // jobs' from before a crash (or a database started anew), or this one's
                // whose answer a coordinator restart lost: its tokens are gone either
                // way, so it starts anew.
                tracing::warn!(group = group_id, "replacing a stale coordinator group");
                let _ = client.close_group(group_id).await;
                client
                    .create_group(group_id, members)
                    .await
                    .map(|(_, credentials)| keep(credentials))
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Ends a group: every call still waiting in it fails.
    pub async fn close_group(&self, group_id: &str) {
        let closed = match &self.admin {
            Admin::Embedded(store) => store.close_group(group_id).map_err(|e| e.to_string()),
            Admin::Remote(client) => client
                .clone()
                .close_group(group_id)
                .await
                .map_err(|e| e.to_string()),
        };
        if let Err(err) = closed {
            tracing::warn!(group = group_id, %err, "cannot close the coordinator group");
        }
    }

    /// Marks a node failed, so the calls waiting on it fail now. Does not wait for a
    /// standalone coordinator's answer: a node's end must not hang on the network.
    pub fn fail_node(&self, group_id: &str, node: &str, reason: &str) {
        match &self.admin {
            Admin::Embedded(store) => {
                let _ = store.fail_node(group_id, node, reason);
            }
            Admin::Remote(client) => {
                let (mut client, group_id) = (client.clone(), group_id.to_string());
                let (node, reason) = (node.to_string(), reason.to_string());
                tokio::spawn(async move {
                    if let Err(err) = client.fail_node(&group_id, &node, &reason).await {
                        tracing::warn!(group = group_id, node, %err,
                            "cannot tell the coordinator a node failed");
                    }
                });
            }
        }
    }

    /// Logs every MultiNode wait of the group as it starts, with the nodes it waits
    /// for, so a log reader sees who holds a group up. Runs until the group closes.
    pub fn log_waits(&self, group_id: &str, log: &JobLog) {
        let log = log.clone();
        match &self.admin {
            Admin::Embedded(store) => {
                let Ok(cell) = store.group(group_id) else {
                    return;
                };
                let mut events = cell.subscribe();
                tokio::spawn(async move {
                    use tokio::sync::broadcast::error::RecvError;
                    loop {
                        match events.recv().await {
                            Ok(event) => {
                                if !log_event(&log, event) {
                                    return;
                                }
                            }
                            Err(RecvError::Lagged(_)) => {}
                            Err(RecvError::Closed) => return,
                        }
                    }
                });
            }
            Admin::Remote(client) => {
                let (mut client, group_id) = (client.clone(), group_id.to_string());
                tokio::spawn(async move {
                    use futures::StreamExt;
                    // Watched again after a coordinator restart, until the group ends.
                    loop {
                        let Ok(mut events) = client.watch_group(&group_id).await else {
                            return;
                        };
                        while let Some(event) = events.next().await {
                            match event {
                                Ok(event) => {
                                    if !log_event(&log, event) {
                                        return;
                                    }
                                }
                                Err(_) => break,
                            }
                        }
                    }
                });
            }
        }
    }

    /// Groups alive and calls blocked now, when the coordinator is in this process.
    pub fn gauges(&self) -> Option<(usize, usize)> {
        match &self.admin {
            Admin::Embedded(store) => Some((store.group_count(), store.waiter_count())),
            Admin::Remote(_) => None,
        }
    }
}

/// Logs a wait; false once the group closed.
fn log_event(log: &JobLog, event: GroupEvent) -> bool {
    match event.kind {
        Some(Kind::Waiting(wait)) => {
            log.line(
                Level::Info,
                Some(&wait.node_id),
                format!(
                    "lava-{} '{}' waits for {}: {}",
                    wait.call,
                    wait.message_id,
                    wait.missing_count,
                    wait.missing.join(", ")
                ),
            );
            true
        }
        Some(Kind::GroupClosed(_)) => false,
        _ => true,
    }
}
