//! The browser client `/wsgate.js` in a real headless Chromium: the demo page (demo/index.html +
//! demo/demo.js, which use `WsgateSocket`) over a WebSocket, over the fallback transport when the
//! page has no `WebSocket` at all, and through a real nginx that does not pass `Upgrade` (the
//! client's WebSocket attempt fails and it falls back by itself); a line typed into the page's
//! input box reaching the greeter; text and binary messages (a 100 KiB one, non-ASCII text)
//! making the round trip through the fallback to a TCP echo backend; a fallback page closed with
//! 1001 when the gateway shuts down, and failing with 1006 after bounded retries when it is gone.
//!
//! Chromium is `$CHROMIUM`, else `/usr/bin/chromium`; nginx is `/usr/sbin/nginx` (Debian package
//! `nginx`). Both are installed by `./scripts/test.sh`; the tests fail, never skip, without them.

use crate::support;
use crate::support::chromium;
use chromium::{Cdp, Chromium};

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The page reaching its expected state.
const PAGE_TIMEOUT: Duration = Duration::from_secs(20);

/// A line typed into the demo page (non-ASCII on purpose).
const TYPED_LINE: &str = "typed in the page: héllo wörld ✓";
/// Another one, sent with the Send button instead of Enter.
const CLICKED_LINE: &str = "sent with the button";

// ---------------------------------------------------------------------------------------------
// The gateway

/// A gateway serving the shipped demo page on `127.0.0.1:<port>` with `/demo` routed to a
/// greeter (line framing). `fallback` adds `fallback = true` to the route; `origins` are allowed
/// besides the gateway's own.
async fn start_demo_gateway(fallback: bool, origins: &[String]) -> support::Gateway {
    let gw_port = support::free_port();
    let greeter_port = support::free_port();
    let demo_dir = support::repo_root().join("demo");
    assert!(
        demo_dir.join("index.html").is_file() && demo_dir.join("demo.js").is_file(),
        "demo page missing in {}",
        demo_dir.display()
    );
    let mut allowed = vec![format!("http://127.0.0.1:{gw_port}")];
    allowed.extend(origins.iter().cloned());
    let (route_extra, limits_extra) = if fallback {
        ("fallback = true\n", "fallback_poll_timeout = \"2s\"\n")
    } else {
        ("", "")
    };
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
allowed_origins = {allowed:?}
{route_extra}
[limits]
max_message_size = "1MiB"
max_frame_size = "1MiB"
close_timeout = "5s"
{limits_extra}"#,
        dir = demo_dir.to_str().expect("repo path is UTF-8"),
    );
    let gw = support::Gateway::start(&config).await;
    assert_eq!(gw.addr().port(), gw_port);
    gw.wait_for_log("demo backend listening", Duration::from_secs(10))
        .await;
    gw
}

// ---------------------------------------------------------------------------------------------
// nginx

/// nginx as a plain HTTP/1.1 reverse proxy in front of `upstream`, which does not pass `Upgrade`
/// and `Connection` (so no WebSocket gets through), with its own config, pid file, logs and temp
/// directories in a temporary directory, on a loopback port. Dropping it (also on panic) ends it
/// by its PID (SIGTERM, then SIGKILL to its process group).
struct Nginx {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// nginx on `127.0.0.1:port` (chosen by the caller, who needs it first: it is the page's
    /// origin) in front of `upstream`. With `buffering`, it holds a stream back as some proxies
    /// do: it ignores `X-Accel-Buffering` and gzips the fallback's responses, and gzip keeps small
    /// writes (heartbeats, short messages) until its buffer fills or the response ends.
    async fn start_on(port: u16, upstream: std::net::SocketAddr, buffering: bool) -> Nginx {
        let exe = Path::new("/usr/sbin/nginx");
        assert!(
            exe.is_file(),
            "nginx not found at {}: run ./scripts/test.sh, which installs the Debian package nginx",
            exe.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("wsgate-nginx-")
            .tempdir()
            .expect("tempdir");
        // nginx started as root runs its workers as an unprivileged user: they must reach the
        // directory.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        let d = dir.path().display();
        let buffering = if buffering {
            concat!(
                "proxy_buffering on;\n",
                "            proxy_ignore_headers X-Accel-Buffering;\n",
                "            gzip on;\n",
                "            gzip_min_length 0;\n",
                "            gzip_types application/x-wsgate-stream;"
            )
        } else {
            ""
        };
        let conf = format!(
            r#"daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            {buffering}
        }}
    }}
}}
"#
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let mut cmd = Command::new(exe);
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("start nginx");
        let mut nginx = Nginx {
            child: Some(child),
            port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return nginx;
            }
            if let Some(status) = nginx
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("nginx exited early ({status}):\n{}", nginx.error_log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on 127.0.0.1:{port}:\n{}",
                nginx.error_log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        // SIGTERM: the master ends its workers and exits.
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                _ => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        // Whatever is left of its process group (workers of a master that did not exit).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

// ---------------------------------------------------------------------------------------------
// Chromium

/// What the demo page shows.
#[derive(Debug, Default, Clone)]
struct DemoPage {
    log: String,
    status: String,
    transport: String,
    /// `typeof window.WebSocket` in the page.
    websocket: String,
}

const DEMO_EXPR: &str = "(() => { if (location.protocol !== 'http:') return undefined; \
     const t = id => { const e = document.getElementById(id); return e ? e.textContent : ''; }; \
     return JSON.stringify({ log: t('log'), status: t('status'), transport: t('transport'), \
     websocket: typeof window.WebSocket }); })()";

async fn read_demo(cdp: &mut Cdp, session: &str) -> Option<DemoPage> {
    let text = cdp.eval_string(session, DEMO_EXPR).await?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    Some(DemoPage {
        log: s("log"),
        status: s("status"),
        transport: s("transport"),
        websocket: s("websocket"),
    })
}

/// Poll the demo page every 100 ms until `done`, at most [`PAGE_TIMEOUT`]; the last state and
/// whether `done` held.
async fn poll_demo(
    cdp: &mut Cdp,
    session: &str,
    done: impl Fn(&DemoPage) -> bool,
) -> (DemoPage, bool) {
    let deadline = Instant::now() + PAGE_TIMEOUT;
    let mut last = DemoPage::default();
    loop {
        if let Some(page) = read_demo(cdp, session).await {
            if done(&page) {
                return (page, true);
            }
            last = page;
        }
        if Instant::now() >= deadline {
            return (last, false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A new tab that runs `script` before any script of every page it loads, navigated to `url`.
async fn open_with_script(cdp: &mut Cdp, url: &str, script: &str) -> String {
    let session = cdp.new_tab().await;
    cdp.call("Page.enable", json!({}), Some(&session)).await;
    cdp.call(
        "Page.addScriptToEvaluateOnNewDocument",
        json!({ "source": script }),
        Some(&session),
    )
    .await;
    cdp.call("Page.navigate", json!({ "url": url }), Some(&session))
        .await;
    session
}

/// Removes WebSocket from the page, as in a browser without it.
const NO_WEBSOCKET: &str = "delete window.WebSocket;";

/// The page's exchange with the greeter: `world` received, the page's own `from client: hello`
/// logged by the greeter, the page connected.
async fn demo_exchange(
    cdp: &mut Cdp,
    session: &str,
    gw: &support::Gateway,
    browser: &Chromium,
    what: &str,
) -> DemoPage {
    let (page, ok) = poll_demo(cdp, session, |p| {
        p.log.contains("client: received world") && p.status == "connected"
    })
    .await;
    assert!(
        ok,
        "{what}: the demo page never showed \"client: received world\" while connected\n\
         page: {page:?}\ngateway log:\n{}\nchromium stderr (tail):\n{}",
        gw.logs(),
        browser.stderr_tail()
    );
    assert!(
        page.log.contains("client: ws connection is open"),
        "{what}: {page:?}"
    );
    assert!(
        page.log.contains("client: sent from client: hello"),
        "{what}: {page:?}"
    );
    gw.wait_for_log(
        "server: received: from client: hello",
        Duration::from_secs(10),
    )
    .await;
    page
}

/// Close the page's socket (code 1000) and return the gateway's access line of the session.
async fn close_and_access_line(
    cdp: &mut Cdp,
    session: &str,
    gw: &support::Gateway,
) -> (DemoPage, String) {
    let r = cdp
        .eval_string(
            session,
            "(() => { window.demoSocket.close(1000, 'bye'); return 'closing'; })()",
        )
        .await;
    assert_eq!(r.as_deref(), Some("closing"), "{}", gw.logs());
    let (page, ok) = poll_demo(cdp, session, |p| p.status.starts_with("closed")).await;
    assert!(ok, "the page never reported its socket closed: {page:?}");
    let logs = gw
        .wait_for_log("session closed", Duration::from_secs(10))
        .await;
    let line = logs
        .lines()
        .find(|l| l.contains("session closed") && l.contains("route=/demo"))
        .unwrap_or_else(|| panic!("no access line for /demo:\n{logs}"))
        .to_string();
    (page, line)
}

/// `transport=NAME` in a text log line (quoted or not).
fn names_transport(line: &str, name: &str) -> bool {
    line.contains(&format!("transport={name}")) || line.contains(&format!("transport=\"{name}\""))
}

// ---------------------------------------------------------------------------------------------
// Tests

/// (a) A page without `WebSocket`: the demo's exchange goes through the fallback (streaming).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_without_websocket_uses_the_fallback() {
    let gw = start_demo_gateway(true, &[]).await;
    let browser = Chromium::launch().await;
    let mut cdp = Cdp::connect(&browser.ws_url).await;
    let url = format!("http://127.0.0.1:{}/", gw.addr().port());
    let session = open_with_script(&mut cdp, &url, NO_WEBSOCKET).await;

    let page = demo_exchange(&mut cdp, &session, &gw, &browser, "no WebSocket").await;
    println!("page: {page:?}");
    assert_eq!(page.websocket, "undefined", "WebSocket was not removed");
    assert_eq!(page.transport, "streaming", "{page:?}");
    // The session's id and acknowledgement count (the client's own state, for the check below).
    let id = cdp
        .eval_string(&session, "demoSocket._session")
        .await
        .expect("session id");

    let (page, line) = close_and_access_line(&mut cdp, &session, &gw).await;
    println!("access line: {line}");
    assert!(page.status.starts_with("closed (code 1000"), "{page:?}");
    assert!(names_transport(&line, "streaming"), "{line}");
    assert!(!gw.logs().contains("handshake refused"), "{}", gw.logs());

    // The client acknowledged the gateway's close record, so the gateway forgot the session at
    // once: asking again for the close record (`world` acknowledged, the close record not) is a
    // 404, not the record kept for `fallback_session_timeout`.
    let origin = format!("http://127.0.0.1:{}", gw.addr().port());
    let headers = [
        ("Origin", origin),
        ("Wsgate-Fallback", "poll".to_string()),
        ("Wsgate-Session", id),
        ("Wsgate-Ack", "1".to_string()),
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, body) =
            support::fallback::full(gw.addr(), "GET", "/demo", &headers, Vec::new())
                .await
                .expect("poll");
        if status == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the session is still there: {status} {body:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser.close(&mut cdp).await;
}

/// (b) Through nginx as a plain HTTP/1.1 proxy (no Upgrade passed): the WebSocket attempt fails
/// and the client falls back by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_through_a_proxy_without_upgrade_falls_back() {
    // The page's origin is nginx's, which the gateway allows: nginx's port is chosen first.
    let nginx_port = support::free_port();
    let gw = start_demo_gateway(true, &[format!("http://127.0.0.1:{nginx_port}")]).await;
    let nginx = Nginx::start_on(nginx_port, gw.addr(), false).await;
    let browser = Chromium::launch().await;
    let mut cdp = Cdp::connect(&browser.ws_url).await;
    let url = format!("http://127.0.0.1:{}/", nginx.port);
    let session = open_with_script(&mut cdp, &url, "").await;

    let page = demo_exchange(&mut cdp, &session, &gw, &browser, "through nginx").await;
    println!("page: {page:?}");
    assert_eq!(page.websocket, "function", "{page:?}");
    assert_ne!(page.transport, "websocket", "{page:?}");
    assert!(
        page.transport == "streaming" || page.transport == "polling",
        "{page:?}"
    );

    let (page, line) = close_and_access_line(&mut cdp, &session, &gw).await;
    println!("access line: {line}");
    assert!(page.status.starts_with("closed (code 1000"), "{page:?}");
    assert!(names_transport(&line, &page.transport), "{line}");
    assert!(!names_transport(&line, "websocket"), "{line}");
    // The requests went through nginx: its access log has the fallback's POSTs.
    let access = nginx.access_log();
    assert!(access.contains("POST /demo"), "nginx access log:\n{access}");
    browser.close(&mut cdp).await;
}

/// (b') Through a proxy that holds the stream back (gzip, `X-Accel-Buffering` ignored): no
/// heartbeat arrives within `streamTimeout`, and the client moves to polling by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_through_a_buffering_proxy_falls_back_to_polling() {
    let nginx_port = support::free_port();
    let gw = start_demo_gateway(true, &[format!("http://127.0.0.1:{nginx_port}")]).await;
    let nginx = Nginx::start_on(nginx_port, gw.addr(), true).await;
    let browser = Chromium::launch().await;
    let mut cdp = Cdp::connect(&browser.ws_url).await;
    let url = format!("http://127.0.0.1:{}/", nginx.port);
    let session = open_with_script(&mut cdp, &url, "").await;

    let page = demo_exchange(
        &mut cdp,
        &session,
        &gw,
        &browser,
        "through a buffering nginx",
    )
    .await;
    println!("page: {page:?}");
    assert_eq!(
        page.transport,
        "polling",
        "{page:?}\nnginx error log:\n{}",
        nginx.error_log()
    );

    let (page, line) = close_and_access_line(&mut cdp, &session, &gw).await;
    println!("access line: {line}");
    assert!(page.status.starts_with("closed (code 1000"), "{page:?}");
    assert!(names_transport(&line, "polling"), "{line}");
    let access = nginx.access_log();
    assert!(access.contains("GET /demo"), "nginx access log:\n{access}");
    browser.close(&mut cdp).await;
}

/// (c) A line typed into the page's box (Enter) and one sent with the button reach the greeter;
/// the page shows them, and what it received, labelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_sends_what_is_typed() {
    let gw = start_demo_gateway(false, &[]).await;
    let browser = Chromium::launch().await;
    let mut cdp = Cdp::connect(&browser.ws_url).await;
    let url = format!("http://127.0.0.1:{}/", gw.addr().port());
    let session = cdp.open(&url).await;
    demo_exchange(&mut cdp, &session, &gw, &browser, "typing").await;

    // Typed as a user would: focus, text, Enter.
    cdp.eval_string(
        &session,
        "(() => { document.getElementById('input').focus(); return 'ok'; })()",
    )
    .await;
    cdp.call(
        "Input.insertText",
        json!({ "text": TYPED_LINE }),
        Some(&session),
    )
    .await;
    for kind in ["keyDown", "keyUp"] {
        cdp.call(
            "Input.dispatchKeyEvent",
            json!({ "type": kind, "key": "Enter", "code": "Enter",
                    "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13, "text": "\r" }),
            Some(&session),
        )
        .await;
    }
    gw.wait_for_log(
        &format!("server: received: {TYPED_LINE}"),
        Duration::from_secs(10),
    )
    .await;

    // The button.
    let set = format!(
        "(() => {{ document.getElementById('input').value = {CLICKED_LINE:?}; \
         document.getElementById('send').click(); return 'ok'; }})()"
    );
    assert_eq!(cdp.eval_string(&session, &set).await.as_deref(), Some("ok"));
    gw.wait_for_log(
        &format!("server: received: {CLICKED_LINE}"),
        Duration::from_secs(10),
    )
    .await;

    let (page, ok) = poll_demo(&mut cdp, &session, |p| {
        p.log.contains(&format!("client: sent {CLICKED_LINE}"))
    })
    .await;
    assert!(ok, "{page:?}");
    println!("#log:\n{}", page.log);
    let lines: Vec<&str> = page.log.lines().collect();
    for want in [
        "client: received world".to_string(),
        "client: sent from client: hello".to_string(),
        format!("client: sent {TYPED_LINE}"),
        format!("client: sent {CLICKED_LINE}"),
    ] {
        assert!(lines.contains(&want.as_str()), "{want:?} not in {lines:?}");
    }
    // The box is emptied after each send.
    assert_eq!(
        cdp.eval_string(&session, "document.getElementById('input').value")
            .await
            .as_deref(),
        Some("")
    );
    browser.close(&mut cdp).await;
}

/// (d) With WebSocket available and nothing in the way, the client uses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_uses_websocket_when_it_can() {
    let gw = start_demo_gateway(false, &[]).await;
    let browser = Chromium::launch().await;
    let mut cdp = Cdp::connect(&browser.ws_url).await;
    let url = format!("http://127.0.0.1:{}/", gw.addr().port());
    let session = cdp.open(&url).await;
    let page = demo_exchange(&mut cdp, &session, &gw, &browser, "WebSocket").await;
    assert_eq!(page.websocket, "function", "{page:?}");
    assert_eq!(page.transport, "websocket", "{page:?}");
    let (page, line) = close_and_access_line(&mut cdp, &session, &gw).await;
    println!("access line: {line}");
    assert!(page.status.starts_with("closed (code 1000"), "{page:?}");
    assert!(!names_transport(&line, "streaming"), "{line}");
    assert!(!names_transport(&line, "polling"), "{line}");
    browser.close(&mut cdp).await;
}

/// A fallback session, then the gateway ends: by SIGTERM (it closes sessions with 1001, which
/// reaches the page as a clean close) or SIGKILL (nothing answers any more: the client retries a
/// bounded number of times, then fires `error` and `close` 1006).
async fn gateway_ends_under_a_fallback_page(signal: &str) -> (DemoPage, String) {
    let mut gw = start_demo_gateway(true, &[]).await;
    let browser = Chromium::launch().await;
    let mut cdp = Cdp::connect(&browser.ws_url).await;
    let url = format!("http://127.0.0.1:{}/", gw.addr().port());
    let session = open_with_script(&mut cdp, &url, NO_WEBSOCKET).await;
    let page = demo_exchange(&mut cdp, &session, &gw, &browser, signal).await;
    assert_eq!(page.transport, "streaming", "{page:?}");
    // Record the page's events from now on.
    cdp.eval_string(
        &session,
        "(() => { window.__events = []; \
         for (const t of ['error', 'close']) demoSocket.addEventListener(t, (e) => \
           window.__events.push(t + (t === 'close' ? ':' + e.code + ':' + e.wasClean : ''))); \
         return 'ok'; })()",
    )
    .await;
    gw.signal(signal);
    gw.wait_exit(Duration::from_secs(20)).await;
    let (page, ok) = poll_demo(&mut cdp, &session, |p| p.status.starts_with("closed")).await;
    assert!(
        ok,
        "{signal}: the page never reported its socket closed: {page:?}"
    );
    let events = cdp
        .eval_string(&session, "window.__events.join(' ')")
        .await
        .unwrap_or_default();
    browser.close(&mut cdp).await;
    (page, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_page_is_closed_with_1001_when_the_gateway_shuts_down() {
    let (page, events) = gateway_ends_under_a_fallback_page("TERM").await;
    assert!(page.status.starts_with("closed (code 1001"), "{page:?}");
    assert_eq!(events, "close:1001:true", "{page:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_page_fails_with_1006_when_the_gateway_is_gone() {
    let (page, events) = gateway_ends_under_a_fallback_page("KILL").await;
    assert_eq!(page.status, "closed (code 1006)", "{page:?}");
    assert_eq!(events, "error close:1006:false", "{page:?}");
    // It moved to polling when the stream broke, and retried that until it gave up.
    assert_eq!(page.transport, "polling", "{page:?}");
}

/// The in-page round trips of (e) (`RUNS` and `TEXT` are defined at its top by
/// [`round_trips`]): for each case of `RUNS` (`[path, transports, kind]`), a
/// `WsgateSocket` restricted to the given transports sends a 100 KiB ArrayBuffer, a non-ASCII text, and a small Blob,
/// with `binaryType = "arraybuffer"`, and checks what comes back. `raw` routes give bytes back
/// in TCP's pieces (compared as one byte string); `lp` (length-prefixed) routes give each
/// message back whole, with its type.
const ROUND_TRIP_JS: &str = r#"(() => {
  if (location.protocol !== 'http:' || document.readyState !== 'complete' ||
      typeof WsgateSocket !== 'function') return undefined;
  window.__e = 'pending';
  const BIN = new Uint8Array(100 * 1024);
  for (let i = 0; i < BIN.length; i++) BIN[i] = (i * 7 + 3) % 251;
  const TEXT_BYTES = new TextEncoder().encode(TEXT);
  const BLOB = new Uint8Array([0, 255, 128]);
  const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
  const run = (path, transports, kind) => new Promise((resolve) => {
    const r = { path, transports, transportEvents: [] };
    const ws = new WsgateSocket('ws://' + location.host + path, [], { transports });
    ws.binaryType = 'arraybuffer';
    ws.addEventListener('transport', () => r.transportEvents.push(ws.transport));
    try { ws.send('too early'); r.sendBeforeOpen = 'no exception'; }
    catch (e) { r.sendBeforeOpen = e.name; }
    const got = [];
    let bytes = 0;
    const expected = BIN.length + TEXT_BYTES.length + BLOB.length;
    const timer = setTimeout(() => { r.timeout = true; finish(); }, 15000);
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      r.transport = ws.transport;
      r.received = got.map((m) => typeof m === 'string' ? 'text:' + m.length : 'binary:' + m.byteLength);
      if (kind === 'raw') {
        const all = new Uint8Array(bytes);
        let at = 0;
        for (const m of got) { all.set(new Uint8Array(m), at); at += m.byteLength; }
        r.ok = got.every((m) => m instanceof ArrayBuffer) &&
          same(all, [...BIN, ...TEXT_BYTES, ...BLOB]);
      } else {
        r.ok = got.length === 3 && got[0] instanceof ArrayBuffer && same(new Uint8Array(got[0]), BIN) &&
          got[1] === TEXT && got[2] instanceof ArrayBuffer && same(new Uint8Array(got[2]), BLOB);
      }
      // Everything was acknowledged once its echo is back (wait a little for the last answer).
      const t0 = Date.now();
      const closeWhenDrained = () => {
        if (ws.bufferedAmount > 0 && Date.now() - t0 < 5000) { setTimeout(closeWhenDrained, 20); return; }
        r.bufferedAfter = ws.bufferedAmount;
        ws.onclose = (e) => {
          r.closeCode = e.code; r.wasClean = e.wasClean; r.readyState = ws.readyState;
          resolve(r);
        };
        ws.close(1000, 'done');
        setTimeout(() => { r.closeTimeout = true; resolve(r); }, 10000);
      };
      closeWhenDrained();
    };
    ws.onopen = () => {
      r.openTransport = ws.transport;
      ws.send(BIN.buffer);
      ws.send(TEXT);
      ws.send(new Blob([BLOB]));
      r.bufferedAtSend = ws.bufferedAmount;
    };
    ws.onmessage = (e) => {
      got.push(e.data);
      bytes += typeof e.data === 'string' ? 0 : e.data.byteLength;
      if (kind === 'raw' ? bytes >= expected : got.length >= 3) finish();
    };
    ws.onclose = (e) => { r.closedEarly = e.code; finish(); };
  });
  (async () => {
    try {
      const out = [];
      for (const [path, transports, kind] of RUNS) out.push(await run(path, transports, kind));
      window.__e = JSON.stringify(out);
    } catch (err) {
      window.__e = 'error: ' + err;
    }
  })();
  return 'started';
})()"#;

/// The non-ASCII text of [`ROUND_TRIP_JS`].
const ROUND_TRIP_TEXT: &str = "\u{FEFF}héllo wörld ✓ 日本語 🚀 \u{0000} end";

/// Run [`ROUND_TRIP_JS`] with `runs` (path, transports, kind) in Chromium against a gateway with
/// a raw route `/raw` and a length-prefixed route `/lp` to one TCP echo backend, both with
/// `fallback = true`; the result of each run, and the gateway's log once every session's access
/// line is written.
async fn round_trips(runs: &[(&str, &[&str], &str)]) -> (Vec<Value>, String) {
    let echo = support::backends::echo().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("www")).unwrap();
    std::fs::write(
        dir.path().join("www/index.html"),
        "<!doctype html><meta charset=\"utf-8\"><title>round trip</title>\
         <script src=\"/wsgate.js\"></script><p>round trip</p>\n",
    )
    .unwrap();
    let backend = echo.config_addr();
    let gw = support::Gateway::start_in(
        dir,
        &format!(
            r#"[[listener]]
bind = "127.0.0.1:0"

[static]
dir = "www"

[[route]]
path = "/raw"
backend = "{backend}"
fallback = true

[[route]]
path = "/lp"
backend = "{backend}"
framing = "length-prefixed"
fallback = true

# A stream ends once it carried half of fallback_buffer (64 KiB here): the 100 KiB message
# ends one, and the client opens the next.
[limits]
max_message_size = "128KiB"
max_frame_size = "128KiB"
fallback_buffer = "128KiB"
fallback_poll_timeout = "2s"
"#
        ),
    )
    .await;
    let port = gw.addr().port();
    let browser = Chromium::launch().await;
    let mut cdp = Cdp::connect(&browser.ws_url).await;
    let session = open_with_script(&mut cdp, &format!("http://127.0.0.1:{port}/"), "").await;

    let js = ROUND_TRIP_JS.replace(
        "(() => {",
        &format!(
            "(() => {{\n  const RUNS = {};\n  const TEXT = {};",
            json!(runs),
            json!(ROUND_TRIP_TEXT)
        ),
    );
    let deadline = Instant::now() + PAGE_TIMEOUT;
    while cdp.eval_string(&session, &js).await.as_deref() != Some("started") {
        assert!(
            Instant::now() < deadline,
            "the page never started (is /wsgate.js served?)\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30 * runs.len() as u64);
    let result = loop {
        let state = cdp
            .eval_string(&session, "window.__e")
            .await
            .unwrap_or_default();
        if state != "pending" {
            break state;
        }
        assert!(
            Instant::now() < deadline,
            "the round trips did not finish\ngateway log:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("{result}");
    let results: Vec<Value> = serde_json::from_str(&result).unwrap_or_else(|e| {
        panic!(
            "{e}: {result}\ngateway log:\n{}\nchromium stderr (tail):\n{}",
            gw.logs(),
            browser.stderr_tail()
        )
    });
    assert_eq!(results.len(), runs.len(), "{result}");
    let logs = gw
        .wait_for_count("session closed", runs.len(), Duration::from_secs(10))
        .await;
    browser.close(&mut cdp).await;
    (results, logs)
}

/// Checks common to every run of [`ROUND_TRIP_JS`]: the bytes came back exactly, the socket
/// used `transport`, refused an early send, and closed cleanly with 1000.
fn check_run(run: &Value, transport: &str, logs: &str) {
    let what = format!("{run}\ngateway log:\n{logs}");
    assert_eq!(run["ok"], json!(true), "{what}");
    assert_eq!(run["openTransport"], json!(transport), "{what}");
    assert_eq!(run["transport"], json!(transport), "{what}");
    assert_eq!(run["sendBeforeOpen"], json!("InvalidStateError"), "{what}");
    assert_eq!(run["bufferedAfter"], json!(0), "{what}");
    assert_eq!(run["closeCode"], json!(1000), "{what}");
    assert_eq!(run["wasClean"], json!(true), "{what}");
    assert_eq!(run["readyState"], json!(3), "{what}");
    if run["path"] == json!("/lp") {
        // The length-prefixed route gave each message back whole, with its type.
        assert_eq!(
            run["received"],
            json!([
                "binary:102400",
                format!("text:{}", ROUND_TRIP_TEXT.encode_utf16().count()),
                "binary:3"
            ]),
            "{what}"
        );
    }
}

/// Access lines naming `transport`.
fn count_transport(logs: &str, transport: &str) -> usize {
    logs.lines()
        .filter(|l| l.contains("session closed") && names_transport(l, transport))
        .count()
}

/// (e) Text and binary messages make the round trip through the fallback (streaming and
/// polling) to a TCP echo backend, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_round_trips_text_and_binary() {
    let both: &[&str] = &["streaming", "polling"];
    let (runs, logs) = round_trips(&[
        ("/raw", both, "raw"),
        ("/lp", both, "lp"),
        ("/lp", &["polling"], "lp"),
        ("/raw", &["polling"], "raw"),
    ])
    .await;
    let sent = (100 * 1024 + ROUND_TRIP_TEXT.len() + 3) as u64;
    for (run, transport) in runs
        .iter()
        .zip(["streaming", "streaming", "polling", "polling"])
    {
        check_run(run, transport, &logs);
        // Queued while the first request was on its way: all of it counted.
        assert_eq!(run["bufferedAtSend"], json!(sent), "{run}");
        assert_eq!(run["transportEvents"], json!([]), "{run}");
    }
    assert_eq!(count_transport(&logs, "streaming"), 2, "{logs}");
    assert_eq!(count_transport(&logs, "polling"), 2, "{logs}");
}

/// The same round trips over the WebSocket transport (the client hands the messages to the
/// browser's WebSocket and passes its events on, `binaryType` included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_transport_round_trips_text_and_binary() {
    let ws: &[&str] = &["websocket"];
    let (runs, logs) = round_trips(&[("/raw", ws, "raw"), ("/lp", ws, "lp")]).await;
    for run in &runs {
        check_run(run, "websocket", &logs);
    }
    assert_eq!(count_transport(&logs, "streaming"), 0, "{logs}");
    assert_eq!(count_transport(&logs, "polling"), 0, "{logs}");
}
