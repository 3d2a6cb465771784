//! Running under systemd: socket activation (`bind = "systemd:NAME"`, sockets passed by
//! `systemd-socket-activate`, systemd's own tool, TCP and unix) and the readiness protocol
//! (`READY=1`, `STATUS=`, `RELOADING=1` then `READY=1` on SIGHUP, `STOPPING=1` on SIGTERM), read
//! from a datagram socket the test binds as `NOTIFY_SOCKET`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpStream, UnixDatagram, UnixStream};

use crate::support::{self, backends, ops};
use ops::WAIT;

/// `systemd-socket-activate` (package systemd).
const ACTIVATE: &str = "systemd-socket-activate";

/// `wsgate --config F` under `systemd-socket-activate`, which listens on the given addresses,
/// starts (execs, keeping its PID) wsgate at the first connection, and passes the sockets
/// named `names`. Killed by PID when dropped.
struct Activated {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// Holds the config file.
    _dir: tempfile::TempDir,
}

impl Activated {
    fn start(
        dir: tempfile::TempDir,
        config: &str,
        listen: &[String],
        names: &str,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Activated {
        let path = dir.path().join("wsgate.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(ACTIVATE);
        for l in listen {
            cmd.arg(format!("--listen={l}"));
        }
        cmd.arg(format!("--fdname={names}")).args(extra);
        // systemd-socket-activate passes on only the variables named with -E.
        cmd.arg("-E").arg("WSGATE_LOG=wsgate=debug,info");
        for (k, v) in env {
            cmd.arg("-E").arg(format!("{k}={v}"));
        }
        cmd.arg(env!("CARGO_BIN_EXE_wsgate"))
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn systemd-socket-activate");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Activated {
            child: Some(child),
            log,
            reader: Some(reader),
            _dir: dir,
        }
    }

    fn logs(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.as_mut().unwrap().try_wait().unwrap() {
                // The rest of the log: the pipe is closed now, so the reader reaches its end
                // (a fixed pause could end before it, under load).
                if let Some(reader) = self.reader.take() {
                    let joined = tokio::task::spawn_blocking(move || reader.join());
                    let _ = tokio::time::timeout(WAIT, joined)
                        .await
                        .expect("the log reader did not reach the end of the pipe");
                }
                return s;
            }
            assert!(Instant::now() < deadline, "did not exit:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until the log has a line containing `needle`.
    async fn wait_for_log(&self, needle: &str) -> String {
        ops::eventually(needle, WAIT, || self.logs().contains(needle)).await;
        self.logs()
    }
}

impl Drop for Activated {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Connect to a TCP address systemd-socket-activate listens on, retrying while it starts.
async fn connect_tcp(addr: &str) -> TcpStream {
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpStream::connect(addr).await {
            Ok(s) => return s,
            Err(e) => assert!(Instant::now() < deadline, "connect {addr}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn connect_unix(path: &Path) -> UnixStream {
    let deadline = Instant::now() + WAIT;
    loop {
        match UnixStream::connect(path).await {
            Ok(s) => return s,
            Err(e) => assert!(Instant::now() < deadline, "connect {}: {e}", path.display()),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn route(backend: &backends::Backend) -> String {
    format!(
        "[[route]]\npath = \"/echo\"\nbackend = \"{}\"\n",
        backend.config_addr()
    )
}

/// A WebSocket echo over an already connected stream.
async fn echo_over<S>(stream: S, host: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let url = format!("ws://{host}/echo");
    let (mut ws, resp) =
        tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url.as_str(), stream))
            .await
            .expect("handshake in time")
            .expect("handshake");
    assert_eq!(resp.status(), 101);
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        "through systemd",
    ))
    .await
    .unwrap();
    let mut got = Vec::new();
    while got.len() < "through systemd".len() {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(m)) if m.is_text() || m.is_binary() => got.extend(m.into_data()),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, b"through systemd");
}

/// A TLS client trusting `cert`, over a fresh connection to `addr`.
async fn tls_to(
    addr: &str,
    cert: &rustls::pki_types::CertificateDer<'static>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(WAIT, connector.connect(name, connect_tcp(addr).await))
        .await
        .expect("TLS handshake in time")
        .expect("TLS handshake")
}

#[tokio::test]
async fn sessions_run_on_sockets_passed_by_systemd() {
    let backend = backends::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let cert = support::write_cert(dir.path());
    let sock = dir.path().join("ws.sock");
    let tcp = format!("127.0.0.1:{}", support::free_port());
    let tls = format!("127.0.0.1:{}", support::free_port());
    let config = format!(
        "[[listener]]\nbind = \"systemd:web\"\n\n[[listener]]\nbind = \"systemd:local\"\n\n\
         [[listener]]\nbind = \"systemd:web-tls\"\ntls = {{ cert = \"cert.pem\", key = \"key.pem\" }}\n\n{}",
        route(&backend)
    );
    let gw = Activated::start(
        dir,
        &config,
        &[tcp.clone(), sock.display().to_string(), tls.clone()],
        "web:local:web-tls",
        &[],
        &[],
    );
    // The first connection starts wsgate; the kernel holds it until wsgate accepts.
    echo_over(connect_tcp(&tcp).await, &tcp).await;
    let logs = gw.wait_for_log("systemd=web-tls").await;
    assert!(
        logs.contains(&format!("listening addr={tcp} tls=false systemd=web fd=3")),
        "{logs}"
    );
    assert!(
        logs.contains(&format!(
            "listening addr={tls} tls=true systemd=web-tls fd=5"
        )),
        "{logs}"
    );
    echo_over(connect_unix(&sock).await, "localhost").await;
    // The certificate and the rest of the listener's settings apply to a passed socket too.
    let port = tls.rsplit(':').next().unwrap();
    echo_over(tls_to(&tls, &cert).await, &format!("localhost:{port}")).await;
    // The passed socket file is systemd's: wsgate leaves it in place at shutdown.
    let mut gw = gw;
    gw.signal("TERM");
    assert!(gw.wait_exit().await.success(), "{}", gw.logs());
    assert!(sock.exists());
}

#[tokio::test]
async fn a_wrong_or_missing_socket_stops_the_start_with_a_clear_error() {
    let backend = backends::echo().await;
    let config = format!(
        "[[listener]]\nbind = \"systemd:web\"\n\n{}",
        route(&backend)
    );

    // Not started by systemd at all.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wsgate.toml");
    std::fs::write(&path, &config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .arg("--config")
        .arg(&path)
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("LISTEN_FDS is not set"), "{stderr}");

    // A socket under another name.
    let port = support::free_port();
    let tcp = format!("127.0.0.1:{port}");
    let mut gw = Activated::start(
        tempfile::tempdir().unwrap(),
        &config,
        std::slice::from_ref(&tcp),
        "admin",
        &[],
        &[],
    );
    let _trigger = connect_tcp(&tcp).await;
    let status = gw.wait_exit().await;
    let logs = gw.logs();
    assert_eq!(status.code(), Some(1), "{logs}");
    assert!(
        logs.contains("no socket passed by systemd is named \"web\" (LISTEN_FDNAMES: admin)"),
        "{logs}"
    );

    // With Accept=yes systemd passes each connection, not the listening socket.
    let port = support::free_port();
    let tcp = format!("127.0.0.1:{port}");
    let gw = Activated::start(
        tempfile::tempdir().unwrap(),
        &config,
        std::slice::from_ref(&tcp),
        "web",
        &["--accept"],
        &[],
    );
    let _connection = connect_tcp(&tcp).await;
    let logs = gw
        .wait_for_log("is not a listening TCP or unix stream socket")
        .await;
    assert!(
        logs.contains("the socket \"web\" (file descriptor 3) is not a listening TCP or unix stream socket: not listening"),
        "{logs}"
    );
    drop(gw);

    // A datagram socket is not a listener.
    let dir = tempfile::tempdir().unwrap();
    let dgram = dir.path().join("dgram.sock");
    let mut gw = Activated::start(
        dir,
        &config,
        &[dgram.display().to_string()],
        "web",
        &["--datagram"],
        &[],
    );
    let deadline = Instant::now() + WAIT;
    let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
    while client.send_to(b"start", &dgram).is_err() {
        assert!(
            Instant::now() < deadline,
            "no datagram socket at {}",
            dgram.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = gw.wait_exit().await;
    let logs = gw.logs();
    assert_eq!(status.code(), Some(1), "{logs}");
    assert!(
        logs.contains(
            "the socket \"web\" (file descriptor 3) is not a listening TCP or unix stream socket"
        ),
        "{logs}"
    );
}

/// The notification socket: datagrams from wsgate, one message each.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    /// Every message received so far, in order.
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        NotifySocket {
            socket: UnixDatagram::bind(&path).unwrap(),
            path,
            seen: Vec::new(),
        }
    }

    /// Read messages until one satisfies `want`; returns it.
    async fn until(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut buf = vec![0u8; 4096];
        loop {
            let n = match tokio::time::timeout_at(deadline, self.socket.recv(&mut buf)).await {
                Ok(r) => r.unwrap(),
                Err(_) => panic!("no {what} message; got {:?}", self.seen),
            };
            let msg = String::from_utf8(buf[..n].to_vec()).unwrap();
            self.seen.push(msg.clone());
            if want(&msg) {
                return msg;
            }
        }
    }
}

fn has_line(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

#[tokio::test]
async fn readiness_reload_and_stop_are_told_to_systemd() {
    let backend = backends::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let mut notify = NotifySocket::bind(dir.path());
    let port = support::free_port();
    let tcp = format!("127.0.0.1:{port}");
    let config = format!(
        "[[listener]]\nbind = \"systemd:web\"\n\n{}",
        route(&backend)
    );
    let mut gw = Activated::start(
        dir,
        &config,
        std::slice::from_ref(&tcp),
        "web",
        &[],
        &[("NOTIFY_SOCKET", notify.path.display().to_string())],
    );
    // Nothing is said before wsgate runs: it starts at the first connection.
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), notify.socket.recv(&mut buf))
            .await
            .is_err(),
        "a message before wsgate was started"
    );
    let url = format!("ws://{tcp}/echo");
    let stream = connect_tcp(&tcp).await;
    let ready = notify.until("READY=1", |m| has_line(m, "READY=1")).await;
    assert!(ready.contains("STATUS=ready; 0 sessions open"), "{ready}");
    // wsgate serves at that moment.
    drop(stream);
    let mut ws = ops::ws(&url).await;
    ops::echo(&mut ws, "ready").await;
    let status = notify
        .until("STATUS with the session", |m| m.contains("1 session open"))
        .await;
    assert!(status.starts_with("STATUS="), "{status}");

    gw.signal("HUP");
    let reloading = notify
        .until("RELOADING=1", |m| has_line(m, "RELOADING=1"))
        .await;
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC with RELOADING=1")
        .parse()
        .unwrap();
    assert!(usec > 0);
    let after = notify
        .until("READY=1 after the reload", |m| has_line(m, "READY=1"))
        .await;
    assert!(after.contains("1 session open"), "{after}");
    gw.wait_for_log("configuration reloaded").await;
    ops::echo(&mut ws, "still open after the reload").await;

    gw.signal("TERM");
    let stopping = notify
        .until("STOPPING=1", |m| has_line(m, "STOPPING=1"))
        .await;
    assert!(
        stopping.contains("STATUS=draining; 1 session open"),
        "{stopping}"
    );
    assert_eq!(ops::close_code(&mut ws).await, 1001);
    let status = gw.wait_exit().await;
    assert!(status.success(), "{}", gw.logs());
    // The order systemd is told things in.
    let states: Vec<&str> = notify
        .seen
        .iter()
        .filter_map(|m| {
            ["READY=1", "RELOADING=1", "STOPPING=1"]
                .into_iter()
                .find(|s| has_line(m, s))
        })
        .collect();
    assert_eq!(states, ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]);
}

#[tokio::test]
async fn notify_false_sends_nothing() {
    let backend = backends::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let notify = NotifySocket::bind(dir.path());
    let port = support::free_port();
    let tcp = format!("127.0.0.1:{port}");
    let config = format!(
        "[runtime]\nnotify = false\n\n[[listener]]\nbind = \"systemd:web\"\n\n{}",
        route(&backend)
    );
    let gw = Activated::start(
        dir,
        &config,
        std::slice::from_ref(&tcp),
        "web",
        &[],
        &[("NOTIFY_SOCKET", notify.path.display().to_string())],
    );
    echo_over(connect_tcp(&tcp).await, &tcp).await;
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), notify.socket.recv(&mut buf))
            .await
            .is_err(),
        "a message was sent with notify = false"
    );
    drop(gw);
}
