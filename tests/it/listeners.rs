//! Listener kinds: unix-socket listeners (`bind = "unix:PATH"`, `mode`) with real clients
//! (tokio-tungstenite over a unix stream, curl's `--unix-socket`), the socket file's life (a
//! stale one replaced, a live one or a regular file refused at startup and left untouched, the
//! file removed at shutdown only while it is still ours), the PROXY header and the per-address
//! limit for such clients; and a TLS listener with `accept_plain` taking ws:// and wss:// on one
//! port.

use crate::support;
use crate::support::{cli, frames, ops};

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpStream, UnixStream};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use support::backends::{self, Backend};
use support::TestGateway;

const WAIT: Duration = Duration::from_secs(10);

/// The socket file's name in the test's directory (relative in the config: resolved against
/// the config's directory).
const SOCK: &str = "gw.sock";

fn unix_config(backend: &str, listener_extra: &str, route_extra: &str, limits: &str) -> String {
    format!(
        "[[listener]]\nbind = \"unix:{SOCK}\"\n{listener_extra}\n\n[[route]]\npath = \"/echo\"\nbackend = \"{backend}\"\n{route_extra}\n\n[limits]\n{limits}\n"
    )
}

async fn unix_gateway(
    backend: &str,
    listener_extra: &str,
    route_extra: &str,
    limits: &str,
) -> TestGateway {
    let gw = TestGateway::start(&unix_config(backend, listener_extra, route_extra, limits)).await;
    assert_eq!(gw.unix, vec![gw.dir.path().join(SOCK)]);
    assert!(gw.addrs.is_empty(), "no TCP listener: {:?}", gw.addrs);
    gw
}

/// A WebSocket client over the gateway's unix socket; `Err(status)` when the upgrade is refused.
async fn try_unix_ws(path: &Path, route: &str) -> Result<WebSocketStream<UnixStream>, u16> {
    let stream = UnixStream::connect(path)
        .await
        .expect("connect to the unix socket");
    let url = format!("ws://localhost{route}");
    match tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream))
        .await
        .expect("upgrade timed out")
    {
        Ok((ws, resp)) => {
            assert_eq!(resp.status(), 101);
            Ok(ws)
        }
        Err(tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

async fn unix_ws(path: &Path) -> WebSocketStream<UnixStream> {
    try_unix_ws(path, "/echo").await.expect("101")
}

async fn echo<S>(ws: &mut WebSocketStream<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text)).await.unwrap();
    let mut got = Vec::new();
    while got.len() < text.len() {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no echo in time")
            .expect("stream ended")
            .expect("read");
        got.extend_from_slice(&m.into_data());
    }
    assert_eq!(got, text.as_bytes());
}

/// Wait until `cond` holds, at most [`WAIT`].
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "within {WAIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn unix_listener_echoes_and_shows_a_placeholder_client() {
    let backend = backends::echo().await;
    let gw = unix_gateway(&backend.config_addr(), "", "", "").await;
    let mut ws = unix_ws(&gw.unix[0]).await;
    echo(&mut ws, "over a unix socket").await;
    echo(&mut ws, "and again").await;
    ws.close(None).await.unwrap();
    let logs = gw.wait_for_log("session closed", WAIT).await;
    let line = logs.lines().find(|l| l.contains("session closed")).unwrap();
    assert!(line.contains("client=0.0.0.0:0"), "{line}");
    assert_eq!(backend.connections_made().await, 1);
}

#[tokio::test]
async fn curl_plain_http_over_the_unix_socket() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("curl is not installed; skipping");
        return;
    }
    let backend = backends::echo().await;
    let gw = unix_gateway(&backend.config_addr(), "", "", "").await;
    for (path, want) in [("/nothing-here", "404"), ("/echo", "426")] {
        let sock = gw.unix[0].clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "10",
                ])
                .arg("--unix-socket")
                .arg(&sock)
                .arg(format!("http://localhost{path}"))
                .output()
                .expect("run curl")
        })
        .await
        .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{path}");
    }
    let logs = gw.wait_for_log("path=\"/nothing-here\"", WAIT).await;
    let line = logs.lines().find(|l| l.contains("/nothing-here")).unwrap();
    assert!(
        line.contains("client=0.0.0.0:0") && line.contains("status=404"),
        "{line}"
    );
}

#[tokio::test]
async fn mode_is_applied_to_the_socket_file() {
    let backend = backends::echo().await;
    for (mode, want) in [("0640", 0o640), ("0666", 0o666)] {
        let gw = unix_gateway(
            &backend.config_addr(),
            &format!("mode = \"{mode}\""),
            "",
            "",
        )
        .await;
        let meta = std::fs::symlink_metadata(&gw.unix[0]).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o7777, want, "mode {mode}");
    }
}

#[tokio::test]
async fn stale_socket_file_is_replaced() {
    let backend = backends::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(SOCK);
    // A socket file nobody listens on any more: connecting to it is refused.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(std::os::unix::net::UnixStream::connect(&path).is_err());
    let gw = TestGateway::start_in(dir, &unix_config(&backend.config_addr(), "", "", "")).await;
    gw.wait_for_log("removed a stale unix socket file", WAIT)
        .await;
    let mut ws = unix_ws(&path).await;
    echo(&mut ws, "after the stale socket").await;
}

/// Write a config with a unix listener at `dir/gw.sock` and run the binary on it; returns its
/// exit code and stderr.
fn run_binary_on_unix_config(dir: &Path) -> (Option<i32>, String) {
    let config = dir.join("wsgate.toml");
    std::fs::write(&config, unix_config("127.0.0.1:9", "", "", "")).unwrap();
    let out = cli::run_wsgate(
        [std::ffi::OsStr::new("--config"), config.as_os_str()],
        Duration::from_secs(20),
    );
    (out.status.code(), cli::stderr(&out))
}

#[test]
fn live_socket_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(SOCK);
    let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let (code, err) = run_binary_on_unix_config(dir.path());
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("another process"), "{err}");
    // Still ours: the file is there and our listener still takes connections.
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_socket());
    let _client = std::os::unix::net::UnixStream::connect(&path).expect("still live");
    live.set_nonblocking(true).unwrap();
    // The gateway's probe and our client both reached our listener.
    let mut accepted = 0;
    while live.accept().is_ok() {
        accepted += 1;
    }
    assert!(accepted >= 1, "our listener saw no connection");
}

#[test]
fn regular_file_at_the_path_is_a_startup_error_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(SOCK);
    std::fs::write(&path, "not a socket; keep me\n").unwrap();
    let (code, err) = run_binary_on_unix_config(dir.path());
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "not a socket; keep me\n"
    );
}

#[tokio::test]
async fn socket_file_is_removed_when_the_gateway_stops() {
    let backend = backends::echo().await;
    // The socket lives in a directory that outlives the gateway.
    let outer = tempfile::tempdir().unwrap();
    let path = outer.path().join(SOCK);
    let config = unix_config(&backend.config_addr(), "", "", "")
        .replace(&format!("unix:{SOCK}"), &format!("unix:{}", path.display()));
    let gw = TestGateway::start(&config).await;
    assert_eq!(gw.unix, vec![path.clone()]);
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_socket());
    drop(gw);
    wait_until("the socket file is removed", || !path.exists()).await;
}

/// The binary: removed on SIGTERM; a file that replaced ours meanwhile is left alone.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_binary(dir: &Path) -> Proc {
    let config = dir.join("wsgate.toml");
    std::fs::write(&config, unix_config("127.0.0.1:9", "", "", "")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .arg("--config")
        .arg(&config)
        .env("WSGATE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn wsgate");
    Proc(child)
}

fn terminate(p: &mut Proc) -> std::process::ExitStatus {
    let ok = Command::new("kill")
        .arg("-TERM")
        .arg(p.0.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(s) = p.0.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "wsgate did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_socket(path: &Path, p: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(p.0.try_wait().unwrap().is_none(), "wsgate exited early");
        assert!(Instant::now() < deadline, "the socket never accepted");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_removes_the_socket_file_but_not_a_replacement() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join(SOCK);
    let mut p = start_binary(dir.path());
    wait_for_socket(&path, &mut p);
    assert!(terminate(&mut p).success());
    assert!(
        !path.exists(),
        "the socket file is still there after shutdown"
    );

    // Someone else's socket now sits at the path when the gateway stops: it stays.
    let mut p = start_binary(dir.path());
    wait_for_socket(&path, &mut p);
    std::fs::remove_file(&path).unwrap();
    let theirs = std::os::unix::net::UnixListener::bind(&path).unwrap();
    assert!(terminate(&mut p).success());
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_socket());
    let _c = std::os::unix::net::UnixStream::connect(&path).expect("their socket still works");
    drop(theirs);
}

#[tokio::test]
async fn proxy_header_is_unknown_for_unix_clients() {
    for (version, route_extra) in [
        ("v1", "proxy_protocol = \"v1\""),
        ("v2", "proxy_protocol = \"v2\""),
    ] {
        let mut rec = backends::recording_echo().await;
        let gw = unix_gateway(&rec.backend.config_addr(), "", route_extra, "").await;
        let mut ws = unix_ws(&gw.unix[0]).await;
        let mut conn = rec.accept().await;
        ws.send(Message::binary(b"payload".to_vec())).await.unwrap();
        let got = match version {
            "v1" => {
                let got = conn.wait_for_len(15 + 7).await;
                let text = std::str::from_utf8(&got[..15]).unwrap();
                let h = ppp::v1::Header::try_from(text).expect("ppp parses the v1 line");
                assert!(
                    matches!(h.addresses, ppp::v1::Addresses::Unknown),
                    "{text:?}"
                );
                assert_eq!(text, "PROXY UNKNOWN\r\n");
                got[15..].to_vec()
            }
            _ => {
                let got = conn.wait_for_len(16).await;
                let len = 16 + usize::from(u16::from_be_bytes([got[14], got[15]]));
                let got = conn.wait_for_len(len + 7).await;
                let h = ppp::v2::Header::try_from(&got[..len]).expect("ppp parses the v2 header");
                assert_eq!(h.command, ppp::v2::Command::Local);
                assert!(matches!(h.addresses, ppp::v2::Addresses::Unspecified));
                // The address block is empty; the route TLV follows the fixed part.
                assert!(got[16..len].windows(5).any(|w| w == b"/echo"), "{got:?}");
                got[len..].to_vec()
            }
        };
        assert_eq!(got, b"payload", "{version}");
    }
}

#[tokio::test]
async fn per_address_limit_does_not_apply_to_unix_clients() {
    let backend = backends::echo().await;
    let gw = unix_gateway(
        &backend.config_addr(),
        "",
        "",
        "max_connections_per_ip = 1\nmax_connections = 3",
    )
    .await;
    let mut open = Vec::new();
    for i in 0..3 {
        let mut ws = unix_ws(&gw.unix[0]).await;
        echo(&mut ws, &format!("client {i}")).await;
        open.push(ws);
    }
    // max_connections still counts them.
    assert_eq!(try_unix_ws(&gw.unix[0], "/echo").await.err(), Some(503));
    for ws in &mut open {
        echo(ws, "still open").await;
    }
}

// ----- accept_plain -----

async fn tls_gateway(
    backend: &Backend,
    accept_plain: bool,
    limits: &str,
) -> (TestGateway, CertificateDer<'static>) {
    let dir = tempfile::tempdir().unwrap();
    let cert = support::write_cert(dir.path());
    let gw = TestGateway::start_in(
        dir,
        &format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\ntls = {{ cert = \"cert.pem\", key = \"key.pem\", accept_plain = {accept_plain} }}\n\n[[route]]\npath = \"/echo\"\nbackend = \"{}\"\n\n[limits]\n{limits}\n",
            backend.config_addr()
        ),
    )
    .await;
    (gw, cert)
}

fn trusting(cert: &CertificateDer<'static>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn wss(
    gw: &TestGateway,
    cert: &CertificateDer<'static>,
) -> WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let tls = tokio::time::timeout(
        WAIT,
        trusting(cert).connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .expect("TLS handshake timed out")
    .expect("TLS handshake");
    let url = format!("wss://localhost:{}/echo", gw.addr().port());
    let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, tls))
        .await
        .expect("upgrade timed out")
        .expect("upgrade");
    assert_eq!(resp.status(), 101);
    ws
}

#[tokio::test]
async fn accept_plain_takes_ws_and_wss_on_one_port() {
    let backend = backends::echo().await;
    let (gw, cert) = tls_gateway(&backend, true, "").await;
    let mut secure = wss(&gw, &cert).await;
    let mut plain = ops::ws(&gw.url("/echo")).await;
    echo(&mut secure, "over tls").await;
    ops::echo(&mut plain, "in the clear").await;
    echo(&mut secure, "tls again").await;
    ops::close(plain).await;
    secure.close(None).await.unwrap();
    assert_eq!(backend.connections_made().await, 2);
}

#[tokio::test]
async fn tls_listener_without_accept_plain_refuses_plain_clients() {
    let backend = backends::echo().await;
    let (gw, cert) = tls_gateway(&backend, false, "").await;
    let plain = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(gw.url("/echo")))
        .await
        .expect("the plain attempt did not end");
    assert!(
        plain.is_err(),
        "a plain client got a WebSocket on a TLS-only port"
    );
    let mut secure = wss(&gw, &cert).await;
    echo(&mut secure, "tls still works").await;
    assert_eq!(backend.connections_made().await, 1);
}

#[tokio::test]
async fn accept_plain_closes_a_silent_client_at_the_handshake_deadline() {
    let backend = backends::echo().await;
    let (gw, _) = tls_gateway(&backend, true, "handshake_timeout = \"1s\"").await;
    let started = Instant::now();
    let mut s = frames::connect(gw.addr()).await;
    let mut out = Vec::new();
    frames::read_to_end(&mut s, &mut out, WAIT).await;
    let elapsed = started.elapsed();
    assert!(out.is_empty(), "{out:?}");
    assert!(
        elapsed >= Duration::from_millis(500),
        "cut too early: {elapsed:?}"
    );
    gw.wait_for_log("handshake deadline passed before the first byte", WAIT)
        .await;
}

#[tokio::test]
async fn sighup_reloads_routes_on_a_unix_listener_and_refuses_a_mode_change() {
    let first = backends::echo().await;
    let second = backends::echo().await;
    let mut gw = support::Gateway::start(&unix_config(
        &first.config_addr(),
        "mode = \"0660\"",
        "",
        "",
    ))
    .await;
    let path = gw.dir.path().join(SOCK);
    let mut ws = unix_ws(&path).await;
    echo(&mut ws, "first backend").await;
    assert_eq!(first.connections_made().await, 1);

    // A route change is applied; the socket stays where it is.
    std::fs::write(
        gw.config_path(),
        unix_config(&second.config_addr(), "mode = \"0660\"", "", ""),
    )
    .unwrap();
    gw.signal("HUP");
    gw.wait_for_log("configuration reloaded", WAIT).await;
    let mut again = unix_ws(&path).await;
    echo(&mut again, "second backend").await;
    assert_eq!(second.connections_made().await, 1);
    echo(&mut ws, "the open session keeps its backend").await;

    // A mode change is a listener change: refused, the socket keeps its mode.
    std::fs::write(
        gw.config_path(),
        unix_config(&second.config_addr(), "mode = \"0600\"", "", ""),
    )
    .unwrap();
    gw.signal("HUP");
    gw.wait_for_log("reload refused: listeners changed", WAIT)
        .await;
    let mode = std::fs::symlink_metadata(&path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o660);
    let mut third = unix_ws(&path).await;
    echo(&mut third, "still served").await;
    assert!(gw.terminate(WAIT).await.success());
    assert!(!path.exists());
}

#[test]
fn check_summary_shows_the_unix_bind_and_accept_plain() {
    let dir = tempfile::tempdir().unwrap();
    support::write_cert(dir.path());
    let config = dir.path().join("wsgate.toml");
    let text = format!(
        "{}\n[[listener]]\nbind = \"127.0.0.1:0\"\ntls = {{ cert = \"cert.pem\", key = \"key.pem\", accept_plain = true }}\n",
        unix_config("127.0.0.1:9", "mode = \"0660\"", "", "")
    );
    std::fs::write(&config, text).unwrap();
    let out = cli::run_wsgate(
        [
            std::ffi::OsStr::new("check"),
            "--config".as_ref(),
            config.as_os_str(),
        ],
        Duration::from_secs(20),
    );
    let stdout = cli::stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", cli::stderr(&out));
    let sock = dir.path().join(SOCK);
    assert!(
        stdout.contains(&format!("unix:{}  (ws; mode 0660)", sock.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains("wss://127.0.0.1:0 and ws://127.0.0.1:0"),
        "{stdout}"
    );

    // A bad mode is a configuration error naming the key.
    std::fs::write(
        &config,
        unix_config("127.0.0.1:9", "mode = \"0999\"", "", ""),
    )
    .unwrap();
    let out = cli::run_wsgate(
        [
            std::ffi::OsStr::new("check"),
            "--config".as_ref(),
            config.as_os_str(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        cli::stderr(&out).contains("listener[0].mode"),
        "{}",
        cli::stderr(&out)
    );
}

#[tokio::test]
async fn wss_over_a_unix_listener() {
    let backend = backends::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let cert = support::write_cert(dir.path());
    let gw = TestGateway::start_in(
        dir,
        &unix_config(
            &backend.config_addr(),
            "tls = { cert = \"cert.pem\", key = \"key.pem\" }",
            "",
            "",
        ),
    )
    .await;
    let stream = UnixStream::connect(&gw.unix[0]).await.unwrap();
    let tls = tokio::time::timeout(
        WAIT,
        trusting(&cert).connect(ServerName::try_from("localhost").unwrap(), stream),
    )
    .await
    .expect("TLS handshake timed out")
    .expect("TLS handshake over the unix socket");
    let (mut ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async("wss://localhost/echo", tls),
    )
    .await
    .expect("upgrade timed out")
    .expect("upgrade");
    echo(&mut ws, "tls over a unix socket").await;
    echo(&mut ws, "twice").await;
    // A plain client on that socket gets no WebSocket.
    let plain = UnixStream::connect(&gw.unix[0]).await.unwrap();
    let attempt = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async("ws://localhost/echo", plain),
    )
    .await
    .expect("the plain attempt did not end");
    assert!(attempt.is_err());
}
