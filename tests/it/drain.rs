//! Graceful drain on SIGTERM: every session gets Close 1001, every backend connection an
//! orderly FIN (not a reset), the listener stops accepting, and the process exits 0 within
//! `shutdown_grace` (cutting what is left when the grace runs out).

use crate::support;
use crate::support::{frames, ops};

use std::time::{Duration, Instant};

use crate::support::Gateway;
use frames::{RawWs, OP_CLOSE};
use ops::WAIT;
use support::backends::Backend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How a backend connection ended, as the backend saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Read returned 0: the gateway shut its write side (FIN).
    Fin,
    /// A read failed (a reset, typically).
    ReadError(std::io::ErrorKind),
    /// Echoing failed.
    WriteError(std::io::ErrorKind),
}

/// An echo backend that reports how each of its connections ended.
async fn recording_echo() -> (Backend, mpsc::UnboundedReceiver<End>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let backend = Backend::spawn(move |mut s: TcpStream| {
        let tx = tx.clone();
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            let end = loop {
                match s.read(&mut buf).await {
                    Ok(0) => break End::Fin,
                    Ok(n) => {
                        if let Err(e) = s.write_all(&buf[..n]).await {
                            break End::WriteError(e.kind());
                        }
                    }
                    Err(e) => break End::ReadError(e.kind()),
                }
            };
            if end == End::Fin {
                let _ = s.shutdown().await;
            }
            let _ = tx.send(end);
        }
    })
    .await;
    (backend, rx)
}

fn config(backend: &Backend, limits: &str) -> String {
    format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"

[[route]]
path = "/echo"
backend = "{}"

[limits]
{limits}
"#,
        backend.config_addr()
    )
}

async fn ends(rx: &mut mpsc::UnboundedReceiver<End>, n: usize) -> Vec<End> {
    let mut out = Vec::new();
    while out.len() < n {
        let e = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {n} backend connections ended: {out:?}",
                    out.len()
                )
            })
            .expect("stub gone");
        out.push(e);
    }
    out
}

#[tokio::test]
async fn sigterm_closes_100_sessions_with_1001_backends_see_fin_exit_0() {
    const SESSIONS: usize = 100;
    const GRACE: Duration = Duration::from_secs(5);
    let (backend, mut rx) = recording_echo().await;
    let mut gw = Gateway::start(&config(&backend, "shutdown_grace = \"5s\"")).await;

    let mut clients = Vec::new();
    for i in 0..SESSIONS {
        let mut ws = ops::ws(&gw.url("/echo")).await;
        ops::echo(&mut ws, &format!("session {i}")).await;
        clients.push(ws);
    }
    assert_eq!(backend.connections_made().await, SESSIONS);

    let started = Instant::now();
    gw.signal("TERM");
    let mut tasks = tokio::task::JoinSet::new();
    for mut ws in clients {
        tasks.spawn(async move {
            let code = ops::close_code(&mut ws).await;
            // tungstenite answers the Close while we poll; the gateway then closes TCP.
            ops::finish(&mut ws).await;
            code
        });
    }
    let mut codes = Vec::new();
    while let Some(r) = tasks.join_next().await {
        codes.push(r.expect("client task"));
    }
    assert_eq!(codes.len(), SESSIONS);
    let not_1001: Vec<u16> = codes.iter().copied().filter(|c| *c != 1001).collect();
    assert!(
        not_1001.is_empty(),
        "close codes other than 1001: {not_1001:?}"
    );

    let status = gw.wait_exit(GRACE + Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "exit status; log:\n{}", gw.logs());
    assert!(
        started.elapsed() < GRACE + Duration::from_secs(5),
        "exit took {:?}",
        started.elapsed()
    );
    let logs = gw.logs();
    assert!(logs.contains("shutting down"), "{logs}");
    assert!(
        !logs.contains("still open after shutdown_grace"),
        "every session finished its closing handshake, none should be cut:\n{logs}"
    );

    let ends = ends(&mut rx, SESSIONS).await;
    let not_fin: Vec<&End> = ends.iter().filter(|e| **e != End::Fin).collect();
    assert!(
        not_fin.is_empty(),
        "backend connections that did not end with FIN: {not_fin:?}"
    );
}

/// A client that never answers the Close keeps its session open; the process still exits 0
/// once `shutdown_grace` has passed, and meanwhile the listener accepts nothing new.
#[tokio::test]
async fn sigterm_cuts_what_is_left_after_shutdown_grace() {
    let (backend, mut rx) = recording_echo().await;
    let mut gw = Gateway::start(&config(
        &backend,
        "shutdown_grace = \"2s\"\nclose_timeout = \"30s\"",
    ))
    .await;
    let addr = gw.addr();
    let mut raw = RawWs::connect(addr, "/echo").await;
    raw.send(&frames::text("hold")).await;
    assert_eq!(raw.next_frame().await.expect("echo").payload, b"hold");

    let started = Instant::now();
    gw.signal("TERM");
    let close = raw.next_frame().await.expect("a Close frame");
    assert_eq!(close.opcode, OP_CLOSE, "{close:?}");
    assert_eq!(close.close_code(), Some(1001), "{close:?}");

    // No new connections while draining.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "the listener still accepts connections while draining: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    // We never answer the Close: the grace runs out and the process exits anyway.
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0), "{}", gw.logs());
    assert!(
        took >= Duration::from_millis(1500),
        "exited after {took:?}, before shutdown_grace (2s)"
    );
    assert!(
        gw.logs().contains("still open after shutdown_grace"),
        "{}",
        gw.logs()
    );
    assert_eq!(ends(&mut rx, 1).await, vec![End::Fin]);
}

/// SIGINT drains like SIGTERM.
#[tokio::test]
async fn sigint_drains_like_sigterm() {
    let (backend, mut rx) = recording_echo().await;
    let mut gw = Gateway::start(&config(&backend, "")).await;
    let mut ws = ops::ws(&gw.url("/echo")).await;
    ops::echo(&mut ws, "interrupt me").await;
    gw.signal("INT");
    assert_eq!(ops::close_code(&mut ws).await, 1001);
    ops::finish(&mut ws).await;
    let status = gw.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(0), "{}", gw.logs());
    assert_eq!(ends(&mut rx, 1).await, vec![End::Fin]);
}

/// The access log has one line per session at its end: a session cut when `shutdown_grace` runs
/// out ends too, and is accounted for like any other.
#[tokio::test]
async fn a_session_cut_at_shutdown_grace_still_gets_its_access_line() {
    let (backend, _rx) = recording_echo().await;
    let mut gw = Gateway::start(&config(
        &backend,
        "shutdown_grace = \"1s\"\nclose_timeout = \"30s\"",
    ))
    .await;
    let mut raw = RawWs::connect(gw.addr(), "/echo").await;
    raw.send(&frames::text("accounted")).await;
    assert_eq!(raw.next_frame().await.expect("echo").payload, b"accounted");
    gw.signal("TERM");
    assert_eq!(raw.close_code().await, Some(1001));
    // Never answer the Close: the session is cut when the grace runs out.
    let status = gw.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(0));
    let logs = gw.logs();
    assert!(logs.contains("still open after shutdown_grace"), "{logs}");
    let client = raw.stream.local_addr().unwrap();
    let line = logs
        .lines()
        .find(|l| l.contains("wsgate::access") && l.contains(&format!("client={client}")));
    assert!(
        line.is_some_and(|l| l.contains("bytes_up=9")),
        "no access line for the session cut at shutdown ({client}):\n{logs}"
    );
}
