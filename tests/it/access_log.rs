//! The access log: one structured line per session at its end and one per refused handshake
//! (JSON with `[log] format = "json"`), never a cookie or token value, and nothing at all with
//! `[log] access = false`.

use crate::support;
use crate::support::{auth, ops};

use std::net::SocketAddr;

use crate::support::{Gateway, Opts};
use ops::WAIT;
use serde_json::{json, Value};
use support::backends::{self, Backend};

const ORIGIN: &str = "https://app.example.com";
const JWT_SECRET: &[u8] = b"access-log-test-secret-abcdef0123";

fn config(echo: &Backend, bye: &Backend, log: &str) -> String {
    let (e, b) = (echo.config_addr(), bye.config_addr());
    format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"

[log]
{log}

[[route]]
path = "/echo"
backend = "{e}"

[[route]]
path = "/bye"
backend = "{b}"

[[route]]
path = "/cookie"
backend = "{e}"
allowed_origins = ["{ORIGIN}"]
[route.auth]
type = "jwt"
token_from = "cookie"
cookie = "session"
algorithms = ["HS256"]
secret_file = "jwt.secret"
"#
    )
}

async fn start(log: &str, filter: Option<&str>) -> (Gateway, Backend, Backend) {
    let echo = backends::echo().await;
    let bye = backends::fin_after(b"bye").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwt.secret"), JWT_SECRET).unwrap();
    let gw = Gateway::start_with(
        &config(&echo, &bye, log),
        Opts {
            dir: Some(dir),
            log_filter: filter.map(str::to_string),
            ..Opts::default()
        },
    )
    .await;
    (gw, echo, bye)
}

/// Every line of a JSON log, parsed (panics on a line that is not a JSON object).
fn json_lines(logs: &str) -> Vec<Value> {
    logs.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"));
            assert!(v.is_object(), "not a JSON object: {l}");
            v
        })
        .collect()
}

fn access_lines(logs: &str, message: &str) -> Vec<Value> {
    json_lines(logs)
        .into_iter()
        .filter(|v| v["target"] == "wsgate::access" && v["message"] == message)
        .collect()
}

/// Wait until `n` access lines with `message` were logged; returns them.
async fn wait_access(gw: &Gateway, message: &str, n: usize) -> Vec<Value> {
    gw.wait_for_count(&format!("\"message\":\"{message}\""), n, WAIT)
        .await;
    access_lines(&gw.logs(), message)
}

fn the_line_for(lines: &[Value], client: SocketAddr) -> &Value {
    let mine: Vec<&Value> = lines
        .iter()
        .filter(|v| v["client"] == client.to_string())
        .collect();
    assert_eq!(
        mine.len(),
        1,
        "one access line per session, for client {client}: {lines:?}"
    );
    mine[0]
}

#[tokio::test]
async fn json_access_line_per_session_and_per_refused_handshake() {
    let (gw, _echo, _bye) = start("format = \"json\"", None).await;

    // A session the client closes, with 2 messages (11 bytes) each way.
    let mut ws = ops::ws(&gw.url("/echo")).await;
    let client = ops::local_addr(&ws);
    ops::echo(&mut ws, "hello").await;
    ops::echo(&mut ws, "world!").await;
    ops::close(ws).await;

    // A session the backend ends: it sends "bye" and FIN.
    let mut ws2 = ops::ws(&gw.url("/bye")).await;
    let client2 = ops::local_addr(&ws2);
    assert_eq!(ops::next_data(&mut ws2).await, b"bye");
    assert_eq!(ops::close_code(&mut ws2).await, 1000);
    ops::finish(&mut ws2).await;

    // Refused: no route (404), no Origin on an origin-checked route (403).
    assert_eq!(ops::try_ws(&gw.url("/nope"), &[]).await.err(), Some(404));
    assert_eq!(ops::try_ws(&gw.url("/cookie"), &[]).await.err(), Some(403));

    let closed = wait_access(&gw, "session closed", 2).await;
    let refused = wait_access(&gw, "handshake refused", 2).await;
    assert_eq!(closed.len(), 2, "{closed:?}");
    assert_eq!(refused.len(), 2, "{refused:?}");

    let opens: Vec<Value> = json_lines(&gw.logs())
        .into_iter()
        .filter(|v| v["message"] == "session open")
        .collect();
    let open_id = |c: SocketAddr| {
        the_line_for(&opens, c)["session"]
            .as_u64()
            .expect("numeric session id on the open line")
    };

    let l = the_line_for(&closed, client);
    assert_eq!(l["session"].as_u64(), Some(open_id(client)), "{l}");
    assert_eq!(l["route"], "/echo", "{l}");
    assert_eq!(l["closed_by"], "client", "{l}");
    assert!(!l["close_code"].is_null(), "close_code: {l}");
    assert!(l["duration_ms"].as_u64().is_some(), "duration_ms: {l}");
    assert_eq!(l["bytes_up"].as_u64(), Some(11), "{l}");
    assert_eq!(l["bytes_down"].as_u64(), Some(11), "{l}");
    assert_eq!(l["messages_up"].as_u64(), Some(2), "{l}");
    assert_eq!(l["messages_down"].as_u64(), Some(2), "{l}");

    let l2 = the_line_for(&closed, client2);
    assert_eq!(l2["session"].as_u64(), Some(open_id(client2)), "{l2}");
    assert_ne!(l2["session"], l["session"], "session ids are unique");
    assert_eq!(l2["route"], "/bye", "{l2}");
    assert_eq!(l2["closed_by"], "backend", "{l2}");
    assert_eq!(l2["bytes_up"].as_u64(), Some(0), "{l2}");
    assert_eq!(l2["bytes_down"].as_u64(), Some(3), "{l2}");
    assert_eq!(l2["messages_down"].as_u64(), Some(1), "{l2}");

    let by_path = |p: &str| {
        let v: Vec<&Value> = refused.iter().filter(|v| v["path"] == p).collect();
        assert_eq!(v.len(), 1, "one refusal line for {p}: {refused:?}");
        v[0].clone()
    };
    for (path, status) in [("/nope", 404), ("/cookie", 403)] {
        let r = by_path(path);
        assert_eq!(r["status"].as_u64(), Some(status), "{r}");
        assert!(
            r["reason"].as_str().is_some_and(|s| !s.is_empty()),
            "reason: {r}"
        );
        assert!(
            r["client"]
                .as_str()
                .and_then(|c| c.parse::<SocketAddr>().ok())
                .is_some(),
            "client: {r}"
        );
    }
}

/// In a JSON log, the close code is a number (as `status` is), not a Rust debug string.
#[tokio::test]
async fn json_close_code_is_a_number() {
    let (gw, _echo, _bye) = start("format = \"json\"", None).await;
    let ws = ops::ws(&gw.url("/echo")).await;
    let client = ops::local_addr(&ws);
    ops::close(ws).await;
    let closed = wait_access(&gw, "session closed", 1).await;
    let l = the_line_for(&closed, client);
    assert_eq!(
        l["close_code"],
        json!(1000),
        "close_code should be the number 1000: {l}"
    );
}

/// Cookie and token values appear nowhere in the log, even at debug level for every target:
/// not for an accepted session, not for refused ones.
#[tokio::test]
async fn cookie_and_token_values_are_never_logged() {
    let (mut gw, _echo, _bye) = start("format = \"json\"", Some("debug")).await;
    let good = auth::hs256(JWT_SECRET).sign(&json!({"sub": "alice", "exp": auth::now() + 600}));
    let forged = auth::hs256(b"not-the-secret-not-the-secret-00")
        .sign(&json!({"sub": "mallory", "exp": auth::now() + 600}));
    let expired = auth::hs256(JWT_SECRET).sign(&json!({"sub": "bob", "exp": auth::now() - 3600}));
    let other_cookies = ["theme-value-7Qx9", "csrf-value-Zk31"];
    let cookie = |t: &str| {
        format!(
            "theme={}; session={t}; csrf={}",
            other_cookies[0], other_cookies[1]
        )
    };

    let mut ws = ops::ws_with(
        &gw.url("/cookie"),
        &[("Origin", ORIGIN), ("Cookie", &cookie(&good))],
    )
    .await;
    let client = ops::local_addr(&ws);
    ops::echo(&mut ws, "secret-free payload").await;
    ops::close(ws).await;
    for bad in [&forged, &expired] {
        let r = ops::try_ws(
            &gw.url("/cookie"),
            &[("Origin", ORIGIN), ("Cookie", &cookie(bad))],
        )
        .await;
        assert_eq!(r.err(), Some(401));
    }
    // A valid cookie from a foreign origin is refused before it is read.
    let r = ops::try_ws(
        &gw.url("/cookie"),
        &[
            ("Origin", "https://evil.example"),
            ("Cookie", &cookie(&good)),
        ],
    )
    .await;
    assert_eq!(r.err(), Some(403));
    // A route without authorization ignores credentials, and does not log them either.
    let ws = ops::ws_with(
        &gw.url("/echo"),
        &[
            ("Cookie", &cookie(&good)),
            ("Authorization", &format!("Bearer {good}")),
        ],
    )
    .await;
    ops::close(ws).await;

    wait_access(&gw, "session closed", 2).await;
    wait_access(&gw, "handshake refused", 3).await;
    // Stop the gateway so that the log is complete.
    let status = gw.terminate(WAIT).await;
    assert_eq!(status.code(), Some(0));
    let logs = gw.logs();

    let closed = access_lines(&logs, "session closed");
    let l = the_line_for(&closed, client);
    assert_eq!(l["subject"], "alice", "{l}");
    for token in [&good, &forged, &expired] {
        assert!(
            !logs.contains(token.as_str()),
            "a token was logged:\n{logs}"
        );
        for part in token.split('.').skip(1) {
            assert!(!logs.contains(part), "part of a token was logged:\n{logs}");
        }
    }
    for value in other_cookies {
        assert!(!logs.contains(value), "a cookie value was logged:\n{logs}");
    }
}

#[tokio::test]
async fn access_false_removes_the_access_lines() {
    let (mut gw, _echo, _bye) = start("access = false", None).await;
    let mut ws = ops::ws(&gw.url("/echo")).await;
    ops::echo(&mut ws, "hello").await;
    ops::close(ws).await;
    assert_eq!(ops::try_ws(&gw.url("/nope"), &[]).await.err(), Some(404));
    gw.wait_for_log("session open", WAIT).await;
    // The log is complete once the process has exited.
    let status = gw.terminate(WAIT).await;
    assert_eq!(status.code(), Some(0));
    let logs = gw.logs();
    assert!(logs.contains("shutting down"), "{logs}");
    for gone in ["wsgate::access", "session closed", "handshake refused"] {
        assert!(
            !logs.contains(gone),
            "{gone:?} logged with access = false:\n{logs}"
        );
    }
}

#[tokio::test]
async fn text_access_lines_are_on_by_default() {
    let (gw, _echo, _bye) = start("", None).await;
    let ws = ops::ws(&gw.url("/echo")).await;
    let client = ops::local_addr(&ws);
    ops::close(ws).await;
    assert_eq!(ops::try_ws(&gw.url("/nope"), &[]).await.err(), Some(404));
    let logs = gw.wait_for_log("session closed session=", WAIT).await;
    let line = logs
        .lines()
        .find(|l| l.contains("wsgate::access") && l.contains(&format!("client={client}")))
        .unwrap_or_else(|| panic!("no access line for {client}:\n{logs}"));
    for field in [
        "route=/echo",
        "duration_ms=",
        "close_code=",
        "closed_by=client",
        "bytes_up=0",
        "bytes_down=0",
        "messages_up=0",
        "messages_down=0",
    ] {
        assert!(line.contains(field), "{field:?} missing: {line}");
    }
    gw.wait_for_log("handshake refused", WAIT).await;
}

/// Plain HTTP requests get an access line too: `static file` for what the `[static]` directory
/// answers (the file, 404, 405, 500), `plain request` for the rest (426 on a route path), each
/// with the client, path, status and body bytes.
#[tokio::test]
async fn static_files_and_plain_requests_get_access_lines() {
    const PAGE: &str = "<!doctype html><title>hi</title>\n";
    let echo = backends::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("static");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("index.html"), PAGE).unwrap();
    // Over the 8 MiB cap: answered 500.
    let big = std::fs::File::create(root.join("big.bin")).unwrap();
    big.set_len(9 * 1024 * 1024).unwrap();
    let gw = Gateway::start_with(
        &format!(
            r#"
[[listener]]
bind = "127.0.0.1:0"

[log]
format = "json"

[static]
dir = "static"

[[route]]
path = "/echo"
backend = "{}"
"#,
            echo.config_addr()
        ),
        Opts {
            dir: Some(dir),
            ..Opts::default()
        },
    )
    .await;
    let requests = [
        ("GET", "/", 200, PAGE.len(), "static file"),
        ("HEAD", "/index.html", 200, 0, "static file"),
        (
            "GET",
            "/missing.html",
            404,
            "not found\n".len(),
            "static file",
        ),
        ("POST", "/", 405, "only GET and HEAD\n".len(), "static file"),
        (
            "GET",
            "/big.bin",
            500,
            "file too large to serve\n".len(),
            "static file",
        ),
        (
            "GET",
            "/echo",
            426,
            "this path serves WebSocket connections only\n".len(),
            "plain request",
        ),
    ];
    for (method, path, status, _, _) in requests {
        let r = ops::http(gw.addr(), method, path, None).await;
        assert_eq!(r.status, status, "{method} {path}: {r:?}");
    }
    wait_access(&gw, "static file", 5).await;
    let plain = wait_access(&gw, "plain request", 1).await;
    let statics = access_lines(&gw.logs(), "static file");
    for (method, path, status, bytes, message) in requests {
        let lines = if message == "static file" {
            &statics
        } else {
            &plain
        };
        let mine: Vec<&Value> = lines
            .iter()
            .filter(|v| v["path"] == path && v["method"] == method)
            .collect();
        assert_eq!(mine.len(), 1, "one line for {method} {path}: {lines:?}");
        let l = mine[0];
        assert_eq!(l["status"].as_u64(), Some(u64::from(status)), "{l}");
        assert_eq!(l["bytes"].as_u64(), Some(bytes as u64), "{l}");
        assert_eq!(l["level"], "INFO", "{l}");
        assert!(
            l["client"]
                .as_str()
                .and_then(|c| c.parse::<SocketAddr>().ok())
                .is_some(),
            "client: {l}"
        );
    }
}
