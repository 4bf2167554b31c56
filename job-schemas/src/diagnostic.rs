//! Diagnostics: one problem in a job, and the report that gathers all of them.

use std::fmt;

use serde::Serialize;

use crate::{locate, pointer};

/// How bad a problem is. Errors make a job invalid; warnings are reported and the job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem, located by JSON pointer (and line/column when the source text is known).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
        let shown_pointer = if self.pointer.is_empty() {
            "(whole job)"
        } else {
            &self.pointer
        };
        match (self.line, self.column) {
            (Some(line), Some(column)) => out.push_str(&format!(
                "  --> {source}:{line}:{column} at {shown_pointer}\n"
            )),
            _ => out.push_str(&format!("  --> {source} at {shown_pointer}\n")),
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

/// Every diagnostic found in one job. Invalid when it holds at least one error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}", self.summary())]
pub struct Report {
    diagnostics: Vec<Diagnostic>,
}

impl Report {
    pub fn new(diagnostics: Vec<Diagnostic>) -> Self {
        Self { diagnostics }
    }

    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    pub fn into_diagnostics(self) -> Vec<Diagnostic> {
        self.diagnostics
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| !d.is_error())
    }

    pub fn error_count(&self) -> usize {
        self.errors().count()
    }

    /// One line: "3 errors, 1 warning".
    pub fn summary(&self) -> String {
        let errors = self.error_count();
        let warnings = self.diagnostics.len() - errors;
        format!(
            "{errors} error{}, {warnings} warning{}",
            plural(errors),
            plural(warnings)
        )
    }

    /// Fills in line and column from the source text and orders diagnostics as they
    /// appear in it, so the report reads top to bottom like the file.
    pub fn with_positions(mut self, text: &str) -> Self {
        for diagnostic in &mut self.diagnostics {
            if diagnostic.line.is_none()
                && let Some(position) = locate::locate(text, &diagnostic.pointer)
            {
                diagnostic.line = Some(position.line);
                diagnostic.column = Some(position.column);
            }
        }
        self.diagnostics.sort_by(|a, b| {
            (a.line, a.column)
                .cmp(&(b.line, b.column))
                .then_with(|| pointer::compare(&a.pointer, &b.pointer))
        });
        self
    }

    /// Renders every diagnostic and the summary line, naming `source` (a file name).
    pub fn render(&self, source: &str) -> String {
        let mut out = String::new();
        for diagnostic in &self.diagnostics {
            out.push_str(&diagnostic.render(source));
            out.push('\n');
        }
        out.push_str(&format!("{source}: {}\n", self.summary()));
        out
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
