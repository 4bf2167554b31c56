//! The dispatcher: accepts LAVA v1 JSON jobs, checks them against the lab, and (in the
//! daemon) schedules and runs them on host devices and the VMs launched there.
//!
//! Module map:
//! * [`lab`]: device types and devices as lab admins write them, acceleration choice,
//!   qemu command templates;
//! * [`validation`]: job validation against a lab (the schema and checks themselves live
//!   in the `job-schemas` crate).

pub mod console;
pub mod daemon;
pub mod fetch;
pub mod host;
pub mod images;
pub mod joblog;
pub mod lab;
pub mod local;
pub mod runner;
pub mod scheduler;
pub mod ssh;
pub mod states;
pub mod store;
pub mod testdef;
pub mod transfer;
pub mod validation;
pub mod vm;
