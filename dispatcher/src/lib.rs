//! The dispatcher binary's library: the daemon (a thin HTTP API over its service
//! layer). Lab, storage, scheduling, device control and running jobs live in their own
//! crates (see ARCHITECTURE.md); the daemon and the CLI (`main.rs`) wire them together.

pub mod daemon;
