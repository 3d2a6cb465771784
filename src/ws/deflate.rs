//! permessage-deflate (RFC 7692): the negotiated parameters, the streaming inflater of client
//! messages with its bomb guard, and the deflater of messages to the client. No I/O.
//!
//! Owns: turning compressed pieces (as the frame decoder hands them out) into inflated output
//! in bounded chunks, with the message and frame size limits applied to the inflated size while
//! inflating, a work guard against input that inflates to nothing, and UTF-8 validation of
//! inflated text; compressing one message to the client into a frame.
//! Does not own: the negotiation (`handshake`), RSV1 rules (`frame`), or when contexts are
//! dropped (the session calls [`Inflater::idle_tick`] and [`Deflater::idle_tick`] from its idle
//! timer; they decide what may go).
//!
//! Window bits: zlib (and so flate2) cannot make a raw deflate stream with a 256-byte window
//! (8 bits): asked for 8 it uses 512 (9) without saying so, which a peer holding only 256
//! bytes could not decode. So the inflater always uses at least 9 bits (a larger window
//! decodes every stream a smaller one can, and zlib-based clients told 8 really use 9), and a
//! session whose messages to the client must use 8 bits sends them uncompressed
//! ([`DeflateParams::compress_to_client`]), which RFC 7692 allows message by message.

use bytes::BytesMut;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::ws::close::CloseCode;
use crate::ws::frame::{encode_header, OpCode, ProtocolError, MAX_SERVER_HEADER_BYTES};
use crate::ws::utf8::Utf8Validator;

/// RFC 7692 §7.2.2: the four bytes a sender strips from the end of a message and the receiver
/// appends before inflating.
pub const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Most inflated bytes produced per step: the pump forwards (and may wait for the backend)
/// between steps, so a message never sits inflated in memory beyond what the framing holds.
pub const INFLATE_CHUNK_BYTES: usize = 16 * 1024;

/// Work guard: a message's compressed input may be at most this many times its inflated
/// output, plus [`WORK_ALLOWANCE_BYTES`]. Real compressors stay far below (incompressible data
/// costs 5 bytes per stored block; Huffman-coded literals at most ~15 bits per byte). Beyond
/// it the input is made to burn CPU for nothing (e.g. endless empty blocks): 1008.
pub const WORK_RATIO: u64 = 2;
/// Work guard: compressed bytes a message may carry beyond [`WORK_RATIO`] times its output
/// (block headers, Huffman tables of a tiny message).
pub const WORK_ALLOWANCE_BYTES: u64 = 4 * 1024;

/// Smallest window zlib can use for raw deflate (see the module doc).
const MIN_ZLIB_WINDOW_BITS: u8 = 9;
/// Largest window (RFC 7692 §7.1.2: 8..15).
pub const MAX_WINDOW_BITS: u8 = 15;
/// Smallest window a negotiation may name (RFC 7692 §7.1.2).
pub const MIN_WINDOW_BITS: u8 = 8;

/// Compression level of messages to the client: zlib's fastest. A gateway is CPU-bound long
/// before it is bandwidth-bound, and text still shrinks well at this level.
const COMPRESSION_LEVEL: u32 = 1;

/// What a route allows (`[route.deflate]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateSettings {
    pub server_max_window_bits: u8,
    pub client_max_window_bits: u8,
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
    /// Messages to the client smaller than this go uncompressed.
    pub min_compress_bytes: usize,
}

/// `[route.deflate]` defaults.
pub const DEFAULT_WINDOW_BITS: u8 = 15;
pub const DEFAULT_MIN_COMPRESS_BYTES: usize = 64;

impl Default for DeflateSettings {
    fn default() -> Self {
        DeflateSettings {
            server_max_window_bits: DEFAULT_WINDOW_BITS,
            client_max_window_bits: DEFAULT_WINDOW_BITS,
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            min_compress_bytes: DEFAULT_MIN_COMPRESS_BYTES,
        }
    }
}

/// What one session agreed on (the 101's `Sec-WebSocket-Extensions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// Window of our compressor (messages to the client).
    pub server_max_window_bits: u8,
    /// Window of the client's compressor (messages we inflate).
    pub client_max_window_bits: u8,
    /// We reset our compressor after each message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after each message, so we reset our inflater.
    pub client_no_context_takeover: bool,
    /// Messages to the client smaller than this go uncompressed.
    pub min_compress_bytes: usize,
}

impl DeflateParams {
    /// Whether messages to the client are ever compressed: not with an 8-bit window, which zlib
    /// cannot honour (module doc).
    pub fn compress_to_client(&self) -> bool {
        self.server_max_window_bits >= MIN_ZLIB_WINDOW_BITS
    }
}

const FRAME_TOO_BIG: ProtocolError = ProtocolError {
    code: CloseCode::MESSAGE_TOO_BIG,
    reason: "inflated frame too big",
};
const MESSAGE_TOO_BIG: ProtocolError = ProtocolError {
    code: CloseCode::MESSAGE_TOO_BIG,
    reason: "inflated message too big",
};
const TOO_MUCH_WORK: ProtocolError = ProtocolError {
    code: CloseCode::POLICY_VIOLATION,
    reason: "compressed input inflates to too little",
};
const BAD_DEFLATE: ProtocolError = ProtocolError {
    code: CloseCode::INVALID_PAYLOAD,
    reason: "invalid deflate data",
};
const INVALID_UTF8: ProtocolError = ProtocolError {
    code: CloseCode::INVALID_PAYLOAD,
    reason: "text message is not valid UTF-8",
};

/// The result of one [`Inflater::step`].
#[derive(Debug)]
pub struct Step<'a> {
    /// Bytes of the piece consumed.
    pub consumed: usize,
    /// Inflated bytes (at most [`INFLATE_CHUNK_BYTES`]).
    pub output: &'a [u8],
    /// The piece is consumed and nothing more comes out of it (at the end of a message: the
    /// message is complete and validated).
    pub done: bool,
}

/// Streaming inflater of the client's compressed messages.
///
/// The zlib context and the output chunk are allocated at the first compressed message and
/// freed by [`Inflater::idle_tick`] between messages, unless context takeover requires keeping
/// them.
pub struct Inflater {
    window_bits: u8,
    /// `client_no_context_takeover`: a fresh context per message.
    reset_per_message: bool,
    max_message_size: u64,
    max_frame_size: u64,
    ctx: Option<Box<Decompress>>,
    chunk: Vec<u8>,
    // Per message:
    text: bool,
    utf8: Utf8Validator,
    message_in: u64,
    message_out: u64,
    frame_out: u64,
    /// How much of [`SYNC_TAIL`] has been fed at the end of the message.
    tail_fed: usize,
    /// The client's deflate stream ended (BFINAL) and nothing followed in this message: the
    /// tail is not fed (it would start a block of the next stream).
    stream_ended: bool,
    /// A message began since the last [`Inflater::idle_tick`].
    used: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("window_bits", &self.window_bits)
            .field("allocated", &self.ctx.is_some())
            .finish_non_exhaustive()
    }
}

impl Inflater {
    /// Limits are those of the route ([`crate::ws::DecoderLimits`]), applied to inflated sizes.
    pub fn new(params: &DeflateParams, max_message_size: u64, max_frame_size: u64) -> Inflater {
        Inflater {
            window_bits: params
                .client_max_window_bits
                .clamp(MIN_ZLIB_WINDOW_BITS, MAX_WINDOW_BITS),
            reset_per_message: params.client_no_context_takeover,
            max_message_size,
            max_frame_size,
            ctx: None,
            chunk: Vec::new(),
            text: false,
            utf8: Utf8Validator::new(),
            message_in: 0,
            message_out: 0,
            frame_out: 0,
            tail_fed: 0,
            stream_ended: false,
            used: false,
        }
    }

    /// Whether a zlib context is held now.
    pub fn is_allocated(&self) -> bool {
        self.ctx.is_some()
    }

    /// The pump's idle timer (about once a second while this direction waits for data): free
    /// the context if no message began since the previous tick and no context is carried from
    /// one message to the next (`client_no_context_takeover`). With context takeover the window
    /// is part of the stream and must be kept for the life of the session. Returns whether a
    /// later tick may still free something.
    pub fn idle_tick(&mut self) -> bool {
        if !self.reset_per_message {
            return false;
        }
        if std::mem::take(&mut self.used) {
            return self.ctx.is_some();
        }
        self.ctx = None;
        self.chunk = Vec::new();
        false
    }

    /// Start a compressed message.
    pub fn begin(&mut self, text: bool) {
        self.used = true;
        self.text = text;
        self.utf8.reset();
        self.message_in = 0;
        self.message_out = 0;
        self.frame_out = 0;
        self.tail_fed = 0;
        self.stream_ended = false;
    }

    /// A new frame of the message starts: its own inflated size is counted from here.
    pub fn begin_frame(&mut self) {
        self.frame_out = 0;
    }

    /// Inflate from `input` (a piece of the message's compressed payload) into at most
    /// [`INFLATE_CHUNK_BYTES`]. Call again with the rest of the piece (`input[consumed..]`)
    /// until `done`; with `last` (the piece ends the message) the RFC 7692 §7.2.2 tail is fed
    /// after it and the message is finished.
    pub fn step(&mut self, input: &[u8], last: bool) -> Result<Step<'_>, ProtocolError> {
        if self.ctx.is_none() {
            self.ctx = Some(Box::new(Decompress::new_with_window_bits(
                false,
                self.window_bits,
            )));
        }
        if self.chunk.len() != INFLATE_CHUNK_BYTES {
            self.chunk = vec![0; INFLATE_CHUNK_BYTES];
        }
        // Allow one byte past the limit, so that going past it is seen without allocating more.
        let allowed = self.max_message_size.saturating_sub(self.message_out);
        let room = usize::try_from(allowed.saturating_add(1))
            .unwrap_or(usize::MAX)
            .min(INFLATE_CHUNK_BYTES);
        let Some(ctx) = self.ctx.as_deref_mut() else {
            return Err(BAD_DEFLATE);
        };
        let feeding_tail = input.is_empty() && last;
        if feeding_tail && self.stream_ended {
            self.tail_fed = SYNC_TAIL.len();
        }
        let src: &[u8] = if feeding_tail {
            &SYNC_TAIL[self.tail_fed.min(SYNC_TAIL.len())..]
        } else {
            input
        };
        let before_in = ctx.total_in();
        let before_out = ctx.total_out();
        let flush = if feeding_tail {
            FlushDecompress::Sync
        } else {
            FlushDecompress::None
        };
        let status = ctx
            .decompress(src, &mut self.chunk[..room], flush)
            .map_err(|_| BAD_DEFLATE)?;
        let used = usize::try_from(ctx.total_in() - before_in).unwrap_or(usize::MAX);
        let produced = usize::try_from(ctx.total_out() - before_out).unwrap_or(usize::MAX);
        let stream_end = status == Status::StreamEnd;
        if stream_end {
            // The client ended the deflate stream (BFINAL): what follows, in this message or
            // the next, starts a new one.
            ctx.reset(false);
            self.stream_ended = true;
        } else if used > 0 && !feeding_tail {
            self.stream_ended = false;
        }
        let used = used.min(src.len());
        let produced = produced.min(room);

        self.message_in = self.message_in.saturating_add(used as u64);
        self.message_out = self.message_out.saturating_add(produced as u64);
        self.frame_out = self.frame_out.saturating_add(produced as u64);
        // The bomb guard: checked on each bounded chunk, never after the whole message.
        if self.message_out > self.max_message_size {
            return Err(MESSAGE_TOO_BIG);
        }
        if self.frame_out > self.max_frame_size {
            return Err(FRAME_TOO_BIG);
        }
        // The work guard.
        if self.message_in
            > self
                .message_out
                .saturating_mul(WORK_RATIO)
                .saturating_add(WORK_ALLOWANCE_BYTES)
        {
            return Err(TOO_MUCH_WORK);
        }
        let output = &self.chunk[..produced];
        if self.text && self.utf8.feed(output).is_err() {
            return Err(INVALID_UTF8);
        }
        // More output may be waiting inside zlib when the chunk was filled.
        let full = produced == room;
        let consumed;
        let done;
        if feeding_tail {
            self.tail_fed += used;
            consumed = 0;
            let tail_done = self.tail_fed >= SYNC_TAIL.len() || stream_end;
            if !tail_done && used == 0 && !full {
                // zlib took nothing and gave nothing: the data before the tail is truncated.
                return Err(BAD_DEFLATE);
            }
            done = tail_done && !full;
        } else {
            consumed = used;
            if used == 0 && produced == 0 && !input.is_empty() && !stream_end {
                return Err(BAD_DEFLATE);
            }
            // With `last`, the tail comes after the piece, so the piece is not done yet.
            done = !last && used == input.len() && !full;
        }
        if done && last {
            if self.text && self.utf8.finish().is_err() {
                return Err(INVALID_UTF8);
            }
            if self.reset_per_message {
                ctx.reset(false);
            }
        }
        Ok(Step {
            consumed,
            output,
            done,
        })
    }
}

/// Compressor of messages to the client.
pub struct Deflater {
    window_bits: u8,
    reset_per_message: bool,
    ctx: Option<Box<Compress>>,
    scratch: Vec<u8>,
    /// A message was compressed since the last [`Deflater::idle_tick`].
    used: bool,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater")
            .field("window_bits", &self.window_bits)
            .field("allocated", &self.ctx.is_some())
            .finish_non_exhaustive()
    }
}

impl Deflater {
    pub fn new(params: &DeflateParams) -> Deflater {
        Deflater {
            window_bits: params
                .server_max_window_bits
                .clamp(MIN_ZLIB_WINDOW_BITS, MAX_WINDOW_BITS),
            reset_per_message: params.server_no_context_takeover,
            ctx: None,
            scratch: Vec::new(),
            used: false,
        }
    }

    pub fn is_allocated(&self) -> bool {
        self.ctx.is_some()
    }

    /// The pump's idle timer (about once a second while this direction waits for data): free
    /// the context if no message was compressed since the previous tick, so after one to two
    /// idle seconds; a busy session keeps it. Freed with or without context takeover (it is the
    /// largest per-session allocation a gateway makes, about 300 KiB at 15 window bits). Unlike
    /// the inflater's, the compressor's history is only an opportunity: each message ends on a
    /// byte boundary after a sync flush and never with a final block, so the next message can
    /// start a new deflate stream that simply refers to nothing before it, and the client's
    /// inflater, window kept, reads it as the continuation of its stream (RFC 7692 §7.2.3.1
    /// allows a compressor to use less than the negotiated history).
    ///
    /// Returns whether a later tick may still free something.
    pub fn idle_tick(&mut self) -> bool {
        if std::mem::take(&mut self.used) {
            return self.ctx.is_some();
        }
        self.ctx = None;
        self.scratch = Vec::new();
        false
    }

    /// Append one unfragmented frame holding `payload` compressed (RSV1 set), RFC 7692 §7.2.1:
    /// a sync flush, without the trailing `00 00 ff ff`.
    pub fn encode_frame(&mut self, out: &mut BytesMut, opcode: OpCode, payload: &[u8]) {
        self.used = true;
        let ctx = self.ctx.get_or_insert_with(|| {
            Box::new(Compress::new_with_window_bits(
                Compression::new(COMPRESSION_LEVEL),
                false,
                self.window_bits,
            ))
        });
        self.scratch.clear();
        // Worst case of deflate (stored blocks) plus the flush marker.
        self.scratch
            .reserve(payload.len() + payload.len() / 1024 * 5 + 64);
        let mut input = payload;
        loop {
            if self.scratch.capacity() - self.scratch.len() < 64 {
                self.scratch.reserve(4096);
            }
            let before = ctx.total_in();
            // Errors cannot happen on a valid stream with room to write; treat as done.
            if ctx
                .compress_vec(input, &mut self.scratch, FlushCompress::Sync)
                .is_err()
            {
                break;
            }
            let used = usize::try_from(ctx.total_in() - before)
                .unwrap_or(usize::MAX)
                .min(input.len());
            input = &input[used..];
            // Done when all input is in and the flush ended with room to spare.
            if input.is_empty() && self.scratch.len() < self.scratch.capacity() {
                break;
            }
        }
        if self.scratch.ends_with(&SYNC_TAIL) {
            self.scratch.truncate(self.scratch.len() - SYNC_TAIL.len());
        }
        if self.reset_per_message {
            ctx.reset();
        }
        let mut header = [0u8; MAX_SERVER_HEADER_BYTES];
        let n = encode_header(true, opcode, self.scratch.len() as u64, &mut header);
        // RFC 7692 §6: RSV1 on the first frame of a compressed message.
        header[0] |= 0x40;
        out.reserve(n + self.scratch.len());
        out.extend_from_slice(&header[..n]);
        out.extend_from_slice(&self.scratch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(client_bits: u8, reset: bool) -> DeflateParams {
        DeflateParams {
            server_max_window_bits: 15,
            client_max_window_bits: client_bits,
            server_no_context_takeover: false,
            client_no_context_takeover: reset,
            min_compress_bytes: 0,
        }
    }

    /// Raw deflate with a sync flush and the tail stripped, as a client sends it (flate2 here
    /// as the oracle of the format; the inflater is what is under test).
    fn compress(data: &[u8]) -> Vec<u8> {
        let mut c = Compress::new_with_window_bits(Compression::default(), false, 15);
        let mut out = Vec::with_capacity(data.len() + 1024);
        c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
        assert!(out.ends_with(&SYNC_TAIL));
        out.truncate(out.len() - 4);
        out
    }

    /// Feed `pieces` as one message; return the inflated bytes or the error.
    fn inflate(inf: &mut Inflater, text: bool, pieces: &[&[u8]]) -> Result<Vec<u8>, ProtocolError> {
        inf.begin(text);
        let mut got = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let last = i + 1 == pieces.len();
            let mut input: &[u8] = piece;
            let mut steps = 0;
            loop {
                steps += 1;
                assert!(steps < 1_000_000, "no progress");
                let s = inf.step(input, last)?;
                assert!(s.output.len() <= INFLATE_CHUNK_BYTES);
                got.extend_from_slice(s.output);
                input = &input[s.consumed..];
                if s.done {
                    break;
                }
            }
        }
        Ok(got)
    }

    #[test]
    fn round_trip_in_pieces_with_and_without_takeover() {
        for reset in [false, true] {
            let mut inf = Inflater::new(&params(15, reset), 1 << 20, 1 << 20);
            let mut comp = Compress::new_with_window_bits(Compression::default(), false, 15);
            for round in 0..5u8 {
                let data: Vec<u8> = (0..50_000u32).map(|i| (i % 7) as u8 + round).collect();
                if reset {
                    comp.reset();
                }
                let mut wire = Vec::with_capacity(60_000);
                comp.compress_vec(&data, &mut wire, FlushCompress::Sync)
                    .unwrap();
                wire.truncate(wire.len() - 4);
                let cut = wire.len() / 3;
                let got = inflate(&mut inf, false, &[&wire[..cut], &wire[cut..], b""]).unwrap();
                assert_eq!(got, data);
            }
        }
    }

    #[test]
    fn bomb_stops_at_the_limit() {
        // 64 MiB of zeros compress to ~64 KiB; the limit is 1 MiB.
        let wire = compress(&vec![0u8; 64 << 20]);
        let mut inf = Inflater::new(&params(15, false), 1 << 20, 1 << 30);
        inf.begin(false);
        let mut input: &[u8] = &wire;
        let mut total = 0u64;
        let err = loop {
            match inf.step(input, true) {
                Ok(s) => {
                    total += s.output.len() as u64;
                    input = &input[s.consumed..];
                    assert!(!s.done);
                }
                Err(e) => break e,
            }
        };
        assert_eq!(err.code, 1009);
        assert!(total <= (1 << 20) + 1, "{total}");
        // The frame limit, too.
        let mut inf = Inflater::new(&params(15, false), 1 << 30, 100_000);
        assert_eq!(inflate(&mut inf, false, &[&wire]).unwrap_err().code, 1009);
    }

    #[test]
    fn input_that_inflates_to_nothing_is_a_policy_violation() {
        // Empty stored blocks (not final): 00 00 00 ff ff, forever.
        let mut wire = Vec::new();
        for _ in 0..10_000 {
            wire.extend_from_slice(&[0x00, 0x00, 0x00, 0xff, 0xff]);
        }
        let mut inf = Inflater::new(&params(15, false), 1 << 20, 1 << 20);
        assert_eq!(inflate(&mut inf, false, &[&wire]).unwrap_err().code, 1008);
        // Within the allowance it is fine.
        let mut inf = Inflater::new(&params(15, false), 1 << 20, 1 << 20);
        assert_eq!(inflate(&mut inf, false, &[&wire[..500]]).unwrap(), b"");
    }

    #[test]
    fn invalid_data_and_utf8() {
        let mut inf = Inflater::new(&params(15, false), 1 << 20, 1 << 20);
        // Block type 3 is reserved.
        assert_eq!(
            inflate(&mut inf, false, &[&[0xff, 0xff]]).unwrap_err().code,
            1007
        );
        let mut inf = Inflater::new(&params(15, false), 1 << 20, 1 << 20);
        let bad = compress(b"abc\xff");
        assert_eq!(inflate(&mut inf, true, &[&bad]).unwrap_err().code, 1007);
        // A code point cut by the end of the message.
        let mut inf = Inflater::new(&params(15, false), 1 << 20, 1 << 20);
        let cut = compress("abc€".as_bytes().split_last().unwrap().1);
        assert_eq!(inflate(&mut inf, true, &[&cut]).unwrap_err().code, 1007);
        let mut inf = Inflater::new(&params(15, false), 1 << 20, 1 << 20);
        let ok = compress("κόσμε €".as_bytes());
        assert_eq!(
            inflate(&mut inf, true, &[&ok]).unwrap(),
            "κόσμε €".as_bytes()
        );
    }

    #[test]
    fn a_final_block_starts_a_new_stream() {
        let mut c = Compress::new_with_window_bits(Compression::default(), false, 15);
        let mut wire = Vec::with_capacity(1024);
        c.compress_vec(b"hello hello hello", &mut wire, FlushCompress::Finish)
            .unwrap();
        let mut inf = Inflater::new(&params(15, false), 1 << 20, 1 << 20);
        assert_eq!(
            inflate(&mut inf, false, &[&wire]).unwrap(),
            b"hello hello hello"
        );
        assert_eq!(
            inflate(&mut inf, false, &[&wire]).unwrap(),
            b"hello hello hello"
        );
    }

    #[test]
    fn deflater_output_inflates_back_and_release_follows_takeover() {
        for reset in [false, true] {
            let p = DeflateParams {
                server_max_window_bits: 9,
                client_max_window_bits: 9,
                server_no_context_takeover: reset,
                client_no_context_takeover: reset,
                min_compress_bytes: 0,
            };
            let mut def = Deflater::new(&p);
            let mut inf = Inflater::new(&p, 1 << 20, 1 << 20);
            for i in 0..4u32 {
                let msg: Vec<u8> = (0..3000u32).map(|j| ((j * i) % 251) as u8).collect();
                let mut out = BytesMut::new();
                def.encode_frame(&mut out, OpCode::Binary, &msg);
                assert_eq!(out[0], 0x80 | 0x40 | 0x2);
                let len = out.len();
                let hlen = len - payload_len(&out);
                let got = inflate(&mut inf, false, &[&out[hlen..]]).unwrap();
                assert_eq!(got, msg);
            }
            // The first tick after use keeps the contexts (the session is busy); the second
            // frees what may be freed.
            def.idle_tick();
            inf.idle_tick();
            assert!(def.is_allocated());
            assert!(inf.is_allocated());
            def.idle_tick();
            inf.idle_tick();
            assert!(!def.is_allocated());
            assert_eq!(inf.is_allocated(), !reset);
        }
    }

    #[test]
    fn a_released_compressor_continues_a_takeover_stream() {
        let p = DeflateParams {
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            min_compress_bytes: 0,
        };
        let mut def = Deflater::new(&p);
        // The client's side: one inflater for the whole session, its window kept.
        let mut inf = Inflater::new(&p, 1 << 20, 1 << 20);
        let msg = b"the same line, compressed against itself and then again. ".repeat(40);
        let mut sizes = Vec::new();
        for release_before in [false, false, true, false] {
            if release_before {
                def.idle_tick();
                def.idle_tick();
                assert!(!def.is_allocated());
            }
            let mut out = BytesMut::new();
            def.encode_frame(&mut out, OpCode::Text, &msg);
            let payload = payload_len(&out);
            let got = inflate(&mut inf, true, &[&out[out.len() - payload..]]).unwrap();
            assert_eq!(got, msg);
            sizes.push(payload);
        }
        // With history the repeat is smaller; after the release the compressor starts afresh
        // (the first message's bytes exactly), then history helps again.
        assert!(sizes[1] < sizes[0], "{sizes:?}");
        assert_eq!(sizes[2], sizes[0], "{sizes:?}");
        assert_eq!(sizes[3], sizes[1], "{sizes:?}");
    }

    fn payload_len(frame: &[u8]) -> usize {
        match frame[1] & 0x7f {
            126 => usize::from(u16::from_be_bytes([frame[2], frame[3]])),
            127 => usize::try_from(u64::from_be_bytes(frame[2..10].try_into().unwrap())).unwrap(),
            n => usize::from(n),
        }
    }
}
