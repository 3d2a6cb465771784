//! Connecting to a route's backends: TCP (names resolved at each connect), TLS over TCP
//! (`tls://`, and per-session targets of a route with `[route.target] tls = true`) or a unix
//! socket.
//!
//! A TLS backend is opened in this order, all within the connect deadline: TCP connect, the
//! PROXY header (if the route sends one) in the clear, then the TLS handshake (as HAProxy's
//! `send-proxy` with `ssl`). A handshake that does not finish in time is a 504, one that fails
//! (an unknown issuer, a wrong name, a refused client certificate) a 502; both count against the
//! backend's health and fail over to the next one, like a refused connect.
//!
//! Owns the connect deadline, the mapping of connect failures to HTTP statuses (refused or
//! unreachable -> 502, deadline -> 504, the gateway out of its own descriptors, memory or ports ->
//! 503, never counted against the backend), and a route's [`Pool`]: balancing (round-robin or least
//! connections), failover to the next backend, passive health (a backend failing `failures`
//! connects in a row is skipped for `cooloff`) and optional active TCP checks. One connection per
//! session, never shared. A per-session target is a one-off connection ([`open_one`]) with no
//! health state: it only filters the addresses a name resolves to (an address refused by the
//! route's allow-list is never connected; when none is left, 403).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::config::{Balance, Health};
use crate::metrics::{BackendLabel, Metrics};

use http::StatusCode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::BackendAddr;
use crate::error::Reject;
use crate::tls::BackendTls;

/// A TLS connection to a backend.
type TlsTcp = TlsStream<TcpStream>;

/// A connected backend.
#[derive(Debug)]
pub enum BackendStream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// TLS over TCP, handshake done.
    Tls(Box<TlsTcp>),
}

impl BackendStream {
    /// Owned read and write halves (no lock between the two directions).
    pub fn into_split(self) -> (BackendReader, BackendWriter) {
        match self {
            BackendStream::Tcp(s) => {
                let (r, w) = s.into_split();
                (BackendReader::Tcp(r), BackendWriter::Tcp(w))
            }
            BackendStream::Unix(s) => {
                let (r, w) = s.into_split();
                (BackendReader::Unix(r), BackendWriter::Unix(w))
            }
            // One TLS session serves both directions: the halves share it behind a lock that is
            // held only for the length of one non-blocking poll (both halves of a session run in
            // one task).
            BackendStream::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (BackendReader::Tls(r), BackendWriter::Tls(w))
            }
        }
    }
}

/// The read half of a backend connection.
pub enum BackendReader {
    Tcp(tokio::net::tcp::OwnedReadHalf),
    Unix(tokio::net::unix::OwnedReadHalf),
    Tls(ReadHalf<TlsTcp>),
}

/// The write half of a backend connection.
pub enum BackendWriter {
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    Unix(tokio::net::unix::OwnedWriteHalf),
    /// Shutting it down sends the TLS close_notify, then the TCP FIN.
    Tls(WriteHalf<TlsTcp>),
}

impl AsyncRead for BackendReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendReader::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            BackendReader::Unix(s) => Pin::new(s).poll_read(cx, buf),
            BackendReader::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendWriter::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            BackendWriter::Unix(s) => Pin::new(s).poll_write(cx, buf),
            BackendWriter::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendWriter::Tcp(s) => Pin::new(s).poll_flush(cx),
            BackendWriter::Unix(s) => Pin::new(s).poll_flush(cx),
            BackendWriter::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendWriter::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            BackendWriter::Unix(s) => Pin::new(s).poll_shutdown(cx),
            BackendWriter::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A resource of the gateway's own that ran out. A connect failing for one of these says nothing
/// about the backend: it is not counted against the backend's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalResource {
    /// EMFILE, ENFILE: the process or the system is out of file descriptors.
    FileDescriptors,
    /// ENOMEM.
    Memory,
    /// ENOBUFS: no kernel buffer space for another socket.
    Buffers,
    /// EADDRNOTAVAIL on connect: every ephemeral port to that destination is in use.
    EphemeralPorts,
}

/// `EMFILE`, `ENFILE` (the same on Linux, the BSDs and macOS).
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;
/// `ENOBUFS`.
#[cfg(any(target_os = "linux", target_os = "android"))]
const ENOBUFS: i32 = 105;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const ENOBUFS: i32 = 55;

impl LocalResource {
    /// The local resource behind `e`, if a lack of one caused it.
    pub fn of(e: &io::Error) -> Option<LocalResource> {
        match e.kind() {
            io::ErrorKind::OutOfMemory => return Some(LocalResource::Memory),
            io::ErrorKind::AddrNotAvailable => return Some(LocalResource::EphemeralPorts),
            _ => {}
        }
        match e.raw_os_error()? {
            EMFILE | ENFILE => Some(LocalResource::FileDescriptors),
            ENOBUFS => Some(LocalResource::Buffers),
            _ => None,
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            LocalResource::FileDescriptors => "file_descriptors",
            LocalResource::Memory => "memory",
            LocalResource::Buffers => "buffers",
            LocalResource::EphemeralPorts => "ephemeral_ports",
        }
    }

    /// The reason given to the client and in the access line.
    fn reason(self) -> &'static str {
        match self {
            LocalResource::FileDescriptors => "gateway out of file descriptors",
            LocalResource::Memory => "gateway out of memory",
            LocalResource::Buffers => "gateway out of socket buffers",
            LocalResource::EphemeralPorts => "gateway out of ephemeral ports",
        }
    }
}

/// Why no backend connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve {addr}: {source}")]
    Resolve { addr: String, source: io::Error },
    #[error("connect to {addr} failed: {source}")]
    Io { addr: String, source: io::Error },
    #[error("connect to {addr} timed out after {after:?}")]
    Timeout { addr: String, after: Duration },
    /// The connection was made, but writing the bytes that open it (the PROXY header) failed or
    /// did not finish within the connect deadline.
    #[error("backend {addr} failed while the PROXY header was written")]
    Preface { addr: String },
    /// The TLS handshake failed: the backend's certificate was not accepted, ours was refused,
    /// or the backend broke off the handshake.
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls { addr: String, source: io::Error },
    /// The backend's host is not a name TLS can verify, and no `server_name` is configured.
    #[error("{addr}: the host is not a name TLS can verify (set [route.backend_tls] server_name)")]
    TlsName { addr: String },
    /// Every address the target resolved to is refused by the route's allow-list: nothing was
    /// connected.
    #[error("{addr} resolves to no allowed address")]
    NotAllowed { addr: String },
    /// The gateway itself is out of a resource; the backend was not reached.
    #[error("connect to {addr} not possible, the gateway is out of a local resource: {source}")]
    Local {
        addr: String,
        resource: LocalResource,
        source: io::Error,
    },
}

impl ConnectError {
    /// The answer the client gets instead of a 101.
    pub fn reject(&self) -> Reject {
        match self {
            ConnectError::Timeout { .. } => {
                Reject::backend(StatusCode::GATEWAY_TIMEOUT, "backend connect timed out")
            }
            ConnectError::Resolve { .. } => {
                Reject::backend(StatusCode::BAD_GATEWAY, "backend name does not resolve")
            }
            ConnectError::Io { .. } | ConnectError::Preface { .. } => {
                Reject::backend(StatusCode::BAD_GATEWAY, "backend unavailable")
            }
            ConnectError::Tls { .. } | ConnectError::TlsName { .. } => {
                Reject::backend(StatusCode::BAD_GATEWAY, "backend TLS handshake failed")
            }
            ConnectError::NotAllowed { .. } => {
                Reject::client(StatusCode::FORBIDDEN, "target not allowed")
            }
            // The gateway's own shortage, most likely brief: 503 with `Retry-After`.
            ConnectError::Local { resource, .. } => Reject::busy(resource.reason()),
        }
    }

    /// An I/O failure connecting to `addr`: the gateway's own shortage, or the backend's failure.
    fn io(addr: &dyn std::fmt::Display, source: io::Error) -> ConnectError {
        let addr = addr.to_string();
        match LocalResource::of(&source) {
            Some(resource) => ConnectError::Local {
                addr,
                resource,
                source,
            },
            None => ConnectError::Io { addr, source },
        }
    }
}

/// Which resolved addresses may be connected.
pub type Admit<'a> = &'a (dyn Fn(SocketAddr) -> bool + Sync);

/// Connect to `addr` within `deadline`.
pub async fn connect(
    addr: &BackendAddr,
    deadline: Duration,
) -> Result<BackendStream, ConnectError> {
    connect_admitting(addr, deadline, &|_| true).await
}

/// Connect to `addr` within `deadline`, to none of its resolved addresses that `admit` refuses.
pub async fn connect_admitting(
    addr: &BackendAddr,
    deadline: Duration,
    admit: Admit<'_>,
) -> Result<BackendStream, ConnectError> {
    match tokio::time::timeout(deadline, connect_inner(addr, admit)).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout {
            addr: addr.to_string(),
            after: deadline,
        }),
    }
}

/// (The address is formatted only for an error.)
async fn connect_inner(
    addr: &BackendAddr,
    admit: Admit<'_>,
) -> Result<BackendStream, ConnectError> {
    match addr {
        BackendAddr::Unix(path) => UnixStream::connect(path)
            .await
            .map(BackendStream::Unix)
            .map_err(|source| ConnectError::io(addr, source)),
        // A `tls://` backend's TCP connection; the TLS handshake is [`open_addr`]'s.
        BackendAddr::Tcp { host, port } | BackendAddr::Tls { host, port } => {
            connect_tcp(host, *port, addr, admit)
                .await
                .map(BackendStream::Tcp)
        }
    }
}

/// Connect to the first address `host` resolves to that `admit` allows and that answers.
async fn connect_tcp(
    host: &str,
    port: u16,
    name: &(dyn std::fmt::Display + Sync),
    admit: Admit<'_>,
) -> Result<TcpStream, ConnectError> {
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| ConnectError::Resolve {
            addr: name.to_string(),
            source,
        })?;
    let mut last = None;
    let mut refused = 0usize;
    let mut tried = 0usize;
    for a in addrs {
        if !admit(a) {
            refused += 1;
            continue;
        }
        tried += 1;
        match TcpStream::connect(a).await {
            Ok(s) => {
                // Small messages go out at once; we batch writes ourselves.
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            // Out of descriptors or ports: the next address would fail the same way.
            Err(e) if LocalResource::of(&e).is_some() => return Err(ConnectError::io(name, e)),
            Err(e) => last = Some(e),
        }
    }
    if tried == 0 && refused > 0 {
        return Err(ConnectError::NotAllowed {
            addr: name.to_string(),
        });
    }
    let last = last.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address")
    });
    Err(ConnectError::io(name, last))
}

/// Open a `tls://` backend within `timeout`: TCP connect, `preface` (the PROXY header) in the
/// clear, then the TLS handshake with `tls`.
async fn open_tls(
    (host, port): (&str, u16),
    name: &str,
    timeout: Duration,
    preface: Option<&[u8]>,
    tls: Option<&BackendTls>,
    admit: Admit<'_>,
) -> Result<BackendStream, ConnectError> {
    let Some(tls) = tls else {
        return Err(ConnectError::Tls {
            addr: name.to_string(),
            source: io::Error::other("the route has no TLS client configuration"),
        });
    };
    let server_name = tls
        .server_name_for(host)
        .map_err(|_| ConnectError::TlsName {
            addr: name.to_string(),
        })?;
    let opening = async {
        let mut tcp = connect_tcp(host, port, &name, admit).await?;
        if let Some(bytes) = preface {
            tcp.write_all(bytes)
                .await
                .map_err(|_| ConnectError::Preface {
                    addr: name.to_string(),
                })?;
        }
        let stream = TlsConnector::from(tls.config.clone())
            .connect(server_name, tcp)
            .await
            .map_err(|source| ConnectError::Tls {
                addr: name.to_string(),
                source,
            })?;
        Ok(BackendStream::Tls(Box::new(stream)))
    };
    match tokio::time::timeout(timeout, opening).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout {
            addr: name.to_string(),
            after: timeout,
        }),
    }
}

/// Open a per-session target's connection: connect to the addresses of `addr` that `admit`
/// allows, and write `preface` (the PROXY header, if the route sends one), within `timeout`; for
/// a `tls://` address, then the TLS handshake with `tls`. A one-off connection: no pool, no
/// health state.
pub async fn open_one(
    route: &str,
    addr: &BackendAddr,
    timeout: Duration,
    preface: Option<&[u8]>,
    tls: Option<&BackendTls>,
    admit: Admit<'_>,
) -> Result<(BackendReader, BackendWriter), ConnectError> {
    match open_addr(addr, timeout, preface, tls, admit).await? {
        Opened::Ready(stream) => Ok(stream.into_split()),
        Opened::Connected(stream) => write_preface(stream, preface, timeout, addr, route).await,
    }
}

/// A connection as [`open_addr`] leaves it.
enum Opened {
    /// Connected; the PROXY header (if any) is still to be written.
    Connected(BackendStream),
    /// Ready for the session: the PROXY header and the TLS handshake are done.
    Ready(BackendStream),
}

/// Connect to `addr` within `timeout`; a `tls://` address also gets `preface` and the TLS
/// handshake within that deadline, so that their failures are the backend's connect failures.
async fn open_addr(
    addr: &BackendAddr,
    timeout: Duration,
    preface: Option<&[u8]>,
    tls: Option<&BackendTls>,
    admit: Admit<'_>,
) -> Result<Opened, ConnectError> {
    match addr {
        BackendAddr::Tls { host, port } => {
            let name = addr.to_string();
            open_tls((host, *port), &name, timeout, preface, tls, admit)
                .await
                .map(Opened::Ready)
        }
        _ => connect_admitting(addr, timeout, admit)
            .await
            .map(Opened::Connected),
    }
}

/// Split a new connection and write `preface` first, within `timeout`.
async fn write_preface(
    stream: BackendStream,
    preface: Option<&[u8]>,
    timeout: Duration,
    addr: &BackendAddr,
    route: &str,
) -> Result<(BackendReader, BackendWriter), ConnectError> {
    let (reader, mut writer) = stream.into_split();
    if let Some(bytes) = preface {
        let written = tokio::time::timeout(timeout, writer.write_all(bytes)).await;
        if !matches!(written, Ok(Ok(()))) {
            warn!(route = %route, backend = %addr, "backend failed while the PROXY header was written");
            return Err(ConnectError::Preface {
                addr: addr.to_string(),
            });
        }
    }
    Ok((reader, writer))
}

/// A route's backends and their health.
pub struct Pool {
    route: String,
    members: Vec<Member>,
    balance: Balance,
    health: Health,
    next: AtomicUsize,
    epoch: Instant,
    metrics: Arc<Metrics>,
}

struct Member {
    addr: BackendAddr,
    label: BackendLabel,
    /// Its `wsgate_backend_up` and connect-time handles, resolved once.
    up: Gauge,
    connect_seconds: Histogram,
    /// Sessions using this backend now.
    active: AtomicUsize,
    /// Consecutive failed connects.
    failures: AtomicU32,
    /// Skipped until this many ms after `epoch` (0: in rotation).
    down_until_ms: AtomicU64,
}

/// A session's claim on a backend; releases it (for least-connections) when dropped.
pub struct Lease {
    pool: Arc<Pool>,
    index: usize,
}

impl Lease {
    pub fn backend(&self) -> &BackendAddr {
        &self.pool.members[self.index].addr
    }

    /// The backend's name as the configuration and the metrics write it (formatted once).
    pub fn name(&self) -> &str {
        &self.pool.members[self.index].label.backend
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.members[self.index]
            .active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    pub fn new(
        route: &str,
        addrs: &[BackendAddr],
        balance: Balance,
        health: Health,
        metrics: Arc<Metrics>,
    ) -> Arc<Pool> {
        let members = addrs
            .iter()
            .map(|a| {
                let label = BackendLabel {
                    route: route.to_string(),
                    backend: a.to_string(),
                };
                let up = metrics.backend_up.get_or_create(&label).clone();
                up.set(1);
                let connect_seconds = metrics
                    .backend_connect_seconds
                    .get_or_create(&label)
                    .clone();
                Member {
                    addr: a.clone(),
                    label,
                    up,
                    connect_seconds,
                    active: AtomicUsize::new(0),
                    failures: AtomicU32::new(0),
                    down_until_ms: AtomicU64::new(0),
                }
            })
            .collect();
        Arc::new(Pool {
            route: route.to_string(),
            members,
            balance,
            health,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            metrics,
        })
    }

    pub fn addrs(&self) -> impl Iterator<Item = &BackendAddr> {
        self.members.iter().map(|m| &m.addr)
    }

    fn now_ms(&self) -> u64 {
        // Saturating: u64 milliseconds last 584 million years.
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    fn is_up(&self, m: &Member) -> bool {
        m.down_until_ms.load(Ordering::Relaxed) <= self.now_ms()
    }

    /// The order in which to try the backends: the balance choice first, backends in cool-off last.
    fn candidates(&self) -> Vec<usize> {
        let n = self.members.len();
        let mut order: Vec<usize> = match self.balance {
            Balance::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
                (0..n).map(|k| (start + k) % n).collect()
            }
            Balance::LeastConnections => {
                let mut v: Vec<usize> = (0..n).collect();
                v.sort_by_key(|&k| self.members[k].active.load(Ordering::Relaxed));
                v
            }
        };
        order.sort_by_key(|&k| !self.is_up(&self.members[k]));
        order
    }

    /// Open a session's backend connection: connect (with failover, see [`Pool::connect`]) and
    /// write `preface` (the PROXY header, if the route sends one) before anything else, within
    /// `timeout`; a `tls://` backend then does its TLS handshake with `tls`. Every failure to
    /// reach the backend before the 101 is decided here, as one [`ConnectError`] and so one
    /// status.
    pub async fn open(
        self: &Arc<Self>,
        timeout: Duration,
        preface: Option<&[u8]>,
        tls: Option<&BackendTls>,
    ) -> Result<((BackendReader, BackendWriter), Lease), ConnectError> {
        let (opened, lease) = self.connect(timeout, preface, tls).await?;
        let halves = match opened {
            Opened::Ready(stream) => stream.into_split(),
            Opened::Connected(stream) => {
                write_preface(stream, preface, timeout, lease.backend(), &self.route).await?
            }
        };
        Ok((halves, lease))
    }

    /// Connect to one of the backends, trying the next on failure, each within `timeout`. A
    /// `tls://` backend's PROXY header and TLS handshake are part of its connect: their failure
    /// counts against it and the next backend is tried.
    async fn connect(
        self: &Arc<Self>,
        timeout: Duration,
        preface: Option<&[u8]>,
        tls: Option<&BackendTls>,
    ) -> Result<(Opened, Lease), ConnectError> {
        let mut last = None;
        for index in self.candidates() {
            let m = &self.members[index];
            let started = Instant::now();
            match open_addr(&m.addr, timeout, preface, tls, &|_| true).await {
                Ok(stream) => {
                    m.connect_seconds.observe(started.elapsed().as_secs_f64());
                    self.mark_up(m);
                    m.active.fetch_add(1, Ordering::Relaxed);
                    return Ok((
                        stream,
                        Lease {
                            pool: self.clone(),
                            index,
                        },
                    ));
                }
                Err(ConnectError::Local {
                    resource, source, ..
                }) => {
                    // Not the backend's fault, and every other backend would fail the same way.
                    warn!(route = %self.route, backend = %m.addr, resource = resource.label(), error = %source, "backend not tried: the gateway is out of a local resource; the backend's health is unchanged");
                    self.metrics.local_resource_error(resource.label());
                    return Err(ConnectError::Local {
                        addr: m.addr.to_string(),
                        resource,
                        source,
                    });
                }
                Err(e) => {
                    warn!(route = %self.route, backend = %m.addr, error = %e, "backend connect failed");
                    self.metrics
                        .backend_connect_failures
                        .get_or_create(&m.label)
                        .inc();
                    let failures = m.failures.fetch_add(1, Ordering::Relaxed) + 1;
                    if failures >= self.health.failures {
                        self.mark_down(m, "connects failed in a row");
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(ConnectError::Io {
            addr: self.route.clone(),
            source: io::Error::new(io::ErrorKind::NotFound, "no backend"),
        }))
    }

    fn mark_up(&self, m: &Member) {
        m.failures.store(0, Ordering::Relaxed);
        if m.down_until_ms.swap(0, Ordering::Relaxed) != 0 {
            info!(route = %self.route, backend = %m.addr, "backend back in rotation");
        }
        m.up.set(1);
    }

    fn mark_down(&self, m: &Member, why: &str) {
        let cooloff_ms = u64::try_from(self.health.cooloff.as_millis()).unwrap_or(u64::MAX);
        let until = self.now_ms().saturating_add(cooloff_ms);
        if m.down_until_ms.swap(until, Ordering::Relaxed) <= self.now_ms() {
            warn!(route = %self.route, backend = %m.addr, cooloff = ?self.health.cooloff, why, "backend skipped");
        }
        m.up.set(0);
    }

    /// Start the active health checks, if configured. They stop when the pool is dropped. A
    /// check is a TCP connect, for `tls://` backends too (no PROXY header, no handshake).
    pub fn start_health_checks(self: &Arc<Self>, timeout: Duration) {
        let Some(interval) = self.health.check_interval else {
            return;
        };
        let weak: Weak<Pool> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                for m in &pool.members {
                    match connect(&m.addr, timeout).await {
                        Ok(_) => pool.mark_up(m),
                        // The gateway's own shortage says nothing about the backend.
                        Err(ConnectError::Local { resource, .. }) => {
                            pool.metrics.local_resource_error(resource.label());
                        }
                        Err(_) => pool.mark_down(m, "health check failed"),
                    }
                }
            }
        });
    }
}
