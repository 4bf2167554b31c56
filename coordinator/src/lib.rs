//! The MultiNode coordinator: the group state every test shell of a job shares
//! (`lava-send`, `lava-wait`, `lava-wait-all`, `lava-sync`, `lava-start-vms`, ...).
//!
//! It will serve the gRPC API defined in `proto/` and LAVA's legacy wire protocol, run
//! standalone or embedded in the dispatcher. It owns group membership, messages and
//! barriers; it must not know about devices, images or jobs beyond a group's nodes.
