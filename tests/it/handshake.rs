//! The opening handshake as a client sees it on the wire: every refusal is exactly one HTTP answer
//! with `Connection: close`, nothing pipelined behind it is answered, no backend connection is
//! made; a valid request gets a correct 101; slow clients are cut at the handshake deadline.

use crate::support;
use crate::support::frames;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use frames::{parse_response, read_to_end, upgrade_request, RawWs, ACCEPT, KEY};
use support::backends::{self, Backend};
use support::TestGateway;

const ALLOWED: &str = "https://app.example.com";

/// A gateway with `/echo` (any origin) and `/app` (origin-restricted, subprotocols) routes to
/// `backend`.
async fn gateway(backend: &Backend, limits: &str) -> TestGateway {
    TestGateway::start(&format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"

[[route]]
path = "/echo"
backend = "{b}"

[[route]]
path = "/app"
backend = "{b}"
allowed_origins = ["{ALLOWED}"]
subprotocols = ["binary", "base64"]

[limits]
{limits}
"#,
        b = backend.config_addr()
    ))
    .await
}

/// Send `head` (plus a valid upgrade request pipelined right behind it, in the same write), read
/// until the server closes, and check: one answer with `status`, `Connection: close`, nothing
/// after its body, and no backend connection made. Returns the response.
async fn assert_refused(head: &str, status: u16) -> frames::Response {
    let backend = backends::echo().await;
    let gw = gateway(&backend, "").await;
    assert_refused_on(
        &gw,
        &backend,
        head.replace("ADDR", &gw.addr().to_string()).as_bytes(),
        status,
    )
    .await
}

async fn assert_refused_on(
    gw: &TestGateway,
    backend: &Backend,
    head: &[u8],
    status: u16,
) -> frames::Response {
    let mut bytes = head.to_vec();
    // Upgrade smuggling: a second, valid request right behind the refused one must not be read.
    bytes.extend_from_slice(upgrade_request(gw.addr(), "/echo", &[]).as_bytes());
    let (out, _ended) = frames::exchange(gw.addr(), &bytes).await;
    let (resp, head_len) = parse_response(&out)
        .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(&out)));
    assert_eq!(
        resp.status,
        status,
        "request:\n{}\nresponse:\n{}",
        String::from_utf8_lossy(head),
        resp.raw
    );
    assert!(
        resp.connection_close(),
        "no `Connection: close` on a refusal:\n{}",
        resp.raw
    );
    let body_len: usize = resp
        .header("content-length")
        .map(|v| v.parse().unwrap())
        .unwrap_or_else(|| panic!("refusal without Content-Length:\n{}", resp.raw));
    assert_eq!(
        out.len(),
        head_len + body_len,
        "bytes after the refusal (a pipelined request was answered?): {:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(
        backend.connections_made().await,
        0,
        "a refused handshake must not connect the backend"
    );
    resp
}

/// The standard upgrade headers, with `edit` applied: `(name, None)` removes a header,
/// `(name, Some(v))` replaces it (or adds it), and a name prefixed with `+` appends a duplicate.
fn head_with(method: &str, path: &str, version: &str, edits: &[(&str, Option<&str>)]) -> String {
    let mut h: Vec<(String, String)> = vec![
        ("Host".into(), "ADDR".into()),
        ("Upgrade".into(), "websocket".into()),
        ("Connection".into(), "Upgrade".into()),
        ("Sec-WebSocket-Key".into(), KEY.into()),
        ("Sec-WebSocket-Version".into(), "13".into()),
    ];
    for (name, value) in edits {
        if let Some(dup) = name.strip_prefix('+') {
            h.push((dup.into(), value.unwrap().into()));
            continue;
        }
        match (
            h.iter().position(|(k, _)| k.eq_ignore_ascii_case(name)),
            value,
        ) {
            (Some(i), Some(v)) => h[i].1 = v.to_string(),
            (Some(i), None) => {
                h.remove(i);
            }
            (None, Some(v)) => h.push((name.to_string(), v.to_string())),
            (None, None) => {}
        }
    }
    frames::request(method, path, version, &h)
}

fn edited(edits: &[(&str, Option<&str>)]) -> String {
    head_with("GET", "/echo", "HTTP/1.1", edits)
}

// ---- 400: RFC 6455 §4.2.1, one requirement at a time ----------------------------------------

#[tokio::test]
async fn post_is_400() {
    assert_refused(
        &head_with(
            "POST",
            "/echo",
            "HTTP/1.1",
            &[("Content-Length", Some("0"))],
        ),
        400,
    )
    .await;
}

#[tokio::test]
async fn http_1_0_is_400() {
    assert_refused(&head_with("GET", "/echo", "HTTP/1.0", &[]), 400).await;
}

#[tokio::test]
async fn missing_host_is_400() {
    assert_refused(&edited(&[("Host", None)]), 400).await;
}

#[tokio::test]
async fn duplicate_host_is_400() {
    assert_refused(&edited(&[("+Host", Some("other.example"))]), 400).await;
}

#[tokio::test]
async fn body_with_content_length_is_400() {
    let mut head = edited(&[("Content-Length", Some("5"))]);
    head.push_str("hello");
    assert_refused(&head, 400).await;
}

#[tokio::test]
async fn body_with_transfer_encoding_is_400() {
    let mut head = edited(&[("Transfer-Encoding", Some("chunked"))]);
    head.push_str("0\r\n\r\n");
    assert_refused(&head, 400).await;
}

#[tokio::test]
async fn upgrade_h2c_instead_of_websocket_is_400() {
    assert_refused(&edited(&[("Upgrade", Some("h2c"))]), 400).await;
}

#[tokio::test]
async fn plain_h2c_upgrade_never_switches() {
    // An HTTP/2 cleartext upgrade as curl sends it, on a WebSocket route.
    let head = frames::request(
        "GET",
        "/echo",
        "HTTP/1.1",
        &[
            ("Host".into(), "ADDR".into()),
            ("Connection".into(), "Upgrade, HTTP2-Settings".into()),
            ("Upgrade".into(), "h2c".into()),
            ("HTTP2-Settings".into(), "AAMAAABkAARAAAAAAAIAAAAA".into()),
        ],
    );
    assert_refused(&head, 400).await;
}

#[tokio::test]
async fn missing_upgrade_header_is_400() {
    assert_refused(&edited(&[("Upgrade", None)]), 400).await;
}

#[tokio::test]
async fn connection_without_upgrade_token_is_400() {
    assert_refused(&edited(&[("Connection", Some("keep-alive"))]), 400).await;
}

#[tokio::test]
async fn missing_key_is_400() {
    assert_refused(&edited(&[("Sec-WebSocket-Key", None)]), 400).await;
}

#[tokio::test]
async fn duplicate_key_is_400() {
    assert_refused(
        &edited(&[("+Sec-WebSocket-Key", Some("dGhlIHNhbXBsZSBub25jZQ=="))]),
        400,
    )
    .await;
}

#[tokio::test]
async fn key_not_16_bytes_is_400() {
    // 15 bytes of base64, then something that is not base64 at all.
    assert_refused(
        &edited(&[("Sec-WebSocket-Key", Some("AAAAAAAAAAAAAAAAAAAA"))]),
        400,
    )
    .await;
    assert_refused(&edited(&[("Sec-WebSocket-Key", Some("not a key!"))]), 400).await;
}

#[tokio::test]
async fn malformed_subprotocol_list_is_400() {
    assert_refused(&edited(&[("Sec-WebSocket-Protocol", Some("chat, "))]), 400).await;
}

// ---- 426, 404, 403 ---------------------------------------------------------------------------

#[tokio::test]
async fn version_8_is_426_naming_13() {
    let resp = assert_refused(&edited(&[("Sec-WebSocket-Version", Some("8"))]), 426).await;
    assert_eq!(
        resp.header("sec-websocket-version"),
        Some("13"),
        "{}",
        resp.raw
    );
}

#[tokio::test]
async fn missing_version_is_426_naming_13() {
    let resp = assert_refused(&edited(&[("Sec-WebSocket-Version", None)]), 426).await;
    assert_eq!(
        resp.header("sec-websocket-version"),
        Some("13"),
        "{}",
        resp.raw
    );
}

#[tokio::test]
async fn plain_get_on_a_route_is_426() {
    let head = frames::request(
        "GET",
        "/echo",
        "HTTP/1.1",
        &[("Host".into(), "ADDR".into())],
    );
    let resp = assert_refused(&head, 426).await;
    assert_eq!(
        resp.header("sec-websocket-version"),
        Some("13"),
        "{}",
        resp.raw
    );
    assert!(
        resp.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{}",
        resp.raw
    );
}

#[tokio::test]
async fn plain_get_elsewhere_is_404() {
    let head = frames::request(
        "GET",
        "/nothing",
        "HTTP/1.1",
        &[("Host".into(), "ADDR".into())],
    );
    assert_refused(&head, 404).await;
}

#[tokio::test]
async fn upgrade_on_unknown_path_is_404() {
    assert_refused(&head_with("GET", "/nope", "HTTP/1.1", &[]), 404).await;
    // Exact match only: no prefix, no normalisation.
    assert_refused(&head_with("GET", "/echo/", "HTTP/1.1", &[]), 404).await;
    assert_refused(&head_with("GET", "/x/../echo", "HTTP/1.1", &[]), 404).await;
    assert_refused(&head_with("GET", "/%65cho", "HTTP/1.1", &[]), 404).await;
}

async fn assert_origin_refused(origin: Option<&str>) {
    let mut edits = vec![];
    if let Some(o) = origin {
        edits.push(("Origin", Some(o)));
    }
    let head = head_with("GET", "/app", "HTTP/1.1", &edits);
    assert_refused(&head, 403).await;
}

#[tokio::test]
async fn missing_origin_is_403() {
    assert_origin_refused(None).await;
}

#[tokio::test]
async fn null_origin_is_403() {
    assert_origin_refused(Some("null")).await;
}

#[tokio::test]
async fn suffix_attack_origin_is_403() {
    assert_origin_refused(Some("https://app.example.com.evil.io")).await;
}

#[tokio::test]
async fn prefix_attack_origin_is_403() {
    assert_origin_refused(Some("https://evil-app.example.com")).await;
}

#[tokio::test]
async fn http_downgrade_origin_is_403() {
    assert_origin_refused(Some("http://app.example.com")).await;
}

#[tokio::test]
async fn other_port_origin_is_403() {
    assert_origin_refused(Some("https://app.example.com:8443")).await;
}

#[tokio::test]
async fn trailing_dot_origin_is_403() {
    assert_origin_refused(Some("https://app.example.com.")).await;
}

#[tokio::test]
async fn garbage_origins_are_403() {
    for o in [
        "garbage",
        "https://",
        "https://app.example.com/path",
        "https://user@app.example.com",
        "ftp://app.example.com",
    ] {
        assert_origin_refused(Some(o)).await;
    }
}

#[tokio::test]
async fn two_origin_headers_are_403() {
    let head = head_with(
        "GET",
        "/app",
        "HTTP/1.1",
        &[("Origin", Some(ALLOWED)), ("+Origin", Some(ALLOWED))],
    );
    assert_refused(&head, 403).await;
}

#[tokio::test]
async fn allowed_origin_is_normalised_then_accepted() {
    let backend = backends::echo().await;
    let gw = gateway(&backend, "").await;
    for origin in [
        ALLOWED,
        "HTTPS://APP.EXAMPLE.COM",
        "https://app.example.com:443",
    ] {
        let mut ws = RawWs::connect_with(gw.addr(), "/app", &[("Origin", origin)], &[]).await;
        ws.send(&frames::text("hi")).await;
        let f = ws.next_frame().await.expect("echo");
        assert_eq!(f.payload, b"hi", "origin {origin}");
    }
    assert_eq!(backend.connections_made().await, 3);
}

// ---- 101 -------------------------------------------------------------------------------------

#[tokio::test]
async fn accept_key_on_the_wire() {
    let backend = backends::echo().await;
    let gw = gateway(&backend, "").await;
    let ws = RawWs::connect(gw.addr(), "/echo").await;
    let r = &ws.response;
    assert_eq!(r.header("sec-websocket-accept"), Some(ACCEPT), "{}", r.raw);
    assert!(
        r.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{}",
        r.raw
    );
    assert!(
        r.all("connection")
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade")),
        "{}",
        r.raw
    );
    assert_eq!(
        r.header("sec-websocket-protocol"),
        None,
        "nothing offered, nothing chosen:\n{}",
        r.raw
    );
    assert!(!ws.response.connection_close());
    assert_eq!(
        backend.connections_made().await,
        1,
        "the backend is connected before the 101"
    );
}

#[tokio::test]
async fn subprotocol_is_echoed_only_when_offered() {
    let backend = backends::echo().await;
    let gw = gateway(&backend, "").await;
    let o = ("Origin", ALLOWED);
    // The route's preference order wins over the client's.
    let ws = RawWs::connect_with(
        gw.addr(),
        "/app",
        &[o, ("Sec-WebSocket-Protocol", "chat, base64, binary")],
        &[],
    )
    .await;
    assert_eq!(
        ws.response.header("sec-websocket-protocol"),
        Some("binary"),
        "{}",
        ws.response.raw
    );
    let ws = RawWs::connect_with(
        gw.addr(),
        "/app",
        &[o, ("Sec-WebSocket-Protocol", "base64")],
        &[],
    )
    .await;
    assert_eq!(
        ws.response.header("sec-websocket-protocol"),
        Some("base64"),
        "{}",
        ws.response.raw
    );
    let ws = RawWs::connect_with(
        gw.addr(),
        "/app",
        &[o, ("Sec-WebSocket-Protocol", "chat")],
        &[],
    )
    .await;
    assert_eq!(
        ws.response.header("sec-websocket-protocol"),
        None,
        "{}",
        ws.response.raw
    );
    let ws = RawWs::connect_with(gw.addr(), "/app", &[o], &[]).await;
    assert_eq!(
        ws.response.header("sec-websocket-protocol"),
        None,
        "{}",
        ws.response.raw
    );
    // A route without subprotocols answers none of these.
    let ws = RawWs::connect_with(
        gw.addr(),
        "/echo",
        &[("Sec-WebSocket-Protocol", "chat, base64")],
        &[],
    )
    .await;
    assert_eq!(
        ws.response.header("sec-websocket-protocol"),
        None,
        "{}",
        ws.response.raw
    );
}

/// noVNC and other websockify clients offer `binary`: a `raw` route without `subprotocols`
/// answers it (as websockify does), so browsers do not fail the connection; a `lines` route does
/// not.
#[tokio::test]
async fn raw_route_without_subprotocols_answers_binary() {
    let backend = backends::echo().await;
    let gw = TestGateway::start(&format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"

[[route]]
path = "/raw"
backend = "{b}"

[[route]]
path = "/lines"
backend = "{b}"
framing = "lines"
"#,
        b = backend.config_addr()
    ))
    .await;
    let mut ws = RawWs::connect_with(
        gw.addr(),
        "/raw",
        &[("Sec-WebSocket-Protocol", "base64, binary")],
        &[],
    )
    .await;
    assert_eq!(
        ws.response.header("sec-websocket-protocol"),
        Some("binary"),
        "{}",
        ws.response.raw
    );
    ws.send(&frames::binary(b"raw bytes")).await;
    let echoed = ws.next_frame().await.expect("an echo");
    assert_eq!(echoed.payload, b"raw bytes");
    let ws = RawWs::connect_with(
        gw.addr(),
        "/lines",
        &[("Sec-WebSocket-Protocol", "binary")],
        &[],
    )
    .await;
    assert_eq!(
        ws.response.header("sec-websocket-protocol"),
        None,
        "{}",
        ws.response.raw
    );

    // An independent client that checks the answer against its offer.
    let mut req = gw.url("/raw").into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "binary".parse().unwrap());
    let (mut ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("handshake timed out")
    .expect("a 101 with the offered subprotocol");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("binary")
    );
    ws.send(Message::binary(b"novnc".to_vec())).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("no echo")
        .expect("connection ended")
        .expect("read");
    assert_eq!(got.into_data().as_ref(), b"novnc");
}

#[tokio::test]
async fn upper_case_tokens_and_host_are_accepted() {
    let backend = backends::echo().await;
    let gw = gateway(&backend, "").await;
    let host = format!("LOCALHOST:{}", gw.addr().port());
    let head = head_with(
        "GET",
        "/echo",
        "HTTP/1.1",
        &[
            ("Host", Some(&host)),
            ("Upgrade", Some("WebSocket")),
            ("Connection", Some("keep-alive, UPGRADE")),
        ],
    );
    let (resp, _) = first_response(&gw, head.as_bytes()).await;
    assert_eq!(resp.status, 101, "{}", resp.raw);
}

/// Write `bytes`, read one response head; returns it and the stream.
async fn first_response(
    gw: &TestGateway,
    bytes: &[u8],
) -> (frames::Response, tokio::net::TcpStream) {
    let mut s = frames::connect(gw.addr()).await;
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((r, _)) = parse_response(&buf) {
            return (r, s);
        }
        let n = tokio::time::timeout(
            frames::IO_TIMEOUT,
            tokio::io::AsyncReadExt::read(&mut s, &mut chunk),
        )
        .await
        .expect("no response within the timeout")
        .unwrap();
        assert!(
            n > 0,
            "closed without a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn frames_in_the_same_write_as_the_head_arrive_exactly_once() {
    let mut rec = backends::recorder().await;
    let gw = gateway(&rec.backend, "").await;
    let mut ws = RawWs::connect_with(gw.addr(), "/echo", &[], &frames::text("hello")).await;
    let mut conn = rec.accept().await;
    assert_eq!(conn.wait_for_len(5).await, b"hello");
    // A later frame lands right behind it: the first one was not delivered twice.
    ws.send(&frames::text("world")).await;
    assert_eq!(conn.wait_for_len(10).await, b"helloworld");
    conn.write(b"ok").await;
    assert_eq!(ws.next_frame().await.unwrap().payload, b"ok");
    assert_eq!(rec.backend.connections_made().await, 1);
}

// ---- bounds and deadlines ----------------------------------------------------------------------

#[tokio::test]
async fn oversized_header_is_431() {
    let backend = backends::echo().await;
    let gw = gateway(&backend, "max_header_bytes = 2048").await;
    let big = "a".repeat(4000);
    let head = upgrade_request(gw.addr(), "/echo", &[("X-Big", &big)]);
    assert_refused_on(&gw, &backend, head.as_bytes(), 431).await;
}

#[tokio::test]
async fn too_many_headers_is_431() {
    let backend = backends::echo().await;
    let gw = gateway(&backend, "max_headers = 16").await;
    let names: Vec<String> = (0..40).map(|i| format!("X-H{i}")).collect();
    let extra: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let head = upgrade_request(gw.addr(), "/echo", &extra);
    assert_refused_on(&gw, &backend, head.as_bytes(), 431).await;
}

/// Connect, write `partial`, then stall; returns how long until the server closed and what it sent.
async fn stalled_client(gw: &TestGateway, partial: &[u8]) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    let mut s = frames::connect(gw.addr()).await;
    s.write_all(partial).await.unwrap();
    let mut out = Vec::new();
    read_to_end(&mut s, &mut out, Duration::from_secs(10)).await;
    (started.elapsed(), out)
}

#[tokio::test]
async fn slowloris_is_cut_at_the_handshake_deadline_while_others_upgrade() {
    let backend = backends::echo().await;
    let gw = gateway(&backend, "handshake_timeout = \"1s\"").await;
    let partial = format!(
        "GET /echo HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n",
        gw.addr()
    );
    let slow = stalled_client(&gw, partial.as_bytes());
    let normal = async {
        let (mut ws, resp) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(gw.url("/echo")),
        )
        .await
        .expect("a normal client must upgrade while a slow one stalls")
        .expect("upgrade");
        assert_eq!(resp.status(), 101);
        ws.send(Message::text("ping")).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(m, Message::binary(b"ping".to_vec()));
    };
    let ((elapsed, out), ()) = tokio::join!(slow, normal);
    assert!(
        elapsed >= Duration::from_millis(500),
        "cut too early: {elapsed:?}"
    );
    assert!(
        !String::from_utf8_lossy(&out).contains(" 101 "),
        "a stalled head must never be upgraded: {:?}",
        String::from_utf8_lossy(&out)
    );
}

#[tokio::test]
async fn silent_client_is_cut_at_the_handshake_deadline() {
    let backend = backends::echo().await;
    let gw = gateway(&backend, "handshake_timeout = \"1s\"").await;
    let (elapsed, _) = stalled_client(&gw, b"").await;
    assert!(
        elapsed >= Duration::from_millis(500),
        "cut too early: {elapsed:?}"
    );
    assert_eq!(backend.connections_made().await, 0);
}

#[tokio::test]
async fn header_dribble_does_not_extend_the_deadline() {
    // One byte every 200 ms never completes a head within 1 s; the connection must still be cut.
    let backend = backends::echo().await;
    let gw = gateway(&backend, "handshake_timeout = \"1s\"").await;
    let started = Instant::now();
    let mut s = frames::connect(gw.addr()).await;
    let head = upgrade_request(gw.addr(), "/echo", &[]);
    let mut closed = false;
    for b in head.as_bytes().iter().take(60) {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        let mut probe = [0u8; 1024];
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::io::AsyncReadExt::read(&mut s, &mut probe),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => {}
            Err(_) => {}
        }
    }
    let elapsed = started.elapsed();
    assert!(
        closed,
        "a dribbling client was still connected after {elapsed:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(500),
        "cut too early: {elapsed:?}"
    );
}

/// An HTTP/2 client with prior knowledge on a plain listener gets an answer, not silence: our
/// SETTINGS (the server preface), then GOAWAY with last-stream-id 0 and HTTP_1_1_REQUIRED, then
/// an orderly close; the refusal is logged.
#[tokio::test]
async fn http2_preface_gets_goaway_http_1_1_required() {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let backend = backends::echo().await;
    let gw = gateway(&backend, "").await;
    // The preface and the client's own (empty) SETTINGS frame, as HTTP/2 clients send them.
    let mut hello = PREFACE.to_vec();
    hello.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    let (out, ended) = frames::exchange(gw.addr(), &hello).await;
    assert_eq!(ended, frames::Ended::Eof, "closed with FIN, not a reset");
    // RFC 9113 §4.1 frame headers: length (24 bits), type, flags, stream id (31 bits).
    let mut rest = &out[..];
    let mut got = Vec::new();
    while !rest.is_empty() {
        assert!(rest.len() >= 9, "a cut frame header: {out:?}");
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        let (kind, flags) = (rest[3], rest[4]);
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        assert!(rest.len() >= 9 + len, "a cut frame payload: {out:?}");
        got.push((kind, flags, stream, rest[9..9 + len].to_vec()));
        rest = &rest[9 + len..];
    }
    assert_eq!(got.len(), 2, "SETTINGS and GOAWAY: {got:?}");
    let (kind, flags, stream, ref payload) = got[0];
    assert_eq!((kind, flags, stream), (0x4, 0, 0), "first a SETTINGS frame");
    assert_eq!(payload.len() % 6, 0, "SETTINGS entries are 6 bytes each");
    let (kind, _, stream, ref payload) = got[1];
    assert_eq!((kind, stream), (0x7, 0), "then GOAWAY on stream 0");
    assert!(payload.len() >= 8, "{payload:?}");
    let last_stream = u32::from_be_bytes(payload[0..4].try_into().unwrap()) & 0x7fff_ffff;
    let error = u32::from_be_bytes(payload[4..8].try_into().unwrap());
    assert_eq!(last_stream, 0, "no stream was processed");
    assert_eq!(error, 0xd, "HTTP_1_1_REQUIRED");
    let debug = std::str::from_utf8(&payload[8..]).expect("debug text");
    assert!(debug.contains("HTTP/1.1"), "{debug:?}");
    let logs = gw
        .wait_for_log("HTTP/2 connection preface", Duration::from_secs(10))
        .await;
    assert!(
        logs.lines()
            .any(|l| l.contains("wsgate::access") && l.contains("connection refused")),
        "{logs}"
    );
    assert_eq!(backend.connections_made().await, 0);

    // A real HTTP/2 client, when there is one: curl with prior knowledge.
    let curl = std::process::Command::new("curl").arg("--version").output();
    let has_http2 = curl.is_ok_and(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.starts_with("Features:") && l.contains("HTTP2"))
    });
    if !has_http2 {
        println!("curl with HTTP/2 support not found; the curl check is skipped");
        return;
    }
    let url = format!("http://{}/echo", gw.addr());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["--http2-prior-knowledge", "-v", "-sS", "--max-time", "10"])
            .args(["-o", "/dev/null", &url])
            .output()
            .expect("run curl")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.to_ascii_uppercase().contains("GOAWAY"),
        "curl did not see the GOAWAY ({:?}):\n{stderr}",
        out.status
    );
    assert!(
        gw.logs().matches("HTTP/2 connection preface").count() >= 2,
        "curl's preface was not refused:\n{}",
        gw.logs()
    );
}
