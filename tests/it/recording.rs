//! Session recording (`record = "DIR"`): a session through a recording route, read back with the
//! `wsgate replay` binary and compared byte for byte with what the backend received and sent;
//! the access line names the file; a small `record_max_bytes` leaves a gap and nothing else;
//! `record_required` refuses a session whose file cannot be created; a cut-short file and a file
//! still being written replay.

use crate::support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;

use support::backends::{self, Recorder};
use support::cli::{run_wsgate, stderr, stdout};
use support::ops;
use support::TestGateway;

const WAIT: Duration = Duration::from_secs(10);

/// A gateway whose route `/r` (framing `framing`, extra route lines `extra`) records into
/// `rec/` in its directory, to a fresh recording backend.
async fn setup(framing: &str, extra: &str) -> (TestGateway, Recorder, PathBuf) {
    let backend = backends::recorder().await;
    let dir = tempfile::tempdir().unwrap();
    let rec_dir = dir.path().join("rec");
    std::fs::create_dir(&rec_dir).unwrap();
    let gw = TestGateway::start_in(
        dir,
        &format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/r\"\nbackend = \"{}\"\nframing = \"{framing}\"\nrecord = \"rec\"\nrecord_prefix = \"audit\"\n{extra}\n",
            backend.backend.config_addr()
        ),
    )
    .await;
    (gw, backend, rec_dir)
}

/// The file the access line names, once the session has closed and the file has its end line.
async fn recorded_file(gw: &TestGateway, rec_dir: &Path) -> PathBuf {
    let logs = gw.wait_for_log("session closed", WAIT).await;
    let line = logs.lines().find(|l| l.contains("session closed")).unwrap();
    let name = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("record="))
        .unwrap_or_else(|| panic!("the access line names no recording: {line}"))
        .trim_matches('"')
        .to_string();
    assert!(
        name.starts_with("audit-") && name.ends_with(".jsonl"),
        "{name}"
    );
    let path = rec_dir.join(&name);
    ops::eventually("the recording's end line", WAIT, || {
        std::fs::read_to_string(&path).is_ok_and(|t| t.contains("\"type\":\"end\""))
    })
    .await;
    path
}

fn replay(args: &[&str], file: &Path) -> std::process::Output {
    let mut a: Vec<std::ffi::OsString> = vec!["replay".into()];
    a.extend(args.iter().map(Into::into));
    a.push(file.into());
    let out = run_wsgate(a, WAIT);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    out
}

#[tokio::test]
async fn raw_route_replays_both_directions_byte_for_byte() {
    let (gw, mut backend, rec_dir) = setup("raw", "").await;
    let mut ws = ops::ws(&gw.url("/r")).await;
    let mut conn = backend.accept().await;
    ops::send(&mut ws, Message::text("hello \u{e9}")).await;
    ops::send(&mut ws, Message::binary(vec![0u8, 1, 2, 255, b'\n'])).await;
    let want_in = [&b"hello \xc3\xa9"[..], &[0, 1, 2, 255, b'\n']].concat();
    conn.wait_for_len(want_in.len()).await;
    let sent_out: Vec<u8> = (0..=255u8).chain(*b"\r\nend").collect();
    conn.write(&sent_out[..100]).await;
    let mut got = Vec::new();
    while got.len() < 100 {
        got.extend(ops::next_data(&mut ws).await);
    }
    conn.write(&sent_out[100..]).await;
    while got.len() < sent_out.len() {
        got.extend(ops::next_data(&mut ws).await);
    }
    ops::close(ws).await;
    let file = recorded_file(&gw, &rec_dir).await;

    assert_eq!(conn.received(), want_in);
    assert_eq!(replay(&["--raw", "in"], &file).stdout, conn.received());
    assert_eq!(replay(&["--raw", "out"], &file).stdout, sent_out);

    let listing = stdout(&replay(&[], &file));
    let lines: Vec<&str> = listing.lines().collect();
    assert!(
        lines[0].contains("route /r") && lines[0].contains("framing raw"),
        "{listing}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("->  text") && l.contains("\"hello é\"")),
        "{listing}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("->  binary") && l.contains("00 01 02 ff 0a")),
        "{listing}"
    );
    assert!(
        lines.last().unwrap().contains("end  close 1000"),
        "{listing}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Cut short in the middle of a line: the rest still replays, with a note.
    let text = std::fs::read(&file).unwrap();
    let cut = file.with_extension("cut");
    let end_line = text[..text.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap();
    std::fs::write(&cut, &text[..end_line + 10]).unwrap();
    let out = replay(&["--raw", "out"], &cut);
    assert_eq!(out.stdout, sent_out);
    assert!(
        stderr(&out).contains("without an end line"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn lines_route_replays_the_backend_bytes() {
    let (gw, mut backend, rec_dir) = setup("lines", "").await;
    let mut ws = ops::ws(&gw.url("/r")).await;
    let mut conn = backend.accept().await;
    ops::send(&mut ws, Message::text("one")).await;
    ops::send(&mut ws, Message::text("two \u{2603}")).await;
    conn.wait_for_len(b"one\ntwo \xe2\x98\x83\n".len()).await;
    conn.write(b"x\r\ny\nlast\n").await;
    for want in ["x", "y", "last"] {
        assert_eq!(ops::next_data(&mut ws).await, want.as_bytes());
    }
    ops::close(ws).await;
    let file = recorded_file(&gw, &rec_dir).await;
    assert_eq!(replay(&["--raw", "in"], &file).stdout, conn.received());
    assert_eq!(replay(&["--raw", "out"], &file).stdout, b"x\r\ny\nlast\n");
}

#[tokio::test]
async fn a_small_size_limit_leaves_a_gap_and_the_session_is_unaffected() {
    let (gw, mut backend, rec_dir) = setup("raw", "record_max_bytes = \"4KiB\"").await;
    let mut ws = ops::ws(&gw.url("/r")).await;
    let mut conn = backend.accept().await;
    let mut sent = Vec::new();
    for i in 0..40u8 {
        let m = vec![i; 1000];
        ops::send(&mut ws, Message::binary(m.clone())).await;
        sent.extend(m);
    }
    // Every byte reaches the backend, whatever the recording kept.
    assert_eq!(conn.wait_for_len(sent.len()).await, sent);
    ops::close(ws).await;
    let file = recorded_file(&gw, &rec_dir).await;
    let len = std::fs::metadata(&file).unwrap().len();
    assert!(len <= 4096, "{len}");
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let gap = lines[lines.len() - 2];
    assert!(
        gap.contains("\"type\":\"gap\"") && gap.contains("\"reason\":\"size limit\""),
        "{text}"
    );
    assert!(lines.last().unwrap().contains("\"type\":\"end\""));
    // What was kept plus the gap is everything the client sent.
    let kept = replay(&["--raw", "in"], &file).stdout;
    assert!(sent.starts_with(&kept) && !kept.is_empty());
    let gap_bytes: usize = gap
        .split("\"bytes\":")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert_eq!(kept.len() + gap_bytes, sent.len());
}

#[tokio::test]
async fn record_required_refuses_a_session_that_cannot_be_recorded() {
    let (gw, backend, rec_dir) = setup("raw", "record_required = true").await;
    // Recorded while the directory exists ...
    let ws = ops::ws(&gw.url("/r")).await;
    ops::close(ws).await;
    recorded_file(&gw, &rec_dir).await;
    // ... refused once it is gone (a file in its place).
    std::fs::remove_dir_all(&rec_dir).unwrap();
    std::fs::write(&rec_dir, b"not a directory").unwrap();
    assert_eq!(ops::try_ws(&gw.url("/r"), &[]).await.err(), Some(503));
    gw.wait_for_log("record_required", WAIT).await;
    drop(backend);
}

#[tokio::test]
async fn follow_sees_a_live_session() {
    let (gw, mut backend, rec_dir) = setup("raw", "").await;
    let mut ws = ops::ws(&gw.url("/r")).await;
    let conn = backend.accept().await;
    ops::eventually("the recording file", WAIT, || {
        std::fs::read_dir(&rec_dir).unwrap().next().is_some()
    })
    .await;
    let path = std::fs::read_dir(&rec_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["replay", "--follow"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop_guard();
    let stdout = child.0.stdout.take().unwrap();
    // Lines cross to the test through a channel it awaits: the gateway runs on the test's own
    // runtime, which must not be blocked.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let mut next_line = async |what: &str| {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("replay --follow printed no {what}"))
    };
    assert!(next_line("header").await.starts_with("session "));
    // A message in the live session appears.
    ops::send(&mut ws, Message::text("live one")).await;
    let line = next_line("message line").await;
    assert!(
        line.contains("->  text") && line.contains("live one"),
        "{line}"
    );
    conn.write(b"back").await;
    ops::next_data(&mut ws).await;
    let line = next_line("message line").await;
    assert!(line.contains("<-  binary"), "{line}");
    // The end line ends the replay.
    ops::close(ws).await;
    assert!(next_line("end line").await.contains("end  close 1000"));
    let status = child.wait(WAIT);
    assert!(status.success());
}

/// A child process killed (by its PID) if the test ends before it exits.
struct Child(std::process::Child);

trait SpawnGuard {
    fn kill_on_drop_guard(&mut self) -> Child;
}

impl SpawnGuard for Command {
    fn kill_on_drop_guard(&mut self) -> Child {
        Child(self.spawn().expect("spawn wsgate replay"))
    }
}

impl Child {
    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "replay --follow did not exit after the end line"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn bad_record_keys_are_config_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("afile"), b"x").unwrap();
    for (route_lines, key) in [
        ("record = \"missing\"", "route[0].record"),
        ("record = \"afile\"", "route[0].record"),
        ("record_required = true", "route[0].record_required"),
        (
            "record = \".\"\nrecord_prefix = \"../x\"",
            "route[0].record_prefix",
        ),
        (
            "record = \".\"\nrecord_max_bytes = 100",
            "route[0].record_max_bytes",
        ),
    ] {
        let path = dir.path().join("wsgate.toml");
        std::fs::write(
            &path,
            format!("[[listener]]\nbind = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/r\"\nbackend = \"127.0.0.1:9\"\n{route_lines}\n"),
        )
        .unwrap();
        let out = run_wsgate(
            ["check".as_ref(), "--config".as_ref(), path.as_os_str()],
            WAIT,
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{route_lines}: {err}");
        assert!(err.contains(key), "{route_lines}: {err}");
    }
    // A good one loads.
    let path = dir.path().join("wsgate.toml");
    std::fs::write(
        &path,
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/r\"\nbackend = \"127.0.0.1:9\"\nrecord = \".\"\nrecord_required = true\n",
    )
    .unwrap();
    let out = run_wsgate(
        ["check".as_ref(), "--config".as_ref(), path.as_os_str()],
        WAIT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
