//! One group's state and the MultiNode semantics, without I/O or waiting.
//!
//! Every blocking call is a *check* here: it answers ready, pending (with the nodes it
//! still waits for) or hopeless (a node it waits for failed or finished without doing
//! what is waited for). [`crate::store`] re-runs checks when the group changes, so the
//! semantics live in one place for gRPC and legacy clients alike.
//!
//! Every change to a group's state is a [`Change`], made by [`Group::apply`] and
//! nothing else. A group that records hands its changes to [`crate::journal`], and a
//! group read back from its journal replays them through the same function, so the
//! state after a coordinator restart is the state before it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

pub use coordinator_client::{Data, Senders};
use proto::multinode::NETWORK_MESSAGE;
use serde::{Deserialize, Serialize};

/// Largest message id, key, value and message sizes a node may send.
pub const MAX_ID_LEN: usize = 128;
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Created, not heard from yet.
    Pending,
    Active,
    Finished,
    Failed,
}

impl NodeState {
    fn is_gone(self) -> bool {
        matches!(self, NodeState::Finished | NodeState::Failed)
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub role: String,
    pub state: NodeState,
    /// Why the node failed.
    pub reason: Option<String>,
    /// SHA-256 of the node's token; `None` for legacy groups, which have no tokens.
    pub token_hash: Option<[u8; 32]>,
}

/// How the group's membership came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// Created by the dispatcher with every node known: the group is complete at once.
    Fixed,
    /// LAVA's legacy protocol: nodes register themselves until `size` have.
    SelfRegistering { size: usize },
}

/// The result of checking a blocking call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check<T> {
    Ready(T),
    /// Still waiting for these nodes (ids; unregistered legacy slots are counted apart).
    Pending(Missing),
    /// Will never be satisfied.
    Hopeless(String),
}

/// Who a pending call waits for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Missing {
    /// The first [`MAX_NAMED`] of the registered nodes still missing, in group order.
    pub nodes: Vec<String>,
    /// How many registered nodes are still missing (may exceed `nodes.len()`).
    pub count: usize,
    /// Legacy groups: slots no node has registered for yet.
    pub unregistered: usize,
    /// How many nodes the call waits for in all.
    pub of: usize,
}

/// Most nodes a message names; a group of a thousand is summed up, not listed.
pub const MAX_NAMED: usize = 16;

/// What a blocked call waits on, so a change wakes only the calls it may release: one
/// barrier, one message id, a legacy group's bundles, or the group's nodes (one
/// registered, failed or finished; the group closed), which every call also waits on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    Sync(String),
    Message(String),
    Bundles,
    Nodes,
}

/// A request that can never be right, whatever the group does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Invalid(String),
    #[error("node {0} has failed and can make no more calls")]
    NodeFailed(String),
    #[error("the group is closed")]
    Closed,
}

/// One change to a group's state: what the journal records, one JSON line each.
/// Derived state (a barrier completing, a sync id freed) is not recorded: applying the
/// same changes in the same order derives it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// A legacy node registered itself.
    Registered {
        node: String,
        role: String,
    },
    /// A node made its first call.
    Activated {
        node: String,
    },
    Failed {
        node: String,
        reason: String,
    },
    Finished {
        node: String,
    },
    Closed,
    /// A node was given a new token (its SHA-256, hex): the old one stops working.
    Token {
        node: String,
        token_sha256: String,
    },
    Sent {
        node: String,
        id: String,
        data: Data,
    },
    /// A node arrived at barrier `id`, passing `message` (legacy clients may give one).
    SyncArrived {
        node: String,
        id: String,
        message: serde_json::Value,
    },
    /// A node was told it passed barrier `id`; `call` names the client's call, so a
    /// retry of it after a lost reply is answered again (0: the client gave none).
    SyncPassed {
        node: String,
        id: String,
        call: u64,
    },
    /// A legacy `aggregate` bundle.
    Bundled {
        node: String,
        bundle: serde_json::Value,
    },
    /// A legacy `clear_group`.
    Cleared {
        node: String,
    },
    /// A node opened its presence stream: from now on the coordinator answers for its
    /// liveness (the stream ends only when the node fails or after it finished).
    Attached {
        node: String,
    },
}

#[derive(Debug, Default, Clone)]
struct SyncRound {
    arrived: BTreeSet<String>,
    /// The registered nodes that have not arrived, by their place in the group: kept as
    /// nodes arrive, so a call learns who it still waits for without going over the
    /// whole group (which made a round of N arrivals cost N² steps).
    not_arrived: BTreeSet<usize>,
    completed: bool,
    collected: BTreeSet<String>,
    /// The message each node passed (legacy clients may give one; default the id).
    messages: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct Group {
    pub id: String,
    pub membership: Membership,
    nodes: Vec<Node>,
    index: HashMap<String, usize>,
    messages: BTreeMap<String, Senders>,
    syncs: HashMap<String, SyncRound>,
    /// Legacy `aggregate` bundles, by node.
    bundles: BTreeMap<String, serde_json::Value>,
    /// Legacy `clear_group` calls so far.
    cleared: BTreeSet<String>,
    closed: bool,
    /// How many nodes have failed or finished.
    gone: usize,
    /// The barrier each node passed last, with the call it passed in, by node.
    passed: HashMap<String, (String, u64)>,
    /// Nodes whose presence stream is open (see [`Change::Attached`]).
    present: BTreeSet<String>,
    /// What the changes since the last [`Group::take_touched`] may release.
    touched: Vec<Topic>,
    /// Changes not yet handed to the journal; `None` while not recording.
    unrecorded: Option<Vec<Change>>,
}

impl Group {
    /// A dispatcher-created group with every node known.
    pub fn fixed(id: String, nodes: Vec<Node>) -> Self {
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        Self {
            id,
            membership: Membership::Fixed,
            nodes,
            index,
            messages: BTreeMap::new(),
            syncs: HashMap::new(),
            bundles: BTreeMap::new(),
            cleared: BTreeSet::new(),
            closed: false,
            gone: 0,
            passed: HashMap::new(),
            present: BTreeSet::new(),
            touched: Vec::new(),
            unrecorded: None,
        }
    }

    /// From now on every change is kept for [`Group::take_unrecorded`].
    pub fn record(&mut self) {
        self.unrecorded.get_or_insert_with(Vec::new);
    }

    /// The changes made since the last call (none while not recording).
    pub fn take_unrecorded(&mut self) -> Vec<Change> {
        self.unrecorded
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Makes a change, keeping it for the journal when recording. Every method that
    /// changes the group's state goes through here, after checking the change is right.
    pub fn apply(&mut self, change: Change) {
        if let Some(unrecorded) = &mut self.unrecorded {
            unrecorded.push(change.clone());
        }
        self.replay(change);
    }

    /// Makes a change read back from the journal (not recorded again).
    pub fn replay(&mut self, change: Change) {
        let touched = match change {
            Change::Registered { node, role } => {
                if !self.index.contains_key(&node) {
                    let place = self.nodes.len();
                    self.index.insert(node.clone(), place);
                    self.nodes.push(Node {
                        id: node,
                        role,
                        state: NodeState::Active,
                        reason: None,
                        token_hash: None,
                    });
                    // Barriers still filling wait for the newcomer too.
                    for round in self.syncs.values_mut().filter(|r| !r.completed) {
                        round.not_arrived.insert(place);
                    }
                }
                Topic::Nodes
            }
            Change::Activated { node } => {
                if let Some(n) = self
                    .node_mut(&node)
                    .filter(|n| n.state == NodeState::Pending)
                {
                    n.state = NodeState::Active;
                }
                return;
            }
            Change::Failed { node, reason } => {
                self.end(&node, NodeState::Failed, Some(reason));
                Topic::Nodes
            }
            Change::Finished { node } => {
                self.end(&node, NodeState::Finished, None);
                Topic::Nodes
            }
            Change::Closed => {
                self.closed = true;
                Topic::Nodes
            }
            Change::Token { node, token_sha256 } => {
                let hash = hex::decode(&token_sha256)
                    .ok()
                    .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok());
                if let (Some(n), Some(hash)) = (self.node_mut(&node), hash) {
                    n.token_hash = Some(hash);
                }
                return;
            }
            Change::Sent { node, id, data } => {
                self.messages
                    .entry(id.clone())
                    .or_default()
                    .entry(node)
                    .or_default()
                    .extend(data);
                Topic::Message(id)
            }
            Change::SyncArrived { node, id, message } => {
                let size = self.size();
                let place = self.index.get(&node).copied();
                let registered = self.nodes.len();
                let round = self.syncs.entry(id.clone()).or_insert_with(|| SyncRound {
                    not_arrived: (0..registered).collect(),
                    ..SyncRound::default()
                });
                round.arrived.insert(node.clone());
                if let Some(place) = place {
                    round.not_arrived.remove(&place);
                }
                round.messages.insert(node, message);
                if round.arrived.len() >= size {
                    round.completed = true;
                    round.not_arrived.clear();
                    Topic::Sync(id)
                } else {
                    // Nobody waits for an arrival short of the last.
                    return;
                }
            }
            Change::SyncPassed { node, id, call } => {
                if let Some(round) = self.syncs.get_mut(&id) {
                    round.collected.insert(node.clone());
                }
                if call != 0 {
                    self.passed.insert(node, (id.clone(), call));
                }
                self.reset_sync_if_passed(&id);
                return;
            }
            Change::Bundled { node, bundle } => {
                self.bundles.insert(node, bundle);
                Topic::Bundles
            }
            Change::Cleared { node } => {
                self.cleared.insert(node.clone());
                self.end(&node, NodeState::Finished, None);
                Topic::Nodes
            }
            Change::Attached { node } => {
                self.present.insert(node);
                return;
            }
        };
        self.touch_topic(touched);
    }

    fn touch_topic(&mut self, topic: Topic) {
        if !self.touched.contains(&topic) {
            self.touched.push(topic);
        }
    }

    /// A node failed or finished, unless it already had.
    fn end(&mut self, id: &str, state: NodeState, reason: Option<String>) {
        if let Some(node) = self.node_mut(id).filter(|n| !n.state.is_gone()) {
            node.state = state;
            if reason.is_some() {
                node.reason = reason;
            }
            self.gone += 1;
        }
    }

    /// A legacy group, filled as nodes register.
    pub fn self_registering(id: String, size: usize) -> Self {
        Self {
            membership: Membership::SelfRegistering { size },
            ..Self::fixed(id, Vec::new())
        }
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, id: &str) -> Option<&Node> {
        self.index.get(id).map(|i| &self.nodes[*i])
    }

    /// Gives node `id` a token whose SHA-256 is `hash` (the old one stops working).
    pub fn set_token(&mut self, id: &str, hash: [u8; 32]) {
        self.apply(Change::Token {
            node: id.to_string(),
            token_sha256: hex::encode(hash),
        });
    }

    /// Made by a dispatcher, every member known from the start (not a legacy group).
    pub fn is_fixed(&self) -> bool {
        matches!(self.membership, Membership::Fixed)
    }

    fn node_mut(&mut self, id: &str) -> Option<&mut Node> {
        self.index.get(id).map(|i| &mut self.nodes[*i])
    }

    /// How many nodes the group has when complete.
    pub fn size(&self) -> usize {
        match self.membership {
            Membership::Fixed => self.nodes.len(),
            Membership::SelfRegistering { size } => size,
        }
    }

    fn describe(&self, id: &str) -> String {
        match self.node(id) {
            Some(node) => format!("{} ({})", node.id, node.role),
            None => id.to_string(),
        }
    }

    /// Renders "waiting for 2/5: client-3 (client), client-4 (client)".
    pub fn describe_missing(&self, missing: &Missing) -> String {
        let mut names: Vec<String> = missing.nodes.iter().map(|n| self.describe(n)).collect();
        if missing.count > missing.nodes.len() {
            names.push(format!("and {} more", missing.count - missing.nodes.len()));
        }
        if missing.unregistered > 0 {
            names.push(format!(
                "{} node(s) not yet registered",
                missing.unregistered
            ));
        }
        let total = missing.count + missing.unregistered;
        format!("waiting for {total}/{}: {}", missing.of, names.join(", "))
    }

    /// Of `expected`, the nodes not `done`: counted, the first few named, and those of
    /// them that are gone (failed or finished) listed apart. One pass, no copies of
    /// the group, so a barrier of a thousand nodes stays cheap.
    fn missing<'a>(
        &'a self,
        expected: impl Iterator<Item = &'a Node>,
        done: impl Fn(&Node) -> bool,
        unregistered: usize,
        of: usize,
    ) -> (Missing, Vec<&'a str>) {
        let mut missing = Missing {
            unregistered,
            of,
            ..Missing::default()
        };
        let mut gone = Vec::new();
        for node in expected.filter(|n| !done(n)) {
            missing.count += 1;
            if missing.nodes.len() < MAX_NAMED {
                missing.nodes.push(node.id.clone());
            }
            if node.state.is_gone() {
                gone.push(node.id.as_str());
            }
        }
        (missing, gone)
    }

    /// Pending, or hopeless when a node it waits for is gone.
    fn pending_or_hopeless<T>(&self, missing: Missing, gone: Vec<&str>) -> Check<T> {
        if gone.is_empty() {
            Check::Pending(missing)
        } else {
            Check::Hopeless(format!(
                "{}; {}",
                self.gone_reasons(gone.into_iter()),
                self.describe_missing(&missing)
            ))
        }
    }

    /// Roughly how many bytes of names and data the group holds (not counting the
    /// containers), so the legacy port can bound what a group keeps. Walks the whole
    /// group: cheap for the small groups LAVA makes, and bounded by that limit.
    pub fn footprint(&self) -> usize {
        let nodes: usize = self.nodes.iter().map(|n| n.id.len() + n.role.len()).sum();
        let messages: usize = self
            .messages
            .iter()
            .map(|(id, senders)| id.len() + senders_len(senders))
            .sum();
        let syncs: usize = self
            .syncs
            .iter()
            .map(|(id, round)| {
                let names = round.arrived.iter().chain(&round.collected);
                id.len() + names.map(String::len).sum::<usize>() + by_node_len(&round.messages)
            })
            .sum();
        let bundles = by_node_len(&self.bundles);
        let passed: usize = self
            .passed
            .iter()
            .map(|(node, (id, _))| node.len() + id.len() + 8)
            .sum();
        nodes
            + messages
            + syncs
            + bundles
            + passed
            + self.cleared.iter().map(String::len).sum::<usize>()
    }

    /// Registers a legacy node; `Ok(false)` when it was already registered.
    pub fn register(&mut self, id: &str, role: &str) -> Result<bool, Refusal> {
        if self.index.contains_key(id) {
            return Ok(false);
        }
        if self.nodes.len() >= self.size() {
            return Err(Refusal::Invalid(format!(
                "group {} already has its {} nodes",
                self.id,
                self.size()
            )));
        }
        self.apply(Change::Registered {
            node: id.to_string(),
            role: role.to_string(),
        });
        Ok(true)
    }

    /// Whether every node has registered (always, for fixed groups).
    pub fn is_complete(&self) -> bool {
        self.nodes.len() >= self.size()
    }

    /// Ends the group: every pending and later call fails.
    pub fn close(&mut self) {
        if !self.closed {
            self.apply(Change::Closed);
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Notes that a node made a call; refuses calls from failed nodes or closed groups.
    pub fn touch(&mut self, id: &str) -> Result<Option<NodeState>, Refusal> {
        if self.closed {
            return Err(Refusal::Closed);
        }
        let node = self
            .node_mut(id)
            .ok_or_else(|| Refusal::Invalid(format!("no node {id} in this group")))?;
        match node.state {
            NodeState::Failed => Err(Refusal::NodeFailed(id.to_string())),
            NodeState::Pending => {
                self.apply(Change::Activated {
                    node: id.to_string(),
                });
                Ok(Some(NodeState::Active))
            }
            _ => Ok(None),
        }
    }

    /// A node opened its presence stream (after [`Group::touch`] let it in).
    pub fn attach(&mut self, id: &str) {
        if !self.present.contains(id) {
            self.apply(Change::Attached {
                node: id.to_string(),
            });
        }
    }

    /// After a restart: the live nodes whose presence was open when the coordinator
    /// stopped. Their streams are gone, so they count as absent until they attach again.
    pub fn take_presence(&mut self) -> Vec<String> {
        let present = std::mem::take(&mut self.present);
        present
            .into_iter()
            .filter(|id| self.node(id).is_some_and(|n| !n.state.is_gone()))
            .collect()
    }

    /// Whether a node's presence stream is open.
    pub fn is_present(&self, id: &str) -> bool {
        self.present.contains(id)
    }

    /// Marks a node failed. Returns false when it already was, or had finished.
    pub fn fail(&mut self, id: &str, reason: &str) -> bool {
        let live = self.node(id).is_some_and(|n| !n.state.is_gone());
        if live {
            self.apply(Change::Failed {
                node: id.to_string(),
                reason: reason.to_string(),
            });
        }
        live
    }

    /// Marks a node finished. Returns false when it already was gone.
    pub fn finish(&mut self, id: &str) -> bool {
        let live = self.node(id).is_some_and(|n| !n.state.is_gone());
        if live {
            self.apply(Change::Finished {
                node: id.to_string(),
            });
        }
        live
    }

    /// `lava-send`: merges `data` into what `sender` sent under `message_id`.
    pub fn send(&mut self, sender: &str, message_id: &str, data: Data) -> Result<(), Refusal> {
        check_message_id(message_id)?;
        let size = data_len(&data);
        if size > MAX_MESSAGE_BYTES {
            return Err(Refusal::Invalid(format!(
                "message {message_id} is {size} bytes, over the limit of {MAX_MESSAGE_BYTES}"
            )));
        }
        for key in data.keys() {
            check_key(key)?;
        }
        let merged: usize = self
            .messages
            .get(message_id)
            .and_then(|senders| senders.get(sender))
            .map_or(0, data_len)
            + size;
        if merged > MAX_MESSAGE_BYTES {
            return Err(Refusal::Invalid(format!(
                "message {message_id} would grow to {merged} bytes, over the limit of {MAX_MESSAGE_BYTES}"
            )));
        }
        self.apply(Change::Sent {
            node: sender.to_string(),
            id: message_id.to_string(),
            data,
        });
        Ok(())
    }

    /// `lava-wait`: ready once anyone has sent `message_id`; hopeless when every other
    /// node is gone without sending it.
    pub fn check_wait(&self, caller: &str, message_id: &str) -> Check<Senders> {
        if let Some(senders) = self.messages.get(message_id).filter(|s| !s.is_empty()) {
            return Check::Ready(senders.clone());
        }
        let unregistered = self.size().saturating_sub(self.nodes.len());
        let (missing, gone) = self.missing(
            self.nodes.iter().filter(|n| n.id != caller),
            |_| false,
            unregistered,
            self.size().saturating_sub(1),
        );
        if unregistered == 0 && missing.count > 0 && gone.len() == missing.count {
            return Check::Hopeless(format!(
                "no node is left that could send it: {}",
                self.gone_reasons(gone.into_iter())
            ));
        }
        Check::Pending(missing)
    }

    /// `lava-wait-all`: ready once every other node (of `role`, if given) has sent it.
    pub fn check_wait_all(
        &self,
        caller: &str,
        message_id: &str,
        role: Option<&str>,
    ) -> Result<Check<Senders>, Refusal> {
        if let Some(role) = role
            && self.is_complete()
            && !self.nodes.iter().any(|n| n.role == role)
        {
            let roles: BTreeSet<&str> = self.nodes.iter().map(|n| n.role.as_str()).collect();
            return Err(Refusal::Invalid(format!(
                "no role \"{role}\" in this group (roles: {})",
                roles.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
        let expected: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| n.id != caller && role.is_none_or(|r| n.role == r))
            .collect();
        // Legacy groups still filling may gain more nodes of the role.
        let unregistered = if role.is_none() {
            self.size().saturating_sub(self.nodes.len())
        } else if self.is_complete() {
            0
        } else {
            1
        };
        let senders = self.messages.get(message_id);
        let sent = |n: &Node| senders.is_some_and(|s| s.contains_key(&n.id));
        let of = expected.len() + unregistered;
        let (missing, gone) = self.missing(expected.into_iter(), sent, unregistered, of);
        if missing.count == 0 && unregistered == 0 {
            return Ok(Check::Ready(senders.cloned().unwrap_or_default()));
        }
        Ok(self.pending_or_hopeless(missing, gone))
    }

    /// `lava-sync`: arrives at (or re-checks) the barrier `message_id` for `caller`.
    /// Idempotent: a node that already arrived just checks again, and a node whose reply
    /// was lost gets it on its retry (`call`, when not 0, names the client's call, so a
    /// retry of a call that already passed is answered even after the id was freed).
    pub fn poll_sync(
        &mut self,
        caller: &str,
        message_id: &str,
        message: Option<serde_json::Value>,
        call: u64,
    ) -> Result<Check<serde_json::Value>, Refusal> {
        check_message_id(message_id)?;
        if call != 0
            && self
                .passed
                .get(caller)
                .is_some_and(|(id, passed)| id == message_id && *passed == call)
        {
            return Ok(Check::Ready(serde_json::Value::String(
                message_id.to_string(),
            )));
        }
        let size = self.size();
        let arrives = self
            .syncs
            .get(message_id)
            .is_none_or(|round| !round.completed && !round.arrived.contains(caller));
        if arrives {
            self.apply(Change::SyncArrived {
                node: caller.to_string(),
                id: message_id.to_string(),
                message: message
                    .unwrap_or_else(|| serde_json::Value::String(message_id.to_string())),
            });
        }
        let Some(round) = self.syncs.get(message_id) else {
            // Cannot happen: arriving made the round, and only passing frees it.
            return Ok(Check::Pending(Missing::default()));
        };
        if round.completed && round.arrived.contains(caller) && !round.collected.contains(caller) {
            let passed = round
                .messages
                .get(caller)
                .cloned()
                .unwrap_or_else(|| serde_json::Value::String(message_id.to_string()));
            self.apply(Change::SyncPassed {
                node: caller.to_string(),
                id: message_id.to_string(),
                call,
            });
            return Ok(Check::Ready(passed));
        }
        // Either the barrier is still filling, or the caller passed it and calls again
        // before everyone else has (then it waits for the id to become free).
        if round.completed {
            self.reset_sync_if_passed(message_id);
        }
        let Some(round) = self.syncs.get(message_id) else {
            // Just freed: arrive at the next round.
            return self.poll_sync(caller, message_id, None, call);
        };
        let unregistered = size.saturating_sub(self.nodes.len());
        if !round.completed {
            // Filling: who has not arrived is kept by the round, in group order.
            let mut missing = Missing {
                count: round.not_arrived.len(),
                unregistered,
                of: size,
                nodes: Vec::new(),
            };
            missing.nodes = round
                .not_arrived
                .iter()
                .take(MAX_NAMED)
                .map(|&i| self.nodes[i].id.clone())
                .collect();
            // Only a group with a node gone needs to look for it among the missing.
            let gone: Vec<&str> = if self.gone == 0 {
                Vec::new()
            } else {
                round
                    .not_arrived
                    .iter()
                    .map(|&i| &self.nodes[i])
                    .filter(|n| n.state.is_gone())
                    .map(|n| n.id.as_str())
                    .collect()
            };
            return Ok(self.pending_or_hopeless(missing, gone));
        }
        // Passed, and called again before everyone else has: rare, so counted afresh.
        // A node gone before collecting does not hold the others up
        // (reset_sync_if_passed counts it as passed).
        let (missing, _gone) = self.missing(
            self.nodes.iter(),
            |n| round.collected.contains(&n.id),
            unregistered,
            size,
        );
        Ok(Check::Pending(missing))
    }

    /// Frees a sync id once every node has passed the barrier (or is gone).
    fn reset_sync_if_passed(&mut self, message_id: &str) {
        let Some(round) = self.syncs.get(message_id) else {
            return;
        };
        if !round.completed || !self.is_complete() {
            return;
        }
        // Cheap in the common case: nobody gone, so everyone must have collected.
        let all_passed = if self.gone == 0 {
            round.collected.len() >= self.nodes.len()
        } else {
            self.nodes
                .iter()
                .all(|n| round.collected.contains(&n.id) || n.state.is_gone())
        };
        if all_passed {
            self.syncs.remove(message_id);
            self.touch_topic(Topic::Sync(message_id.to_string()));
        }
    }

    /// What the changes since the last call may release; forgets them.
    pub fn take_touched(&mut self) -> Vec<Topic> {
        std::mem::take(&mut self.touched)
    }

    /// `lava-network collect`: the broadcasts of every other node (of `role`).
    pub fn check_network(
        &self,
        caller: &str,
        role: Option<&str>,
    ) -> Result<Check<Senders>, Refusal> {
        self.check_wait_all(caller, NETWORK_MESSAGE, role)
    }

    /// Legacy `aggregate` (LAVA v1 result bundles): every node hands in its bundle; the
    /// `.0` node gets all of them once all are in.
    pub fn aggregate(
        &mut self,
        caller: &str,
        bundle: serde_json::Value,
        is_first: bool,
    ) -> Check<serde_json::Value> {
        self.apply(Change::Bundled {
            node: caller.to_string(),
            bundle,
        });
        if !is_first {
            return Check::Ready(serde_json::Value::Null);
        }
        if self.bundles.len() >= self.size() {
            let all: serde_json::Map<String, serde_json::Value> = self
                .bundles
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            return Check::Ready(serde_json::json!({ "bundle": all }));
        }
        let unregistered = self.size().saturating_sub(self.nodes.len());
        let (missing, _) = self.missing(
            self.nodes.iter(),
            |n| self.bundles.contains_key(&n.id),
            unregistered,
            self.size(),
        );
        Check::Pending(missing)
    }

    /// Legacy `clear_group`: returns true once every registered node has cleared, when
    /// the group should be dropped.
    pub fn clear(&mut self, caller: &str) -> bool {
        self.apply(Change::Cleared {
            node: caller.to_string(),
        });
        self.cleared.len() >= self.nodes.len()
    }

    fn gone_reasons<'a>(&self, ids: impl Iterator<Item = &'a str>) -> String {
        ids.map(|id| match self.node(id) {
            Some(n) if n.state == NodeState::Failed => format!(
                "{} failed ({})",
                self.describe(id),
                n.reason.as_deref().unwrap_or("no reason given")
            ),
            _ => format!("{} finished without it", self.describe(id)),
        })
        .collect::<Vec<_>>()
        .join(", ")
    }
}

/// Message ids: non-empty, no `=` or white space (LAVA's rule), bounded.
/// Bytes of node ids, keys and values in `senders`.
fn senders_len(senders: &Senders) -> usize {
    senders
        .iter()
        .map(|(node, data)| node.len() + data_len(data))
        .sum()
}

/// Bytes of node ids and JSON values in `values`.
fn by_node_len(values: &BTreeMap<String, serde_json::Value>) -> usize {
    values
        .iter()
        .map(|(node, value)| node.len() + json_len(value))
        .sum()
}

/// Bytes of keys and values in `data`.
pub fn data_len(data: &Data) -> usize {
    data.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// The length of `value` as compact JSON, counted without keeping the text.
pub fn json_len(value: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a JSON value to a counter cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

pub fn check_message_id(id: &str) -> Result<(), Refusal> {
    if id.is_empty() {
        return Err(Refusal::Invalid("message id is empty".into()));
    }
    if id.len() > MAX_ID_LEN {
        return Err(Refusal::Invalid(format!(
            "message id is over {MAX_ID_LEN} bytes"
        )));
    }
    if id.contains('=') || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Refusal::Invalid(format!(
            "message id {id:?} may not contain '=' or white space"
        )));
    }
    Ok(())
}

/// Keys: like LAVA's `\w+`.
fn check_key(key: &str) -> Result<(), Refusal> {
    if key.is_empty()
        || key.len() > MAX_ID_LEN
        || !key
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
    {
        return Err(Refusal::Invalid(format!(
            "key {key:?} must be letters, digits, '_' or '-'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(nodes: &[(&str, &str)]) -> Group {
        Group::fixed(
            "g".into(),
            nodes
                .iter()
                .map(|(id, role)| Node {
                    id: id.to_string(),
                    role: role.to_string(),
                    state: NodeState::Pending,
                    reason: None,
                    token_hash: None,
                })
                .collect(),
        )
    }

    fn is_pending<T>(check: Result<Check<T>, Refusal>) -> bool {
        matches!(check, Ok(Check::Pending(_)))
    }

    fn is_ready<T>(check: Result<Check<T>, Refusal>) -> bool {
        matches!(check, Ok(Check::Ready(_)))
    }

    fn data(pairs: &[(&str, &str)]) -> Data {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn wait_returns_every_sender_and_messages_accumulate() {
        let mut g = group(&[("s", "server"), ("c", "client")]);
        assert!(matches!(g.check_wait("c", "ready"), Check::Pending(_)));
        g.send("s", "ready", data(&[("ip", "1")])).unwrap();
        g.send("s", "ready", data(&[("port", "80")])).unwrap();
        let Check::Ready(senders) = g.check_wait("c", "ready") else {
            panic!()
        };
        assert_eq!(senders["s"], data(&[("ip", "1"), ("port", "80")]));
        // Messages persist: a later wait returns at once.
        assert!(matches!(g.check_wait("c", "ready"), Check::Ready(_)));
    }

    #[test]
    fn wait_all_for_a_role_needs_every_member_not_the_first() {
        let mut g = group(&[
            ("s", "server"),
            ("c1", "client"),
            ("c2", "client"),
            ("c3", "client"),
        ]);
        g.send("c1", "hello", Data::new()).unwrap();
        let Ok(Check::Pending(missing)) = g.check_wait_all("s", "hello", Some("client")) else {
            panic!()
        };
        assert_eq!(missing.nodes, ["c2", "c3"]);
        assert_eq!(
            g.describe_missing(&missing),
            "waiting for 2/3: c2 (client), c3 (client)"
        );
        g.send("c2", "hello", Data::new()).unwrap();
        g.send("c3", "hello", Data::new()).unwrap();
        assert!(matches!(
            g.check_wait_all("s", "hello", Some("client")),
            Ok(Check::Ready(_))
        ));
        assert!(g.check_wait_all("s", "hello", Some("clients")).is_err());
    }

    #[test]
    fn wait_all_without_role_waits_for_every_other_node() {
        let mut g = group(&[("a", "r"), ("b", "r"), ("c", "r")]);
        g.send("b", "x", Data::new()).unwrap();
        let Ok(Check::Pending(missing)) = g.check_wait_all("a", "x", None) else {
            panic!()
        };
        assert_eq!(missing.nodes, ["c"]);
        g.send("c", "x", Data::new()).unwrap();
        assert!(matches!(
            g.check_wait_all("a", "x", None),
            Ok(Check::Ready(_))
        ));
    }

    #[test]
    fn a_failed_node_makes_waits_on_it_hopeless_with_its_name() {
        let mut g = group(&[("a", "server"), ("b", "client"), ("c", "client")]);
        g.poll_sync("a", "ready", None, 0).unwrap();
        g.poll_sync("b", "ready", None, 0).unwrap();
        assert!(g.fail("c", "connection lost"));
        let Ok(Check::Hopeless(why)) = g.poll_sync("a", "ready", None, 0) else {
            panic!()
        };
        assert_eq!(
            why,
            "c (client) failed (connection lost); waiting for 1/3: c (client)"
        );
        let Ok(Check::Hopeless(why)) = g.check_wait_all("a", "x", Some("client")) else {
            panic!()
        };
        assert!(why.contains("c (client) failed"), "{why}");
        // b can still send, so a plain wait is not hopeless.
        assert!(matches!(g.check_wait("a", "x"), Check::Pending(_)));
        assert_eq!(g.touch("c"), Err(Refusal::NodeFailed("c".into())));
    }

    #[test]
    fn a_filling_barrier_names_who_it_waits_for_in_group_order() {
        let mut g = group(&[("a", "r"), ("b", "r"), ("c", "r"), ("d", "r")]);
        let missing = |check: Result<Check<serde_json::Value>, Refusal>| match check {
            Ok(Check::Pending(m)) => (m.count, m.nodes, m.of),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            missing(g.poll_sync("c", "s", None, 0)),
            (3, vec!["a".into(), "b".into(), "d".into()], 4)
        );
        assert_eq!(
            missing(g.poll_sync("a", "s", None, 0)),
            (2, vec!["b".into(), "d".into()], 4)
        );
        // A node gone before arriving makes the barrier hopeless, naming it.
        g.fail("d", "its VM panicked");
        match g.poll_sync("b", "s", None, 0) {
            Ok(Check::Hopeless(why)) => assert!(why.contains("its VM panicked"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_legacy_node_registering_mid_barrier_is_waited_for() {
        let mut g = Group::self_registering("g".into(), 3);
        g.register("a", "r").unwrap();
        assert!(is_pending(g.poll_sync("a", "s", None, 0)));
        g.register("b", "r").unwrap();
        match g.poll_sync("a", "s", None, 0) {
            Ok(Check::Pending(m)) => {
                assert_eq!((m.count, m.unregistered, m.nodes), (1, 1, vec!["b".into()]));
            }
            other => panic!("{other:?}"),
        }
        g.register("c", "r").unwrap();
        assert!(is_pending(g.poll_sync("b", "s", None, 0)));
        assert!(is_ready(g.poll_sync("c", "s", None, 0)));
    }

    /// A change says what it may release, so only the calls blocked on that wake.
    #[test]
    fn changes_touch_only_what_they_may_release() {
        let mut g = group(&[("a", "r"), ("b", "r")]);
        g.send("a", "m", data(&[("k", "v")])).unwrap();
        assert_eq!(g.take_touched(), [Topic::Message("m".into())]);
        // An arrival short of the last releases nobody.
        assert!(is_pending(g.poll_sync("a", "s", None, 0)));
        assert!(g.take_touched().is_empty());
        assert!(is_ready(g.poll_sync("b", "s", None, 0)));
        assert_eq!(g.take_touched(), [Topic::Sync("s".into())]);
        g.fail("b", "gone");
        assert_eq!(g.take_touched(), [Topic::Nodes]);
    }

    #[test]
    fn sync_releases_everyone_and_the_id_is_reusable_after_all_passed() {
        let mut g = group(&[("a", "r"), ("b", "r")]);
        assert!(is_pending(g.poll_sync("a", "s", None, 0)));
        // Re-checking (a retry) does not count twice.
        assert!(is_pending(g.poll_sync("a", "s", None, 0)));
        assert!(is_ready(g.poll_sync("b", "s", None, 0)));
        // a has not collected yet; b calling again waits for the next round.
        assert!(is_pending(g.poll_sync("b", "s", None, 0)));
        assert!(is_ready(g.poll_sync("a", "s", None, 0)));
        // Second round with the same id.
        assert!(is_pending(g.poll_sync("a", "s", None, 0)));
        assert!(is_ready(g.poll_sync("b", "s", None, 0)));
        assert!(is_ready(g.poll_sync("a", "s", None, 0)));
    }

    #[test]
    fn ids_and_keys_are_checked() {
        let mut g = group(&[("a", "r"), ("b", "r")]);
        assert!(g.send("a", "", Data::new()).is_err());
        assert!(g.send("a", "a=b", Data::new()).is_err());
        assert!(g.send("a", "x", data(&[("$(touch /tmp/x)", "v")])).is_err());
        assert!(
            g.send("a", "x", data(&[("k", &"v".repeat(MAX_MESSAGE_BYTES))]))
                .is_err()
        );
        assert!(
            g.send("a", "x", data(&[("k", "$(touch /tmp/pwned)")]))
                .is_ok()
        );
    }

    #[test]
    fn legacy_groups_fill_up_then_refuse_strangers() {
        let mut g = Group::self_registering("g".into(), 2);
        assert_eq!(g.register("a", "server"), Ok(true));
        assert!(!g.is_complete());
        assert_eq!(g.register("a", "server"), Ok(false));
        assert_eq!(g.register("b", "client"), Ok(true));
        assert!(g.is_complete());
        assert!(g.register("c", "client").is_err());
        assert!(!g.clear("a"));
        assert!(g.clear("b"));
    }
}
