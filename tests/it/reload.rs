//! Reload without a restart: SIGHUP re-reads the configuration (new connections use it, open
//! sessions keep their backend, an invalid file changes nothing), certificates are reloaded
//! when their files change, and the two together never undo each other.

use crate::support;
use crate::support::ops;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{Gateway, Opts};
use futures_util::{SinkExt, StreamExt};
use ops::WAIT;
use rustls::pki_types::{CertificateDer, ServerName};
use support::backends::{self, Conn, Recorder};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

fn route(path: &str, backend: &Recorder) -> String {
    format!(
        "[[route]]\npath = \"{path}\"\nbackend = \"{}\"\n",
        backend.backend.config_addr()
    )
}

const LISTENER: &str = "[[listener]]\nbind = \"127.0.0.1:0\"\n";

/// Send `text` and check that `conn` (the backend connection of this session) received it, with
/// everything it had received before, and that the echo comes back.
async fn through(ws: &mut ops::Ws, conn: &mut Conn, text: &str) {
    let before = conn.received().len();
    ops::echo(ws, text).await;
    let got = conn.wait_for_len(before + text.len()).await;
    assert_eq!(
        &got[before..],
        text.as_bytes(),
        "the session's own backend connection got the bytes"
    );
}

#[tokio::test]
async fn sighup_applies_to_new_sessions_and_open_sessions_keep_their_backend() {
    let mut old_backend = backends::recording_echo().await;
    let mut new_backend = backends::recording_echo().await;
    let mut added_backend = backends::recording_echo().await;
    let mut gw = Gateway::start(&format!(
        "{LISTENER}\n{}\n{}",
        route("/a", &old_backend),
        route("/gone", &old_backend)
    ))
    .await;

    let mut old = ops::ws(&gw.url("/a")).await;
    ops::echo(&mut old, "before").await;
    let mut old_conn = old_backend.accept().await;
    assert_eq!(old_conn.wait_for_len(6).await, b"before");
    assert_eq!(ops::try_ws(&gw.url("/c"), &[]).await.err(), Some(404));
    let mut doomed = ops::ws(&gw.url("/gone")).await;
    let mut doomed_conn = old_backend.accept().await;
    through(&mut doomed, &mut doomed_conn, "route about to go").await;

    // /a now goes to another backend, and /c is new.
    let reloaded = format!(
        "{LISTENER}\n{}\n{}",
        route("/a", &new_backend),
        route("/c", &added_backend)
    );
    std::fs::write(gw.config_path(), &reloaded).unwrap();
    gw.signal("HUP");
    gw.wait_for_log("configuration reloaded", WAIT).await;

    // The open session still talks to the old backend.
    through(&mut old, &mut old_conn, "after reload").await;
    // A new session on /a reaches the new backend; /c works.
    let mut fresh = ops::ws(&gw.url("/a")).await;
    let mut fresh_conn = new_backend.accept().await;
    through(&mut fresh, &mut fresh_conn, "new config").await;
    let mut added = ops::ws(&gw.url("/c")).await;
    let mut added_conn = added_backend.accept().await;
    through(&mut added, &mut added_conn, "added route").await;
    // A route removed by the reload: its open session goes on, new ones find no route.
    through(&mut doomed, &mut doomed_conn, "route removed, session kept").await;
    assert_eq!(ops::try_ws(&gw.url("/gone"), &[]).await.err(), Some(404));
    assert_eq!(
        old_backend.backend.connections_made().await,
        2,
        "nothing new reaches the old backend"
    );

    // Invalid files are refused, one after another, and change nothing.
    let broken = [
        "[[listener]\nbind = ".to_string(),
        format!("{LISTENER}\n[[route]]\npath = \"/a\"\n"),
        format!(
            "[[listener]]\nbind = \"127.0.0.1:1\"\n{}",
            route("/a", &old_backend)
        ),
    ];
    for (i, text) in broken.iter().enumerate() {
        std::fs::write(gw.config_path(), text).unwrap();
        gw.signal("HUP");
        gw.wait_for_count("reload refused", i + 1, WAIT).await;
    }
    assert_eq!(gw.count("configuration reloaded"), 1, "{}", gw.logs());
    assert_eq!(gw.count("listeners changed"), 1, "{}", gw.logs());

    let mut again = ops::ws(&gw.url("/a")).await;
    let mut again_conn = new_backend.accept().await;
    through(&mut again, &mut again_conn, "still the reloaded config").await;
    let mut added2 = ops::ws(&gw.url("/c")).await;
    let mut added2_conn = added_backend.accept().await;
    through(&mut added2, &mut added2_conn, "still there").await;
    through(&mut old, &mut old_conn, "old session unharmed").await;
    through(&mut fresh, &mut fresh_conn, "so is this one").await;
    through(&mut doomed, &mut doomed_conn, "and this one").await;
    assert_eq!(old_backend.backend.connections_made().await, 2);
    assert!(gw.try_exit().is_none(), "SIGHUP must not stop the gateway");

    for ws in [old, fresh, added, again, added2, doomed] {
        ops::close(ws).await;
    }
}

/// A route's open-session count is carried across a reload, even when its backend changes: the
/// new configuration's `max_sessions` counts the sessions opened under the old one.
#[tokio::test]
async fn route_session_count_survives_a_reload() {
    let mut first = backends::recording_echo().await;
    let mut second = backends::recording_echo().await;
    let cfg = |b: &Recorder| {
        format!(
            "{LISTENER}\n[admin]\nbind = \"{}\"\n\n{}max_sessions = 1\n",
            ops::ADMIN_BIND,
            route("/one", b)
        )
    };
    let mut gw = Gateway::start(&cfg(&first)).await;
    let mut open = ops::ws(&gw.url("/one")).await;
    let mut open_conn = first.accept().await;
    through(&mut open, &mut open_conn, "holding the only slot").await;

    std::fs::write(gw.config_path(), cfg(&second)).unwrap();
    gw.signal("HUP");
    gw.wait_for_log("configuration reloaded", WAIT).await;
    assert_eq!(
        ops::try_ws(&gw.url("/one"), &[]).await.err(),
        Some(503),
        "the session opened before the reload still holds the route's only slot"
    );
    through(&mut open, &mut open_conn, "still open").await;

    ops::close(open).await;
    ops::wait_connections_open(gw.admin(), 0).await;
    let mut next = ops::ws(&gw.url("/one")).await;
    let mut next_conn = second.accept().await;
    through(&mut next, &mut next_conn, "slot free again").await;
    ops::close(next).await;
    assert!(gw.try_exit().is_none());
}

/// A route removed by one reload and added back by another still counts the sessions opened on
/// it before: `max_sessions` is per route path, across configuration generations.
#[tokio::test]
async fn route_session_count_survives_the_route_being_removed_and_added_back() {
    let mut backend = backends::recording_echo().await;
    let other = backends::recording_echo().await;
    let admin = format!("[admin]\nbind = \"{}\"\n", ops::ADMIN_BIND);
    let with = format!(
        "{LISTENER}\n{admin}\n{}max_sessions = 2\n",
        route("/r", &backend)
    );
    let without = format!("{LISTENER}\n{admin}\n{}", route("/other", &other));
    let mut gw = Gateway::start(&with).await;
    let mut open = Vec::new();
    for i in 0..2 {
        let mut ws = ops::ws(&gw.url("/r")).await;
        let mut conn = backend.accept().await;
        through(&mut ws, &mut conn, &format!("session {i}")).await;
        open.push((ws, conn));
    }
    assert_eq!(ops::try_ws(&gw.url("/r"), &[]).await.err(), Some(503));

    std::fs::write(gw.config_path(), &without).unwrap();
    gw.signal("HUP");
    gw.wait_for_count("configuration reloaded", 1, WAIT).await;
    assert_eq!(ops::try_ws(&gw.url("/r"), &[]).await.err(), Some(404));
    std::fs::write(gw.config_path(), &with).unwrap();
    gw.signal("HUP");
    gw.wait_for_count("configuration reloaded", 2, WAIT).await;

    for attempt in 0..3 {
        assert_eq!(
            ops::try_ws(&gw.url("/r"), &[]).await.err(),
            Some(503),
            "attempt {attempt}: the two sessions opened before the route was removed still fill it"
        );
    }
    for (ws, conn) in open.iter_mut() {
        through(ws, conn, "still open").await;
    }
    for (ws, _) in open {
        ops::close(ws).await;
    }
    ops::wait_connections_open(gw.admin(), 0).await;
    let mut next = ops::ws(&gw.url("/r")).await;
    let mut next_conn = backend.accept().await;
    through(&mut next, &mut next_conn, "room again").await;
    ops::close(next).await;
    assert!(gw.try_exit().is_none());
}

/// `[runtime]` is fixed at start: a reload that changes it says so, applies the rest of the file,
/// and keeps the running threads.
#[tokio::test]
async fn runtime_changes_wait_for_a_restart() {
    let mut backend = backends::recording_echo().await;
    let cfg = |threads: usize, path: &str| {
        format!(
            "{LISTENER}
{}
[runtime]
worker_threads = {threads}
",
            route(path, &backend)
        )
    };
    let gw = Gateway::start(&cfg(1, "/before")).await;
    let workers = || gw.threads_named("wsgate-worker");
    assert_eq!(gw.threads_named_settled("wsgate-worker", 1).await, 1);

    std::fs::write(gw.config_path(), cfg(3, "/after")).unwrap();
    gw.signal("HUP");
    let logs = gw.wait_for_log("configuration reloaded", WAIT).await;
    assert!(logs.contains("[runtime] changes need a restart"), "{logs}");
    assert_eq!(workers(), 1, "the running threads stay");
    // The rest of the file took effect.
    assert_eq!(ops::try_ws(&gw.url("/before"), &[]).await.err(), Some(404));
    let mut ws = ops::ws(&gw.url("/after")).await;
    let mut conn = backend.accept().await;
    through(&mut ws, &mut conn, "served after the reload").await;
    ops::close(ws).await;
}

/// A reload that leaves a route's backends alone keeps their health state: a backend skipped
/// after failures stays skipped.
#[tokio::test]
async fn reload_keeps_the_health_state_of_unchanged_backends() {
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let live = backends::recording_echo().await;
    let extra = backends::recording_echo().await;
    let cfg = |more: &str| {
        format!(
            "{LISTENER}\n[admin]\nbind = \"{}\"\n\n[[route]]\npath = \"/p\"\nbackends = [\"{dead}\", \"{}\"]\n[route.health]\nfailures = 1\ncooloff = \"60s\"\n\n{more}",
            ops::ADMIN_BIND,
            live.backend.config_addr()
        )
    };
    let mut gw = Gateway::start(&cfg("")).await;
    let up = [("route", "/p"), ("backend", &dead.to_string() as &str)];
    let mut ws = ops::ws(&gw.url("/p")).await;
    ops::echo(&mut ws, "fails over").await;
    ops::close(ws).await;
    gw.wait_for_log("backend skipped", WAIT).await;
    let m = ops::metrics(gw.admin(), None).await;
    assert_eq!(m.value("wsgate_backend_up", &up), 0.0, "{}", m.text);

    // Same backends for /p, one more route.
    std::fs::write(gw.config_path(), cfg(&route("/extra", &extra))).unwrap();
    gw.signal("HUP");
    gw.wait_for_log("configuration reloaded", WAIT).await;
    let m = ops::metrics(gw.admin(), None).await;
    assert_eq!(m.value("wsgate_backend_up", &up), 0.0, "{}", m.text);
    for i in 0..4 {
        let mut ws = ops::ws(&gw.url("/p")).await;
        ops::echo(&mut ws, &format!("after reload {i}")).await;
        ops::close(ws).await;
    }
    // A connect to the skipped backend would be logged before its session's access line: wait
    // for the access lines of all five sessions.
    let logs = gw.wait_for_count("session closed", 5, WAIT).await;
    assert_eq!(
        logs.lines()
            .filter(|l| l.contains("backend connect failed"))
            .count(),
        1,
        "the skipped backend was tried again after the reload:\n{logs}"
    );
    assert!(gw.try_exit().is_none());
}

// ----- certificates -----

/// A TLS connection that trusts only `cert`; returns the stream and the certificate served.
async fn tls_connect(
    addr: std::net::SocketAddr,
    cert: &CertificateDer<'static>,
) -> std::io::Result<(
    tokio_rustls::client::TlsStream<TcpStream>,
    CertificateDer<'static>,
)> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")?;
    let tls = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .expect("TLS handshake timed out")?;
    let served = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a server certificate")
        .clone()
        .into_owned();
    Ok((tls, served))
}

async fn wss<S>(stream: S, port: u16) -> WebSocketStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let url = format!("wss://localhost:{port}/echo");
    let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream))
        .await
        .expect("upgrade timed out")
        .expect("upgrade");
    assert_eq!(resp.status(), 101);
    ws
}

async fn tls_echo<S>(ws: &mut WebSocketStream<S>, text: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(WAIT, ws.send(Message::text(text)))
        .await
        .expect("send timed out")
        .expect("send");
    let mut got = Vec::new();
    while got.len() < text.len() {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no echo within the timeout")
            .expect("connection ended")
            .expect("read")
        {
            Message::Binary(b) => got.extend_from_slice(&b),
            Message::Text(t) => got.extend_from_slice(t.as_bytes()),
            _ => {}
        }
    }
    assert_eq!(got, text.as_bytes());
}

#[tokio::test]
async fn certificate_files_replaced_on_disk_are_served_to_new_connections() {
    let echo = backends::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let first = support::write_cert(dir.path());
    let gw = Gateway::start_with(
        &format!(
            r#"
[[listener]]
bind = "127.0.0.1:0"
tls = {{ cert = "cert.pem", key = "key.pem" }}

[[route]]
path = "/echo"
backend = "{}"
"#,
            echo.config_addr()
        ),
        Opts {
            dir: Some(dir),
            ..Opts::default()
        },
    )
    .await;
    let addr = gw.addr();
    let (tls, served) = tls_connect(addr, &first)
        .await
        .expect("TLS with the first cert");
    assert_eq!(served, first);
    let mut old = wss(tls, addr.port()).await;
    tls_echo(&mut old, "first cert").await;

    let second = support::write_cert(gw.dir.path());
    assert_ne!(first, second);
    // The gateway polls the files every 5 s.
    gw.wait_for_log("certificate reloaded", Duration::from_secs(15))
        .await;
    // Trusting only the new certificate, a handshake succeeds and sees it (retried briefly in
    // case a poll caught the pair half-replaced and the next one completes it).
    let deadline = Instant::now() + Duration::from_secs(12);
    let (tls, served) = loop {
        match tls_connect(addr, &second).await {
            Ok(ok) if ok.1 == second => break ok,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "new connections never saw the new certificate: {:?}\n{}",
                    other.map(|(_, c)| c == first),
                    gw.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(served, second);
    let mut fresh = wss(tls, addr.port()).await;
    tls_echo(&mut fresh, "second cert").await;
    // The session opened before keeps working.
    tls_echo(&mut old, "still on the first").await;
}

// ----- SIGHUP and certificate changes together -----

/// A TLS listener on `cert`/`key` (relative to the config file) with one route `path`.
fn tls_config(
    path: &str,
    cert: &str,
    key: &str,
    backend: &backends::Backend,
    extra: &str,
) -> String {
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\ntls = {{ cert = \"{cert}\", key = \"{key}\" }}\n\n\
         [[route]]\npath = \"{path}\"\nbackend = \"{}\"\n\n{extra}",
        backend.config_addr()
    )
}

/// A WebSocket over `stream` to `path`; `Err` carries the status of a refusal.
async fn wss_to<S>(stream: S, port: u16, path: &str) -> Result<WebSocketStream<S>, u16>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let url = format!("wss://localhost:{port}{path}");
    match tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream))
        .await
        .expect("upgrade timed out")
    {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

/// Wait (bounded) until a client trusting only `cert` is served `cert`, then check that `path`
/// upgrades and echoes over it and `gone` is 404.
async fn in_force(gw: &Gateway, cert: &CertificateDer<'static>, path: &str, gone: &str) {
    let addr = gw.addr();
    // Certificate files are polled every 5 s.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match tls_connect(addr, cert).await {
            Ok((_, served)) if served == *cert => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "the certificate never came into force ({:?}):\n{}",
                    other.map(|_| "another certificate"),
                    gw.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let (tls, _) = tls_connect(addr, cert).await.unwrap();
    let mut ws = wss_to(tls, addr.port(), path)
        .await
        .unwrap_or_else(|s| panic!("{path}: {s}\n{}", gw.logs()));
    tls_echo(&mut ws, "both in force").await;
    let (tls, _) = tls_connect(addr, cert).await.unwrap();
    assert_eq!(wss_to(tls, addr.port(), gone).await.err(), Some(404));
}

/// Replace `cert.pem` and `key.pem` in `dir` with a fresh pair; returns the certificate.
fn rotate(dir: &std::path::Path) -> CertificateDer<'static> {
    support::write_cert(dir)
}

/// A certificate rotation and a SIGHUP that changes a route, close together in both orders:
/// afterwards the new route and the new certificate are both in force.
#[tokio::test]
async fn sighup_and_certificate_rotation_close_together_both_take_effect() {
    let echo = backends::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let first = rotate(dir.path());
    let cfg = |path: &str| tls_config(path, "cert.pem", "key.pem", &echo, "");
    let gw = Gateway::start_with(
        &cfg("/zero"),
        Opts {
            dir: Some(dir),
            ..Opts::default()
        },
    )
    .await;
    in_force(&gw, &first, "/zero", "/one").await;

    // The files first, then the signal.
    let second = rotate(gw.dir.path());
    std::fs::write(gw.config_path(), cfg("/one")).unwrap();
    gw.signal("HUP");
    gw.wait_for_count("configuration reloaded", 1, WAIT).await;
    in_force(&gw, &second, "/one", "/zero").await;

    // The signal first, then the files.
    std::fs::write(gw.config_path(), cfg("/two")).unwrap();
    gw.signal("HUP");
    let third = rotate(gw.dir.path());
    gw.wait_for_count("configuration reloaded", 2, WAIT).await;
    in_force(&gw, &third, "/two", "/one").await;
}

/// `O_NONBLOCK` (Linux): opening a FIFO for writing then fails with ENXIO unless a reader has it
/// open, which tells when the gateway has started reading it.
const O_NONBLOCK: i32 = 0o4000;

/// A certificate reload that is still reading its files when a SIGHUP with a route change comes
/// in (its certificate file is a FIFO the test writes only later): the reload waits its turn, is
/// not undone by the certificate reload finishing after it, and the gateway keeps serving on its
/// one worker thread meanwhile.
#[tokio::test]
async fn a_certificate_reload_in_progress_does_not_undo_a_sighup() {
    use std::os::unix::fs::OpenOptionsExt;
    let echo = backends::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let first = rotate(dir.path());
    let next = dir.path().join("next");
    std::fs::create_dir(&next).unwrap();
    let reloaded_cert = rotate(&next);
    let one_worker = "[runtime]\nworker_threads = 1\n";
    let gw = Gateway::start_with(
        &tls_config("/old", "cert.pem", "key.pem", &echo, one_worker),
        Opts {
            dir: Some(dir),
            ..Opts::default()
        },
    )
    .await;
    in_force(&gw, &first, "/old", "/new").await;

    // The certificate files change, and the new certificate file does not deliver its content
    // yet: it is a FIFO.
    let stalled = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let root = gw.dir.path();
    std::fs::write(root.join("key.tmp"), stalled.key_pair.serialize_pem()).unwrap();
    std::fs::rename(root.join("key.tmp"), root.join("key.pem")).unwrap();
    let fifo = root.join("cert.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo");
    std::fs::rename(&fifo, root.join("cert.pem")).unwrap();
    // The next poll (within 5 s) starts reading it.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut writer = loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(O_NONBLOCK)
            .open(root.join("cert.pem"))
        {
            Ok(w) => break w,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the gateway never read the changed certificate file ({e}):\n{}",
                    gw.logs()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // While that read is stalled, connections are served.
    in_force(&gw, &first, "/old", "/new").await;

    // Now a SIGHUP with a new route and certificate files of its own.
    std::fs::write(
        gw.config_path(),
        tls_config("/new", "next/cert.pem", "next/key.pem", &echo, one_worker),
    )
    .unwrap();
    gw.signal("HUP");
    ops::eventually("the gateway takes the SIGHUP", WAIT, || {
        let logs = gw.logs();
        logs.contains("SIGHUP received") || logs.contains("configuration reloaded")
    })
    .await;
    // The stalled certificate file delivers; its reload completes after the SIGHUP came in.
    std::io::Write::write_all(&mut writer, stalled.cert.pem().as_bytes()).unwrap();
    drop(writer);
    gw.wait_for_log("certificate reloaded", WAIT).await;
    gw.wait_for_log("configuration reloaded", WAIT).await;
    in_force(&gw, &reloaded_cert, "/new", "/old").await;
    assert_eq!(gw.count("configuration reloaded"), 1, "{}", gw.logs());
}
