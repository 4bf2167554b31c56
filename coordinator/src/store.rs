//! All groups, access control, and the one place calls wait: re-running a group check
//! whenever the group changes, until it is ready, hopeless or past its deadline.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use proto::v1::{self, group_event};
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

use crate::auth;
use crate::group::{Check, Group, Node, NodeState, Refusal, Topic};
use crate::journal::{Genesis, GroupFile, Journal, JournalError, Kind};

/// Why a call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("missing credentials: send 'authorization: Bearer <token>'")]
    Unauthenticated,
    #[error("not authorized for {0}")]
    Denied(String),
    #[error("no group {0}")]
    NoSuchGroup(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Refused(String),
    /// The call can never succeed: a node it waits for failed or finished.
    #[error("{0}")]
    Hopeless(String),
    #[error("{0}")]
    Deadline(String),
    #[error("group {0} already exists")]
    Exists(String),
    /// The group could not be written to the state directory.
    #[error("cannot keep the group on disk: {0}")]
    Storage(String),
}

impl From<Refusal> for CallError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Invalid(why) => CallError::Invalid(why),
            other => CallError::Refused(other.to_string()),
        }
    }
}

/// Limits on waiting.
#[derive(Debug, Clone, Copy)]
pub struct WaitLimits {
    /// Used when a call gives no deadline.
    pub default_wait: Duration,
    /// No call waits longer than this, whatever deadline it asks for.
    pub max_wait: Duration,
}

impl Default for WaitLimits {
    fn default() -> Self {
        Self {
            default_wait: Duration::from_secs(3600),
            max_wait: Duration::from_secs(24 * 3600),
        }
    }
}

/// Why a legacy request found no group.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LegacyRefusal {
    #[error("no legacy group {0:?}, and no group_size to create it with")]
    Unknown(String),
    #[error(
        "cannot create legacy group {name:?}: the coordinator already has {limit} legacy \
         groups, its limit (--legacy-max-groups)"
    )]
    Full { name: String, limit: usize },
}

/// Bounds on legacy groups, which anyone who reaches the unauthenticated legacy port
/// can create.
#[derive(Debug, Clone, Copy)]
pub struct LegacyBounds {
    /// Most legacy groups at once; a request that would create one more is refused.
    pub max_groups: usize,
    /// A legacy group no request has named for this long is dropped.
    pub idle_expiry: Duration,
}

impl Default for LegacyBounds {
    fn default() -> Self {
        Self {
            // LAVA runs one group per MultiNode job, so a thousand at once is far more
            // than a lab has; each costs a few kilobytes and no descriptor.
            max_groups: 1024,
            // LAVA's clients poll every `poll_delay` seconds while they wait, so a live
            // group is rarely quiet for long, but a test may run for an hour or more
            // between two MultiNode calls (LAVA's own coordinator never expires a
            // group). Two hours keeps such a group and still frees the slots of groups
            // whose jobs died, or that a stranger made, within the afternoon.
            idle_expiry: Duration::from_secs(2 * 3600),
        }
    }
}

/// How many events a watcher may fall behind before it misses some.
const EVENT_BUFFER: usize = 4096;

/// One group with its change notification and event stream.
pub struct GroupCell {
    state: Mutex<Group>,
    /// Wakes the calls blocked on one [`Topic`] (made by the first call to wait on it,
    /// dropped with the last); [`Topic::Nodes`] has its own, since every call waits on
    /// it.
    topics: Mutex<HashMap<Topic, Arc<Notify>>>,
    nodes_changed: Notify,
    /// Made at the first [`GroupCell::subscribe`]: a channel of [`EVENT_BUFFER`] slots
    /// costs about half a megabyte, and legacy groups are never watched. Events sent
    /// before then had no receiver, and a broadcast channel drops those anyway.
    events: OnceLock<broadcast::Sender<v1::GroupEvent>>,
    /// When a legacy request last named the group (legacy groups expire when idle).
    used: Mutex<Instant>,
    seq: std::sync::atomic::AtomicU64,
    /// Calls blocked right now, so a watcher that arrives late still sees them.
    waiting: Mutex<BTreeMap<u64, v1::Waiting>>,
    next_wait: std::sync::atomic::AtomicU64,
    /// Where the group's changes are recorded; `None`: a coordinator without a state
    /// directory.
    file: Option<GroupFile>,
}

/// A blocked call's interest in one topic of a group: [`Subscription::changed`]
/// completes at the next change that may release it. The topic's entry goes with its
/// last subscription.
pub struct Subscription<'a> {
    cell: &'a GroupCell,
    topic: Topic,
    notify: Option<Arc<Notify>>,
}

impl Subscription<'_> {
    /// Both wake-ups, registered now: a change after this and before the returned
    /// future is awaited still completes it.
    pub fn armed(&self) -> Armed<'_> {
        let mut topic = self.notify.as_ref().map(|n| Box::pin(n.notified()));
        let mut nodes = Box::pin(self.cell.nodes_changed.notified());
        if let Some(topic) = topic.as_mut() {
            topic.as_mut().enable();
        }
        nodes.as_mut().enable();
        Armed { topic, nodes }
    }
}

/// See [`Subscription::armed`].
pub struct Armed<'a> {
    topic: Option<std::pin::Pin<Box<tokio::sync::futures::Notified<'a>>>>,
    nodes: std::pin::Pin<Box<tokio::sync::futures::Notified<'a>>>,
}

impl Armed<'_> {
    /// Completes at the first of the two wake-ups.
    pub async fn wait(self) {
        let Armed { topic, nodes } = self;
        match topic {
            Some(topic) => {
                tokio::select! {
                    () = topic => {}
                    () = nodes => {}
                }
            }
            None => nodes.await,
        }
    }
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        let mut topics = lock(&self.cell.topics);
        // Dropped under the lock, where every clone is made: the count is exact.
        drop(self.notify.take());
        if topics
            .get(&self.topic)
            .is_some_and(|notify| Arc::strong_count(notify) == 1)
        {
            topics.remove(&self.topic);
        }
    }
}

/// Removes a blocked call from [`GroupCell::waiting`] however the call ends (including
/// when its client goes away and the call is dropped).
struct WaitingGuard<'a> {
    cell: &'a GroupCell,
    key: u64,
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.cell.waiting).remove(&self.key);
    }
}

/// Locks a mutex, ignoring poisoning: every critical section leaves its data consistent
/// before anything that could panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl GroupCell {
    fn new(mut group: Group, file: Option<GroupFile>) -> Arc<Self> {
        if file.is_some() {
            group.record();
        }
        Arc::new(Self {
            state: Mutex::new(group),
            topics: Mutex::new(HashMap::new()),
            nodes_changed: Notify::new(),
            events: OnceLock::new(),
            used: Mutex::new(Instant::now()),
            seq: std::sync::atomic::AtomicU64::new(0),
            waiting: Mutex::new(BTreeMap::new()),
            next_wait: std::sync::atomic::AtomicU64::new(0),
            file,
        })
    }

    /// The group's state.
    pub fn lock(&self) -> MutexGuard<'_, Group> {
        lock(&self.state)
    }

    /// Runs `f` on the group, records what it changed (before the caller can answer
    /// anyone), and wakes waiters if it changed anything they care about.
    pub fn update<T>(&self, f: impl FnOnce(&mut Group) -> T) -> T {
        let mut group = self.lock();
        let out = f(&mut group);
        let changes = group.take_unrecorded();
        if let Some(file) = self.file.as_ref().filter(|_| !changes.is_empty())
            && let Err(err) = file.append(&changes)
        {
            // The change stands in memory; only a restart would lose it.
            tracing::error!(group = %group.id, %err, "cannot record a change");
        }
        let touched = group.take_touched();
        drop(group);
        if !touched.is_empty() {
            let topics = lock(&self.topics);
            for topic in touched {
                match topic {
                    Topic::Nodes => self.nodes_changed.notify_waiters(),
                    topic => {
                        if let Some(notify) = topics.get(&topic) {
                            notify.notify_waiters();
                        }
                    }
                }
            }
        }
        out
    }

    /// What wakes a call blocked on `topic` (and on the group's nodes), held while the
    /// call waits.
    pub fn subscribe_to(&self, topic: Topic) -> Subscription<'_> {
        let notify = lock(&self.topics)
            .entry(topic.clone())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone();
        Subscription {
            cell: self,
            topic,
            notify: Some(notify),
        }
    }

    pub fn emit(&self, kind: group_event::Kind) {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        // No channel or no receivers is fine: nobody is watching.
        if let Some(events) = self.events.get() {
            let _ = events.send(v1::GroupEvent {
                seq,
                kind: Some(kind),
            });
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<v1::GroupEvent> {
        self.events
            .get_or_init(|| broadcast::channel(EVENT_BUFFER).0)
            .subscribe()
    }

    fn touch(&self) {
        *lock(&self.used) = Instant::now();
    }

    /// Whether no request has named the group for `expiry` and none holds it now (a
    /// request in progress, such as a held legacy request, holds a reference to it).
    fn is_idle(self: &Arc<Self>, now: Instant, expiry: Duration) -> bool {
        Arc::strong_count(self) == 1 && now.saturating_duration_since(*lock(&self.used)) >= expiry
    }

    fn remove_file(&self) {
        if let Some(file) = &self.file {
            file.remove();
        }
    }

    /// The current state of every node and every blocked call, as events (the start of
    /// a watch).
    pub fn snapshot(&self) -> Vec<v1::GroupEvent> {
        let nodes: Vec<group_event::Kind> = self
            .lock()
            .nodes()
            .iter()
            .map(|n| group_event::Kind::NodeChanged(node_changed(n)))
            .collect();
        let waits: Vec<group_event::Kind> = lock(&self.waiting)
            .values()
            .cloned()
            .map(group_event::Kind::Waiting)
            .collect();
        nodes
            .into_iter()
            .chain(waits)
            .map(|kind| v1::GroupEvent {
                seq: 0,
                kind: Some(kind),
            })
            .collect()
    }

    /// Waits until `check` is ready, hopeless, or `deadline` passes. `call` names the call
    /// in errors ("lava-sync 'ready'").
    pub async fn wait_for<T>(
        &self,
        caller: &str,
        call: &str,
        (message_id, topic): (&str, Topic),
        deadline: Instant,
        mut check: impl FnMut(&mut Group) -> Result<Check<T>, Refusal>,
    ) -> Result<T, CallError> {
        let label = format!("{call} '{message_id}'");
        let mut guard: Option<WaitingGuard<'_>> = None;
        let subscription = self.subscribe_to(topic);
        loop {
            // Registered before checking, so a change between check and wait is not lost.
            let woken = subscription.armed();
            let outcome = self.update(|group| {
                if group.is_closed() {
                    return Err(CallError::Hopeless(format!(
                        "{label}: the group was closed"
                    )));
                }
                match check(group) {
                    Ok(Check::Ready(value)) => Ok(Ok(value)),
                    Ok(Check::Hopeless(why)) => Err(CallError::Hopeless(format!("{label}: {why}"))),
                    Ok(Check::Pending(missing)) => Ok(Err(missing)),
                    Err(refusal) => Err(refusal.into()),
                }
            })?;
            let missing = match outcome {
                Ok(value) => return Ok(value),
                Err(missing) => missing,
            };
            if guard.is_none() {
                let waiting = v1::Waiting {
                    node_id: caller.to_string(),
                    call: call.trim_start_matches("lava-").to_string(),
                    message_id: message_id.to_string(),
                    missing: missing.nodes.clone(),
                    missing_count: u32::try_from(missing.count + missing.unregistered)
                        .unwrap_or(u32::MAX),
                };
                let key = self
                    .next_wait
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Registered before the event is sent: a watcher subscribing in between
                // sees it in its snapshot, one subscribed earlier gets the event.
                lock(&self.waiting).insert(key, waiting.clone());
                guard = Some(WaitingGuard { cell: self, key });
                self.emit(group_event::Kind::Waiting(waiting));
            }
            tokio::select! {
                () = woken.wait() => {}
                () = tokio::time::sleep_until(deadline) => {
                    let described = self.lock().describe_missing(&missing);
                    return Err(CallError::Deadline(format!("{label}: deadline passed; {described}")));
                }
            }
        }
    }
}

pub fn node_changed(node: &Node) -> v1::NodeChanged {
    v1::NodeChanged {
        node_id: node.id.clone(),
        role: node.role.clone(),
        state: match node.state {
            NodeState::Pending => v1::NodeState::Pending,
            NodeState::Active => v1::NodeState::Active,
            NodeState::Finished => v1::NodeState::Finished,
            NodeState::Failed => v1::NodeState::Failed,
        } as i32,
        reason: node.reason.clone().unwrap_or_default(),
    }
}

pub use coordinator_client::Credential;

/// Every group the coordinator serves.
pub struct Store {
    groups: DashMap<String, Arc<GroupCell>>,
    legacy: DashMap<String, Arc<GroupCell>>,
    /// How many legacy groups exist, counted apart from `legacy` so that creating one
    /// can claim a place under the cap atomically.
    legacy_count: AtomicUsize,
    pub legacy_bounds: LegacyBounds,
    admin_hash: [u8; 32],
    pub limits: WaitLimits,
    /// Where groups are kept; `None`: in memory only.
    journal: Option<Journal>,
    /// Set when the coordinator stops: connections it cuts then are not node failures.
    stopping: std::sync::atomic::AtomicBool,
    /// Read back at start: groups with the nodes whose presence they await again.
    awaited: Mutex<Vec<(Arc<GroupCell>, Vec<String>)>>,
}

impl Store {
    /// A store that keeps groups in memory only.
    pub fn new(admin_token: &str, limits: WaitLimits) -> Self {
        Self {
            groups: DashMap::new(),
            legacy: DashMap::new(),
            legacy_count: AtomicUsize::new(0),
            legacy_bounds: LegacyBounds::default(),
            admin_hash: auth::hash(admin_token),
            limits,
            journal: None,
            stopping: std::sync::atomic::AtomicBool::new(false),
            awaited: Mutex::new(Vec::new()),
        }
    }

    /// After a restart: every node that was attached when the coordinator stopped gets
    /// `grace` to attach again; one that does not is failed, so the calls waiting on it
    /// end instead of waiting for their deadline (it may have died while the
    /// coordinator was away, when nobody could notice). Needs a Tokio runtime.
    pub fn await_presence(&self, grace: Duration) {
        let awaited = std::mem::take(&mut *lock(&self.awaited));
        for (cell, nodes) in awaited {
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                let missing: Vec<String> = {
                    let group = cell.lock();
                    nodes
                        .into_iter()
                        .filter(|id| !group.is_present(id))
                        .collect()
                };
                let reason = format!(
                    "its presence did not come back within {} s of the coordinator restart",
                    grace.as_secs()
                );
                for node in missing {
                    fail_in(&cell, &node, &reason);
                }
            });
        }
    }

    /// A store that keeps every group in `state_dir` and starts with the groups a
    /// previous run left there, as they were.
    pub fn open(
        admin_token: &str,
        limits: WaitLimits,
        state_dir: &std::path::Path,
    ) -> Result<Self, JournalError> {
        let (journal, recovered) = Journal::open(state_dir)?;
        let store = Self {
            journal: Some(journal),
            ..Self::new(admin_token, limits)
        };
        for mut back in recovered {
            let id = back.group.id.clone();
            let absent = back.group.take_presence();
            tracing::info!(group = %id, kind = ?back.kind, nodes = back.group.nodes().len(),
                "group read back");
            let cell = GroupCell::new(back.group, Some(back.file));
            if !absent.is_empty() {
                lock(&store.awaited).push((cell.clone(), absent));
            }
            match back.kind {
                Kind::Dispatcher => store.groups.insert(id, cell),
                Kind::Legacy => {
                    store.legacy_count.fetch_add(1, Ordering::SeqCst);
                    store.legacy.insert(id, cell)
                }
            };
        }
        Ok(store)
    }

    /// The coordinator is stopping: streams it cuts from now on do not fail nodes.
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Starts a group's file, if groups are kept on disk.
    fn file_for(&self, group: &Group, kind: Kind) -> Result<Option<GroupFile>, JournalError> {
        self.journal
            .as_ref()
            .map(|journal| journal.create(&Genesis::of(group, kind)))
            .transpose()
    }

    pub fn authorize_admin(&self, token: Option<&str>) -> Result<(), CallError> {
        let token = token.ok_or(CallError::Unauthenticated)?;
        if auth::same_hash(&auth::hash(token), &self.admin_hash) {
            Ok(())
        } else {
            Err(CallError::Denied(
                "dispatcher calls (wrong admin token)".into(),
            ))
        }
    }

    /// The group of a node call, if `token` is that node's token. Unknown groups, unknown
    /// nodes and wrong tokens get the same answer, so a token tells nothing about others.
    pub fn authorize_node(
        &self,
        token: Option<&str>,
        group_id: &str,
        node_id: &str,
    ) -> Result<Arc<GroupCell>, CallError> {
        let token = token.ok_or(CallError::Unauthenticated)?;
        let denied = || CallError::Denied(format!("node {node_id:?} of group {group_id:?}"));
        let cell = self
            .groups
            .get(group_id)
            .map(|c| c.clone())
            .ok_or_else(denied)?;
        let hash = auth::hash(token);
        let ok = cell
            .lock()
            .node(node_id)
            .and_then(|n| n.token_hash)
            .is_some_and(|expected| auth::same_hash(&expected, &hash));
        if ok { Ok(cell) } else { Err(denied()) }
    }

    /// Creates a dispatcher group; returns each node's token.
    pub fn create_group(
        &self,
        group_id: Option<String>,
        nodes: Vec<(String, String)>,
    ) -> Result<(String, Vec<Credential>), CallError> {
        let group_id = group_id
            .filter(|g| !g.is_empty())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        if nodes.is_empty() {
            return Err(CallError::Invalid("a group needs at least one node".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut members = Vec::new();
        let mut credentials = Vec::new();
        for (id, role) in nodes {
            if id.is_empty() || role.is_empty() || !seen.insert(id.clone()) {
                return Err(CallError::Invalid(format!(
                    "node ids must be unique and non-empty, roles non-empty (at {id:?})"
                )));
            }
            let token = auth::new_token();
            members.push(Node {
                id: id.clone(),
                role: role.clone(),
                state: NodeState::Pending,
                reason: None,
                token_hash: Some(auth::hash(&token)),
            });
            credentials.push(Credential {
                node_id: id,
                role,
                token,
            });
        }
        match self.groups.entry(group_id.clone()) {
            dashmap::Entry::Occupied(_) => return Err(CallError::Exists(group_id)),
            dashmap::Entry::Vacant(slot) => {
                let group = Group::fixed(group_id.clone(), members);
                let file = self
                    .file_for(&group, Kind::Dispatcher)
                    .map_err(|e| CallError::Storage(e.to_string()))?;
                slot.insert(GroupCell::new(group, file));
            }
        }
        Ok((group_id, credentials))
    }

    /// New tokens for `nodes` (id, role) of dispatcher group `group_id`: a dispatcher
    /// that drives only some of a group's nodes takes theirs here, whoever created the
    /// group. Every node must be a member with that role, or nothing changes.
    pub fn issue_tokens(
        &self,
        group_id: &str,
        nodes: &[(String, String)],
    ) -> Result<Vec<Credential>, CallError> {
        let cell = self.group(group_id)?;
        cell.update(|group| {
            if !group.is_fixed() {
                return Err(CallError::Invalid(format!(
                    "group {group_id} was not made by a dispatcher"
                )));
            }
            if let Some((id, role)) = nodes
                .iter()
                .find(|(id, role)| group.node(id).is_none_or(|n| &n.role != role))
            {
                return Err(CallError::Invalid(format!(
                    "group {group_id} has no node {id:?} of role {role:?}"
                )));
            }
            Ok(nodes
                .iter()
                .map(|(id, role)| {
                    let token = auth::new_token();
                    group.set_token(id, auth::hash(&token));
                    Credential {
                        node_id: id.clone(),
                        role: role.clone(),
                        token,
                    }
                })
                .collect())
        })
    }

    /// How many groups exist now (for the dispatcher's metrics).
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// How many calls are blocked in a wait now, over every group (for metrics).
    pub fn waiter_count(&self) -> usize {
        self.groups
            .iter()
            .map(|cell| lock(&cell.waiting).len())
            .sum()
    }

    pub fn group(&self, group_id: &str) -> Result<Arc<GroupCell>, CallError> {
        self.groups
            .get(group_id)
            .map(|c| c.clone())
            .ok_or_else(|| CallError::NoSuchGroup(group_id.to_string()))
    }

    /// Marks a node failed; every call waiting on it fails at once.
    pub fn fail_node(&self, group_id: &str, node_id: &str, reason: &str) -> Result<(), CallError> {
        let cell = self.group(group_id)?;
        fail_in(&cell, node_id, reason);
        Ok(())
    }

    pub fn close_group(&self, group_id: &str) -> Result<(), CallError> {
        let (_, cell) = self
            .groups
            .remove(group_id)
            .ok_or_else(|| CallError::NoSuchGroup(group_id.to_string()))?;
        cell.update(Group::close);
        cell.remove_file();
        cell.emit(group_event::Kind::GroupClosed(v1::GroupClosed {}));
        Ok(())
    }

    /// The legacy group `name`, created with `size` nodes if it does not exist and the
    /// cap allows one more.
    pub fn legacy_group(
        &self,
        name: &str,
        size: Option<u64>,
    ) -> Result<Arc<GroupCell>, LegacyRefusal> {
        if let Some(cell) = self.legacy.get(name) {
            cell.touch();
            return Ok(cell.clone());
        }
        let unknown = || LegacyRefusal::Unknown(name.to_string());
        let size = size
            .filter(|s| *s > 0)
            .and_then(|s| usize::try_from(s).ok())
            .ok_or_else(unknown)?;
        // At the cap, groups past their expiry go first (the sweep may not have run yet).
        let claimed = self.claim_legacy_place() || {
            self.expire_legacy();
            self.claim_legacy_place()
        };
        if !claimed {
            let refusal = LegacyRefusal::Full {
                name: name.to_string(),
                limit: self.legacy_bounds.max_groups,
            };
            tracing::warn!(%refusal, "legacy group refused");
            return Err(refusal);
        }
        let cell = match self.legacy.entry(name.to_string()) {
            dashmap::Entry::Occupied(entry) => {
                // Made by another request meanwhile: the place claimed is not needed.
                self.legacy_count.fetch_sub(1, Ordering::SeqCst);
                entry.get().clone()
            }
            dashmap::Entry::Vacant(slot) => {
                let group = Group::self_registering(name.to_string(), size);
                // LAVA's protocol has no way to report this; the group works, in
                // memory only.
                let file = self.file_for(&group, Kind::Legacy).unwrap_or_else(|err| {
                    tracing::error!(group = name, %err, "cannot keep a legacy group on disk");
                    None
                });
                slot.insert(GroupCell::new(group, file)).clone()
            }
        };
        cell.touch();
        Ok(cell)
    }

    /// Claims a place for a new legacy group, if under the cap.
    fn claim_legacy_place(&self) -> bool {
        let max = self.legacy_bounds.max_groups;
        self.legacy_count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Drops every legacy group idle past its expiry; returns how many.
    pub fn expire_legacy(&self) -> usize {
        let now = Instant::now();
        let expiry = self.legacy_bounds.idle_expiry;
        let idle: Vec<String> = self
            .legacy
            .iter()
            .filter(|entry| entry.value().is_idle(now, expiry))
            .map(|entry| entry.key().clone())
            .collect();
        let mut expired = 0;
        for name in idle {
            // Checked again under the map's lock: a request may have named it since.
            if self
                .remove_legacy_if(&name, |cell| cell.is_idle(now, expiry))
                .is_some()
            {
                tracing::info!(group = %name, idle_secs = expiry.as_secs(), "legacy group expired");
                expired += 1;
            }
        }
        expired
    }

    pub fn drop_legacy_group(&self, name: &str) {
        self.remove_legacy_if(name, |_| true);
    }

    /// How many legacy groups exist now.
    pub fn legacy_group_count(&self) -> usize {
        self.legacy_count.load(Ordering::SeqCst)
    }

    fn remove_legacy_if(
        &self,
        name: &str,
        drop_it: impl FnOnce(&Arc<GroupCell>) -> bool,
    ) -> Option<Arc<GroupCell>> {
        let (_, cell) = self.legacy.remove_if(name, |_, cell| drop_it(cell))?;
        self.legacy_count.fetch_sub(1, Ordering::SeqCst);
        cell.remove_file();
        Some(cell)
    }

    /// The instant a call should stop waiting, from its wall-clock deadline.
    pub fn deadline(&self, deadline: Option<&v1::Deadline>) -> Instant {
        let now = Instant::now();
        let wanted = deadline
            .map(|d| d.unix_ms)
            .filter(|ms| *ms > 0)
            .map(|ms| {
                let at = UNIX_EPOCH + Duration::from_millis(ms);
                at.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
            })
            .unwrap_or(self.limits.default_wait);
        now + wanted.min(self.limits.max_wait)
    }
}

/// Fails a node in a group and tells watchers.
pub fn fail_in(cell: &GroupCell, node_id: &str, reason: &str) {
    let changed = cell.update(|g| {
        g.fail(node_id, reason)
            .then(|| g.node(node_id).map(node_changed))
    });
    if let Some(Some(event)) = changed {
        tracing::info!(node = node_id, reason, "node failed");
        cell.emit(group_event::Kind::NodeChanged(event));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests: a panic is a failure report.

    use super::*;

    fn store(max_groups: usize, idle_expiry: Duration) -> Store {
        let mut store = Store::new("admin-token-for-tests", WaitLimits::default());
        store.legacy_bounds = LegacyBounds {
            max_groups,
            idle_expiry,
        };
        store
    }

    /// A call blocked on one message is not woken by another message, and is by its
    /// own and by a node failing.
    #[test]
    fn a_blocked_call_wakes_only_for_its_topic_or_the_nodes() {
        use crate::group::Data;
        use futures::FutureExt as _;
        let store = store(4, Duration::from_secs(3600));
        let cell = store.legacy_group("g", Some(2)).unwrap();
        cell.update(|g| {
            g.register("a", "r").unwrap();
            g.register("b", "r").unwrap();
        });
        let subscription = cell.subscribe_to(Topic::Message("mine".into()));
        let woken = subscription.armed();
        cell.update(|g| g.send("b", "other", Data::new()).unwrap());
        let mut waiting = Box::pin(woken.wait());
        assert!(
            waiting.as_mut().now_or_never().is_none(),
            "woken by another message"
        );
        cell.update(|g| g.send("b", "mine", Data::new()).unwrap());
        assert!(
            waiting.as_mut().now_or_never().is_some(),
            "not woken by its own"
        );
        let woken = subscription.armed();
        cell.update(|g| g.fail("b", "gone"));
        assert!(
            woken.wait().now_or_never().is_some(),
            "not woken by a node failing"
        );
        // The last subscription gone, its topic's entry goes too.
        drop(waiting);
        drop(subscription);
        assert!(lock(&cell.topics).is_empty());
    }

    #[test]
    fn new_tokens_replace_a_members_old_one_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let open = || Store::open("admin-token-for-tests", WaitLimits::default(), dir.path());
        let store = open().unwrap();
        let members = vec![
            ("a".to_string(), "r".to_string()),
            ("b".to_string(), "s".to_string()),
        ];
        let (_, created) = store.create_group(Some("g".into()), members).unwrap();
        let old_b = created[1].token.clone();
        // Only members, with their roles: nothing changes otherwise.
        for wrong in [("b", "r"), ("c", "s")] {
            let asked = [(wrong.0.to_string(), wrong.1.to_string())];
            assert!(matches!(
                store.issue_tokens("g", &asked),
                Err(CallError::Invalid(_))
            ));
        }
        assert!(store.authorize_node(Some(&old_b), "g", "b").is_ok());
        let issued = store
            .issue_tokens("g", &[("b".to_string(), "s".to_string())])
            .unwrap();
        assert_eq!(issued.len(), 1);
        let new_b = issued[0].token.clone();
        assert!(store.authorize_node(Some(&old_b), "g", "b").is_err());
        assert!(store.authorize_node(Some(&new_b), "g", "b").is_ok());
        assert!(
            store
                .authorize_node(Some(&created[0].token), "g", "a")
                .is_ok()
        );
        drop(store);
        let again = open().unwrap();
        assert!(again.authorize_node(Some(&new_b), "g", "b").is_ok());
        assert!(again.authorize_node(Some(&old_b), "g", "b").is_err());
    }

    #[test]
    fn legacy_groups_past_the_cap_are_refused_and_existing_ones_kept() {
        let store = store(2, Duration::from_secs(3600));
        let a = store.legacy_group("a", Some(2)).unwrap();
        store.legacy_group("b", Some(2)).unwrap();
        let refusal = store.legacy_group("c", Some(2)).err().unwrap();
        assert_eq!(
            refusal,
            LegacyRefusal::Full {
                name: "c".into(),
                limit: 2
            }
        );
        assert!(refusal.to_string().contains("--legacy-max-groups"));
        assert!(Arc::ptr_eq(&a, &store.legacy_group("a", None).unwrap()));
        // A dropped group frees its place.
        store.drop_legacy_group("b");
        store.legacy_group("c", Some(2)).unwrap();
        assert_eq!(store.legacy_group_count(), 2);
    }

    /// With no idle time allowed, a group expires as soon as no request holds it.
    #[test]
    fn only_idle_legacy_groups_expire_and_the_cap_evicts_them_first() {
        let store = store(2, Duration::ZERO);
        let held = store.legacy_group("held", Some(2)).unwrap();
        store.legacy_group("idle", Some(2)).unwrap();
        assert_eq!(store.expire_legacy(), 1);
        assert_eq!(
            store.legacy_group("idle", None).err(),
            Some(LegacyRefusal::Unknown("idle".into()))
        );
        store.legacy_group("new", Some(2)).unwrap();
        // Full, but "new" is idle again: it makes way; "held" is in use and stays.
        store.legacy_group("newer", Some(2)).unwrap();
        assert!(Arc::ptr_eq(
            &held,
            &store.legacy_group("held", None).unwrap()
        ));
        assert!(store.legacy_group("new", None).is_err());
        assert_eq!(store.legacy_group_count(), 2);
    }

    #[test]
    fn the_event_channel_is_made_by_the_first_watcher() {
        let store = store(2, Duration::from_secs(3600));
        let cell = store.legacy_group("g", Some(1)).unwrap();
        cell.emit(group_event::Kind::GroupClosed(v1::GroupClosed {}));
        assert!(cell.events.get().is_none(), "made without a watcher");
        let mut events = cell.subscribe();
        cell.emit(group_event::Kind::GroupClosed(v1::GroupClosed {}));
        let event = events.try_recv().unwrap();
        assert_eq!(event.seq, 2, "events before the watcher are counted");
    }
}
