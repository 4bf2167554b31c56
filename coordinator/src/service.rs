//! The gRPC service: maps each RPC to the store, and store errors to gRPC statuses.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use proto::multinode::{NETWORK_MESSAGE, VM_START_HOST_IP, VM_START_MESSAGE, VM_STOP_MESSAGE};
use proto::v1::coordinator_server::Coordinator;
use proto::v1::{self, group_event};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tonic::{Request, Response, Status};

use crate::auth;
use crate::group::{self, Data, Senders, Topic};
use crate::store::{self, CallError, GroupCell, Store};

pub type EventStream = Pin<Box<dyn Stream<Item = Result<v1::GroupEvent, Status>> + Send>>;

/// The coordinator's gRPC face.
#[derive(Clone)]
pub struct Service {
    store: Arc<Store>,
}

impl Service {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    fn admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.store
            .authorize_admin(auth::bearer(request.metadata()))
            .map_err(status)
    }

    /// Authorizes a node call and marks the node active.
    fn node<T: NodeCall>(&self, request: &Request<T>) -> Result<Arc<GroupCell>, Status> {
        self.enter(request, false)
    }

    /// [`Service::node`], and with `attaching` the node's presence opens in the same
    /// change, so whoever sees the node active knows its presence is recorded.
    fn enter<T: NodeCall>(
        &self,
        request: &Request<T>,
        attaching: bool,
    ) -> Result<Arc<GroupCell>, Status> {
        let (group_id, node_id) = (request.get_ref().group_id(), request.get_ref().node_id());
        let cell = self
            .store
            .authorize_node(auth::bearer(request.metadata()), group_id, node_id)
            .map_err(status)?;
        let became_active = cell
            .update(|g| {
                let became_active = g.touch(node_id)?;
                if attaching {
                    g.attach(node_id);
                }
                Ok(became_active)
            })
            .map_err(|r: group::Refusal| status(r.into()))?;
        if became_active.is_some()
            && let Some(node) = cell.lock().node(node_id).map(store::node_changed)
        {
            cell.emit(group_event::Kind::NodeChanged(node));
        }
        Ok(cell)
    }

    fn send_in(
        cell: &GroupCell,
        node_id: &str,
        message_id: &str,
        data: Data,
    ) -> Result<(), Status> {
        cell.update(|g| g.send(node_id, message_id, data))
            .map_err(|r| status(r.into()))?;
        cell.emit(group_event::Kind::MessageSent(v1::MessageSent {
            node_id: node_id.to_string(),
            message_id: message_id.to_string(),
        }));
        Ok(())
    }
}

/// A call a node makes: it names its group and itself (and its token proves it).
trait NodeCall {
    fn group_id(&self) -> &str;
    fn node_id(&self) -> &str;
}

macro_rules! node_calls {
    ($($request:ty),* $(,)?) => {
        $(impl NodeCall for $request {
            fn group_id(&self) -> &str {
                &self.group_id
            }
            fn node_id(&self) -> &str {
                &self.node_id
            }
        })*
    };
}

node_calls!(
    v1::AttachRequest,
    v1::GroupInfoRequest,
    v1::SendRequest,
    v1::WaitRequest,
    v1::WaitAllRequest,
    v1::SyncRequest,
    v1::NetworkBroadcastRequest,
    v1::NetworkCollectRequest,
    v1::StartVmsRequest,
    v1::WaitForVmsRequest,
    v1::FinishRequest,
);

/// Maps a store error to the gRPC status a client can act on.
pub fn status(error: CallError) -> Status {
    let message = error.to_string();
    match error {
        CallError::Unauthenticated => Status::unauthenticated(message),
        CallError::Denied(_) => Status::permission_denied(message),
        CallError::NoSuchGroup(_) => Status::not_found(message),
        CallError::Invalid(_) => Status::invalid_argument(message),
        CallError::Refused(_) | CallError::Hopeless(_) => Status::failed_precondition(message),
        CallError::Deadline(_) => Status::deadline_exceeded(message),
        CallError::Exists(_) => Status::already_exists(message),
        CallError::Storage(_) => Status::unavailable(message),
    }
}

/// Nodes' new credentials, as the API answers them.
fn credentials_of(
    group_id: String,
    credentials: Vec<crate::Credential>,
) -> v1::CreateGroupResponse {
    v1::CreateGroupResponse {
        group_id,
        nodes: credentials
            .into_iter()
            .map(|c| v1::NodeCredential {
                node_id: c.node_id,
                role: c.role,
                token: c.token,
            })
            .collect(),
    }
}

fn reply(senders: Senders) -> v1::MessageReply {
    v1::MessageReply {
        senders: senders
            .into_iter()
            .map(|(node, data)| {
                (
                    node,
                    v1::SenderData {
                        data: data.into_iter().collect(),
                    },
                )
            })
            .collect(),
    }
}

fn non_empty(role: &str) -> Option<&str> {
    (!role.is_empty()).then_some(role)
}

/// A node's presence: while the client keeps this stream open the node is alive; when
/// the stream is dropped before the node finished, the node has failed.
struct Presence {
    events: EventStream,
    store: Arc<Store>,
    cell: Arc<GroupCell>,
    node_id: String,
}

impl Stream for Presence {
    type Item = Result<v1::GroupEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.as_mut().poll_next(cx)
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        // A coordinator that stops cuts every stream; its nodes have not failed, and
        // with a state directory they carry on after the restart.
        if !self.store.is_stopping() {
            store::fail_in(&self.cell, &self.node_id, "connection lost");
        }
    }
}

/// The group's current state, then its events as they happen. Subscribes before taking
/// the snapshot, so nothing falls in between (a watcher may see a change twice).
fn event_stream(cell: &GroupCell) -> EventStream {
    let receiver = cell.subscribe();
    let snapshot = tokio_stream::iter(cell.snapshot().into_iter().map(Ok));
    let live = BroadcastStream::new(receiver).filter_map(|event| match event {
        Ok(event) => Some(Ok(event)),
        // A slow watcher misses events rather than slowing the group down.
        Err(BroadcastStreamRecvError::Lagged(_)) => None,
    });
    Box::pin(snapshot.chain(live))
}

#[tonic::async_trait]
impl Coordinator for Service {
    type WatchGroupStream = EventStream;
    type AttachStream = EventStream;

    async fn create_group(
        &self,
        request: Request<v1::CreateGroupRequest>,
    ) -> Result<Response<v1::CreateGroupResponse>, Status> {
        self.admin(&request)?;
        let r = request.into_inner();
        let nodes = r.nodes.into_iter().map(|n| (n.node_id, n.role)).collect();
        let (group_id, credentials) = self
            .store
            .create_group(Some(r.group_id), nodes)
            .map_err(status)?;
        tracing::info!(group = %group_id, nodes = credentials.len(), "group created");
        Ok(Response::new(credentials_of(group_id, credentials)))
    }

    async fn issue_tokens(
        &self,
        request: Request<v1::IssueTokensRequest>,
    ) -> Result<Response<v1::CreateGroupResponse>, Status> {
        self.admin(&request)?;
        let r = request.into_inner();
        let nodes: Vec<(String, String)> =
            r.nodes.into_iter().map(|n| (n.node_id, n.role)).collect();
        let credentials = self
            .store
            .issue_tokens(&r.group_id, &nodes)
            .map_err(status)?;
        tracing::info!(group = %r.group_id, nodes = credentials.len(), "tokens issued");
        Ok(Response::new(credentials_of(r.group_id, credentials)))
    }

    async fn fail_node(
        &self,
        request: Request<v1::FailNodeRequest>,
    ) -> Result<Response<v1::FailNodeResponse>, Status> {
        self.admin(&request)?;
        let r = request.into_inner();
        let reason = if r.reason.is_empty() {
            "failed"
        } else {
            &r.reason
        };
        self.store
            .fail_node(&r.group_id, &r.node_id, reason)
            .map_err(status)?;
        Ok(Response::new(v1::FailNodeResponse {}))
    }

    async fn close_group(
        &self,
        request: Request<v1::CloseGroupRequest>,
    ) -> Result<Response<v1::CloseGroupResponse>, Status> {
        self.admin(&request)?;
        self.store
            .close_group(&request.get_ref().group_id)
            .map_err(status)?;
        Ok(Response::new(v1::CloseGroupResponse {}))
    }

    async fn watch_group(
        &self,
        request: Request<v1::WatchGroupRequest>,
    ) -> Result<Response<Self::WatchGroupStream>, Status> {
        self.admin(&request)?;
        let cell = self
            .store
            .group(&request.get_ref().group_id)
            .map_err(status)?;
        Ok(Response::new(event_stream(&cell)))
    }

    async fn attach(
        &self,
        request: Request<v1::AttachRequest>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let r = request.get_ref();
        let cell = self.enter(&request, true)?;
        let presence = Presence {
            events: event_stream(&cell),
            store: self.store.clone(),
            cell,
            node_id: r.node_id.clone(),
        };
        Ok(Response::new(Box::pin(presence)))
    }

    async fn group_info(
        &self,
        request: Request<v1::GroupInfoRequest>,
    ) -> Result<Response<v1::GroupInfoResponse>, Status> {
        let r = request.get_ref();
        let cell = self.node(&request)?;
        let group = cell.lock();
        let role = group
            .node(&r.node_id)
            .map(|n| n.role.clone())
            .unwrap_or_default();
        Ok(Response::new(v1::GroupInfoResponse {
            node_id: r.node_id.clone(),
            role,
            nodes: group
                .nodes()
                .iter()
                .map(|n| v1::NodeSpec {
                    node_id: n.id.clone(),
                    role: n.role.clone(),
                })
                .collect(),
        }))
    }

    async fn send(
        &self,
        request: Request<v1::SendRequest>,
    ) -> Result<Response<v1::SendResponse>, Status> {
        let cell = self.node(&request)?;
        let r = request.into_inner();
        Self::send_in(
            &cell,
            &r.node_id,
            &r.message_id,
            r.data.into_iter().collect(),
        )?;
        Ok(Response::new(v1::SendResponse {}))
    }

    async fn wait(
        &self,
        request: Request<v1::WaitRequest>,
    ) -> Result<Response<v1::MessageReply>, Status> {
        let r = request.get_ref();
        let cell = self.node(&request)?;
        group::check_message_id(&r.message_id).map_err(|e| status(e.into()))?;
        let deadline = self.store.deadline(r.deadline.as_ref());
        let senders = cell
            .wait_for(
                &r.node_id,
                "lava-wait",
                message(&r.message_id),
                deadline,
                |g| Ok(g.check_wait(&r.node_id, &r.message_id)),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(reply(senders)))
    }

    async fn wait_all(
        &self,
        request: Request<v1::WaitAllRequest>,
    ) -> Result<Response<v1::MessageReply>, Status> {
        let r = request.get_ref();
        let cell = self.node(&request)?;
        group::check_message_id(&r.message_id).map_err(|e| status(e.into()))?;
        let deadline = self.store.deadline(r.deadline.as_ref());
        let senders = cell
            .wait_for(
                &r.node_id,
                "lava-wait-all",
                message(&r.message_id),
                deadline,
                |g| g.check_wait_all(&r.node_id, &r.message_id, non_empty(&r.role)),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(reply(senders)))
    }

    async fn sync(
        &self,
        request: Request<v1::SyncRequest>,
    ) -> Result<Response<v1::SyncResponse>, Status> {
        let r = request.get_ref();
        let cell = self.node(&request)?;
        let deadline = self.store.deadline(r.deadline.as_ref());
        let barrier = (r.message_id.as_str(), Topic::Sync(r.message_id.clone()));
        cell.wait_for(&r.node_id, "lava-sync", barrier, deadline, |g| {
            g.poll_sync(&r.node_id, &r.message_id, None, r.call)
        })
        .await
        .map_err(status)?;
        cell.emit(group_event::Kind::SyncPassed(v1::SyncPassed {
            message_id: r.message_id.clone(),
        }));
        Ok(Response::new(v1::SyncResponse {}))
    }

    async fn network_broadcast(
        &self,
        request: Request<v1::NetworkBroadcastRequest>,
    ) -> Result<Response<v1::NetworkBroadcastResponse>, Status> {
        let cell = self.node(&request)?;
        let r = request.into_inner();
        let info = r.info.unwrap_or_default();
        Self::send_in(
            &cell,
            &r.node_id,
            NETWORK_MESSAGE,
            crate::network::to_data(&info),
        )?;
        Ok(Response::new(v1::NetworkBroadcastResponse {}))
    }

    async fn network_collect(
        &self,
        request: Request<v1::NetworkCollectRequest>,
    ) -> Result<Response<v1::NetworkCollectResponse>, Status> {
        let r = request.get_ref();
        let cell = self.node(&request)?;
        let deadline = self.store.deadline(r.deadline.as_ref());
        let senders = cell
            .wait_for(
                &r.node_id,
                "lava-network collect",
                message(NETWORK_MESSAGE),
                deadline,
                |g| g.check_network(&r.node_id, non_empty(&r.role)),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(v1::NetworkCollectResponse {
            nodes: senders
                .into_iter()
                .map(|(node, data)| (node, crate::network::from_data(&data)))
                .collect(),
        }))
    }

    async fn start_vms(
        &self,
        request: Request<v1::StartVmsRequest>,
    ) -> Result<Response<v1::StartVmsResponse>, Status> {
        let cell = self.node(&request)?;
        let r = request.into_inner();
        let data = Data::from([(VM_START_HOST_IP.to_string(), r.host_ip.clone())]);
        Self::send_in(&cell, &r.node_id, VM_START_MESSAGE, data)?;
        cell.emit(group_event::Kind::VmsStartRequested(
            v1::VmsStartRequested {
                node_id: r.node_id,
                host_ip: r.host_ip,
            },
        ));
        Ok(Response::new(v1::StartVmsResponse {}))
    }

    async fn wait_for_vms(
        &self,
        request: Request<v1::WaitForVmsRequest>,
    ) -> Result<Response<v1::WaitForVmsResponse>, Status> {
        let r = request.get_ref();
        let cell = self.node(&request)?;
        Self::send_in(&cell, &r.node_id, VM_STOP_MESSAGE, Data::new())?;
        let deadline = self.store.deadline(r.deadline.as_ref());
        cell.wait_for(
            &r.node_id,
            "lava-wait-for-vms",
            message(VM_STOP_MESSAGE),
            deadline,
            |g| g.check_wait_all(&r.node_id, VM_STOP_MESSAGE, None),
        )
        .await
        .map_err(status)?;
        Ok(Response::new(v1::WaitForVmsResponse {}))
    }

    async fn finish(
        &self,
        request: Request<v1::FinishRequest>,
    ) -> Result<Response<v1::FinishResponse>, Status> {
        let r = request.get_ref();
        let cell = self.node(&request)?;
        let changed = cell.update(|g| {
            g.finish(&r.node_id)
                .then(|| g.node(&r.node_id).map(store::node_changed))
        });
        if let Some(Some(event)) = changed {
            cell.emit(group_event::Kind::NodeChanged(event));
        }
        Ok(Response::new(v1::FinishResponse {}))
    }
}

/// A message id and the topic a call waiting for it is woken by.
fn message(id: &str) -> (&str, Topic) {
    (id, Topic::Message(id.to_string()))
}
