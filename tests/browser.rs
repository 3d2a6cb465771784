//! A real headless Chromium loads the demo page (demo/index.html + demo/demo.js) from the
//! gateway's static directory; the page opens a WebSocket to `/demo`, which the gateway pipes to
//! the built-in greeter with line framing. Chromium is driven over the Chrome DevTools Protocol
//! (CDP) with tokio-tungstenite.
//!
//! Chromium is `$CHROMIUM`, else `/usr/bin/chromium` (Debian package `chromium`, installed by
//! `./scripts/test.sh`). The tests fail, never skip, when it is missing.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Chromium start-up (until "DevTools listening on").
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// One CDP command.
const CDP_TIMEOUT: Duration = Duration::from_secs(30);
/// The page reaching its expected state.
const PAGE_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// The gateway

/// A gateway serving the shipped demo page on `127.0.0.1:<port>` with `/demo` routed to a
/// greeter, only `http://127.0.0.1:<port>` allowed as Origin.
async fn start_demo_gateway() -> support::Gateway {
    let gw_port = support::free_port();
    let greeter_port = support::free_port();
    let demo_dir = support::repo_root().join("demo");
    assert!(
        demo_dir.join("index.html").is_file() && demo_dir.join("demo.js").is_file(),
        "demo page missing in {}",
        demo_dir.display()
    );
    let config = format!(
        r#"
[[listener]]
bind = "127.0.0.1:{gw_port}"

[static]
dir = {dir:?}

[[demo_backend]]
bind = "127.0.0.1:{greeter_port}"
kind = "greeter"
greeting = "world"

[[route]]
path = "/demo"
backend = "127.0.0.1:{greeter_port}"
framing = "lines"
allowed_origins = ["http://127.0.0.1:{gw_port}"]

[limits]
max_message_size = "1MiB"
max_frame_size = "1MiB"
close_timeout = "5s"
"#,
        dir = demo_dir.to_str().expect("repo path is UTF-8"),
    );
    let gw = support::Gateway::start(&config).await;
    assert_eq!(gw.addr().port(), gw_port);
    gw.wait_for_log("demo backend listening", Duration::from_secs(10))
        .await;
    gw
}

// ---------------------------------------------------------------------------------------------
// Chromium

/// A headless Chromium with its own profile directory. Dropping it (also on panic) kills the
/// browser by its PID, then whatever is left of its process group, and removes the profile.
struct Chromium {
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
    /// `ws://127.0.0.1:PORT/devtools/browser/...`
    ws_url: String,
    profile: Option<tempfile::TempDir>,
}

impl Chromium {
    async fn launch() -> Chromium {
        let exe = match std::env::var_os("CHROMIUM") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => PathBuf::from("/usr/bin/chromium"),
        };
        assert!(
            exe.is_file(),
            "Chromium not found at {}: run ./scripts/test.sh, which installs the Debian package \
             chromium (or set CHROMIUM=/path/to/chromium)",
            exe.display()
        );
        let profile = tempfile::Builder::new()
            .prefix("wsgate-chromium-")
            .tempdir()
            .expect("profile dir");
        let mut cmd = Command::new(&exe);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--window-size=900,700",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--remote-debugging-port=0")
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        // Its own process group, so that its helper processes can be ended with it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut browser = Chromium {
            child: Some(child),
            stderr,
            ws_url: String::new(),
            profile: Some(profile),
        };
        let deadline = Instant::now() + LAUNCH_TIMEOUT;
        loop {
            let log = browser.stderr();
            if let Some(url) = log
                .lines()
                .find_map(|l| l.strip_prefix("DevTools listening on "))
            {
                browser.ws_url = url.trim().to_string();
                return browser;
            }
            if let Some(status) = browser.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("Chromium exited early ({status}):\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "Chromium did not report its DevTools address within {LAUNCH_TIMEOUT:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The last lines of Chromium's stderr, minus its D-Bus noise (no system bus here).
    fn stderr_tail(&self) -> String {
        let log = self.stderr();
        let lines: Vec<&str> = log.lines().filter(|l| !l.contains("dbus")).collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Ask the browser to close and wait a little for it; Drop kills whatever is left.
    async fn close(self, cdp: &mut Cdp) {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            cdp.send("Browser.close", json!({}), None),
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut this = self;
        while Instant::now() < deadline {
            match this.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(None)) => tokio::time::sleep(Duration::from_millis(50)).await,
                _ => break,
            }
        }
        drop(this);
    }
}

/// SIGKILL every process left in the process group `pgid` (the group Chromium leads).
fn kill_group(pgid: u32) {
    if pgid == 0 {
        return;
    }
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            let _ = child.kill();
            let _ = child.wait();
            kill_group(pid);
        }
        // Removes the profile directory once the browser is gone.
        drop(self.profile.take());
    }
}

// ---------------------------------------------------------------------------------------------
// A minimal CDP client

struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        let (ws, _) = tokio::time::timeout(CDP_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("CDP connect timed out")
            .unwrap_or_else(|e| panic!("CDP connect to {url}: {e}"));
        Cdp { ws, next_id: 1 }
    }

    /// Send one command and wait for its answer (events in between are ignored). `Err` carries
    /// the CDP error object.
    async fn send(
        &mut self,
        method: &str,
        params: Value,
        session: Option<&str>,
    ) -> Result<Value, Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .unwrap_or_else(|e| panic!("CDP send {method}: {e}"));
        loop {
            let text = match self.ws.next().await {
                Some(Ok(Message::Text(t))) => t.to_string(),
                Some(Ok(Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
                Some(Ok(Message::Close(_))) | None => {
                    panic!("CDP connection closed waiting for {method}")
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("CDP read waiting for {method}: {e}"),
            };
            let v: Value = serde_json::from_str(&text).expect("CDP message is JSON");
            if v.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(err) = v.get("error") {
                return Err(err.clone());
            }
            return Ok(v.get("result").cloned().unwrap_or(Value::Null));
        }
    }

    async fn call(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
        match tokio::time::timeout(CDP_TIMEOUT, self.send(method, params, session)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => panic!("CDP {method} failed: {e}"),
            Err(_) => panic!("CDP {method}: no answer within {CDP_TIMEOUT:?}"),
        }
    }

    /// Open `url` in a new tab and attach to it; returns the session id.
    async fn open(&mut self, url: &str) -> String {
        let created = self
            .call("Target.createTarget", json!({ "url": url }), None)
            .await;
        let target = created["targetId"].as_str().expect("targetId").to_string();
        let attached = self
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
                None,
            )
            .await;
        attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string()
    }

    /// Evaluate `expression` in the page; `None` while it throws or is not a string (page not
    /// loaded yet).
    async fn eval_string(&mut self, session: &str, expression: &str) -> Option<String> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
                Some(session),
            )
            .await;
        if r.get("exceptionDetails").is_some() {
            return None;
        }
        r["result"]["value"].as_str().map(str::to_string)
    }
}

const LOG_EXPR: &str = "document.getElementById('log').textContent";
const STATUS_EXPR: &str = "document.getElementById('status').textContent";

/// Poll the page every 100 ms until `done(log, status)`, at most [`PAGE_TIMEOUT`]; returns the
/// last (log, status), and whether `done` held.
async fn poll_page(
    cdp: &mut Cdp,
    session: &str,
    done: impl Fn(&str, &str) -> bool,
) -> (String, String, bool) {
    let deadline = Instant::now() + PAGE_TIMEOUT;
    loop {
        let log = cdp.eval_string(session, LOG_EXPR).await.unwrap_or_default();
        let status = cdp
            .eval_string(session, STATUS_EXPR)
            .await
            .unwrap_or_default();
        if done(&log, &status) {
            return (log, status, true);
        }
        if Instant::now() >= deadline {
            return (log, status, false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn target_dir() -> PathBuf {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_wsgate"));
    exe.parent()
        .and_then(std::path::Path::parent)
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| support::repo_root().join("target"))
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_receives_world_through_the_gateway() {
    let gw = start_demo_gateway().await;
    let browser = Chromium::launch().await;
    let mut cdp = Cdp::connect(&browser.ws_url).await;

    let page_url = format!("http://127.0.0.1:{}/", gw.addr().port());
    let session = cdp.open(&page_url).await;
    let (log, status, ok) = poll_page(&mut cdp, &session, |log, _| {
        log.contains("client: received world")
    })
    .await;
    assert!(
        ok,
        "the demo page at {page_url} never showed \"client: received world\"\n\
         #log: {log:?}\n#status: {status:?}\ngateway log:\n{}\nchromium stderr (tail):\n{}",
        gw.logs(),
        browser.stderr_tail()
    );
    println!("#status: {status:?}\n#log:\n{log}");
    assert!(
        log.contains("client: ws connection is open"),
        "#log: {log:?}"
    );
    assert_eq!(status, "connected", "#status after the greeting");

    // The page's message reached the greeter as one line.
    let logs = gw
        .wait_for_log(
            "server: received: from client: hello",
            Duration::from_secs(10),
        )
        .await;
    assert!(logs.contains("server: receive connection."), "{logs}");
    assert!(!logs.contains("handshake refused"), "{logs}");

    // A picture of the page, for people (not part of the verdict).
    match cdp
        .send(
            "Page.captureScreenshot",
            json!({ "format": "png" }),
            Some(&session),
        )
        .await
    {
        Ok(shot) => {
            let png = base64::engine::general_purpose::STANDARD
                .decode(shot["data"].as_str().unwrap_or_default())
                .unwrap_or_default();
            let path = target_dir().join("browser-demo.png");
            if std::fs::write(&path, png).is_ok() {
                println!("screenshot: {}", path.display());
            }
        }
        Err(e) => println!("screenshot failed: {e}"),
    }

    browser.close(&mut cdp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_from_another_origin_is_refused() {
    let gw = start_demo_gateway().await;
    let browser = Chromium::launch().await;
    let mut cdp = Cdp::connect(&browser.ws_url).await;

    let before = gw.logs();
    let received_before = before.matches("server: received").count();
    let connections_before = before.matches("server: receive connection.").count();

    // Same gateway, same page, but the page's origin is http://localhost:PORT, not allowed.
    let page_url = format!("http://localhost:{}/", gw.addr().port());
    let session = cdp.open(&page_url).await;
    let (log, status, ok) =
        poll_page(&mut cdp, &session, |_, status| status.starts_with("closed")).await;
    assert!(
        ok,
        "the page at {page_url} never reported a closed socket\n#log: {log:?}\n#status: {status:?}\n\
         gateway log:\n{}\nchromium stderr (tail):\n{}",
        gw.logs(),
        browser.stderr_tail()
    );
    println!("#status: {status:?}\n#log: {log:?}");
    assert_eq!(status, "closed (code 1006)", "#status of the refused page");
    assert!(!log.contains("client: received"), "#log: {log:?}");
    assert!(!log.contains("connection is open"), "#log: {log:?}");

    let logs = gw
        .wait_for_log("handshake refused", Duration::from_secs(10))
        .await;
    let refused: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("handshake refused"))
        .collect();
    assert!(
        refused
            .iter()
            .any(|l| l.contains("status=403") && l.contains("path=/demo")),
        "no 403 refusal of /demo in:\n{}",
        refused.join("\n")
    );

    // Give a wrongly accepted session time to show up, then check the greeter saw nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = gw.logs();
    assert_eq!(
        after.matches("server: received").count(),
        received_before,
        "the greeter received something from the refused page:\n{after}"
    );
    assert_eq!(
        after.matches("server: receive connection.").count(),
        connections_before,
        "the gateway connected the greeter for a refused page:\n{after}"
    );

    browser.close(&mut cdp).await;
}
