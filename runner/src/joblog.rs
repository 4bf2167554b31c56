//! A job's log: structured lines `{dt, lvl, node, msg}` appended to a file as they
//! happen (a crash keeps everything up to that moment), with named sections for the
//! pipeline's actions and a size cap that keeps the log's beginning and its end (see
//! [`Mode`]).

use parking_lot::Mutex;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::report::ActionSpan;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Debug,
    Info,
    /// Console output of a node.
    Target,
    Warning,
    Error,
    /// A test result.
    Results,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogLine {
    /// RFC 3339 UTC time with milliseconds.
    pub dt: String,
    pub lvl: Level,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub msg: String,
}

impl LogLine {
    /// A line written now.
    pub fn now(lvl: Level, node: Option<&str>, msg: impl Into<String>) -> Self {
        Self {
            dt: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            lvl,
            node: node.map(str::to_string),
            msg: msg.into(),
        }
    }
}

/// Room kept below half the limit for the two marker lines a full log gets, so the
/// whole file stays within the limit.
const MARKER_ROOM: u64 = 512;

/// Where the next line goes.
///
/// A log past its limit keeps its *first* and its *last* lines: what went wrong is
/// usually at the end ("job finished", every node's final lines), how it started at
/// the beginning. Lines go into the log itself until it reaches half the limit
/// (`Head`); from then on into two tail files beside it (`job.log.tail-0`/`-1`), each
/// at most a quarter of the limit, the older one emptied when the newer is full
/// (`Tail`). When the job ends ([`JobLog::finish`], or the last clone dropped) the
/// tail files are appended to the log after a marker saying how much was dropped, and
/// removed. So the file never passes the limit and always ends with the job's end;
/// the price is that a follower sees the lines past half the limit only at the end.
enum Mode {
    Head,
    Tail(Tail),
    /// Finished after a tail: nothing more is kept.
    Closed,
}

struct Tail {
    /// Segments started so far: the current one is number `started - 1`, in the file
    /// `tail-{(started - 1) % 2}`.
    started: u64,
    current: File,
    current_bytes: u64,
    current_lines: u64,
    /// The previous segment's size, dropped when the current one is full.
    previous_bytes: u64,
    previous_lines: u64,
    dropped_bytes: u64,
    dropped_lines: u64,
}

struct Inner {
    file: File,
    written: u64,
    mode: Mode,
    /// The log's path and limit (for the tail's files and `Drop`).
    path: PathBuf,
    limit: u64,
    /// What is written to the log itself, as it is written (see [`Growth`]).
    feed: broadcast::Sender<Growth>,
}

/// How many writes a follower of [`JobLog::feed`] may fall behind before it is told it
/// lagged (and reads the rest from the file).
const FEED_CAPACITY: usize = 1024;

/// One write to the log file, told to its followers as it happens, so a thousand
/// followers of a running job share the writer's bytes instead of each reading the
/// file. The file stays the truth: a follower that lagged, or is told of bytes it was
/// not given, reads them from there.
#[derive(Debug, Clone)]
pub enum Growth {
    /// `text`, whole lines as written, starts at byte `at` of the file.
    Lines { at: u64, text: Bytes },
    /// Bytes were appended from elsewhere (the kept tail, at the job's end) and end at
    /// byte `end`: read them from the file.
    Copied { end: u64 },
}

/// Appends to one job's log. Cheap to clone; every clone writes to the same file.
#[derive(Clone)]
pub struct JobLog {
    path: PathBuf,
    inner: Arc<Mutex<Inner>>,
    /// The sections ended so far: the job's timeline.
    spans: Arc<Mutex<Vec<ActionSpan>>>,
}

impl JobLog {
    /// Opens (creating or continuing) the log at `path`, keeping at most `limit` bytes.
    /// (A log continued past half its limit starts a new tail: the tail of a writer
    /// that crashed is not recovered.)
    pub fn open(path: &Path, limit: u64) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        let mut inner = Inner {
            file,
            written,
            mode: Mode::Head,
            path: path.to_path_buf(),
            limit,
            feed: broadcast::Sender::new(FEED_CAPACITY),
        };
        if written >= inner.head_limit() {
            inner.mode = Mode::Tail(inner.new_tail()?);
        }
        Ok(Self {
            path: path.to_path_buf(),
            inner: Arc::new(Mutex::new(inner)),
            spans: Arc::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every write to the log file from now on ([`Growth`]), with the file's size now:
    /// a follower that has read the file up to that size and then takes the feed
    /// misses nothing. Closed when the last writer is gone.
    pub fn feed(&self) -> (u64, broadcast::Receiver<Growth>) {
        let inner = self.inner.lock();
        (inner.written, inner.feed.subscribe())
    }

    /// Appends one line (past half the limit, into the tail; see [`Mode`]). Write
    /// errors are logged, never fatal to the job.
    pub fn line(&self, lvl: Level, node: Option<&str>, msg: impl Into<String>) {
        let line = LogLine {
            dt: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            lvl,
            node: node.map(str::to_string),
            msg: msg.into(),
        };
        if let Err(err) = self.inner.lock().append(&line) {
            tracing::warn!(path = %self.path.display(), %err, "cannot write the job log");
        }
    }

    /// The job ended: a tail kept past half the limit is appended to the log now, so
    /// the log is whole before the job is recorded as finished. (Dropping the last
    /// clone does the same.)
    pub fn finish(&self) {
        if let Err(err) = self.inner.lock().finish() {
            tracing::warn!(path = %self.path.display(), %err, "cannot append the log's tail");
        }
    }

    /// Starts a named section (a pipeline action); its end line, with the duration, is
    /// written when the returned guard is dropped.
    pub fn section(&self, node: Option<&str>, name: &str) -> Section {
        self.line(Level::Info, node, format!("start: {name}"));
        Section {
            log: self.clone(),
            node: node.map(str::to_string),
            name: name.to_string(),
            started: Instant::now(),
            started_at: SystemTime::now(),
        }
    }

    /// Every section ended so far, in the order they ended.
    pub fn timeline(&self) -> Vec<ActionSpan> {
        self.spans.lock().clone()
    }
}

/// An open log section; see [`JobLog::section`].
pub struct Section {
    log: JobLog,
    node: Option<String>,
    name: String,
    started: Instant,
    started_at: SystemTime,
}

impl Drop for Section {
    fn drop(&mut self) {
        let took = self.started.elapsed().as_secs_f64();
        self.log.spans.lock().push(ActionSpan {
            node: self.node.clone(),
            action: self.name.clone(),
            started: humantime::format_rfc3339_millis(self.started_at).to_string(),
            duration_secs: took,
        });
        self.log.line(
            Level::Info,
            self.node.as_deref(),
            format!("end: {} ({took:.3} s)", self.name),
        );
    }
}

impl Inner {
    fn head_limit(&self) -> u64 {
        (self.limit / 2).saturating_sub(MARKER_ROOM)
    }

    fn segment_limit(&self) -> u64 {
        self.limit / 4
    }

    fn segment_path(&self, index: u64) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".tail-{}", index % 2));
        PathBuf::from(name)
    }

    fn new_tail(&self) -> std::io::Result<Tail> {
        Ok(Tail {
            started: 1,
            current: File::create(self.segment_path(0))?,
            current_bytes: 0,
            current_lines: 0,
            previous_bytes: 0,
            previous_lines: 0,
            dropped_bytes: 0,
            dropped_lines: 0,
        })
    }

    /// Writes `text` (whole lines) to the log itself and tells followers.
    fn write_log(&mut self, text: String) -> std::io::Result<()> {
        self.file.write_all(text.as_bytes())?;
        self.file.flush()?;
        let at = self.written;
        self.written += text.len() as u64;
        // No follower is no error.
        let _ = self.feed.send(Growth::Lines {
            at,
            text: Bytes::from(text),
        });
        Ok(())
    }

    fn append(&mut self, line: &LogLine) -> std::io::Result<()> {
        let text = json_line(line);
        let len = text.len() as u64;
        if matches!(self.mode, Mode::Head) {
            if self.written + len <= self.head_limit() {
                return self.write_log(text);
            }
            let marker = LogLine {
                msg: format!(
                    "log past {} bytes: from here only its newest lines are kept (the limit \
                     is {} bytes), written here when the job ends",
                    self.head_limit(),
                    self.limit
                ),
                lvl: Level::Warning,
                ..line.clone()
            };
            self.write_log(json_line(&marker))?;
            self.mode = Mode::Tail(self.new_tail()?);
        }
        let segment_limit = self.segment_limit();
        let next_path = match &self.mode {
            Mode::Tail(tail) => self.segment_path(tail.started),
            _ => return Ok(()),
        };
        let Mode::Tail(tail) = &mut self.mode else {
            return Ok(());
        };
        if len > segment_limit {
            // Longer than a whole segment: it cannot be kept.
            tail.dropped_bytes += len;
            tail.dropped_lines += 1;
            return Ok(());
        }
        if tail.current_bytes + len > segment_limit {
            // The older segment is emptied and becomes the current one.
            tail.current = File::create(next_path)?;
            tail.started += 1;
            tail.dropped_bytes += tail.previous_bytes;
            tail.dropped_lines += tail.previous_lines;
            tail.previous_bytes = tail.current_bytes;
            tail.previous_lines = tail.current_lines;
            tail.current_bytes = 0;
            tail.current_lines = 0;
        }
        tail.current.write_all(text.as_bytes())?;
        tail.current.flush()?;
        tail.current_bytes += len;
        tail.current_lines += 1;
        Ok(())
    }

    /// Appends the tail (oldest segment first) after a marker, and removes its files.
    fn finish(&mut self) -> std::io::Result<()> {
        if !matches!(self.mode, Mode::Tail(_)) {
            return Ok(());
        }
        let Mode::Tail(tail) = std::mem::replace(&mut self.mode, Mode::Closed) else {
            return Ok(());
        };
        if tail.dropped_lines > 0 {
            let marker = LogLine {
                dt: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                lvl: Level::Warning,
                node: None,
                msg: format!(
                    "log truncated: the limit of {} bytes was reached; {} line(s) ({} bytes) \
                     dropped here, the newest follow",
                    self.limit, tail.dropped_lines, tail.dropped_bytes
                ),
            };
            self.write_log(json_line(&marker))?;
        }
        let segments = if tail.started >= 2 {
            vec![tail.started - 2, tail.started - 1]
        } else {
            vec![tail.started - 1]
        };
        drop(tail);
        for index in segments {
            let path = self.segment_path(index);
            let copied = std::io::copy(&mut File::open(&path)?, &mut self.file)?;
            self.file.flush()?;
            self.written += copied;
            std::fs::remove_file(&path)?;
        }
        let _ = self.feed.send(Growth::Copied { end: self.written });
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(err) = self.finish() {
            tracing::warn!(path = %self.path.display(), %err, "cannot append the log's tail");
        }
    }
}

fn json_line(line: &LogLine) -> String {
    let mut text = serde_json::to_string(line).unwrap_or_default();
    text.push('\n');
    text
}

/// Reads the lines of a log from line `from` (0-based). A half-written last line (the
/// writer crashed mid-line) is skipped.
pub fn read(path: &Path, from: usize) -> std::io::Result<Vec<LogLine>> {
    let file = File::open(path)?;
    Ok(BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .skip(from)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_sections_are_written_as_they_happen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job-1.jsonl");
        let log = JobLog::open(&path, 1 << 20).unwrap();
        {
            let _deploy = log.section(Some("server"), "deploy");
            log.line(Level::Target, Some("server"), "guest:/# ");
            // Already on disk before the section ends.
            assert_eq!(read(&path, 0).unwrap().len(), 2);
        }
        let lines = read(&path, 0).unwrap();
        let msgs: Vec<&str> = lines.iter().map(|l| l.msg.as_str()).collect();
        assert_eq!(msgs[..2], ["start: deploy", "guest:/# "]);
        assert!(msgs[2].starts_with("end: deploy ("), "{msgs:?}");
        let timeline = log.timeline();
        assert_eq!(timeline.len(), 1, "{timeline:?}");
        assert_eq!(timeline[0].node.as_deref(), Some("server"));
        assert_eq!(timeline[0].action, "deploy");
        assert_eq!(lines[1].node.as_deref(), Some("server"));
        assert!(lines[0].dt.ends_with('Z'));
        assert_eq!(read(&path, 2).unwrap().len(), 1);
    }

    #[test]
    fn a_full_log_keeps_its_head_and_its_newest_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job-2.jsonl");
        let limit = 4000;
        let log = JobLog::open(&path, limit).unwrap();
        let (size, mut feed) = log.feed();
        assert_eq!(size, 0);
        log.line(Level::Info, None, "job 2 running");
        let Ok(Growth::Lines { at: 0, text }) = feed.try_recv() else {
            panic!("followers are handed the line");
        };
        assert_eq!(read(&path, 0).unwrap().len(), 1);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            text,
            "as written to the file"
        );
        for i in 0..500 {
            log.line(
                Level::Target,
                Some(&format!("node-{}", i % 3)),
                format!("line {i}"),
            );
        }
        log.line(Level::Info, None, "job finished: Complete");
        // Past half the limit nothing reaches the log until the end.
        let before = read(&path, 0).unwrap();
        assert!(
            before.last().unwrap().msg.starts_with("log past"),
            "{before:?}"
        );
        // Each write while under half the limit is handed on where it went in the file.
        let mut at = text.len() as u64;
        while let Ok(Growth::Lines {
            at: written_at,
            text,
        }) = feed.try_recv()
        {
            assert_eq!(written_at, at);
            at += text.len() as u64;
        }
        assert_eq!(at, std::fs::metadata(&path).unwrap().len());
        log.finish();
        // The tail is copied from its files, not handed on: followers read the file.
        let copied_to = std::fs::metadata(&path).unwrap().len();
        let mut told = Vec::new();
        while let Ok(growth) = feed.try_recv() {
            told.push(growth);
        }
        assert!(
            matches!(told.last(), Some(Growth::Copied { end }) if *end == copied_to),
            "{told:?}"
        );
        let lines = read(&path, 0).unwrap();
        let msgs: Vec<&str> = lines.iter().map(|l| l.msg.as_str()).collect();
        assert_eq!(msgs[0], "job 2 running", "the head is kept");
        assert_eq!(
            *msgs.last().unwrap(),
            "job finished: Complete",
            "and the end"
        );
        assert_eq!(msgs[msgs.len() - 2], "line 499");
        for node in ["node-0", "node-1", "node-2"] {
            assert!(
                lines
                    .iter()
                    .rev()
                    .take(4)
                    .any(|l| l.node.as_deref() == Some(node))
            );
        }
        let truncated = msgs
            .iter()
            .filter(|m| m.starts_with("log truncated"))
            .count();
        assert_eq!(truncated, 1, "{msgs:?}");
        // The kept lines are in order, with a gap only at the marker.
        let numbers: Vec<u32> = msgs
            .iter()
            .filter_map(|m| m.strip_prefix("line ")?.parse().ok())
            .collect();
        let gaps = numbers.windows(2).filter(|w| w[1] != w[0] + 1).count();
        assert_eq!(gaps, 1, "{numbers:?}");
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size <= limit, "{size} bytes");
        let tails = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(tails, 1, "the tail files are gone");
        // Finishing again, or dropping, changes nothing.
        drop(log);
        assert_eq!(read(&path, 0).unwrap(), lines);
    }

    #[test]
    fn a_log_within_its_limit_is_whole_and_unmarked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job-4.jsonl");
        {
            let log = JobLog::open(&path, 4000).unwrap();
            // Past half the limit (into the tail) but not past the limit.
            for i in 0..30 {
                log.line(Level::Target, None, format!("line {i}"));
            }
        }
        let lines = read(&path, 0).unwrap();
        let numbered = lines.iter().filter(|l| l.msg.starts_with("line ")).count();
        assert_eq!(numbered, 30, "{lines:?}");
        assert!(!lines.iter().any(|l| l.msg.starts_with("log truncated")));
    }

    #[test]
    fn a_half_written_line_is_skipped_when_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job-3.jsonl");
        JobLog::open(&path, 1 << 20)
            .unwrap()
            .line(Level::Info, None, "whole");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"dt\": \"2026-")
            .unwrap();
        assert_eq!(read(&path, 0).unwrap().len(), 1);
    }
}
