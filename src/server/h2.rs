//! HTTP/2 connections (RFC 9113) and WebSockets over them (RFC 8441): ALPN `h2` on TLS
//! listeners, h2c with prior knowledge on plain ones that enable it.
//!
//! One connection carries many streams. A WebSocket is an extended CONNECT on one stream,
//! validated and authorised by the same pipeline as an HTTP/1.1 upgrade ([`super::request`]),
//! answered with 200, and run as a session in a task of its own (HTTP/1.1 runs its one session
//! in the connection's task): the connection's task keeps driving the HTTP/2 framing for all of
//! them. Plain requests (static files) are answered on their streams as over HTTP/1.1.
//!
//! Backpressure is HTTP/2 flow control: every stream has a window of [`STREAM_WINDOW`] bytes, so
//! a session whose client stops reading stops after that much and the others go on; the
//! connection window is large enough for every stream's window at once, so one stalled stream
//! never starves the others. Bounds: `http2_max_streams` concurrent streams, the HTTP/2
//! library's own guards (reset floods, header lists over `max_header_bytes`, CONTINUATION floods),
//! and [`FloodGuard`], which closes a connection whose client sends SETTINGS, PING or
//! RST_STREAM frames faster than any client needs.
//!
//! A connection without streams is closed after `handshake_timeout`; on shutdown it gets GOAWAY
//! (its sessions close with 1001 like every other).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::request::{handle, Conn, H2_PREFACE};
use super::router::State;
use super::Gateway;
use crate::metrics::{AbuseLabel, Metrics};

/// Each stream's flow-control window: what one session may have in flight towards the gateway
/// before its client's sends wait, and about what it may buffer the other way.
pub(super) const STREAM_WINDOW: u32 = 64 * 1024;

/// Largest connection-level window (RFC 9113 §6.9.1: 2^31 - 1).
const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Streams reset by the client before the gateway took them up, beyond which the connection gets
/// GOAWAY ENHANCE_YOUR_CALM (the "rapid reset" attack, CVE-2023-44487).
const MAX_PENDING_RESETS: usize = 20;

/// SETTINGS and PING frames (not acknowledgements) a client may send: a burst of this many, then
/// this many per second. A client sends one SETTINGS when it connects and a PING now and then.
pub(super) const CONTROL_FRAMES_PER_SECOND: u32 = 100;

/// RST_STREAM frames a client may send: a burst of this many, then this many per second (a page
/// closing all its sockets at once resets each of them).
pub(super) const RESETS_PER_SECOND: u32 = 200;

/// Open streams of one connection, and a count of every stream ever opened on it (the idle
/// check compares two readings).
#[derive(Default)]
pub(super) struct Streams {
    open: AtomicUsize,
    opened: AtomicU64,
}

impl Streams {
    pub(super) fn open(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.opened.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.clone())
    }
}

/// A stream's place among its connection's open streams: held by a request while it is answered
/// and by a session while it runs.
pub(super) struct StreamGuard(Arc<Streams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// True when a plain connection starts with the HTTP/2 preface (RFC 9113 §3.4), read without
/// consuming it. Gives up at `deadline`, or as soon as the bytes differ.
pub(super) async fn prior_knowledge(tcp: &TcpStream, deadline: tokio::time::Instant) -> bool {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return false,
        };
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return false;
        }
        if n == H2_PREFACE.len() {
            return true;
        }
        // Part of the preface is here: peek returns at once until more arrives.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Serve an HTTP/2 connection until the client or the gateway ends it.
pub(super) async fn serve<I>(gw: Arc<Gateway>, state: Arc<State>, io: TokioIo<I>, conn: Conn)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    gw.metrics.http2_connections.inc();
    let limits = state.config.http;
    let peer = conn.peer;
    let streams = Arc::new(Streams::default());
    let conn = Conn {
        http2: true,
        streams: Some(streams.clone()),
        ..conn
    };
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_concurrent_streams(limits.http2_max_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(
            STREAM_WINDOW
                .saturating_mul(limits.http2_max_streams)
                .min(MAX_WINDOW),
        )
        .max_send_buf_size(STREAM_WINDOW as usize)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS);
    let service = {
        let gw = gw.clone();
        service_fn(move |req| {
            let gw = gw.clone();
            let state = state.clone();
            let conn = conn.clone();
            async move {
                let _stream = conn.streams.as_ref().map(Streams::open);
                Ok::<_, std::convert::Infallible>(handle(&gw, &state, req, conn).await)
            }
        })
    };
    let io = TokioIo::new(FloodGuard::new(io.into_inner(), gw.metrics.clone()));
    let http = builder.serve_connection(io, service);
    tokio::pin!(http);

    let idle = limits.handshake_timeout;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + idle, idle);
    let mut seen = streams.opened.load(Ordering::Relaxed);
    let mut closing = false;
    loop {
        tokio::select! {
            r = http.as_mut() => {
                if let Err(e) = r {
                    debug!(client = %peer, error = %e, "HTTP/2 connection ended with an error");
                }
                return;
            }
            _ = gw.shutdown.cancelled(), if !closing => {
                closing = true;
                http.as_mut().graceful_shutdown();
            }
            _ = gw.cut.cancelled() => return,
            _ = tick.tick(), if !closing => {
                let now = streams.opened.load(Ordering::Relaxed);
                if streams.open.load(Ordering::Relaxed) == 0 && now == seen {
                    debug!(client = %peer, "HTTP/2 connection idle: closing");
                    closing = true;
                    http.as_mut().graceful_shutdown();
                }
                seen = now;
            }
        }
    }
}

/// A token bucket: `rate` a second, at most `rate` saved up.
struct Bucket {
    tokens: f64,
    rate: f64,
    last: tokio::time::Instant,
}

impl Bucket {
    fn new(rate: u32) -> Bucket {
        Bucket {
            tokens: f64::from(rate),
            rate: f64::from(rate),
            last: tokio::time::Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The frames of the client's byte stream, followed without buffering: only each frame's
/// 9-byte header is looked at (RFC 9113 §4.1); payloads are skipped.
#[derive(Default)]
pub(super) struct FrameScan {
    /// Preface bytes still to skip.
    preface_left: usize,
    header: [u8; 9],
    have: usize,
    payload_left: usize,
}

/// RFC 9113 §6: frame types the guard counts.
const FRAME_RST_STREAM: u8 = 0x3;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_PING: u8 = 0x6;
/// The ACK flag of SETTINGS and PING.
const FLAG_ACK: u8 = 0x1;

impl FrameScan {
    pub(super) fn new() -> FrameScan {
        FrameScan {
            preface_left: H2_PREFACE.len(),
            ..FrameScan::default()
        }
    }

    /// Feed bytes as they arrive; `frame(type, flags)` is called for every frame header.
    pub(super) fn feed(&mut self, mut data: &[u8], mut frame: impl FnMut(u8, u8)) {
        while !data.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(data.len());
                self.preface_left -= n;
                data = &data[n..];
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(data.len());
                self.payload_left -= n;
                data = &data[n..];
            } else {
                let n = (9 - self.have).min(data.len());
                self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                data = &data[n..];
                if self.have == 9 {
                    self.have = 0;
                    let h = self.header;
                    self.payload_left =
                        usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    frame(h[3], h[4]);
                }
            }
        }
    }
}

/// The client side of an HTTP/2 connection, watched for floods of frames that cost the gateway
/// work but carry nothing: SETTINGS and PING beyond [`CONTROL_FRAMES_PER_SECOND`], RST_STREAM
/// beyond [`RESETS_PER_SECOND`]. A client over either limit has its connection closed (logged,
/// and counted in `wsgate_http2_abuse_closes_total`).
pub(super) struct FloodGuard<I> {
    io: I,
    scan: FrameScan,
    control: Bucket,
    resets: Bucket,
    flooded: Option<&'static str>,
    metrics: Arc<Metrics>,
}

impl<I> FloodGuard<I> {
    pub(super) fn new(io: I, metrics: Arc<Metrics>) -> FloodGuard<I> {
        FloodGuard {
            io,
            scan: FrameScan::new(),
            control: Bucket::new(CONTROL_FRAMES_PER_SECOND),
            resets: Bucket::new(RESETS_PER_SECOND),
            flooded: None,
            metrics,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FloodGuard<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(kind) = this.flooded {
            return Poll::Ready(Err(flood_error(kind)));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let (control, resets) = (&mut this.control, &mut this.resets);
            let mut flooded = None;
            this.scan.feed(&buf.filled()[before..], |kind, flags| {
                let over = match kind {
                    FRAME_SETTINGS | FRAME_PING if flags & FLAG_ACK == 0 => !control.take(),
                    FRAME_RST_STREAM => !resets.take(),
                    _ => false,
                };
                if over && flooded.is_none() {
                    flooded = Some(if kind == FRAME_RST_STREAM {
                        "reset"
                    } else if kind == FRAME_PING {
                        "ping"
                    } else {
                        "settings"
                    });
                }
            });
            if let Some(kind) = flooded {
                this.flooded = Some(kind);
                this.metrics
                    .http2_abuse
                    .get_or_create(&AbuseLabel { kind })
                    .inc();
                warn!(kind, "HTTP/2 frame flood: closing the connection");
                return Poll::Ready(Err(flood_error(kind)));
            }
        }
        r
    }
}

fn flood_error(kind: &'static str) -> io::Error {
    io::Error::other(format!("HTTP/2 {kind} frames beyond the gateway's limit"))
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FloodGuard<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, len: usize) -> Vec<u8> {
        let l = u32::try_from(len).unwrap().to_be_bytes();
        let mut f = vec![l[1], l[2], l[3], kind, flags, 0, 0, 0, 0];
        f.resize(9 + len, 0xaa);
        f
    }

    #[test]
    fn the_scan_finds_every_frame_header_however_the_bytes_are_cut() {
        let mut stream = H2_PREFACE.to_vec();
        stream.extend(frame(FRAME_SETTINGS, 0, 12));
        stream.extend(frame(0x0, 0, 70_000));
        stream.extend(frame(FRAME_PING, FLAG_ACK, 8));
        stream.extend(frame(FRAME_RST_STREAM, 0, 4));
        for cut in [1, 3, 9, 10, 4096, stream.len()] {
            let mut scan = FrameScan::new();
            let mut seen = Vec::new();
            for chunk in stream.chunks(cut) {
                scan.feed(chunk, |k, f| seen.push((k, f)));
            }
            assert_eq!(
                seen,
                vec![
                    (FRAME_SETTINGS, 0),
                    (0x0, 0),
                    (FRAME_PING, FLAG_ACK),
                    (FRAME_RST_STREAM, 0)
                ],
                "cut {cut}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_a_burst_then_the_rate() {
        let mut b = Bucket::new(10);
        assert!((0..10).all(|_| b.take()));
        assert!(!b.take());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!((0..5).all(|_| b.take()));
        assert!(!b.take());
    }
}
