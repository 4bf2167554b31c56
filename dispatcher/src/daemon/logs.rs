//! A job's log over HTTP (`GET /api/v1/jobs/ID/log`): its complete lines from a line
//! number on, read from the file in bounded chunks.
//!
//! A follower (`?follow=1`) of a job running here takes the log's feed of writes
//! ([`runner::joblog::JobLog::feed`]) before it reads the file, reads the file to its
//! end, and from then on is handed each write as the writer makes it: a thousand
//! followers share the writer's bytes, and none reads the file again unless it fell
//! behind the feed (the file is the catch-up source). A job not running here (queued,
//! or its log written by another process) is looked at on a slow tick instead. So
//! each follower costs one chunk of memory, and nothing while the log is quiet.
//!
//! While the job is queued, a follower also gets a `queued: ...` line whenever the
//! scheduler's reason for the wait changes (told by the pass that changed it). These
//! lines are not in the file: `from` counts the file's lines only.

use std::io::{ErrorKind, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use axum::body::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{broadcast, watch};

use super::service::Dispatcher;
use runner::joblog::{Growth, Level, LogLine};

/// Bytes read from the file at a time.
const CHUNK: usize = 64 * 1024;

/// A longer line is not sent (a log line is a console line or a message: never this
/// long unless the file is damaged), so a reader never holds more than this.
const MAX_LINE: usize = 1024 * 1024;

/// How often a follower without a feed looks at the log and the job.
const FALLBACK: Duration = Duration::from_secs(1);

/// Lines fed within this long of a first one go out with it, in one write: a follower
/// of a chatty log costs a write per batch, not per line (each write is a trip through
/// hyper, the runtime and TCP, a thousand times over with a thousand followers), and a
/// person watching cannot tell.
const BATCH: Duration = Duration::from_millis(100);

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
    let ends = service.job_ends();
    let mut reader = Reader {
        cursor: Cursor::new(path, from),
        service,
        id,
        follow,
        finished_seen: false,
        feed: None,
        read_file: true,
        writer_gone: false,
        ends,
        check_end: true,
        waiting: None,
        said_waiting: None,
    };
    // Taken before the file is read: nothing written meanwhile is missed.
    reader.take_feed();
    let mut failed = false;
    let first = loop {
        match reader.cursor.next_lines().await {
            Ok(Some(out)) if out.is_empty() => continue,
            Ok(Some(out)) => break Some(Ok(out)),
            Ok(None) => {
                reader.read_file = false;
                break None;
            }
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
    /// The writes to the log as they happen, while the job runs here.
    feed: Option<broadcast::Receiver<Growth>>,
    /// The file may hold lines not sent yet: read it to its end before waiting.
    read_file: bool,
    /// The log's writer is gone (the job's run ended): only the job's end is awaited.
    writer_gone: bool,
    /// Changes when a job ends.
    ends: watch::Receiver<u64>,
    /// Whether this job may have ended since it was last looked at.
    check_end: bool,
    /// Changes when a queued job's reason to wait does; taken when first needed.
    waiting: Option<watch::Receiver<u64>>,
    /// The reason last sent.
    said_waiting: Option<String>,
}

impl Reader {
    async fn next(mut self) -> Option<(std::io::Result<Bytes>, Self)> {
        loop {
            if self.read_file {
                match self.cursor.next_lines().await {
                    Ok(Some(out)) if !out.is_empty() => return Some((Ok(out), self)),
                    Ok(Some(_)) => continue,
                    Ok(None) => self.read_file = false,
                    Err(err) => {
                        tracing::warn!(job = self.id, %err, "cannot read the job log");
                        return None;
                    }
                }
            }
            // At the end of the file.
            if !self.follow || self.finished_seen {
                return None;
            }
            if let Some(line) = self.waiting_line() {
                return Some((Ok(line), self));
            }
            if self.feed.is_none() && !self.writer_gone && self.take_feed() {
                // The job started here: what it wrote before the feed was taken is
                // in the file.
                self.read_file = true;
                continue;
            }
            if std::mem::take(&mut self.check_end) && self.job_finished().await {
                // Finished first, then read to the end once more: a line written just
                // before the end is not lost.
                self.finished_seen = true;
                self.read_file = true;
                continue;
            }
            let fed_here = self.feed.is_some();
            let fed = async {
                match self.feed.as_mut() {
                    Some(feed) => feed.recv().await,
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
            // Without a feed nothing says the log grew: the file is looked at now
            // and then.
            let tick = async {
                if fed_here {
                    std::future::pending().await
                } else {
                    tokio::time::sleep(FALLBACK).await
                }
            };
            let ended = async {
                if self.ends.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                said = fed => {
                    let said = said.map_err(|e| match e {
                        broadcast::error::RecvError::Lagged(_) => FeedEnd::Lagged,
                        broadcast::error::RecvError::Closed => FeedEnd::Closed,
                    });
                    if let Some(out) = self.take_fed(said)
                        && !out.is_empty()
                    {
                        let out = self.gather(out).await;
                        return Some((Ok(out), self));
                    }
                }
                () = ended => self.check_end = true,
                () = waiting => {}
                () = tick => {
                    self.read_file = true;
                    self.check_end = true;
                }
            }
        }
    }

    /// `first`, and the lines fed within [`BATCH`] after it (up to a chunk's size).
    /// The follower sleeps through the batch and then takes what came, rather than
    /// being woken for each line: with a thousand followers, every wake counts.
    async fn gather(&mut self, first: Bytes) -> Bytes {
        if self.feed.is_none() {
            return first;
        }
        tokio::time::sleep(BATCH).await;
        let mut size = first.len();
        let mut parts = vec![first];
        while size < CHUNK {
            let said = match self.feed.as_mut().map(broadcast::Receiver::try_recv) {
                None | Some(Err(broadcast::error::TryRecvError::Empty)) => break,
                Some(Ok(growth)) => Ok(growth),
                Some(Err(broadcast::error::TryRecvError::Lagged(_))) => Err(FeedEnd::Lagged),
                Some(Err(broadcast::error::TryRecvError::Closed)) => Err(FeedEnd::Closed),
            };
            let Some(out) = self.take_fed(said) else {
                break;
            };
            size += out.len();
            parts.push(out);
        }
        match parts.as_slice() {
            [one] => one.clone(),
            _ => Bytes::from(parts.concat()),
        }
    }

    /// What the feed said, taken: the lines to send (possibly none), or `None` when the
    /// follower turns to the file (bytes before these were not handed over, the kept
    /// tail was copied in, it fell behind) or the writer left.
    fn take_fed(&mut self, said: Result<Growth, FeedEnd>) -> Option<Bytes> {
        match said {
            Ok(Growth::Lines { at, text }) => {
                let out = self.cursor.fed(at, &text);
                self.read_file |= out.is_none();
                out
            }
            Ok(Growth::Copied { .. }) | Err(FeedEnd::Lagged) => {
                self.read_file = true;
                None
            }
            Err(FeedEnd::Closed) => {
                self.writer_left();
                None
            }
        }
    }

    /// The log's writer is gone: what it wrote last is in the file, and the job's end
    /// is near.
    fn writer_left(&mut self) {
        self.feed = None;
        self.writer_gone = true;
        self.read_file = true;
        self.check_end = true;
    }

    /// Takes the feed of the job's log, if it runs here now and one is to be followed.
    fn take_feed(&mut self) -> bool {
        if !self.follow {
            return false;
        }
        self.feed = self.service.job_log(self.id).map(|log| log.feed().1);
        self.feed.is_some()
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

/// Why a feed said no more lines.
enum FeedEnd {
    /// The follower fell behind: what it missed is in the file.
    Lagged,
    /// The writer is gone.
    Closed,
}

/// A place in a log file and the line being read there.
struct Cursor {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    /// Bytes of the file taken so far, from the file or from the feed.
    taken: u64,
    /// The file's read position is not `taken` (bytes came from the feed).
    moved: bool,
    /// Lines still to skip (the request's `from`).
    skip: usize,
    /// The start of a line whose end has not been read yet.
    partial: Vec<u8>,
    /// The current line passed [`MAX_LINE`]: it is dropped.
    overlong: bool,
}

impl Cursor {
    fn new(path: PathBuf, skip: usize) -> Self {
        Self {
            path,
            file: None,
            taken: 0,
            moved: false,
            skip,
            partial: Vec::new(),
            overlong: false,
        }
    }

    /// The complete lines of the next chunk of the file (possibly none), or `None` at
    /// its end (or while it does not exist).
    async fn next_lines(&mut self) -> std::io::Result<Option<Bytes>> {
        let file = match &mut self.file {
            Some(file) => file,
            None => match tokio::fs::File::open(&self.path).await {
                Ok(file) => {
                    self.moved = self.taken > 0;
                    self.file.insert(file)
                }
                Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
                Err(err) => return Err(err),
            },
        };
        if self.moved {
            file.seek(SeekFrom::Start(self.taken)).await?;
            self.moved = false;
        }
        let mut chunk = vec![0; CHUNK];
        let read = file.read(&mut chunk).await?;
        if read == 0 {
            return Ok(None);
        }
        Ok(Some(Bytes::from(self.take(&chunk[..read], false))))
    }

    /// Lines the writer wrote at byte `at` of the file: those not taken yet, or `None`
    /// when bytes before `at` were not taken (they are read from the file).
    fn fed(&mut self, at: u64, text: &Bytes) -> Option<Bytes> {
        let end = at + text.len() as u64;
        if end <= self.taken {
            return Some(Bytes::new());
        }
        let from = usize::try_from(self.taken.checked_sub(at)?).ok()?;
        self.moved = true;
        if from == 0
            && self.skip == 0
            && self.partial.is_empty()
            && !self.overlong
            && text.len() <= MAX_LINE
        {
            // The usual case: one whole line, handed on as the writer's own bytes.
            self.taken = end;
            return Some(text.clone());
        }
        // The writer's lines need no check, unless a start read from the file is
        // glued to them (a line the writer's crash cut short, then a new one).
        let trusted = self.partial.is_empty();
        Some(Bytes::from(self.take(&text[from..], trusted)))
    }

    /// The complete lines `bytes` (the next bytes of the file) finish; `trusted` when
    /// they come from the writer, whose lines need no check.
    fn take(&mut self, bytes: &[u8], trusted: bool) -> Vec<u8> {
        self.taken += bytes.len() as u64;
        let mut out = Vec::new();
        for piece in bytes.split_inclusive(|b| *b == b'\n') {
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
                && (trusted || serde_json::from_slice::<LogLine>(whole).is_ok())
            {
                out.extend_from_slice(whole);
                out.push(b'\n');
            }
            self.partial.clear();
            self.overlong = false;
        }
        out
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
        let mut cursor = Cursor::new(path.clone(), 1);
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

    #[tokio::test]
    async fn a_cursor_takes_the_writers_lines_where_the_file_left_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.log");
        let log = JobLog::open(&path, 1 << 20).unwrap();
        log.line(Level::Info, None, "first");
        let (size, _feed) = log.feed();
        // Half of the next line is in the file when the follower reads it.
        let second = serde_json::to_vec(&LogLine::now(Level::Info, None, "second")).unwrap();
        use std::io::Write;
        let mut raw = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        raw.write_all(&second[..10]).unwrap();
        let mut cursor = Cursor::new(path.clone(), 0);
        let text = all(&mut cursor).await;
        assert_eq!(text.lines().count(), 1, "{text}");
        assert_eq!(cursor.taken, size + 10);
        // The writer's bytes from where the file left off; what was read is not sent
        // twice, and a whole line is handed on as it was written.
        let written = |at: u64, text: &[u8]| {
            let mut line = text.to_vec();
            line.push(b'\n');
            (at, Bytes::from(line))
        };
        let (at, whole) = written(size, &second);
        assert_eq!(cursor.fed(at, &whole).unwrap(), &whole[..]);
        let (at, again) = written(size, &second);
        assert!(cursor.fed(at, &again).unwrap().is_empty(), "already taken");
        let next_at = size + whole.len() as u64;
        let (_, third) = written(next_at, b"{}");
        let fast = cursor.fed(next_at, &third).unwrap();
        assert_eq!(fast.as_ptr(), third.as_ptr(), "the writer's own bytes");
        // A write past what was taken: the gap is read from the file.
        assert!(cursor.fed(next_at + 100, &third).is_none());
        // A line the request skips is not sent from the feed either.
        let mut skipping = Cursor::new(path.clone(), 5);
        skipping.taken = next_at;
        assert!(skipping.fed(next_at, &third).unwrap().is_empty());
    }
}
