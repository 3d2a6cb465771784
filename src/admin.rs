//! The admin listener: metrics, health, readiness, the live session list, and the status page.
//!
//! Owns the admin HTTP/1.1 endpoints (`GET /metrics`, `GET /healthz`, `GET /readyz`,
//! `GET /sessions`, `DELETE /sessions/{id}`, `GET /status`) and their optional bearer token, and
//! serves the status page ([`page`], `GET /`, the one answer that needs no token: it holds no
//! data). It reads the gateway's state and never touches the WebSocket listeners. Bind it to
//! loopback or a private network: it shows client addresses and subjects.

mod page;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::metrics::Metrics;
use crate::registry::Registry;

/// Deadline for one admin request, head to answer.
const ADMIN_REQUEST_TIMEOUT_SECS: u64 = 10;

/// What the admin endpoint shows: the gateway's live registry and its metrics.
#[derive(Clone)]
pub struct View {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
}

/// Serve the admin endpoints until `stop`.
pub async fn serve(
    gw: View,
    listener: TcpListener,
    token: Option<String>,
    stop: CancellationToken,
) {
    let token: Option<Arc<str>> = token.map(Arc::from);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let gw = gw.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let gw = gw.clone();
                let token = token.clone();
                async move { Ok::<_, Infallible>(handle(&gw, token.as_deref(), req)) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(ADMIN_REQUEST_TIMEOUT_SECS))
                .keep_alive(false);
            let conn = builder.serve_connection(TokioIo::new(tcp), service);
            let limit = Duration::from_secs(ADMIN_REQUEST_TIMEOUT_SECS);
            if let Ok(Err(e)) = tokio::time::timeout(limit, conn).await {
                debug!(client = %peer, error = %e, "admin connection error");
            }
        });
    }
}

fn handle(gw: &View, token: Option<&str>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    // The page shell carries no data (it fetches everything with the token typed into it), so
    // it is served without one.
    if req.uri().path() == "/" {
        return match *req.method() {
            Method::GET => page::response(),
            _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        };
    }
    if let Some(expected) = token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes())) {
            let mut r = text(StatusCode::UNAUTHORIZED, "admin token required\n");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"wsgate-admin\""),
            );
            return r;
        }
    }
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET, "/metrics") => {
            // OpenMetrics, unless the client asks for the Prometheus text format and not for
            // OpenMetrics (Prometheus asks for both, OpenMetrics first).
            let accept = req
                .headers()
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(",");
            let (body, content_type) = if accept.contains("text/plain")
                && !accept.contains("application/openmetrics-text")
            {
                (
                    gw.metrics.encode_prometheus_text(),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            } else {
                (
                    gw.metrics.encode(),
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
            };
            let mut r = text(StatusCode::OK, body);
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            r
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if gw.registry.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (&Method::GET, "/sessions") => json(sessions_json(gw)),
        (&Method::GET, "/status") => json(status_json(gw)),
        (&Method::DELETE, p) if p.starts_with("/sessions/") => {
            let Ok(id) = p["/sessions/".len()..].parse::<u64>() else {
                return text(StatusCode::BAD_REQUEST, "session ids are numbers\n");
            };
            match gw.registry.close(id) {
                Some(route) => {
                    info!(session = id, route = %route, "session closed by the operator (1008)");
                    text(StatusCode::ACCEPTED, "closing with 1008\n")
                }
                None => text(StatusCode::NOT_FOUND, "no such session\n"),
            }
        }
        (_, "/metrics" | "/healthz" | "/readyz" | "/sessions" | "/status") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Milliseconds since the Unix epoch (0 for a time before it).
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What `/metrics` and `/sessions` do not say: the version, uptime, the configuration
/// generation in force and the limits the live counts run against.
fn status_json(gw: &View) -> String {
    let now = SystemTime::now();
    let config = gw.registry.config();
    let mut out = match config {
        None => serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "now_unix_ms": unix_ms(now),
            "ready": gw.registry.is_ready(),
            "started_unix_ms": null,
            "uptime_secs": null,
            "config_generation": null,
            "config_loaded_unix_ms": null,
            "max_connections": null,
            "max_connections_per_ip": null,
            "routes": [],
        }),
        Some(c) => serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "now_unix_ms": unix_ms(now),
            "ready": gw.registry.is_ready(),
            "started_unix_ms": unix_ms(c.started),
            "uptime_secs": now.duration_since(c.started).map(|d| d.as_secs()).unwrap_or(0),
            "config_generation": c.generation,
            "config_loaded_unix_ms": unix_ms(c.loaded),
            "max_connections": c.max_connections,
            "max_connections_per_ip": c.max_connections_per_ip,
            "routes": c.routes.iter().map(|(path, max)| serde_json::json!({
                "path": path,
                "max_sessions": max,
            })).collect::<Vec<_>>(),
        }),
    }
    .to_string();
    out.push('\n');
    out
}

fn sessions_json(gw: &View) -> String {
    let live = gw.registry.sessions();
    let mut list: Vec<serde_json::Value> = live
        .iter()
        .map(|(id, s)| {
            let up = s.stats.up.snapshot();
            let down = s.stats.down.snapshot();
            serde_json::json!({
                "id": id,
                "route": s.route.path,
                "client": s.client.to_string(),
                "subject": s.subject,
                "backend": s.backend,
                "started_unix_ms": unix_ms(s.started),
                "bytes_up": up.bytes,
                "messages_up": up.messages,
                "bytes_down": down.bytes,
                "messages_down": down.messages,
            })
        })
        .collect();
    list.sort_by_key(|v| v["id"].as_u64());
    let mut out = serde_json::Value::Array(list).to_string();
    out.push('\n');
    out
}

/// A 200 with a JSON body, never cached.
fn json(body: String) -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::OK, body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Compare without leaking where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
