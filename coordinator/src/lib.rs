//! The MultiNode coordinator: the group state every test shell of a job shares
//! (`lava-send`, `lava-wait`, `lava-wait-all`, `lava-sync`, `lava-network`,
//! `lava-start-vms`, `lava-wait-for-vms`).
//!
//! * [`group`]: one group's state and the MultiNode semantics, as pure checks;
//! * [`store`]: every group, tokens, and waiting (re-checking on change, never polling);
//! * [`journal`]: groups kept on disk, so they survive a restart;
//! * [`service`]: the gRPC API of `proto/`; [`legacy`]: LAVA's own protocol;
//! * [`server`]: starting both, standalone (`coordinator` binary) or embedded;
//! * [`client`], [`network`], [`relay`]: the `coordinator-client` crate, re-exported:
//!   node and dispatcher clients, `lava-network` data, answering console markers.
//!
//! It owns groups, messages, barriers and node liveness. It must not know about
//! devices, images, jobs or consoles beyond a group's node ids and roles.

pub mod auth;
pub mod group;
pub mod journal;
pub mod legacy;
pub mod server;
pub mod service;
pub mod store;

pub use coordinator_client::{
    AdminClient, ClientError, Credential, GroupView, NodeClient, Target, client, network, relay,
};
pub use server::{Config, Running, StartError, start};
