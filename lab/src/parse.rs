//! Reading one lab file into its typed shape, finding every problem in one run.
//!
//! serde stops at the first problem of a file. Lab admins fix files in rounds of one
//! mistake each that way, so a file is read here as a spanned TOML tree first (every
//! syntax error found, with recovery), then deserialized again and again: each time
//! serde names a problem, the key it is at is taken out of the tree and the rest read
//! again, until the file deserializes or what is missing cannot be left out. Every
//! problem is a diagnostic with its key path, line and column.

use std::ops::Range;

use job_schemas::Diagnostic;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The most problems read from one file: past them, a file is not worth reading on.
const MAX_ROUNDS: usize = 64;

/// A file read as far as it could be.
pub(crate) struct Parsed<T> {
    /// The typed file, without the keys that had problems; `None` when it could not
    /// be read at all (a syntax error, a required key missing).
    pub value: Option<T>,
    /// Every problem found.
    pub problems: Vec<Diagnostic>,
    /// The keys taken out because of a problem.
    pub removed: Removed,
}

/// The key paths taken out of a file for their problems: later checks say nothing
/// more about them (their problem is already told).
#[derive(Debug, Default)]
pub(crate) struct Removed(Vec<String>);

impl Removed {
    /// Whether `pointer` is, or is inside, a key taken out for its problem.
    pub fn covers(&self, pointer: &str) -> bool {
        self.0
            .iter()
            .any(|removed| pointer == removed || pointer.starts_with(&format!("{removed}/")))
    }
}

/// Reads `text` as a `T`, with every problem found.
pub(crate) fn parse<T: DeserializeOwned>(text: &str) -> Parsed<T> {
    let (mut tree, syntax) = DeTable::parse_recoverable(text);
    let mut parsed = Parsed {
        value: None,
        problems: syntax
            .iter()
            .map(|err| at_span(text, Diagnostic::error("", err.message()), err.span()))
            .collect(),
        removed: Removed::default(),
    };
    if !parsed.problems.is_empty() {
        // What the parser recovered is a guess: reading it would report guesses.
        return parsed;
    }
    tree.get_mut().make_owned();
    for _ in 0..MAX_ROUNDS {
        let err = match T::deserialize(toml::de::Deserializer::from(tree.clone())) {
            Ok(value) => {
                parsed.value = Some(value);
                return parsed;
            }
            Err(err) => err,
        };
        let message = err.message().to_string();
        let span = err.span();
        if let Some(field) = missing_field(&message) {
            // Reported at the end of the table that lacks it.
            let table = span
                .as_ref()
                .and_then(|s| path_of_table(tree.get_ref(), s, ""))
                .unwrap_or_default();
            let pointer = format!("{table}/{field}");
            // A misspelling of it was reported, with it as the hint: said already.
            let hinted = parsed.problems.iter().any(|d| {
                d.pointer.rsplit_once('/').map(|(parent, _)| parent) == Some(table.as_str())
                    && d.hint
                        .as_deref()
                        .is_some_and(|h| h.contains(&format!("\"{field}\"")))
            });
            if !parsed.removed.covers(&pointer) && !hinted {
                let mut d = Diagnostic::error(pointer, format!("missing key \"{field}\""));
                d = at_span(text, d, span.clone());
                parsed.problems.push(d);
            }
            if table.is_empty() || !remove(tree.get_mut(), &table) {
                return parsed;
            }
            parsed.removed.0.push(table);
            continue;
        }
        let Some(pointer) = span.as_ref().and_then(|s| path_at(tree.get_ref(), s, "")) else {
            parsed
                .problems
                .push(at_span(text, Diagnostic::error("", message), span));
            return parsed;
        };
        parsed.problems.push(at_span(
            text,
            diagnostic_of(&pointer, &message),
            span.clone(),
        ));
        if !remove(tree.get_mut(), &pointer) {
            return parsed;
        }
        parsed.removed.0.push(pointer);
    }
    parsed
}

/// serde's "missing field `x`": `x`.
fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")?
        .split_once('`')
        .map(|(field, _)| field)
}

/// The diagnostic of serde's `message` about the key at `pointer`, with a hint for an
/// unknown key that is close to a known one.
fn diagnostic_of(pointer: &str, message: &str) -> Diagnostic {
    // serde's wording: "unknown field `x`, expected one of `a`, `b`"
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((field, expected)) = rest.split_once('`')
    {
        let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        return Diagnostic::error(pointer, format!("unknown key \"{field}\""))
            .expected(format!(
                "one of {}",
                job_schemas::one_of(known.iter().copied())
            ))
            .maybe_hint(job_schemas::did_you_mean(field, known.iter().copied()));
    }
    Diagnostic::error(pointer, without_value(message))
}

/// serde's "invalid type: string \"VALUE\", expected X" without the value: lab files
/// hold commands and keys, and a daemon shows a refused file's errors to anyone who
/// may list its devices. The line and column say where the value is.
fn without_value(message: &str) -> String {
    for kind in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(kind)
            && let Some(rest) = rest.strip_prefix("string \"")
            && let Some((_, expected)) = rest.rsplit_once("\", expected ")
        {
            return format!("{kind}a string, expected {expected}");
        }
    }
    message.to_string()
}

/// `d` with the line and column where `span` starts in `text`.
pub(crate) fn at_span(text: &str, mut d: Diagnostic, span: Option<Range<usize>>) -> Diagnostic {
    if let Some(span) = span {
        let before = &text[..span.start.min(text.len())];
        d.line = Some(before.matches('\n').count() + 1);
        d.column = Some(before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1);
    }
    d
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// The key path of the deepest key whose key or value holds `span` (an array's
/// element is its array's key: an array is taken out whole). Tables are searched
/// whatever their own span: a `[table]`'s span is its header, not its keys.
fn path_at(table: &DeTable<'_>, span: &Range<usize>, prefix: &str) -> Option<String> {
    for (key, value) in table.iter() {
        let path = format!("{prefix}/{}", key.get_ref());
        if let DeValue::Table(inner) = value.get_ref()
            && let Some(deeper) = path_at(inner, span, &path)
        {
            return Some(deeper);
        }
        if contains(&key.span(), span) || contains(&value.span(), span) {
            return Some(path);
        }
    }
    None
}

/// The key path of the table whose span is `span` (serde points a missing field at
/// the table that lacks it), at any depth.
fn table_at(table: &DeTable<'_>, span: &Range<usize>, prefix: &str) -> Option<String> {
    for (key, value) in table.iter() {
        if let DeValue::Table(inner) = value.get_ref() {
            let path = format!("{prefix}/{}", key.get_ref());
            if value.span() == *span {
                return Some(path);
            }
            if let Some(deeper) = table_at(inner, span, &path) {
                return Some(deeper);
            }
        }
    }
    None
}

/// [`table_at`], or the document ("") when no table has that span.
fn path_of_table(table: &DeTable<'_>, span: &Range<usize>, prefix: &str) -> Option<String> {
    Some(table_at(table, span, prefix).unwrap_or_else(|| prefix.to_string()))
}

/// Takes the key at `pointer` out of `table`; whether there was one.
fn remove(table: &mut DeTable<'_>, pointer: &str) -> bool {
    let mut keys = pointer.trim_start_matches('/').split('/');
    let Some(first) = keys.next() else {
        return false;
    };
    let rest: Vec<&str> = keys.collect();
    if rest.is_empty() {
        return table.remove(first).is_some();
    }
    match table.get_mut(first).map(Spanned::get_mut) {
        Some(DeValue::Table(inner)) => remove(inner, &format!("/{}", rest.join("/"))),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // Read for its problems.
    struct Shape {
        name: String,
        #[serde(default)]
        port: u16,
        inner: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        command: String,
    }

    #[test]
    fn every_problem_of_a_file_is_found_in_one_reading_without_values_shown() {
        let text = "name = \"x\"\nprot = 1\nport = \"secret-port\"\n[inner]\ncommand = 3\n";
        let parsed = parse::<Shape>(text);
        let mut found: Vec<(String, Option<usize>)> = parsed
            .problems
            .iter()
            .map(|d| (d.pointer.clone(), d.line))
            .collect();
        found.sort();
        assert_eq!(
            found,
            [
                ("/inner/command".to_string(), Some(5)),
                ("/port".to_string(), Some(3)),
                ("/prot".to_string(), Some(2)),
            ],
            "{:?}",
            parsed.problems
        );
        assert!(parsed.value.is_some(), "read on without the bad keys");
        let rendered: String = parsed.problems.iter().map(|d| d.render("f.toml")).collect();
        assert!(!rendered.contains("secret-port"), "{rendered}");
        assert!(rendered.contains("did you mean \"port\"?"), "{rendered}");
        // A syntax error: every one found, nothing guessed past them.
        let parsed = parse::<Shape>("name = \nport = [\n");
        assert!(parsed.value.is_none());
        assert!(!parsed.problems.is_empty());
    }
}
