//! The message ids the MultiNode API itself sends under, and their keys: the same for a
//! node that calls the coordinator over gRPC, one whose calls the dispatcher relays from
//! console markers, and the dispatcher's own VM pipeline, so they meet in one place.

/// The message id `lava-network broadcast` sends under (as in LAVA).
pub const NETWORK_MESSAGE: &str = "network_info";

/// Sent by the host to start the VMs (LAVA v1's `lava_vm_start`).
pub const VM_START_MESSAGE: &str = "lava_vm_start";

/// The key of [`VM_START_MESSAGE`]'s one value: the address the VMs reach the host at.
pub const VM_START_HOST_IP: &str = "host_ip";

/// Sent by each node of a VM group when it is done (LAVA v1's `lava_vm_stop`).
pub const VM_STOP_MESSAGE: &str = "lava_vm_stop";
