//! WebSocket framing (RFC 6455 §5): the streaming decoder for frames received from a client and
//! the header encoder for frames the server sends.
//!
//! Owns: header parsing and every per-frame and per-message rule a server must enforce on what
//! a client sends (masking, RSV bits, opcodes, length encoding, control frame rules,
//! fragmentation order, size limits, UTF-8 of text messages, Close bodies), and the mapping of
//! each violation to a close code (1002, 1007 or 1009).
//! Does not own: I/O or buffering (the caller owns the `BytesMut` and reads into it), replying
//! to Ping or Close, reassembling messages (data is handed out in pieces as it arrives), or
//! inflating compressed messages ([`super::deflate`]). RSV1 is accepted only when
//! permessage-deflate was negotiated ([`Decoder::with_compression`]); RSV2 and RSV3 always fail.
//!
//! The decoder never allocates: it parses the header in place, unmasks the payload in place
//! and hands out slices of the caller's buffer. Size limits are checked as soon as a header's
//! length field has arrived, before any of the payload is read.

use bytes::{Buf, BytesMut};

use crate::ws::close::{parse_close_payload, CloseCode, CloseFrame};
use crate::ws::mask::apply_mask;
use crate::ws::utf8::Utf8Validator;

/// Frame opcodes defined by RFC 6455 §5.2 (all others are reserved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<OpCode> {
        match bits {
            0x0 => Some(OpCode::Continuation),
            0x1 => Some(OpCode::Text),
            0x2 => Some(OpCode::Binary),
            0x8 => Some(OpCode::Close),
            0x9 => Some(OpCode::Ping),
            0xA => Some(OpCode::Pong),
            _ => None,
        }
    }

    /// RFC 6455 §5.5: control frames are those whose opcode has the most significant bit set.
    fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Largest header a server frame needs: 2 + 8 (servers never mask).
pub const MAX_SERVER_HEADER_BYTES: usize = 10;

/// Write the header of an unmasked server frame into `out`, return how many bytes were used
/// (2, 4 or 10). Uses the minimal length encoding (RFC 6455 §5.2).
///
/// `payload_len` must be below 2^63 (RFC 6455 §5.2: the most significant bit is 0), which
/// any payload held in memory is.
pub fn encode_header(
    fin: bool,
    opcode: OpCode,
    payload_len: u64,
    out: &mut [u8; MAX_SERVER_HEADER_BYTES],
) -> usize {
    debug_assert!(payload_len >> 63 == 0, "payload length must be < 2^63");
    // RFC 6455 §5.2: FIN, RSV1-3 = 0 (no extension), opcode.
    out[0] = (u8::from(fin) << 7) | opcode as u8;
    // RFC 6455 §5.1: a server MUST NOT mask, so the MASK bit is 0 and there is no key.
    // RFC 6455 §5.2: the minimal number of bytes MUST be used to encode the length.
    if let Some(len) = u8::try_from(payload_len).ok().filter(|&l| l < 126) {
        out[1] = len;
        2
    } else if let Ok(len) = u16::try_from(payload_len) {
        out[1] = 126;
        let [hi, lo] = len.to_be_bytes();
        out[2] = hi;
        out[3] = lo;
        4
    } else {
        out[1] = 127;
        let be = payload_len.to_be_bytes();
        out[2..10].copy_from_slice(&be);
        10
    }
}

/// Append one unmasked, unfragmented server frame (header and payload) to `out`.
pub fn encode_frame(out: &mut BytesMut, opcode: OpCode, payload: &[u8]) {
    let mut header = [0u8; MAX_SERVER_HEADER_BYTES];
    let n = encode_header(true, opcode, payload.len() as u64, &mut header);
    out.reserve(n + payload.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
}

/// The total length (header and payload) of the unmasked server frame at the start of `buf`,
/// as written by [`encode_header`]; `None` when `buf` does not hold its whole header. Used to
/// find frame boundaries in a queue of outgoing frames.
pub fn server_frame_len(buf: &[u8]) -> Option<usize> {
    let len7 = *buf.get(1)? & 0x7F;
    let (header, payload) = match len7 {
        126 => (
            4,
            u64::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
        ),
        127 => (10, u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)),
        n => (2, u64::from(n)),
    };
    usize::try_from(payload).ok()?.checked_add(header)
}

/// A [`Frame`] that owns its bytes, for callers that collect frames (tests, the fuzz targets);
/// the gateway itself works on the borrowed form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedFrame {
    Data {
        payload: Vec<u8>,
        text: bool,
        first: bool,
        last: bool,
    },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// The Close frame's code (as a number) and reason, if it had a body.
    Close(Option<(u16, String)>),
}

impl Frame<'_> {
    pub fn to_owned_frame(&self) -> OwnedFrame {
        match *self {
            Frame::Data {
                payload,
                text,
                first,
                last,
            } => OwnedFrame::Data {
                payload: payload.to_vec(),
                text,
                first,
                last,
            },
            Frame::Ping(p) => OwnedFrame::Ping(p.to_vec()),
            Frame::Pong(p) => OwnedFrame::Pong(p.to_vec()),
            Frame::Close(c) => OwnedFrame::Close(c.map(|c| (c.code.get(), c.reason.to_string()))),
        }
    }
}

/// Size limits the decoder enforces (RFC 6455 §10.4); exceeding any of them fails the
/// connection with 1009 (RFC 6455 §7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderLimits {
    /// Payload bytes of one data frame; larger -> 1009. (Control frames are bounded by the
    /// protocol's own 125-byte limit instead.)
    pub max_frame_size: u64,
    /// Payload bytes of one (possibly fragmented) message; larger -> 1009.
    pub max_message_size: u64,
    /// Frames in one message (the first frame counts); more -> 1009.
    pub max_fragments: u64,
}

/// Why the connection must be failed, with the close code to send (1002, 1007 or 1009) and a
/// short human-readable reason (<= 123 bytes, ASCII) for the Close frame and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (close code {code})")]
pub struct ProtocolError {
    pub code: CloseCode,
    pub reason: &'static str,
}

const fn protocol_error(reason: &'static str) -> ProtocolError {
    ProtocolError {
        code: CloseCode::PROTOCOL_ERROR,
        reason,
    }
}

const fn too_big(reason: &'static str) -> ProtocolError {
    ProtocolError {
        code: CloseCode::MESSAGE_TOO_BIG,
        reason,
    }
}

const RSV_SET: ProtocolError = protocol_error("reserved bits set without a negotiated extension");
const RSV1_ON_CONTROL: ProtocolError = protocol_error("RSV1 set on a control frame");
const RSV1_ON_CONTINUATION: ProtocolError = protocol_error("RSV1 set on a continuation frame");
const RESERVED_OPCODE: ProtocolError = protocol_error("reserved opcode");
const UNMASKED: ProtocolError = protocol_error("client frame is not masked");
const CONTROL_FRAGMENTED: ProtocolError = protocol_error("fragmented control frame");
const CONTROL_TOO_LONG: ProtocolError = protocol_error("control frame payload longer than 125");
const LENGTH_MSB_SET: ProtocolError = protocol_error("64-bit payload length has its top bit set");
const NON_MINIMAL_LENGTH: ProtocolError =
    protocol_error("payload length not in its minimal encoding");
const UNEXPECTED_CONTINUATION: ProtocolError =
    protocol_error("continuation frame without a message in progress");
const EXPECTED_CONTINUATION: ProtocolError =
    protocol_error("new data frame while a fragmented message is in progress");
const FRAME_TOO_BIG: ProtocolError = too_big("frame too big");
const MESSAGE_TOO_BIG: ProtocolError = too_big("message too big");
const TOO_MANY_FRAGMENTS: ProtocolError = too_big("message has too many fragments");
const INVALID_UTF8: ProtocolError = ProtocolError {
    code: CloseCode::INVALID_PAYLOAD,
    reason: "text message is not valid UTF-8",
};

/// One decoded item. Payload slices borrow the caller's buffer and are already unmasked.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A piece of a data message. `first` is true on the first piece of a new message (the
    /// first piece of its first frame), `last` is true on the final piece of the message (end
    /// of a FIN frame). `text` tells the message type (also on continuation frames). Text
    /// pieces have been fed to the incremental UTF-8 validator already; when `last` is true the
    /// whole message has been validated. Every frame yields at least one Data item, even when
    /// its payload is empty (so empty messages and empty fragments are visible); a frame whose
    /// payload arrives over several reads yields several pieces, as the bytes arrive
    /// (streaming: the decoder never waits for a whole data frame).
    Data {
        payload: &'a [u8],
        text: bool,
        first: bool,
        last: bool,
    },
    /// Control frames are only returned once complete (their payload is <= 125 bytes).
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// A Close frame; its payload was validated with parse_close_payload. After a Close, the
    /// decoder returns Ok(None) for ever and discards whatever input follows (RFC 6455 §5.5.1).
    Close(Option<CloseFrame<'a>>),
}

/// A fully received, validated frame header.
#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    /// RSV1: the message is compressed (permessage-deflate).
    compressed: bool,
    opcode: OpCode,
    payload_len: u64,
    mask: [u8; 4],
    /// Bytes of header on the wire (6, 8 or 14: client frames always carry a key).
    header_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Ping,
    Pong,
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for (the rest of) a frame header at the front of the buffer.
    Header,
    /// Inside the payload of a data frame whose header has been consumed.
    Payload {
        remaining: u64,
        /// Position in the frame payload of the next byte (for the masking key phase).
        offset: u64,
        mask: [u8; 4],
        fin: bool,
    },
    /// A Close frame was returned; everything after it is discarded.
    Closed,
    /// The connection must be failed; the error is returned for ever.
    Failed(ProtocolError),
}

/// Streaming, allocation-free decoder of the frames a client sends (RFC 6455 §5).
#[derive(Debug, Clone)]
pub struct Decoder {
    limits: DecoderLimits,
    state: State,
    /// Bytes at the front of the caller's buffer that belong to the item returned last.
    consumed: usize,
    /// A data message has started and its last piece has not been returned yet.
    in_message: bool,
    /// Type of the message in progress.
    message_text: bool,
    /// Sum of the declared payload lengths of the message's frames so far.
    message_len: u64,
    /// Number of frames of the message so far.
    message_frames: u64,
    /// The next Data piece is the first of its message.
    first_piece_pending: bool,
    /// The next Data piece is the first of its frame.
    frame_start_pending: bool,
    /// The piece returned last was the first of its frame.
    piece_starts_frame: bool,
    utf8: Utf8Validator,
    /// permessage-deflate was negotiated: RSV1 marks a compressed message.
    compression: bool,
    /// The message in progress (or the last one) is compressed.
    message_compressed: bool,
}

impl Decoder {
    pub fn new(limits: DecoderLimits) -> Self {
        Decoder {
            limits,
            state: State::Header,
            consumed: 0,
            in_message: false,
            message_text: false,
            message_len: 0,
            message_frames: 0,
            first_piece_pending: false,
            frame_start_pending: false,
            piece_starts_frame: false,
            utf8: Utf8Validator::new(),
            compression: false,
            message_compressed: false,
        }
    }

    /// Accept RSV1 on the first frame of a data message (permessage-deflate, RFC 7692 §6).
    /// The payload of such a message is handed out compressed and not checked as UTF-8 (the
    /// inflater does it); its size limits are checked on the inflated size by the inflater,
    /// and here only against the work guard's bound on compressed input
    /// ([`super::deflate::WORK_RATIO`] times the limit plus [`super::deflate::WORK_ALLOWANCE_BYTES`]).
    pub fn with_compression(mut self, on: bool) -> Self {
        self.compression = on;
        self
    }

    /// The message in progress (or, after its last piece, the message just ended) was sent
    /// compressed (RSV1 on its first frame).
    pub fn message_compressed(&self) -> bool {
        self.message_compressed
    }

    /// The piece returned last was the first piece of its frame.
    pub fn piece_starts_frame(&self) -> bool {
        self.piece_starts_frame
    }

    /// True while a data message is in progress: from its first frame until its last piece
    /// (the end of its FIN frame) has been returned. Between the fragments of a fragmented
    /// message this is always true; it is also true while the payload of a single unfragmented
    /// frame is still streaming in.
    pub fn in_message(&self) -> bool {
        self.in_message
    }

    /// Decode the next item from the front of `buf` (bytes received from the client).
    ///
    /// Before anything else, it removes from the front of `buf` the bytes that belonged to the
    /// item it returned on the previous call (header + the payload piece), so the caller just
    /// calls decode again after handling an item, and appends newly read bytes at the END of
    /// `buf` (e.g. `read_buf`) only after decode returned `Ok(None)`. `Ok(None)` = need more
    /// bytes (short input is not an error: nothing is lost, a partial header stays in `buf`).
    /// Unmasks in place (apply_mask with the running offset).
    /// Errors are final: after an `Err` the decoder keeps returning the same `Err`.
    pub fn decode<'b>(
        &mut self,
        buf: &'b mut BytesMut,
    ) -> Result<Option<Frame<'b>>, ProtocolError> {
        match self.state {
            State::Failed(e) => return Err(e),
            State::Closed => {
                // RFC 6455 §5.5.1: after sending (here: receiving) a Close frame, the endpoint
                // does not process any more data.
                buf.clear();
                self.consumed = 0;
                return Ok(None);
            }
            State::Header | State::Payload { .. } => {}
        }
        let consumed = std::mem::take(&mut self.consumed).min(buf.len());
        buf.advance(consumed);

        // Where the payload piece starts in `buf`.
        let mut start = 0;
        if self.state == State::Header {
            let header = match self.parse_header(buf) {
                Ok(Some(header)) => header,
                Ok(None) => return Ok(None),
                Err(e) => return Err(self.fail(e)),
            };
            let control = match header.opcode {
                OpCode::Ping => Some(Control::Ping),
                OpCode::Pong => Some(Control::Pong),
                OpCode::Close => Some(Control::Close),
                OpCode::Continuation | OpCode::Text | OpCode::Binary => None,
            };
            if let Some(kind) = control {
                return self.control_frame(kind, header, buf);
            }
            self.start_data_frame(&header);
            start = header.header_len;
        }

        let State::Payload {
            remaining,
            offset,
            mask,
            fin,
        } = self.state
        else {
            // Unreachable: the state is Payload here, whether it was already or was just set.
            return Ok(None);
        };
        let available = buf.len().saturating_sub(start);
        let take = usize::try_from(remaining).map_or(available, |r| r.min(available));
        if take == 0 && remaining > 0 {
            // Nothing of the payload yet: drop the header (it lives on in `self.state`) and
            // wait for more bytes.
            buf.advance(start.min(buf.len()));
            return Ok(None);
        }
        let bytes: &'b mut [u8] = buf.as_mut();
        let Some(piece) = bytes.get_mut(start..start + take) else {
            // Unreachable: start + take <= buf.len() by construction.
            return Ok(None);
        };
        // RFC 6455 §5.3: unmask with the key phase of this piece's position in the frame.
        apply_mask(piece, mask, (offset & 3) as usize);
        let piece: &'b [u8] = piece;

        let remaining = remaining - take as u64;
        let last = remaining == 0 && fin;
        if self.message_text && !self.message_compressed {
            // RFC 6455 §8.1: invalid UTF-8 in a text message fails the connection (1007), as
            // soon as it is seen, even before the rest of the frame has arrived.
            if self.utf8.feed(piece).is_err() {
                return Err(self.fail(INVALID_UTF8));
            }
            // RFC 6455 §8.1: a message ending inside a code point is not valid UTF-8.
            if last && self.utf8.finish().is_err() {
                return Err(self.fail(INVALID_UTF8));
            }
        }
        self.state = if remaining == 0 {
            State::Header
        } else {
            State::Payload {
                remaining,
                offset: offset.wrapping_add(take as u64),
                mask,
                fin,
            }
        };
        if last {
            self.in_message = false;
        }
        let first = std::mem::replace(&mut self.first_piece_pending, false);
        self.piece_starts_frame = std::mem::replace(&mut self.frame_start_pending, false);
        self.consumed = start + take;
        Ok(Some(Frame::Data {
            payload: piece,
            text: self.message_text,
            first,
            last,
        }))
    }

    fn fail(&mut self, e: ProtocolError) -> ProtocolError {
        self.state = State::Failed(e);
        e
    }

    /// Parse and validate the frame header at the front of `b`. `Ok(None)` if it is not
    /// complete yet. Every check is made as soon as the bytes it needs are there, so a bad
    /// header fails without waiting for the rest of it.
    fn parse_header(&self, b: &[u8]) -> Result<Option<Header>, ProtocolError> {
        let Some(&b0) = b.first() else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        // RFC 6455 §5.2: RSV1-3 MUST be 0 unless an extension defining them was negotiated;
        // the only one wsgate negotiates is permessage-deflate, which defines RSV1 alone.
        if b0 & 0x30 != 0 || (b0 & 0x40 != 0 && !self.compression) {
            return Err(RSV_SET);
        }
        let compressed = b0 & 0x40 != 0;
        // RFC 6455 §5.2: opcodes 0x3-0x7 and 0xB-0xF are reserved; an unknown opcode fails
        // the connection.
        let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(RESERVED_OPCODE)?;
        let control = opcode.is_control();
        // RFC 7692 §6.1: RSV1 only on the first frame of a data message; control frames and
        // continuation frames never carry it.
        if compressed && control {
            return Err(RSV1_ON_CONTROL);
        }
        if compressed && opcode == OpCode::Continuation {
            return Err(RSV1_ON_CONTINUATION);
        }
        if control {
            // RFC 6455 §5.5: control frames MUST NOT be fragmented.
            if !fin {
                return Err(CONTROL_FRAGMENTED);
            }
        } else if opcode == OpCode::Continuation {
            // RFC 6455 §5.4: a continuation frame only continues a fragmented message.
            if !self.in_message {
                return Err(UNEXPECTED_CONTINUATION);
            }
        } else if self.in_message {
            // RFC 6455 §5.4: the fragments of one message MUST NOT be interleaved with another
            // message (only control frames may come in between).
            return Err(EXPECTED_CONTINUATION);
        }

        let Some(&b1) = b.get(1) else {
            return Ok(None);
        };
        // RFC 6455 §5.1: a client MUST mask all frames it sends to the server, and the server
        // MUST close the connection on an unmasked frame (§5.3: MASK bit set, 4-byte key).
        if b1 & 0x80 == 0 {
            return Err(UNMASKED);
        }
        let len7 = b1 & 0x7F;
        // RFC 6455 §5.5: control frames MUST have a payload length of 125 bytes or less (so
        // they always use the 7-bit length form).
        if control && len7 > 125 {
            return Err(CONTROL_TOO_LONG);
        }
        let (payload_len, key_at) = match len7 {
            126 => {
                let Some(&[hi, lo]) = b.get(2..4) else {
                    return Ok(None);
                };
                let len = u16::from_be_bytes([hi, lo]);
                // RFC 6455 §5.2: the minimal number of bytes MUST be used to encode the length.
                if len < 126 {
                    return Err(NON_MINIMAL_LENGTH);
                }
                (u64::from(len), 4)
            }
            127 => {
                let Some(be) = b.get(2..10).and_then(|s| <[u8; 8]>::try_from(s).ok()) else {
                    return Ok(None);
                };
                let len = u64::from_be_bytes(be);
                // RFC 6455 §5.2: in the 64-bit form the most significant bit MUST be 0.
                if len >> 63 != 0 {
                    return Err(LENGTH_MSB_SET);
                }
                // RFC 6455 §5.2: the minimal number of bytes MUST be used to encode the length.
                if len <= 0xFFFF {
                    return Err(NON_MINIMAL_LENGTH);
                }
                (len, 10)
            }
            short => (u64::from(short), 2),
        };
        if !control {
            // Limits are enforced from the declared length, before any payload is read.
            let message_compressed = if opcode == OpCode::Continuation {
                self.message_compressed
            } else {
                compressed
            };
            self.check_limits(opcode, payload_len, message_compressed)?;
        }
        let Some(mask) = b
            .get(key_at..key_at + 4)
            .and_then(|s| <[u8; 4]>::try_from(s).ok())
        else {
            return Ok(None);
        };
        Ok(Some(Header {
            fin,
            compressed,
            opcode,
            payload_len,
            mask,
            header_len: key_at + 4,
        }))
    }

    /// RFC 6455 §10.4: an implementation SHOULD limit frame and message sizes; §7.4.1: 1009
    /// is the code for a message too big to process.
    /// A compressed message's wire size is bounded by what the work guard allows for the
    /// limit's worth of output; its inflated size is checked by the inflater.
    fn check_limits(
        &self,
        opcode: OpCode,
        payload_len: u64,
        compressed: bool,
    ) -> Result<(), ProtocolError> {
        let (len_so_far, frames_so_far) = if opcode == OpCode::Continuation {
            (self.message_len, self.message_frames)
        } else {
            (0, 0)
        };
        let wire = |limit: u64| {
            if compressed {
                limit
                    .saturating_mul(super::deflate::WORK_RATIO)
                    .saturating_add(super::deflate::WORK_ALLOWANCE_BYTES)
            } else {
                limit
            }
        };
        if payload_len > wire(self.limits.max_frame_size) {
            return Err(FRAME_TOO_BIG);
        }
        if len_so_far.saturating_add(payload_len) > wire(self.limits.max_message_size) {
            return Err(MESSAGE_TOO_BIG);
        }
        if frames_so_far.saturating_add(1) > self.limits.max_fragments {
            return Err(TOO_MANY_FRAGMENTS);
        }
        Ok(())
    }

    /// Account for a validated data frame header and enter its payload.
    fn start_data_frame(&mut self, header: &Header) {
        if header.opcode != OpCode::Continuation {
            self.in_message = true;
            self.message_text = header.opcode == OpCode::Text;
            self.message_len = 0;
            self.message_frames = 0;
            self.first_piece_pending = true;
            self.message_compressed = header.compressed;
            self.utf8.reset();
        }
        self.frame_start_pending = true;
        // No overflow: check_limits bounded both by the limits.
        self.message_len = self.message_len.saturating_add(header.payload_len);
        self.message_frames = self.message_frames.saturating_add(1);
        self.state = State::Payload {
            remaining: header.payload_len,
            offset: 0,
            mask: header.mask,
            fin: header.fin,
        };
    }

    /// Return a control frame once it is complete in `buf` (<= 125 bytes of payload, so it is
    /// cheap to wait for it whole and to re-parse its header meanwhile).
    fn control_frame<'b>(
        &mut self,
        kind: Control,
        header: Header,
        buf: &'b mut BytesMut,
    ) -> Result<Option<Frame<'b>>, ProtocolError> {
        // payload_len <= 125 was checked in parse_header.
        let Ok(payload_len) = usize::try_from(header.payload_len) else {
            return Err(CONTROL_TOO_LONG);
        };
        let end = header.header_len + payload_len;
        let bytes: &'b mut [u8] = buf.as_mut();
        let Some(payload) = bytes.get_mut(header.header_len..end) else {
            return Ok(None);
        };
        // RFC 6455 §5.3: unmask the (whole) payload.
        apply_mask(payload, header.mask, 0);
        let payload: &'b [u8] = payload;
        self.consumed = end;
        match kind {
            Control::Ping => Ok(Some(Frame::Ping(payload))),
            Control::Pong => Ok(Some(Frame::Pong(payload))),
            // RFC 6455 §5.5.1, §7.1.5, §7.4: validate the code and the UTF-8 reason.
            Control::Close => match parse_close_payload(payload) {
                Ok(close) => {
                    self.state = State::Closed;
                    Ok(Some(Frame::Close(close)))
                }
                Err(e) => Err(self.fail(e)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::mask::apply_mask_bytewise;

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn mask(&mut self) -> [u8; 4] {
            let b = self.next().to_le_bytes();
            [b[0], b[1], b[2], b[3]]
        }
    }

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A masked client frame, with the minimal length form for `payload`.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xFFFF {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        let start = out.len();
        out.extend_from_slice(payload);
        apply_mask_bytewise(&mut out[start..], mask, 0);
        out
    }

    fn limits() -> DecoderLimits {
        DecoderLimits {
            max_frame_size: 1 << 24,
            max_message_size: 1 << 26,
            max_fragments: 1000,
        }
    }

    type Item = OwnedFrame;

    fn to_item(f: Frame<'_>) -> Item {
        f.to_owned_frame()
    }

    fn data(payload: &[u8], text: bool, first: bool, last: bool) -> Item {
        OwnedFrame::Data {
            payload: payload.to_vec(),
            text,
            first,
            last,
        }
    }

    /// Feed `input` in chunks whose sizes `chunk` picks, decoding after each, until the input
    /// is exhausted and the decoder wants more. Returns the items and how it ended.
    fn run(
        dec: &mut Decoder,
        input: &[u8],
        mut chunk: impl FnMut() -> usize,
    ) -> (Vec<Item>, Result<(), ProtocolError>) {
        let mut buf = BytesMut::new();
        let mut pos = 0;
        let mut items = Vec::new();
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => items.push(to_item(f)),
                Ok(None) => {
                    if pos >= input.len() {
                        return (items, Ok(()));
                    }
                    let n = chunk().clamp(1, input.len() - pos);
                    buf.extend_from_slice(&input[pos..pos + n]);
                    pos += n;
                }
                Err(e) => return (items, Err(e)),
            }
        }
    }

    fn run_whole(input: &[u8]) -> (Vec<Item>, Result<(), ProtocolError>) {
        let mut dec = Decoder::new(limits());
        let len = input.len();
        run(&mut dec, input, || len)
    }

    fn error_code(input: &[u8]) -> Option<u16> {
        run_whole(input).1.err().map(|e| e.code.get())
    }

    /// Join the Data pieces of each frame/message; keeps control frames as they are.
    fn merge(items: &[Item]) -> Vec<Item> {
        let mut out: Vec<Item> = Vec::new();
        let mut cur: Option<(Vec<u8>, bool)> = None;
        for item in items {
            match item {
                OwnedFrame::Data {
                    payload,
                    text,
                    first,
                    last,
                } => {
                    if *first {
                        assert!(cur.is_none(), "first piece inside a message");
                        cur = Some((Vec::new(), *text));
                    }
                    let (buf, t) = cur.as_mut().expect("piece outside a message");
                    assert_eq!(*t, *text, "text flag changed within a message");
                    buf.extend_from_slice(payload);
                    if *last {
                        let (buf, t) = cur.take().unwrap();
                        out.push(data(&buf, t, true, true));
                    }
                }
                other => out.push(other.clone()),
            }
        }
        assert!(cur.is_none(), "unfinished message");
        out
    }

    #[test]
    fn encode_header_rfc_examples() {
        let mut h = [0u8; MAX_SERVER_HEADER_BYTES];
        // RFC 6455 §5.7: unmasked "Hello".
        assert_eq!(encode_header(true, OpCode::Text, 5, &mut h), 2);
        assert_eq!(&h[..2], &[0x81, 0x05]);
        // 256 bytes binary message in a single unmasked frame.
        assert_eq!(encode_header(true, OpCode::Binary, 256, &mut h), 4);
        assert_eq!(&h[..4], &[0x82, 0x7E, 0x01, 0x00]);
        // 64KiB binary message in a single unmasked frame.
        assert_eq!(encode_header(true, OpCode::Binary, 65536, &mut h), 10);
        assert_eq!(
            &h[..10],
            &[0x82, 0x7F, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00]
        );
        // Unmasked ping / pong "Hello" headers.
        assert_eq!(encode_header(true, OpCode::Ping, 5, &mut h), 2);
        assert_eq!(&h[..2], &[0x89, 0x05]);
        assert_eq!(encode_header(true, OpCode::Pong, 5, &mut h), 2);
        assert_eq!(&h[..2], &[0x8A, 0x05]);
        // Fragment headers: "Hel" (no FIN) then "lo" continuation.
        assert_eq!(encode_header(false, OpCode::Text, 3, &mut h), 2);
        assert_eq!(&h[..2], &[0x01, 0x03]);
        assert_eq!(encode_header(true, OpCode::Continuation, 2, &mut h), 2);
        assert_eq!(&h[..2], &[0x80, 0x02]);
    }

    #[test]
    fn encode_header_length_boundaries() {
        let mut h = [0u8; MAX_SERVER_HEADER_BYTES];
        for (len, used) in [
            (0u64, 2),
            (125, 2),
            (126, 4),
            (0xFFFF, 4),
            (0x1_0000, 10),
            ((1 << 63) - 1, 10),
        ] {
            assert_eq!(encode_header(true, OpCode::Binary, len, &mut h), used);
            let decoded = match used {
                2 => u64::from(h[1]),
                4 => {
                    assert_eq!(h[1], 126);
                    u64::from(u16::from_be_bytes([h[2], h[3]]))
                }
                _ => {
                    assert_eq!(h[1], 127);
                    u64::from_be_bytes(h[2..10].try_into().unwrap())
                }
            };
            assert_eq!(decoded, len);
            assert_eq!(h[1] & 0x80, 0, "server frames are never masked");
        }
    }

    #[test]
    fn server_frame_len_reads_back_encode_header() {
        let mut h = [0u8; MAX_SERVER_HEADER_BYTES];
        for len in [0u64, 1, 125, 126, 127, 0xFFFF, 0x1_0000, 1 << 40] {
            let used = encode_header(true, OpCode::Binary, len, &mut h);
            let total = usize::try_from(len).unwrap() + used;
            assert_eq!(server_frame_len(&h[..used]), Some(total));
            // A header cut short is not a length.
            assert_eq!(server_frame_len(&h[..used - 1]), None);
        }
    }

    #[test]
    fn rfc_5_7_masked_hello() {
        let input = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(input.to_vec(), client_frame(true, 0x1, b"Hello", KEY));
        let (items, end) = run_whole(&input);
        assert_eq!(end, Ok(()));
        assert_eq!(items, vec![data(b"Hello", true, true, true)]);
    }

    #[test]
    fn rfc_5_7_masked_pong_and_unmasked_examples() {
        // Masked Pong "Hello" (the RFC's example, as a client would send it).
        let pong = [
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(
            run_whole(&pong).0,
            vec![OwnedFrame::Pong(b"Hello".to_vec())]
        );
        // The unmasked examples are what a server sends; from a client they are errors.
        assert_eq!(
            error_code(&[0x81, 0x05, b'H', b'e', b'l', b'l', b'o']),
            Some(1002)
        );
        assert_eq!(error_code(&[0x01, 0x03, b'H', b'e', b'l']), Some(1002));
        assert_eq!(
            error_code(&[0x89, 0x05, b'H', b'e', b'l', b'l', b'o']),
            Some(1002)
        );
    }

    #[test]
    fn basic_data_and_control_frames() {
        let mut input = client_frame(true, 0x2, &[0, 1, 2, 255], KEY);
        input.extend(client_frame(true, 0x9, b"ping!", [1, 2, 3, 4]));
        input.extend(client_frame(true, 0xA, b"", [5, 6, 7, 8]));
        input.extend(client_frame(true, 0x1, b"", [9, 9, 9, 9]));
        let (items, end) = run_whole(&input);
        assert_eq!(end, Ok(()));
        assert_eq!(
            items,
            vec![
                data(&[0, 1, 2, 255], false, true, true),
                OwnedFrame::Ping(b"ping!".to_vec()),
                OwnedFrame::Pong(Vec::new()),
                data(b"", true, true, true),
            ]
        );
    }

    #[test]
    fn unmasked_client_frame_is_rejected() {
        // RFC 6455 §5.1: fails as soon as the second header byte arrives.
        let mut dec = Decoder::new(limits());
        let mut buf = BytesMut::from(&[0x82u8][..]);
        assert_eq!(dec.decode(&mut buf), Ok(None));
        buf.extend_from_slice(&[0x05]);
        assert_eq!(dec.decode(&mut buf).unwrap_err().code, 1002);
        assert_eq!(error_code(&[0x88, 0x00]), Some(1002));
    }

    #[test]
    fn rsv_bits_are_rejected() {
        for rsv in [0x40u8, 0x20, 0x10, 0x70] {
            for op in [0x0u8, 0x1, 0x2, 0x8, 0x9, 0xA] {
                let mut f = client_frame(true, op, b"", KEY);
                f[0] |= rsv;
                // The first byte alone is enough.
                assert_eq!(error_code(&f[..1]), Some(1002), "rsv {rsv:x} op {op:x}");
                assert_eq!(error_code(&f), Some(1002));
            }
        }
    }

    fn compressing() -> Decoder {
        Decoder::new(limits()).with_compression(true)
    }

    #[test]
    fn rsv1_with_compression_only_on_the_first_data_frame() {
        // RSV1 on a text frame: a compressed message, handed out as is (no UTF-8 check).
        let mut f = client_frame(false, 0x1, b"\xff\xfe", KEY);
        f[0] |= 0x40;
        let mut cont = client_frame(true, 0x0, b"\xfd", KEY);
        let mut input = f.clone();
        input.extend_from_slice(&cont);
        let mut dec = compressing();
        let (items, end) = run(&mut dec, &input, || 1000);
        assert_eq!(end, Ok(()));
        assert_eq!(merge(&items), vec![data(b"\xff\xfe\xfd", true, true, true)]);
        assert!(dec.message_compressed());
        // RSV1 on the continuation: 1002.
        cont[0] |= 0x40;
        let mut input = f.clone();
        input.extend_from_slice(&cont);
        let (_, end) = run(&mut compressing(), &input, || 1000);
        assert_eq!(end.unwrap_err().reason, "RSV1 set on a continuation frame");
        // RSV1 on control frames: 1002; RSV2/RSV3 still fail.
        for op in [0x8u8, 0x9, 0xA] {
            let mut f = client_frame(true, op, b"", KEY);
            f[0] |= 0x40;
            let (_, end) = run(&mut compressing(), &f, || 100);
            assert_eq!(end.unwrap_err(), RSV1_ON_CONTROL);
        }
        for rsv in [0x20u8, 0x10, 0x60] {
            let mut f = client_frame(true, 0x2, b"", KEY);
            f[0] |= rsv;
            let (_, end) = run(&mut compressing(), &f, || 100);
            assert_eq!(end.unwrap_err(), RSV_SET);
        }
        // An uncompressed message on a compressing session is checked as before.
        let (_, end) = run(
            &mut compressing(),
            &client_frame(true, 0x1, b"\xff", KEY),
            || 9,
        );
        assert_eq!(end.unwrap_err().code, 1007);
    }

    #[test]
    fn compressed_frames_are_bounded_by_the_work_guard_on_the_wire() {
        let lim = DecoderLimits {
            max_frame_size: 1000,
            max_message_size: 1000,
            max_fragments: 10,
        };
        let bound =
            1000 * super::super::deflate::WORK_RATIO + super::super::deflate::WORK_ALLOWANCE_BYTES;
        let ok = vec![0u8; usize::try_from(bound).unwrap()];
        let mut f = client_frame(true, 0x2, &ok, KEY);
        f[0] |= 0x40;
        let mut dec = Decoder::new(lim).with_compression(true);
        assert_eq!(run(&mut dec, &f, || 100_000).1, Ok(()));
        let mut f = client_frame(true, 0x2, &[ok.as_slice(), b"x"].concat(), KEY);
        f[0] |= 0x40;
        let mut dec = Decoder::new(lim).with_compression(true);
        assert_eq!(run(&mut dec, &f, || 100_000).1.unwrap_err().code, 1009);
    }

    #[test]
    fn reserved_opcodes_are_rejected() {
        for op in (0x3u8..=0x7).chain(0xB..=0xF) {
            let f = client_frame(true, op, b"x", KEY);
            assert_eq!(error_code(&f[..1]), Some(1002), "opcode {op:x}");
            assert_eq!(error_code(&f), Some(1002), "opcode {op:x}");
        }
    }

    #[test]
    fn length_forms_decode() {
        for len in [0usize, 1, 125, 126, 127, 1000, 0xFFFF, 0x1_0000, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let f = client_frame(true, 0x2, &payload, KEY);
            let (items, end) = run_whole(&f);
            assert_eq!(end, Ok(()));
            assert_eq!(items, vec![data(&payload, false, true, true)], "len {len}");
        }
    }

    #[test]
    fn non_minimal_lengths_are_rejected() {
        // 16-bit form carrying 125 (and 0).
        for len in [0u16, 5, 125] {
            let mut f = vec![0x82, 0x80 | 126];
            f.extend_from_slice(&len.to_be_bytes());
            // Rejected before the key arrives.
            assert_eq!(error_code(&f), Some(1002), "{len}");
        }
        // 64-bit form carrying <= 0xFFFF.
        for len in [0u64, 125, 126, 0xFFFF] {
            let mut f = vec![0x82, 0x80 | 127];
            f.extend_from_slice(&len.to_be_bytes());
            assert_eq!(error_code(&f), Some(1002), "{len}");
        }
        // Minimal forms at the boundaries are fine (header only, no payload yet).
        let mut f = vec![0x82, 0x80 | 126];
        f.extend_from_slice(&126u16.to_be_bytes());
        f.extend_from_slice(&KEY);
        assert_eq!(error_code(&f), None);
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&0x1_0000u64.to_be_bytes());
        f.extend_from_slice(&KEY);
        assert_eq!(error_code(&f), None);
    }

    #[test]
    fn length_with_top_bit_is_rejected() {
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(error_code(&f), Some(1002));
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(error_code(&f), Some(1002));
    }

    #[test]
    fn control_frame_rules() {
        for op in [0x8u8, 0x9, 0xA] {
            // RFC 6455 §5.5: 125 is fine for ping/pong.
            if op != 0x8 {
                let f = client_frame(true, op, &[b'p'; 125], KEY);
                assert_eq!(error_code(&f), None);
            }
            // 126 bytes: the 16-bit length form is already an error (2 bytes are enough).
            let f = client_frame(true, op, &[b'p'; 126], KEY);
            assert_eq!(error_code(&f[..2]), Some(1002), "op {op:x}");
            let mut f = vec![0x80 | op, 0x80 | 127];
            f.extend_from_slice(&0x1_0000u64.to_be_bytes());
            assert_eq!(error_code(&f), Some(1002), "op {op:x}");
            // RFC 6455 §5.5: not fragmented (1 byte is enough).
            let f = client_frame(false, op, b"", KEY);
            assert_eq!(error_code(&f[..1]), Some(1002), "op {op:x}");
        }
    }

    #[test]
    fn fragmentation_order_is_enforced() {
        // RFC 6455 §5.4: continuation without a message in progress.
        let f = client_frame(true, 0x0, b"x", KEY);
        assert_eq!(error_code(&f[..1]), Some(1002));
        let f = client_frame(false, 0x0, b"x", KEY);
        assert_eq!(error_code(&f), Some(1002));
        // ... also right after a complete message.
        let mut input = client_frame(true, 0x1, b"done", KEY);
        input.extend(client_frame(true, 0x0, b"x", KEY));
        let (items, end) = run_whole(&input);
        assert_eq!(items.len(), 1);
        assert_eq!(end.unwrap_err().code, 1002);
        // A new data frame while a fragmented message is in progress.
        for op in [0x1u8, 0x2] {
            let mut input = client_frame(false, 0x2, b"part", KEY);
            input.extend(client_frame(true, op, b"new", KEY));
            let (items, end) = run_whole(&input);
            assert_eq!(items, vec![data(b"part", false, true, false)]);
            assert_eq!(end.unwrap_err().code, 1002);
        }
    }

    #[test]
    fn control_frames_interleave_with_fragments() {
        let mut input = client_frame(false, 0x1, b"Hel", KEY);
        input.extend(client_frame(true, 0x9, b"are you there", [1, 2, 3, 4]));
        input.extend(client_frame(true, 0x0, b"lo", [4, 3, 2, 1]));
        let mut dec = Decoder::new(limits());
        let mut buf = BytesMut::from(&input[..]);
        assert!(!dec.in_message());
        assert_eq!(
            dec.decode(&mut buf).unwrap().map(to_item),
            Some(data(b"Hel", true, true, false))
        );
        assert!(dec.in_message());
        assert_eq!(
            dec.decode(&mut buf).unwrap().map(to_item),
            Some(OwnedFrame::Ping(b"are you there".to_vec()))
        );
        assert!(dec.in_message());
        assert_eq!(
            dec.decode(&mut buf).unwrap().map(to_item),
            Some(data(b"lo", true, false, true))
        );
        assert!(!dec.in_message());
        assert_eq!(dec.decode(&mut buf), Ok(None));
        assert!(buf.is_empty());
    }

    #[test]
    fn empty_fragments_are_visible() {
        let mut input = client_frame(false, 0x2, b"", KEY);
        input.extend(client_frame(false, 0x0, b"ab", KEY));
        input.extend(client_frame(false, 0x0, b"", KEY));
        input.extend(client_frame(true, 0x0, b"", KEY));
        let (items, end) = run_whole(&input);
        assert_eq!(end, Ok(()));
        assert_eq!(
            items,
            vec![
                data(b"", false, true, false),
                data(b"ab", false, false, false),
                data(b"", false, false, false),
                data(b"", false, false, true),
            ]
        );
    }

    #[test]
    fn frame_size_limit() {
        let lim = DecoderLimits {
            max_frame_size: 100,
            ..limits()
        };
        let ok = client_frame(true, 0x2, &[0; 100], KEY);
        let mut dec = Decoder::new(lim);
        assert_eq!(run(&mut dec, &ok, || 1000).1, Ok(()));
        // 101 bytes: rejected from the header alone (no key, no payload needed).
        let big = client_frame(true, 0x2, &[0; 101], KEY);
        let mut dec = Decoder::new(lim);
        let mut buf = BytesMut::from(&big[..2]);
        let e = dec.decode(&mut buf).unwrap_err();
        assert_eq!(e.code, 1009);
        // Also on a continuation frame.
        let mut input = client_frame(false, 0x2, &[0; 10], KEY);
        input.extend(client_frame(true, 0x0, &[0; 101], KEY));
        let mut dec = Decoder::new(lim);
        let (items, end) = run(&mut dec, &input, || 1000);
        assert_eq!(items.len(), 1);
        assert_eq!(end.unwrap_err().code, 1009);
    }

    #[test]
    fn message_size_limit() {
        let lim = DecoderLimits {
            max_message_size: 10,
            ..limits()
        };
        // Exactly 10 over three frames is fine.
        let mut input = client_frame(false, 0x1, b"abcd", KEY);
        input.extend(client_frame(false, 0x0, b"efg", KEY));
        input.extend(client_frame(true, 0x0, b"hij", KEY));
        // The next message starts counting from 0 again.
        input.extend(client_frame(true, 0x2, &[7; 10], KEY));
        let mut dec = Decoder::new(lim);
        let (items, end) = run(&mut dec, &input, || 3);
        assert_eq!(end, Ok(()));
        assert_eq!(
            merge(&items),
            vec![
                data(b"abcdefghij", true, true, true),
                data(&[7; 10], false, true, true)
            ]
        );
        // 11: rejected at the header of the frame that goes over, before its payload.
        let mut input = client_frame(false, 0x1, b"abcdef", KEY);
        let second = client_frame(true, 0x0, b"ghijk", KEY);
        input.extend_from_slice(&second[..2]);
        let mut dec = Decoder::new(lim);
        let (items, end) = run(&mut dec, &input, || 1000);
        assert_eq!(items, vec![data(b"abcdef", true, true, false)]);
        assert_eq!(end.unwrap_err().code, 1009);
        // A single frame over the message limit.
        let mut dec = Decoder::new(lim);
        let f = client_frame(true, 0x2, &[0; 11], KEY);
        assert_eq!(run(&mut dec, &f, || 1000).1.unwrap_err().code, 1009);
    }

    #[test]
    fn fragment_count_limit() {
        let lim = DecoderLimits {
            max_fragments: 3,
            ..limits()
        };
        let mut three = client_frame(false, 0x2, b"a", KEY);
        three.extend(client_frame(true, 0x9, b"control frames do not count", KEY));
        three.extend(client_frame(false, 0x0, b"b", KEY));
        three.extend(client_frame(true, 0x0, b"c", KEY));
        let mut dec = Decoder::new(lim);
        assert_eq!(run(&mut dec, &three, || 1000).1, Ok(()));

        let mut four = client_frame(false, 0x2, b"a", KEY);
        four.extend(client_frame(false, 0x0, b"b", KEY));
        four.extend(client_frame(false, 0x0, b"", KEY));
        four.extend(client_frame(true, 0x0, b"d", KEY));
        let mut dec = Decoder::new(lim);
        let (items, end) = run(&mut dec, &four, || 1000);
        assert_eq!(items.len(), 3);
        assert_eq!(end.unwrap_err().code, 1009);

        // max_fragments = 1 forbids fragmentation altogether.
        let lim = DecoderLimits {
            max_fragments: 1,
            ..limits()
        };
        let mut dec = Decoder::new(lim);
        let mut two = client_frame(false, 0x1, b"a", KEY);
        two.extend(client_frame(true, 0x0, b"b", KEY));
        assert_eq!(run(&mut dec, &two, || 1000).1.unwrap_err().code, 1009);
    }

    #[test]
    fn huge_declared_length_is_rejected_without_allocating() {
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 62).to_be_bytes());
        let mut dec = Decoder::new(limits());
        let mut buf = BytesMut::with_capacity(16);
        buf.extend_from_slice(&header);
        let cap = buf.capacity();
        assert_eq!(dec.decode(&mut buf).unwrap_err().code, 1009);
        assert_eq!(buf.capacity(), cap);
        assert_eq!(buf.len(), 10);

        // With no limits at all, the frame streams: pieces come out as bytes arrive and
        // nothing waits for (or reserves room for) the whole payload.
        let unlimited = DecoderLimits {
            max_frame_size: u64::MAX,
            max_message_size: u64::MAX,
            max_fragments: u64::MAX,
        };
        let mut dec = Decoder::new(unlimited);
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(&header);
        buf.extend_from_slice(&[0, 0, 0, 0]);
        let cap = buf.capacity();
        assert_eq!(dec.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b"abc");
        assert_eq!(
            dec.decode(&mut buf).unwrap().map(to_item),
            Some(data(b"abc", false, true, false))
        );
        assert_eq!(dec.decode(&mut buf), Ok(None));
        assert!(buf.capacity() <= cap);
        assert!(dec.in_message());
    }

    #[test]
    fn invalid_utf8_text_is_rejected() {
        let f = client_frame(true, 0x1, b"abc\xFFdef", KEY);
        assert_eq!(error_code(&f), Some(1007));
        // Surrogate, overlong, > U+10FFFF.
        for bad in [&b"\xED\xA0\x80"[..], b"\xC0\xAF", b"\xF4\x90\x80\x80"] {
            let f = client_frame(true, 0x1, bad, KEY);
            assert_eq!(error_code(&f), Some(1007), "{bad:x?}");
        }
        // Binary messages are not validated.
        let f = client_frame(true, 0x2, b"abc\xFFdef", KEY);
        assert_eq!(error_code(&f), None);
    }

    #[test]
    fn invalid_utf8_fails_fast_mid_frame() {
        let mut payload = b"ok so far ".to_vec();
        payload.extend_from_slice(b"\xF4\x90");
        payload.extend_from_slice(&[b'x'; 100]);
        let f = client_frame(true, 0x1, &payload, KEY);
        // Header + the first 10 bytes of payload: a valid piece comes out.
        let mut dec = Decoder::new(limits());
        let mut buf = BytesMut::from(&f[..6 + 10]);
        assert_eq!(
            dec.decode(&mut buf).unwrap().map(to_item),
            Some(data(b"ok so far ", true, true, false))
        );
        assert_eq!(dec.decode(&mut buf), Ok(None));
        // The next two bytes make the text impossible: error before the other 100 arrive.
        buf.extend_from_slice(&f[16..18]);
        assert_eq!(dec.decode(&mut buf).unwrap_err().code, 1007);
        // Errors are final.
        buf.extend_from_slice(&f[18..]);
        assert_eq!(dec.decode(&mut buf).unwrap_err().code, 1007);
    }

    #[test]
    fn incomplete_code_point_at_end_of_message() {
        let f = client_frame(true, 0x1, b"abc\xE2\x82", KEY);
        assert_eq!(error_code(&f), Some(1007));
        // Incomplete at the end of a non-final fragment is fine if the next one completes it...
        let mut input = client_frame(false, 0x1, b"abc\xE2\x82", KEY);
        input.extend(client_frame(true, 0x0, b"\xAC", KEY));
        assert_eq!(
            merge(&run_whole(&input).0),
            vec![data("abc€".as_bytes(), true, true, true)]
        );
        // ... and an error if the message ends there.
        let mut input = client_frame(false, 0x1, b"abc\xE2\x82", KEY);
        input.extend(client_frame(true, 0x0, b"", KEY));
        assert_eq!(error_code(&input), Some(1007));
    }

    #[test]
    fn fragmented_text_with_code_points_split_across_frames() {
        let text = "κόσμε 😀 € ü";
        let bytes = text.as_bytes();
        // Split inside "κ" (2 bytes) and inside "😀" (4 bytes).
        let a = 1;
        let b = text.find('😀').unwrap() + 2;
        let mut input = client_frame(false, 0x1, &bytes[..a], [0xde, 0xad, 0xbe, 0xef]);
        input.extend(client_frame(
            false,
            0x0,
            &bytes[a..b],
            [0x01, 0x23, 0x45, 0x67],
        ));
        input.extend(client_frame(
            true,
            0x0,
            &bytes[b..],
            [0x89, 0xab, 0xcd, 0xef],
        ));
        let (items, end) = run_whole(&input);
        assert_eq!(end, Ok(()));
        assert_eq!(
            items,
            vec![
                data(&bytes[..a], true, true, false),
                data(&bytes[a..b], true, false, false),
                data(&bytes[b..], true, false, true),
            ]
        );
        // Same result fed byte by byte.
        let mut dec = Decoder::new(limits());
        let (items, end) = run(&mut dec, &input, || 1);
        assert_eq!(end, Ok(()));
        assert_eq!(merge(&items), vec![data(bytes, true, true, true)]);
    }

    #[test]
    fn close_frames() {
        let (items, end) = run_whole(&client_frame(true, 0x8, b"", KEY));
        assert_eq!(end, Ok(()));
        assert_eq!(items, vec![OwnedFrame::Close(None)]);

        let mut body = 1000u16.to_be_bytes().to_vec();
        body.extend_from_slice("bye ☃".as_bytes());
        let (items, _) = run_whole(&client_frame(true, 0x8, &body, KEY));
        assert_eq!(
            items,
            vec![OwnedFrame::Close(Some((1000, "bye ☃".to_string())))]
        );

        // 1-byte body, invalid codes, invalid reason.
        assert_eq!(
            error_code(&client_frame(true, 0x8, &[0x03], KEY)),
            Some(1002)
        );
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2000, 5000] {
            let f = client_frame(true, 0x8, &code.to_be_bytes(), KEY);
            assert_eq!(error_code(&f), Some(1002), "{code}");
        }
        let mut body = 1000u16.to_be_bytes().to_vec();
        body.extend_from_slice(b"\xED\xA0\x80");
        assert_eq!(error_code(&client_frame(true, 0x8, &body, KEY)), Some(1007));
    }

    #[test]
    fn input_after_close_is_discarded() {
        let mut input = client_frame(true, 0x8, &1001u16.to_be_bytes(), KEY);
        input.extend(client_frame(true, 0x1, b"ignored", KEY));
        input.extend_from_slice(&[0xFF, 0xFF, 0xFF]); // garbage, not even a valid header
        let mut dec = Decoder::new(limits());
        let mut buf = BytesMut::from(&input[..]);
        assert_eq!(
            dec.decode(&mut buf).unwrap().map(to_item),
            Some(OwnedFrame::Close(Some((1001, String::new()))))
        );
        for _ in 0..3 {
            assert_eq!(dec.decode(&mut buf), Ok(None));
            assert!(buf.is_empty());
            buf.extend_from_slice(&[0x81, 0x05]);
        }
    }

    #[test]
    fn close_interleaved_in_fragmented_message() {
        let mut input = client_frame(false, 0x1, b"half", KEY);
        input.extend(client_frame(true, 0x8, b"", KEY));
        let (items, end) = run_whole(&input);
        assert_eq!(end, Ok(()));
        assert_eq!(
            items,
            vec![data(b"half", true, true, false), OwnedFrame::Close(None)]
        );
    }

    #[test]
    fn errors_are_final() {
        let mut dec = Decoder::new(limits());
        let mut buf = BytesMut::from(&[0x83u8, 0x80][..]);
        let e = dec.decode(&mut buf).unwrap_err();
        assert_eq!(e.code, 1002);
        let mut fresh = BytesMut::from(&client_frame(true, 0x1, b"valid", KEY)[..]);
        assert_eq!(dec.decode(&mut fresh), Err(e));
        assert_eq!(dec.decode(&mut fresh), Err(e));
    }

    #[test]
    fn header_split_over_many_reads() {
        for len in [0usize, 5, 125, 126, 300, 0xFFFF, 0x1_0000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let f = client_frame(true, 0x2, &payload, [0x12, 0x34, 0x56, 0x78]);
            let header_len = f.len() - len;
            let mut dec = Decoder::new(limits());
            let mut buf = BytesMut::new();
            // Header one byte at a time: nothing comes out, nothing is lost.
            for b in &f[..header_len] {
                assert_eq!(dec.decode(&mut buf), Ok(None));
                buf.extend_from_slice(&[*b]);
            }
            if len == 0 {
                assert_eq!(
                    dec.decode(&mut buf).unwrap().map(to_item),
                    Some(data(b"", false, true, true))
                );
            } else {
                assert_eq!(dec.decode(&mut buf), Ok(None));
                buf.extend_from_slice(&f[header_len..]);
                // The whole payload comes out as one piece, as if the frame came in one read.
                assert_eq!(
                    dec.decode(&mut buf).unwrap().map(to_item),
                    Some(data(&payload, false, true, true))
                );
            }
            assert_eq!(dec.decode(&mut buf), Ok(None));
            assert!(buf.is_empty());
        }
        // A control frame's header split too.
        let f = client_frame(true, 0x9, b"ping", KEY);
        let mut dec = Decoder::new(limits());
        let (items, end) = run(&mut dec, &f, || 1);
        assert_eq!(end, Ok(()));
        assert_eq!(items, vec![OwnedFrame::Ping(b"ping".to_vec())]);
    }

    #[test]
    fn payload_one_byte_at_a_time() {
        let payload: Vec<u8> = (0..300u32).map(|i| (i * 13) as u8).collect();
        let f = client_frame(true, 0x2, &payload, [0xa1, 0xb2, 0xc3, 0xd4]);
        let header_len = f.len() - payload.len();
        let mut dec = Decoder::new(limits());
        let mut buf = BytesMut::from(&f[..header_len]);
        assert_eq!(dec.decode(&mut buf), Ok(None));
        for (i, b) in f[header_len..].iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            assert_eq!(
                dec.decode(&mut buf).unwrap().map(to_item),
                Some(data(
                    &payload[i..i + 1],
                    false,
                    i == 0,
                    i == payload.len() - 1
                )),
                "byte {i}"
            );
            assert_eq!(dec.decode(&mut buf), Ok(None));
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn several_frames_in_one_buffer() {
        let mut input = Vec::new();
        let mut expected = Vec::new();
        for i in 0..20u8 {
            let payload = vec![i; usize::from(i) * 17];
            input.extend(client_frame(true, 0x2, &payload, [i, 1, 2, 3]));
            expected.push(data(&payload, false, true, true));
            if i % 5 == 0 {
                input.extend(client_frame(true, 0x9, &[i], [3, 2, 1, i]));
                expected.push(OwnedFrame::Ping(vec![i]));
            }
        }
        let (items, end) = run_whole(&input);
        assert_eq!(end, Ok(()));
        assert_eq!(items, expected);
    }

    #[test]
    fn error_reasons_fit_a_close_frame() {
        for e in [
            RSV_SET,
            RSV1_ON_CONTROL,
            RSV1_ON_CONTINUATION,
            RESERVED_OPCODE,
            UNMASKED,
            CONTROL_FRAGMENTED,
            CONTROL_TOO_LONG,
            LENGTH_MSB_SET,
            NON_MINIMAL_LENGTH,
            UNEXPECTED_CONTINUATION,
            EXPECTED_CONTINUATION,
            FRAME_TOO_BIG,
            MESSAGE_TOO_BIG,
            TOO_MANY_FRAGMENTS,
            INVALID_UTF8,
        ] {
            assert!(e.reason.len() <= 123 && e.reason.is_ascii(), "{e}");
            assert!([1002, 1007, 1009].contains(&e.code.get()));
        }
        assert_eq!(
            UNMASKED.to_string(),
            "client frame is not masked (close code 1002)"
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = XorShift(0xDEAD_BEEF_CAFE_F00D);
        for _ in 0..5_000 {
            let len = rng.below(64) as usize;
            let mut input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Make it likelier to get past the first checks.
            if let Some(b) = input.get_mut(0) {
                *b &= 0x8F;
            }
            if let Some(b) = input.get_mut(1) {
                *b |= 0x80;
            }
            let mut dec = Decoder::new(DecoderLimits {
                max_frame_size: 40,
                max_message_size: 60,
                max_fragments: 4,
            });
            let _ = run(&mut dec, &input, || 1 + rng.below(9) as usize);
        }
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Event {
        Message(bool, Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
    }

    #[test]
    fn randomized_round_trip() {
        let mut rng = XorShift(0x0123_4567_89AB_CDEF);
        let alphabet = [
            'a',
            'z',
            ' ',
            'é',
            'ß',
            '€',
            '☃',
            '😀',
            '\u{10FFFF}',
            '\u{7FF}',
        ];
        for _round in 0..300 {
            let mut wire = Vec::new();
            let mut expected = Vec::new();
            let messages = 1 + rng.below(8);
            for _ in 0..messages {
                let text = rng.below(2) == 0;
                let size = match rng.below(10) {
                    0 => rng.below(70_000) as usize,
                    1..=3 => rng.below(400) as usize,
                    _ => rng.below(40) as usize,
                };
                let mut payload = Vec::with_capacity(size + 4);
                while payload.len() < size {
                    if text {
                        let c = alphabet[rng.below(alphabet.len() as u64) as usize];
                        let mut tmp = [0u8; 4];
                        payload.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
                    } else {
                        payload.push(rng.next() as u8);
                    }
                }
                // Split into 1..=5 frames at random points (empty fragments allowed).
                let frames = 1 + rng.below(5) as usize;
                let mut cuts: Vec<usize> = (1..frames)
                    .map(|_| rng.below(payload.len() as u64 + 1) as usize)
                    .collect();
                cuts.sort_unstable();
                cuts.insert(0, 0);
                cuts.push(payload.len());
                // Control frames between fragments complete before the message does; one
                // after the FIN frame comes after it.
                let mut inside = Vec::new();
                let mut after = Vec::new();
                for i in 0..frames {
                    let opcode = match (i, text) {
                        (0, true) => 0x1,
                        (0, false) => 0x2,
                        _ => 0x0,
                    };
                    let fin = i == frames - 1;
                    let piece = &payload[cuts[i]..cuts[i + 1]];
                    wire.extend(client_frame(fin, opcode, piece, rng.mask()));
                    if rng.below(4) == 0 {
                        let body: Vec<u8> = (0..rng.below(126)).map(|_| rng.next() as u8).collect();
                        let event = if rng.below(2) == 0 {
                            wire.extend(client_frame(true, 0x9, &body, rng.mask()));
                            Event::Ping(body)
                        } else {
                            wire.extend(client_frame(true, 0xA, &body, rng.mask()));
                            Event::Pong(body)
                        };
                        if fin {
                            after.push(event);
                        } else {
                            inside.push(event);
                        }
                    }
                }
                expected.extend(inside);
                expected.push(Event::Message(text, payload));
                expected.extend(after);
            }
            let close = client_frame(true, 0x8, &1000u16.to_be_bytes(), rng.mask());
            wire.extend(close);
            wire.extend_from_slice(b"trailing junk after close");

            let mut dec = Decoder::new(limits());
            let big_reads = rng.below(3) == 0;
            let (items, end) = run(&mut dec, &wire, || {
                if big_reads {
                    1 + rng.below(100_000) as usize
                } else {
                    1 + rng.below(64) as usize
                }
            });
            assert_eq!(end, Ok(()));

            let mut got = Vec::new();
            let mut cur: Option<(bool, Vec<u8>)> = None;
            let mut closed = false;
            for item in items {
                assert!(!closed, "item after Close");
                match item {
                    OwnedFrame::Data {
                        payload,
                        text,
                        first,
                        last,
                    } => {
                        assert_eq!(first, cur.is_none());
                        let m = cur.get_or_insert_with(|| (text, Vec::new()));
                        assert_eq!(m.0, text);
                        m.1.extend_from_slice(&payload);
                        if last {
                            let (t, p) = cur.take().unwrap();
                            got.push(Event::Message(t, p));
                        }
                    }
                    OwnedFrame::Ping(p) => got.push(Event::Ping(p)),
                    OwnedFrame::Pong(p) => got.push(Event::Pong(p)),
                    OwnedFrame::Close(c) => {
                        assert_eq!(c, Some((1000, String::new())));
                        closed = true;
                    }
                }
            }
            assert!(closed);
            assert!(cur.is_none());
            assert_eq!(got, expected);
        }
    }
}
