//! LAVA test definitions: reading them (YAML from `testdef_urls`, or inline), turning one
//! into the shell script a test shell runs, and reading results back from its output
//! (`lava-test-case` signals, and the definition's `parse.pattern` with `fixupdict`).

use std::collections::BTreeMap;

use job_schemas::{
    CommandRun, ParsePattern, Report, Steps, TestDefinition, TestDefinitionSource, TestMetadata,
    TestShell,
};
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

/// The name a `lava_command_run` action's results are reported under, as LAVA v1's.
pub const COMMAND_RUN_NAME: &str = "lava-command";

/// Results of a `lava_command_run` without a parser: lines `name : result`, LAVA v1's
/// default (the result word in lower or upper case).
const DEFAULT_COMMAND_PATTERN: &str =
    r"^\s*(?P<test_case_id>.*?)\s+:\s+(?P<result>pass|fail|skip|unknown|PASS|FAIL|SKIP|UNKNOWN)";

/// The longest test case name a command gives (the commands themselves can be long).
const MAX_CASE_NAME: usize = 128;

/// A `lava_command_run` action as the test shell that runs it: one definition whose
/// steps are the commands, in one shell, each followed by its result (pass when it
/// exited 0), the list `iterations` times; output lines matching the action's parser
/// (anchored at the line's start, leading blanks ignored, as LAVA v1 matched) are
/// results too.
pub fn command_run_shell(run: &CommandRun) -> TestShell {
    let mut steps = Vec::new();
    let looped = run.iterations > 1;
    if looped {
        steps.push("lava_command_iteration=0".to_string());
        steps.push(format!(
            "while [ \"$lava_command_iteration\" -lt {} ]; do",
            run.iterations
        ));
        steps.push("lava_command_iteration=$((lava_command_iteration + 1))".to_string());
    }
    for command in &run.commands {
        let case = case_name(command);
        let signal = |result| {
            shell_quote(
                &Signal::TestCase(proto::signal::TestCase::new(case.clone(), result)).to_string(),
            )
        };
        // The command on a line of its own, so a trailing `&` or comment stays its own.
        steps.push(command.clone());
        steps.push(format!(
            "if [ $? -eq 0 ]; then echo {}; else echo {}; fi",
            signal(proto::signal::Outcome::Pass),
            signal(proto::signal::Outcome::Fail)
        ));
    }
    if looped {
        steps.push("done".to_string());
    }
    let (pattern, fixupdict) = match &run.parser {
        Some(parser) => (format!(r"^\s*(?:{parser})"), run.fixupdict.clone()),
        None => (DEFAULT_COMMAND_PATTERN.to_string(), BTreeMap::new()),
    };
    TestShell {
        definitions: vec![TestDefinitionSource::Inline {
            definition: TestDefinition {
                metadata: TestMetadata {
                    name: COMMAND_RUN_NAME.to_string(),
                    format: None,
                    description: Some("lava_command_run".to_string()),
                },
                params: BTreeMap::new(),
                install: None,
                run: Steps { steps },
                parse: Some(ParsePattern { pattern, fixupdict }),
            },
            parameters: BTreeMap::new(),
        }],
    }
}

/// A command as a test case name: LAVA v1 named each case after its command; here
/// characters a result signal cannot carry become `_`, and a long one is cut.
fn case_name(command: &str) -> String {
    let mut name = String::new();
    for c in command.trim().chars() {
        let c = if c.is_ascii_alphanumeric() || "._-".contains(c) {
            c
        } else {
            '_'
        };
        if !(c == '_' && name.ends_with('_')) {
            name.push(c);
        }
        if name.len() >= MAX_CASE_NAME {
            break;
        }
    }
    let name = name.trim_matches('_');
    if name.is_empty() {
        "command".to_string()
    } else {
        name.to_string()
    }
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

    fn run_command_shell(run: &CommandRun) -> Vec<(String, TestResult)> {
        let TestDefinitionSource::Inline { definition, .. } =
            &command_run_shell(run).definitions[0]
        else {
            panic!("a command run is an inline definition");
        };
        let script = script(definition, &BTreeMap::new(), "0.0_lava-command");
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let parser = ResultParser::new(Some(definition)).unwrap();
        text.lines()
            .filter_map(|l| parser.line(l))
            .map(|r| (r.name, r.result))
            .collect()
    }

    #[test]
    fn command_run_commands_share_one_shell_and_each_is_a_case() {
        let dir = tempfile::tempdir().unwrap();
        let run = CommandRun {
            commands: vec![
                format!("cd {}", shell_quote(&dir.path().display().to_string())),
                "export WORD=kept".to_string(),
                "test \"$WORD\" = kept && test -d .".to_string(),
                "false".to_string(),
                "echo 'bench : PASS' # a comment".to_string(),
                "echo '   latency : fail'".to_string(),
            ],
            parser: None,
            fixupdict: BTreeMap::new(),
            iterations: 1,
        };
        let results = run_command_shell(&run);
        let pass = TestResult::Pass;
        let fail = TestResult::Fail;
        assert_eq!(
            results,
            [
                (case_name(&run.commands[0]), pass),
                ("export_WORD_kept".to_string(), pass),
                ("test_WORD_kept_test_-d_.".to_string(), pass),
                // A failing command is a failed case; the next ones still run.
                ("false".to_string(), fail),
                ("bench".to_string(), pass),
                ("echo_bench_PASS_a_comment".to_string(), pass),
                ("latency".to_string(), fail),
                ("echo_latency_fail".to_string(), pass),
            ]
        );
    }

    #[test]
    fn command_run_parser_fixupdict_and_iterations() {
        let run = CommandRun {
            commands: vec!["echo 'selftests: timers [PASS]'; echo 'selftests: net [SKIP]'; echo 'x selftests: y [FAIL]'".to_string()],
            parser: Some(r"selftests:\s(?P<test_case_id>\S+)\s\[(?P<result>\w+)\]".to_string()),
            fixupdict: BTreeMap::from([
                ("PASS".to_string(), "pass".to_string()),
                ("SKIP".to_string(), "skip".to_string()),
            ]),
            iterations: 2,
        };
        let results = run_command_shell(&run);
        let case = case_name(&run.commands[0]);
        let once = [
            ("timers".to_string(), TestResult::Pass),
            ("net".to_string(), TestResult::Skip),
            // Not at the start of its line: LAVA v1 matched from the start only.
            (case, TestResult::Pass),
        ];
        let twice: Vec<_> = once.iter().chain(once.iter()).cloned().collect();
        assert_eq!(results, twice);
        assert!(case_name(&"x".repeat(500)).len() <= MAX_CASE_NAME);
        assert_eq!(case_name("  <>  "), "command");
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
