//! The daemon's HTTP connections: accepted, served by hyper, and closed when they
//! would otherwise hold the daemon hostage.
//!
//! `axum::serve` keeps every connection as long as the client likes: a client that
//! sends half a request header and stops (slowloris), or opens connections and sends
//! nothing, holds a file descriptor each until the process has none left, and then
//! nobody gets an answer. Here:
//!
//! * at most `max_connections` are open at once. When a new one arrives at the cap,
//!   the connection idle the longest (no request in flight, none being read) is
//!   closed to make room; if every connection is busy, the new one waits in the
//!   kernel's accept queue until one ends. Idle connections can therefore never lock
//!   out a client that has something to ask;
//! * a request's headers must be complete `header_timeout` after their first byte;
//! * a connection with no request in flight closes after `idle_timeout`.
//!
//! "In flight" lasts until the response body is sent, so a followed log or a console
//! download being read is never cut as idle. (Request bodies have their own deadline,
//! in the API's handlers.)

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

/// What the server allows each connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Far beyond any descriptor limit; keeps the semaphore's arithmetic in range.
const MAX_CONNECTIONS: usize = 1 << 20;

/// How long connections get to finish their requests once the daemon stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The largest connection cap derived from the open-file limit: each connection costs
/// memory too (buffers, a task), and a lab's API has tens of clients, not thousands.
const MAX_DERIVED_CONNECTIONS: usize = 4096;

/// Raises this process's soft open-file limit to its hard limit (the soft one is often
/// 1024, far below what the hard one allows); returns the soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(err) => {
                tracing::warn!(%err, soft, hard, "cannot raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(err) => {
            tracing::warn!(%err, "cannot read the open-file limit");
            1024
        }
    }
}

/// The connection cap for an open-file limit: half of it, leaving the other half for
/// the jobs (SSH sessions, console and log files, qemu pipes, SQLite).
pub fn connection_cap(fd_limit: u64) -> usize {
    usize::try_from(fd_limit / 2)
        .unwrap_or(usize::MAX)
        .clamp(1, MAX_DERIVED_CONNECTIONS)
}

/// Serves `router` on `listener` until `stop` turns true, then lets open requests
/// finish (at most [`SHUTDOWN_GRACE`]) and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let registry = Arc::new(Registry::default());
    let max = limits.max_connections.clamp(1, MAX_CONNECTIONS);
    let slots = Arc::new(Semaphore::new(max));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Our own header deadline (below) replaces hyper's, which needs its timer.
    builder.http1().header_read_timeout(None);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of descriptors (EMFILE) or a connection reset before it was
                // accepted: the listener itself is fine; give closing connections a
                // moment rather than spinning on the error.
                tracing::warn!(%err, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = take_slot(&slots, &registry, &mut stop).await else {
            break;
        };
        let connection = Connection {
            state: Arc::new(ConnState::new()),
            registry: registry.clone(),
            limits,
        };
        tokio::spawn(connection.run(stream, builder.clone(), router.clone(), slot, stop.clone()));
    }
    // Every connection gives its slot back when it ends.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
}

/// A free connection slot: at the cap, the connection idle the longest is closed to
/// make one, or (none idle) the first connection to end frees one. `None` when the
/// daemon stops meanwhile.
async fn take_slot(
    slots: &Arc<Semaphore>,
    registry: &Registry,
    stop: &mut watch::Receiver<bool>,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(slot) = slots.clone().try_acquire_owned() {
        return Some(slot);
    }
    loop {
        // Registered before looking, so a connection going idle meanwhile is noticed.
        let went_idle = registry.went_idle.notified();
        tokio::pin!(went_idle);
        went_idle.as_mut().enable();
        registry.evict_longest_idle();
        tokio::select! {
            slot = slots.clone().acquire_owned() => return slot.ok(),
            () = &mut went_idle => {}
            _ = stop.wait_for(|s| *s) => return None,
        }
    }
}

/// Milliseconds since the registry started: connection times as plain atomics.
fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The open connections, for choosing which to close at the cap.
struct Registry {
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<ConnState>>>,
    /// Signalled whenever a connection's last request in flight ends.
    went_idle: Notify,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::default(),
            went_idle: Notify::new(),
        }
    }
}

impl Registry {
    /// Asks the connection idle the longest (if any is idle) to close.
    fn evict_longest_idle(&self) {
        let open = self.open.lock();
        let victim = open
            .values()
            .filter(|c| c.in_flight.load(Ordering::Acquire) == 0)
            .filter(|c| !c.evicted.load(Ordering::Acquire))
            .min_by_key(|c| c.idle_since.load(Ordering::Acquire));
        if let Some(conn) = victim {
            conn.evicted.store(true, Ordering::Release);
            conn.changed.notify_one();
        }
    }
}

/// What the connection's task, its requests and its socket tell each other.
struct ConnState {
    in_flight: AtomicUsize,
    /// When the last request in flight ended (or the connection opened), in registry
    /// milliseconds.
    idle_since: AtomicU64,
    /// When bytes of a next request started to arrive while idle (0: none since).
    reading_since: AtomicU64,
    /// Chosen to make room at the cap.
    evicted: AtomicBool,
    changed: Notify,
}

impl ConnState {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            reading_since: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }
}

struct Connection {
    state: Arc<ConnState>,
    registry: Arc<Registry>,
    limits: Limits,
}

impl Connection {
    async fn run(
        self,
        stream: TcpStream,
        builder: auto::Builder<TokioExecutor>,
        router: Router,
        _slot: OwnedSemaphorePermit,
        mut stop: watch::Receiver<bool>,
    ) {
        let id = self.registry.next_id.fetch_add(1, Ordering::Relaxed);
        let epoch = self.registry.epoch;
        self.state
            .idle_since
            .store(millis_since(epoch), Ordering::Release);
        self.registry.open.lock().insert(id, self.state.clone());
        let io = TokioIo::new(Watched {
            io: stream,
            state: self.state.clone(),
            epoch,
        });
        let service = Tracked {
            inner: TowerToHyperService::new(router),
            state: self.state.clone(),
            registry: self.registry.clone(),
        };
        let conn = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        let mut stopping: Option<Instant> = None;
        loop {
            let changed = self.state.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.state.evicted.load(Ordering::Acquire) {
                if self.state.in_flight.load(Ordering::Acquire) == 0 {
                    tracing::debug!(id, "closing the connection idle the longest");
                    break;
                }
                // A request came in just as it was chosen: it stays.
                self.state.evicted.store(false, Ordering::Release);
            }
            let deadline = self.deadline().into_iter().chain(stopping).min();
            if deadline.is_some_and(|d| d <= Instant::now()) {
                tracing::debug!(id, "closing a connection past its deadline");
                break;
            }
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(id, %err, "connection ended");
                    }
                    break;
                }
                () = &mut changed => {}
                () = sleep_until(deadline) => {}
                _ = stop.wait_for(|s| *s), if stopping.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    stopping = Some(Instant::now() + SHUTDOWN_GRACE);
                }
            }
        }
        self.registry.open.lock().remove(&id);
    }

    /// When this connection closes if nothing happens: none while a request is in
    /// flight; else the header deadline of a request being read, or the idle one.
    fn deadline(&self) -> Option<Instant> {
        if self.state.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let epoch = self.registry.epoch;
        let at = |millis: u64, after: Duration| epoch + Duration::from_millis(millis) + after;
        match self.state.reading_since.load(Ordering::Acquire) {
            0 => Some(at(
                self.state.idle_since.load(Ordering::Acquire),
                self.limits.idle_timeout,
            )),
            since => Some(at(since, self.limits.header_timeout)),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The socket, noting when a request starts to arrive on an idle connection (the
/// header deadline runs from there).
struct Watched {
    io: TcpStream,
    state: Arc<ConnState>,
    epoch: Instant,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let state = &self.state;
        if buf.filled().len() > before
            && state.in_flight.load(Ordering::Acquire) == 0
            && state.reading_since.load(Ordering::Acquire) == 0
        {
            // At least 1: 0 means "nothing being read".
            let now = millis_since(self.epoch).max(1);
            state.reading_since.store(now, Ordering::Release);
            state.changed.notify_one();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The router, counting the connection's requests in flight until their response
/// bodies are sent.
struct Tracked {
    inner: TowerToHyperService<Router>,
    state: Arc<ConnState>,
    registry: Arc<Registry>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Tracked {
    type Response = hyper::Response<Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<hyper::Response<Body>, Infallible>> + Send + 'static>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let guard = InFlight::start(self.state.clone(), self.registry.clone());
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| {
                Body::new(GuardedBody {
                    inner: body,
                    _guard: guard,
                })
            }))
        })
    }
}

/// One request in flight; dropped when its response body is done (or abandoned).
struct InFlight {
    state: Arc<ConnState>,
    registry: Arc<Registry>,
}

impl InFlight {
    fn start(state: Arc<ConnState>, registry: Arc<Registry>) -> Self {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        state.reading_since.store(0, Ordering::Release);
        state.changed.notify_one();
        Self { state, registry }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.state.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let now = millis_since(self.registry.epoch);
            self.state.idle_since.store(now, Ordering::Release);
            self.state.changed.notify_one();
            self.registry.went_idle.notify_waiters();
        }
    }
}

/// A response body carrying its request's [`InFlight`].
struct GuardedBody {
    inner: Body,
    _guard: InFlight,
}

impl hyper::body::Body for GuardedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
