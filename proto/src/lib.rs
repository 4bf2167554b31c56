//! Protocol definitions shared by the coordinator, the dispatcher and the node agent.
//!
//! It will hold the coordinator's `.proto` and the Rust code generated from it at build
//! time. It contains no logic.
