//! A command run in a real terminal: a tmux pane (a pty, 200x50, `TERM=screen`), as a
//! person runs the CLI, so what it draws only for terminals (progress, colour) is drawn.
//!
//! Everything the command writes is recorded as it comes (tmux `pipe-pane`) into a file
//! kept under `target/test-artifacts/`, with the pane's last screen beside it. The end
//! is known without polling: the pane's recorder (a shell loop) writes each line out,
//! and on the `EXIT=` line the pane's shell prints after the command, it signals a tmux
//! channel the harness waits on. So the record is whole when the wait returns.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::repo_root;

/// What a command did in the terminal.
pub struct TerminalRun {
    /// Every byte it wrote, escape sequences and redraws included.
    pub raw: String,
    /// The same without escape sequences and carriage returns: each drawn frame of a
    /// progress line is there, one after another.
    pub text: String,
    /// The pane as a person saw it at the end.
    pub screen: String,
    pub exit: Option<i32>,
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Runs `program args` in a fresh tmux server with `env` set; `name` names its
/// records under `target/test-artifacts/` (`NAME.terminal.log`, `NAME.screen.txt`).
pub fn run_in_terminal(
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    name: &str,
) -> TerminalRun {
    let artifacts = repo_root().join("target").join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap_or_else(|e| panic!("{}: {e}", artifacts.display()));
    let record = artifacts.join(format!("{name}.terminal.log"));
    let _ = std::fs::remove_file(&record);
    let socket = format!(
        "lava-tests-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let script = dir.path().join("run.sh");
    let mut text = String::from("#!/bin/sh\n");
    for (key, value) in env {
        text.push_str(&format!("export {key}={}\n", quote(value)));
    }
    // Starts once the recorder is attached ("go"); stays open after the command so
    // the last screen can be taken.
    text.push_str(&format!("tmux -L {socket} wait-for go\n"));
    text.push_str(&quote(&program.display().to_string()));
    for arg in args {
        text.push(' ');
        text.push_str(&quote(arg));
    }
    text.push_str("\necho \"EXIT=$?\"\nexec tmux -L ");
    text.push_str(&socket);
    text.push_str(" wait-for never\n");
    std::fs::write(&script, text).unwrap_or_else(|e| panic!("{}: {e}", script.display()));

    let tmux = |args: &[&str]| {
        let out = Command::new("timeout")
            .arg("1200")
            .arg("tmux")
            // No user configuration, and no colour switches from the caller's
            // environment: the pane is the same on every machine.
            .args(["-f", "/dev/null", "-L", &socket])
            .env_remove("NO_COLOR")
            .env_remove("CLICOLOR")
            .env_remove("CLICOLOR_FORCE")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("tmux {args:?}: {e}"));
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let _server = KillServer(socket.clone());
    tmux(&[
        "new-session",
        "-d",
        "-s",
        "run",
        "-x",
        "200",
        "-y",
        "50",
        &format!("sh {}", quote(&script.display().to_string())),
    ]);
    // A shell loop, not awk: mawk reads its input in blocks, and would sit on the
    // last lines until more came. (`%%`: tmux passes the command through strftime.)
    let recorder = format!(
        "while IFS= read -r line; do printf '%%s\\n' \"$line\" >> {file}; \
         case \"$line\" in *EXIT=*) exec tmux -L {socket} wait-for -S done;; esac; done",
        file = quote(&record.display().to_string())
    );
    tmux(&["pipe-pane", "-t", "run", "-o", &recorder]);
    tmux(&["wait-for", "-S", "go"]);
    tmux(&["wait-for", "done"]);
    let screen = tmux(&["capture-pane", "-p", "-t", "run"]);
    let _ = std::fs::write(artifacts.join(format!("{name}.screen.txt")), &screen);
    let raw = std::fs::read(&record)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_else(|e| panic!("{}: {e}", record.display()));
    let text = strip_escapes(&raw);
    let exit = text
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("EXIT="))
        .and_then(|code| code.parse().ok());
    TerminalRun {
        raw,
        text,
        screen,
        exit,
    }
}

/// Ends the tmux server however the run ended.
struct KillServer(String);

impl Drop for KillServer {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.0, "kill-server"])
            .output();
    }
}

/// Text without CSI/OSC escape sequences and carriage returns.
pub fn strip_escapes(raw: &str) -> String {
    let csi = regex::Regex::new(
        r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-Za-z]|[=>78])",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    csi.replace_all(raw, "").replace('\r', "\n")
}
