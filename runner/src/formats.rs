//! A job's results in the formats CI systems read: JUnit XML (one `testsuite` per node
//! and test definition, for Jenkins and GitLab; attachments as the `[[ATTACHMENT|path]]`
//! lines Jenkins' attachments plugin and GitLab read, paths relative to the job's
//! directory) and TAP 13. A node whose pipeline failed
//! shows as an error in both, so a broken job never looks green.

use std::fmt::Write as _;

use quick_xml::escape::escape;

use super::report::{CaseReport, JobReport, NodeReport, NodeStatus, class_name};
use states::TestResult;

/// The formats results come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultsFormat {
    Json,
    Junit,
    Tap,
}

impl ResultsFormat {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "json" => Some(Self::Json),
            "junit" | "xml" => Some(Self::Junit),
            "tap" => Some(Self::Tap),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Junit => "application/xml",
            Self::Tap => "text/plain; charset=utf-8",
        }
    }

    /// The file name results in this format get in a job's directory.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Json => "results.json",
            Self::Junit => "results.xml",
            Self::Tap => "results.tap",
        }
    }

    pub fn render(self, report: &JobReport) -> String {
        match self {
            Self::Json => serde_json::to_string_pretty(report).unwrap_or_default(),
            Self::Junit => junit(report),
            Self::Tap => tap(report),
        }
    }
}

/// `(suite name, cases)` of one node, in the order the cases were reported.
fn suites(node: &NodeReport) -> Vec<(String, Vec<&CaseReport>)> {
    let mut suites: Vec<(String, Vec<&CaseReport>)> = Vec::new();
    for case in &node.results {
        let name = format!("{}.{}", node.node, case.suite);
        match suites.iter_mut().find(|(n, _)| *n == name) {
            Some((_, cases)) => cases.push(case),
            None => suites.push((name, vec![case])),
        }
    }
    suites
}

/// The definition's name in a suite name `node.definition`.
fn case_suite<'a>(node: &NodeReport, suite: &'a str) -> &'a str {
    suite
        .strip_prefix(node.node.as_str())
        .and_then(|s| s.strip_prefix('.'))
        .unwrap_or(suite)
}

/// `<system-out>` with a `[[ATTACHMENT|path]]` line per file attached to `case` of
/// `definition` (`None`: to the definition's run); empty when there is none.
fn system_out(node: &NodeReport, definition: &str, case: Option<&str>) -> String {
    let lines: Vec<String> = node
        .attachments
        .iter()
        .filter(|a| a.suite == definition && a.case.as_deref() == case)
        .map(|a| format!("[[ATTACHMENT|{}]]", escape(&a.file)))
        .collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!("<system-out>{}</system-out>", lines.join("\n"))
    }
}

fn count(cases: &[&CaseReport], result: TestResult) -> usize {
    cases.iter().filter(|c| c.result == result).count()
}

pub fn junit(report: &JobReport) -> String {
    let mut body = String::new();
    let (mut tests, mut failures, mut errors, mut skipped) = (0, 0, 0, 0);
    for node in &report.nodes {
        for (suite, cases) in suites(node) {
            let (f, e, s) = (
                count(&cases, TestResult::Fail),
                count(&cases, TestResult::Unknown),
                count(&cases, TestResult::Skip),
            );
            tests += cases.len();
            failures += f;
            errors += e;
            skipped += s;
            let _ = writeln!(
                body,
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{f}\" errors=\"{e}\" skipped=\"{s}\">",
                escape(&suite),
                cases.len()
            );
            for case in cases {
                let _ = write!(
                    body,
                    "    <testcase classname=\"{}\" name=\"{}\"",
                    escape(&suite),
                    escape(&case.case)
                );
                let measured = match (&case.measurement, &case.units) {
                    (Some(m), Some(u)) => format!("{m} {u}"),
                    (Some(m), None) => m.to_string(),
                    _ => String::new(),
                };
                let inner = match case.result {
                    TestResult::Pass => String::new(),
                    TestResult::Fail => "<failure message=\"fail\"/>".to_string(),
                    TestResult::Skip => "<skipped/>".to_string(),
                    TestResult::Unknown => "<error message=\"the result is unknown\"/>".to_string(),
                };
                let mut properties = String::new();
                if !measured.is_empty() {
                    let _ = write!(
                        properties,
                        "<property name=\"measurement\" value=\"{}\"/>",
                        escape(&measured)
                    );
                }
                if let Some(reference) = &case.reference {
                    let _ = write!(
                        properties,
                        "<property name=\"reference\" value=\"{}\"/>",
                        escape(reference)
                    );
                }
                if !properties.is_empty() {
                    properties = format!("<properties>{properties}</properties>");
                }
                let definition = case_suite(node, &suite);
                let inner = format!("{inner}{}", system_out(node, definition, Some(&case.case)));
                if inner.is_empty() && properties.is_empty() {
                    body.push_str("/>\n");
                } else {
                    let _ = writeln!(body, ">{properties}{inner}</testcase>");
                }
            }
            let run_files = system_out(node, case_suite(node, &suite), None);
            if !run_files.is_empty() {
                let _ = writeln!(body, "    {run_files}");
            }
            body.push_str("  </testsuite>\n");
        }
        if let NodeStatus::Failed {
            class,
            action,
            message,
        } = &node.status
        {
            tests += 1;
            errors += 1;
            let suite = format!("{}.pipeline", node.node);
            let _ = writeln!(
                body,
                "  <testsuite name=\"{0}\" tests=\"1\" failures=\"0\" errors=\"1\" skipped=\"0\">\n    \
                 <testcase classname=\"{0}\" name=\"{1}\"><error type=\"{2}\" message=\"{3}\"/></testcase>\n  \
                 </testsuite>",
                escape(&suite),
                escape(action.as_str()),
                class_name(*class),
                escape(message.as_str())
            );
        }
    }
    let name = match &report.job_name {
        Some(name) => format!("job {}: {name}", report.job_id),
        None => format!("job {}", report.job_id),
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"{}\" tests=\"{tests}\" \
         failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{:.3}\">\n{body}</testsuites>\n",
        escape(&name),
        report.duration_secs
    )
}

/// A YAML block scalar line for TAP diagnostics (one line; quotes doubled).
fn yaml_text(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''").replace('\n', " "))
}

pub fn tap(report: &JobReport) -> String {
    let mut lines = Vec::new();
    for node in &report.nodes {
        for case in &node.results {
            let name = format!("{}.{}.{}", node.node, case.suite, case.case);
            let mut line = match case.result {
                TestResult::Pass => format!("ok {{}} - {name}"),
                TestResult::Fail => format!("not ok {{}} - {name}"),
                TestResult::Skip => format!("ok {{}} - {name} # SKIP"),
                TestResult::Unknown => format!("not ok {{}} - {name} # TODO result unknown"),
            };
            if let Some(measurement) = case.measurement {
                let units = case.units.as_deref().unwrap_or("");
                line.push_str(&format!(
                    "\n  ---\n  measurement: {measurement}\n  units: {}\n  ...",
                    yaml_text(units)
                ));
            }
            lines.push(line);
        }
        if let NodeStatus::Failed {
            class,
            action,
            message,
        } = &node.status
        {
            lines.push(format!(
                "not ok {{}} - {}.pipeline.{action}\n  ---\n  class: {}\n  message: {}\n  ...",
                node.node,
                class_name(*class),
                yaml_text(message)
            ));
        }
    }
    let mut text = format!("TAP version 13\n1..{}\n", lines.len());
    for (index, line) in lines.iter().enumerate() {
        text.push_str(&line.replacen("{}", &(index + 1).to_string(), 1));
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::AttachmentReport;
    use states::{ErrorClass, Health};

    fn report() -> JobReport {
        let case = |suite: &str, case: &str, result| CaseReport {
            suite: suite.into(),
            case: case.into(),
            result,
            measurement: None,
            units: None,
            reference: None,
        };
        JobReport {
            job_id: 7,
            job_name: Some("a <b> & 'c'".into()),
            health: Health::Incomplete,
            error_class: Some(ErrorClass::Infrastructure),
            error: Some("x".into()),
            duration_secs: 1.5,
            nodes: vec![
                NodeReport {
                    node: "server".into(),
                    role: "server".into(),
                    status: NodeStatus::Done,
                    results: vec![
                        case("smoke", "up", TestResult::Pass),
                        case("smoke", "down", TestResult::Fail),
                        CaseReport {
                            measurement: Some(2.5),
                            units: Some("s".into()),
                            ..case("perf", "boot", TestResult::Skip)
                        },
                        CaseReport {
                            reference: Some("https://bugs.example.org/1?a=1&b=2".into()),
                            ..case("perf", "bug-1", TestResult::Fail)
                        },
                    ],
                    attachments: vec![
                        AttachmentReport {
                            node: "server".into(),
                            suite: "smoke".into(),
                            case: Some("up".into()),
                            name: "dmesg.txt".into(),
                            mimetype: Some("text/plain".into()),
                            size: 10,
                            file: "attachments/1-dmesg.txt".into(),
                        },
                        AttachmentReport {
                            node: "server".into(),
                            suite: "perf".into(),
                            case: None,
                            name: "perf.data".into(),
                            mimetype: None,
                            size: 20,
                            file: "attachments/2-perf.data".into(),
                        },
                    ],
                },
                NodeReport {
                    node: "client".into(),
                    role: "client".into(),
                    status: NodeStatus::Failed {
                        class: ErrorClass::Infrastructure,
                        action: "boot".into(),
                        message: "kernel panic: \"VFS\" <x>".into(),
                    },
                    results: Vec::new(),
                    attachments: Vec::new(),
                },
            ],
            timeline: Vec::new(),
        }
    }

    #[test]
    fn junit_has_a_suite_per_node_and_definition_and_counts_right() {
        let xml = junit(&report());
        assert!(xml.contains("<testsuites name=\"job 7: a &lt;b&gt; &amp; &apos;c&apos;\" tests=\"5\" failures=\"2\" errors=\"1\" skipped=\"1\""), "{xml}");
        assert!(
            xml.contains("<testsuite name=\"server.smoke\" tests=\"2\" failures=\"1\""),
            "{xml}"
        );
        assert!(
            xml.contains("name=\"down\"><failure message=\"fail\"/></testcase>"),
            "{xml}"
        );
        assert!(
            xml.contains("<property name=\"measurement\" value=\"2.5 s\"/>"),
            "{xml}"
        );
        assert!(xml.contains("<error type=\"infrastructure\" message=\"kernel panic: &quot;VFS&quot; &lt;x&gt;\"/>"), "{xml}");
        // A case's attachment in its system-out, the run's in its suite's; a reference
        // as a property.
        assert!(
            xml.contains("name=\"up\"><system-out>[[ATTACHMENT|attachments/1-dmesg.txt]]</system-out></testcase>"),
            "{xml}"
        );
        assert!(
            xml.contains("    <system-out>[[ATTACHMENT|attachments/2-perf.data]]</system-out>\n  </testsuite>"),
            "{xml}"
        );
        assert!(
            xml.contains(
                "<property name=\"reference\" value=\"https://bugs.example.org/1?a=1&amp;b=2\"/>"
            ),
            "{xml}"
        );
    }

    #[test]
    fn tap_numbers_every_case_and_the_failed_pipeline() {
        let text = tap(&report());
        assert!(text.starts_with("TAP version 13\n1..5\n"), "{text}");
        assert!(text.contains("ok 1 - server.smoke.up\n"), "{text}");
        assert!(text.contains("not ok 2 - server.smoke.down\n"), "{text}");
        assert!(
            text.contains(
                "ok 3 - server.perf.boot # SKIP\n  ---\n  measurement: 2.5\n  units: 's'\n  ...\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("not ok 5 - client.pipeline.boot\n  ---\n  class: infrastructure\n"),
            "{text}"
        );
    }
}
