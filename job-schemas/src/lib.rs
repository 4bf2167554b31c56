//! The job a test writer submits: LAVA v1 JSON with `device_type`, `device_group` or `vm_group`.
//!
//! This crate owns the contract between test writers and the dispatcher:
//!
//! * the published JSON Schema (`job-schemas/lava-v1-job.schema.json`, draft 2020-12),
//!   which editors can use directly;
//! * the semantic checks a schema cannot express (role references, device types known
//!   to the lab, image URL policy, limits, LAVA's reserved keys);
//! * diagnostics in the manner of a compiler: every problem at once, each with its JSON
//!   pointer, its line and column, what was expected, what was found and a hint;
//! * the typed [`Job`] model the rest of the system works with once a job is valid.
//!
//! It knows nothing of HTTP, databases or devices beyond the [`DeviceCatalog`] the caller
//! hands in, so the CLI, the HTTP API and tests all validate with the very same code.

mod context;
mod diagnostic;
mod locate;
mod model;
pub mod pattern;
mod pointer;
mod schema;
mod schema_errors;
mod semantic;
mod suggest;
#[cfg(test)]
mod tests;
mod urls;
#[cfg(test)]
mod v1_keys_tests;

// Lets the unit tests share `tests/support` with the example, which names the crate.
#[cfg(test)]
extern crate self as job_schemas;

pub use context::{DeviceCatalog, DeviceTypeClass, Limits, ValidationContext};
pub use diagnostic::{Diagnostic, MAX_DIAGNOSTICS, Omitted, Report, Severity};
pub use model::{
    Action, Boot, Callback, CallbackMethod, Command, CommandRun, DEFAULT_TESTDEF, Dataset,
    DeployImage, DeployKernel, GitRepo, GroupRole, Install, Job, LogLevel, Login, Member, NodeKind,
    PackageManager, ParsePattern, Priority, RepoDefinition, RepoSource, RoleSpec,
    SINGLE_DEVICE_ROLE, ScalarValue, SkipInstall, Steps, TargetType, TestDefinition,
    TestDefinitionSource, TestMetadata, TestShell, Topology, VmGroup, VmSpec,
};
pub use schema::JOB_SCHEMA;
pub use semantic::{DEFAULT_JOB_TIMEOUT_SECS, MAX_TIMEOUT_SECS, MAX_VMS_PER_GROUP, deploy_urls};
pub use suggest::{did_you_mean, one_of};
pub use urls::{UrlError, check_url};

use serde_json::Value;

/// A job that passed validation, with the warnings it produced (e.g. ignored actions):
/// at most [`MAX_DIAGNOSTICS`] of them, and how many more there were.
#[derive(Debug, Clone)]
pub struct Validated {
    pub job: Job,
    pub warnings: Vec<Diagnostic>,
    /// Warnings found beyond those in `warnings`.
    pub omitted_warnings: usize,
}

impl Validated {
    /// The warnings as a report, to render with the count of those left out.
    pub fn warnings_report(&self) -> Report {
        Report::with_omitted(
            self.warnings.clone(),
            Omitted {
                errors: 0,
                warnings: self.omitted_warnings,
            },
        )
    }
}

/// Validates job text (JSON) and returns the typed job, or a report of every problem.
///
/// Parse errors carry line and column; all other diagnostics carry a JSON pointer and,
/// where the pointer can be found in `text`, its line and column too. Linear in the
/// size of `text`, however many problems it has.
pub fn validate_str(text: &str, ctx: &ValidationContext) -> Result<Validated, Report> {
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(_) if is_lava_v2_yaml(text) => {
            return Err(Report::new(vec![
                Diagnostic::error(
                    "",
                    "this is a LAVA v2 YAML job; this dispatcher reads LAVA v1 JSON jobs",
                )
                .hint("write the job as LAVA v1 JSON (device_type, timeout, actions with command and parameters)"),
            ])
            .with_positions(text));
        }
        Err(err) => return Err(Report::new(vec![Diagnostic::parse_error(&err)])),
    };
    validate_value(&value, ctx)
        .map_err(|report| report.with_positions(text))
        .map(|mut validated| {
            validated.warnings = validated
                .warnings_report()
                .with_positions(text)
                .into_diagnostics();
            validated
        })
}

/// The keys a LAVA v2 job starts with, at the top of a YAML mapping.
const LAVA_V2_KEYS: [&str; 8] = [
    "device_type",
    "job_name",
    "timeouts",
    "actions",
    "priority",
    "visibility",
    "protocols",
    "context",
];

/// Text that is no JSON but a YAML mapping whose first key is one a LAVA v2 job has:
/// said in one line rather than as a JSON syntax error at its first character. Reads at
/// most the lines before the first key.
fn is_lava_v2_yaml(text: &str) -> bool {
    let first = text
        .lines()
        .map(str::trim_end)
        .find(|line| !(line.is_empty() || line.starts_with('#') || line == &"---"));
    first.is_some_and(|line| {
        line.split_once(':').is_some_and(|(key, rest)| {
            LAVA_V2_KEYS.contains(&key) && (rest.is_empty() || rest.starts_with(' '))
        })
    })
}

/// Validates a test definition (LAVA's test-definition format, as fetched from a
/// `testdef_urls` entry and parsed from YAML) against the same rules as an inline one.
pub fn validate_test_definition(value: &Value) -> Result<TestDefinition, Report> {
    let mut diagnostics = schema_errors::check_test_definition(value);
    semantic::check_test_definition("", value, &mut diagnostics);
    if diagnostics.iter().any(Diagnostic::is_error) {
        return Err(Report::new(diagnostics));
    }
    serde_json::from_value(value.clone()).map_err(|e| {
        Report::new(vec![Diagnostic::error(
            "",
            format!("not a test definition: {e}"),
        )])
    })
}

/// Validates an already parsed job. Diagnostics carry pointers but no line numbers.
pub fn validate_value(value: &Value, ctx: &ValidationContext) -> Result<Validated, Report> {
    let mut diagnostics = schema_errors::check(value);
    diagnostics.extend(semantic::check(value, ctx));
    diagnostics.sort_by(|a, b| a.pointer.cmp(&b.pointer).then(a.severity.cmp(&b.severity)));
    diagnostics.dedup();
    // Cut before anything else per diagnostic (locating, rendering) happens.
    let report = Report::new(diagnostics);
    if report.error_count() > 0 {
        return Err(report);
    }
    match model::Job::from_valid_value(value) {
        Ok(job) => Ok(Validated {
            job,
            omitted_warnings: report.omitted().warnings,
            warnings: report.into_diagnostics(),
        }),
        Err(internal) => Err(Report::new(vec![internal.into_diagnostic()])),
    }
}
