//! The per-route Origin policy, as a client sees it on the wire: listed origins (after
//! normalisation, and subdomains of a wildcard entry) get a 101; everything else, malformed values
//! included, gets a 403 with `Connection: close` and never a backend connection;
//! `allow_missing_origin` lets non-browser clients in without an Origin, never with `null`.

use crate::support;
use crate::support::{auth, frames};

use auth::{assert_refused, attempt, attempt_raw, refusal_line, ALLOWED_ORIGIN};
use support::backends::{self, Backend};
use support::TestGateway;

use std::time::Duration;

const LOG_WAIT: Duration = Duration::from_secs(5);
const SECRET: &str = "test-only-hs256-secret-for-wsgate-origin-tests";

/// `/app` allows an exact origin and a wildcard; `/api` is a bearer route that also accepts
/// requests without an Origin.
async fn gateway(backend: &Backend) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwt-secret"), format!("{SECRET}\n")).unwrap();
    TestGateway::start_in(
        dir,
        &format!(
            r#"
[[listener]]
bind = "127.0.0.1:0"

[[route]]
path = "/app"
backend = "{b}"
allowed_origins = ["https://app.example.com", "https://*.example.org"]

[[route]]
path = "/api"
backend = "{b}"
allowed_origins = ["https://app.example.com"]
allow_missing_origin = true
[route.auth]
type = "jwt"
token_from = "bearer"
algorithms = ["HS256"]
secret_file = "jwt-secret"
"#,
            b = backend.config_addr()
        ),
    )
    .await
}

fn bearer_token() -> String {
    auth::hs256(SECRET.as_bytes()).sign(&auth::good_claims("alice"))
}

#[tokio::test]
async fn listed_origins_are_accepted_after_normalisation() {
    let backend = backends::echo().await;
    let gw = gateway(&backend).await;
    let accepted = [
        "https://app.example.com",
        "https://APP.Example.COM",
        "HTTPS://app.example.com",
        "https://app.example.com:443",
        "https://a.example.org",
        "https://a.b.example.org",
        "https://A.Example.ORG:443",
    ];
    for origin in accepted {
        let mut a = attempt(gw.addr(), "/app", &[("Origin", origin)]).await;
        assert_eq!(
            a.status(),
            101,
            "{origin}: expected 101:\n{}",
            a.response.raw
        );
        assert_eq!(
            a.response.header("sec-websocket-accept"),
            Some(frames::ACCEPT),
            "{origin}"
        );
        // The session really works: the echo backend answers.
        let ws = a.ws();
        ws.send(&frames::text("ping")).await;
        let f = ws.next_frame().await.expect("an echoed frame");
        assert_eq!(f.payload, b"ping", "{origin}");
    }
    assert_eq!(backend.connections_made().await, accepted.len());
}

#[tokio::test]
async fn other_origins_are_refused_with_403_and_no_backend_connection() {
    let backend = backends::echo().await;
    let gw = gateway(&backend).await;
    let refused = [
        // Look-alikes of the exact entry.
        "https://app.example.com.evil.io",
        "https://evil-app.example.com",
        "https://xapp.example.com",
        "http://app.example.com",
        "https://app.example.com:8443",
        "https://app.example.com.",
        "https://sub.app.example.com",
        // The wildcard entry: not the bare domain, not another scheme, port or suffix.
        "https://example.org",
        "https://evilexample.org",
        "https://a.example.org.evil.io",
        "http://a.example.org",
        "https://a.example.org:8443",
        "https://a.example.org.",
        "https://.example.org",
        "https://*.example.org",
        // Opaque and malformed values.
        "null",
        "garbage",
        "",
        "*",
        "app.example.com",
        "https://",
        "https://app.example.com/",
        "https://app.example.com/path",
        "https://app.example.com?x=1",
        "https://app.example.com#frag",
        "https://user@app.example.com",
        "https://user:pw@app.example.com",
        "https://app.example.com:",
        "https://app.example.com:99999",
        "https://app.example.com:0",
        "https://app.example.com:443:443",
        "https://app.example.com:-1",
        "https://app.example.com\\",
        "https://app.exa mple.com",
        "https://[::1",
        "https://[not-v6]",
        "ftp://app.example.com",
        "ws//app.example.com",
        "https:/app.example.com",
        "javascript://app.example.com",
        "file://",
    ];
    for origin in refused {
        let a = attempt(gw.addr(), "/app", &[("Origin", origin)]).await;
        assert_refused(&a, 403, &format!("Origin {origin:?}"));
        gw.wait_for_log(
            &format!("handshake refused client={} path=/app status=403", a.local),
            LOG_WAIT,
        )
        .await;
    }

    // Missing Origin.
    let a = attempt(gw.addr(), "/app", &[]).await;
    assert_refused(&a, 403, "missing Origin");
    gw.wait_for_log(
        &refusal_line(
            a.local,
            "/app",
            403,
            "an Origin header is required on this route",
        ),
        LOG_WAIT,
    )
    .await;

    // Two Origin headers, even if both are allowed.
    for (first, second) in [
        (ALLOWED_ORIGIN, ALLOWED_ORIGIN),
        (ALLOWED_ORIGIN, "https://evil.io"),
        ("https://evil.io", ALLOWED_ORIGIN),
    ] {
        let a = attempt(gw.addr(), "/app", &[("Origin", first), ("Origin", second)]).await;
        assert_refused(&a, 403, &format!("two Origin headers {first} + {second}"));
        gw.wait_for_log(
            &refusal_line(a.local, "/app", 403, "more than one Origin header"),
            LOG_WAIT,
        )
        .await;
    }

    // Bytes that are not UTF-8 (obs-text) and control bytes in the value.
    for value in [
        &b"https://\xffapp.example.com"[..],
        b"https://app.example.com\xc3\xa9",
        b"https://app\x7fexample.com",
    ] {
        let mut head = frames::upgrade_request(gw.addr(), "/app", &[])
            .trim_end_matches("\r\n")
            .as_bytes()
            .to_vec();
        head.extend_from_slice(b"\r\nOrigin: ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n\r\n");
        let a = attempt_raw(gw.addr(), &head).await;
        assert_ne!(a.status(), 500, "{value:?}");
        assert!(
            a.status() == 403 || a.status() == 400,
            "Origin bytes {value:?}: expected 403 (or 400 from the HTTP parser), got:\n{}",
            a.response.raw
        );
        assert!(a.response.connection_close(), "{}", a.response.raw);
    }

    assert_eq!(
        backend.connections_made().await,
        0,
        "a refused handshake must not open a backend connection"
    );
    assert!(
        !gw.logs().contains("status=500"),
        "no Origin value may cause a 500:\n{}",
        gw.logs()
    );
}

/// Origin is checked before the credential: a foreign Origin with a valid token is a 403, and a
/// foreign Origin without a token is a 403 too (not a 401).
#[tokio::test]
async fn origin_is_checked_before_the_credential() {
    let backend = backends::echo().await;
    let gw = gateway(&backend).await;
    let token = bearer_token();
    let bearer = format!("Bearer {token}");
    let a = attempt(
        gw.addr(),
        "/api",
        &[("Origin", "https://evil.io"), ("Authorization", &bearer)],
    )
    .await;
    assert_refused(&a, 403, "foreign Origin with a valid token");
    let a = attempt(gw.addr(), "/api", &[("Origin", "https://evil.io")]).await;
    assert_refused(&a, 403, "foreign Origin without a token");
    let a = attempt(
        gw.addr(),
        "/api",
        &[("Origin", "null"), ("Authorization", &bearer)],
    )
    .await;
    assert_refused(&a, 403, "null Origin with a valid token");
    // A listed Origin without a token reaches the credential check.
    let a = attempt(gw.addr(), "/api", &[("Origin", ALLOWED_ORIGIN)]).await;
    assert_refused(&a, 401, "listed Origin, no token");
    assert!(!gw.logs().contains(&token), "the token was logged");

    // And with both right, the session opens.
    let a = attempt(
        gw.addr(),
        "/api",
        &[("Origin", ALLOWED_ORIGIN), ("Authorization", &bearer)],
    )
    .await;
    assert_eq!(a.status(), 101, "{}", a.response.raw);
    // Only that last handshake reached the backend.
    assert_eq!(backend.connections_made().await, 1);
}

/// `allow_missing_origin = true` (a bearer route) does not open the door to `null`, a foreign
/// Origin, repeated or empty Origins; and it is per route.
#[tokio::test]
async fn allow_missing_origin_still_refuses_null_foreign_and_repeated_origins() {
    let backend = backends::echo().await;
    let gw = gateway(&backend).await;
    let token = bearer_token();
    let bearer = format!("Bearer {token}");

    for (what, extra) in [
        (
            "null Origin",
            vec![("Origin", "null"), ("Authorization", bearer.as_str())],
        ),
        (
            "foreign Origin",
            vec![
                ("Origin", "https://evil.io"),
                ("Authorization", bearer.as_str()),
            ],
        ),
        (
            "two Origins",
            vec![
                ("Origin", ALLOWED_ORIGIN),
                ("Origin", ALLOWED_ORIGIN),
                ("Authorization", bearer.as_str()),
            ],
        ),
        (
            "empty Origin",
            vec![("Origin", ""), ("Authorization", bearer.as_str())],
        ),
    ] {
        let a = attempt(gw.addr(), "/api", &extra).await;
        assert_refused(&a, 403, what);
    }
    // The option is per route: /app (no allow_missing_origin) still refuses a missing Origin.
    let a = attempt(gw.addr(), "/app", &[]).await;
    assert_refused(
        &a,
        403,
        "missing Origin on a route without allow_missing_origin",
    );
    assert_eq!(backend.connections_made().await, 0);
    assert!(!gw.logs().contains(&token), "the token was logged");
}

/// `allow_missing_origin = true` (a bearer route): a request without any Origin header passes
/// the Origin policy, so it is decided by its credential: 401 without a token, 101 with one.
#[tokio::test]
async fn allow_missing_origin_accepts_a_request_without_origin() {
    let backend = backends::echo().await;
    let gw = gateway(&backend).await;
    let token = bearer_token();
    let bearer = format!("Bearer {token}");

    // No Origin with a valid token: accepted, and the session works.
    let mut a = attempt(gw.addr(), "/api", &[("Authorization", &bearer)]).await;
    assert_eq!(
        a.status(),
        101,
        "no Origin with a valid token on an allow_missing_origin route: expected 101, got:\n{}\nlog:\n{}",
        a.response.raw,
        gw.logs()
    );
    let ws = a.ws();
    ws.send(&frames::text("scripted")).await;
    assert_eq!(ws.next_frame().await.expect("echo").payload, b"scripted");

    // No Origin and no token: the Origin policy lets it through, the credential check does not.
    let a = attempt(gw.addr(), "/api", &[]).await;
    assert_eq!(
        a.status(),
        401,
        "no Origin, no token on an allow_missing_origin route: expected 401 from the \
         credential check, got:\n{}\nlog:\n{}",
        a.response.raw,
        gw.logs()
    );
    assert_refused(&a, 401, "no Origin, no token");
    assert_eq!(backend.connections_made().await, 1);
    assert!(!gw.logs().contains(&token), "the token was logged");
}
