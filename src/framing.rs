//! Message <-> TCP byte stream adapters: `raw`, `lines`, `length-prefixed`.
//!
//! Owns how a WebSocket message becomes bytes for the backend ([`ToBackend`]) and how bytes from the
//! backend become messages ([`FromBackend`]), with the limits of each mode. No I/O and no frame
//! encoding: the session moves the bytes and wraps messages into frames.
//!
//! | mode            | client message -> backend             | backend bytes -> client              |
//! |-----------------|---------------------------------------|--------------------------------------|
//! | raw             | payload bytes, streamed               | each read -> one binary message      |
//! | lines           | text + `\n` (binary -> 1003)          | each line (`\n`, `\r\n`) -> text     |
//! | length-prefixed | `[type][len u32 BE][payload]`         | same envelope -> message of the type |

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Buf, BytesMut};

use crate::config::Framing;
use crate::error::{Close, Side};
use crate::ws::CloseCode;

/// Envelope type byte for a text message.
pub const ENVELOPE_TEXT: u8 = 0x01;
/// Envelope type byte for a binary message.
pub const ENVELOPE_BINARY: u8 = 0x02;
/// Envelope header: type (1 byte) + big-endian payload length (4 bytes).
pub const ENVELOPE_HEADER_BYTES: usize = 5;

/// Client message bytes are counted against the [`MessageBudget`] in steps of this many bytes,
/// so that a message growing piece by piece does not touch the shared counter for every piece.
const BUDGET_STEP_BYTES: usize = 4096;

const BUDGET_EXHAUSTED: Close = Close::new(
    CloseCode::TRY_AGAIN_LATER,
    "gateway message buffers are full (partial_message_budget)",
    Side::Gateway,
);
const BINARY_ON_LINES: Close = Close::new(
    CloseCode::UNSUPPORTED_DATA,
    "binary messages are not accepted on a lines route",
    Side::Client,
);
const NEWLINE_IN_LINE: Close = Close::new(
    CloseCode::INVALID_PAYLOAD,
    "a message on a lines route must not contain a newline",
    Side::Client,
);
const LINE_TOO_LONG: Close = Close::new(
    CloseCode::INTERNAL_ERROR,
    "backend line longer than max_message_size",
    Side::Backend,
);
const LINE_NOT_UTF8: Close = Close::new(
    CloseCode::INTERNAL_ERROR,
    "backend line is not valid UTF-8",
    Side::Backend,
);
const BAD_ENVELOPE_TYPE: Close = Close::new(
    CloseCode::INTERNAL_ERROR,
    "backend sent an unknown envelope type",
    Side::Backend,
);
const ENVELOPE_TOO_BIG: Close = Close::new(
    CloseCode::INTERNAL_ERROR,
    "backend envelope larger than max_message_size",
    Side::Backend,
);
const ENVELOPE_NOT_UTF8: Close = Close::new(
    CloseCode::INTERNAL_ERROR,
    "backend text envelope is not valid UTF-8",
    Side::Backend,
);
const ENVELOPE_TRUNCATED: Close = Close::new(
    CloseCode::INTERNAL_ERROR,
    "backend closed in the middle of an envelope",
    Side::Backend,
);

/// The gateway-wide bound on client message bytes held whole (`partial_message_budget`): on
/// `lines` and `length-prefixed` routes a message is kept until it is complete and written, so
/// without a shared bound every session could pin up to `max_message_size`. A session whose
/// next piece does not fit is closed with 1013; the others keep working.
#[derive(Debug)]
pub struct MessageBudget {
    used: AtomicU64,
    limit: AtomicU64,
}

impl MessageBudget {
    pub fn new(limit: u64) -> Arc<MessageBudget> {
        Arc::new(MessageBudget {
            used: AtomicU64::new(0),
            limit: AtomicU64::new(limit),
        })
    }

    /// A new limit (configuration reload); bytes already held stay held.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes held now, by all sessions.
    #[cfg(test)]
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, n: usize) -> bool {
        let n = n as u64;
        let limit = self.limit.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|&total| total <= limit)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n as u64, Ordering::Relaxed);
    }
}

/// Client messages -> bytes for the backend.
///
/// Pieces of a message are appended as they arrive. In `raw` mode they are ready at once; in the
/// other modes a message is held until it is complete (its envelope needs the length, and a line
/// must never reach the backend half-written), bounded by `max_message_size` through the decoder.
#[derive(Debug)]
pub struct ToBackend {
    framing: Framing,
    buf: BytesMut,
    /// Bytes at the front of `buf` that are complete and may be written.
    ready: usize,
    /// Where the message in progress starts in `buf` (its envelope header, in length-prefixed mode).
    msg_start: usize,
    /// Where held bytes are counted; `None` in `raw` mode, which holds nothing back.
    budget: Option<Arc<MessageBudget>>,
    /// Bytes taken from `budget` for this session (at least `buf.len()`).
    reserved: usize,
}

impl ToBackend {
    pub fn new(framing: Framing, budget: &Arc<MessageBudget>) -> ToBackend {
        ToBackend {
            framing,
            buf: BytesMut::new(),
            ready: 0,
            msg_start: 0,
            budget: (framing != Framing::Raw).then(|| budget.clone()),
            reserved: 0,
        }
    }

    /// Count `more` bytes about to be held against the budget, before they are stored.
    fn hold(&mut self, more: usize) -> Result<(), Close> {
        let Some(budget) = &self.budget else {
            return Ok(());
        };
        let held = self.buf.len() + more;
        if held > self.reserved {
            let step = (held - self.reserved).next_multiple_of(BUDGET_STEP_BYTES);
            if !budget.take(step) {
                return Err(BUDGET_EXHAUSTED);
            }
            self.reserved += step;
        }
        Ok(())
    }

    /// Give back what is reserved beyond what `buf` holds (rounded up to a step).
    fn release_excess(&mut self) {
        if let Some(budget) = &self.budget {
            let keep = self.buf.len().next_multiple_of(BUDGET_STEP_BYTES);
            if self.reserved > keep {
                budget.give(self.reserved - keep);
                self.reserved = keep;
            }
        }
    }

    /// A new message starts.
    pub fn begin(&mut self, text: bool) -> Result<(), Close> {
        self.msg_start = self.buf.len();
        match self.framing {
            Framing::Raw => {}
            Framing::Lines if !text => return Err(BINARY_ON_LINES),
            Framing::Lines => {}
            Framing::LengthPrefixed => {
                self.hold(ENVELOPE_HEADER_BYTES)?;
                let kind = if text { ENVELOPE_TEXT } else { ENVELOPE_BINARY };
                self.buf.extend_from_slice(&[kind, 0, 0, 0, 0]);
            }
        }
        Ok(())
    }

    /// The next piece of the message in progress.
    pub fn push(&mut self, piece: &[u8]) -> Result<(), Close> {
        if self.framing == Framing::Lines && memchr::memchr(b'\n', piece).is_some() {
            return Err(NEWLINE_IN_LINE);
        }
        // Lines mode adds its `\n` at the end: counted with the last piece's step or the next.
        self.hold(piece.len() + usize::from(self.framing == Framing::Lines))?;
        self.buf.extend_from_slice(piece);
        if self.framing == Framing::Raw {
            self.ready = self.buf.len();
        }
        Ok(())
    }

    /// The message in progress is complete.
    pub fn end(&mut self) {
        match self.framing {
            Framing::Raw => {}
            Framing::Lines => self.buf.extend_from_slice(b"\n"),
            Framing::LengthPrefixed => {
                let len = self.buf.len() - self.msg_start - ENVELOPE_HEADER_BYTES;
                // The decoder bounds messages by max_message_size, which config keeps <= u32::MAX.
                let len = u32::try_from(len).unwrap_or(u32::MAX);
                self.buf[self.msg_start + 1..self.msg_start + ENVELOPE_HEADER_BYTES]
                    .copy_from_slice(&len.to_be_bytes());
            }
        }
        self.ready = self.buf.len();
    }

    /// Pieces go to the backend as they come (`raw`), not held until the message is complete.
    pub fn streamed(&self) -> bool {
        self.framing == Framing::Raw
    }

    /// The message just completed by [`end`](Self::end), as a session recording keeps it (valid
    /// until the next [`consume`](Self::consume)): the line with its `\n`, or the envelope's
    /// payload (the header is implied by the kind and the length). Not for `raw`, whose pieces
    /// are recorded as they are pushed.
    pub fn last_message(&self) -> &[u8] {
        let header = match self.framing {
            Framing::LengthPrefixed => ENVELOPE_HEADER_BYTES,
            Framing::Raw | Framing::Lines => 0,
        };
        self.buf.get(self.msg_start + header..).unwrap_or_default()
    }

    /// Complete bytes waiting to be written to the backend.
    pub fn ready(&self) -> &[u8] {
        &self.buf[..self.ready]
    }

    /// `n` bytes of [`ready`](Self::ready) were written.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.ready);
        self.buf.advance(n);
        self.ready -= n;
        self.msg_start = self.msg_start.saturating_sub(n);
        self.release_excess();
    }

    /// Drop everything not yet written (the backend is gone).
    pub fn discard(&mut self) {
        self.buf.clear();
        self.ready = 0;
        self.msg_start = 0;
        self.release_excess();
    }
}

impl Drop for ToBackend {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.give(self.reserved);
        }
    }
}

/// One message from the backend, borrowed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub text: bool,
    pub payload: &'a [u8],
}

/// Backend bytes -> client messages.
#[derive(Debug)]
pub struct FromBackend {
    framing: Framing,
    max_message_size: usize,
    /// Bytes to remove from the front of the buffer before looking for the next message.
    consume: usize,
    /// Lines mode: bytes at the front of the buffer already searched for `\n`.
    scanned: usize,
}

impl FromBackend {
    pub fn new(framing: Framing, max_message_size: u64) -> FromBackend {
        FromBackend {
            framing,
            max_message_size: usize::try_from(max_message_size).unwrap_or(usize::MAX),
            consume: 0,
            scanned: 0,
        }
    }

    /// The backend bytes of the message [`next`](Self::next) last returned, as a session
    /// recording keeps them (`buf` is the buffer given to `next`, not changed since): the read
    /// itself (`raw`), the line with its terminator (`lines`), or the envelope's payload
    /// (`length-prefixed`: the header is implied by the kind and the length).
    pub fn last_backend_bytes<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        let from = match self.framing {
            Framing::LengthPrefixed => ENVELOPE_HEADER_BYTES,
            Framing::Raw | Framing::Lines => 0,
        };
        buf.get(from..self.consume).unwrap_or_default()
    }

    /// The next complete message at the front of `buf`, if any. Bytes of the message returned by
    /// the previous call are removed first. `eof` says the backend will send nothing more: a last
    /// line without `\n` is then a message, and a partial envelope is an error.
    pub fn next<'b>(
        &mut self,
        buf: &'b mut BytesMut,
        eof: bool,
    ) -> Result<Option<Message<'b>>, Close> {
        buf.advance(std::mem::take(&mut self.consume));
        if buf.is_empty() {
            return Ok(None);
        }
        match self.framing {
            Framing::Raw => {
                self.consume = buf.len();
                Ok(Some(Message {
                    text: false,
                    payload: &buf[..],
                }))
            }
            Framing::Lines => self.next_line(buf, eof),
            Framing::LengthPrefixed => self.next_envelope(buf, eof),
        }
    }

    fn next_line<'b>(
        &mut self,
        buf: &'b mut BytesMut,
        eof: bool,
    ) -> Result<Option<Message<'b>>, Close> {
        let (line_len, consumed) = match memchr::memchr(b'\n', &buf[self.scanned..]) {
            Some(i) => {
                let end = self.scanned + i;
                let line_len = if end > 0 && buf[end - 1] == b'\r' {
                    end - 1
                } else {
                    end
                };
                (line_len, end + 1)
            }
            None if eof => (buf.len(), buf.len()),
            None => {
                self.scanned = buf.len();
                // The terminator may still come; the line so far must already fit (`\r` aside).
                if buf.len() > self.max_message_size.saturating_add(1) {
                    return Err(LINE_TOO_LONG);
                }
                return Ok(None);
            }
        };
        self.scanned = 0;
        if line_len > self.max_message_size {
            return Err(LINE_TOO_LONG);
        }
        let line = &buf[..line_len];
        if std::str::from_utf8(line).is_err() {
            return Err(LINE_NOT_UTF8);
        }
        self.consume = consumed;
        Ok(Some(Message {
            text: true,
            payload: &buf[..line_len],
        }))
    }

    fn next_envelope<'b>(
        &mut self,
        buf: &'b mut BytesMut,
        eof: bool,
    ) -> Result<Option<Message<'b>>, Close> {
        if buf.len() < ENVELOPE_HEADER_BYTES {
            return if eof {
                Err(ENVELOPE_TRUNCATED)
            } else {
                Ok(None)
            };
        }
        let text = match buf[0] {
            ENVELOPE_TEXT => true,
            ENVELOPE_BINARY => false,
            _ => return Err(BAD_ENVELOPE_TYPE),
        };
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > self.max_message_size {
            return Err(ENVELOPE_TOO_BIG);
        }
        let total = ENVELOPE_HEADER_BYTES + len;
        if buf.len() < total {
            if eof {
                return Err(ENVELOPE_TRUNCATED);
            }
            // The size was checked above: room for the whole envelope is bounded.
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let payload = &buf[ENVELOPE_HEADER_BYTES..total];
        if text && std::str::from_utf8(payload).is_err() {
            return Err(ENVELOPE_NOT_UTF8);
        }
        self.consume = total;
        Ok(Some(Message {
            text,
            payload: &buf[ENVELOPE_HEADER_BYTES..total],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(
        mode: Framing,
        max: u64,
        input: &[&[u8]],
        eof: bool,
    ) -> Result<Vec<(bool, Vec<u8>)>, Close> {
        let mut f = FromBackend::new(mode, max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for (i, chunk) in input.iter().enumerate() {
            buf.extend_from_slice(chunk);
            let last = eof && i + 1 == input.len();
            while let Some(m) = f.next(&mut buf, last)? {
                out.push((m.text, m.payload.to_vec()));
            }
        }
        Ok(out)
    }

    #[test]
    fn budget_bounds_held_messages_and_is_given_back() {
        let budget = MessageBudget::new(3 * BUDGET_STEP_BYTES as u64);
        let mut a = ToBackend::new(Framing::Lines, &budget);
        let mut b = ToBackend::new(Framing::LengthPrefixed, &budget);
        a.begin(true).unwrap();
        a.push(&[b'x'; 5000]).unwrap();
        assert_eq!(budget.used(), 2 * BUDGET_STEP_BYTES as u64);
        b.begin(false).unwrap();
        b.push(&[0; 100]).unwrap();
        assert_eq!(budget.used(), 3 * BUDGET_STEP_BYTES as u64);
        // The budget is full: the next piece that needs a new step is refused...
        assert_eq!(a.push(&[b'y'; 4000]), Err(BUDGET_EXHAUSTED));
        // ...and a session that gives its bytes back makes room for the others.
        drop(b);
        a.push(&[b'y'; 4000]).unwrap();
        a.end();
        let n = a.ready().len();
        a.consume(n);
        assert_eq!(budget.used(), 0);
        // Raw routes hold nothing back and count nothing.
        let mut r = ToBackend::new(Framing::Raw, &budget);
        r.begin(false).unwrap();
        r.push(&[0; 100_000]).unwrap();
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn to_backend_raw_streams() {
        let mut t = ToBackend::new(Framing::Raw, &MessageBudget::new(u64::MAX));
        t.begin(true).unwrap();
        t.push(b"he").unwrap();
        assert_eq!(t.ready(), b"he");
        t.consume(2);
        t.push(b"llo").unwrap();
        t.end();
        t.begin(false).unwrap();
        t.push(&[0, 1]).unwrap();
        t.end();
        assert_eq!(t.ready(), b"llo\x00\x01");
    }

    #[test]
    fn to_backend_lines() {
        let mut t = ToBackend::new(Framing::Lines, &MessageBudget::new(u64::MAX));
        t.begin(true).unwrap();
        t.push(b"from client: ").unwrap();
        assert_eq!(t.ready(), b"", "a partial line is never written");
        t.push(b"hello").unwrap();
        t.end();
        t.begin(true).unwrap();
        t.end();
        assert_eq!(t.ready(), b"from client: hello\n\n");
        assert_eq!(
            t.begin(false).unwrap_err().code,
            CloseCode::UNSUPPORTED_DATA
        );
        let mut t = ToBackend::new(Framing::Lines, &MessageBudget::new(u64::MAX));
        t.begin(true).unwrap();
        assert_eq!(
            t.push(b"a\nb").unwrap_err().code,
            CloseCode::INVALID_PAYLOAD
        );
    }

    #[test]
    fn to_backend_length_prefixed() {
        let mut t = ToBackend::new(Framing::LengthPrefixed, &MessageBudget::new(u64::MAX));
        t.begin(false).unwrap();
        t.push(&[9, 9]).unwrap();
        assert_eq!(t.ready(), b"");
        t.push(&[9]).unwrap();
        t.end();
        t.begin(true).unwrap();
        t.end();
        assert_eq!(t.ready(), [2, 0, 0, 0, 3, 9, 9, 9, 1, 0, 0, 0, 0]);
        // Consuming part of the ready bytes keeps the message in progress intact.
        t.consume(4);
        t.begin(true).unwrap();
        t.push(b"x").unwrap();
        t.end();
        assert_eq!(t.ready(), [3, 9, 9, 9, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1, b'x']);
    }

    #[test]
    fn from_backend_raw() {
        let got = collect(Framing::Raw, 10, &[b"abc", b"", b"de"], false).unwrap();
        assert_eq!(got, vec![(false, b"abc".to_vec()), (false, b"de".to_vec())]);
    }

    #[test]
    fn from_backend_lines_split_and_crlf() {
        let got = collect(
            Framing::Lines,
            100,
            &[b"wor", b"ld\r\n\nnext", b" line\nlast"],
            true,
        )
        .unwrap();
        let want: Vec<(bool, Vec<u8>)> = ["world", "", "next line", "last"]
            .iter()
            .map(|s| (true, s.as_bytes().to_vec()))
            .collect();
        assert_eq!(got, want);
        let no_eof = collect(Framing::Lines, 100, &[b"a\nb"], false).unwrap();
        assert_eq!(no_eof, vec![(true, b"a".to_vec())]);
    }

    #[test]
    fn from_backend_lines_limits() {
        assert_eq!(
            collect(Framing::Lines, 4, &[b"12345"], false).unwrap(),
            vec![]
        );
        assert_eq!(
            collect(Framing::Lines, 4, &[b"123456"], false).unwrap_err(),
            LINE_TOO_LONG
        );
        assert_eq!(
            collect(Framing::Lines, 4, &[b"12345\n"], false).unwrap_err(),
            LINE_TOO_LONG
        );
        assert_eq!(
            collect(Framing::Lines, 4, &[b"1234\r\n"], false).unwrap(),
            vec![(true, b"1234".to_vec())]
        );
        assert_eq!(
            collect(Framing::Lines, 9, &[b"\xff\n"], false).unwrap_err(),
            LINE_NOT_UTF8
        );
    }

    #[test]
    fn from_backend_envelopes() {
        let input: &[&[u8]] = &[
            &[1, 0, 0],
            &[0, 2, b'h', b'i', 2, 0, 0, 0, 0, 2, 0],
            &[0, 0, 1, 7],
        ];
        let got = collect(Framing::LengthPrefixed, 10, input, true).unwrap();
        assert_eq!(
            got,
            vec![(true, b"hi".to_vec()), (false, vec![]), (false, vec![7])]
        );
    }

    #[test]
    fn from_backend_bad_envelopes() {
        let e =
            |input: &[u8], eof| collect(Framing::LengthPrefixed, 10, &[input], eof).unwrap_err();
        assert_eq!(e(&[3, 0, 0, 0, 0], false), BAD_ENVELOPE_TYPE);
        assert_eq!(e(&[1, 0, 0, 0, 11], false), ENVELOPE_TOO_BIG);
        assert_eq!(e(&[1, 0xff, 0xff, 0xff, 0xff], false), ENVELOPE_TOO_BIG);
        assert_eq!(e(&[1, 0, 0, 0, 1, 0xff], false), ENVELOPE_NOT_UTF8);
        assert_eq!(e(&[2, 0, 0, 0, 2, 0], true), ENVELOPE_TRUNCATED);
        assert_eq!(e(&[2, 0], true), ENVELOPE_TRUNCATED);
        for c in [
            BAD_ENVELOPE_TYPE,
            ENVELOPE_TOO_BIG,
            ENVELOPE_NOT_UTF8,
            ENVELOPE_TRUNCATED,
        ] {
            assert_eq!(c.code, CloseCode::INTERNAL_ERROR);
        }
    }
}
