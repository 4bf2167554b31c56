//! Clients of the coordinator: [`NodeClient`] (what a node may do, with its token) and
//! [`AdminClient`] (what the dispatcher does). Used by the node agent, the dispatcher's
//! marker relay, tests and benchmarks.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::v1::coordinator_client::CoordinatorClient;
use proto::v1::{self, Deadline};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

pub use crate::Credential;
use crate::{Data, Senders};

/// Why a client call failed, in the terms a test shell acts on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The coordinator could not be reached.
    #[error("cannot reach the coordinator at {endpoint}: {message}")]
    Unreachable { endpoint: String, message: String },
    /// Credentials were missing or wrong.
    #[error("refused: {0}")]
    Refused(String),
    /// The request itself is wrong (bad message id, unknown role, ...).
    #[error("invalid: {0}")]
    Invalid(String),
    /// A MultiNode call failed: a node it waited for failed or finished, or the group
    /// was closed.
    #[error("{0}")]
    Failed(String),
    /// A MultiNode call's deadline passed.
    #[error("{0}")]
    Timeout(String),
    /// A group of that id exists already.
    #[error("{0}")]
    Exists(String),
    #[error("coordinator error: {0}")]
    Other(String),
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => ClientError::Refused(message),
            Code::InvalidArgument | Code::NotFound => ClientError::Invalid(message),
            Code::AlreadyExists => ClientError::Exists(message),
            Code::FailedPrecondition | Code::Aborted => ClientError::Failed(message),
            Code::DeadlineExceeded => ClientError::Timeout(message),
            Code::Unavailable => ClientError::Unreachable {
                endpoint: String::new(),
                message,
            },
            _ => ClientError::Other(format!("{:?}: {message}", status.code())),
        }
    }
}

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Inner = CoordinatorClient<InterceptedService<Channel, Bearer>>;

/// How to reach the coordinator: its URL and, for `https://`, the CA certificate (PEM)
/// its certificate must chain to.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub ca_pem: Option<Vec<u8>>,
}

impl Target {
    pub fn plain(url: &str) -> Self {
        Self {
            url: url.to_string(),
            ca_pem: None,
        }
    }
}

impl From<&str> for Target {
    fn from(url: &str) -> Self {
        Target::plain(url)
    }
}

impl From<&String> for Target {
    fn from(url: &String) -> Self {
        Target::plain(url)
    }
}

async fn connect(target: &Target, token: &str) -> Result<Inner, ClientError> {
    let unreachable = |message: String| ClientError::Unreachable {
        endpoint: target.url.clone(),
        message,
    };
    let bearer = format!("Bearer {token}").parse().map_err(|_| {
        ClientError::Invalid("the token has characters a header cannot carry".into())
    })?;
    let mut endpoint = Endpoint::from_shared(target.url.clone())
        .map_err(|e| unreachable(e.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    if let Some(ca) = &target.ca_pem {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca));
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| unreachable(source_chain(&e)))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| unreachable(source_chain(&e)))?;
    Ok(CoordinatorClient::with_interceptor(channel, Bearer(bearer)))
}

/// An error and its causes, `a: b: c`. A cause that says what the text already ends
/// with is left out: transport layers wrap an error in one that repeats its words
/// ("tcp connect error: tcp connect error: Connection refused").
fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let said = inner.to_string();
        if !said.is_empty() && !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod chain_tests {
    use super::source_chain;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn a_cause_repeating_its_wrapper_is_said_once() {
        let error = Layer(
            "transport error",
            Some(Box::new(Layer(
                "tcp connect error",
                Some(Box::new(Layer(
                    "tcp connect error",
                    Some(Box::new(Layer("Connection refused (os error 111)", None))),
                ))),
            ))),
        );
        assert_eq!(
            source_chain(&error),
            "transport error: tcp connect error: Connection refused (os error 111)"
        );
    }
}

/// A blocking call's request with its deadline, and a transport timeout a little past
/// it so a vanished coordinator cannot hang the caller forever.
fn with_deadline<T>(message: T, deadline: Option<SystemTime>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(deadline) = deadline {
        let left = deadline
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        request.set_timeout(left + Duration::from_secs(5));
    }
    request
}

/// How long a call without a deadline keeps trying to reach a coordinator that is away
/// (restarting).
pub const RECONNECT_BUDGET: Duration = Duration::from_secs(60);

/// Whether a call failed because the coordinator could not be reached (it stopped or
/// restarts), not because of anything it answered.
fn unreachable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        // A connection cut mid-call surfaces as a transport error.
        Code::Unknown | Code::Internal => {
            let m = status.message();
            m.contains("transport") || m.contains("connection") || m.contains("broken pipe")
        }
        _ => false,
    }
}

/// Makes `call` until the coordinator answers it. While the coordinator cannot be
/// reached, the call is made again after a growing pause (50 ms to 1 s), until
/// `deadline` (or [`RECONNECT_BUDGET`]) passes: a coordinator that restarts with its
/// state directory finds every group as it was, and every call here is safe to
/// repeat (a sync names itself with a call id for that).
async fn retrying<T, Fut>(
    inner: &Inner,
    deadline: Option<SystemTime>,
    mut call: impl FnMut(Inner) -> Fut,
) -> Result<T, Status>
where
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let give_up = deadline.unwrap_or_else(|| SystemTime::now() + RECONNECT_BUDGET);
    let mut pause = Duration::from_millis(50);
    loop {
        match call(inner.clone()).await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) if unreachable(&status) && SystemTime::now() + pause < give_up => {
                tracing::debug!(%status, ?pause, "coordinator unreachable; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(status) => return Err(status),
        }
    }
}

/// `retrying` one RPC: `$request` is made anew for each attempt.
macro_rules! call {
    ($inner:expr, $deadline:expr, $method:ident, $request:expr) => {
        retrying($inner, $deadline, |mut client| {
            let request = $request;
            async move { client.$method(request).await }
        })
    };
}

fn deadline_of(deadline: Option<SystemTime>) -> Option<Deadline> {
    deadline.map(|d| Deadline {
        unix_ms: d
            .duration_since(UNIX_EPOCH)
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(1),
    })
}

fn senders(reply: v1::MessageReply) -> Senders {
    reply
        .senders
        .into_iter()
        .map(|(node, data)| (node, data.data.into_iter().collect()))
        .collect()
}

/// The group as a node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    pub node_id: String,
    pub role: String,
    /// `(node id, role)` in creation order.
    pub nodes: Vec<(String, String)>,
}

/// One node's connection: every call is made as this node, with its token.
#[derive(Clone)]
pub struct NodeClient {
    inner: Inner,
    group_id: String,
    node_id: String,
}

impl NodeClient {
    pub async fn connect(
        target: impl Into<Target>,
        group_id: &str,
        node_id: &str,
        token: &str,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            inner: connect(&target.into(), token).await?,
            group_id: group_id.to_string(),
            node_id: node_id.to_string(),
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    fn ids(&self) -> (String, String) {
        (self.group_id.clone(), self.node_id.clone())
    }

    pub async fn group_info(&mut self) -> Result<GroupView, ClientError> {
        let (group_id, node_id) = self.ids();
        let request = v1::GroupInfoRequest { group_id, node_id };
        let r = call!(&self.inner, None, group_info, request.clone()).await?;
        Ok(GroupView {
            node_id: r.node_id,
            role: r.role,
            nodes: r.nodes.into_iter().map(|n| (n.node_id, n.role)).collect(),
        })
    }

    pub async fn send(&mut self, message_id: &str, data: Data) -> Result<(), ClientError> {
        let (group_id, node_id) = self.ids();
        let request = v1::SendRequest {
            group_id,
            node_id,
            message_id: message_id.to_string(),
            data: data.into_iter().collect(),
        };
        call!(&self.inner, None, send, request.clone()).await?;
        Ok(())
    }

    pub async fn wait(
        &mut self,
        message_id: &str,
        deadline: Option<SystemTime>,
    ) -> Result<Senders, ClientError> {
        let (group_id, node_id) = self.ids();
        let request = v1::WaitRequest {
            group_id,
            node_id,
            message_id: message_id.to_string(),
            deadline: deadline_of(deadline),
        };
        let reply = call!(
            &self.inner,
            deadline,
            wait,
            with_deadline(request.clone(), deadline)
        )
        .await?;
        Ok(senders(reply))
    }

    pub async fn wait_all(
        &mut self,
        message_id: &str,
        role: Option<&str>,
        deadline: Option<SystemTime>,
    ) -> Result<Senders, ClientError> {
        let (group_id, node_id) = self.ids();
        let request = v1::WaitAllRequest {
            group_id,
            node_id,
            message_id: message_id.to_string(),
            role: role.unwrap_or_default().to_string(),
            deadline: deadline_of(deadline),
        };
        let reply = call!(
            &self.inner,
            deadline,
            wait_all,
            with_deadline(request.clone(), deadline)
        )
        .await?;
        Ok(senders(reply))
    }

    pub async fn sync(
        &mut self,
        message_id: &str,
        deadline: Option<SystemTime>,
    ) -> Result<(), ClientError> {
        let (group_id, node_id) = self.ids();
        let request = v1::SyncRequest {
            group_id,
            node_id,
            message_id: message_id.to_string(),
            deadline: deadline_of(deadline),
            // The same on every retry of this call, never 0.
            call: rand::random::<u64>().max(1),
        };
        call!(
            &self.inner,
            deadline,
            sync,
            with_deadline(request.clone(), deadline)
        )
        .await?;
        Ok(())
    }

    pub async fn network_broadcast(&mut self, info: v1::NetworkInfo) -> Result<(), ClientError> {
        let (group_id, node_id) = self.ids();
        let request = v1::NetworkBroadcastRequest {
            group_id,
            node_id,
            info: Some(info),
        };
        call!(&self.inner, None, network_broadcast, request.clone()).await?;
        Ok(())
    }

    pub async fn network_collect(
        &mut self,
        role: Option<&str>,
        deadline: Option<SystemTime>,
    ) -> Result<BTreeMap<String, v1::NetworkInfo>, ClientError> {
        let (group_id, node_id) = self.ids();
        let request = v1::NetworkCollectRequest {
            group_id,
            node_id,
            role: role.unwrap_or_default().to_string(),
            deadline: deadline_of(deadline),
        };
        let reply = call!(
            &self.inner,
            deadline,
            network_collect,
            with_deadline(request.clone(), deadline)
        )
        .await?;
        Ok(reply.nodes.into_iter().collect())
    }

    pub async fn start_vms(&mut self, host_ip: &str) -> Result<(), ClientError> {
        let (group_id, node_id) = self.ids();
        let request = v1::StartVmsRequest {
            group_id,
            node_id,
            host_ip: host_ip.to_string(),
        };
        call!(&self.inner, None, start_vms, request.clone()).await?;
        Ok(())
    }

    pub async fn wait_for_vms(&mut self, deadline: Option<SystemTime>) -> Result<(), ClientError> {
        let (group_id, node_id) = self.ids();
        let request = v1::WaitForVmsRequest {
            group_id,
            node_id,
            deadline: deadline_of(deadline),
        };
        call!(
            &self.inner,
            deadline,
            wait_for_vms,
            with_deadline(request.clone(), deadline)
        )
        .await?;
        Ok(())
    }

    pub async fn finish(&mut self) -> Result<(), ClientError> {
        let (group_id, node_id) = self.ids();
        let request = v1::FinishRequest { group_id, node_id };
        call!(&self.inner, None, finish, request.clone()).await?;
        Ok(())
    }

    /// Opens the node's presence stream; the node is alive while it is held open.
    pub async fn attach(&mut self) -> Result<tonic::Streaming<v1::GroupEvent>, ClientError> {
        let (group_id, node_id) = self.ids();
        let request = v1::AttachRequest { group_id, node_id };
        Ok(call!(&self.inner, None, attach, request.clone()).await?)
    }

    /// Opens the node's presence and holds it for as long as the returned task runs,
    /// opening it again whenever the coordinator went away (a restart). The task ends
    /// when the coordinator refuses it (the node failed or the group closed) or cannot
    /// be reached for [`RECONNECT_BUDGET`]; abort it when the node is done.
    pub async fn hold_presence(&mut self) -> Result<tokio::task::JoinHandle<()>, ClientError> {
        let mut stream = self.attach().await?;
        let mut client = self.clone();
        Ok(tokio::spawn(async move {
            use tokio_stream::StreamExt;
            loop {
                while let Some(event) = stream.next().await {
                    if let Err(status) = event {
                        tracing::debug!(%status, "presence stream cut");
                        break;
                    }
                }
                stream = match client.attach().await {
                    Ok(stream) => stream,
                    Err(err) => {
                        tracing::warn!(%err, "cannot hold the node's presence");
                        return;
                    }
                };
            }
        }))
    }
}

/// The dispatcher's connection, with the admin token.
#[derive(Clone)]
pub struct AdminClient {
    inner: Inner,
}

impl AdminClient {
    pub async fn connect(
        target: impl Into<Target>,
        admin_token: &str,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            inner: connect(&target.into(), admin_token).await?,
        })
    }

    /// Creates a group of `(node id, role)`; returns its id and every node's token.
    pub async fn create_group(
        &mut self,
        group_id: &str,
        nodes: &[(String, String)],
    ) -> Result<(String, Vec<Credential>), ClientError> {
        let request = v1::CreateGroupRequest {
            group_id: group_id.to_string(),
            nodes: node_specs(nodes),
        };
        let r = call!(&self.inner, None, create_group, request.clone()).await?;
        Ok((r.group_id, credentials_of(r.nodes)))
    }

    /// New tokens for `nodes` (id, role) of existing group `group_id`: for a
    /// dispatcher that drives only some of its nodes.
    pub async fn issue_tokens(
        &mut self,
        group_id: &str,
        nodes: &[(String, String)],
    ) -> Result<Vec<Credential>, ClientError> {
        let request = v1::IssueTokensRequest {
            group_id: group_id.to_string(),
            nodes: node_specs(nodes),
        };
        let r = call!(&self.inner, None, issue_tokens, request.clone()).await?;
        Ok(credentials_of(r.nodes))
    }

    pub async fn fail_node(
        &mut self,
        group_id: &str,
        node_id: &str,
        reason: &str,
    ) -> Result<(), ClientError> {
        let request = v1::FailNodeRequest {
            group_id: group_id.to_string(),
            node_id: node_id.to_string(),
            reason: reason.to_string(),
        };
        call!(&self.inner, None, fail_node, request.clone()).await?;
        Ok(())
    }

    pub async fn close_group(&mut self, group_id: &str) -> Result<(), ClientError> {
        let request = v1::CloseGroupRequest {
            group_id: group_id.to_string(),
        };
        call!(&self.inner, None, close_group, request.clone()).await?;
        Ok(())
    }

    pub async fn watch_group(
        &mut self,
        group_id: &str,
    ) -> Result<tonic::Streaming<v1::GroupEvent>, ClientError> {
        let request = v1::WatchGroupRequest {
            group_id: group_id.to_string(),
        };
        Ok(call!(&self.inner, None, watch_group, request.clone()).await?)
    }
}

fn node_specs(nodes: &[(String, String)]) -> Vec<v1::NodeSpec> {
    nodes
        .iter()
        .map(|(node_id, role)| v1::NodeSpec {
            node_id: node_id.clone(),
            role: role.clone(),
        })
        .collect()
}

fn credentials_of(nodes: Vec<v1::NodeCredential>) -> Vec<Credential> {
    nodes
        .into_iter()
        .map(|n| Credential {
            node_id: n.node_id,
            role: n.role,
            token: n.token,
        })
        .collect()
}
