//! The status page on the admin listener (`GET /`), in a real headless Chromium driven over the
//! Chrome DevTools Protocol: it lists the live sessions and closes one with its button (the
//! `confirm()` dialog accepted through CDP `Page.javascriptDialogOpening` /
//! `Page.handleJavaScriptDialog`), prints a hostile subject as text, and with an admin token
//! shows nothing until the token is typed into it. Plain HTTP checks cover the page's headers and
//! the `/status` endpoint it reads besides `/metrics` and `/sessions`.
//!
//! Chromium is `$CHROMIUM`, else `/usr/bin/chromium`; the tests fail, never skip, without it.

use crate::support;
use crate::support::chromium::{Cdp, Chromium};
use crate::support::{auth, ops};

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ops::{ADMIN_BIND, WAIT};
use serde_json::{json, Value};
use support::backends::{self, Backend};
use support::{Gateway, Opts};

/// The page reaching an expected state (its refresh interval is 2 s).
const PAGE_TIMEOUT: Duration = Duration::from_secs(20);

const JWT_SECRET: &[u8] = b"status-page-test-jwt-secret-0123";
const ADMIN_TOKEN: &str = "status-page-admin-token-5d1e";
const HOSTILE_SUBJECT: &str = "<script>window.__pwned=1</script>";

/// `/echo` (plain, `max_sessions = 5`) and `/jwt` (bearer JWT whose `sub` is the subject).
fn config(echo: &Backend, admin_extra: &str, max_connections: usize) -> String {
    let b = echo.config_addr();
    format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"

[admin]
bind = "{ADMIN_BIND}"
{admin_extra}

[[route]]
path = "/echo"
backend = "{b}"
max_sessions = 5

[[route]]
path = "/jwt"
backend = "{b}"
[route.auth]
type = "jwt"
token_from = "bearer"
algorithms = ["HS256"]
secret_file = "jwt.secret"

[limits]
max_connections = {max_connections}
max_connections_per_ip = 9
"#
    )
}

/// The gateway; with `token`, the admin listener requires it (`token_file`).
async fn start(echo: &Backend, token: bool) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwt.secret"), JWT_SECRET).unwrap();
    let extra = if token {
        std::fs::write(dir.path().join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
        "token_file = \"admin.token\""
    } else {
        ""
    };
    Gateway::start_with(
        &config(echo, extra, 77),
        Opts {
            dir: Some(dir),
            ..Opts::default()
        },
    )
    .await
}

/// The `/sessions` id of the session whose client is `client`.
async fn session_id(admin: SocketAddr, token: Option<&str>, client: SocketAddr) -> u64 {
    let r = ops::http(admin, "GET", "/sessions", token).await;
    assert_eq!(r.status, 200, "{r:?}");
    let list: Value = serde_json::from_str(&r.body).expect("/sessions is JSON");
    list.as_array()
        .expect("an array")
        .iter()
        .find(|s| s["client"] == client.to_string())
        .and_then(|s| s["id"].as_u64())
        .unwrap_or_else(|| panic!("no session for {client} in {}", r.body))
}

fn target_dir() -> PathBuf {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_wsgate"));
    exe.parent()
        .and_then(std::path::Path::parent)
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| support::repo_root().join("target"))
}

// ---------------------------------------------------------------------------------------------
// The page in Chromium

/// The ids in the page's sessions table, as a JSON array of strings.
const ROW_IDS: &str = "JSON.stringify([...document.querySelectorAll('#sessions tbody tr[data-id]')].map(r => r.dataset.id))";

/// A browser with the status page of `admin` open (dialog events on); returns the tab's session.
async fn open_page(admin: SocketAddr) -> (Chromium, Cdp, String) {
    let browser = Chromium::launch_with(&["--window-size=1280,900"]).await;
    let mut cdp = Cdp::connect(&browser.ws_url).await;
    let tab = cdp.open(&format!("http://{admin}/")).await;
    cdp.call("Page.enable", json!({}), Some(&tab)).await;
    (browser, cdp, tab)
}

/// Evaluate `expr` every 100 ms until `done` holds for its (string) value, at most
/// [`PAGE_TIMEOUT`]; returns the value. Panics with `what`, the last value, the page's state
/// line and Chromium's stderr.
async fn wait_page(
    cdp: &mut Cdp,
    tab: &str,
    expr: &str,
    what: &str,
    browser: &Chromium,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + PAGE_TIMEOUT;
    loop {
        let value = cdp.eval_string(tab, expr).await.unwrap_or_default();
        if done(&value) {
            return value;
        }
        if Instant::now() >= deadline {
            let state = cdp
                .eval_string(tab, "document.getElementById('state').textContent")
                .await;
            panic!(
                "the page never showed {what} within {PAGE_TIMEOUT:?}\nlast value: {value:?}\n\
                 #state: {state:?}\nchromium stderr (tail):\n{}",
                browser.stderr_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ids(json_list: &str) -> BTreeSet<String> {
    serde_json::from_str::<Vec<String>>(json_list)
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// A picture of the page, for people (not part of the verdict).
async fn screenshot(cdp: &mut Cdp, tab: &str, name: &str) {
    match cdp
        .send(
            "Page.captureScreenshot",
            json!({ "format": "png" }),
            Some(tab),
        )
        .await
    {
        Ok(shot) => {
            let png = base64::engine::general_purpose::STANDARD
                .decode(shot["data"].as_str().unwrap_or_default())
                .unwrap_or_default();
            let path = target_dir().join(name);
            if std::fs::write(&path, png).is_ok() {
                println!("screenshot: {}", path.display());
            }
        }
        Err(e) => println!("screenshot failed: {e}"),
    }
}

/// Wait for the tab's JavaScript dialog to open (its events arrive while browser-level commands
/// are answered: the tab itself is blocked by the dialog) and answer it with `accept`; returns
/// the dialog's event parameters.
async fn answer_dialog(cdp: &mut Cdp, tab: &str, accept: bool) -> Value {
    let deadline = Instant::now() + PAGE_TIMEOUT;
    let opened = loop {
        let found = cdp
            .events
            .iter()
            .position(|e| e["method"] == "Page.javascriptDialogOpening" && e["sessionId"] == tab);
        if let Some(i) = found {
            break cdp.events.remove(i)["params"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no dialog opened within {PAGE_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        cdp.call("Browser.getVersion", json!({}), None).await;
    };
    cdp.call(
        "Page.handleJavaScriptDialog",
        json!({ "accept": accept }),
        Some(tab),
    )
    .await;
    opened
}

/// Click the close button of session `id` from a timer, so that the evaluation returns before
/// the button's `confirm()` blocks the page.
async fn click_close(cdp: &mut Cdp, tab: &str, id: u64) {
    let expr = format!(
        "(() => {{ const b = document.querySelector('#sessions tr[data-id=\"{id}\"] button.close'); \
         if (!b) return 'missing'; setTimeout(() => b.click(), 0); return 'clicked'; }})()"
    );
    assert_eq!(
        cdp.eval_string(tab, &expr).await.as_deref(),
        Some("clicked")
    );
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_lists_sessions_and_closes_one_with_1008() {
    let echo = backends::echo().await;
    let gw = start(&echo, false).await;
    let admin = gw.admin();
    let mut clients = Vec::new();
    for text in ["one", "two", "three"] {
        let mut ws = ops::ws(&gw.url("/echo")).await;
        ops::echo(&mut ws, text).await;
        let id = session_id(admin, None, ops::local_addr(&ws)).await;
        clients.push((id, ws));
    }
    let want: BTreeSet<String> = clients.iter().map(|(id, _)| id.to_string()).collect();

    let (browser, mut cdp, tab) = open_page(admin).await;
    let shown = wait_page(&mut cdp, &tab, ROW_IDS, "the 3 sessions", &browser, |v| {
        ids(v) == want
    })
    .await;
    println!("sessions in the page: {shown}");
    let version = cdp
        .eval_string(&tab, "document.getElementById('version').textContent")
        .await;
    assert_eq!(version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    // The route row: 3 open of max_sessions 5, 3 handshakes answered 101.
    let route_row = "[...document.querySelectorAll('#routes tbody tr')].map(r => [...r.cells].map(c => c.textContent).join('|')).find(t => t.startsWith('/echo|')) || ''";
    let row = wait_page(&mut cdp, &tab, route_row, "the /echo row", &browser, |v| {
        v.starts_with("/echo|3 / 5|3|101 3|")
    })
    .await;
    println!("route row: {row}");
    let backend_row = "[...document.querySelectorAll('#backends tbody tr')].map(r => [...r.cells].map(c => c.textContent).join('|')).join('\\n')";
    let backends = cdp.eval_string(&tab, backend_row).await.unwrap_or_default();
    assert!(
        backends.contains(&format!("/echo|{}|up|3|", echo.config_addr())),
        "{backends}"
    );

    // Refreshes update the rows in place (a button under the pointer stays the same element):
    // a marked row keeps its mark while its byte counts move.
    let mark = format!(
        "(() => {{ const r = document.querySelector('#sessions tr[data-id=\"{}\"]'); \
         r.__kept = true; return 'ok'; }})()",
        clients[0].0
    );
    assert_eq!(cdp.eval_string(&tab, &mark).await.as_deref(), Some("ok"));
    ops::echo(&mut clients[0].1, &"y".repeat(2000)).await;
    let kept = format!(
        "(() => {{ const r = document.querySelector('#sessions tr[data-id=\"{}\"]'); \
         return [r.__kept === true, r.cells[6].textContent, r.cells[7].textContent].join('|'); }})()",
        clients[0].0
    );
    wait_page(
        &mut cdp,
        &tab,
        &kept,
        "the new byte counts in the same row",
        &browser,
        |v| v == "true|2.0 kB|2.0 kB",
    )
    .await;

    // The filter box narrows the table to what matches (here one client's port).
    let (victim, mut victim_ws) = clients.remove(1);
    let port = ops::local_addr(&victim_ws).port();
    let filter = format!(
        "(() => {{ const f = document.getElementById('filter'); f.value = ':{port}'; \
         f.dispatchEvent(new Event('input')); return 'ok'; }})()"
    );
    assert_eq!(cdp.eval_string(&tab, &filter).await.as_deref(), Some("ok"));
    let filtered = cdp.eval_string(&tab, ROW_IDS).await.unwrap_or_default();
    assert_eq!(ids(&filtered), BTreeSet::from([victim.to_string()]));

    // Its button asks first; a dismissed dialog closes nothing.
    click_close(&mut cdp, &tab, victim).await;
    let dialog = answer_dialog(&mut cdp, &tab, false).await;
    assert_eq!(dialog["type"], "confirm", "{dialog}");
    let message = dialog["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("session {victim}")), "{message}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    ops::echo(&mut victim_ws, "still open").await;

    // Accepted: the gateway closes that session with 1008, and only that one.
    click_close(&mut cdp, &tab, victim).await;
    answer_dialog(&mut cdp, &tab, true).await;
    assert_eq!(ops::close_code(&mut victim_ws).await, 1008);
    ops::finish(&mut victim_ws).await;
    for (_, ws) in clients.iter_mut() {
        ops::echo(ws, "still here").await;
    }

    // The page shows the other two once the filter is cleared.
    let clear = "(() => { const f = document.getElementById('filter'); f.value = ''; \
                 f.dispatchEvent(new Event('input')); return 'ok'; })()";
    assert_eq!(cdp.eval_string(&tab, clear).await.as_deref(), Some("ok"));
    let rest: BTreeSet<String> = clients.iter().map(|(id, _)| id.to_string()).collect();
    wait_page(
        &mut cdp,
        &tab,
        ROW_IDS,
        "the 2 remaining sessions",
        &browser,
        |v| ids(v) == rest,
    )
    .await;
    let closes = wait_page(&mut cdp, &tab, route_row, "the 1008 close", &browser, |v| {
        v.contains("1008 gateway 1")
    })
    .await;
    println!("route row after the close: {closes}");

    // A few more refreshes with traffic, for the sparklines in the picture.
    for i in 0..3 {
        for (_, ws) in clients.iter_mut() {
            ops::echo(ws, &"x".repeat(1000 * (i + 1))).await;
        }
        tokio::time::sleep(Duration::from_millis(2100)).await;
    }
    screenshot(&mut cdp, &tab, "status-page.png").await;
    for (_, ws) in clients {
        ops::close(ws).await;
    }
    browser.close(&mut cdp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_prints_a_hostile_subject_as_text() {
    let echo = backends::echo().await;
    let gw = start(&echo, false).await;
    let token =
        auth::hs256(JWT_SECRET).sign(&json!({ "sub": HOSTILE_SUBJECT, "exp": auth::now() + 600 }));
    let mut ws = ops::ws_with(
        &gw.url("/jwt"),
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await;
    ops::echo(&mut ws, "hi").await;
    let id = session_id(gw.admin(), None, ops::local_addr(&ws)).await;

    let (browser, mut cdp, tab) = open_page(gw.admin()).await;
    wait_page(&mut cdp, &tab, ROW_IDS, "the session", &browser, |v| {
        ids(v) == BTreeSet::from([id.to_string()])
    })
    .await;
    let cell = cdp
        .eval_string(
            &tab,
            "document.querySelector('#sessions tbody tr[data-id] td.subject').textContent",
        )
        .await;
    assert_eq!(cell.as_deref(), Some(HOSTILE_SUBJECT));
    let pwned = cdp.eval_string(&tab, "typeof window.__pwned").await;
    assert_eq!(pwned.as_deref(), Some("undefined"));
    // No element came out of the subject: the page's own script is the only one.
    let scripts = cdp
        .eval_string(&tab, "String(document.querySelectorAll('script').length)")
        .await;
    assert_eq!(scripts.as_deref(), Some("1"));
    // The JWT itself is nowhere in the page.
    let html = cdp
        .eval_string(&tab, "document.documentElement.outerHTML")
        .await
        .unwrap_or_default();
    assert!(!html.contains(&token), "the session's token is in the page");

    // A page left open polls, no faster than every 2 s: over 6 s, at most 4 requests for each
    // endpoint (3 expected), and at least 1.
    cdp.call("Network.enable", json!({}), Some(&tab)).await;
    cdp.events.clear();
    tokio::time::sleep(Duration::from_secs(6)).await;
    cdp.call("Browser.getVersion", json!({}), None).await;
    let polls = cdp
        .events
        .iter()
        .filter(|e| {
            e["method"] == "Network.requestWillBeSent"
                && e["sessionId"] == tab.as_str()
                && e["params"]["request"]["url"]
                    .as_str()
                    .is_some_and(|u| u.ends_with("/sessions"))
        })
        .count();
    assert!(
        (1..=4).contains(&polls),
        "{polls} polls of /sessions in 6 s"
    );
    ops::close(ws).await;
    browser.close(&mut cdp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_asks_for_the_admin_token_and_keeps_it_for_the_tab() {
    let echo = backends::echo().await;
    let gw = start(&echo, true).await;
    let admin = gw.admin();
    let mut ws = ops::ws(&gw.url("/echo")).await;
    ops::echo(&mut ws, "hello").await;
    let id = session_id(admin, Some(ADMIN_TOKEN), ops::local_addr(&ws)).await;

    let (browser, mut cdp, tab) = open_page(admin).await;
    let asking = "(() => { const a = document.getElementById('auth'); \
                  return a && !a.hidden ? document.getElementById('auth-message').textContent : ''; })()";
    let message = wait_page(&mut cdp, &tab, asking, "the token form", &browser, |v| {
        v.contains("requires a token")
    })
    .await;
    println!("without a token: {message}");
    // No data: the data section is hidden and empty.
    let data = "(() => [document.getElementById('data').hidden, \
                document.querySelectorAll('#data tbody tr').length, \
                document.getElementById('data').textContent.includes('/echo'), \
                document.getElementById('version').textContent].join('|'))()";
    assert_eq!(
        cdp.eval_string(&tab, data).await.as_deref(),
        Some("true|0|false|-")
    );

    let submit = |t: &str| {
        format!(
            "(() => {{ document.getElementById('token').value = {t:?}; \
             document.getElementById('token-form').requestSubmit(); return 'ok'; }})()"
        )
    };
    // A wrong token is refused and shows nothing.
    assert_eq!(
        cdp.eval_string(&tab, &submit("not-the-token"))
            .await
            .as_deref(),
        Some("ok")
    );
    wait_page(&mut cdp, &tab, asking, "the refusal", &browser, |v| {
        v.contains("refused")
    })
    .await;
    assert_eq!(
        cdp.eval_string(&tab, data).await.as_deref(),
        Some("true|0|false|-")
    );

    // The right one: the session appears.
    assert_eq!(
        cdp.eval_string(&tab, &submit(ADMIN_TOKEN)).await.as_deref(),
        Some("ok")
    );
    let want = BTreeSet::from([id.to_string()]);
    wait_page(
        &mut cdp,
        &tab,
        ROW_IDS,
        "the session after the token",
        &browser,
        |v| ids(v) == want,
    )
    .await;
    let dom = "document.documentElement.outerHTML + '\\n' + document.body.innerText + '\\n' + document.getElementById('token').value";
    let text = cdp.eval_string(&tab, dom).await.unwrap_or_default();
    assert!(text.contains("/echo"), "{text}");
    assert!(
        !text.contains(ADMIN_TOKEN),
        "the admin token is in the page's DOM"
    );

    // Kept for the tab: a reload shows the data without asking again.
    cdp.call("Page.reload", json!({}), Some(&tab)).await;
    wait_page(
        &mut cdp,
        &tab,
        ROW_IDS,
        "the session after a reload",
        &browser,
        |v| ids(v) == want,
    )
    .await;
    let text = cdp.eval_string(&tab, dom).await.unwrap_or_default();
    assert!(
        !text.contains(ADMIN_TOKEN),
        "the admin token is in the page's DOM"
    );
    ops::close(ws).await;
    browser.close(&mut cdp).await;
}

#[tokio::test]
async fn status_page_and_status_endpoint_over_plain_http() {
    let echo = backends::echo().await;
    let gw = start(&echo, true).await;
    let admin = gw.admin();
    let before_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;

    // The page needs no token, and it is the shipped file byte for byte: it carries no data.
    let page = ops::http(admin, "GET", "/", None).await;
    assert_eq!(page.status, 200, "{page:?}");
    let shipped = std::fs::read_to_string(support::repo_root().join("assets/status.html")).unwrap();
    assert_eq!(page.body, shipped);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.starts_with("default-src 'none';"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert!(csp.contains("style-src 'sha256-"), "{csp}");
    assert!(!csp.contains("unsafe"), "{csp}");
    let post = ops::http(admin, "POST", "/", None).await;
    assert_eq!(post.status, 405, "{post:?}");

    // /status is behind the token like the rest.
    let none = ops::http(admin, "GET", "/status", None).await;
    assert_eq!(none.status, 401, "{none:?}");
    assert!(!none.body.contains("version"), "{none:?}");
    let r = ops::http(admin, "GET", "/status", Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let s: Value = serde_json::from_str(&r.body).expect("/status is JSON");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"), "{s}");
    assert_eq!(s["ready"], true, "{s}");
    assert_eq!(s["config_generation"], 1, "{s}");
    assert_eq!(s["max_connections"], 77, "{s}");
    assert_eq!(s["max_connections_per_ip"], 9, "{s}");
    assert_eq!(
        s["routes"],
        json!([
            { "path": "/echo", "max_sessions": 5 },
            { "path": "/jwt", "max_sessions": null },
        ]),
        "{s}"
    );
    let started = s["started_unix_ms"].as_u64().expect("started_unix_ms");
    let loaded = s["config_loaded_unix_ms"]
        .as_u64()
        .expect("config_loaded_unix_ms");
    let now = s["now_unix_ms"].as_u64().expect("now_unix_ms");
    // The process started before this test asked (wide margin for a slow start).
    assert!(
        started <= before_ms + 1000 && before_ms < started + 60_000,
        "{s}"
    );
    assert!(started <= loaded && loaded <= now, "{s}");
    assert!(s["uptime_secs"].as_u64().is_some_and(|u| u < 60), "{s}");

    // A reload is a new generation, loaded later, with the new limits.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let reloaded = config(&echo, "token_file = \"admin.token\"", 88);
    std::fs::write(gw.config_path(), reloaded).unwrap();
    gw.signal("HUP");
    gw.wait_for_log("configuration reloaded", WAIT).await;
    let r = ops::http(admin, "GET", "/status", Some(ADMIN_TOKEN)).await;
    let s2: Value = serde_json::from_str(&r.body).expect("/status is JSON");
    assert_eq!(s2["config_generation"], 2, "{s2}");
    assert_eq!(s2["max_connections"], 88, "{s2}");
    assert_eq!(s2["started_unix_ms"], started, "{s2}");
    assert!(
        s2["config_loaded_unix_ms"]
            .as_u64()
            .is_some_and(|l| l > loaded),
        "{s2}"
    );
}
