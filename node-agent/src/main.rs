//! The node agent: the `lava-*` commands (`lava-send`, `lava-wait`, `lava-sync`,
//! `lava-start-vms`, ...) test shells run inside host devices and guests.
//!
//! It will talk to the coordinator over gRPC when the node has a network path to it, and
//! over the console marker protocol otherwise.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("node-agent: the lava-* commands are not available in this build yet");
    ExitCode::from(2)
}
