//! The session after the 101: two named halves moving data both ways, and the closing handshake.
//!
//! - [`upstream`] (client -> backend) reads frames, decodes them, turns messages into backend
//!   bytes ([`ToBackend`]) and answers nothing itself: pongs and Close frames are written by the
//!   other half.
//! - [`downstream`] (backend -> client) reads the backend, turns bytes into messages
//!   ([`crate::framing::FromBackend`]), writes frames to the client, and owns every frame the
//!   client receives: data, pongs, and the one Close frame of the session. It also owns every
//!   deadline and control event (see its doc).
//! - [`keepalive`]: when to ping and when a silent client is dead, as pure functions of time.
//! - [`io`]: reading without holding a buffer while idle, and the client's output queue.
//! - [`gate`]: each half is polled only after a wake-up of its own, not whenever the task is.
//! - [`control`]: what the gateway tells the session from outside (drain, operator close, cut).
//!
//! With permessage-deflate, upstream inflates compressed messages in bounded chunks as their
//! pieces arrive (forwarding, and waiting for the backend, between chunks) and downstream
//! compresses messages of at least `min_compress_bytes`. Each half allocates its compression
//! context at its first compressed message and frees it when a tick of the idle timer
//! ([`BUFFER_RELEASE`]) finds that no message used it since the previous tick (so after one to
//! two idle seconds; a busy session keeps it): the compressor always (the next message starts a
//! fresh deflate stream the client reads as a continuation), the inflater only without client
//! context takeover (with takeover the client's window is part of the stream and lives as long
//! as the session).
//!
//! The halves run concurrently in one task and share only a small control block ([`Ctl`]),
//! never an unbounded queue: each side writes with `await`, so a peer that does not read stalls
//! the other side (backpressure) and memory stays flat. Close semantics are the table in
//! README.md; [`crate::error::Close`] names each ending.
//!
//! Who sets and who reads each field of [`Ctl`] (each change wakes the reading half):
//!
//! | field                  | set by     | read by    | meaning                                      |
//! |------------------------|------------|------------|----------------------------------------------|
//! | `pongs`                | upstream   | downstream | Pong frames to write (bounded)               |
//! | `client_close`         | upstream   | downstream | the client sent Close (its code)             |
//! | `fail`                 | upstream   | downstream | the client broke the protocol: this Close    |
//! | `backend_write_failed` | upstream   | downstream | the backend stopped taking data: this Close  |
//! | `client_gone`          | upstream   | downstream | the client connection ended without a Close  |
//! | `up_done`              | upstream   | downstream | upstream returned (closing handshake waits)  |
//! | `stop_up`              | downstream | upstream   | the session is over: upstream must return    |

pub(crate) mod clock;
mod control;
mod downstream;
mod gate;
mod io;
mod keepalive;
mod upstream;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

// The session's clock is tokio's, like its timers (the same as the system's monotonic clock
// unless a test pauses it).
use tokio::time::Instant;

use bytes::BytesMut;
use tokio::io::AsyncWrite;

use downstream::Downstream;
use upstream::Upstream;

use crate::config::Route;
use crate::error::{Close, SessionEnd};
use crate::framing::{FromBackend, MessageBudget, ToBackend};
use crate::recording::Recorder;
use crate::ws::CloseCode;

pub use control::{SessionControl, Told};
pub(crate) use gate::Gated;
pub use io::ReadBytes;

/// How much we ask for per read, from either side: 64 KiB and room for a frame header (at most
/// 14 bytes) or a length prefix, so that a 64 KiB message, a common size, comes in one read
/// rather than a read and a straggler of its last few bytes, each then a write, a wake-up of the
/// next hop and a frame of their own.
const READ_CHUNK_BYTES: usize = 65 * 1024;
const _: () = assert!(READ_CHUNK_BYTES >= 64 * 1024 + 14);
/// Bytes gathered before a write is started even though more input is waiting.
const FLUSH_THRESHOLD_BYTES: usize = 64 * 1024;
/// Payloads at least this large are written to their socket straight from the read buffer when
/// nothing waits before them, rather than copied into the output first.
const DIRECT_WRITE_BYTES: usize = 16 * 1024;
/// Pong frames waiting to be written, in bytes. Past this, only the latest ping is answered
/// (RFC 6455 §5.5.3 allows it), so a ping flood from a client that never reads costs nothing.
const MAX_PENDING_PONG_BYTES: usize = 4 * 1024;

/// Read size while discarding what a client sends after a protocol error.
const DISCARD_CHUNK_BYTES: usize = 4 * 1024;

/// A half's idle tick: after this long without data it frees what it still holds (a compression
/// context; a read buffer it kept, though an emptied one goes back to its thread as soon as a
/// read finds nothing more, see [`io::poll_read_more`]), so idle sessions hold neither.
const BUFFER_RELEASE: Duration = Duration::from_secs(1);

/// Who a session is and what it is told, in one block shared by the session and its registry
/// entry (the admin endpoint's view): its log line's names, its live counters, its control block.
#[derive(Debug)]
pub struct SessionInfo {
    pub id: u64,
    pub route: Arc<Route>,
    /// The route's metric handles.
    pub metrics: Arc<crate::metrics::RouteMetrics>,
    pub client: SocketAddr,
    /// The authenticated subject, if the route authenticates.
    pub subject: Option<String>,
    /// The backend connected (`host:port` or `unix:/path`): the pool's choice or the session's
    /// own target.
    pub backend: String,
    /// When the session started (its upgrade was accepted, just before the 101 went out).
    pub started: std::time::SystemTime,
    /// Told to drain as soon as the gateway starts draining, not in its turn of the drain window
    /// (a fallback session: its client cannot open another request once the gateway stops
    /// accepting, so the Close must go out in the one it has open).
    pub drains_at_start: bool,
    /// When the client's credential expires: the session is closed with 1008 then.
    pub expires_at: Option<std::time::SystemTime>,
    /// Live counters, readable while the session runs (admin `/sessions`).
    pub stats: SessionStats,
    /// What the gateway tells the session from outside: drain (with `drain_code`), operator
    /// close (1008), the cut at `shutdown_grace`.
    pub control: SessionControl,
    /// The code of the Close the session gets when the gateway drains (`drain_close_code`).
    pub drain_code: CloseCode,
    /// The gateway-wide bound on client messages held whole (`partial_message_budget`).
    pub budget: Arc<MessageBudget>,
    /// The session's recording (`record = "DIR"` on the route): each half hands it the bytes
    /// it writes to or reads from the backend.
    pub recording: Option<Arc<Recorder>>,
    /// permessage-deflate, when negotiated.
    pub deflate: Option<crate::ws::DeflateParams>,
}

#[cfg(test)]
impl SessionInfo {
    /// A session of route `/r` with nothing told, for tests.
    pub(crate) fn for_tests(id: u64, drains_at_start: bool) -> SessionInfo {
        let text = "[[listener]]\nbind = \"127.0.0.1:0\"\n[[route]]\npath = \"/r\"\nbackend = \"127.0.0.1:1\"\n";
        let config = crate::config::Config::parse(text, std::path::Path::new(".")).expect("config");
        SessionInfo {
            id,
            route: config.routes[0].clone(),
            metrics: crate::metrics::RouteMetrics::new(crate::metrics::Metrics::new(), "/r"),
            client: "127.0.0.1:1".parse().expect("addr"),
            subject: None,
            backend: "127.0.0.1:1".into(),
            started: std::time::SystemTime::now(),
            drains_at_start,
            expires_at: None,
            stats: SessionStats::default(),
            control: SessionControl::default(),
            drain_code: CloseCode::GOING_AWAY,
            budget: MessageBudget::new(1 << 20),
            recording: None,
            deflate: None,
        }
    }
}

/// What a session adds to the plain pipe, for each half: its recording and permessage-deflate.
#[derive(Clone, Copy)]
pub(super) struct Extras<'s> {
    pub(super) rec: Option<&'s crate::recording::Recorder>,
    pub(super) deflate: Option<crate::ws::DeflateParams>,
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

/// Run a session to its end. Its control block (`info.control`) asks for a Close with
/// `info.drain_code` (1001 or 1012) when the gateway drains, with 1008 when an operator closes
/// it, and ends it at once without a Close at the cut (the gateway's `shutdown_grace` passed).
///
/// `client` and `backend` are the read and write halves of each connection (owned halves where
/// the transport has them, so the two directions never contend for a lock). `preread` holds
/// bytes the client sent right behind its request head: they are the first frames (their
/// buffer becomes the session's first read buffer, freed like any other when idle).
pub async fn run<CR, CW, BR, BW>(
    info: &SessionInfo,
    mut client: (CR, CW),
    preread: &mut Vec<u8>,
    mut backend: (BR, BW),
) -> Outcome
where
    CR: ReadBytes,
    CW: AsyncWrite + Unpin,
    BR: ReadBytes,
    BW: AsyncWrite + Unpin,
{
    let started = Instant::now();
    let shared = Shared::new(started);
    let route = &info.route;
    // A credential valid beyond what the clock can represent never expires in this session.
    let expires = info.expires_at.and_then(|at| {
        let left = at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        tokio::time::Instant::now().checked_add(left)
    });
    let extras = Extras {
        rec: info.recording.as_deref(),
        deflate: info.deflate,
    };
    // The halves borrow the sockets and the first bytes where this future keeps them (moved
    // into the halves, each would take its size twice in it).
    let mut up = Upstream::new(
        &mut client.0,
        &mut backend.1,
        &shared,
        ToBackend::new(route.framing, &info.budget),
        route,
        &info.stats.up,
        extras,
    );
    let mut down = Downstream::new(
        (&mut backend.0, &mut client.1),
        &shared,
        FromBackend::new(route.framing, route.limits.max_message_size),
        route,
        &info.stats.down,
        extras,
        downstream::Outside {
            control: &info.control,
            drain_code: info.drain_code,
            expires,
        },
    );
    // Each half is polled only when something it waits on is ready (its socket, its timers, a
    // word from the other half), not whenever the other half is.
    let up = std::pin::pin!(up.run(preread));
    let down = std::pin::pin!(down.run());
    let ((), end) = gate::join_gated(up, down).await;
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
    to_down: Signal,
    /// Wakes upstream: something in `ctl` changed.
    to_up: Signal,
    started: Instant,
    /// On a session thread: the loop's clock ([`clock`]) at `started`, in milliseconds.
    started_pass_ms: Option<u64>,
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
            to_down: Signal::default(),
            to_up: Signal::default(),
            started,
            // Read where the session is created: its future is built on the thread it runs on.
            started_pass_ms: clock::pass_ms(),
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
        self.to_down.raise();
    }

    /// Change the control block and wake upstream.
    fn tell_up(&self, f: impl FnOnce(&mut Ctl)) {
        f(&mut self.lock());
        self.to_up.raise();
    }

    fn now_ms(&self) -> u64 {
        if let (Some(start), Some(now)) = (self.started_pass_ms, clock::pass_ms()) {
            return now.saturating_sub(start);
        }
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The instant `ms` milliseconds after the start (a time beyond the clock's range: never).
    fn at_ms(&self, ms: u64) -> tokio::time::Instant {
        self.started
            .checked_add(Duration::from_millis(ms))
            .unwrap_or_else(far_future)
    }

    fn touch(&self) {
        self.touch_at(self.now_ms());
    }

    /// Traffic at `now_ms` (milliseconds since the start).
    fn touch_at(&self, now_ms: u64) {
        self.last_activity_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Bytes came from the client at `now_ms`.
    fn client_read_at(&self, now_ms: u64) {
        self.last_client_read_ms.store(now_ms, Ordering::Relaxed);
    }

    /// When the session is idle, if `idle_timeout` is on.
    /// Milliseconds since the start when bytes last came from the client.
    fn last_client_read(&self) -> u64 {
        self.last_client_read_ms.load(Ordering::Relaxed)
    }

    fn idle_deadline(&self, idle: Option<Duration>) -> Option<tokio::time::Instant> {
        Some(self.at_ms(self.last_activity_ms.load(Ordering::Relaxed)) + idle?)
    }
}

/// One half's word to the other: raised any number of times, seen once by the next poll. The
/// waiting half keeps no future of its own (unlike a `Notify` waiter); the one waker of its
/// latest poll is stored here.
#[derive(Default)]
struct Signal {
    raised: AtomicBool,
    waker: Mutex<Option<std::task::Waker>>,
}

impl Signal {
    fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        wake_slot(&self.waker);
    }

    /// Ready once for every raise since the last time it was (several raises may be seen as one).
    fn poll(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.raised.swap(false, Ordering::AcqRel) {
            return std::task::Poll::Ready(());
        }
        store_waker(&self.waker, cx);
        // Raised while the waker was being stored: not lost.
        if self.raised.swap(false, Ordering::AcqRel) {
            return std::task::Poll::Ready(());
        }
        std::task::Poll::Pending
    }
}

/// Wake the task whose waker is in `slot`, if any.
fn wake_slot(slot: &Mutex<Option<std::task::Waker>>) {
    // A panic while holding this lock leaves a valid waker (or none) in place.
    if let Some(w) = &*slot.lock().unwrap_or_else(|e| e.into_inner()) {
        w.wake_by_ref();
    }
}

/// Leave the polling task's waker in `slot` (the one waiter), unless it is there already.
fn store_waker(slot: &Mutex<Option<std::task::Waker>>, cx: &std::task::Context<'_>) {
    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
    if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *slot = Some(cx.waker().clone());
    }
}

/// A deadline that never comes (about 30 years ahead; tokio's timer caps it anyway).
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// A waker that counts its wake-ups, for tests.
#[cfg(test)]
pub(crate) struct Count(pub(crate) AtomicU64);

#[cfg(test)]
impl std::task::Wake for Count {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::{Context, Poll, Waker};

    #[test]
    fn a_signal_is_seen_once_and_wakes_its_waiter() {
        let signal = Signal::default();
        let count = Arc::new(Count(AtomicU64::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        // Raised before anyone waits: the next poll sees it, once.
        signal.raise();
        signal.raise();
        assert!(signal.poll(&mut cx).is_ready());
        assert!(signal.poll(&mut cx).is_pending());
        // Raised while waiting: the waiter is woken and then sees it.
        signal.raise();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert_eq!(signal.poll(&mut cx), Poll::Ready(()));
        assert!(signal.poll(&mut cx).is_pending());
    }
}
