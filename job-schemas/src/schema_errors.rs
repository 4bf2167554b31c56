//! Turns JSON Schema validation errors into diagnostics a test writer can act on.

use jsonschema::ValidationError;
use jsonschema::error::{TypeKind, ValidationErrorKind};
use serde_json::Value;

use crate::diagnostic::Diagnostic;
use crate::{pointer, schema, semantic, suggest};

/// Every schema violation in `job`, as diagnostics.
pub(crate) fn check(job: &Value) -> Vec<Diagnostic> {
    let validator = schema::validator();
    // Most jobs are valid: the yes/no check stops at nothing and builds no error, so
    // it costs a fraction of collecting errors (which a valid job has none of anyway).
    if validator.is_valid(job) {
        return Vec::new();
    }
    validator
        .iter_errors(job)
        .flat_map(|error| translate(&error))
        .collect()
}

/// Every schema violation in a test definition, as diagnostics.
pub(crate) fn check_test_definition(testdef: &Value) -> Vec<Diagnostic> {
    let validator = schema::testdef_validator();
    if validator.is_valid(testdef) {
        return Vec::new();
    }
    validator
        .iter_errors(testdef)
        .flat_map(|error| translate(&error))
        .collect()
}

fn translate(error: &ValidationError<'_>) -> Vec<Diagnostic> {
    let at = error.instance_path().as_str().to_string();
    let keyword_path = pointer::tokens(error.schema_path().as_str());
    // The schema object holding the failing keyword (the last segment is the keyword).
    let parent = schema::node_at(
        keyword_path[..keyword_path.len().saturating_sub(1)]
            .iter()
            .map(String::as_str),
    );
    let instance = error.instance();
    match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => unexpected
            .iter()
            .filter(|key| !(at.is_empty() && semantic::is_reserved_key(key)))
            .map(|key| unknown_key(&at, key, parent))
            .collect(),
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            let expected = parent
                .and_then(|p| p.get("properties"))
                .and_then(|props| props.get(name))
                .map(schema::describe);
            let mut d = Diagnostic::error(
                pointer::push(&at, name),
                format!("missing required key \"{name}\""),
            );
            if let Some(expected) = expected {
                d = d.expected(expected);
            }
            vec![d]
        }
        ValidationErrorKind::Type { kind } => {
            let wanted = match kind {
                TypeKind::Single(t) => t.to_string(),
                TypeKind::Multiple(ts) => ts
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(" or "),
            };
            vec![
                Diagnostic::error(&at, format!("wrong type: expected {wanted}"))
                    .expected(wanted)
                    .found(found(instance)),
            ]
        }
        ValidationErrorKind::Enum { options } => {
            let names: Vec<&str> = options
                .as_array()
                .map(|o| o.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let hint = instance
                .as_str()
                .and_then(|s| suggest::did_you_mean(s, names.iter().copied()));
            let what = at.rsplit('/').next().unwrap_or("value");
            vec![
                Diagnostic::error(&at, format!("unknown {what} {}", short(instance)))
                    .expected(format!("one of {}", suggest::one_of(names.iter().copied())))
                    .found(found(instance))
                    .maybe_hint(hint),
            ]
        }
        ValidationErrorKind::AnyOf { .. } => {
            let expected = parent.map_or_else(|| "another value".to_string(), schema::describe);
            vec![
                Diagnostic::error(&at, "value not allowed here")
                    .expected(expected)
                    .found(found(instance)),
            ]
        }
        // The schema's `oneOf`s are lists of `{"required": [key]}`: exactly one of
        // those keys.
        ValidationErrorKind::OneOfNotValid { .. }
        | ValidationErrorKind::OneOfMultipleValid { .. } => {
            let keys: Vec<&str> = parent
                .and_then(|p| p.get("oneOf"))
                .and_then(Value::as_array)
                .map(|alternatives| {
                    alternatives
                        .iter()
                        .filter_map(|a| a.pointer("/required/0").and_then(Value::as_str))
                        .collect()
                })
                .unwrap_or_default();
            let present: Vec<&str> = keys
                .iter()
                .copied()
                .filter(|k| instance.get(*k).is_some())
                .collect();
            let message = if present.is_empty() {
                "none of the keys that say what this is"
            } else {
                "more than one of the keys that say what this is"
            };
            vec![
                Diagnostic::error(&at, message)
                    .expected(format!("exactly one of {}", keys.join(", ")))
                    .found(if present.is_empty() {
                        "none".to_string()
                    } else {
                        present.join(", ")
                    }),
            ]
        }
        ValidationErrorKind::Minimum { limit } => {
            vec![out_of_range(&at, instance, format!("at least {limit}"))]
        }
        ValidationErrorKind::Maximum { limit } => {
            vec![out_of_range(&at, instance, format!("at most {limit}"))]
        }
        ValidationErrorKind::ExclusiveMinimum { limit } => {
            vec![out_of_range(&at, instance, format!("more than {limit}"))]
        }
        ValidationErrorKind::MinItems { limit } => vec![
            Diagnostic::error(&at, "too few items")
                .expected(format!(
                    "at least {limit} item{}",
                    if *limit == 1 { "" } else { "s" }
                ))
                .found(format!("{} items", instance.as_array().map_or(0, Vec::len))),
        ],
        ValidationErrorKind::MinLength { .. } => vec![
            Diagnostic::error(&at, "empty string not allowed")
                .expected("a non-empty string")
                .found(found(instance)),
        ],
        ValidationErrorKind::MaxLength { limit } => vec![
            Diagnostic::error(&at, "string too long")
                .expected(format!("at most {limit} characters"))
                .found(format!(
                    "{} characters",
                    instance.as_str().map_or(0, |s| s.chars().count())
                )),
        ],
        ValidationErrorKind::Pattern { pattern } => {
            let expected = parent
                .and_then(|p| p.get("description"))
                .and_then(Value::as_str)
                .map_or_else(|| format!("a string matching {pattern}"), str::to_string);
            vec![
                Diagnostic::error(&at, format!("invalid name {}", short(instance)))
                    .expected(expected)
                    .found(found(instance)),
            ]
        }
        ValidationErrorKind::UniqueItems => vec![
            Diagnostic::error(&at, "duplicate items")
                .expected("each item at most once")
                .found(short(instance)),
        ],
        _ => vec![Diagnostic::error(&at, error.to_string())],
    }
}

fn unknown_key(at: &str, key: &str, object_schema: Option<&Value>) -> Diagnostic {
    let known = object_schema
        .map(schema::known_properties)
        .unwrap_or_default();
    let hint = suggest::did_you_mean(key, known.iter().copied());
    let mut d = Diagnostic::error(pointer::push(at, key), format!("unknown key \"{key}\""));
    if !known.is_empty() {
        d = d.expected(format!("one of {}", suggest::one_of(known.iter().copied())));
    }
    d.maybe_hint(hint)
}

fn out_of_range(at: &str, instance: &Value, expected: String) -> Diagnostic {
    Diagnostic::error(at, format!("{} is out of range", short(instance)))
        .expected(expected)
        .found(short(instance))
}

/// A value as found, with its JSON type: `"12" (a string)`.
pub(crate) fn found(value: &Value) -> String {
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    match value {
        Value::Null => "null".to_string(),
        _ => format!("{} ({kind})", short(value)),
    }
}

/// The value's JSON text, cut to a readable length. Only the start is ever written out:
/// serializing a whole large value for each of many errors would be quadratic.
pub(crate) fn short(value: &Value) -> String {
    let mut start = Prefix {
        text: Vec::new(),
        room: 4 * 61, // 61 characters of at most 4 bytes each.
    };
    // Prefix refuses to go on once full: that error is the intended stop.
    let _ = serde_json::to_writer(&mut start, value);
    let text = String::from_utf8_lossy(&start.text);
    if text.chars().count() > 60 {
        let cut: String = text.chars().take(57).collect();
        format!("{cut}...")
    } else {
        text.into_owned()
    }
}

/// A writer that keeps the first `room` bytes and then fails.
struct Prefix {
    text: Vec<u8>,
    room: usize,
}

impl std::io::Write for Prefix {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.room == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let taken = bytes.len().min(self.room);
        self.text.extend_from_slice(&bytes[..taken]);
        self.room -= taken;
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortens_without_writing_out_the_whole_value() {
        assert_eq!(short(&serde_json::json!({"a": 1})), r#"{"a":1}"#);
        let big = Value::Array(vec![Value::from("é"); 100_000]);
        let text = short(&big);
        assert!(text.ends_with("..."), "{text}");
        assert_eq!(text.chars().count(), 60);
    }
}
