//! The client side of the MultiNode coordinator, for everything that calls it and is not
//! it: the node agent (in every test shell, a static binary), the dispatcher, tests and
//! benchmarks.
//!
//! * [`client`]: [`NodeClient`] (what a node may do, with its token) and
//!   [`AdminClient`] (what the dispatcher does), over gRPC, repeating a call while the
//!   coordinator restarts;
//! * [`network`]: `lava-network` data as the key/value pairs LAVA uses;
//! * [`relay`]: the dispatcher's side of the console marker protocol, answering a
//!   node's `<LAVA_MULTI_NODE>` calls through a [`NodeClient`].
//!
//! It owns no group state and serves nothing: the MultiNode semantics live in the
//! `coordinator` crate, which depends on this one and re-exports it, and the wire
//! formats in `proto`.

use std::collections::BTreeMap;

pub mod client;
pub mod network;
pub mod relay;

pub use client::{AdminClient, ClientError, GroupView, NodeClient, Target};

/// What a node has sent under one message id, by key.
pub type Data = BTreeMap<String, String>;

/// Every sender's data for one message id, by node id.
pub type Senders = BTreeMap<String, Data>;

/// One node's credentials, as the dispatcher receives them when it creates a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub node_id: String,
    pub role: String,
    /// Secret: the coordinator keeps only its hash.
    pub token: String,
}
