//! One test shell on one node's console: the script is started, its output is logged
//! line by line, MultiNode calls printed as console markers are answered through the
//! coordinator (as that node), results are read as they are reported, and the shell's
//! end is recognised by its exit marker.
//!
//! The same loop serves a host (the script on an SSH pty) and a VM (the script typed
//! into its serial console): all it needs is a [`Console`] and the node's [`Relay`].

use std::time::Duration;

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
            finished: false,
        })
        .collect();
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

/// Which definition a run signal names.
fn definition(run_id: &str, definitions: &[Definition]) -> Option<usize> {
    definitions.iter().position(|d| d.run_id == run_id)
}
