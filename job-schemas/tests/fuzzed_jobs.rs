//! Property tests (proptest) of validation against arbitrary input: any text, and every
//! valid example job with a random part replaced by JSON of any shape or removed. None
//! may panic; every refusal carries at least one error whose pointer is a JSON pointer
//! and whose message is not empty. Bounded by a fixed number of cases.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

use std::path::PathBuf;

use job_schemas::{DeviceCatalog, DeviceTypeClass, ValidationContext, validate_str};
use proptest::prelude::*;
use serde_json::Value;

fn context() -> ValidationContext {
    let mut catalog = DeviceCatalog::new();
    for name in ["kvm", "kvm-arm", "kvm-aarch64", "qemu-aarch64"] {
        catalog.insert(name, DeviceTypeClass::Virtual);
    }
    for name in [
        "qemu-host",
        "ssh-host",
        "juno",
        "mustang",
        "beaglebone-black",
        "panda",
    ] {
        catalog.insert(
            name,
            DeviceTypeClass::Host {
                virtualization: true,
                boots_job_images: false,
            },
        );
    }
    ValidationContext::new(catalog)
}

fn valid_examples() -> &'static [Value] {
    static JOBS: std::sync::OnceLock<Vec<Value>> = std::sync::OnceLock::new();
    JOBS.get_or_init(read_valid_examples)
}

fn read_valid_examples() -> Vec<Value> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/jobs/valid");
    let mut jobs: Vec<Value> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect();
    jobs.sort_by_key(Value::to_string);
    assert!(jobs.len() >= 10, "the valid corpus is in {}", dir.display());
    jobs
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        ".{0,20}".prop_map(Value::String),
        prop::sample::select(vec![
            "kvm",
            "qemu-host",
            "server",
            "file:///x",
            "http://",
            "deploy_linaro_kernel",
            "lava_test_shell"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Walks `steps` choices down from the root and replaces (or, with `None`, removes)
/// the value reached.
fn mutate(job: &mut Value, steps: &[usize], with: Option<Value>) {
    let mut at = job;
    for (depth, step) in steps.iter().enumerate() {
        let last = depth + 1 == steps.len();
        let next_key = match at {
            Value::Object(map) if !map.is_empty() => {
                Some(map.keys().nth(step % map.len()).unwrap().clone())
            }
            Value::Array(items) if !items.is_empty() => Some((step % items.len()).to_string()),
            _ => None,
        };
        let Some(key) = next_key else { break };
        if last {
            match (at, with) {
                (Value::Object(map), None) => {
                    map.remove(&key);
                }
                (Value::Array(items), None) => {
                    items.remove(key.parse::<usize>().unwrap());
                }
                (Value::Object(map), Some(v)) => {
                    map.insert(key, v);
                }
                (Value::Array(items), Some(v)) => {
                    items[key.parse::<usize>().unwrap()] = v;
                }
                _ => {}
            }
            return;
        }
        at = match at {
            Value::Object(map) => map.get_mut(&key).unwrap(),
            Value::Array(items) => &mut items[key.parse::<usize>().unwrap()],
            _ => return,
        };
    }
}

fn check(text: &str, ctx: &ValidationContext) -> Result<(), TestCaseError> {
    if let Err(report) = validate_str(text, ctx) {
        prop_assert!(report.error_count() > 0, "a refusal without an error");
        for d in report.diagnostics() {
            prop_assert!(
                d.pointer.is_empty() || d.pointer.starts_with('/'),
                "{:?}",
                d
            );
            prop_assert!(!d.message.trim().is_empty(), "{:?}", d);
        }
        prop_assert!(!report.render("job").is_empty());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn any_text_is_refused_or_accepted_without_panicking(text in ".{0,300}") {
        check(&text, &context())?;
    }

    #[test]
    fn a_mutated_example_job_is_refused_clearly_or_accepted(
        which in any::<usize>(),
        steps in prop::collection::vec(any::<usize>(), 1..6),
        with in prop::option::of(any_json()),
    ) {
        let examples = valid_examples();
        let mut job = examples[which % examples.len()].clone();
        mutate(&mut job, &steps, with);
        check(&job.to_string(), &context())?;
    }
}
