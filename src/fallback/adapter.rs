//! The in-process WebSocket client of a fallback session: the other end of the duplex pipe the
//! session's pump runs on.
//!
//! Client -> server: the records of a `send` become masked frames (messages longer than
//! `max_frame_size` are fragmented). Server -> client: frames become records in the session's
//! buffer; while the buffer is full the adapter stops reading the pipe, so the pump stops
//! reading the backend (backpressure, as with a WebSocket client that does not read). Pings are
//! answered here, by a writer of their own ([`control_writer`]) so that a send blocked by a
//! backend that does not read never stops the reader side; a Close is queued as the last record
//! and answered the same way.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf};

use super::records::{self, Kind};
use super::{Session, Up};

/// Bytes the duplex pipe holds in each direction.
pub const PIPE_BYTES: usize = 64 * 1024;

/// Read size from the pipe.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// What the reader holds while it waits with nothing buffered.
const IDLE_READ_BYTES: usize = 512;

/// RFC 6455 §5.2 opcodes the adapter writes or reads.
const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Append a masked client frame. The pipe never leaves the process, so the masking key is zero
/// (RFC 6455 §5.3 asks for an unpredictable key to protect intermediaries; there are none).
pub fn client_frame(out: &mut BytesMut, fin: bool, opcode: u8, payload: &[u8]) {
    out.reserve(14 + payload.len());
    out.extend_from_slice(&[(u8::from(fin) << 7) | opcode]);
    let len = payload.len();
    if let Some(l) = u8::try_from(len).ok().filter(|&l| l < 126) {
        out.extend_from_slice(&[0x80 | l]);
    } else if let Ok(l) = u16::try_from(len) {
        out.extend_from_slice(&[0x80 | 126]);
        out.extend_from_slice(&l.to_be_bytes());
    } else {
        out.extend_from_slice(&[0x80 | 127]);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
}

/// Append a message as client frames of at most `max_frame` payload bytes each.
pub fn client_message(out: &mut BytesMut, opcode: u8, payload: &[u8], max_frame: usize) {
    let max_frame = max_frame.max(1);
    if payload.len() <= max_frame {
        client_frame(out, true, opcode, payload);
        return;
    }
    let mut chunks = payload.chunks(max_frame).peekable();
    let mut op = opcode;
    while let Some(c) = chunks.next() {
        client_frame(out, chunks.peek().is_none(), op, c);
        op = OP_CONTINUATION;
    }
}

/// The opcode of a message record (`None` for a heartbeat, which clients never send).
pub fn opcode_of(kind: Kind) -> Option<u8> {
    match kind {
        Kind::Text => Some(OP_TEXT),
        Kind::Binary => Some(OP_BINARY),
        Kind::Close => Some(OP_CLOSE),
        Kind::Heartbeat => None,
    }
}

/// A server frame parsed from the pipe: fin, opcode, and where its payload is.
struct ServerFrame {
    fin: bool,
    opcode: u8,
    header: usize,
    len: usize,
}

/// The server frame at the start of `buf` (servers never mask), or `None` for more bytes.
fn server_frame(buf: &[u8]) -> Option<ServerFrame> {
    let b0 = *buf.first()?;
    let len7 = *buf.get(1)? & 0x7f;
    let (header, len) = match len7 {
        126 => (
            4,
            u64::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
        ),
        127 => (10, u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)),
        n => (2, u64::from(n)),
    };
    Some(ServerFrame {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        header,
        len: usize::try_from(len).unwrap_or(usize::MAX),
    })
}

/// Run the adapter's read side until the pipe closes or the session is stopped, then mark the
/// session ended.
pub async fn run(session: Arc<Session>, reader: ReadHalf<DuplexStream>) {
    tokio::select! {
        () = read_frames(&session, reader) => {}
        () = session.stop.cancelled() => {}
    }
    // Let go of the pipe: the pump sees the client gone if it did not end already.
    session.up.lock().await.writer = None;
    session.down().ended = true;
    session.notify();
    // The control writer sees the pipe gone and ends.
    session.control_ready.notify_one();
}

async fn read_frames(session: &Session, mut reader: ReadHalf<DuplexStream>) {
    let max_message = session.limits.max_message_size;
    let mut buf = BytesMut::new();
    // The message being gathered from fragments: kind and payload.
    let mut message: Option<(Kind, BytesMut)> = None;
    loop {
        while let Some(f) = server_frame(&buf) {
            if buf.len() < f.header.saturating_add(f.len) {
                // Frames from our own pump are bounded by max_frame_size; the read buffer
                // grows to hold one.
                buf.reserve(f.header + f.len - buf.len());
                break;
            }
            buf.advance(f.header);
            let payload = buf.split_to(f.len);
            match f.opcode {
                OP_PING => {
                    // Never written from here: a send blocked by a backend that does not read
                    // holds the pipe, and this side must keep reading the session meanwhile.
                    let mut pong = BytesMut::new();
                    client_frame(&mut pong, true, OP_PONG, &payload);
                    session.control().pong = Some(pong);
                    session.control_ready.notify_one();
                }
                OP_PONG => {}
                OP_CLOSE => {
                    queue(session, Kind::Close, &payload).await;
                    // RFC 6455 §5.5.1: echo the status code (unless the client closed first).
                    let mut close = BytesMut::new();
                    client_frame(&mut close, true, OP_CLOSE, payload.get(..2).unwrap_or(&[]));
                    session.control().close = Some(close);
                    session.control_ready.notify_one();
                }
                op => {
                    let kind = match op {
                        OP_TEXT => Some(Kind::Text),
                        OP_BINARY => Some(Kind::Binary),
                        _ => None,
                    };
                    match (&mut message, kind) {
                        (None, Some(k)) => message = Some((k, BytesMut::from(&payload[..]))),
                        (Some((_, m)), None)
                            if m.len() as u64 + payload.len() as u64 <= max_message =>
                        {
                            m.extend_from_slice(&payload);
                        }
                        // Our own pump sends none of these.
                        _ => return,
                    }
                    if f.fin {
                        if let Some((k, m)) = message.take() {
                            queue(session, k, &m).await;
                        }
                    }
                }
            }
        }
        // Between messages the buffer is dropped and the wait holds only a small one: an idle
        // session keeps no read chunk (the pump does the same on its side of the pipe).
        if buf.is_empty() && buf.capacity() > IDLE_READ_BYTES {
            buf = BytesMut::new();
        }
        if buf.capacity() - buf.len() < IDLE_READ_BYTES {
            buf.reserve(if buf.is_empty() {
                IDLE_READ_BYTES
            } else {
                READ_CHUNK_BYTES
            });
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Write the control frames the reader side owes the session, whenever no send holds the
/// pipe. Ends when the adapter let go of the pipe.
pub async fn control_writer(session: Arc<Session>) {
    loop {
        session.control_ready.notified().await;
        let mut up = session.up.lock().await;
        if up.writer.is_none() {
            return;
        }
        if write_control(&session, &mut up).await.is_err() {
            up.writer = None;
            up.closed = true;
            return;
        }
    }
}

/// Write the pending control frames (the caller holds the pipe): a Pong unless the client has
/// closed, the answer to the session's Close unless the client closed first.
pub async fn write_control(session: &Session, up: &mut Up) -> std::io::Result<()> {
    let frames = {
        let mut c = session.control();
        let mut frames = BytesMut::new();
        if let Some(pong) = c.pong.take().filter(|_| !up.closed) {
            frames.extend_from_slice(&pong);
        }
        if let Some(close) = c.close.take().filter(|_| !up.closed) {
            frames.extend_from_slice(&close);
            up.closed = true;
        }
        frames
    };
    if frames.is_empty() {
        return Ok(());
    }
    let w = up
        .writer
        .as_mut()
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
    w.write_all(&frames).await?;
    w.flush().await
}

/// Queue a message record, waiting for room in the buffer (a Close never waits).
async fn queue(session: &Session, kind: Kind, payload: &[u8]) {
    let mut record = BytesMut::new();
    records::encode(kind, payload, &mut record);
    let record = record.freeze();
    let mut rx = session.watch();
    loop {
        rx.borrow_and_update();
        {
            let mut d = session.down();
            // Once the session is told that the gateway drains, the messages before the Close
            // record are bounded by what the pump had in flight (it reads no more from the
            // backend).
            if kind == Kind::Close
                || session.draining.is_cancelled()
                || d.has_room(record.len(), session.limits.buffer)
            {
                d.push(record, kind == Kind::Close);
                drop(d);
                session.notify();
                return;
            }
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            () = session.draining.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_fragmented_and_frames_parse_back() {
        let mut out = BytesMut::new();
        client_message(&mut out, OP_BINARY, &[7u8; 300], 128);
        // Three masked frames: 128, 128, 44 bytes; the first is Binary, the rest Continuation.
        assert_eq!(out[0], OP_BINARY);
        assert_eq!(out[1], 0x80 | 126);
        let second = 4 + 4 + 128;
        assert_eq!(out[second], OP_CONTINUATION);
        let third = second * 2;
        assert_eq!(out[third], 0x80 | OP_CONTINUATION);
        assert_eq!(out[third + 1], 0x80 | 44);
        assert_eq!(out.len(), 8 + 128 + 8 + 128 + 6 + 44);
        let mut server = BytesMut::new();
        crate::ws::encode_frame(&mut server, crate::ws::OpCode::Text, &[1u8; 70_000]);
        let f = server_frame(&server).unwrap();
        assert_eq!(
            (f.fin, f.opcode, f.header, f.len),
            (true, OP_TEXT, 10, 70_000)
        );
        assert!(server_frame(&server[..5]).is_none());
    }
}
