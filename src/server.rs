//! Serving an axum [`Router`] on a bound listener under connection limits, for both the
//! token service and the telemetry intake.
//!
//! Owns: the accept loop, one HTTP/1 connection task per socket, the per-connection
//! deadlines, the connection cap and graceful shutdown. Never: routes or answers requests.
//!
//! Why not `axum::serve`: it has no cap and no timeouts, so half-open, trickling and idle
//! sockets stay open for ever; at Lambda's 1,024 file descriptors, ~1,100 of them starved
//! `/token`, the telemetry intake and the exporter at once. Why not hyper's
//! `http1::Builder::header_read_timeout`: in hyper 1.x its timer starts whenever hyper begins
//! waiting for a head (at accept, and again as soon as a response is written), not at the
//! first byte, so it would also close every idle keep-alive connection after the header
//! timeout. Each connection here tracks its own phase instead (see [`Phase`]).
//!
//! Lambda freezes the whole sandbox between invocations. Timers are not paused by a freeze:
//! a deadline that passed while frozen fires at thaw, so an idle connection left from a
//! previous invocation may be closed just as the function thaws.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{Instant, Sleep};
use tower_service::Service as _;

use crate::metrics::{Listener, Metrics, Refusal};

/// Limits for one listener. The defaults are [`Limits::TOKEN`] and [`Limits::TELEMETRY`];
/// tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once. At the cap a new connection evicts one that has no request
    /// in flight (see [`victim`] for which), or is refused at once when every one is busy:
    /// never queued.
    pub max_connections: usize,
    /// A request head must be complete this long after accept (first request) or after its
    /// first byte (later requests on a keep-alive connection).
    pub header_timeout: Duration,
    /// A keep-alive connection with no request is closed after this long.
    pub idle_timeout: Duration,
    /// A request body must be fully received this long after its head.
    pub body_timeout: Duration,
}

impl Limits {
    /// The token service. 256 connections: a function may hold a pool of keep-alive
    /// connections per worker thread, and the load test holds 256 at once; at ~17 KB each that
    /// is ~4 MB at worst and a quarter of Lambda's 1,024 file descriptors. 5 s for a head or a
    /// body that is a few hundred bytes on loopback only ever trips a stalled client. 60 s idle
    /// is longer than Node's keep-alive agent (5 s) or botocore keeps idle sockets, so the
    /// client normally closes first; clients that keep them longer (Go and reqwest: 90 s,
    /// urllib3: no limit) retry a request on a reused connection the server closed.
    pub const TOKEN: Limits = Limits {
        max_connections: 256,
        header_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(60),
        body_timeout: Duration::from_secs(5),
    };

    /// The telemetry intake: Lambda's Telemetry API delivers one batch at a time per
    /// subscriber, so 32 leaves ample room for its reconnects while bounding what a local
    /// process can hold. Same timeouts as [`Limits::TOKEN`]: a 2 MiB batch on the sandbox
    /// network takes milliseconds.
    pub const TELEMETRY: Limits = Limits {
        max_connections: 32,
        ..Limits::TOKEN
    };

    /// `SIDECAR_METRICS_ADDR` in `serve` mode: a Prometheus server or two scrape it every few
    /// seconds, so 16 is plenty; it may face a network, hence a cap well below the token's.
    pub const METRICS: Limits = Limits {
        max_connections: 16,
        ..Limits::TOKEN
    };
}

/// The pause after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What an over-capacity client reads before the socket closes.
const REFUSED: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// Whether `headers` hold exactly one `Host`, and it is one of `hosts` (case-insensitive):
/// a request a local client addressed to this listener, not one a DNS-rebound page or a URL
/// naming another host sent here. Each listener says which names are its own.
pub fn host_is_one_of(headers: &http::HeaderMap, hosts: &[String]) -> bool {
    let mut given = headers.get_all(http::header::HOST).iter();
    match (given.next(), given.next()) {
        (Some(host), None) => hosts
            .iter()
            .any(|h| host.as_bytes().eq_ignore_ascii_case(h.as_bytes())),
        _ => false,
    }
}

/// A request a listener answers at once, before its [`Router`]: `/token`'s hot path
/// (`GET /token`, issue 9). The router costs a boxed request body with its timer, a boxed
/// response body, the middleware's and handler's futures and the route lookup per request,
/// about a fifth of a token's CPU time on one core; a shortcut costs none of them.
pub trait Shortcut: Send + Sync + 'static {
    /// The whole answer to a request, from its head, or `None` to hand it to the router. A
    /// request it answers has its body, if any, left unread. `peer` is the connection's
    /// remote address, when the socket could tell it.
    fn answer(
        &self,
        method: &Method,
        uri: &Uri,
        version: Version,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Option<Response<Bytes>>;
}

/// Serves `router` on `listener` under `limits` until `shutdown` resolves; then stops
/// accepting, closes connections with no request in flight, and returns once in-flight
/// requests are answered. Refusals, evictions and timeouts are counted on `metrics`
/// (`sidecar.connections.refused`) when there is a recorder.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    name: Listener,
    metrics: Option<Arc<Metrics>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, router, None, limits, name, metrics, shutdown).await
}

/// [`serve`], with requests offered to `shortcut` before the router.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    shortcut: Option<Arc<dyn Shortcut>>,
    limits: Limits,
    name: Listener,
    metrics: Option<Arc<Metrics>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared {
        limits,
        name,
        metrics,
        shortcut,
        conns: Mutex::new(BTreeMap::new()),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    // Each connection task holds a sender; `recv` returns None once all have ended.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let mut next_id: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(listener = name.as_str(), error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        next_id += 1;
        let admitted = shared.admit(next_id);
        if admitted.evicted {
            // Let the evicted connection's task run and close its socket before accepting
            // more, so a burst cannot pile up descriptors beyond the cap.
            tokio::task::yield_now().await;
        }
        let Some(conn) = admitted.conn else {
            // Best effort: the socket is new, so its send buffer has room; if not, just close.
            let _ = stream.try_write(REFUSED);
            shared.count(Refusal::OverCapacity);
            continue;
        };
        tokio::spawn(connection(
            Arc::clone(&shared),
            next_id,
            conn,
            stream,
            router.clone(),
            stop_rx.clone(),
            done_tx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(done_tx);
    let _ = done_rx.recv().await;
    Ok(())
}

/// State shared by the accept loop and the connection tasks of one listener.
struct Shared {
    limits: Limits,
    name: Listener,
    metrics: Option<Arc<Metrics>>,
    shortcut: Option<Arc<dyn Shortcut>>,
    /// Open connections by accept order: the first entry is the oldest.
    conns: Mutex<BTreeMap<u64, Arc<Conn>>>,
}

impl Shared {
    /// Registers connection `id`, evicting the [`victim`] when at the cap; no connection when
    /// every one is busy.
    fn admit(&self, id: u64) -> Admitted {
        let mut conns = lock(&self.conns);
        let mut evicted = false;
        if conns.len() >= self.limits.max_connections {
            let chosen = victim(conns.iter().map(|(id, c)| (*id, c.state().standing())));
            match chosen.and_then(|victim| conns.remove(&victim)) {
                Some(victim) => {
                    victim.evict();
                    self.count(Refusal::Evicted);
                    evicted = true;
                }
                None => {
                    return Admitted {
                        conn: None,
                        evicted,
                    };
                }
            }
        }
        let conn = Arc::new(Conn {
            state: Mutex::new(ConnState {
                phase: Phase::Head {
                    deadline: Instant::now() + self.limits.header_timeout,
                },
                evicted: false,
                served: false,
                armed: None,
            }),
            changed: Notify::new(),
        });
        conns.insert(id, Arc::clone(&conn));
        Admitted {
            conn: Some(conn),
            evicted,
        }
    }

    fn count(&self, reason: Refusal) {
        if let Some(metrics) = &self.metrics {
            metrics.connection_refused(self.name, reason);
        }
    }
}

/// The outcome of [`Shared::admit`].
struct Admitted {
    /// The new connection's state; None when it is refused.
    conn: Option<Arc<Conn>>,
    /// Whether an older connection was evicted to make room.
    evicted: bool,
}

/// Where an open connection stands, as eviction weighs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// A request is in flight: never evicted.
    Busy,
    /// Has completed no request yet and is waiting for (the rest of) its first head.
    Fresh,
    /// Has completed a request and waits, idle, for the next one: a client's keep-alive
    /// connection.
    Idle,
    /// Has completed a request and is receiving the next one's head.
    Receiving,
}

/// The connection to close to make room for a new one at the cap, from the open ones by
/// accept order (`id`); `None` when every one is busy. A flood of new connections must not
/// cost the function the connection it reuses, so:
/// 1. a connection that has completed no request, the oldest first: it has been silent the
///    longest (a real client sends its head as soon as it connects), and a client that just
///    connected keeps the most time to send its own;
/// 2. then an idle connection that has served requests, the most recently opened first: the
///    function's keep-alive connections were opened before a flood of clients that complete
///    requests too (`wrk -c400`), so they go last;
/// 3. then one receiving its next head, again the most recent first.
fn victim(conns: impl IntoIterator<Item = (u64, Standing)>) -> Option<u64> {
    conns
        .into_iter()
        .filter_map(|(id, standing)| {
            let rank = match standing {
                Standing::Busy => return None,
                Standing::Fresh => (0, id),
                Standing::Idle => (1, u64::MAX - id),
                Standing::Receiving => (2, u64::MAX - id),
            };
            Some((rank, id))
        })
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, id)| id)
}

/// Locks, ignoring poisoning: the guarded data stays consistent, every update is one store.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where a connection is between requests. `Busy` has no deadline of its own: the body
/// deadline bounds the request, and a response is handed to hyper at once and buffered
/// whole (a client that pipelines requests without reading the answers was measured to
/// end up idle, hence evictable, not busy).
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request head: since accept, or since the first byte after `Idle`.
    Head { deadline: Instant },
    /// A request is in flight: from its complete head until its response is written.
    Busy,
    /// Keep-alive, no byte of a next request yet.
    Idle { deadline: Instant },
}

impl Phase {
    fn deadline(self) -> Option<Instant> {
        match self {
            Phase::Head { deadline } | Phase::Idle { deadline } => Some(deadline),
            Phase::Busy => None,
        }
    }
}

struct ConnState {
    phase: Phase,
    /// Set by the accept loop when it closes this connection to make room.
    evicted: bool,
    /// Whether a request on it has been answered (it is someone's keep-alive connection).
    served: bool,
    /// When the connection task's timer fires (`None`: it waits for a notification only).
    /// A phase whose deadline is no earlier needs no wake-up: the timer fires first, and
    /// [`expired`] then re-arms it at the phase's own deadline. Under load, each request's
    /// head deadline is later than the one armed for the request before, so a request costs
    /// no notification, no extra poll of the connection task and no timer re-registration.
    armed: Option<Instant>,
}

impl ConnState {
    fn standing(&self) -> Standing {
        match (self.phase, self.served) {
            (Phase::Busy, _) => Standing::Busy,
            (_, false) => Standing::Fresh,
            (Phase::Idle { .. }, true) => Standing::Idle,
            (Phase::Head { .. }, true) => Standing::Receiving,
        }
    }
}

/// One connection's phase, shared by its socket wrapper, its request hooks and its task.
struct Conn {
    state: Mutex<ConnState>,
    /// Wakes the connection task when the phase changes or it is evicted.
    changed: Notify,
}

impl Conn {
    fn state(&self) -> MutexGuard<'_, ConnState> {
        lock(&self.state)
    }

    /// Moves to `phase`, waking the connection task only when the timer it armed would fire
    /// too late for the new deadline (see [`ConnState::armed`]).
    fn set(&self, phase: Phase) {
        let mut state = self.state();
        state.phase = phase;
        // Only a request's end makes a connection idle.
        state.served |= matches!(phase, Phase::Idle { .. });
        let wake = match (phase.deadline(), state.armed) {
            (Some(deadline), Some(armed)) => deadline < armed,
            (Some(_), None) => true,
            (None, _) => false,
        };
        drop(state);
        if wake {
            self.changed.notify_one();
        }
    }

    fn evict(&self) {
        self.state().evicted = true;
        self.changed.notify_one();
    }

    /// Bytes arrived: on an idle connection they start the next head's deadline.
    fn on_bytes(&self, header_timeout: Duration) {
        let idle = matches!(self.state().phase, Phase::Idle { .. });
        if idle {
            self.set(Phase::Head {
                deadline: Instant::now() + header_timeout,
            });
        }
    }
}

/// Why a connection task closed its socket itself.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Close {
    Evicted,
    HeaderTimeout,
    Idle,
    /// Shutdown with no request in flight.
    Shutdown,
}

/// Resolves when the connection must be closed: evicted, or its phase's deadline passed.
/// One timer for the connection's life, re-armed only when it fires or a phase needs an
/// earlier deadline (see [`ConnState::armed`]).
async fn expired(conn: &Conn) -> Close {
    let timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(timer);
    loop {
        let (deadline, reason) = {
            let mut state = conn.state();
            if state.evicted {
                return Close::Evicted;
            }
            let reason = match state.phase {
                Phase::Idle { .. } => Close::Idle,
                Phase::Head { .. } | Phase::Busy => Close::HeaderTimeout,
            };
            let deadline = state.phase.deadline();
            state.armed = deadline;
            (deadline, reason)
        };
        match deadline {
            Some(deadline) if deadline <= Instant::now() => return reason,
            Some(deadline) => {
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                tokio::select! {
                    _ = &mut timer => {}
                    _ = conn.changed.notified() => {}
                }
            }
            None => conn.changed.notified().await,
        }
    }
}

async fn connection(
    shared: Arc<Shared>,
    id: u64,
    conn: Arc<Conn>,
    stream: TcpStream,
    router: Router,
    mut stop: watch::Receiver<bool>,
    _done: mpsc::Sender<()>,
) {
    let limits = shared.limits;
    // The peer, for the handlers (as axum's `ConnectInfo`) and the shortcut.
    let peer = stream.peer_addr().ok();
    let io = TokioIo::new(Watched {
        stream,
        conn: Arc::clone(&conn),
        header_timeout: limits.header_timeout,
    });
    let service = {
        let conn = Arc::clone(&conn);
        let shared = Arc::clone(&shared);
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            conn.set(Phase::Busy);
            if let Some(peer) = peer {
                request.extensions_mut().insert(ConnectInfo(peer));
            }
            let guard = Done {
                conn: Arc::clone(&conn),
                idle_timeout: limits.idle_timeout,
            };
            let answered = shared.shortcut.as_ref().and_then(|shortcut| {
                shortcut.answer(
                    request.method(),
                    request.uri(),
                    request.version(),
                    request.headers(),
                    peer,
                )
            });
            let routed = match answered {
                Some(response) => Err(response),
                None => Ok(router.clone().call(request.map(|body| {
                    Body::new(Timed {
                        inner: body,
                        deadline: Instant::now() + limits.body_timeout,
                        timer: None,
                        shared: Arc::clone(&shared),
                        expired: false,
                    })
                }))),
            };
            async move {
                let response = match routed {
                    Ok(routed) => routed.await?.map(Inner::Routed),
                    Err(answered) => answered.map(|bytes| Inner::Full(Some(bytes))),
                };
                Ok::<_, Infallible>(response.map(|inner| Guarded {
                    inner,
                    _guard: guard,
                }))
            }
        })
    };
    // Deadlines are ours (see the module doc), so hyper's header timer is off.
    let http = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(http);
    let mut draining = false;
    let closed = loop {
        tokio::select! {
            // First, so that an evicted connection never starts another request.
            biased;
            reason = expired(&conn) => break Some(reason),
            _ = stop.wait_for(|stop| *stop), if !draining => {
                if !matches!(conn.state().phase, Phase::Busy) {
                    break Some(Close::Shutdown);
                }
                // The request in flight is answered, then hyper closes the connection.
                http.as_mut().graceful_shutdown();
                draining = true;
            }
            result = http.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(listener = shared.name.as_str(), error = %e, "connection ended");
                }
                break None;
            }
        }
    };
    lock(&shared.conns).remove(&id);
    if closed == Some(Close::HeaderTimeout) {
        shared.count(Refusal::HeaderTimeout);
    }
}

/// The socket, reporting every read to its [`Conn`] so an idle connection's first byte
/// starts the header deadline.
struct Watched {
    stream: TcpStream,
    conn: Arc<Conn>,
    header_timeout: Duration,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.conn.on_bytes(this.header_timeout);
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// A request body that fails once `deadline` passes before its end. The handler then answers
/// (axum: 400) and hyper closes the connection, since the body was not read to its end.
struct Timed {
    inner: Incoming,
    deadline: Instant,
    /// Armed when the body first has to be waited for: most requests have no body, or one
    /// that arrived with the head, and would pay a boxed timer for nothing.
    timer: Option<Pin<Box<Sleep>>>,
    shared: Arc<Shared>,
    expired: bool,
}

impl http_body::Body for Timed {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(Some(Err("request body timed out".into())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => match this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(this.deadline)))
                .as_mut()
                .poll(cx)
            {
                Poll::Ready(()) => {
                    this.expired = true;
                    this.shared.count(Refusal::BodyTimeout);
                    Poll::Ready(Some(Err("request body timed out".into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Marks the request done when dropped: hyper drops a response body once it is written.
struct Done {
    conn: Arc<Conn>,
    idle_timeout: Duration,
}

impl Drop for Done {
    fn drop(&mut self) {
        self.conn.set(Phase::Idle {
            deadline: Instant::now() + self.idle_timeout,
        });
    }
}

/// A response body carrying the [`Done`] guard of its request.
struct Guarded {
    inner: Inner,
    _guard: Done,
}

/// A [`Shortcut`]'s whole body (`None` once written), or the router's.
enum Inner {
    Full(Option<Bytes>),
    Routed(Body),
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.get_mut().inner {
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Routed(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(bytes) => bytes.is_none(),
            Inner::Routed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Inner::Routed(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;

    use super::*;
    use crate::export::MetricsSource;
    use crate::metrics::testing;

    const SLOW: Duration = Duration::from_secs(2);
    /// A functional bound, not a budget: far above every limit the tests set.
    const PATIENCE: Duration = Duration::from_secs(10);

    struct Server {
        addr: SocketAddr,
        source: MetricsSource,
        _stop: oneshot::Sender<()>,
    }

    async fn start(limits: Limits) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (source, metrics) = testing::source();
        let router = Router::new()
            .route("/", get(|| async { "ok" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(SLOW).await;
                    "ok"
                }),
            )
            .route(
                "/body",
                post(|body: Bytes| async move { body.len().to_string() }),
            );
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(
            listener,
            router,
            limits,
            Listener::Token,
            Some(Arc::new(metrics)),
            async {
                let _ = stopped.await;
            },
        ));
        Server {
            addr,
            source,
            _stop: stop,
        }
    }

    fn limits() -> Limits {
        Limits {
            max_connections: 8,
            header_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_millis(300),
        }
    }

    /// Reads until a response ending in `ok` arrived (keep-alive), or EOF.
    async fn response(conn: &mut TcpStream) -> String {
        let mut text = String::new();
        let mut buf = [0u8; 1024];
        while !text.ends_with("ok") {
            let n = tokio::time::timeout(PATIENCE, conn.read(&mut buf))
                .await
                .expect("an answer or EOF")
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        text
    }

    /// True once the server closed `conn` (EOF or reset), waiting at most `PATIENCE`.
    async fn closed(conn: &mut TcpStream) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(PATIENCE, conn.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    #[tokio::test]
    async fn a_trickled_head_is_cut_at_the_header_timeout() {
        let server = start(limits()).await;
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "GET / HTTP/1.1\r\nhost: a\r\nx-pad: {}\r\n\r\n",
            "a".repeat(40)
        );
        let mut sent = 0;
        let mut buf = [0u8; 64];
        for byte in head.as_bytes() {
            if conn.write_all(&[*byte]).await.is_err() {
                break;
            }
            sent += 1;
            match tokio::time::timeout(Duration::from_millis(100), conn.read(&mut buf)).await {
                Err(_) => continue,
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(n)) => panic!("answered: {}", String::from_utf8_lossy(&buf[..n])),
            }
        }
        assert!(sent < head.len(), "the whole head was accepted");
        assert_eq!(
            testing::render(&server.source),
            "sidecar.connections.refused{listener=token,reason=header_timeout} = 1"
        );
    }

    /// The connection's timer is not re-armed for each request (it fires at the previous
    /// request's head deadline and re-arms then): a later head on a keep-alive connection is
    /// still cut at its own header timeout.
    #[tokio::test]
    async fn a_trickled_head_after_a_request_is_cut_at_the_header_timeout() {
        let server = start(limits()).await;
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        assert!(response(&mut conn).await.starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        conn.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert!(closed(&mut conn).await, "a head left unfinished stays open");
        assert_eq!(
            testing::render(&server.source),
            "sidecar.connections.refused{listener=token,reason=header_timeout} = 1"
        );
    }

    /// An idle keep-alive connection outlives the header timeout (hyper's own header timer
    /// would close it) and is closed at the idle timeout, without counting a refusal.
    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
        let server = start(Limits {
            idle_timeout: Duration::from_millis(900),
            ..limits()
        })
        .await;
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        let request = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        conn.write_all(request).await.unwrap();
        assert!(response(&mut conn).await.starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(500)).await;
        conn.write_all(request).await.unwrap();
        assert!(response(&mut conn).await.starts_with("HTTP/1.1 200"));
        assert!(closed(&mut conn).await, "still open after the idle timeout");
        assert_eq!(testing::render(&server.source), "");
    }

    #[tokio::test]
    async fn a_slow_body_is_cut_at_the_body_timeout() {
        let server = start(limits()).await;
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        conn.write_all(b"POST /body HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\n0123456789")
            .await
            .unwrap();
        let mut answer = String::new();
        let read = tokio::time::timeout(PATIENCE, conn.read_to_string(&mut answer)).await;
        assert!(read.is_ok(), "still open after the body timeout");
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert_eq!(
            testing::render(&server.source),
            "sidecar.connections.refused{listener=token,reason=body_timeout} = 1"
        );
    }

    #[test]
    fn eviction_spares_busy_then_keep_alive_connections() {
        use Standing::{Busy, Fresh, Idle, Receiving};
        /// Open connections by accept order.
        type Open = [(u64, Standing)];
        // (the open connections, the one evicted)
        let cases: &[(&Open, Option<u64>)] = &[
            (&[], None),
            (&[(1, Busy), (2, Busy)], None),
            // The function's keep-alive connection (1) outlives a flood of silent ones,
            // which go oldest first.
            (&[(1, Idle), (2, Fresh), (3, Fresh)], Some(2)),
            (&[(1, Idle), (2, Busy), (3, Fresh)], Some(3)),
            (&[(1, Receiving), (2, Idle), (3, Fresh)], Some(3)),
            // Only connections that have served requests (a wrk-like flood): the most
            // recently opened goes first, the oldest keep-alive one last.
            (&[(1, Idle), (2, Idle), (3, Idle)], Some(3)),
            (&[(1, Idle), (2, Idle), (3, Busy)], Some(2)),
            // One receiving its next head goes after every idle one.
            (&[(1, Idle), (5, Receiving)], Some(1)),
            (&[(1, Receiving), (5, Receiving), (7, Busy)], Some(5)),
            (&[(4, Busy), (9, Idle)], Some(9)),
        ];
        for (conns, expected) in cases {
            assert_eq!(victim(conns.iter().copied()), *expected, "{conns:?}");
        }
    }

    #[test]
    fn a_connection_is_fresh_until_it_completes_a_request() {
        let state = |phase, served| ConnState {
            phase,
            evicted: false,
            served,
            armed: None,
        };
        let deadline = Instant::now();
        let cases = [
            (state(Phase::Head { deadline }, false), Standing::Fresh),
            (state(Phase::Busy, false), Standing::Busy),
            (state(Phase::Busy, true), Standing::Busy),
            (state(Phase::Idle { deadline }, true), Standing::Idle),
            (state(Phase::Head { deadline }, true), Standing::Receiving),
        ];
        for (state, expected) in cases {
            assert_eq!(state.standing(), expected, "{:?}", state.phase);
        }
    }

    /// At the cap, a new connection evicts one that has sent nothing rather than the older
    /// keep-alive connection that has completed a request, which goes on being answered.
    #[tokio::test]
    async fn at_the_cap_a_keep_alive_connection_outlives_a_silent_one() {
        let server = start(Limits {
            max_connections: 2,
            header_timeout: Duration::from_secs(30),
            ..limits()
        })
        .await;
        let settle = || tokio::time::sleep(Duration::from_millis(100));
        let request = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        let mut keep_alive = TcpStream::connect(server.addr).await.unwrap();
        keep_alive.write_all(request).await.unwrap();
        assert!(response(&mut keep_alive).await.starts_with("HTTP/1.1 200"));
        let mut silent = TcpStream::connect(server.addr).await.unwrap();
        settle().await;
        let _newcomer = TcpStream::connect(server.addr).await.unwrap();
        assert!(closed(&mut silent).await, "the silent one stays open");
        keep_alive.write_all(request).await.unwrap();
        assert!(response(&mut keep_alive).await.starts_with("HTTP/1.1 200"));
        assert_eq!(
            testing::render(&server.source),
            "sidecar.connections.refused{listener=token,reason=evicted} = 1"
        );
    }

    #[tokio::test]
    async fn at_the_cap_an_idle_connection_is_evicted_and_a_busy_one_is_not() {
        let server = start(Limits {
            max_connections: 2,
            header_timeout: Duration::from_secs(30),
            ..limits()
        })
        .await;
        let settle = || tokio::time::sleep(Duration::from_millis(100));
        let mut waiting = TcpStream::connect(server.addr).await.unwrap();
        settle().await;
        let mut busy = TcpStream::connect(server.addr).await.unwrap();
        busy.write_all(b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        settle().await;
        // At the cap: the connection still waiting for its head makes room.
        let mut newcomer = TcpStream::connect(server.addr).await.unwrap();
        assert!(closed(&mut waiting).await, "the oldest idle one stays open");
        newcomer
            .write_all(b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        settle().await;
        // Both busy: the next one is refused at once, not queued.
        let mut refused = TcpStream::connect(server.addr).await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(PATIENCE, refused.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        // The busy ones are answered in full.
        assert!(response(&mut busy).await.starts_with("HTTP/1.1 200"));
        assert!(response(&mut newcomer).await.starts_with("HTTP/1.1 200"));
        assert_eq!(
            testing::render(&server.source),
            "sidecar.connections.refused{listener=token,reason=evicted} = 1
sidecar.connections.refused{listener=token,reason=over_capacity} = 1"
        );
    }
}
