//! Shared helpers for the system tests in `tests/tests/`: where the shipped corpora live.
//!
//! The tests here use the real binaries, files and (later) real sshd and qemu; this
//! library only finds things, it fakes nothing.

use std::path::PathBuf;

/// The repository root (this crate lives in `<root>/tests`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// `tests/jobs/`, the corpus of valid and invalid jobs.
pub fn jobs_dir() -> PathBuf {
    repo_root().join("tests").join("jobs")
}

/// `device-types/`, the device types and example devices shipped with the product.
pub fn device_types_dir() -> PathBuf {
    repo_root().join("device-types")
}
