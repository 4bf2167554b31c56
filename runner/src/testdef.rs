//! LAVA test definitions: reading them (YAML from `testdef_urls`, or inline), turning one
//! into the shell script a test shell runs, and reading results back from its output
//! (`lava-test-case` signals, and the definition's `parse.pattern` with `fixupdict`).

use std::collections::BTreeMap;

use fancy_regex::Regex;
use job_schemas::{
    CommandRun, GitRepo, Install, ParsePattern, Report, SkipInstall, Steps, TestDefinition,
    TestDefinitionSource, TestMetadata, TestShell,
};
use proto::signal::Signal;

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

/// The exit status of a definition's script whose install section failed; `run.sh`
/// stops there, as LAVA ran no run steps after a failed install.
pub const INSTALL_FAILED: i32 = 97;

/// Package managers tried for `install.deps`, in this order, and how each installs
/// (`$@` are the packages). An index update that fails is not fatal (LAVA's
/// `lava-install-packages` went on to the install too): the packages may be there.
const PACKAGE_MANAGERS: &[(&str, &str)] = &[
    (
        "apt-get",
        "DEBIAN_FRONTEND=noninteractive apt-get update -q || true; \
         DEBIAN_FRONTEND=noninteractive apt-get install -y -q \"$@\"",
    ),
    ("dnf", "dnf -y -q install \"$@\""),
    ("yum", "yum -y -q install \"$@\""),
    ("opkg", "opkg update || true; opkg install \"$@\""),
    ("apk", "apk add \"$@\""),
    ("pacman", "pacman -Sy --noconfirm --needed \"$@\""),
    ("zypper", "zypper --non-interactive install \"$@\""),
];

/// The directory an `install.git-repos` entry is unpacked into, relative to the
/// definition's top: its `destination`, else the repository's name (the URL's last
/// segment without `.git`), as LAVA cloned it. Refused when it would leave the top.
pub fn install_repo_dir(repo: &GitRepo) -> Result<String, String> {
    let destination = match repo {
        GitRepo::Detailed {
            destination: Some(d),
            ..
        } => Some(d.as_str()),
        _ => None,
    };
    install_dir("install.git-repos", repo.url(), destination)
}

/// An `install.git-repos` entry as the definition's parameters make it: `branch` and
/// `destination` may each name a parameter, whose value is then used (LAVA's
/// `branch: ODP_BRANCH`); `None` when the parameter its `skip_by_default` names is
/// true, which leaves the repository out.
pub fn resolve_git_repo(repo: &GitRepo, params: &BTreeMap<String, String>) -> Option<GitRepo> {
    let GitRepo::Detailed {
        url,
        branch,
        destination,
        skip_by_default,
    } = repo
    else {
        return Some(repo.clone());
    };
    let skipped = skip_by_default
        .as_ref()
        .and_then(|name| params.get(name))
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "yes" | "1"));
    if skipped {
        return None;
    }
    let value = |v: &Option<String>| {
        v.as_ref()
            .map(|name| params.get(name).cloned().unwrap_or_else(|| name.clone()))
    };
    Some(GitRepo::Detailed {
        url: url.clone(),
        branch: value(branch),
        destination: value(destination),
        skip_by_default: None,
    })
}

/// The directory an `install.bzr-repos` entry is branched into: the branch's name (the
/// URL's last segment), as LAVA's `bzr branch` made it.
pub fn install_bzr_dir(url: &str) -> Result<String, String> {
    install_dir("install.bzr-repos", url, None)
}

fn install_dir(what: &str, url: &str, destination: Option<&str>) -> Result<String, String> {
    let destination = destination.map(str::to_string).unwrap_or_else(|| {
        let trimmed = url.trim_end_matches('/');
        let last = trimmed.rsplit(['/', ':']).next().unwrap_or_default();
        last.strip_suffix(".git").unwrap_or(last).to_string()
    });
    let path = std::path::Path::new(&destination);
    let inside = path
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if destination.is_empty() || !inside {
        return Err(format!(
            "{what}: {url}: \"{destination}\" is not a directory inside the test's top"
        ));
    }
    Ok(destination)
}

/// The script a test shell runs for one definition: parameters exported (the job's
/// values over the definition's defaults, every value quoted), the install section
/// (packages, then install steps; what `skip` names left out), then run steps, between
/// start and end markers the dispatcher watches for. A failed install prints a
/// `TESTRAISE` saying what failed and exits with [`INSTALL_FAILED`] before any run step.
pub fn script(
    definition: &TestDefinition,
    overrides: &BTreeMap<String, String>,
    run_id: &str,
    skip: SkipInstall,
) -> String {
    let mut params = definition.default_params();
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
    if let Some(install) = &definition.install {
        script.push_str(&install_section(
            install,
            &definition.metadata.name,
            skip,
            &run,
        ));
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
            definition: Box::new(TestDefinition {
                metadata: TestMetadata {
                    name: COMMAND_RUN_NAME.to_string(),
                    format: None,
                    description: Some("lava_command_run".to_string()),
                },
                params: BTreeMap::new(),
                parameters: BTreeMap::new(),
                install: None,
                run: Steps { steps },
                parse: Some(ParsePattern { pattern, fixupdict }),
            }),
            parameters: BTreeMap::new(),
        }],
        skip_install: SkipInstall::default(),
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

/// The install part of a definition's script. Each part runs in a subshell with
/// `set -e` (LAVA ran its install script so: the first failing step fails the install,
/// and nothing it sets leaks into the run steps).
fn install_section(
    install: &Install,
    name: &str,
    skip: SkipInstall,
    run: &dyn Fn(Signal) -> String,
) -> String {
    // The message's `@pm@` and `@status@` become the shell's values: the quoted echo
    // is opened around them.
    let raise = |message: String| {
        let echo = run(Signal::TestRaise {
            message: format!("{name}: {message}"),
        })
        .replace("@pm@", "'\"$lava_pm\"'")
        .replace("@status@", "'\"$lava_status\"'");
        format!("{echo}exit {INSTALL_FAILED}\n")
    };
    let mut out = String::new();
    if !skip.deps && !install.deps.is_empty() {
        let packages: Vec<String> = install.deps.iter().map(|d| shell_quote(d)).collect();
        let packages = packages.join(" ");
        let known: Vec<&str> = PACKAGE_MANAGERS.iter().map(|(name, _)| *name).collect();
        out.push_str("lava_pm=\n");
        out.push_str(&format!(
            "for lava_candidate in {}; do\n  if command -v \"$lava_candidate\" >/dev/null 2>&1; then lava_pm=$lava_candidate; break; fi\ndone\n",
            known.join(" ")
        ));
        out.push_str("case \"$lava_pm\" in\n");
        out.push_str(&format!(
            "'') {}  ;;\n",
            raise(format!(
                "install.deps: the target has no package manager to install {} with (looked for {})",
                install.deps.join(" "),
                known.join(", ")
            ))
        ));
        for (manager, command) in PACKAGE_MANAGERS {
            out.push_str(&format!(
                "{manager}) (set -e; set -- {packages}; {command}) ;;\n"
            ));
        }
        out.push_str("esac\n");
        out.push_str(&format!(
            "lava_status=$?\nif [ \"$lava_status\" -ne 0 ]; then\n{}fi\n",
            raise(format!(
                "install.deps: installing {} with @pm@ failed (exit @status@)",
                install.deps.join(" ")
            ))
        ));
    }
    if !skip.steps && !install.steps.is_empty() {
        out.push_str("(\nset -e\n");
        for step in &install.steps {
            out.push_str(step);
            out.push('\n');
        }
        out.push_str(&format!(
            ")\nlava_status=$?\nif [ \"$lava_status\" -ne 0 ]; then\n{}fi\n",
            raise("install.steps failed (exit @status@)".to_string())
        ));
    }
    out
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
    pub reference: Option<String>,
}

/// Reads results out of test shell output lines.
pub struct ResultParser {
    pattern: Option<(Regex, BTreeMap<String, String>)>,
}

impl ResultParser {
    /// A parser for `lava-test-case` signals, plus `definition`'s parse pattern if any
    /// (in Python's syntax, as LAVA read it: [`job_schemas::pattern`]).
    pub fn new(definition: Option<&TestDefinition>) -> Result<Self, Box<fancy_regex::Error>> {
        let pattern = match definition.and_then(|d| d.parse.as_ref()) {
            None => None,
            Some(parse) => Some((
                job_schemas::pattern::compile(&parse.pattern)?,
                parse.fixupdict.clone(),
            )),
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
                    reference: None,
                });
            }
            // LAVA records a reference as a test case with its URL.
            Some(Ok(Signal::TestReference {
                id,
                result,
                reference,
            })) => {
                return Some(CaseResult {
                    name: id,
                    result: TestResult::parse(result.as_str())?,
                    measurement: None,
                    units: None,
                    reference: Some(reference),
                });
            }
            // A line with a broken signal reports nothing.
            Some(Err(_)) => return None,
            _ => {}
        }
        let (pattern, fixups) = self.pattern.as_ref()?;
        // A line the backtracking limit gives up on reports nothing, as one that does
        // not match.
        let found = pattern.captures(line).ok().flatten()?;
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
            reference: None,
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
        let script = script(&definition, &overrides, "1_smoke", SkipInstall::default());
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
        let script = script(
            definition,
            &BTreeMap::new(),
            "0.0_lava-command",
            SkipInstall::default(),
        );
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
            "metadata: {name: x}\nrun: {steps: ['true']}\nparse: {pattern: '(?P<result>x)'}\n",
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

    /// Runs `script` with only `bin` on the PATH (plus the shell's builtins), as a
    /// target with just those commands.
    fn run_on_target(script: &str, bin: &std::path::Path) -> (i32, String) {
        let output = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .env("PATH", bin)
            .current_dir(bin)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.code().unwrap_or(-1), text)
    }

    /// A fake package manager in `bin` that logs its arguments to `log` and exits with
    /// `status`.
    fn fake_manager(bin: &std::path::Path, name: &str, status: i32) {
        use std::os::unix::fs::PermissionsExt;
        let path = bin.join(name);
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho \"{name} $*\" >> pm.log\nexit {status}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    const INSTALLING: &str = r#"
metadata: {name: installing}
params:
  EMPTY: null
  SHOWN: "x"
parameters:
  SHOWN: "from parameters"
install:
  deps: [hdparm, "libfoo-dev"]
  steps:
    - echo "step one $SHOWN"
    - "false"
    - echo "never printed"
run:
  steps:
    - 'echo "run [$EMPTY] $SHOWN"'
"#;

    #[test]
    fn deps_are_installed_with_the_targets_package_manager_before_the_steps() {
        let bin = tempfile::tempdir().unwrap();
        fake_manager(bin.path(), "opkg", 0);
        let definition = from_yaml("i.yaml", &INSTALLING.replace("    - \"false\"\n", "")).unwrap();
        let script = script(&definition, &BTreeMap::new(), "0_i", SkipInstall::default());
        let (status, text) = run_on_target(&script, bin.path());
        assert_eq!(status, 0, "{text}");
        let log = std::fs::read_to_string(bin.path().join("pm.log")).unwrap();
        assert_eq!(log, "opkg update\nopkg install hdparm libfoo-dev\n");
        // Steps after the packages; `parameters` over `params`, null as empty.
        assert!(
            text.contains("step one from parameters\nnever printed\nrun [] from parameters\n"),
            "{text}"
        );
    }

    #[test]
    fn a_failed_install_raises_and_no_run_step_runs() {
        let raised = |text: &str| {
            text.lines()
                .find_map(|line| match Signal::find(line) {
                    Some(Ok(Signal::TestRaise { message })) => Some(message),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("no raise in {text}"))
        };
        let definition = from_yaml("i.yaml", INSTALLING).unwrap();
        let script_with = |skip| script(&definition, &BTreeMap::new(), "0_i", skip);

        // No package manager at all.
        let bin = tempfile::tempdir().unwrap();
        let (status, text) = run_on_target(&script_with(SkipInstall::default()), bin.path());
        assert_eq!(status, INSTALL_FAILED, "{text}");
        assert_eq!(
            raised(&text),
            "installing: install.deps: the target has no package manager to install hdparm \
             libfoo-dev with (looked for apt-get, dnf, yum, opkg, apk, pacman, zypper)"
        );
        assert!(!text.contains("run ["), "{text}");

        // A package manager that fails.
        fake_manager(bin.path(), "apk", 3);
        let (status, text) = run_on_target(&script_with(SkipInstall::default()), bin.path());
        assert_eq!(status, INSTALL_FAILED, "{text}");
        assert_eq!(
            raised(&text),
            "installing: install.deps: installing hdparm libfoo-dev with apk failed (exit 3)"
        );

        // Deps skipped: the steps run and the first failing one fails the install.
        let skip_deps = SkipInstall {
            deps: true,
            ..SkipInstall::default()
        };
        let (status, text) = run_on_target(&script_with(skip_deps), bin.path());
        assert_eq!(status, INSTALL_FAILED, "{text}");
        assert_eq!(raised(&text), "installing: install.steps failed (exit 1)");
        assert!(
            text.contains("step one") && !text.contains("never printed"),
            "{text}"
        );

        // Everything skipped: straight to the run steps.
        let skip_all = SkipInstall {
            repos: true,
            deps: true,
            steps: true,
        };
        let (status, text) = run_on_target(&script_with(skip_all), bin.path());
        assert_eq!(status, 0, "{text}");
        assert!(
            !text.contains("step one") && text.contains("run []"),
            "{text}"
        );
    }

    #[test]
    fn git_repos_read_their_branch_destination_and_skip_from_parameters() {
        let yaml = "metadata: {name: p}\nrun: {steps: ['true']}\ninstall:\n  \
                    git-repos:\n  - {url: 'git://example.org/odp.git', branch: ODP_BRANCH, \
                    destination: odp}\n  - {url: 'git://example.org/extra.git', \
                    skip_by_default: SKIP_EXTRA}\n";
        let definition = from_yaml("p.yaml", yaml).unwrap();
        let repos = &definition.install.as_ref().unwrap().git_repos;
        let params: BTreeMap<String, String> = [
            ("ODP_BRANCH".to_string(), "v1.2".to_string()),
            ("SKIP_EXTRA".to_string(), "True".to_string()),
        ]
        .into();
        let Some(GitRepo::Detailed {
            branch,
            destination,
            ..
        }) = resolve_git_repo(&repos[0], &params)
        else {
            panic!("odp left out");
        };
        // A parameter's value, or the word itself when no parameter has that name.
        assert_eq!(
            (branch.as_deref(), destination.as_deref()),
            (Some("v1.2"), Some("odp"))
        );
        assert_eq!(resolve_git_repo(&repos[1], &params), None);
        let keep: BTreeMap<String, String> =
            [("SKIP_EXTRA".to_string(), "false".to_string())].into();
        assert!(resolve_git_repo(&repos[1], &keep).is_some());
    }

    #[test]
    fn bzr_repositories_are_branched_into_their_name() {
        let yaml = "metadata: {name: r}\nrun: {steps: ['true']}\ninstall:\n  \
                    bzr-repos: ['lp:tools', 'file:///srv/bzr/helpers/', 'lp:..']\n";
        let definition = from_yaml("r.yaml", yaml).unwrap();
        let install = definition.install.as_ref().unwrap();
        assert_eq!(install_bzr_dir(&install.bzr_repos[0]).unwrap(), "tools");
        assert_eq!(install_bzr_dir(&install.bzr_repos[1]).unwrap(), "helpers");
        let err = install_bzr_dir(&install.bzr_repos[2]).unwrap_err();
        assert!(err.starts_with("install.bzr-repos: lp:..:"), "{err}");
    }

    #[test]
    fn install_git_repos_are_fetched_into_their_destination_or_name() {
        let yaml = "metadata: {name: g}\nrun: {steps: ['true']}\ninstall:\n  \
                    git-repos:\n  - 'https://example.org/tools/a.git'\n  \
                    - {url: 'git://example.org/b', branch: main, destination: sub/b2}\n  \
                    - {url: 'file:///srv/c/', destination: '../out'}\n";
        let definition = from_yaml("g.yaml", yaml).unwrap();
        let repos = &definition.install.as_ref().unwrap().git_repos;
        assert_eq!(install_repo_dir(&repos[0]).unwrap(), "a");
        assert_eq!(install_repo_dir(&repos[1]).unwrap(), "sub/b2");
        let err = install_repo_dir(&repos[2]).unwrap_err();
        assert!(err.contains("not a directory inside"), "{err}");
        assert_eq!(
            install_repo_dir(&GitRepo::Url("file:///srv/c/".into())).unwrap(),
            "c"
        );
    }

    #[test]
    fn params_in_lavas_early_list_form_are_parameters() {
        let yaml = "metadata: {name: p}\nparams: ['A=x y', 'B=-v1', 'C=a=b']\n\
                    run: {steps: ['echo \"[$A] [$B] [$C]\"']}\n";
        let definition = from_yaml("p.yaml", yaml).unwrap();
        let script = script(&definition, &BTreeMap::new(), "0_p", SkipInstall::default());
        let bin = tempfile::tempdir().unwrap();
        let (_, text) = run_on_target(&script, bin.path());
        assert!(text.contains("[x y] [-v1] [a=b]\n"), "{text}");
    }

    #[test]
    fn a_python_pattern_with_lookahead_reads_results() {
        let yaml = "metadata: {name: ltp}\nrun: {steps: ['true']}\nparse:\n  \
                    pattern: '^(?!.+ED)(?P<test_case_id>\\w+)\\s+(?P<result>PASS|FAIL|CONF)\\s+\\d+'\n  \
                    fixupdict: {CONF: skip}\n";
        let definition = from_yaml("ltp.yaml", yaml).unwrap();
        let parser = ResultParser::new(Some(&definition)).unwrap();
        let read: Vec<(String, TestResult)> = [
            "abs01 PASS 0",
            "abs02 CONF 32",
            "abs03 FAIL 1 SKIPPED",
            "abs04 FAIL 1",
        ]
        .iter()
        .filter_map(|l| parser.line(l))
        .map(|r| (r.name, r.result))
        .collect();
        assert_eq!(
            read,
            [
                ("abs01".to_string(), TestResult::Pass),
                ("abs02".to_string(), TestResult::Skip),
                ("abs04".to_string(), TestResult::Fail),
            ]
        );
    }
}
