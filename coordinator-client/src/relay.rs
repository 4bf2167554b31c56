//! The dispatcher side of the console marker protocol: answers a node's
//! `<LAVA_MULTI_NODE> <LAVA_...>` calls with the coordinator, as that node.

use std::time::{Duration, SystemTime};

use proto::markers::{self, Call, Reply};

use crate::Senders;
use crate::client::{ClientError, NodeClient};

/// Answers one node's marker calls.
pub struct Relay {
    client: NodeClient,
    /// How long a blocking call may wait (LAVA: the job's MultiNode timeout).
    timeout: Duration,
}

impl Relay {
    pub fn new(client: NodeClient, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    /// Makes the call; returns the line to type into the node's console, if any.
    /// `LAVA_SEND` gets no reply (as in LAVA); its failure is returned as an error for the
    /// dispatcher to log against the node.
    pub async fn answer(&mut self, call: &Call) -> Result<Option<String>, ClientError> {
        let deadline = Some(SystemTime::now() + self.timeout);
        let api = call.api().to_string();
        let outcome = match call {
            Call::Send { id, data } => {
                self.client.send(id, data.iter().cloned().collect()).await?;
                return Ok(None);
            }
            Call::Wait { id } => self.client.wait(id, deadline).await.map(entries),
            Call::WaitAll { id, role } => self
                .client
                .wait_all(id, role.as_deref(), deadline)
                .await
                .map(entries),
            Call::Sync { id } => self.client.sync(id, deadline).await.map(|()| Vec::new()),
        };
        let reply = match outcome {
            Ok(entries) => Reply::Complete { api, entries },
            Err(err) => Reply::Nack {
                api,
                reason: Some(err.to_string()),
            },
        };
        Ok(Some(markers::format_reply(&reply)))
    }
}

fn entries(senders: Senders) -> Vec<(String, String, String)> {
    senders
        .into_iter()
        .flat_map(|(node, data)| data.into_iter().map(move |(k, v)| (node.clone(), k, v)))
        .collect()
}
