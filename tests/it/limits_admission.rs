//! Admission limits: `max_connections`, `max_connections_per_ip` and a route's `max_sessions`
//! refuse with 503, `Retry-After` and `Connection: close`, and admit again once there is room;
//! the accept loop survives running out of file descriptors, backing off instead of spinning.

use crate::support;
use crate::support::{frames, ops};

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::{Gateway, Opts};
use frames::{parse_response, upgrade_request, Ended};
use ops::{ADMIN_BIND, WAIT};
use support::backends::{self, Backend};
use tokio::net::{TcpSocket, TcpStream};

fn config(echo: &Backend, limits: &str, one_extra: &str) -> String {
    let b = echo.config_addr();
    format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"

[admin]
bind = "{ADMIN_BIND}"

[[route]]
path = "/echo"
backend = "{b}"

[[route]]
path = "/one"
backend = "{b}"
{one_extra}

[limits]
{limits}
"#
    )
}

/// An upgrade on a fresh connection that must be refused with 503 and `Retry-After`, the
/// connection then closed by the gateway (FIN).
async fn assert_busy(addr: SocketAddr, path: &str, what: &str) {
    let (out, ended) = frames::exchange(addr, upgrade_request(addr, path, &[]).as_bytes()).await;
    let (resp, _) = parse_response(&out)
        .unwrap_or_else(|| panic!("{what}: no response: {:?}", String::from_utf8_lossy(&out)));
    assert_eq!(resp.status, 503, "{what}:\n{}", resp.raw);
    let retry = resp
        .header("retry-after")
        .unwrap_or_else(|| panic!("{what}: no Retry-After:\n{}", resp.raw));
    assert!(
        retry.parse::<u64>().is_ok_and(|s| s >= 1),
        "{what}: Retry-After {retry:?}"
    );
    assert!(resp.connection_close(), "{what}:\n{}", resp.raw);
    assert_eq!(ended, Ended::Eof, "{what}: the refusal ends with FIN");
}

#[tokio::test]
async fn max_connections_refuses_a_third_connection_with_503() {
    let echo = backends::echo().await;
    let gw = Gateway::start(&config(&echo, "max_connections = 2", "")).await;
    let mut a = ops::ws(&gw.url("/echo")).await;
    let mut b = ops::ws(&gw.url("/echo")).await;
    ops::echo(&mut a, "a").await;
    ops::echo(&mut b, "b").await;

    assert_busy(gw.addr(), "/echo", "third connection").await;
    gw.wait_for_log("connection refused", WAIT).await;
    let m = ops::metrics(gw.admin(), None).await;
    assert_eq!(
        m.value("wsgate_connections_refused_total", &[]),
        1.0,
        "{}",
        m.text
    );
    assert!(
        gw.logs().contains("status=503"),
        "refusal logged with its status:\n{}",
        gw.logs()
    );
    // The open sessions are untouched.
    ops::echo(&mut a, "still a").await;
    ops::echo(&mut b, "still b").await;

    // Room again once a session has ended (the refused connection holds no place either).
    ops::close(b).await;
    ops::wait_connections_open(gw.admin(), 1).await;
    let mut c = ops::ws(&gw.url("/echo")).await;
    ops::echo(&mut c, "c").await;
    assert_busy(gw.addr(), "/echo", "third connection again").await;
    ops::close(a).await;
    ops::close(c).await;
}

/// Connect from a given loopback source address.
async fn ws_from(source: &str, gw: &Gateway, path: &str) -> Result<ops::Ws, u16> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let tcp: TcpStream = tokio::time::timeout(WAIT, socket.connect(gw.addr()))
        .await
        .expect("connect timed out")
        .expect("connect");
    let url = gw.url(path);
    match tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp)),
    )
    .await
    .expect("handshake timed out")
    {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("handshake failed: {e}"),
    }
}

#[tokio::test]
async fn max_connections_per_ip_refuses_a_second_connection_from_the_same_address() {
    let echo = backends::echo().await;
    let gw = Gateway::start(&config(&echo, "max_connections_per_ip = 1", "")).await;
    let mut first = ops::ws(&gw.url("/echo")).await;
    ops::echo(&mut first, "first").await;

    // Both from 127.0.0.1: refused.
    assert_busy(gw.addr(), "/echo", "second connection from 127.0.0.1").await;
    // Another address is counted on its own.
    let mut other = ws_from("127.0.0.3", &gw, "/echo")
        .await
        .expect("a connection from 127.0.0.3 is admitted");
    ops::echo(&mut other, "other").await;
    assert_eq!(ws_from("127.0.0.3", &gw, "/echo").await.err(), Some(503));

    ops::echo(&mut first, "first again").await;
    ops::close(first).await;
    ops::wait_connections_open(gw.admin(), 1).await;
    let mut again = ops::ws(&gw.url("/echo")).await;
    ops::echo(&mut again, "again").await;
    ops::close(again).await;
    ops::close(other).await;
}

#[tokio::test]
async fn route_max_sessions_refuses_while_full_and_admits_after_a_close() {
    let echo = backends::echo().await;
    let gw = Gateway::start(&config(&echo, "", "max_sessions = 1")).await;
    let mut first = ops::ws(&gw.url("/one")).await;
    ops::echo(&mut first, "first").await;

    assert_busy(gw.addr(), "/one", "second session on /one").await;
    gw.wait_for_log("max_sessions", WAIT).await;
    // Other routes are not limited by it.
    let mut elsewhere = ops::ws(&gw.url("/echo")).await;
    ops::echo(&mut elsewhere, "elsewhere").await;
    ops::echo(&mut first, "first still").await;

    ops::close(first).await;
    // The route slot is released when the session task ends, just before its connection.
    ops::wait_connections_open(gw.admin(), 1).await;
    let mut next = ops::ws(&gw.url("/one")).await;
    ops::echo(&mut next, "next").await;
    assert_busy(gw.addr(), "/one", "second session on /one again").await;
    ops::close(next).await;
    ops::close(elsewhere).await;
}

/// Under `ulimit -n 40`, many more connections than descriptors: accepts fail, the loop logs
/// the backoff warning and waits instead of spinning, and once the connections are gone a new
/// client upgrades and exchanges data.
#[tokio::test]
async fn accept_loop_survives_running_out_of_file_descriptors() {
    const HELD: usize = 80;
    let echo = backends::echo().await;
    let gw = Gateway::start_with(
        &config(&echo, "", ""),
        Opts {
            fd_limit: Some(40),
            ..Opts::default()
        },
    )
    .await;
    let mut ws = ops::ws(&gw.url("/echo")).await;
    ops::echo(&mut ws, "before").await;
    ops::close(ws).await;
    let cpu_start = gw.cpu_time();

    // Completed by the kernel (listen backlog) whether or not the gateway can accept them.
    let mut held = Vec::new();
    for _ in 0..HELD {
        let s = tokio::time::timeout(WAIT, TcpStream::connect(gw.addr()))
            .await
            .expect("connect timed out")
            .expect("connect");
        held.push(s);
    }
    gw.wait_for_log("accept failed; backing off", WAIT).await;

    // No descriptor to spare: an upgrade now gets no 101.
    let attempt = tokio::time::timeout(
        Duration::from_secs(1),
        tokio_tungstenite::connect_async(gw.url("/echo")),
    )
    .await;
    assert!(
        !matches!(attempt, Ok(Ok(_))),
        "an upgrade succeeded while the gateway had no descriptors left"
    );

    // Stay exhausted for a while: the measurement window for spinning.
    let window = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let warnings = gw.count("accept failed; backing off");
    let cpu = gw.cpu_time() - cpu_start;
    drop(held);

    // A new client gets through once the descriptors are released.
    let mut ws = ops::ws(&gw.url("/echo")).await;
    ops::echo(&mut ws, "after exhaustion").await;
    ops::close(ws).await;

    // Doubling from 10 ms up to 1 s makes a handful of warnings in ~2.5 s; a spinning loop
    // makes thousands and burns a CPU for the whole window.
    let exhausted_for = window.elapsed() + Duration::from_secs(1);
    assert!(
        warnings <= 40,
        "{warnings} backoff warnings in about {exhausted_for:?}:\n{}",
        gw.logs()
    );
    assert!(
        cpu < Duration::from_secs(1),
        "the gateway used {cpu:?} of CPU while out of descriptors"
    );
}

/// `tls_handshake_timeout` bounds the TLS handshake on its own, well inside `handshake_timeout`:
/// a client that connects to a TLS listener and never sends a ClientHello is disconnected then.
#[tokio::test]
async fn tls_handshake_timeout_cuts_a_stalled_tls_handshake() {
    let echo = backends::echo().await;
    let dir = tempfile::tempdir().unwrap();
    support::write_cert(dir.path());
    let gw = Gateway::start_with(
        &format!(
            r#"
[[listener]]
bind = "127.0.0.1:0"
tls = {{ cert = "cert.pem", key = "key.pem" }}

[[route]]
path = "/echo"
backend = "{}"

[limits]
handshake_timeout = "20s"
tls_handshake_timeout = "1s"
"#,
            echo.config_addr()
        ),
        Opts {
            dir: Some(dir),
            ..Opts::default()
        },
    )
    .await;
    let mut silent = frames::connect(gw.addr()).await;
    let started = Instant::now();
    let mut rest = Vec::new();
    let ended = frames::read_to_end(&mut silent, &mut rest, WAIT).await;
    let took = started.elapsed();
    assert!(
        rest.is_empty(),
        "sent bytes to a client that said nothing: {rest:?}"
    );
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(5),
        "cut after {took:?} ({ended:?}); tls_handshake_timeout is 1s, handshake_timeout 20s"
    );
}
