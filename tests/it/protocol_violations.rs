//! Client frames that break RFC 6455 or the configured limits, written byte by byte: each is
//! answered by one unmasked Close with the right code, then the server closes TCP, and the
//! backend connection is shut. Also: ping -> pong with the same payload.

use crate::support;
use crate::support::frames;

use frames::{RawWs, Spec, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT};
use support::backends::{self, End, Recorder};
use support::TestGateway;

/// Small limits so that attacks end fast.
async fn setup() -> (TestGateway, Recorder) {
    let rec = backends::recorder().await;
    let gw = TestGateway::start(&format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"

[[route]]
path = "/p"
backend = "{}"

[limits]
max_message_size = 1024
max_frame_size = 1024
max_fragments = 100
close_timeout = "2s"
"#,
        rec.backend.config_addr()
    ))
    .await;
    (gw, rec)
}

/// Send a valid "ok" message, then `bad`; expect Close `code`, then FIN; the backend got "ok"
/// and nothing else, then EOF.
async fn violation_on(gw: &TestGateway, rec: &mut Recorder, bad: &[u8], code: u16) {
    violation_streamed(gw, rec, bad, code, b"").await;
}

/// Like [`violation_on`], where `bad` starts with valid fragments whose payload (`streamed`) raw
/// mode may already have passed on before the violation was seen.
async fn violation_streamed(
    gw: &TestGateway,
    rec: &mut Recorder,
    bad: &[u8],
    code: u16,
    streamed: &[u8],
) {
    let mut ws = RawWs::connect(gw.addr(), "/p").await;
    let mut conn = rec.accept().await;
    ws.send(&frames::binary(b"ok")).await;
    assert_eq!(conn.wait_for_len(2).await, b"ok");
    ws.send(bad).await;
    let (before, close) = ws.until_close().await;
    assert!(before.is_empty(), "{before:?}");
    assert!(close.fin);
    assert_eq!(
        close.close_code(),
        Some(code),
        "bad bytes {:02x?}; reason {:?}",
        &bad[..bad.len().min(16)],
        close.close_reason()
    );
    ws.expect_eof().await;
    assert_eq!(
        conn.wait_end().await,
        End::Eof,
        "the backend connection is shut after a protocol error"
    );
    let got = conn.received();
    let with_streamed = [&b"ok"[..], streamed].concat();
    assert!(
        got == b"ok" || got == with_streamed,
        "nothing of the bad frame reaches the backend: got {:?}",
        String::from_utf8_lossy(&got)
    );
}

async fn violation(bad: &[u8], code: u16) {
    let (gw, mut rec) = setup().await;
    violation_on(&gw, &mut rec, bad, code).await;
}

// ---- 1002 ----------------------------------------------------------------------------------

#[tokio::test]
async fn unmasked_frame_is_1002() {
    let bad = Spec {
        masked: false,
        ..Spec::new(true, OP_TEXT, b"hi")
    }
    .encode();
    violation(&bad, 1002).await;
}

#[tokio::test]
async fn rsv_bits_are_1002() {
    let (gw, mut rec) = setup().await;
    for rsv in [0x40, 0x20, 0x10] {
        let bad = Spec {
            rsv,
            ..Spec::new(true, OP_TEXT, b"hi")
        }
        .encode();
        violation_on(&gw, &mut rec, &bad, 1002).await;
    }
}

#[tokio::test]
async fn reserved_opcodes_are_1002() {
    let (gw, mut rec) = setup().await;
    for op in [0x3, 0x7, 0xB, 0xF] {
        violation_on(&gw, &mut rec, &frames::frame(true, op, b"x"), 1002).await;
    }
}

#[tokio::test]
async fn ping_with_126_byte_payload_is_1002() {
    violation(&frames::frame(true, OP_PING, &[7u8; 126]), 1002).await;
}

#[tokio::test]
async fn close_with_126_byte_payload_is_1002() {
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(&[b'r'; 124]);
    violation(&frames::frame(true, OP_CLOSE, &payload), 1002).await;
}

#[tokio::test]
async fn fragmented_ping_is_1002() {
    violation(&frames::frame(false, OP_PING, b"p"), 1002).await;
}

#[tokio::test]
async fn continuation_without_start_is_1002() {
    violation(&frames::frame(true, OP_CONT, b"orphan"), 1002).await;
}

#[tokio::test]
async fn new_message_inside_a_fragmented_one_is_1002() {
    let mut bad = frames::frame(false, OP_TEXT, b"part");
    bad.extend(frames::frame(true, OP_BINARY, b"intruder"));
    let (gw, mut rec) = setup().await;
    violation_streamed(&gw, &mut rec, &bad, 1002, b"part").await;
}

#[tokio::test]
async fn non_minimal_length_is_1002() {
    let bad = Spec {
        declared_len: Some(5),
        ..Spec::new(true, OP_BINARY, b"abcde")
    };
    // Re-encode the 5 with the 16-bit form by hand: 0x80|126, 0x00 0x05.
    let mut bytes = vec![0x80 | OP_BINARY, 0x80 | 126, 0, 5];
    bytes.extend_from_slice(&bad.mask);
    bytes.extend(
        b"abcde"
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ bad.mask[i % 4]),
    );
    violation(&bytes, 1002).await;
}

#[tokio::test]
async fn length_with_most_significant_bit_set_is_1002() {
    let bad = Spec {
        declared_len: Some(1 << 63),
        ..Spec::new(true, OP_BINARY, b"")
    }
    .encode();
    violation(&bad, 1002).await;
}

#[tokio::test]
async fn close_with_one_byte_payload_is_1002() {
    violation(&frames::frame(true, OP_CLOSE, &[0x03]), 1002).await;
}

#[tokio::test]
async fn close_with_invalid_codes_is_1002() {
    let (gw, mut rec) = setup().await;
    for code in [1005u16, 1006, 1015, 1004, 999, 2999, 5000] {
        violation_on(&gw, &mut rec, &frames::close(Some(code), ""), 1002).await;
    }
}

// ---- 1007 ----------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_utf8_text_is_1007() {
    violation(&frames::frame(true, OP_TEXT, b"ok \xc3\x28"), 1007).await;
}

#[tokio::test]
async fn invalid_utf8_across_fragments_is_1007() {
    // "é" split across two fragments is fine ...
    let (gw, mut rec) = setup().await;
    let mut ws = RawWs::connect(gw.addr(), "/p").await;
    let mut conn = rec.accept().await;
    let mut good = frames::frame(false, OP_TEXT, b"caf\xc3");
    good.extend(frames::frame(true, OP_CONT, b"\xa9"));
    ws.send(&good).await;
    assert_eq!(conn.wait_for_len(5).await, "café".as_bytes());
    drop(ws);
    // ... but a bad continuation byte in the next fragment is not.
    let mut bad = frames::frame(false, OP_TEXT, b"caf\xc3");
    bad.extend(frames::frame(true, OP_CONT, b"\x28"));
    violation_streamed(&gw, &mut rec, &bad, 1007, b"caf\xc3").await;
}

#[tokio::test]
async fn text_ending_inside_a_code_point_is_1007() {
    violation(&frames::frame(true, OP_TEXT, b"abc\xe2\x82"), 1007).await;
}

#[tokio::test]
async fn invalid_utf8_fails_before_the_frame_is_complete() {
    // Declare 1000 bytes, send only the first 4, the invalid ones: the Close must not wait
    // for the other 996.
    let spec = Spec {
        declared_len: Some(1000),
        ..Spec::new(true, OP_TEXT, b"\xff\xfe\xfd\xfc")
    };
    violation(&spec.encode(), 1007).await;
}

#[tokio::test]
async fn close_reason_not_utf8_is_1007() {
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"\xff");
    violation(&frames::frame(true, OP_CLOSE, &payload), 1007).await;
}

// ---- 1009 ----------------------------------------------------------------------------------

#[tokio::test]
async fn frame_declaring_2_pow_62_bytes_is_1009_at_once() {
    // Only the header is sent: the answer cannot depend on the payload arriving.
    let bad = Spec {
        declared_len: Some(1 << 62),
        ..Spec::new(true, OP_BINARY, b"")
    }
    .encode();
    violation(&bad, 1009).await;
}

#[tokio::test]
async fn frame_over_max_frame_size_is_1009() {
    let bad = Spec {
        declared_len: Some(1025),
        ..Spec::new(true, OP_BINARY, b"")
    }
    .encode();
    violation(&bad, 1009).await;
}

#[tokio::test]
async fn message_over_max_message_size_is_1009() {
    // Two frames of 600 bytes: each under max_frame_size, together over max_message_size.
    let mut bad = frames::frame(false, OP_BINARY, &[1u8; 600]);
    bad.extend(frames::frame(true, OP_CONT, &[2u8; 600]));
    let (gw, mut rec) = setup().await;
    let mut ws = RawWs::connect(gw.addr(), "/p").await;
    let mut conn = rec.accept().await;
    ws.send(&bad).await;
    let (_, close) = ws.until_close().await;
    assert_eq!(close.close_code(), Some(1009));
    ws.expect_eof().await;
    conn.wait_end().await;
    // Raw mode streams pieces as they arrive: at most the first fragment may have gone through.
    assert!(
        conn.received().len() <= 600,
        "{} bytes reached the backend",
        conn.received().len()
    );
}

#[tokio::test]
async fn endless_empty_fragments_are_1009() {
    let mut bad = frames::frame(false, OP_TEXT, b"");
    for _ in 0..200 {
        bad.extend(frames::frame(false, OP_CONT, b""));
    }
    violation(&bad, 1009).await;
}

#[tokio::test]
async fn message_at_exactly_the_limits_is_accepted() {
    let (gw, mut rec) = setup().await;
    let mut ws = RawWs::connect(gw.addr(), "/p").await;
    let mut conn = rec.accept().await;
    // 1024 bytes in one frame, and 100 fragments in one message.
    ws.send(&frames::binary(&[3u8; 1024])).await;
    let mut msg = frames::frame(false, OP_BINARY, b"a");
    for i in 1..100 {
        msg.extend(frames::frame(i == 99, OP_CONT, b"b"));
    }
    ws.send(&msg).await;
    assert_eq!(conn.wait_for_len(1124).await.len(), 1124);
    ws.send(&frames::frame(true, OP_PING, b"alive")).await;
    let f = ws.next_frame().await.expect("still open");
    assert_eq!(f.opcode, OP_PONG, "{f:?}");
}

// ---- ping ----------------------------------------------------------------------------------

#[tokio::test]
async fn ping_gets_a_pong_with_the_same_payload() {
    let (gw, mut rec) = setup().await;
    let mut ws = RawWs::connect(gw.addr(), "/p").await;
    let _conn = rec.accept().await;
    for payload in [&b""[..], b"hello", &[0xab; 125]] {
        ws.send(&frames::frame(true, OP_PING, payload)).await;
        let f = ws.next_frame().await.expect("pong");
        assert_eq!(f.opcode, OP_PONG);
        assert!(f.fin);
        assert_eq!(f.payload, payload);
    }
    // A ping between the fragments of a message is allowed and answered.
    let mut msg = frames::frame(false, OP_TEXT, b"a");
    msg.extend(frames::frame(true, OP_PING, b"mid"));
    msg.extend(frames::frame(true, OP_CONT, b"b"));
    ws.send(&msg).await;
    let f = ws.next_frame().await.expect("pong");
    assert_eq!((f.opcode, f.payload.as_slice()), (OP_PONG, &b"mid"[..]));
}
