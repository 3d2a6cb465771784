//! The command line and the configuration file: `check` on the shipped config, exit codes, and
//! error messages that name the file, the line and the key.

use crate::support;
use crate::support::cli;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cli::{run_wsgate, stderr, stdout};

const LIMIT: Duration = Duration::from_secs(20);

fn run(args: &[&str], config: Option<&Path>) -> std::process::Output {
    let mut a: Vec<OsString> = args.iter().map(Into::into).collect();
    if let Some(c) = config {
        a.push("--config".into());
        a.push(c.into());
    }
    run_wsgate(a, LIMIT)
}

/// Write `text` as wsgate.toml in a fresh directory.
fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wsgate.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

const GOOD: &str = r#"[[listener]]
bind = "127.0.0.1:0"

[[route]]
path = "/a"
backend = "127.0.0.1:9001"
framing = "lines"

[limits]
idle_timeout = "30s"
"#;

/// Replace the line containing `from` by `to` in the good config; returns the text and the
/// 1-based line number of the replacement.
fn with_line(from: &str, to: &str) -> (String, usize) {
    let mut n = 0;
    let text = GOOD
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if l.contains(from) {
                n = i + 1;
                to.to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(n > 0, "{from:?} not in the base config");
    (text + "\n", n)
}

/// Run `check` on `text`; assert exit 2 and a message naming `file:line` and `key`.
fn assert_config_error(text: &str, line: usize, key: &str) -> String {
    let (_dir, path) = config_file(text);
    for args in [&["check"][..], &[][..]] {
        let out = run(args, Some(&path));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}\n{err}");
        assert!(err.starts_with("wsgate: configuration error: "), "{err}");
        let at = format!("{}:{line}:", path.display());
        assert!(err.contains(&at), "the message must say {at}: {err}");
        assert!(err.contains(key), "the message must name {key}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    stderr(&run(&["check"], Some(&path)))
}

#[test]
fn check_accepts_the_shipped_config_and_prints_the_routes() {
    let shipped = support::repo_root().join("config.toml");
    let out = run(&["check"], Some(&shipped));
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text, stderr(&out));
    assert!(text.contains("configuration OK"), "{text}");
    // Every route path and backend of the shipped file appears in the summary.
    let shipped_text = std::fs::read_to_string(&shipped).unwrap();
    let value = |l: &str| l.split('"').nth(1).unwrap().to_string();
    let paths: Vec<String> = shipped_text
        .lines()
        .filter(|l| l.trim_start().starts_with("path ="))
        .map(value)
        .collect();
    let backends: Vec<String> = shipped_text
        .lines()
        .filter(|l| l.trim_start().starts_with("backend ="))
        .map(value)
        .collect();
    assert!(!paths.is_empty());
    for (p, b) in paths.iter().zip(&backends) {
        assert!(
            text.contains(&format!("{p} -> {b}")),
            "route {p} -> {b} missing from:\n{text}"
        );
    }
}

#[test]
fn check_prints_listeners_and_route_details() {
    let (_dir, path) = config_file(GOOD);
    let out = run(&["check"], Some(&path));
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(text.contains("ws://127.0.0.1:0"), "{text}");
    assert!(text.contains("/a -> 127.0.0.1:9001"), "{text}");
    assert!(text.contains("lines"), "{text}");
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let (text, line) = with_line("idle_timeout", "idle_timout = \"30s\"");
    let err = assert_config_error(&text, line, "idle_timout");
    assert!(err.contains("unknown"), "{err}");
}

#[test]
fn unknown_table_is_an_error() {
    let text = format!("{GOOD}\n[extra]\nx = 1\n");
    let line = text.lines().position(|l| l == "[extra]").unwrap() + 1;
    assert_config_error(&text, line, "extra");
}

#[test]
fn bad_duration_names_the_key() {
    let (text, line) = with_line("idle_timeout", "idle_timeout = \"5 minutes\"");
    assert_config_error(&text, line, "limits.idle_timeout");
}

#[test]
fn zero_duration_names_the_key() {
    let (text, line) = with_line("idle_timeout", "idle_timeout = \"0s\"");
    assert_config_error(&text, line, "limits.idle_timeout");
}

/// A value of the wrong type (a string where a number belongs) names the key, not only the
/// line: in a route, in `[limits]` and in `[route.limits]`.
#[test]
fn wrong_type_names_the_key() {
    let (text, line) = with_line("framing", "max_sessions = \"ten\"");
    let err = assert_config_error(&text, line, "route[0].max_sessions");
    assert!(err.contains("invalid type"), "{err}");
    let (text, line) = with_line("idle_timeout", "max_connections = \"lots\"");
    assert_config_error(&text, line, "limits.max_connections");
    let (text, line) = with_line(
        "framing",
        "framing = \"lines\"\n[route.limits]\nmax_fragments = \"many\"",
    );
    assert_config_error(&text, line + 2, "route[0].limits.max_fragments");
}

#[test]
fn bad_backend_names_the_key() {
    for bad in [
        "nohost",
        "127.0.0.1",
        "127.0.0.1:0",
        "127.0.0.1:99999",
        "http://x:80",
        "unix:",
    ] {
        let (text, line) = with_line("backend =", &format!("backend = \"{bad}\""));
        assert_config_error(&text, line, "route[0].backend");
    }
}

#[test]
fn bad_framing_names_the_key() {
    let (text, line) = with_line("framing", "framing = \"json\"");
    let err = assert_config_error(&text, line, "framing");
    assert!(err.contains("json"), "{err}");
}

#[test]
fn bad_listener_address_names_the_key() {
    let (text, line) = with_line("bind", "bind = \"localhost:80\"");
    assert_config_error(&text, line, "listener[0].bind");
}

#[test]
fn frame_limit_above_message_limit_is_an_error() {
    let text = format!("{GOOD}max_message_size = 1024\nmax_frame_size = 2048\n");
    let (_dir, path) = config_file(&text);
    let out = run(&["check"], Some(&path));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("max_frame_size"), "{}", stderr(&out));
}

#[test]
fn missing_config_option_exits_2() {
    let out = run(&[], None);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--config"), "{}", stderr(&out));
    let out = run(&["check"], None);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn unreadable_config_file_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let out = run(&["check"], Some(&path));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&path.display().to_string()),
        "{}",
        stderr(&out)
    );
}

#[test]
fn version_is_printed() {
    let out = run(&["--version"], None);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out).trim(),
        format!("wsgate {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn port_in_use_is_a_runtime_error_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (_dir, path) = config_file(&GOOD.replace("127.0.0.1:0", &addr.to_string()));
    let out = run(&[], Some(&path));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(&addr.to_string()), "{}", stderr(&out));
}

#[tokio::test]
async fn listens_on_the_configured_address_and_logs_it() {
    // Port 0: the log says the real port, and it accepts connections there.
    let gw = support::Gateway::start(GOOD).await;
    assert_ne!(gw.addr().port(), 0);
    assert!(
        gw.logs().contains(&format!("listening addr={}", gw.addr())),
        "{}",
        gw.logs()
    );
    let s = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(gw.addr()),
    )
    .await;
    assert!(matches!(s, Ok(Ok(_))), "{s:?}");
}

#[test]
fn worker_threads_out_of_range_names_the_key() {
    for bad in ["0", "-1", "1025"] {
        let text = format!("{GOOD}\n[runtime]\nworker_threads = {bad}\n");
        let line = text
            .lines()
            .position(|l| l.starts_with("worker_threads"))
            .unwrap()
            + 1;
        assert_config_error(&text, line, "worker_threads");
    }
}

#[test]
fn session_io_takes_auto_io_uring_or_epoll() {
    let text = format!("{GOOD}\n[runtime]\nsession_io = \"uring\"\n");
    let line = text
        .lines()
        .position(|l| l.starts_with("session_io"))
        .unwrap()
        + 1;
    let err = assert_config_error(&text, line, "session_io");
    for value in ["auto", "io_uring", "epoll"] {
        assert!(err.contains(value), "the message must list {value}: {err}");
    }
    for (value, says) in [
        (
            "auto",
            "session threads: io_uring where the kernel allows it, else epoll",
        ),
        ("io_uring", "session threads: io_uring"),
        ("epoll", "session threads: epoll"),
    ] {
        let (_dir, path) = config_file(&format!("{GOOD}\n[runtime]\nsession_io = \"{value}\"\n"));
        let text = stdout(&run(&["check"], Some(&path)));
        assert!(text.contains(says), "{value}: {text}");
    }
}

#[test]
fn check_prints_the_runtime() {
    let (_dir, path) = config_file(GOOD);
    let text = stdout(&run(&["check"], Some(&path)));
    assert!(
        text.contains("runtime: one worker thread per CPU"),
        "{text}"
    );
    let (_dir, path) = config_file(&format!("{GOOD}\n[runtime]\nworker_threads = 3\n"));
    let text = stdout(&run(&["check"], Some(&path)));
    assert!(text.contains("runtime: 3 worker threads"), "{text}");
}

#[tokio::test]
async fn worker_threads_sets_the_number_of_runtime_threads() {
    for n in [1usize, 3] {
        let gw =
            support::Gateway::start(&format!("{GOOD}\n[runtime]\nworker_threads = {n}\n")).await;
        // The runtime's threads are named "wsgate-worker"; right after start there are no
        // others of that name (threads for blocking work are started only when needed).
        assert_eq!(
            gw.threads_named_settled("wsgate-worker", n).await,
            n,
            "worker_threads = {n}"
        );
        // And the gateway serves on them.
        let s = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect(gw.addr()),
        )
        .await;
        assert!(matches!(s, Ok(Ok(_))), "{s:?}");
    }
}

/// A value for every duration key: past the 365-day maximum, or a number that overflows once
/// multiplied by its unit. `check` (and a start) refuses each with exit 2, naming the key and its
/// line, where these used to pass and panic once the deadline was added to the clock.
#[test]
fn overlong_durations_name_the_key() {
    const SECRET_ENV: &str = "WSGATE_CLI_CONFIG_TEST_SECRET";
    std::env::set_var(
        SECRET_ENV,
        "test-only-secret-for-the-cli-config-tests-0123456789",
    );
    let global = [
        "idle_timeout",
        "connect_timeout",
        "close_timeout",
        "ping_interval",
        "pong_timeout",
        "write_timeout",
        "handshake_timeout",
        "tls_handshake_timeout",
        "shutdown_grace",
    ];
    let per_route = [
        "idle_timeout",
        "connect_timeout",
        "close_timeout",
        "ping_interval",
        "pong_timeout",
        "write_timeout",
    ];
    let jwt = format!(
        "[route.auth]\ntype = \"jwt\"\ntoken_from = \"bearer\"\nalgorithms = [\"HS256\"]\nsecret_env = \"{SECRET_ENV}\"\n"
    );
    let forward = "allowed_origins = [\"https://app.example.com\"]\n[route.auth]\ntype = \"forward\"\nurl = \"http://127.0.0.1:9/verify\"\n";
    let in_route = |table: &str, key: &str, value: &str| {
        GOOD.replace(
            "framing = \"lines\"\n",
            &format!("framing = \"lines\"\n{table}{key} = \"{value}\"\n"),
        )
    };
    for value in [
        "8761h",
        "3000000000000000h",
        "31536000001ms",
        "18446744073709551616s",
    ] {
        let mut cases: Vec<(String, String)> = Vec::new();
        for k in global {
            let text = GOOD.replace("idle_timeout = \"30s\"", &format!("{k} = \"{value}\""));
            cases.push((text, format!("limits.{k}")));
        }
        for k in per_route {
            cases.push((
                in_route("[route.limits]\n", k, value),
                format!("route[0].limits.{k}"),
            ));
        }
        for k in ["cooloff", "check_interval"] {
            cases.push((
                in_route("[route.health]\n", k, value),
                format!("route[0].health.{k}"),
            ));
        }
        cases.push((
            in_route(&jwt, "leeway", value),
            "route[0].auth.leeway".into(),
        ));
        for k in ["timeout", "cache_ttl"] {
            cases.push((in_route(forward, k, value), format!("route[0].auth.{k}")));
        }
        for (text, key) in cases {
            let needle = format!("\"{value}\"");
            let line = text.lines().position(|l| l.contains(&needle)).unwrap() + 1;
            let err = assert_config_error(&text, line, &key);
            assert!(err.contains("365 days"), "{key} = {value}: {err}");
        }
    }
}

/// Every duration at the maximum (365 days) is accepted, and the gateway starts and carries a
/// session with them: no deadline overflows the clock.
#[tokio::test]
async fn durations_at_the_maximum_start_and_serve() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let backend = support::backends::echo().await;
    let max = "\"8760h\"";
    let limits = [
        "idle_timeout",
        "connect_timeout",
        "close_timeout",
        "ping_interval",
        "pong_timeout",
        "write_timeout",
        "handshake_timeout",
        "tls_handshake_timeout",
        "shutdown_grace",
    ]
    .map(|k| format!("{k} = {max}\n"))
    .concat();
    let config = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/echo\"\nbackend = \"{}\"\n[route.health]\ncooloff = {max}\ncheck_interval = {max}\n\n[limits]\n{limits}",
        backend.config_addr()
    );
    let (_dir, path) = config_file(&config);
    let out = run(&["check"], Some(&path));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let mut gw = support::Gateway::start(&config).await;
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(gw.url("/echo")),
    )
    .await
    .expect("connect timed out")
    .expect("handshake");
    tokio::time::timeout(
        Duration::from_secs(10),
        ws.send(Message::binary(b"ping".to_vec())),
    )
    .await
    .expect("send timed out")
    .expect("send");
    let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("no echo within 10 s")
        .expect("connection ended")
        .expect("read");
    assert_eq!(echoed.into_data().as_ref(), b"ping");
    let _ = ws.close(None).await;
    drop(ws);
    let status = gw.terminate(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "{}", gw.logs());
    assert!(!gw.logs().contains("panicked"), "{}", gw.logs());
}

#[test]
fn toml_syntax_errors_always_say_what_is_wrong() {
    // The TOML parser gives no message for these; the gateway still says something after the
    // line number.
    for (from, to) in [
        ("idle_timeout", "idle_timeout ="),
        (
            "idle_timeout",
            "# a comment with a \u{11} control character",
        ),
    ] {
        let (text, line) = with_line(from, to);
        let err = assert_config_error(&text, line, "");
        let after = err
            .split_once(&format!(":{line}:"))
            .map(|(_, rest)| rest.trim())
            .unwrap_or_default();
        assert!(!after.is_empty(), "no message after the line: {err:?}");
    }
}
