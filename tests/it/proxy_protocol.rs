//! The PROXY protocol header the gateway writes to a backend (HAProxy's spec, v1 and v2), parsed
//! by the backend stub: the client's real address and port, the gateway's address, and in v2 the
//! route, the session id and, on authenticated routes, the subject; then the client's message and
//! nothing else (no cookie or token value).

use crate::support;
use crate::support::{auth, frames};

use std::time::Duration;

use auth::{
    attempt, good_claims, refusal_line, Proxy, ALLOWED_ORIGIN, TLV_ROUTE, TLV_SESSION_ID,
    TLV_SUBJECT,
};
use support::backends::{self, Recorder};
use support::TestGateway;

const LOG_WAIT: Duration = Duration::from_secs(5);
const SECRET: &str = "test-only-hs256-secret-for-wsgate-proxy-protocol-tests";

/// Routes, each with its own recording backend:
/// `/v1` (v1), `/v2` (v2, no auth), `/v2bearer` (v2, bearer JWT), `/v2cookie` (v2, cookie JWT,
/// custom subject claim), `/plain` (no PROXY header).
struct Setup {
    gw: TestGateway,
    v1: Recorder,
    v2: Recorder,
    bearer: Recorder,
    cookie: Recorder,
    plain: Recorder,
}

async fn setup() -> Setup {
    let (v1, v2, bearer, cookie, plain) = (
        backends::recorder().await,
        backends::recorder().await,
        backends::recorder().await,
        backends::recorder().await,
        backends::recorder().await,
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwt-secret"), SECRET).unwrap();
    let gw = TestGateway::start_in(
        dir,
        &format!(
            r#"
[[listener]]
bind = "127.0.0.1:0"

[[route]]
path = "/v1"
backend = "{v1}"
proxy_protocol = "v1"

[[route]]
path = "/v2"
backend = "{v2}"
proxy_protocol = "v2"

[[route]]
path = "/v2bearer"
backend = "{bearer}"
proxy_protocol = "v2"
[route.auth]
type = "jwt"
token_from = "bearer"
algorithms = ["HS256"]
secret_file = "jwt-secret"

[[route]]
path = "/v2cookie"
backend = "{cookie}"
proxy_protocol = "v2"
allowed_origins = ["{ALLOWED_ORIGIN}"]
[route.auth]
type = "jwt"
token_from = "cookie"
cookie = "session"
algorithms = ["HS256"]
secret_file = "jwt-secret"
subject_claim = "email"

[[route]]
path = "/plain"
backend = "{plain}"

# Room for tokens with long subjects.
[limits]
max_header_bytes = "256KiB"
"#,
            v1 = v1.backend.config_addr(),
            v2 = v2.backend.config_addr(),
            bearer = bearer.backend.config_addr(),
            cookie = cookie.backend.config_addr(),
            plain = plain.backend.config_addr(),
        ),
    )
    .await;
    Setup {
        gw,
        v1,
        v2,
        bearer,
        cookie,
        plain,
    }
}

fn token(claims: &serde_json::Value) -> String {
    auth::hs256(SECRET.as_bytes()).sign(claims)
}

/// Open a session on `path` with `extra` headers, send `msg`, and return what the backend got:
/// the parsed PROXY header and the bytes after it. Also checks the addresses and (v2) the
/// route and session id TLVs against the gateway's log.
async fn session(
    gw: &TestGateway,
    rec: &mut Recorder,
    path: &str,
    extra: &[(&str, &str)],
    msg: &str,
) -> (Proxy, Vec<u8>, Vec<u8>) {
    let mut a = attempt(gw.addr(), path, extra).await;
    assert_eq!(
        a.status(),
        101,
        "{path}:\n{}\nlog:\n{}",
        a.response.raw,
        gw.logs()
    );
    a.ws().send(&frames::text(msg)).await;
    let mut conn = rec.accept().await;
    let (header, rest) = auth::read_proxy(&mut conn, msg.len()).await;

    // Source: the client socket as the test sees it; destination: the gateway's listener.
    assert_eq!(header.addrs(), (a.local, gw.addr()), "{path}: {header:?}");
    assert_eq!(a.local.ip().to_string(), "127.0.0.1");
    if let Proxy::V2 {
        ver_cmd,
        family,
        tlvs,
        ..
    } = &header
    {
        assert_eq!(*ver_cmd, 0x21, "version 2, command PROXY");
        assert_eq!(*family, 0x11, "TCP over IPv4");
        for (kind, _) in tlvs {
            assert!(
                [TLV_SUBJECT, TLV_ROUTE, TLV_SESSION_ID].contains(kind),
                "{path}: unexpected TLV {kind:#x}"
            );
        }
        assert_eq!(header.tlv_str(TLV_ROUTE).as_deref(), Some(path));
        let id = header
            .tlv_str(TLV_SESSION_ID)
            .expect("session id TLV present");
        assert!(
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()),
            "session id is ASCII decimal: {id:?}"
        );
        gw.wait_for_log(
            &format!("session open session={id} route={path} client={}", a.local),
            LOG_WAIT,
        )
        .await;
    }
    // The message follows the header, and nothing else was sent.
    assert_eq!(rest, msg.as_bytes(), "{path}: after the header");
    let all = conn.received();
    (header, rest, all)
}

#[tokio::test]
async fn v1_line_carries_client_and_gateway_addresses() {
    let mut s = setup().await;
    let mut a = attempt(s.gw.addr(), "/v1", &[]).await;
    assert_eq!(a.status(), 101, "{}", a.response.raw);
    a.ws().send(&frames::text("over v1")).await;
    let mut conn = s.v1.accept().await;
    let (header, rest) = auth::read_proxy(&mut conn, 7).await;
    assert_eq!(
        header,
        Proxy::V1 {
            family: "TCP4".into(),
            src: a.local,
            dst: s.gw.addr(),
        }
    );
    // Byte for byte, as HAProxy's spec writes it.
    let expected = format!(
        "PROXY TCP4 127.0.0.1 {} {} {}\r\nover v1",
        s.gw.addr().ip(),
        a.local.port(),
        s.gw.addr().port()
    );
    assert_eq!(
        String::from_utf8_lossy(&conn.received()),
        expected,
        "whole backend stream"
    );
    assert_eq!(rest, b"over v1");
}

#[tokio::test]
async fn v2_header_without_auth_has_route_and_session_but_no_subject() {
    let mut s = setup().await;
    let (header, _, _) = session(&s.gw, &mut s.v2, "/v2", &[], "over v2").await;
    assert_eq!(
        header.tlv(TLV_SUBJECT),
        None,
        "no subject on a route without auth"
    );
    // A second session gets another id.
    let (second, _, _) = session(&s.gw, &mut s.v2, "/v2", &[], "again").await;
    assert_ne!(
        header.tlv_str(TLV_SESSION_ID),
        second.tlv_str(TLV_SESSION_ID),
        "two sessions, two ids"
    );
}

#[tokio::test]
async fn v2_header_carries_the_jwt_subject_and_never_the_token() {
    let mut s = setup().await;
    let t = token(&good_claims("alice"));
    let bearer = format!("Bearer {t}");
    let (header, _, all) = session(
        &s.gw,
        &mut s.bearer,
        "/v2bearer",
        &[("Authorization", &bearer)],
        "authenticated",
    )
    .await;
    assert_eq!(header.tlv_str(TLV_SUBJECT).as_deref(), Some("alice"));
    let all = String::from_utf8_lossy(&all);
    assert!(!all.contains(&t), "the token reached the backend");
    assert!(
        !all.contains("Bearer"),
        "the Authorization header reached the backend"
    );

    // A token without the subject claim: no subject TLV.
    let mut claims = good_claims("x");
    claims.as_object_mut().unwrap().remove("sub");
    let anon = token(&claims);
    let bearer = format!("Bearer {anon}");
    let (header, _, _) = session(
        &s.gw,
        &mut s.bearer,
        "/v2bearer",
        &[("Authorization", &bearer)],
        "anonymous",
    )
    .await;
    assert_eq!(header.tlv(TLV_SUBJECT), None, "credential names no subject");
    let logs = s.gw.logs();
    assert!(
        !logs.contains(&t) && !logs.contains(&anon),
        "a token was logged"
    );
}

#[tokio::test]
async fn v2_subject_follows_subject_claim_and_cookie_stays_at_the_gateway() {
    let mut s = setup().await;
    let mut claims = good_claims("user-1234");
    claims["email"] = "carol@example.com".into();
    let t = token(&claims);
    let cookie = format!("theme=dark; session={t}; other=visible-only-to-gateway");
    let (header, _, all) = session(
        &s.gw,
        &mut s.cookie,
        "/v2cookie",
        &[("Origin", ALLOWED_ORIGIN), ("Cookie", &cookie)],
        "cookie session",
    )
    .await;
    assert_eq!(
        header.tlv_str(TLV_SUBJECT).as_deref(),
        Some("carol@example.com"),
        "subject_claim = \"email\""
    );
    let all = String::from_utf8_lossy(&all);
    for secret in [
        t.as_str(),
        "session=",
        "visible-only-to-gateway",
        "theme=dark",
    ] {
        assert!(
            !all.contains(secret),
            "{secret:?} reached the backend: {all:?}"
        );
    }
    assert!(!s.gw.logs().contains(&t), "the token was logged");
}

/// A refused handshake on a PROXY route writes no header anywhere: no backend connection at all.
#[tokio::test]
async fn refused_handshake_writes_no_header() {
    let s = setup().await;
    let a = attempt(s.gw.addr(), "/v2bearer", &[]).await;
    auth::assert_refused(&a, 401, "no token");
    let a = attempt(
        s.gw.addr(),
        "/v2cookie",
        &[("Origin", "https://evil.example"), ("Cookie", "session=x")],
    )
    .await;
    auth::assert_refused(&a, 403, "foreign Origin");
    assert_eq!(s.bearer.backend.connections_made().await, 0);
    assert_eq!(s.cookie.backend.connections_made().await, 0);
}

/// Without `proxy_protocol` the backend receives the message only.
#[tokio::test]
async fn no_header_without_proxy_protocol() {
    let mut s = setup().await;
    let mut a = attempt(s.gw.addr(), "/plain", &[]).await;
    assert_eq!(a.status(), 101, "{}", a.response.raw);
    a.ws().send(&frames::text("just this")).await;
    let mut conn = s.plain.accept().await;
    assert_eq!(conn.wait_for_len(9).await, b"just this");
}

/// The subject travels in a v2 TLV, and the header's length field has 16 bits. A subject of up to
/// 4096 bytes arrives whole; a longer one is refused with 401 before any backend is connected,
/// rather than reaching the backend in a header whose length wrapped past 64 KiB.
#[tokio::test]
async fn long_subjects_are_refused_before_the_backend() {
    let mut s = setup().await;
    let longest = "s".repeat(4096);
    let bearer = format!("Bearer {}", token(&good_claims(&longest)));
    let (header, _, _) = session(
        &s.gw,
        &mut s.bearer,
        "/v2bearer",
        &[("Authorization", &bearer)],
        "longest subject",
    )
    .await;
    assert_eq!(
        header.tlv_str(TLV_SUBJECT).as_deref(),
        Some(longest.as_str())
    );

    for len in [4097, 65_536, 70_000] {
        let bearer = format!("Bearer {}", token(&good_claims(&"s".repeat(len))));
        let a = attempt(s.gw.addr(), "/v2bearer", &[("Authorization", &bearer)]).await;
        auth::assert_refused(&a, 401, &format!("subject of {len} bytes"));
        s.gw.wait_for_log(
            &refusal_line(a.local, "/v2bearer", 401, "subject too long"),
            LOG_WAIT,
        )
        .await;
    }
    assert_eq!(
        s.bearer.backend.connections_made().await,
        1,
        "a refused subject opened a backend connection"
    );
}
