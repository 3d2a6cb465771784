//! websockify's command line: `wsgate [OPTIONS] [SOURCE_ADDR:]SOURCE_PORT [TARGET]`. Every
//! option is either translated (checked in the `--print-config` output, parsed with the `toml`
//! crate, and by running it against real sockets) or refused with one line and exit 2. The
//! installed websockify (Debian package `websockify`) is the oracle for the option list.

use crate::support;
use crate::support::backends;
use crate::support::cli::{run_wsgate, stderr, stdout};

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const LIMIT: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(10);

/// `wsgate ARGS` run in `cwd` (a fresh directory when `None`).
fn wsgate_in(cwd: &Path, args: &[&str]) -> std::process::Output {
    let child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wsgate");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(LIMIT) {
        Ok(out) => out.expect("wait for wsgate"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("wsgate {args:?} did not exit within {LIMIT:?}");
        }
    }
}

/// `--print-config` output for `args`, parsed as TOML.
fn printed(cwd: &Path, args: &[&str]) -> (String, toml::Table) {
    let mut all = vec!["--print-config"];
    all.extend_from_slice(args);
    let out = wsgate_in(cwd, &all);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    let text = stdout(&out);
    let table: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("{args:?}: not TOML: {e}\n{text}"));
    (text, table)
}

/// The value at a dotted path (`route.0.target.source`).
fn at<'a>(t: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    let mut parts = path.split('.');
    let mut v = t.get(parts.next()?)?;
    for p in parts {
        v = match p.parse::<usize>() {
            Ok(i) => v.as_array()?.get(i)?,
            Err(_) => v.as_table()?.get(p)?,
        };
    }
    Some(v)
}

fn refusal(cwd: &Path, args: &[&str]) -> String {
    let out = wsgate_in(cwd, args);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?} should be refused: {err}"
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: one line: {err}"
    );
    assert!(stdout(&out).is_empty(), "{args:?}");
    err
}

/// A `wsgate` process started with websockify's arguments; killed by its PID on drop.
pub struct Proc {
    child: Child,
    log: Arc<Mutex<String>>,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
}

impl Proc {
    pub fn start(cwd: &Path, args: &[OsString], admin: bool) -> Proc {
        Proc::start_logging_to(cwd, args, admin, None)
    }

    /// Like [`Proc::start`], for a gateway that logs to `log_file` instead of stderr.
    pub fn start_logging_to(
        cwd: &Path,
        args: &[OsString],
        admin: bool,
        log_file: Option<&Path>,
    ) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .args(args)
            .current_dir(cwd)
            // The level is the command line's (-v), as it would be for a user.
            .env_remove("WSGATE_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wsgate");
        let log = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut p = Proc {
            child,
            log,
            addr: "0.0.0.0:0".parse().unwrap(),
            admin: None,
        };
        let deadline = Instant::now() + LIMIT;
        loop {
            let log = p.log()
                + &log_file
                    .and_then(|f| std::fs::read_to_string(f).ok())
                    .unwrap_or_default();
            let addr_after = |l: &str, needle: &str| {
                let rest = l.split_once(needle)?.1;
                rest.split_whitespace().next()?.parse::<SocketAddr>().ok()
            };
            let listener = log
                .lines()
                .filter(|l| !l.contains("admin listening") && !l.contains("demo backend"))
                .find_map(|l| addr_after(l, " listening addr="));
            p.admin = log
                .lines()
                .find_map(|l| addr_after(l, "admin listening addr="));
            if let Some(a) = listener {
                if !admin || p.admin.is_some() {
                    p.addr = a;
                    return p;
                }
            }
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("wsgate exited ({st}):\n{log}");
            }
            assert!(Instant::now() < deadline, "wsgate did not start:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(Into::into).collect()
}

/// Open `url`, offering `binary` as noVNC does; send a binary message and expect it back.
async fn echo_at(url: &str) {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "binary".parse().unwrap());
    let (mut ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("upgrade timed out")
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("binary")
    );
    ws.send(Message::binary(b"RFB 003.008\n".to_vec()))
        .await
        .unwrap();
    let got = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("no echo")
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::binary(b"RFB 003.008\n".to_vec()));
    ws.close(None).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Mapping, through --print-config

#[test]
fn positional_forms_map_to_listener_and_backend() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (args, bind, backend) in [
        (
            &["6080", "localhost:5901"][..],
            "0.0.0.0:6080",
            "localhost:5901",
        ),
        (
            &["127.0.0.1:6080", "10.0.0.5:5900"],
            "127.0.0.1:6080",
            "10.0.0.5:5900",
        ),
        (
            &["[::1]:6080", "[fd00::5]:5900"],
            "[::1]:6080",
            "[fd00::5]:5900",
        ),
        (&["-6", "6080", "h:1"], "[::]:6080", "h:1"),
        (
            &["--prefer-ipv6", "localhost:6080", "h:1"],
            "[::1]:6080",
            "h:1",
        ),
        (&["localhost:6080", "h:1"], "127.0.0.1:6080", "h:1"),
        (
            &["--ssl-target", "6080", "h:1"],
            "0.0.0.0:6080",
            "tls://h:1",
        ),
        (&["--libserver", "6080", "h:1"], "0.0.0.0:6080", "h:1"),
    ] {
        let (_, t) = printed(d, args);
        assert_eq!(
            at(&t, "listener.0.bind").unwrap().as_str(),
            Some(bind),
            "{args:?}"
        );
        assert_eq!(
            at(&t, "route.0.backend").unwrap().as_str(),
            Some(backend),
            "{args:?}"
        );
        // websockify proxies every path.
        assert_eq!(
            at(&t, "route.0.path").unwrap().as_str(),
            Some("/*"),
            "{args:?}"
        );
    }
}

/// (dotted key, expected value) pairs.
type Checks = Vec<(&'static str, toml::Value)>;

#[test]
fn options_map_to_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |f: &str| d.join(f).display().to_string();
    let cases: Vec<(Vec<&str>, Checks)> = vec![
        (
            vec!["--web", "/usr/share/novnc", "1", "h:2"],
            vec![("static.dir", "/usr/share/novnc".into())],
        ),
        (
            vec!["--web=www", "1", "h:2"],
            vec![("static.dir", p("www").into())],
        ),
        (
            vec!["--file-only", "--web", "/w", "1", "h:2"],
            vec![("static.dir", "/w".into())],
        ),
        (
            vec!["--unix-target", "vnc.sock", "1"],
            vec![("route.0.backend", format!("unix:{}", p("vnc.sock")).into())],
        ),
        (
            vec![
                "--unix-listen",
                "gw.sock",
                "--unix-listen-mode",
                "660",
                "h:2",
            ],
            vec![
                ("listener.0.bind", format!("unix:{}", p("gw.sock")).into()),
                ("listener.0.mode", "0660".into()),
            ],
        ),
        (
            vec!["--heartbeat", "15", "1", "h:2"],
            vec![("limits.ping_interval", "15s".into())],
        ),
        (
            vec!["--record", "/var/rec/vnc", "1", "h:2"],
            vec![
                ("route.0.record", "/var/rec".into()),
                ("route.0.record_prefix", "vnc".into()),
            ],
        ),
        (vec!["-v", "1", "h:2"], vec![("log.level", "debug".into())]),
        (
            vec!["--verbose", "--log-file", "ws.log", "1", "h:2"],
            vec![
                ("log.level", "debug".into()),
                ("log.file", p("ws.log").into()),
            ],
        ),
        (
            vec!["--admin", "127.0.0.1:9100", "1", "h:2"],
            vec![("admin.bind", "127.0.0.1:9100".into())],
        ),
        (
            vec![
                "--auth-plugin",
                "ExpectOrigin",
                "--auth-source",
                "https://a.example http://b.example:8080",
                "1",
                "h:2",
            ],
            vec![(
                "route.0.allowed_origins",
                toml::Value::Array(vec![
                    "https://a.example".into(),
                    "http://b.example:8080".into(),
                ]),
            )],
        ),
        (
            vec![
                "--auth-plugin",
                "websockify.auth_plugins.ExpectOrigin",
                "--auth-source",
                "https://a.example",
                "1",
                "h:2",
            ],
            vec![(
                "route.0.allowed_origins",
                toml::Value::Array(vec!["https://a.example".into()]),
            )],
        ),
        (
            vec!["--cert", "c.pem", "1", "h:2"],
            vec![
                ("listener.0.tls.cert", p("c.pem").into()),
                ("listener.0.tls.key", p("c.pem").into()),
                ("listener.0.tls.accept_plain", true.into()),
            ],
        ),
        (
            vec![
                "--cert",
                "c.pem",
                "--key",
                "k.pem",
                "--ssl-only",
                "1",
                "h:2",
            ],
            vec![
                ("listener.0.tls.cert", p("c.pem").into()),
                ("listener.0.tls.key", p("k.pem").into()),
            ],
        ),
        (
            vec![
                "--cert",
                "c.pem",
                "--ssl-version",
                "tlsv1_2",
                "--cafile",
                "ca.pem",
                "1",
                "h:2",
            ],
            vec![("listener.0.tls.cert", p("c.pem").into())],
        ),
        // Token plugins: the table agreed for [route.target].
        (
            vec![
                "--token-plugin",
                "TokenFile",
                "--token-source",
                "tokens",
                "--allow",
                "10.0.0.0/8:5900-5999",
                "1",
            ],
            vec![
                (
                    "route.0.target.source",
                    format!("file:{}", p("tokens")).into(),
                ),
                ("route.0.target.token_from", "query".into()),
                ("route.0.target.token_name", "token".into()),
                (
                    "route.0.target.allow",
                    toml::Value::Array(vec!["10.0.0.0/8:5900-5999".into()]),
                ),
            ],
        ),
        (
            vec![
                "--target-config",
                "/etc/t",
                "--allow",
                "h",
                "--host-token",
                "1",
            ],
            vec![
                ("route.0.target.source", "file:/etc/t".into()),
                ("route.0.target.token_from", "host".into()),
            ],
        ),
        (
            vec![
                "--token-plugin",
                "websockify.token_plugins.ReadOnlyTokenFile",
                "--token-source",
                "/t",
                "--allow",
                "h",
                "1",
            ],
            vec![("route.0.target.source", "file:/t".into())],
        ),
        (
            vec![
                "--token-plugin",
                "TokenFileName",
                "--token-source",
                "/tokdir",
                "--allow",
                "h",
                "1",
            ],
            vec![("route.0.target.source", "token-dir:/tokdir".into())],
        ),
        (
            vec![
                "--token-plugin",
                "UnixDomainSocketDirectory",
                "--token-source",
                "/run/vnc",
                "--allow",
                "unix:/run/vnc/",
                "1",
            ],
            vec![("route.0.target.source", "socket-dir:/run/vnc".into())],
        ),
        (
            vec![
                "--token-plugin",
                "BaseTokenAPI",
                "--token-source",
                "http://127.0.0.1:8000/t/%s",
                "--allow",
                "h",
                "1",
            ],
            vec![(
                "route.0.target.source",
                "http://127.0.0.1:8000/t/{token}".into(),
            )],
        ),
        (
            vec![
                "--token-plugin",
                "JSONTokenApi",
                "--token-source",
                "https://api.example/t?id=%s",
                "--allow",
                "h",
                "--ssl-target",
                "1",
            ],
            vec![
                (
                    "route.0.target.source",
                    "https://api.example/t?id={token}".into(),
                ),
                ("route.0.target.tls", true.into()),
            ],
        ),
        (
            vec![
                "--token-plugin",
                "TokenRedis",
                "--token-source",
                "redis.internal:6380:2:s3cret:vnc",
                "--allow",
                "h",
                "1",
            ],
            vec![
                (
                    "route.0.target.source",
                    "redis://:s3cret@redis.internal:6380/2".into(),
                ),
                ("route.0.target.redis_key_prefix", "vnc:".into()),
            ],
        ),
        (
            vec![
                "--token-plugin",
                "TokenRedis",
                "--token-source",
                "127.0.0.1:6379",
                "--allow",
                "h",
                "1",
            ],
            vec![
                ("route.0.target.source", "redis://127.0.0.1:6379".into()),
                ("route.0.target.redis_key_prefix", "".into()),
            ],
        ),
    ];
    for (args, checks) in cases {
        let (text, t) = printed(d, &args);
        for (key, want) in checks {
            assert_eq!(at(&t, key), Some(&want), "{args:?}: {key}\n{text}");
        }
    }
    // Without --heartbeat, -v, --web... their tables are absent.
    let (_, t) = printed(d, &["1", "h:2"]);
    for key in [
        "limits",
        "static",
        "log",
        "admin",
        "listener.0.tls",
        "route.0.target",
    ] {
        assert!(at(&t, key).is_none(), "{key}");
    }
}

#[test]
fn jwt_token_api_maps_to_jwt_auth_from_the_query() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("secret"),
        "0123456789abcdef0123456789abcdef",
    )
    .unwrap();
    let public = support::auth::fixture("test-only-rs256-public.pem");
    for (src, alg, key) in [
        ("secret".to_string(), "HS256", "secret_file"),
        (public.display().to_string(), "RS256", "key_file"),
    ] {
        let (text, t) = printed(
            dir.path(),
            &[
                "--token-plugin",
                "JWTTokenApi",
                "--token-source",
                &src,
                "--allow",
                "127.0.0.1",
                "1",
            ],
        );
        assert_eq!(
            at(&t, "route.0.target.source").unwrap().as_str(),
            Some("jwt"),
            "{text}"
        );
        assert_eq!(at(&t, "route.0.auth.type").unwrap().as_str(), Some("jwt"));
        assert_eq!(
            at(&t, "route.0.auth.token_from").unwrap().as_str(),
            Some("query")
        );
        assert_eq!(
            at(&t, "route.0.auth.algorithms"),
            Some(&toml::Value::Array(vec![alg.into()])),
            "{text}"
        );
        assert!(at(&t, &format!("route.0.auth.{key}")).is_some(), "{text}");
    }
}

#[test]
fn self_pem_in_the_current_directory_is_the_default_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (_, t) = printed(dir.path(), &["1", "h:2"]);
    assert!(at(&t, "listener.0.tls").is_none());
    std::fs::write(dir.path().join("self.pem"), "x").unwrap();
    let (_, t) = printed(dir.path(), &["1", "h:2"]);
    let pem = dir.path().join("self.pem").display().to_string();
    assert_eq!(
        at(&t, "listener.0.tls.cert").unwrap().as_str(),
        Some(pem.as_str())
    );
    assert_eq!(
        at(&t, "listener.0.tls.key").unwrap().as_str(),
        Some(pem.as_str())
    );
}

#[test]
fn printed_config_passes_wsgate_check() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("www")).unwrap();
    let (text, _) = printed(
        dir.path(),
        &[
            "--web",
            "www",
            "--heartbeat",
            "20",
            "-v",
            "--auth-plugin",
            "ExpectOrigin",
            "--auth-source",
            "https://a.example",
            "127.0.0.1:0",
            "127.0.0.1:5901",
        ],
    );
    let file = dir.path().join("wsgate.toml");
    std::fs::write(&file, &text).unwrap();
    let out = run_wsgate(
        [OsString::from("check"), "--config".into(), file.into()],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "{}\n{text}", stderr(&out));
    assert!(
        stdout(&out).contains("/* -> 127.0.0.1:5901"),
        "{}",
        stdout(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// Refusals: one line, exit 2, naming what to use instead

#[test]
fn unsupported_options_are_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("c.pem"), "x").unwrap();
    for (args, needles) in [
        (
            &["--daemon", "1", "h:2"][..],
            &["--daemon", "service manager"][..],
        ),
        (&["-D", "1", "h:2"], &["--daemon"]),
        (&["--run-once", "1", "h:2"], &["--run-once", "SIGTERM"]),
        (&["--timeout", "30", "1", "h:2"], &["--timeout", "SIGTERM"]),
        (
            &["--idle-timeout=30", "1", "h:2"],
            &["--idle-timeout", "SIGTERM"],
        ),
        (
            &["--key-password", "x", "--cert", "c.pem", "1", "h:2"],
            &["--key-password", "openssl pkey"],
        ),
        (
            &["--verify-client", "--cert", "c.pem", "1", "h:2"],
            &["--verify-client", "client certificates"],
        ),
        (
            &["--ssl-ciphers", "HIGH", "1", "h:2"],
            &["--ssl-ciphers", "rustls"],
        ),
        (
            &["--ssl-version", "tlsv1_3", "1", "h:2"],
            &["--ssl-version", "TLS 1.2 and 1.3"],
        ),
        (&["--ssl-version", "sslv3", "1", "h:2"], &["--ssl-version"]),
        (&["--inetd", "h:2"], &["--inetd", "--unix-listen"]),
        (
            &[
                "--web",
                "/w",
                "--web-auth",
                "--auth-plugin",
                "ExpectOrigin",
                "1",
                "h:2",
            ],
            &["--web-auth"],
        ),
        (
            &["--wrap-mode", "respawn", "1", "h:2"],
            &["--wrap-mode", "service manager"],
        ),
        (
            &["1", "--", "vncserver", ":1"],
            &["WRAP_COMMAND_LINE", "service manager"],
        ),
        (&["--traffic", "1", "h:2"], &["--traffic", "/metrics"]),
        (
            &["--syslog", "/dev/log", "1", "h:2"],
            &["--syslog", "journald"],
        ),
        (
            &["--syslog", "/dev/log", "--legacy-syslog", "1", "h:2"],
            &["syslog"],
        ),
        (
            &[
                "--auth-plugin",
                "BasicHTTPAuth",
                "--auth-source",
                "u:p",
                "1",
                "h:2",
            ],
            &["BasicHTTPAuth", "type = \"forward\""],
        ),
        (
            &["--auth-plugin", "ClientCertCNAuth", "1", "h:2"],
            &["ClientCertCNAuth"],
        ),
        (
            &["--auth-plugin", "mymod.Check", "1", "h:2"],
            &["custom Python"],
        ),
        (
            &["--auth-plugin", "ExpectOrigin", "1", "h:2"],
            &["ExpectOrigin", "--auth-source"],
        ),
        (&["--auth-source", "x", "1", "h:2"], &["--auth-plugin"]),
        (
            &["--token-plugin", "TokenFile", "--token-source", "t", "1"],
            &["--allow", "10.0.0.0/8"],
        ),
        (
            &["--token-plugin", "TokenFile", "--allow", "h", "1"],
            &["--token-source"],
        ),
        (
            &[
                "--token-plugin",
                "my.Plugin",
                "--token-source",
                "t",
                "--allow",
                "h",
                "1",
            ],
            &["custom Python", "JSONTokenApi"],
        ),
        (
            &[
                "--token-plugin",
                "TokenFile",
                "--token-source",
                "t",
                "--allow",
                "h",
                "1",
                "h:2",
            ],
            &["too many"],
        ),
        (&["--token-source", "t", "1", "h:2"], &["--token-plugin"]),
        (&["--host-token", "1", "h:2"], &["--token-plugin"]),
        (&["--allow", "h", "1", "h:2"], &["--token-plugin"]),
        (&["--ssl-only", "1", "h:2"], &["--ssl-only", "--cert"]),
        (
            &["--unix-listen-mode", "600", "1", "h:2"],
            &["--unix-listen"],
        ),
        (&["--colour", "1", "h:2"], &["unknown option --colour"]),
        (&["1"], &["too few arguments"]),
        (&["www.example:1", "h:2"], &["IP address"]),
    ] {
        let err = refusal(d, args);
        for n in needles {
            assert!(err.contains(n), "{args:?}: {n:?} not in {err}");
        }
    }
}

/// Every option `websockify --help` lists is one wsgate knows: translated or refused by name,
/// never "unknown option".
#[test]
fn every_option_of_the_installed_websockify_is_known() {
    let help = match Command::new("websockify").arg("--help").output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => {
            eprintln!(
                "SKIPPED: websockify is not installed ({e}); ./scripts/test.sh installs the Debian package websockify"
            );
            return;
        }
    };
    let mut seen = 0;
    let dir = tempfile::tempdir().unwrap();
    for line in help.lines() {
        // Option lines are indented by two spaces; their descriptions continue further in.
        let Some(line) = line.strip_prefix("  ").filter(|l| l.starts_with('-')) else {
            continue;
        };
        for opt in line.split(", ") {
            let Some(opt) = opt.split_whitespace().next() else {
                continue;
            };
            if !opt.starts_with("--") || opt == "--help" {
                continue;
            }
            // "--record=FILE" takes a value.
            let arg = match opt.split_once('=') {
                Some((name, _)) => format!("{name}=1"),
                None => opt.to_string(),
            };
            seen += 1;
            let out = wsgate_in(dir.path(), &["--print-config", &arg, "127.0.0.1:1", "h:2"]);
            let err = stderr(&out);
            assert!(
                !err.contains("unknown option") && !err.contains("ambiguous"),
                "websockify's {opt} is unknown to wsgate: {err}"
            );
            assert!(
                out.status.code() == Some(0)
                    || (out.status.code() == Some(2) && err.lines().count() == 1),
                "{opt}: {:?} {err}",
                out.status
            );
        }
    }
    assert!(seen >= 30, "parsed only {seen} options from:\n{help}");
}

// ---------------------------------------------------------------------------------------------
// Running it

#[tokio::test]
async fn plain_form_echoes_on_any_path() {
    let echo = backends::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(
        dir.path(),
        &os(&["127.0.0.1:0", &echo.config_addr()]),
        false,
    );
    for path in ["/websockify", "/", "/any/path?x=1"] {
        echo_at(&format!("ws://{}{path}", p.addr)).await;
    }
}

#[tokio::test]
async fn token_file_routes_each_token_inside_the_allow_list() {
    let echo = backends::echo().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tokens"),
        format!("good: {}\noutside: 192.0.2.1:5900\n", echo.config_addr()),
    )
    .unwrap();
    let p = Proc::start(
        dir.path(),
        &os(&[
            "--token-plugin",
            "TokenFile",
            "--token-source",
            "tokens",
            "--allow",
            "127.0.0.1",
            "127.0.0.1:0",
        ]),
        false,
    );
    echo_at(&format!("ws://{}/websockify?token=good", p.addr)).await;
    for (query, status) in [("token=outside", 403), ("token=nope", 404), ("", 400)] {
        let url = format!("ws://{}/websockify?{query}", p.addr);
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), status, "{query}")
            }
            other => panic!("{query}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn jwt_token_api_takes_the_target_from_the_token_in_the_query() {
    let echo = backends::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = b"0123456789abcdef0123456789abcdef";
    std::fs::write(dir.path().join("key"), secret).unwrap();
    let p = Proc::start(
        dir.path(),
        &os(&[
            "--token-plugin",
            "JWTTokenApi",
            "--token-source",
            "key",
            "--allow",
            "127.0.0.1",
            "127.0.0.1:0",
        ]),
        false,
    );
    let addr: SocketAddr = echo.config_addr().parse().unwrap();
    let mut claims = support::auth::good_claims("vnc");
    claims["host"] = "127.0.0.1".into();
    claims["port"] = addr.port().into();
    let token = support::auth::hs256(secret).sign(&claims);
    echo_at(&format!("ws://{}/websockify?token={token}", p.addr)).await;
    let bad = support::auth::hs256(b"another-secret-another-secret-xx").sign(&claims);
    match tokio_tungstenite::connect_async(format!("ws://{}/?token={bad}", p.addr)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 401),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unix_target_heartbeat_admin_metrics_and_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vnc.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let p = Proc::start_logging_to(
        dir.path(),
        &os(&[
            "--unix-target",
            "vnc.sock",
            "--heartbeat",
            "1",
            "-v",
            "--log-file",
            "ws.log",
            "--admin",
            "127.0.0.1:0",
            "127.0.0.1:0",
        ]),
        true,
        Some(&dir.path().join("ws.log")),
    );
    let url = format!("ws://{}/websockify", p.addr);
    echo_at(&url).await;
    // --heartbeat 1: the gateway pings the client.
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let ping = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Ok(Message::Ping(_))) = ws.next().await {
                return;
            }
        }
    })
    .await;
    assert!(ping.is_ok(), "no ping within {WAIT:?}");
    drop(ws);
    // Metrics name the route by its own path.
    let admin = p.admin.expect("admin address");
    let body = reqwest_get(admin, "/metrics").await;
    assert!(body.contains("route=\"/*\""), "{body}");
    assert!(!body.contains("route=\"/websockify\""), "{body}");
    // -v and --log-file: debug lines appended to the file, mode 0640.
    let log = dir.path().join("ws.log");
    let meta = std::fs::metadata(&log).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    // A request cut short is logged at debug level.
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    }
    let deadline = Instant::now() + WAIT;
    let mut text = String::new();
    while Instant::now() < deadline {
        text = std::fs::read_to_string(&log).unwrap();
        if text.contains("DEBUG") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(text.contains("DEBUG"), "{text}");
    assert!(text.contains("listening"), "{text}");
}

/// A plain HTTP GET over a fresh TCP connection; the body.
async fn reqwest_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// A TLS client for `localhost` trusting `cert`.
async fn wss_echo(addr: SocketAddr, cert: &rustls::pki_types::CertificateDer<'static>) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .expect("TLS handshake");
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("wss://localhost:{}/websockify", addr.port()), tls)
            .await
            .expect("wss upgrade");
    ws.send(Message::binary(b"over tls".to_vec()))
        .await
        .unwrap();
    let got = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::binary(b"over tls".to_vec()));
}

#[tokio::test]
async fn ssl_only_takes_wss_and_refuses_plain() {
    let echo = backends::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let cert = support::write_cert(dir.path());
    let p = Proc::start(
        dir.path(),
        &os(&[
            "--cert",
            "cert.pem",
            "--key",
            "key.pem",
            "--ssl-only",
            "127.0.0.1:0",
            &echo.config_addr(),
        ]),
        false,
    );
    wss_echo(p.addr, &cert).await;
    let plain = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://{}/websockify", p.addr)),
    )
    .await
    .expect("plain attempt hung");
    assert!(plain.is_err(), "plain ws:// accepted on --ssl-only");
}

#[tokio::test]
async fn cert_takes_ws_and_wss_on_one_port() {
    let echo = backends::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let cert = support::write_cert(dir.path());
    // websockify's default: self.pem in the current directory, holding certificate and key.
    let both = std::fs::read_to_string(dir.path().join("cert.pem")).unwrap()
        + &std::fs::read_to_string(dir.path().join("key.pem")).unwrap();
    std::fs::write(dir.path().join("self.pem"), both).unwrap();
    let p = Proc::start(
        dir.path(),
        &os(&["127.0.0.1:0", &echo.config_addr()]),
        false,
    );
    wss_echo(p.addr, &cert).await;
    echo_at(&format!("ws://{}/websockify", p.addr)).await;
}

// ---------------------------------------------------------------------------------------------
// Prefix routes, which the websockify form relies on

/// A backend that writes its name once a connection opens.
async fn named(name: &'static str) -> backends::Backend {
    backends::Backend::spawn(move |mut s| async move {
        use tokio::io::AsyncWriteExt;
        let _ = s.write_all(name.as_bytes()).await;
        let _ = s.flush().await;
        tokio::time::sleep(WAIT).await;
    })
    .await
}

async fn first_message(url: &str) -> Result<Vec<u8>, u16> {
    match tokio_tungstenite::connect_async(url).await {
        Ok((mut ws, _)) => Ok(tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no message")
            .unwrap()
            .unwrap()
            .into_data()
            .to_vec()),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("{url}: {e}"),
    }
}

#[tokio::test]
async fn exact_routes_first_then_the_longest_prefix() {
    let (exact, short, long) = (
        named("exact").await,
        named("short").await,
        named("long").await,
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("vnc")).unwrap();
    std::fs::write(dir.path().join("vnc/page.html"), "static page").unwrap();
    let gw = support::TestGateway::start_in(
        dir,
        &format!(
            r#"
[[listener]]
bind = "127.0.0.1:0"

[static]
dir = "."

[[route]]
path = "/vnc/*"
backend = "{}"

[[route]]
path = "/vnc/console/*"
backend = "{}"

[[route]]
path = "/vnc/console/exact"
backend = "{}"
"#,
            short.config_addr(),
            long.config_addr(),
            exact.config_addr()
        ),
    )
    .await;
    let base = format!("ws://{}", gw.addr());
    for (path, want) in [
        ("/vnc/console/exact", Ok(&b"exact"[..])),
        ("/vnc/console/exact/more", Ok(b"long")),
        ("/vnc/console/", Ok(b"long")),
        ("/vnc/console", Ok(b"short")),
        ("/vnc/", Ok(b"short")),
        ("/vnc/x?token=1", Ok(b"short")),
        ("/vnc", Err(404)),
        ("/other", Err(404)),
    ] {
        let got = first_message(&format!("{base}{path}")).await;
        assert_eq!(got.as_deref().map_err(|s| *s), want, "{path}");
    }
    // Plain HTTP under a prefix route reaches [static]; an exact route answers 426.
    let page = reqwest_get(gw.addr(), "/vnc/page.html").await;
    assert!(
        page.starts_with("HTTP/1.1 200") && page.ends_with("static page"),
        "{page}"
    );
    let exact_plain = reqwest_get(gw.addr(), "/vnc/console/exact").await;
    assert!(exact_plain.starts_with("HTTP/1.1 426"), "{exact_plain}");
}
