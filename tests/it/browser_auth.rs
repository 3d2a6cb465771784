//! Cookie JWT and the Origin policy in a real headless Chromium.
//!
//! One gateway, two listeners A and B on loopback (two origins: same host, other port), both
//! serving the same page. The page always opens `ws://127.0.0.1:<A>/app`, a route that takes its
//! JWT from the `session` cookie and allows only the origin `http://127.0.0.1:<A>`. The cookie is
//! set in the browser over CDP (`Network.setCookie`, domain `127.0.0.1`); cookies are not
//! port-scoped, so the page loaded from B sends it too: cross-site WebSocket hijacking, which the
//! Origin policy must stop before any backend connection.
//!
//! Chromium is `$CHROMIUM`, else `/usr/bin/chromium`, driven over the Chrome DevTools Protocol
//! with tokio-tungstenite (a focused copy of the launcher and CDP client in tests/it/browser.rs).

use crate::support;
use crate::support::{auth, chromium};
use chromium::{Cdp, Chromium};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One CDP command.
const CDP_TIMEOUT: Duration = Duration::from_secs(10);
/// The page reaching its expected state.
const PAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// A gateway log line showing up.
const LOG_WAIT: Duration = Duration::from_secs(5);

/// The HS256 secret (written to `secret` next to the config); at least 32 bytes.
const SECRET: &str = "browser-auth-test-only-hs256-secret-0123456789";
/// What the backend says when a connection arrives.
const HELLO: &str = "hello from backend";

// ---------------------------------------------------------------------------------------------
// The backend

/// A TCP service on 127.0.0.1:0 that counts the connections it accepts, greets each with
/// `HELLO` as a line and records every byte it receives. Stops when dropped.
struct Backend {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<u8>>>,
    task: JoinHandle<()>,
}

impl Backend {
    async fn spawn() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (a, r) = (accepts.clone(), received.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                tokio::spawn(async move {
                    if stream
                        .write_all(format!("{HELLO}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        r.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        Backend {
            addr,
            accepts,
            received,
            task,
        }
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway and its page

/// The page: opens the socket to listener A wherever it was loaded from, sends "from page" once
/// open, and writes what happens into `#status` and `#log`.
fn page(a_port: u16) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>wsgate cookie auth</title></head>
<body>
<p id="status">connecting</p>
<pre id="log"></pre>
<script>
(function () {{
  var statusEl = document.getElementById('status');
  var logEl = document.getElementById('log');
  function note(s) {{ logEl.textContent += s + '\n'; }}
  note('origin: ' + location.origin);
  var ws = new WebSocket('ws://127.0.0.1:{a_port}/app');
  ws.onopen = function () {{
    statusEl.textContent = 'open';
    ws.send('from page');
    note('sent: from page');
  }};
  ws.onmessage = function (e) {{ note('received: ' + e.data); }};
  ws.onerror = function () {{ note('error'); }};
  ws.onclose = function (e) {{ statusEl.textContent = 'closed (code ' + e.code + ')'; }};
}})();
</script>
</body>
</html>
"#
    )
}

/// The gateway: listeners A and B serving the page, `/app` routed to `backend` behind the
/// cookie JWT check and the Origin policy allowing only A.
async fn start_gateway(backend: SocketAddr) -> support::Gateway {
    let a = support::free_port();
    let b = loop {
        let p = support::free_port();
        if p != a {
            break p;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("site")).unwrap();
    std::fs::write(dir.path().join("site/index.html"), page(a)).unwrap();
    std::fs::write(dir.path().join("secret"), format!("{SECRET}\n")).unwrap();
    let config = format!(
        r#"
[[listener]]
bind = "127.0.0.1:{a}"

[[listener]]
bind = "127.0.0.1:{b}"

[static]
dir = "site"

[[route]]
path = "/app"
backend = "{backend}"
framing = "lines"
allowed_origins = ["http://127.0.0.1:{a}"]

[route.auth]
type = "jwt"
token_from = "cookie"
cookie = "session"
algorithms = ["HS256"]
secret_file = "secret"
leeway = "0s"
"#
    );
    let gw = support::Gateway::start_in(dir, &config).await;
    assert_eq!(gw.addrs.len(), 2, "two listeners:\n{}", gw.logs());
    assert_eq!(gw.addrs[0].port(), a);
    assert_eq!(gw.addrs[1].port(), b);
    gw
}

/// A valid HS256 token for `alice`, expiring in an hour.
fn token() -> String {
    let now = auth::now();
    auth::hs256(SECRET.as_bytes()).sign(&json!({ "sub": "alice", "iat": now, "exp": now + 3600 }))
}

/// Whether a log line names the subject `alice` (tracing writes a string field quoted:
/// `subject="alice"`; the unquoted form is accepted too).
fn is_alice(line: &str) -> bool {
    line.contains("subject=\"alice\"")
        || line
            .split_whitespace()
            .any(|field| field == "subject=alice")
}

// ---------------------------------------------------------------------------------------------
// Chromium

impl Cdp {
    /// Poll `#status` and `#log` every 100 ms until `done(status, log)`, at most
    /// [`PAGE_TIMEOUT`]; returns the last (status, log) and whether `done` held.
    async fn poll_page(
        &mut self,
        session: &str,
        done: impl Fn(&str, &str) -> bool,
    ) -> (String, String, bool) {
        let expr = "JSON.stringify([document.getElementById('status').textContent, \
                    document.getElementById('log').textContent])";
        let deadline = Instant::now() + PAGE_TIMEOUT;
        loop {
            let r = self
                .call(
                    "Runtime.evaluate",
                    json!({ "expression": expr, "returnByValue": true }),
                    Some(session),
                )
                .await;
            let (status, log) = r["result"]["value"]
                .as_str()
                .and_then(|s| serde_json::from_str::<(String, String)>(s).ok())
                .unwrap_or_default();
            if done(&status, &log) {
                return (status, log, true);
            }
            if Instant::now() >= deadline {
                return (status, log, false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The headers (names lower-cased) of the one WebSocket handshake Chromium reported for
    /// `session` (`Network.webSocketWillSendHandshakeRequest`), waiting for the event at most
    /// [`CDP_TIMEOUT`].
    async fn handshake_headers(&mut self, session: &str) -> serde_json::Map<String, Value> {
        let method = "Network.webSocketWillSendHandshakeRequest";
        let deadline = Instant::now() + CDP_TIMEOUT;
        loop {
            let found: Vec<&Value> = self
                .events
                .iter()
                .filter(|e| e["sessionId"] == session && e["method"] == method)
                .collect();
            if let [event] = found[..] {
                let headers = event["params"]["request"]["headers"].as_object();
                return headers
                    .expect("handshake headers")
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                    .collect();
            }
            assert!(
                found.len() < 2 && Instant::now() < deadline,
                "want one {method} event for the tab, got {}",
                found.len()
            );
            // Any command lets pending events in.
            self.call(
                "Runtime.evaluate",
                json!({ "expression": "1" }),
                Some(session),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_session_opens_from_allowed_origin_and_is_refused_from_another() {
    let backend = Backend::spawn().await;
    let gw = start_gateway(backend.addr).await;
    let (a, b) = (gw.addrs[0].port(), gw.addrs[1].port());
    let token = token();
    let browser = Chromium::launch().await;
    let mut cdp = Cdp::connect(&browser.ws_url).await;
    let context = |cdp: &Cdp| {
        format!(
            "gateway log:\n{}\nbackend: {} accepts, received {:?}\nCDP events: {}\n\
             chromium stderr (tail):\n{}",
            gw.logs(),
            backend.accepts(),
            backend.received(),
            cdp.events.len(),
            browser.stderr_tail()
        )
    };

    // The session cookie, for host 127.0.0.1 (any port), before any page loads.
    let tab_a = cdp.new_tab().await;
    let set = cdp
        .call(
            "Network.setCookie",
            json!({
                "name": "session",
                "value": token,
                "domain": "127.0.0.1",
                "path": "/",
            }),
            Some(&tab_a),
        )
        .await;
    assert_ne!(set["success"], json!(false), "Network.setCookie: {set}");

    // 1. The page from the allowed origin A: the session opens with the cookie's subject.
    let url_a = format!("http://127.0.0.1:{a}/");
    cdp.call("Page.navigate", json!({ "url": url_a }), Some(&tab_a))
        .await;
    let want = format!("received: {HELLO}");
    let (status, log, ok) = cdp.poll_page(&tab_a, |_, log| log.contains(&want)).await;
    assert!(
        ok,
        "the page at {url_a} never showed {want:?}\n#status: {status:?}\n#log: {log:?}\n{}",
        context(&cdp)
    );
    println!("origin A: #status {status:?}\n#log:\n{log}");
    assert_eq!(status, "open", "#status of the page from origin A");
    assert!(log.contains("sent: from page"), "#log: {log:?}");

    let deadline = Instant::now() + LOG_WAIT;
    while !backend.received().contains("from page\n") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        backend.received(),
        "from page\n",
        "the backend should have received the page's message as one line\n{}",
        context(&cdp)
    );
    assert_eq!(backend.accepts(), 1, "{}", context(&cdp));

    let logs = gw.wait_for_log("session open", LOG_WAIT).await;
    let opened: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("session open"))
        .collect();
    assert!(
        opened.len() == 1 && opened[0].contains("route=/app") && is_alice(opened[0]),
        "want one `session open ... route=/app ... subject=\"alice\"` line, got:\n{}",
        opened.join("\n")
    );
    assert!(!logs.contains("handshake refused"), "{logs}");
    // Chromium attached the cookie set over CDP to the handshake, with Origin A.
    let h = cdp.handshake_headers(&tab_a).await;
    assert_eq!(h["origin"], format!("http://127.0.0.1:{a}"));
    assert_eq!(h["cookie"], format!("session={token}"));

    // 2. The same page from origin B (same host, other port): the browser still sends the
    //    cookie, but the Origin policy refuses the handshake before the backend is touched.
    let accepts_before = backend.accepts();
    let received_before = backend.received();
    let tab_b = cdp.new_tab().await;
    let url_b = format!("http://127.0.0.1:{b}/");
    cdp.call("Page.navigate", json!({ "url": url_b }), Some(&tab_b))
        .await;
    let (status, log, ok) = cdp
        .poll_page(&tab_b, |status, _| status.starts_with("closed"))
        .await;
    assert!(
        ok,
        "the page at {url_b} never reported a closed socket\n#status: {status:?}\n#log: {log:?}\n{}",
        context(&cdp)
    );
    println!("origin B: #status {status:?}\n#log:\n{log}");
    assert_eq!(
        status, "closed (code 1006)",
        "#status of the page from origin B"
    );
    assert!(
        log.contains(&format!("origin: http://127.0.0.1:{b}")),
        "#log: {log:?}"
    );
    assert!(log.contains("error"), "#log: {log:?}");
    assert!(!log.contains("received:"), "#log: {log:?}");
    assert!(!log.contains("sent:"), "#log: {log:?}");

    let logs = gw.wait_for_log("handshake refused", LOG_WAIT).await;
    let refused: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("handshake refused"))
        .collect();
    assert!(
        refused.len() == 1 && refused[0].contains("status=403") && refused[0].contains("path=/app"),
        "want one 403 refusal of /app, got:\n{}",
        refused.join("\n")
    );
    // The refused handshake went to listener A with Origin B. (Chromium's event omits the Cookie
    // header of this cross-origin handshake, yet the cookie is sent: with B allowed too, the same
    // page opens a session with subject alice.)
    let h = cdp.handshake_headers(&tab_b).await;
    assert_eq!(h["origin"], format!("http://127.0.0.1:{b}"));
    assert_eq!(h["host"], format!("127.0.0.1:{a}"));

    // Give a wrongly accepted session time to reach the backend, then check it saw nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        backend.accepts(),
        accepts_before,
        "the backend was connected for the refused page\n{}",
        context(&cdp)
    );
    assert_eq!(backend.received(), received_before, "{}", context(&cdp));
    assert_eq!(
        gw.logs().matches("session open").count(),
        1,
        "{}",
        context(&cdp)
    );

    // 3. The credential never reaches the log (neither the token nor its signature).
    let logs = gw.logs();
    let signature = token.rsplit('.').next().unwrap();
    assert!(!logs.contains(&token), "the token is in the gateway log");
    assert!(
        !logs.contains(signature),
        "the token's signature is in the gateway log"
    );

    // Kills Chromium by its PID (and its process group) and removes the profile.
    drop(browser);
}
