//! A job's log over HTTP (`GET /api/v1/jobs/ID/log`): its complete lines from a line
//! number on, read from the file in bounded chunks.
//!
//! A follower (`?follow=1`) keeps its place in the file and reads only what was added
//! since, when the log says it grew ([`runner::joblog::JobLog::subscribe`]) or a job
//! ended; a slow fallback tick (reading from the same place) covers a log written by
//! another process and a job that has not started. So each reader costs one chunk of
//! memory and nothing while the log is quiet, however long the log is.
//!
//! While the job is queued, a follower also gets a `queued: ...` line whenever the
//! scheduler's reason for the wait changes (told by the pass that changed it). These
//! lines are not in the file: `from` counts the file's lines only.

use std::io::ErrorKind;
use std::path::PathBuf;
use std::time::Duration;

use axum::body::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::service::Dispatcher;
use runner::joblog::{Level, LogLine};

/// Bytes read from the file at a time.
const CHUNK: usize = 64 * 1024;

/// A longer line is not sent (a log line is a console line or a message: never this
/// long unless the file is damaged), so a reader never holds more than this.
const MAX_LINE: usize = 1024 * 1024;

/// How often a follower looks at the log without being told it grew.
const FALLBACK: Duration = Duration::from_secs(1);

/// The lines of job `id`'s log at `path` from line `from` (0-based), as NDJSON; with
/// `follow`, until the job ends.
///
/// The first chunk of lines already in the file is read before this returns, so it
/// goes out with the response's headers: a client that reads what arrives with the
/// headers (a browser page rendered once, a script with a short budget) sees the log
/// so far, as when the whole log was read before answering.
pub async fn lines(
    service: Dispatcher,
    id: u64,
    path: PathBuf,
    from: usize,
    follow: bool,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let mut reader = Reader {
        cursor: Cursor {
            path,
            file: None,
            skip: from,
            partial: Vec::new(),
            overlong: false,
        },
        service,
        id,
        follow,
        finished_seen: false,
        size: None,
        writer_gone: false,
        waiting: None,
        said_waiting: None,
    };
    let mut failed = false;
    let first = loop {
        match reader.cursor.next_lines().await {
            Ok(Some(out)) if out.is_empty() => continue,
            Ok(Some(out)) => break Some(Ok(Bytes::from(out))),
            Ok(None) => break None,
            Err(err) => {
                tracing::warn!(job = id, %err, "cannot read the job log");
                failed = true;
                break None;
            }
        }
    };
    let rest = futures::stream::unfold(reader, Reader::next);
    futures::stream::iter(first).chain(rest.take_while(move |_| std::future::ready(!failed)))
}

struct Reader {
    cursor: Cursor,
    service: Dispatcher,
    id: u64,
    follow: bool,
    /// The job was seen finished: one more read to the end of the file, then stop.
    finished_seen: bool,
    size: Option<watch::Receiver<u64>>,
    /// The log's writer is gone (the job's run ended): only the job's end is awaited.
    writer_gone: bool,
    /// Changes when a queued job's reason to wait does; taken when first needed.
    waiting: Option<watch::Receiver<u64>>,
    /// The reason last sent.
    said_waiting: Option<String>,
}

impl Reader {
    async fn next(mut self) -> Option<(std::io::Result<Bytes>, Self)> {
        loop {
            match self.cursor.next_lines().await {
                Ok(Some(out)) if !out.is_empty() => return Some((Ok(Bytes::from(out)), self)),
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(job = self.id, %err, "cannot read the job log");
                    return None;
                }
            }
            // At the end of the file.
            if !self.follow || self.finished_seen {
                return None;
            }
            if let Some(line) = self.waiting_line() {
                return Some((Ok(line), self));
            }
            let ended = self.service.job_ended().notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            // Finished first, then read to the end once more: a line written just
            // before the end is not lost.
            if self.job_finished().await {
                self.finished_seen = true;
                continue;
            }
            if self.size.is_none() && !self.writer_gone {
                self.size = self.service.log_size(self.id);
            }
            let grew = async {
                match self.size.as_mut() {
                    Some(size) => size.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let waiting = async {
                match self.waiting.as_mut() {
                    Some(changes) => {
                        if changes.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                still_writing = grew => if !still_writing {
                    self.size = None;
                    self.writer_gone = true;
                },
                () = &mut ended => {}
                () = waiting => {}
                () = tokio::time::sleep(FALLBACK) => {}
            }
        }
    }

    /// A `queued: REASON` line when the job's reason to wait changed since the last.
    fn waiting_line(&mut self) -> Option<Bytes> {
        if self.waiting.is_none() {
            self.waiting = Some(self.service.waiting_changes());
        }
        let reason = self.service.waiting_reason(self.id)?;
        if self.said_waiting.as_ref() == Some(&reason) {
            return None;
        }
        let line = LogLine::now(Level::Info, None, format!("queued: {reason}"));
        self.said_waiting = Some(reason);
        let mut text = serde_json::to_vec(&line).ok()?;
        text.push(b'\n');
        Some(Bytes::from(text))
    }

    async fn job_finished(&self) -> bool {
        let state = self.service.job_state(self.id).await;
        // A job that is gone, or a database that fails, ends the follow.
        state.ok().flatten().is_none_or(|s| s.is_finished())
    }
}

/// A place in a log file and the line being read there.
struct Cursor {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    /// Lines still to skip (the request's `from`).
    skip: usize,
    /// The start of a line whose end has not been read yet.
    partial: Vec<u8>,
    /// The current line passed [`MAX_LINE`]: it is dropped.
    overlong: bool,
}

impl Cursor {
    /// The complete lines of the next chunk of the file (possibly none), or `None` at
    /// its end (or while it does not exist).
    async fn next_lines(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let file = match &mut self.file {
            Some(file) => file,
            None => match tokio::fs::File::open(&self.path).await {
                Ok(file) => self.file.insert(file),
                Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
                Err(err) => return Err(err),
            },
        };
        let mut chunk = vec![0; CHUNK];
        let read = file.read(&mut chunk).await?;
        if read == 0 {
            return Ok(None);
        }
        let mut out = Vec::new();
        for piece in chunk[..read].split_inclusive(|b| *b == b'\n') {
            let Some(end) = piece.strip_suffix(b"\n") else {
                // A line continued in the next chunk.
                if self.overlong || self.partial.len() + piece.len() > MAX_LINE {
                    self.overlong = true;
                    self.partial.clear();
                } else {
                    self.partial.extend_from_slice(piece);
                }
                continue;
            };
            let whole = if self.partial.is_empty() {
                end
            } else {
                self.partial.extend_from_slice(end);
                &self.partial
            };
            if self.skip > 0 {
                self.skip -= 1;
            } else if !self.overlong
                && whole.len() <= MAX_LINE
                // A line cut short by a crash of the writer is not sent.
                && serde_json::from_slice::<LogLine>(whole).is_ok()
            {
                out.extend_from_slice(whole);
                out.push(b'\n');
            }
            self.partial.clear();
            self.overlong = false;
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner::joblog::{JobLog, Level};

    async fn all(cursor: &mut Cursor) -> String {
        let mut text = Vec::new();
        while let Some(out) = cursor.next_lines().await.unwrap() {
            text.extend(out);
        }
        String::from_utf8(text).unwrap()
    }

    #[tokio::test]
    async fn a_cursor_reads_only_what_was_added_and_whole_lines_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.log");
        let mut cursor = Cursor {
            path: path.clone(),
            file: None,
            skip: 1,
            partial: Vec::new(),
            overlong: false,
        };
        assert_eq!(all(&mut cursor).await, "", "no file yet");
        let log = JobLog::open(&path, 1 << 20).unwrap();
        for i in 0..3000 {
            log.line(Level::Info, None, format!("line {i}"));
        }
        let text = all(&mut cursor).await;
        assert_eq!(text.lines().count(), 2999, "the first skipped");
        assert!(text.lines().next().unwrap().contains("\"line 1\""));
        // Half a line: not sent until it is whole.
        use std::io::Write;
        let mut raw = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        raw.write_all(b"{\"dt\":\"2026-01-01T00:00:00.000Z\",\"lvl\":\"info\",")
            .unwrap();
        assert_eq!(all(&mut cursor).await, "");
        raw.write_all(b"\"msg\":\"whole\"}\nnot json\n").unwrap();
        let text = all(&mut cursor).await;
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("\"whole\""));
    }
}
