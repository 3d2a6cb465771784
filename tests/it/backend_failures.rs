//! Backends that are down, unknown, unreachable or failing: the client gets one HTTP status
//! (never a 101 followed by a close) before the upgrade, and a 1011 after it.

use crate::support;
use crate::support::frames;

use std::time::{Duration, Instant};

use frames::{parse_response, upgrade_request, RawWs, OP_BINARY};
use support::backends;
use support::TestGateway;

async fn gateway(backend: &str, limits: &str) -> TestGateway {
    TestGateway::one_route("/b", backend, limits).await
}

/// Upgrade on `/b`; returns the response (the server must close the connection after it).
async fn refused(gw: &TestGateway) -> frames::Response {
    let (out, _) =
        frames::exchange(gw.addr(), upgrade_request(gw.addr(), "/b", &[]).as_bytes()).await;
    let (resp, _) = parse_response(&out)
        .unwrap_or_else(|| panic!("no response: {:?}", String::from_utf8_lossy(&out)));
    assert!(resp.connection_close(), "{}", resp.raw);
    resp
}

#[tokio::test]
async fn refused_backend_is_502() {
    let addr = backends::closed_port();
    let gw = gateway(&addr.to_string(), "").await;
    let resp = refused(&gw).await;
    assert_eq!(resp.status, 502, "{}", resp.raw);
}

#[tokio::test]
async fn unresolvable_backend_name_is_502() {
    let gw = gateway("nonexistent.invalid:80", "").await;
    let resp = refused(&gw).await;
    assert_eq!(resp.status, 502, "{}", resp.raw);
}

#[tokio::test]
async fn backend_connect_that_never_completes_is_504() {
    let hung = backends::unresponsive().await;
    let gw = gateway(&hung.addr.to_string(), "connect_timeout = \"1s\"").await;
    let started = Instant::now();
    let resp = refused(&gw).await;
    assert_eq!(resp.status, 504, "{}", resp.raw);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "answered before the connect deadline"
    );
}

#[tokio::test]
async fn gateway_keeps_serving_after_a_backend_failure() {
    let echo = backends::echo().await;
    let dead = backends::closed_port();
    let gw = TestGateway::start(&format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
[[route]]
path = "/b"
backend = "{dead}"
[[route]]
path = "/ok"
backend = "{}"
"#,
        echo.config_addr()
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(refused(&gw).await.status, 502);
    }
    let mut ws = RawWs::connect(gw.addr(), "/ok").await;
    ws.send(&frames::binary(b"still here")).await;
    assert_eq!(ws.next_frame().await.unwrap().payload, b"still here");
}

#[tokio::test]
async fn backend_reset_during_a_session_is_1011() {
    let mut rec = backends::recorder().await;
    let gw = gateway(&rec.backend.config_addr(), "").await;
    let mut ws = RawWs::connect(gw.addr(), "/b").await;
    let mut conn = rec.accept().await;
    ws.send(&frames::binary(b"up")).await;
    assert_eq!(conn.wait_for_len(2).await, b"up");
    conn.write(b"down").await;
    let f = ws.next_frame().await.unwrap();
    assert_eq!((f.opcode, f.payload.as_slice()), (OP_BINARY, &b"down"[..]));
    conn.reset();
    let (before, close) = ws.until_close().await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(close.close_code(), Some(1011));
    ws.send(&frames::close(Some(1011), "")).await;
    ws.expect_eof().await;
}

#[tokio::test]
async fn each_session_gets_its_own_backend_connection() {
    let mut rec = backends::recorder().await;
    let gw = gateway(&rec.backend.config_addr(), "").await;
    let mut a = RawWs::connect(gw.addr(), "/b").await;
    let mut ca = rec.accept().await;
    let mut b = RawWs::connect(gw.addr(), "/b").await;
    let mut cb = rec.accept().await;
    a.send(&frames::binary(b"from a")).await;
    b.send(&frames::binary(b"from b")).await;
    assert_eq!(ca.wait_for_len(6).await, b"from a");
    assert_eq!(cb.wait_for_len(6).await, b"from b");
    cb.write(b"to b").await;
    ca.write(b"to a").await;
    assert_eq!(a.next_frame().await.unwrap().payload, b"to a");
    assert_eq!(b.next_frame().await.unwrap().payload, b"to b");
    assert_eq!(rec.backend.connections_made().await, 2);
}

#[tokio::test]
async fn unix_socket_backend_works() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo.sock");
    let server = backends::unix_echo(&path);
    let gw = gateway(&format!("unix:{}", path.display()), "").await;
    let mut ws = RawWs::connect(gw.addr(), "/b").await;
    ws.send(&frames::binary(b"over unix")).await;
    assert_eq!(ws.next_frame().await.unwrap().payload, b"over unix");
    server.abort();
}

#[tokio::test]
async fn missing_unix_socket_is_502() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(
        &format!("unix:{}", dir.path().join("absent.sock").display()),
        "",
    )
    .await;
    assert_eq!(refused(&gw).await.status, 502);
}
