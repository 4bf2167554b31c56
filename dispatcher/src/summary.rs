//! A finished job as the terminal shows it: one line per test case, one per node that
//! failed, then a last line with the counts; and the exit status that means the same.
//! `run`, `submit --follow`, `wait` and `results --format text` all print this.

use std::fmt::Write as _;

use console::Style;
use runner::report::{JobReport, NodeStatus, class_name};
use states::{Health, TestResult};

use crate::exit;

/// Colours, or none (a pipe, a file, `NO_COLOR`).
#[derive(Clone, Copy)]
pub struct Paint {
    pub colour: bool,
}

impl Paint {
    /// Colour when stdout is a terminal and `NO_COLOR` is unset.
    pub fn for_stdout() -> Self {
        Self {
            colour: console::colors_enabled() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    /// Colour when stderr is a terminal and `NO_COLOR` is unset.
    pub fn for_stderr() -> Self {
        Self {
            colour: console::colors_enabled_stderr() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    pub fn apply(self, style: &Style, text: &str) -> String {
        if self.colour {
            style.clone().force_styling(true).apply_to(text).to_string()
        } else {
            text.to_string()
        }
    }

    pub fn good(self, text: &str) -> String {
        self.apply(&Style::new().green().bold(), text)
    }

    pub fn bad(self, text: &str) -> String {
        self.apply(&Style::new().red().bold(), text)
    }

    pub fn dim(self, text: &str) -> String {
        self.apply(&Style::new().dim(), text)
    }

    pub fn warn(self, text: &str) -> String {
        self.apply(&Style::new().yellow().bold(), text)
    }
}

/// The counts of a job's test cases.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub unknown: usize,
}

impl Counts {
    pub fn of(report: &JobReport) -> Self {
        let mut counts = Self::default();
        for (_, case) in report.cases() {
            match case.result {
                TestResult::Pass => counts.passed += 1,
                TestResult::Fail => counts.failed += 1,
                TestResult::Skip => counts.skipped += 1,
                TestResult::Unknown => counts.unknown += 1,
            }
        }
        counts
    }
}

/// The summary (ends with a newline).
pub fn render(report: &JobReport, paint: Paint) -> String {
    let mut text = String::new();
    for (node, case) in report.cases() {
        let result = match case.result {
            TestResult::Pass => paint.good("PASS"),
            TestResult::Fail => paint.bad("FAIL"),
            TestResult::Skip => paint.warn("SKIP"),
            TestResult::Unknown => paint.warn("UNKNOWN"),
        };
        let measured = match (&case.measurement, &case.units) {
            (Some(m), Some(u)) => format!(" ({m} {u})"),
            (Some(m), None) => format!(" ({m})"),
            _ => String::new(),
        };
        let _ = writeln!(
            text,
            "{}.{}.{} -- {result}{measured}",
            node.node, case.suite, case.case
        );
    }
    for node in &report.nodes {
        if let NodeStatus::Failed {
            class,
            action,
            message,
        } = &node.status
        {
            let _ = writeln!(
                text,
                "{} ({}): {} [{}]: {message}",
                node.node,
                node.role,
                paint.bad(&format!("{action} failed")),
                class_name(*class)
            );
        }
    }
    text.push_str(&last_line(report, paint));
    text.push('\n');
    text
}

/// `job 7: complete in 41.2 s: 12 passed, 1 failed, 2 skipped (3 nodes)`, coloured by
/// what it means: green only when the job completed and nothing failed.
pub fn last_line(report: &JobReport, paint: Paint) -> String {
    let counts = Counts::of(report);
    let health = match report.health {
        Health::Complete => "complete",
        Health::Incomplete => "incomplete",
        Health::Canceled => "canceled",
    };
    let mut counted = format!("{} passed, {} failed", counts.passed, counts.failed);
    if counts.skipped > 0 {
        let _ = write!(counted, ", {} skipped", counts.skipped);
    }
    if counts.unknown > 0 {
        let _ = write!(counted, ", {} unknown", counts.unknown);
    }
    let nodes = report.nodes.len();
    let head = format!(
        "job {}: {health} in {:.1} s: {counted} ({nodes} node{})",
        report.job_id,
        report.duration_secs,
        if nodes == 1 { "" } else { "s" }
    );
    let mut line = match (report.health, counts.failed) {
        (Health::Complete, 0) => paint.good(&head),
        (Health::Complete, _) => paint.warn(&head),
        _ => paint.bad(&head),
    };
    if let (Some(class), Some(error)) = (report.error_class, &report.error) {
        let _ = write!(line, "\n  [{}] {error}", class_name(class));
    }
    line
}

/// The exit status a finished job's report means: 0 complete with no failed case, 1 a
/// case failed, 3 incomplete or canceled.
pub fn exit_status(report: &JobReport) -> u8 {
    match (report.health, Counts::of(report).failed) {
        (Health::Complete, 0) => exit::OK,
        (Health::Complete, _) => exit::PROBLEMS,
        (Health::Incomplete | Health::Canceled, _) => exit::INCOMPLETE,
    }
}

#[cfg(test)]
mod tests {
    use runner::report::{CaseReport, NodeReport};
    use states::ErrorClass;

    use super::*;

    fn report(health: Health, results: &[TestResult], failed_node: bool) -> JobReport {
        let cases = results
            .iter()
            .enumerate()
            .map(|(i, result)| CaseReport {
                suite: "smoke".into(),
                case: format!("case-{i}"),
                result: *result,
                measurement: None,
                units: None,
                reference: None,
            })
            .collect();
        let status = if failed_node {
            NodeStatus::Failed {
                class: ErrorClass::Infrastructure,
                action: "boot".into(),
                message: "no prompt".into(),
            }
        } else {
            NodeStatus::Done
        };
        JobReport {
            job_id: 7,
            job_name: None,
            health,
            error_class: failed_node.then_some(ErrorClass::Infrastructure),
            error: failed_node.then(|| "server (server): boot: no prompt".into()),
            duration_secs: 41.25,
            nodes: vec![NodeReport {
                node: "server".into(),
                role: "server".into(),
                status,
                results: cases,
                attachments: Vec::new(),
            }],
            timeline: Vec::new(),
        }
    }

    #[test]
    fn the_last_line_counts_every_kind_of_result() {
        use TestResult::*;
        let ran = report(Health::Complete, &[Pass, Pass, Fail, Skip], false);
        let text = render(&ran, Paint { colour: false });
        assert!(text.contains("server.smoke.case-2 -- FAIL\n"), "{text}");
        assert!(
            text.ends_with("job 7: complete in 41.2 s: 2 passed, 1 failed, 1 skipped (1 node)\n"),
            "{text}"
        );
        assert_eq!(exit_status(&ran), exit::PROBLEMS);
    }

    #[test]
    fn an_incomplete_job_names_its_failed_node_and_exits_3() {
        let ran = report(Health::Incomplete, &[], true);
        let text = render(&ran, Paint { colour: false });
        assert!(
            text.contains("server (server): boot failed [infrastructure]: no prompt"),
            "{text}"
        );
        assert!(
            text.ends_with("  [infrastructure] server (server): boot: no prompt\n"),
            "{text}"
        );
        assert_eq!(exit_status(&ran), exit::INCOMPLETE);
        assert_eq!(
            exit_status(&report(Health::Complete, &[TestResult::Pass], false)),
            exit::OK
        );
    }

    #[test]
    fn colour_marks_results_and_stays_out_of_pipes() {
        let ran = report(Health::Complete, &[TestResult::Fail], false);
        assert!(render(&ran, Paint { colour: true }).contains("\x1b["));
        assert!(!render(&ran, Paint { colour: false }).contains('\x1b'));
    }
}
