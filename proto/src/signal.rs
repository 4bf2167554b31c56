//! LAVA's test shell signals: the one-line markers a test shell prints on its console
//! and the dispatcher reads back, `<LAVA_SIGNAL_NAME params>`.
//!
//! | signal | printed by | form |
//! | --- | --- | --- |
//! | [`Signal::StartRun`], [`Signal::EndRun`] | the script of one test definition | `<LAVA_SIGNAL_STARTRUN run_id [uuid]>` |
//! | [`Signal::StartTc`], [`Signal::EndTc`] | `lava-test-case NAME --shell ...` | `<LAVA_SIGNAL_STARTTC name>` |
//! | [`Signal::TestCase`] | `lava-test-case`, every MultiNode command | `<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=name RESULT=pass [MEASUREMENT=m] [UNITS=u]>` |
//! | [`Signal::TestReference`] | `lava-test-reference` | `<LAVA_SIGNAL_TESTREFERENCE name result url>` |
//! | [`Signal::TestSetStart`], [`Signal::TestSetStop`] | `lava-test-set` | `<LAVA_SIGNAL_TESTSET START name>`, `<LAVA_SIGNAL_TESTSET STOP>` |
//! | [`Signal::TestRaise`] | `lava-test-raise` | `<LAVA_SIGNAL_TESTRAISE message ...>` |
//! | [`Signal::Attach`], [`Signal::AttachEnd`] | `lava-test-run-attach`, `lava-test-case-attach` | `<LAVA_SIGNAL_ATTACH NAME=file SIZE=bytes [CASE=name] [MIMETYPE=type]>`, base64 lines, `<LAVA_SIGNAL_ATTACHEND NAME=file>` |
//!
//! Read as LAVA reads them: a marker may stand anywhere in a line (serial consoles
//! interleave kernel messages), its parameters are split on white space, and the
//! `KEY=value` parameters of `TESTCASE` come in any order, keys in any case, an empty
//! value counting as absent (older `lava-test-case` scripts print `UNITS=`).
//!
//! LAVA copied attachments off the device's file system; a node reached only through its
//! console sends them through it instead: `ATTACH` and `ATTACHEND` are this project's,
//! with the file's bytes as base64 lines between them.
//!
//! Besides LAVA's signals, [`ShellDone`] is this project's end-of-shell marker,
//! `<LAVA_TEST_SHELL_DONE status>`: the dispatcher types [`ShellDone::echo`] after the
//! script and reads the script's exit status back.
//!
//! The MultiNode calls a shell makes through its console (`<LAVA_MULTI_NODE> <LAVA_SEND
//! ...>`) are another grammar, with replies typed back: [`crate::markers`].

use std::fmt;
use std::str::FromStr;

/// What every signal starts with.
pub const OPEN: &str = "<LAVA_SIGNAL_";

/// A test case's result: LAVA's four words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Pass,
    Fail,
    Skip,
    Unknown,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Pass,
        Outcome::Fail,
        Outcome::Skip,
        Outcome::Unknown,
    ];

    /// The word as LAVA writes it: `pass`, `fail`, `skip`, `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Skip => "skip",
            Outcome::Unknown => "unknown",
        }
    }

    /// `pass` for a success, `fail` otherwise.
    pub fn of(success: bool) -> Self {
        if success {
            Outcome::Pass
        } else {
            Outcome::Fail
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Outcome {
    type Err = SignalError;

    /// One of the four words, in lower case (as LAVA requires).
    fn from_str(text: &str) -> Result<Self, SignalError> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == text)
            .ok_or_else(|| SignalError::BadResult(text.to_string()))
    }
}

/// One result, as `lava-test-case` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestCase {
    pub id: String,
    pub result: Outcome,
    /// As printed; LAVA requires a number here, which the reader checks.
    pub measurement: Option<String>,
    pub units: Option<String>,
}

impl TestCase {
    /// A result with no measurement.
    pub fn new(id: impl Into<String>, result: Outcome) -> Self {
        Self {
            id: id.into(),
            result,
            measurement: None,
            units: None,
        }
    }
}

/// One `<LAVA_SIGNAL_...>` marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// A test definition's run begins. LAVA adds the definition's uuid; this project's
    /// scripts print the run id alone.
    StartRun {
        run_id: String,
        uuid: Option<String>,
    },
    EndRun {
        run_id: String,
        uuid: Option<String>,
    },
    /// `lava-test-case NAME --shell ...` starts its command.
    StartTc {
        id: String,
    },
    EndTc {
        id: String,
    },
    TestCase(TestCase),
    TestReference {
        id: String,
        result: Outcome,
        reference: String,
    },
    TestSetStart {
        name: String,
    },
    TestSetStop,
    /// The shell gives up: the job ends with this message.
    TestRaise {
        message: String,
    },
    /// A file follows as base64 lines, up to [`Signal::AttachEnd`]: attached to the
    /// test case `case`, or to the definition's run when there is none.
    Attach(Attachment),
    AttachEnd {
        name: String,
    },
}

/// What an attachment's header says of the file that follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The file's name (its base name, a [`is_word`]).
    pub name: String,
    /// Its length in bytes, before base64.
    pub size: u64,
    pub case: Option<String>,
    pub mimetype: Option<String>,
}

/// Why a marker could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    #[error("not a signal: {0:?}")]
    NotASignal(String),
    #[error("unknown signal LAVA_SIGNAL_{0}")]
    Unknown(String),
    #[error("LAVA_SIGNAL_{signal}: {problem}")]
    Malformed {
        signal: &'static str,
        problem: String,
    },
    #[error("result {0:?} is not pass, fail, skip or unknown")]
    BadResult(String),
}

/// Whether `text` can be one parameter of a signal (a test case, set or run name, a
/// result, a measurement, units): not empty, no white space, no `<` or `>`. LAVA's rule
/// for names; what the node agent checks before it prints one.
pub fn is_word(text: &str) -> bool {
    !text.is_empty()
        && !text
            .chars()
            .any(|c| c.is_whitespace() || c == '<' || c == '>')
}

impl Signal {
    /// The part after [`OPEN`]: `STARTRUN`, `TESTCASE`, ...
    pub fn name(&self) -> &'static str {
        match self {
            Signal::StartRun { .. } => "STARTRUN",
            Signal::EndRun { .. } => "ENDRUN",
            Signal::StartTc { .. } => "STARTTC",
            Signal::EndTc { .. } => "ENDTC",
            Signal::TestCase(_) => "TESTCASE",
            Signal::TestReference { .. } => "TESTREFERENCE",
            Signal::TestSetStart { .. } | Signal::TestSetStop => "TESTSET",
            Signal::TestRaise { .. } => "TESTRAISE",
            Signal::Attach(_) => "ATTACH",
            Signal::AttachEnd { .. } => "ATTACHEND",
        }
    }

    /// The first signal in a console line, wherever it stands in it; `None` when the
    /// line holds no complete marker.
    pub fn find(line: &str) -> Option<Result<Signal, SignalError>> {
        let start = line.find(OPEN)?;
        let rest = &line[start + OPEN.len()..];
        let end = rest.find('>')?;
        Some(parse_body(&rest[..end]))
    }
}

/// Writes the signal as one line, without the newline. Parameters are written as they
/// are (callers check them with [`is_word`]), except a raise's message, which is free
/// text: `>` becomes `)` and line breaks and other control characters become spaces, so
/// the marker stays one line and ends where it should.
impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{OPEN}{}", self.name())?;
        match self {
            Signal::StartRun { run_id, uuid } | Signal::EndRun { run_id, uuid } => {
                write!(f, " {run_id}")?;
                if let Some(uuid) = uuid {
                    write!(f, " {uuid}")?;
                }
            }
            Signal::StartTc { id } | Signal::EndTc { id } => write!(f, " {id}")?,
            Signal::TestCase(case) => {
                write!(f, " TEST_CASE_ID={} RESULT={}", case.id, case.result)?;
                if let Some(measurement) = &case.measurement {
                    write!(f, " MEASUREMENT={measurement}")?;
                }
                if let Some(units) = &case.units {
                    write!(f, " UNITS={units}")?;
                }
            }
            Signal::TestReference {
                id,
                result,
                reference,
            } => write!(f, " {id} {result} {reference}")?,
            Signal::TestSetStart { name } => write!(f, " START {name}")?,
            Signal::TestSetStop => f.write_str(" STOP")?,
            Signal::TestRaise { message } => {
                let message: String = message
                    .chars()
                    .map(|c| match c {
                        '>' => ')',
                        c if c.is_control() => ' ',
                        c => c,
                    })
                    .collect();
                write!(f, " {message}")?;
            }
            Signal::Attach(attachment) => {
                write!(f, " NAME={} SIZE={}", attachment.name, attachment.size)?;
                if let Some(case) = &attachment.case {
                    write!(f, " CASE={case}")?;
                }
                if let Some(mimetype) = &attachment.mimetype {
                    write!(f, " MIMETYPE={mimetype}")?;
                }
            }
            Signal::AttachEnd { name } => write!(f, " NAME={name}")?,
        }
        f.write_str(">")
    }
}

/// Reads a line that is one marker and nothing else (white space around it aside).
impl FromStr for Signal {
    type Err = SignalError;

    fn from_str(text: &str) -> Result<Self, SignalError> {
        let not_one = || SignalError::NotASignal(text.to_string());
        let body = text
            .trim()
            .strip_prefix(OPEN)
            .and_then(|t| t.strip_suffix('>'))
            .filter(|body| !body.contains('>'))
            .ok_or_else(not_one)?;
        parse_body(body)
    }
}

/// Reads what stands between [`OPEN`] and `>`: the name, then the parameters.
fn parse_body(body: &str) -> Result<Signal, SignalError> {
    let mut words = body.split_whitespace();
    let name = words.next().unwrap_or_default();
    let params: Vec<&str> = words.collect();
    let malformed = |signal: &'static str, problem: &str| SignalError::Malformed {
        signal,
        problem: problem.to_string(),
    };
    let run = |signal: &'static str| match params.as_slice() {
        [run_id] => Ok((run_id.to_string(), None)),
        [run_id, uuid] => Ok((run_id.to_string(), Some(uuid.to_string()))),
        _ => Err(malformed(signal, "expected a run id and an optional uuid")),
    };
    let case_id = |signal: &'static str| match params.as_slice() {
        [id] => Ok(id.to_string()),
        _ => Err(malformed(signal, "expected one test case name")),
    };
    match name {
        "STARTRUN" => run("STARTRUN").map(|(run_id, uuid)| Signal::StartRun { run_id, uuid }),
        "ENDRUN" => run("ENDRUN").map(|(run_id, uuid)| Signal::EndRun { run_id, uuid }),
        "STARTTC" => case_id("STARTTC").map(|id| Signal::StartTc { id }),
        "ENDTC" => case_id("ENDTC").map(|id| Signal::EndTc { id }),
        "TESTCASE" => test_case(&params).map(Signal::TestCase),
        "TESTREFERENCE" => match params.as_slice() {
            [id, result, reference] => Ok(Signal::TestReference {
                id: id.to_string(),
                result: result.parse()?,
                reference: reference.to_string(),
            }),
            _ => Err(malformed(
                "TESTREFERENCE",
                "expected a test case name, a result and a URL",
            )),
        },
        "TESTSET" => match params.as_slice() {
            ["START", name] => Ok(Signal::TestSetStart {
                name: name.to_string(),
            }),
            ["STOP"] => Ok(Signal::TestSetStop),
            _ => Err(malformed("TESTSET", "expected START <name> or STOP")),
        },
        "TESTRAISE" if !params.is_empty() => Ok(Signal::TestRaise {
            message: params.join(" "),
        }),
        "TESTRAISE" => Err(malformed("TESTRAISE", "no message")),
        "ATTACH" => attachment(&params).map(Signal::Attach),
        "ATTACHEND" => match params.as_slice() {
            [param] => match param.split_once('=') {
                Some(("NAME", name)) if !name.is_empty() => Ok(Signal::AttachEnd {
                    name: name.to_string(),
                }),
                _ => Err(malformed("ATTACHEND", "expected NAME=file")),
            },
            _ => Err(malformed("ATTACHEND", "expected NAME=file")),
        },
        other => Err(SignalError::Unknown(other.to_string())),
    }
}

/// What an attachment's name may be: what the helpers make of a file's base name
/// (`A-Za-z0-9._+-`), never starting with a dot. It becomes a file name and part of a
/// URL on the dispatcher's side.
pub fn is_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
}

/// `NAME=... SIZE=... [CASE=...] [MIMETYPE=...]`, in any order.
fn attachment(params: &[&str]) -> Result<Attachment, SignalError> {
    let malformed = |problem: String| SignalError::Malformed {
        signal: "ATTACH",
        problem,
    };
    let (mut name, mut size, mut case, mut mimetype) = (None, None, None, None);
    for param in params {
        let (key, value) = param
            .split_once('=')
            .ok_or_else(|| malformed(format!("parameter {param:?} is not KEY=value")))?;
        let value = Some(value).filter(|v| !v.is_empty()).map(str::to_string);
        match key {
            "NAME" => name = value,
            "SIZE" => size = value,
            "CASE" => case = value,
            "MIMETYPE" => mimetype = value,
            _ => return Err(malformed(format!("unknown parameter {key:?}"))),
        }
    }
    let size = size.ok_or_else(|| malformed("no SIZE".into()))?;
    let name = name.ok_or_else(|| malformed("no NAME".into()))?;
    if !is_file_name(&name) {
        return Err(malformed(format!(
            "NAME {name:?} is not a file name of A-Z a-z 0-9 . _ + - (not starting with '.')"
        )));
    }
    Ok(Attachment {
        name,
        size: size
            .parse()
            .map_err(|_| malformed(format!("SIZE {size:?} is not a number of bytes")))?,
        case,
        mimetype,
    })
}

/// `TEST_CASE_ID=... RESULT=... [MEASUREMENT=...] [UNITS=...]`, in any order.
fn test_case(params: &[&str]) -> Result<TestCase, SignalError> {
    let malformed = |problem: String| SignalError::Malformed {
        signal: "TESTCASE",
        problem,
    };
    let (mut id, mut result, mut measurement, mut units) = (None, None, None, None);
    for param in params {
        let (key, value) = param
            .split_once('=')
            .ok_or_else(|| malformed(format!("parameter {param:?} is not KEY=value")))?;
        let slot = match key.to_ascii_uppercase().as_str() {
            "TEST_CASE_ID" => &mut id,
            "RESULT" => &mut result,
            "MEASUREMENT" => &mut measurement,
            "UNITS" => &mut units,
            // LAVA's later additions (REFERENCE, ...) are read past.
            _ => continue,
        };
        *slot = Some(value).filter(|v| !v.is_empty()).map(str::to_string);
    }
    Ok(TestCase {
        id: id.ok_or_else(|| malformed("no TEST_CASE_ID".into()))?,
        result: result
            .ok_or_else(|| malformed("no RESULT".into()))?
            .parse()?,
        measurement,
        units,
    })
}

/// The marker a test shell ends with: the script's exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShellDone {
    pub status: i32,
}

impl ShellDone {
    /// What the marker starts with.
    pub const OPEN: &str = "<LAVA_TEST_SHELL_DONE ";

    /// The shell command that prints the marker for the command before it. Its own echo
    /// on a console shows `$?`, not digits, so it is never read as the marker.
    pub fn echo() -> String {
        format!("echo \"{}$?>\"", Self::OPEN)
    }

    /// The marker in a console line, wherever it stands in it.
    pub fn find(line: &str) -> Option<ShellDone> {
        let start = line.find(Self::OPEN)?;
        let rest = &line[start + Self::OPEN.len()..];
        let (digits, _) = rest.split_once('>')?;
        let unsigned = digits.strip_prefix('-').unwrap_or(digits);
        if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(ShellDone {
            // Digits too many for an i32 are still the end of the shell.
            status: digits.parse().unwrap_or(-1),
        })
    }
}

impl fmt::Display for ShellDone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}>", Self::OPEN, self.status)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests: a panic is a failure report.

    use super::*;

    fn every_variant() -> Vec<Signal> {
        vec![
            Signal::StartRun {
                run_id: "0.1_smoke".into(),
                uuid: None,
            },
            Signal::StartRun {
                run_id: "1_smoke-tests".into(),
                uuid: Some("8a3f2c1e-5b7d-4e0a-9c6f-0123456789ab".into()),
            },
            Signal::EndRun {
                run_id: "0.1_smoke".into(),
                uuid: None,
            },
            Signal::EndRun {
                run_id: "1_smoke-tests".into(),
                uuid: Some("8a3f".into()),
            },
            Signal::StartTc { id: "ping".into() },
            Signal::EndTc { id: "ping".into() },
            Signal::TestCase(TestCase::new("boot", Outcome::Pass)),
            Signal::TestCase(TestCase {
                id: "latency".into(),
                result: Outcome::Skip,
                measurement: Some("3.5".into()),
                units: Some("ms".into()),
            }),
            Signal::TestCase(TestCase {
                id: "count".into(),
                result: Outcome::Unknown,
                measurement: Some("12".into()),
                units: None,
            }),
            Signal::TestCase(TestCase::new("multinode-sync-done", Outcome::Fail)),
            Signal::TestReference {
                id: "bug-1".into(),
                result: Outcome::Fail,
                reference: "https://bugs.example.org/1?x=1".into(),
            },
            Signal::TestSetStart {
                name: "network".into(),
            },
            Signal::TestSetStop,
            Signal::TestRaise {
                message: "the board did not answer".into(),
            },
            Signal::Attach(Attachment {
                name: "dmesg.txt".into(),
                size: 1234,
                case: Some("boot".into()),
                mimetype: Some("text/plain".into()),
            }),
            Signal::Attach(Attachment {
                name: "core".into(),
                size: 0,
                case: None,
                mimetype: None,
            }),
            Signal::AttachEnd {
                name: "dmesg.txt".into(),
            },
        ]
    }

    #[test]
    fn an_attachment_name_that_is_not_a_plain_file_name_is_refused() {
        for bad in ["../job.json", ".hidden", "a/b", "a\"b", "x;y", "%2e"] {
            let line = format!("<LAVA_SIGNAL_ATTACH NAME={bad} SIZE=1>");
            assert!(
                matches!(Signal::find(&line), Some(Err(_))),
                "{bad} was accepted"
            );
        }
        assert!(matches!(
            Signal::find("<LAVA_SIGNAL_ATTACH NAME=dmesg-1.txt SIZE=1>"),
            Some(Ok(_))
        ));
    }

    #[test]
    fn every_variant_reads_back_as_written() {
        for signal in every_variant() {
            let line = signal.to_string();
            assert!(line.starts_with(OPEN) && line.ends_with('>'), "{line}");
            assert_eq!(line.parse::<Signal>(), Ok(signal.clone()), "{line}");
            let in_a_line = format!("[   12.5] noise {line} and more");
            assert_eq!(Signal::find(&in_a_line), Some(Ok(signal)), "{in_a_line}");
        }
        for outcome in Outcome::ALL {
            assert_eq!(outcome.to_string().parse(), Ok(outcome));
        }
    }

    #[test]
    fn the_forms_lava_shells_print_are_read() {
        let read = |line: &str| Signal::find(line).unwrap().unwrap();
        // lava-test-runner's run markers carry the definition's uuid.
        assert_eq!(
            read("<LAVA_SIGNAL_STARTRUN 0_smoke-tests 5c0bb5aa-8b43-4ef7-92a3-e0a3ab4f3a3b>"),
            Signal::StartRun {
                run_id: "0_smoke-tests".into(),
                uuid: Some("5c0bb5aa-8b43-4ef7-92a3-e0a3ab4f3a3b".into()),
            }
        );
        // lava-test-case --result: RESULT, then UNITS before MEASUREMENT.
        assert_eq!(
            read(
                "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=linux-posix-pwd RESULT=pass UNITS=s MEASUREMENT=0.02>"
            ),
            Signal::TestCase(TestCase {
                id: "linux-posix-pwd".into(),
                result: Outcome::Pass,
                measurement: Some("0.02".into()),
                units: Some("s".into()),
            })
        );
        // Older scripts print every key, empty ones included.
        assert_eq!(
            read("<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=uname RESULT=fail UNITS= MEASUREMENT=>"),
            Signal::TestCase(TestCase::new("uname", Outcome::Fail))
        );
        // Keys in any case, unknown keys read past (LAVA lower-cases them).
        assert_eq!(
            read("<LAVA_SIGNAL_TESTCASE test_case_id=x result=skip REFERENCE=http://a/b>"),
            Signal::TestCase(TestCase::new("x", Outcome::Skip))
        );
        // lava-test-case --shell.
        assert_eq!(
            read("<LAVA_SIGNAL_STARTTC ping-gateway>"),
            Signal::StartTc {
                id: "ping-gateway".into()
            }
        );
        assert_eq!(
            read("<LAVA_SIGNAL_ENDTC ping-gateway>"),
            Signal::EndTc {
                id: "ping-gateway".into()
            }
        );
        assert_eq!(
            read("<LAVA_SIGNAL_TESTSET START network>"),
            Signal::TestSetStart {
                name: "network".into()
            }
        );
        assert_eq!(read("<LAVA_SIGNAL_TESTSET STOP>"), Signal::TestSetStop);
        assert_eq!(
            read("<LAVA_SIGNAL_TESTRAISE no  network  found>"),
            Signal::TestRaise {
                message: "no network found".into()
            }
        );
        assert_eq!(
            read("<LAVA_SIGNAL_TESTREFERENCE ltp-fail fail https://example.org/ltp.log>"),
            Signal::TestReference {
                id: "ltp-fail".into(),
                result: Outcome::Fail,
                reference: "https://example.org/ltp.log".into(),
            }
        );
        // A kernel message and the shell's \r around a marker on a serial console.
        assert_eq!(
            read("[ 3.1] eth0: link up<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=boot RESULT=pass>\r"),
            Signal::TestCase(TestCase::new("boot", Outcome::Pass))
        );
    }

    #[test]
    fn bad_markers_are_told_apart_from_no_marker() {
        assert_eq!(Signal::find("plain output"), None);
        assert_eq!(
            Signal::find("<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT=pass"),
            None,
            "a marker without its end is no marker"
        );
        let error = |line: &str| Signal::find(line).unwrap().unwrap_err();
        assert_eq!(
            error("<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT=passed>"),
            SignalError::BadResult("passed".into())
        );
        assert_eq!(
            error("<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT=Pass>"),
            SignalError::BadResult("Pass".into())
        );
        assert!(matches!(
            error("<LAVA_SIGNAL_TESTCASE RESULT=pass>"),
            SignalError::Malformed {
                signal: "TESTCASE",
                ..
            }
        ));
        assert!(matches!(
            error("<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT=pass stray>"),
            SignalError::Malformed { .. }
        ));
        assert!(matches!(
            error("<LAVA_SIGNAL_STARTRUN>"),
            SignalError::Malformed { .. }
        ));
        assert!(matches!(
            error("<LAVA_SIGNAL_TESTSET PAUSE>"),
            SignalError::Malformed { .. }
        ));
        assert!(matches!(
            error("<LAVA_SIGNAL_TESTRAISE >"),
            SignalError::Malformed { .. }
        ));
        assert_eq!(
            error("<LAVA_SIGNAL_TESTEVENT started>"),
            SignalError::Unknown("TESTEVENT".into())
        );
        // A whole-line read takes one marker and nothing else.
        assert!(matches!(
            "x <LAVA_SIGNAL_TESTSET STOP>".parse::<Signal>(),
            Err(SignalError::NotASignal(_))
        ));
        assert_eq!(
            "  <LAVA_SIGNAL_TESTSET STOP>\r\n".parse::<Signal>(),
            Ok(Signal::TestSetStop)
        );
    }

    #[test]
    fn a_raise_message_stays_one_marker() {
        let signal = Signal::TestRaise {
            message: "a > b\nc".into(),
        };
        let line = signal.to_string();
        assert_eq!(line, "<LAVA_SIGNAL_TESTRAISE a ) b c>");
        assert_eq!(
            line.parse(),
            Ok(Signal::TestRaise {
                message: "a ) b c".into()
            })
        );
    }

    #[test]
    fn words_are_what_a_parameter_can_hold() {
        assert!(is_word("multinode-sync-ready"));
        assert!(is_word("3.5"));
        for bad in ["", "a b", "a\tb", "a>b", "<a"] {
            assert!(!is_word(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_shell_end_marker_carries_the_exit_status() {
        for status in [0, 1, 127, -1] {
            let line = ShellDone { status }.to_string();
            assert_eq!(ShellDone::find(&line), Some(ShellDone { status }), "{line}");
        }
        assert_eq!(
            ShellDone::find("\r<LAVA_TEST_SHELL_DONE 2>\r"),
            Some(ShellDone { status: 2 })
        );
        // The typed command's echo is not the marker.
        assert_eq!(
            ShellDone::find(&format!("# sh x.sh; {}", ShellDone::echo())),
            None
        );
        assert_eq!(ShellDone::find("<LAVA_TEST_SHELL_DONE >"), None);
        assert_eq!(ShellDone::find("<LAVA_TEST_SHELL_DONE 1"), None);
        assert_eq!(
            ShellDone::find("<LAVA_TEST_SHELL_DONE 99999999999>"),
            Some(ShellDone { status: -1 })
        );
    }
}
