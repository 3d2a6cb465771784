//! The answers to a fallback session's requests after `open`: `stream` and `poll` (down),
//! `send` (up). The server has already matched the route and checked the Origin; this module
//! finds the session, checks the binding, and answers (see README.md, "Fallback transport").

use std::any::Any;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ::http::header::{self, HeaderMap, HeaderValue};
use ::http::{Method, Request, Response, StatusCode};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::adapter::{self, client_message, opcode_of};
use super::body::Body;
use super::records::{self, Kind};
use super::{Binding, Limits, SeqCheck, Session, Table, Transport};
use crate::auth::RouteAuth;
use crate::error::Reject;

/// A body may hold this much beyond `max_message_size` (record headers, small messages).
pub const SEND_SLACK_BYTES: u64 = 64 * 1024;

/// The content type of down responses.
pub const STREAM_CONTENT_TYPE: &str = "application/x-wsgate-stream";

/// Bytes of records a stream writes in one chunk.
const STREAM_CHUNK_BYTES: u64 = 64 * 1024;

/// What a fallback request asks for (`Wsgate-Fallback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Open,
    Stream,
    Poll,
    Send,
}

impl RequestKind {
    pub fn of(v: &HeaderValue) -> Option<RequestKind> {
        match v.as_bytes() {
            b"open" => Some(RequestKind::Open),
            b"stream" => Some(RequestKind::Stream),
            b"poll" => Some(RequestKind::Poll),
            b"send" => Some(RequestKind::Send),
            _ => None,
        }
    }
}

/// The transport an `open` asks for first (`Wsgate-Transport`, default streaming).
pub fn requested_transport(headers: &HeaderMap) -> Transport {
    match headers
        .get(super::HEADER_TRANSPORT)
        .map(HeaderValue::as_bytes)
    {
        Some(b"polling") => Transport::Polling,
        _ => Transport::Streaming,
    }
}

/// The headers every fallback answer carries.
pub fn add_headers(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
}

fn answer(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    add_headers(h);
    resp
}

fn json(value: &serde_json::Value) -> Response<Body> {
    answer(
        StatusCode::OK,
        "application/json",
        Body::Full(Full::new(Bytes::from(value.to_string()))),
    )
}

/// The answer to a successful `open`.
pub fn opened(id: &str, protocol: Option<&str>, limits: &Limits) -> Response<Body> {
    json(&serde_json::json!({
        "session": id,
        "protocol": protocol.unwrap_or(""),
        "poll_timeout_ms": u64::try_from(limits.poll_timeout.as_millis()).unwrap_or(u64::MAX),
        "max_message_size": limits.max_message_size,
    }))
}

/// Create a session for an accepted `open`: the table entry, the adapter and the janitor.
/// Returns the session and the pipe end the pump runs on.
pub fn start(
    table: &Arc<Table>,
    id: String,
    route: String,
    binding: Binding,
    limits: Limits,
    transport: Transport,
    ties: super::Ties,
) -> (Arc<Session>, tokio::io::DuplexStream) {
    let (client, server) = tokio::io::duplex(adapter::PIPE_BYTES);
    let (r, w) = tokio::io::split(client);
    let session = Arc::new(Session::new(id, route, binding, limits, transport, w, ties));
    table.insert(session.clone());
    tokio::spawn(adapter::run(session.clone(), r));
    tokio::spawn(adapter::control_writer(session.clone()));
    tokio::spawn(session.clone().janitor(table.clone()));
    (session, server)
}

fn header_u64(headers: &HeaderMap, name: &str, missing: &'static str) -> Result<u64, Reject> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .ok_or(Reject::client(StatusCode::BAD_REQUEST, missing))
}

/// Answer a `stream`, `poll` or `send` of a session on route `route` (whose Origin check the
/// request passed). `hold` lives as long as the answer (an HTTP/2 stream's place): until the
/// connection is done with its body.
pub async fn serve(
    table: &Table,
    route: &str,
    auth: Option<&RouteAuth>,
    req: Request<Incoming>,
    kind: RequestKind,
    hold: Box<dyn Any + Send>,
) -> Result<Response<Body>, Reject> {
    let id = req
        .headers()
        .get(super::HEADER_SESSION)
        .and_then(|v| v.to_str().ok())
        .ok_or(Reject::client(
            StatusCode::BAD_REQUEST,
            "missing or invalid Wsgate-Session header",
        ))?;
    let session = table
        .get(id)
        .filter(|s| s.route == route)
        .ok_or(Reject::client(
            StatusCode::NOT_FOUND,
            "no such fallback session",
        ))?;
    if !session
        .binding()
        .matches(&Binding::of(req.headers(), req.uri(), auth))
    {
        return Err(Reject::client(
            StatusCode::FORBIDDEN,
            "session belongs to another client",
        ));
    }
    let guard = session.request();
    let method = req.method().clone();
    match kind {
        // POST, like every fallback request: browsers send Origin with every POST, and with no
        // same-origin GET, so the Origin binding holds for browsers too.
        RequestKind::Stream | RequestKind::Poll if method == Method::POST => {
            let ack = header_u64(
                req.headers(),
                super::HEADER_ACK,
                "missing or invalid Wsgate-Ack header",
            )?;
            down(
                session,
                kind == RequestKind::Stream,
                ack,
                Box::new((guard, hold)),
            )
            .await
        }
        RequestKind::Send if method == Method::POST => {
            let seq = header_u64(
                req.headers(),
                super::HEADER_SEQ,
                "missing or invalid Wsgate-Seq header",
            )?;
            let r = send(&session, seq, req).await;
            drop(guard);
            r
        }
        _ => Err(Reject::client(
            StatusCode::METHOD_NOT_ALLOWED,
            "fallback requests are POST",
        )),
    }
}

/// Resolves when a down request newer than `generation` arrived.
async fn newer(session: &Session, generation: u64) {
    let mut rx = session.watch();
    while session.generation.load(Ordering::Relaxed) == generation {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn heartbeat() -> Bytes {
    let mut b = BytesMut::new();
    records::encode(Kind::Heartbeat, &[], &mut b);
    b.freeze()
}

async fn down(
    session: Arc<Session>,
    streaming: bool,
    ack: u64,
    hold: Box<dyn Any + Send>,
) -> Result<Response<Body>, Reject> {
    session
        .down()
        .ack(ack)
        .map_err(|_| Reject::client(StatusCode::CONFLICT, "acknowledgement out of range"))?;
    let transport = if streaming {
        Transport::Streaming
    } else {
        Transport::Polling
    };
    session.transport.store(transport as u8, Ordering::Relaxed);
    let generation = session.generation.fetch_add(1, Ordering::Relaxed) + 1;
    // Wakes the older down request (it ends) and the adapter (acknowledged space is free).
    session.notify();
    let poll_timeout = session.limits.poll_timeout;
    if streaming {
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(stream(session, generation, ack, tx));
        return Ok(answer(
            StatusCode::OK,
            STREAM_CONTENT_TYPE,
            Body::Held {
                body: Box::new(Body::Stream(rx)),
                _hold: hold,
            },
        ));
    }
    let deadline = Instant::now() + poll_timeout;
    let mut rx = session.watch();
    loop {
        rx.borrow_and_update();
        if session.generation.load(Ordering::Relaxed) != generation {
            break;
        }
        {
            let mut d = session.down();
            let (bytes, count, close) = d.collect(ack, session.limits.buffer);
            if count > 0 {
                d.delivered |= close;
                drop(d);
                session.notify();
                return Ok(answer(
                    StatusCode::OK,
                    STREAM_CONTENT_TYPE,
                    Body::Held {
                        body: Box::new(Body::Full(Full::new(bytes.freeze()))),
                        _hold: hold,
                    },
                ));
            }
            if d.ended() {
                return Err(Reject::client(
                    StatusCode::NOT_FOUND,
                    "no such fallback session",
                ));
            }
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { break },
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    Ok(answer(
        StatusCode::OK,
        STREAM_CONTENT_TYPE,
        Body::Held {
            body: Box::new(Body::Full(Full::default())),
            _hold: hold,
        },
    ))
}

/// Feed a stream: a heartbeat, then records from message `next` on as they come, a heartbeat
/// every `fallback_poll_timeout`. Ends after the close record, when a newer down request
/// arrives, when the client goes away, or after carrying half of `fallback_buffer` (the
/// messages it carried are still unacknowledged: the client opens the next down request with
/// its acknowledgement, which frees them).
async fn stream(session: Arc<Session>, generation: u64, mut next: u64, tx: mpsc::Sender<Bytes>) {
    let poll_timeout = session.limits.poll_timeout;
    let budget = (session.limits.buffer / 2).max(1);
    let mut carried = 0u64;
    let mut rx = session.watch();
    let mut chunk = heartbeat();
    loop {
        tokio::select! {
            r = tx.send(chunk) => if r.is_err() { return },
            () = newer(&session, generation) => return,
        }
        let beat = Instant::now() + poll_timeout;
        loop {
            rx.borrow_and_update();
            if session.generation.load(Ordering::Relaxed) != generation {
                return;
            }
            let (bytes, count, close, ended) = {
                let mut d = session.down();
                if next < d.base() {
                    return;
                }
                let (bytes, count, close) = d.collect(next, STREAM_CHUNK_BYTES);
                d.delivered |= close;
                (bytes, count, close, d.ended())
            };
            if count > 0 {
                if close {
                    session.notify();
                }
                next += count;
                carried += bytes.len() as u64;
                // While the gateway drains, the client cannot open the next request: this one
                // carries everything up to the Close record.
                let last = close || (carried >= budget && !session.draining.is_cancelled());
                tokio::select! {
                    r = tx.send(bytes.freeze()) => if r.is_err() { return },
                    () = newer(&session, generation) => return,
                }
                if last {
                    return;
                }
                continue;
            }
            if ended {
                return;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                () = tokio::time::sleep_until(beat) => break,
            }
        }
        chunk = heartbeat();
    }
}

/// Hand a `send`'s messages to the session. The work runs in a task of its own, so that a
/// client that goes away mid-request never leaves half a frame in the pipe: the messages are
/// either all handed over or the task goes on until they are.
async fn send(
    session: &Arc<Session>,
    seq: u64,
    req: Request<Incoming>,
) -> Result<Response<Body>, Reject> {
    let limits = session.limits;
    let max = limits.max_message_size.saturating_add(SEND_SLACK_BYTES);
    let too_large = Reject::client(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    if hyper::body::Body::size_hint(req.body()).lower() > max {
        return Err(too_large);
    }
    let limited = Limited::new(req.into_body(), usize::try_from(max).unwrap_or(usize::MAX));
    let body = match tokio::time::timeout(limits.poll_timeout, limited.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large),
        Ok(Err(_)) | Err(_) => {
            return Err(Reject::client(
                StatusCode::BAD_REQUEST,
                "request body not received",
            ))
        }
    };
    let records = records::parse_all(&body, limits.max_message_size)
        .map_err(|_| Reject::client(StatusCode::BAD_REQUEST, "malformed records"))?;
    if records.iter().any(|r| r.kind == Kind::Heartbeat) {
        return Err(Reject::client(StatusCode::BAD_REQUEST, "malformed records"));
    }
    let session = session.clone();
    let work = tokio::spawn(async move {
        let mut up = session.up.lock().await;
        let skip = match up.check(seq) {
            SeqCheck::Gap => return None,
            SeqCheck::From(skip) => skip,
        };
        let max_frame = usize::try_from(limits.max_frame_size).unwrap_or(usize::MAX);
        for r in records.iter().skip(skip) {
            up.next += 1;
            if up.closed {
                // After the client's Close nothing more is passed on (as over WebSocket).
                continue;
            }
            let Some(op) = opcode_of(r.kind) else {
                continue;
            };
            // A Pong owed meanwhile goes first (between messages, never inside one).
            let mut failed = adapter::write_control(&session, &mut up).await.is_err();
            if up.closed {
                // The session's Close was just answered: nothing more is passed on.
                continue;
            }
            let mut frames = BytesMut::new();
            client_message(&mut frames, op, &r.payload, max_frame);
            up.closed |= r.kind == Kind::Close;
            failed |= match up.writer.as_mut() {
                None => true,
                Some(w) => {
                    use tokio::io::AsyncWriteExt;
                    w.write_all(&frames).await.is_err() || w.flush().await.is_err()
                }
            };
            if failed {
                // The session is over: what is left is dropped, as a WebSocket would.
                up.writer = None;
                up.closed = true;
            }
        }
        Some(up.next)
    });
    match work.await {
        Ok(Some(ack)) => Ok(json(&serde_json::json!({ "ack": ack }))),
        Ok(None) => Err(Reject::client(
            StatusCode::CONFLICT,
            "sequence number out of range",
        )),
        Err(_) => Err(Reject::gateway(
            StatusCode::INTERNAL_SERVER_ERROR,
            "send failed",
        )),
    }
}
