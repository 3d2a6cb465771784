//! TLS from the gateway to its backends: `tls://` backends (alone and in a pool), per-session
//! targets with `[route.target] tls = true`, and `[route.backend_tls]` (`ca_file`,
//! `server_name`, `cert`/`key`, `verify = false`). The backends are real TLS servers: an
//! in-process rustls server that reports how each connection went (handshake refused, or the
//! name it was asked for and the bytes it echoed), and `openssl s_server` as an independent peer.
//! Certificates come from a private CA made in the test with rcgen.

use crate::support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use support::ops;
use support::TestGateway;

const WAIT: Duration = Duration::from_secs(10);

/// A private certificate authority.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `names` (DNS names or IP addresses) signed by this CA: (cert PEM,
    /// key PEM).
    fn issue(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// How one connection to the TLS backend went.
#[derive(Debug)]
enum Conn {
    /// The handshake failed on the backend's side (or the peer broke it off).
    Refused(String),
    /// The handshake completed: the SNI name the gateway sent, what the backend received (and
    /// echoed) until the gateway closed, and whether that close was a TLS close_notify.
    Served {
        sni: Option<String>,
        received: Vec<u8>,
        close_notify: bool,
    },
}

/// A TLS echo backend: rustls server with `cert`, requiring a client certificate from
/// `client_ca` when given; optionally reading a PROXY v2 header in the clear first.
struct TlsEcho {
    addr: SocketAddr,
    conns: mpsc::UnboundedReceiver<Conn>,
    /// With `proxy_v2`: the header bytes and the first byte after them, per connection.
    prefaces: mpsc::UnboundedReceiver<(Vec<u8>, u8)>,
}

fn server_config(cert_pem: &str, key_pem: &str, client_ca: Option<&str>) -> rustls::ServerConfig {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder.with_single_cert(chain, key).unwrap()
}

impl TlsEcho {
    async fn start(cert_pem: &str, key_pem: &str, client_ca: Option<&str>) -> TlsEcho {
        TlsEcho::start_with(server_config(cert_pem, key_pem, client_ca), false).await
    }

    async fn start_with(config: rustls::ServerConfig, proxy_v2: bool) -> TlsEcho {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, conns) = mpsc::unbounded_channel();
        let (ptx, prefaces) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, tx, ptx) = (acceptor.clone(), tx.clone(), ptx.clone());
                tokio::spawn(async move {
                    if proxy_v2 {
                        // Signature (12), version/command, family, length (u16 BE), then that many.
                        let mut head = [0u8; 16];
                        if tcp.read_exact(&mut head).await.is_err() {
                            return;
                        }
                        let len = u16::from_be_bytes([head[14], head[15]]) as usize;
                        let mut rest = vec![0u8; len];
                        if tcp.read_exact(&mut rest).await.is_err() {
                            return;
                        }
                        let mut header = head.to_vec();
                        header.extend_from_slice(&rest);
                        let mut next = [0u8; 1];
                        if tcp.peek(&mut next).await.is_err() {
                            return;
                        }
                        let _ = ptx.send((header, next[0]));
                    }
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = tx.send(Conn::Refused(e.to_string()));
                            return;
                        }
                    };
                    let sni = tls.get_ref().1.server_name().map(str::to_owned);
                    let mut received = Vec::new();
                    let mut buf = [0u8; 4096];
                    // rustls reads 0 only after a close_notify; a bare FIN is an error.
                    let close_notify = loop {
                        match tls.read(&mut buf).await {
                            Ok(0) => break true,
                            Err(_) => break false,
                            Ok(n) => {
                                received.extend_from_slice(&buf[..n]);
                                // Flushed: rustls may hold written bytes until then.
                                if tls.write_all(&buf[..n]).await.is_err()
                                    || tls.flush().await.is_err()
                                {
                                    break false;
                                }
                            }
                        }
                    };
                    let _ = tls.shutdown().await;
                    let _ = tx.send(Conn::Served {
                        sni,
                        received,
                        close_notify,
                    });
                });
            }
        });
        TlsEcho {
            addr,
            conns,
            prefaces,
        }
    }

    /// How the next connection went.
    async fn next(&mut self) -> Conn {
        tokio::time::timeout(WAIT, self.conns.recv())
            .await
            .expect("the backend saw no connection end in time")
            .expect("backend gone")
    }
}

/// Write `files` (name, contents) into a fresh directory and start a gateway there on `config`.
async fn start(files: &[(&str, &str)], config: &str) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    TestGateway::start_in(dir, config).await
}

/// One listener, one route `/t` with `route` lines, the admin listener, and `tail` (tables of
/// the route, such as `[route.backend_tls]`).
fn config(route: &str, tail: &str) -> String {
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[admin]\nbind = \"{}\"\n\n[[route]]\npath = \"/t\"\n{route}\n{tail}\n",
        ops::ADMIN_BIND
    )
}

#[tokio::test]
async fn echo_through_a_tls_backend_verified_with_ca_file() {
    let ca = Ca::new("backend CA");
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let mut backend = TlsEcho::start(&cert, &key, None).await;
    let name = format!("tls://{}", backend.addr);
    let gw = start(
        &[("ca.pem", &ca.pem())],
        &config(
            &format!("backend = \"{name}\""),
            "[route.backend_tls]\nca_file = \"ca.pem\"",
        ),
    )
    .await;
    let mut ws = ops::ws(&gw.url("/t")).await;
    ops::echo(&mut ws, "through TLS").await;

    // /sessions and the session's log lines name the backend as tls://host:port.
    let r = ops::http(gw.admin(), "GET", "/sessions", None).await;
    let list: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(list[0]["backend"], name.as_str(), "{}", r.body);
    gw.wait_for_log(&format!("backend={name}"), WAIT).await;

    ops::close(ws).await;
    match backend.next().await {
        // An IP literal host is sent no SNI (RFC 6066 §3) and is verified against IP SANs.
        Conn::Served {
            sni,
            received,
            close_notify,
        } => {
            assert_eq!(sni, None);
            assert_eq!(received, b"through TLS");
            assert!(close_notify, "the session's end is a TLS close_notify");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_burst_larger_than_the_socket_buffers_arrives_whole_both_ways() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 24;
    let ca = Ca::new("backend CA");
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let mut backend = TlsEcho::start(&cert, &key, None).await;
    let gw = start(
        &[("ca.pem", &ca.pem())],
        &config(
            &format!("backend = \"tls://{}\"", backend.addr),
            "[route.backend_tls]\nca_file = \"ca.pem\"",
        ),
    )
    .await;
    let ws = ops::ws(&gw.url("/t")).await;
    let (mut tx, mut rx) = ws.split();
    let sent: Vec<u8> = (0..CHUNK * CHUNKS).map(|i| (i % 251) as u8).collect();
    let to_send = sent.clone();
    // All of it at once, while the echo comes back: the gateway's buffers towards the backend
    // fill, and what it holds must still go out without a later write to push it.
    let writer = tokio::spawn(async move {
        for chunk in to_send.chunks(CHUNK) {
            tx.send(Message::binary(chunk.to_vec())).await.unwrap();
        }
        tx
    });
    let mut got = Vec::with_capacity(sent.len());
    while got.len() < sent.len() {
        match tokio::time::timeout(WAIT, rx.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => got.extend_from_slice(&b),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            other => panic!("after {} of {} bytes: {other:?}", got.len(), sent.len()),
        }
    }
    assert!(got == sent, "the echo differs from what was sent");
    let tx = writer.await.unwrap();
    ops::close(tx.reunite(rx).unwrap()).await;
    match backend.next().await {
        Conn::Served { received, .. } => assert!(received == sent),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_502_and_nothing_reaches_the_backend() {
    let ca = Ca::new("backend CA");
    let other = Ca::new("some other CA");
    let (cert, key) = other.issue(&["127.0.0.1"]);
    let mut backend = TlsEcho::start(&cert, &key, None).await;
    let gw = start(
        &[("ca.pem", &ca.pem())],
        &config(
            &format!("backend = \"tls://{}\"", backend.addr),
            "[route.backend_tls]\nca_file = \"ca.pem\"",
        ),
    )
    .await;
    assert_eq!(ops::try_ws(&gw.url("/t"), &[]).await.err(), Some(502));
    assert!(
        matches!(backend.next().await, Conn::Refused(_)),
        "the handshake must not complete"
    );
    // The reason and the backend are in the warning.
    let log = gw.wait_for_log("UnknownIssuer", WAIT).await;
    assert!(log.contains(&format!("tls://{}", backend.addr)), "{log}");
}

#[tokio::test]
async fn the_name_verified_is_the_host_unless_server_name_says_otherwise() {
    let ca = Ca::new("backend CA");
    let (cert, key) = ca.issue(&["backend.internal"]);
    let mut backend = TlsEcho::start(&cert, &key, None).await;
    let route = format!("backend = \"tls://{}\"", backend.addr);

    // The host 127.0.0.1 is not in the certificate.
    let gw = start(
        &[("ca.pem", &ca.pem())],
        &config(&route, "[route.backend_tls]\nca_file = \"ca.pem\""),
    )
    .await;
    assert_eq!(ops::try_ws(&gw.url("/t"), &[]).await.err(), Some(502));
    assert!(matches!(backend.next().await, Conn::Refused(_)));
    gw.wait_for_log("certificate not valid for name", WAIT)
        .await;
    drop(gw);

    // server_name is sent as SNI and verified.
    let gw = start(
        &[("ca.pem", &ca.pem())],
        &config(
            &route,
            "[route.backend_tls]\nca_file = \"ca.pem\"\nserver_name = \"backend.internal\"",
        ),
    )
    .await;
    let mut ws = ops::ws(&gw.url("/t")).await;
    ops::echo(&mut ws, "named").await;
    ops::close(ws).await;
    match backend.next().await {
        Conn::Served { sni, received, .. } => {
            assert_eq!(sni.as_deref(), Some("backend.internal"));
            assert_eq!(received, b"named");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_backend_requiring_a_client_certificate_gets_the_configured_one() {
    let ca = Ca::new("backend CA");
    let clients = Ca::new("client CA");
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let (ccert, ckey) = clients.issue(&["gateway.internal"]);
    let mut backend = TlsEcho::start(&cert, &key, Some(&clients.pem())).await;
    let files = [
        ("ca.pem", ca.pem()),
        ("client.pem", ccert),
        ("client.key", ckey),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let route = format!("backend = \"tls://{}\"", backend.addr);

    let gw = start(
        &files,
        &config(
            &route,
            "[route.backend_tls]\nca_file = \"ca.pem\"\ncert = \"client.pem\"\nkey = \"client.key\"",
        ),
    )
    .await;
    let mut ws = ops::ws(&gw.url("/t")).await;
    ops::echo(&mut ws, "with a client certificate").await;
    ops::close(ws).await;
    assert!(
        matches!(backend.next().await, Conn::Served { .. }),
        "served"
    );
    drop(gw);

    // Without one, the backend refuses the handshake. In TLS 1.3 the client's side of the
    // handshake is over before the backend says so: the session is refused (502) or ends
    // without a single byte echoed.
    let gw = start(
        &files,
        &config(&route, "[route.backend_tls]\nca_file = \"ca.pem\""),
    )
    .await;
    if let Ok(mut ws) = ops::try_ws(&gw.url("/t"), &[]).await {
        use futures_util::SinkExt;
        let _ = ws
            .send(tokio_tungstenite::tungstenite::Message::text(
                "no certificate",
            ))
            .await;
        let code = ops::close_code(&mut ws).await;
        assert_ne!(code, 1000, "the session must fail");
    }
    match backend.next().await {
        Conn::Refused(e) => assert!(e.to_lowercase().contains("certificate"), "{e}"),
        other => panic!("the backend served a client without a certificate: {other:?}"),
    }
}

#[tokio::test]
async fn verify_false_accepts_a_self_signed_certificate_and_warns() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let mut backend = TlsEcho::start(&ck.cert.pem(), &ck.key_pair.serialize_pem(), None).await;
    let gw = start(
        &[],
        &config(
            &format!("backend = \"tls://{}\"", backend.addr),
            "[route.backend_tls]\nverify = false",
        ),
    )
    .await;
    gw.wait_for_log("verify = false", WAIT).await;
    let mut ws = ops::ws(&gw.url("/t")).await;
    ops::echo(&mut ws, "unverified").await;
    ops::close(ws).await;
    assert!(matches!(backend.next().await, Conn::Served { .. }));

    // The same backend with verification on (the default): refused.
    let gw = start(
        &[],
        &config(&format!("backend = \"tls://{}\"", backend.addr), ""),
    )
    .await;
    assert_eq!(ops::try_ws(&gw.url("/t"), &[]).await.err(), Some(502));
}

#[tokio::test]
async fn the_proxy_header_goes_in_the_clear_before_the_client_hello() {
    let ca = Ca::new("backend CA");
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let mut backend = TlsEcho::start_with(server_config(&cert, &key, None), true).await;
    let gw = start(
        &[("ca.pem", &ca.pem())],
        &config(
            &format!(
                "backend = \"tls://{}\"\nproxy_protocol = \"v2\"",
                backend.addr
            ),
            "[route.backend_tls]\nca_file = \"ca.pem\"",
        ),
    )
    .await;
    let mut ws = ops::ws(&gw.url("/t")).await;
    let client = ops::local_addr(&ws);
    ops::echo(&mut ws, "after the header").await;
    ops::close(ws).await;
    let (header, next) = tokio::time::timeout(WAIT, backend.prefaces.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&header[..12], b"\r\n\r\n\0\r\nQUIT\n", "v2 signature");
    // TCP over IPv4: the source address and port are the client's.
    assert_eq!(header[13], 0x11);
    let SocketAddr::V4(c) = client else {
        panic!("{client}")
    };
    assert_eq!(&header[16..20], &c.ip().octets());
    assert_eq!(u16::from_be_bytes([header[24], header[25]]), c.port());
    // Then a TLS handshake record: the ClientHello.
    assert_eq!(next, 0x16);
    match backend.next().await {
        Conn::Served { received, .. } => assert_eq!(received, b"after the header"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_backend_that_never_answers_the_handshake_is_504_within_connect_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (got_hello, mut hello) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            // Read the ClientHello, answer nothing, keep the connection open.
            let mut first = [0u8; 1];
            if s.read_exact(&mut first).await.is_ok() {
                let _ = got_hello.send(first[0]);
            }
            held.push(s);
        }
    });
    let gw = start(
        &[],
        &format!(
            "{}\n[limits]\nconnect_timeout = \"500ms\"\n",
            config(
                &format!("backend = \"tls://{addr}\""),
                "[route.backend_tls]\nverify = false"
            )
        ),
    )
    .await;
    let started = Instant::now();
    assert_eq!(ops::try_ws(&gw.url("/t"), &[]).await.err(), Some(504));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(hello.recv().await, Some(0x16), "a ClientHello was sent");
}

#[tokio::test]
async fn a_pool_fails_over_from_a_backend_whose_certificate_fails() {
    let ca = Ca::new("backend CA");
    let other = Ca::new("some other CA");
    let (bad_cert, bad_key) = other.issue(&["127.0.0.1"]);
    let (good_cert, good_key) = ca.issue(&["127.0.0.1"]);
    let mut bad = TlsEcho::start(&bad_cert, &bad_key, None).await;
    let mut good = TlsEcho::start(&good_cert, &good_key, None).await;
    let gw = start(
        &[("ca.pem", &ca.pem())],
        &config(
            &format!(
                "backends = [\"tls://{}\", \"tls://{}\"]",
                bad.addr, good.addr
            ),
            "[route.backend_tls]\nca_file = \"ca.pem\"",
        ),
    )
    .await;
    // Round-robin starts with the bad one: every session still reaches the good one.
    for text in ["one", "two"] {
        let mut ws = ops::ws(&gw.url("/t")).await;
        ops::echo(&mut ws, text).await;
        ops::close(ws).await;
        match good.next().await {
            Conn::Served { received, .. } => assert_eq!(received, text.as_bytes()),
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(bad.next().await, Conn::Refused(_)));
    gw.wait_for_log("backend connect failed", WAIT).await;
}

#[tokio::test]
async fn per_session_targets_are_connected_with_tls() {
    let ca = Ca::new("backend CA");
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let mut backend = TlsEcho::start(&cert, &key, None).await;
    let gw = start(
        &[
            ("ca.pem", &ca.pem()),
            ("tokens.txt", &format!("console: {}\n", backend.addr)),
        ],
        &config(
            "",
            &format!(
                "[route.target]\ntoken_from = \"query\"\nsource = \"file:tokens.txt\"\nallow = [\"{}\"]\ntls = true\n\n[route.backend_tls]\nca_file = \"ca.pem\"",
                backend.addr
            ),
        ),
    )
    .await;
    let mut ws = ops::ws(&format!("{}?token=console", gw.url("/t"))).await;
    ops::echo(&mut ws, "to the target").await;
    ops::close(ws).await;
    match backend.next().await {
        Conn::Served { received, .. } => assert_eq!(received, b"to the target"),
        other => panic!("{other:?}"),
    }
    gw.wait_for_log(&format!("backend=tls://{}", backend.addr), WAIT)
        .await;
}

/// An `openssl s_server` process, killed when dropped.
struct OpensslServer(std::process::Child);

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `openssl s_server` on `port` with `args`, run in `dir`; ready once it says ACCEPT.
async fn openssl_server(dir: &Path, port: u16, args: &[&str]) -> OpensslServer {
    use std::io::BufRead;
    let mut child = std::process::Command::new("openssl")
        .arg("s_server")
        .arg("-accept")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let stdout = child.stdout.take().unwrap();
    let server = OpensslServer(child);
    let (ready, accepting) = tokio::sync::oneshot::channel();
    // Reads what it prints (so that it never blocks on a full pipe) until it exits.
    std::thread::spawn(move || {
        let mut ready = Some(ready);
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if line.contains("ACCEPT") {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
        }
    });
    tokio::time::timeout(WAIT, accepting)
        .await
        .expect("openssl s_server did not start in time")
        .expect("openssl s_server ended before accepting");
    server
}

#[tokio::test]
async fn openssl_s_server_as_the_backend_with_a_client_certificate() {
    let ca = Ca::new("backend CA");
    let (cert, key) = ca.issue(&["localhost"]);
    let (ccert, ckey) = ca.issue(&["gateway.internal"]);
    let server_dir = tempfile::tempdir().unwrap();
    for (n, t) in [
        ("cert.pem", &cert),
        ("key.pem", &key),
        ("ca.pem", &ca.pem()),
    ] {
        std::fs::write(server_dir.path().join(n), t).unwrap();
    }
    let port = support::free_port();
    // -rev: each line comes back reversed; -Verify 1: a client certificate is required.
    let _server = openssl_server(
        server_dir.path(),
        port,
        &[
            "-cert", "cert.pem", "-key", "key.pem", "-CAfile", "ca.pem", "-Verify", "1", "-rev",
        ],
    )
    .await;
    let gw = start(
        &[
            ("ca.pem", &ca.pem()),
            ("client.pem", &ccert),
            ("client.key", &ckey),
        ],
        &config(
            &format!("backend = \"tls://localhost:{port}\""),
            "[route.backend_tls]\nca_file = \"ca.pem\"\ncert = \"client.pem\"\nkey = \"client.key\"",
        ),
    )
    .await;
    let mut ws = ops::ws(&gw.url("/t")).await;
    {
        use futures_util::SinkExt;
        ws.send(tokio_tungstenite::tungstenite::Message::binary(
            b"hello\n".to_vec(),
        ))
        .await
        .unwrap();
    }
    let mut got = Vec::new();
    while !got.ends_with(b"\n") {
        got.extend(ops::next_data(&mut ws).await);
    }
    assert_eq!(got, b"olleh\n");
    ops::close(ws).await;
}

#[test]
fn config_errors_name_the_key_and_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let parse = |route: &str, tail: &str| {
        wsgate::config::Config::parse(&config(route, tail), dir.path())
            .map(|_| ())
            .unwrap_err()
    };
    let tls = "backend = \"tls://127.0.0.1:9\"";

    let e = parse(tls, "[route.backend_tls]\ncert = \"client.pem\"");
    assert_eq!(e.key.as_deref(), Some("route[0].backend_tls.key"), "{e}");
    let e = parse(tls, "[route.backend_tls]\nkey = \"client.key\"");
    assert_eq!(e.key.as_deref(), Some("route[0].backend_tls.cert"), "{e}");

    let e = parse(tls, "[route.backend_tls]\nca_file = \"missing-ca.pem\"");
    assert_eq!(
        e.key.as_deref(),
        Some("route[0].backend_tls.ca_file"),
        "{e}"
    );
    assert!(e.to_string().contains("missing-ca.pem"), "{e}");

    std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
    let e = parse(tls, "[route.backend_tls]\nca_file = \"junk.pem\"");
    assert_eq!(
        e.key.as_deref(),
        Some("route[0].backend_tls.ca_file"),
        "{e}"
    );
    assert!(e.to_string().contains("junk.pem"), "{e}");

    let e = parse(
        tls,
        "[route.backend_tls]\ncert = \"missing-client.pem\"\nkey = \"missing-client.key\"",
    );
    assert_eq!(e.key.as_deref(), Some("route[0].backend_tls.cert"), "{e}");
    assert!(e.to_string().contains("missing-client.pem"), "{e}");

    let e = parse(tls, "[route.backend_tls]\nserver_name = \"not a name\"");
    assert_eq!(
        e.key.as_deref(),
        Some("route[0].backend_tls.server_name"),
        "{e}"
    );

    // The table without anything that speaks TLS, and TLS over a unix socket.
    let e = parse(
        "backend = \"127.0.0.1:9\"",
        "[route.backend_tls]\nverify = false",
    );
    assert_eq!(e.key.as_deref(), Some("route[0].backend_tls"), "{e}");
    let e = parse("backend = \"tls://unix:/run/app.sock\"", "");
    assert_eq!(e.key.as_deref(), Some("route[0].backend"), "{e}");
    let e = parse(
        "",
        "[route.target]\ntoken_from = \"query\"\nsource = \"file:t\"\nallow = [\"unix:/run/vnc/\"]\ntls = true",
    );
    assert_eq!(e.key.as_deref(), Some("route[0].target.tls"), "{e}");

    // tls:// in a pool parses; its name is shown with the scheme.
    let c = wsgate::config::Config::parse(
        &config(
            "backends = [\"tls://127.0.0.1:9\", \"tls://[::1]:9\", \"127.0.0.1:8\"]",
            "",
        ),
        dir.path(),
    )
    .unwrap();
    let names: Vec<String> = c.routes[0].backends.iter().map(|b| b.to_string()).collect();
    assert_eq!(
        names,
        ["tls://127.0.0.1:9", "tls://[::1]:9", "127.0.0.1:8"],
        "{names:?}"
    );
    assert!(c.routes[0].backend_tls.is_some());
}
