//! wss:// listeners: a real TLS client (tokio-rustls, trusting a certificate made for the test)
//! under an independent WebSocket client; protocol versions and ALPN; the handshake deadline
//! covers TLS; a missing or bad certificate is a startup error naming the file.

use crate::support;
use crate::support::{cli, frames};

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;

use support::backends::{self, Backend};
use support::TestGateway;

const WAIT: Duration = Duration::from_secs(10);

async fn tls_gateway(backend: &Backend, limits: &str) -> (TestGateway, CertificateDer<'static>) {
    let dir = tempfile::tempdir().unwrap();
    let cert = support::write_cert(dir.path());
    let gw = TestGateway::start_in(
        dir,
        &format!(
            r#"
[[listener]]
bind = "127.0.0.1:0"
tls = {{ cert = "cert.pem", key = "key.pem" }}

[[route]]
path = "/echo"
backend = "{}"

[limits]
{limits}
"#,
            backend.config_addr()
        ),
    )
    .await;
    (gw, cert)
}

fn client_config(
    cert: &CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn tls_connect(
    gw: &TestGateway,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(gw.addr()).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    tokio::time::timeout(
        WAIT,
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .expect("TLS handshake timed out")
}

#[tokio::test]
async fn wss_echo_both_ways() {
    let backend = backends::echo().await;
    let (gw, cert) = tls_gateway(&backend, "").await;
    let tls = tls_connect(
        &gw,
        client_config(&cert, rustls::DEFAULT_VERSIONS, &[b"http/1.1"]),
    )
    .await
    .expect("TLS handshake");
    let url = format!("wss://localhost:{}/echo", gw.addr().port());
    let (mut ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, tls))
        .await
        .expect("upgrade timed out")
        .expect("upgrade");
    assert_eq!(resp.status(), 101);
    for m in [
        Message::text("over tls"),
        Message::binary(vec![0u8, 1, 2, 3]),
    ] {
        let want = m.clone().into_data();
        ws.send(m).await.unwrap();
        let got = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, Message::binary(want));
    }
    ws.close(None).await.unwrap();
    assert_eq!(backend.connections_made().await, 1);
}

#[tokio::test]
async fn tls_1_2_and_1_3_both_work() {
    let backend = backends::echo().await;
    let (gw, cert) = tls_gateway(&backend, "").await;
    for (version, want) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let tls = tls_connect(&gw, client_config(&cert, &[version], &[]))
            .await
            .expect("TLS handshake");
        assert_eq!(tls.get_ref().1.protocol_version(), Some(want));
    }
}

#[tokio::test]
async fn alpn_offers_h2_then_http_1_1() {
    let backend = backends::echo().await;
    let (gw, cert) = tls_gateway(&backend, "").await;
    let tls = tls_connect(
        &gw,
        client_config(&cert, rustls::DEFAULT_VERSIONS, &[b"h2", b"http/1.1"]),
    )
    .await
    .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let old = tls_connect(
        &gw,
        client_config(&cert, rustls::DEFAULT_VERSIONS, &[b"http/1.1"]),
    )
    .await
    .expect("TLS handshake");
    assert_eq!(old.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    // A client that offers something else entirely finds no common protocol.
    let other = tls_connect(
        &gw,
        client_config(&cert, rustls::DEFAULT_VERSIONS, &[b"spdy/3"]),
    )
    .await;
    assert!(
        other.is_err(),
        "an unknown ALPN protocol must not get a session"
    );
}

#[tokio::test]
async fn gateway_close_ends_with_close_notify() {
    // The backend ends the session: Close 1000, then a clean TLS shutdown (close_notify), which
    // rustls reports as Ok(0); a bare TCP close would be an UnexpectedEof error.
    let backend = backends::fin_after(b"done").await;
    let (gw, cert) = tls_gateway(&backend, "").await;
    let mut tls = tls_connect(&gw, client_config(&cert, rustls::DEFAULT_VERSIONS, &[]))
        .await
        .expect("TLS handshake");
    let head = frames::upgrade_request(gw.addr(), "/echo", &[]);
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut frames_seen = Vec::new();
    let mut head_done = false;
    loop {
        if !head_done {
            if let Some((resp, used)) = frames::parse_response(&buf) {
                assert_eq!(resp.status, 101, "{}", resp.raw);
                buf.drain(..used);
                head_done = true;
            }
        }
        if head_done {
            while let Some((f, used)) = frames::parse_server_frame(&buf) {
                buf.drain(..used);
                frames_seen.push(f);
            }
            if frames_seen
                .last()
                .is_some_and(|f| f.opcode == frames::OP_CLOSE)
            {
                break;
            }
        }
        let n = tokio::time::timeout(WAIT, tls.read(&mut chunk))
            .await
            .expect("read timed out")
            .expect("read");
        assert!(n > 0, "TLS stream ended before the Close: {frames_seen:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
    let close = frames_seen.pop().unwrap();
    assert_eq!(close.close_code(), Some(1000));
    assert_eq!(
        frames_seen
            .iter()
            .flat_map(|f| f.payload.clone())
            .collect::<Vec<_>>(),
        b"done"
    );
    tls.write_all(&frames::close(Some(1000), "")).await.unwrap();
    let n = tokio::time::timeout(WAIT, tls.read(&mut chunk))
        .await
        .expect("the gateway did not close the TLS stream")
        .expect("the TLS stream ended without close_notify");
    assert_eq!(n, 0);
}

async fn cut_after(gw: &TestGateway, first_bytes: &[u8]) -> Duration {
    let started = Instant::now();
    let mut s = frames::connect(gw.addr()).await;
    s.write_all(first_bytes).await.unwrap();
    let mut out = Vec::new();
    frames::read_to_end(&mut s, &mut out, WAIT).await;
    started.elapsed()
}

#[tokio::test]
async fn client_that_never_sends_a_client_hello_is_cut_at_the_handshake_deadline() {
    let backend = backends::echo().await;
    let (gw, _) = tls_gateway(&backend, "handshake_timeout = \"1s\"").await;
    let elapsed = cut_after(&gw, b"").await;
    assert!(
        elapsed >= Duration::from_millis(500),
        "cut too early: {elapsed:?}"
    );
}

#[tokio::test]
async fn client_that_stalls_inside_the_client_hello_is_cut_at_the_handshake_deadline() {
    let backend = backends::echo().await;
    let (gw, _) = tls_gateway(&backend, "handshake_timeout = \"1s\"").await;
    // A handshake record header announcing 512 bytes, then nothing.
    let elapsed = cut_after(&gw, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await;
    assert!(
        elapsed >= Duration::from_millis(500),
        "cut too early: {elapsed:?}"
    );
}

#[tokio::test]
async fn tls_completed_but_no_request_is_cut_at_the_handshake_deadline() {
    // The deadline covers TLS and the request head together.
    let backend = backends::echo().await;
    let (gw, cert) = tls_gateway(&backend, "handshake_timeout = \"1s\"").await;
    let started = Instant::now();
    let mut tls = tls_connect(&gw, client_config(&cert, rustls::DEFAULT_VERSIONS, &[]))
        .await
        .expect("TLS");
    let mut buf = [0u8; 1024];
    let r = tokio::time::timeout(WAIT, tls.read(&mut buf))
        .await
        .expect("not cut within 10 s");
    let elapsed = started.elapsed();
    assert!(!matches!(r, Ok(n) if n > 0), "unexpected data: {r:?}");
    assert!(
        elapsed >= Duration::from_millis(500),
        "cut too early: {elapsed:?}"
    );
}

fn tls_config_file(dir: &Path, cert: &str, key: &str) -> std::path::PathBuf {
    let path = dir.join("wsgate.toml");
    std::fs::write(
        &path,
        format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\ntls = {{ cert = \"{cert}\", key = \"{key}\" }}\n\n[[route]]\npath = \"/x\"\nbackend = \"127.0.0.1:9\"\n"
        ),
    )
    .unwrap();
    path
}

fn assert_startup_error_names(config: &Path, needle: &Path) {
    for args in [vec!["--config"], vec!["check", "--config"]] {
        let mut a: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        a.push(config.into());
        let out = cli::run_wsgate(&a, Duration::from_secs(20));
        let err = cli::stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("configuration error"), "{err}");
        assert!(
            err.contains(&needle.display().to_string()),
            "the message must name {}: {err}",
            needle.display()
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn missing_certificate_is_a_config_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    support::write_cert(dir.path());
    let config = tls_config_file(dir.path(), "absent.pem", "key.pem");
    assert_startup_error_names(&config, &dir.path().join("absent.pem"));
}

#[test]
fn missing_key_is_a_config_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    support::write_cert(dir.path());
    let config = tls_config_file(dir.path(), "cert.pem", "absent.key");
    assert_startup_error_names(&config, &dir.path().join("absent.key"));
}

#[test]
fn garbage_certificate_is_a_config_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    support::write_cert(dir.path());
    std::fs::write(dir.path().join("junk.pem"), "this is not a certificate\n").unwrap();
    let config = tls_config_file(dir.path(), "junk.pem", "key.pem");
    assert_startup_error_names(&config, &dir.path().join("junk.pem"));
}

#[test]
fn key_not_matching_the_certificate_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    support::write_cert(dir.path());
    let other = rcgen::generate_simple_self_signed(vec!["other".to_string()]).unwrap();
    std::fs::write(dir.path().join("other.key"), other.key_pair.serialize_pem()).unwrap();
    let config = tls_config_file(dir.path(), "cert.pem", "other.key");
    let out = cli::run_wsgate(
        [
            std::ffi::OsStr::new("check"),
            "--config".as_ref(),
            config.as_os_str(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2), "{}", cli::stderr(&out));
    assert!(
        cli::stderr(&out).contains("other.key"),
        "{}",
        cli::stderr(&out)
    );
}
