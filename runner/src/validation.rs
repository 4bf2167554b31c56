//! Job validation against a particular lab: the bridge between `job-schemas` (which
//! knows the job format) and [`lab`] (which knows the devices).
//!
//! Two depths: [`validate_job`] needs no I/O and no devices (the CLI's offline
//! `validate`, jobs written for another lab); [`validate_for_run`] adds what only the
//! lab that runs the job can check: every `file://` the job names is a regular file the
//! lab's [`FetchPolicy`] lets it read, and some set of the lab's devices could run it.
//! The daemon and `dispatcher run` use the second.

use std::sync::Arc;

use job_schemas::{Diagnostic, Limits, Report, Severity, Topology, Validated, ValidationContext};
use serde_json::Value;

use hostctl::fetch::FetchPolicy;
use lab::Lab;
use scheduler::{self, DeviceView};
use states::{DeviceHealth, DeviceState};

/// Lab policy for jobs, as the daemon configuration or CLI flags give it.
#[derive(Debug, Clone)]
pub struct JobPolicy {
    pub limits: Limits,
    /// What the job's URLs may reach, and how much they may bring.
    pub fetch: Arc<FetchPolicy>,
    /// Longest job timeout accepted, in seconds (`None`: any).
    pub max_job_timeout_secs: Option<u64>,
}

impl Default for JobPolicy {
    /// A local user's own command: any file, any network, any timeout.
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            fetch: Arc::new(FetchPolicy::local()),
            max_job_timeout_secs: None,
        }
    }
}

/// The validation context for jobs submitted to `lab` under `policy`.
pub fn context(lab: &Lab, policy: &JobPolicy) -> ValidationContext {
    ValidationContext {
        catalog: lab.catalog(),
        limits: policy.limits,
        file_roots: policy.fetch.lexical_roots(),
    }
}

/// Validates job text for `lab`, without I/O: the job format, the lab's device types and
/// the policy's limits.
pub fn validate_job(text: &str, lab: &Lab, policy: &JobPolicy) -> Result<Validated, Report> {
    let mut validated = job_schemas::validate_str(text, &context(lab, policy))?;
    let mut problems = Vec::new();
    // A job that gave no timeout (warned about) gets the default, within the lab's.
    let defaulted = validated
        .warnings
        .iter()
        .any(|d| d.pointer == "/timeout" && d.severity == Severity::Warning);
    if let Some(limit) = policy.max_job_timeout_secs
        && defaulted
    {
        validated.job.timeout_secs = validated.job.timeout_secs.min(limit);
    }
    if let Some(limit) = policy.max_job_timeout_secs
        && validated.job.timeout_secs > limit
    {
        problems.push(
            Diagnostic::error("/timeout", "the job timeout is longer than this lab allows")
                .expected(format!(
                    "at most {limit} seconds (the lab's max_job_timeout)"
                ))
                .found(validated.job.timeout_secs.to_string()),
        );
    }
    finish(text, validated, problems)
}

/// [`validate_job`], and what only the lab that runs the job can check: every `file://`
/// the job names exists, is a regular file and the lab's policy lets the job read it,
/// every `http(s)://` address (and `localhost`) is one the policy lets it reach, and
/// the lab has devices enough to ever run the job.
pub fn validate_for_run(text: &str, lab: &Lab, policy: &JobPolicy) -> Result<Validated, Report> {
    validate_for_run_with(text, lab, policy, &[], false)
}

/// [`validate_for_run`] in a lab that has `others` besides the devices of `lab`'s files:
/// each the devices of another worker sharing its database. A job is possible when this
/// worker's devices, or another worker's, could serve it; or, when jobs may `span`
/// workers (they share a standalone coordinator), all of them together.
pub fn validate_for_run_with(
    text: &str,
    lab: &Lab,
    policy: &JobPolicy,
    others: &[Vec<DeviceView>],
    span: bool,
) -> Result<Validated, Report> {
    let validated = validate_job(text, lab, policy)?;
    let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let mut problems: Vec<Diagnostic> = job_urls(&value)
        .into_iter()
        .filter_map(|(pointer, text)| {
            if text.is_empty() {
                return Some(
                    Diagnostic::error(pointer, "empty URL: nothing can be deployed from it")
                        .expected("file:///absolute/path, http:// or https://"),
                );
            }
            let url = url::Url::parse(&text).ok()?;
            let refused = if url.scheme() == "file" {
                let path = url.to_file_path().ok()?;
                format!("file refused: {}", policy.fetch.local_file(&path).err()?)
            } else {
                format!("URL refused: {}", policy.fetch.check_url(&url).err()?)
            };
            Some(Diagnostic::error(pointer, refused).found(text))
        })
        .collect();
    problems.extend(repo_urls(&value).into_iter().filter_map(|(pointer, text)| {
        let url = url::Url::parse(&text).ok()?;
        let refused = if url.scheme() == "file" {
            let path = url.to_file_path().ok()?;
            format!(
                "repository refused: {}",
                policy.fetch.local_dir(&path).err()?
            )
        } else {
            // Only the scheme differs from an image's URL: the host is checked alike.
            let as_http = url::Url::parse(&format!("http://{}/", url.host_str()?)).ok()?;
            format!("URL refused: {}", policy.fetch.check_url(&as_http).err()?)
        };
        Some(Diagnostic::error(pointer, refused).found(text))
    }));
    let needs = scheduler::needs(&validated.job);
    let own = views(lab);
    let serves = |devices: &[DeviceView]| scheduler::shortfall(&needs, devices).is_none();
    let mut all = own.clone();
    all.extend(others.iter().flatten().cloned());
    let possible =
        serves(&own) || others.iter().any(|theirs| serves(theirs)) || (span && serves(&all));
    if !possible {
        let shortfall = scheduler::shortfall(&needs, &all).unwrap_or_else(|| {
            "no one worker has devices that serve every node at once, and a job runs on \
             the devices of one worker unless the workers share a standalone coordinator \
             (coordinator_url)"
                .to_string()
        });
        problems.push(
            Diagnostic::error(topology_pointer(&validated.job), shortfall)
                .hint("no set of this lab's devices could ever run this job"),
        );
    }
    finish(text, validated, problems)
}

/// The job as validated, or its warnings and `problems` as a report.
fn finish(
    text: &str,
    validated: Validated,
    problems: Vec<Diagnostic>,
) -> Result<Validated, Report> {
    if problems.is_empty() {
        return Ok(validated);
    }
    let mut all = problems;
    all.extend(validated.warnings);
    Err(Report::new(all).with_positions(text))
}

/// Every device of the lab, as if idle: what could ever serve a job. A device whose
/// file has errors (of a known type) counts too, offline: fixing its file brings it
/// back, so a job for it waits rather than being refused.
pub fn views(lab: &Lab) -> Vec<DeviceView> {
    let refused = lab
        .refused_devices
        .iter()
        .filter_map(|(hostname, refused)| {
            Some(DeviceView {
                hostname: hostname.clone(),
                device_type: refused.device_type.clone()?,
                tags: Default::default(),
                state: DeviceState::Offline,
                health: DeviceHealth::Unknown,
                awaiting_check: false,
            })
        });
    lab.devices
        .values()
        .map(|d| {
            DeviceView::as_if_idle(
                d.hostname.clone(),
                d.device_type.name.clone(),
                d.tags.iter().cloned(),
            )
        })
        .chain(refused)
        .collect()
}

/// Where a job says which devices it needs.
fn topology_pointer(job: &job_schemas::Job) -> &'static str {
    match &job.topology {
        Topology::VmGroup(_) => "/vm_group/host/device_type",
        Topology::DeviceGroup { .. } => "/device_group",
        Topology::Single {
            target: Some(_), ..
        } => "/target",
        Topology::Single { .. } => "/device_type",
    }
}

/// `(JSON pointer, URL)` of every repository a job's test shells name (`git-repo`, and
/// `bzr-repo` when it is a URL rather than a Launchpad name).
fn repo_urls(job: &Value) -> Vec<(String, String)> {
    let mut urls = Vec::new();
    let actions = job.get("actions").and_then(Value::as_array);
    for (i, action) in actions.into_iter().flatten().enumerate() {
        let repos = action
            .pointer("/parameters/testdef_repos")
            .and_then(Value::as_array);
        for (j, repo) in repos.into_iter().flatten().enumerate() {
            for key in ["git-repo", "bzr-repo"] {
                if let Some(url) = repo.get(key).and_then(Value::as_str)
                    && !url.starts_with("lp:")
                {
                    urls.push((
                        format!("/actions/{i}/parameters/testdef_repos/{j}/{key}"),
                        url.to_string(),
                    ));
                }
            }
        }
    }
    urls
}

/// `(JSON pointer, URL)` of every image and test-definition URL in a job.
fn job_urls(job: &Value) -> Vec<(String, String)> {
    let mut urls = Vec::new();
    let strings = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let vms = job.pointer("/vm_group/vms").and_then(Value::as_array);
    for (i, vm) in vms.into_iter().flatten().enumerate() {
        if let Some(image) = strings(vm.get("image")) {
            urls.push((format!("/vm_group/vms/{i}/image"), image));
        }
    }
    let callbacks = job.get("callbacks").and_then(Value::as_array);
    for (i, callback) in callbacks.into_iter().flatten().enumerate() {
        if let Some(url) = strings(callback.get("url")) {
            urls.push((format!("/callbacks/{i}/url"), url));
        }
    }
    let actions = job.get("actions").and_then(Value::as_array);
    for (i, action) in actions.into_iter().flatten().enumerate() {
        let command = action.get("command").and_then(Value::as_str).unwrap_or("");
        let params = action.get("parameters");
        for (key, url) in job_schemas::deploy_urls(command, params) {
            urls.push((format!("/actions/{i}/parameters/{key}"), url.to_string()));
        }
        let testdefs = params
            .and_then(|p| p.get("testdef_urls"))
            .and_then(Value::as_array);
        for (j, url) in testdefs.into_iter().flatten().enumerate() {
            if let Some(url) = strings(Some(url)) {
                urls.push((format!("/actions/{i}/parameters/testdef_urls/{j}"), url));
            }
        }
        let repos = params
            .and_then(|p| p.get("testdef_repos"))
            .and_then(Value::as_array);
        for (j, repo) in repos.into_iter().flatten().enumerate() {
            if let Some(url) = strings(repo.get("url")) {
                urls.push((
                    format!("/actions/{i}/parameters/testdef_repos/{j}/url"),
                    url,
                ));
            }
        }
    }
    urls
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests: a panic is a failure report.

    use std::path::PathBuf;

    use super::*;
    use hostctl::fetch::FetchLimits;

    fn job(repos: &[Value]) -> String {
        serde_json::json!({
            "timeout": 60,
            "device_type": "kvm",
            "actions": [{"command": "lava_test_shell", "parameters": {"testdef_repos": repos}}]
        })
        .to_string()
    }

    fn pointers(report: &Report) -> Vec<String> {
        report.errors().map(|d| d.pointer.clone()).collect()
    }

    #[test]
    fn repositories_are_checked_against_the_labs_fetch_policy() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repos");
        std::fs::create_dir_all(root.join("tests.git")).unwrap();
        std::fs::write(root.join("file.yaml"), "x").unwrap();
        let policy = JobPolicy {
            fetch: Arc::new(FetchPolicy::restricted(
                std::slice::from_ref(&root),
                &[],
                Vec::new(),
                FetchLimits::default(),
            )),
            ..JobPolicy::default()
        };
        let lab = Lab::builtin().unwrap();
        let url = |p: PathBuf| format!("file://{}", p.display());
        let fine = job(&[serde_json::json!({"git-repo": url(root.join("tests.git"))})]);
        // The built-in lab has device types but no devices: that error is not ours.
        let repo_errors = |text: &str| match validate_for_run(text, &lab, &policy) {
            Ok(_) => Vec::new(),
            Err(report) => pointers(&report)
                .into_iter()
                .filter(|p| p != "/device_type")
                .collect::<Vec<_>>(),
        };
        assert_eq!(repo_errors(&fine), Vec::<String>::new());
        let bad = job(&[
            // A file, not a repository.
            serde_json::json!({"git-repo": url(root.join("file.yaml"))}),
            // Loopback, which this lab does not allow.
            serde_json::json!({"git-repo": "git://127.0.0.1/tests.git"}),
            // Launchpad names are not URLs to check here.
            serde_json::json!({"bzr-repo": "lp:tests"}),
            serde_json::json!({"url": "http://[::1]/smoke.yaml"}),
        ]);
        let report = validate_for_run(&bad, &lab, &policy).unwrap_err();
        assert_eq!(
            repo_errors(&bad),
            [
                "/actions/0/parameters/testdef_repos/0/git-repo",
                "/actions/0/parameters/testdef_repos/1/git-repo",
                "/actions/0/parameters/testdef_repos/3/url",
            ],
            "{}",
            report.render("job")
        );
        assert!(report.render("job").contains("is not a directory"));
    }

    /// A callback is a request the dispatcher makes for the job: to an address the
    /// lab lets jobs reach, or the job is refused.
    #[test]
    fn callbacks_are_checked_against_the_labs_network_policy() {
        let policy = JobPolicy {
            fetch: Arc::new(FetchPolicy::restricted(
                &[],
                &[],
                Vec::new(),
                FetchLimits::default(),
            )),
            ..JobPolicy::default()
        };
        let lab = Lab::builtin().unwrap();
        let text = serde_json::json!({
            "device_type": "kvm",
            "timeout": 60,
            "callbacks": [
                {"url": "https://ci.example.org/lava"},
                {"url": "http://127.0.0.1:8079/api/v1/jobs", "token": "x"},
                {"url": "http://[fd00::1]/hook", "dataset": "log"}
            ],
            "actions": [{"command": "lava_command_run", "parameters": {"commands": ["true"]}}]
        })
        .to_string();
        let report = validate_for_run(&text, &lab, &policy).unwrap_err();
        let callbacks: Vec<String> = pointers(&report)
            .into_iter()
            .filter(|p| p.starts_with("/callbacks"))
            .collect();
        assert_eq!(
            callbacks,
            ["/callbacks/1/url", "/callbacks/2/url"],
            "{}",
            report.render("job")
        );
    }

    #[test]
    fn a_job_without_a_timeout_gets_the_default_within_the_labs_limit() {
        let lab = Lab::builtin().unwrap();
        let text = serde_json::json!({
            "device_type": "kvm",
            "actions": [{"command": "deploy_linaro_image", "parameters": {
                "image": "https://example.org/disk.img"}}]
        })
        .to_string();
        let open = validate_job(&text, &lab, &JobPolicy::default()).unwrap();
        assert_eq!(open.job.timeout_secs, job_schemas::DEFAULT_JOB_TIMEOUT_SECS);
        let strict = JobPolicy {
            max_job_timeout_secs: Some(600),
            ..JobPolicy::default()
        };
        let limited =
            validate_job(&text, &lab, &strict).unwrap_or_else(|r| panic!("{}", r.render("job")));
        assert_eq!(limited.job.timeout_secs, 600);
        // A timeout the job gives is still refused past the limit.
        let long = text.replacen('{', "{\"timeout\": 7200, ", 1);
        let report = validate_job(&long, &lab, &strict).unwrap_err();
        assert_eq!(pointers(&report), ["/timeout"]);
    }
}
