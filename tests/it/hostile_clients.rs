//! Bounded cost for hostile clients: a ping flood is cut with 1008 instead of keeping a core
//! busy, and unfinished messages on routes that keep messages whole share one gateway-wide
//! budget (`partial_message_budget`): the session that would overrun it is closed with 1013 and
//! the others keep working.

use crate::support;
use crate::support::frames;

use std::time::Duration;

use frames::{RawWs, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT};
use support::backends;
use support::TestGateway;

const LOG_WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_ping_flood_is_closed_with_1008() {
    let rec = backends::recorder().await;
    let gw = TestGateway::one_route("/p", &rec.backend.config_addr(), "").await;
    let mut ws = RawWs::connect(gw.addr(), "/p").await;
    // 10,000 Pings in one go: the default allows 100 a second (and a burst of 100).
    let mut flood = Vec::new();
    for i in 0..10_000u32 {
        flood.extend(frames::frame(true, OP_PING, &i.to_be_bytes()));
    }
    ws.send(&flood).await;
    let mut pongs = 0;
    let close = loop {
        let f = ws.next_frame().await.expect("a Close before the end");
        match f.opcode {
            OP_PONG => pongs += 1,
            OP_CLOSE => break f,
            op => panic!("unexpected frame {op}"),
        }
    };
    assert_eq!(close.close_code(), Some(1008));
    assert_eq!(
        close.close_reason(),
        "too many control frames (control_frames_per_second)"
    );
    assert!(pongs <= 100, "{pongs} pings were answered");
    // The client closes its end once it has the Close; the session ends and is logged.
    drop(ws);
    gw.wait_for_log("close_code=1008", LOG_WAIT).await;
}

// Virtual time: the refill is exact, and the wait costs nothing.
#[tokio::test(start_paused = true)]
async fn pings_within_the_rate_are_all_answered() {
    let rec = backends::recorder().await;
    let gw = TestGateway::one_route(
        "/p",
        &rec.backend.config_addr(),
        "control_frames_per_second = 20",
    )
    .await;
    let mut ws = RawWs::connect(gw.addr(), "/p").await;
    // A burst of 20, then one more after 100 ms (two tokens came back by then).
    for i in 0..20u8 {
        ws.send(&frames::frame(true, OP_PING, &[i])).await;
        let f = ws.next_frame().await.unwrap();
        assert_eq!((f.opcode, f.payload.as_slice()), (OP_PONG, &[i][..]));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    ws.send(&frames::frame(true, OP_PING, b"more")).await;
    let f = ws.next_frame().await.unwrap();
    assert_eq!((f.opcode, f.payload.as_slice()), (OP_PONG, &b"more"[..]));
    // Going over the burst closes it.
    for _ in 0..25 {
        ws.send(&frames::frame(true, OP_PING, b"x")).await;
    }
    assert_eq!(ws.close_code().await, Some(1008));
}

/// The first frame of a text message that is not finished.
fn unfinished(len: usize) -> Vec<u8> {
    frames::frame(false, OP_TEXT, &vec![b'a'; len])
}

#[tokio::test]
async fn unfinished_messages_share_one_budget_and_the_session_over_it_gets_1013() {
    let mut rec = backends::recorder().await;
    let gw = TestGateway::start(&format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
[[route]]
path = "/lines"
backend = "{}"
framing = "lines"
[limits]
partial_message_budget = "64KiB"
"#,
        rec.backend.config_addr()
    ))
    .await;
    let mut a = RawWs::connect(gw.addr(), "/lines").await;
    let mut a_conn = rec.accept().await;
    let mut b = RawWs::connect(gw.addr(), "/lines").await;
    let mut b_conn = rec.accept().await;
    // A holds 40 KiB of an unfinished line; B's 40 KiB do not fit beside it.
    a.send(&unfinished(40 * 1024)).await;
    // A's bytes are held before B's arrive: a Ping's Pong comes after its frame was taken.
    a.send(&frames::frame(true, OP_PING, b"sync")).await;
    assert_eq!(a.next_frame().await.unwrap().opcode, OP_PONG);
    b.send(&unfinished(40 * 1024)).await;
    let (_, close) = b.until_close().await;
    assert_eq!(close.close_code(), Some(1013));
    assert_eq!(
        close.close_reason(),
        "gateway message buffers are full (partial_message_budget)"
    );
    // B's backend connection ends and saw nothing of the unfinished line.
    b_conn.wait_end().await;
    assert!(b_conn.received().is_empty());
    // A is unaffected: its line completes and reaches the backend whole.
    a.send(&frames::frame(true, OP_CONT, b"z")).await;
    let got = a_conn.wait_for_len(40 * 1024 + 2).await;
    assert_eq!(got.len(), 40 * 1024 + 2);
    assert!(got.ends_with(b"az\n"));
    // With A's line written the budget is free again: a new session may hold as much.
    let mut c = RawWs::connect(gw.addr(), "/lines").await;
    let mut c_conn = rec.accept().await;
    c.send(&unfinished(40 * 1024)).await;
    c.send(&frames::frame(true, OP_CONT, b"!")).await;
    c_conn.wait_for_len(40 * 1024 + 2).await;
    gw.wait_for_log("close_code=1013", LOG_WAIT).await;
}
