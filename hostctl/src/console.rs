//! A device or VM console: every byte logged as it arrives, ANSI escapes stripped for
//! matching (SeaBIOS resets, `ESC[6n` after busybox prompts, bracketed paste), prompt
//! detection by regular expression, commands sent and answered with timeouts, and
//! kernel panics and boot failures recognised as what they are.
//!
//! Works over any byte stream: an SSH pty channel, a local qemu's stdio, a test's
//! in-memory pipe.

use parking_lot::Mutex;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use regex::Regex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Lines that mean the machine will never reach a shell.
const FAILURE_PATTERNS: &[(&str, FailureKind)] = &[
    ("Kernel panic - not syncing", FailureKind::KernelPanic),
    ("VFS: Unable to mount root fs", FailureKind::BootFailure),
    ("No working init found", FailureKind::BootFailure),
    ("can't find /init", FailureKind::BootFailure),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    KernelPanic,
    BootFailure,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("no match for /{pattern}/ within {after:?}; last output: {tail:?}")]
    Timeout {
        pattern: String,
        after: Duration,
        tail: String,
    },
    #[error("kernel panic on the console: {line}")]
    KernelPanic { line: String },
    #[error("boot failure on the console: {line}")]
    BootFailure { line: String },
    #[error("the console closed; last output: {tail:?}")]
    Closed { tail: String },
    /// The login prompt came back after the credentials were typed: they were refused.
    #[error(
        "the login was refused: after the credentials the console showed the login prompt {prompt:?} again; last output: {tail:?}"
    )]
    LoginRefused { prompt: String, tail: String },
    #[error("console I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// The default cap of a raw console log, in bytes (see [`set_max_log_bytes`]).
const DEFAULT_MAX_LOG_BYTES: u64 = 64 * 1024 * 1024;

/// The cap of every raw console log this process writes from now on. A process-wide
/// setting because it is one: the daemon's `max_console_bytes` (or the default for
/// `dispatcher run`), while the logs are opened deep in the runner, per node.
static MAX_LOG_BYTES: AtomicU64 = AtomicU64::new(DEFAULT_MAX_LOG_BYTES);

/// Sets the cap of the raw console logs opened after this call.
pub fn set_max_log_bytes(limit: u64) {
    MAX_LOG_BYTES.store(limit, Ordering::Relaxed);
}

/// Where raw console bytes go as they arrive (a file per node in the job's log
/// directory; memory in tests), up to a cap: a console that never stops talking (a
/// boot loop, a test flooding stdout) must not fill the dispatcher's disk. Past the cap
/// one marker line ends the log; the console itself is still read and matched.
#[derive(Clone)]
pub struct ConsoleLog {
    sink: Arc<Mutex<Sink>>,
}

struct Sink {
    writer: Option<Box<dyn Write + Send>>,
    memory: Vec<u8>,
    written: u64,
    limit: u64,
    full: bool,
}

impl Sink {
    fn put(&mut self, bytes: &[u8]) {
        match self.writer.as_mut() {
            Some(writer) => {
                let _ = writer.write_all(bytes).and_then(|()| writer.flush());
            }
            None => self.memory.extend_from_slice(bytes),
        }
    }
}

impl Default for ConsoleLog {
    /// Kept in memory (tests, or a log file that cannot be opened), capped the same.
    fn default() -> Self {
        Self::new(None, MAX_LOG_BYTES.load(Ordering::Relaxed))
    }
}

impl ConsoleLog {
    fn new(writer: Option<Box<dyn Write + Send>>, limit: u64) -> Self {
        Self {
            sink: Arc::new(Mutex::new(Sink {
                writer,
                memory: Vec::new(),
                written: 0,
                limit,
                full: false,
            })),
        }
    }

    /// Appends to a node's log file (flushed after every chunk, so a crash keeps the log
    /// so far) up to the process's cap ([`set_max_log_bytes`]). The file may already
    /// hold the node's earlier output (each test shell opens it again): the cap counts
    /// what is there, so reopening never buys a node another `max_console_bytes`.
    pub fn appending(file: std::fs::File) -> Self {
        Self::appending_capped(file, MAX_LOG_BYTES.load(Ordering::Relaxed))
    }

    fn appending_capped(file: std::fs::File, limit: u64) -> Self {
        let already = file.metadata().map_or(0, |m| m.len());
        let log = Self::capped(file, limit);
        {
            let mut sink = log.sink.lock();
            sink.written = already;
            // Past the limit, the marker is already in the file.
            sink.full = already > sink.limit;
        }
        log
    }

    /// Logs into `writer`, at most `limit` bytes and then a marker line.
    pub fn capped(writer: impl Write + Send + 'static, limit: u64) -> Self {
        Self::new(Some(Box::new(writer)), limit)
    }

    fn record(&self, bytes: &[u8]) {
        let mut sink = self.sink.lock();
        if sink.full {
            return;
        }
        let room = usize::try_from(sink.limit.saturating_sub(sink.written)).unwrap_or(usize::MAX);
        let kept = &bytes[..bytes.len().min(room)];
        sink.written += kept.len() as u64;
        sink.put(kept);
        if kept.len() < bytes.len() {
            sink.full = true;
            let marker = format!(
                "\n[console log truncated: the limit of {} bytes was reached]\n",
                sink.limit
            );
            sink.put(marker.as_bytes());
        }
    }

    /// What was logged in memory (when not logging to a writer).
    pub fn contents(&self) -> Vec<u8> {
        self.sink.lock().memory.clone()
    }
}

/// Removes terminal escape sequences from a console's bytes arriving in pieces.
///
/// The parsing is `vte`'s (the terminal parser of alacritty), which knows every
/// sequence class real consoles send: CSI (`ESC [ 6 n`, colours, bracketed paste),
/// OSC titles ended by BEL or `ESC \`, DCS strings, and the `ESC (`/`ESC )`
/// character-set designations whose final byte (`B`) a hand-written two-byte rule
/// leaked into the text. It also keeps a UTF-8 character split across reads whole.
/// Printable characters, newlines and tabs are kept; carriage returns, bells and every
/// other control are noise for prompt matching and are dropped.
#[derive(Default)]
pub struct AnsiStripper {
    parser: vte::Parser,
}

impl std::fmt::Debug for AnsiStripper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnsiStripper").finish_non_exhaustive()
    }
}

/// The text a [`vte::Parser`] prints, collected.
struct Printed(String);

impl vte::Perform for Printed {
    fn print(&mut self, c: char) {
        self.0.push(c);
    }

    fn execute(&mut self, byte: u8) {
        if byte == b'\n' || byte == b'\t' {
            self.0.push(char::from(byte));
        }
    }
}

impl AnsiStripper {
    /// The text of `bytes`, escape sequences removed; a sequence or character cut at the
    /// end is completed by the next call.
    pub fn strip(&mut self, bytes: &[u8]) -> String {
        let mut printed = Printed(String::with_capacity(bytes.len()));
        self.parser.advance(&mut printed, bytes);
        printed.0
    }
}

/// What a successful [`Console::expect`] matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// Stripped text before the match.
    pub before: String,
    /// The matched text.
    pub text: String,
}

/// How long a login prompt that came back after the credentials must stand, with no
/// shell prompt after it, to be a refused login.
const LOGIN_AGAIN_GRACE: Duration = Duration::from_secs(3);

/// The last 200 bytes or so of `text` (cut at a character boundary): what an error
/// shows of the console.
fn tail_of(text: &str) -> String {
    let start = text.len().saturating_sub(200);
    let start = (start..=text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    text[start..].to_string()
}

/// How a console logs in once the guest has booted (the lab's type: a device type's
/// default login is one).
pub use lab::ConsoleLogin as Login;

/// `held` then `bytes` with every whole `secret` replaced by `****`, split into what
/// can be read now and the end kept back because it could be the start of `secret`
/// (a guest echoing a password sends it a byte at a time).
fn mask(mut held: Vec<u8>, bytes: &[u8], secret: &[u8]) -> (Vec<u8>, Vec<u8>) {
    held.extend_from_slice(bytes);
    if secret.is_empty() {
        return (held, Vec::new());
    }
    let mut out = Vec::with_capacity(held.len());
    let mut rest = held.as_slice();
    while let Some(at) = rest.windows(secret.len()).position(|w| w == secret) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(b"****");
        rest = &rest[at + secret.len()..];
    }
    let keep = (1..secret.len().min(rest.len() + 1))
        .rev()
        .find(|k| rest.ends_with(&secret[..*k]))
        .unwrap_or(0);
    out.extend_from_slice(&rest[..rest.len() - keep]);
    (out, rest[rest.len() - keep..].to_vec())
}

/// A console over a byte stream.
pub struct Console<S> {
    stream: S,
    log: ConsoleLog,
    stripper: AnsiStripper,
    /// Stripped text not yet consumed by a match.
    pending: String,
    failures: Vec<(Regex, FailureKind)>,
    /// While a login types a password: the password, masked in everything read (the
    /// log, matching, error tails) should the guest echo it, and the bytes read that
    /// could be its beginning, held until the next read tells.
    secret: Option<Vec<u8>>,
    held: Vec<u8>,
}

/// Stripped text kept for matching at most (older text is dropped, not the log).
const MAX_PENDING: usize = 1024 * 1024;

impl<S: AsyncRead + AsyncWrite + Unpin> Console<S> {
    pub fn new(stream: S, log: ConsoleLog) -> Self {
        let failures = FAILURE_PATTERNS
            .iter()
            .filter_map(|(p, kind)| {
                Regex::new(&format!("(?m)^.*{}.*$", regex::escape(p)))
                    .ok()
                    .map(|r| (r, *kind))
            })
            .collect();
        Self {
            stream,
            log,
            stripper: AnsiStripper::default(),
            pending: String::new(),
            failures,
            secret: None,
            held: Vec::new(),
        }
    }

    pub fn log(&self) -> &ConsoleLog {
        &self.log
    }

    /// Waits until `pattern` matches the stripped output, or fails on timeout, panic,
    /// boot failure or a closed console.
    pub async fn expect(
        &mut self,
        pattern: &Regex,
        timeout: Duration,
    ) -> Result<Matched, ConsoleError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = pattern.find(&self.pending) {
                let matched = Matched {
                    before: self.pending[..found.start()].to_string(),
                    text: found.as_str().to_string(),
                };
                self.pending.drain(..found.end());
                return Ok(matched);
            }
            for (failure, kind) in &self.failures {
                if let Some(line) = failure.find(&self.pending) {
                    let line = line.as_str().trim().to_string();
                    return Err(match kind {
                        FailureKind::KernelPanic => ConsoleError::KernelPanic { line },
                        FailureKind::BootFailure => ConsoleError::BootFailure { line },
                    });
                }
            }
            let mut buf = [0u8; 8192];
            let read = match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Err(_) => {
                    return Err(ConsoleError::Timeout {
                        pattern: pattern.as_str().to_string(),
                        after: timeout,
                        tail: self.tail(),
                    });
                }
                Ok(read) => read?,
            };
            if read == 0 {
                return Err(ConsoleError::Closed { tail: self.tail() });
            }
            self.feed(&buf[..read]);
        }
    }

    /// Waits for more output (until `deadline`) and returns every complete line
    /// received so far, stripped; a partial last line (a prompt, a line still being
    /// printed) stays for the next call or for [`Console::expect`]. An empty result
    /// means the read brought no complete line yet.
    pub async fn read_lines(&mut self, deadline: Instant) -> Result<Vec<String>, ConsoleError> {
        if !self.pending.contains('\n') {
            let mut buf = [0u8; 8192];
            let read = match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Err(_) => {
                    return Err(ConsoleError::Timeout {
                        pattern: "a complete line".into(),
                        after: deadline.saturating_duration_since(Instant::now()),
                        tail: self.tail(),
                    });
                }
                Ok(read) => read?,
            };
            if read == 0 {
                return Err(ConsoleError::Closed { tail: self.tail() });
            }
            self.feed(&buf[..read]);
        }
        let Some(end) = self.pending.rfind('\n') else {
            return Ok(Vec::new());
        };
        let lines = self.pending[..end]
            .split('\n')
            .map(str::to_string)
            .collect();
        self.pending.drain(..=end);
        Ok(lines)
    }

    /// Takes the stripped text not yet consumed (a last line without its newline).
    pub fn take_rest(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    fn feed(&mut self, bytes: &[u8]) {
        let masked;
        let bytes = match &self.secret {
            Some(secret) => {
                masked = mask(std::mem::take(&mut self.held), bytes, secret);
                self.held = masked.1;
                &masked.0
            }
            None => bytes,
        };
        self.log.record(bytes);
        let stripped = self.stripper.strip(bytes);
        self.pending.push_str(&stripped);
        if self.pending.len() > MAX_PENDING {
            let cut = self.pending.len() - MAX_PENDING / 2;
            let cut = (cut..self.pending.len())
                .find(|i| self.pending.is_char_boundary(*i))
                .unwrap_or(0);
            self.pending.drain(..cut);
        }
    }

    fn tail(&self) -> String {
        tail_of(&self.pending)
    }

    /// Waits for the shell prompt of a guest that is booting, logging in first when
    /// `login` is given, all within `timeout`. The password is typed, never logged
    /// here (a guest does not echo it either).
    pub async fn boot_to_prompt(
        &mut self,
        prompt: &Regex,
        login: Option<&Login>,
        timeout: Duration,
    ) -> Result<Matched, ConsoleError> {
        let Some(login) = login else {
            return self.expect(prompt, timeout).await;
        };
        let deadline = Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        // A timeout names the whole boot's, not what was left of it at that step.
        let whole = |err: ConsoleError| match err {
            ConsoleError::Timeout { pattern, tail, .. } => ConsoleError::Timeout {
                pattern,
                after: timeout,
                tail,
            },
            err => err,
        };
        self.expect(&login.login_prompt, left())
            .await
            .map_err(whole)?;
        self.send_line(&login.username).await?;
        if let Some((password_prompt, password)) = &login.password {
            self.expect(password_prompt, left()).await.map_err(whole)?;
            self.secret = Some(password.as_bytes().to_vec());
            let sent = self.send_line(password).await;
            let found = match sent {
                Ok(()) => self.logged_in(prompt, &login.login_prompt, left()).await,
                Err(err) => Err(err),
            };
            // The password is typed once: the rest of the console is read as is.
            self.secret = None;
            let held = std::mem::take(&mut self.held);
            self.feed(&held);
            return found.map_err(whole);
        }
        self.logged_in(prompt, &login.login_prompt, left())
            .await
            .map_err(whole)
    }

    /// After the credentials: the shell prompt, or the login prompt again, which is a
    /// refused login (found at once instead of at the boot's timeout). A login prompt
    /// counts only at the end of what the console showed and when no shell prompt
    /// follows within [`LOGIN_AGAIN_GRACE`]: "Last login: ..." lines that a read cut
    /// after "login:" are not a refusal.
    async fn logged_in(
        &mut self,
        prompt: &Regex,
        login_prompt: &Regex,
        timeout: Duration,
    ) -> Result<Matched, ConsoleError> {
        let Ok(either) = Regex::new(&format!(
            "(?:{})|(?P<login_again>(?:{})\\s*$)",
            prompt.as_str(),
            login_prompt.as_str()
        )) else {
            return self.expect(prompt, timeout).await;
        };
        let started = Instant::now();
        let found = self.expect(&either, timeout).await?;
        let again = either
            .captures(&found.text)
            .is_some_and(|c| c.name("login_again").is_some())
            && !prompt.is_match(&found.text);
        if !again {
            return Ok(found);
        }
        let left = timeout.saturating_sub(started.elapsed());
        match self.expect(prompt, left.min(LOGIN_AGAIN_GRACE)).await {
            Err(ConsoleError::Timeout { .. }) => Err(ConsoleError::LoginRefused {
                prompt: found.text.trim().to_string(),
                tail: tail_of(&found.before),
            }),
            other => other,
        }
    }

    /// Types a line (and a newline) into the console.
    pub async fn send_line(&mut self, line: &str) -> Result<(), ConsoleError> {
        self.stream.write_all(line.as_bytes()).await?;
        self.stream.write_all(b"\n").await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Runs a shell command at a prompt and returns its output (the text between the
    /// echoed command and the next prompt), with its exit status read back through a
    /// unique marker so output that looks like a prompt cannot fool it.
    pub async fn run(
        &mut self,
        command: &str,
        prompt: &Regex,
        timeout: Duration,
    ) -> Result<(String, i32), ConsoleError> {
        let marker = format!(
            "LAVA-RC-{}",
            std::process::id() ^ (self.pending.len() as u32)
        );
        self.send_line(&format!("{command}; echo {marker}=$?"))
            .await?;
        // Skip the echo of the command itself: the marker followed by `=$?` is the echo,
        // followed by digits is the result.
        let result = Regex::new(&format!(r"{marker}=(\d+)"))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let matched = self.expect(&result, timeout).await?;
        let code = result
            .captures(&matched.text)
            .and_then(|c| c.get(1))
            .and_then(|m| m.as_str().parse().ok())
            .unwrap_or(-1);
        self.expect(prompt, timeout).await?;
        // On a terminal the typed line is echoed first: the output follows it.
        let echoed = format!("{marker}=$?");
        let output = match matched.before.find(&echoed) {
            Some(at) => matched.before[at..]
                .split_once('\n')
                .map_or(String::new(), |(_, rest)| rest.to_string()),
            None => matched.before,
        };
        Ok((output, code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strips `pieces` fed in turn, as reads arrive.
    fn stripped(pieces: &[&[u8]]) -> String {
        let mut s = AnsiStripper::default();
        pieces.iter().map(|p| s.strip(p)).collect()
    }

    #[test]
    fn strips_escapes_even_when_split_across_reads() {
        let out = stripped(&[
            b"\x1bc\x1b[?7l\x1b[2JSeaBIOS\r\n",
            b"guest:/# \x1b[",
            b"6n",
            b"\x1b]0;title\x07ok\x1b[?2004h",
        ]);
        assert_eq!(out, "SeaBIOS\nguest:/# ok");
    }

    #[test]
    fn strips_what_real_consoles_send() {
        let cases: &[(&[u8], &str)] = &[
            // Character-set designation (ncurses `sgr0`, getty): `B` is part of it.
            (b"\x1b(Blogin: ", "login: "),
            (b"\x1b)0\x1b(B\x1b[mroot@host:~# ", "root@host:~# "),
            // Cursor position request after a busybox/bash prompt.
            (b"/ # \x1b[6n", "/ # "),
            // getty clearing the screen, hiding and showing the cursor.
            (
                b"\x1b[H\x1b[2J\x1b[?25lDebian GNU/Linux 12\x1b[?25h\r\n",
                "Debian GNU/Linux 12\n",
            ),
            // Colours in a prompt, the working directory in it.
            (
                b"\x1b[01;32mroot@vm\x1b[00m:\x1b[01;34m~/src\x1b[00m# ",
                "root@vm:~/src# ",
            ),
            // Window titles ended by BEL or by ST (`ESC \\`).
            (b"\x1b]0;root@vm: ~\x07$ ", "$ "),
            (b"\x1b]2;title\x1b\\$ ", "$ "),
            // A device control string.
            (b"\x1bP+q544e\x1b\\ok", "ok"),
            // Save/restore cursor, keypad modes.
            (b"\x1b7\x1b8\x1b=\x1b>done", "done"),
            // Bells, NULs and carriage returns are noise; tabs are text.
            (b"a\x07\x00b\r\n\tc", "ab\n\tc"),
        ];
        for (input, want) in cases {
            assert_eq!(&stripped(&[input]), want, "input {input:?}");
            // Cut at every point: the same text.
            for cut in 1..input.len() {
                let (a, b) = input.split_at(cut);
                assert_eq!(&stripped(&[a, b]), want, "input {input:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn keeps_a_character_split_across_reads() {
        let text = "prüfung ✓ $ ".as_bytes();
        for cut in 1..text.len() {
            let (a, b) = text.split_at(cut);
            assert_eq!(stripped(&[a, b]), "prüfung ✓ $ ", "cut at {cut}");
        }
    }

    /// A guest that asks for a login and a password and checks them, as `login` does.
    async fn guest_with_login(password: &'static str) -> Console<tokio::io::DuplexStream> {
        use tokio::io::AsyncBufReadExt;
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let (reader, mut writer) = tokio::io::split(theirs);
            let mut lines = tokio::io::BufReader::new(reader).lines();
            let _ = writer
                .write_all(b"Debian GNU/Linux 12 vm ttyS0\r\n\r\nvm login: ")
                .await;
            let user = lines.next_line().await.ok().flatten().unwrap_or_default();
            // Echo the user name, as a terminal does; not the password.
            let _ = writer
                .write_all(format!("{user}\r\nPassword: ").as_bytes())
                .await;
            let typed = lines.next_line().await.ok().flatten().unwrap_or_default();
            if user == "root" && typed == password {
                let _ = writer
                    .write_all(b"\r\nLast login: never\r\nroot@vm:~# ")
                    .await;
                while let Ok(Some(_)) = lines.next_line().await {}
            } else {
                // As getty does: the login prompt again, the console still open.
                let _ = writer.write_all(b"\r\nLogin incorrect\r\nvm login: ").await;
                while let Ok(Some(_)) = lines.next_line().await {}
            }
        });
        Console::new(ours, ConsoleLog::default())
    }

    #[test]
    fn an_echoed_password_is_masked_even_a_byte_at_a_time() {
        let secret = b"s3cret";
        let (out, held) = mask(Vec::new(), b"Password: s3cret\r\n# ", secret);
        assert_eq!(
            (out.as_slice(), held.as_slice()),
            (&b"Password: ****\r\n# "[..], &b""[..])
        );
        let mut held = Vec::new();
        let mut shown = Vec::new();
        for byte in b"xs3cs3cret!" {
            let (out, rest) = mask(held, &[*byte], secret);
            shown.extend(out);
            held = rest;
        }
        shown.extend(held);
        assert_eq!(shown, b"xs3c****!");
    }

    #[tokio::test]
    async fn a_guest_that_echoes_the_password_shows_it_nowhere() {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let (reader, mut writer) = tokio::io::split(theirs);
            let mut lines = tokio::io::BufReader::new(reader).lines();
            let _ = writer.write_all(b"login: ").await;
            let _ = lines.next_line().await;
            let _ = writer.write_all(b"Password: ").await;
            let typed = lines.next_line().await.ok().flatten().unwrap_or_default();
            // Echoed a byte at a time, then the console goes away.
            for byte in typed.bytes() {
                let _ = writer.write_all(&[byte]).await;
                let _ = writer.flush().await;
            }
            let _ = writer.write_all(b"\r\nLogin incorrect\r\n").await;
        });
        let mut console = Console::new(ours, ConsoleLog::default());
        let prompt = Regex::new(r"[#$] ?$").unwrap();
        let err = console
            .boot_to_prompt(
                &prompt,
                Some(&root_login("s3cret")),
                Duration::from_secs(30),
            )
            .await
            .unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert!(err.to_string().contains("****"), "{err}");
        let log = String::from_utf8_lossy(&console.log().contents()).into_owned();
        assert!(!log.contains("s3cret"), "{log}");
    }

    fn root_login(password: &str) -> Login {
        Login {
            login_prompt: Regex::new("login:").unwrap(),
            username: "root".into(),
            password: Some((Regex::new("Password:").unwrap(), password.into())),
        }
    }

    #[tokio::test]
    async fn logs_in_with_user_and_password_then_finds_the_prompt() {
        let mut console = guest_with_login("s3cret").await;
        let prompt = Regex::new(r"[#$] ?$").unwrap();
        let found = console
            .boot_to_prompt(
                &prompt,
                Some(&root_login("s3cret")),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        assert_eq!(found.text, "# ");
        assert!(found.before.contains("Last login"), "{found:?}");
        assert!(!String::from_utf8_lossy(&console.log().contents()).contains("s3cret"));
    }

    #[tokio::test]
    async fn a_wrong_password_fails_naming_what_the_console_showed_last() {
        let mut console = guest_with_login("s3cret").await;
        let prompt = Regex::new(r"[#$] ?$").unwrap();
        let login = Login {
            login_prompt: Regex::new("login: ?$").unwrap(),
            ..root_login("wrong")
        };
        // The login prompt came back: refused at once, not at the (hour-long) timeout.
        let err = console
            .boot_to_prompt(&prompt, Some(&login), Duration::from_secs(3600))
            .await
            .unwrap_err();
        match &err {
            ConsoleError::LoginRefused { prompt, tail } => {
                assert_eq!(prompt, "login:");
                assert!(tail.contains("Login incorrect"), "{tail}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!err.to_string().contains("wrong"), "{err}");
    }

    async fn console_with(script: &'static [&'static [u8]]) -> Console<tokio::io::DuplexStream> {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            for chunk in script {
                let _ = theirs.write_all(chunk).await;
            }
            // Keep the other end open until the test is done reading.
            let mut sink = Vec::new();
            let _ = theirs.read_to_end(&mut sink).await;
        });
        Console::new(ours, ConsoleLog::default())
    }

    #[tokio::test]
    async fn finds_the_prompt_through_noise_and_logs_every_byte() {
        let mut console = console_with(&[b"\x1bcBooting...\r\n", b"guest:/# \x1b[6n"]).await;
        let prompt = Regex::new(r"guest:/# $").unwrap();
        let m = console
            .expect(&prompt, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(m.before, "Booting...\n");
        assert_eq!(
            console.log().contents(),
            b"\x1bcBooting...\r\nguest:/# \x1b[6n"
        );
    }

    #[tokio::test]
    async fn a_kernel_panic_is_reported_as_such() {
        let mut console = console_with(&[b"[ 1.0] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\r\n"]).await;
        let err = console
            .expect(&Regex::new("guest:/# $").unwrap(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ConsoleError::KernelPanic { ref line } if line.contains("not syncing")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_silent_console_times_out_naming_the_pattern() {
        let mut console = console_with(&[b"nothing useful"]).await;
        let err = console
            .expect(&Regex::new("login:").unwrap(), Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no match for /login:/"), "{err}");
        assert!(err.to_string().contains("nothing useful"), "{err}");
    }

    /// A file-like sink the test can read back after the console is gone.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_capped_log_ends_with_one_marker_and_the_console_is_still_matched() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let written = Shared::default();
        let mut console = Console::new(ours, ConsoleLog::capped(written.clone(), 100));
        tokio::spawn(async move {
            for _ in 0..50 {
                let _ = theirs.write_all(b"flooding the console\r\n").await;
            }
            let _ = theirs.write_all(b"guest:/# ").await;
            let mut sink = Vec::new();
            let _ = theirs.read_to_end(&mut sink).await;
        });
        let prompt = Regex::new(r"guest:/# $").unwrap();
        console
            .expect(&prompt, Duration::from_secs(5))
            .await
            .unwrap();
        let text = String::from_utf8(written.0.lock().clone()).unwrap();
        let (kept, marker) = text.split_once("\n[console log truncated").unwrap();
        assert_eq!(kept.len(), 100);
        assert_eq!(
            marker, ": the limit of 100 bytes was reached]\n",
            "{text:?}"
        );
    }

    #[test]
    fn a_log_opened_again_keeps_counting_from_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console-node.log");
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap()
        };
        ConsoleLog::appending_capped(open(), 100).record(&[b'a'; 80]);
        ConsoleLog::appending_capped(open(), 100).record(&[b'b'; 80]);
        ConsoleLog::appending_capped(open(), 100).record(&[b'c'; 80]);
        let text = std::fs::read_to_string(&path).unwrap();
        let kept = format!(
            "{}{}\n[console log truncated",
            "a".repeat(80),
            "b".repeat(20)
        );
        assert!(text.starts_with(&kept), "{text}");
        assert_eq!(text.matches("truncated").count(), 1, "{text}");
        assert!(!text.contains("ccc"), "{text}");
    }
}
