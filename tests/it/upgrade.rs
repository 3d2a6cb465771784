//! Binary upgrade (`wsgate --config F --upgrade`): the new process takes the listening sockets
//! from the running one over `[runtime] upgrade_socket`; the old one stops accepting once the new
//! one is ready and drains its sessions (Close 1001). No connection attempt fails meanwhile; a
//! failed upgrade leaves the old process serving.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::backends::{self, Backend};
use crate::support::cli::{run_wsgate, stderr};
use crate::support::ops::{self, ADMIN_BIND, WAIT};
use crate::support::process::Opts;
use crate::support::Gateway;

const GRACE_SECS: u64 = 3;

fn config(backend: &Backend, socket: &Path, extra: &str) -> String {
    format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
{extra}
[admin]
bind = "{ADMIN_BIND}"

[runtime]
upgrade_socket = "{}"

[limits]
shutdown_grace = "{GRACE_SECS}s"

[[route]]
path = "/echo"
backend = "{}"
"#,
        socket.display(),
        backend.config_addr()
    )
}

/// How a session of the connect loop went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Opened, echoed, closed.
    Echoed,
    /// Opened on the old process just before it stopped accepting, and closed by its drain
    /// (Close 1001) before the echo came back: the drain, not a failed attempt.
    Drained,
}

/// One session: open, one echo of `text`, close. `Err` says which step failed.
async fn one_session(url: &str, text: &str) -> Result<Outcome, String> {
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .map_err(|_| "open timed out".to_string())?
        .map_err(|e| format!("open: {e}"))?;
    ws.send(Message::text(text))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut got = Vec::new();
    while got.len() < text.len() {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Err(_) => return Err("echo timed out".into()),
            Ok(Some(Ok(Message::Text(t)))) => got.extend_from_slice(t.as_bytes()),
            Ok(Some(Ok(Message::Binary(b)))) => got.extend_from_slice(&b),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(Some(Ok(Message::Close(Some(f))))) if u16::from(f.code) == 1001 => {
                return Ok(Outcome::Drained)
            }
            Ok(other) => return Err(format!("echo: got {other:?}")),
        }
    }
    if got != text.as_bytes() {
        return Err("echo: wrong bytes".into());
    }
    let _ = ws.close(None).await;
    Ok(Outcome::Echoed)
}

/// Lines of `log` containing "session open".
fn opened(log: &str) -> usize {
    log.lines().filter(|l| l.contains("session open")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_under_a_connect_loop_refuses_nothing() {
    let backend = backends::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let text = config(&backend, &socket, "");
    let mut old = Gateway::start_in(dir, &text).await;
    let url = old.url("/echo");
    let old_admin = old.admin();

    // Sessions open before the upgrade.
    let mut before = Vec::new();
    for _ in 0..3 {
        let mut ws = ops::ws(&url).await;
        ops::echo(&mut ws, "before").await;
        before.push(ws);
    }

    // A new session every ~5 ms, each with one echo.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let loop_task = {
        let (stop, failures, url) = (stop.clone(), failures.clone(), url.clone());
        tokio::spawn(async move {
            let (mut ok, mut drained) = (0usize, 0usize);
            let mut tasks = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let (url, failures) = (url.clone(), failures.clone());
                tasks.push(tokio::spawn(async move {
                    let r = one_session(&url, &format!("loop {n}")).await;
                    if let Err(e) = &r {
                        failures.lock().unwrap().push(format!("session {n}: {e}"));
                    }
                    r.ok()
                }));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            for t in tasks {
                match t.await.unwrap() {
                    Some(Outcome::Echoed) => ok += 1,
                    Some(Outcome::Drained) => drained += 1,
                    None => {}
                }
            }
            (ok, drained)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The sessions opened before send one more message as the upgrade starts.
    for ws in &mut before {
        ops::send(ws, Message::text("during")).await;
    }
    // The new process, on the same listeners.
    let new = Gateway::start_with(
        &text,
        Opts {
            args: vec!["--upgrade".into()],
            ..Opts::default()
        },
    )
    .await;
    assert_eq!(
        new.addr(),
        old.addr(),
        "the new process serves the same port"
    );
    assert_eq!(
        new.admin(),
        old_admin,
        "the admin listener is handed over too"
    );
    new.wait_for_log("binary upgrade done", WAIT).await;
    let ready_at = Instant::now();
    old.wait_for_log("binary upgrade: no new connections here", WAIT)
        .await;

    // The sessions opened before: their echo arrives, then Close 1001 from the old process.
    for ws in &mut before {
        assert_eq!(ops::next_data(ws).await, b"during");
        let close = ops::expect_close(ws).await.expect("a Close frame");
        assert_eq!(u16::from(close.code), 1001);
    }
    let status = old.wait_exit(Duration::from_secs(GRACE_SECS + 5)).await;
    assert!(status.success(), "old process: {status}\n{}", old.logs());
    assert!(
        ready_at.elapsed() < Duration::from_secs(GRACE_SECS + 2),
        "the old process exited {:?} after the hand-over",
        ready_at.elapsed()
    );

    // The loop runs on ~1 s after the old process is gone.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, drained) = loop_task.await.unwrap();
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed attempts: {failures:?}\nold:\n{}\nnew:\n{}",
        failures.len(),
        old.logs(),
        new.logs()
    );
    assert!(ok >= 50, "only {ok} sessions in the loop");
    // At most the few sessions open on the old process at the hand-over are drained mid-echo.
    assert!(
        drained <= 5,
        "{drained} loop sessions were closed by the drain"
    );

    // Every session was served by one of the two, the ones after the hand-over by the new one.
    let old_log = old.logs();
    let (served_before, _) = old_log
        .split_once("binary upgrade: no new connections here")
        .expect("the drain line");
    let old_opened = opened(&old_log);
    // Only connections the old process accepted before it stopped can open there afterwards
    // (and they are drained at once).
    let late = old_opened - opened(served_before);
    assert!(
        late <= drained,
        "the old process opened {late} sessions after it stopped accepting ({drained} drained)"
    );
    // The new process's log may lag its last sessions by a moment: wait for the count the
    // sessions add up to (the equality below then checks it is not more).
    let want_new = (ok + drained + before.len()).saturating_sub(old_opened);
    let new_opened = opened(&new.wait_for_count("session open", want_new, WAIT).await);
    assert!(
        new_opened >= 20,
        "the new process served {new_opened} sessions"
    );
    assert_eq!(old_opened + new_opened, ok + drained + before.len());

    // The new process answers a later upgrade on the same socket path.
    assert!(
        socket_is_live(&socket),
        "no upgrade socket after the upgrade"
    );
}

fn upgrade_args(config: &Path) -> Vec<std::ffi::OsString> {
    vec![
        "--config".into(),
        config.as_os_str().to_owned(),
        "--upgrade".into(),
    ]
}

fn socket_is_live(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

#[tokio::test]
async fn failed_upgrade_leaves_the_old_process_serving() {
    let backend = backends::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let old = Gateway::start_in(dir, &config(&backend, &socket, "")).await;

    // A listener whose port is taken: the new process fails after receiving the sockets.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let extra = format!("[[listener]]\nbind = \"{}\"\n", taken.local_addr().unwrap());
    let bad = tempfile::tempdir().unwrap();
    let bad_path = bad.path().join("bad.toml");
    std::fs::write(&bad_path, config(&backend, &socket, &extra)).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        run_wsgate(upgrade_args(&bad_path), Duration::from_secs(30))
    })
    .await
    .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot listen on"), "{err}");
    old.wait_for_log("binary upgrade failed; this process keeps serving", WAIT)
        .await;
    assert!(
        old.logs()
            .contains("the new process failed to start: cannot listen on"),
        "{}",
        old.logs()
    );

    // A configuration error: nothing reaches the old process.
    let broken = tempfile::tempdir().unwrap();
    let broken_path = broken.path().join("broken.toml");
    std::fs::write(&broken_path, config(&backend, &socket, "no_such_key = 1\n")).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        run_wsgate(upgrade_args(&broken_path), Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("configuration error"),
        "{}",
        stderr(&out)
    );

    // The old process still serves, and still offers upgrades.
    let mut ws = ops::ws(&old.url("/echo")).await;
    ops::echo(&mut ws, "still here").await;
    assert!(socket_is_live(&socket));
    // The session's open line comes after anything the failed upgrades made the old process
    // log.
    let log = old.wait_for_log("session open", WAIT).await;
    assert!(
        !log.contains("binary upgrade: no new connections here"),
        "{log}"
    );
}

#[tokio::test]
async fn upgrade_with_nothing_running_says_so() {
    let backend = backends::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let path = dir.path().join("wsgate.toml");
    std::fs::write(&path, config(&backend, &socket, "")).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        run_wsgate(upgrade_args(&path), Duration::from_secs(30))
    })
    .await
    .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no running wsgate answers on the upgrade socket"),
        "{err}"
    );
    drop(dir);
}

/// One echo over a WebSocket on the unix socket at `path`.
async fn unix_echo(path: &Path) {
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .expect("connect");
    let (mut ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async("ws://localhost/echo", stream),
    )
    .await
    .expect("open timed out")
    .expect("open");
    ws.send(Message::text("unix")).await.expect("send");
    let mut got = Vec::new();
    while got.len() < 4 {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("echo") {
            Some(Ok(Message::Text(t))) => got.extend_from_slice(t.as_bytes()),
            Some(Ok(Message::Binary(b))) => got.extend_from_slice(&b),
            other => panic!("expected the echo, got {other:?}"),
        }
    }
    assert_eq!(got, b"unix");
}

#[tokio::test]
async fn unix_listener_is_handed_over_and_its_file_kept() {
    let backend = backends::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let ws_path = dir.path().join("ws.sock");
    let extra = format!("[[listener]]\nbind = \"unix:{}\"\n", ws_path.display());
    let text = config(&backend, &socket, &extra);
    let mut old = Gateway::start_in(dir, &text).await;
    unix_echo(&ws_path).await;
    let new = Gateway::start_with(
        &text,
        Opts {
            args: vec!["--upgrade".into()],
            ..Opts::default()
        },
    )
    .await;
    new.wait_for_log("binary upgrade done", WAIT).await;
    let status = old.wait_exit(Duration::from_secs(GRACE_SECS + 5)).await;
    assert!(status.success(), "{}", old.logs());
    // The old process left the socket file to the new one, which serves on it.
    assert!(ws_path.exists(), "the unix socket file is gone");
    unix_echo(&ws_path).await;
    // The session's line may follow its echo by a moment.
    let log = new.wait_for_count("session open", 1, WAIT).await;
    assert_eq!(opened(&log), 1, "{log}");
    assert!(new.logs().contains("handed_over=true"), "{}", new.logs());
}
