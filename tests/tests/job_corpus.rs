//! The job corpus in `tests/jobs/`: every valid job validates, every invalid job fails
//! with exactly the JSON pointers its `.expect` file lists.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hostctl::fetch::{FetchLimits, FetchPolicy};
use job_schemas::Limits;
use lab::Lab;
use runner::validation::{self, JobPolicy};
use system_tests::jobs_dir;

/// The policy the corpus is written for: images under /srv/lava, and /path/to for the
/// seed's example job.
fn policy() -> JobPolicy {
    JobPolicy {
        limits: Limits::default(),
        fetch: std::sync::Arc::new(FetchPolicy::restricted(
            &[PathBuf::from("/srv/lava"), PathBuf::from("/path/to")],
            &[],
            Vec::new(),
            FetchLimits::default(),
        )),
        max_job_timeout_secs: None,
    }
}

fn files(dir: &str, extension: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(jobs_dir().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    found.sort();
    found
}

fn expected_pointers(expect_file: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(expect_file)
        .unwrap_or_else(|e| panic!("{}: {e}", expect_file.display()))
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| serde_json::from_str::<String>(l).unwrap())
        .collect()
}

#[test]
fn every_valid_job_validates() {
    let lab = Lab::builtin().unwrap();
    let jobs = files("valid", "json");
    assert!(jobs.len() >= 15, "only {} valid jobs", jobs.len());
    for path in jobs {
        let text = std::fs::read_to_string(&path).unwrap();
        if let Err(report) = validation::validate_job(&text, &lab, &policy()) {
            panic!("{}", report.render(&path.display().to_string()));
        }
    }
}

#[test]
fn every_invalid_job_reports_exactly_its_expected_pointers() {
    let lab = Lab::builtin().unwrap();
    let jobs = files("invalid", "json");
    assert!(jobs.len() >= 30, "only {} invalid jobs", jobs.len());
    for path in jobs {
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = expected_pointers(&path.with_extension("expect"));
        let report = match validation::validate_job(&text, &lab, &policy()) {
            Ok(_) => panic!("{} validated but should not", path.display()),
            Err(report) => report,
        };
        let got: BTreeSet<String> = report.errors().map(|d| d.pointer.clone()).collect();
        assert_eq!(
            got,
            expect,
            "{}",
            report.render(&path.display().to_string())
        );
        for d in report.errors() {
            assert!(!d.message.is_empty());
            assert!(
                d.line.is_some() && d.column.is_some(),
                "{d:?} has no position"
            );
        }
    }
}

#[test]
fn every_expect_file_has_its_job() {
    for expect in files("invalid", "expect") {
        assert!(
            expect.with_extension("json").is_file(),
            "{} has no job",
            expect.display()
        );
    }
}

#[test]
fn a_parse_error_names_line_and_column() {
    let path = jobs_dir().join("invalid/malformed-trailing-comma.json");
    let text = std::fs::read_to_string(path).unwrap();
    let report = validation::validate_job(&text, &Lab::builtin().unwrap(), &policy()).unwrap_err();
    let d = &report.diagnostics()[0];
    assert_eq!((d.line, d.column), (Some(5), Some(1)), "{d:?}");
    assert!(d.message.contains("not valid JSON"));
}

#[test]
fn hints_name_the_likely_intended_word() {
    let lab = Lab::builtin().unwrap();
    let text = std::fs::read_to_string(jobs_dir().join("invalid/three-mistakes.json")).unwrap();
    let report = validation::validate_job(&text, &lab, &policy()).unwrap_err();
    let hints: Vec<&str> = report.errors().filter_map(|d| d.hint.as_deref()).collect();
    assert_eq!(
        hints,
        [
            "did you mean \"count\"?",
            "did you mean \"lava_test_shell\"?",
            "did you mean \"client\"?"
        ],
        "in the order they appear in the file"
    );
}

#[test]
fn the_seed_job_routes_actions_to_roles_like_lava() {
    let text = std::fs::read_to_string(jobs_dir().join("valid/seed-vm-groups.json")).unwrap();
    let job = validation::validate_job(&text, &Lab::builtin().unwrap(), &policy())
        .unwrap()
        .job;
    let roles: Vec<String> = job.roles().into_iter().map(|r| r.name).collect();
    assert_eq!(roles, ["host", "server", "client"]);
    // Each role gets its own deploy plus the role-less test shell.
    for role in ["host", "server", "client"] {
        assert_eq!(job.actions_for(role).count(), 2, "{role}");
    }
}

#[test]
fn a_target_is_checked_against_the_lab_before_running() {
    let lab = Lab::builtin().unwrap();
    let job = |target: &str| {
        format!(
            r#"{{"timeout": 60, "target": "{target}", "actions": [{{"command": "boot_linaro_image"}},
            {{"command": "lava_command_run", "parameters": {{"commands": ["true"]}}}}]}}"#
        )
    };
    // The format is fine either way; only the lab knows which devices exist.
    assert!(validation::validate_job(&job("panda01"), &lab, &policy()).is_ok());
    let report = validation::validate_for_run(&job("panda01"), &lab, &policy()).unwrap_err();
    let errors: Vec<(&str, &str)> = report
        .errors()
        .map(|d| (d.pointer.as_str(), d.message.as_str()))
        .collect();
    assert_eq!(
        errors,
        [(
            "/target",
            "the job needs 1 device(s) of any device type named \"panda01\"; the lab has 0"
        )]
    );
}
