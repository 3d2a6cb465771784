//! The front end's process lifecycle: binding (demo backends first, then listeners, then the
//! admin listener), the accept loop and connection admission (`max_connections`,
//! `max_connections_per_ip`), one task per connection from accept to close, and shutdown (stop
//! accepting, a Close with `drain_close_code` to every session, at once or spread over
//! `drain_window` ([`drain`]), wait at most `shutdown_grace`).
//!
//! Listeners are TCP or unix-domain sockets ([`unix`]: the socket file's life from the stale
//! check to its removal), bound here or passed by systemd ([`systemd`]: socket activation).
//! Behind a load balancer, a `proxy_protocol` listener reads the PROXY
//! header ([`crate::proxy_protocol::decode`]) from a `trusted` peer before TLS and HTTP, within
//! `handshake_timeout`, and takes the client address from it; a connection from elsewhere, or
//! without a good header, is closed unanswered (logged, counted in
//! `proxy_header_refused_total`). Its per-address count (`max_connections_per_ip`) is taken once
//! the header is read, on the carried address; on a `forwarded` listener, a trusted peer's
//! connection is counted per request, on the address its header names (see [`request`]). A TLS listener with `accept_plain` tells TLS from plain clients by the
//! first byte, peeked before anything is read.
//!
//! The other jobs have files of their own:
//! - [`router`]: one configuration generation (routes with their backend pools and session
//!   counts, TLS acceptors), replaced whole on reload.
//! - [`reload`]: reconfiguration: SIGHUP and certificate files, one writer of the live state.
//! - [`upgrade`]: binary upgrade: the listening sockets handed to (or taken from) another
//!   process over `[runtime] upgrade_socket`; here, which listener takes which socket, and the
//!   drain that follows the hand-over.
//! - [`request`]: the request pipeline before the 101: TLS, hyper, exactly one answer per request.
//! - [`session`]: a session's bookkeeping after the 101: registry, pump, metrics, access line.
//! - [`drain`]: on shutdown, the schedule that tells the sessions over `drain_window`.
//!
//! The checks themselves live in `handshake`, `auth` and `backend`; the session in `pump`.

mod drain;
mod first_word;
mod h2;
mod reload;
mod request;
mod router;
mod session;
mod systemd;
mod unix;
mod upgrade;

pub use systemd::ActivationError;
pub use upgrade::UpgradeError;

use reload::{forward_sighup, reconfigure};
use request::{http_phase, Conn, PendingSession, UpgradeSlot};
use router::SessionCounts;
use router::State;
use session::run_session;
use upgrade::Handover;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UnixListener, UnixStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::{Config, ListenAddr};
use crate::forwarded::{ForwardedHeader, Trusted};
use crate::framing::MessageBudget;
use crate::metrics::Metrics;
use crate::metrics::ProxyRefusedLabel;
use crate::notify::Notifier;
use crate::proxy_protocol;
use crate::registry::Registry;
use crate::{admin, demo};

/// Backoff after an accept error such as "too many open files", doubled up to the maximum.
const ACCEPT_BACKOFF_START_MS: u64 = 10;
const ACCEPT_BACKOFF_MAX_MS: u64 = 1000;

/// Unsent bytes the kernel may hold for one client connection (TCP_NOTSENT_LOWAT).
const CLIENT_NOTSENT_LOWAT_BYTES: u32 = 128 * 1024;

/// Pending connections the kernel queues per listener (capped by `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

/// The TLS record type of a handshake (RFC 8446 §5.1): the first byte a TLS client sends. On an
/// `accept_plain` listener any other first byte means plain HTTP.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The address a client of a unix-socket listener is shown with (access lines, `/sessions`,
/// the forward-auth request): such a client has no IP address.
pub(super) const UNIX_PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot listen on unix:{}: {source}", path.display())]
    BindUnix { path: PathBuf, source: io::Error },
    #[error("cannot listen on unix:{}: another process accepts connections on this socket", path.display())]
    UnixInUse { path: PathBuf },
    #[error("cannot listen on unix:{}: the path exists and is not a socket (left untouched)", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot start demo backend on {addr}: {source}")]
    Demo { addr: SocketAddr, source: io::Error },
    #[error("systemd socket activation: {0}")]
    Activation(#[from] ActivationError),
    #[error("binary upgrade: {0}")]
    Upgrade(#[from] UpgradeError),
    #[error("binary upgrade: the socket handed over for {key} cannot be used: {reason}")]
    Adopt { key: String, reason: String },
}

/// Where the gateway listens, reported once everything is bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// The TCP client listeners, in configuration order.
    pub listeners: Vec<SocketAddr>,
    /// The unix-socket client listeners' paths, in configuration order.
    pub unix: Vec<PathBuf>,
    /// The admin listener, when the configuration has one.
    pub admin: Option<SocketAddr>,
}

/// State shared by every connection, across configuration generations.
pub struct Gateway {
    state: RwLock<Arc<State>>,
    /// Open sessions per route path, across generations.
    route_sessions: SessionCounts,
    /// Session tasks, so that shutdown can wait for them.
    sessions: TaskTracker,
    /// Cancelled on shutdown: no new sessions; HTTP/2 connections get GOAWAY; fallback sessions
    /// know that their client cannot open new requests.
    shutdown: CancellationToken,
    /// `drain_window` and `drain_close_code`.
    drain: drain::DrainPlan,
    /// Cancelled when `shutdown_grace` has passed: sessions still open are cut (and logged). The
    /// registered sessions are told through their control blocks too.
    cut: CancellationToken,
    next_session: AtomicU64,
    pub metrics: Arc<Metrics>,
    /// Open sessions and readiness, as the admin endpoint shows them.
    registry: Arc<Registry>,
    connections: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Open fallback-transport sessions by id.
    fallback: Arc<crate::fallback::Table>,
    /// Client message bytes held whole by all sessions (`partial_message_budget`).
    budget: Arc<MessageBudget>,
    /// systemd's readiness messages (`Type=notify`).
    notify: Notifier,
}

impl Gateway {
    pub fn state(&self) -> Arc<State> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_state(&self, s: State) {
        self.registry.config_applied(&s.config);
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(s);
    }

    /// Count a new client connection; the reason when a limit refuses it. A client of a
    /// unix-socket listener (`ip` is `None`) counts against `max_connections` only; so does one
    /// whose address is not known yet (a PROXY header to read) or comes per request.
    fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> (ConnGuard, Option<&'static str>) {
        let limits = self.state().config.http;
        let total = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        self.metrics.connections_open.inc();
        let mut guard = ConnGuard {
            gw: self.clone(),
            ip: None,
        };
        let mut refused =
            (total > limits.max_connections).then_some("too many connections (max_connections)");
        if let Some(ip) = ip {
            let (claim, over) = self.claim_ip_uncounted(ip);
            guard.ip = Some(claim);
            if over {
                refused = refused.or(Some(PER_IP_REFUSAL));
            }
        }
        if refused.is_some() {
            self.metrics.connections_refused.inc();
        }
        (guard, refused)
    }

    /// Count one more connection from `ip` (`max_connections_per_ip`), for a connection already
    /// admitted: the claim, and whether it is over the limit (then counted as refused).
    pub(super) fn claim_ip(self: &Arc<Self>, ip: IpAddr) -> (IpClaim, bool) {
        let (claim, over) = self.claim_ip_uncounted(ip);
        if over {
            self.metrics.connections_refused.inc();
        }
        (claim, over)
    }

    fn claim_ip_uncounted(self: &Arc<Self>, ip: IpAddr) -> (IpClaim, bool) {
        let max = self.state().config.http.max_connections_per_ip;
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        *n += 1;
        let over = *n > max;
        drop(map);
        (
            IpClaim {
                gw: self.clone(),
                ip,
            },
            over,
        )
    }
}

/// Why a connection over `max_connections_per_ip` gets 503.
pub(super) const PER_IP_REFUSAL: &str =
    "too many connections from this address (max_connections_per_ip)";

/// Releases a connection's place in the counts when the connection (or its session) ends.
struct ConnGuard {
    gw: Arc<Gateway>,
    /// Its place in the per-address count: `None` for a unix-socket client, and for a connection
    /// whose client address comes per request (`forwarded`).
    ip: Option<IpClaim>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.gw.connections.fetch_sub(1, Ordering::Relaxed);
        self.gw.metrics.connections_open.dec();
    }
}

/// One place in the count of connections from one address (`max_connections_per_ip`).
pub(super) struct IpClaim {
    gw: Arc<Gateway>,
    ip: IpAddr,
}

impl Drop for IpClaim {
    fn drop(&mut self) {
        let mut map = self.gw.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Everything bound at start, before the gateway state exists.
struct Started {
    bound: Vec<(Listening, usize)>,
    listening: Vec<SocketAddr>,
    unix_paths: Vec<PathBuf>,
    socket_files: Vec<unix::SocketFile>,
    admin_listener: Option<(TcpListener, Option<String>, SocketAddr)>,
    /// `[runtime] upgrade_socket`, bound: the listener, its file, the path it was bound at.
    upgrade_socket: Option<(UnixListener, unix::SocketFile, PathBuf)>,
    /// Copies of the listening sockets by key, for a successor (with `upgrade_socket` only).
    offered: Vec<(String, std::os::fd::OwnedFd)>,
}

/// Bind everything, serve until `shutdown` resolves, then drain sessions. With `config_path`,
/// SIGHUP re-reads that file and certificate files are watched for changes. With `report`, the
/// bound addresses are sent there once everything is bound. With `upgrade`, the listening sockets
/// are taken from the process running on `[runtime] upgrade_socket`, which drains once this one
/// is ready (see [`upgrade`]).
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
    report: Option<tokio::sync::oneshot::Sender<Bound>>,
    upgrade: bool,
) -> Result<(), RunError> {
    // Take over SIGHUP before anything is bound, so that an early one never kills the process.
    let hangup = match &config_path {
        None => None,
        Some(_) => match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP; configuration reload is unavailable");
                None
            }
        },
    };
    let mut handover = match (upgrade, &config.runtime.upgrade_socket) {
        (false, _) => None,
        (true, None) => return Err(UpgradeError::NotConfigured.into()),
        (true, Some(path)) => Some(upgrade::connect(path).await?),
    };
    let started = match start(&config, handover.as_mut()).await {
        Ok(s) => s,
        Err(e) => {
            if let Some(h) = handover {
                h.failed(&e.to_string()).await;
            }
            return Err(e);
        }
    };
    let Started {
        bound,
        listening,
        unix_paths,
        mut socket_files,
        admin_listener,
        upgrade_socket,
        offered,
    } = started;
    if let Some(report) = report {
        let _ = report.send(Bound {
            listeners: listening,
            unix: unix_paths,
            admin: admin_listener.as_ref().map(|(_, _, addr)| *addr),
        });
    }
    let metrics = Metrics::new();
    let grace = config.http.shutdown_grace;
    let drain_plan = drain::DrainPlan {
        window: config.http.drain_window,
        code: config.http.drain_close_code,
    };
    let upgrade_path = config.runtime.upgrade_socket.clone();
    let notify = Notifier::from_env(config.runtime.notify);
    let budget = MessageBudget::new(config.http.partial_message_budget);
    let route_sessions = SessionCounts::default();
    let state = State::build(config, &metrics, &route_sessions, None);
    let gw = Arc::new(Gateway {
        state: RwLock::new(Arc::new(state)),
        route_sessions,
        sessions: TaskTracker::new(),
        shutdown: CancellationToken::new(),
        drain: drain_plan,
        cut: CancellationToken::new(),
        next_session: AtomicU64::new(1),
        metrics,
        registry: Arc::new(Registry::default()),
        connections: AtomicUsize::new(0),
        per_ip: Mutex::new(HashMap::new()),
        fallback: Arc::default(),
        budget,
        notify,
    });
    gw.registry.config_applied(&gw.state().config);

    let stop_accepting = CancellationToken::new();
    for (listener, index) in bound {
        tokio::spawn(accept_loop(
            gw.clone(),
            listener,
            index,
            stop_accepting.clone(),
        ));
    }
    // Cancelled when a successor took the listening sockets over (binary upgrade).
    let upgraded = CancellationToken::new();
    if let Some((listener, token, _)) = admin_listener {
        // The admin listener outlives the drain: /readyz must be seen turning false. After a
        // binary upgrade it is the successor's.
        tokio::spawn(admin::serve(
            admin::View {
                registry: gw.registry.clone(),
                metrics: gw.metrics.clone(),
            },
            listener,
            token,
            upgraded.clone(),
        ));
    }
    if let Some(path) = config_path {
        let (events, received) = tokio::sync::mpsc::channel(1);
        if let Some(hup) = hangup {
            tokio::spawn(forward_sighup(hup, events, stop_accepting.clone()));
        }
        tokio::spawn(reconfigure(
            gw.clone(),
            path,
            received,
            stop_accepting.clone(),
        ));
    }
    gw.registry.set_ready(true);
    // A successor tells its predecessor first; if that fails it drains what it accepted and
    // exits with the reason.
    let mut outcome = Ok(());
    let mut upgrade_socket = upgrade_socket;
    match handover {
        None => gw.notify.ready(&gw.status_text("ready")),
        Some(h) => {
            let temporary = upgrade_socket.as_ref().map(|(_, _, at)| at.clone());
            match (
                h.ready(temporary.as_deref().unwrap_or(Path::new(""))).await,
                &upgrade_path,
            ) {
                (Ok(()), Some(path)) => {
                    // The upgrade socket is at the configured path now.
                    upgrade_socket = match (upgrade_socket.take(), unix::SocketFile::adopt(path)) {
                        (Some((l, tmp, _)), Ok(file)) => {
                            tmp.keep();
                            Some((l, file, path.clone()))
                        }
                        (other, Err(e)) => {
                            warn!(path = %path.display(), error = %e, "the upgrade socket file is gone");
                            other
                        }
                        (None, Ok(_)) => None,
                    };
                    gw.notify.ready_as_main(&gw.status_text("ready"));
                }
                (Ok(()), None) => {}
                (Err(e), _) => outcome = Err(RunError::Upgrade(e)),
            }
        }
    }
    if let Some((listener, file, _)) = upgrade_socket {
        tokio::spawn(upgrade::serve(
            listener,
            file,
            offered,
            stop_accepting.clone(),
            upgraded.clone(),
        ));
    }
    let status_stop = CancellationToken::new();
    if gw.notify.is_on() {
        tokio::spawn(status_updates(gw.clone(), status_stop.clone()));
    }

    if outcome.is_ok() {
        tokio::select! {
            _ = shutdown => {}
            _ = upgraded.cancelled() => {}
        }
    }
    let by_upgrade = upgraded.is_cancelled();
    if by_upgrade {
        info!(
            close_code = drain_plan.code.get(),
            drain_window = ?drain_plan.window,
            "binary upgrade: no new connections here, closing sessions"
        );
    } else {
        info!(
            close_code = drain_plan.code.get(),
            drain_window = ?drain_plan.window,
            "shutting down: no new connections, closing sessions"
        );
    }
    gw.registry.set_ready(false);
    status_stop.cancel();
    // After an upgrade the successor is systemd's main process: STOPPING=1 is not ours to say.
    if !by_upgrade {
        gw.notify.stopping(&gw.status_text("draining"));
    }
    stop_accepting.cancel();
    if by_upgrade {
        // The unix listeners' sockets live on in the successor: their files stay.
        for f in socket_files.drain(..) {
            f.keep();
        }
    }
    // New clients of a unix listener now find no socket file instead of a silent one.
    drop(socket_files);
    gw.shutdown.cancel();
    gw.registry.drain_started();
    gw.sessions.close();
    // The window is shorter than the grace (validated), so the walk always ends within it.
    let drained = tokio::time::timeout(grace, async {
        tokio::join!(
            drain::stagger(&gw.registry, drain_plan.window),
            gw.sessions.wait()
        )
    })
    .await;
    if drained.is_err() {
        warn!(grace = ?grace, "sessions still open after shutdown_grace; cutting them");
        gw.cut.cancel();
        gw.registry.cut_all();
        // The cut sessions write their access lines; that takes moments.
        let _ = tokio::time::timeout(Duration::from_secs(1), gw.sessions.wait()).await;
    }
    outcome
}

/// Start the demo backends and bind every listener, the admin listener and the upgrade socket;
/// with `handover`, the listeners whose `bind` a predecessor sent take its sockets.
async fn start(config: &Config, mut handover: Option<&mut Handover>) -> Result<Started, RunError> {
    for d in &config.demo_backends {
        let addr = demo::start(d).await.map_err(|source| RunError::Demo {
            addr: d.bind,
            source,
        })?;
        info!(addr = %addr, kind = ?d.kind, "demo backend listening");
    }
    let mut bound = Vec::new();
    let mut listening = Vec::new();
    let mut unix_paths = Vec::new();
    // Removed at shutdown (or when a later bind fails), each only if it is still our file.
    let mut socket_files = Vec::new();
    // systemd listeners whose sockets came from a predecessor take none from the environment.
    let mut handed_over = HashSet::new();
    let mut received = Vec::new();
    if let Some(h) = handover.as_deref_mut() {
        for (index, l) in config.listeners.iter().enumerate() {
            let key = l.bind.to_string();
            if h.has(&key) {
                handed_over.insert(index);
                received.push((index, key.clone(), h.take(&key)));
            }
        }
    }
    // Taken before anything is bound here: a missing or wrong socket stops the start early.
    let inherited = systemd::take(&config.listeners, &handed_over)?;
    for (index, key, fds) in received {
        let Some(l) = config.listeners.get(index) else {
            continue;
        };
        for fd in fds {
            let listener = adopt(&key, fd, &l.bind)?;
            match &listener {
                Listening::Tcp(t) => {
                    let addr = t
                        .local_addr()
                        .map_err(|e| adopt_error(&key, e.to_string()))?;
                    info!(addr = %addr, tls = l.tls.is_some(), accept_plain = l.accept_plain, handed_over = true, "listening");
                    listening.push(addr);
                }
                Listening::Unix(_) => {
                    if let ListenAddr::Unix(path) = &l.bind {
                        info!(path = %path.display(), tls = l.tls.is_some(), handed_over = true, "listening on unix socket");
                        unix_paths.push(path.clone());
                        match unix::SocketFile::adopt(path) {
                            Ok(f) => socket_files.push(f),
                            Err(e) => {
                                warn!(path = %path.display(), error = %e, "the socket file handed over is gone")
                            }
                        }
                    } else {
                        info!(listener = %key, tls = l.tls.is_some(), handed_over = true, "listening on unix socket");
                    }
                }
            }
            bound.push((listener, index));
        }
    }
    for (index, l) in config.listeners.iter().enumerate() {
        if handed_over.contains(&index) {
            continue;
        }
        match &l.bind {
            ListenAddr::Systemd(_) => {}
            ListenAddr::Tcp(bind) => {
                let bind = *bind;
                let listener =
                    bind_listener(bind).map_err(|source| RunError::Bind { addr: bind, source })?;
                let addr = listener
                    .local_addr()
                    .map_err(|source| RunError::Bind { addr: bind, source })?;
                info!(addr = %addr, tls = l.tls.is_some(), accept_plain = l.accept_plain, "listening");
                listening.push(addr);
                bound.push((Listening::Tcp(listener), index));
            }
            ListenAddr::Unix(path) => {
                let (listener, file) = unix::bind(path, l.mode).await?;
                info!(path = %path.display(), tls = l.tls.is_some(), "listening on unix socket");
                unix_paths.push(path.clone());
                socket_files.push(file);
                bound.push((Listening::Unix(listener), index));
            }
        }
    }
    for s in inherited {
        let tls = config
            .listeners
            .get(s.index)
            .is_some_and(|l| l.tls.is_some());
        match &s.listening {
            Listening::Tcp(l) => {
                let addr = l.local_addr().map_err(|e| ActivationError::NotAListener {
                    name: s.name.clone(),
                    fd: s.fd,
                    reason: e.to_string(),
                })?;
                info!(addr = %addr, tls, systemd = %s.name, fd = s.fd, "listening");
                listening.push(addr);
            }
            Listening::Unix(l) => {
                let path = l
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(PathBuf::from));
                match &path {
                    Some(p) => {
                        info!(path = %p.display(), tls, systemd = %s.name, fd = s.fd, "listening on unix socket")
                    }
                    None => {
                        info!(tls, systemd = %s.name, fd = s.fd, "listening on unix socket")
                    }
                }
                unix_paths.extend(path);
            }
        }
        bound.push((s.listening, s.index));
    }
    let admin_listener = match &config.admin {
        None => None,
        Some(a) => {
            let key = upgrade::admin_key(&a.bind);
            let taken = handover
                .as_deref_mut()
                .map(|h| h.take(&key))
                .unwrap_or_default();
            let listener = match taken.into_iter().next() {
                Some(fd) => match adopt(&key, fd, &ListenAddr::Tcp(a.bind))? {
                    Listening::Tcp(t) => t,
                    Listening::Unix(_) => return Err(adopt_error(&key, "a unix socket".into())),
                },
                None => TcpListener::bind(a.bind)
                    .await
                    .map_err(|source| RunError::Bind {
                        addr: a.bind,
                        source,
                    })?,
            };
            let addr = listener.local_addr().map_err(|source| RunError::Bind {
                addr: a.bind,
                source,
            })?;
            info!(addr = %addr, "admin listening");
            Some((listener, a.token.clone(), addr))
        }
    };
    if let Some(h) = handover.as_deref_mut() {
        h.close_unused();
    }
    let upgrade_socket = match &config.runtime.upgrade_socket {
        None => None,
        Some(path) => Some(upgrade::bind(path, handover.is_some()).await?),
    };
    let mut offered = Vec::new();
    if upgrade_socket.is_some() {
        use std::os::fd::AsFd;
        let mut copy = |key: String, fd: std::os::fd::BorrowedFd<'_>| match fd.try_clone_to_owned()
        {
            Ok(fd) => offered.push((key, fd)),
            Err(e) => {
                warn!(listener = %key, error = %e, "cannot keep this socket for a binary upgrade")
            }
        };
        for (listener, index) in &bound {
            let Some(l) = config.listeners.get(*index) else {
                continue;
            };
            match listener {
                Listening::Tcp(t) => copy(l.bind.to_string(), t.as_fd()),
                Listening::Unix(u) => copy(l.bind.to_string(), u.as_fd()),
            }
        }
        if let (Some((l, _, _)), Some(a)) = (&admin_listener, &config.admin) {
            copy(upgrade::admin_key(&a.bind), l.as_fd());
        }
    }
    Ok(Started {
        bound,
        listening,
        unix_paths,
        socket_files,
        admin_listener,
        upgrade_socket,
        offered,
    })
}

fn adopt_error(key: &str, reason: String) -> RunError {
    RunError::Adopt {
        key: key.to_string(),
        reason,
    }
}

/// A listening socket handed over under `key`, for a listener bound at `bind`: checked to be a
/// listening stream socket of the right family, non-blocking, registered with the runtime.
fn adopt(key: &str, fd: std::os::fd::OwnedFd, bind: &ListenAddr) -> Result<Listening, RunError> {
    let fail = |reason: String| adopt_error(key, reason);
    let sock = socket2::SockRef::from(&fd);
    systemd::check_listening(sock).map_err(fail)?;
    let is_unix = socket2::SockRef::from(&fd)
        .domain()
        .map_err(|e| fail(e.to_string()))?
        == socket2::Domain::UNIX;
    match (bind, is_unix) {
        (ListenAddr::Tcp(_), true) => Err(fail("a unix socket for a TCP listener".into())),
        (ListenAddr::Unix(_), false) => Err(fail("a TCP socket for a unix listener".into())),
        (_, true) => {
            let l = std::os::unix::net::UnixListener::from(fd);
            l.set_nonblocking(true).map_err(|e| fail(e.to_string()))?;
            Ok(Listening::Unix(
                UnixListener::from_std(l).map_err(|e| fail(e.to_string()))?,
            ))
        }
        (_, false) => {
            let l = std::net::TcpListener::from(fd);
            l.set_nonblocking(true).map_err(|e| fail(e.to_string()))?;
            Ok(Listening::Tcp(
                TcpListener::from_std(l).map_err(|e| fail(e.to_string()))?,
            ))
        }
    }
}

/// How often the `STATUS=` line is refreshed (sent only when its text changed).
const NOTIFY_STATUS_INTERVAL_MS: u64 = 1000;

/// Keep systemd's status line current (`systemctl status wsgate`): sessions and connections open.
/// The notifier compares with the last line it sent (with `READY=1` too), so a change between
/// the ready message and this task's start is not missed.
async fn status_updates(gw: Arc<Gateway>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(NOTIFY_STATUS_INTERVAL_MS)) => {}
        }
        gw.notify.status(&gw.status_text("ready"));
    }
}

impl Gateway {
    /// The `STATUS=` text (`state`, then sessions and connections open): what `systemctl status`
    /// shows.
    fn status_text(&self, state: &str) -> String {
        let sessions = self.registry.sessions().len();
        let connections = self.connections.load(Ordering::Relaxed);
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        format!(
            "{state}; {sessions} session{} open, {connections} connection{} open",
            plural(sessions),
            plural(connections)
        )
    }
}

/// A bound client listener.
enum Listening {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// An accepted client connection.
enum Accepted {
    Tcp(TcpStream, SocketAddr),
    Unix(UnixStream),
}

impl Listening {
    async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Listening::Tcp(l) => l.accept().await.map(|(s, peer)| Accepted::Tcp(s, peer)),
            Listening::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
        }
    }
}

async fn accept_loop(gw: Arc<Gateway>, listener: Listening, index: usize, stop: CancellationToken) {
    let mut backoff = ACCEPT_BACKOFF_START_MS;
    // A listener bound to one address gives every connection that local address; only a
    // wildcard bind needs asking per connection.
    let local = match &listener {
        Listening::Tcp(l) => l.local_addr().ok().filter(|a| !a.ip().is_unspecified()),
        Listening::Unix(_) => None,
    };
    // The listener in `proxy_header_refused_total`: its bound address.
    let label: Arc<str> = match &listener {
        Listening::Tcp(l) => l
            .local_addr()
            .map_or_else(|_| "-".to_string(), |a| a.to_string()),
        Listening::Unix(_) => "-".to_string(),
    }
    .into();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok(Accepted::Tcp(tcp, peer)) => {
                backoff = ACCEPT_BACKOFF_START_MS;
                // Behind a balancer the address to count comes later: from the PROXY header, or
                // per request from a trusted peer's forwarded header.
                let later = {
                    let state = gw.state();
                    state.config.listeners.get(index).is_some_and(|l| {
                        l.proxy_protocol.is_some()
                            || (l.forwarded.is_some() && l.trusted.contains(peer.ip()))
                    })
                };
                let (guard, refused) = gw.admit((!later).then_some(peer.ip()));
                tokio::spawn(tcp_connection(
                    gw.clone(),
                    tcp,
                    (peer, local),
                    (index, label.clone()),
                    guard,
                    refused,
                ));
            }
            Ok(Accepted::Unix(stream)) => {
                backoff = ACCEPT_BACKOFF_START_MS;
                let accepted_at = tokio::time::Instant::now();
                let (guard, refused) = gw.admit(None);
                let state = gw.state();
                let tls = state.tls.get(index).cloned().flatten();
                // Whoever may connect to the socket file is a trusted proxy: its header names
                // the client.
                let forwarded = state
                    .config
                    .listeners
                    .get(index)
                    .and_then(|l| Some((l.forwarded?, l.trusted.clone())));
                drop(state);
                let conn = ConnStart {
                    peer: UNIX_PEER,
                    local: UNIX_PEER,
                    unix: true,
                    accepted_at,
                    guard: Arc::new(guard),
                    refused,
                    h2c: false,
                    forwarded,
                };
                tokio::spawn(connection(gw.clone(), stream, tls, conn));
            }
            Err(e) if is_per_connection_error(&e) => {
                debug!(error = %e, "accept: connection failed before it was accepted");
            }
            Err(e) => {
                // Out of file descriptors or memory: wait, do not spin.
                if let Some(resource) = crate::backend::LocalResource::of(&e) {
                    gw.metrics.local_resource_error(resource.label());
                }
                warn!(error = %e, backoff_ms = backoff, "accept failed; backing off");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(backoff)) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX_MS);
            }
        }
    }
}

/// A client listener. Options set on the listening socket are given by Linux to every accepted
/// connection, which saves system calls per connection:
/// - TCP_NODELAY: frames go out as soon as they are written (the gateway batches its writes).
/// - TCP_NOTSENT_LOWAT: the kernel holds at most [`CLIENT_NOTSENT_LOWAT_BYTES`] of data not yet
///   sent to a client, so what the gateway queues next (a Close after a control event, a Pong)
///   waits behind that much at most, not behind megabytes of a fast backend's stream.
fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    #[cfg(target_os = "linux")]
    socket2::SockRef::from(&socket).set_tcp_notsent_lowat(CLIENT_NOTSENT_LOWAT_BYTES)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn is_per_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// What a connection's task starts with, whatever its transport.
struct ConnStart {
    peer: SocketAddr,
    local: SocketAddr,
    /// On a unix-socket listener.
    unix: bool,
    /// The handshake deadline (`handshake_timeout`) counts from here.
    accepted_at: tokio::time::Instant,
    guard: Arc<ConnGuard>,
    refused: Option<&'static str>,
    /// The client opened with the HTTP/2 preface on a listener that accepts h2c.
    h2c: bool,
    /// A trusted peer on a `forwarded` listener: the header that names the client.
    forwarded: Option<(ForwardedHeader, Arc<Trusted>)>,
}

/// A TCP client connection, from accept to close: what comes before HTTP ([`tcp_start`]), then
/// [`connection`].
///
/// The future is the task's whole state for the life of the connection, so it is kept small:
/// each phase is boxed and freed when it ends (what comes before HTTP: the PROXY header's peek
/// window and the timers of the peeks). This is a plain function that boxes the first phase at
/// once, because an `async fn` would keep its arguments for its whole life.
fn tcp_connection(
    gw: Arc<Gateway>,
    tcp: TcpStream,
    addrs: (SocketAddr, Option<SocketAddr>),
    listener: (usize, Arc<str>),
    guard: ConnGuard,
    refused: Option<&'static str>,
) -> impl Future<Output = ()> + Send {
    let start = Box::pin(tcp_start(gw, tcp, addrs, listener, guard, refused));
    async move {
        if let Some(connection) = start.await {
            connection.await;
        }
    }
}

/// What comes before HTTP on a TCP connection: its local address, the PROXY header (on a
/// `proxy_protocol` listener), and on an `accept_plain` listener whether it speaks TLS, told by
/// its first byte (peeked, not read, within `handshake_timeout`). Then the rest of the
/// connection, to run; `None`: the connection ends here.
async fn tcp_start(
    gw: Arc<Gateway>,
    mut tcp: TcpStream,
    (peer, local): (SocketAddr, Option<SocketAddr>),
    (index, label): (usize, Arc<str>),
    mut guard: ConnGuard,
    mut refused: Option<&'static str>,
) -> Option<impl Future<Output = ()> + Send> {
    let accepted_at = tokio::time::Instant::now();
    // On Linux TCP_NODELAY comes from the listener (see `bind_listener`).
    if !cfg!(target_os = "linux") {
        let _ = tcp.set_nodelay(true);
    }
    let local = match local {
        Some(a) => a,
        None => match tcp.local_addr() {
            Ok(a) => a,
            Err(_) => return None,
        },
    };
    let state = gw.state();
    let tls = state.tls.get(index).cloned().flatten();
    let listener = state.config.listeners.get(index);
    let accept_plain = listener.is_some_and(|l| l.accept_plain);
    let http2 = listener.is_some_and(|l| l.http2);
    let handshake_timeout = state.config.http.handshake_timeout;
    let proxy = listener.and_then(|l| l.proxy_protocol);
    let forwarded = listener.and_then(|l| Some((l.forwarded?, l.trusted.clone())));
    let trusted = listener.map(|l| l.trusted.clone()).unwrap_or_default();
    drop(state);
    let (peer, local) = match proxy {
        None => (peer, local),
        Some(version) => {
            let deadline = accepted_at + handshake_timeout;
            let addrs = read_proxy_header(
                &gw,
                &mut tcp,
                (peer, local),
                version,
                &trusted,
                &label,
                deadline,
            )
            .await?;
            // Counted on the carried address, unless it is a trusted proxy whose requests name
            // their clients (counted per request).
            if forwarded.is_none() || !trusted.contains(addrs.0.ip()) {
                let (claim, over) = gw.claim_ip(addrs.0.ip());
                guard.ip = Some(claim);
                if over {
                    refused = refused.or(Some(PER_IP_REFUSAL));
                }
            }
            addrs
        }
    };
    let forwarded = forwarded.filter(|(_, t)| t.contains(peer.ip()));
    let tls = match tls {
        Some(acceptor) if accept_plain => {
            let mut first = [0u8; 1];
            let deadline = accepted_at + handshake_timeout;
            match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
                Ok(Ok(0)) => return None,
                Ok(Ok(_)) => (first[0] == TLS_HANDSHAKE_RECORD).then_some(acceptor),
                Ok(Err(e)) => {
                    debug!(client = %peer, error = %e, "connection failed before its first byte");
                    return None;
                }
                Err(_) => {
                    debug!(client = %peer, "handshake deadline passed before the first byte");
                    return None;
                }
            }
        }
        tls => tls,
    };
    // h2c with prior knowledge, on a plain listener (or a plain connection on an `accept_plain`
    // one) with `http2 = true`: the preface is peeked, not read.
    let h2c =
        tls.is_none() && http2 && h2::prior_knowledge(&tcp, accepted_at + handshake_timeout).await;
    let conn = ConnStart {
        peer,
        local,
        unix: false,
        accepted_at,
        guard: Arc::new(guard),
        refused,
        h2c,
        forwarded,
    };
    Some(connection(gw, tcp, tls, conn))
}

/// Read the PROXY header at the start of a connection from a trusted balancer, before TLS and
/// HTTP: the client address and the address it connected to (the connection's own for a LOCAL
/// header, such as a health check). `None`: the connection is refused (logged, counted) and is
/// closed unanswered.
///
/// The bytes are peeked, decoded, and only the header's own bytes are read, so whatever follows
/// (a TLS ClientHello, an HTTP request) is left in the socket for the next stage.
async fn read_proxy_header(
    gw: &Gateway,
    tcp: &mut TcpStream,
    (peer, local): (SocketAddr, SocketAddr),
    version: proxy_protocol::Version,
    trusted: &Trusted,
    listener: &str,
    deadline: tokio::time::Instant,
) -> Option<(SocketAddr, SocketAddr)> {
    let refuse = |reason: &'static str, detail: &dyn std::fmt::Display| {
        if reason == "closed" {
            // A TCP health check that connects and leaves, or a peer gone mid-header.
            debug!(client = %peer, listener, reason, "connection ended before its PROXY header: {detail}");
        } else {
            info!(client = %peer, listener, reason, "connection refused before HTTP: {detail}");
        }
        gw.metrics
            .proxy_header_refused
            .get_or_create(&ProxyRefusedLabel {
                listener: listener.to_string(),
                reason,
            })
            .inc();
        None
    };
    if !trusted.contains(peer.ip()) {
        return refuse(
            "untrusted",
            &"the peer is not in the listener's trusted ranges",
        );
    }
    // The header so far; never more than the largest header allowed.
    let mut got: Vec<u8> = Vec::new();
    let mut window = [0u8; PROXY_PEEK_BYTES];
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut window)).await {
            Err(_) => return refuse("timeout", &"no whole PROXY header within handshake_timeout"),
            Ok(Err(e)) => return refuse("closed", &e),
            Ok(Ok(0)) => return refuse("closed", &"the connection ended before the PROXY header"),
            Ok(Ok(n)) => n,
        };
        let start = got.len();
        got.extend_from_slice(&window[..n]);
        let (result, take) = match proxy_protocol::decode(version, &got) {
            Err(e) => return refuse(e.label(), &e),
            // Everything peeked belongs to the header: read it, peek on.
            Ok(None) => (None, n),
            Ok(Some((h, len))) => (Some(h), len.saturating_sub(start)),
        };
        got.truncate(start + take);
        if let Err(e) = tcp.read_exact(&mut window[..take]).await {
            return refuse("closed", &e);
        }
        if let Some(h) = result {
            return Some(match h {
                proxy_protocol::Proxied::Proxy {
                    source,
                    destination,
                } => (
                    SocketAddr::new(crate::forwarded::canonical(source.ip()), source.port()),
                    destination,
                ),
                proxy_protocol::Proxied::Local => (peer, local),
            });
        }
    }
}

/// How much of a connection's start is looked at at once for its PROXY header: a v1 line whole,
/// or a v2 header's fixed part, addresses and the common TLVs.
const PROXY_PEEK_BYTES: usize = 512;

/// One client connection, from accept to close: the HTTP phase (TLS handshake, request, answer),
/// then the session if the request was upgraded.
///
/// Both phases are boxed, so that the task keeps only two pointers: the HTTP phase's state
/// (hyper's connection, the TLS handshake) is large and short-lived, and is freed when the
/// request is answered; the session's is in an allocation of exactly its size. A plain function,
/// like [`tcp_connection`], so that its arguments are not kept for the session's life.
fn connection<S>(
    gw: Arc<Gateway>,
    stream: S,
    tls: Option<TlsAcceptor>,
    start: ConnStart,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = Box::pin(http(gw.clone(), stream, tls, start));
    async move {
        if let Some(p) = http.await {
            let session = Box::pin(run_session(gw.clone(), p));
            gw.sessions.track_future(session).await;
        }
    }
}

/// The HTTP phase of a connection: the session its request opened, if any.
async fn http<S>(
    gw: Arc<Gateway>,
    stream: S,
    tls: Option<TlsAcceptor>,
    start: ConnStart,
) -> Option<Box<PendingSession>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handoff = Arc::new(UpgradeSlot::default());
    let conn = Conn {
        peer: start.peer,
        local: start.local,
        unix: start.unix,
        tls: tls.is_some(),
        refused: start.refused,
        guard: start.guard,
        handoff: handoff.clone(),
        http2: false,
        h2c: start.h2c,
        streams: None,
        lasting: Arc::default(),
        forwarded: start.forwarded,
        client_claim: None,
    };
    http_phase(gw, stream, tls, conn, start.accepted_at).await;
    // Boxed: the session's arguments are kept for its whole life, so they are kept small.
    handoff.take().map(Box::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, C, D, E, G, F: Future>(_: impl FnOnce(A, B, C, D, E, G) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_connection_task_keeps_only_pointers_to_its_phases() {
        // The task's future lives as long as the connection. Each phase is boxed, so what the
        // task keeps while a session runs is a few pointers, not the session's state beside the
        // HTTP phase's (which made it 6 KB before).
        let size = future_size(tcp_connection);
        assert!(size <= 256, "tcp_connection's future is {size} bytes");
    }
}
