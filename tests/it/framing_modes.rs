//! The three framing modes, both ways, with tokio-tungstenite as an independent client and a
//! recording backend: what the backend receives for each client message, what the client receives
//! for each backend byte sequence, and the close code for each framing violation.

use crate::support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use support::backends::{self, Conn, Recorder};
use support::TestGateway;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(10);

/// A gateway with a single route `/t` in `framing` mode to a fresh recorder; message limit 64 bytes.
async fn setup(framing: &str) -> (TestGateway, Recorder) {
    let rec = backends::recorder().await;
    let gw = TestGateway::start(&format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"

[[route]]
path = "/t"
backend = "{}"
framing = "{framing}"
[route.limits]
max_message_size = 64
max_frame_size = 64
"#,
        rec.backend.config_addr()
    ))
    .await;
    (gw, rec)
}

async fn open(gw: &TestGateway, rec: &mut Recorder) -> (Ws, Conn) {
    let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(gw.url("/t")))
        .await
        .expect("upgrade timed out")
        .expect("upgrade");
    assert_eq!(resp.status(), 101);
    let conn = rec.accept().await;
    (ws, conn)
}

async fn send(ws: &mut Ws, m: Message) {
    tokio::time::timeout(WAIT, ws.send(m))
        .await
        .expect("send timed out")
        .expect("send");
}

/// The next data message (panics on Close, end, or timeout).
async fn recv(ws: &mut Ws) -> Message {
    let m = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("no message within the timeout")
        .expect("stream ended")
        .expect("read");
    assert!(
        matches!(m, Message::Text(_) | Message::Binary(_)),
        "expected data, got {m:?}"
    );
    m
}

/// Messages until the server's Close; returns them and the close code.
async fn until_close(ws: &mut Ws) -> (Vec<Message>, Option<u16>) {
    let mut got = Vec::new();
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no Close within the timeout");
        match m {
            Some(Ok(Message::Close(frame))) => return (got, frame.map(|f| u16::from(f.code))),
            Some(Ok(m)) => got.push(m),
            Some(Err(e)) => panic!("read error before a Close ({e}); got {got:?}"),
            None => panic!("stream ended without a Close; got {got:?}"),
        }
    }
}

fn text(s: &str) -> Message {
    Message::text(s)
}

// ---- raw ---------------------------------------------------------------------------------------

#[tokio::test]
async fn raw_text_and_binary_payloads_become_backend_bytes() {
    let (gw, mut rec) = setup("raw").await;
    let (mut ws, mut conn) = open(&gw, &mut rec).await;
    send(&mut ws, text("héllo ")).await;
    send(&mut ws, Message::binary(vec![0u8, 1, 2, 255])).await;
    send(&mut ws, text("")).await;
    send(&mut ws, text("!")).await;
    let mut want = "héllo ".as_bytes().to_vec();
    want.extend_from_slice(&[0, 1, 2, 255]);
    want.push(b'!');
    assert_eq!(conn.wait_for_len(want.len()).await, want);
}

#[tokio::test]
async fn raw_backend_bytes_become_binary_messages() {
    let (gw, mut rec) = setup("raw").await;
    let (mut ws, conn) = open(&gw, &mut rec).await;
    conn.write(b"abc").await;
    assert_eq!(recv(&mut ws).await, Message::binary(b"abc".to_vec()));
    // A larger write arrives as binary messages whose concatenation is the bytes sent.
    let blob: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    conn.write(&blob).await;
    let mut got = Vec::new();
    while got.len() < blob.len() {
        match recv(&mut ws).await {
            Message::Binary(b) => got.extend_from_slice(&b),
            other => panic!("raw mode sends binary messages only, got {other:?}"),
        }
    }
    assert_eq!(got, blob);
}

// ---- lines -------------------------------------------------------------------------------------

#[tokio::test]
async fn lines_text_message_becomes_one_line() {
    let (gw, mut rec) = setup("lines").await;
    let (mut ws, mut conn) = open(&gw, &mut rec).await;
    send(&mut ws, text("hello")).await;
    send(&mut ws, text("")).await;
    send(&mut ws, text("wörld\r")).await;
    assert_eq!(conn.wait_for_len(15).await, "hello\n\nwörld\r\n".as_bytes());
}

#[tokio::test]
async fn lines_backend_lines_become_text_messages_and_last_partial_line_at_eof() {
    let (gw, mut rec) = setup("lines").await;
    let (mut ws, conn) = open(&gw, &mut rec).await;
    conn.write(b"a\r\nb\n\nc").await;
    conn.shutdown_write().await;
    let (got, code) = until_close(&mut ws).await;
    assert_eq!(got, vec![text("a"), text("b"), text(""), text("c")]);
    assert_eq!(code, Some(1000));
}

#[tokio::test]
async fn lines_a_line_split_across_backend_writes_is_one_message() {
    let (gw, mut rec) = setup("lines").await;
    let (mut ws, conn) = open(&gw, &mut rec).await;
    conn.write(b"hel").await;
    // A round trip on the other direction gives the gateway time to read the first piece on
    // its own; had it been delivered as a message, "hel" would arrive first below.
    send(&mut ws, text("sync")).await;
    let mut conn = conn;
    assert_eq!(conn.wait_for_len(5).await, b"sync\n");
    conn.write(b"lo\nnext\n").await;
    assert_eq!(recv(&mut ws).await, text("hello"));
    assert_eq!(recv(&mut ws).await, text("next"));
}

#[tokio::test]
async fn lines_binary_message_is_1003() {
    let (gw, mut rec) = setup("lines").await;
    let (mut ws, mut conn) = open(&gw, &mut rec).await;
    send(&mut ws, Message::binary(b"bin".to_vec())).await;
    let (_, code) = until_close(&mut ws).await;
    assert_eq!(code, Some(1003));
    conn.wait_end().await;
    assert_eq!(
        conn.received(),
        b"",
        "nothing of the refused message reaches the backend"
    );
}

#[tokio::test]
async fn lines_message_with_newline_is_1007() {
    let (gw, mut rec) = setup("lines").await;
    let (mut ws, mut conn) = open(&gw, &mut rec).await;
    send(&mut ws, text("ok")).await;
    send(&mut ws, text("a\nb")).await;
    let (_, code) = until_close(&mut ws).await;
    assert_eq!(code, Some(1007));
    conn.wait_end().await;
    assert_eq!(
        conn.received(),
        b"ok\n",
        "only the good line reaches the backend"
    );
}

#[tokio::test]
async fn lines_backend_line_longer_than_the_limit_is_1011() {
    let (gw, mut rec) = setup("lines").await;
    let (mut ws, conn) = open(&gw, &mut rec).await;
    conn.write(b"short\n").await;
    conn.write(&[b'x'; 200]).await;
    let (got, code) = until_close(&mut ws).await;
    assert_eq!(got, vec![text("short")]);
    assert_eq!(code, Some(1011));
}

#[tokio::test]
async fn lines_backend_terminated_line_one_byte_over_the_limit_is_1011() {
    let (gw, mut rec) = setup("lines").await;
    let (mut ws, conn) = open(&gw, &mut rec).await;
    let mut line = vec![b'y'; 64];
    line.extend_from_slice(b"\n");
    conn.write(&line).await;
    let mut over = vec![b'z'; 65];
    over.extend_from_slice(b"\n");
    conn.write(&over).await;
    let (got, code) = until_close(&mut ws).await;
    assert_eq!(
        got,
        vec![text(&"y".repeat(64))],
        "a line of exactly the limit is fine"
    );
    assert_eq!(code, Some(1011));
}

#[tokio::test]
async fn lines_backend_invalid_utf8_is_1011() {
    let (gw, mut rec) = setup("lines").await;
    let (mut ws, conn) = open(&gw, &mut rec).await;
    conn.write(b"fine\n\xff\xfe\n").await;
    let (got, code) = until_close(&mut ws).await;
    assert_eq!(got, vec![text("fine")]);
    assert_eq!(code, Some(1011));
}

// ---- length-prefixed ---------------------------------------------------------------------------

#[tokio::test]
async fn length_prefixed_client_messages_become_envelopes() {
    let (gw, mut rec) = setup("length-prefixed").await;
    let (mut ws, mut conn) = open(&gw, &mut rec).await;
    send(&mut ws, text("hi")).await;
    send(&mut ws, Message::binary(vec![9u8, 9, 9])).await;
    send(&mut ws, text("")).await;
    let want: Vec<u8> = [
        &[1u8, 0, 0, 0, 2, b'h', b'i'][..],
        &[2, 0, 0, 0, 3, 9, 9, 9],
        &[1, 0, 0, 0, 0],
    ]
    .concat();
    assert_eq!(conn.wait_for_len(want.len()).await, want);
}

#[tokio::test]
async fn length_prefixed_backend_envelopes_become_typed_messages() {
    let (gw, mut rec) = setup("length-prefixed").await;
    let (mut ws, conn) = open(&gw, &mut rec).await;
    // Split mid-header and mid-payload on purpose.
    conn.write(&[1, 0, 0]).await;
    conn.write(&[0, 3, b'h']).await;
    conn.write(&[b'e', b'y', 2, 0, 0, 0, 0, 2, 0, 0, 0, 2, 0])
        .await;
    conn.write(&[0xff]).await;
    assert_eq!(recv(&mut ws).await, text("hey"));
    assert_eq!(recv(&mut ws).await, Message::binary(Vec::new()));
    assert_eq!(recv(&mut ws).await, Message::binary(vec![0u8, 0xff]));
}

async fn length_prefixed_backend_violation(bytes: &[u8], then_eof: bool) {
    let (gw, mut rec) = setup("length-prefixed").await;
    let (mut ws, conn) = open(&gw, &mut rec).await;
    let mut all = vec![1u8, 0, 0, 0, 2, b'o', b'k'];
    all.extend_from_slice(bytes);
    conn.write(&all).await;
    if then_eof {
        conn.shutdown_write().await;
    }
    let (got, code) = until_close(&mut ws).await;
    assert_eq!(
        got,
        vec![text("ok")],
        "the good envelope before the bad one is delivered"
    );
    assert_eq!(code, Some(1011), "backend bytes {bytes:?}");
}

#[tokio::test]
async fn length_prefixed_unknown_type_is_1011() {
    length_prefixed_backend_violation(&[3, 0, 0, 0, 0], false).await;
}

#[tokio::test]
async fn length_prefixed_oversize_length_is_1011() {
    length_prefixed_backend_violation(&[2, 0, 0, 0, 65], false).await;
}

#[tokio::test]
async fn length_prefixed_huge_length_is_1011_without_waiting_for_the_payload() {
    length_prefixed_backend_violation(&[2, 0xff, 0xff, 0xff, 0xff], false).await;
}

#[tokio::test]
async fn length_prefixed_invalid_utf8_text_is_1011() {
    length_prefixed_backend_violation(&[1, 0, 0, 0, 2, 0xc3, 0x28], false).await;
}

#[tokio::test]
async fn length_prefixed_eof_mid_envelope_is_1011() {
    length_prefixed_backend_violation(&[2, 0, 0, 0, 10, 1, 2, 3], true).await;
}

#[tokio::test]
async fn length_prefixed_eof_mid_header_is_1011() {
    length_prefixed_backend_violation(&[2, 0], true).await;
}

#[tokio::test]
async fn length_prefixed_eof_between_envelopes_is_1000() {
    let (gw, mut rec) = setup("length-prefixed").await;
    let (mut ws, conn) = open(&gw, &mut rec).await;
    conn.write(&[2, 0, 0, 0, 1, 42]).await;
    conn.shutdown_write().await;
    let (got, code) = until_close(&mut ws).await;
    assert_eq!(got, vec![Message::binary(vec![42u8])]);
    assert_eq!(code, Some(1000));
}
