//! WebSockets over HTTP/2 (RFC 8441): the `h2` crate as an independent HTTP/2 client over TLS
//! (ALPN `h2`) and over h2c with prior knowledge; raw HTTP/2 frames for the frame-level attacks
//! (rapid reset, SETTINGS, PING and CONTINUATION floods); headless Chromium loading the demo page
//! over HTTPS with HTTP/2 and opening its WebSocket on the same connection, with
//! permessage-deflate negotiated.

use crate::support;
use crate::support::chromium::{Cdp, Chromium};
use crate::support::frames::{self, ServerFrame};

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::backends::{self, Backend};
use support::TestGateway;

const WAIT: Duration = Duration::from_secs(10);

const ADMIN: &str = "[admin]\nbind = \"127.0.0.2:0\"\n";

/// A gateway with a TLS listener (HTTP/2 on by default), a plain listener with h2c, a static
/// directory, and `/echo` to `backend`.
async fn gateway(backend: &Backend, extra: &str) -> (TestGateway, CertificateDer<'static>) {
    let dir = tempfile::tempdir().unwrap();
    let cert = support::write_cert(dir.path());
    std::fs::create_dir(dir.path().join("www")).unwrap();
    std::fs::write(dir.path().join("www/index.html"), "<p>over h2</p>").unwrap();
    let gw = TestGateway::start_in(
        dir,
        &format!(
            r#"
[[listener]]
bind = "127.0.0.1:0"
tls = {{ cert = "cert.pem", key = "key.pem" }}

[[listener]]
bind = "127.0.0.1:0"
http2 = true

[static]
dir = "www"

[[route]]
path = "/echo"
backend = "{}"
allowed_origins = ["https://localhost"]
allow_missing_origin = true
subprotocols = ["chat"]

{extra}
"#,
            backend.config_addr()
        ),
    )
    .await;
    (gw, cert)
}

fn tls_client(cert: &CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn tls(
    addr: std::net::SocketAddr,
    cert: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(tls_client(cert, alpn))
            .connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .expect("TLS handshake timed out")
}

/// An HTTP/2 client connection (its connection task spawned), once the server's SETTINGS have
/// enabled extended CONNECT.
async fn h2_client<T>(io: T) -> SendRequest<Bytes>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(256 * 1024)
        .initial_connection_window_size(64 << 20)
        .handshake(io)
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.expect("HTTP/2 client ready");
    let deadline = Instant::now() + WAIT;
    while !client.is_extended_connect_protocol_enabled() {
        assert!(
            Instant::now() < deadline,
            "the server never sent SETTINGS_ENABLE_CONNECT_PROTOCOL"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        client = client.ready().await.expect("HTTP/2 client ready");
    }
    client
}

/// One WebSocket on an HTTP/2 stream.
struct Stream {
    send: h2::SendStream<Bytes>,
    recv: h2::RecvStream,
    buf: Vec<u8>,
}

impl Stream {
    async fn send(&mut self, bytes: Vec<u8>) {
        self.send.reserve_capacity(bytes.len());
        self.send.send_data(Bytes::from(bytes), false).unwrap();
    }

    async fn next_frame(&mut self) -> Option<ServerFrame> {
        loop {
            if let Some((f, n)) = frames::parse_server_frame(&self.buf) {
                self.buf.drain(..n);
                return Some(f);
            }
            let data = tokio::time::timeout(WAIT, self.recv.data())
                .await
                .expect("no frame within the deadline")?
                .ok()?;
            let _ = self.recv.flow_control().release_capacity(data.len());
            self.buf.extend_from_slice(&data);
        }
    }
}

fn connect_request(path: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("https://localhost{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut req = b.body(()).unwrap();
    req.extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    req
}

/// Extended CONNECT to `path`; the answer's status and headers, and the stream if it is 200.
async fn open(
    client: &mut SendRequest<Bytes>,
    path: &str,
    headers: &[(&str, &str)],
) -> (http::response::Parts, Option<Stream>) {
    let mut client = client.clone().ready().await.expect("stream slot");
    let (resp, send) = client
        .send_request(connect_request(path, headers), false)
        .expect("send CONNECT");
    let resp = tokio::time::timeout(WAIT, resp)
        .await
        .expect("no answer to CONNECT")
        .expect("answer to CONNECT");
    let (parts, recv) = resp.into_parts();
    let stream = (parts.status == StatusCode::OK).then(|| Stream {
        send,
        recv,
        buf: Vec::new(),
    });
    (parts, stream)
}

async fn echo_once(stream: &mut Stream, text: &str) {
    stream.send(frames::text(text)).await;
    let f = stream.next_frame().await.expect("an echoed frame");
    // A raw route sends what the backend wrote as binary messages.
    assert_eq!(f.opcode, 2, "{f:?}");
    assert_eq!(f.payload, text.as_bytes());
    assert!(!f.masked, "server frames are not masked");
}

#[tokio::test]
async fn extended_connect_over_tls_opens_a_websocket_per_stream() {
    let backend = backends::echo().await;
    let (gw, cert) = gateway(&backend, ADMIN).await;
    let io = tls(gw.addrs[0], &cert, &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(io.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut client = h2_client(io).await;

    let mut streams = Vec::new();
    for _ in 0..3 {
        let (parts, stream) = open(
            &mut client,
            "/echo",
            &[
                ("sec-websocket-version", "13"),
                ("sec-websocket-protocol", "other, chat"),
            ],
        )
        .await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(parts.headers["sec-websocket-protocol"], "chat");
        assert!(!parts.headers.contains_key("sec-websocket-accept"));
        streams.push(stream.unwrap());
    }
    for (i, s) in streams.iter_mut().enumerate() {
        echo_once(s, &format!("hello from stream {i}")).await;
    }
    // A plain GET for a static file on the same connection.
    let mut ready = client.clone().ready().await.unwrap();
    let (resp, _) = ready
        .send_request(Request::get("https://localhost/").body(()).unwrap(), true)
        .unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut page = Vec::new();
    while let Some(chunk) = body.data().await {
        page.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(page, b"<p>over h2</p>");

    for s in &mut streams {
        s.send(frames::close(Some(1000), "bye")).await;
        let f = s.next_frame().await.expect("Close back");
        assert_eq!(f.close_code(), Some(1000));
    }
    let logs = gw.wait_for_count("session closed", 3, WAIT).await;
    let closed: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("session closed"))
        .collect();
    assert!(
        closed
            .iter()
            .all(|l| l.contains("http_version=\"2\"") || l.contains("http_version=2")),
        "every access line names HTTP/2:\n{logs}"
    );
    let m = support::ops::metrics(gw.admin(), None).await;
    assert_eq!(
        m.value(
            "wsgate_sessions_by_http_version_total",
            &[("route", "/echo"), ("http_version", "2")]
        ),
        3.0
    );
    assert!(m.value("wsgate_http2_connections_total", &[]) >= 1.0);
}

#[tokio::test]
async fn the_same_checks_refuse_over_http2() {
    let backend = backends::echo().await;
    let (gw, cert) = gateway(&backend, "").await;
    let io = tls(gw.addrs[0], &cert, &[b"h2"]).await.unwrap();
    let mut client = h2_client(io).await;
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16);
    let cases: &[Case] = &[
        ("/echo", &[("sec-websocket-version", "8")], 426),
        ("/nowhere", &[("sec-websocket-version", "13")], 404),
        (
            "/echo",
            &[
                ("sec-websocket-version", "13"),
                ("origin", "https://evil.example"),
            ],
            403,
        ),
        ("/echo", &[], 426),
    ];
    for (path, headers, want) in cases {
        let (parts, stream) = open(&mut client, path, headers).await;
        assert_eq!(parts.status.as_u16(), *want, "{path} {headers:?}");
        assert!(stream.is_none());
    }
    assert_eq!(
        backend.accepts(),
        0,
        "no refused stream reached the backend"
    );
    let logs = gw.logs();
    assert!(
        logs.lines()
            .filter(|l| l.contains("handshake refused"))
            .count()
            >= 4,
        "{logs}"
    );
}

#[tokio::test]
async fn a_hundred_streams_on_one_connection_and_a_stalled_one_stalls_alone() {
    let backend = backends::echo().await;
    let (gw, cert) = gateway(&backend, "").await;
    let io = tls(gw.addrs[0], &cert, &[b"h2"]).await.unwrap();
    let mut client = h2_client(io).await;

    // Stream 0 never reads: its client sends far more than the windows hold, and the echo
    // comes back into a window nobody releases.
    let (_, stalled) = open(&mut client, "/echo", &[("sec-websocket-version", "13")]).await;
    let mut stalled = stalled.expect("stalled stream open");
    let chunk = frames::binary(&[7u8; 16 * 1024]);
    for _ in 0..64 {
        stalled.send.reserve_capacity(chunk.len());
        // Queued in the client; the gateway takes only what the stream's window allows.
        let _ = stalled.send.send_data(Bytes::from(chunk.clone()), false);
    }

    let mut tasks = Vec::new();
    for i in 0..99 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let (parts, stream) =
                open(&mut client, "/echo", &[("sec-websocket-version", "13")]).await;
            assert_eq!(parts.status, StatusCode::OK, "stream {i}");
            let mut stream = stream.unwrap();
            for round in 0..5 {
                echo_once(&mut stream, &format!("stream {i} round {round}")).await;
            }
            stream.send(frames::close(Some(1000), "")).await;
            let f = stream.next_frame().await.expect("Close");
            assert_eq!(f.close_code(), Some(1000));
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("a stream beside the stalled one did not finish")
            .expect("stream task");
    }
    // The stalled stream is still open and has not taken everything it was sent. (A session's
    // access line follows its Close reply by a moment: wait for the 99, then check no more.)
    let logs = gw
        .wait_for_count("session closed", 99, Duration::from_secs(30))
        .await;
    assert_eq!(
        logs.lines()
            .filter(|l| l.contains("session closed"))
            .count(),
        99,
        "{logs}"
    );
    drop(stalled);
}

#[tokio::test]
async fn http2_max_streams_bounds_the_streams_of_a_connection() {
    let backend = backends::echo().await;
    let (gw, cert) = gateway(&backend, "[limits]\nhttp2_max_streams = 2\n").await;
    let io = tls(gw.addrs[0], &cert, &[b"h2"]).await.unwrap();
    let mut client = h2_client(io).await;
    let (_, a) = open(&mut client, "/echo", &[("sec-websocket-version", "13")]).await;
    let (_, b) = open(&mut client, "/echo", &[("sec-websocket-version", "13")]).await;
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    echo_once(&mut a, "a").await;
    echo_once(&mut b, "b").await;
    // A third stream is held back by the client, as the server's SETTINGS_MAX_CONCURRENT_STREAMS
    // tells it, until one of the two ends.
    let mut ready = client.clone().ready().await.unwrap();
    let (third, send_c) = ready
        .send_request(
            connect_request("/echo", &[("sec-websocket-version", "13")]),
            false,
        )
        .unwrap();
    tokio::pin!(third);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut third)
            .await
            .is_err(),
        "a third stream was opened beside two open ones"
    );
    a.send(frames::close(Some(1000), "")).await;
    assert_eq!(a.next_frame().await.unwrap().close_code(), Some(1000));
    drop(a);
    let resp = tokio::time::timeout(WAIT, third)
        .await
        .expect("the third stream never opened")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (_, recv) = resp.into_parts();
    let mut c = Stream {
        send: send_c,
        recv,
        buf: Vec::new(),
    };
    echo_once(&mut c, "c").await;
    drop(gw);
}

#[tokio::test]
async fn h2c_prior_knowledge_works_where_enabled() {
    let backend = backends::echo().await;
    let (gw, _cert) = gateway(&backend, "").await;
    let tcp = TcpStream::connect(gw.addrs[1]).await.unwrap();
    let mut client = h2_client(tcp).await;
    let (parts, stream) = open(&mut client, "/echo", &[("sec-websocket-version", "13")]).await;
    assert_eq!(parts.status, StatusCode::OK);
    echo_once(&mut stream.unwrap(), "over h2c").await;
}

#[tokio::test]
async fn http2_false_offers_http_1_1_only() {
    let backend = backends::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let cert = support::write_cert(dir.path());
    let gw = TestGateway::start_in(
        dir,
        &format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\ntls = {{ cert = \"cert.pem\", key = \"key.pem\" }}\nhttp2 = false\n\n[[route]]\npath = \"/echo\"\nbackend = \"{}\"\n",
            backend.config_addr()
        ),
    )
    .await;
    let io = tls(gw.addr(), &cert, &[b"h2", b"http/1.1"]).await.unwrap();
    assert_eq!(io.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert!(
        tls(gw.addr(), &cert, &[b"h2"]).await.is_err(),
        "an h2-only client must not get a TLS session"
    );
}

#[tokio::test]
async fn shutdown_closes_every_stream_with_1001() {
    let backend = backends::echo().await;
    let (gw, cert) = gateway(&backend, "").await;
    let io = tls(gw.addrs[0], &cert, &[b"h2"]).await.unwrap();
    let mut client = h2_client(io).await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        let (_, s) = open(&mut client, "/echo", &[("sec-websocket-version", "13")]).await;
        let mut s = s.unwrap();
        echo_once(&mut s, "before").await;
        streams.push(s);
    }
    let logs = gw.logs();
    drop(gw);
    for s in &mut streams {
        let f = s.next_frame().await.expect("a Close at shutdown");
        assert_eq!(f.close_code(), Some(1001), "{logs}");
    }
}

#[tokio::test]
async fn a_drain_window_spreads_the_streams_closes_with_the_drain_code() {
    const STREAMS: usize = 10;
    let backend = backends::echo().await;
    let (gw, cert) = gateway(
        &backend,
        "[limits]\ndrain_window = \"2s\"\ndrain_close_code = 1012\nshutdown_grace = \"5s\"\n",
    )
    .await;
    let io = tls(gw.addrs[0], &cert, &[b"h2"]).await.unwrap();
    let mut client = h2_client(io).await;
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let (_, s) = open(&mut client, "/echo", &[("sec-websocket-version", "13")]).await;
        let mut s = s.unwrap();
        echo_once(&mut s, "before").await;
        streams.push(s);
    }
    let t0 = Instant::now();
    // Dropping the in-process gateway is its shutdown signal.
    drop(gw);
    let mut tasks = Vec::new();
    for mut s in streams {
        tasks.push(tokio::spawn(async move {
            let f = s.next_frame().await.expect("a Close at shutdown");
            (f.close_code(), t0.elapsed())
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    assert!(got.iter().all(|(c, _)| *c == Some(1012)), "{got:?}");
    let first = got.iter().map(|g| g.1).min().unwrap();
    let last = got.iter().map(|g| g.1).max().unwrap();
    // Stream i of 10 is told at 0.2 s * i: spread over more than a second, not all at once.
    assert!(first < Duration::from_secs(1), "{got:?}");
    assert!(last > Duration::from_secs(1), "not spread: {got:?}");
}

// ---------------------------------------------------------------------------------------------
// Frame-level attacks, with raw frames over h2c.

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK header block for `GET /` (static table indices, a literal `:authority`).
fn get_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84, 0x01, 9];
    b.extend_from_slice(b"localhost");
    b
}

/// Write `frames` (after the preface and an empty SETTINGS) until the server stops reading or
/// closes; then read what it sent. Returns (bytes written, the server's frames as (type, payload)).
async fn attack(
    addr: std::net::SocketAddr,
    mut next: impl FnMut(u32) -> Vec<u8>,
    max_rounds: u32,
) -> (usize, Vec<(u8, Vec<u8>)>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let reader = tokio::spawn(async move {
        let mut all = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            match tokio::time::timeout(WAIT, rd.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
            }
        }
        all
    });
    let mut written = 0;
    let mut first = PREFACE.to_vec();
    first.extend(h2_frame(0x4, 0, 0, &[]));
    if wr.write_all(&first).await.is_err() {
        return (0, Vec::new());
    }
    for round in 0..max_rounds {
        let bytes = next(round);
        match tokio::time::timeout(Duration::from_secs(5), wr.write_all(&bytes)).await {
            Ok(Ok(())) => written += bytes.len(),
            _ => break,
        }
    }
    let got = reader.await.unwrap();
    let mut frames = Vec::new();
    let mut rest = &got[..];
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        if rest.len() < 9 + len {
            break;
        }
        frames.push((rest[3], rest[9..9 + len].to_vec()));
        rest = &rest[9 + len..];
    }
    (written, frames)
}

fn goaway_code(frames: &[(u8, Vec<u8>)]) -> Option<u32> {
    frames
        .iter()
        .find(|(t, _)| *t == 0x7)
        .map(|(_, p)| u32::from_be_bytes([p[4], p[5], p[6], p[7]]))
}

#[tokio::test]
async fn rapid_reset_gets_goaway_enhance_your_calm() {
    let backend = backends::echo().await;
    let (gw, _cert) = gateway(&backend, "").await;
    let (_, got) = attack(
        gw.addrs[1],
        |i| {
            let id = 2 * i + 1;
            let mut f = h2_frame(0x1, 0x5, id, &get_block());
            f.extend(h2_frame(0x3, 0, id, &8u32.to_be_bytes()));
            f
        },
        5_000,
    )
    .await;
    let code = goaway_code(&got);
    assert_eq!(
        code,
        Some(0xb),
        "rapid reset must end in GOAWAY ENHANCE_YOUR_CALM\n{}",
        gw.logs()
    );
}

#[tokio::test]
async fn settings_and_ping_floods_close_the_connection() {
    let backend = backends::echo().await;
    let (gw, _cert) = gateway(&backend, ADMIN).await;
    for (kind, frame) in [
        ("settings", h2_frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])),
        ("ping", h2_frame(0x6, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8])),
    ] {
        let started = Instant::now();
        let (written, _) = attack(gw.addrs[1], |_| frame.repeat(64), 100_000).await;
        assert!(
            written < 100_000 * 64 * frame.len(),
            "a {kind} flood was read to the end"
        );
        assert!(started.elapsed() < Duration::from_secs(30));
        gw.wait_for_log(&format!("kind=\"{kind}\""), WAIT).await;
    }
    let m = support::ops::metrics(gw.admin(), None).await;
    for kind in ["settings", "ping"] {
        assert_eq!(
            m.value("wsgate_http2_abuse_closes_total", &[("kind", kind)]),
            1.0
        );
    }
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off() {
    let backend = backends::echo().await;
    let (gw, _cert) = gateway(&backend, "[limits]\nmax_header_bytes = \"16KiB\"\n").await;
    // HEADERS without END_HEADERS, then CONTINUATION frames that never end the block.
    let junk = {
        let mut b = Vec::new();
        for i in 0..200u32 {
            b.push(0x00);
            b.push(8);
            b.extend_from_slice(format!("x-{i:06}").as_bytes());
            b.push(64);
            b.extend(std::iter::repeat_n(b'a', 64));
        }
        b
    };
    let (written, got) = attack(
        gw.addrs[1],
        |i| {
            if i == 0 {
                h2_frame(0x1, 0x1, 1, &get_block())
            } else {
                h2_frame(0x9, 0, 1, &junk)
            }
        },
        10_000,
    )
    .await;
    assert!(
        written < 10_000 * junk.len(),
        "the whole CONTINUATION flood ({} bytes) was taken",
        10_000 * junk.len()
    );
    assert_eq!(
        goaway_code(&got),
        Some(0xb),
        "a CONTINUATION flood must end in GOAWAY ENHANCE_YOUR_CALM"
    );
    assert_eq!(backend.accepts(), 0);
}

// ---------------------------------------------------------------------------------------------
// Chromium: the demo page over HTTPS with HTTP/2, its WebSocket on the same connection.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_opens_the_demo_websocket_over_http2() {
    let gw_port = support::free_port();
    let greeter_port = support::free_port();
    let dir = tempfile::tempdir().unwrap();
    support::write_cert(dir.path());
    let demo_dir = support::repo_root().join("demo");
    let config = format!(
        r#"
[[listener]]
bind = "127.0.0.1:{gw_port}"
tls = {{ cert = "cert.pem", key = "key.pem" }}

[static]
dir = {demo:?}

[[demo_backend]]
bind = "127.0.0.1:{greeter_port}"
kind = "greeter"
greeting = "world"

[[route]]
path = "/demo"
backend = "127.0.0.1:{greeter_port}"
framing = "lines"
allowed_origins = ["https://localhost:{gw_port}"]
compression = "permessage-deflate"
"#,
        demo = demo_dir.to_str().unwrap()
    );
    let gw = support::Gateway::start_in(dir, &config).await;
    gw.wait_for_log("demo backend listening", WAIT).await;
    let browser = Chromium::launch_with(&["--ignore-certificate-errors"]).await;
    let mut cdp = Cdp::connect(&browser.ws_url).await;
    let url = format!("https://localhost:{gw_port}/");
    let session = cdp.open(&url).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut log = String::new();
    while Instant::now() < deadline {
        log = cdp
            .eval_string(&session, "document.getElementById('log').textContent")
            .await
            .unwrap_or_default();
        if log.contains("client: received world") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        log.contains("client: received world"),
        "#log: {log:?}\ngateway log:\n{}\nchromium:\n{}",
        gw.logs(),
        browser.stderr_tail()
    );
    let logs = gw
        .wait_for_log("server: received: from client: hello", WAIT)
        .await;
    let open = logs
        .lines()
        .find(|l| l.contains("session open"))
        .expect("a session open line");
    assert!(
        open.contains("http_version=\"2\"") || open.contains("http_version=2"),
        "Chromium's WebSocket did not use HTTP/2: {open}\n{logs}"
    );
    assert!(
        open.contains("compression=\"permessage-deflate\"")
            || open.contains("compression=permessage-deflate"),
        "Chromium did not negotiate permessage-deflate: {open}"
    );
    // The page came over HTTP/2 as well: one connection carried both.
    assert!(
        logs.contains("http_version=\"2\"") || logs.contains("http_version=2"),
        "{logs}"
    );
    browser.close(&mut cdp).await;
}
