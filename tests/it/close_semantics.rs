//! How sessions end, one test per row of the close table: which side saw what, in which order,
//! and the close code on the wire (read with a hand-written client, so every frame is visible).

use crate::support;
use crate::support::frames;

use std::time::Duration;

use tokio::time::Instant;

use frames::{RawWs, OP_BINARY, OP_CLOSE, OP_PONG};
use support::backends::{self, End};
use support::{Gateway, TestGateway};

async fn gateway(backend: &str, limits: &str) -> TestGateway {
    TestGateway::one_route("/s", backend, limits).await
}

/// Concatenated payloads of binary frames (asserting they are all binary).
fn binary_payloads(frames: &[frames::ServerFrame]) -> Vec<u8> {
    frames
        .iter()
        .flat_map(|f| {
            assert_eq!(f.opcode, OP_BINARY, "raw mode sends binary frames: {f:?}");
            assert!(f.fin, "server frames are never fragmented: {f:?}");
            f.payload.clone()
        })
        .collect()
}

// ---- client closes first -------------------------------------------------------------------

async fn client_close_row(code: Option<u16>, reason: &str) {
    let mut stub = backends::reply_on_eof(b"reply after EOF").await;
    let gw = gateway(&stub.backend.config_addr(), "").await;
    let mut ws = RawWs::connect(gw.addr(), "/s").await;
    ws.send(&frames::binary(b"request")).await;
    ws.send(&frames::close(code, reason)).await;
    // The backend sees the data, then EOF (its read_to_end returned).
    assert_eq!(stub.received().await, b"request");
    let (before, close) = ws.until_close().await;
    assert_eq!(
        binary_payloads(&before),
        b"reply after EOF",
        "what the backend sends after EOF reaches the client before the Close"
    );
    assert_eq!(
        close.close_code(),
        code,
        "the Close echoes the client's code"
    );
    if code.is_none() {
        assert!(
            close.payload.is_empty(),
            "an empty Close is answered with an empty Close"
        );
    }
    ws.expect_eof().await;
}

#[tokio::test]
async fn client_close_1000_backend_sees_eof_and_its_reply_comes_first() {
    client_close_row(Some(1000), "bye").await;
}

#[tokio::test]
async fn client_close_4000_is_echoed() {
    client_close_row(Some(4000), "app-specific").await;
}

#[tokio::test]
async fn client_empty_close_is_answered_with_an_empty_close() {
    client_close_row(None, "").await;
}

// Virtual time: the deadline is exact, and nothing waits on the wall clock.
#[tokio::test(start_paused = true)]
async fn client_close_with_a_backend_that_never_finishes_is_answered_at_the_close_deadline() {
    let mut rec = backends::recorder().await;
    let gw = gateway(&rec.backend.config_addr(), "close_timeout = \"1s\"").await;
    let mut ws = RawWs::connect(gw.addr(), "/s").await;
    let mut conn = rec.accept().await;
    ws.send(&frames::close(Some(1000), "")).await;
    let sent = Instant::now();
    assert_eq!(
        conn.wait_end().await,
        End::Eof,
        "client Close -> backend write side shut"
    );
    // The backend keeps its side open and says nothing: the Close comes at the drain deadline.
    let (before, close) = ws.until_close().await;
    let waited = sent.elapsed();
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(close.close_code(), Some(1000));
    assert!(
        waited >= Duration::from_millis(500),
        "answered before the drain deadline: {waited:?}"
    );
    assert!(
        waited <= Duration::from_millis(1100),
        "answered after the drain deadline: {waited:?}"
    );
    ws.expect_eof().await;
}

// ---- backend ends first --------------------------------------------------------------------

#[tokio::test]
async fn backend_eof_delivers_everything_then_1000() {
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let stub = backends::fin_after(&data).await;
    let gw = gateway(&stub.config_addr(), "").await;
    let mut ws = RawWs::connect(gw.addr(), "/s").await;
    let (before, close) = ws.until_close().await;
    assert_eq!(binary_payloads(&before).len(), data.len());
    assert_eq!(binary_payloads(&before), data);
    assert_eq!(close.close_code(), Some(1000));
    // Complete the closing handshake; the server then closes TCP.
    ws.send(&frames::close(Some(1000), "")).await;
    ws.expect_eof().await;
}

// Virtual time: the deadline is exact, and nothing waits on the wall clock.
#[tokio::test(start_paused = true)]
async fn after_backend_eof_a_silent_client_is_cut_at_the_close_deadline() {
    let stub = backends::fin_after(b"last words").await;
    let gw = gateway(&stub.config_addr(), "close_timeout = \"1s\"").await;
    let mut ws = RawWs::connect(gw.addr(), "/s").await;
    let (before, close) = ws.until_close().await;
    let got_close = Instant::now();
    assert_eq!(binary_payloads(&before), b"last words");
    assert_eq!(close.close_code(), Some(1000));
    // We never answer the Close: the gateway closes TCP after close_timeout.
    ws.expect_eof().await;
    let waited = got_close.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "closed before the close deadline: {waited:?}"
    );
    assert!(
        waited <= Duration::from_millis(1100),
        "closed after the close deadline: {waited:?}"
    );
}

#[tokio::test]
async fn backend_reset_mid_stream_is_1011() {
    let stub = backends::rst_after(10).await;
    let gw = gateway(&stub.config_addr(), "").await;
    let mut ws = RawWs::connect(gw.addr(), "/s").await;
    ws.send(&frames::binary(b"hello")).await;
    let echoed = ws.next_frame().await.expect("echo");
    assert_eq!(echoed.payload, b"hello");
    // The next 5 bytes make the stub reset the connection.
    ws.send(&frames::binary(b"world")).await;
    let (before, close) = ws.until_close().await;
    // The stub echoed "world" just before the reset; whether those bytes survive the reset is
    // up to the kernel, but nothing else may arrive.
    let rest = binary_payloads(&before);
    assert!(rest.is_empty() || rest == b"world", "{rest:?}");
    assert_eq!(close.close_code(), Some(1011));
}

// ---- the gateway ends it -------------------------------------------------------------------

// Virtual time: the deadline is exact, and nothing waits on the wall clock.
#[tokio::test(start_paused = true)]
async fn idle_session_is_closed_with_1001() {
    let mut rec = backends::recorder().await;
    let gw = gateway(&rec.backend.config_addr(), "idle_timeout = \"1s\"").await;
    let opened = Instant::now();
    let mut ws = RawWs::connect(gw.addr(), "/s").await;
    let mut conn = rec.accept().await;
    let (before, close) = ws.until_close().await;
    let idle = opened.elapsed();
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(close.close_code(), Some(1001));
    assert_eq!(close.close_reason(), "idle timeout");
    assert!(
        idle >= Duration::from_millis(500),
        "closed before the idle timeout: {idle:?}"
    );
    assert!(
        idle <= Duration::from_millis(1100),
        "closed after the idle timeout: {idle:?}"
    );
    ws.send(&frames::close(Some(1001), "")).await;
    ws.expect_eof().await;
    conn.wait_end().await;
}

// Virtual time: the deadline is exact, and nothing waits on the wall clock.
#[tokio::test(start_paused = true)]
async fn idle_timeout_off_keeps_a_quiet_session_open() {
    let quiet = backends::echo().await;
    let gw = TestGateway::start(&format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
[[route]]
path = "/short"
backend = "{0}"
[[route]]
path = "/console"
backend = "{0}"
[route.limits]
idle_timeout = "off"
[limits]
idle_timeout = "1s"
"#,
        quiet.config_addr()
    ))
    .await;
    let mut console = RawWs::connect(gw.addr(), "/console").await;
    let mut short = RawWs::connect(gw.addr(), "/short").await;
    // The route with the global 1 s closes; then, as long again, the quiet console stays open.
    assert_eq!(short.close_code().await, Some(1001));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    console.send(&frames::binary(b"still here")).await;
    let f = console
        .next_frame()
        .await
        .expect("the console session is open");
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OP_BINARY, &b"still here"[..])
    );
}

// Virtual time: the deadline is exact, and nothing waits on the wall clock.
#[tokio::test(start_paused = true)]
async fn traffic_keeps_a_session_from_going_idle() {
    let stub = backends::echo().await;
    let gw = gateway(&stub.config_addr(), "idle_timeout = \"2s\"").await;
    let mut ws = RawWs::connect(gw.addr(), "/s").await;
    // Twice the idle timeout, with a round trip every 200 ms: never idle.
    let until = Instant::now() + Duration::from_secs(4);
    let mut n = 0u32;
    while Instant::now() < until {
        let msg = n.to_be_bytes();
        ws.send(&frames::binary(&msg)).await;
        let f = ws.next_frame().await.expect("session still open");
        assert_eq!(f.opcode, OP_BINARY, "session closed while active: {f:?}");
        assert_eq!(f.payload, msg);
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And pings count as traffic the same way.
    ws.send(&frames::frame(true, frames::OP_PING, b"p")).await;
    let f = ws.next_frame().await.unwrap();
    assert_eq!((f.opcode, f.payload.as_slice()), (OP_PONG, &b"p"[..]));
}

#[tokio::test]
async fn sigterm_sends_1001_to_every_session_and_exits_0() {
    const SESSIONS: usize = 20;
    let mut rec = backends::recorder().await;
    // A process: the test is about the signal and the exit status.
    let mut gw = Gateway::one_route("/s", &rec.backend.config_addr(), "").await;
    let mut clients = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..SESSIONS {
        clients.push(RawWs::connect(gw.addr(), "/s").await);
        conns.push(rec.accept().await);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let (_, close) = ws.until_close().await;
                ws.send(&frames::close(close.close_code(), "")).await;
                ws.expect_eof().await;
                close.close_code()
            })
        })
        .collect();
    let status = gw.terminate(Duration::from_secs(20)).await;
    for t in tasks {
        assert_eq!(t.await.expect("client task"), Some(1001));
    }
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status:?}\n{}",
        gw.logs()
    );
    for mut c in conns {
        assert_eq!(
            c.wait_end().await,
            End::Eof,
            "backends see FIN, not a reset"
        );
    }
}

#[tokio::test]
async fn client_tcp_close_without_close_frame_ends_the_backend_connection() {
    let mut rec = backends::recorder().await;
    let gw = gateway(&rec.backend.config_addr(), "").await;
    let mut ws = RawWs::connect(gw.addr(), "/s").await;
    let mut conn = rec.accept().await;
    ws.send(&frames::binary(b"last")).await;
    assert_eq!(conn.wait_for_len(4).await, b"last");
    drop(ws);
    let end = conn.wait_end().await;
    assert_eq!(
        end,
        End::Eof,
        "the backend connection is closed when the client vanishes"
    );
    gw.wait_for_log("session closed", Duration::from_secs(10))
        .await;
}

#[tokio::test]
async fn server_close_frame_is_well_formed() {
    // The Close the gateway initiates: unmasked (checked by the reader), FIN, code + UTF-8 reason.
    let stub = backends::fin_after(b"").await;
    let gw = gateway(&stub.config_addr(), "").await;
    let mut ws = RawWs::connect(gw.addr(), "/s").await;
    let f = ws.next_frame().await.expect("a Close");
    assert_eq!(f.opcode, OP_CLOSE);
    assert!(f.fin);
    assert!(f.payload.len() >= 2 && f.payload.len() <= 125, "{f:?}");
    assert_eq!(f.close_code(), Some(1000));
    let _ = f.close_reason();
}

// ---- keepalive ------------------------------------------------------------------------------

// Virtual time: the deadline is exact, and nothing waits on the wall clock.
#[tokio::test(start_paused = true)]
async fn silent_client_gets_keepalive_pings_and_answering_keeps_it_open() {
    let stub = backends::echo().await;
    let gw = gateway(
        &stub.config_addr(),
        "ping_interval = \"1s\"\npong_timeout = \"2s\"",
    )
    .await;
    let opened = Instant::now();
    let mut ws = RawWs::connect(gw.addr(), "/s").await;
    for round in 0..3 {
        let f = ws.next_frame().await.unwrap_or_else(|| {
            panic!(
                "round {round}: connection closed instead of a ping\n{}",
                gw.logs()
            )
        });
        assert_eq!(f.opcode, frames::OP_PING, "round {round}: {f:?}");
        if round == 0 {
            let waited = opened.elapsed();
            assert!(
                waited >= Duration::from_millis(500),
                "pinged before ping_interval: {waited:?}"
            );
            assert!(
                waited <= Duration::from_millis(1100),
                "pinged after ping_interval: {waited:?}"
            );
        }
        ws.send(&frames::frame(true, OP_PONG, &f.payload)).await;
    }
    // Still a working session.
    ws.send(&frames::binary(b"alive")).await;
    let f = ws.next_frame().await.unwrap();
    assert_eq!((f.opcode, f.payload.as_slice()), (OP_BINARY, &b"alive"[..]));
}

// Virtual time: the deadline is exact, and nothing waits on the wall clock.
#[tokio::test(start_paused = true)]
async fn client_that_never_answers_keepalive_is_cut_and_the_backend_closed() {
    let mut rec = backends::recorder().await;
    let gw = gateway(
        &rec.backend.config_addr(),
        "ping_interval = \"1s\"\npong_timeout = \"1s\"",
    )
    .await;
    let mut ws = RawWs::connect(gw.addr(), "/s").await;
    let mut conn = rec.accept().await;
    let f = ws.next_frame().await.expect("a keepalive ping");
    assert_eq!(f.opcode, frames::OP_PING, "{f:?}");
    let pinged = Instant::now();
    // Never answer: the connection is cut without a Close (the client is presumed gone).
    let next = ws.next_frame().await;
    assert_eq!(
        next, None,
        "expected the connection to be cut, got {next:?}"
    );
    let waited = pinged.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "cut before pong_timeout: {waited:?}"
    );
    assert!(
        waited <= Duration::from_millis(1100),
        "cut after pong_timeout: {waited:?}"
    );
    assert_eq!(
        conn.wait_end().await,
        End::Eof,
        "the backend connection is closed"
    );
    gw.wait_for_log("did not answer a keepalive ping", Duration::from_secs(10))
        .await;
}
