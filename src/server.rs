//! Accepting connections. [`run`] takes an already-bound listener and a
//! shutdown future, so `main` decides where to listen and tests can bind
//! `127.0.0.1:0` and run the real server in-process.
//!
//! Every connection is watched, because a server that waits forever on a
//! client can be taken down by a few hundred idle sockets:
//!
//! - a request's head must arrive within `header_timeout`, counted from the
//!   accept (or, on a kept-alive connection, from the next request's first
//!   byte), or the connection is closed;
//! - a kept-alive connection with no request for `idle_timeout` is closed
//!   (hyper's own header timer would also run while a connection is idle,
//!   which would make the idle timeout the header timeout, so both are kept
//!   here);
//! - beyond `max_connections` a new connection still gets an answer, 503
//!   with `Connection: close`, so the accept loop never starves and a
//!   client learns why;
//! - running out of file descriptors backs the accept loop off instead of
//!   spinning on the error.
//!
//! On shutdown it stops accepting, closes connections with no request in
//! flight at once (idle ones, and ones still sending a head), lets requests
//! in flight finish for up to `shutdown_grace`, and returns.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::protocol::{self, App, Conn, Reply, Surface};
use crate::settings::Limits;
use crate::tls::Tls;

/// Serves `app`'s URLs for `surface` on `listener` (over TLS when `tls` is
/// given) until `shutdown` completes, within the limits in `app.limits`.
pub async fn run(
    listener: TcpListener,
    app: Arc<App>,
    surface: Surface,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()>,
) {
    let limits = app.limits.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    // Refusals in flight, bounded so a flood cannot pile them up either.
    let refusing = Arc::new(AtomicUsize::new(0));
    let mut backoff = MIN_BACKOFF;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off,
                        // doubling, so connections closing can free some.
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "accept failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                };
                backoff = MIN_BACKOFF;
                // An IPv4 client of a listener on `[::]` arrives as
                // `::ffff:a.b.c.d`: it is the IPv4 address to every rule
                // (trusted proxies, login budgets) and in every log.
                let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
                while connections.try_join_next().is_some() {}
                if connections.len() >= limits.max_connections {
                    app.metrics.connection_refused();
                    refuse(stream, &refusing, limits.max_connections);
                    continue;
                }
                let conn = Conn {
                    peer,
                    surface,
                    certificate_cn: None,
                };
                let app = Arc::clone(&app);
                let stop = stop_rx.clone();
                let acceptor = tls.as_ref().map(|t| t.acceptor());
                connections.spawn(async move {
                    let result = match acceptor {
                        None => serve_connection(stream, conn, app, stop).await,
                        Some(acceptor) => {
                            // The handshake gets the head's time budget.
                            let timeout = app.limits.header_timeout;
                            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                                Ok(Ok(stream)) => {
                                    let certificate_cn = stream
                                        .get_ref()
                                        .1
                                        .peer_certificates()
                                        .and_then(|chain| chain.first())
                                        .and_then(|leaf| subject_cn(leaf))
                                        .map(Arc::from);
                                    let conn = Conn { certificate_cn, ..conn };
                                    serve_connection(stream, conn, app, stop).await
                                }
                                Ok(Err(e)) => {
                                    tracing::info!(%peer, error = %e, "TLS handshake refused");
                                    return;
                                }
                                Err(_) => {
                                    app.metrics.request_timed_out();
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            }
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: no new connections, finishing requests in flight");
    let _ = stop_tx.send(true);
    let grace = limits.shutdown_grace;
    tokio::select! {
        () = async { while connections.join_next().await.is_some() {} } => {
            tracing::info!("all requests finished");
        }
        () = tokio::time::sleep(grace) => {
            tracing::warn!("requests still running after {grace:?}; stopping anyway");
            connections.abort_all();
        }
    }
}

/// The subject CN of a certificate the handshake verified.
fn subject_cn(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The answer to a connection beyond `max_connections`.
const BUSY_BODY: &str = "stategate is serving its maximum number of connections; try again\n";

/// Refusals in flight beyond which a connection is closed unanswered.
const MAX_REFUSING: usize = 256;

/// Answers a connection over the limit with 503 and closes it, without
/// waiting for the request: the client may still be sending, so what it
/// sends is read and dropped for a moment, or the close would reset the
/// connection before the answer is read.
fn refuse(mut stream: TcpStream, refusing: &Arc<AtomicUsize>, max: usize) {
    if refusing.load(Ordering::Relaxed) >= MAX_REFUSING {
        return; // dropping closes it
    }
    refusing.fetch_add(1, Ordering::Relaxed);
    let refusing = Arc::clone(refusing);
    tracing::warn!(
        max_connections = max,
        "connection refused: too many connections"
    );
    tokio::spawn(async move {
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
             retry-after: 1\r\nconnection: close\r\nx-request-id: {}\r\ncontent-length: {}\r\n\r\n{BUSY_BODY}",
            protocol::next_request_id(),
            BUSY_BODY.len()
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            stream.write_all(answer.as_bytes()).await?;
            stream.shutdown().await?;
            Ok::<_, std::io::Error>(())
        })
        .await;
        let _ = tokio::time::timeout(Duration::from_millis(250), async {
            let mut sink = [0u8; 4096];
            let mut drained = 0;
            while drained < 1 << 20 {
                match stream.read(&mut sink).await? {
                    0 => break,
                    n => drained += n,
                }
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
        refusing.fetch_sub(1, Ordering::Relaxed);
    });
}

/// What the watchdog of one connection knows.
struct Activity {
    /// When the connection was accepted; the clock of the fields below.
    start: Instant,
    /// Milliseconds since `start` of the last byte read or written.
    last_io_ms: AtomicU64,
    /// Milliseconds since `start` (plus one, so 0 means none) when the head
    /// now arriving began: set at accept and at the first byte read while
    /// no request is in flight, cleared when a request starts.
    head_started_ms: AtomicU64,
    /// Requests being handled or answered (their response bodies not yet
    /// written out).
    in_flight: AtomicUsize,
    /// Whether a request has reached our code on this connection.
    served: std::sync::atomic::AtomicBool,
    /// Bytes the socket has taken.
    written: AtomicU64,
    /// Milliseconds since `start` (plus one, so 0 means none) since the
    /// socket has refused more bytes: the client is not reading what we
    /// have to send. Cleared by the next write it takes.
    blocked_since_ms: AtomicU64,
    /// Whether the socket refused bytes in the current rate window.
    blocked_in_window: std::sync::atomic::AtomicBool,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            start: Instant::now(),
            last_io_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
            served: std::sync::atomic::AtomicBool::new(false),
            written: AtomicU64::new(0),
            blocked_since_ms: AtomicU64::new(0),
            blocked_in_window: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn read(&self) {
        let now = self.now_ms();
        self.last_io_ms.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let _ = self.head_started_ms.compare_exchange(
                0,
                now + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    fn wrote(&self) {
        self.last_io_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn wrote_bytes(&self, n: usize) {
        self.wrote();
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        self.blocked_since_ms.store(0, Ordering::Relaxed);
    }

    fn write_blocked(&self) {
        let now = self.now_ms();
        let _ = self.blocked_since_ms.compare_exchange(
            0,
            now + 1,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        self.blocked_in_window.store(true, Ordering::Relaxed);
    }

    fn begin_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.served.store(true, Ordering::Relaxed);
        self.head_started_ms.store(0, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    fn in_flight(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    /// Why the connection should be closed now, if it should. While a
    /// request is in flight only its answer is timed: the handler may wait
    /// on the store as long as the store takes, but a client that takes
    /// no byte of the answer for `idle_timeout` is gone or hostile, and
    /// would otherwise hold the connection and whatever the answer holds.
    fn expired(&self, limits: &Limits) -> Option<&'static str> {
        if self.in_flight() {
            let blocked = self.blocked_since_ms.load(Ordering::Relaxed);
            let stalled = blocked != 0
                && self.now_ms().saturating_sub(blocked - 1)
                    >= limits.idle_timeout.as_millis() as u64;
            return stalled.then_some(SEND_STALLED);
        }
        let now = self.now_ms();
        let head = self.head_started_ms.load(Ordering::Relaxed);
        if head != 0 {
            let waited = now.saturating_sub(head - 1);
            return (waited >= limits.header_timeout.as_millis() as u64).then_some(HEAD_TIMED_OUT);
        }
        let idle = now.saturating_sub(self.last_io_ms.load(Ordering::Relaxed));
        (idle >= limits.idle_timeout.as_millis() as u64).then_some("idle for idle_timeout")
    }
}

const HEAD_TIMED_OUT: &str = "the request head did not arrive within header_timeout";
const SEND_STALLED: &str = "the client took no byte of the answer for idle_timeout";
const SEND_TOO_SLOW: &str = "the client took the answer slower than body_min_rate";

/// The window over which a download must average `body_min_rate`.
const SEND_RATE_WINDOW: Duration = Duration::from_secs(10);

/// The minimum download rate, checked once per window: a window in which
/// the socket refused bytes (so the answer was waiting on the client, not
/// on the store) and took fewer than `body_min_rate` per second of it.
struct SendRate {
    window_end: Instant,
    written_at_start: u64,
}

impl SendRate {
    fn new(activity: &Activity) -> Self {
        SendRate {
            window_end: Instant::now() + SEND_RATE_WINDOW,
            written_at_start: activity.written.load(Ordering::Relaxed),
        }
    }

    /// Whether the window just ended was too slow; starts the next one.
    fn too_slow(&mut self, activity: &Activity, min_rate: u64) -> bool {
        if Instant::now() < self.window_end {
            return false;
        }
        let written = activity.written.load(Ordering::Relaxed);
        let blocked = activity.blocked_in_window.swap(false, Ordering::Relaxed);
        let slow = min_rate > 0
            && activity.in_flight()
            && blocked
            && written - self.written_at_start < min_rate * SEND_RATE_WINDOW.as_secs();
        self.window_end = Instant::now() + SEND_RATE_WINDOW;
        self.written_at_start = written;
        slow
    }
}

/// A request in flight; dropped when its response body has been written.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.wrote();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as in flight until hyper
/// has written it out and dropped it.
struct Tracked {
    inner: Reply,
    _in_flight: InFlight,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting every byte that moves for the watchdog.
///
/// It also gives hyper's own 431 an `X-Request-Id`, as every other answer
/// has: hyper writes that answer itself when a request head outgrows
/// `max_header_bytes`, before any request reaches our code, so the header
/// is added to the bytes on their way out. Only to the first bytes of a
/// connection on which no request has reached our code: later bytes may
/// be a body, whose content a client chose (a state holding that status
/// line at the start of a piece), and must go out as they are. A 431 after
/// other requests on a kept-alive connection goes without the header.
struct Watched<S> {
    stream: S,
    activity: Arc<Activity>,
    /// Bytes already reported written to hyper but not yet to the socket.
    owed: Vec<u8>,
}

/// The status line hyper answers an oversized request head with.
const HEAD_TOO_LARGE: &[u8] = b"HTTP/1.1 431 ";

impl<S> Watched<S> {
    fn new(stream: S, activity: Arc<Activity>) -> Self {
        Watched {
            stream,
            activity,
            owed: Vec::new(),
        }
    }
}

impl<S: AsyncWrite + Unpin> Watched<S> {
    /// Writes what is owed; ready once nothing is.
    fn poll_owed(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.owed.is_empty() {
            let result = Pin::new(&mut self.stream).poll_write(cx, &self.owed);
            self.note_write(&result);
            match result {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    self.owed.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// When `data` is hyper's 431, takes it whole with an `X-Request-Id`
    /// added, to be written as owed; returns how much was taken.
    fn take_head_too_large(&mut self, data: &[u8]) -> Option<usize> {
        let first_bytes = self.activity.written.load(Ordering::Relaxed) == 0
            && self.owed.is_empty()
            && !self.activity.served.load(Ordering::Relaxed);
        if !first_bytes || !data.starts_with(HEAD_TOO_LARGE) {
            return None;
        }
        let line_end = data.windows(2).position(|w| w == b"\r\n")? + 2;
        let id = protocol::next_request_id();
        tracing::info!(request_id = %id, status = 431, "request head over max_header_bytes refused");
        self.owed.extend_from_slice(&data[..line_end]);
        self.owed
            .extend_from_slice(format!("x-request-id: {id}\r\n").as_bytes());
        self.owed.extend_from_slice(&data[line_end..]);
        Some(data.len())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        result
    }
}

impl<S> Watched<S> {
    fn note_write(&self, result: &Poll<std::io::Result<usize>>) {
        match result {
            Poll::Ready(Ok(n)) if *n > 0 => self.activity.wrote_bytes(*n),
            Poll::Pending => self.activity.write_blocked(),
            _ => {}
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_owed(cx))?;
        if let Some(taken) = self.take_head_too_large(data) {
            let _ = self.poll_owed(cx)?;
            return Poll::Ready(Ok(taken));
        }
        let result = Pin::new(&mut self.stream).poll_write(cx, data);
        self.note_write(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_owed(cx))?;
        let first = bufs.iter().find(|b| !b.is_empty());
        if first.is_some_and(|b| b.starts_with(HEAD_TOO_LARGE)) {
            let whole: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            if let Some(taken) = self.take_head_too_large(&whole) {
                let _ = self.poll_owed(cx)?;
                return Poll::Ready(Ok(taken));
            }
        }
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.note_write(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_owed(cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_owed(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves one connection until the client closes it, a limit closes it, or
/// shutdown finds it with no request in flight.
async fn serve_connection<S>(
    stream: S,
    conn_info: Conn,
    app: Arc<App>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = app.limits.clone();
    let activity = Activity::new();
    let io = TokioIo::new(Watched::new(stream, Arc::clone(&activity)));
    let service = {
        let activity = Arc::clone(&activity);
        let app = Arc::clone(&app);
        service_fn(move |req| {
            let in_flight = activity.begin_request();
            let app = Arc::clone(&app);
            let conn_info = conn_info.clone();
            async move {
                let (response, in_flight) = if reads_only(req.method()) {
                    (protocol::handle(app, req, conn_info).await?, in_flight)
                } else {
                    // A request that may change the store runs to its end
                    // on a task of its own, whether or not its client
                    // waits for the answer: a change made without its
                    // audit line and notification (the client gone while
                    // the store worked) went unrecorded. The request stays
                    // counted in flight until then, and the connection's
                    // task waits for it ([`settled`]).
                    let detached = tokio::spawn(async move {
                        let response = protocol::handle(app, req, conn_info).await;
                        (response, in_flight)
                    });
                    match detached.await {
                        Ok((response, in_flight)) => (response?, in_flight),
                        Err(e) => std::panic::resume_unwind(e.into_panic()),
                    }
                };
                Ok::<_, std::convert::Infallible>(response.map(|inner| Tracked {
                    inner,
                    _in_flight: in_flight,
                }))
            }
        })
    };
    let conn = http1::Builder::new()
        .header_read_timeout(None)
        .max_header_size(limits.max_header_bytes)
        .serve_connection(io, service);
    let tick = (limits.header_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(tick);
    let mut send_rate = SendRate::new(&activity);
    let mut stopping = false;
    // The connection, with the answers it holds, is gone when the block ends.
    let result = {
        let conn = conn;
        tokio::pin!(conn);
        loop {
            tokio::select! {
                result = conn.as_mut() => break result,
                _ = ticker.tick() => {
                    if stopping && !activity.in_flight() {
                        break Ok(());
                    }
                    let why = activity.expired(&limits).or_else(|| {
                        send_rate
                            .too_slow(&activity, limits.body_min_rate)
                            .then_some(SEND_TOO_SLOW)
                    });
                    if let Some(why) = why {
                        if why == HEAD_TIMED_OUT {
                            app.metrics.request_timed_out();
                            tracing::debug!(reason = why, "closing connection");
                        } else if why == SEND_STALLED || why == SEND_TOO_SLOW {
                            app.metrics.download_cut();
                            tracing::info!(reason = why, "answer cut off: closing connection");
                        } else {
                            tracing::debug!(reason = why, "closing connection");
                        }
                        break Ok(());
                    }
                }
                changed = stop.changed(), if !stopping => {
                    stopping = true;
                    if changed.is_err() || !activity.in_flight() {
                        break Ok(());
                    }
                    // Finish the request in flight, then close.
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    };
    settled(&activity).await;
    result
}

/// Whether a request with `method` only reads: every other one may change
/// the store, and runs to its end even when its client leaves.
fn reads_only(method: &hyper::Method) -> bool {
    matches!(
        *method,
        hyper::Method::GET | hyper::Method::HEAD | hyper::Method::OPTIONS
    )
}

/// Waits until no request of the connection is in flight: the answers are
/// gone with the connection, so what is left is the changes still running
/// for clients that left. Shutdown waits for them with the connections.
async fn settled(activity: &Activity) {
    while activity.in_flight() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
