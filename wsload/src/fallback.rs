//! wsgate's fallback transport (README "Fallback transport"), for idle mode: a session is opened
//! with `POST` + `Wsgate-Fallback: open` and then held the way a browser without WebSocket holds
//! it: one streaming `POST` kept open (`streaming`), or long-polls one after the other
//! (`polling`). Plain `ws://` targets only (the requests go to the same host, port, path and
//! query over HTTP/1.1, one request per connection as the gateway answers them).
//!
//! Idle sessions receive no messages, so every down request acknowledges 0; the bodies (the
//! heartbeat records) are read and discarded.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::Connector;

/// How long a down request may wait for its answer's head (longer than any poll timeout).
const DOWN_HEAD_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest answer head (and `open` body) read.
const MAX_HEAD_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Streaming,
    Polling,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Streaming => "streaming",
            Transport::Polling => "polling",
        }
    }
}

/// One request on a new connection; returns the connection with the answer's head read, the
/// status and whatever of the body came with the head.
async fn request(
    c: &Connector,
    method: &str,
    verb: &str,
    extra: &str,
    head_timeout: Duration,
) -> Result<(TcpStream, u16, Vec<u8>), String> {
    let mut stream = tokio::time::timeout(c.connect_timeout, TcpStream::connect(c.target.addr))
        .await
        .map_err(|_| "fallback: connect timed out".to_string())?
        .map_err(|e| format!("fallback: connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nWsgate-Fallback: {verb}\r\n{extra}",
        c.target.path,
        c.target.host_header()
    );
    for h in c.extra_headers() {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if method == "POST" {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| format!("fallback: write: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = tokio::time::timeout(head_timeout, stream.read(&mut chunk))
            .await
            .map_err(|_| format!("fallback {verb}: no answer"))?
            .map_err(|e| format!("fallback {verb}: read: {e}"))?;
        if n == 0 {
            return Err(format!(
                "fallback {verb}: connection closed before the answer"
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(format!("fallback {verb}: answer head too large"));
        }
    };
    let status = std::str::from_utf8(&buf[..end])
        .ok()
        .and_then(|h| h.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("fallback {verb}: bad answer"))?;
    let rest = buf.split_off(end);
    Ok((stream, status, rest))
}

/// Open a session; returns its id.
pub async fn open(c: &Connector, transport: Transport) -> Result<String, String> {
    let extra = format!("Wsgate-Transport: {}\r\n", transport.name());
    let (mut stream, status, mut body) =
        request(c, "POST", "open", &extra, c.connect_timeout).await?;
    if status != 200 {
        return Err(format!("fallback open: HTTP {status}"));
    }
    // The answer ends with the connection (Connection: close) or its Content-Length.
    let mut chunk = [0u8; 1024];
    while !body.contains(&b'}') && body.len() < MAX_HEAD_BYTES {
        match tokio::time::timeout(c.connect_timeout, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => body.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| format!("fallback open: bad JSON answer: {e}"))?;
    v["session"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "fallback open: no session id in the answer".into())
}

/// Hold the session until the gateway ends it (returns then) or the caller drops the future.
pub async fn hold(c: &Connector, session: &str, transport: Transport) -> String {
    let verb = match transport {
        Transport::Streaming => "stream",
        Transport::Polling => "poll",
    };
    let extra = format!("Wsgate-Session: {session}\r\nWsgate-Ack: 0\r\n");
    let mut chunk = vec![0u8; 4096];
    loop {
        // A long-poll answers when it has something or at the gateway's poll timeout.
        let (mut stream, status, _) =
            match request(c, "POST", verb, &extra, DOWN_HEAD_TIMEOUT).await {
                Ok(x) => x,
                Err(e) => return e,
            };
        if status != 200 {
            return format!("fallback {verb}: HTTP {status}");
        }
        // Discard the body (heartbeats) until this down request ends; then make the next one.
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        // A poll ends every poll timeout, a stream when the gateway ends it: wait a little
        // before the next, as a browser's client does after an error.
        if transport == Transport::Streaming {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
