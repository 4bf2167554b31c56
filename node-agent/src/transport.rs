//! How a command reaches the coordinator: gRPC straight to it, or console markers the
//! dispatcher relays (for nodes with no network path).

use std::io::Write;
use std::os::fd::AsFd;
use std::time::{Duration, Instant, SystemTime};

use coordinator_client::{ClientError, NodeClient, Senders, network};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use proto::markers::{self, Call, Reply};
use proto::multinode::{NETWORK_MESSAGE, VM_START_HOST_IP, VM_START_MESSAGE, VM_STOP_MESSAGE};
use proto::v1::NetworkInfo;

use crate::env;

/// `(node, key, value)` of every sender's data, as the cache file lists it.
pub type Entries = Vec<(String, String, String)>;

/// Why a command failed; decides its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Wrong arguments (exit 2).
    Usage(String),
    /// The node cannot talk to the coordinator at all (exit 3).
    Infrastructure(String),
    /// The MultiNode call itself failed: nack, timeout, a peer failed (exit 1).
    MultiNode(String),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::MultiNode(_) => 1,
            Failure::Usage(_) => 2,
            Failure::Infrastructure(_) => 3,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::Usage(m) | Failure::Infrastructure(m) | Failure::MultiNode(m) => m,
        }
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        match error {
            ClientError::Failed(_) | ClientError::Timeout(_) => {
                Failure::MultiNode(error.to_string())
            }
            ClientError::Invalid(_) => Failure::Usage(error.to_string()),
            _ => Failure::Infrastructure(error.to_string()),
        }
    }
}

pub enum Transport {
    Grpc(Box<NodeClient>),
    Marker(MarkerConsole),
}

fn required(name: &str) -> Result<String, Failure> {
    env::var(name).ok_or_else(|| {
        Failure::Infrastructure(format!(
            "{name} is not set: not running in a MultiNode test shell?"
        ))
    })
}

impl Transport {
    /// Chooses and opens the transport the environment asks for.
    pub async fn open(timeout: Duration) -> Result<Self, Failure> {
        let wanted = env::var(env::TRANSPORT).unwrap_or_else(|| "auto".into());
        let grpc = match wanted.as_str() {
            "grpc" => true,
            "marker" => false,
            "auto" => env::var(env::COORDINATOR).is_some(),
            other => {
                return Err(Failure::Usage(format!(
                    "{}={other:?}: expected grpc, marker or auto",
                    env::TRANSPORT
                )));
            }
        };
        if grpc {
            let client = NodeClient::connect(
                env::coordinator_target().map_err(Failure::Infrastructure)?,
                &required(env::GROUP_ID)?,
                &required(env::NODE_ID)?,
                &required(env::NODE_TOKEN)?,
            )
            .await?;
            Ok(Transport::Grpc(Box::new(client)))
        } else {
            Ok(Transport::Marker(MarkerConsole { timeout }))
        }
    }

    pub async fn send(&mut self, id: &str, data: Vec<(String, String)>) -> Result<(), Failure> {
        match self {
            Transport::Grpc(client) => Ok(client.send(id, data.into_iter().collect()).await?),
            Transport::Marker(console) => console
                .call(&Call::Send {
                    id: id.to_string(),
                    data,
                })
                .map(drop),
        }
    }

    pub async fn wait(&mut self, id: &str, deadline: SystemTime) -> Result<Entries, Failure> {
        match self {
            Transport::Grpc(client) => Ok(flatten(client.wait(id, Some(deadline)).await?)),
            Transport::Marker(console) => console.entries(&Call::Wait { id: id.to_string() }),
        }
    }

    pub async fn wait_all(
        &mut self,
        id: &str,
        role: Option<&str>,
        deadline: SystemTime,
    ) -> Result<Entries, Failure> {
        match self {
            Transport::Grpc(client) => {
                Ok(flatten(client.wait_all(id, role, Some(deadline)).await?))
            }
            Transport::Marker(console) => console.entries(&Call::WaitAll {
                id: id.to_string(),
                role: role.map(str::to_string),
            }),
        }
    }

    pub async fn sync(&mut self, id: &str, deadline: SystemTime) -> Result<(), Failure> {
        match self {
            Transport::Grpc(client) => Ok(client.sync(id, Some(deadline)).await?),
            Transport::Marker(console) => console
                .entries(&Call::Sync { id: id.to_string() })
                .map(drop),
        }
    }

    pub async fn start_vms(&mut self, host_ip: &str) -> Result<(), Failure> {
        match self {
            Transport::Grpc(client) => Ok(client.start_vms(host_ip).await?),
            Transport::Marker(_) => {
                self.send(
                    VM_START_MESSAGE,
                    vec![(VM_START_HOST_IP.into(), host_ip.into())],
                )
                .await
            }
        }
    }

    pub async fn wait_for_vms(&mut self, deadline: SystemTime) -> Result<(), Failure> {
        match self {
            Transport::Grpc(client) => Ok(client.wait_for_vms(Some(deadline)).await?),
            Transport::Marker(_) => {
                self.send(VM_STOP_MESSAGE, Vec::new()).await?;
                self.wait_all(VM_STOP_MESSAGE, None, deadline)
                    .await
                    .map(drop)
            }
        }
    }

    pub async fn network_broadcast(&mut self, info: NetworkInfo) -> Result<(), Failure> {
        match self {
            Transport::Grpc(client) => Ok(client.network_broadcast(info).await?),
            Transport::Marker(_) => {
                let data = network::to_data(&info).into_iter().collect();
                self.send(NETWORK_MESSAGE, data).await
            }
        }
    }

    /// Every other node's broadcast, as cache entries.
    pub async fn network_collect(
        &mut self,
        role: Option<&str>,
        deadline: SystemTime,
    ) -> Result<Entries, Failure> {
        match self {
            Transport::Grpc(client) => {
                let nodes = client.network_collect(role, Some(deadline)).await?;
                Ok(nodes
                    .iter()
                    .flat_map(|(node, info)| {
                        network::to_data(info)
                            .into_iter()
                            .map(move |(k, v)| (node.clone(), k, v))
                    })
                    .collect())
            }
            Transport::Marker(_) => self.wait_all(NETWORK_MESSAGE, role, deadline).await,
        }
    }

    /// `(node, role)` of every node: from the coordinator, or from the environment.
    pub async fn group(&mut self) -> Result<Vec<(String, String)>, Failure> {
        match self {
            Transport::Grpc(client) => Ok(client.group_info().await?.nodes),
            Transport::Marker(_) => env::group_from_env().ok_or_else(|| {
                Failure::Infrastructure(format!("{} is not set: the group is unknown", env::GROUP))
            }),
        }
    }
}

fn flatten(senders: Senders) -> Entries {
    senders
        .into_iter()
        .flat_map(|(node, data)| data.into_iter().map(move |(k, v)| (node.clone(), k, v)))
        .collect()
}

/// The console side of the marker protocol: calls go to stdout, replies come on stdin.
pub struct MarkerConsole {
    timeout: Duration,
}

impl MarkerConsole {
    fn entries(&mut self, call: &Call) -> Result<Entries, Failure> {
        match self.call(call)? {
            Some(Reply::Complete { entries, .. }) => Ok(entries),
            Some(Reply::Nack { reason, .. }) => {
                Err(Failure::MultiNode(reason.unwrap_or_else(|| {
                    format!("the dispatcher answered nack to LAVA_{}", call.api())
                })))
            }
            None => Ok(Vec::new()),
        }
    }

    /// Prints the call and, for calls that get one, reads the reply.
    fn call(&mut self, call: &Call) -> Result<Option<Reply>, Failure> {
        let line = markers::format_call(call);
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|e| Failure::Infrastructure(format!("cannot write to the console: {e}")))?;
        drop(out);
        if !call.expects_reply() {
            return Ok(None);
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            let line = read_line(deadline)?;
            if let Some(reply) = markers::parse_reply(&line, call.api()) {
                return reply.map(Some).map_err(|e| {
                    Failure::Infrastructure(format!("unreadable reply {line:?}: {e}"))
                });
            }
        }
    }
}

/// Reads one line from stdin, a byte at a time: whatever follows the line belongs to the
/// shell, so nothing may be read ahead.
fn read_line(deadline: Instant) -> Result<String, Failure> {
    let stdin = std::io::stdin();
    let mut line = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::MultiNode(
                "no reply from the dispatcher before the timeout".into(),
            ));
        }
        let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                return Err(Failure::Infrastructure(format!(
                    "cannot read the console: {e}"
                )));
            }
        }
        let mut byte = [0u8; 1];
        match nix::unistd::read(stdin.as_fd(), &mut byte) {
            Ok(0) => {
                return Err(Failure::Infrastructure(
                    "the console closed before the reply".into(),
                ));
            }
            Ok(_) if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            Ok(_) => line.push(byte[0]),
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
            Err(e) => {
                return Err(Failure::Infrastructure(format!(
                    "cannot read the console: {e}"
                )));
            }
        }
    }
}
