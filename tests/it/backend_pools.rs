//! Routes with several backends: failover to the next backend, passive health (a backend that
//! fails `health.failures` connects in a row is skipped for `cooloff`), active health checks,
//! round-robin and least-connections balancing, and 502 when every backend is down. Observed
//! from the client, from backend stubs that count what reaches them, and from /metrics.

use crate::support;
use crate::support::{frames, ops};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{Gateway, Opts, TestGateway};
use ops::{ADMIN_BIND, WAIT};
use support::backends::{self, Backend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

fn config(backends: &[String], route_extra: &str) -> String {
    let list = backends
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"

[admin]
bind = "{ADMIN_BIND}"

[[route]]
path = "/p"
backends = [{list}]
{route_extra}
"#
    )
}

/// A loopback address where a listener was bound and then dropped: connects are refused until
/// [`Revived`] binds it again.
async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// An echo server brought up on a dead backend's address. It tells sessions (connections that
/// carry data) from health checks (connections closed without data).
struct Revived {
    sessions: Arc<AtomicUsize>,
    checks: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Revived {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn revive(addr: SocketAddr) -> Revived {
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("cannot bind {addr} again: {e}"));
    let sessions = Arc::new(AtomicUsize::new(0));
    let checks = Arc::new(AtomicUsize::new(0));
    let (s, c) = (sessions.clone(), checks.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let (s, c) = (s.clone(), c.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut first = true;
                loop {
                    match stream.read(&mut buf).await {
                        Ok(n) if n > 0 => {
                            if first {
                                s.fetch_add(1, Ordering::SeqCst);
                                first = false;
                            }
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        _ => {
                            if first {
                                c.fetch_add(1, Ordering::SeqCst);
                            }
                            let _ = stream.shutdown().await;
                            return;
                        }
                    }
                }
            });
        }
    });
    Revived {
        sessions,
        checks,
        task,
    }
}

fn label(addr: SocketAddr) -> String {
    addr.to_string()
}

async fn metric(admin: SocketAddr, name: &str, backend: &str) -> f64 {
    ops::metrics(admin, None)
        .await
        .value(name, &[("route", "/p"), ("backend", backend)])
}

/// Open a session on /p, check that data flows, close it.
async fn session_roundtrip(url: &str, text: &str) {
    let mut ws = ops::ws(url).await;
    ops::echo(&mut ws, text).await;
    ops::close(ws).await;
}

#[tokio::test]
async fn connects_fail_over_to_the_live_backend() {
    let dead = dead_addr().await;
    let live = backends::echo().await;
    let gw = TestGateway::start(&config(&[label(dead), live.config_addr()], "")).await;

    // Round-robin starts on the dead backend every other session: each of those fails over.
    for i in 0..4 {
        session_roundtrip(&gw.url("/p"), &format!("session {i}")).await;
    }
    assert_eq!(live.connections_made().await, 4);
    let failures = metric(
        gw.admin(),
        "wsgate_backend_connect_failures_total",
        &label(dead),
    )
    .await;
    assert_eq!(failures, 2.0, "two sessions tried the dead backend first");
    assert_eq!(
        metric(
            gw.admin(),
            "wsgate_backend_connect_failures_total",
            &live.config_addr()
        )
        .await,
        0.0
    );
    // Below health.failures (3 by default): still in rotation.
    assert_eq!(
        metric(gw.admin(), "wsgate_backend_up", &label(dead)).await,
        1.0
    );
    assert!(
        gw.logs().contains("backend connect failed"),
        "{}",
        gw.logs()
    );
}

#[tokio::test]
async fn a_backend_failing_in_a_row_is_skipped_for_the_cooloff_then_used_again() {
    const COOLOFF: Duration = Duration::from_secs(3);
    let dead = dead_addr().await;
    let live = backends::echo().await;
    let gw = TestGateway::start(&config(
        &[label(dead), live.config_addr()],
        "[route.health]\nfailures = 2\ncooloff = \"3s\"",
    ))
    .await;
    let dead_label = label(dead);

    // Sessions 1 and 3 try the dead backend first: the second failure takes it out.
    for i in 0..3 {
        session_roundtrip(&gw.url("/p"), &format!("warm-up {i}")).await;
    }
    let down_at = Instant::now();
    gw.wait_for_log("backend skipped", WAIT).await;
    assert_eq!(
        metric(gw.admin(), "wsgate_backend_up", &dead_label).await,
        0.0
    );
    assert_eq!(
        metric(
            gw.admin(),
            "wsgate_backend_connect_failures_total",
            &dead_label
        )
        .await,
        2.0
    );

    // While skipped, nothing tries it: the failure count stays put.
    for i in 0..4 {
        session_roundtrip(&gw.url("/p"), &format!("skipping {i}")).await;
    }
    assert_eq!(
        metric(
            gw.admin(),
            "wsgate_backend_connect_failures_total",
            &dead_label
        )
        .await,
        2.0,
        "connects were attempted to a backend in cool-off"
    );

    // It comes back to life within the cool-off: still nothing reaches it.
    let revived = revive(dead).await;
    for i in 0..4 {
        session_roundtrip(&gw.url("/p"), &format!("cooling {i}")).await;
    }
    let within = down_at.elapsed();
    if within < COOLOFF - Duration::from_millis(500) {
        assert_eq!(
            revived.sessions.load(Ordering::SeqCst) + revived.checks.load(Ordering::SeqCst),
            0,
            "a backend in cool-off got connections ({within:?} after it was skipped)"
        );
    }

    // After the cool-off it is back in rotation.
    let deadline = Instant::now() + COOLOFF + WAIT;
    let mut i = 0;
    while revived.sessions.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the backend never came back after its cool-off:\n{}",
            gw.logs()
        );
        session_roundtrip(&gw.url("/p"), &format!("probe {i}")).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        down_at.elapsed() >= COOLOFF - Duration::from_millis(200),
        "used again after {:?}, before its cool-off of {COOLOFF:?}",
        down_at.elapsed()
    );
    assert_eq!(
        metric(gw.admin(), "wsgate_backend_up", &dead_label).await,
        1.0
    );
    gw.wait_for_log("backend back in rotation", WAIT).await;
}

#[tokio::test]
async fn active_health_checks_take_a_backend_out_and_put_it_back() {
    let dead = dead_addr().await;
    let live = backends::echo().await;
    let gw = TestGateway::start(&config(
        &[label(dead), live.config_addr()],
        "[route.health]\nfailures = 1\ncooloff = \"60s\"\ncheck_interval = \"200ms\"",
    ))
    .await;
    let dead_label = label(dead);
    let b = [("route", "/p"), ("backend", dead_label.as_str())];

    // No session needed: the checks find it down.
    ops::wait_metric(gw.admin(), "wsgate_backend_up", &b, 0.0, WAIT).await;
    for i in 0..3 {
        session_roundtrip(&gw.url("/p"), &format!("while down {i}")).await;
    }
    // Each connect a session tries and fails is logged (health checks are not).
    assert_eq!(
        gw.count("backend connect failed"),
        0,
        "sessions tried a backend the health checks had taken out:\n{}",
        gw.logs()
    );

    // Back up: a check puts it back long before the 60 s cool-off ends.
    let revived = revive(dead).await;
    ops::wait_metric(gw.admin(), "wsgate_backend_up", &b, 1.0, WAIT).await;
    ops::eventually("the revived backend sees a health check", WAIT, || {
        revived.checks.load(Ordering::SeqCst) >= 1
    })
    .await;
    for i in 0..4 {
        session_roundtrip(&gw.url("/p"), &format!("back up {i}")).await;
    }
    assert_eq!(
        revived.sessions.load(Ordering::SeqCst),
        2,
        "round-robin over two live backends"
    );
}

/// Which of `backends` got a new connection since `before` (exactly one must have).
async fn which(backends: &[&Backend], before: &mut [usize]) -> usize {
    let mut hit = None;
    for (i, b) in backends.iter().enumerate() {
        let now = b.connections_made().await;
        if now != before[i] {
            assert_eq!(now, before[i] + 1, "backend {i}");
            assert!(hit.is_none(), "two backends got a connection");
            hit = Some(i);
            before[i] = now;
        }
    }
    hit.expect("no backend got the session")
}

#[tokio::test]
async fn round_robin_spreads_sessions_over_the_backends() {
    let a = backends::echo().await;
    let b = backends::echo().await;
    let gw = TestGateway::start(&config(
        &[a.config_addr(), b.config_addr()],
        "balance = \"round-robin\"",
    ))
    .await;
    let mut open = Vec::new();
    let mut counts = [0usize; 2];
    let mut order = Vec::new();
    for i in 0..6 {
        let mut ws = ops::ws(&gw.url("/p")).await;
        ops::echo(&mut ws, &format!("rr {i}")).await;
        order.push(which(&[&a, &b], &mut counts).await);
        open.push(ws);
    }
    assert_eq!(counts, [3, 3], "order {order:?}");
    assert!(
        order.windows(2).all(|w| w[0] != w[1]),
        "round-robin alternates: {order:?}"
    );
    for ws in open {
        ops::close(ws).await;
    }
}

#[tokio::test]
async fn least_connections_picks_the_backend_with_fewer_open_sessions() {
    let a = backends::echo().await;
    let b = backends::echo().await;
    let gw = TestGateway::start(&config(
        &[a.config_addr(), b.config_addr()],
        "balance = \"least-connections\"",
    ))
    .await;
    let pool = [&a, &b];
    let mut counts = [0usize; 2];
    let mut sessions: Vec<(usize, ops::Ws)> = Vec::new();
    let open = |gw: &TestGateway| {
        let url = gw.url("/p");
        async move {
            let mut ws = ops::ws(&url).await;
            ops::echo(&mut ws, "lc").await;
            ws
        }
    };

    // Three sessions: one backend gets two of them ("busy"), the other one ("quiet").
    for _ in 0..3 {
        let ws = open(&gw).await;
        sessions.push((which(&pool, &mut counts).await, ws));
    }
    let on = |k: usize, s: &[(usize, ops::Ws)]| s.iter().filter(|(i, _)| *i == k).count();
    let busy = if on(0, &sessions) == 2 { 0 } else { 1 };
    let quiet = 1 - busy;
    assert_eq!((on(busy, &sessions), on(quiet, &sessions)), (2, 1));

    // 2 against 1: the next session goes to the quiet backend.
    let ws = open(&gw).await;
    assert_eq!(
        which(&pool, &mut counts).await,
        quiet,
        "2 vs 1 open sessions"
    );
    sessions.push((quiet, ws));

    // Close both sessions on `busy`: now 0 against 2, so the next two both go there (round-robin
    // would alternate).
    let mut closed = 0;
    let mut keep = Vec::new();
    for (k, ws) in sessions {
        if k == busy {
            ops::close(ws).await;
            closed += 1;
        } else {
            keep.push((k, ws));
        }
    }
    gw.wait_for_count("session closed", closed, WAIT).await;
    // The leases are released when the session tasks end, just before their connections.
    ops::wait_connections_open(gw.admin(), keep.len()).await;
    for n in 0..2 {
        let ws = open(&gw).await;
        assert_eq!(
            which(&pool, &mut counts).await,
            busy,
            "session {n} after closing: {} vs 2 open",
            n
        );
        keep.push((busy, ws));
    }
    for (_, ws) in keep {
        ops::close(ws).await;
    }
}

#[tokio::test]
async fn every_backend_down_is_502() {
    let (d1, d2) = (dead_addr().await, dead_addr().await);
    let gw = TestGateway::start(&config(&[label(d1), label(d2)], "")).await;
    assert_eq!(ops::try_ws(&gw.url("/p"), &[]).await.err(), Some(502));
    for d in [d1, d2] {
        assert_eq!(
            metric(
                gw.admin(),
                "wsgate_backend_connect_failures_total",
                &label(d)
            )
            .await,
            1.0,
            "each backend was tried once"
        );
    }
    let m = ops::metrics(gw.admin(), None).await;
    assert_eq!(
        m.value(
            "wsgate_handshakes_total",
            &[("route", "/p"), ("status", "502")]
        ),
        1.0,
        "{}",
        m.text
    );
}

/// When the gateway runs out of its own file descriptors, a backend connect that fails for that
/// reason is the gateway's shortage, not the backend's: the client gets 503 with `Retry-After`,
/// no backend failure is counted, both backends stay in rotation, and the log and
/// `wsgate_local_resource_errors_total` say why.
#[tokio::test]
async fn running_out_of_descriptors_is_503_and_leaves_the_backends_in_rotation() {
    const FD_LIMIT: u32 = 64;
    let a = backends::echo().await;
    let b = backends::echo().await;
    let config = config(
        &[a.config_addr(), b.config_addr()],
        "[route.health]\nfailures = 1\ncooloff = \"60s\"\n\n[limits]\nhandshake_timeout = \"30s\"",
    );
    // A process: it runs under `ulimit -n`.
    let gw = Gateway::start_with(
        &config,
        Opts {
            fd_limit: Some(FD_LIMIT),
            ..Opts::default()
        },
    )
    .await;
    let idle = gw.open_fds();
    session_roundtrip(&gw.url("/p"), "before").await;
    session_roundtrip(&gw.url("/p"), "before, the other backend").await;
    let made = [a.connections_made().await, b.connections_made().await];
    assert_eq!(made, [1, 1]);
    gw.wait_for_open_fds(idle, WAIT).await;

    // An upgrade request missing its last CRLF: accepted, and waiting for the end of its head.
    let request = frames::upgrade_request(gw.addr(), "/p", &[]);
    let (head, last) = request.split_at(request.len() - 2);
    let mut pending = frames::connect(gw.addr()).await;
    pending.write_all(head.as_bytes()).await.unwrap();
    gw.wait_for_open_fds(idle + 1, WAIT).await;
    // Then every descriptor the gateway has left goes to idle connections, and a few more wait
    // in the listen backlog: the next accept fails. Only a few, so that once they are gone the
    // gateway is back where it was at once, with nothing queued that could take descriptors
    // from the sessions after.
    let free = gw.free_fds(FD_LIMIT);
    let mut held = Vec::new();
    for _ in 0..free + 3 {
        let s = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(gw.addr()))
            .await
            .expect("connect timed out")
            .expect("connect");
        held.push(s);
    }
    gw.wait_for_log("accept failed; backing off", WAIT).await;
    assert_eq!(gw.free_fds(FD_LIMIT), 0, "{}", gw.logs());

    // The request completes: the backend connect has no descriptor.
    pending.write_all(last.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    frames::read_to_end(&mut pending, &mut out, WAIT).await;
    let (resp, _) = frames::parse_response(&out).unwrap_or_else(|| {
        panic!(
            "no answer: {:?}\n{}",
            String::from_utf8_lossy(&out),
            gw.logs()
        )
    });
    assert_eq!(resp.status, 503, "{}\n{}", resp.raw, gw.logs());
    assert!(
        resp.header("retry-after")
            .is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s >= 1)),
        "{}",
        resp.raw
    );
    // The refusal's access line may be written just after the response went out.
    let logs = gw.wait_for_log("handshake refused", WAIT).await;
    assert!(
        logs.contains("the gateway is out of a local resource"),
        "{logs}"
    );
    assert!(
        logs.lines().any(|l| l.contains("handshake refused")
            && l.contains("status=503")
            && l.contains("gateway out of file descriptors")),
        "{logs}"
    );
    assert!(!logs.contains("backend connect failed"), "{logs}");
    assert!(!logs.contains("backend skipped"), "{logs}");

    // The connections go, the queued ones are accepted and closed: the gateway is back to its
    // idle descriptors.
    drop(held);
    drop(pending);
    gw.wait_for_open_fds(idle, WAIT).await;
    let m = ops::metrics(gw.admin(), None).await;
    for backend in [a.config_addr(), b.config_addr()] {
        let labels = [("route", "/p"), ("backend", backend.as_str())];
        assert_eq!(
            m.value("wsgate_backend_connect_failures_total", &labels),
            0.0,
            "{}",
            m.text
        );
        assert_eq!(m.value("wsgate_backend_up", &labels), 1.0, "{}", m.text);
    }
    assert!(
        m.value(
            "wsgate_local_resource_errors_total",
            &[("kind", "file_descriptors")]
        ) >= 1.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.value(
            "wsgate_handshakes_total",
            &[("route", "/p"), ("status", "503")]
        ),
        1.0,
        "{}",
        m.text
    );

    // Both backends still take sessions, in turn.
    session_roundtrip(&gw.url("/p"), "after").await;
    session_roundtrip(&gw.url("/p"), "after, the other backend").await;
    assert_eq!(
        [a.connections_made().await, b.connections_made().await],
        [2, 2]
    );
}
