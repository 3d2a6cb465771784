//! Smoke test of the load generator: wsload drives a real wsgate (built-in echo demo backend,
//! a `length-prefixed` and a `raw` route) for about a second each way and reports sane numbers in
//! its JSON output. Not a benchmark: it only checks that the harness works.

use crate::support;

use std::process::Command;

use serde_json::Value;
use support::ops::{self, WAIT};
use support::Gateway;

/// The load generator's binary: a member of the same workspace, built into the same directory as
/// the gateway (`cargo test --workspace` builds it; so does `cargo build -p wsload`).
fn wsload_binary() -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_wsgate")).with_file_name("wsload");
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p wsload` (or test with --workspace)",
        path.display()
    );
    path
}

fn config(echo_port: u16) -> String {
    format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"

[[demo_backend]]
bind = "127.0.0.1:{echo_port}"
kind = "echo"

[[route]]
path = "/lp"
backend = "127.0.0.1:{echo_port}"
framing = "length-prefixed"

[[route]]
path = "/raw"
backend = "127.0.0.1:{echo_port}"
framing = "raw"
"#
    )
}

/// Run wsload with `args` and parse its `--json` output.
fn wsload(args: &[&str]) -> Value {
    let out = Command::new(wsload_binary())
        .args(args)
        .arg("--json")
        .arg("--timeout")
        .arg("10")
        .output()
        .expect("run wsload");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wsload {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("bad JSON ({e}): {stdout}"))
}

/// The log once every session that opened has its access line (the sessions of a wsload run end
/// as it exits, and their lines come a moment after); at least one session must have opened, so
/// that checks on the access lines are not vacuous.
async fn wait_every_session_closed(gw: &Gateway) -> String {
    let count = |logs: &str, needle: &str| logs.lines().filter(|l| l.contains(needle)).count();
    ops::eventually("an access line for every session opened", WAIT, || {
        let logs = gw.logs();
        count(&logs, "session closed") == count(&logs, "session open")
    })
    .await;
    let logs = gw.logs();
    assert!(
        count(&logs, "session open") > 0,
        "no session in the log:\n{logs}"
    );
    logs
}

fn assert_latencies_ordered(report: &Value) {
    let lat = &report["latency_us"];
    let get = |k: &str| {
        lat[k]
            .as_f64()
            .unwrap_or_else(|| panic!("latency_us.{k} missing: {report}"))
    };
    let seq = [
        get("min"),
        get("p50"),
        get("p90"),
        get("p99"),
        get("p999"),
        get("max"),
    ];
    assert!(seq[0] > 0.0, "{report}");
    assert!(seq.windows(2).all(|w| w[0] <= w[1]), "unordered: {seq:?}");
}

#[tokio::test]
async fn wsload_drives_wsgate_and_reports_json() {
    let gw = Gateway::start(&config(support::free_port())).await;
    let pid = gw.pid().to_string();

    // Length-prefixed route, text messages, 2 connections with 2 messages in flight each.
    let lp = gw.url("/lp");
    let r = wsload(&[
        &lp,
        "-c",
        "2",
        "-k",
        "2",
        "-s",
        "100",
        "--text",
        "-d",
        "0.8",
        "--warmup",
        "0.2",
        "--server-pid",
        &pid,
    ]);
    assert_eq!(r["mode"], "echo");
    assert_eq!(r["errors"], 0, "{r}");
    assert!(r["messages"].as_u64().unwrap() > 0, "{r}");
    assert!(r["msgs_per_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["payload_mb_per_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["client_cpu_s"].as_f64().is_some(), "{r}");
    assert!(r["server"]["cpu_s"].as_f64().is_some(), "{r}");
    assert_latencies_ordered(&r);

    // Raw route: the gateway re-chunks the echo into its own binary messages; a message counts
    // when all its bytes are back, across frames. A count limit ends this run.
    let raw = gw.url("/raw");
    let r = wsload(&[&raw, "-c", "1", "-k", "4", "-s", "40000", "-n", "200"]);
    assert_eq!(r["errors"], 0, "{r}");
    let n = r["messages"].as_u64().unwrap();
    assert!((200..=204).contains(&n), "{r}");
    assert_latencies_ordered(&r);

    // Handshake and idle modes report their counts.
    let r = wsload(&[&raw, "--mode", "handshake", "-c", "2", "-d", "0.3"]);
    assert_eq!(r["errors"], 0, "{r}");
    assert!(r["handshakes"].as_u64().unwrap() > 0, "{r}");
    assert_latencies_ordered(&r);
    let r = wsload(&[
        &raw, "--mode", "idle", "-c", "20", "-d", "0.3", "--settle", "0.1",
    ]);
    assert_eq!(
        (r["opened"].as_u64(), r["failed"].as_u64()),
        (Some(20), Some(0)),
        "{r}"
    );

    // The gateway saw every session end cleanly (no protocol errors from the client).
    let logs = wait_every_session_closed(&gw).await;
    assert!(!logs.contains("code=1002"), "{logs}");
    drop(gw);
}

/// `--http2` carries every session as a stream of one h2c connection, and `--deflate` compresses
/// what it sends and inflates what it receives: a fixed message count comes back whole.
#[tokio::test]
async fn wsload_speaks_http2_and_permessage_deflate() {
    let echo_port = support::free_port();
    let gw = Gateway::start(&format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
http2 = true

[[demo_backend]]
bind = "127.0.0.1:{echo_port}"
kind = "echo"

[[route]]
path = "/raw"
backend = "127.0.0.1:{echo_port}"

[[route]]
path = "/z"
backend = "127.0.0.1:{echo_port}"
compression = "permessage-deflate"
"#
    ))
    .await;
    let raw = gw.url("/raw");
    let z = gw.url("/z");

    let r = wsload(&[&raw, "--http2", "-c", "5", "-k", "2", "-n", "300"]);
    assert_eq!(
        (r["errors"].as_u64(), r["http2"].as_bool()),
        (Some(0), Some(true)),
        "{r}"
    );
    assert!(
        (300..=310).contains(&r["messages"].as_u64().unwrap()),
        "{r}"
    );

    for extra in [&[][..], &["--http2"][..]] {
        let mut args = vec![
            z.as_str(),
            "--deflate",
            "--text-json",
            "-s",
            "1KiB",
            "-c",
            "3",
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-n", "200"]);
        let r = wsload(&args);
        assert_eq!(r["errors"], 0, "{r}");
        assert_eq!(r["deflate_sessions"], 3, "{r}");
        assert!(
            (200..=203).contains(&r["messages"].as_u64().unwrap()),
            "{r}"
        );
    }

    let r = wsload(&[
        &z,
        "--mode",
        "idle",
        "--http2",
        "--deflate",
        "--idle-send",
        "-c",
        "20",
        "-d",
        "0.3",
        "--settle",
        "0.1",
    ]);
    assert_eq!(
        (r["opened"].as_u64(), r["failed"].as_u64()),
        (Some(20), Some(0)),
        "{r}"
    );

    let logs = wait_every_session_closed(&gw).await;
    assert!(
        !logs.contains("code=1002") && !logs.contains("code=1007"),
        "{logs}"
    );
    drop(gw);
}
