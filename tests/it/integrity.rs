//! Ordering and integrity: thousands of random-size messages, randomly fragmented, with pings
//! between fragments, written in random chunk sizes and read in random chunk sizes, through a
//! recording echo backend in raw mode. Every byte must arrive once, in order, in each direction.

use crate::support;
use crate::support::frames;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use frames::{parse_server_frame, RawWs, OP_BINARY, OP_CONT, OP_PING, OP_PONG, OP_TEXT};
use support::backends;
use support::TestGateway;

const MESSAGES: usize = 2_000;
const MAX_MESSAGE_BYTES: u64 = 20 * 1024;
const SEED: u64 = 0x5eed_cafe_f00d_0001;

/// xorshift64*: reproducible randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())))
}

/// The client's byte stream (frames) and the payload bytes it carries, in order.
fn build_traffic(rng: &mut Rng) -> (Vec<u8>, Vec<u8>, usize) {
    let mut wire = Vec::new();
    let mut payload = Vec::new();
    let mut pings = 0;
    for _ in 0..MESSAGES {
        let len = rng.below(MAX_MESSAGE_BYTES + 1) as usize;
        // A quarter of the messages are (ASCII) text, the rest binary with any byte value.
        let text = rng.below(4) == 0;
        let msg: Vec<u8> = (0..len)
            .map(|_| {
                if text {
                    b' ' + rng.below(95) as u8
                } else {
                    rng.next() as u8
                }
            })
            .collect();
        // 1 to 4 fragments at random cut points (empty fragments included).
        let pieces = 1 + rng.below(4) as usize;
        let mut cuts: Vec<usize> = (1..pieces)
            .map(|_| rng.below(len as u64 + 1) as usize)
            .collect();
        cuts.sort_unstable();
        cuts.insert(0, 0);
        cuts.push(len);
        for i in 0..pieces {
            let opcode = match (i, text) {
                (0, true) => OP_TEXT,
                (0, false) => OP_BINARY,
                _ => OP_CONT,
            };
            let mask = (rng.next() as u32).to_be_bytes();
            wire.extend(frames::frame_with_mask(
                i + 1 == pieces,
                opcode,
                &msg[cuts[i]..cuts[i + 1]],
                mask,
            ));
            if i + 1 < pieces && rng.below(8) == 0 {
                // RFC 6455 §5.4: control frames may be injected between fragments.
                wire.extend(frames::frame(true, OP_PING, &(pings as u32).to_be_bytes()));
                pings += 1;
            }
        }
        payload.extend_from_slice(&msg);
    }
    (wire, payload, pings)
}

/// The gateway's configuration: a raw route `/i` to `backend`, then `extra`.
fn config(backend: &str, extra: &str) -> String {
    format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
[[route]]
path = "/i"
backend = "{backend}"
[route.limits]
# The traffic interleaves a Ping every few messages, sent as fast as the socket takes them.
control_frames_per_second = 100000
{extra}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_messages_arrive_intact_and_in_order_both_ways() {
    let rec = backends::recording_echo().await;
    let gw = TestGateway::start(&config(&rec.backend.config_addr(), "")).await;
    check(gw.addr(), rec).await;
}

/// The same traffic through the binary, where the session runs on a session thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_messages_arrive_intact_and_in_order_on_a_session_thread() {
    let rec = backends::recording_echo().await;
    let gw = support::Gateway::start(&config(
        &rec.backend.config_addr(),
        "[runtime]\nsession_threads = 1",
    ))
    .await;
    assert_eq!(gw.threads_named_settled("wsgate-session", 1).await, 1);
    check(gw.addr(), rec).await;
}

/// The same traffic on a session thread whose loop uses epoll rather than io_uring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_messages_arrive_intact_and_in_order_on_an_epoll_session_thread() {
    let rec = backends::recording_echo().await;
    let gw = support::Gateway::start(&config(
        &rec.backend.config_addr(),
        "[runtime]\nsession_threads = 1\nsession_io = \"epoll\"",
    ))
    .await;
    assert_eq!(gw.threads_named_settled("wsgate-session", 1).await, 1);
    check(gw.addr(), rec).await;
}

/// Send the random traffic through the gateway at `addr` to `rec` and check both directions.
async fn check(addr: std::net::SocketAddr, mut rec: backends::Recorder) {
    let mut rng = Rng(SEED);
    let (wire, sent, pings) = build_traffic(&mut rng);
    let ws = RawWs::connect(addr, "/i").await;
    let mut conn = rec.accept().await;
    assert!(ws.buf.is_empty());
    let (mut rd, mut wr) = ws.stream.into_split();

    let mut wrng = Rng(SEED ^ 1);
    let writer = tokio::spawn(async move {
        let mut at = 0;
        while at < wire.len() {
            let n = (1 + wrng.below(32 * 1024) as usize).min(wire.len() - at);
            wr.write_all(&wire[at..at + n]).await.expect("write");
            at += n;
        }
        wr
    });

    let total = sent.len();
    let mut rrng = Rng(SEED ^ 2);
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut got = Vec::with_capacity(total);
        let mut pongs = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let last_ping = pings.checked_sub(1).map(|p| p as u32);
        let done = |got: &Vec<u8>, pongs: &Vec<u32>| {
            got.len() >= total && pongs.last().copied() == last_ping
        };
        while !done(&got, &pongs) {
            while let Some((f, used)) = parse_server_frame(&buf) {
                buf.drain(..used);
                assert!(!f.masked && f.fin, "{f:?}");
                match f.opcode {
                    OP_BINARY => got.extend_from_slice(&f.payload),
                    OP_PONG => pongs.push(u32::from_be_bytes(f.payload.try_into().unwrap())),
                    _ => panic!("unexpected frame {f:?} after {} bytes", got.len()),
                }
            }
            if done(&got, &pongs) {
                break;
            }
            let want = 1 + rrng.below(chunk.len() as u64) as usize;
            let n = rd.read(&mut chunk[..want]).await.expect("read");
            assert!(
                n > 0,
                "connection closed after {} of {total} bytes",
                got.len()
            );
            buf.extend_from_slice(&chunk[..n]);
        }
        (got, pongs)
    });

    let (got, pongs) = tokio::time::timeout(Duration::from_secs(45), reader)
        .await
        .expect("echo did not complete in time")
        .expect("reader task");
    let _wr = writer.await.expect("writer task");

    let up = conn.wait_for_len(total).await;
    assert_eq!(up.len(), total, "client -> backend byte count");
    assert!(
        up == sent,
        "client -> backend bytes differ at offset {:?}",
        first_difference(&up, &sent)
    );
    assert_eq!(got.len(), total, "backend -> client byte count");
    assert!(
        got == sent,
        "backend -> client bytes differ at offset {:?}",
        first_difference(&got, &sent)
    );
    // RFC 6455 §5.5.3: pongs answer pings in order; when several are pending only the most
    // recent needs an answer, so the last ping is always answered.
    assert!(
        pongs.windows(2).all(|w| w[0] < w[1]),
        "pongs out of order: {pongs:?}"
    );
    assert_eq!(
        pongs.last().copied(),
        pings.checked_sub(1).map(|p| p as u32),
        "last ping answered"
    );
}
