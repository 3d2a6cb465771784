//! The request pipeline before the 101: TLS handshake, HTTP/1.1 with hyper, and exactly one answer
//! per request: a 101 with the session handed over, a static file, or one refusal status (see
//! README.md). An HTTP/2 preface on a plain listener gets GOAWAY HTTP_1_1_REQUIRED ([`PlainIo`]).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use super::router::{SessionSlot, State};
use super::session::Claims;
use super::{ConnGuard, Gateway, IpClaim, PER_IP_REFUSAL};
use crate::backend::ConnectError;
use crate::config::{BackendAddr, RecordingSettings, Route};
use crate::error::Reject;
use crate::fallback::body::Body;
use crate::fallback::http::RequestKind;
use crate::fallback::Transport;
use crate::forwarded::{self, ForwardedHeader, Trusted};
use crate::handshake;
use crate::metrics::{AuthLabel, RouteLabel};
use crate::pump::{SessionInfo, SessionStats};
use crate::recording::format::rfc3339;
use crate::recording::{Header, Recorder, RecordingCounters};
use crate::target::{Target, TargetError};
use crate::{auth, proxy_protocol, static_files};

/// `Retry-After` on 503 answers caused by connection or session limits, in seconds.
pub(super) const RETRY_AFTER_SECS: u64 = 1;

/// One client connection.
#[derive(Clone)]
pub(super) struct Conn {
    /// The client's address; [`super::UNIX_PEER`] for a client of a unix-socket listener.
    pub(super) peer: SocketAddr,
    /// The gateway address the client connected to ([`super::UNIX_PEER`] on a unix socket).
    pub(super) local: SocketAddr,
    /// The connection came in on a unix-socket listener: it has no IP addresses.
    pub(super) unix: bool,
    /// This connection speaks TLS (decided per connection on an `accept_plain` listener).
    pub(super) tls: bool,
    /// Set when a connection limit refused this connection: every request gets 503.
    pub(super) refused: Option<&'static str>,
    /// Held by the connection and then by its session.
    pub(super) guard: Arc<ConnGuard>,
    /// Where the upgrade handler leaves the session it set up (HTTP/1.1).
    pub(super) handoff: Arc<UpgradeSlot>,
    /// The requests come over HTTP/2: WebSockets open with extended CONNECT (RFC 8441), and
    /// each session runs in a task of its own beside the connection's.
    pub(super) http2: bool,
    /// The client opened with the HTTP/2 preface (h2c with prior knowledge) on a plain listener
    /// that accepts it.
    pub(super) h2c: bool,
    /// HTTP/2: the streams open on this connection (requests and sessions).
    pub(super) streams: Option<Arc<super::h2::Streams>>,
    /// HTTP/1.1: the request is a fallback session's, whose answer may outlast the phase limit
    /// (a stream, a long-poll); its own deadlines bound it.
    pub(super) lasting: Arc<std::sync::atomic::AtomicBool>,
    /// A trusted proxy on a `forwarded` listener: each request's header names its client
    /// ([`resolve_client`]). `None` elsewhere: such a header is ignored.
    pub(super) forwarded: Option<(ForwardedHeader, Arc<Trusted>)>,
    /// The request's place in the per-address count, taken by [`resolve_client`] and kept by its
    /// session.
    pub(super) client_claim: Option<Arc<IpClaim>>,
}

impl Conn {
    /// `1.1` or `2`, for the access lines and metrics.
    pub(super) fn http_version(&self) -> &'static str {
        if self.http2 {
            "2"
        } else {
            "1.1"
        }
    }
}

/// The hand-over from the upgrade handler (inside hyper's service) to the connection's task.
///
/// hyper calls the handler, and the handler returns the 101; the session must then run on the
/// connection hyper gives back. Spawning a task for it from the handler would leave two tasks
/// per session: the connection's task would end, but its memory lives on while the socket
/// holds its waker. Instead the handler leaves the session here, and the connection's own task
/// takes it once hyper is done and runs it: one task per connection from accept to close, which
/// measured about 5 KB less per idle session (BENCHMARKS.md, idle sessions).
#[derive(Default)]
pub(super) struct UpgradeSlot(Mutex<Option<PendingSession>>);

impl UpgradeSlot {
    fn put(&self, session: PendingSession) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(session);
    }

    /// The session the handler left, if the request was upgraded.
    pub(super) fn take(&self) -> Option<PendingSession> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A session set up by the upgrade handler (route, authorisation and backend done, the 101 on its
/// way), waiting for hyper to hand over the connection. It runs in the connection's own task
/// once hyper is done with it: one task per connection from accept to close, and no earlier task
/// left behind (a finished task's memory lives on while the socket still holds its waker).
pub(super) struct PendingSession {
    pub(super) info: Arc<SessionInfo>,
    pub(super) client: ClientSide,
    pub(super) backend: (crate::backend::BackendReader, crate::backend::BackendWriter),
    /// For a per-session target: the hash of the token that named it (never the token).
    pub(super) token_hash: Option<String>,
    pub(super) claims: Claims,
    /// `1.1` or `2`.
    pub(super) http_version: &'static str,
    /// An HTTP/2 session's place among its connection's open streams.
    pub(super) stream: Option<super::h2::StreamGuard>,
}

/// Where a session's client is: behind hyper's upgrade (WebSocket), or the fallback adapter on
/// the other end of an in-process pipe.
pub(super) enum ClientSide {
    Upgrade(hyper::upgrade::OnUpgrade),
    Fallback(tokio::io::DuplexStream, Arc<crate::fallback::Session>),
}

/// TLS handshake (when `tls` is given), then HTTP/1.1 until the one request is answered, all
/// within `handshake_timeout` of `accepted_at`.
pub(super) async fn http_phase<S>(
    gw: Arc<Gateway>,
    stream: S,
    tls: Option<TlsAcceptor>,
    conn: Conn,
    accepted_at: tokio::time::Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let state = gw.state();
    let limits = state.config.http;
    let deadline = accepted_at + limits.handshake_timeout;
    match tls {
        None => {
            if conn.h2c {
                return super::h2::serve(gw, state, TokioIo::new(stream), conn).await;
            }
            let io = TokioIo::new(PlainIo::new(stream, peer));
            serve_http(gw, state, io, conn, deadline).await
        }
        Some(acceptor) => {
            let tls_deadline =
                deadline.min(tokio::time::Instant::now() + limits.tls_handshake_timeout);
            match tokio::time::timeout_at(tls_deadline, acceptor.accept(stream)).await {
                Ok(Ok(stream))
                    if stream.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_H2) =>
                {
                    super::h2::serve(gw, state, TokioIo::new(stream), conn).await
                }
                Ok(Ok(stream)) => serve_http(gw, state, TokioIo::new(stream), conn, deadline).await,
                Ok(Err(e)) => debug!(client = %peer, error = %e, "TLS handshake failed"),
                Err(_) => debug!(client = %peer, "TLS handshake deadline passed"),
            }
        }
    }
}

pub(super) async fn serve_http<I>(
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
    let lasting = conn.lasting.clone();
    let service = service_fn(move |req| {
        let gw = gw.clone();
        let state = state.clone();
        let conn = conn.clone();
        // Boxed: hyper allocates room for the service's future when the connection starts and
        // moves it into that room for the request, so an unboxed (large) future would be copied
        // whole, twice per connection. A box is one allocation of it, built in place.
        let answer: BoxedAnswer =
            Box::pin(async move { Ok::<_, Infallible>(handle(&gw, &state, req, conn).await) });
        answer
    });
    let http = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(http);
    let result = match tokio::time::timeout(phase_limit, http.as_mut()).await {
        // A fallback answer (a stream, a long-poll) ends by its own deadlines.
        Err(_) if lasting.load(Ordering::Relaxed) => Ok(http.await),
        r => r,
    };
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(client = %peer, error = %e, "HTTP connection ended with an error"),
        Err(_) => {
            debug!(client = %peer, "HTTP connection cut: no upgrade or answer within the phase limit")
        }
    }
}

/// The future of [`handle`] as the HTTP/1.1 service returns it.
type BoxedAnswer =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// One request -> one answer.
pub(super) async fn handle(
    gw: &Arc<Gateway>,
    state: &Arc<State>,
    mut req: Request<Incoming>,
    conn: Conn,
) -> Response<Body> {
    let conn = match resolve_client(gw, &req, conn) {
        Ok(conn) => conn,
        Err((peer, reject)) => {
            info!(target: "wsgate::access", client = %peer, path = %req.uri().path(), status = reject.status.as_u16(), reason = reject.reason, "request refused");
            return reject_response(&reject).map(Body::from);
        }
    };
    if let Some(reason) = conn.refused {
        info!(target: "wsgate::access", client = %conn.peer, path = %req.uri().path(), status = 503, reason, "connection refused");
        return reject_response(&Reject::busy(reason)).map(Body::from);
    }
    if let Some(kind) = req.headers().get(crate::fallback::HEADER) {
        let kind = RequestKind::of(kind);
        // Boxed: its future (a long-poll or a stream) would otherwise make every request's
        // larger, and requests of the fallback transport are the rare ones.
        return Box::pin(fallback_request(gw, state, req, conn, kind)).await;
    }
    let attempt = if conn.http2 {
        req.method() == Method::CONNECT
    } else {
        handshake::is_upgrade_attempt(req.headers())
    };
    if !attempt {
        return plain_http(state, &req, conn.peer).await.map(Body::from);
    }
    // Metrics carry the route's own path (a prefix route's `/prefix/*`), never the request's.
    let route_metrics = state.route(req.uri().path()).map(|rt| rt.metrics.clone());
    let count = |status: u16| match &route_metrics {
        Some(m) => m.handshake(status),
        None => gw.metrics.handshake("-", status),
    };
    match upgrade(gw, state, &mut req, &conn, None).await {
        Ok(resp) => {
            count(101);
            resp
        }
        Err(reject) => {
            count(reject.status.as_u16());
            let path = req.uri().path();
            info!(target: "wsgate::access", client = %conn.peer, path = %path, status = reject.status.as_u16(), reason = reject.reason, by = %reject.by, http_version = conn.http_version(), transport = "websocket", "handshake refused");
            reject_response(&reject).map(Body::from)
        }
    }
}

/// A request of the fallback transport (`Wsgate-Fallback`): `open` goes through the same
/// checks as a WebSocket handshake (and is counted and logged like one); the others must pass
/// the route's Origin check before their session is looked up.
async fn fallback_request(
    gw: &Arc<Gateway>,
    state: &Arc<State>,
    mut req: Request<Incoming>,
    conn: Conn,
    kind: Option<RequestKind>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let route_metrics = state.route(&path).map(|rt| rt.metrics.clone());
    let count = |status: u16| match &route_metrics {
        Some(m) => m.handshake(status),
        None => gw.metrics.handshake("-", status),
    };
    let result = match kind {
        None => Err(Reject::client(
            StatusCode::BAD_REQUEST,
            "invalid Wsgate-Fallback header",
        )),
        Some(RequestKind::Open) => {
            let transport = crate::fallback::http::requested_transport(req.headers());
            let r = if req.method() == Method::POST {
                upgrade(gw, state, &mut req, &conn, Some(transport)).await
            } else {
                Err(Reject::client(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "fallback requests are POST",
                ))
            };
            match &r {
                Ok(_) => count(200),
                Err(reject) => {
                    count(reject.status.as_u16());
                    info!(target: "wsgate::access", client = %conn.peer, path = %path, status = reject.status.as_u16(), reason = reject.reason, by = %reject.by, http_version = conn.http_version(), transport = transport.label(), "handshake refused");
                }
            }
            r
        }
        Some(kind) => match state.route(&path) {
            None => Err(Reject::client(
                StatusCode::NOT_FOUND,
                "no WebSocket route at this path",
            )),
            Some(rt) if !rt.route.fallback => Err(Reject::client(
                StatusCode::NOT_FOUND,
                "fallback transport not enabled on this route",
            )),
            Some(rt) => match auth::check_origin(&rt.route.policy(), req.headers()) {
                Err(e) => Err(e),
                Ok(()) => {
                    conn.lasting.store(true, Ordering::Relaxed);
                    let hold: Box<dyn std::any::Any + Send> =
                        Box::new(conn.streams.as_ref().map(super::h2::Streams::open));
                    let rt = rt.clone();
                    crate::fallback::http::serve(
                        &gw.fallback,
                        &rt.route.path,
                        rt.auth.as_ref(),
                        req,
                        kind,
                        hold,
                    )
                    .await
                }
            },
        },
    };
    let mut resp = match result {
        Ok(resp) => resp,
        Err(reject) => {
            debug!(client = %conn.peer, path = %path, status = reject.status.as_u16(), reason = reject.reason, "fallback request refused");
            reject_response(&reject).map(Body::from)
        }
    };
    crate::fallback::http::add_headers(resp.headers_mut());
    if !conn.http2 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// On a `forwarded` listener, from a trusted proxy: the client named by the request's header
/// becomes the connection's peer for this request (access lines, `/sessions`, auth, the PROXY
/// header to the backend), and is counted against `max_connections_per_ip`. A header that
/// cannot be read is refused (400), as is a client over its count (503); the error carries the
/// address to log.
fn resolve_client(
    gw: &Arc<Gateway>,
    req: &Request<Incoming>,
    mut conn: Conn,
) -> Result<Conn, (SocketAddr, Reject)> {
    let Some((which, trusted)) = conn.forwarded.clone() else {
        return Ok(conn);
    };
    match forwarded::client_from_headers(which, req.headers(), &trusted) {
        Ok(Some(client)) => {
            conn.peer = client;
            // A unix-socket client named by its proxy has an address now: the backend's PROXY
            // header carries it (the destination stays unknown, 0.0.0.0:0).
            conn.unix = false;
        }
        Ok(None) => {}
        Err(e) => {
            debug!(client = %conn.peer, "{e}");
            let reason = match which {
                ForwardedHeader::XForwardedFor => {
                    "malformed X-Forwarded-For header from a trusted proxy"
                }
                ForwardedHeader::Forwarded => "malformed Forwarded header from a trusted proxy",
            };
            return Err((conn.peer, Reject::client(StatusCode::BAD_REQUEST, reason)));
        }
    }
    // A unix-socket client whose proxy named no client has no address to count.
    if conn.peer != super::UNIX_PEER {
        let (claim, over) = gw.claim_ip(conn.peer.ip());
        if over && conn.refused.is_none() {
            conn.refused = Some(PER_IP_REFUSAL);
        }
        conn.client_claim = Some(Arc::new(claim));
    }
    Ok(conn)
}

/// Validate, route, authorise, resolve a per-session target, connect the backend, then answer
/// 101 and start the session.
pub(super) async fn upgrade(
    gw: &Arc<Gateway>,
    state: &Arc<State>,
    req: &mut Request<Incoming>,
    conn: &Conn,
    fallback: Option<Transport>,
) -> Result<Response<Body>, Reject> {
    let peer = conn.peer;
    let accepted = if let Some(transport) = fallback {
        Opening::Fallback(crate::fallback::offered_protocols(req.headers()), transport)
    } else if conn.http2 {
        let protocol = req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .map(hyper::ext::Protocol::as_str);
        Opening::Http2(handshake::validate_extended_connect(
            req.method(),
            protocol,
            req.headers(),
        )?)
    } else {
        Opening::Http1(handshake::validate(
            req.method(),
            req.version(),
            req.headers(),
        )?)
    };
    let rt = state
        .route(req.uri().path())
        .ok_or(Reject::client(
            StatusCode::NOT_FOUND,
            "no WebSocket route at this path",
        ))?
        .clone();
    let route = rt.route.clone();
    if fallback.is_some() && !route.fallback {
        return Err(Reject::client(
            StatusCode::NOT_FOUND,
            "fallback transport not enabled on this route",
        ));
    }
    let policy = route.policy();
    auth::check_origin(&policy, req.headers())?;
    // Boxed: the credential check's future (an auth service request, a key set fetch) is larger
    // than the rest of the handshake's, and would otherwise be carried, and copied, by every
    // request's future, whether its route checks credentials or not.
    let identity = Box::pin(auth::authenticate(
        &policy,
        rt.auth.as_ref(),
        &auth::Request {
            headers: req.headers(),
            uri: req.uri(),
            offered_protocols: accepted.offered(),
            client: peer,
            tls: conn.tls,
        },
    ))
    .await;
    if route.auth.is_some() {
        gw.metrics
            .auth
            .get_or_create(&AuthLabel {
                route: route.path.clone(),
                outcome: auth::AuthOutcome::of(&identity).label(),
            })
            .inc();
    }
    let identity = identity?;
    // A per-session target is resolved after the Origin and credential checks, before any
    // backend is touched.
    let resolved = match &rt.target {
        None => None,
        // Boxed, as the steps below that only some routes take: their futures would otherwise
        // be carried by every handshake's.
        Some(targets) => {
            match Box::pin(targets.resolve(req.headers(), req.uri(), identity.claimed.as_ref()))
                .await
            {
                Ok(r) => Some(r),
                Err(e) => {
                    log_target_refusal(&route.path, peer, &e);
                    return Err(e.reject());
                }
            }
        }
    };
    let open = rt.sessions.fetch_add(1, Ordering::Relaxed) + 1;
    let slot = SessionSlot(rt.sessions.clone());
    if route.max_sessions.is_some_and(|max| open > max) {
        return Err(Reject::busy(
            "too many sessions on this route (max_sessions)",
        ));
    }
    let protocol = auth::select_subprotocol(&policy, accepted.offered()).map(str::to_owned);
    // RFC 7692 §7: permessage-deflate when the route allows it and the client offers it
    // acceptably; otherwise the session goes on uncompressed.
    let deflate = route
        .deflate
        .as_ref()
        .filter(|_| fallback.is_none())
        .and_then(|d| handshake::negotiate_deflate(req.headers(), d));
    let id = gw.next_session.fetch_add(1, Ordering::Relaxed);
    // The PROXY header is built before any backend is touched: one that cannot be encoded
    // refuses the handshake without a connection.
    let preface = match route.proxy_protocol {
        None => None,
        Some(version) => Some(
            {
                let header = proxy_protocol::Header {
                    source: peer,
                    destination: conn.local,
                    subject: identity.subject.as_deref(),
                    route: &route.path,
                    session_id: id,
                };
                // A unix-socket client has no address to tell: UNKNOWN (v1), LOCAL (v2).
                if conn.unix {
                    proxy_protocol::encode_unknown(version, &header)
                } else {
                    proxy_protocol::encode(version, &header)
                }
            }
            .map_err(|e| {
                error!(client = %peer, route = %route.path, "{e}");
                Reject::gateway(StatusCode::INTERNAL_SERVER_ERROR, "PROXY header too long")
            })?,
        ),
    };
    let (backend, backend_name, lease, token_hash) = match &resolved {
        Some(r) => {
            let addr = match &r.target {
                Target::Tcp { host, port } if route.target_tls => BackendAddr::Tls {
                    host: host.clone(),
                    port: *port,
                },
                Target::Tcp { host, port } => BackendAddr::Tcp {
                    host: host.clone(),
                    port: *port,
                },
                // Configuration refuses unix: allow entries with `tls = true`; never connect a
                // TLS route's target in the clear.
                Target::Unix(_) if route.target_tls => {
                    warn!(route = %route.path, client = %peer, target = %r.target, token_hash = %r.token_hash, "a unix socket target on a route whose targets are connected with TLS: refused");
                    return Err(Reject::backend(
                        StatusCode::BAD_GATEWAY,
                        "TLS to a unix socket target is not supported",
                    ));
                }
                Target::Unix(path) => BackendAddr::Unix(path.clone()),
            };
            let halves = Box::pin(crate::backend::open_one(
                &route.path,
                &addr,
                route.limits.connect_timeout,
                preface.as_deref(),
                route.backend_tls.as_deref(),
                &|a| r.permit.admits(a),
            ))
            .await
            .map_err(|e| {
                match &e {
                    ConnectError::NotAllowed { .. } => {
                        info!(route = %route.path, client = %peer, target = %r.target, token_hash = %r.token_hash, "target not allowed: every address it resolves to is refused by the allow list");
                    }
                    e => {
                        warn!(route = %route.path, client = %peer, target = %r.target, token_hash = %r.token_hash, error = %e, "target connect failed");
                    }
                }
                e.reject()
            })?;
            (halves, addr.to_string(), None, Some(r.token_hash.clone()))
        }
        None => {
            let (halves, lease) = rt
                .pool
                .open(
                    route.limits.connect_timeout,
                    preface.as_deref(),
                    route.backend_tls.as_deref(),
                )
                .await
                .map_err(|e| e.reject())?;
            let name = lease.name().to_string();
            (halves, name, Some(lease), None)
        }
    };

    let recording = match &route.record {
        None => None,
        Some(settings) => Box::pin(open_recording(
            gw,
            settings,
            &route,
            id,
            peer,
            &backend_name,
            protocol.as_deref(),
        ))
        .await?
        .map(Arc::new),
    };

    let (client, fallback_session) = match &accepted {
        Opening::Fallback(_, transport) => {
            let id = crate::fallback::new_id().map_err(|_| {
                error!(client = %peer, route = %route.path, "no OS randomness for a fallback session id");
                Reject::gateway(StatusCode::SERVICE_UNAVAILABLE, "session id unavailable")
            })?;
            let binding = crate::fallback::Binding::of(req.headers(), req.uri(), rt.auth.as_ref());
            let (session, pipe) = crate::fallback::http::start(
                &gw.fallback,
                id,
                route.path.clone(),
                binding,
                crate::fallback::Limits {
                    session_timeout: route.limits.fallback_session_timeout,
                    poll_timeout: route.limits.fallback_poll_timeout,
                    buffer: route.limits.fallback_buffer(),
                    max_message_size: route.limits.max_message_size,
                    max_frame_size: route.limits.max_frame_size,
                },
                *transport,
                // A fallback session's turn in the drain is its start (see `drains_at_start`).
                crate::fallback::Ties {
                    draining: gw.shutdown.clone(),
                    // Its place in the connection counts lasts until the session leaves the
                    // table: ended sessions waiting for their client are bounded like open ones.
                    claim: Box::new(conn.guard.clone()),
                },
            );
            (ClientSide::Fallback(pipe, session.clone()), Some(session))
        }
        _ => (ClientSide::Upgrade(hyper::upgrade::on(req)), None),
    };
    let info = SessionInfo {
        id,
        route: route.clone(),
        metrics: rt.metrics.clone(),
        client: peer,
        subject: identity.subject,
        backend: backend_name,
        started: std::time::SystemTime::now(),
        drains_at_start: fallback_session.is_some(),
        expires_at: identity.expires_at,
        stats: SessionStats::default(),
        control: crate::pump::SessionControl::default(),
        drain_code: gw.drain.code,
        budget: gw.budget.clone(),
        recording,
        deflate: deflate.as_ref().map(|(params, _)| *params),
    };
    let claims = Claims {
        _lease: lease,
        _slot: slot,
        _conn: conn.guard.clone(),
        _client: conn.client_claim.clone(),
    };
    let pending = PendingSession {
        info: Arc::new(info),
        client,
        backend,
        token_hash,
        claims,
        http_version: conn.http_version(),
        // A fallback session does not live on the stream that opened it.
        stream: conn
            .streams
            .as_ref()
            .filter(|_| fallback.is_none())
            .map(super::h2::Streams::open),
    };
    let mut resp = match accepted {
        Opening::Fallback(..) => {
            let tracked = gw
                .sessions
                .track_future(super::session::run_session(gw.clone(), Box::new(pending)));
            tokio::spawn(tracked);
            let session = fallback_session.as_ref().ok_or(Reject::gateway(
                StatusCode::INTERNAL_SERVER_ERROR,
                "fallback session missing",
            ))?;
            return Ok(crate::fallback::http::opened(
                &session.id,
                protocol.as_deref(),
                &session.limits,
            ));
        }
        Opening::Http1(accepted) => {
            conn.handoff.put(pending);
            handshake::switching_protocols::<Full<Bytes>>(&accepted, protocol.as_deref())
                .map(Body::from)
        }
        Opening::Http2(_) => {
            // The stream stays open after the answer: its session runs beside the connection's
            // task, which keeps serving the other streams.
            let tracked = gw
                .sessions
                .track_future(super::session::run_session(gw.clone(), Box::new(pending)));
            tokio::spawn(tracked);
            handshake::connect_established::<Full<Bytes>>(protocol.as_deref()).map(Body::from)
        }
    };
    // The answer is built from tokens and digits only, so always a valid header value.
    if let Some(v) = deflate.and_then(|(_, answer)| HeaderValue::from_str(&answer).ok()) {
        resp.headers_mut()
            .insert(header::SEC_WEBSOCKET_EXTENSIONS, v);
    }
    Ok(resp)
}

/// A validated opening handshake, by HTTP version.
enum Opening {
    /// RFC 6455: `GET` with `Upgrade: websocket`; answered with 101 and `Sec-WebSocket-Accept`.
    Http1(handshake::Accepted),
    /// RFC 8441: extended `CONNECT` with the offered subprotocols; answered with 200.
    Http2(Vec<String>),
    /// The fallback transport's `open` (`Wsgate-Protocol` offers the subprotocols); answered
    /// with 200 and the session's id.
    Fallback(Vec<String>, Transport),
}

impl Opening {
    fn offered(&self) -> &[String] {
        match self {
            Opening::Http1(a) => &a.offered_protocols,
            Opening::Http2(offered) | Opening::Fallback(offered, _) => offered,
        }
    }
}

/// Create the session's recording file. A file that cannot be created refuses the session
/// (503) when the route has `record_required`; otherwise the session runs unrecorded.
async fn open_recording(
    gw: &Gateway,
    settings: &RecordingSettings,
    route: &Route,
    id: u64,
    peer: SocketAddr,
    backend: &str,
    subprotocol: Option<&str>,
) -> Result<Option<Recorder>, Reject> {
    let label = RouteLabel {
        route: route.path.clone(),
    };
    // One statement each: a family's read guard lives until the end of its statement.
    let bytes = gw.metrics.recorded_bytes.get_or_create(&label).clone();
    let gaps = gw.metrics.recording_gaps.get_or_create(&label).clone();
    let header = Header {
        session: id,
        route: route.path.clone(),
        client: peer.to_string(),
        backend: backend.to_string(),
        subprotocol: subprotocol.map(str::to_owned),
        framing: route.framing.to_string(),
        time: rfc3339(std::time::SystemTime::now()),
    };
    match Recorder::open(settings, header, RecordingCounters { bytes, gaps }).await {
        Ok(r) => Ok(Some(r)),
        Err(e) if settings.required => {
            error!(session = id, route = %route.path, client = %peer, error = %e, "session refused: its recording cannot be created (record_required)");
            Err(Reject::gateway(
                StatusCode::SERVICE_UNAVAILABLE,
                "session recording unavailable (record_required)",
            ))
        }
        Err(e) => {
            warn!(session = id, route = %route.path, client = %peer, error = %e, "session not recorded: its recording cannot be created");
            Ok(None)
        }
    }
}

/// The log line of a refused per-session target: the target and the token's hash, never the
/// token.
fn log_target_refusal(route: &str, peer: SocketAddr, e: &TargetError) {
    let token_hash = e.token_hash().unwrap_or("-");
    let token_hash = tracing::field::display(token_hash);
    match e {
        TargetError::NotAllowed { target, .. } => {
            info!(route, client = %peer, target = %target, token_hash, "target not allowed by the route's allow list");
        }
        TargetError::Source { source, .. } => {
            warn!(route, client = %peer, token_hash, error = %source, "token source unavailable");
        }
        TargetError::Missing | TargetError::Unknown { .. } | TargetError::NoTarget { .. } => {
            debug!(route, client = %peer, token_hash, "{e}");
        }
    }
}

/// RFC 9113 §3.4: the client connection preface of HTTP/2 with prior knowledge.
pub(super) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// RFC 9113 §7: the GOAWAY error code HTTP_1_1_REQUIRED.
pub(super) const H2_HTTP_1_1_REQUIRED: u8 = 0xd;

/// The GOAWAY frame's debug data.
pub(super) const H2_GOAWAY_DEBUG: &[u8] = b"this server speaks HTTP/1.1 only";

pub(super) const H2_REFUSAL_LEN: usize = 9 + 9 + 8 + H2_GOAWAY_DEBUG.len();

/// The answer to an HTTP/2 preface: our server preface, an empty SETTINGS frame (RFC 9113 §3.4,
/// §6.5), then GOAWAY (§6.8) with last-stream-id 0 and HTTP_1_1_REQUIRED.
pub(super) const H2_REFUSAL: [u8; H2_REFUSAL_LEN] = h2_refusal();

pub(super) const fn h2_refusal() -> [u8; H2_REFUSAL_LEN] {
    // Frame header (§4.1): length (24 bits), type, flags, reserved bit + stream id (31 bits).
    let mut f = [0u8; H2_REFUSAL_LEN];
    // SETTINGS, length 0, stream 0.
    f[3] = 0x4;
    // GOAWAY on stream 0; its length is the low 24 bits (the value is a few dozen bytes).
    let goaway_len = (8 + H2_GOAWAY_DEBUG.len()).to_be_bytes();
    let n = goaway_len.len();
    f[9] = goaway_len[n - 3];
    f[10] = goaway_len[n - 2];
    f[11] = goaway_len[n - 1];
    f[12] = 0x7;
    // Payload: last-stream-id 0 (bytes 18..22), error code (22..26), debug data.
    f[25] = H2_HTTP_1_1_REQUIRED;
    let mut i = 0;
    while i < H2_GOAWAY_DEBUG.len() {
        f[26 + i] = H2_GOAWAY_DEBUG[i];
        i += 1;
    }
    f
}

/// A plain (not TLS) client connection as hyper sees it: TCP, or a unix socket. The first read is checked for an HTTP/2
/// connection preface (a client with prior knowledge, such as `curl --http2-prior-knowledge`),
/// which hyper would drop without an answer. Such a client gets SETTINGS and GOAWAY
/// (HTTP_1_1_REQUIRED), our FIN, and its further bytes are read and discarded until it closes
/// (closing with unread data would reset the connection and could lose the GOAWAY); hyper then
/// sees the end of the stream. Everything else passes straight through: one comparison on the
/// first read, no extra system call.
pub(super) struct PlainIo<S = TcpStream> {
    pub(super) tcp: S,
    pub(super) peer: SocketAddr,
    pub(super) preface: Preface,
}

#[derive(Clone, Copy)]
pub(super) enum Preface {
    /// Nothing read yet.
    Unchecked,
    /// HTTP/1.1 (or anything else): pass through.
    Http1,
    /// An HTTP/2 preface arrived: this much of [`H2_REFUSAL`] is written.
    Refusing(usize),
    /// Refused and shut down: discard what the client still sends.
    Draining,
}

impl<S> PlainIo<S> {
    pub(super) fn new(tcp: S, peer: SocketAddr) -> PlainIo<S> {
        PlainIo {
            tcp,
            peer,
            preface: Preface::Unchecked,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PlainIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.preface {
                Preface::Http1 => return Pin::new(&mut this.tcp).poll_read(cx, buf),
                Preface::Unchecked => {
                    let before = buf.filled().len();
                    ready!(Pin::new(&mut this.tcp).poll_read(cx, buf))?;
                    if !buf.filled()[before..].starts_with(H2_PREFACE) {
                        this.preface = Preface::Http1;
                        return Poll::Ready(Ok(()));
                    }
                    buf.set_filled(before);
                    info!(target: "wsgate::access", client = %this.peer, path = "*", reason = "HTTP/2 connection preface; answered GOAWAY HTTP_1_1_REQUIRED", "connection refused");
                    this.preface = Preface::Refusing(0);
                }
                Preface::Refusing(written) if written < H2_REFUSAL.len() => {
                    let n = ready!(Pin::new(&mut this.tcp).poll_write(cx, &H2_REFUSAL[written..]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    this.preface = Preface::Refusing(written + n);
                }
                Preface::Refusing(_) => {
                    ready!(Pin::new(&mut this.tcp).poll_shutdown(cx))?;
                    this.preface = Preface::Draining;
                }
                Preface::Draining => {
                    let before = buf.filled().len();
                    ready!(Pin::new(&mut this.tcp).poll_read(cx, buf))?;
                    let got = buf.filled().len() - before;
                    buf.set_filled(before);
                    if got == 0 {
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PlainIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// A request that is not an upgrade attempt: a static file, or 426 on a route path, or 404. Each
/// answer gets one access line: `static file` for what the `[static]` directory answered (the file,
/// 404, 405, 500), `plain request` otherwise.
pub(super) async fn plain_http(
    state: &State,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let (resp, message) = plain_answer(state, req).await;
    let bytes = hyper::body::Body::size_hint(resp.body())
        .exact()
        .unwrap_or_default();
    let status = resp.status().as_u16();
    let http_version = if req.version() == http::Version::HTTP_2 {
        "2"
    } else {
        "1.1"
    };
    match message {
        PlainAnswer::Static => {
            info!(target: "wsgate::access", client = %peer, path, method = %req.method(), status, bytes, http_version, "static file")
        }
        PlainAnswer::Other => {
            info!(target: "wsgate::access", client = %peer, path, method = %req.method(), status, bytes, http_version, "plain request")
        }
    }
    resp
}

/// Who answered a plain request, for its access line.
pub(super) enum PlainAnswer {
    /// The `[static]` directory (a file, or its 404, 405, 500).
    Static,
    /// No `[static]`, or a route path (426).
    Other,
}

pub(super) async fn plain_answer(
    state: &State,
    req: &Request<Incoming>,
) -> (Response<Full<Bytes>>, PlainAnswer) {
    let path = req.uri().path();
    if path == crate::fallback::SCRIPT_PATH
        && (req.method() == Method::GET || req.method() == Method::HEAD)
    {
        return (script_response(req), PlainAnswer::Other);
    }
    // An exact route path serves WebSocket only; under a prefix route, plain requests go to the
    // `[static]` files when there are some (websockify's `--web` next to its proxy).
    if state.exact_route(path).is_some()
        || (state.config.static_files.is_none() && state.route(path).is_some())
    {
        let mut resp = reject_response(&Reject::client(
            StatusCode::UPGRADE_REQUIRED,
            "this path serves WebSocket connections only",
        ));
        resp.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return (resp, PlainAnswer::Other);
    }
    let Some(st) = &state.config.static_files else {
        return (
            reject_response(&Reject::client(StatusCode::NOT_FOUND, "not found")),
            PlainAnswer::Other,
        );
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = reject_response(&Reject::client(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD",
        ));
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return (resp, PlainAnswer::Static);
    }
    let resp = match static_files::serve(st, path, req.method() == Method::HEAD).await {
        Some(mut resp) => {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        }
        None => reject_response(&Reject::client(StatusCode::NOT_FOUND, "not found")),
    };
    (resp, PlainAnswer::Static)
}

/// `/wsgate.js`, the fallback client, compiled in. Its `ETag` is a digest of the content, so
/// a revalidation after an upgrade gets the new file.
fn script_response(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let digest = ring::digest::digest(&ring::digest::SHA256, crate::fallback::SCRIPT.as_bytes());
    let tag: String = digest.as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let etag = format!("\"{tag}\"");
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let body = if fresh || req.method() == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from_static(crate::fallback::SCRIPT.as_bytes())
    };
    let mut resp = Response::new(Full::new(body));
    if fresh {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// The one answer to a refused request: status, short plain-text reason, `Connection: close`.
pub(super) fn reject_response(reject: &Reject) -> Response<Full<Bytes>> {
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
