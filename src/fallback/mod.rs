//! The fallback transport: WebSocket sessions for clients that cannot open a WebSocket,
//! carried over plain HTTP requests (a streaming response or long-polls down, POSTs up).
//!
//! Owns the session table (random ids bound to the opening request's Origin and credential),
//! the per-session buffers and their acknowledgement bookkeeping ([`Down`], [`Up`]), and the
//! answers to the `stream`, `poll` and `send` requests ([`http`]). The session itself is the
//! usual pump, run by the server on one end of an in-process duplex pipe; [`adapter`] is the
//! WebSocket client on the other end. The record format is in [`records`]. The `open` request
//! goes through the server's handshake validation like a WebSocket upgrade.

pub mod adapter;
pub mod body;
pub mod http;
pub mod records;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ::http::header::{self, HeaderMap};
use ::http::Uri;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use tokio::io::{DuplexStream, WriteHalf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::RouteAuth;

/// Where the gateway serves the fallback client script.
pub const SCRIPT_PATH: &str = "/wsgate.js";
/// The fallback client script, compiled in.
pub const SCRIPT: &str = include_str!("../../assets/wsgate.js");

/// The header that marks a fallback request, and its values.
pub const HEADER: &str = "wsgate-fallback";
pub const HEADER_SESSION: &str = "wsgate-session";
pub const HEADER_ACK: &str = "wsgate-ack";
pub const HEADER_SEQ: &str = "wsgate-seq";
pub const HEADER_TRANSPORT: &str = "wsgate-transport";
pub const HEADER_PROTOCOL: &str = "wsgate-protocol";

/// Random bytes in a session id (128 bits).
const ID_BYTES: usize = 16;

/// How a session's client reaches it, for the access line and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket = 0,
    Streaming = 1,
    Polling = 2,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Streaming => "streaming",
            Transport::Polling => "polling",
        }
    }

    fn from_u8(v: u8) -> Transport {
        match v {
            1 => Transport::Streaming,
            2 => Transport::Polling,
            _ => Transport::WebSocket,
        }
    }
}

/// Open fallback sessions by id.
#[derive(Default)]
pub struct Table(Mutex<HashMap<String, Arc<Session>>>);

impl Table {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, s: Arc<Session>) {
        self.lock().insert(s.id.clone(), s);
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.lock().get(id).cloned()
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// A new session id: 128 bits from the OS, base64url without padding (22 characters).
pub fn new_id() -> Result<String, ring::error::Unspecified> {
    use ring::rand::SecureRandom;
    let mut raw = [0u8; ID_BYTES];
    ring::rand::SystemRandom::new().fill(&mut raw)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

/// What a session's requests must repeat: the opening request's Origin, and a digest of the
/// credential its route's auth read (none on a route without auth).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    origin: Option<Vec<u8>>,
    credential: Option<[u8; 32]>,
}

impl Binding {
    /// The binding of a request to `auth`'s route.
    pub fn of(headers: &HeaderMap, uri: &Uri, auth: Option<&RouteAuth>) -> Binding {
        let origin = headers.get(header::ORIGIN).map(|v| v.as_bytes().to_vec());
        let credential = auth.map(|a| {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            credential_parts(a, headers, uri, &mut |part| {
                // Length-prefixed, so that parts cannot run into each other.
                ctx.update(&(part.len() as u64).to_be_bytes());
                ctx.update(part);
            });
            let mut out = [0u8; 32];
            out.copy_from_slice(ctx.finish().as_ref());
            out
        });
        Binding { origin, credential }
    }

    /// Same Origin and same credential, compared in constant time.
    pub fn matches(&self, other: &Binding) -> bool {
        let cred = match (&self.credential, &other.credential) {
            (None, None) => true,
            (Some(a), Some(b)) => a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0,
            _ => false,
        };
        cred & (self.origin == other.origin)
    }
}

/// The credential a route's auth reads, in parts: the JWT where its `token_from` says (the
/// query, a cookie, the Authorization header, or `Wsgate-Protocol`), or for forward auth the
/// `Cookie` and `Authorization` headers the auth service sees.
fn credential_parts(auth: &RouteAuth, headers: &HeaderMap, uri: &Uri, out: &mut dyn FnMut(&[u8])) {
    match auth {
        RouteAuth::Jwt(j) => {
            if let Ok(t) = j.extract_query(uri) {
                out(t.as_bytes());
            } else {
                let offered = offered_protocols(headers);
                if let Ok(t) = j.extract(headers, &offered) {
                    out(t.as_bytes());
                }
            }
        }
        RouteAuth::Forward(_) => {
            for name in [header::COOKIE, header::AUTHORIZATION] {
                for v in headers.get_all(&name) {
                    out(v.as_bytes());
                }
                out(b"");
            }
        }
    }
}

/// The subprotocols a fallback request offers (`Wsgate-Protocol`, a comma-separated list like
/// `Sec-WebSocket-Protocol`).
pub fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(HEADER_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A session's limits, from its route.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub session_timeout: Duration,
    pub poll_timeout: Duration,
    pub buffer: u64,
    pub max_message_size: u64,
    pub max_frame_size: u64,
}

/// Why an acknowledgement was refused (`409`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckOutOfRange;

/// Server -> client messages held until acknowledged, as encoded records. Message `base` is the
/// first in `queue`; every message below it was acknowledged.
#[derive(Debug, Default)]
pub struct Down {
    base: u64,
    queue: VecDeque<Bytes>,
    /// Record bytes in `queue`.
    bytes: u64,
    /// The close record is queued (it is the last message).
    closed: bool,
    /// The close record went out in a response.
    delivered: bool,
    /// The session is over: nothing more will be queued.
    ended: bool,
}

impl Down {
    /// The number the next message gets (= messages queued since open).
    pub fn next(&self) -> u64 {
        self.base + self.queue.len() as u64
    }

    /// The client has received messages below `n`: forget them.
    pub fn ack(&mut self, n: u64) -> Result<(), AckOutOfRange> {
        if n < self.base || n > self.next() {
            return Err(AckOutOfRange);
        }
        while self.base < n {
            if let Some(r) = self.queue.pop_front() {
                self.bytes -= r.len() as u64;
            }
            self.base += 1;
        }
        Ok(())
    }

    /// A record of `len` bytes fits in a buffer of `cap` (one always fits in an empty buffer).
    pub fn has_room(&self, len: usize, cap: u64) -> bool {
        self.bytes == 0 || self.bytes + len as u64 <= cap
    }

    pub fn push(&mut self, record: Bytes, close: bool) {
        self.bytes += record.len() as u64;
        self.queue.push_back(record);
        self.closed |= close;
    }

    /// Records from message `from` on, at most `max` bytes (but at least one record): the
    /// bytes, how many messages, and whether the close record is among them.
    pub fn collect(&self, from: u64, max: u64) -> (BytesMut, u64, bool) {
        let mut out = BytesMut::new();
        let mut count = 0;
        let skip = usize::try_from(from.saturating_sub(self.base)).unwrap_or(usize::MAX);
        for r in self.queue.iter().skip(skip) {
            if count > 0 && (out.len() + r.len()) as u64 > max {
                break;
            }
            out.extend_from_slice(r);
            count += 1;
        }
        let close = self.closed && from + count == self.next() && count > 0;
        (out, count, close)
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn ended(&self) -> bool {
        self.ended
    }
}

/// Client -> server: the next message number expected, and the pipe to the session.
pub struct Up {
    pub(crate) next: u64,
    pub(crate) writer: Option<WriteHalf<DuplexStream>>,
    /// The client's close record was passed on.
    pub(crate) closed: bool,
}

/// What a send's sequence number means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// Deliver records from this index in the body on (the ones before were delivered already).
    From(usize),
    /// The body starts after a gap: `409`.
    Gap,
}

impl Up {
    /// A body of `count` records starting at message `seq`.
    pub fn check(&self, seq: u64) -> SeqCheck {
        if seq > self.next {
            SeqCheck::Gap
        } else {
            SeqCheck::From(usize::try_from(self.next - seq).unwrap_or(usize::MAX))
        }
    }
}

/// Requests in flight and when the last one ended, for `fallback_session_timeout`.
struct Activity {
    in_flight: usize,
    last: Instant,
}

/// One fallback session.
pub struct Session {
    pub id: String,
    pub route: String,
    binding: Binding,
    pub limits: Limits,
    down: Mutex<Down>,
    pub(crate) up: tokio::sync::Mutex<Up>,
    /// Bumped on every change a waiting request may care about.
    changed: tokio::sync::watch::Sender<u64>,
    /// The newest down request (older ones end).
    generation: AtomicU64,
    transport: AtomicU8,
    activity: Mutex<Activity>,
    /// Cancelled when the client stopped polling: the adapter lets go of the pipe.
    pub(crate) stop: CancellationToken,
    timed_out: AtomicBool,
    /// Cancelled when the gateway drains, which is this session's turn in the drain too (its
    /// client cannot make new requests): what is left goes out in the responses in flight, so a
    /// stream no longer ends at its budget; and the pump reads no more from the backend, so the
    /// last messages before the Close record no longer wait for room.
    pub(crate) draining: CancellationToken,
    /// What the session holds until it leaves the table (its place in the connection counts),
    /// so that ended sessions waiting for their client are bounded like open ones.
    claim: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    /// Frames the adapter's reader side owes the session (a Pong, the answer to a Close), written
    /// by the adapter's writer; never more than one Pong and one Close.
    pub(crate) control: Mutex<Control>,
    pub(crate) control_ready: tokio::sync::Notify,
}

/// What ties a session to the gateway: its drain signal, and what it holds until it leaves the
/// table (see [`Session`]).
pub struct Ties {
    pub draining: CancellationToken,
    pub claim: Box<dyn std::any::Any + Send>,
}

/// Control frames waiting to be written to the session (client -> server).
#[derive(Debug, Default)]
pub struct Control {
    /// The Pong for the latest Ping (RFC 6455 §5.5.3: answering only the latest is allowed).
    pub(crate) pong: Option<BytesMut>,
    /// The Close that answers the session's Close.
    pub(crate) close: Option<BytesMut>,
}

impl Session {
    pub fn new(
        id: String,
        route: String,
        binding: Binding,
        limits: Limits,
        transport: Transport,
        writer: WriteHalf<DuplexStream>,
        ties: Ties,
    ) -> Session {
        Session {
            id,
            route,
            binding,
            limits,
            down: Mutex::new(Down::default()),
            up: tokio::sync::Mutex::new(Up {
                next: 0,
                writer: Some(writer),
                closed: false,
            }),
            changed: tokio::sync::watch::channel(0).0,
            generation: AtomicU64::new(0),
            transport: AtomicU8::new(transport as u8),
            activity: Mutex::new(Activity {
                in_flight: 0,
                last: Instant::now(),
            }),
            stop: CancellationToken::new(),
            timed_out: AtomicBool::new(false),
            draining: ties.draining,
            claim: Mutex::new(Some(ties.claim)),
            control: Mutex::new(Control::default()),
            control_ready: tokio::sync::Notify::new(),
        }
    }

    pub(crate) fn control(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn binding(&self) -> &Binding {
        &self.binding
    }

    pub(crate) fn down(&self) -> MutexGuard<'_, Down> {
        self.down.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn activity(&self) -> MutexGuard<'_, Activity> {
        self.activity.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wake every waiting request.
    pub(crate) fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub(crate) fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The last down transport the client used.
    pub fn transport(&self) -> Transport {
        Transport::from_u8(self.transport.load(Ordering::Relaxed))
    }

    /// The session ended because its client stopped making requests.
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }

    /// A request of this session is in flight until the guard is dropped.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.activity().in_flight += 1;
        self.notify();
        RequestGuard(self.clone())
    }

    /// Resolves once the close record went out in a response (or the session ended without
    /// one) and the connections are done with every response of the session.
    pub async fn delivered(&self) {
        let mut rx = self.watch();
        loop {
            rx.borrow_and_update();
            {
                let d = self.down();
                if (d.delivered || (d.ended && !d.closed)) && self.activity().in_flight == 0 {
                    return;
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Watch the session's requests: end it when none came for `fallback_session_timeout`,
    /// and remove it from `table` once it is over and its close record was acknowledged (or
    /// no request came for that long).
    pub async fn janitor(self: Arc<Self>, table: Arc<Table>) {
        let mut rx = self.watch();
        loop {
            rx.borrow_and_update();
            let (idle, deadline) = {
                let a = self.activity();
                (a.in_flight == 0, a.last + self.limits.session_timeout)
            };
            let (ended, acked) = {
                let d = self.down();
                (d.ended, d.ended && d.queue.is_empty())
            };
            let expired = idle && Instant::now() >= deadline;
            if ended && (acked || expired) {
                table.remove(&self.id);
                self.claim.lock().unwrap_or_else(|e| e.into_inner()).take();
                return;
            }
            if expired && !self.timed_out() {
                self.timed_out.store(true, Ordering::Relaxed);
                self.stop.cancel();
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                () = tokio::time::sleep_until(deadline), if idle && !expired => {}
            }
        }
    }
}

/// A request of a session in flight (see [`Session::request`]).
pub struct RequestGuard(Arc<Session>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        {
            let mut a = self.0.activity();
            a.in_flight -= 1;
            a.last = Instant::now();
        }
        self.0.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u8) -> Bytes {
        let mut out = BytesMut::new();
        records::encode(records::Kind::Binary, &[n; 3], &mut out);
        out.freeze()
    }

    #[test]
    fn acknowledgements_free_the_buffer_and_stay_in_range() {
        let mut d = Down::default();
        assert_eq!(d.ack(0), Ok(()));
        assert_eq!(d.ack(1), Err(AckOutOfRange));
        for i in 0..4 {
            d.push(rec(i), false);
        }
        assert_eq!(d.next(), 4);
        assert_eq!(d.bytes, 32);
        let (bytes, count, close) = d.collect(1, 1000);
        assert_eq!((bytes.len(), count, close), (24, 3, false));
        // At most `max` bytes, but always one record.
        assert_eq!(d.collect(0, 1).1, 1);
        assert_eq!(d.collect(0, 16).1, 2);
        assert_eq!(d.ack(2), Ok(()));
        assert_eq!((d.base(), d.bytes), (2, 16));
        // A retried request with an older ack, or an ack past what was sent: refused.
        assert_eq!(d.ack(1), Err(AckOutOfRange));
        assert_eq!(d.ack(5), Err(AckOutOfRange));
        // Same ack again: nothing changes.
        assert_eq!(d.ack(2), Ok(()));
        assert_eq!(d.collect(2, 1000).1, 2);
        d.push(rec(9), true);
        let (_, count, close) = d.collect(2, 1000);
        assert_eq!((count, close), (3, true));
        assert_eq!(d.ack(5), Ok(()));
        assert_eq!((d.bytes, d.collect(5, 1000).1), (0, 0));
    }

    #[test]
    fn room_is_bounded_but_one_record_always_fits() {
        let mut d = Down::default();
        assert!(d.has_room(10_000, 100));
        d.push(rec(1), false);
        assert!(d.has_room(92, 100));
        assert!(!d.has_room(93, 100));
    }

    #[test]
    fn sequence_numbers_drop_repeats_and_refuse_gaps() {
        let (a, _b) = tokio::io::duplex(64);
        let (_, w) = tokio::io::split(a);
        let mut up = Up {
            next: 0,
            writer: Some(w),
            closed: false,
        };
        assert_eq!(up.check(0), SeqCheck::From(0));
        assert_eq!(up.check(1), SeqCheck::Gap);
        up.next = 5;
        assert_eq!(up.check(3), SeqCheck::From(2));
        assert_eq!(up.check(5), SeqCheck::From(0));
        assert_eq!(up.check(6), SeqCheck::Gap);
    }

    #[test]
    fn ids_are_22_url_safe_characters_and_differ() {
        let a = new_id().unwrap();
        let b = new_id().unwrap();
        assert_eq!(a.len(), 22);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(a, b);
    }

    #[test]
    fn binding_compares_origin_and_credential() {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, "https://a.example".parse().unwrap());
        let uri: Uri = "/x".parse().unwrap();
        let a = Binding::of(&h, &uri, None);
        assert!(a.matches(&Binding::of(&h, &uri, None)));
        h.insert(header::ORIGIN, "https://b.example".parse().unwrap());
        assert!(!a.matches(&Binding::of(&h, &uri, None)));
    }
}
