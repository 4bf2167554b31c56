//! The embedded JSON Schema, its compiled validator, and look-ups into the schema text
//! that turn a failing keyword into "expected ..." and "did you mean ...".

use std::sync::OnceLock;

use jsonschema::Validator;
use serde_json::Value;

/// The published schema, exactly as in `job-schemas/lava-v1-job.schema.json`.
pub const JOB_SCHEMA: &str = include_str!("../lava-v1-job.schema.json");

pub(crate) fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        // The schema is part of this crate, not input: a test proves it parses.
        #[allow(clippy::expect_used)]
        serde_json::from_str(JOB_SCHEMA).expect("embedded job schema is valid JSON")
    })
}

pub(crate) fn validator() -> &'static Validator {
    static VALIDATOR: OnceLock<Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        // As above: compiling the embedded schema is proven by a test.
        #[allow(clippy::expect_used)]
        jsonschema::draft202012::new(schema()).expect("embedded job schema compiles")
    })
}

/// A validator for one test definition: the schema's `$defs/testdef`, with the rest of
/// the schema around it so its references resolve.
pub(crate) fn testdef_validator() -> &'static Validator {
    static VALIDATOR: OnceLock<Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let mut wrapper = schema().clone();
        if let Some(map) = wrapper.as_object_mut() {
            map.retain(|k, _| k == "$schema" || k == "$defs");
            map.insert("$ref".into(), Value::String("#/$defs/testdef".into()));
        }
        // Derived from the embedded schema; a test proves it compiles.
        #[allow(clippy::expect_used)]
        jsonschema::draft202012::new(&wrapper).expect("test definition schema compiles")
    })
}

/// Follows a keyword location (e.g. `/properties/vm_group/$ref/properties/vms`) through
/// the schema, resolving local `$ref`s, and returns the schema object it ends in.
pub(crate) fn node_at<'a>(segments: impl IntoIterator<Item = &'a str>) -> Option<&'static Value> {
    let root = schema();
    let mut node = root;
    for segment in segments {
        node = if segment == "$ref" {
            let target = node.get("$ref")?.as_str()?;
            root.pointer(target.strip_prefix('#')?)?
        } else {
            match node {
                Value::Object(map) => map.get(segment)?,
                Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
                _ => return None,
            }
        };
    }
    // A node that is only a reference (plus annotations) stands for its target.
    while let Some(target) = node.get("$ref").and_then(Value::as_str) {
        node = root.pointer(target.strip_prefix('#')?)?;
    }
    Some(node)
}

/// The property names an object schema declares, in schema order.
pub(crate) fn known_properties(object_schema: &Value) -> Vec<&str> {
    object_schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|props| props.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

/// A short human description of what a schema accepts, e.g. "integer from 0 to 100".
pub(crate) fn describe(node: &Value) -> String {
    let root = schema();
    let mut node = node;
    while let Some(target) = node.get("$ref").and_then(Value::as_str) {
        match target.strip_prefix('#').and_then(|p| root.pointer(p)) {
            Some(resolved) => node = resolved,
            None => break,
        }
    }
    if let Some(options) = node.get("enum").and_then(Value::as_array) {
        let names: Vec<String> = options.iter().map(Value::to_string).collect();
        return format!("one of {}", names.join(", "));
    }
    if let Some(branches) = node.get("anyOf").and_then(Value::as_array) {
        let parts: Vec<String> = branches.iter().map(describe).collect();
        return parts.join(", or ");
    }
    let mut text = match node.get("type") {
        Some(Value::String(t)) => article(t),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(article)
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "a value".to_string(),
    };
    match (node.get("minimum"), node.get("maximum")) {
        (Some(min), Some(max)) => text.push_str(&format!(" from {min} to {max}")),
        (Some(min), None) => text.push_str(&format!(" of at least {min}")),
        _ => {}
    }
    if let Some(min) = node.get("exclusiveMinimum") {
        text.push_str(&format!(" greater than {min}"));
    }
    if node.get("minItems").and_then(Value::as_u64) == Some(1) {
        text = format!(
            "a non-empty {}",
            text.trim_start_matches("an ").trim_start_matches("a ")
        );
    }
    text
}

fn article(json_type: &str) -> String {
    match json_type {
        "array" | "integer" | "object" => format!("an {json_type}"),
        other => format!("a {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_schema_compiles_and_is_draft_2020_12() {
        assert_eq!(
            schema()["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        let _ = validator();
        jsonschema::meta::validate(schema()).unwrap();
    }

    #[test]
    fn resolves_refs_along_keyword_locations() {
        let vm = node_at([
            "properties",
            "vm_group",
            "$ref",
            "properties",
            "vms",
            "items",
            "$ref",
        ])
        .unwrap();
        assert!(known_properties(vm).contains(&"launch_with"));
    }

    #[test]
    fn describes_common_shapes() {
        assert_eq!(
            describe(&schema()["properties"]["priority"]),
            "one of \"high\", \"medium\", \"low\", or an integer from 0 to 100"
        );
        assert_eq!(
            describe(&schema()["properties"]["timeout"]),
            "an integer greater than 0"
        );
    }
}
