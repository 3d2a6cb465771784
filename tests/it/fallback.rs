//! The fallback transport (streaming and long-polling over plain HTTP), end to end with real
//! loopback sockets and real backends: framing modes, exactly-once delivery through a proxy
//! that cuts responses, the binding of a session to its client, the session timeout, close
//! codes, and the built-in `/wsgate.js`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::backends::{self, Backend};
use crate::support::fallback::{self as fb, Client};
use crate::support::{ops, TestGateway};

const ORIGIN: &str = "https://app.example";
const WAIT: Duration = Duration::from_secs(10);

fn config(backend: &str, route_extra: &str, limits: &str) -> String {
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[admin]\nbind = \"{}\"\n\n[[route]]\npath = \"/f\"\nbackend = \"{backend}\"\nfallback = true\nallowed_origins = [\"{ORIGIN}\", \"https://other.example\"]\n{route_extra}\n\n[limits]\n{limits}\n",
        ops::ADMIN_BIND
    )
}

fn client(gw: &TestGateway) -> Client {
    Client::new(gw.addr(), "/f").with("origin", ORIGIN)
}

#[tokio::test]
async fn each_framing_mode_streams_and_sends_and_the_access_line_names_the_transport() {
    let echo = backends::echo().await;
    for framing in ["raw", "lines", "length-prefixed"] {
        let gw = TestGateway::start(&config(
            &echo.config_addr(),
            &format!("framing = \"{framing}\""),
            "",
        ))
        .await;
        let mut c = client(&gw);
        let (status, v) = c.open("streaming").await;
        assert_eq!(status, 200, "{framing}");
        assert_eq!(v["protocol"], "", "{v}");
        assert_eq!(v["max_message_size"], 1024 * 1024, "{v}");
        assert_eq!(v["poll_timeout_ms"], 25_000, "{v}");
        let mut stream = c.stream(0).await;
        assert_eq!(stream.status(), 200);
        assert_eq!(
            stream.headers()["content-type"],
            "application/x-wsgate-stream"
        );
        assert_eq!(stream.headers()["cache-control"], "no-store");
        assert_eq!(stream.headers()["x-accel-buffering"], "no");
        let mut body = Vec::new();
        fb::record(&mut body, fb::TEXT, b"hello");
        assert_eq!(c.send(0, body).await.unwrap(), (200, 1), "{framing}");
        let got = fb::read_stream(stream.body_mut(), 1).await;
        // Raw backend bytes are binary messages, as over WebSocket.
        let kind = if framing == "raw" {
            fb::BINARY
        } else {
            fb::TEXT
        };
        assert_eq!(got, vec![(kind, b"hello".to_vec())], "{framing}");
        // The client closes; the gateway answers with its close record.
        let mut close = Vec::new();
        fb::record(&mut close, fb::CLOSE, &1000u16.to_be_bytes());
        assert_eq!(c.send(1, close).await.unwrap(), (200, 2));
        let got = fb::read_stream(stream.body_mut(), 1).await;
        assert_eq!(got.len(), 1, "{framing}: {got:?}");
        assert_eq!(got[0].0, fb::CLOSE);
        assert_eq!(fb::close_code(&got[0].1), Some(1000));
        let line = gw
            .wait_for_log("session closed", WAIT)
            .await
            .lines()
            .find(|l| l.contains("session closed"))
            .unwrap()
            .to_string();
        assert!(line.contains("transport=\"streaming\""), "{line}");
        assert!(line.contains("client_close_code=1000"), "{line}");
        let m = ops::metrics(gw.admin(), None).await;
        assert_eq!(
            m.value(
                "wsgate_sessions_by_transport_total",
                &[("route", "/f"), ("transport", "streaming")]
            ),
            1.0
        );
    }
}

/// A TCP proxy in front of the gateway (one request per connection, as the gateway answers
/// with `Connection: close`) that loses about 5% of the answers: not at all, or cut after a
/// random part of them; POST answers also get lost after the request was forwarded.
async fn lossy_proxy(upstream: SocketAddr, cuts: Arc<AtomicU64>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            // xorshift64: deterministic, no dependency.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let roll = seed;
            let cuts = cuts.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let mut answer = Vec::new();
                let up = async {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if sw.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                };
                let down = sr.read_to_end(&mut answer);
                tokio::select! {
                    _ = down => {}
                    () = up => { let _ = sr.read_to_end(&mut answer).await; }
                }
                let lose = roll % 100 < 5;
                if lose && !answer.is_empty() {
                    cuts.fetch_add(1, Ordering::Relaxed);
                    // Half of them before the first byte, half somewhere inside.
                    let keep = if roll.is_multiple_of(2) {
                        0
                    } else {
                        (roll >> 8) as usize % answer.len()
                    };
                    let _ = cw.write_all(&answer[..keep]).await;
                    return;
                }
                let _ = cw.write_all(&answer).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn ten_thousand_messages_each_way_arrive_exactly_once_in_order_through_a_lossy_proxy() {
    const N: u64 = 10_000;
    let echo = backends::echo().await;
    let gw = TestGateway::start(&config(
        &echo.config_addr(),
        "framing = \"lines\"",
        "fallback_poll_timeout = \"2s\"",
    ))
    .await;
    let cuts = Arc::new(AtomicU64::new(0));
    let proxy = lossy_proxy(gw.addr(), cuts.clone()).await;
    let mut opener = Client::new(gw.addr(), "/f").with("origin", ORIGIN);
    assert_eq!(opener.open("polling").await.0, 200);
    let mut c = Client::new(proxy, "/f").with("origin", ORIGIN);
    c.session = opener.session.clone();
    let sender = {
        let c = c.clone();
        async move {
            let mut seq = 0u64;
            let mut failures = 0;
            while seq < N {
                let mut body = Vec::new();
                for i in seq..(seq + 50).min(N) {
                    fb::record(&mut body, fb::TEXT, i.to_string().as_bytes());
                }
                match c.send(seq, body).await {
                    Ok((200, ack)) => {
                        assert!(ack > seq && ack <= N, "ack {ack} after seq {seq}");
                        seq = ack;
                    }
                    Ok((status, _)) => panic!("send answered {status}"),
                    Err(_) => failures += 1,
                }
            }
            failures
        }
    };
    let receiver = async {
        let mut ack = 0u64;
        let mut failures = 0;
        while ack < N {
            match c.poll(ack).await {
                Ok((200, mut bytes, cut)) => {
                    failures += usize::from(cut);
                    for (kind, payload) in fb::take_records(&mut bytes) {
                        assert_eq!(kind, fb::TEXT);
                        assert_eq!(
                            String::from_utf8(payload).unwrap(),
                            ack.to_string(),
                            "message {ack} out of order or repeated"
                        );
                        ack += 1;
                    }
                }
                Ok((status, _, _)) => panic!("poll answered {status}"),
                Err(_) => failures += 1,
            }
        }
        failures
    };
    let (sent_failures, poll_failures) = tokio::time::timeout(Duration::from_secs(240), async {
        tokio::join!(sender, receiver)
    })
    .await
    .expect("the exchange finished in time");
    assert!(
        cuts.load(Ordering::Relaxed) > 0 && sent_failures + poll_failures > 0,
        "the proxy cut nothing: the test proves nothing"
    );
}

#[tokio::test]
async fn a_session_belongs_to_its_origin_and_credential() {
    let echo = backends::echo().await;
    let signer = crate::support::auth::hs256(b"fallback-secret-of-at-least-32-bytes");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("jwt-secret"),
        "fallback-secret-of-at-least-32-bytes",
    )
    .unwrap();
    let gw = TestGateway::start_in(dir, &format!(
        "{}\n[[route]]\npath = \"/a\"\nbackend = \"{}\"\nfallback = true\nallowed_origins = [\"{ORIGIN}\"]\n[route.auth]\ntype = \"jwt\"\ntoken_from = \"bearer\"\nalgorithms = [\"HS256\"]\nsecret_file = \"jwt-secret\"\n",
        config(&echo.config_addr(), "", ""),
        echo.config_addr()
    ))
    .await;
    // Disallowed Origin on open: 403, like a WebSocket handshake.
    let mut evil = Client::new(gw.addr(), "/f").with("origin", "https://evil.example");
    assert_eq!(evil.open("polling").await.0, 403);
    let mut c = client(&gw);
    assert_eq!(c.open("polling").await.0, 200);
    // Another allowed Origin with the same id: 403.
    let mut other = Client::new(gw.addr(), "/f").with("origin", "https://other.example");
    other.session = c.session.clone();
    assert_eq!(other.poll(0).await.unwrap().0, 403);
    // A disallowed Origin learns nothing about the id: 403 as for any id.
    evil.session = c.session.clone();
    assert_eq!(evil.poll(0).await.unwrap().0, 403);
    // A guessed id: 404.
    let mut guess = client(&gw);
    guess.session = "AAAAAAAAAAAAAAAAAAAAAA".into();
    assert_eq!(guess.poll(0).await.unwrap().0, 404);
    assert_eq!(guess.send(0, Vec::new()).await.unwrap().0, 404);
    // A POST without Wsgate-Fallback is no fallback request: no session effect.
    let mut body = Vec::new();
    fb::record(&mut body, fb::TEXT, b"smuggled");
    let h = vec![
        ("origin", ORIGIN.to_string()),
        ("wsgate-session", c.session.clone()),
        ("wsgate-seq", "0".to_string()),
    ];
    let (status, _, _) = fb::full(gw.addr(), "POST", "/f", &h, body).await.unwrap();
    assert_ne!(status, 200);
    // An OPTIONS preflight gets no CORS grant.
    let h = vec![
        ("origin", "https://evil.example".to_string()),
        ("access-control-request-method", "POST".to_string()),
        (
            "access-control-request-headers",
            "wsgate-fallback".to_string(),
        ),
    ];
    let (status, headers, _) = fb::full(gw.addr(), "OPTIONS", "/f", &h, Vec::new())
        .await
        .unwrap();
    assert_ne!(status, 200);
    assert!(
        !headers
            .keys()
            .any(|k| k.as_str().starts_with("access-control-")),
        "{headers:?}"
    );
    // The next message the session sends up is message 0: the smuggled one never arrived.
    let mut body = Vec::new();
    fb::record(&mut body, fb::TEXT, b"first");
    assert_eq!(c.send(0, body).await.unwrap(), (200, 1));
    let (_, mut got, _) = c.poll(0).await.unwrap();
    assert_eq!(
        fb::take_records(&mut got),
        vec![(fb::BINARY, b"first".to_vec())]
    );

    // A route with bearer auth: the id is bound to the token.
    let token = signer.sign(&crate::support::auth::good_claims("alice"));
    let mut a = Client::new(gw.addr(), "/a")
        .with("origin", ORIGIN)
        .with("authorization", &format!("Bearer {token}"));
    assert_eq!(a.open("polling").await.0, 200);
    assert_eq!(a.poll(0).await.unwrap().0, 200);
    let mut stranger = Client::new(gw.addr(), "/a").with("origin", ORIGIN);
    stranger.session = a.session.clone();
    assert_eq!(stranger.poll(0).await.unwrap().0, 403);
    let other_token = signer.sign(&crate::support::auth::good_claims("bob"));
    let mut bob = Client::new(gw.addr(), "/a")
        .with("origin", ORIGIN)
        .with("authorization", &format!("Bearer {other_token}"));
    bob.session = a.session.clone();
    assert_eq!(bob.poll(0).await.unwrap().0, 403);
    // A route without fallback = true: 404.
    let plain = TestGateway::one_route("/p", &echo.config_addr(), "").await;
    let mut p = Client::new(plain.addr(), "/p");
    assert_eq!(p.open("polling").await.0, 404);
}

#[tokio::test]
async fn a_client_that_stops_polling_ends_its_session_after_the_timeout() {
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    let closed_tx = Arc::new(std::sync::Mutex::new(Some(closed_tx)));
    let backend = Backend::spawn(move |mut s: TcpStream| {
        let tx = closed_tx.clone();
        async move {
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }
    })
    .await;
    let gw = TestGateway::start(&config(
        &backend.config_addr(),
        "",
        "fallback_session_timeout = \"1s\"\nfallback_poll_timeout = \"1s\"",
    ))
    .await;
    let mut c = client(&gw);
    assert_eq!(c.open("polling").await.0, 200);
    assert_eq!(c.poll(0).await.unwrap(), (200, Vec::new(), false));
    tokio::time::timeout(WAIT, closed_rx)
        .await
        .expect("the backend connection was closed")
        .unwrap();
    let logs = gw
        .wait_for_log("fallback client stopped polling", WAIT)
        .await;
    let line = logs.lines().find(|l| l.contains("session closed")).unwrap();
    assert!(line.contains("transport=\"polling\""), "{line}");
    // The id is gone once the session is over and no request came for the timeout.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, _, _) = c.poll(0).await.unwrap();
        if status == 404 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the id outlived its session"
        );
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
}

#[tokio::test]
async fn admin_delete_and_backend_close_deliver_the_websocket_close_codes() {
    let backend = backends::fin_after(b"bye\n").await;
    let echo = backends::echo().await;
    let gw = TestGateway::start(&config(&echo.config_addr(), "", "")).await;
    let mut c = client(&gw);
    assert_eq!(c.open("streaming").await.0, 200);
    let mut stream = c.stream(0).await;
    let list = ops::http(gw.admin(), "GET", "/sessions", None).await;
    let v: serde_json::Value = serde_json::from_str(&list.body).unwrap();
    let id = v.as_array().unwrap()[0]["id"].as_u64().unwrap();
    let del = ops::http(gw.admin(), "DELETE", &format!("/sessions/{id}"), None).await;
    assert!((200..300).contains(&del.status), "{del:?}");
    let got = fb::read_stream(stream.body_mut(), 1).await;
    assert_eq!(got[0].0, fb::CLOSE);
    assert_eq!(fb::close_code(&got[0].1), Some(1008));

    // A backend that sends and closes: its data, then the code a WebSocket client gets.
    let gw = TestGateway::start(&config(&backend.config_addr(), "", "")).await;
    let mut c = client(&gw);
    assert_eq!(c.open("polling").await.0, 200);
    let mut ws = ops::ws_with(&gw.url("/f"), &[("origin", ORIGIN)]).await;
    let ws_code = {
        let _ = ops::next_data(&mut ws).await;
        ops::close_code(&mut ws).await
    };
    let mut ack = 0;
    let mut seen = Vec::new();
    while !seen.iter().any(|(k, _): &(u8, Vec<u8>)| *k == fb::CLOSE) {
        let (status, mut bytes, _) = c.poll(ack).await.unwrap();
        assert_eq!(status, 200);
        let recs = fb::take_records(&mut bytes);
        ack += recs.len() as u64;
        seen.extend(recs);
    }
    assert_eq!(seen[0], (fb::BINARY, b"bye\n".to_vec()));
    assert_eq!(fb::close_code(&seen.last().unwrap().1), Some(ws_code));
}

#[tokio::test]
async fn the_client_script_is_served_and_its_path_is_reserved() {
    let echo = backends::echo().await;
    let gw = TestGateway::start(&config(&echo.config_addr(), "", "")).await;
    let (status, headers, body) = fb::full(gw.addr(), "GET", "/wsgate.js", &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-cache");
    let etag = headers["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.len() > 2, "{etag}");
    assert_eq!(
        String::from_utf8(body).unwrap(),
        include_str!("../../assets/wsgate.js")
    );
    let (status, _, body) = fb::full(
        gw.addr(),
        "GET",
        "/wsgate.js",
        &[("if-none-match", etag)],
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!((status, body.len()), (304, 0));
    let e = wsgate::config::Config::parse(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[[route]]\npath = \"/wsgate.js\"\nbackend = \"127.0.0.1:1\"\n",
        std::path::Path::new("."),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("route[0].path"), "{e}");
}

#[tokio::test]
async fn a_client_that_does_not_poll_stalls_the_backend_and_loses_nothing() {
    const TOTAL: u64 = 24 * 1024 * 1024;
    const CHUNK: usize = 16 * 1024;
    let (stall_tx, stall_rx) = tokio::sync::oneshot::channel();
    let stall_tx = Arc::new(std::sync::Mutex::new(Some(stall_tx)));
    let backend = Backend::spawn(move |mut s: TcpStream| {
        let stall_tx = stall_tx.clone();
        async move {
            let mut written = 0u64;
            while written < TOTAL {
                let chunk: Vec<u8> = (written..written + CHUNK as u64)
                    .map(|i| (i % 251) as u8)
                    .collect();
                let mut fut = std::pin::pin!(s.write_all(&chunk));
                let r = match tokio::time::timeout(Duration::from_millis(500), &mut fut).await {
                    Ok(r) => r,
                    Err(_) => {
                        if let Some(tx) = stall_tx.lock().unwrap().take() {
                            let _ = tx.send(written);
                        }
                        fut.await
                    }
                };
                if r.is_err() {
                    return;
                }
                written += CHUNK as u64;
            }
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
        }
    })
    .await;
    let gw = TestGateway::start(&config(
        &backend.config_addr(),
        "",
        "max_message_size = \"64KiB\"\nmax_frame_size = \"64KiB\"\nfallback_buffer = \"256KiB\"\nfallback_poll_timeout = \"2s\"",
    ))
    .await;
    let mut c = client(&gw);
    assert_eq!(c.open("polling").await.0, 200);
    let at_stall = tokio::time::timeout(WAIT, stall_rx)
        .await
        .expect("the backend's writes stalled while the client did not poll")
        .unwrap();
    // The buffer (256 KiB), the pipe, the pump's buffers and the loopback socket buffers: far
    // less than what the backend had to send.
    assert!(
        at_stall < 16 * 1024 * 1024,
        "the gateway read {at_stall} bytes"
    );
    let mut ack = 0;
    let mut got = 0u64;
    tokio::time::timeout(Duration::from_secs(120), async {
        while got < TOTAL {
            let (status, mut bytes, cut) = c.poll(ack).await.unwrap();
            assert_eq!((status, cut), (200, false));
            for (kind, payload) in fb::take_records(&mut bytes) {
                assert_eq!(kind, fb::BINARY);
                for b in payload {
                    assert_eq!(b, (got % 251) as u8, "byte {got}");
                    got += 1;
                }
                ack += 1;
            }
        }
    })
    .await
    .expect("everything arrived in time");
    assert_eq!(got, TOTAL);
}

/// One fallback request over an HTTP/2 connection: the status and the body stream.
async fn h2_request(
    client: &h2::client::SendRequest<bytes::Bytes>,
    method: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> (u16, h2::RecvStream) {
    let mut b = http::Request::builder()
        .method(method)
        .uri("https://localhost/f")
        .header("origin", ORIGIN);
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    let mut c = client.clone().ready().await.expect("a stream slot");
    let (resp, mut send) = c
        .send_request(b.body(()).unwrap(), body.is_empty())
        .expect("request sent");
    if !body.is_empty() {
        send.reserve_capacity(body.len());
        send.send_data(bytes::Bytes::from(body), true).unwrap();
    }
    let resp = tokio::time::timeout(WAIT, resp)
        .await
        .expect("an answer in time")
        .expect("an answer");
    (resp.status().as_u16(), resp.into_body())
}

/// Read an HTTP/2 body's records until `want` messages arrived or it ends.
async fn h2_records(body: &mut h2::RecvStream, want: usize) -> Vec<(u8, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    while out.len() < want {
        let Some(Ok(d)) = tokio::time::timeout(WAIT, body.data())
            .await
            .expect("records in time")
        else {
            break;
        };
        let _ = body.flow_control().release_capacity(d.len());
        buf.extend_from_slice(&d);
        out.extend(
            fb::take_records(&mut buf)
                .into_iter()
                .filter(|r| r.0 != fb::HEARTBEAT),
        );
    }
    out
}

#[tokio::test]
async fn open_stream_send_and_poll_share_one_http2_connection_over_tls_and_h2c() {
    let echo = backends::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let cert = crate::support::write_cert(dir.path());
    let gw = TestGateway::start_in(
        dir,
        &format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\ntls = {{ cert = \"cert.pem\", key = \"key.pem\" }}\n\n[[listener]]\nbind = \"127.0.0.1:0\"\nhttp2 = true\n\n[[route]]\npath = \"/f\"\nbackend = \"{}\"\nfallback = true\nallowed_origins = [\"{ORIGIN}\"]\n",
            echo.config_addr()
        ),
    )
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls));
    const SESSIONS: usize = 3;
    for (n, over_tls) in [true, false].into_iter().enumerate() {
        let tcp = TcpStream::connect(gw.addrs[usize::from(!over_tls)])
            .await
            .unwrap();
        let client = if over_tls {
            let io = tls
                .connect(
                    rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                    tcp,
                )
                .await
                .unwrap();
            assert_eq!(io.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            let (client, conn) = h2::client::handshake(io).await.unwrap();
            tokio::spawn(conn);
            client
        } else {
            let (client, conn) = h2::client::handshake(tcp).await.unwrap();
            tokio::spawn(conn);
            client
        };
        // Several sessions at once on the one connection: even ones stream, odd ones poll.
        let mut sessions = Vec::new();
        for i in 0..SESSIONS {
            let transport = if i % 2 == 0 { "streaming" } else { "polling" };
            let h = [
                ("wsgate-fallback", "open".to_string()),
                ("wsgate-transport", transport.to_string()),
            ];
            let (status, mut body) = h2_request(&client, "POST", &h, Vec::new()).await;
            assert_eq!(status, 200);
            let mut json = Vec::new();
            while let Some(Ok(d)) = body.data().await {
                json.extend_from_slice(&d);
            }
            let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
            sessions.push(v["session"].as_str().unwrap().to_string());
        }
        let mut streams = Vec::new();
        for (i, id) in sessions.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
            let h = [
                ("wsgate-fallback", "stream".to_string()),
                ("wsgate-session", id.clone()),
                ("wsgate-ack", "0".to_string()),
            ];
            let (status, body) = h2_request(&client, "POST", &h, Vec::new()).await;
            assert_eq!(status, 200);
            streams.push((i, body));
        }
        let send = |id: String, seq: u64, kind: u8, payload: Vec<u8>| {
            let client = client.clone();
            async move {
                let mut rec = Vec::new();
                fb::record(&mut rec, kind, &payload);
                let h = [
                    ("wsgate-fallback", "send".to_string()),
                    ("wsgate-session", id),
                    ("wsgate-seq", seq.to_string()),
                ];
                let (status, _) = h2_request(&client, "POST", &h, rec).await;
                assert_eq!(status, 200);
            }
        };
        for (i, id) in sessions.iter().enumerate() {
            send(id.clone(), 0, fb::TEXT, format!("hello {i}").into_bytes()).await;
        }
        for (i, body) in &mut streams {
            let got = h2_records(body, 1).await;
            assert_eq!(got, vec![(fb::BINARY, format!("hello {i}").into_bytes())]);
        }
        for (i, id) in sessions.iter().enumerate().filter(|(i, _)| i % 2 == 1) {
            let h = [
                ("wsgate-fallback", "poll".to_string()),
                ("wsgate-session", id.clone()),
                ("wsgate-ack", "0".to_string()),
            ];
            let (status, mut body) = h2_request(&client, "POST", &h, Vec::new()).await;
            assert_eq!(status, 200);
            let got = h2_records(&mut body, 1).await;
            assert_eq!(got, vec![(fb::BINARY, format!("hello {i}").into_bytes())]);
        }
        // Each client closes; the streams carry the gateway's close record.
        for id in &sessions {
            send(id.clone(), 1, fb::CLOSE, 1000u16.to_be_bytes().to_vec()).await;
        }
        for (_, body) in &mut streams {
            let got = h2_records(body, 1).await;
            assert_eq!(got[0].0, fb::CLOSE);
            assert_eq!(fb::close_code(&got[0].1), Some(1000));
        }
        let logs = gw
            .wait_for_count("session closed", SESSIONS * (n + 1), WAIT)
            .await;
        let lines: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("session closed"))
            .skip(SESSIONS * n)
            .collect();
        assert_eq!(lines.len(), SESSIONS, "{logs}");
        for transport in ["streaming", "polling"] {
            assert!(
                lines.iter().any(|l| l.contains("http_version=\"2\"")
                    && l.contains(&format!("transport=\"{transport}\""))),
                "{lines:?}"
            );
        }
        assert!(lines.iter().all(|l| l.contains("http_version=\"2\"")));
    }
}

/// A backend that writes a line every 10 ms and counts the lines it reads.
async fn ticking_backend(read: Arc<AtomicU64>) -> Backend {
    Backend::spawn(move |s: TcpStream| {
        let read = read.clone();
        async move {
            let (r, mut w) = s.into_split();
            let ticker = async {
                for i in 0u64.. {
                    if w.write_all(format!("tick {i}\n").as_bytes()).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            let reader = async {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(r).lines();
                while let Ok(Some(_)) = lines.next_line().await {
                    read.fetch_add(1, Ordering::Relaxed);
                }
            };
            tokio::select! { () = ticker => {}, () = reader => {} }
        }
    })
    .await
}

#[tokio::test]
async fn shutdown_under_traffic_delivers_the_close_record_1001_and_exits_within_the_grace() {
    const GRACE: Duration = Duration::from_secs(5);
    let read = Arc::new(AtomicU64::new(0));
    let backend = ticking_backend(read.clone()).await;
    let mut gw = crate::support::Gateway::start(&config(
        &backend.config_addr(),
        "framing = \"lines\"",
        "shutdown_grace = \"5s\"",
    ))
    .await;
    let mut c = Client::new(gw.addr(), "/f").with("origin", ORIGIN);
    assert_eq!(c.open("streaming").await.0, 200);
    let mut stream = c.stream(0).await;
    let sender = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut seq = 0;
            loop {
                let mut body = Vec::new();
                fb::record(&mut body, fb::TEXT, format!("up {seq}").as_bytes());
                match c.send(seq, body).await {
                    Ok((200, ack)) => seq = ack,
                    // Refused once the gateway drains.
                    _ => return seq,
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut got = Vec::new();
    let mut buf = Vec::new();
    while got.len() < 20 {
        got.extend(fb::next_records(stream.body_mut(), &mut buf).await);
    }
    assert!(got
        .iter()
        .all(|(k, p)| *k == fb::TEXT && p.starts_with(b"tick ")));
    let deadline = tokio::time::Instant::now() + WAIT;
    while read.load(Ordering::Relaxed) < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backend got no messages"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = std::time::Instant::now();
    gw.signal("TERM");
    // Ticks still flow until the close record, which ends the stream.
    let last = loop {
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
    assert_eq!(last, Some(1001));
    let status = gw.wait_exit(GRACE + Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "{}", gw.logs());
    assert!(started.elapsed() < GRACE + Duration::from_secs(5));
    assert!(sender.await.unwrap() > 0);
    let logs = gw.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("session closed"))
        .unwrap_or_else(|| panic!("no access line:\n{logs}"));
    assert!(line.contains("transport=\"streaming\""), "{line}");
    assert!(line.contains("close_code=1001"), "{line}");
    assert!(!logs.contains("still open after shutdown_grace"), "{logs}");
}

#[tokio::test]
async fn idle_timeout_and_token_expiry_close_fallback_sessions_like_websocket_ones() {
    let quiet = Backend::spawn(|mut s: TcpStream| async move {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
    })
    .await;
    let gw = TestGateway::start(&config(
        &quiet.config_addr(),
        "",
        "idle_timeout = \"1s\"\nfallback_poll_timeout = \"300ms\"",
    ))
    .await;
    let mut ws = ops::ws_with(&gw.url("/f"), &[("origin", ORIGIN)]).await;
    let ws_code = ops::close_code(&mut ws).await;
    let mut c = client(&gw);
    assert_eq!(c.open("polling").await.0, 200);
    // The client keeps polling (empty answers) and sends nothing.
    let mut polls = 0;
    let close = loop {
        let (status, mut bytes, _) = c.poll(0).await.unwrap();
        assert_eq!(status, 200);
        polls += 1;
        if let Some((fb::CLOSE, p)) = fb::take_records(&mut bytes).into_iter().next() {
            break p;
        }
        assert!(polls < 40, "no idle close");
    };
    assert!(polls > 1);
    assert_eq!(fb::close_code(&close), Some(ws_code));
    assert_eq!(&close[2..], b"idle timeout");

    // A JWT that expires while messages flow: the close code a WebSocket client gets (1008).
    let echo = backends::echo().await;
    let secret = "fallback-secret-of-at-least-32-bytes";
    let signer = crate::support::auth::hs256(secret.as_bytes());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwt-secret"), secret).unwrap();
    let gw = TestGateway::start_in(dir, &config(
        &echo.config_addr(),
        "[route.auth]\ntype = \"jwt\"\ntoken_from = \"bearer\"\nalgorithms = [\"HS256\"]\nsecret_file = \"jwt-secret\"\nleeway = \"0s\"",
        "",
    ))
    .await;
    let exp = crate::support::auth::now() + 2;
    let token = signer.sign(&crate::support::auth::claims_with(
        "alice",
        "exp",
        serde_json::json!(exp),
    ));
    let mut c = client(&gw).with("authorization", &format!("Bearer {token}"));
    assert_eq!(c.open("streaming").await.0, 200);
    let mut stream = c.stream(0).await;
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let (c, sent) = (c.clone(), sent.clone());
        tokio::spawn(async move {
            for seq in 0u64.. {
                let mut body = Vec::new();
                fb::record(&mut body, fb::TEXT, b"ping");
                if !matches!(c.send(seq, body).await, Ok((200, _))) {
                    return;
                }
                sent.store(seq + 1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut buf = Vec::new();
    let (code, payload) = loop {
        let recs = fb::next_records(stream.body_mut(), &mut buf).await;
        assert!(!recs.is_empty(), "the stream ended without a close record");
        if let Some((_, p)) = recs.into_iter().find(|r| r.0 == fb::CLOSE) {
            break (fb::close_code(&p), p);
        }
    };
    sender.abort();
    assert_eq!(code, Some(1008), "{payload:?}");
    assert_eq!(&payload[2..], b"credential expired");
    let sent = sent.load(Ordering::Relaxed);
    assert!(sent > 10, "{sent} messages before the expiry");
}

#[tokio::test]
async fn a_refused_open_writes_a_handshake_refused_line_with_route_status_and_transport() {
    let gw = TestGateway::start(&config("127.0.0.1:1", "", "connect_timeout = \"2s\"")).await;
    let mut evil = Client::new(gw.addr(), "/f").with("origin", "https://evil.example");
    assert_eq!(evil.open("polling").await.0, 403);
    let mut c = client(&gw);
    assert_eq!(c.open("streaming").await.0, 502);
    let logs = gw.wait_for_count("handshake refused", 2, WAIT).await;
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("handshake refused"))
        .collect();
    assert!(
        lines[0].contains("path=/f")
            && lines[0].contains("status=403")
            && lines[0].contains("transport=\"polling\""),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("path=/f")
            && lines[1].contains("status=502")
            && lines[1].contains("transport=\"streaming\""),
        "{}",
        lines[1]
    );
}
