//! A job's log: structured lines `{dt, lvl, node, msg}` appended to a file as they
//! happen (a crash keeps everything up to that moment), with named sections for the
//! pipeline's actions and a size cap that ends in a visible truncation marker.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// RFC 3339 UTC time with milliseconds.
    pub dt: String,
    pub lvl: Level,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub msg: String,
}

struct Inner {
    file: File,
    written: u64,
    truncated: bool,
}

/// Appends to one job's log. Cheap to clone; every clone writes to the same file.
#[derive(Clone)]
pub struct JobLog {
    path: PathBuf,
    limit: u64,
    inner: Arc<Mutex<Inner>>,
}

impl JobLog {
    /// Opens (creating or continuing) the log at `path`, keeping at most `limit` bytes.
    pub fn open(path: &Path, limit: u64) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            limit,
            inner: Arc::new(Mutex::new(Inner {
                file,
                written,
                truncated: written >= limit,
            })),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line. Past the size limit, one truncation marker is written and the
    /// rest dropped. Write errors are logged, never fatal to the job.
    pub fn line(&self, lvl: Level, node: Option<&str>, msg: impl Into<String>) {
        let line = LogLine {
            dt: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            lvl,
            node: node.map(str::to_string),
            msg: msg.into(),
        };
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.truncated {
            return;
        }
        let mut text = serde_json::to_string(&line).unwrap_or_default();
        text.push('\n');
        if inner.written + text.len() as u64 > self.limit {
            inner.truncated = true;
            let marker = LogLine {
                msg: format!(
                    "log truncated: the limit of {} bytes was reached",
                    self.limit
                ),
                lvl: Level::Warning,
                ..line
            };
            text = serde_json::to_string(&marker).unwrap_or_default();
            text.push('\n');
        }
        if let Err(err) = inner
            .file
            .write_all(text.as_bytes())
            .and_then(|()| inner.file.flush())
        {
            tracing::warn!(path = %self.path.display(), %err, "cannot write the job log");
            return;
        }
        inner.written += text.len() as u64;
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
        }
    }
}

/// An open log section; see [`JobLog::section`].
pub struct Section {
    log: JobLog,
    node: Option<String>,
    name: String,
    started: Instant,
}

impl Drop for Section {
    fn drop(&mut self) {
        let took = self.started.elapsed().as_secs_f64();
        self.log.line(
            Level::Info,
            self.node.as_deref(),
            format!("end: {} ({took:.3} s)", self.name),
        );
    }
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
        assert_eq!(lines[1].node.as_deref(), Some("server"));
        assert!(lines[0].dt.ends_with('Z'));
        assert_eq!(read(&path, 2).unwrap().len(), 1);
    }

    #[test]
    fn a_full_log_ends_with_one_truncation_marker() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job-2.jsonl");
        let log = JobLog::open(&path, 400).unwrap();
        for i in 0..50 {
            log.line(Level::Target, Some("client-1"), format!("line {i}"));
        }
        let lines = read(&path, 0).unwrap();
        let last = lines.last().unwrap();
        assert!(last.msg.starts_with("log truncated"), "{last:?}");
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.msg.starts_with("log truncated"))
                .count(),
            1
        );
        assert!(std::fs::metadata(&path).unwrap().len() < 400 + 200);
        // Reopening a full log keeps it closed.
        JobLog::open(&path, 400)
            .unwrap()
            .line(Level::Info, None, "more");
        assert_eq!(read(&path, 0).unwrap().len(), lines.len());
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
