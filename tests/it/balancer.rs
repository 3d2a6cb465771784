//! The gateway behind a load balancer: a real HAProxy (`mode tcp`, `send-proxy-v2` and
//! `send-proxy`) and a real nginx (an L7 WebSocket proxy setting `X-Forwarded-For`) in front of
//! it on loopback. The client's address, as the balancer saw it, is the one in the access lines,
//! in `/sessions`, in `max_connections_per_ip` and in the PROXY header written to the backend;
//! a PROXY header or a forwarded header from anyone else is not believed.
//!
//! Clients bind distinct loopback sources (127.0.0.5, 127.0.0.6) so that they differ from the
//! balancers' own 127.0.0.1.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

use crate::support::auth::{self, Proxy};
use crate::support::backends;
use crate::support::ops::{self, Ws, ADMIN_BIND, WAIT};
use crate::support::{free_port, TestGateway};

const CLIENT_A: &str = "127.0.0.5";
const CLIENT_B: &str = "127.0.0.6";
const REFUSED: &str = "wsgate_proxy_header_refused_total";

/// A balancer process started by a test, killed (by its PID) when dropped.
struct Balancer {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait until something accepts TCP connections on `addr`, or the process has exited.
async fn until_listening(b: &mut Balancer, addr: SocketAddr, log: &Path) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        let status = b.child.try_wait().expect("try_wait");
        assert!(
            status.is_none() && tokio::time::Instant::now() < deadline,
            "the balancer never listened on {addr} (exit {status:?}):\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// HAProxy in TCP mode: `fronts[i]` forwards to `gws[i]` with a PROXY header of `proxy[i]`
/// (`send-proxy-v2` or `send-proxy`).
async fn haproxy(pairs: &[(SocketAddr, &str)]) -> (Balancer, Vec<SocketAddr>) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = String::from(
        "global\n    maxconn 256\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n",
    );
    let mut fronts = Vec::new();
    for (i, (gw, send)) in pairs.iter().enumerate() {
        let front: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        cfg.push_str(&format!(
            "\nfrontend fe{i}\n    bind {front}\n    default_backend be{i}\n\nbackend be{i}\n    server gw {gw} {send}\n"
        ));
        fronts.push(front);
    }
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, &cfg).unwrap();
    let log = dir.path().join("haproxy.log");
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("haproxy.err")).unwrap())
        .spawn()
        .expect("haproxy (Debian package haproxy; scripts/test.sh installs it)");
    let err = dir.path().join("haproxy.err");
    let mut b = Balancer { child, _dir: dir };
    for f in &fronts {
        until_listening(&mut b, *f, &err).await;
    }
    (b, fronts)
}

/// nginx as an L7 WebSocket proxy to `gw` (`IP:port`, or `unix:PATH:`), adding the client to
/// `X-Forwarded-For`.
async fn nginx(gw: &str) -> (Balancer, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let front: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = format!(
        r#"daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {front};
        location / {{
            proxy_pass http://{gw};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"#
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, cfg).unwrap();
    let err = dir.path().join("error.log");
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(&err)
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("nginx.stderr")).unwrap())
        .spawn()
        .expect("nginx (Debian package nginx; scripts/test.sh installs it)");
    let mut b = Balancer { child, _dir: dir };
    until_listening(&mut b, front, &err).await;
    (b, front)
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(from.parse().unwrap(), 0)).unwrap();
    tokio::time::timeout(WAIT, s.connect(to))
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("connect {from} -> {to}: {e}"))
}

/// A WebSocket opened from `from` to `to` (the balancer or the gateway); `Err` carries the
/// status of a refusal.
async fn ws_from(
    from: &str,
    to: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, u16> {
    let tcp = connect_from(from, to).await;
    let mut req = format!("ws://{to}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let opened = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp)),
    )
    .await
    .expect("no handshake answer");
    match opened {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("handshake through {to} failed: {e}"),
    }
}

/// The `client` of the live sessions in `/sessions`.
async fn session_clients(admin: SocketAddr) -> Vec<String> {
    let r = ops::http(admin, "GET", "/sessions", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let list: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| s["client"].as_str().unwrap().to_string())
        .collect()
}

/// Everything the peer sends until it closes: a refused connection gets nothing at all.
async fn read_all(mut s: TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    match tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await {
        Ok(Ok(_)) => {}
        // A reset after unread bytes is a close too.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Err(e)) => panic!("read: {e}"),
        Err(_) => panic!("the gateway kept the connection open: {buf:?}"),
    }
    buf
}

/// The labels of `proxy_header_refused_total`.
fn lab<'a>(listener: &'a str, reason: &'a str) -> [(&'a str, &'a str); 2] {
    [("listener", listener), ("reason", reason)]
}

fn client_field(ip: &str) -> String {
    format!("client={ip}:")
}

/// HAProxy with `send-proxy-v2` and `send-proxy` in front of two `proxy_protocol` listeners:
/// the session's access line, `/sessions` and the PROXY header the backend receives all name the
/// client's own address and port, not HAProxy's.
#[tokio::test]
async fn haproxy_proxy_v2_and_v1_carry_the_client_address() {
    let mut rec = backends::recording_echo().await;
    let backend = rec.backend.addr;
    let gw = TestGateway::start(&format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
proxy_protocol = "v2"
trusted = ["127.0.0.1/32"]

[[listener]]
bind = "127.0.0.1:0"
proxy_protocol = "v1"
trusted = ["10.0.0.0/8", "127.0.0.0/30", "::1/128"]

[admin]
bind = "{ADMIN_BIND}"

[[route]]
path = "/echo"
backend = "{backend}"
proxy_protocol = "v2"
"#
    ))
    .await;
    let (_haproxy, fronts) =
        haproxy(&[(gw.addrs[0], "send-proxy-v2"), (gw.addrs[1], "send-proxy")]).await;

    for (front, version) in fronts.iter().zip(["v2", "v1"]) {
        let mut ws = ws_from(CLIENT_A, *front, "/echo", &[])
            .await
            .unwrap_or_else(|s| panic!("{version}: got {s} through HAProxy:\n{}", gw.logs()));
        let me = ops::local_addr(&ws);
        assert_eq!(me.ip().to_string(), CLIENT_A);
        ops::send(&mut ws, Message::text("through the balancer")).await;

        // The backend's PROXY header: the client as HAProxy saw it, and the address it
        // connected to (HAProxy's frontend).
        let mut conn = rec.accept().await;
        let (header, _) = auth::read_proxy(&mut conn, "through the balancer".len()).await;
        assert!(matches!(header, Proxy::V2 { .. }), "{header:?}");
        assert_eq!(header.addrs(), (me, *front), "{version}");

        let clients = session_clients(gw.admin()).await;
        assert_eq!(clients, vec![me.to_string()], "{version}");

        ops::close(ws).await;
        let line = format!("client={me} ");
        let sessions = if version == "v2" { 1 } else { 2 };
        let logs = gw.wait_for_count("session closed", sessions, WAIT).await;
        let closed: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("session closed"))
            .collect();
        assert!(
            closed.last().is_some_and(|l| l.contains(&line)),
            "{version}: the access line names {me}:\n{logs}"
        );
        assert!(
            !closed.last().unwrap().contains("client=127.0.0.1:"),
            "{logs}"
        );
    }
    // Nothing was refused on the way.
    let m = ops::metrics(gw.admin(), None).await;
    assert!(
        !m.text.lines().any(|l| l.starts_with(REFUSED)),
        "{}",
        m.text
    );
}

/// PROXY headers are believed only where configured and only from `trusted` peers; a
/// connection without a good header is closed without an HTTP answer, and counted.
#[tokio::test]
async fn proxy_headers_from_elsewhere_are_refused() {
    let backend = backends::echo().await;
    let backend = backend.addr;
    let gw = TestGateway::start(&format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
proxy_protocol = "v2"
trusted = ["127.0.0.1/32"]

[[listener]]
bind = "127.0.0.1:0"

[[listener]]
bind = "127.0.0.1:0"
proxy_protocol = "v1"
trusted = ["127.0.0.5/32"]

[admin]
bind = "{ADMIN_BIND}"

[limits]
handshake_timeout = "1s"

[[route]]
path = "/echo"
backend = "{backend}"
"#
    ))
    .await;
    let (proxied, plain, v1) = (gw.addrs[0], gw.addrs[1], gw.addrs[2]);
    let upgrade = |to: SocketAddr| {
        format!(
            "GET /echo HTTP/1.1\r\nHost: {to}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    };
    let spoof_v2 = {
        let mut h = wsgate::proxy_protocol::V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[
            0x21, 0x11, 0, 12, 203, 0, 113, 9, 127, 0, 0, 1, 0x30, 0x39, 0, 80,
        ]);
        h
    };
    let (p, v) = (proxied.to_string(), v1.to_string());

    // A good header from a peer outside `trusted` (127.0.0.5 is not 127.0.0.1/32).
    let mut s = connect_from(CLIENT_A, proxied).await;
    s.write_all(&spoof_v2).await.unwrap();
    s.write_all(upgrade(proxied).as_bytes()).await.unwrap();
    assert_eq!(read_all(s).await, b"", "an untrusted peer gets no answer");
    ops::wait_metric(gw.admin(), REFUSED, &lab(&p, "untrusted"), 1.0, WAIT).await;
    gw.wait_for_log("reason=\"untrusted\"", WAIT).await;
    assert!(
        gw.logs().contains(&format!("client={CLIENT_A}:")),
        "{}",
        gw.logs()
    );

    // A trusted peer without a header: HTTP straight away.
    let mut s = connect_from("127.0.0.1", proxied).await;
    s.write_all(upgrade(proxied).as_bytes()).await.unwrap();
    assert_eq!(read_all(s).await, b"");
    ops::wait_metric(gw.admin(), REFUSED, &lab(&p, "missing"), 1.0, WAIT).await;

    // A malformed header: version 3.
    let mut bad = spoof_v2.clone();
    bad[12] = 0x31;
    let mut s = connect_from("127.0.0.1", proxied).await;
    s.write_all(&bad).await.unwrap();
    assert_eq!(read_all(s).await, b"");
    ops::wait_metric(gw.admin(), REFUSED, &lab(&p, "malformed"), 1.0, WAIT).await;

    // Half a header, then nothing: closed when handshake_timeout passes.
    let mut s = connect_from("127.0.0.1", proxied).await;
    s.write_all(&spoof_v2[..20]).await.unwrap();
    assert_eq!(read_all(s).await, b"");
    ops::wait_metric(gw.admin(), REFUSED, &lab(&p, "timeout"), 1.0, WAIT).await;

    // The wrong version: a v1 line on the v2 listener, and bad v1 lines on the v1 listener.
    let mut s = connect_from("127.0.0.1", proxied).await;
    s.write_all(b"PROXY TCP4 203.0.113.9 127.0.0.1 12345 80\r\n")
        .await
        .unwrap();
    assert_eq!(read_all(s).await, b"");
    ops::wait_metric(gw.admin(), REFUSED, &lab(&p, "missing"), 2.0, WAIT).await;
    for line in [
        &b"PROXY TCP4 203.0.113.9 127.0.0.1 12345 99999\r\n"[..],
        b"PROXY TCP4 203.0.113.9  127.0.0.1 12345 80\r\n",
    ] {
        let mut s = connect_from(CLIENT_A, v1).await;
        s.write_all(line).await.unwrap();
        assert_eq!(read_all(s).await, b"");
    }
    ops::wait_metric(gw.admin(), REFUSED, &lab(&v, "malformed"), 2.0, WAIT).await;
    // A v1 line that never ends within 107 bytes.
    let mut s = connect_from(CLIENT_A, v1).await;
    s.write_all(format!("PROXY TCP4 {}", "1".repeat(150)).as_bytes())
        .await
        .unwrap();
    assert_eq!(read_all(s).await, b"");
    ops::wait_metric(gw.admin(), REFUSED, &lab(&v, "too_long"), 1.0, WAIT).await;

    // A v2 LOCAL header (a balancer's health check): the connection's own address stands, and
    // HTTP follows as usual.
    let mut s = connect_from("127.0.0.1", proxied).await;
    let mut local = wsgate::proxy_protocol::V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    s.write_all(&local).await.unwrap();
    s.write_all(format!("GET /echo HTTP/1.1\r\nHost: {proxied}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&read_all(s).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 426"), "{answer:?}");
    let logs = gw.wait_for_log("plain request", WAIT).await;
    let line = logs.lines().find(|l| l.contains("plain request")).unwrap();
    assert!(line.contains("client=127.0.0.1:"), "{line}");

    // A good v1 header from the trusted 127.0.0.5, then the upgrade: believed.
    let mut s = connect_from(CLIENT_A, v1).await;
    s.write_all(b"PROXY TCP4 198.51.100.4 127.0.0.1 4242 80\r\n")
        .await
        .unwrap();
    s.write_all(upgrade(v1).as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(WAIT, s.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    assert_eq!(session_clients(gw.admin()).await, vec!["198.51.100.4:4242"]);
    drop(s);

    // A header sent to a listener without proxy_protocol is not a header: a bad request, and
    // the address in it is never used.
    for spoof in [
        &b"PROXY TCP4 203.0.113.9 127.0.0.1 12345 80\r\n"[..],
        &spoof_v2,
    ] {
        let mut s = connect_from(CLIENT_A, plain).await;
        s.write_all(spoof).await.unwrap();
        s.write_all(upgrade(plain).as_bytes()).await.unwrap();
        let answer = String::from_utf8_lossy(&read_all(s).await).into_owned();
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    }
    let logs = gw.logs();
    assert!(!logs.contains("203.0.113.9"), "{logs}");
    // The listener without proxy_protocol counts nothing as refused headers.
    let m = ops::metrics(gw.admin(), None).await;
    let total: f64 = [&p, &v]
        .iter()
        .flat_map(|l| {
            ["untrusted", "missing", "malformed", "too_long", "timeout"]
                .map(|r| m.value(REFUSED, &lab(l, r)))
        })
        .sum();
    let samples = m.text.lines().filter(|l| l.starts_with(REFUSED)).count();
    assert_eq!(
        samples, 6,
        "only the two proxy_protocol listeners:\n{}",
        m.text
    );
    assert_eq!(total, 8.0, "{}", m.text);
}

/// `max_connections_per_ip` counts the address HAProxy carries, not HAProxy's own: a third
/// session from one client is refused with the usual 503 while another client still connects.
#[tokio::test]
async fn per_ip_limit_counts_the_carried_address() {
    let backend = backends::echo().await;
    let backend = backend.addr;
    let gw = TestGateway::start(&format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
proxy_protocol = "v2"
trusted = ["127.0.0.1/32"]

[admin]
bind = "{ADMIN_BIND}"

[limits]
max_connections_per_ip = 2

[[route]]
path = "/echo"
backend = "{backend}"
"#
    ))
    .await;
    let (_haproxy, fronts) = haproxy(&[(gw.addr(), "send-proxy-v2")]).await;
    let front = fronts[0];
    let mut a1 = ws_from(CLIENT_A, front, "/echo", &[]).await.unwrap();
    let a2 = ws_from(CLIENT_A, front, "/echo", &[]).await.unwrap();
    assert_eq!(
        ws_from(CLIENT_A, front, "/echo", &[]).await.err(),
        Some(503)
    );
    gw.wait_for_log("max_connections_per_ip", WAIT).await;
    let mut b1 = ws_from(CLIENT_B, front, "/echo", &[])
        .await
        .unwrap_or_else(|s| panic!("the other address got {s}:\n{}", gw.logs()));
    ops::echo(&mut b1, "b").await;
    ops::echo(&mut a1, "a").await;
    let mut clients = session_clients(gw.admin()).await;
    clients.sort();
    let ips: Vec<IpAddr> = clients
        .iter()
        .map(|c| c.parse::<SocketAddr>().unwrap().ip())
        .collect();
    assert_eq!(
        ips,
        ["127.0.0.5", "127.0.0.5", "127.0.0.6"].map(|s| s.parse::<IpAddr>().unwrap())
    );
    // A place freed is a place taken again.
    ops::close(a2).await;
    ops::wait_connections_open(gw.admin(), 2).await;
    let mut a3 = ws_from(CLIENT_A, front, "/echo", &[]).await.unwrap();
    ops::echo(&mut a3, "again").await;
    assert!(
        gw.logs()
            .lines()
            .filter(|l| l.contains("max_connections_per_ip"))
            .all(|l| l.contains(&client_field(CLIENT_A))),
        "{}",
        gw.logs()
    );
}

/// `forwarded = "x-forwarded-for"` behind a real nginx: the client's address is the one nginx
/// appended (a value the client sent itself, left of it, is not believed); the same header sent
/// straight to the gateway by a client outside `trusted` is ignored.
#[tokio::test]
async fn nginx_x_forwarded_for_names_the_client() {
    let mut rec = backends::recording_echo().await;
    let backend = rec.backend.addr;
    let gw = TestGateway::start(&format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
forwarded = "x-forwarded-for"
trusted = ["127.0.0.1/32"]

[admin]
bind = "{ADMIN_BIND}"

[[route]]
path = "/echo"
backend = "{backend}"
proxy_protocol = "v1"
"#
    ))
    .await;
    let (_nginx, front) = nginx(&gw.addr().to_string()).await;

    let mut ws = ws_from(
        CLIENT_A,
        front,
        "/echo",
        &[("X-Forwarded-For", "203.0.113.9")],
    )
    .await
    .unwrap_or_else(|s| panic!("got {s} through nginx:\n{}", gw.logs()));
    ops::send(&mut ws, Message::text("hello")).await;
    let mut conn = rec.accept().await;
    let (header, _) = auth::read_proxy(&mut conn, "hello".len()).await;
    assert_eq!(header.addrs().0.ip().to_string(), CLIENT_A, "{header:?}");
    assert_eq!(
        session_clients(gw.admin()).await,
        vec![format!("{CLIENT_A}:0")]
    );
    ops::close(ws).await;
    let logs = gw.wait_for_log("session closed", WAIT).await;
    let line = logs.lines().find(|l| l.contains("session closed")).unwrap();
    assert!(line.contains(&client_field(CLIENT_A)), "{logs}");

    // Straight to the gateway from 127.0.0.5 (not trusted): the header is ignored.
    let mut ws = ws_from(
        CLIENT_A,
        gw.addr(),
        "/echo",
        &[("X-Forwarded-For", "203.0.113.9")],
    )
    .await
    .unwrap();
    let me = ops::local_addr(&ws);
    ops::send(&mut ws, Message::text("direct")).await;
    assert_eq!(session_clients(gw.admin()).await, vec![me.to_string()]);
    let mut conn = rec.accept().await;
    let (header, _) = auth::read_proxy(&mut conn, "direct".len()).await;
    assert_eq!(header.addrs().0, me);
    ops::close(ws).await;
    gw.wait_for_count("session closed", 2, WAIT).await;
    assert!(!gw.logs().contains("203.0.113.9"), "{}", gw.logs());

    // A malformed header from the trusted proxy is refused with 400 and says why.
    let mut s = connect_from("127.0.0.1", gw.addr()).await;
    let to = gw.addr();
    s.write_all(
        format!(
            "GET /echo HTTP/1.1\r\nHost: {to}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             X-Forwarded-For: 203.0.113.9 garbage\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let answer = String::from_utf8_lossy(&read_all(s).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("malformed X-Forwarded-For header"),
        "{answer}"
    );
}

/// A TLS listener behind HAProxy in TCP mode: the PROXY header comes before the TLS handshake,
/// which then goes on between the client and the gateway as if HAProxy were not there.
#[tokio::test]
async fn proxy_header_before_tls() {
    use futures_util::{SinkExt, StreamExt};
    let backend = backends::echo().await;
    let backend = backend.addr;
    let dir = tempfile::tempdir().unwrap();
    let cert = crate::support::write_cert(dir.path());
    let gw = TestGateway::start_in(
        dir,
        &format!(
            r#"
[[listener]]
bind = "127.0.0.1:0"
tls = {{ cert = "cert.pem", key = "key.pem" }}
proxy_protocol = "v2"
trusted = ["127.0.0.1/32"]

[admin]
bind = "{ADMIN_BIND}"

[[route]]
path = "/echo"
backend = "{backend}"
"#
        ),
    )
    .await;
    let (_haproxy, fronts) = haproxy(&[(gw.addr(), "send-proxy-v2")]).await;
    let tcp = connect_from(CLIENT_A, fronts[0]).await;
    let me = tcp.local_addr().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("TLS handshake timed out")
        .expect("TLS handshake through HAProxy");
    let url = format!("wss://localhost:{}/echo", fronts[0].port());
    let (mut ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, tls))
        .await
        .expect("upgrade timed out")
        .expect("upgrade");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("over tls")).await.unwrap();
    let got = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.into_data(), "over tls".as_bytes());
    assert_eq!(session_clients(gw.admin()).await, vec![me.to_string()]);
    ws.close(None).await.unwrap();
}

/// Forward auth behind HAProxy: the auth service's `X-Forwarded-For` names the client HAProxy
/// carried, not HAProxy.
#[tokio::test]
async fn forward_auth_is_told_the_carried_client() {
    use crate::support::auth::{AuthReply, AuthServer, ALLOWED_ORIGIN};
    let mut svc = AuthServer::start(AuthReply::Allow(Some("alice"))).await;
    let backend = backends::echo().await;
    let backend = backend.addr;
    let url = svc.url("/verify");
    let gw = TestGateway::start(&format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
proxy_protocol = "v2"
trusted = ["127.0.0.1/32"]

[[route]]
path = "/echo"
backend = "{backend}"
allowed_origins = ["{ALLOWED_ORIGIN}"]
[route.auth]
type = "forward"
url = "{url}"
"#
    ))
    .await;
    let (_haproxy, fronts) = haproxy(&[(gw.addr(), "send-proxy-v2")]).await;
    let mut ws = ws_from(
        CLIENT_B,
        fronts[0],
        "/echo",
        &[
            ("X-Forwarded-For", "203.0.113.9"),
            ("Origin", ALLOWED_ORIGIN),
        ],
    )
    .await
    .unwrap_or_else(|s| panic!("got {s}:\n{}", gw.logs()));
    let req = svc.next_request().await;
    assert_eq!(req.header("x-forwarded-for"), Some(CLIENT_B), "{req:?}");
    ops::echo(&mut ws, "authorised").await;
    ops::close(ws).await;
}

/// A unix-socket listener behind nginx (`proxy_pass http://unix:...`): whoever may connect to the
/// socket is trusted, so the client nginx names is the client, also in the backend's PROXY
/// header.
#[tokio::test]
async fn nginx_to_a_unix_socket_listener() {
    let mut rec = backends::recording_echo().await;
    let backend = rec.backend.addr;
    let gw = TestGateway::start(&format!(
        r#"
[[listener]]
bind = "unix:gw.sock"
forwarded = "x-forwarded-for"
trusted = ["127.0.0.1/32"]

[admin]
bind = "{ADMIN_BIND}"

[[route]]
path = "/echo"
backend = "{backend}"
proxy_protocol = "v1"
"#
    ))
    .await;
    let (_nginx, front) = nginx(&format!("unix:{}:", gw.unix[0].display())).await;
    let mut ws = ws_from(CLIENT_B, front, "/echo", &[])
        .await
        .unwrap_or_else(|s| panic!("got {s} through nginx:\n{}", gw.logs()));
    ops::send(&mut ws, Message::text("over unix")).await;
    let mut conn = rec.accept().await;
    let (header, _) = auth::read_proxy(&mut conn, "over unix".len()).await;
    assert_eq!(header.addrs().0.ip().to_string(), CLIENT_B, "{header:?}");
    assert_eq!(
        session_clients(gw.admin()).await,
        vec![format!("{CLIENT_B}:0")]
    );
    ops::close(ws).await;
}
