//! Whole-job validation: reports bounded however many problems a job has, work linear
//! in the job's text, and numbers the typed job cannot hold refused where they are.

use crate::locate::BYTES_SCANNED;
use crate::{
    MAX_DIAGNOSTICS, MAX_VMS_PER_GROUP, Omitted, Report, Severity, Validated, validate_str,
};

#[path = "../tests/support/many_problems.rs"]
mod many_problems;

use many_problems::{
    context, errors_job, unknown_roles_job, vm_group_job, warnings_job, warnings_then_an_error_job,
};

/// Validates `text`, checking the locator went over it at most twice (once to find
/// offsets, once to count lines). One scan per diagnostic, as before issue #13, would be
/// thousands of times the text for the jobs here.
fn validate_linearly(text: &str) -> Result<Validated, Report> {
    BYTES_SCANNED.with(|counter| counter.set(0));
    let outcome = validate_str(text, &context());
    let scanned = BYTES_SCANNED.with(std::cell::Cell::get);
    assert!(
        scanned <= 2 * text.len(),
        "{scanned} bytes scanned for a {} byte job",
        text.len()
    );
    outcome
}

fn refused(text: &str) -> Report {
    match validate_str(text, &context()) {
        Ok(_) => panic!("validated but should not:\n{text}"),
        Err(report) => report,
    }
}

/// `(pointer, message)` of every error, which must each have a position and none of
/// which may be an internal error.
fn errors(report: &Report) -> Vec<(String, String)> {
    for d in report.diagnostics() {
        assert!(
            d.line.is_some() && d.column.is_some(),
            "{d:?} has no position"
        );
        assert!(!d.message.contains("internal error"), "{d:?}");
    }
    report
        .errors()
        .map(|d| (d.pointer.clone(), d.message.clone()))
        .collect()
}

#[test]
fn locating_4000_warnings_goes_over_the_text_at_most_twice() {
    let validated = validate_linearly(&warnings_job(4000)).unwrap();
    assert_eq!(validated.warnings.len(), MAX_DIAGNOSTICS);
    assert_eq!(validated.omitted_warnings, 4000 - MAX_DIAGNOSTICS);
    // The first actions' warnings, in file order, one action a line from line 5.
    for (i, warning) in validated.warnings.iter().enumerate() {
        assert_eq!(warning.pointer, format!("/actions/{i}/parameters/timeout"));
        assert_eq!(warning.line, Some(5 + i), "{warning:?}");
    }
    let rendered = validated.warnings_report().render("job");
    assert!(
        rendered.contains("... and 3,900 more problems (0 errors, 3,900 warnings) not shown"),
        "{rendered}"
    );
}

#[test]
fn locating_4000_errors_goes_over_the_text_at_most_twice() {
    let report = validate_linearly(&errors_job(4000)).unwrap_err();
    assert_eq!(errors(&report).len(), MAX_DIAGNOSTICS);
    assert_eq!(
        report.omitted(),
        Omitted {
            errors: 4000 - MAX_DIAGNOSTICS,
            warnings: 0
        }
    );
    assert_eq!(report.error_count(), 4000);
    assert!(
        report
            .render("job")
            .contains("job: 4,000 errors, 0 warnings")
    );
}

#[test]
fn thousands_of_unknown_roles_among_thousands_of_roles_are_cut_too() {
    let report = validate_linearly(&unknown_roles_job(2000, 2000)).unwrap_err();
    assert_eq!(report.diagnostics().len(), MAX_DIAGNOSTICS);
    // 2000 unknown roles, and the group over the lab's size.
    assert_eq!(report.error_count(), 2001);
    let expected = report
        .diagnostics()
        .iter()
        .find_map(|d| {
            d.expected
                .as_deref()
                .filter(|_| d.message.contains("no role"))
        })
        .unwrap();
    assert!(expected.ends_with("or 1984 more"), "{expected}");
}

#[test]
fn errors_are_kept_before_warnings() {
    let report = refused(&warnings_then_an_error_job(4000));
    let errors = errors(&report);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0, "/actions/4000/parameters/timeout");
    assert_eq!(report.warnings().count(), MAX_DIAGNOSTICS - 1);
    assert_eq!(
        report.omitted(),
        Omitted {
            errors: 0,
            warnings: 4000 - (MAX_DIAGNOSTICS - 1),
        }
    );
    // Kept diagnostics read in file order: the error comes last.
    assert_eq!(
        report.diagnostics().last().map(|d| d.severity),
        Some(Severity::Error)
    );
}

#[test]
fn a_vm_group_has_at_most_250_vms() {
    // 253 VMs (64 each at most, this lab's count limit) and the host: 254 nodes, within
    // the lab's group size of 256, and yet more VMs than the group's network has room for.
    let report = refused(&vm_group_job(&[
        Some("64"),
        Some("64"),
        Some("64"),
        Some("61"),
    ]));
    let errors = errors(&report);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "/vm_group/vms");
    let d = report.errors().next().unwrap();
    assert!(d.message.contains("253 VMs"), "{d:?}");
    assert!(
        d.expected.as_deref().unwrap().contains("at most 250"),
        "{d:?}"
    );
    assert!(d.hint.as_deref().unwrap().contains("/24"), "{d:?}");
    assert_eq!(MAX_VMS_PER_GROUP, 250);

    let exactly = vm_group_job(&[Some("64"), Some("64"), Some("64"), Some("58")]);
    assert!(validate_str(&exactly, &context()).is_ok());
}

#[test]
fn counts_no_integer_type_holds_are_located_errors() {
    for (count, words) in [
        ("1e30", "count 1e30 is out of range"),
        ("2.0", "count must be written as a plain integer"),
        ("1e1", "count must be written as a plain integer"),
        ("18446744073709551616", "is out of range"),
    ] {
        let report = refused(&vm_group_job(&[Some(count), None]));
        let errors = errors(&report);
        assert_eq!(errors.len(), 1, "count {count}: {errors:?}");
        assert_eq!(errors[0].0, "/vm_group/vms/0/count", "count {count}");
        assert!(errors[0].1.contains(words), "count {count}: {errors:?}");
    }
    // What the schema refuses, the schema reports: once, at the count.
    for count in ["-1", "0", "1.5", "-1e30"] {
        let report = refused(&vm_group_job(&[Some(count)]));
        let pointers: Vec<String> = errors(&report).into_iter().map(|(p, _)| p).collect();
        assert_eq!(pointers, ["/vm_group/vms/0/count"], "count {count}");
    }
    let group = r#"{"timeout": 10, "device_group": [
        {"role": "a", "count": 1e30, "device_type": "kvm"},
        {"role": "b", "count": 1, "device_type": "kvm"}],
        "actions": [{"command": "boot_linaro_image"}]}"#;
    let pointers: Vec<String> = errors(&refused(group))
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(pointers, ["/device_group/0/count"]);
}

#[test]
fn timeouts_and_priorities_no_integer_type_holds_are_located_errors() {
    let job = |timeout: &str, action_timeout: &str, priority: &str| {
        format!(
            r#"{{"timeout": {timeout}, "priority": {priority}, "device_type": "kvm",
            "actions": [{{"command": "boot_linaro_image", "parameters": {{"timeout": {action_timeout}}}}}]}}"#
        )
    };
    for (text, pointer) in [
        (job("1e30", "5", "50"), "/timeout"),
        (job("60.0", "5", "50"), "/timeout"),
        (job("18446744073709551615", "5", "50"), "/timeout"),
        (job("18446744073709551616", "5", "50"), "/timeout"),
        (job("31536001", "5", "50"), "/timeout"),
        (job("60", "1e30", "50"), "/actions/0/parameters/timeout"),
        (job("60", "5.0", "50"), "/actions/0/parameters/timeout"),
        (
            job("60", "18446744073709551615", "50"),
            "/actions/0/parameters/timeout",
        ),
        (job("60", "5", "50.0"), "/priority"),
        (job("60", "5", "0e0"), "/priority"),
    ] {
        let report = refused(&text);
        let pointers: Vec<String> = errors(&report).into_iter().map(|(p, _)| p).collect();
        assert_eq!(pointers, [pointer], "{text}");
    }
    assert!(validate_str(&job("31536000", "5", "100"), &context()).is_ok());
}

#[test]
fn a_role_named_like_another_roles_numbered_node_is_refused_at_its_role() {
    let job = |second_role: &str, count: u32| {
        format!(
            r#"{{"timeout": 60, "vm_group": {{"host": {{"device_type": "qemu-host"}},
            "vms": [{{"device_type": "kvm", "role": "client", "count": {count}, "image": "file:///srv/vm.img"}},
                    {{"device_type": "kvm", "role": "{second_role}", "image": "file:///srv/vm.img"}}]}},
            "actions": [{{"command": "boot_linaro_image"}}]}}"#
        )
    };
    let report = refused(&job("client-2", 3));
    let errors = errors(&report);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "/vm_group/vms/1/role");
    assert!(
        errors[0].1.contains("node 2 of role \"client\""),
        "{errors:?}"
    );
    // Ids the dispatcher never makes: past the count, a single node, a leading zero.
    for (role, count) in [
        ("client-4", 3),
        ("client-1", 1),
        ("client-02", 3),
        ("client-0", 3),
    ] {
        let validated = validate_str(&job(role, count), &context())
            .unwrap_or_else(|r| panic!("{role} with count {count}: {r:?}"));
        let nodes: Vec<String> = validated
            .job
            .members()
            .into_iter()
            .map(|m| m.node)
            .collect();
        let unique: std::collections::BTreeSet<&String> = nodes.iter().collect();
        assert_eq!(unique.len(), nodes.len(), "{nodes:?}");
    }
    // The members: host first, then each VM as lava-self names it.
    let validated = validate_str(&job("server", 2), &context()).unwrap();
    let members: Vec<(String, String)> = validated
        .job
        .members()
        .into_iter()
        .map(|m| (m.node, m.role))
        .collect();
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        members,
        pairs(&[
            ("host", "host"),
            ("client-1", "client"),
            ("client-2", "client"),
            ("server", "server")
        ])
    );
}

#[test]
fn testdef_repos_become_typed_sources_with_lava_v1_defaults() {
    use crate::{Command, DEFAULT_TESTDEF, RepoSource, TestDefinitionSource};
    // A tar archive's bytes, with a line break inside the base64 as LAVA v1 allowed.
    let job = r#"{"timeout": 60, "device_type": "kvm", "actions": [
      {"command": "lava_test_shell", "parameters": {"testdef_repos": [
        {"git-repo": "git://example.org/t.git", "revision": "stable", "parameters": {"N": 3}},
        {"git-repo": "https://example.org/t.git", "testdef": "a/b.yaml"},
        {"bzr-repo": "lp:tests"},
        {"tar-repo": "aGVs\nbG8="},
        {"url": "https://example.org/defs/smoke.yaml", "parameters": {"X": true}}
      ]}}]}"#;
    let validated = validate_str(job, &context()).unwrap();
    let Command::LavaTestShell(shell) = &validated.job.actions[0].command else {
        panic!("not a test shell");
    };
    let repos: Vec<_> = shell
        .definitions
        .iter()
        .map(|d| match d {
            TestDefinitionSource::Repository(r) => r,
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(matches!(
        &repos[0].source,
        RepoSource::Git { url, revision: Some(r) } if url.as_str() == "git://example.org/t.git" && r == "stable"
    ));
    assert_eq!(repos[0].testdef, DEFAULT_TESTDEF);
    assert_eq!(repos[0].parameters["N"], "3");
    assert_eq!(repos[1].testdef, "a/b.yaml");
    assert!(
        matches!(&repos[2].source, RepoSource::Bzr { url, revision: None } if url == "lp:tests")
    );
    assert!(matches!(&repos[3].source, RepoSource::Tar { archive } if archive == b"hello"));
    assert!(matches!(&repos[4].source, RepoSource::File { .. }));
    assert_eq!(repos[4].testdef, "smoke.yaml");
    assert_eq!(repos[4].parameters["X"], "true");
}
