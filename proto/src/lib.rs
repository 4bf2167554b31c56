//! Wire formats of the MultiNode API, shared by the coordinator, the dispatcher and the
//! node agent:
//!
//! * [`v1`]: the coordinator's gRPC service, generated at build time from
//!   `proto/lava/coordinator/v1/coordinator.proto`;
//! * [`markers`]: the console marker protocol (`<LAVA_MULTI_NODE> <LAVA_SEND ...>` out,
//!   `<LAVA_WAIT_COMPLETE ...>` back) for nodes with no network path to the coordinator;
//! * [`signal`]: LAVA's test shell signals (`<LAVA_SIGNAL_TESTCASE ...>`, run, test set
//!   and raise markers) and the shell's end marker, written and read in one place;
//! * [`multinode`]: the message ids the MultiNode API itself sends under
//!   (`network_info`, `lava_vm_start`, `lava_vm_stop`);
//! * [`legacy`]: LAVA's own coordinator framing (8 hex digits of length, then JSON).
//!
//! Formats only: no state, no I/O, no policy. Those live with the coordinator.

pub mod legacy;
pub mod markers;
pub mod multinode;
pub mod signal;

/// The generated gRPC code (`lava.coordinator.v1`).
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("lava.coordinator.v1");
}
