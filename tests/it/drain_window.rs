//! A staggered drain (`drain_window`, `drain_close_code`): on SIGTERM the sessions' Close frames
//! go out spread over the window, with the configured code, on every transport; busy sessions
//! lose nothing they were sent before their Close; the process exits within `shutdown_grace`.
//! Without a window every session is closed with 1001 at once, as before. The times asserted on
//! are the shape of the spread, with wide margins, as the clients measure it.

use crate::support;
use crate::support::fallback::{self as fb, Client};
use crate::support::ops::{self, WAIT};

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::backends;
use support::cli::{run_wsgate, stderr};
use support::Gateway;
use tokio_tungstenite::tungstenite::Message;

const BUSY: usize = 100;
const IDLE: usize = 100;
const WINDOW: Duration = Duration::from_secs(3);
const GRACE: Duration = Duration::from_secs(10);

fn config(backend: &str, limits: &str) -> String {
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/echo\"\nbackend = \"{backend}\"\n\n[limits]\n{limits}\n"
    )
}

/// How one client's session ended: the Close code and when (since the signal) it arrived.
#[derive(Debug)]
struct Closed {
    code: u16,
    at: Duration,
}

/// Echo continuously (one message at a time) until the Close; every byte received must be the
/// next byte of what was sent: nothing echoed is lost, duplicated or reordered before the Close,
/// and at most the one message in flight is missing.
async fn busy(
    mut ws: ops::Ws,
    i: usize,
    started: tokio::sync::watch::Receiver<Option<Instant>>,
) -> Closed {
    let mut sent = Vec::new();
    let mut got = Vec::new();
    for seq in 0u64.. {
        let msg = format!("session {i} message {seq};");
        let last_len = msg.len();
        sent.extend_from_slice(msg.as_bytes());
        if ws.send(Message::text(msg)).await.is_err() {
            break;
        }
        // Read until this message is back whole, or the Close.
        while got.len() < sent.len() {
            match tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("no echo or Close in time")
            {
                Some(Ok(Message::Text(t))) => got.extend_from_slice(t.as_bytes()),
                Some(Ok(Message::Binary(b))) => got.extend_from_slice(&b),
                Some(Ok(Message::Close(frame))) => {
                    let at = started
                        .borrow()
                        .expect("a Close before the signal")
                        .elapsed();
                    assert!(sent.starts_with(&got), "session {i}: echoes out of order");
                    assert!(
                        sent.len() - got.len() <= last_len,
                        "session {i}: {} bytes missing, more than the message in flight",
                        sent.len() - got.len()
                    );
                    let code = frame
                        .map(|f| u16::from(f.code))
                        .expect("a Close with a code");
                    ops::finish(&mut ws).await;
                    return Closed { code, at };
                }
                Some(Ok(_)) => {}
                other => panic!("session {i}: connection ended without a Close: {other:?}"),
            }
        }
        assert_eq!(got, sent, "session {i}: echo");
    }
    panic!("session {i}: sending failed before the Close");
}

/// Wait for the Close; no data is expected.
async fn idle(mut ws: ops::Ws, started: tokio::sync::watch::Receiver<Option<Instant>>) -> Closed {
    let frame = tokio::time::timeout(GRACE, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("idle session: expected a Close, got {other:?}"),
            }
        }
    })
    .await
    .expect("no Close within shutdown_grace");
    let at = started
        .borrow()
        .expect("a Close before the signal")
        .elapsed();
    let code = frame
        .map(|f| u16::from(f.code))
        .expect("a Close with a code");
    ops::finish(&mut ws).await;
    Closed { code, at }
}

/// Open `BUSY` echoing and `IDLE` quiet sessions, SIGTERM the gateway, and return how each
/// session ended (busy ones first) and how long the process took to exit.
async fn drain_sessions(limits: &str) -> (Vec<Closed>, Duration, Gateway) {
    let backend = backends::echo().await;
    let mut gw = Gateway::start(&config(&backend.config_addr(), limits)).await;
    let (mark, started) = tokio::sync::watch::channel(None::<Instant>);
    let mut tasks = Vec::new();
    for i in 0..BUSY + IDLE {
        let mut ws = ops::ws(&gw.url("/echo")).await;
        ops::echo(&mut ws, &format!("hello {i}")).await;
        let started = started.clone();
        tasks.push(if i < BUSY {
            tokio::spawn(busy(ws, i, started))
        } else {
            tokio::spawn(idle(ws, started))
        });
    }
    assert_eq!(backend.connections_made().await, BUSY + IDLE);
    // Let the busy sessions run a while.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    mark.send_replace(Some(t0));
    gw.signal("TERM");
    let mut closed = Vec::new();
    for t in tasks {
        closed.push(t.await.expect("client task"));
    }
    let status = gw.wait_exit(GRACE + Duration::from_secs(5)).await;
    let exited = t0.elapsed();
    assert_eq!(status.code(), Some(0), "{}", gw.logs());
    (closed, exited, gw)
}

fn bucket_counts(closed: &[Closed]) -> Vec<usize> {
    let mut buckets = vec![0usize; 16];
    for c in closed {
        let b = usize::try_from(c.at.as_secs())
            .unwrap_or(usize::MAX)
            .min(15);
        buckets[b] += 1;
    }
    buckets
}

#[tokio::test]
async fn sigterm_spreads_close_1012_over_the_window_and_busy_sessions_lose_nothing() {
    let (closed, exited, gw) =
        drain_sessions("drain_window = \"3s\"\ndrain_close_code = 1012\nshutdown_grace = \"10s\"")
            .await;
    let codes: Vec<u16> = closed
        .iter()
        .map(|c| c.code)
        .filter(|c| *c != 1012)
        .collect();
    assert!(codes.is_empty(), "close codes other than 1012: {codes:?}");
    let first = closed.iter().map(|c| c.at).min().unwrap();
    let last = closed.iter().map(|c| c.at).max().unwrap();
    let buckets = bucket_counts(&closed);
    let shape = format!("first {first:?}, last {last:?}, per second {buckets:?}");
    assert!(first < Duration::from_millis(1000), "{shape}");
    assert!(
        last > Duration::from_secs(2),
        "the Close frames were not spread: {shape}"
    );
    assert!(last < WINDOW + Duration::from_secs(2), "{shape}");
    assert!(
        buckets.iter().all(|n| *n <= (BUSY + IDLE) / 2),
        "more than half the Close frames in one second: {shape}"
    );
    // Busy and idle sessions are spread alike (both halves reach late into the window).
    let busy_last = closed[..BUSY].iter().map(|c| c.at).max().unwrap();
    let idle_last = closed[BUSY..].iter().map(|c| c.at).max().unwrap();
    assert!(
        busy_last > Duration::from_secs(1) && idle_last > Duration::from_secs(1),
        "{shape}"
    );
    assert!(exited < GRACE, "exit took {exited:?}");
    let logs = gw.logs();
    assert!(
        !logs.contains("still open after shutdown_grace"),
        "every session finished its closing handshake:\n{logs}"
    );
    let drained = logs
        .lines()
        .filter(|l| l.contains("session closed"))
        .filter(|l| l.contains("close_code=1012") && l.contains("reason=\"gateway shutting down\""))
        .count();
    assert_eq!(drained, BUSY + IDLE, "access lines with 1012:\n{logs}");
}

#[tokio::test]
async fn without_a_window_every_session_gets_1001_at_once() {
    let (closed, exited, _gw) = drain_sessions("shutdown_grace = \"10s\"").await;
    let codes: Vec<u16> = closed
        .iter()
        .map(|c| c.code)
        .filter(|c| *c != 1001)
        .collect();
    assert!(codes.is_empty(), "close codes other than 1001: {codes:?}");
    let last = closed.iter().map(|c| c.at).max().unwrap();
    // All told in the same moment: far less than the 3 s the spread test takes.
    assert!(
        last < Duration::from_millis(1500),
        "last Close after {last:?}"
    );
    assert!(exited < GRACE, "exit took {exited:?}");
}

#[test]
fn a_window_not_shorter_than_the_grace_and_other_codes_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (limits, key) in [
        (
            "drain_window = \"10s\"\nshutdown_grace = \"10s\"",
            "limits.drain_window",
        ),
        ("drain_window = \"30s\"", "limits.drain_window"),
        ("drain_close_code = 1000", "limits.drain_close_code"),
        ("drain_close_code = 1011", "limits.drain_close_code"),
    ] {
        let path = dir.path().join("wsgate.toml");
        std::fs::write(&path, config("127.0.0.1:9", limits)).unwrap();
        let out = run_wsgate(
            [std::ffi::OsStr::new("--config"), path.as_os_str()],
            Duration::from_secs(20),
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{limits}: {err}");
        assert!(err.contains("configuration error"), "{limits}: {err}");
        assert!(
            err.contains(key),
            "{limits}: the message must name {key}: {err}"
        );
    }
    // The two accepted codes, with a window below the grace, load.
    for limits in [
        "drain_window = \"9s\"\ndrain_close_code = 1001",
        "drain_window = \"0s\"\ndrain_close_code = 1012",
    ] {
        let path = dir.path().join("wsgate.toml");
        std::fs::write(&path, config("127.0.0.1:9", limits)).unwrap();
        let out = run_wsgate(
            [
                std::ffi::OsStr::new("check"),
                std::ffi::OsStr::new("--config"),
                path.as_os_str(),
            ],
            Duration::from_secs(20),
        );
        assert_eq!(out.status.code(), Some(0), "{limits}: {}", stderr(&out));
    }
}

/// A fallback session is told at the start of the window (its client cannot open a new request
/// once the gateway stops accepting): its close record carries the drain code and comes before
/// the Close of WebSocket sessions opened earlier but told later in the window.
#[tokio::test]
async fn a_fallback_session_gets_its_close_record_with_the_drain_code_first() {
    const ORIGIN: &str = "https://app.example";
    const WS: usize = 4;
    let backend = backends::echo().await;
    let mut gw = Gateway::start(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/f\"\nbackend = \"{0}\"\nfallback = true\nallowed_origins = [\"{ORIGIN}\"]\n\n[[route]]\npath = \"/echo\"\nbackend = \"{0}\"\n\n[limits]\ndrain_window = \"2s\"\ndrain_close_code = 1012\nshutdown_grace = \"5s\"\n",
        backend.config_addr()
    ))
    .await;
    // WebSocket sessions opened first: in id order they would all be told before it.
    let mut sockets = Vec::new();
    for i in 0..WS {
        let mut ws = ops::ws(&gw.url("/echo")).await;
        ops::echo(&mut ws, &format!("first {i}")).await;
        sockets.push(ws);
    }
    let mut c = Client::new(gw.addr(), "/f").with("origin", ORIGIN);
    assert_eq!(c.open("streaming").await.0, 200);
    let mut stream = c.stream(0).await;
    let mut up = Vec::new();
    fb::record(&mut up, fb::TEXT, b"ping over fallback");
    assert_eq!(c.send(0, up).await, Ok((200, 1)));
    let mut buf = Vec::new();
    let mut got = Vec::new();
    while got.is_empty() {
        got = fb::next_records(stream.body_mut(), &mut buf).await;
    }
    assert_eq!(got[0].1, b"ping over fallback");

    gw.signal("TERM");
    let mut tasks = Vec::new();
    for mut ws in sockets {
        tasks.push(tokio::spawn(async move {
            let code = ops::close_code(&mut ws).await;
            let at = Instant::now();
            ops::finish(&mut ws).await;
            (code, at)
        }));
    }
    let code = loop {
        let recs = fb::next_records(stream.body_mut(), &mut buf).await;
        assert!(
            !recs.is_empty(),
            "the stream ended without a close record\n{}",
            gw.logs()
        );
        if let Some((_, p)) = recs.iter().find(|r| r.0 == fb::CLOSE) {
            break fb::close_code(p);
        }
    };
    let fallback_at = Instant::now();
    assert_eq!(code, Some(1012), "{}", gw.logs());
    let mut ws_closes = Vec::new();
    for t in tasks {
        ws_closes.push(t.await.expect("client task"));
    }
    assert!(ws_closes.iter().all(|(c, _)| *c == 1012), "{ws_closes:?}");
    let last_ws = ws_closes.iter().map(|(_, at)| *at).max().unwrap();
    assert!(
        fallback_at < last_ws,
        "the fallback session was told after every WebSocket session"
    );
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", gw.logs());
    let logs = gw.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("session closed") && l.contains("transport=\"streaming\""))
        .unwrap_or_else(|| panic!("no access line of the fallback session:\n{logs}"));
    assert!(line.contains("close_code=1012"), "{line}");
}
