//! Slow peers: a backend that never reads stalls the client, a client that never reads stalls
//! the backend, and in both cases the gateway's memory stays flat (measured as the process's
//! resident set size). A write that stays stalled for idle_timeout ends the session.

use crate::support;
use crate::support::frames;

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use frames::{RawWs, OP_BINARY, OP_PING};
use support::backends;
use support::Gateway;

const MIB: u64 = 1024 * 1024;
/// What a test tries to push through a stalled path.
const PUSH_LIMIT: u64 = 256 * MIB;
/// How much the gateway's resident memory may grow while it is being pushed.
const RSS_GROWTH_LIMIT: u64 = 64 * MIB;
/// A write that makes no progress for this long counts as stalled.
const STALL: Duration = Duration::from_secs(1);

async fn gateway(backend: &str, limits: &str) -> Gateway {
    Gateway::one_route("/bp", backend, limits).await
}

#[tokio::test]
async fn backend_that_never_reads_stalls_the_client_with_flat_memory() {
    let sink = backends::sink().await;
    let gw = gateway(&sink.config_addr(), "").await;
    let mut ws = RawWs::connect(gw.addr(), "/bp").await;
    let before = gw.rss_bytes();
    let frame = frames::frame(true, OP_BINARY, &vec![0xa5u8; 64 * 1024]);
    let mut pushed = 0u64;
    let stalled = loop {
        if pushed >= PUSH_LIMIT {
            break false;
        }
        match tokio::time::timeout(STALL, ws.stream.write_all(&frame)).await {
            Ok(Ok(())) => pushed += frame.len() as u64,
            Ok(Err(e)) => panic!("the gateway dropped the connection after {pushed} bytes: {e}"),
            Err(_) => break true,
        }
    };
    let grown = gw.rss_bytes().saturating_sub(before);
    assert!(
        stalled,
        "pushed {} MiB without the client ever being slowed down",
        pushed / MIB
    );
    assert!(
        grown < RSS_GROWTH_LIMIT,
        "gateway RSS grew by {} MiB after {} MiB were pushed at a backend that never reads",
        grown / MIB,
        pushed / MIB
    );
    assert_eq!(sink.connections_made().await, 1);
}

#[tokio::test]
async fn client_that_never_reads_stalls_the_backend_with_flat_memory() {
    let mut flood = backends::flood(64 * 1024, STALL).await;
    let gw = gateway(&flood.backend.config_addr(), "").await;
    // The client upgrades and then never reads.
    let _ws = RawWs::connect(gw.addr(), "/bp").await;
    let before = gw.rss_bytes();
    // Flooding at loopback speed reaches PUSH_LIMIT well within this bound if nothing stalls it.
    let stalled_at = flood.stalled(Duration::from_secs(30)).await;
    let grown = gw.rss_bytes().saturating_sub(before);
    let stalled_at = stalled_at.unwrap_or_else(|| {
        panic!(
            "the backend's writes never stalled ({} MiB written)",
            flood.written() / MIB
        )
    });
    assert!(
        stalled_at < PUSH_LIMIT,
        "stalled only after {} MiB",
        stalled_at / MIB
    );
    assert!(
        grown < RSS_GROWTH_LIMIT,
        "gateway RSS grew by {} MiB while a backend flooded a client that never reads ({} MiB written)",
        grown / MIB,
        stalled_at / MIB
    );
}

#[tokio::test]
async fn client_that_never_reads_is_cut_after_write_timeout() {
    let mut flood = backends::flood(64 * 1024, STALL).await;
    let gw = gateway(&flood.backend.config_addr(), "write_timeout = \"2s\"").await;
    let mut ws = RawWs::connect(gw.addr(), "/bp").await;
    flood
        .stalled(Duration::from_secs(30))
        .await
        .expect("the backend's writes stall first");
    // The client still does not read; the gateway gives up on it and drops the backend too.
    let failed = flood.write_failed(Duration::from_secs(15)).await;
    assert!(failed.is_some(), "the stalled session was never ended");
    // The client connection is cut as well (it sees EOF or a reset after the buffered data).
    let mut sink = Vec::new();
    frames::read_to_end(&mut ws.stream, &mut sink, Duration::from_secs(15)).await;
    gw.wait_for_log("client stopped reading", Duration::from_secs(10))
        .await;
}

#[tokio::test]
async fn backend_that_stops_reading_ends_the_session_with_1011_after_write_timeout() {
    let sink = backends::sink().await;
    let gw = gateway(&sink.config_addr(), "write_timeout = \"2s\"").await;
    let mut ws = RawWs::connect(gw.addr(), "/bp").await;
    let frame = frames::frame(true, OP_BINARY, &vec![0x3cu8; 64 * 1024]);
    let mut pushed = 0u64;
    loop {
        assert!(pushed < PUSH_LIMIT, "never stalled");
        match tokio::time::timeout(STALL, ws.stream.write_all(&frame)).await {
            Ok(Ok(())) => pushed += frame.len() as u64,
            Ok(Err(e)) => panic!("the gateway dropped the connection after {pushed} bytes: {e}"),
            Err(_) => break,
        }
    }
    // The client keeps reading: it gets the Close.
    let (before, close) = ws.until_close().await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(close.close_code(), Some(1011));
}

#[tokio::test]
async fn ping_flood_from_a_client_that_never_reads_keeps_memory_flat() {
    let sink = backends::sink().await;
    let gw = gateway(&sink.config_addr(), "").await;
    let mut ws = RawWs::connect(gw.addr(), "/bp").await;
    let before = gw.rss_bytes();
    // 512 pings of 125 bytes per write; the pongs are never read.
    let batch: Vec<u8> = (0..512)
        .flat_map(|_| frames::frame(true, OP_PING, &[0x77; 125]))
        .collect();
    let mut pushed = 0u64;
    while pushed < 48 * MIB {
        match tokio::time::timeout(STALL, ws.stream.write_all(&batch)).await {
            Ok(Ok(())) => pushed += batch.len() as u64,
            Ok(Err(e)) => panic!("the gateway dropped the connection after {pushed} bytes: {e}"),
            // Stalling the pinger is also a fine answer.
            Err(_) => break,
        }
    }
    let grown = gw.rss_bytes().saturating_sub(before);
    assert!(
        grown < 16 * MIB,
        "gateway RSS grew by {} MiB after {} MiB of pings whose pongs are never read",
        grown / MIB,
        pushed / MIB
    );
}
