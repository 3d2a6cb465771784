//! The admin listener over real sockets: health and readiness (also while draining after
//! SIGTERM), Prometheus metrics whose values move as sessions open and close, the live session
//! list and closing a session with 1008, and the bearer token.

use crate::support;
use crate::support::{auth, frames, ops};

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::{Gateway, Opts};
use frames::{RawWs, OP_CLOSE};
use ops::{ADMIN_BIND, WAIT};
use serde_json::{json, Value};
use support::backends::{self, Backend};

const ORIGIN: &str = "https://app.example.com";
const JWT_SECRET: &[u8] = b"admin-test-jwt-secret-0123456789";

/// /echo (plain), /strict (Origin policy), /jwt (bearer JWT, HS256 secret in jwt.secret).
fn config(echo: &Backend, admin_extra: &str, limits: &str) -> String {
    let b = echo.config_addr();
    format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"

[admin]
bind = "{ADMIN_BIND}"
{admin_extra}

[[route]]
path = "/echo"
backend = "{b}"

[[route]]
path = "/strict"
backend = "{b}"
allowed_origins = ["{ORIGIN}"]

[[route]]
path = "/jwt"
backend = "{b}"
[route.auth]
type = "jwt"
token_from = "bearer"
algorithms = ["HS256"]
secret_file = "jwt.secret"

[limits]
{limits}
"#
    )
}

async fn start(echo: &Backend, admin_extra: &str, limits: &str, env: &[(&str, &str)]) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwt.secret"), JWT_SECRET).unwrap();
    Gateway::start_with(
        &config(echo, admin_extra, limits),
        Opts {
            dir: Some(dir),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Opts::default()
        },
    )
    .await
}

#[tokio::test]
async fn healthz_and_readyz_answer_200_while_serving() {
    let echo = backends::echo().await;
    let gw = start(&echo, "", "", &[]).await;
    let admin = gw.admin();

    let h = ops::http(admin, "GET", "/healthz", None).await;
    assert_eq!(h.status, 200, "{h:?}");
    let r = ops::http(admin, "GET", "/readyz", None).await;
    assert_eq!(r.status, 200, "{r:?}");

    let nope = ops::http(admin, "GET", "/nope", None).await;
    assert_eq!(nope.status, 404, "{nope:?}");
    let post = ops::http(admin, "POST", "/metrics", None).await;
    assert_eq!(post.status, 405, "{post:?}");

    // The admin listener is not a WebSocket listener and the WebSocket listener is no admin.
    let on_ws_listener = ops::http(gw.addr(), "GET", "/healthz", None).await;
    assert_eq!(on_ws_listener.status, 404, "{on_ws_listener:?}");
}

/// SIGTERM with a session open whose client does not answer the Close: the process stays up
/// (close_timeout and shutdown_grace are long), and meanwhile `/readyz` must say 503.
#[tokio::test]
async fn readyz_is_503_while_draining() {
    let echo = backends::echo().await;
    let mut gw = start(
        &echo,
        "",
        "close_timeout = \"30s\"\nshutdown_grace = \"30s\"",
        &[],
    )
    .await;
    let admin = gw.admin();
    let mut raw = RawWs::connect(gw.addr(), "/echo").await;
    raw.send(&frames::text("ping")).await;
    let echoed = raw.next_frame().await.expect("echo");
    assert_eq!(echoed.payload, b"ping");
    assert_eq!(ops::http(admin, "GET", "/readyz", None).await.status, 200);

    gw.signal("TERM");
    gw.wait_for_log("shutting down", WAIT).await;
    // The drain is under way: the session got its 1001 and we do not answer it yet.
    let close = raw.next_frame().await.expect("a Close frame");
    assert_eq!(close.opcode, OP_CLOSE, "{close:?}");
    assert_eq!(close.close_code(), Some(1001), "{close:?}");
    assert!(gw.try_exit().is_none(), "exited before the session ended");

    let readyz = ops::try_http(admin, "GET", "/readyz", None).await;
    let still_running = gw.try_exit().is_none();
    match readyz {
        Ok(r) => assert_eq!(r.status, 503, "/readyz while draining: {r:?}"),
        Err(e) => panic!(
            "/readyz cannot be reached while draining (process still running: {still_running}): \
             {e}; the admin listener stops with the WebSocket listeners at SIGTERM"
        ),
    }
    let healthz = ops::http(admin, "GET", "/healthz", None).await;
    assert_eq!(healthz.status, 200, "alive while draining: {healthz:?}");

    // Answer the Close: the last session ends and the process exits 0.
    raw.send(&frames::close(Some(1001), "")).await;
    raw.expect_eof().await;
    let status = gw.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(0), "{}", gw.logs());
}

#[tokio::test]
async fn metrics_values_move_as_sessions_open_and_close() {
    let echo = backends::echo().await;
    let gw = start(&echo, "", "", &[]).await;
    let admin = gw.admin();
    let backend = echo.config_addr();
    let route = [("route", "/echo")];

    let r = ops::http(admin, "GET", "/metrics", None).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain") || c.contains("openmetrics")),
        "{r:?}"
    );
    let m0 = ops::metrics(admin, None).await;
    assert_eq!(m0.value("wsgate_sessions_open", &route), 0.0, "{}", m0.text);
    assert_eq!(
        m0.types.get("wsgate_backend_up").map(String::as_str),
        Some("gauge")
    );

    let mut ws1 = ops::ws(&gw.url("/echo")).await;
    let mut ws2 = ops::ws(&gw.url("/echo")).await;
    ops::wait_metric(admin, "wsgate_sessions_open", &route, 2.0, WAIT).await;

    // 5 + 2 + 3 bytes up in 3 messages; each echo is awaited, so 3 messages down.
    ops::echo(&mut ws1, "hello").await;
    ops::echo(&mut ws2, "ab").await;
    ops::echo(&mut ws2, "cde").await;

    // Refusals: no route (404, route label "-") and a foreign Origin (403).
    assert_eq!(ops::try_ws(&gw.url("/nope"), &[]).await.err(), Some(404));
    assert_eq!(
        ops::try_ws(&gw.url("/strict"), &[("Origin", "https://evil.example")])
            .await
            .err(),
        Some(403)
    );

    ops::close(ws1).await;
    ops::wait_metric(admin, "wsgate_sessions_open", &route, 1.0, WAIT).await;
    ops::close(ws2).await;
    ops::wait_metric(admin, "wsgate_sessions_open", &route, 0.0, WAIT).await;
    // Close counts are the last thing a session records.
    let closes = [("route", "/echo"), ("code", "1000"), ("by", "client")];
    let m = ops::wait_metric(admin, "wsgate_closes_total", &closes, 2.0, WAIT).await;

    let t = &m.text;
    assert_eq!(
        m.types.get("wsgate_sessions_open").map(String::as_str),
        Some("gauge"),
        "{t}"
    );
    assert_eq!(
        m.types.get("wsgate_handshakes").map(String::as_str),
        Some("counter"),
        "{t}"
    );
    let hs = |route: &str, status: &str| {
        m.value(
            "wsgate_handshakes_total",
            &[("route", route), ("status", status)],
        )
    };
    assert_eq!(hs("/echo", "101"), 2.0, "{t}");
    assert_eq!(hs("-", "404"), 1.0, "{t}");
    assert_eq!(hs("/strict", "403"), 1.0, "{t}");
    assert_eq!(m.value("wsgate_sessions_total", &route), 2.0, "{t}");
    fn dir(d: &'static str) -> [(&'static str, &'static str); 2] {
        [("route", "/echo"), ("direction", d)]
    }
    assert_eq!(m.value("wsgate_bytes_total", &dir("up")), 10.0, "{t}");
    assert_eq!(m.value("wsgate_bytes_total", &dir("down")), 10.0, "{t}");
    assert_eq!(m.value("wsgate_messages_total", &dir("up")), 3.0, "{t}");
    assert_eq!(m.value("wsgate_messages_total", &dir("down")), 3.0, "{t}");
    assert_eq!(
        m.types
            .get("wsgate_backend_connect_seconds")
            .map(String::as_str),
        Some("histogram"),
        "{t}"
    );
    let b = [("route", "/echo"), ("backend", backend.as_str())];
    assert_eq!(
        m.value("wsgate_backend_connect_seconds_count", &b),
        2.0,
        "{t}"
    );
    assert!(
        m.value("wsgate_backend_connect_seconds_sum", &b) > 0.0,
        "{t}"
    );
    assert_eq!(m.value("wsgate_session_seconds_count", &route), 2.0, "{t}");
    assert_eq!(m.value("wsgate_backend_up", &b), 1.0, "{t}");
}

/// The entry of `/sessions` whose client is `client`.
fn entry(list: &[Value], client: SocketAddr) -> &Value {
    list.iter()
        .find(|s| s["client"] == client.to_string())
        .unwrap_or_else(|| panic!("no session for client {client} in {list:?}"))
}

async fn sessions(admin: SocketAddr) -> Vec<Value> {
    let r = ops::http(admin, "GET", "/sessions", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{r:?}"
    );
    serde_json::from_str::<Value>(&r.body)
        .unwrap_or_else(|e| panic!("/sessions is not JSON ({e}): {}", r.body))
        .as_array()
        .unwrap_or_else(|| panic!("/sessions is not a JSON array: {}", r.body))
        .clone()
}

#[tokio::test]
async fn sessions_lists_open_sessions_and_delete_closes_one_with_1008() {
    let echo = backends::echo().await;
    let gw = start(&echo, "", "", &[]).await;
    let admin = gw.admin();
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;

    let token = auth::hs256(JWT_SECRET).sign(&json!({"sub": "alice", "exp": auth::now() + 600}));
    let auth = format!("Bearer {token}");
    let mut plain = ops::ws(&gw.url("/echo")).await;
    let mut alice = ops::ws_with(&gw.url("/jwt"), &[("Authorization", &auth)]).await;
    ops::echo(&mut plain, "hello").await;
    ops::echo(&mut alice, "hi!").await;
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;

    let list = sessions(admin).await;
    assert_eq!(list.len(), 2, "{list:?}");
    let p = entry(&list, ops::local_addr(&plain));
    let a = entry(&list, ops::local_addr(&alice));
    assert_eq!(p["route"], "/echo", "{p}");
    assert_eq!(p["subject"], Value::Null, "{p}");
    assert_eq!(
        (p["bytes_up"].as_u64(), p["bytes_down"].as_u64()),
        (Some(5), Some(5)),
        "{p}"
    );
    assert_eq!(a["route"], "/jwt", "{a}");
    assert_eq!(a["subject"], "alice", "{a}");
    assert_eq!(
        (a["bytes_up"].as_u64(), a["bytes_down"].as_u64()),
        (Some(3), Some(3)),
        "{a}"
    );
    for s in [p, a] {
        let started = s["started_unix_ms"].as_u64().expect("started_unix_ms");
        assert!(before <= started + 1000 && started <= after + 1000, "{s}");
    }
    let id = p["id"].as_u64().expect("numeric id");
    assert_ne!(Some(id), a["id"].as_u64(), "ids are unique");
    assert!(
        !list.iter().any(|s| s.to_string().contains(&token)),
        "token in /sessions"
    );

    // DELETE closes that session with 1008 and leaves the other alone.
    let del = ops::http(admin, "DELETE", &format!("/sessions/{id}"), None).await;
    assert!((200..300).contains(&del.status), "{del:?}");
    assert_eq!(ops::close_code(&mut plain).await, 1008);
    ops::finish(&mut plain).await;
    ops::echo(&mut alice, "still here").await;

    let deadline = std::time::Instant::now() + WAIT;
    while sessions(admin).await.len() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the closed session stays listed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gone = ops::http(admin, "DELETE", &format!("/sessions/{id}"), None).await;
    assert_eq!(gone.status, 404, "{gone:?}");
    let unknown = ops::http(admin, "DELETE", "/sessions/987654321", None).await;
    assert_eq!(unknown.status, 404, "{unknown:?}");
    let bad = ops::http(admin, "DELETE", "/sessions/abc", None).await;
    assert_eq!(bad.status, 400, "{bad:?}");

    let operator = [("route", "/echo"), ("code", "1008"), ("by", "gateway")];
    ops::wait_metric(admin, "wsgate_closes_total", &operator, 1.0, WAIT).await;

    // Credential checks are counted by outcome.
    assert_eq!(ops::try_ws(&gw.url("/jwt"), &[]).await.err(), Some(401));
    let m = ops::metrics(admin, None).await;
    let auth = |outcome: &str| {
        m.value(
            "wsgate_auth_total",
            &[("route", "/jwt"), ("outcome", outcome)],
        )
    };
    assert_eq!((auth("allowed"), auth("denied")), (1.0, 1.0), "{}", m.text);
    ops::close(alice).await;
}

async fn assert_token_required(admin: SocketAddr, token: &str) {
    for path in ["/metrics", "/sessions", "/readyz"] {
        let none = ops::http(admin, "GET", path, None).await;
        assert_eq!(none.status, 401, "{path} without a token: {none:?}");
        assert!(
            none.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "{none:?}"
        );
        assert!(
            !none.body.contains("wsgate_"),
            "{path} leaked metrics: {none:?}"
        );
        let wrong = ops::http(admin, "GET", path, Some("not-the-token")).await;
        assert_eq!(wrong.status, 401, "{path} with a wrong token: {wrong:?}");
        let ok = ops::http(admin, "GET", path, Some(token)).await;
        assert_eq!(ok.status, 200, "{path} with the token: {ok:?}");
    }
    let m = ops::metrics(admin, Some(token)).await;
    assert!(m.types.contains_key("wsgate_backend_up"), "{}", m.text);
}

#[tokio::test]
async fn admin_token_from_env_is_required() {
    let echo = backends::echo().await;
    let var = format!("WSGATE_OPS_TEST_ADMIN_TOKEN_{}", std::process::id());
    let token = "env-admin-token-7f3a";
    let gw = start(
        &echo,
        &format!("token_env = \"{var}\""),
        "",
        &[(&var, token)],
    )
    .await;
    assert_token_required(gw.admin(), token).await;
    assert!(!gw.logs().contains(token), "the admin token was logged");
}

#[tokio::test]
async fn admin_token_from_file_is_required() {
    let echo = backends::echo().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwt.secret"), JWT_SECRET).unwrap();
    std::fs::write(dir.path().join("admin.token"), "file-admin-token-91c2\n").unwrap();
    let gw = Gateway::start_with(
        &config(&echo, "token_file = \"admin.token\"", ""),
        Opts {
            dir: Some(dir),
            ..Opts::default()
        },
    )
    .await;
    assert_token_required(gw.admin(), "file-admin-token-91c2").await;
}
