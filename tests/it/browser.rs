//! A real headless Chromium loads the demo page (demo/index.html + demo/demo.js) from the
//! gateway's static directory; the page opens a WebSocket to `/demo`, which the gateway pipes to
//! the built-in greeter with line framing. Chromium is driven over the Chrome DevTools Protocol
//! (CDP) with tokio-tungstenite. A page offering the `binary` subprotocol opens a raw route
//! without `subprotocols`, as noVNC does.
//!
//! Chromium is `$CHROMIUM`, else `/usr/bin/chromium` (Debian package `chromium`, installed by
//! `./scripts/test.sh`). The tests fail, never skip, when it is missing.

use crate::support;
use crate::support::chromium;
use chromium::{Cdp, Chromium};

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;

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

/// Chromium offering the `binary` subprotocol (as noVNC does) on a raw route without
/// `subprotocols`: the gateway answers `binary`, so the browser opens the socket and the bytes
/// make the round trip (a browser fails a connection whose offer goes unanswered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_offering_binary_opens_a_raw_route_without_subprotocols() {
    let echo = support::backends::echo().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("www")).unwrap();
    std::fs::write(
        dir.path().join("www/index.html"),
        "<!doctype html><title>binary</title><p>binary subprotocol</p>\n",
    )
    .unwrap();
    let gw = support::Gateway::start_in(
        dir,
        &format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[static]\ndir = \"www\"\n\n\
             [[route]]\npath = \"/raw\"\nbackend = \"{}\"\n",
            echo.config_addr()
        ),
    )
    .await;
    let port = gw.addr().port();
    let browser = Chromium::launch().await;
    let mut cdp = Cdp::connect(&browser.ws_url).await;
    let session = cdp.open(&format!("http://127.0.0.1:{port}/")).await;
    // Started once the gateway's page has loaded (not the blank page before it; undefined until
    // then, and the evaluation is repeated).
    let start = format!(
        "(() => {{ if (location.protocol !== 'http:' || document.readyState !== 'complete') return undefined; \
         window.__ws = 'pending'; \
         const ws = new WebSocket('ws://127.0.0.1:{port}/raw', ['binary']); \
         ws.binaryType = 'arraybuffer'; \
         ws.onopen = () => {{ window.__ws = 'open:' + ws.protocol; ws.send(new Uint8Array([104, 105])); }}; \
         ws.onmessage = m => {{ window.__ws = 'echo:' + ws.protocol + ':' + new TextDecoder().decode(m.data); }}; \
         ws.onclose = e => {{ if (!window.__ws.startsWith('echo:')) window.__ws = 'closed:' + e.code; }}; \
         return 'started'; }})()"
    );
    let deadline = Instant::now() + PAGE_TIMEOUT;
    while cdp.eval_string(&session, &start).await.as_deref() != Some("started") {
        if Instant::now() >= deadline {
            let r = cdp
                .call(
                    "Runtime.evaluate",
                    json!({ "expression": start, "returnByValue": true }),
                    Some(&session),
                )
                .await;
            panic!("the page never started the socket: {r}\n{}", gw.logs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let state = loop {
        let state = cdp
            .eval_string(&session, "window.__ws")
            .await
            .unwrap_or_default();
        if state.starts_with("echo:") || state.starts_with("closed:") {
            break state;
        }
        assert!(
            Instant::now() < deadline,
            "no answer in the page ({state:?})\ngateway log:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        state,
        "echo:binary:hi",
        "gateway log:\n{}\nchromium stderr (tail):\n{}",
        gw.logs(),
        browser.stderr_tail()
    );
    browser.close(&mut cdp).await;
}
