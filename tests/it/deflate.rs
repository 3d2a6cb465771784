//! permessage-deflate (RFC 7692): negotiation and compressed echo both ways with an independent
//! client (Python `websockets`, zlib underneath), the RSV1 rules on hand-built frames, and the
//! guards: a deflate bomb closes with 1009 without the gateway's memory following the inflated
//! size, and input that inflates to nothing closes with 1008.
//!
//! The Python client is `<repo>/.venv/bin/python` (`./scripts/test.sh` installs websockets
//! there); the test fails, never skips, when it is missing.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::backends::{self, Backend};
use crate::support::frames::{
    self, parse_server_frame, RawWs, ServerFrame, Spec, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING,
    OP_TEXT,
};
use crate::support::TestGateway;

const PYTHON_TIMEOUT: Duration = Duration::from_secs(120);

fn config(echo: &str, limits: &str) -> String {
    format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"

[[route]]
path = "/deflate"
backend = "{echo}"
framing = "length-prefixed"
compression = "permessage-deflate"

[[route]]
path = "/server-nct"
backend = "{echo}"
framing = "length-prefixed"
compression = "permessage-deflate"
[route.deflate]
server_no_context_takeover = true

[[route]]
path = "/client-nct"
backend = "{echo}"
framing = "length-prefixed"
compression = "permessage-deflate"
[route.deflate]
client_no_context_takeover = true

[[route]]
path = "/small"
backend = "{echo}"
framing = "length-prefixed"
compression = "permessage-deflate"
[route.deflate]
server_max_window_bits = 9
client_max_window_bits = 9
min_compress_bytes = 1

[[route]]
path = "/eight"
backend = "{echo}"
framing = "length-prefixed"
compression = "permessage-deflate"
[route.deflate]
server_max_window_bits = 8

[[route]]
path = "/off"
backend = "{echo}"
framing = "length-prefixed"

[limits]
{limits}
"#
    )
}

#[derive(Debug)]
struct CaseResult {
    extensions: Option<String>,
    compressed: u64,
    plain: u64,
    ok: bool,
}

/// Run the Python client on `cases`; one result per case, in order.
async fn python_cases(gw: &TestGateway, cases: &[&str]) -> Vec<CaseResult> {
    let python = crate::support::repo_root().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} not found: run ./scripts/test.sh, which makes .venv with websockets",
        python.display()
    );
    let script = crate::support::repo_root().join("tests/it/support/deflate_client.py");
    let mut child = std::process::Command::new(&python)
        .arg(&script)
        .arg(format!("ws://{}", gw.addr()))
        .args(cases)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    // Pipes are drained on threads so the child never blocks on a full one.
    let mut pipes = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out_reader = std::thread::spawn(move || {
        use std::io::Read;
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let _ = pipes.0.read_to_end(&mut o);
        let _ = pipes.1.read_to_end(&mut e);
        (o, e)
    });
    let deadline = std::time::Instant::now() + PYTHON_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for python") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            // Ours, by its PID.
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "python client did not finish within {PYTHON_TIMEOUT:?}\n{}",
                gw.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (stdout, stderr) = out_reader.join().unwrap();
    let out = std::process::Output {
        status,
        stdout,
        stderr,
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed: {}\nstdout:\n{stdout}\nstderr:\n{}\ngateway log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        gw.logs()
    );
    let results: Vec<CaseResult> = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            CaseResult {
                extensions: v["extensions"].as_str().map(str::to_owned),
                compressed: v["compressed"].as_u64().unwrap(),
                plain: v["plain"].as_u64().unwrap(),
                ok: v["ok"].as_bool().unwrap(),
            }
        })
        .collect();
    assert_eq!(results.len(), cases.len(), "stdout:\n{stdout}");
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_echo_compressed_both_ways() {
    let echo = backends::echo().await;
    let gw = TestGateway::start(&config(&echo.config_addr(), "")).await;
    let cases = [
        "/deflate",
        "/deflate:cnct,snct",
        "/deflate:sbits=10,cbits=9",
        "/server-nct",
        "/client-nct",
        "/small",
        "/small:cbits=12",
        "/eight",
        "/off",
        "/deflate:off",
        // Idle between messages: the gateway frees its compressor and starts a new deflate
        // stream that the client's inflater (context kept) must read as a continuation.
        "/deflate:idle",
        "/server-nct:idle",
    ];
    let results = python_cases(&gw, &cases).await;
    let expected = [
        Some("permessage-deflate; client_max_window_bits=15"),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=15"),
        Some("permessage-deflate; server_max_window_bits=10; client_max_window_bits=9"),
        Some("permessage-deflate; server_no_context_takeover; client_max_window_bits=15"),
        Some("permessage-deflate; client_no_context_takeover; client_max_window_bits=15"),
        Some("permessage-deflate; server_max_window_bits=9; client_max_window_bits=9"),
        Some("permessage-deflate; server_max_window_bits=9; client_max_window_bits=9"),
        Some("permessage-deflate; server_max_window_bits=8; client_max_window_bits=15"),
        None,
        None,
        Some("permessage-deflate; client_max_window_bits=15"),
        Some("permessage-deflate; server_no_context_takeover; client_max_window_bits=15"),
    ];
    // Ten messages per case (deflate_client.py): two below min_compress_bytes (64).
    for ((case, r), want) in cases.iter().zip(&results).zip(expected) {
        assert!(r.ok, "{case}: an echo differed: {r:?}");
        assert_eq!(r.extensions.as_deref(), want, "{case}");
        let (compressed, plain) = match *case {
            "/small" | "/small:cbits=12" => (10, 0),
            "/eight" => (0, 10),
            // Without the extension the client's counter sees no frame at all.
            "/off" | "/deflate:off" => (0, 0),
            _ => (8, 2),
        };
        assert_eq!(
            (r.compressed, r.plain),
            (compressed, plain),
            "{case}: {r:?}"
        );
    }
}

/// A raw frame with RSV1 set (or not), masked.
fn rsv1(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    Spec {
        rsv: 0x40,
        ..Spec::new(fin, opcode, payload)
    }
    .encode()
}

const OFFER: &[(&str, &str)] = &[("Sec-WebSocket-Extensions", "permessage-deflate")];

#[tokio::test]
async fn rsv1_rules_on_hand_built_frames() {
    let echo = backends::echo().await;
    let gw = TestGateway::start(&config(&echo.config_addr(), "")).await;
    // Negotiated: RSV1 on a control frame, or on a continuation, is a protocol error.
    for bad in [
        rsv1(true, OP_PING, b"x"),
        [
            frames::frame(false, OP_TEXT, b"abc"),
            rsv1(true, OP_CONT, b"d"),
        ]
        .concat(),
    ] {
        let mut ws = RawWs::connect_with(gw.addr(), "/deflate", OFFER, &[]).await;
        assert_eq!(
            ws.response.header("sec-websocket-extensions"),
            Some("permessage-deflate")
        );
        ws.send(&bad).await;
        assert_eq!(ws.close_code().await, Some(1002));
    }
    // A route without compression does not answer the offer, and RSV1 is an error there.
    let mut ws = RawWs::connect_with(gw.addr(), "/off", OFFER, &[]).await;
    assert_eq!(ws.response.header("sec-websocket-extensions"), None);
    ws.send(&rsv1(true, OP_TEXT, b"\x4a\x04\x00")).await;
    assert_eq!(ws.close_code().await, Some(1002));
    // Not offered on a compressing route: RSV1 is an error too.
    let mut ws = RawWs::connect(gw.addr(), "/deflate").await;
    assert_eq!(ws.response.header("sec-websocket-extensions"), None);
    ws.send(&rsv1(true, OP_BINARY, b"\x4a\x04\x00")).await;
    assert_eq!(ws.close_code().await, Some(1002));
    // RSV1 on the first frame is fine: "a" deflated by hand (fixed Huffman block, 4a 04 00),
    // fragmented, echoed back uncompressed (below min_compress_bytes).
    let mut ws = RawWs::connect_with(gw.addr(), "/deflate", OFFER, &[]).await;
    ws.send(
        &[
            rsv1(false, OP_TEXT, b"\x4a"),
            frames::frame(true, OP_CONT, b"\x04\x00"),
        ]
        .concat(),
    )
    .await;
    let f = ws.next_frame().await.expect("echo");
    assert_eq!((f.opcode, f.payload.as_slice()), (OP_TEXT, &b"a"[..]));
}

/// A backend that reads and drops everything.
async fn drain() -> Backend {
    Backend::spawn(|mut s: TcpStream| async move {
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await
}

/// The Close a server sends, skipping data frames (which may be compressed, so RawWs's
/// no-RSV check does not apply). `None` if the connection ends without one.
async fn close_frame(stream: &mut TcpStream, mut buf: Vec<u8>) -> Option<ServerFrame> {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while let Some((f, used)) = parse_server_frame(&buf) {
            buf.drain(..used);
            if f.opcode == OP_CLOSE {
                return Some(f);
            }
        }
        match tokio::time::timeout(frames::IO_TIMEOUT, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            Ok(_) => return None,
            Err(_) => panic!("no Close within {:?}", frames::IO_TIMEOUT),
        }
    }
}

/// VmRSS of this process (the in-process gateway lives here).
fn rss() -> u64 {
    crate::support::procfs::rss_bytes(std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deflate_bomb_closes_with_1009_without_inflating_it() {
    // 1 MiB of zeros deflated with sync flushes; copies of it concatenated are still one valid
    // stream (each copy starts on a byte boundary), so 1024 copies inflate to 1 GiB.
    let mut c = flate2::Compress::new_with_window_bits(flate2::Compression::best(), false, 15);
    let mut chunk = Vec::with_capacity(64 * 1024);
    c.compress_vec(&vec![0u8; 1 << 20], &mut chunk, flate2::FlushCompress::Sync)
        .unwrap();
    let bomb = chunk.repeat(1024);
    assert!(bomb.len() < 2 << 20, "{}", bomb.len());

    let sink = drain().await;
    let gw = TestGateway::start(&config(
        &sink.config_addr(),
        "max_message_size = \"4MiB\"\nmax_frame_size = \"4MiB\"",
    ))
    .await;
    for path in ["/deflate", "/client-nct"] {
        let ws = RawWs::connect_with(gw.addr(), path, OFFER, &[]).await;
        let before = rss();
        let frame = rsv1(true, OP_BINARY, &bomb);
        let RawWs {
            mut stream, buf, ..
        } = ws;
        let (mut r, mut w) = stream.split();
        let send = async {
            // The gateway stops reading once it has closed: the write may fail.
            let _ = w.write_all(&frame).await;
        };
        let mut rest = buf;
        let mut chunk = vec![0u8; 64 * 1024];
        let close = async {
            loop {
                while let Some((f, used)) = parse_server_frame(&rest) {
                    rest.drain(..used);
                    if f.opcode == OP_CLOSE {
                        return Some(f);
                    }
                }
                match r.read(&mut chunk).await {
                    Ok(n) if n > 0 => rest.extend_from_slice(&chunk[..n]),
                    _ => return None,
                }
            }
        };
        let (close, ()) =
            tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(close, send) })
                .await
                .expect("the bomb was not stopped");
        let close = close.expect("a Close frame");
        assert_eq!(close.close_code(), Some(1009), "{}", close.close_reason());
        let grew = rss().saturating_sub(before);
        // The message would inflate to 1 GiB; the gateway holds at most the 4 MiB limit and
        // some buffers (the bound is wide: other tests share this process).
        assert!(grew < 128 << 20, "RSS grew by {grew} bytes");
    }
}

#[tokio::test]
async fn input_that_inflates_to_nothing_closes_with_1008() {
    let sink = drain().await;
    let gw = TestGateway::start(&config(&sink.config_addr(), "")).await;
    // Empty non-final stored blocks: 5 bytes each, no output, forever.
    let nothing = [0x00u8, 0x00, 0x00, 0xff, 0xff].repeat(20_000);
    let mut ws = RawWs::connect_with(gw.addr(), "/deflate", OFFER, &[]).await;
    ws.send(&rsv1(true, OP_TEXT, &nothing)).await;
    let buf = std::mem::take(&mut ws.buf);
    let close = close_frame(&mut ws.stream, buf).await.expect("a Close");
    assert_eq!(close.close_code(), Some(1008), "{}", close.close_reason());
}
