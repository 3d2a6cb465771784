//! JWT routes, end to end: for every credential source (cookie, bearer, subprotocol) and every key
//! type (HS256 from a file and from the environment, RS256, ES256, EdDSA), a valid token opens a
//! session whose data reaches the backend, and every bad token is a 401 with the Bearer challenge,
//! the right reason in the log, the token nowhere in the log, and no backend connection. A token
//! that expires while the session is open ends it with Close 1008.

use crate::support;
use crate::support::{auth, frames};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use auth::{
    assert_refused, attempt, claims_with, good_claims, now, refusal_line, Signer, ALLOWED_ORIGIN,
    AUDIENCE, ISSUER,
};
use support::backends::{self, Recorder};
use support::Gateway;

const LOG_WAIT: Duration = Duration::from_secs(15);
const HS_SECRET: &str = "test-only-hs256-secret-for-wsgate-jwt-tests-0123456789";

/// How the route's verification key is configured.
#[derive(Debug, Clone, Copy)]
enum Kind {
    HsFile,
    HsEnv,
    Rs,
    Es,
    Ed,
}

/// Where the client puts its token.
#[derive(Debug, Clone, Copy)]
enum Source {
    Cookie,
    Bearer,
    Subprotocol,
}

const SOURCES: [Source; 3] = [Source::Cookie, Source::Bearer, Source::Subprotocol];

impl Source {
    fn path(self) -> &'static str {
        match self {
            Source::Cookie => "/cookie",
            Source::Bearer => "/bearer",
            Source::Subprotocol => "/sub",
        }
    }

    /// Request headers carrying `token` (or no token).
    fn headers(self, token: Option<&str>) -> Vec<(String, String)> {
        let mut h = Vec::new();
        match self {
            Source::Cookie => {
                h.push(("Origin".into(), ALLOWED_ORIGIN.into()));
                match token {
                    Some(t) => {
                        h.push(("Cookie".into(), format!("theme=dark; session={t}; lang=en")))
                    }
                    None => h.push(("Cookie".into(), "theme=dark; lang=en".into())),
                }
            }
            Source::Bearer => {
                if let Some(t) = token {
                    h.push(("Authorization".into(), format!("Bearer {t}")));
                }
            }
            Source::Subprotocol => match token {
                Some(t) => h.push((
                    "Sec-WebSocket-Protocol".into(),
                    format!("app.v1, access_token.{t}"),
                )),
                None => h.push(("Sec-WebSocket-Protocol".into(), "app.v1".into())),
            },
        }
        h
    }
}

/// A gateway with one JWT route per source, all to one recording backend, verifying with `kind`.
struct Setup {
    gw: Gateway,
    rec: Recorder,
    signer: Signer,
    /// A key of the same family that the route does not trust.
    wrong_key: Signer,
    /// A token that uses an algorithm of another family (for RSA/EC/Ed routes: HS256 with the
    /// route's public key PEM as the HMAC secret, i.e. algorithm confusion).
    foreign_alg_token: String,
}

async fn setup(kind: Kind, env_var: &str) -> Setup {
    let rec = backends::recorder().await;
    let dir = tempfile::tempdir().unwrap();
    let good = good_claims("alice");
    let (alg, key_line, signer, wrong_key, foreign_alg_token) = match kind {
        Kind::HsFile | Kind::HsEnv => {
            let key_line = if matches!(kind, Kind::HsFile) {
                // A trailing newline is ignored.
                std::fs::write(dir.path().join("jwt-secret"), format!("{HS_SECRET}\n")).unwrap();
                "secret_file = \"jwt-secret\"".to_string()
            } else {
                // A variable name used by this test only; the child inherits the environment.
                std::env::set_var(env_var, HS_SECRET);
                format!("secret_env = \"{env_var}\"")
            };
            let (es, _) = auth::es256();
            (
                "HS256",
                key_line,
                auth::hs256(HS_SECRET.as_bytes()),
                auth::hs256(b"another-test-only-secret-that-is-long-enough"),
                es.sign(&good),
            )
        }
        Kind::Rs => {
            let (signer, public) = auth::rs256();
            std::fs::write(dir.path().join("jwt-public.pem"), &public).unwrap();
            let confused = auth::confused_token(&public, &good);
            (
                "RS256",
                "key_file = \"jwt-public.pem\"".into(),
                signer,
                auth::rs256_other(),
                confused,
            )
        }
        Kind::Es => {
            let (signer, public) = auth::es256();
            std::fs::write(dir.path().join("jwt-public.pem"), &public).unwrap();
            let confused = auth::confused_token(&public, &good);
            (
                "ES256",
                "key_file = \"jwt-public.pem\"".into(),
                signer,
                auth::es256().0,
                confused,
            )
        }
        Kind::Ed => {
            let (signer, public) = auth::ed25519();
            std::fs::write(dir.path().join("jwt-public.pem"), &public).unwrap();
            let confused = auth::confused_token(&public, &good);
            (
                "EdDSA",
                "key_file = \"jwt-public.pem\"".into(),
                signer,
                auth::ed25519().0,
                confused,
            )
        }
    };
    let auth = |from: &str| {
        format!(
            "[route.auth]\ntype = \"jwt\"\ntoken_from = \"{from}\"\nalgorithms = [\"{alg}\"]\n{key_line}\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\nleeway = \"0s\"\n"
        )
    };
    let b = rec.backend.config_addr();
    let config = format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"

[[route]]
path = "/cookie"
backend = "{b}"
allowed_origins = ["{ALLOWED_ORIGIN}"]
{cookie}cookie = "session"

[[route]]
path = "/bearer"
backend = "{b}"
{bearer}
[[route]]
path = "/sub"
backend = "{b}"
subprotocols = ["app.v1"]
{sub}"#,
        cookie = auth("cookie"),
        bearer = auth("bearer"),
        sub = auth("subprotocol"),
    );
    let gw = Gateway::start_in(dir, &config).await;
    Setup {
        gw,
        rec,
        signer,
        wrong_key,
        foreign_alg_token,
    }
}

/// Every refusal case for every source, then every valid case; see the module comment.
async fn matrix(kind: Kind, env_var: &str) {
    let s = setup(kind, env_var).await;
    let gw = &s.gw;
    let good = good_claims("alice");
    let valid = s.signer.sign(&good);
    let mut no_exp = good_claims("alice");
    no_exp.as_object_mut().unwrap().remove("exp");

    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "missing credential"),
        (
            "tampered payload",
            Some(auth::tampered(&valid, &good_claims("mallory"))),
            "token signature invalid",
        ),
        (
            "signed by another key",
            Some(s.wrong_key.sign(&good)),
            "token signature invalid",
        ),
        (
            "expired",
            Some(
                s.signer
                    .sign(&claims_with("alice", "exp", json!(now() - 60))),
            ),
            "token expired",
        ),
        (
            "wrong audience",
            Some(
                s.signer
                    .sign(&claims_with("alice", "aud", json!("other-service"))),
            ),
            "token audience not accepted",
        ),
        (
            "wrong issuer",
            Some(
                s.signer
                    .sign(&claims_with("alice", "iss", json!("https://evil.example"))),
            ),
            "token issuer not accepted",
        ),
        (
            "nbf in the future",
            Some(
                s.signer
                    .sign(&claims_with("alice", "nbf", json!(now() + 600))),
            ),
            "token not valid yet (nbf)",
        ),
        (
            "no exp",
            Some(s.signer.sign(&no_exp)),
            "token lacks a required claim",
        ),
        (
            "alg none",
            Some(auth::alg_none_token(&good)),
            "malformed token",
        ),
        (
            "algorithm of another key family (confusion)",
            Some(s.foreign_alg_token.clone()),
            "token algorithm not allowed",
        ),
        ("not a JWT", Some("not-a-jwt".into()), "malformed token"),
    ];

    let mut secrets: Vec<String> = vec![valid.clone()];

    // Valid tokens: 101, the data reaches the backend, and nothing of the token does.
    let mut rec = s.rec;
    for source in SOURCES {
        let headers = source.headers(Some(&valid));
        let extra: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut a = attempt(gw.addr(), source.path(), &extra).await;
        let label = format!("{kind:?} {source:?} valid");
        assert_eq!(
            a.status(),
            101,
            "{label}:\n{}\nlog:\n{}",
            a.response.raw,
            gw.logs()
        );
        assert_eq!(
            a.response.header("sec-websocket-accept"),
            Some(frames::ACCEPT),
            "{label}"
        );
        match source {
            Source::Subprotocol => assert_eq!(
                a.response.header("sec-websocket-protocol"),
                Some("app.v1"),
                "{label}: the configured subprotocol is answered, never the token entry"
            ),
            _ => assert_eq!(a.response.header("sec-websocket-protocol"), None, "{label}"),
        }
        assert!(!a.response.raw.contains(&valid), "{label}: token echoed");
        let msg = format!("hello from {source:?}");
        a.ws().send(&frames::text(&msg)).await;
        let mut conn = rec.accept().await;
        let got = conn.wait_for_len(msg.len()).await;
        assert_eq!(
            got,
            msg.as_bytes(),
            "{label}: the backend gets the message only"
        );
        let line = gw
            .wait_for_log(&format!("client={} subject=", a.local), LOG_WAIT)
            .await;
        let open = line
            .lines()
            .find(|l| l.contains("session open") && l.contains(&format!("client={}", a.local)))
            .unwrap_or_else(|| panic!("{label}: no session open line:\n{line}"));
        assert!(
            open.contains("alice"),
            "{label}: subject not logged: {open}"
        );
    }

    // Offering only the token entry (no subprotocol the route knows): still a 101, and the
    // answer names no subprotocol rather than echoing the token.
    let offer = format!("access_token.{valid}");
    let a = attempt(gw.addr(), "/sub", &[("Sec-WebSocket-Protocol", &offer)]).await;
    assert_eq!(a.status(), 101, "{}", a.response.raw);
    assert_eq!(
        a.response.header("sec-websocket-protocol"),
        None,
        "{}",
        a.response.raw
    );
    let _conn = rec.accept().await;

    // Refusals: 401, the Bearer challenge, the reason in the log, no backend connection.
    for source in SOURCES {
        for (what, token, reason) in &cases {
            let headers = source.headers(token.as_deref());
            let extra: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let a = attempt(gw.addr(), source.path(), &extra).await;
            let label = format!("{kind:?} {source:?} {what}");
            assert_refused(&a, 401, &label);
            assert!(
                !a.response.raw.contains("access_token"),
                "{label}: the token entry was echoed:\n{}",
                a.response.raw
            );
            if let Some(t) = token {
                assert!(
                    !String::from_utf8_lossy(&a.body).contains(t.as_str()),
                    "{label}: the token is in the answer body"
                );
                secrets.push(t.clone());
            }
            gw.wait_for_log(&refusal_line(a.local, source.path(), 401, reason), LOG_WAIT)
                .await;
        }
    }
    // The four valid handshakes above made one backend connection each; no refusal made one.
    assert_eq!(
        rec.backend.connections_made().await,
        4,
        "{kind:?}: a refused handshake opened a backend connection"
    );

    let logs = gw.logs();
    for t in &secrets {
        assert!(
            !logs.contains(t.as_str()),
            "{kind:?}: a token appears in the log: {t}\n{logs}"
        );
        if let Some(sig) = t.rsplit('.').next().filter(|s| s.len() > 8) {
            assert!(
                !logs.contains(sig),
                "{kind:?}: a token signature appears in the log"
            );
        }
    }
}

#[tokio::test]
async fn hs256_secret_file_all_sources() {
    matrix(Kind::HsFile, "").await;
}

#[tokio::test]
async fn hs256_secret_env_all_sources() {
    matrix(Kind::HsEnv, "WSGATE_AUTH_JWT_TEST_HS256_SECRET_ENV").await;
}

#[tokio::test]
async fn rs256_all_sources() {
    matrix(Kind::Rs, "").await;
}

#[tokio::test]
async fn es256_all_sources() {
    matrix(Kind::Es, "").await;
}

#[tokio::test]
async fn eddsa_all_sources() {
    matrix(Kind::Ed, "").await;
}

/// Credential shapes that are not one clean token: 401 with a reason, never a 500.
#[tokio::test]
async fn ambiguous_and_malformed_credentials() {
    let s = setup(Kind::HsFile, "").await;
    let gw = &s.gw;
    let t = s.signer.sign(&good_claims("alice"));
    let two_cookies = format!("session={t}; session={t}");
    let basic = format!("Basic {t}");
    let two_entries = format!("app.v1, access_token.{t}, access_token.{t}");
    let bearer = format!("Bearer {t}");
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "/cookie",
            vec![("Origin", ALLOWED_ORIGIN), ("Cookie", &two_cookies)],
            "more than one credential",
        ),
        (
            "/cookie",
            vec![("Origin", ALLOWED_ORIGIN), ("Cookie", "session=")],
            "missing credential",
        ),
        (
            "/cookie",
            // The token in another cookie, or in a header the route does not read.
            vec![("Origin", ALLOWED_ORIGIN), ("Authorization", &bearer)],
            "missing credential",
        ),
        (
            "/bearer",
            vec![("Authorization", &basic)],
            "Authorization is not a Bearer token",
        ),
        (
            "/bearer",
            vec![("Authorization", &bearer), ("Authorization", &bearer)],
            "more than one credential",
        ),
        (
            "/bearer",
            vec![("Authorization", "Bearer")],
            "malformed Authorization header",
        ),
        (
            "/sub",
            vec![("Sec-WebSocket-Protocol", &two_entries)],
            "more than one credential",
        ),
        (
            "/sub",
            vec![
                ("Sec-WebSocket-Protocol", "app.v1"),
                ("Authorization", &bearer),
            ],
            "missing credential",
        ),
    ];
    for (path, extra, reason) in cases {
        let a = attempt(gw.addr(), path, &extra).await;
        assert_refused(&a, 401, &format!("{path} {extra:?}"));
        gw.wait_for_log(&refusal_line(a.local, path, 401, reason), LOG_WAIT)
            .await;
    }
    assert_eq!(s.rec.backend.connections_made().await, 0);
    assert!(!gw.logs().contains(&t), "the token was logged");
}

/// A token with `exp` two seconds away (leeway 0s): the session works, then the gateway closes it
/// with 1008 once the token expires, and the backend connection ends.
#[tokio::test]
async fn session_is_closed_with_1008_when_the_token_expires() {
    let mut s = setup(Kind::HsFile, "").await;
    let exp = now() + 2;
    let token = s.signer.sign(&claims_with("alice", "exp", json!(exp)));
    let mut req = s.gw.url("/bearer").into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("connect timed out")
    .expect("handshake with a token valid for 2 s");
    assert_eq!(resp.status(), 101);
    let mut conn = s.rec.accept().await;

    // The session works while the token is valid.
    tokio::time::timeout(
        Duration::from_secs(5),
        ws.send(Message::text("before expiry")),
    )
    .await
    .expect("send timed out")
    .expect("send");
    assert_eq!(conn.wait_for_len(13).await, b"before expiry");
    conn.write(b"still valid").await;

    let close = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], b"still valid"),
                Some(Ok(other)) => panic!("unexpected message {other:?}"),
                Some(Err(e)) => panic!("connection failed before the Close: {e}"),
                None => panic!("connection ended without a Close"),
            }
        }
    })
    .await
    .expect("no Close within 10 s of the token's expiry");
    let at = SystemTime::now();
    let frame = close.expect("the Close carries a code");
    assert_eq!(frame.code, CloseCode::Policy, "{frame:?}");
    assert!(
        at + Duration::from_millis(100) >= UNIX_EPOCH + Duration::from_secs(exp),
        "closed before the token expired"
    );
    // The closing handshake completes (polling flushes our answering Close) and the gateway
    // closes TCP.
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(
        rest.is_ok(),
        "the gateway did not close TCP after the Close"
    );
    // The backend sees its connection end (FIN or reset, either way it is over).
    let end = conn.wait_end().await;
    assert!(
        matches!(end, backends::End::Eof | backends::End::Error(_)),
        "{end:?}"
    );
    s.gw.wait_for_log("close_code=1008", LOG_WAIT).await;
    assert!(!s.gw.logs().contains(&token), "the token was logged");
}

/// Validly signed tokens whose `exp`, `nbf` or `iat` is no date the clock can hold (2^63,
/// 2^64 - 1, u64::MAX as a float, 1e300, negative, past the year 9999): each is a 401 with its
/// reason logged, never a panic, and the gateway serves the next request.
#[tokio::test]
async fn time_claims_out_of_range_are_refused() {
    let mut s = setup(Kind::HsFile, "").await;
    let gw = &s.gw;
    let lacks = "token lacks a required claim";
    let cases = [
        ("exp", json!(1u64 << 63), "token exp out of range"),
        ("exp", json!(u64::MAX), "token exp out of range"),
        ("exp", json!(253_402_300_800u64), "token exp out of range"),
        ("exp", json!(u64::MAX as f64), lacks),
        ("exp", json!(1e300), lacks),
        ("exp", json!(-1), lacks),
        ("nbf", json!(1u64 << 63), "token not valid yet (nbf)"),
        ("nbf", json!(u64::MAX as f64), "token nbf out of range"),
        ("nbf", json!(1e300), "token nbf out of range"),
        ("nbf", json!(-1), "token nbf out of range"),
        ("iat", json!(1u64 << 63), "token iat out of range"),
        ("iat", json!(u64::MAX), "token iat out of range"),
        ("iat", json!(1e300), "token iat out of range"),
        ("iat", json!(-1), "token iat out of range"),
    ];
    for (claim, value, reason) in cases {
        let t = s.signer.sign(&claims_with("alice", claim, value.clone()));
        let bearer = format!("Bearer {t}");
        let a = attempt(gw.addr(), "/bearer", &[("Authorization", &bearer)]).await;
        let label = format!("{claim} = {value}");
        assert_refused(&a, 401, &label);
        gw.wait_for_log(&refusal_line(a.local, "/bearer", 401, reason), LOG_WAIT)
            .await;
    }
    assert_eq!(s.rec.backend.connections_made().await, 0);

    // Still serving: a good token opens a session that reaches the backend.
    let t = s.signer.sign(&good_claims("alice"));
    let bearer = format!("Bearer {t}");
    let mut a = attempt(gw.addr(), "/bearer", &[("Authorization", &bearer)]).await;
    assert_eq!(a.status(), 101, "{}\nlog:\n{}", a.response.raw, gw.logs());
    a.ws().send(&frames::text("after")).await;
    let mut conn = s.rec.accept().await;
    assert_eq!(conn.wait_for_len(5).await, b"after");
    // The last session's open line: everything logged before it is in the log too.
    let logs = gw
        .wait_for_log(&format!("client={} subject=", a.local), LOG_WAIT)
        .await;
    assert!(!logs.contains("panicked"), "{logs}");
}
