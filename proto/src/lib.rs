//! Wire formats of the MultiNode API, shared by the coordinator, the dispatcher and the
//! node agent:
//!
//! * [`v1`]: the coordinator's gRPC service, generated at build time from
//!   `proto/lava/coordinator/v1/coordinator.proto`;
//! * [`markers`]: the console marker protocol (`<LAVA_MULTI_NODE> <LAVA_SEND ...>` out,
//!   `<LAVA_WAIT_COMPLETE ...>` back) for nodes with no network path to the coordinator;
//! * [`legacy`]: LAVA's own coordinator framing (8 hex digits of length, then JSON).
//!
//! Formats only: no state, no I/O, no policy. Those live with the coordinator.

pub mod legacy;
pub mod markers;

/// The generated gRPC code (`lava.coordinator.v1`).
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("lava.coordinator.v1");
}
