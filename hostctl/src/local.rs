//! Processes on the dispatcher's own machine whose stdio is a console: a `qemu-host`
//! device's qemu, a stand-alone `kvm` device, a board's console command. Each runs in a
//! process group of its own so teardown stops it and everything it started, and only
//! that.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::Join;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::console::{Console, ConsoleLog};

/// A console over a local process's stdin and stdout (stderr goes to the same log).
pub type LocalConsole = Console<Join<ChildStdout, ChildStdin>>;

/// A running local process with its console.
pub struct LocalProcess {
    pub name: String,
    child: Child,
    pub console: LocalConsole,
    qmp_socket: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot start {name} ({program}): {source}")]
    Spawn {
        name: String,
        program: String,
        source: std::io::Error,
    },
    #[error("{name}: {message}")]
    Io { name: String, message: String },
}

impl LocalProcess {
    /// Starts `argv` with its stdio as the console, in a new process group.
    pub fn spawn(
        name: &str,
        argv: &[String],
        log: ConsoleLog,
        qmp_socket: Option<String>,
    ) -> Result<Self, LocalError> {
        let (program, args) = argv.split_first().ok_or_else(|| LocalError::Io {
            name: name.to_string(),
            message: "empty command".into(),
        })?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| LocalError::Spawn {
                name: name.to_string(),
                program: program.clone(),
                source,
            })?;
        let missing = |what: &str| LocalError::Io {
            name: name.to_string(),
            message: format!("no {what}"),
        };
        let stdout = child.stdout.take().ok_or_else(|| missing("stdout"))?;
        let stdin = child.stdin.take().ok_or_else(|| missing("stdin"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            console: Console::new(tokio::io::join(stdout, stdin), log),
            qmp_socket,
        })
    }

    /// Runs a shell command line the same way (a board's console command).
    pub fn spawn_shell(name: &str, command: &str, log: ConsoleLog) -> Result<Self, LocalError> {
        Self::spawn(name, &["sh".into(), "-c".into(), command.into()], log, None)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops it: QMP `quit` when there is a QMP socket, then TERM to its process group,
    /// then KILL after `grace`. Waits until it is gone.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(socket) = &self.qmp_socket
            && let Ok(Ok(stream)) = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::UnixStream::connect(socket),
            )
            .await
        {
            let _ = crate::vm::send_qmp_quit(stream).await;
        }
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let group = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM);
            if tokio::time::timeout(grace, self.child.wait())
                .await
                .is_err()
            {
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            }
            // Whatever else the group started goes too.
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = self.child.wait().await;
            // The group's other members are not our children, so nothing tells us when
            // they are gone: ask until the group is empty (a killed process takes a
            // moment to die), for a bounded time.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while nix::sys::signal::killpg(group, None).is_ok()
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let _ = self.child.wait().await;
        tracing::info!(name = %self.name, "local process stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    #[tokio::test]
    async fn a_local_console_answers_commands_and_stops_with_its_children() {
        let script = "PS1='stub:~# ' exec sh -i 2>&1";
        let mut process = LocalProcess::spawn_shell("stub", script, ConsoleLog::default()).unwrap();
        let prompt = Regex::new(r"stub:~# $").unwrap();
        process
            .console
            .expect(&prompt, Duration::from_secs(10))
            .await
            .unwrap();
        let (out, code) = process
            .console
            .run("echo hello; false", &prompt, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!((out.trim(), code), ("hello", 1));
        // A child the console started is stopped with it.
        let (out, _) = process
            .console
            .run("sleep 600 & echo $!", &prompt, Duration::from_secs(10))
            .await
            .unwrap();
        let child: i32 = out.trim().parse().unwrap();
        // An interactive shell ignores TERM: this also proves the KILL after the grace.
        process.stop(Duration::from_secs(1)).await;
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), None).is_ok()
            && !std::fs::read_to_string(format!("/proc/{child}/stat"))
                .unwrap_or_default()
                .contains(") Z ");
        assert!(!alive, "the console's child {child} outlived it");
    }
}
