//! The CLI's standard output, safe against a reader that goes away.
//!
//! `dispatcher results 7 | head -1` closes the pipe while we still write: `println!`
//! would panic on EPIPE (Rust ignores SIGPIPE, so the write fails instead of killing
//! us). Every line of a subcommand goes through [`line`] instead: once the reader is
//! gone the rest is dropped quietly and the command ends with the status it would have
//! had (a followed job is still followed to its end, silently), so `set -o pipefail`
//! scripts still see the job's result.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes `text` and a newline to stdout, unless its reader has gone away.
pub fn line(text: impl std::fmt::Display) {
    write(format_args!("{text}\n"));
}

/// Writes `text` as it is (no newline added).
pub fn text(text: impl std::fmt::Display) {
    write(format_args!("{text}"));
}

fn write(args: std::fmt::Arguments<'_>) {
    if closed() {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_fmt(args).and_then(|()| stdout.flush());
    if let Err(err) = written {
        // The reader left (EPIPE) or stdout failed otherwise: either way nothing more
        // can be shown; saying so on stderr would only add noise to `| head`.
        if err.kind() != std::io::ErrorKind::BrokenPipe {
            tracing::debug!(%err, "stdout failed");
        }
        CLOSED.store(true, Ordering::Relaxed);
    }
}

/// Whether stdout's reader has gone away (nothing written from now on).
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// Writes to stderr, ignoring a stderr that is gone (`eprint!` would panic, and the
/// daemon must not die because whoever read its stderr did).
pub fn err_text(args: std::fmt::Arguments<'_>) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_fmt(args);
}

/// `eprintln!` that never panics: see [`err_text`].
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::out::err_text(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprint!` that never panics: see [`err_text`].
macro_rules! errprint {
    ($($arg:tt)*) => {
        $crate::out::err_text(format_args!($($arg)*))
    };
}

pub(crate) use {errln, errprint};
