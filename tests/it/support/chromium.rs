//! Headless Chromium for the browser tests: launch with its own profile and process group, kill
//! it by PID on drop (also on panic), and a minimal Chrome DevTools Protocol client.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long Chromium may take to print its DevTools address.
pub const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one DevTools command may take.
pub const CDP_TIMEOUT: Duration = Duration::from_secs(30);

/// A headless Chromium with its own profile directory. Dropping it (also on panic) kills the
/// browser by its PID, then whatever is left of its process group, and removes the profile.
pub struct Chromium {
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
    /// `ws://127.0.0.1:PORT/devtools/browser/...`
    pub ws_url: String,
    profile: Option<tempfile::TempDir>,
}

impl Chromium {
    pub async fn launch() -> Chromium {
        Chromium::launch_with(&[]).await
    }

    /// Like [`launch`](Self::launch), with more command-line switches.
    pub async fn launch_with(extra: &[&str]) -> Chromium {
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
        .args(extra)
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

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The last lines of Chromium's stderr, minus its D-Bus noise (no system bus here).
    pub fn stderr_tail(&self) -> String {
        let log = self.stderr();
        let lines: Vec<&str> = log.lines().filter(|l| !l.contains("dbus")).collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Ask the browser to close and wait a little for it; Drop kills whatever is left.
    pub async fn close(self, cdp: &mut Cdp) {
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

pub struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Events received while waiting for answers.
    pub events: Vec<Value>,
}

impl Cdp {
    pub async fn connect(url: &str) -> Cdp {
        let (ws, _) = tokio::time::timeout(CDP_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("CDP connect timed out")
            .unwrap_or_else(|e| panic!("CDP connect to {url}: {e}"));
        Cdp {
            ws,
            next_id: 1,
            events: Vec::new(),
        }
    }

    /// Send one command and wait for its answer; events in between are kept in `events`. `Err`
    /// carries the CDP error object.
    pub async fn send(
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
                if v.get("method").is_some() {
                    self.events.push(v);
                }
                continue;
            }
            if let Some(err) = v.get("error") {
                return Err(err.clone());
            }
            return Ok(v.get("result").cloned().unwrap_or(Value::Null));
        }
    }

    pub async fn call(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
        match tokio::time::timeout(CDP_TIMEOUT, self.send(method, params, session)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => panic!("CDP {method} failed: {e}"),
            Err(_) => panic!("CDP {method}: no answer within {CDP_TIMEOUT:?}"),
        }
    }

    /// Open `url` in a new tab and attach to it; returns the session id.
    pub async fn open(&mut self, url: &str) -> String {
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

    /// A new blank tab, attached, with network events on; returns its session id.
    pub async fn new_tab(&mut self) -> String {
        let created = self
            .call("Target.createTarget", json!({ "url": "about:blank" }), None)
            .await;
        let target = created["targetId"].as_str().expect("targetId").to_string();
        let attached = self
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
                None,
            )
            .await;
        let session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        self.call("Network.enable", json!({}), Some(&session)).await;
        session
    }

    /// Evaluate `expression` in the page; `None` while it throws or is not a string (page not
    /// loaded yet).
    pub async fn eval_string(&mut self, session: &str, expression: &str) -> Option<String> {
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
