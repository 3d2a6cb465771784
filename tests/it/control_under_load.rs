//! Control events on busy sessions: a backend that always has data ready (it streams as fast as
//! the gateway takes it) and a client that reads slowly must not keep any control event from
//! taking effect. Shutdown, an operator's close, credential expiry, the client's Close and the
//! close deadline, the keepalive deadline and the write deadline each end such a session with
//! the right code, promptly, and the flood stops: the client receives little more than what was
//! already in flight when the event came.
//!
//! The client's receive buffer is made small before it connects, so that the bytes in flight
//! (socket buffers on both sides) stay small and what the client sees reflects what the gateway
//! does.

use crate::support;
use crate::support::{auth, frames, ops};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{Gateway, Opts};
use frames::{parse_server_frame, read_response_head, upgrade_request, OP_BINARY, OP_CLOSE};
use ops::ADMIN_BIND;
use support::backends::{self, Flood};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;

/// How much data the client may still receive after an event: what was in flight in the
/// socket buffers (kept small by the client's receive buffer) plus the frame in progress.
/// Without the fix the flood goes on without end.
const MAX_AFTER_EVENT_BYTES: u64 = 2 * 1024 * 1024;
/// A generous bound for "promptly" in a shared test machine: the events are due at once (or at
/// a deadline of about a second), and before the fix they never took effect at all.
const EVENT_LIMIT: Duration = Duration::from_secs(6);
/// The client's receive buffer.
const CLIENT_RCVBUF_BYTES: u32 = 32 * 1024;
/// The slow client reads this much at a time, with a pause between reads.
const READ_CHUNK_BYTES: usize = 16 * 1024;
const READ_PAUSE: Duration = Duration::from_millis(5);
const HS_SECRET: &str = "test-only-hs256-secret-for-wsgate-load-tests-0123456789";

/// How a slow client's session ended.
#[derive(Debug)]
struct Ended {
    /// The Close code, or `None` when the connection ended without a Close frame.
    close: Option<u16>,
    /// Data bytes received in all.
    total: u64,
    /// When the end was seen.
    at: Instant,
}

/// A client that reads slowly and counts what it gets, until a Close or the end of the
/// connection.
struct SlowClient {
    received: Arc<AtomicU64>,
    task: JoinHandle<Ended>,
    write: OwnedWriteHalf,
}

impl SlowClient {
    async fn connect(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> SlowClient {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(CLIENT_RCVBUF_BYTES).unwrap();
        let mut stream = socket.connect(addr).await.expect("connect");
        stream
            .write_all(upgrade_request(addr, path, extra).as_bytes())
            .await
            .unwrap();
        let (resp, buf) = read_response_head(&mut stream).await;
        assert_eq!(resp.status, 101, "{}", resp.raw);
        let (mut read, write) = stream.into_split();
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let task = tokio::spawn(async move {
            let mut buf = buf;
            let mut chunk = vec![0u8; READ_CHUNK_BYTES];
            loop {
                while let Some((f, used)) = parse_server_frame(&buf) {
                    buf.drain(..used);
                    match f.opcode {
                        OP_BINARY => {
                            counter.fetch_add(f.payload.len() as u64, Ordering::SeqCst);
                        }
                        OP_CLOSE => {
                            return Ended {
                                close: f.close_code(),
                                total: counter.load(Ordering::SeqCst),
                                at: Instant::now(),
                            }
                        }
                        _ => {}
                    }
                }
                match read.read(&mut chunk).await {
                    Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => {
                        return Ended {
                            close: None,
                            total: counter.load(Ordering::SeqCst),
                            at: Instant::now(),
                        }
                    }
                }
                tokio::time::sleep(READ_PAUSE).await;
            }
        });
        SlowClient {
            received,
            task,
            write,
        }
    }

    /// Wait until the flood is running: the client has received at least `n` bytes.
    async fn wait_streaming(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.received.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "the flood never reached the client"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Bytes received so far.
    fn mark(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// How the session ended, within `limit` of `since`.
    async fn ended(self, since: Instant, limit: Duration) -> Ended {
        let left = (since + limit).saturating_duration_since(Instant::now());
        let task = self.task;
        let ended = tokio::time::timeout(left, task).await.unwrap_or_else(|_| {
            panic!("the session did not end within {limit:?} of the event (still streaming)")
        });
        drop(self.write);
        ended.unwrap()
    }
}

/// Assert the session ended with `code` (or without a Close for `None`), not before the event
/// (a 50 ms allowance for the two clocks), having received at most [`MAX_AFTER_EVENT_BYTES`]
/// after `mark`.
fn assert_prompt(ended: &Ended, code: Option<u16>, mark: u64, event: Instant) {
    assert_eq!(ended.close, code, "{ended:?}");
    let after = ended.total - mark;
    assert!(
        after <= MAX_AFTER_EVENT_BYTES,
        "{after} bytes arrived after the event: the flood went on"
    );
    assert!(
        ended.at + Duration::from_millis(50) >= event,
        "ended {:?} before the event",
        event - ended.at
    );
}

fn config(flood: &Flood, limits: &str, route_extra: &str) -> String {
    format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
[admin]
bind = "{ADMIN_BIND}"
[[route]]
path = "/flood"
backend = "{}"
{route_extra}
[limits]
ping_interval = "off"
{limits}
"#,
        flood.backend.config_addr()
    )
}

async fn flood() -> Flood {
    backends::flood(64 * 1024, Duration::from_secs(3600)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_closes_every_flooded_session_with_1001_and_exits_without_waiting_for_the_grace() {
    let flood = flood().await;
    let mut gw = Gateway::start(&config(&flood, "shutdown_grace = \"60s\"", "")).await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(SlowClient::connect(gw.addr(), "/flood", &[]).await);
    }
    for c in &clients {
        c.wait_streaming(256 * 1024).await;
    }
    let marks: Vec<u64> = clients.iter().map(SlowClient::mark).collect();
    let event = Instant::now();
    gw.signal("TERM");
    for (c, mark) in clients.into_iter().zip(marks) {
        let ended = c.ended(event, EVENT_LIMIT).await;
        assert_prompt(&ended, Some(1001), mark, event);
    }
    // Every session finished its closing handshake (the clients dropped their connections), so
    // the process does not wait for shutdown_grace (60 s).
    let status = gw.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
    assert!(
        !gw.logs().contains("cutting them"),
        "sessions were cut at shutdown_grace:\n{}",
        gw.logs()
    );
}

#[tokio::test]
async fn an_operator_close_reaches_a_flooded_session_at_once() {
    let flood = flood().await;
    let gw = Gateway::start(&config(&flood, "", "")).await;
    let c = SlowClient::connect(gw.addr(), "/flood", &[]).await;
    c.wait_streaming(256 * 1024).await;
    let list = ops::http(gw.admin(), "GET", "/sessions", None).await;
    let sessions: serde_json::Value = serde_json::from_str(&list.body).unwrap();
    let id = sessions[0]["id"].as_u64().expect("session id");
    let mark = c.mark();
    let event = Instant::now();
    let del = ops::http(gw.admin(), "DELETE", &format!("/sessions/{id}"), None).await;
    assert_eq!(del.status, 202);
    let ended = c.ended(event, EVENT_LIMIT).await;
    assert_prompt(&ended, Some(1008), mark, event);
}

#[tokio::test]
async fn a_client_close_on_a_flooded_session_is_answered_at_close_timeout() {
    let flood = flood().await;
    let gw = Gateway::start(&config(&flood, "close_timeout = \"1s\"", "")).await;
    let mut c = SlowClient::connect(gw.addr(), "/flood", &[]).await;
    c.wait_streaming(256 * 1024).await;
    // The backend gets a FIN but goes on streaming: the gateway delivers what comes for at most
    // close_timeout, then answers the Close.
    let event = Instant::now();
    c.write
        .write_all(&frames::close(Some(4000), "bye"))
        .await
        .unwrap();
    let ended = c.ended(event, EVENT_LIMIT).await;
    assert_eq!(ended.close, Some(4000), "the client's code is echoed");
    assert!(ended.at - event >= Duration::from_secs(1));
    gw.wait_for_log("closed_by=client", Duration::from_secs(15))
        .await;
}

#[tokio::test]
async fn an_expired_credential_ends_a_flooded_session_with_1008() {
    let flood = flood().await;
    let route = r#"[route.auth]
type = "jwt"
token_from = "bearer"
algorithms = ["HS256"]
secret_env = "WSGATE_TEST_SECRET"
leeway = "0s""#;
    let gw = Gateway::start_with(
        &config(&flood, "", route),
        Opts {
            env: vec![("WSGATE_TEST_SECRET".into(), HS_SECRET.into())],
            ..Opts::default()
        },
    )
    .await;
    let exp_secs = auth::now() + 3;
    let token = auth::hs256(HS_SECRET.as_bytes()).sign(&auth::claims_with(
        "alice",
        "exp",
        serde_json::json!(exp_secs),
    ));
    let bearer = format!("Bearer {token}");
    let c = SlowClient::connect(gw.addr(), "/flood", &[("Authorization", &bearer)]).await;
    c.wait_streaming(256 * 1024).await;
    let expiry = std::time::UNIX_EPOCH + Duration::from_secs(exp_secs);
    let until_expiry = expiry
        .duration_since(std::time::SystemTime::now())
        .expect("the token expired before the flood started");
    // Bytes may arrive until the expiry: count from there.
    let event = Instant::now() + until_expiry;
    tokio::time::sleep_until(event.into()).await;
    let mark = c.mark();
    let ended = c.ended(event, EVENT_LIMIT).await;
    assert_prompt(&ended, Some(1008), mark, event);
}

#[tokio::test]
async fn a_client_that_never_answers_keepalive_is_cut_while_the_backend_floods() {
    let flood = flood().await;
    let gw = Gateway::start(&config(
        &flood,
        "",
        "[route.limits]\nping_interval = \"1s\"\npong_timeout = \"1s\"",
    ))
    .await;
    let c = SlowClient::connect(gw.addr(), "/flood", &[]).await;
    let event = Instant::now();
    c.wait_streaming(64 * 1024).await;
    // The client reads but never sends anything (no Pong): cut without a Close after about
    // ping_interval + pong_timeout.
    let ended = c.ended(event, EVENT_LIMIT).await;
    assert_eq!(ended.close, None, "{ended:?}");
    gw.wait_for_log("pong_timeout", Duration::from_secs(15))
        .await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_at_write_timeout_while_the_backend_floods() {
    let flood = flood().await;
    let gw = Gateway::start(&config(&flood, "write_timeout = \"1s\"", "")).await;
    // A client that reads nothing at all.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(CLIENT_RCVBUF_BYTES).unwrap();
    let mut stream = socket.connect(gw.addr()).await.unwrap();
    stream
        .write_all(upgrade_request(gw.addr(), "/flood", &[]).as_bytes())
        .await
        .unwrap();
    let (resp, _) = read_response_head(&mut stream).await;
    assert_eq!(resp.status, 101);
    gw.wait_for_log("client stopped reading (write_timeout)", EVENT_LIMIT)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_sessions_keep_working_beside_a_flooded_one() {
    let flood = flood().await;
    let echo = backends::echo().await;
    let gw = Gateway::start(&format!(
        r#"{}
[[route]]
path = "/echo"
backend = "{}"
"#,
        config(&flood, "", ""),
        echo.config_addr()
    ))
    .await;
    let c = SlowClient::connect(gw.addr(), "/flood", &[]).await;
    c.wait_streaming(256 * 1024).await;
    let mut pingers = Vec::new();
    for i in 0..20u32 {
        let addr = gw.addr();
        pingers.push(tokio::spawn(async move {
            let mut ws = frames::RawWs::connect(addr, "/echo").await;
            for n in 0..50u32 {
                let msg = format!("{i}:{n}");
                ws.send(&frames::text(&msg)).await;
                let f = ws.next_frame().await.expect("echo");
                assert_eq!(f.payload, msg.as_bytes());
            }
        }));
    }
    for p in pingers {
        p.await.unwrap();
    }
    assert!(c.mark() > 0);
}
