//! Job validation against a particular lab: the bridge between `job-schemas` (which
//! knows the job format) and [`crate::lab`] (which knows the devices).

use std::path::PathBuf;

use job_schemas::{Limits, Report, Validated, ValidationContext};

use crate::lab::Lab;

/// Lab policy for jobs, as the daemon configuration or CLI flags give it.
#[derive(Debug, Clone)]
pub struct JobPolicy {
    pub limits: Limits,
    /// Directories `file://` URLs may point into.
    pub file_roots: Vec<PathBuf>,
}

impl Default for JobPolicy {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            file_roots: vec![PathBuf::from("/")],
        }
    }
}

/// The validation context for jobs submitted to `lab` under `policy`.
pub fn context(lab: &Lab, policy: &JobPolicy) -> ValidationContext {
    ValidationContext {
        catalog: lab.catalog(),
        limits: policy.limits,
        file_roots: policy.file_roots.clone(),
    }
}

/// Validates job text for `lab`. This is the one entry point the CLI and the HTTP API use.
pub fn validate_job(text: &str, lab: &Lab, policy: &JobPolicy) -> Result<Validated, Report> {
    job_schemas::validate_str(text, &context(lab, policy))
}
