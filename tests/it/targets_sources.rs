//! Per-session target sources after websockify's token plugins: a Redis server (`redis://`,
//! TokenRedis) asked for `prefix + token`, a directory of files named after the tokens
//! (`token-dir:`, TokenFileName) and a directory of unix sockets named after them (`socket-dir:`,
//! UnixDomainSocketDirectory). A real `redis-server` (values set with `redis-cli`), real backends
//! on loopback and unix sockets; observed from the client (status, the greeting of the backend
//! reached, an echo), from the backends (connections made) and from the captured log (which must
//! never hold a token or the Redis password).

use crate::support::backends::{self, Backend};
use crate::support::ops::{self, WAIT};
use crate::support::{cli, free_port, TestGateway};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REDIS_SERVER: &str = "/usr/bin/redis-server";
const REDIS_CLI: &str = "/usr/bin/redis-cli";
/// Distinctive values, so that finding one in the log is unambiguous.
const TOKEN_A: &str = "tok-redis-a-71c2e9";
const TOKEN_B: &str = "tok-redis-b-0d94f3";
const PASSWORD: &str = "pw-3b8e1f77c0";

/// A `redis-server` of our own on a loopback port, without persistence; killed (by PID) when
/// dropped.
struct Redis {
    child: Option<Child>,
    port: u16,
    password: Option<&'static str>,
    _dir: tempfile::TempDir,
}

impl Redis {
    async fn start(password: Option<&'static str>) -> Redis {
        // The port is chosen before the server binds it: try again if someone took it meanwhile.
        for _ in 0..5 {
            let port = free_port();
            let dir = tempfile::tempdir().unwrap();
            let mut cmd = Command::new(REDIS_SERVER);
            cmd.args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
                .arg("--port")
                .arg(port.to_string())
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some(pw) = password {
                cmd.args(["--requirepass", pw]);
            }
            let child = cmd
                .spawn()
                .expect("start redis-server (Debian package redis-server)");
            let mut redis = Redis {
                child: Some(child),
                port,
                password,
                _dir: dir,
            };
            if redis.wait_ready().await {
                return redis;
            }
        }
        panic!("redis-server did not start on a free port");
    }

    /// Until it answers PING (`+PONG`, or `-NOAUTH` with a password); false if it exited.
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(child) = &mut self.child {
                if child.try_wait().unwrap().is_some() {
                    self.child = None;
                    return false;
                }
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)).await {
                let mut got = [0u8; 7];
                let answered = s.write_all(b"PING\r\n").await.is_ok()
                    && tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut got))
                        .await
                        .is_ok_and(|r| r.is_ok());
                if answered && (got.starts_with(b"+PONG") || got.starts_with(b"-NOAUTH")) {
                    return true;
                }
            }
            assert!(Instant::now() < deadline, "redis-server not ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `redis-cli -n DB ARGS...`: its output, trimmed.
    async fn cli(&self, db: u32, args: &[&str]) -> String {
        let mut cmd = Command::new(REDIS_CLI);
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-n", &db.to_string()])
            .stdin(Stdio::null());
        if let Some(pw) = self.password {
            cmd.args(["--no-auth-warning", "-a", pw]);
        }
        // Options first: what follows the command is its arguments.
        cmd.args(args);
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .expect("run redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    async fn set(&self, db: u32, key: &str, value: &str) {
        assert_eq!(self.cli(db, &["SET", key, value]).await, "OK");
    }

    /// Kill it and wait until it is gone: its port refuses connections from then on.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Greets with `text`, then echoes.
async fn greeter(text: &'static str) -> Backend {
    Backend::spawn(move |mut s: TcpStream| async move {
        if s.write_all(text.as_bytes()).await.is_err() {
            return;
        }
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await
}

fn config(target: &str, allow: &[String]) -> String {
    let allow = allow
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"

[[route]]
path = "/websockify"
framing = "raw"
[route.target]
token_from = "query"
{target}
allow = [{allow}]
"#
    )
}

async fn start(target: &str, allow: &[String]) -> TestGateway {
    TestGateway::start(&config(target, allow)).await
}

fn url(gw: &TestGateway, token: &str) -> String {
    format!("{}?token={token}", gw.url("/websockify"))
}

/// The first message of a new session (the greeting of the backend reached), after an echo
/// through it.
async fn greeting(url: &str) -> String {
    let mut ws = ops::ws(url).await;
    let got = String::from_utf8(ops::next_data(&mut ws).await).unwrap();
    ops::echo(&mut ws, "ping through the target").await;
    ops::close(ws).await;
    got
}

async fn status(url: &str) -> Option<u16> {
    ops::try_ws(url, &[]).await.err()
}

fn assert_no_secrets(logs: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!logs.contains(s), "{s:?} was logged:\n{logs}");
    }
}

#[tokio::test]
async fn redis_values_in_websockify_forms_reach_their_targets() {
    let redis = Redis::start(None).await;
    let (a, b, c) = (greeter("A").await, greeter("B").await, greeter("C").await);
    let outside = greeter("X").await;
    redis
        .set(0, &format!("vnc:{TOKEN_A}"), &a.addr.to_string())
        .await;
    let json_host = format!(r#"{{"host": "{}"}}"#, b.addr);
    redis.set(0, &format!("vnc:{TOKEN_B}"), &json_host).await;
    let json_port = format!(r#"{{"host": "127.0.0.1", "port": {}}}"#, c.addr.port());
    redis.set(0, "vnc:num", &json_port).await;
    let json_str = format!(r#"{{"host": "127.0.0.1", "port": "{}"}}"#, c.addr.port());
    redis.set(0, "vnc:str", &json_str).await;
    redis.set(0, "vnc:out", &outside.addr.to_string()).await;
    redis.set(0, "vnc:garbage", "not a target").await;
    assert_eq!(redis.cli(0, &["RPUSH", "vnc:list", "x"]).await, "1");
    // Without the prefix: not what the route asks for.
    redis.set(0, "bare", &a.addr.to_string()).await;

    let gw = start(
        &format!(
            "source = \"redis://127.0.0.1:{}\"\nredis_key_prefix = \"vnc:\"",
            redis.port
        ),
        &[a.addr, b.addr, c.addr].map(|x| x.to_string()),
    )
    .await;
    assert_eq!(greeting(&url(&gw, TOKEN_A)).await, "A");
    assert_eq!(greeting(&url(&gw, TOKEN_B)).await, "B");
    assert_eq!(greeting(&url(&gw, "num")).await, "C");
    assert_eq!(greeting(&url(&gw, "str")).await, "C");
    assert_eq!(
        (a.connections_made().await, b.connections_made().await),
        (1, 1)
    );

    // A nil key is an unknown token; so is a key only without the prefix.
    assert_eq!(status(&url(&gw, "nobody")).await, Some(404));
    assert_eq!(status(&url(&gw, "bare")).await, Some(404));
    // A key of another type (WRONGTYPE) and a value that names no target: unavailable.
    assert_eq!(status(&url(&gw, "list")).await, Some(503));
    assert_eq!(status(&url(&gw, "garbage")).await, Some(503));
    // A value outside the allow list: 403, and that backend sees no connection.
    assert_eq!(status(&url(&gw, "out")).await, Some(403));
    assert_eq!(outside.connections_made().await, 0);
    assert_eq!(a.connections_made().await, 1);

    let logs = gw.wait_for_count("token source unavailable", 2, WAIT).await;
    let wrongtype = format!(
        "redis://127.0.0.1:{}/0: GET refused (WRONGTYPE)",
        redis.port
    );
    assert!(logs.contains(&wrongtype), "{logs}");
    assert!(logs.contains("target not allowed by"), "{logs}");
    assert_no_secrets(&logs, &[TOKEN_A, TOKEN_B, "vnc:nobody", "vnc:list"]);
}

#[tokio::test]
async fn redis_with_a_password_and_a_database() {
    let redis = Redis::start(Some(PASSWORD)).await;
    let (a, b) = (greeter("A").await, greeter("B").await);
    // The same key in two databases: the URL's database decides.
    redis.set(3, TOKEN_A, &a.addr.to_string()).await;
    redis.set(0, TOKEN_A, &b.addr.to_string()).await;
    let allow = [a.addr.to_string(), b.addr.to_string()];
    let port = redis.port;

    let gw = start(
        &format!("source = \"redis://:{PASSWORD}@127.0.0.1:{port}/3\""),
        &allow,
    )
    .await;
    assert_eq!(greeting(&url(&gw, TOKEN_A)).await, "A");
    drop(gw);

    // With the user named (Redis 6 ACL: AUTH user password), database 0.
    let gw = start(
        &format!("source = \"redis://default:{PASSWORD}@127.0.0.1:{port}\""),
        &allow,
    )
    .await;
    assert_eq!(greeting(&url(&gw, TOKEN_A)).await, "B");
    drop(gw);

    // A wrong password, or none: the source is unavailable, and nothing is connected.
    let gw = start(
        &format!("source = \"redis://:wrong-{PASSWORD}@127.0.0.1:{port}/3\""),
        &allow,
    )
    .await;
    assert_eq!(status(&url(&gw, TOKEN_A)).await, Some(503));
    let logs = gw.wait_for_log("token source unavailable", WAIT).await;
    assert!(
        logs.contains(&format!(
            "redis://:***@127.0.0.1:{port}/3: AUTH refused (WRONGPASS)"
        )),
        "{logs}"
    );
    assert_no_secrets(&logs, &[PASSWORD, TOKEN_A]);
    drop(gw);

    let gw = start(&format!("source = \"redis://127.0.0.1:{port}/3\""), &allow).await;
    assert_eq!(status(&url(&gw, TOKEN_A)).await, Some(503));
    let logs = gw.wait_for_log("token source unavailable", WAIT).await;
    assert!(logs.contains("(NOAUTH)"), "{logs}");
    assert_eq!(
        (a.connections_made().await, b.connections_made().await),
        (1, 1)
    );
}

#[tokio::test]
async fn a_stopped_or_silent_redis_is_503_and_the_cache_still_answers() {
    let mut redis = Redis::start(None).await;
    let a = greeter("A").await;
    redis.set(0, TOKEN_A, &a.addr.to_string()).await;
    redis.set(0, TOKEN_B, &a.addr.to_string()).await;
    let gw = start(
        &format!(
            "source = \"redis://127.0.0.1:{}\"\ncache_ttl = \"1h\"",
            redis.port
        ),
        &[a.addr.to_string()],
    )
    .await;
    assert_eq!(greeting(&url(&gw, TOKEN_A)).await, "A");
    redis.stop();
    // A cached mapping needs no lookup; another token does, and the server is gone.
    assert_eq!(greeting(&url(&gw, TOKEN_A)).await, "A");
    assert_eq!(status(&url(&gw, TOKEN_B)).await, Some(503));
    let logs = gw.wait_for_log("token source unavailable", WAIT).await;
    assert!(logs.contains("cannot connect"), "{logs}");
    assert_eq!(a.connections_made().await, 2);
    drop(gw);

    // A server that never answers: 503 once source_timeout has passed.
    let silent = backends::unresponsive().await;
    let gw = start(
        &format!(
            "source = \"redis://{}\"\nsource_timeout = \"300ms\"",
            silent.addr
        ),
        &[a.addr.to_string()],
    )
    .await;
    let started = Instant::now();
    assert_eq!(status(&url(&gw, TOKEN_A)).await, Some(503));
    assert!(started.elapsed() >= Duration::from_millis(300));
    let logs = gw.wait_for_log("token source unavailable", WAIT).await;
    assert!(logs.contains("no answer within 300ms"), "{logs}");
}

/// A directory `tokens/` with a file per token, beside a file outside it that a traversal would
/// reach.
struct TokenDir {
    root: tempfile::TempDir,
}

impl TokenDir {
    fn new() -> TokenDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("tokens")).unwrap();
        TokenDir { root }
    }

    fn dir(&self) -> PathBuf {
        self.root.path().join("tokens")
    }
}

#[tokio::test]
async fn token_dir_files_name_targets_and_nothing_else_is_read() {
    let (a, b) = (greeter("A").await, greeter("B").await);
    let outside = greeter("X").await;
    let td = TokenDir::new();
    let dir = td.dir();
    std::fs::write(dir.join(TOKEN_A), format!("{}\n", a.addr)).unwrap();
    std::fs::write(dir.join("b"), format!("  {}  ", b.addr)).unwrap();
    std::fs::write(dir.join("out"), outside.addr.to_string()).unwrap();
    std::fs::write(dir.join(".hidden"), a.addr.to_string()).unwrap();
    // Reachable only by a path that is not a plain file name.
    std::fs::write(td.root.path().join("secret"), a.addr.to_string()).unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub").join("x"), a.addr.to_string()).unwrap();
    std::os::unix::fs::symlink(dir.join(TOKEN_A), dir.join("link")).unwrap();
    std::os::unix::fs::symlink(td.root.path().join("secret"), dir.join("outlink")).unwrap();

    let gw = start(
        &format!("source = \"token-dir:{}\"", dir.display()),
        &[a.addr.to_string(), b.addr.to_string()],
    )
    .await;
    assert_eq!(greeting(&url(&gw, TOKEN_A)).await, "A");
    assert_eq!(greeting(&url(&gw, "b")).await, "B");
    // A file added now applies to the next handshake.
    std::fs::write(dir.join("new"), b.addr.to_string()).unwrap();
    assert_eq!(greeting(&url(&gw, "new")).await, "B");

    for token in [
        "missing",
        "..%2Fsecret",
        "..",
        ".",
        ".hidden",
        "sub%2Fx",
        "sub",
        "link",
        "outlink",
        "%2Fetc%2Fpasswd",
    ] {
        assert_eq!(status(&url(&gw, token)).await, Some(404), "{token}");
    }
    assert_eq!(status(&url(&gw, "out")).await, Some(403));
    assert_eq!(outside.connections_made().await, 0);
    assert_eq!(
        (a.connections_made().await, b.connections_made().await),
        (1, 2)
    );

    // The directory gone: the source is unavailable.
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(status(&url(&gw, TOKEN_A)).await, Some(503));
    let logs = gw.wait_for_log("token source unavailable", WAIT).await;
    assert!(logs.contains(&dir.display().to_string()), "{logs}");
    assert_no_secrets(&logs, &[TOKEN_A]);
}

/// A unix socket at `path` that greets with `text`, then echoes.
fn unix_greeter(path: &Path, text: &'static str) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if s.write_all(text.as_bytes()).await.is_ok() {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    })
}

#[tokio::test]
async fn socket_dir_tokens_name_unix_sockets() {
    let root = tempfile::tempdir().unwrap();
    let socks = root.path().join("socks");
    std::fs::create_dir(&socks).unwrap();
    let vm1 = unix_greeter(&socks.join("vm1"), "1");
    let other = unix_greeter(&root.path().join("other"), "O");
    std::fs::write(socks.join("plain"), "not a socket").unwrap();
    std::os::unix::fs::symlink(root.path().join("other"), socks.join("link")).unwrap();

    let gw = start(
        &format!("source = \"socket-dir:{}\"", socks.display()),
        &[format!("unix:{}/", socks.display())],
    )
    .await;
    assert_eq!(greeting(&url(&gw, "vm1")).await, "1");
    for token in ["missing", "plain", "link", "..%2Fother", "..", ".vm1"] {
        assert_eq!(status(&url(&gw, token)).await, Some(404), "{token}");
    }
    drop(gw);

    // The allow list applies: a directory it does not cover is refused.
    let gw = start(
        &format!("source = \"socket-dir:{}\"", socks.display()),
        &[format!("unix:{}/", root.path().join("elsewhere").display())],
    )
    .await;
    assert_eq!(status(&url(&gw, "vm1")).await, Some(403));
    vm1.abort();
    other.abort();
}

#[test]
fn check_names_bad_redis_and_directory_sources() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wsgate.toml");
    let cases = [
        ("source = \"rediss://h\"", "route[0].target.source", "TLS"),
        ("source = \"redis://h:0\"", "route[0].target.source", "port"),
        (
            "source = \"redis://h:6379/db1\"",
            "route[0].target.source",
            "database",
        ),
        (
            "source = \"redis://h?x=1\"",
            "route[0].target.source",
            "query",
        ),
        (
            "source = \"redis://hunter2@h\"",
            "route[0].target.source",
            "password",
        ),
        ("source = \"redis://\"", "route[0].target.source", "host"),
        (
            "source = \"Redis://:hunter2@h\"",
            "route[0].target.source",
            "not a source",
        ),
        (
            "source = \"token-dir:\"",
            "route[0].target.source",
            "directory",
        ),
        (
            "source = \"socket-dir: \"",
            "route[0].target.source",
            "directory",
        ),
        (
            "source = \"socket-dir:../socks\"",
            "route[0].target.source",
            "'..'",
        ),
        (
            "source = \"file:t.txt\"\nredis_key_prefix = \"p\"",
            "route[0].target.redis_key_prefix",
            "redis://",
        ),
        (
            "source = \"token-dir:d\"\nsource_timeout = \"1s\"",
            "route[0].target.source_timeout",
            "redis://",
        ),
        (
            "source = \"redis://h\"\nsource_ca_file = \"ca.pem\"",
            "route[0].target.source_ca_file",
            "https://",
        ),
    ];
    for (source, key, says) in cases {
        std::fs::write(
            &path,
            format!("[[listener]]\nbind = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/w\"\n[route.target]\ntoken_from = \"query\"\n{source}\nallow = [\"127.0.0.1\"]\n"),
        )
        .unwrap();
        let out = cli::run_wsgate(
            ["check".as_ref(), "--config".as_ref(), path.as_os_str()],
            Duration::from_secs(20),
        );
        let err = cli::stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{source}\n{err}");
        assert!(
            err.contains(&format!("{key}: ")),
            "{source}: want {key}: {err}"
        );
        assert!(err.contains(says), "{source}: want {says:?}: {err}");
        assert!(!err.contains("hunter2"), "the password is quoted: {err}");
    }

    // A complete one is accepted and summarised without its password.
    std::fs::write(
        &path,
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/w\"\n[route.target]\ntoken_from = \"query\"\nsource = \"redis://gw:hunter2@redis.internal/2\"\nredis_key_prefix = \"vnc:\"\nsource_timeout = \"1s\"\nallow = [\"10.0.0.0/8:5900-5999\"]\n",
    )
    .unwrap();
    let out = cli::run_wsgate(
        ["check".as_ref(), "--config".as_ref(), path.as_os_str()],
        Duration::from_secs(20),
    );
    let all = format!("{}{}", cli::stdout(&out), cli::stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains("via redis://gw:***@redis.internal:6379/2"),
        "{all}"
    );
    assert!(!all.contains("hunter2"), "the password is shown: {all}");
}
