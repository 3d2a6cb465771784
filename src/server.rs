//! The front end: listeners, the accept loop, TLS, HTTP/1.1 with hyper, and the handshake pipeline.
//!
//! Owns: binding (demo backends first, then listeners), one task per connection, the deadlines
//! before the 101 (TLS handshake and request head within `handshake_timeout`), turning each
//! request into exactly one answer (a 101 or one HTTP status, see README.md), spawning sessions,
//! and shutdown (stop accepting, Close 1001 to every session, wait at most the grace period).
//! The checks themselves live in `handshake`, `auth` and `backend`; the session in `pump`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::{Config, Listener};
use crate::handshake::{self, Reject};
use crate::pump::{self, SessionInfo};
use crate::{auth, backend, demo, proxy_protocol, static_files};

/// After a shutdown request, how long sessions get to finish their closing handshake.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 10;
/// Time allowed, beyond the handshake and backend-connect deadlines, to write an HTTP answer.
const RESPONSE_GRACE_SECS: u64 = 10;
/// Backoff after an accept error such as "too many open files", doubled up to the maximum.
const ACCEPT_BACKOFF_START_MS: u64 = 10;
const ACCEPT_BACKOFF_MAX_MS: u64 = 1000;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot start demo backend on {addr}: {source}")]
    Demo { addr: SocketAddr, source: io::Error },
}

/// State shared by every connection.
struct Gateway {
    config: Config,
    /// Session tasks, so that shutdown can wait for them.
    sessions: TaskTracker,
    /// Cancelled on shutdown: every session sends Close 1001.
    shutdown: CancellationToken,
    next_session: AtomicU64,
    /// Bound on everything before the upgrade is handed to the session.
    http_phase_limit: Duration,
}

/// Bind everything, serve until `shutdown` resolves, then drain sessions.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    for d in &config.demo_backends {
        let addr = demo::start(d).await.map_err(|source| RunError::Demo {
            addr: d.bind,
            source,
        })?;
        info!(addr = %addr, kind = ?d.kind, "demo backend listening");
    }
    let mut bound = Vec::new();
    for l in &config.listeners {
        let listener = TcpListener::bind(l.bind)
            .await
            .map_err(|source| RunError::Bind {
                addr: l.bind,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| RunError::Bind {
            addr: l.bind,
            source,
        })?;
        info!(addr = %addr, tls = l.tls.is_some(), "listening");
        bound.push((listener, l.clone()));
    }
    let max_connect = config
        .routes
        .iter()
        .map(|r| r.limits.connect_timeout)
        .max()
        .unwrap_or_default();
    let http_phase_limit =
        config.http.handshake_timeout + max_connect + Duration::from_secs(RESPONSE_GRACE_SECS);
    let gw = Arc::new(Gateway {
        config,
        sessions: TaskTracker::new(),
        shutdown: CancellationToken::new(),
        next_session: AtomicU64::new(1),
        http_phase_limit,
    });

    let stop_accepting = CancellationToken::new();
    let connections = TaskTracker::new();
    for (listener, l) in bound {
        tokio::spawn(accept_loop(
            gw.clone(),
            listener,
            l,
            stop_accepting.clone(),
            connections.clone(),
        ));
    }

    shutdown.await;
    info!("shutting down: no new connections, closing sessions with 1001");
    stop_accepting.cancel();
    gw.shutdown.cancel();
    gw.sessions.close();
    connections.close();
    let grace = Duration::from_secs(DEFAULT_SHUTDOWN_GRACE_SECS);
    let drained = tokio::time::timeout(grace, async {
        gw.sessions.wait().await;
    })
    .await;
    if drained.is_err() {
        warn!(grace = ?grace, "sessions still open after the shutdown grace period; cutting them");
    }
    Ok(())
}

async fn accept_loop(
    gw: Arc<Gateway>,
    listener: TcpListener,
    config: Listener,
    stop: CancellationToken,
    connections: TaskTracker,
) {
    let tls = config.tls.clone().map(TlsAcceptor::from);
    let mut backoff = ACCEPT_BACKOFF_START_MS;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                backoff = ACCEPT_BACKOFF_START_MS;
                connections.spawn(connection(gw.clone(), tcp, peer, tls.clone()));
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

fn is_per_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Addresses of one client connection.
#[derive(Debug, Clone, Copy)]
struct Conn {
    peer: SocketAddr,
    /// The gateway address the client connected to.
    local: SocketAddr,
    tls: bool,
}

/// One client connection, up to the moment it is upgraded (or answered and closed).
async fn connection(gw: Arc<Gateway>, tcp: TcpStream, peer: SocketAddr, tls: Option<TlsAcceptor>) {
    let _ = tcp.set_nodelay(true);
    let Ok(local) = tcp.local_addr() else { return };
    let conn = Conn {
        peer,
        local,
        tls: tls.is_some(),
    };
    let accepted_at = Instant::now();
    let deadline = tokio::time::Instant::from_std(accepted_at + gw.config.http.handshake_timeout);
    match tls {
        None => serve_http(gw, TokioIo::new(tcp), conn, deadline).await,
        Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => serve_http(gw, TokioIo::new(stream), conn, deadline).await,
            Ok(Err(e)) => debug!(client = %peer, error = %e, "TLS handshake failed"),
            Err(_) => debug!(client = %peer, "TLS handshake deadline (handshake_timeout) passed"),
        },
    }
}

async fn serve_http<I>(gw: Arc<Gateway>, io: TokioIo<I>, conn: Conn, deadline: tokio::time::Instant)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    if remaining.is_zero() {
        return;
    }
    let limits = gw.config.http;
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
    let phase_limit = gw.http_phase_limit;
    let gw2 = gw.clone();
    let service = service_fn(move |req| {
        let gw = gw2.clone();
        async move { Ok::<_, Infallible>(handle(&gw, req, conn).await) }
    });
    let peer = conn.peer;
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
    mut req: Request<Incoming>,
    conn: Conn,
) -> Response<Full<Bytes>> {
    if !handshake::is_upgrade_attempt(req.headers()) {
        return plain_http(gw, &req, conn.peer).await;
    }
    match upgrade(gw, &mut req, conn).await {
        Ok(resp) => resp,
        Err(reject) => {
            info!(client = %conn.peer, path = %req.uri().path(), status = reject.status.as_u16(), reason = reject.reason, "handshake refused");
            reject_response(&reject)
        }
    }
}

/// Validate, route, authorise, connect the backend, then answer 101 and start the session.
async fn upgrade(
    gw: &Arc<Gateway>,
    req: &mut Request<Incoming>,
    conn: Conn,
) -> Result<Response<Full<Bytes>>, Reject> {
    let peer = conn.peer;
    let accepted = handshake::validate(req.method(), req.version(), req.headers())?;
    let route = gw
        .config
        .route(req.uri().path())
        .ok_or(Reject::new(
            StatusCode::NOT_FOUND,
            "no WebSocket route at this path",
        ))?
        .clone();
    auth::check_origin(&route, req.headers())?;
    let identity = auth::authenticate(
        &route,
        &auth::Request {
            headers: req.headers(),
            uri: req.uri(),
            offered_protocols: &accepted.offered_protocols,
            client: peer,
            tls: conn.tls,
        },
    )
    .await?;
    let protocol = auth::select_subprotocol(&route, &accepted.offered_protocols).map(str::to_owned);
    let id = gw.next_session.fetch_add(1, Ordering::Relaxed);
    let mut backend = backend::connect(&route.backend, route.limits.connect_timeout)
        .await
        .map_err(|e| {
            warn!(client = %peer, route = %route.path, error = %e, "backend connect failed");
            e.reject()
        })?;
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
        );
        let write =
            tokio::time::timeout(route.limits.connect_timeout, backend.write_all(&header)).await;
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
    };
    let shutdown = gw.shutdown.child_token();
    gw.sessions.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                debug!(session = info.id, error = %e, "upgrade did not complete");
                return;
            }
        };
        let subject = info.subject.as_deref().unwrap_or("-");
        info!(session = info.id, route = %info.route.path, client = %info.client, subject, backend = %info.route.backend, "session open");
        let outcome = pump::run(&info, TokioIo::new(upgraded), backend, shutdown).await;
        let (code, reason, by) = match &outcome.close {
            Ok(c) => (Some(c.code), c.reason, c.by.to_string()),
            Err(why) => (None, *why, "client".to_string()),
        };
        info!(
            session = info.id,
            route = %info.route.path,
            client = %info.client,
            subject,
            duration_ms = outcome.duration.as_millis() as u64,
            close_code = ?code,
            reason,
            closed_by = %by,
            client_close_code = ?outcome.client_close.flatten(),
            bytes_up = outcome.up.bytes,
            messages_up = outcome.up.messages,
            bytes_down = outcome.down.bytes,
            messages_down = outcome.down.messages,
            "session closed"
        );
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

/// A request that is not an upgrade attempt: a static file, or 426 on a route path, or 404.
async fn plain_http(
    gw: &Arc<Gateway>,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if gw.config.route(path).is_some() {
        let mut resp = reject_response(&Reject::new(
            StatusCode::UPGRADE_REQUIRED,
            "this path serves WebSocket connections only",
        ));
        resp.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return resp;
    }
    if let Some(st) = &gw.config.static_files {
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
    if reject.status == StatusCode::UNAUTHORIZED {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"wsgate\""),
        );
    }
    if reject.status == StatusCode::UPGRADE_REQUIRED {
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static(handshake::WEBSOCKET_VERSION),
        );
    }
    resp
}
