//! Per-session targets (`[route.target]`): a token in the request picks the backend from a
//! websockify token file (or a directory of them), within the route's allow-list. Observed from
//! the client (status, the greeting of the backend reached), from backend stubs that count what
//! reaches them, and from the captured log (which must never hold a token).

use crate::support::backends::Backend;
use crate::support::ops::{self, WAIT};
use crate::support::{cli, TestGateway};

use std::path::Path;
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Token values: distinctive, so that finding one in the log is unambiguous.
const TOKEN_A: &str = "tok-alpha-5e1f0c";
const TOKEN_B: &str = "tok-beta-93ab7d";

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

fn config(target: &str, allow: &[String], limits: &str) -> String {
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
{target}
allow = [{allow}]

[limits]
{limits}
"#
    )
}

/// Write `text` to `path` through a rename, so that a reader never sees half of it.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn hash(token: &str) -> String {
    Sha1::digest(token.as_bytes())[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The first message of a new session: the greeting of the backend it reached.
async fn greeting(url: &str, headers: &[(&str, &str)]) -> String {
    let mut ws = ops::ws_with(url, headers).await;
    let got = String::from_utf8(ops::next_data(&mut ws).await).unwrap();
    ops::echo(&mut ws, "ping").await;
    ops::close(ws).await;
    got
}

/// Two backends, two tokens, both allowed.
struct Pair {
    a: Backend,
    b: Backend,
}

impl Pair {
    async fn new() -> Pair {
        Pair {
            a: greeter("A").await,
            b: greeter("B").await,
        }
    }

    fn token_file(&self) -> String {
        format!(
            "# consoles\n{TOKEN_A}: {}\n{TOKEN_B}: {}\n",
            self.a.addr, self.b.addr
        )
    }

    fn allow(&self) -> Vec<String> {
        vec![self.a.addr.to_string(), self.b.addr.to_string()]
    }
}

/// Start a gateway whose directory holds `tokens.txt` with `file`.
async fn start(target: &str, allow: &[String], file: &str, limits: &str) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens.txt"), file).unwrap();
    TestGateway::start_in(dir, &config(target, allow, limits)).await
}

#[tokio::test]
async fn each_token_reaches_its_own_backend_from_the_query() {
    let pair = Pair::new().await;
    let gw = start(
        "token_from = \"query\"\nsource = \"file:tokens.txt\"",
        &pair.allow(),
        &pair.token_file(),
        "",
    )
    .await;
    let url = |t: &str| format!("{}?token={t}", gw.url("/websockify"));
    assert_eq!(greeting(&url(TOKEN_A), &[]).await, "A");
    assert_eq!(greeting(&url(TOKEN_B), &[]).await, "B");
    assert_eq!(greeting(&url(TOKEN_A), &[]).await, "A");
    assert_eq!(pair.a.connections_made().await, 2);
    assert_eq!(pair.b.connections_made().await, 1);

    // The access lines name the target and the token's hash, never the token.
    let logs = gw.wait_for_count("session closed", 3, WAIT).await;
    let open_a = logs
        .lines()
        .find(|l| l.contains("session open") && l.contains(&format!("backend={}", pair.a.addr)))
        .unwrap_or_else(|| panic!("no session open line for backend A:\n{logs}"));
    assert!(
        open_a.contains(&format!("token_hash={}", hash(TOKEN_A))),
        "{open_a}"
    );
    assert!(
        logs.lines().any(
            |l| l.contains("session closed") && l.contains(&format!("backend={}", pair.b.addr))
        ),
        "{logs}"
    );
}

#[tokio::test]
async fn tokens_from_a_cookie_a_header_and_the_host() {
    let pair = Pair::new().await;
    let file = format!("{}vm-b.consoles.test: {}\n", pair.token_file(), pair.b.addr);

    let cookie = start(
        "token_from = \"cookie\"\ntoken_name = \"vnc\"\nsource = \"file:tokens.txt\"",
        &pair.allow(),
        &file,
        "",
    )
    .await;
    let url = cookie.url("/websockify");
    let c = format!("theme=dark; vnc={TOKEN_B}");
    assert_eq!(greeting(&url, &[("Cookie", &c)]).await, "B");
    // The query is not where this route looks.
    assert_eq!(
        ops::try_ws(&format!("{url}?token={TOKEN_A}"), &[])
            .await
            .err(),
        Some(400)
    );
    drop(cookie);

    let header = start(
        "token_from = \"header\"\ntoken_name = \"X-Console-Token\"\nsource = \"file:tokens.txt\"",
        &pair.allow(),
        &file,
        "",
    )
    .await;
    let url = header.url("/websockify");
    assert_eq!(greeting(&url, &[("X-Console-Token", TOKEN_A)]).await, "A");
    drop(header);

    let host = start(
        "token_from = \"host\"\nsource = \"file:tokens.txt\"",
        &pair.allow(),
        &file,
        "",
    )
    .await;
    let url = host.url("/websockify");
    assert_eq!(
        greeting(&url, &[("Host", "vm-b.consoles.test:8443")]).await,
        "B"
    );
    assert_eq!(
        ops::try_ws(&url, &[("Host", "vm-z.consoles.test")])
            .await
            .err(),
        Some(404)
    );
    assert_eq!(pair.a.connections_made().await, 1);
    assert_eq!(pair.b.connections_made().await, 2);
}

#[tokio::test]
async fn unknown_and_missing_tokens_connect_nothing() {
    let pair = Pair::new().await;
    let gw = start(
        "token_from = \"query\"\nsource = \"file:tokens.txt\"",
        &pair.allow(),
        &pair.token_file(),
        "",
    )
    .await;
    let url = gw.url("/websockify");
    assert_eq!(
        ops::try_ws(&format!("{url}?token=tok-nobody-000"), &[])
            .await
            .err(),
        Some(404)
    );
    assert_eq!(ops::try_ws(&url, &[]).await.err(), Some(400));
    assert_eq!(
        ops::try_ws(&format!("{url}?token="), &[]).await.err(),
        Some(400)
    );
    assert_eq!(pair.a.connections_made().await, 0);
    assert_eq!(pair.b.connections_made().await, 0);
    let logs = gw.wait_for_count("handshake refused", 3, WAIT).await;
    assert!(logs.contains("reason=\"unknown token\""), "{logs}");
    assert!(logs.contains("reason=\"missing token\""), "{logs}");
    assert!(
        !logs.contains("tok-nobody-000"),
        "a token was logged:\n{logs}"
    );
}

#[tokio::test]
async fn targets_outside_the_allow_list_are_refused_without_a_connection() {
    let allowed = greeter("A").await;
    let other = greeter("X").await;
    let file = format!(
        "{TOKEN_A}: {}\n{TOKEN_B}: {}\nmeta: 169.254.169.254:80\n",
        allowed.addr, other.addr
    );
    // A connect attempt to the metadata address would wait for this long.
    let gw = start(
        "token_from = \"query\"\nsource = \"file:tokens.txt\"",
        &[allowed.addr.to_string(), "*.vm.internal".to_string()],
        &file,
        "connect_timeout = \"60s\"",
    )
    .await;
    let url = |t: &str| format!("{}?token={t}", gw.url("/websockify"));

    // A loopback port that is not listed (same address, other port).
    assert_eq!(ops::try_ws(&url(TOKEN_B), &[]).await.err(), Some(403));
    assert_eq!(other.connections_made().await, 0);

    // The cloud metadata address: refused before any connect, so at once.
    let started = Instant::now();
    assert_eq!(ops::try_ws(&url("meta"), &[]).await.err(), Some(403));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "403 after {:?}: a connect was attempted",
        started.elapsed()
    );

    // The listed one still works.
    assert_eq!(greeting(&url(TOKEN_A), &[]).await, "A");

    let logs = gw.wait_for_count("target not allowed", 2, WAIT).await;
    let line = logs
        .lines()
        .find(|l| l.contains("target not allowed by") && l.contains("169.254.169.254:80"))
        .unwrap_or_else(|| panic!("no log line names the refused target:\n{logs}"));
    assert!(
        line.contains(&format!("token_hash={}", hash("meta"))),
        "{line}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("target not allowed by") && l.contains(&other.addr.to_string())),
        "{logs}"
    );
    for token in [TOKEN_A, TOKEN_B] {
        assert!(!logs.contains(token), "token {token} was logged:\n{logs}");
    }
}

#[tokio::test]
async fn a_directory_source_reads_every_file() {
    let pair = Pair::new().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    std::fs::write(
        tokens.join("a.conf"),
        format!("{TOKEN_A}: {}\n", pair.a.addr),
    )
    .unwrap();
    std::fs::write(
        tokens.join("b.conf"),
        format!("not a token line\n{TOKEN_B}: {}\n", pair.b.addr),
    )
    .unwrap();
    let gw = TestGateway::start_in(
        dir,
        &config(
            "token_from = \"query\"\nsource = \"file:tokens/\"",
            &pair.allow(),
            "",
        ),
    )
    .await;
    let url = |t: &str| format!("{}?token={t}", gw.url("/websockify"));
    assert_eq!(greeting(&url(TOKEN_A), &[]).await, "A");
    assert_eq!(greeting(&url(TOKEN_B), &[]).await, "B");
    // The malformed line is named by file and line number.
    let logs = gw.logs();
    assert!(
        logs.lines().any(|l| l.contains("token file line skipped")
            && l.contains("b.conf")
            && l.contains("line=1")),
        "{logs}"
    );
}

#[tokio::test]
async fn an_edited_token_file_applies_to_the_next_handshake() {
    let pair = Pair::new().await;
    let gw = start(
        "token_from = \"query\"\nsource = \"file:tokens.txt\"",
        &pair.allow(),
        &format!("{TOKEN_A}: {}\n", pair.a.addr),
        "",
    )
    .await;
    let url = |t: &str| format!("{}?token={t}", gw.url("/websockify"));
    assert_eq!(greeting(&url(TOKEN_A), &[]).await, "A");
    assert_eq!(ops::try_ws(&url(TOKEN_B), &[]).await.err(), Some(404));

    let file = gw.dir.path().join("tokens.txt");
    write_atomic(
        &file,
        &format!(
            "# moved\n{TOKEN_A}: {}\n{TOKEN_B}: {}\n",
            pair.b.addr, pair.a.addr
        ),
    );
    assert_eq!(greeting(&url(TOKEN_A), &[]).await, "B");
    assert_eq!(greeting(&url(TOKEN_B), &[]).await, "A");

    // A source that cannot be read: 503, nothing connected.
    std::fs::remove_file(&file).unwrap();
    assert_eq!(ops::try_ws(&url(TOKEN_A), &[]).await.err(), Some(503));
    assert_eq!(pair.a.connections_made().await, 2);
    assert_eq!(pair.b.connections_made().await, 1);
    let logs = gw.wait_for_log("token source unavailable", WAIT).await;
    for token in [TOKEN_A, TOKEN_B] {
        assert!(!logs.contains(token), "token {token} was logged:\n{logs}");
    }
}

#[test]
fn check_refuses_a_target_route_without_allow_or_with_a_backend() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wsgate.toml");
    let cases = [
        (
            "[route.target]\ntoken_from = \"query\"\nsource = \"file:t.txt\"\n",
            "route[0].target.allow",
        ),
        (
            "[route.target]\ntoken_from = \"query\"\nsource = \"file:t.txt\"\nallow = []\n",
            "route[0].target.allow",
        ),
        (
            "backend = \"127.0.0.1:9001\"\n[route.target]\ntoken_from = \"query\"\nsource = \"file:t.txt\"\nallow = [\"127.0.0.1\"]\n",
            "route[0].target",
        ),
        (
            "[route.target]\ntoken_from = \"query\"\nsource = \"file:t.txt\"\nallow = [\"127.0.0.1\"]\ncolour = \"red\"\n",
            "route[0].target.colour",
        ),
        (
            "[route.target]\ntoken_from = \"host\"\ntoken_name = \"x\"\nsource = \"file:t.txt\"\nallow = [\"127.0.0.1\"]\n",
            "route[0].target.token_name",
        ),
        (
            "[route.target]\ntoken_from = \"query\"\nsource = \"file:t.txt\"\nallow = [\"10.0.0.0/40\"]\n",
            "route[0].target.allow[0]",
        ),
    ];
    for (route, key) in cases {
        std::fs::write(
            &path,
            format!("[[listener]]\nbind = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/w\"\n{route}"),
        )
        .unwrap();
        let out = cli::run_wsgate(
            ["check".as_ref(), "--config".as_ref(), path.as_os_str()],
            Duration::from_secs(20),
        );
        let err = cli::stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{route}\n{err}");
        assert!(
            err.contains(&format!("{key}: ")),
            "{route}: want {key}: {err}"
        );
    }

    // A complete one is accepted and summarised.
    std::fs::write(
        &path,
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/w\"\n[route.target]\ntoken_from = \"query\"\nsource = \"file:t.txt\"\nallow = [\"127.0.0.1:5900-5999\"]\n",
    )
    .unwrap();
    let out = cli::run_wsgate(
        ["check".as_ref(), "--config".as_ref(), path.as_os_str()],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(0), "{}", cli::stderr(&out));
    assert!(
        cli::stdout(&out).contains("/w -> per-session target from query parameter token"),
        "{}",
        cli::stdout(&out)
    );
}

#[tokio::test]
async fn a_name_is_checked_again_after_it_resolves() {
    let a = greeter("A").await;
    let port = a.addr.port();
    let file = format!("{TOKEN_A}: localhost:{port}\n");
    // A name entry admits the name, but loopback is refused unless an IP entry lists it.
    let by_name = start(
        "token_from = \"query\"\nsource = \"file:tokens.txt\"",
        &[format!("localhost:{port}")],
        &file,
        "",
    )
    .await;
    let url = format!("{}?token={TOKEN_A}", by_name.url("/websockify"));
    assert_eq!(ops::try_ws(&url, &[]).await.err(), Some(403));
    assert_eq!(a.connections_made().await, 0);
    let logs = by_name
        .wait_for_log("every address it resolves to", WAIT)
        .await;
    assert!(logs.contains(&format!("target=localhost:{port}")), "{logs}");
    drop(by_name);

    let listed = start(
        "token_from = \"query\"\nsource = \"file:tokens.txt\"",
        &[format!("localhost:{port}"), format!("127.0.0.1:{port}")],
        &file,
        "",
    )
    .await;
    let url = format!("{}?token={TOKEN_A}", listed.url("/websockify"));
    assert_eq!(greeting(&url, &[]).await, "A");
}

#[tokio::test]
async fn a_unix_socket_target_under_an_allowed_directory() {
    let dir = tempfile::tempdir().unwrap();
    let socks = dir.path().join("socks");
    std::fs::create_dir(&socks).unwrap();
    let listener = tokio::net::UnixListener::bind(socks.join("vm.sock")).unwrap();
    let server = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if s.write_all(b"U").await.is_ok() {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    std::fs::write(
        dir.path().join("tokens.txt"),
        format!(
            "{TOKEN_A}: unix_socket:{}\n{TOKEN_B}: unix_socket:{}\n",
            socks.join("vm.sock").display(),
            dir.path().join("other.sock").display()
        ),
    )
    .unwrap();
    let gw = TestGateway::start_in(
        dir,
        &config(
            "token_from = \"query\"\nsource = \"file:tokens.txt\"",
            &[format!("unix:{}/", socks.display())],
            "",
        ),
    )
    .await;
    let url = |t: &str| format!("{}?token={t}", gw.url("/websockify"));
    assert_eq!(greeting(&url(TOKEN_A), &[]).await, "U");
    assert_eq!(ops::try_ws(&url(TOKEN_B), &[]).await.err(), Some(403));
    server.abort();
}

#[tokio::test]
async fn the_session_list_shows_the_target() {
    let pair = Pair::new().await;
    let text = format!(
        "{}\n[admin]\nbind = \"{}\"\n",
        config(
            "token_from = \"query\"\nsource = \"file:tokens.txt\"",
            &pair.allow(),
            ""
        ),
        ops::ADMIN_BIND
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens.txt"), pair.token_file()).unwrap();
    let gw = TestGateway::start_in(dir, &text).await;
    let mut ws = ops::ws(&format!("{}?token={TOKEN_B}", gw.url("/websockify"))).await;
    assert_eq!(ops::next_data(&mut ws).await, b"B");
    let resp = ops::http(gw.admin(), "GET", "/sessions", None).await;
    let list: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(list[0]["backend"], pair.b.addr.to_string(), "{list}");
    assert!(!resp.body.contains(TOKEN_B), "{}", resp.body);
    ops::close(ws).await;
}

#[tokio::test]
async fn cache_ttl_keeps_a_resolved_mapping() {
    let pair = Pair::new().await;
    let gw = start(
        "token_from = \"query\"\nsource = \"file:tokens.txt\"\ncache_ttl = \"1h\"",
        &pair.allow(),
        &format!("{TOKEN_A}: {}\n", pair.a.addr),
        "",
    )
    .await;
    let url = |t: &str| format!("{}?token={t}", gw.url("/websockify"));
    assert_eq!(greeting(&url(TOKEN_A), &[]).await, "A");
    assert_eq!(ops::try_ws(&url(TOKEN_B), &[]).await.err(), Some(404));

    write_atomic(
        &gw.dir.path().join("tokens.txt"),
        &format!(
            "# moved\n{TOKEN_A}: {}\n{TOKEN_B}: {}\n",
            pair.b.addr, pair.b.addr
        ),
    );
    // The cached mapping holds for cache_ttl; a token not cached (an unknown one is never
    // cached) is looked up in the edited file.
    assert_eq!(greeting(&url(TOKEN_A), &[]).await, "A");
    assert_eq!(greeting(&url(TOKEN_B), &[]).await, "B");
}

/// A token service on loopback: answers by the token in the request target (after `t=` or the
/// last `/`, still percent-encoded) and records every request target it receives.
struct TokenService {
    addr: std::net::SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TokenService {
    /// `answers`: encoded token -> (status, content type, body); "slow" never answers in time.
    async fn spawn(answers: Vec<(String, u16, &'static str, String)>) -> TokenService {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let answers = std::sync::Arc::new(answers);
        let (seen2, task_answers) = (seen.clone(), answers.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let (seen, answers) = (seen2.clone(), task_answers.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
                            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let target = head.split(' ').nth(1).unwrap_or("").to_string();
                    seen.lock().unwrap().push(target.clone());
                    let token = match target.split_once("t=") {
                        Some((_, t)) => t,
                        None => target.rsplit('/').next().unwrap_or(""),
                    };
                    if token == "slow" {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        return;
                    }
                    let (status, ctype, body) = answers
                        .iter()
                        .find(|a| a.0 == token)
                        .map_or((404, "text/plain", String::new()), |a| {
                            (a.1, a.2, a.3.clone())
                        });
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        TokenService { addr, seen, task }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// The token service's answers for the pair, and a target outside the allow-list.
fn service_answers(pair: &Pair, outside: &Backend) -> Vec<(String, u16, &'static str, String)> {
    vec![
        (
            "plain-a".into(),
            200,
            "text/plain",
            format!(" {}\n", pair.a.addr),
        ),
        (
            "json-b".into(),
            200,
            "application/json",
            format!(
                "{{\"host\": \"127.0.0.1\", \"port\": {}}}",
                pair.b.addr.port()
            ),
        ),
        (
            "json-str-b".into(),
            200,
            "text/plain",
            format!(
                "{{\"host\": \"127.0.0.1\", \"port\": \"{}\"}}",
                pair.b.addr.port()
            ),
        ),
        (
            "a%20b%2Fc".into(),
            200,
            "text/plain",
            pair.a.addr.to_string(),
        ),
        ("empty".into(), 200, "text/plain", String::new()),
        ("broken".into(), 500, "text/plain", "oops".into()),
        ("garbage".into(), 200, "text/plain", "<html>".into()),
        (
            "outside".into(),
            200,
            "text/plain",
            outside.addr.to_string(),
        ),
    ]
}

#[tokio::test]
async fn a_token_service_maps_tokens_and_its_answers_to_statuses() {
    let pair = Pair::new().await;
    let outside = greeter("X").await;
    let service = TokenService::spawn(service_answers(&pair, &outside)).await;
    let gw = start(
        &format!(
            "token_from = \"query\"\nsource = \"http://{}/lookup?t={{token}}\"\nsource_timeout = \"300ms\"",
            service.addr
        ),
        &pair.allow(),
        "",
        "",
    )
    .await;
    let url = |t: &str| format!("{}?token={t}", gw.url("/websockify"));
    assert_eq!(greeting(&url("plain-a"), &[]).await, "A");
    assert_eq!(greeting(&url("json-b"), &[]).await, "B");
    assert_eq!(greeting(&url("json-str-b"), &[]).await, "B");
    // A space and a slash reach the service percent-encoded.
    assert_eq!(greeting(&url("a+b%2Fc"), &[]).await, "A");
    assert!(
        service.seen().contains(&"/lookup?t=a%20b%2Fc".to_string()),
        "{:?}",
        service.seen()
    );
    assert_eq!(ops::try_ws(&url("nobody"), &[]).await.err(), Some(404));
    assert_eq!(ops::try_ws(&url("empty"), &[]).await.err(), Some(404));
    assert_eq!(ops::try_ws(&url("broken"), &[]).await.err(), Some(503));
    assert_eq!(ops::try_ws(&url("garbage"), &[]).await.err(), Some(503));
    let started = Instant::now();
    assert_eq!(ops::try_ws(&url("slow"), &[]).await.err(), Some(503));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "503 after {:?}",
        started.elapsed()
    );
    // What the service answers is checked against the allow-list, before any connect.
    assert_eq!(ops::try_ws(&url("outside"), &[]).await.err(), Some(403));
    assert_eq!(outside.connections_made().await, 0);
    assert_eq!(pair.a.connections_made().await, 2);
    assert_eq!(pair.b.connections_made().await, 2);

    let logs = gw.wait_for_count("token source unavailable", 3, WAIT).await;
    assert!(
        logs.lines().any(|l| l.contains("token source unavailable")
            && l.contains("500")
            && l.contains(&format!("token_hash={}", hash("broken")))),
        "{logs}"
    );
    assert!(logs.contains("did not answer within"), "{logs}");
    let logs = gw.wait_for_log("target not allowed by", WAIT).await;
    for token in [
        "plain-a",
        "json-b",
        "json-str-b",
        "a b/c",
        "a%20b",
        "nobody",
        "broken",
        "garbage",
        "slow",
        "outside",
    ] {
        assert!(!logs.contains(token), "token {token} was logged:\n{logs}");
    }
}

#[tokio::test]
async fn a_token_service_without_a_placeholder_gets_the_token_as_a_path_segment_and_is_cached() {
    let pair = Pair::new().await;
    let outside = greeter("X").await;
    let service = TokenService::spawn(service_answers(&pair, &outside)).await;
    let gw = start(
        &format!(
            "token_from = \"header\"\ntoken_name = \"x-console\"\nsource = \"http://{}/tokens\"\ncache_ttl = \"1h\"",
            service.addr
        ),
        &pair.allow(),
        "",
        "",
    )
    .await;
    let url = gw.url("/websockify");
    assert_eq!(greeting(&url, &[("x-console", "a b/c")]).await, "A");
    assert_eq!(greeting(&url, &[("x-console", "a b/c")]).await, "A");
    assert_eq!(greeting(&url, &[("x-console", "json-b")]).await, "B");
    assert_eq!(
        service.seen(),
        vec![
            "/tokens/a%20b%2Fc".to_string(),
            "/tokens/json-b".to_string()
        ],
        "a cached token is not asked for again"
    );
    // Unknown tokens are not cached.
    for _ in 0..2 {
        assert_eq!(
            ops::try_ws(&url, &[("x-console", "nobody")]).await.err(),
            Some(404)
        );
    }
    assert_eq!(service.seen().len(), 4);
}

#[tokio::test]
async fn an_unreachable_token_service_is_503() {
    let pair = Pair::new().await;
    let port = crate::support::free_port();
    let gw = start(
        &format!("token_from = \"query\"\nsource = \"http://127.0.0.1:{port}/t/{{token}}\""),
        &pair.allow(),
        "",
        "",
    )
    .await;
    let url = format!("{}?token={TOKEN_A}", gw.url("/websockify"));
    assert_eq!(ops::try_ws(&url, &[]).await.err(), Some(503));
    let logs = gw.wait_for_log("token source unavailable", WAIT).await;
    assert!(logs.contains("unreachable"), "{logs}");
    assert!(!logs.contains(TOKEN_A), "the token was logged:\n{logs}");
}

#[test]
fn check_refuses_bad_token_service_settings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wsgate.toml");
    let cases = [
        ("source = \"ftp://h/x\"", "route[0].target.source"),
        ("source = \"http:///x\"", "route[0].target.source"),
        ("source = \"http://{token}.h/\"", "route[0].target.source"),
        (
            "source = \"file:t.txt\"\nsource_timeout = \"1s\"",
            "route[0].target.source_timeout",
        ),
        (
            "source = \"file:t.txt\"\nsource_ca_file = \"ca.pem\"",
            "route[0].target.source_ca_file",
        ),
        (
            "source = \"http://127.0.0.1:1/\"\nsource_ca_file = \"ca.pem\"",
            "route[0].target.source_ca_file",
        ),
        (
            "source = \"https://127.0.0.1:1/\"\nsource_ca_file = \"missing.pem\"",
            "route[0].target.source_ca_file",
        ),
        (
            "source = \"http://127.0.0.1:1/\"\nsource_timeout = \"1000d\"",
            "route[0].target.source_timeout",
        ),
    ];
    for (source, key) in cases {
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
            err.contains(&format!("{key}: ")) || err.contains(&format!("{key} ")),
            "{source}: want {key}: {err}"
        );
    }
    std::fs::write(
        &path,
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/w\"\n[route.target]\ntoken_from = \"query\"\nsource = \"http://127.0.0.1:9/t?k={token}\"\nsource_timeout = \"1s\"\nallow = [\"127.0.0.1:5900-5999\"]\n",
    )
    .unwrap();
    let out = cli::run_wsgate(
        ["check".as_ref(), "--config".as_ref(), path.as_os_str()],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(0), "{}", cli::stderr(&out));
    assert!(
        cli::stdout(&out).contains("via http://127.0.0.1:9/t?k={token}"),
        "{}",
        cli::stdout(&out)
    );
}

/// `source = "jwt"`: the target comes from the `host` and `port` claims of the token the route's
/// `[route.auth]` verified.
mod jwt_source {
    use super::*;
    use crate::support::auth::{self, claims_with, good_claims, AUDIENCE, ISSUER};
    use serde_json::{json, Value};

    const SECRET: &str = "test-only-hs256-secret-for-wsgate-target-claims-0123";

    fn config(allow: &[String]) -> String {
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
[route.auth]
type = "jwt"
token_from = "bearer"
algorithms = ["HS256"]
secret_file = "jwt-secret"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
[route.target]
source = "jwt"
allow = [{allow}]

[limits]
connect_timeout = "60s"
"#
        )
    }

    fn token(host: Value, port: Value) -> String {
        let mut c = claims_with("alice", "host", host);
        c["port"] = port;
        auth::hs256(SECRET.as_bytes()).sign(&c)
    }

    async fn status(gw: &TestGateway, token: &str) -> Option<u16> {
        let bearer = format!("Bearer {token}");
        ops::try_ws(
            &gw.url("/websockify"),
            &[("authorization", bearer.as_str())],
        )
        .await
        .err()
    }

    #[tokio::test]
    async fn each_token_reaches_the_target_its_claims_name() {
        let pair = Pair::new().await;
        let other = greeter("X").await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("jwt-secret"), SECRET).unwrap();
        let gw = TestGateway::start_in(dir, &config(&pair.allow())).await;

        // Both spellings of the port; a host name would be checked the same way.
        let a = token(json!("127.0.0.1"), json!(pair.a.addr.port()));
        let b = token(json!("127.0.0.1"), json!(pair.b.addr.port().to_string()));
        let bearer = |t: &str| format!("Bearer {t}");
        let url = gw.url("/websockify");
        assert_eq!(
            greeting(&url, &[("authorization", bearer(&a).as_str())]).await,
            "A"
        );
        assert_eq!(
            greeting(&url, &[("authorization", bearer(&b).as_str())]).await,
            "B"
        );

        // Claims outside the allow-list: 403 before any connect.
        let outside = token(json!("127.0.0.1"), json!(other.addr.port()));
        assert_eq!(status(&gw, &outside).await, Some(403));
        let started = Instant::now();
        let meta = token(json!("169.254.169.254"), json!(80));
        assert_eq!(status(&gw, &meta).await, Some(403));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a connect was attempted"
        );
        let v6 = token(json!("::1"), json!(pair.a.addr.port()));
        assert_eq!(status(&gw, &v6).await, Some(403));

        // A verified token without usable claims names no target: 404.
        let none = auth::hs256(SECRET.as_bytes()).sign(&good_claims("alice"));
        assert_eq!(status(&gw, &none).await, Some(404));
        let bad_port = token(json!("127.0.0.1"), json!("59x"));
        assert_eq!(status(&gw, &bad_port).await, Some(404));
        let bracketed = token(json!("[::1]"), json!(pair.a.addr.port()));
        assert_eq!(status(&gw, &bracketed).await, Some(404));

        // An invalid token is refused by the credential check (401), before any target lookup.
        let mut forged = claims_with("alice", "host", json!("127.0.0.1"));
        forged["port"] = json!(pair.a.addr.port());
        let forged = auth::hs256(b"another-test-only-secret-that-is-long-enough").sign(&forged);
        assert_eq!(status(&gw, &forged).await, Some(401));
        // No credential at all: 401 as well.
        assert_eq!(ops::try_ws(&url, &[]).await.err(), Some(401));

        assert_eq!(pair.a.connections_made().await, 1);
        assert_eq!(pair.b.connections_made().await, 1);
        assert_eq!(other.connections_made().await, 0);

        let logs = gw.wait_for_count("handshake refused", 8, WAIT).await;
        assert!(logs.contains("reason=\"token names no target\""), "{logs}");
        assert!(logs.contains("reason=\"target not allowed\""), "{logs}");
        let refused = logs
            .lines()
            .find(|l| l.contains("target not allowed by") && l.contains("169.254.169.254:80"))
            .unwrap_or_else(|| panic!("no log line names the refused target:\n{logs}"));
        assert!(
            refused.contains(&format!("token_hash={}", hash(&meta))),
            "{refused}"
        );
        let open_a = logs
            .lines()
            .find(|l| l.contains("session open") && l.contains(&format!("backend={}", pair.a.addr)))
            .unwrap_or_else(|| panic!("no session open line for backend A:\n{logs}"));
        assert!(
            open_a.contains(&format!("token_hash={}", hash(&a))),
            "{open_a}"
        );
        for t in [
            &a, &b, &outside, &meta, &v6, &none, &bad_port, &bracketed, &forged,
        ] {
            assert!(!logs.contains(t.as_str()), "a token was logged:\n{logs}");
        }
    }

    #[test]
    fn check_refuses_the_jwt_source_without_jwt_auth_or_with_token_keys() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("jwt-secret"), SECRET).unwrap();
        let path = dir.path().join("wsgate.toml");
        let jwt_auth = "[route.auth]\ntype = \"jwt\"\ntoken_from = \"bearer\"\nalgorithms = [\"HS256\"]\nsecret_file = \"jwt-secret\"\n";
        let forward_auth = "[route.auth]\ntype = \"forward\"\nurl = \"http://127.0.0.1:9/auth\"\n";
        let target = "[route.target]\nsource = \"jwt\"\nallow = [\"127.0.0.1\"]\n";
        let cases = [
            (String::new(), target.to_string(), "route[0].target.source"),
            (
                forward_auth.to_string(),
                target.to_string(),
                "route[0].target.source",
            ),
            (
                jwt_auth.to_string(),
                format!("{target}token_from = \"query\"\n"),
                "route[0].target.token_from",
            ),
            (
                jwt_auth.to_string(),
                format!("{target}token_name = \"t\"\n"),
                "route[0].target.token_name",
            ),
            (
                jwt_auth.to_string(),
                format!("{target}cache_ttl = \"5s\"\n"),
                "route[0].target.cache_ttl",
            ),
        ];
        let write = |auth: &str, target: &str| {
            std::fs::write(
                &path,
                format!("[[listener]]\nbind = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/w\"\n{auth}{target}"),
            )
            .unwrap();
            cli::run_wsgate(
                ["check".as_ref(), "--config".as_ref(), path.as_os_str()],
                Duration::from_secs(20),
            )
        };
        for (auth, target, key) in &cases {
            let out = write(auth, target);
            let err = cli::stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{auth}{target}\n{err}");
            assert!(
                err.contains(&format!("{key}: ")),
                "{auth}{target}: want {key}: {err}"
            );
        }
        let out = write(jwt_auth, target);
        assert_eq!(out.status.code(), Some(0), "{}", cli::stderr(&out));
        assert!(
            cli::stdout(&out).contains(
                "/w -> per-session target from the route's JWT via its host and port claims"
            ),
            "{}",
            cli::stdout(&out)
        );
    }
}
