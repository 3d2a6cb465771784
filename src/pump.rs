//! The session after the 101: two named halves moving data both ways, and the closing handshake.
//!
//! - `upstream` (client -> backend) reads frames, decodes them, turns messages into backend bytes
//!   ([`ToBackend`]) and answers nothing itself: pongs and Close frames are written by the other half.
//! - `downstream` (backend -> client) reads the backend, turns bytes into messages
//!   ([`FromBackend`]), writes frames to the client, and owns every frame the client receives:
//!   data, pongs, and the one Close frame of the session.
//!
//! The halves run concurrently in one task and share only a small control block (a pending pong,
//! what ended, deadlines), never an unbounded queue: each side writes with `await`, so a peer that
//! does not read stalls the other side (backpressure) and memory stays flat. Close semantics are the
//! table in README.md; [`crate::error::Close`] names each ending.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Route;
use crate::error::{Close, SessionEnd, Side};
use crate::framing::{FromBackend, MessageBudget, ToBackend};
use crate::ws::{self, CloseCode, Decoder, DecoderLimits, Frame, OpCode};

/// How much we ask for per read, from either side.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Bytes gathered before a write is started even though more input is waiting.
const FLUSH_THRESHOLD_BYTES: usize = 64 * 1024;
/// Pong frames waiting to be written, in bytes. Past this, only the latest ping is answered
/// (RFC 6455 §5.5.3 allows it), so a ping flood from a client that never reads costs nothing.
const MAX_PENDING_PONG_BYTES: usize = 4 * 1024;

/// Read size while discarding what a client sends after a protocol error.
const DISCARD_CHUNK_BYTES: usize = 4 * 1024;

/// An empty read buffer is freed after this long without data, so idle sessions hold none.
const BUFFER_RELEASE: Duration = Duration::from_secs(1);

/// A reader that can say when data is there without being handed a buffer, so that an idle
/// session holds no read buffer. Transports without such a signal read into a buffer at once.
pub trait ReadReady: AsyncRead + Unpin {
    /// Resolves when a read would make progress (or fail).
    fn ready(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        std::future::ready(Ok(()))
    }
}

impl ReadReady for tokio::net::tcp::OwnedReadHalf {
    fn ready(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        self.readable()
    }
}

impl ReadReady for crate::backend::BackendReader {
    async fn ready(&mut self) -> io::Result<()> {
        match self {
            crate::backend::BackendReader::Tcp(r) => r.readable().await,
            crate::backend::BackendReader::Unix(r) => r.readable().await,
        }
    }
}

impl<T: AsyncRead + Send> ReadReady for tokio::io::ReadHalf<T> {}

/// Read more bytes into `buf`. An empty buffer is freed when `release` fires while waiting, and
/// allocated again when data is there, so idle sessions hold no read buffers. `release` is one
/// long-lived timer per half, re-armed only when it fires (at most once per [`BUFFER_RELEASE`]),
/// never per message. Cancel-safe (usable in `select!`).
async fn read_more<R: ReadReady>(
    r: &mut R,
    buf: &mut BytesMut,
    release: &mut Pin<&mut tokio::time::Sleep>,
) -> io::Result<usize> {
    while buf.is_empty() && buf.capacity() > 0 {
        tokio::select! {
            biased;
            ready = r.ready() => {
                ready?;
                break;
            }
            _ = release.as_mut() => {
                *buf = BytesMut::new();
                release.as_mut().reset(tokio::time::Instant::now() + BUFFER_RELEASE);
            }
        }
    }
    if buf.capacity() == 0 {
        r.ready().await?;
    }
    if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 4 {
        buf.reserve(READ_CHUNK_BYTES);
    }
    r.read_buf(buf).await
}

/// Who a session is, for its log line.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: u64,
    pub route: Arc<Route>,
    pub client: SocketAddr,
    /// The authenticated subject, if the route authenticates.
    pub subject: Option<String>,
    /// When the client's credential expires: the session is closed with 1008 then.
    pub expires_at: Option<std::time::SystemTime>,
    /// Live counters, readable while the session runs (admin `/sessions`).
    pub stats: Arc<SessionStats>,
    /// Cancelled by an operator: the session is closed with 1008.
    pub kill: CancellationToken,
    /// The gateway-wide bound on client messages held whole (`partial_message_budget`).
    pub budget: Arc<MessageBudget>,
}

/// Counters of one direction, updated as messages pass.
#[derive(Debug, Default)]
pub struct Traffic {
    bytes: AtomicU64,
    messages: AtomicU64,
}

impl Traffic {
    fn add_bytes(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn add_message(&self) {
        self.messages.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Counts {
        Counts {
            bytes: self.bytes.load(Ordering::Relaxed),
            messages: self.messages.load(Ordering::Relaxed),
        }
    }
}

/// Both directions of a session.
#[derive(Debug, Default)]
pub struct SessionStats {
    /// Client -> backend.
    pub up: Traffic,
    /// Backend -> client.
    pub down: Traffic,
}

/// A snapshot of one direction's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub bytes: u64,
    pub messages: u64,
}

/// How a session ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The Close we sent (code, reason, cause), or why the connection was cut without one.
    pub end: SessionEnd,
    /// The close code the client sent, if it sent a Close frame (`Some(None)`: empty Close).
    pub client_close: Option<Option<CloseCode>>,
    /// Client -> backend.
    pub up: Counts,
    /// Backend -> client.
    pub down: Counts,
    pub duration: Duration,
}

/// Run a session to its end. `shutdown` asks for a Close 1001.
///
/// `client` and `backend` are the read and write halves of each connection (owned halves where
/// the transport has them, so the two directions never contend for a lock). `preread` holds
/// bytes the client sent right behind its request head: they are the first frames.
pub async fn run<CR, CW, BR, BW>(
    info: &SessionInfo,
    client: (CR, CW),
    preread: &[u8],
    backend: (BR, BW),
    shutdown: CancellationToken,
) -> Outcome
where
    CR: ReadReady + Send,
    CW: AsyncWrite + Unpin + Send,
    BR: ReadReady + Send,
    BW: AsyncWrite + Unpin + Send,
{
    let started = Instant::now();
    let shared = Shared::new(started);
    let (cr, cw) = client;
    let (br, bw) = backend;
    let route = &info.route;
    let up = Upstream {
        client: cr,
        backend: bw,
        shared: &shared,
        out: ToBackend::new(route.framing, &info.budget),
        close_timeout: route.limits.close_timeout,
        write_timeout: route.limits.write_timeout,
        traffic: &info.stats.up,
        backend_shut: false,
        control: ControlRate::new(route.limits.control_frames_per_second),
    };
    let down = Downstream {
        backend: br,
        client: cw,
        shared: &shared,
        from: FromBackend::new(route.framing, route.limits.max_message_size),
        out: Output::default(),
        route,
        traffic: &info.stats.down,
        cut: None,
    };
    let limits = DecoderLimits {
        max_frame_size: route.limits.max_frame_size,
        max_message_size: route.limits.max_message_size,
        max_fragments: route.limits.max_fragments,
    };
    let expires = info.expires_at.map(|at| {
        let left = at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        tokio::time::Instant::now() + left
    });
    let ((), end) = tokio::join!(
        up.run(limits, preread),
        down.run(shutdown, &info.kill, expires)
    );
    let client_close = shared.lock().client_close;
    Outcome {
        end,
        client_close,
        up: info.stats.up.snapshot(),
        down: info.stats.down.snapshot(),
        duration: started.elapsed(),
    }
}

/// What the halves tell each other.
#[derive(Debug, Default)]
struct Ctl {
    /// Encoded Pong frames not yet written, bounded by [`MAX_PENDING_PONG_BYTES`].
    pongs: BytesMut,
    /// The client sent Close (inner: its code, if any).
    client_close: Option<Option<CloseCode>>,
    /// The client broke the protocol (or our framing rules): send this Close and cut.
    fail: Option<Close>,
    /// Writing to the backend failed or stalled (the Close to send).
    backend_write_failed: Option<Close>,
    /// The client's connection ended without a Close (EOF or error).
    client_gone: bool,
    /// Upstream has returned.
    up_done: bool,
    /// Upstream must return now (deadline passed or the client connection is unusable).
    stop_up: bool,
}

struct Shared {
    ctl: Mutex<Ctl>,
    /// Wakes downstream: something in `ctl` changed.
    to_down: Notify,
    /// Wakes upstream: something in `ctl` changed.
    to_up: Notify,
    started: Instant,
    /// Milliseconds since `started` of the last traffic: data either way, or a client Ping.
    /// Keepalive Pongs do not count, so an idle session still times out.
    last_activity_ms: AtomicU64,
    /// Milliseconds since `started` of the last bytes read from the client (liveness).
    last_client_read_ms: AtomicU64,
}

impl Shared {
    fn new(started: Instant) -> Shared {
        Shared {
            ctl: Mutex::new(Ctl::default()),
            to_down: Notify::new(),
            to_up: Notify::new(),
            started,
            last_activity_ms: AtomicU64::new(0),
            last_client_read_ms: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ctl> {
        // A panic while holding this lock cannot leave Ctl inconsistent (plain fields).
        self.ctl.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Change the control block and wake downstream.
    fn tell_down(&self, f: impl FnOnce(&mut Ctl)) {
        f(&mut self.lock());
        self.to_down.notify_one();
    }

    /// Change the control block and wake upstream.
    fn tell_up(&self, f: impl FnOnce(&mut Ctl)) {
        f(&mut self.lock());
        self.to_up.notify_one();
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at_ms(&self, ms: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.started + Duration::from_millis(ms))
    }

    fn touch(&self) {
        self.last_activity_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    fn client_read(&self) {
        self.last_client_read_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    /// When the session is idle, if `idle_timeout` is on.
    fn idle_deadline(&self, idle: Option<Duration>) -> Option<tokio::time::Instant> {
        Some(self.at_ms(self.last_activity_ms.load(Ordering::Relaxed)) + idle?)
    }
}

/// Why upstream stopped decoding.
enum UpStop {
    ClientClose(Option<CloseCode>),
    Fail(Close),
}

struct Upstream<'s, R, W> {
    client: R,
    backend: W,
    shared: &'s Shared,
    out: ToBackend,
    close_timeout: Duration,
    write_timeout: Duration,
    traffic: &'s Traffic,
    /// The backend's write side has been shut.
    backend_shut: bool,
    control: ControlRate,
}

/// A token bucket for the control frames (Ping, Pong) a client sends: `per_second` of them a
/// second, and as many in one burst. Answering Pings costs the gateway a write each; past the
/// rate the session is closed with 1008, so a ping flood cannot keep a core busy.
struct ControlRate {
    per_second: u64,
    /// Thousandths of a frame, refilled by `per_second` every millisecond.
    tokens: u64,
    last_ms: u64,
}

impl ControlRate {
    /// One frame costs this many tokens.
    const FRAME: u64 = 1000;

    fn new(per_second: u32) -> ControlRate {
        let per_second = u64::from(per_second);
        ControlRate {
            per_second,
            tokens: per_second * Self::FRAME,
            last_ms: 0,
        }
    }

    /// May one more control frame arrive at `now_ms`?
    fn allow(&mut self, now_ms: u64) -> bool {
        let refill = now_ms
            .saturating_sub(self.last_ms)
            .saturating_mul(self.per_second);
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = self
            .tokens
            .saturating_add(refill)
            .min(self.per_second * Self::FRAME);
        match self.tokens.checked_sub(Self::FRAME) {
            Some(left) => {
                self.tokens = left;
                true
            }
            None => false,
        }
    }
}

impl<'s, R, W> Upstream<'s, R, W>
where
    R: ReadReady + Send,
    W: AsyncWrite + Unpin,
{
    async fn run(mut self, limits: DecoderLimits, preread: &[u8]) {
        self.pump(limits, preread).await;
        // Whatever ended the session, the backend sees an orderly FIN.
        self.shut_backend().await;
        self.shared.tell_down(|c| c.up_done = true);
    }

    /// Shut the backend's write side (FIN), once.
    async fn shut_backend(&mut self) {
        if !self.backend_shut {
            self.backend_shut = true;
            let _ = tokio::time::timeout(self.close_timeout, self.backend.shutdown()).await;
        }
    }

    async fn pump(&mut self, limits: DecoderLimits, preread: &[u8]) {
        let mut decoder = Decoder::new(limits);
        let mut rbuf = BytesMut::from(preread);
        let mut forward = true;
        let release = tokio::time::sleep(BUFFER_RELEASE);
        tokio::pin!(release);
        // Kept across iterations (a fresh one per loop would register a waiter per message).
        let shared = self.shared;
        let wake = shared.to_up.notified();
        tokio::pin!(wake);
        loop {
            let mut stop = None;
            // Data or a Ping in this batch: the session is not idle (Pongs do not count). The
            // clock is read once per batch, not per frame.
            let mut active = false;
            loop {
                let frame = match decoder.decode(&mut rbuf) {
                    Ok(None) => break,
                    Ok(Some(frame)) => frame,
                    Err(e) => {
                        stop = Some(UpStop::Fail(Close::new(e.code, e.reason, Side::Client)));
                        break;
                    }
                };
                match frame {
                    Frame::Data {
                        payload,
                        text,
                        first,
                        last,
                    } => {
                        if last {
                            self.traffic.add_message();
                        }
                        self.traffic.add_bytes(payload.len());
                        active = true;
                        if !forward {
                            continue;
                        }
                        if let Err(close) = push_piece(&mut self.out, payload, text, first, last) {
                            stop = Some(UpStop::Fail(close));
                            break;
                        }
                        if self.out.ready().len() >= FLUSH_THRESHOLD_BYTES
                            && !self.flush(&mut forward, &mut wake).await
                        {
                            return;
                        }
                    }
                    Frame::Ping(_) | Frame::Pong(_) if !self.control.allow(shared.now_ms()) => {
                        stop = Some(UpStop::Fail(Close::TOO_MANY_CONTROL_FRAMES));
                        break;
                    }
                    Frame::Ping(payload) => {
                        active = true;
                        self.shared.tell_down(|c| {
                            if c.pongs.len() + payload.len() + 2 > MAX_PENDING_PONG_BYTES {
                                c.pongs.clear();
                            }
                            encode_frame(&mut c.pongs, OpCode::Pong, payload);
                        })
                    }
                    Frame::Pong(_) => {}
                    Frame::Close(frame) => {
                        stop = Some(UpStop::ClientClose(frame.map(|f| f.code)));
                        break;
                    }
                }
            }
            if active {
                self.shared.touch();
            }
            if forward && !self.out.ready().is_empty() && !self.flush(&mut forward, &mut wake).await
            {
                return;
            }
            match stop {
                Some(UpStop::ClientClose(code)) => {
                    // Client Close -> backend write side shut; downstream delivers what is left.
                    if forward {
                        self.shut_backend().await;
                    }
                    self.shared.tell_down(|c| c.client_close = Some(code));
                    return;
                }
                Some(UpStop::Fail(close)) => {
                    self.shared.tell_down(|c| c.fail = Some(close));
                    self.shut_backend().await;
                    self.discard_until_eof(&mut rbuf, &mut wake).await;
                    return;
                }
                None => {}
            }
            tokio::select! {
                r = read_more(&mut self.client, &mut rbuf, &mut release) => match r {
                    Ok(n) if n > 0 => self.shared.client_read(),
                    // EOF or error without a Close: the client is gone (1006 on its side).
                    _ => {
                        self.shared.tell_down(|c| c.client_gone = true);
                        return;
                    }
                },
                _ = wake.as_mut() => {
                    wake.set(shared.to_up.notified());
                    if shared.lock().stop_up {
                        return;
                    }
                }
            }
        }
    }

    /// Write the ready bytes to the backend. Returns false when upstream must stop. A backend
    /// that stops reading stalls us here (backpressure); `stop_up` still ends the wait.
    async fn flush(&mut self, forward: &mut bool, wake: &mut Pin<&mut Notified<'s>>) -> bool {
        while !self.out.ready().is_empty() {
            // Tried first without a timer: when the write completes at once (the common case),
            // no clock is read and no timer or wake-up is registered.
            let r = match write_now(&mut self.backend, self.out.ready()).await {
                Poll::Ready(r) => r,
                Poll::Pending => {
                    let stalled = tokio::time::sleep(self.write_timeout);
                    tokio::select! {
                        biased;
                        // `write` is cancel-safe: if another branch wins, nothing was written.
                        r = self.backend.write(self.out.ready()) => r,
                        _ = stalled => {
                            self.backend_failed(forward, Close::BACKEND_STALLED);
                            return true;
                        }
                        _ = wake.as_mut() => {
                            wake.set(self.shared.to_up.notified());
                            if self.shared.lock().stop_up {
                                return false;
                            }
                            continue;
                        }
                    }
                }
            };
            match r {
                Ok(n) if n > 0 => self.out.consume(n),
                _ => {
                    self.backend_failed(forward, Close::BACKEND_ERROR);
                    return true;
                }
            }
        }
        true
    }

    /// Stop forwarding: the backend cannot take more. Downstream ends the session with `close`.
    fn backend_failed(&mut self, forward: &mut bool, close: Close) {
        *forward = false;
        self.out.discard();
        self.shared
            .tell_down(|c| c.backend_write_failed = Some(close));
    }

    /// After a protocol error: read and drop whatever the client still sends until it closes,
    /// the close deadline passes, or downstream says stop, so that our close is not turned into
    /// a reset by unread data. `buf` (the read buffer, whose content no longer matters) is reused
    /// for the discarded bytes.
    async fn discard_until_eof(&mut self, buf: &mut BytesMut, wake: &mut Pin<&mut Notified<'s>>) {
        let deadline = tokio::time::Instant::now() + self.close_timeout;
        loop {
            buf.clear();
            if buf.capacity() < DISCARD_CHUNK_BYTES {
                buf.reserve(DISCARD_CHUNK_BYTES);
            }
            tokio::select! {
                r = self.client.read_buf(buf) => match r {
                    Ok(n) if n > 0 => {}
                    _ => return,
                },
                _ = tokio::time::sleep_until(deadline) => return,
                _ = wake.as_mut() => {
                    wake.set(self.shared.to_up.notified());
                    if self.shared.lock().stop_up {
                        return;
                    }
                }
            }
        }
    }
}

fn push_piece(
    out: &mut ToBackend,
    payload: &[u8],
    text: bool,
    first: bool,
    last: bool,
) -> Result<(), Close> {
    if first {
        out.begin(text)?;
    }
    out.push(payload)?;
    if last {
        out.end();
    }
    Ok(())
}

struct Downstream<'s, R, W> {
    backend: R,
    client: W,
    shared: &'s Shared,
    from: FromBackend,
    out: Output,
    route: &'s Route,
    traffic: &'s Traffic,
    /// Why the connection was cut without a Close, if it was.
    cut: Option<&'static str>,
}

/// How downstream's main loop ended, and so what its Close frame is.
enum DownEnd {
    /// Send this Close after every frame already queued (the backend ended or failed: what it
    /// sent before is delivered first).
    Initiate(Close),
    /// A control event (shutdown, operator, credential expiry, idle): frames queued but not yet
    /// started are dropped, and this Close follows the frame in progress.
    Interrupt(Close),
    /// The client closed first: answer with its code, after the queued frames unless
    /// `drop_queued` (the close deadline passed, or a control event came while draining).
    Answer {
        code: Option<CloseCode>,
        drop_queued: bool,
    },
    /// The client broke the protocol: queued frames are dropped, this Close is sent, and the
    /// client's Close is not waited for.
    Fail(Close),
    /// The client connection is unusable; nothing can be sent. The reason is logged.
    Abort(&'static str),
}

const CLIENT_GONE: &str = "client connection lost without a Close";
const CLIENT_STALLED: &str = "client stopped reading (write_timeout)";
const CLIENT_UNRESPONSIVE: &str = "client did not answer a keepalive ping (pong_timeout)";
const CLIENT_CLOSE_SLOW: &str = "client did not take the Close within close_timeout";

/// Frames on their way to the client: the queue downstream writes from.
///
/// Frames are appended whole and written as far as the socket takes them. The buffer is only
/// ever cut at frame boundaries, so that a Close can be put right behind the frame in progress
/// (dropping the frames not yet started) without corrupting the stream.
#[derive(Default)]
struct Output {
    buf: BytesMut,
    /// Bytes at the front of `buf` already written.
    written: usize,
    /// Bytes at the front of `buf` that finish a frame whose start was already written and
    /// dropped (see [`Output::compact`]); frame boundaries are counted from here.
    partial: usize,
    /// Everything in `buf` was written; the transport (TLS) may still hold some of it.
    unflushed: bool,
    /// When the current write started waiting for the client without progress.
    stalled_since: Option<tokio::time::Instant>,
}

impl Output {
    /// Bytes queued and not yet written.
    fn pending(&self) -> usize {
        self.buf.len() - self.written
    }

    /// Something is left to write or flush.
    fn busy(&self) -> bool {
        self.pending() > 0 || self.unflushed
    }

    /// One step of output: write what is pending, or flush once everything is written.
    fn poll_step<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        w: &mut W,
    ) -> Poll<io::Result<()>> {
        if self.pending() > 0 {
            let n = std::task::ready!(Pin::new(&mut *w).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        } else if self.unflushed {
            std::task::ready!(Pin::new(&mut *w).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, n: usize) {
        self.written += n;
        self.unflushed = true;
        if self.written == self.buf.len() {
            self.buf.clear();
            self.written = 0;
            self.partial = 0;
            self.stalled_since = None;
        } else {
            // Progress, but the socket is full: the stall clock restarts now.
            self.stalled_since = Some(tokio::time::Instant::now());
            if self.written >= FLUSH_THRESHOLD_BYTES {
                self.compact();
            }
        }
    }

    /// Where the frame that holds byte `at` ends (or `at` itself, when a frame starts there).
    fn frame_end(&self, at: usize) -> usize {
        let mut pos = self.partial;
        while pos < at {
            match ws::frame::server_frame_len(&self.buf[pos..]) {
                Some(len) => pos += len,
                // Never happens: only whole frames are queued. Keep everything.
                None => return self.buf.len(),
            }
        }
        pos
    }

    /// Drop the written bytes, so that a client that never lets the queue run empty does not
    /// make it grow. Runs at most once per [`FLUSH_THRESHOLD_BYTES`] written.
    fn compact(&mut self) {
        let end = self.frame_end(self.written);
        self.partial = end - self.written;
        self.buf.advance(self.written);
        self.written = 0;
    }

    /// Drop the frames not yet started; the frame in progress is kept whole.
    fn drop_unstarted(&mut self) {
        let end = self.frame_end(self.written);
        self.buf.truncate(end);
    }
}

/// Keepalive: a Ping after `interval` without hearing from the client; the client is dead if
/// nothing at all arrives within `pong_timeout` after it.
struct Keepalive {
    interval: Option<Duration>,
    pong_timeout: Duration,
    /// When the outstanding Ping was sent, on the same millisecond clock as the client reads, so
    /// that a Pong arriving within the same millisecond counts as an answer.
    ping_sent_ms: Option<u64>,
}

enum Due {
    Nothing,
    Ping,
    Dead,
}

impl Keepalive {
    /// When to look again.
    fn next(&mut self, shared: &Shared) -> Option<tokio::time::Instant> {
        let interval = self.interval?;
        let last = shared.last_client_read_ms.load(Ordering::Relaxed);
        match self.ping_sent_ms {
            Some(sent) if last >= sent => {
                self.ping_sent_ms = None;
                Some(shared.at_ms(last) + interval)
            }
            Some(sent) => Some(shared.at_ms(sent) + self.pong_timeout),
            None => Some(shared.at_ms(last) + interval),
        }
    }

    fn due(&mut self, shared: &Shared) -> Due {
        let Some(interval) = self.interval else {
            return Due::Nothing;
        };
        let now = shared.now_ms();
        let last = shared.last_client_read_ms.load(Ordering::Relaxed);
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        match self.ping_sent_ms {
            Some(sent) if last >= sent => {
                self.ping_sent_ms = None;
                Due::Nothing
            }
            Some(sent) if now >= sent.saturating_add(ms(self.pong_timeout)) => Due::Dead,
            Some(_) => Due::Nothing,
            None if now >= last.saturating_add(ms(interval)) => {
                self.ping_sent_ms = Some(now);
                Due::Ping
            }
            None => Due::Nothing,
        }
    }
}

impl<R, W> Downstream<'_, R, W>
where
    R: ReadReady + Send,
    W: AsyncWrite + Unpin,
{
    async fn run(
        mut self,
        shutdown: CancellationToken,
        kill: &CancellationToken,
        expires: Option<tokio::time::Instant>,
    ) -> SessionEnd {
        let end = self.pump(shutdown, kill, expires).await;
        match self.finish(end).await {
            Some(close) => SessionEnd::Closed(close),
            // Every way of ending without a Close is the client connection failing.
            None => SessionEnd::Cut {
                reason: self.cut.unwrap_or(CLIENT_GONE),
                by: Side::Client,
            },
        }
    }

    /// Move backend bytes to the client until something ends the session.
    ///
    /// Reading the backend, writing the client and every control event (shutdown, operator
    /// close, credential expiry, the client's Close, the close, idle, keepalive and write
    /// deadlines) are branches of one `select!`, and control comes first: a backend that always
    /// has data ready or a client that reads slowly never keeps an event from being seen. The
    /// backend is read only while less than [`FLUSH_THRESHOLD_BYTES`] wait for the client
    /// (backpressure).
    async fn pump(
        &mut self,
        shutdown: CancellationToken,
        kill: &CancellationToken,
        expires: Option<tokio::time::Instant>,
    ) -> DownEnd {
        let limits = self.route.limits;
        let mut rbuf = BytesMut::new();
        // Set once the client has sent Close: the code we echo, and until when the backend may
        // still send (it got a FIN).
        let mut answer: Option<(Option<CloseCode>, tokio::time::Instant)> = None;
        let mut keepalive = Keepalive {
            interval: limits.ping_interval,
            pong_timeout: limits.pong_timeout,
            ping_sent_ms: None,
        };
        let release = tokio::time::sleep(BUFFER_RELEASE);
        tokio::pin!(release);
        // One timer for every deadline of this half (idle, keepalive, credential expiry, backend
        // drain, write stall). It is re-armed when it fires or when an earlier deadline appears,
        // never per message.
        let housekeeping = tokio::time::sleep_until(far_future());
        tokio::pin!(housekeeping);
        let mut armed = far_future();
        let shared = self.shared;
        let wake = shared.to_down.notified();
        tokio::pin!(wake);
        // Registered once for the life of the session, not once per pass of the loop.
        let shutdown = shutdown.cancelled();
        tokio::pin!(shutdown);
        let kill = kill.cancelled();
        tokio::pin!(kill);
        loop {
            // Write what is queued as far as the socket takes it now; only a full socket waits.
            if let Err(why) = self.write_now().await {
                return DownEnd::Abort(why);
            }
            let due = self.next_deadline(&answer, &mut keepalive, expires);
            if due < armed || housekeeping.is_elapsed() {
                // Never in the past: a deadline that is not acted on must not spin the loop.
                let due = due.max(tokio::time::Instant::now() + Duration::from_millis(1));
                housekeeping.as_mut().reset(due);
                armed = due;
            }
            let room = self.out.pending() < FLUSH_THRESHOLD_BYTES;
            let answering = answer.map(|(code, _)| DownEnd::Answer {
                code,
                drop_queued: true,
            });
            tokio::select! {
                biased;
                _ = &mut shutdown => return answering.unwrap_or(DownEnd::Interrupt(Close::SHUTDOWN)),
                _ = &mut kill => return answering.unwrap_or(DownEnd::Interrupt(Close::OPERATOR)),
                _ = wake.as_mut() => {
                    wake.set(shared.to_down.notified());
                    let (fail, client_close, gone, write_failed) = {
                        let mut c = self.shared.lock();
                        if answer.is_none() && !c.pongs.is_empty() {
                            self.out.buf.extend_from_slice(&c.pongs);
                            c.pongs.clear();
                        }
                        (c.fail, c.client_close, c.client_gone, c.backend_write_failed)
                    };
                    if gone {
                        return DownEnd::Abort(CLIENT_GONE);
                    }
                    if let Some(close) = fail {
                        return DownEnd::Fail(close);
                    }
                    if let Some(code) = client_close {
                        if answer.is_none() {
                            answer = Some((code, tokio::time::Instant::now() + limits.close_timeout));
                        }
                    } else if let Some(close) = write_failed {
                        return DownEnd::Initiate(close);
                    }
                }
                _ = &mut housekeeping => {
                    armed = far_future();
                    let now = tokio::time::Instant::now();
                    if self.out.stalled_since.is_some_and(|t| now >= t + limits.write_timeout) {
                        return DownEnd::Abort(CLIENT_STALLED);
                    }
                    if let Some((code, until)) = answer {
                        if now >= until {
                            return DownEnd::Answer { code, drop_queued: true };
                        }
                        continue;
                    }
                    if expires.is_some_and(|at| now >= at) {
                        return DownEnd::Interrupt(Close::CREDENTIAL_EXPIRED);
                    }
                    if self.shared.idle_deadline(limits.idle_timeout).is_some_and(|at| at <= now) {
                        return DownEnd::Interrupt(Close::IDLE);
                    }
                    match keepalive.due(self.shared) {
                        Due::Nothing => {}
                        Due::Ping => encode_frame(&mut self.out.buf, OpCode::Ping, b"wsgate"),
                        Due::Dead => return DownEnd::Abort(CLIENT_UNRESPONSIVE),
                    }
                }
                r = std::future::poll_fn(|cx| self.out.poll_step(cx, &mut self.client)), if self.out.busy() => {
                    if r.is_err() {
                        return DownEnd::Abort(CLIENT_GONE);
                    }
                }
                r = read_more(&mut self.backend, &mut rbuf, &mut release), if room => {
                    let eof = !matches!(r, Ok(n) if n > 0);
                    if !eof {
                        self.shared.touch();
                    }
                    // Everything read so far is queued, on EOF too (a last unterminated line).
                    if let Err(close) = self.queue(&mut rbuf, matches!(r, Ok(0))) {
                        return match answer {
                            Some((code, _)) => DownEnd::Answer { code, drop_queued: false },
                            None => DownEnd::Initiate(close),
                        };
                    }
                    if eof {
                        if let Some((code, _)) = answer {
                            return DownEnd::Answer { code, drop_queued: false };
                        }
                        return DownEnd::Initiate(if r.is_ok() { Close::BACKEND_EOF } else { Close::BACKEND_ERROR });
                    }
                }
            }
        }
    }

    /// The earliest deadline this half has to act on.
    fn next_deadline(
        &self,
        answer: &Option<(Option<CloseCode>, tokio::time::Instant)>,
        keepalive: &mut Keepalive,
        expires: Option<tokio::time::Instant>,
    ) -> tokio::time::Instant {
        let stall = self
            .out
            .stalled_since
            .map(|t| t + self.route.limits.write_timeout);
        let mut due = stall.unwrap_or_else(far_future);
        if let Some((_, until)) = answer {
            return due.min(*until);
        }
        if let Some(idle) = self.shared.idle_deadline(self.route.limits.idle_timeout) {
            due = due.min(idle);
        }
        if let Some(k) = keepalive.next(self.shared) {
            due = due.min(k);
        }
        if let Some(e) = expires {
            due = due.min(e);
        }
        due
    }

    /// Turn what the backend sent into frames on the output queue. `Err`: the backend broke the
    /// framing rules (what came before the fault is queued).
    fn queue(&mut self, rbuf: &mut BytesMut, eof: bool) -> Result<(), Close> {
        loop {
            match self.from.next(rbuf, eof)? {
                Some(m) => {
                    let opcode = if m.text { OpCode::Text } else { OpCode::Binary };
                    self.traffic.add_message();
                    self.traffic.add_bytes(m.payload.len());
                    encode_frame(&mut self.out.buf, opcode, m.payload);
                }
                None => return Ok(()),
            }
        }
    }

    /// Write and flush as much as the client takes without waiting. A write that cannot go on
    /// starts the stall clock (`write_timeout`); the loop waits for the socket.
    async fn write_now(&mut self) -> Result<(), &'static str> {
        while self.out.busy() {
            let step =
                std::future::poll_fn(|cx| Poll::Ready(self.out.poll_step(cx, &mut self.client)))
                    .await;
            match step {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Err(CLIENT_GONE),
                Poll::Pending => {
                    if self.out.stalled_since.is_none() {
                        self.out.stalled_since = Some(tokio::time::Instant::now());
                    }
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Send the session's Close (if any can be sent), run the closing handshake, close the client
    /// connection. The whole closing handshake, writing what is left of the queue included, is
    /// bounded by `close_timeout`. Returns the Close we sent.
    async fn finish(&mut self, end: DownEnd) -> Option<Close> {
        let deadline = tokio::time::Instant::now() + self.route.limits.close_timeout;
        let failed = matches!(end, DownEnd::Fail(_));
        let sent = match end {
            DownEnd::Abort(why) => {
                self.cut = Some(why);
                None
            }
            DownEnd::Answer { code, drop_queued } => {
                if drop_queued {
                    self.out.drop_unstarted();
                }
                ws::close::encode_close(code, "", &mut self.out.buf);
                let close = Close::new(
                    code.unwrap_or(CloseCode::NORMAL),
                    "client closed",
                    Side::Client,
                );
                self.send_close(deadline).await.then_some(close)
            }
            DownEnd::Initiate(close) | DownEnd::Interrupt(close) | DownEnd::Fail(close) => {
                if !matches!(end, DownEnd::Initiate(_)) {
                    self.out.drop_unstarted();
                }
                ws::close::encode_close(Some(close.code), close.reason, &mut self.out.buf);
                let ok = self.send_close(deadline).await;
                if ok && !failed {
                    // RFC 6455 §5.5.1: wait (bounded) for the client's Close before closing TCP.
                    self.wait_for_upstream(deadline).await;
                }
                ok.then_some(close)
            }
        };
        if sent.is_some() {
            // FIN (and TLS close_notify): the server closes the TCP connection first (RFC 6455 §7.1.1).
            let _ = tokio::time::timeout_at(deadline, self.client.shutdown()).await;
        }
        if !failed {
            // After a protocol error upstream keeps draining the client until it closes (bounded by
            // close_timeout), so that unread bytes do not turn our close into a reset.
            self.shared.tell_up(|c| c.stop_up = true);
        }
        sent
    }

    /// Write the queue, the Close last, by `deadline`. `false`: it could not be sent (the reason
    /// is kept for the log).
    async fn send_close(&mut self, deadline: tokio::time::Instant) -> bool {
        let write = async {
            while self.out.busy() {
                std::future::poll_fn(|cx| self.out.poll_step(cx, &mut self.client))
                    .await
                    .map_err(|_| CLIENT_GONE)?;
            }
            Ok(())
        };
        match tokio::time::timeout_at(deadline, write).await {
            Ok(Ok(())) => true,
            Ok(Err(why)) => {
                self.cut = Some(why);
                false
            }
            Err(_) => {
                self.cut = Some(CLIENT_CLOSE_SLOW);
                false
            }
        }
    }

    async fn wait_for_upstream(&mut self, deadline: tokio::time::Instant) {
        loop {
            if self.shared.lock().up_done {
                return;
            }
            tokio::select! {
                _ = self.shared.to_down.notified() => {}
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }
}

/// Try one write without waiting: `Pending` when the socket has no room now (the task's waker is
/// then registered, and the caller waits with a deadline).
async fn write_now<W: AsyncWrite + Unpin>(w: &mut W, buf: &[u8]) -> Poll<io::Result<usize>> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *w).poll_write(cx, buf))).await
}

/// A deadline that never comes (about 30 years ahead; tokio's timer caps it anyway).
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// Append one unmasked, unfragmented server frame.
fn encode_frame(out: &mut BytesMut, opcode: OpCode, payload: &[u8]) {
    let mut header = [0u8; ws::MAX_SERVER_HEADER_BYTES];
    let n = ws::encode_header(true, opcode, payload.len() as u64, &mut header);
    out.reserve(n + payload.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_rate_allows_a_burst_then_the_rate() {
        let mut c = ControlRate::new(10);
        // A full bucket: ten at once.
        assert!((0..10).all(|_| c.allow(0)));
        assert!(!c.allow(0));
        // One frame's worth comes back every 100 ms.
        assert!(!c.allow(99));
        assert!(c.allow(100));
        assert!(!c.allow(150));
        // A quiet second refills the bucket, never beyond one burst.
        assert!((0..10).all(|_| c.allow(10_000)));
        assert!(!c.allow(10_000));
        // A clock that goes backwards adds nothing.
        assert!(!c.allow(5_000));
    }

    fn frames(sizes: &[usize]) -> Output {
        let mut out = Output::default();
        for (i, &n) in sizes.iter().enumerate() {
            encode_frame(
                &mut out.buf,
                OpCode::Binary,
                &vec![u8::try_from(i).unwrap(); n],
            );
        }
        out
    }

    #[test]
    fn output_keeps_the_frame_in_progress_and_drops_the_rest() {
        // Frames of 2+100, 4+200 and 4+70000 (10-byte header) bytes.
        let mut out = frames(&[100, 200, 70_000]);
        out.written = 150; // inside the second frame
        out.drop_unstarted();
        assert_eq!(out.buf.len(), 102 + 204);
        // On a boundary nothing of the next frame is kept.
        let mut out = frames(&[100, 200]);
        out.written = 102;
        out.drop_unstarted();
        assert_eq!(out.buf.len(), 102);
    }

    #[test]
    fn output_compaction_keeps_frame_boundaries() {
        let mut out = frames(&[70_000, 10, 20]);
        // Write into the middle of the first (large) frame: compaction drops the written bytes.
        out.advance(FLUSH_THRESHOLD_BYTES + 5);
        assert_eq!(out.written, 0);
        let rest_of_first = 70_010 - (FLUSH_THRESHOLD_BYTES + 5);
        assert_eq!(out.partial, rest_of_first);
        assert_eq!(out.buf.len(), rest_of_first + 12 + 22);
        // A Close now still goes after the first frame, not in the middle of it.
        out.advance(10);
        out.drop_unstarted();
        assert_eq!(out.buf.len(), rest_of_first);
        // Everything written: the queue is empty and boundaries start afresh.
        out.advance(rest_of_first - 10);
        assert_eq!((out.buf.len(), out.written, out.partial), (0, 0, 0));
        assert!(out.unflushed);
    }
}
