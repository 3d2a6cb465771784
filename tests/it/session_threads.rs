//! Session threads (`[runtime] session_threads`): after the 101, a session whose client is plain
//! TCP and whose backend is a plain TCP or unix socket moves to a session thread's event loop.
//! These tests see it from outside: the threads by name in /proc, the session thread doing the
//! work (it blocks in its event loop between messages: its voluntary context switches grow with
//! the messages), what moves and what does not (TLS), and `session_threads = 0`.
//!
//! Everything else a session does (limits, control events under load, close codes, Autobahn) is
//! tested through the binary elsewhere, and so through the session threads; integrity.rs runs
//! its random-traffic check on both paths.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

/// Bound on each step of the TLS client.
const WAIT: Duration = Duration::from_secs(10);

use support::backends;
use support::frames::{self, RawWs};
use support::Gateway;

/// Messages of the ping-pong that shows which thread does the work.
const MESSAGES: usize = 200;

fn config(backend: &str, runtime: &str) -> String {
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/e\"\nbackend = \"{backend}\"\n\n[runtime]\n{runtime}\n"
    )
}

/// Voluntary context switches of the gateway's threads named `prefix` (a thread blocking in its
/// event loop makes one each time).
fn switches(gw: &Gateway, prefix: &str) -> u64 {
    let dir = format!("/proc/{}/task", gw.pid());
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {dir}: {e}"))
        .filter_map(|t| {
            let path = t.ok()?.path();
            let name = std::fs::read_to_string(path.join("comm")).ok()?;
            if !name.starts_with(prefix) {
                return None;
            }
            let status = std::fs::read_to_string(path.join("status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Send `n` messages one at a time, each answered before the next.
async fn ping_pong(addr: SocketAddr, n: usize) {
    let mut ws = RawWs::connect(addr, "/e").await;
    for i in 0..n {
        let msg = format!("message {i}");
        ws.send(&frames::binary(msg.as_bytes())).await;
        let got = ws.next_frame().await.expect("echo");
        assert_eq!(got.payload, msg.as_bytes(), "message {i}");
    }
    ws.send(&frames::close(Some(1000), "")).await;
    let close = ws.next_frame().await.expect("close");
    assert_eq!(close.close_code(), Some(1000));
}

/// How much the session threads' switches grew over a ping-pong of [`MESSAGES`].
async fn session_thread_work(gw: &Gateway) -> u64 {
    let before = switches(gw, "wsgate-session");
    ping_pong(gw.addr(), MESSAGES).await;
    switches(gw, "wsgate-session") - before
}

#[tokio::test]
async fn plain_tcp_sessions_run_on_the_session_threads() {
    let echo = backends::echo().await;
    let gw = Gateway::start(&config(&echo.config_addr(), "session_threads = 2")).await;
    assert_eq!(gw.threads_named_settled("wsgate-session", 2).await, 2);
    // Each message wakes the session's loop twice (the client's frame, the backend's answer),
    // and it waits in between: at least one switch per message, with room for batching.
    let work = session_thread_work(&gw).await;
    assert!(
        work >= MESSAGES as u64 / 2,
        "the session threads switched {work} times over {MESSAGES} messages"
    );
}

#[tokio::test]
async fn unix_socket_backends_run_on_the_session_threads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo.sock");
    let server = backends::unix_echo(&path);
    let gw = Gateway::start(&config(
        &format!("unix:{}", path.display()),
        "session_threads = 1",
    ))
    .await;
    let work = session_thread_work(&gw).await;
    assert!(
        work >= MESSAGES as u64 / 2,
        "the session thread switched {work} times over {MESSAGES} messages"
    );
    server.abort();
}

#[tokio::test]
async fn zero_session_threads_keep_sessions_on_the_workers() {
    let echo = backends::echo().await;
    let gw = Gateway::start(&config(&echo.config_addr(), "session_threads = 0")).await;
    assert_eq!(gw.threads_named("wsgate-session"), 0);
    ping_pong(gw.addr(), MESSAGES).await;
}

#[tokio::test]
async fn tls_sessions_stay_on_the_workers() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let echo = backends::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let cert = support::write_cert(dir.path());
    let config = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\ntls = {{ cert = \"cert.pem\", key = \"key.pem\" }}\n\n[[route]]\npath = \"/e\"\nbackend = \"{}\"\n\n[runtime]\nsession_threads = 1\n",
        echo.config_addr()
    );
    let gw = Gateway::start_in(dir, &config).await;
    assert_eq!(gw.threads_named_settled("wsgate-session", 1).await, 1);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(client)).connect(name, tcp),
    )
    .await
    .expect("TLS handshake timed out")
    .expect("TLS handshake");
    let url = format!("wss://localhost:{}/e", gw.addr().port());
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, tls))
        .await
        .expect("upgrade timed out")
        .expect("upgrade");

    let before = switches(&gw, "wsgate-session");
    for i in 0..MESSAGES {
        let msg = format!("message {i}").into_bytes();
        ws.send(Message::binary(msg.clone())).await.unwrap();
        let got = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("echo timed out")
            .expect("echo")
            .expect("echo");
        assert_eq!(got, Message::binary(msg), "message {i}");
    }
    // The idle session thread does not wake: the TLS session's messages went elsewhere.
    let work = switches(&gw, "wsgate-session") - before;
    assert!(
        work < MESSAGES as u64 / 4,
        "the session thread switched {work} times over {MESSAGES} TLS messages"
    );
    ws.close(None).await.unwrap();
}

/// A backend that answers and closes at once: its bytes and its FIN are both queued before the
/// session reaches its thread (one readiness event for both). The client gets the bytes, then
/// the Close for the backend's end (1000), not a session left waiting for an event that never
/// comes.
#[tokio::test]
async fn a_backend_that_answers_and_closes_at_once_is_seen_to_close() {
    let bye = backends::fin_after(b"bye").await;
    let gw = Gateway::start(&config(&bye.config_addr(), "session_threads = 1")).await;
    for _ in 0..20 {
        let mut ws = RawWs::connect(gw.addr(), "/e").await;
        assert_eq!(ws.next_frame().await.expect("data").payload, b"bye");
        assert_eq!(ws.close_code().await, Some(1000));
    }
}

/// Sessions opened and closed one after the other by a client that sends its Close right after
/// the 101.
const SHORT_SESSIONS: u64 = 40;

/// A session whose client's first word is its Close stays on the worker threads: moving it
/// would cost more than all it does. The session thread is never woken for it (nothing else
/// wakes it), where a session moved there wakes it at least once. The client is answered as
/// usual.
#[tokio::test]
async fn sessions_that_close_at_once_stay_on_the_workers() {
    let echo = backends::echo().await;
    let gw = Gateway::start(&config(&echo.config_addr(), "session_threads = 1")).await;
    let before = switches(&gw, "wsgate-session");
    for _ in 0..SHORT_SESSIONS {
        let mut ws = RawWs::connect(gw.addr(), "/e").await;
        ws.send(&frames::close(Some(1000), "")).await;
        assert_eq!(ws.close_code().await, Some(1000));
    }
    let woken = switches(&gw, "wsgate-session") - before;
    // A slow moment may let a Close arrive after the wait: a few may still move.
    assert!(
        woken < SHORT_SESSIONS / 4,
        "the session thread was woken {woken} times for {SHORT_SESSIONS} sessions that closed at once"
    );
    // A session whose first word is a message still moves.
    assert!(session_thread_work(&gw).await >= MESSAGES as u64 / 2);
}

/// A session in which neither side speaks moves to its session thread after a short wait (it
/// does not wait on the workers for a first word that may never come): the thread is woken for
/// it, and the session still works there. The wait's clock stops after a second without
/// waiting sessions; the next idle session starts it again.
#[tokio::test]
async fn idle_sessions_move_to_the_session_threads() {
    let echo = backends::echo().await;
    let gw = Gateway::start(&config(&echo.config_addr(), "session_threads = 1")).await;
    for round in 0..2 {
        if round == 1 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        let before = switches(&gw, "wsgate-session");
        let mut ws = RawWs::connect(gw.addr(), "/e").await;
        let deadline = std::time::Instant::now() + WAIT;
        while switches(&gw, "wsgate-session") == before {
            assert!(
                std::time::Instant::now() < deadline,
                "an idle session (round {round}) did not reach its session thread within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ws.send(&frames::binary(b"late")).await;
        assert_eq!(ws.next_frame().await.expect("echo").payload, b"late");
        ws.send(&frames::close(Some(1000), "")).await;
        assert_eq!(ws.close_code().await, Some(1000));
    }
}

/// What the session threads should use here: io_uring unless the kernel turned it off
/// (`kernel.io_uring_disabled`, Linux 6.6), or has none.
fn io_uring_expected() -> bool {
    match std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        Ok(v) => v.trim() == "0",
        // No such switch: the loop needs Linux 6.1 (single-issuer rings with deferred task work).
        Err(_) => {
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            let mut parts = release
                .trim()
                .split(['.', '-'])
                .map(|p| p.parse::<u32>().unwrap_or(0));
            (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (6, 1)
        }
    }
}

/// The log line that says how the session threads move bytes.
async fn started_line(gw: &Gateway) -> String {
    let logs = gw.wait_for_log("session threads started", WAIT).await;
    logs.lines()
        .find(|l| l.contains("session threads started"))
        .unwrap_or_default()
        .to_string()
}

/// By default (`session_io = "auto"`) the session threads use io_uring where the kernel allows
/// it, and say which they use; sessions work on them.
#[tokio::test]
async fn the_session_threads_use_io_uring_where_the_kernel_allows_it() {
    let echo = backends::echo().await;
    let gw = Gateway::start(&config(&echo.config_addr(), "session_threads = 1")).await;
    let want = if io_uring_expected() {
        "io_uring"
    } else {
        "epoll"
    };
    let line = started_line(&gw).await;
    assert!(
        line.contains(&format!("io=\"{want}\"")),
        "expected {want}: {line}"
    );
    assert!(session_thread_work(&gw).await >= MESSAGES as u64 / 2);
}

/// `session_io = "epoll"`: the session threads use epoll, and sessions work on them.
#[tokio::test]
async fn session_io_epoll_runs_the_session_threads_on_epoll() {
    let echo = backends::echo().await;
    let gw = Gateway::start(&config(
        &echo.config_addr(),
        "session_threads = 1\nsession_io = \"epoll\"",
    ))
    .await;
    let line = started_line(&gw).await;
    assert!(line.contains("io=\"epoll\""), "{line}");
    assert!(session_thread_work(&gw).await >= MESSAGES as u64 / 2);
}

/// `session_io = "io_uring"` where io_uring can run: it is used. (Where it cannot, the gateway
/// refuses to start, saying why: not testable on a kernel that allows it.)
#[tokio::test]
async fn session_io_io_uring_runs_the_session_threads_on_io_uring() {
    if !io_uring_expected() {
        eprintln!("skipped: io_uring is turned off on this kernel");
        return;
    }
    let echo = backends::echo().await;
    let gw = Gateway::start(&config(
        &echo.config_addr(),
        "session_threads = 2\nsession_io = \"io_uring\"",
    ))
    .await;
    let line = started_line(&gw).await;
    assert!(line.contains("io=\"io_uring\""), "{line}");
    assert!(session_thread_work(&gw).await >= MESSAGES as u64 / 2);
}

/// Sessions on one session thread at once, more than its loop's pool of receive buffers (64).
const CROWD: usize = 200;

/// More sessions than the session thread's receive buffers get their messages in the same
/// instant: the reads that find the pool empty wait for buffers to come back and then go on,
/// and every message's bytes arrive, in order (on io_uring; the same holds on epoll, which has
/// no pool).
/// The last rounds send large messages (40 KiB): a socket whose last read was large reads
/// from the loop's small group of bulk buffers (4), which 200 sessions empty at once, so their
/// reads go on in the main pool.
#[tokio::test]
async fn more_sessions_than_receive_buffers_all_get_their_messages() {
    let echo = backends::echo().await;
    for io in ["auto", "epoll"] {
        let gw = Gateway::start(&config(
            &echo.config_addr(),
            &format!("session_threads = 1\nsession_io = \"{io}\""),
        ))
        .await;
        let mut sessions = Vec::with_capacity(CROWD);
        for _ in 0..CROWD {
            sessions.push(RawWs::connect(gw.addr(), "/e").await);
        }
        for round in 0..5u8 {
            let size = if round < 3 { 4096 } else { 40 * 1024 };
            let messages: Vec<Vec<u8>> = (0..CROWD)
                .map(|i| vec![round.wrapping_add(i as u8); size + i])
                .collect();
            // Every session sends before any reads: the backend's answers arrive together.
            for (ws, msg) in sessions.iter_mut().zip(&messages) {
                ws.send(&frames::binary(msg)).await;
            }
            for (i, (ws, msg)) in sessions.iter_mut().zip(&messages).enumerate() {
                // The raw route makes a message of each chunk the backend wrote: the echo's
                // chunks of a large message come as several.
                let mut got = Vec::with_capacity(msg.len());
                while got.len() < msg.len() {
                    let frame = ws.next_frame_within(WAIT).await;
                    let frame =
                        frame.unwrap_or_else(|| panic!("{io}: session {i} round {round}: no echo"));
                    got.extend_from_slice(&frame.payload);
                }
                assert_eq!(got.len(), msg.len(), "{io}: session {i} round {round}");
                assert!(got == *msg, "{io}: session {i} round {round}: bytes differ");
            }
        }
        for ws in &mut sessions {
            ws.send(&frames::close(Some(1000), "")).await;
        }
        for ws in &mut sessions {
            assert_eq!(ws.close_code().await, Some(1000));
        }
    }
}
