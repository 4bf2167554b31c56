//! Diagnostics: one problem in a job, and the report that gathers all of them.

use std::fmt;

use serde::Serialize;

use crate::{locate, pointer};

/// How bad a problem is. Errors make a job invalid; warnings are reported and the job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem, located by JSON pointer (and line/column when the source text is known).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Diagnostic {
    pub severity: Severity,
    /// RFC 6901 JSON pointer to the offending value; `""` is the whole document.
    pub pointer: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// 1-based line in the source text, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// 1-based column in the source text, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

impl Diagnostic {
    pub fn error(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, pointer, message)
    }

    pub fn warning(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, pointer, message)
    }

    fn new(severity: Severity, pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity,
            pointer: pointer.into(),
            message: message.into(),
            expected: None,
            found: None,
            hint: None,
            line: None,
            column: None,
        }
    }

    pub(crate) fn parse_error(err: &serde_json::Error) -> Self {
        let mut diagnostic = Self::error("", format!("the job is not valid JSON: {err}"));
        diagnostic.line = Some(err.line());
        diagnostic.column = Some(err.column());
        diagnostic.hint = Some(match err.classify() {
            serde_json::error::Category::Eof => {
                "the text ends early: look for an unclosed '{', '[' or string".to_string()
            }
            _ => "look for a missing or extra ',' or a key without quotes just before this point"
                .to_string(),
        });
        diagnostic
    }

    pub fn expected(mut self, expected: impl Into<String>) -> Self {
        self.expected = Some(expected.into());
        self
    }

    pub fn found(mut self, found: impl Into<String>) -> Self {
        self.found = Some(found.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn maybe_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Renders the diagnostic like a compiler message, naming `source` (a file name).
    pub fn render(&self, source: &str) -> String {
        let mut out = String::new();
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        out.push_str(&format!("{level}: {}\n", self.message));
        // A problem of the whole document (a syntax error) has no key to name.
        let at = if self.pointer.is_empty() {
            String::new()
        } else {
            format!(" at {}", self.pointer)
        };
        match (self.line, self.column) {
            (Some(line), Some(column)) => {
                out.push_str(&format!("  --> {source}:{line}:{column}{at}\n"))
            }
            _ => out.push_str(&format!("  --> {source}{at}\n")),
        }
        for (label, value) in [
            ("expected", &self.expected),
            ("found", &self.found),
            ("hint", &self.hint),
        ] {
            if let Some(value) = value {
                out.push_str(&format!("   = {label}: {value}\n"));
            }
        }
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.render("job").trim_end())
    }
}

/// The most diagnostics a [`Report`] keeps. A job with thousands of mistakes (or an
/// adversarial one) gets the first of them and a count of the rest: locating, rendering
/// and sending more would cost the server time and tell the writer nothing new.
pub const MAX_DIAGNOSTICS: usize = 100;

/// How many problems a [`Report`] found but left out, by severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Omitted {
    pub errors: usize,
    pub warnings: usize,
}

impl Omitted {
    pub fn total(&self) -> usize {
        self.errors + self.warnings
    }
}

/// Every diagnostic found in one job (at most [`MAX_DIAGNOSTICS`] of them, and how many
/// more there were). Invalid when it holds at least one error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}", self.summary())]
pub struct Report {
    diagnostics: Vec<Diagnostic>,
    omitted: Omitted,
}

impl Report {
    /// A report of `diagnostics`, keeping at most [`MAX_DIAGNOSTICS`]: errors before
    /// warnings, and within each the first in pointer order.
    pub fn new(diagnostics: Vec<Diagnostic>) -> Self {
        Self::keeping(diagnostics, MAX_DIAGNOSTICS)
    }

    /// As [`Report::new`], keeping at most `max` diagnostics.
    pub fn keeping(mut diagnostics: Vec<Diagnostic>, max: usize) -> Self {
        let mut omitted = Omitted::default();
        if diagnostics.len() > max {
            diagnostics.sort_by_cached_key(|d| (d.severity, pointer::sort_key(&d.pointer)));
            for left_out in diagnostics.drain(max..) {
                match left_out.severity {
                    Severity::Error => omitted.errors += 1,
                    Severity::Warning => omitted.warnings += 1,
                }
            }
        }
        Self {
            diagnostics,
            omitted,
        }
    }

    /// A report that already left out `omitted` problems (e.g. a job's warnings again).
    pub(crate) fn with_omitted(diagnostics: Vec<Diagnostic>, omitted: Omitted) -> Self {
        Self {
            diagnostics,
            omitted,
        }
    }

    /// The diagnostics kept (see [`Report::omitted`] for those left out).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    pub fn into_diagnostics(self) -> Vec<Diagnostic> {
        self.diagnostics
    }

    /// How many problems were found beyond the diagnostics kept.
    pub fn omitted(&self) -> Omitted {
        self.omitted
    }

    /// The errors kept.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }

    /// The warnings kept.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| !d.is_error())
    }

    /// Every error found, the ones left out included.
    pub fn error_count(&self) -> usize {
        self.errors().count() + self.omitted.errors
    }

    /// Every warning found, the ones left out included.
    pub fn warning_count(&self) -> usize {
        self.warnings().count() + self.omitted.warnings
    }

    /// One line: "3 errors, 1 warning" (every problem found, shown or not).
    pub fn summary(&self) -> String {
        counts(self.error_count(), self.warning_count())
    }

    /// Fills in line and column from the source text and orders diagnostics as they
    /// appear in it, so the report reads top to bottom like the file. One pass over the
    /// text for all of them.
    pub fn with_positions(mut self, text: &str) -> Self {
        let unplaced: Vec<usize> = (0..self.diagnostics.len())
            .filter(|&i| self.diagnostics[i].line.is_none())
            .collect();
        let pointers: Vec<&str> = unplaced
            .iter()
            .map(|&i| self.diagnostics[i].pointer.as_str())
            .collect();
        let positions = locate::locate_all(text, &pointers);
        for (i, position) in unplaced.into_iter().zip(positions) {
            if let Some(position) = position {
                self.diagnostics[i].line = Some(position.line);
                self.diagnostics[i].column = Some(position.column);
            }
        }
        self.diagnostics
            .sort_by_cached_key(|d| (d.line, d.column, pointer::sort_key(&d.pointer)));
        self
    }

    /// Renders every diagnostic, how many were left out and the summary line, naming
    /// `source` (a file name).
    pub fn render(&self, source: &str) -> String {
        let mut out = String::new();
        for diagnostic in &self.diagnostics {
            out.push_str(&diagnostic.render(source));
            out.push('\n');
        }
        if self.omitted.total() > 0 {
            out.push_str(&format!(
                "... and {} more problem{} ({}) not shown\n\n",
                thousands(self.omitted.total()),
                plural(self.omitted.total()),
                counts(self.omitted.errors, self.omitted.warnings)
            ));
        }
        out.push_str(&format!("{source}: {}\n", self.summary()));
        out
    }
}

/// "3 errors, 1 warning", with thousands separated: "3,800 errors, 100 warnings".
fn counts(errors: usize, warnings: usize) -> String {
    format!(
        "{} error{}, {} warning{}",
        thousands(errors),
        plural(errors),
        thousands(warnings),
        plural(warnings)
    )
}

/// `3900` as "3,900".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diagnostics(errors: usize, warnings: usize) -> Vec<Diagnostic> {
        (0..warnings)
            .map(|i| Diagnostic::warning(format!("/actions/{i}"), "w"))
            .chain((0..errors).map(|i| Diagnostic::error(format!("/actions/{i}/x"), "e")))
            .collect()
    }

    #[test]
    fn keeps_at_most_the_cap_and_counts_the_rest() {
        let report = Report::new(diagnostics(150, 3_850));
        assert_eq!(report.diagnostics().len(), MAX_DIAGNOSTICS);
        assert_eq!(
            report.omitted(),
            Omitted {
                errors: 50,
                warnings: 3_850
            }
        );
        assert_eq!(report.error_count(), 150);
        assert_eq!(report.warning_count(), 3_850);
        assert_eq!(report.summary(), "150 errors, 3,850 warnings");
    }

    #[test]
    fn keeps_errors_before_warnings_and_the_first_in_pointer_order() {
        let report = Report::keeping(diagnostics(3, 20), 5);
        let kept: Vec<(Severity, &str)> = report
            .diagnostics()
            .iter()
            .map(|d| (d.severity, d.pointer.as_str()))
            .collect();
        assert_eq!(
            kept,
            [
                (Severity::Error, "/actions/0/x"),
                (Severity::Error, "/actions/1/x"),
                (Severity::Error, "/actions/2/x"),
                (Severity::Warning, "/actions/0"),
                (Severity::Warning, "/actions/1"),
            ]
        );
        assert_eq!(report.omitted().warnings, 18);
    }

    #[test]
    fn a_small_report_is_kept_whole_and_in_order() {
        let all = diagnostics(2, 2);
        let report = Report::new(all.clone());
        assert_eq!(report.diagnostics(), all.as_slice());
        assert_eq!(report.omitted(), Omitted::default());
        assert!(!report.render("job").contains("not shown"));
    }

    #[test]
    fn the_rendering_says_how_many_were_left_out() {
        let text = Report::new(diagnostics(3_900, 100)).render("job.json");
        assert!(
            text.contains("... and 3,900 more problems (3,800 errors, 100 warnings) not shown"),
            "{text}"
        );
        assert!(
            text.ends_with("job.json: 3,900 errors, 100 warnings\n"),
            "{text}"
        );
    }

    #[test]
    fn the_serialized_report_counts_the_left_out() {
        let value = serde_json::to_value(Report::keeping(diagnostics(1, 3), 2)).unwrap();
        assert_eq!(
            value["omitted"],
            serde_json::json!({"errors": 0, "warnings": 2})
        );
        assert_eq!(value["diagnostics"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn separates_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(3_900), "3,900");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
