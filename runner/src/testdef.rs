//! LAVA test definitions: reading them (YAML from `testdef_urls`, or inline), turning one
//! into the shell script a test shell runs, and reading results back from its output
//! (`lava-test-case` signals, and the definition's `parse.pattern` with `fixupdict`).

use std::collections::BTreeMap;

use job_schemas::{Report, TestDefinition};
use proto::signal::Signal;
use regex::Regex;

use hostctl::ssh::shell_quote;
use states::TestResult;

#[derive(Debug, thiserror::Error)]
pub enum TestDefError {
    #[error("{source_name} is not YAML: {message}")]
    Yaml {
        source_name: String,
        message: String,
    },
    #[error("{source_name} is not a valid test definition:\n{report}")]
    Invalid { source_name: String, report: String },
}

/// Reads a test definition from YAML text, checked like an inline one.
pub fn from_yaml(source_name: &str, text: &str) -> Result<TestDefinition, TestDefError> {
    let value: serde_json::Value =
        serde_norway::from_str(text).map_err(|e| TestDefError::Yaml {
            source_name: source_name.to_string(),
            message: e.to_string(),
        })?;
    job_schemas::validate_test_definition(&value).map_err(|report: Report| TestDefError::Invalid {
        source_name: source_name.to_string(),
        report: report.render(source_name),
    })
}

/// The script a test shell runs for one definition: parameters exported (the job's
/// values over the definition's defaults, every value quoted), install steps, then run
/// steps, between start and end markers the dispatcher watches for.
pub fn script(
    definition: &TestDefinition,
    overrides: &BTreeMap<String, String>,
    run_id: &str,
) -> String {
    let mut params: BTreeMap<String, String> = definition
        .params
        .iter()
        .map(|(k, v)| (k.clone(), v.as_shell_text()))
        .collect();
    params.extend(overrides.clone());
    let mut script = String::from("#!/bin/sh\n");
    script.push_str(&format!(
        "# {}\n",
        definition.metadata.name.replace('\n', " ")
    ));
    for (key, value) in &params {
        if is_shell_name(key) {
            script.push_str(&format!("export {key}={}\n", shell_quote(value)));
        }
    }
    let run = |signal: Signal| format!("echo {}\n", shell_quote(&signal.to_string()));
    script.push_str(&run(Signal::StartRun {
        run_id: run_id.to_string(),
        uuid: None,
    }));
    for step in definition.install.iter().flat_map(|s| &s.steps) {
        script.push_str(step);
        script.push('\n');
    }
    for step in &definition.run.steps {
        script.push_str(step);
        script.push('\n');
    }
    script.push_str(&run(Signal::EndRun {
        run_id: run_id.to_string(),
        uuid: None,
    }));
    script
}

fn is_shell_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One result read from a test shell's output.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseResult {
    pub name: String,
    pub result: TestResult,
    pub measurement: Option<f64>,
    pub units: Option<String>,
}

/// Reads results out of test shell output lines.
pub struct ResultParser {
    pattern: Option<(Regex, BTreeMap<String, String>)>,
}

impl ResultParser {
    /// A parser for `lava-test-case` signals, plus `definition`'s parse pattern if any.
    pub fn new(definition: Option<&TestDefinition>) -> Result<Self, regex::Error> {
        let pattern = match definition.and_then(|d| d.parse.as_ref()) {
            None => None,
            Some(parse) => Some((Regex::new(&parse.pattern)?, parse.fixupdict.clone())),
        };
        Ok(Self { pattern })
    }

    /// The result a line reports, if it reports one.
    pub fn line(&self, line: &str) -> Option<CaseResult> {
        match Signal::find(line) {
            Some(Ok(Signal::TestCase(case))) => {
                return Some(CaseResult {
                    name: case.id,
                    result: TestResult::parse(case.result.as_str())?,
                    measurement: case.measurement.and_then(|m| m.parse().ok()),
                    units: case.units,
                });
            }
            // A line with a broken signal reports nothing.
            Some(Err(_)) => return None,
            _ => {}
        }
        let (pattern, fixups) = self.pattern.as_ref()?;
        let found = pattern.captures(line)?;
        let raw = found.name("result")?.as_str();
        let word = fixups.get(raw).map_or(raw, String::as_str);
        Some(CaseResult {
            name: found
                .name("test_case_id")?
                .as_str()
                .replace(char::is_whitespace, "_"),
            result: TestResult::parse(&word.to_lowercase()).unwrap_or(TestResult::Unknown),
            measurement: found
                .name("measurement")
                .and_then(|m| m.as_str().parse().ok()),
            units: found.name("units").map(|u| u.as_str().to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFINITION: &str = r#"
metadata:
  name: smoke
  format: Lava-Test Test Definition 1.0
  description: "a smoke test"
params:
  GREETING: hello
  COUNT: 2
install:
  steps:
    - echo installing
run:
  steps:
    - 'for i in $(seq $COUNT); do echo "case-$i: PASS"; done'
    - 'echo "odd: BAD"'
    - 'echo "$GREETING"'
    - 'echo "BOOT_SIGNAL"'
parse:
  pattern: '^(?P<test_case_id>[\w-]+): (?P<result>\w+)$'
  fixupdict:
    PASS: pass
    BAD: fail
"#;

    #[test]
    fn a_yaml_definition_runs_and_its_results_are_read_back() {
        // A step that prints a signal itself, as lava-test-case would.
        let boot = Signal::TestCase(proto::signal::TestCase {
            id: "boot".into(),
            result: proto::signal::Outcome::Pass,
            measurement: Some("3.5".into()),
            units: Some("s".into()),
        });
        let yaml = DEFINITION.replace("BOOT_SIGNAL", &boot.to_string());
        let definition = from_yaml("smoke.yaml", &yaml).unwrap();
        let overrides = BTreeMap::from([("GREETING".to_string(), "it's $(not run)".to_string())]);
        let script = script(&definition, &overrides, "1_smoke");
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        assert!(output.status.success());
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            text.contains("it's $(not run)\n"),
            "parameters are quoted: {text}"
        );
        let (run_id, uuid) = ("1_smoke".to_string(), None);
        let start = Signal::StartRun {
            run_id: run_id.clone(),
            uuid: None,
        };
        let end = Signal::EndRun { run_id, uuid };
        assert!(
            text.starts_with(&format!("{start}\ninstalling\n")),
            "{text}"
        );
        assert!(text.ends_with(&format!("{end}\n")), "{text}");
        let parser = ResultParser::new(Some(&definition)).unwrap();
        let results: Vec<CaseResult> = text.lines().filter_map(|l| parser.line(l)).collect();
        let summary: Vec<(String, TestResult)> =
            results.iter().map(|r| (r.name.clone(), r.result)).collect();
        assert_eq!(
            summary,
            [
                ("case-1".to_string(), TestResult::Pass),
                ("case-2".to_string(), TestResult::Pass),
                ("odd".to_string(), TestResult::Fail),
                ("boot".to_string(), TestResult::Pass),
            ]
        );
        assert_eq!(
            (results[3].measurement, results[3].units.as_deref()),
            (Some(3.5), Some("s"))
        );
    }

    #[test]
    fn a_bad_definition_is_reported_with_its_place() {
        let err = from_yaml(
            "bad.yaml",
            "metadata: {name: x}\nrun: {steps: [true]}\nparse: {pattern: '(?P<result>x)'}\n",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("/parse/pattern") && text.contains("test_case_id"),
            "{text}"
        );
        let err = from_yaml("worse.yaml", "metadata: {name: x}\nrunn: {steps: []}\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("missing required key \"run\"") && text.contains("unknown key \"runn\""),
            "{text}"
        );
        assert!(matches!(
            from_yaml("y", "a: [b"),
            Err(TestDefError::Yaml { .. })
        ));
    }
}
