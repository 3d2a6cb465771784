//! The front end: listeners, the accept loop, TLS, HTTP/1.1 with hyper, and the handshake pipeline.
//!
//! Owns: binding (demo backends first, then listeners, then the admin listener), connection
//! admission (`max_connections`, `max_connections_per_ip`, per-route `max_sessions`: 503 with
//! `Retry-After`), one task per connection, the deadlines before the 101 (TLS handshake and request
//! head), turning each request into exactly one answer (a 101 or one HTTP status, see README.md),
//! spawning sessions and tracking them (admin `/sessions`), reloading the configuration and
//! certificates, and shutdown (stop accepting, Close 1001 to every session, wait at most
//! `shutdown_grace`). The checks themselves live in `handshake`, `auth` and `backend`; the session
//! in `pump`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::backend::Pool;
use crate::config::{Config, Route};
use crate::error::{SessionEnd, Side};
use crate::framing::MessageBudget;
use crate::handshake::{self, Reject};
use crate::metrics::{AuthLabel, CloseLabel, Metrics, RouteLabel};
use crate::pump::{self, SessionInfo, SessionStats};
use crate::ws::CloseCode;
use crate::{admin, auth, demo, proxy_protocol, static_files};

/// Time allowed, beyond the handshake and backend-connect deadlines, to write an HTTP answer.
const RESPONSE_GRACE_SECS: u64 = 10;
/// Backoff after an accept error such as "too many open files", doubled up to the maximum.
const ACCEPT_BACKOFF_START_MS: u64 = 10;
const ACCEPT_BACKOFF_MAX_MS: u64 = 1000;
/// Unsent bytes the kernel may hold for one client connection (TCP_NOTSENT_LOWAT).
const CLIENT_NOTSENT_LOWAT_BYTES: u32 = 128 * 1024;
/// Pending connections the kernel queues per listener (capped by `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;
/// How often certificate files are checked for changes.
const CERT_POLL_SECS: u64 = 5;
/// Close code logged when no Close frame was sent (RFC 6455 §7.4.1: abnormal closure).
const CLOSE_CODE_NONE_SENT: u16 = 1006;
/// Close code logged for a Close frame without a code (RFC 6455 §7.4.1: no status received).
const CLOSE_CODE_EMPTY: u16 = 1005;
/// `Retry-After` on 503 answers caused by connection or session limits, in seconds.
const RETRY_AFTER_SECS: u64 = 1;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot start demo backend on {addr}: {source}")]
    Demo { addr: SocketAddr, source: io::Error },
}

/// A route with its runtime state.
pub struct RouteRt {
    pub route: Arc<Route>,
    pub pool: Arc<Pool>,
    /// The credential check built from the route's auth settings.
    pub auth: Option<auth::RouteAuth>,
    /// Sessions open on this route path (kept across reloads).
    sessions: Arc<AtomicUsize>,
}

/// One configuration generation: what new connections use. Replaced whole on reload.
pub struct State {
    pub config: Config,
    routes: HashMap<String, Arc<RouteRt>>,
    /// Per listener (config order): the TLS acceptor, if it is a TLS listener.
    tls: Vec<Option<TlsAcceptor>>,
    /// Bound on everything before the upgrade is handed to the session.
    http_phase_limit: Duration,
}

impl State {
    fn build(config: Config, metrics: &Arc<Metrics>, previous: Option<&State>) -> State {
        let mut routes = HashMap::new();
        for r in &config.routes {
            let old = previous.and_then(|p| p.routes.get(&r.path));
            // Keep health state when the backends did not change, and the session count always.
            let pool = match old {
                Some(o)
                    if o.pool.addrs().eq(r.backends.iter())
                        && o.route.balance == r.balance
                        && o.route.health == r.health =>
                {
                    o.pool.clone()
                }
                _ => {
                    let pool =
                        Pool::new(&r.path, &r.backends, r.balance, r.health, metrics.clone());
                    pool.start_health_checks(r.limits.connect_timeout);
                    pool
                }
            };
            let sessions = old.map(|o| o.sessions.clone()).unwrap_or_default();
            routes.insert(
                r.path.clone(),
                Arc::new(RouteRt {
                    route: r.clone(),
                    pool,
                    auth: r.auth.as_ref().map(auth::RouteAuth::new),
                    sessions,
                }),
            );
        }
        let tls = config
            .listeners
            .iter()
            .map(|l| l.tls.clone().map(TlsAcceptor::from))
            .collect();
        let max_connect = config
            .routes
            .iter()
            .map(|r| {
                let tries = u32::try_from(r.backends.len()).unwrap_or(u32::MAX);
                r.limits.connect_timeout.saturating_mul(tries)
            })
            .max()
            .unwrap_or_default();
        let http_phase_limit =
            config.http.handshake_timeout + max_connect + Duration::from_secs(RESPONSE_GRACE_SECS);
        State {
            config,
            routes,
            tls,
            http_phase_limit,
        }
    }

    /// The route whose path is exactly `path` (no prefix matching, no normalisation).
    fn route(&self, path: &str) -> Option<&Arc<RouteRt>> {
        self.routes.get(path)
    }
}

/// A session as the admin endpoint shows it.
pub struct LiveSession {
    pub route: String,
    pub client: SocketAddr,
    pub subject: Option<String>,
    pub started: SystemTime,
    pub stats: Arc<SessionStats>,
    pub kill: CancellationToken,
}

/// State shared by every connection, across configuration generations.
pub struct Gateway {
    state: RwLock<Arc<State>>,
    /// Session tasks, so that shutdown can wait for them.
    sessions: TaskTracker,
    /// Cancelled on shutdown: every session sends Close 1001.
    shutdown: CancellationToken,
    /// Cancelled when `shutdown_grace` has passed: sessions still open are cut (and logged).
    cut: CancellationToken,
    next_session: AtomicU64,
    pub metrics: Arc<Metrics>,
    pub live: Mutex<HashMap<u64, LiveSession>>,
    /// False before the listeners are bound and while draining.
    pub ready: AtomicBool,
    connections: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Client message bytes held whole by all sessions (`partial_message_budget`).
    budget: Arc<MessageBudget>,
}

impl Gateway {
    pub fn state(&self) -> Arc<State> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_state(&self, s: State) {
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(s);
    }

    /// Count a new client connection; `Err` when a limit refuses it.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> (ConnGuard, Option<&'static str>) {
        let limits = self.state().config.http;
        let total = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let from_ip = {
            let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = map.entry(ip).or_insert(0);
            *n += 1;
            *n
        };
        self.metrics.connections_open.inc();
        let guard = ConnGuard {
            gw: self.clone(),
            ip,
        };
        let refused = if total > limits.max_connections {
            Some("too many connections (max_connections)")
        } else if from_ip > limits.max_connections_per_ip {
            Some("too many connections from this address (max_connections_per_ip)")
        } else {
            None
        };
        if refused.is_some() {
            self.metrics.connections_refused.inc();
        }
        (guard, refused)
    }
}

/// Releases a connection's place in the counts when the connection (or its session) ends.
struct ConnGuard {
    gw: Arc<Gateway>,
    ip: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.gw.connections.fetch_sub(1, Ordering::Relaxed);
        self.gw.metrics.connections_open.dec();
        let mut map = self.gw.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Releases a route session slot.
struct SessionSlot(Arc<AtomicUsize>);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Bind everything, serve until `shutdown` resolves, then drain sessions. With `config_path`,
/// SIGHUP re-reads that file and certificate files are watched for changes.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
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
    for d in &config.demo_backends {
        let addr = demo::start(d).await.map_err(|source| RunError::Demo {
            addr: d.bind,
            source,
        })?;
        info!(addr = %addr, kind = ?d.kind, "demo backend listening");
    }
    let mut bound = Vec::new();
    for (index, l) in config.listeners.iter().enumerate() {
        let listener = bind_listener(l.bind).map_err(|source| RunError::Bind {
            addr: l.bind,
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| RunError::Bind {
            addr: l.bind,
            source,
        })?;
        info!(addr = %addr, tls = l.tls.is_some(), "listening");
        bound.push((listener, index));
    }
    let admin_listener = match &config.admin {
        None => None,
        Some(a) => {
            let listener = TcpListener::bind(a.bind)
                .await
                .map_err(|source| RunError::Bind {
                    addr: a.bind,
                    source,
                })?;
            let addr = listener.local_addr().map_err(|source| RunError::Bind {
                addr: a.bind,
                source,
            })?;
            info!(addr = %addr, "admin listening");
            Some((listener, a.token.clone()))
        }
    };
    let metrics = Metrics::new();
    let grace = config.http.shutdown_grace;
    let budget = MessageBudget::new(config.http.partial_message_budget);
    let gw = Arc::new(Gateway {
        state: RwLock::new(Arc::new(State::build(config, &metrics, None))),
        sessions: TaskTracker::new(),
        shutdown: CancellationToken::new(),
        cut: CancellationToken::new(),
        next_session: AtomicU64::new(1),
        metrics,
        live: Mutex::new(HashMap::new()),
        ready: AtomicBool::new(false),
        connections: AtomicUsize::new(0),
        per_ip: Mutex::new(HashMap::new()),
        budget,
    });

    let stop_accepting = CancellationToken::new();
    for (listener, index) in bound {
        tokio::spawn(accept_loop(
            gw.clone(),
            listener,
            index,
            stop_accepting.clone(),
        ));
    }
    if let Some((listener, token)) = admin_listener {
        // The admin listener outlives the drain: /readyz must be seen turning false.
        tokio::spawn(admin::serve(
            gw.clone(),
            listener,
            token,
            CancellationToken::new(),
        ));
    }
    if let Some(path) = config_path {
        if let Some(hup) = hangup {
            tokio::spawn(reload_on_sighup(
                gw.clone(),
                path.clone(),
                hup,
                stop_accepting.clone(),
            ));
        }
        tokio::spawn(watch_certificates(gw.clone(), stop_accepting.clone()));
    }
    gw.ready.store(true, Ordering::Relaxed);

    shutdown.await;
    info!("shutting down: no new connections, closing sessions with 1001");
    gw.ready.store(false, Ordering::Relaxed);
    stop_accepting.cancel();
    gw.shutdown.cancel();
    gw.sessions.close();
    let drained = tokio::time::timeout(grace, gw.sessions.wait()).await;
    if drained.is_err() {
        warn!(grace = ?grace, "sessions still open after shutdown_grace; cutting them");
        gw.cut.cancel();
        // The cut sessions write their access lines; that takes moments.
        let _ = tokio::time::timeout(Duration::from_secs(1), gw.sessions.wait()).await;
    }
    Ok(())
}

async fn reload_on_sighup(
    gw: Arc<Gateway>,
    path: PathBuf,
    mut hup: tokio::signal::unix::Signal,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            got = hup.recv() => if got.is_none() { return },
        }
        reload(&gw, &path);
    }
}

/// Re-read the configuration: new connections use it, open sessions keep theirs. An invalid
/// file changes nothing.
pub fn reload(gw: &Arc<Gateway>, path: &std::path::Path) {
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "reload refused: the configuration is invalid; the running one stays in force");
            return;
        }
    };
    let old = gw.state();
    let binds = |c: &Config| {
        c.listeners
            .iter()
            .map(|l| (l.bind, l.tls.is_some()))
            .collect::<Vec<_>>()
    };
    if binds(&new) != binds(&old.config) {
        error!(
            "reload refused: listeners changed (bind or TLS on/off); restart to change listeners"
        );
        return;
    }
    let demo = |c: &Config| {
        c.demo_backends
            .iter()
            .map(|d| (d.bind, d.kind))
            .collect::<Vec<_>>()
    };
    if demo(&new) != demo(&old.config) {
        warn!("reload: demo backend changes need a restart; the running demo backends stay");
    }
    if new.admin.as_ref().map(|a| a.bind) != old.config.admin.as_ref().map(|a| a.bind)
        || new.log != old.config.log
        || new.runtime != old.config.runtime
    {
        warn!(
            "reload: [admin], [log] and [runtime] changes need a restart; they stay as they were"
        );
    }
    let routes = new.routes.len();
    gw.budget.set_limit(new.http.partial_message_budget);
    gw.set_state(State::build(new, &gw.metrics, Some(&old)));
    info!(
        routes,
        "configuration reloaded; new connections use it, open sessions keep theirs"
    );
}

/// Reload certificates when their files change (checked every few seconds).
async fn watch_certificates(gw: Arc<Gateway>, stop: CancellationToken) {
    let stamp = |gw: &Gateway| -> Vec<Option<SystemTime>> {
        gw.state()
            .config
            .listeners
            .iter()
            .flat_map(|l| [l.tls_cert.clone(), l.tls_key.clone()])
            .map(|p| p.and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()))
            .collect()
    };
    let mut last = stamp(&gw);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(CERT_POLL_SECS)) => {}
        }
        let now = stamp(&gw);
        if now == last {
            continue;
        }
        last = now;
        let state = gw.state();
        let mut tls = state.tls.clone();
        let mut changed = false;
        for (i, l) in state.config.listeners.iter().enumerate() {
            let (Some(cert), Some(key)) = (&l.tls_cert, &l.tls_key) else {
                continue;
            };
            match crate::tls::load_server_config(cert, key) {
                Ok(cfg) => {
                    tls[i] = Some(TlsAcceptor::from(cfg));
                    changed = true;
                    info!(cert = %cert.display(), "certificate reloaded");
                }
                Err(e) => {
                    error!(error = %e, "certificate changed but cannot be loaded; the old one stays in use")
                }
            }
        }
        if changed {
            let s = State {
                config: state.config.clone(),
                routes: state.routes.clone(),
                tls,
                http_phase_limit: state.http_phase_limit,
            };
            gw.set_state(s);
        }
    }
}

async fn accept_loop(
    gw: Arc<Gateway>,
    listener: TcpListener,
    index: usize,
    stop: CancellationToken,
) {
    let mut backoff = ACCEPT_BACKOFF_START_MS;
    // A listener bound to one address gives every connection that local address; only a
    // wildcard bind needs asking per connection.
    let local = listener
        .local_addr()
        .ok()
        .filter(|a| !a.ip().is_unspecified());
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                backoff = ACCEPT_BACKOFF_START_MS;
                let (guard, refused) = gw.admit(peer.ip());
                let tls = gw.state().tls.get(index).cloned().flatten();
                tokio::spawn(connection(
                    gw.clone(),
                    tcp,
                    (peer, local),
                    tls,
                    Arc::new(guard),
                    refused,
                ));
            }
            Err(e) if is_per_connection_error(&e) => {
                debug!(error = %e, "accept: connection failed before it was accepted");
            }
            Err(e) => {
                // Out of file descriptors or memory: wait, do not spin.
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

/// One client connection.
#[derive(Clone)]
struct Conn {
    peer: SocketAddr,
    /// The gateway address the client connected to.
    local: SocketAddr,
    tls: bool,
    /// Set when a connection limit refused this connection: every request gets 503.
    refused: Option<&'static str>,
    /// Held by the connection and then by its session.
    guard: Arc<ConnGuard>,
    /// Where the upgrade handler leaves the session it set up.
    handoff: Arc<Mutex<Option<PendingSession>>>,
}

/// A session set up by the upgrade handler (route, authorisation and backend done, the 101 on its
/// way), waiting for hyper to hand over the connection. It runs in the connection's own task
/// once hyper is done with it: one task per connection from accept to close, and no earlier task
/// left behind (a finished task's memory lives on while the socket still holds its waker).
struct PendingSession {
    info: SessionInfo,
    on_upgrade: hyper::upgrade::OnUpgrade,
    backend: (crate::backend::BackendReader, crate::backend::BackendWriter),
    claims: Claims,
    shutdown: CancellationToken,
}

/// One client connection, from accept to close: the HTTP phase (TLS handshake, request, answer),
/// then the session if the request was upgraded.
async fn connection(
    gw: Arc<Gateway>,
    tcp: TcpStream,
    (peer, local): (SocketAddr, Option<SocketAddr>),
    tls: Option<TlsAcceptor>,
    guard: Arc<ConnGuard>,
    refused: Option<&'static str>,
) {
    // On Linux TCP_NODELAY comes from the listener (see `bind_listener`).
    if !cfg!(target_os = "linux") {
        let _ = tcp.set_nodelay(true);
    }
    let local = match local {
        Some(a) => a,
        None => match tcp.local_addr() {
            Ok(a) => a,
            Err(_) => return,
        },
    };
    let handoff = Arc::new(Mutex::new(None));
    let conn = Conn {
        peer,
        local,
        tls: tls.is_some(),
        refused,
        guard,
        handoff: handoff.clone(),
    };
    // The HTTP phase is boxed: its state (hyper's connection, the TLS handshake) is large and
    // short-lived, and is freed here instead of sizing the task that then holds the session.
    Box::pin(http_phase(gw.clone(), tcp, tls, conn)).await;
    let pending = handoff.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(p) = pending {
        gw.sessions.track_future(run_session(gw.clone(), p)).await;
    }
}

/// TLS handshake (on a TLS listener), then HTTP/1.1 until the one request is answered.
async fn http_phase(gw: Arc<Gateway>, tcp: TcpStream, tls: Option<TlsAcceptor>, conn: Conn) {
    let peer = conn.peer;
    let state = gw.state();
    let limits = state.config.http;
    let accepted_at = Instant::now();
    let deadline = tokio::time::Instant::from_std(accepted_at + limits.handshake_timeout);
    match tls {
        None => serve_http(gw, state, TokioIo::new(tcp), conn, deadline).await,
        Some(acceptor) => {
            let tls_deadline =
                deadline.min(tokio::time::Instant::now() + limits.tls_handshake_timeout);
            match tokio::time::timeout_at(tls_deadline, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => serve_http(gw, state, TokioIo::new(stream), conn, deadline).await,
                Ok(Err(e)) => debug!(client = %peer, error = %e, "TLS handshake failed"),
                Err(_) => debug!(client = %peer, "TLS handshake deadline passed"),
            }
        }
    }
}

async fn serve_http<I>(
    gw: Arc<Gateway>,
    state: Arc<State>,
    io: TokioIo<I>,
    conn: Conn,
    deadline: tokio::time::Instant,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    if remaining.is_zero() {
        return;
    }
    let limits = state.config.http;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(remaining)
        // Keep-alive stays on only so that hyper does not add `close` to the 101's Connection
        // header; every other answer carries `Connection: close`, so a connection serves one request.
        .keep_alive(true)
        .max_headers(limits.max_headers)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192));
    let phase_limit = state.http_phase_limit;
    let peer = conn.peer;
    let service = service_fn(move |req| {
        let gw = gw.clone();
        let state = state.clone();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(&gw, &state, req, conn).await) }
    });
    let http = builder.serve_connection(io, service).with_upgrades();
    match tokio::time::timeout(phase_limit, http).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(client = %peer, error = %e, "HTTP connection ended with an error"),
        Err(_) => {
            debug!(client = %peer, "HTTP connection cut: no upgrade or answer within the phase limit")
        }
    }
}

/// One request -> one answer.
async fn handle(
    gw: &Arc<Gateway>,
    state: &Arc<State>,
    mut req: Request<Incoming>,
    conn: Conn,
) -> Response<Full<Bytes>> {
    if let Some(reason) = conn.refused {
        info!(target: "wsgate::access", client = %conn.peer, path = %req.uri().path(), status = 503, reason, "connection refused");
        return reject_response(&Reject::busy(reason));
    }
    if !handshake::is_upgrade_attempt(req.headers()) {
        return plain_http(state, &req, conn.peer).await;
    }
    let path = req.uri().path().to_string();
    let label = if state.route(&path).is_some() {
        path.as_str()
    } else {
        "-"
    };
    match upgrade(gw, state, &mut req, &conn).await {
        Ok(resp) => {
            gw.metrics.handshake(label, 101);
            resp
        }
        Err(reject) => {
            gw.metrics.handshake(label, reject.status.as_u16());
            info!(target: "wsgate::access", client = %conn.peer, path = %path, status = reject.status.as_u16(), reason = reject.reason, "handshake refused");
            reject_response(&reject)
        }
    }
}

/// Validate, route, authorise, connect the backend, then answer 101 and start the session.
async fn upgrade(
    gw: &Arc<Gateway>,
    state: &Arc<State>,
    req: &mut Request<Incoming>,
    conn: &Conn,
) -> Result<Response<Full<Bytes>>, Reject> {
    let peer = conn.peer;
    let accepted = handshake::validate(req.method(), req.version(), req.headers())?;
    let rt = state
        .route(req.uri().path())
        .ok_or(Reject::new(
            StatusCode::NOT_FOUND,
            "no WebSocket route at this path",
        ))?
        .clone();
    let route = rt.route.clone();
    auth::check_origin(&route, req.headers())?;
    let identity = auth::authenticate(
        &route,
        rt.auth.as_ref(),
        &auth::Request {
            headers: req.headers(),
            uri: req.uri(),
            offered_protocols: &accepted.offered_protocols,
            client: peer,
            tls: conn.tls,
        },
    )
    .await;
    if route.auth.is_some() {
        let outcome = match &identity {
            Ok(_) => "allowed",
            Err(r) if r.status == StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            Err(_) => "denied",
        };
        gw.metrics
            .auth
            .get_or_create(&AuthLabel {
                route: route.path.clone(),
                outcome,
            })
            .inc();
    }
    let identity = identity?;
    let open = rt.sessions.fetch_add(1, Ordering::Relaxed) + 1;
    let slot = SessionSlot(rt.sessions.clone());
    if route.max_sessions.is_some_and(|max| open > max) {
        return Err(Reject::busy(
            "too many sessions on this route (max_sessions)",
        ));
    }
    let protocol = auth::select_subprotocol(&route, &accepted.offered_protocols).map(str::to_owned);
    let id = gw.next_session.fetch_add(1, Ordering::Relaxed);
    let (backend, lease) = rt
        .pool
        .connect(route.limits.connect_timeout)
        .await
        .map_err(|e| e.reject())?;
    let (backend_reader, mut backend_writer) = backend.into_split();
    if let Some(version) = route.proxy_protocol {
        let header = proxy_protocol::encode(
            version,
            &proxy_protocol::Header {
                source: peer,
                destination: conn.local,
                subject: identity.subject.as_deref(),
                route: &route.path,
                session_id: id,
            },
        )
        .map_err(|e| {
            error!(client = %peer, route = %route.path, "{e}");
            Reject::new(StatusCode::INTERNAL_SERVER_ERROR, "PROXY header too long")
        })?;
        let write = tokio::time::timeout(
            route.limits.connect_timeout,
            backend_writer.write_all(&header),
        )
        .await;
        if !matches!(write, Ok(Ok(()))) {
            warn!(client = %peer, route = %route.path, "backend failed while the PROXY header was written");
            return Err(Reject::new(StatusCode::BAD_GATEWAY, "backend unavailable"));
        }
    }

    let on_upgrade = hyper::upgrade::on(req);
    let info = SessionInfo {
        id,
        route: route.clone(),
        client: peer,
        subject: identity.subject,
        expires_at: identity.expires_at,
        stats: Arc::new(SessionStats::default()),
        kill: CancellationToken::new(),
        budget: gw.budget.clone(),
    };
    let claims = Claims {
        lease,
        _slot: slot,
        _conn: conn.guard.clone(),
    };
    *conn.handoff.lock().unwrap_or_else(|e| e.into_inner()) = Some(PendingSession {
        info,
        on_upgrade,
        backend: (backend_reader, backend_writer),
        claims,
        shutdown: gw.shutdown.child_token(),
    });

    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accepted.accept).expect("base64 is a valid header value"),
    );
    if let Some(p) = protocol {
        if let Ok(v) = HeaderValue::from_str(&p) {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
        }
    }
    Ok(resp)
}

/// The session task after the upgrade: register, pump, account, log.
/// What a session holds while it runs: its backend, its route slot, its connection's place in the
/// connection counts. Released before the access line is written, so a client that reconnects on
/// seeing the close finds the capacity free.
struct Claims {
    lease: crate::backend::Lease,
    _slot: SessionSlot,
    _conn: Arc<ConnGuard>,
}

/// Why a session that outlived `shutdown_grace` ended.
const CUT_AT_GRACE: &str = "cut at shutdown_grace";

/// The session: take the connection from hyper (the 101 is written), then register, pump,
/// account, log. Everything a session keeps while it runs is in this future, so it is kept small
/// (large values are never held across an `await`).
async fn run_session(gw: Arc<Gateway>, pending: PendingSession) {
    let PendingSession {
        info,
        on_upgrade,
        backend,
        claims,
        shutdown,
    } = pending;
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            debug!(session = info.id, error = %e, "upgrade did not complete");
            return;
        }
    };
    let started = Instant::now();
    let backend_name = claims.lease.backend().to_string();
    let route_label = RouteLabel {
        route: info.route.path.clone(),
    };
    gw.metrics.sessions_open.get_or_create(&route_label).inc();
    gw.metrics.sessions_total.get_or_create(&route_label).inc();
    gw.live.lock().unwrap_or_else(|e| e.into_inner()).insert(
        info.id,
        LiveSession {
            route: info.route.path.clone(),
            client: info.client,
            subject: info.subject.clone(),
            started: SystemTime::now(),
            stats: info.stats.clone(),
            kill: info.kill.clone(),
        },
    );
    let subject = info.subject.as_deref().unwrap_or("-");
    info!(session = info.id, route = %info.route.path, client = %info.client, subject, backend = %backend_name, "session open");

    let (client, preread) = ClientIo::from_upgraded(upgraded);
    // The pump future is built in place inside the select (never bound to a local first and
    // moved): a moved future would take its size twice in this one.
    let outcome = tokio::select! {
        outcome = client.pump(&info, &preread, backend, shutdown) => outcome,
        _ = gw.cut.cancelled() => pump::Outcome {
            end: SessionEnd::Cut { reason: CUT_AT_GRACE, by: Side::Gateway },
            client_close: None,
            up: info.stats.up.snapshot(),
            down: info.stats.down.snapshot(),
            duration: started.elapsed(),
        },
    };
    drop(claims);

    gw.live
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&info.id);
    gw.metrics.sessions_open.get_or_create(&route_label).dec();
    gw.metrics
        .session_seconds
        .get_or_create(&route_label)
        .observe(outcome.duration.as_secs_f64());
    let counters = gw.metrics.route_counters(&info.route.path);
    counters.bytes_up.inc_by(outcome.up.bytes);
    counters.bytes_down.inc_by(outcome.down.bytes);
    counters.messages_up.inc_by(outcome.up.messages);
    counters.messages_down.inc_by(outcome.down.messages);
    let code = outcome.end.code().map(CloseCode::get);
    let reason = outcome.end.reason();
    let by = outcome.end.by().to_string();
    // Numbers in the log: 1006 when no Close was sent, 1005 for a Close without a code (their
    // meanings in RFC 6455 §7.4.1; neither ever goes on the wire).
    let close_code = code.unwrap_or(CLOSE_CODE_NONE_SENT);
    let client_close_code = match outcome.client_close {
        None => CLOSE_CODE_NONE_SENT,
        Some(None) => CLOSE_CODE_EMPTY,
        Some(Some(c)) => c.get(),
    };
    gw.metrics
        .closes
        .get_or_create(&CloseLabel {
            route: info.route.path.clone(),
            code: code.map_or_else(|| "none".to_string(), |c| c.to_string()),
            by: by.clone(),
        })
        .inc();
    info!(
        target: "wsgate::access",
        session = info.id,
        route = %info.route.path,
        client = %info.client,
        subject,
        backend = %backend_name,
        duration_ms = u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX),
        close_code,
        reason,
        closed_by = %by,
        client_close_code,
        bytes_up = outcome.up.bytes,
        messages_up = outcome.up.messages,
        bytes_down = outcome.down.bytes,
        messages_down = outcome.down.messages,
        "session closed"
    );
}

type TlsClient = tokio_rustls::server::TlsStream<TcpStream>;

/// The client connection after the upgrade, split into read and write halves.
enum ClientIo {
    /// Plain TCP: owned halves, no lock between the directions.
    Tcp(OwnedReadHalf, OwnedWriteHalf),
    /// TLS: the stream itself (not hyper's boxed wrapper) behind tokio's split.
    Tls(ReadHalf<TlsClient>, WriteHalf<TlsClient>),
    /// Any other transport hyper hands back.
    Other(ReadHalf<TokioIo<Upgraded>>, WriteHalf<TokioIo<Upgraded>>),
}

impl ClientIo {
    /// Unwrap hyper's upgraded connection to the transport underneath. Returns the bytes hyper
    /// read past the request head (usually none): they are the first frames. They are copied so
    /// that hyper's read buffer is freed now; a slice of it would keep the whole buffer alive for
    /// the life of the session.
    fn from_upgraded(upgraded: Upgraded) -> (ClientIo, Vec<u8>) {
        let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let (r, w) = parts.io.into_inner().into_split();
                return (ClientIo::Tcp(r, w), parts.read_buf.to_vec());
            }
            Err(upgraded) => upgraded,
        };
        match upgraded.downcast::<TokioIo<TlsClient>>() {
            Ok(parts) => {
                let (r, w) = tokio::io::split(parts.io.into_inner());
                (ClientIo::Tls(r, w), parts.read_buf.to_vec())
            }
            Err(upgraded) => {
                let (r, w) = tokio::io::split(TokioIo::new(upgraded));
                (ClientIo::Other(r, w), Vec::new())
            }
        }
    }
}

impl ClientIo {
    async fn pump(
        self,
        info: &SessionInfo,
        preread: &[u8],
        backend: (crate::backend::BackendReader, crate::backend::BackendWriter),
        shutdown: CancellationToken,
    ) -> pump::Outcome {
        match self {
            ClientIo::Tcp(r, w) => pump::run(info, (r, w), preread, backend, shutdown).await,
            ClientIo::Tls(r, w) => pump::run(info, (r, w), preread, backend, shutdown).await,
            ClientIo::Other(r, w) => pump::run(info, (r, w), preread, backend, shutdown).await,
        }
    }
}

/// A request that is not an upgrade attempt: a static file, or 426 on a route path, or 404.
async fn plain_http(
    state: &State,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if state.route(path).is_some() {
        let mut resp = reject_response(&Reject::new(
            StatusCode::UPGRADE_REQUIRED,
            "this path serves WebSocket connections only",
        ));
        resp.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return resp;
    }
    if let Some(st) = &state.config.static_files {
        if req.method() == Method::GET || req.method() == Method::HEAD {
            if let Some(mut resp) =
                static_files::serve(st, path, req.method() == Method::HEAD).await
            {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                debug!(client = %peer, path, status = resp.status().as_u16(), "static file");
                return resp;
            }
        } else {
            let mut resp = reject_response(&Reject::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET and HEAD",
            ));
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
    }
    reject_response(&Reject::new(StatusCode::NOT_FOUND, "not found"))
}

/// The one answer to a refused request: status, short plain-text reason, `Connection: close`.
fn reject_response(reject: &Reject) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{}\n", reject.reason))));
    *resp.status_mut() = reject.status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    match reject.status {
        StatusCode::UNAUTHORIZED => {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"wsgate\""),
            );
        }
        StatusCode::UPGRADE_REQUIRED => {
            h.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static(handshake::WEBSOCKET_VERSION),
            );
        }
        _ => {}
    }
    if reject.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    resp
}
