//! Exit statuses of the `dispatcher` command: part of its interface (CI scripts branch
//! on them), so they are defined once here and every subcommand uses these.

/// Everything fine.
pub const OK: u8 = 0;
/// The input has problems (an invalid job, a bad device file), or a test case failed.
pub const PROBLEMS: u8 = 1;
/// The input could not be read at all.
pub const UNREADABLE: u8 = 2;
/// The command line asks for what cannot be (as clap's own usage errors).
pub const USAGE: u8 = 2;
/// The job ran incomplete (infrastructure, timeout, a node failed).
pub const INCOMPLETE: u8 = 3;
/// The daemon could not be reached or refused the request.
pub const SERVER: u8 = 4;
