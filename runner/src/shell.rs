//! One test shell on one node's console: the script is started, its output is logged
//! line by line, MultiNode calls printed as console markers are answered through the
//! coordinator (as that node), results are read as they are reported, and the shell's
//! end is recognised by its exit marker.
//!
//! The same loop serves a host (the script on an SSH pty) and a VM (the script typed
//! into its serial console): all it needs is a [`Console`] and the node's [`Relay`].

use std::time::Duration;

use base64::prelude::{BASE64_STANDARD, Engine as _};
use coordinator::relay::Relay;
use proto::markers::Scanner;
use proto::signal::{ShellDone, Signal};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::joblog::{JobLog, Level};
use crate::testdef::{CaseResult, ResultParser};
use hostctl::console::{Console, ConsoleError};

/// The command that runs `script` on a shell and prints the end marker
/// ([`ShellDone`]: the script's exit status; the command's own echo never matches).
pub fn run_command(script: &str) -> String {
    format!("sh {script}; {}", ShellDone::echo())
}

/// The largest file a test shell may attach; the helpers refuse bigger ones before
/// sending them (`LAVA_ATTACH_MAX_BYTES`), and the dispatcher drops what passes it.
pub const MAX_ATTACHMENT_BYTES: u64 = 1024 * 1024;

/// The most one test shell may attach in all: past it, attachments are dropped.
pub const MAX_SHELL_ATTACHMENT_BYTES: u64 = 16 * 1024 * 1024;

/// A file a test shell attached, with what it was attached to.
#[derive(Debug, Clone, PartialEq)]
pub struct AttachedFile {
    pub name: String,
    /// The test case; `None`: the definition's run.
    pub case: Option<String>,
    pub mimetype: Option<String>,
    pub bytes: Vec<u8>,
}

/// An attachment being read off the console: its header, and its base64 so far.
struct Receiving {
    header: proto::signal::Attachment,
    base64: String,
    /// Over a limit: read to its end and dropped.
    dropped: bool,
}

/// One test definition of the shell: its run id (the script's start and end markers
/// carry it), its name, and how its results are read.
pub struct Definition {
    pub run_id: String,
    pub name: String,
    pub parser: ResultParser,
}

/// The results one definition reported.
#[derive(Debug, Clone, PartialEq)]
pub struct DefinitionResults {
    pub name: String,
    pub cases: Vec<CaseResult>,
    pub attachments: Vec<AttachedFile>,
    /// Whether its run reached its end marker (a definition whose steps killed the
    /// shell did not).
    pub finished: bool,
}

/// How a test shell ended.
#[derive(Debug)]
pub struct ShellOutcome {
    pub results: Vec<DefinitionResults>,
    /// The script's exit status.
    pub exit_status: i32,
    /// MultiNode calls that failed at the coordinator (the node was told `nack`).
    pub multinode_errors: Vec<String>,
    /// The first message the shell raised (`TESTRAISE`), if it raised.
    pub raised: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error("the test shell did not finish within {after:?}")]
    Timeout { after: Duration },
    #[error("the console failed during the test shell: {0}")]
    Console(#[from] ConsoleError),
}

/// Drives a started test shell to its end marker, within `timeout`.
pub async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    console: &mut Console<S>,
    relay: &mut Relay,
    definitions: &[Definition],
    timeout: Duration,
    log: &JobLog,
    node: &str,
) -> Result<ShellOutcome, ShellError> {
    let deadline = Instant::now() + timeout;
    let mut scanner = Scanner::new();
    let mut results: Vec<DefinitionResults> = definitions
        .iter()
        .map(|d| DefinitionResults {
            name: d.name.clone(),
            cases: Vec::new(),
            attachments: Vec::new(),
            finished: false,
        })
        .collect();
    let mut receiving: Option<Receiving> = None;
    let mut attached_bytes = 0u64;
    let mut multinode_errors = Vec::new();
    let mut raised = None;
    let mut current: Option<usize> = None;
    loop {
        let lines = match console.read_lines(deadline).await {
            Ok(lines) => lines,
            Err(ConsoleError::Timeout { .. }) => {
                return Err(ShellError::Timeout { after: timeout });
            }
            Err(err) => return Err(err.into()),
        };
        for line in lines {
            if let Some(file) = receiving.as_mut() {
                // The attachment's base64 lines, up to its end marker. Anything else
                // (the shell's end, a kernel message, a sender killed mid-file) ends
                // it unfinished and is read as any line is.
                let text = line.trim();
                if matches!(Signal::find(&line), Some(Ok(Signal::AttachEnd { .. }))) {
                    if let Some(file) = receiving.take().filter(|f| !f.dropped) {
                        attach(file, current, &mut results, &mut attached_bytes, log, node);
                    }
                    continue;
                }
                if is_base64_line(text) {
                    if !file.dropped
                        && file.base64.len() + text.len() <= base64_len(file.header.size)
                    {
                        file.base64.push_str(text);
                    } else if !file.dropped {
                        file.dropped = true;
                        log.line(
                            Level::Warning,
                            Some(node),
                            format!(
                                "attachment {} is larger than it said: dropped",
                                file.header.name
                            ),
                        );
                    }
                    continue;
                }
                log.line(
                    Level::Warning,
                    Some(node),
                    format!(
                        "attachment {} dropped: it ended before its end marker",
                        file.header.name
                    ),
                );
                receiving = None;
            }
            log.line(Level::Target, Some(node), line.as_str());
            if let Some(done) = ShellDone::find(&line) {
                return Ok(ShellOutcome {
                    results,
                    exit_status: done.status,
                    multinode_errors,
                    raised,
                });
            }
            match Signal::find(&line) {
                Some(Ok(Signal::StartRun { run_id, .. })) => {
                    if let Some(index) = definition(&run_id, definitions) {
                        current = Some(index);
                        continue;
                    }
                }
                Some(Ok(Signal::EndRun { run_id, .. })) => {
                    if let Some(index) = definition(&run_id, definitions) {
                        if let Some(entry) = results.get_mut(index) {
                            entry.finished = true;
                        }
                        current = None;
                        continue;
                    }
                }
                Some(Ok(Signal::Attach(header))) => {
                    let over = if header.size > MAX_ATTACHMENT_BYTES {
                        Some(format!(
                            "more than the {MAX_ATTACHMENT_BYTES} bytes an attachment may have"
                        ))
                    } else if attached_bytes + header.size > MAX_SHELL_ATTACHMENT_BYTES {
                        Some(format!(
                            "past the {MAX_SHELL_ATTACHMENT_BYTES} bytes a test shell may attach"
                        ))
                    } else {
                        None
                    };
                    if let Some(why) = &over {
                        log.line(
                            Level::Warning,
                            Some(node),
                            format!(
                                "attachment {} ({} bytes) dropped: {why}",
                                header.name, header.size
                            ),
                        );
                    }
                    receiving = Some(Receiving {
                        header,
                        base64: String::new(),
                        dropped: over.is_some(),
                    });
                    continue;
                }
                Some(Ok(Signal::TestRaise { message })) => {
                    log.line(Level::Error, Some(node), format!("raised: {message}"));
                    raised.get_or_insert(message);
                    continue;
                }
                _ => {}
            }
            for call in scanner.feed(format!("{line}\n").as_bytes()) {
                let call = match call {
                    Ok(call) => call,
                    Err(err) => {
                        log.line(
                            Level::Warning,
                            Some(node),
                            format!("bad MultiNode call: {err}"),
                        );
                        continue;
                    }
                };
                log.line(
                    Level::Debug,
                    Some(node),
                    format!("MultiNode: LAVA_{} {}", call.api(), call.message_id()),
                );
                match relay.answer(&call).await {
                    Ok(Some(reply)) => {
                        if reply.contains(" nack") {
                            multinode_errors.push(reply.clone());
                            log.line(Level::Warning, Some(node), format!("MultiNode: {reply}"));
                        }
                        console.send_line(&reply).await?;
                    }
                    Ok(None) => {}
                    Err(err) => {
                        let message = format!("MultiNode LAVA_{}: {err}", call.api());
                        log.line(Level::Error, Some(node), message.as_str());
                        multinode_errors.push(message);
                    }
                }
            }
            let Some(index) = current else { continue };
            if let Some(case) = definitions[index].parser.line(&line) {
                log.line(
                    Level::Results,
                    Some(node),
                    format!(
                        "{}.{} -- {:?}",
                        definitions[index].name, case.name, case.result
                    ),
                );
                results[index].cases.push(case);
            }
        }
    }
}

/// Whether a console line is one line of base64 (what an attachment is sent as).
fn is_base64_line(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}

/// Base64's length for `bytes` bytes.
fn base64_len(bytes: u64) -> usize {
    usize::try_from(bytes.div_ceil(3) * 4).unwrap_or(usize::MAX)
}

/// Decodes a received attachment and keeps it with the definition that runs.
fn attach(
    file: Receiving,
    current: Option<usize>,
    results: &mut [DefinitionResults],
    attached_bytes: &mut u64,
    log: &JobLog,
    node: &str,
) {
    let name = file.header.name.clone();
    let problem = match BASE64_STANDARD.decode(file.base64.as_bytes()) {
        Err(err) => Some(format!("its base64 does not decode: {err}")),
        Ok(bytes) if bytes.len() as u64 != file.header.size => Some(format!(
            "{} bytes arrived of the {} it announced",
            bytes.len(),
            file.header.size
        )),
        Ok(bytes) => match current.and_then(|i| results.get_mut(i)) {
            None => Some("it came outside any test definition's run".to_string()),
            Some(definition) => {
                *attached_bytes += bytes.len() as u64;
                log.line(
                    Level::Info,
                    Some(node),
                    format!("attached {name} ({} bytes)", bytes.len()),
                );
                definition.attachments.push(AttachedFile {
                    name: file.header.name,
                    case: file.header.case,
                    mimetype: file.header.mimetype,
                    bytes,
                });
                None
            }
        },
    };
    if let Some(problem) = problem {
        log.line(
            Level::Warning,
            Some(node),
            format!("attachment {name} dropped: {problem}"),
        );
    }
}

/// Which definition a run signal names.
fn definition(run_id: &str, definitions: &[Definition]) -> Option<usize> {
    definitions.iter().position(|d| d.run_id == run_id)
}
