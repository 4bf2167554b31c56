//! LAVA's legacy coordinator protocol on its own TCP port, so LAVA dispatchers can use
//! this coordinator as a drop-in `lava-coordinator`.
//!
//! LAVA's clients poll: a blocking request is answered `wait` until its condition holds,
//! and the client asks again after `poll_delay`. The conditions are the same checks the
//! gRPC service waits on ([`crate::group`]); only the delivery differs. Legacy groups have
//! no tokens (LAVA's protocol has none) and live apart from dispatcher groups: a legacy
//! request can never reach a dispatcher group.
//!
//! Frames are read by byte count, with a size limit and a read timeout; anything
//! malformed gets `nack`, never a crash.
//!
//! The port is unauthenticated, so everything a request can make is bounded: legacy
//! groups by number ([`LegacyBounds::max_groups`]) and idle time
//! ([`LegacyBounds::idle_expiry`], one sweep task for all of them), names by length
//! ([`MAX_NAME_LEN`]), and what one group holds by bytes
//! ([`LegacyLimits::max_group_bytes`]), and request bodies being read by bytes over
//! every connection ([`LegacyLimits::max_reading`]). A request refused for a limit
//! gets `nack`, with a message naming the limit where LAVA's client would read it.

use std::sync::Arc;
use std::time::Duration;

use proto::legacy::{self, FrameError, HEADER_LEN, Request, Response};
use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::group::{self, Check, Data, Group, Senders, Topic};
use crate::store::{GroupCell, LegacyBounds, LegacyRefusal, Store};

/// Longest group name, client name or role a legacy request may give: LAVA's are job
/// ids, UUIDs and role names, far shorter; without a limit a group name could be a
/// megabyte, kept for as long as the group lives.
pub const MAX_NAME_LEN: usize = 256;

/// Limits for legacy connections.
#[derive(Debug, Clone, Copy)]
pub struct LegacyLimits {
    /// Largest request body accepted.
    pub max_frame: u64,
    /// How long a client may take to send its request.
    pub read_timeout: Duration,
    /// Connections handled at once; more wait to be accepted.
    pub max_connections: usize,
    /// Most bytes of bodies over [`SMALL_BODY`] being read at once, over every
    /// connection. A body is read into memory whole, and a client may take
    /// `read_timeout` to send it, so without this `max_connections` slow clients could
    /// hold `max_frame` each (4 GiB). Such a body waits, within its `read_timeout`, for
    /// room.
    pub max_reading: usize,
    /// How long a blocking request (`group_data`, `lava_wait`, `lava_wait_all`,
    /// `lava_sync`) is held open before it is answered `wait`. LAVA's client has no
    /// socket timeout and simply blocks on its read, so a held request is answered the
    /// moment its condition holds instead of up to `poll_delay` (3 s as Debian ships it)
    /// later. Requests without `poll_delay` (one-shot clients) are never held. Zero
    /// answers at once, as LAVA's own coordinator does. The cost: LAVA's
    /// client counts its timeout in polls, so a condition that never holds times it out
    /// after about `(hold + poll_delay) / poll_delay` times its timeout in wall time.
    pub hold: Duration,
    /// How many legacy groups may exist, and when an idle one goes.
    pub groups: LegacyBounds,
    /// Most bytes of names and data one legacy group may hold (its nodes, messages,
    /// barrier messages and bundles). A LAVA job's MultiNode data is a few kilobytes;
    /// with [`LegacyBounds::max_groups`] this bounds what strangers can make the
    /// coordinator keep.
    pub max_group_bytes: usize,
}

impl Default for LegacyLimits {
    fn default() -> Self {
        Self {
            max_frame: 1024 * 1024,
            read_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_reading: 64 * 1024 * 1024,
            hold: Duration::from_secs(10),
            groups: LegacyBounds::default(),
            max_group_bytes: 1024 * 1024,
        }
    }
}

/// Accepts legacy connections, and expires idle legacy groups, until the task is
/// dropped.
pub async fn serve(listener: TcpListener, store: Arc<Store>, limits: LegacyLimits) {
    tokio::select! {
        () = accept(listener, store.clone(), limits) => {}
        () = sweep(&store, limits.groups.idle_expiry) => {}
    }
}

/// Drops idle legacy groups now and then: one task for every group, and housekeeping
/// only (a group past its expiry is also dropped when the cap needs its place).
async fn sweep(store: &Store, expiry: Duration) {
    // Often enough that a group goes within half its expiry past it; at most once a
    // minute, since it walks every legacy group.
    let period = (expiry / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        store.expire_legacy();
    }
}

async fn accept(listener: TcpListener, store: Arc<Store>, limits: LegacyLimits) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let reading = Arc::new(Semaphore::new(reading_room(&limits)));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(%err, "legacy accept failed");
                continue;
            }
        };
        let store = store.clone();
        let reading = reading.clone();
        tokio::spawn(async move {
            if let Err(err) = handle(stream, &store, &reading, limits).await {
                tracing::debug!(%peer, %err, "legacy connection ended with an error");
            }
            drop(permit);
        });
    }
}

async fn handle(
    mut stream: TcpStream,
    store: &Store,
    reading: &Semaphore,
    limits: LegacyLimits,
) -> std::io::Result<()> {
    let request = tokio::time::timeout(
        limits.read_timeout,
        read_request(&mut stream, reading, &limits),
    )
    .await;
    let response = match request {
        Err(_elapsed) => Some(Response::nack()),
        Ok(Err(ReadError::Io(err))) => return Err(err),
        Ok(Err(ReadError::Frame(err))) => {
            tracing::warn!(%err, "legacy request refused");
            Some(Response::nack())
        }
        Ok(Ok(request)) => respond_held(store, &request, &limits).await,
    };
    if let Some(response) = response {
        stream.write_all(&response.to_frame()).await?;
    }
    stream.shutdown().await
}

enum ReadError {
    Io(std::io::Error),
    Frame(FrameError),
}

/// Permits of [`LegacyLimits::max_reading`] are kibibytes, so a `u32` counts 4 TiB.
const KIB: usize = 1024;

/// Bodies up to this size are read without waiting for room: LAVA's requests are a
/// few hundred bytes, so large bodies held back by slow clients never hold up a
/// MultiNode call; at most `max_connections` of them (256 MiB) are read at once.
pub const SMALL_BODY: usize = 64 * KIB;

/// [`LegacyLimits::max_reading`] in permits; at least one, so requests are still read.
fn reading_room(limits: &LegacyLimits) -> usize {
    limits.max_reading.div_ceil(KIB).max(1)
}

async fn read_request(
    stream: &mut TcpStream,
    reading: &Semaphore,
    limits: &LegacyLimits,
) -> Result<Request, ReadError> {
    let limit = limits.max_frame;
    let mut header = [0u8; HEADER_LEN];
    stream
        .read_exact(&mut header)
        .await
        .map_err(ReadError::Io)?;
    let size = legacy::parse_header(&header, limit).map_err(ReadError::Frame)?;
    // parse_header bounded the size by the limit, so this allocation is bounded too.
    let size = usize::try_from(size)
        .map_err(|_| ReadError::Frame(FrameError::TooLarge { size, limit }))?;
    // Room for a large body among every large body being read (all the room, for a
    // frame larger than it). The caller's read timeout covers the wait.
    let _room = if size > SMALL_BODY {
        let kib = size.div_ceil(KIB).min(reading_room(limits));
        let room = reading
            .acquire_many(u32::try_from(kib).unwrap_or(u32::MAX))
            .await
            .map_err(|_| ReadError::Io(std::io::ErrorKind::Interrupted.into()))?;
        Some(room)
    } else {
        None
    };
    let mut body = vec![0u8; size];
    stream.read_exact(&mut body).await.map_err(ReadError::Io)?;
    Request::decode(&body).map_err(ReadError::Frame)
}

/// Answers one request, holding a `wait` answer for up to `hold` while re-checking on
/// every change of the group (never by polling). Re-asking is safe: every blocking
/// request is idempotent for the asking client.
async fn respond_held(store: &Store, request: &Request, limits: &LegacyLimits) -> Option<Response> {
    let hold = limits.hold;
    let first = respond(store, request, limits);
    let is_wait = |r: &Option<Response>| r.as_ref().is_some_and(Response::is_wait);
    // Only a client that will ask again is held; a one-shot client (LAVA's status.py
    // health check) gets LAVA's immediate answer.
    if hold.is_zero() || request.poll_delay.is_none() || !is_wait(&first) {
        return first;
    }
    let Some(cell) = request
        .group_name
        .as_deref()
        .and_then(|name| store.legacy_group(name, None).ok())
    else {
        return first;
    };
    let deadline = tokio::time::Instant::now() + hold;
    // Woken only by what may answer it: its barrier, its message, the bundles, or the
    // group's nodes (a legacy group fills as nodes register).
    let topic = match (request.request.as_deref(), request.message_id()) {
        (Some("lava_sync"), Some(id)) => Topic::Sync(id),
        (Some("lava_wait" | "lava_wait_all"), Some(id)) => Topic::Message(id),
        (Some("aggregate"), _) => Topic::Bundles,
        _ => Topic::Nodes,
    };
    let subscription = cell.subscribe_to(topic);
    loop {
        // Registered before checking, so a change between check and wait is not lost.
        let woken = subscription.armed();
        let response = respond(store, request, limits);
        if !is_wait(&response) {
            return response;
        }
        tokio::select! {
            () = woken.wait() => {}
            () = tokio::time::sleep_until(deadline) => return response,
        }
    }
}

/// Answers one request; `None` for `complete`, which LAVA closes without a reply.
pub fn respond(store: &Store, request: &Request, limits: &LegacyLimits) -> Option<Response> {
    let nack = Some(Response::nack());
    let (Some(kind), Some(client), Some(group_name)) = (
        request.request.as_deref(),
        request.client_name.as_deref(),
        request.group_name.as_deref(),
    ) else {
        return nack;
    };
    if client.is_empty() || group_name.is_empty() {
        return nack;
    }
    let names = [client, group_name]
        .into_iter()
        .chain(request.role.as_deref())
        .chain(request.waitrole.as_deref());
    if let Some(long) = names.into_iter().find(|n| n.len() > MAX_NAME_LEN) {
        return Some(refused(format!(
            "name of {} bytes, over the limit of {MAX_NAME_LEN}",
            long.len()
        )));
    }
    let cell = match store.legacy_group(group_name, request.group_size()) {
        Ok(cell) => cell,
        // An unknown group gets LAVA's own bare `nack`; only the cap is ours to explain.
        Err(LegacyRefusal::Unknown(_)) => return nack,
        Err(full @ LegacyRefusal::Full { .. }) => {
            return Some(Response::nack_with(full.to_string()));
        }
    };
    let budget = Budget {
        cell: &cell,
        max: limits.max_group_bytes,
    };
    let known = cell.lock().node(client).is_some();
    if !known {
        let Some(role) = request.role.as_deref().filter(|r| !r.is_empty()) else {
            return nack;
        };
        match budget.update(client.len() + role.len(), |g| g.register(client, role)) {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return nack,
            Err(over) => return Some(over),
        }
    }
    let id = request.message_id();
    let outcome = match (kind, id.as_deref()) {
        ("group_data", _) => {
            let group = cell.lock();
            if group.is_complete() {
                let roles = group
                    .nodes()
                    .iter()
                    .map(|n| (n.id.clone(), n.role.clone()))
                    .collect();
                return Some(Response::group_data(roles));
            }
            return Some(Response::wait());
        }
        ("lava_send", Some(id)) => {
            let data = flatten(request.message.as_ref());
            let size = id.len() + client.len() + group::data_len(&data);
            return Some(match budget.update(size, |g| g.send(client, id, data)) {
                Ok(Ok(())) => Response::ack(),
                Ok(Err(_)) => Response::nack(),
                Err(over) => over,
            });
        }
        ("lava_wait", Some(id)) => cell.update(|g| Ok(senders_json(g.check_wait(client, id)))),
        ("lava_wait_all", Some(id)) => cell.update(|g| {
            g.check_wait_all(client, id, request.waitrole.as_deref())
                .map(senders_json)
        }),
        ("lava_sync", Some(id)) => {
            let message = request
                .message
                .clone()
                .filter(|m| !m.is_null() && m != &Value::Object(Map::new()));
            let size = id.len() + client.len() + message.as_ref().map_or(0, group::json_len);
            match budget.update(size, |g| g.poll_sync(client, id, message, 0)) {
                Ok(outcome) => outcome,
                Err(over) => return Some(over),
            }
        }
        ("aggregate", _) => {
            let (Some(bundle), Some(sub_id)) = (request.bundle.clone(), request.sub_id.as_ref())
            else {
                return nack;
            };
            let is_first = sub_id.as_str().is_some_and(|s| s.ends_with(".0"));
            let size = client.len() + group::json_len(&bundle);
            match budget.update(size, |g| g.aggregate(client, bundle, is_first)) {
                Ok(check) => Ok(check),
                Err(over) => return Some(over),
            }
        }
        ("clear_group", _) => {
            if cell.update(|g| g.clear(client)) {
                store.drop_legacy_group(group_name);
            }
            return Some(Response::ack());
        }
        ("complete", _) => return None,
        _ => return nack,
    };
    Some(match outcome {
        Ok(Check::Ready(Value::Null)) => Response::ack(),
        Ok(Check::Ready(message)) => Response::ack_with(message),
        Ok(Check::Pending(_)) => Response::wait(),
        Ok(Check::Hopeless(_)) | Err(_) => Response::nack(),
    })
}

/// A `nack` for a request over a limit, logged: it is either a misbehaving client or
/// someone probing the port.
fn refused(why: String) -> Response {
    tracing::warn!(%why, "legacy request refused");
    Response::nack_with(why)
}

/// What one legacy group may hold ([`LegacyLimits::max_group_bytes`]).
struct Budget<'a> {
    cell: &'a GroupCell,
    max: usize,
}

impl Budget<'_> {
    /// Runs `f` on the group unless the group plus `adding` bytes (what the request
    /// could store) would be over the limit; checked under the group's lock, so
    /// concurrent requests cannot pass it together. A request that stores nothing new
    /// (a repeated poll) is counted too: only a group near its limit can tell.
    fn update<T>(&self, adding: usize, f: impl FnOnce(&mut Group) -> T) -> Result<T, Response> {
        self.cell
            .update(|g| {
                let holds = g.footprint();
                if holds + adding > self.max {
                    return Err(format!(
                        "group {} holds {holds} bytes; {adding} more would be over its limit \
                         of {} (--legacy-max-group-bytes)",
                        g.id, self.max
                    ));
                }
                Ok(f(g))
            })
            .map_err(refused)
    }
}

/// A LAVA message (a JSON object, or null) as key/value text.
fn flatten(message: Option<&Value>) -> Data {
    match message {
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect(),
        _ => Data::new(),
    }
}

fn senders_json(check: Check<Senders>) -> Check<Value> {
    match check {
        Check::Ready(senders) => Check::Ready(Value::Object(
            senders
                .into_iter()
                .map(|(node, data)| {
                    let data: Map<String, Value> = data
                        .into_iter()
                        .map(|(k, v)| (k, Value::String(v)))
                        .collect();
                    (node, Value::Object(data))
                })
                .collect(),
        )),
        Check::Pending(missing) => Check::Pending(missing),
        Check::Hopeless(why) => Check::Hopeless(why),
    }
}
