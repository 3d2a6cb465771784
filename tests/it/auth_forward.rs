//! Forward auth against a real HTTP service started by the test: what the auth request carries,
//! how each answer maps to the client's status (2xx -> 101, 401 -> 401, 403 -> 403, anything else,
//! a timeout or an unreachable service -> 503), the subject handed to the backend in PROXY v2, the
//! decision cache, and that a refusal never opens a backend connection.

use crate::support;
use crate::support::{auth, frames};

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use auth::{assert_refused, attempt, refusal_line, AuthReply, AuthServer, ALLOWED_ORIGIN};
use support::backends::{self, Backend};
use support::TestGateway;

const LOG_WAIT: Duration = Duration::from_secs(5);
const COOKIE: &str = "session=c00kie-value-never-forwarded-to-backend; theme=dark";

/// A gateway with the forward route `/desk` to `backend`, asking `url`; `auth_extra` goes into
/// `[route.auth]`, `route_extra` into the route.
async fn gateway(backend: &str, url: &str, route_extra: &str, auth_extra: &str) -> TestGateway {
    TestGateway::start(&format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"

[[route]]
path = "/desk"
backend = "{backend}"
allowed_origins = ["{ALLOWED_ORIGIN}"]
{route_extra}
[route.auth]
type = "forward"
url = "{url}"
identity_header = "X-Auth-User"
{auth_extra}
"#
    ))
    .await
}

fn browser_headers(cookie: &str) -> Vec<(&str, &str)> {
    vec![
        ("Origin", ALLOWED_ORIGIN),
        ("Cookie", cookie),
        ("User-Agent", "wsgate-test/1.0"),
    ]
}

#[tokio::test]
async fn allow_forwards_the_request_context_and_the_subject_reaches_the_backend() {
    let mut svc = AuthServer::start(AuthReply::Allow(Some("alice"))).await;
    let mut rec = backends::recorder().await;
    let gw = gateway(
        &rec.backend.config_addr(),
        &svc.url("/verify?app=desk"),
        "proxy_protocol = \"v2\"",
        "",
    )
    .await;

    let path = "/desk?room=7&q=a%20b";
    let mut a = attempt(
        gw.addr(),
        path,
        &[
            ("Origin", ALLOWED_ORIGIN),
            ("Cookie", COOKIE),
            ("Authorization", "Bearer opaque-test-credential"),
            ("User-Agent", "wsgate-test/1.0"),
            ("X-Forwarded-For", "203.0.113.9"),
        ],
    )
    .await;
    assert_eq!(a.status(), 101, "{}\nlog:\n{}", a.response.raw, gw.logs());

    // What the auth service was asked.
    let req = svc.next_request().await;
    assert_eq!(req.method, "GET", "{req:?}");
    assert_eq!(req.target, "/verify?app=desk", "{req:?}");
    assert_eq!(req.header("cookie"), Some(COOKIE), "{req:?}");
    assert_eq!(req.header("origin"), Some(ALLOWED_ORIGIN), "{req:?}");
    assert_eq!(
        req.header("authorization"),
        Some("Bearer opaque-test-credential"),
        "{req:?}"
    );
    assert_eq!(req.header("user-agent"), Some("wsgate-test/1.0"), "{req:?}");
    assert_eq!(req.header("x-forwarded-uri"), Some(path), "{req:?}");
    assert_eq!(
        req.header("x-forwarded-host"),
        Some(gw.addr().to_string().as_str()),
        "{req:?}"
    );
    // The client's own X-Forwarded-For is not trusted: the gateway states the peer address.
    assert_eq!(req.header("x-forwarded-for"), Some("127.0.0.1"), "{req:?}");
    assert_eq!(req.header("x-forwarded-method"), Some("GET"), "{req:?}");
    assert_eq!(req.header("x-forwarded-proto"), Some("ws"), "{req:?}");
    assert_eq!(req.header("x-wsgate-route"), Some("/desk"), "{req:?}");
    assert_eq!(
        req.header("host"),
        Some(svc.addr.to_string().as_str()),
        "{req:?}"
    );
    assert_eq!(svc.count(), 1);

    // The backend learns the subject from the PROXY v2 header, and gets the message, nothing else.
    let msg = b"hello desk";
    a.ws().send(&frames::text("hello desk")).await;
    let mut conn = rec.accept().await;
    let (header, rest) = auth::read_proxy(&mut conn, msg.len()).await;
    assert_eq!(header.tlv_str(auth::TLV_SUBJECT).as_deref(), Some("alice"));
    assert_eq!(header.tlv_str(auth::TLV_ROUTE).as_deref(), Some("/desk"));
    assert_eq!(header.addrs(), (a.local, gw.addr()));
    assert_eq!(rest, msg);
    let all = conn.received();
    let all = String::from_utf8_lossy(&all);
    assert!(
        !all.contains("c00kie-value") && !all.contains("opaque-test-credential"),
        "a credential reached the backend: {all:?}"
    );
    let logs = gw
        .wait_for_log(&format!("client={} subject=", a.local), LOG_WAIT)
        .await;
    assert!(
        !logs.contains("c00kie-value") && !logs.contains("opaque-test-credential"),
        "a credential was logged:\n{logs}"
    );
}

/// Each answer of the auth service, and what the client gets. Only the 2xx answers reach the
/// backend.
#[tokio::test]
async fn auth_service_answers_map_to_client_statuses() {
    let svc = AuthServer::start(AuthReply::Allow(None)).await;
    let backend = backends::echo().await;
    let gw = gateway(&backend.config_addr(), &svc.url("/verify"), "", "").await;
    let table: [(AuthReply, u16, &str); 9] = [
        (AuthReply::Status(401), 401, "refused by the auth service"),
        (AuthReply::Status(403), 403, "denied by the auth service"),
        (AuthReply::Status(500), 503, ""),
        (AuthReply::Status(502), 503, ""),
        (AuthReply::Status(404), 503, ""),
        (AuthReply::Status(302), 503, ""),
        (AuthReply::Status(400), 503, ""),
        (AuthReply::Allow(Some("bob")), 101, ""),
        (AuthReply::Status(204), 101, ""),
    ];
    let mut upgrades = 0;
    for (i, (reply, status, reason)) in table.into_iter().enumerate() {
        svc.set_reply(reply.clone());
        let mut a = attempt(gw.addr(), "/desk", &browser_headers(COOKIE)).await;
        let what = format!("auth service answers {reply:?}");
        if status == 101 {
            assert_eq!(a.status(), 101, "{what}:\n{}", a.response.raw);
            let ws = a.ws();
            ws.send(&frames::text("through")).await;
            assert_eq!(ws.next_frame().await.expect("echo").payload, b"through");
            upgrades += 1;
        } else {
            assert_refused(&a, status, &what);
            let needle = if reason.is_empty() {
                format!(
                    "handshake refused client={} path=/desk status={status}",
                    a.local
                )
            } else {
                refusal_line(a.local, "/desk", status, reason)
            };
            gw.wait_for_log(&needle, LOG_WAIT).await;
        }
        assert_eq!(svc.count(), i + 1, "{what}: one auth request per handshake");
    }
    assert_eq!(backend.connections_made().await, upgrades);
    assert!(!gw.logs().contains("c00kie-value"), "the cookie was logged");
}

async fn assert_503_no_backend(gw: &TestGateway, backend: &Backend, what: &str) -> SocketAddr {
    let a = attempt(gw.addr(), "/desk", &browser_headers(COOKIE)).await;
    assert_refused(&a, 503, what);
    assert_eq!(backend.connections_made().await, 0, "{what}");
    a.local
}

#[tokio::test]
async fn slow_auth_service_is_503_after_the_timeout() {
    let svc = AuthServer::start(AuthReply::Hang).await;
    let backend = backends::echo().await;
    let gw = gateway(
        &backend.config_addr(),
        &svc.url("/verify"),
        "",
        "timeout = \"500ms\"",
    )
    .await;
    let started = Instant::now();
    let local = assert_503_no_backend(&gw, &backend, "auth service never answers").await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(4),
        "answered after {took:?}; the timeout is 500ms"
    );
    assert_eq!(svc.count(), 1, "the request did reach the slow service");
    gw.wait_for_log(
        &refusal_line(local, "/desk", 503, "auth service timed out"),
        LOG_WAIT,
    )
    .await;
}

#[tokio::test]
async fn unreachable_auth_service_is_503() {
    let closed = backends::closed_port();
    let backend = backends::echo().await;
    let gw = gateway(
        &backend.config_addr(),
        &format!("http://{closed}/verify"),
        "",
        "timeout = \"2s\"",
    )
    .await;
    let local = assert_503_no_backend(&gw, &backend, "auth service down").await;
    gw.wait_for_log(
        &refusal_line(local, "/desk", 503, "auth service unreachable"),
        LOG_WAIT,
    )
    .await;
}

/// With `cache_ttl`, a second handshake with the same credential is decided from the cache; a
/// different cookie is a different credential.
#[tokio::test]
async fn decisions_are_cached_per_credential() {
    let svc = AuthServer::start(AuthReply::Allow(Some("alice"))).await;
    let backend = backends::echo().await;
    let gw = gateway(
        &backend.config_addr(),
        &svc.url("/verify"),
        "",
        "cache_ttl = \"30s\"",
    )
    .await;
    for round in 0..2 {
        let a = attempt(gw.addr(), "/desk", &browser_headers("session=one")).await;
        assert_eq!(a.status(), 101, "round {round}:\n{}", a.response.raw);
    }
    assert_eq!(
        svc.count(),
        1,
        "the second handshake should come from the cache"
    );
    let a = attempt(gw.addr(), "/desk", &browser_headers("session=two")).await;
    assert_eq!(a.status(), 101, "{}", a.response.raw);
    assert_eq!(svc.count(), 2, "another cookie is another credential");

    // Denials are cached too: the service now allows, but the cached 403 for "three" stands.
    svc.set_reply(AuthReply::Status(403));
    let a = attempt(gw.addr(), "/desk", &browser_headers("session=three")).await;
    assert_refused(&a, 403, "denied");
    svc.set_reply(AuthReply::Allow(Some("alice")));
    let a = attempt(gw.addr(), "/desk", &browser_headers("session=three")).await;
    assert_refused(&a, 403, "cached denial");
    assert_eq!(svc.count(), 3);
    assert_eq!(backend.connections_made().await, 3);
}

/// Without `cache_ttl`, every handshake asks the service.
#[tokio::test]
async fn without_a_cache_every_handshake_asks() {
    let svc = AuthServer::start(AuthReply::Allow(None)).await;
    let backend = backends::echo().await;
    let gw = gateway(&backend.config_addr(), &svc.url("/verify"), "", "").await;
    for _ in 0..3 {
        let a = attempt(gw.addr(), "/desk", &browser_headers("session=same")).await;
        assert_eq!(a.status(), 101, "{}", a.response.raw);
    }
    assert_eq!(svc.count(), 3);
}

/// Origin comes first: a missing or foreign Origin is a 403 without asking the auth service.
#[tokio::test]
async fn origin_is_checked_before_asking_the_service() {
    let svc = AuthServer::start(AuthReply::Allow(Some("alice"))).await;
    let backend = backends::echo().await;
    let gw = gateway(&backend.config_addr(), &svc.url("/verify"), "", "").await;
    for (what, extra) in [
        ("missing Origin", vec![("Cookie", COOKIE)]),
        (
            "foreign Origin",
            vec![("Origin", "https://evil.example"), ("Cookie", COOKIE)],
        ),
        ("null Origin", vec![("Origin", "null"), ("Cookie", COOKIE)]),
    ] {
        let a = attempt(gw.addr(), "/desk", &extra).await;
        assert_refused(&a, 403, what);
    }
    assert_eq!(
        svc.count(),
        0,
        "the auth service was asked for a refused Origin"
    );
    assert_eq!(backend.connections_made().await, 0);
}
