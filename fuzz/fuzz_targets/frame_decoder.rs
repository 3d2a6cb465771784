//! The client frame decoder (`wsgate::ws::Decoder`), fed the same bytes three ways: whole, cut
//! into pieces at positions taken from the input, and one byte at a time.
//!
//! Input layout (every field reads as 0 past the end of the input):
//! - bytes 0..4: `max_frame_size` (u32, little-endian)
//! - bytes 4..8: `max_message_size` (u32, little-endian)
//! - byte 8: `max_fragments`
//! - byte 9: number of cuts (mod 16), then that many u16 (little-endian) cut positions
//! - the rest: the bytes a client sent.
//!
//! Checked on every run: no panic; once an error is returned, every later call returns the same
//! error; after a Close nothing more is decoded and later input is discarded; data pieces never
//! exceed `max_frame_size`, a message never exceeds `max_message_size` and (when fed whole, where
//! each frame is one piece) `max_fragments`; `first`/`last`/`text` describe a well-formed message
//! sequence and agree with `in_message()`; the text handed out so far is a prefix of valid UTF-8,
//! and a completed text message is valid UTF-8; control payloads are at most 125 bytes.
//! Differential: the three runs give the same messages, control frames and error, except that a
//! run fed in pieces may hand out the valid start of a text frame whose later bytes are invalid
//! UTF-8 before it fails with 1007 (the whole run fails before handing out any of that frame).

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wsgate::ws::close::is_valid_wire_code;
use wsgate::ws::{CloseCode, Decoder, DecoderLimits, Frame, OwnedFrame, ProtocolError};

/// An owned copy of a decoded [`Frame`].
type Item = OwnedFrame;

fn to_item(frame: Frame<'_>) -> Item {
    frame.to_owned_frame()
}

/// What one run produced.
struct Run {
    items: Vec<Item>,
    end: Result<(), ProtocolError>,
}

/// Checks each item against the limits and the message structure, as it is decoded.
struct Checker {
    limits: DecoderLimits,
    /// Each frame arrives whole, so each Data item is one frame.
    whole: bool,
    /// The message in progress: its type, its bytes so far and its Data items so far.
    message: Option<(bool, Vec<u8>, u64)>,
    closed: bool,
}

impl Checker {
    fn item(&mut self, item: &Item, in_message: bool) {
        assert!(!self.closed, "an item after Close: {item:?}");
        match item {
            OwnedFrame::Data {
                payload,
                text,
                first,
                last,
            } => {
                assert!(
                    payload.len() as u64 <= self.limits.max_frame_size,
                    "a data piece of {} bytes, max_frame_size {}",
                    payload.len(),
                    self.limits.max_frame_size
                );
                if *first {
                    assert!(self.message.is_none(), "a new message inside another one");
                    self.message = Some((*text, Vec::new(), 0));
                }
                let Some((message_text, bytes, pieces)) = self.message.as_mut() else {
                    panic!("a continuation piece without a message in progress");
                };
                assert_eq!(*message_text, *text, "the message type changed");
                bytes.extend_from_slice(payload);
                *pieces += 1;
                assert!(
                    bytes.len() as u64 <= self.limits.max_message_size,
                    "a message of {} bytes so far, max_message_size {}",
                    bytes.len(),
                    self.limits.max_message_size
                );
                if self.whole {
                    assert!(
                        *pieces <= self.limits.max_fragments,
                        "{pieces} frames in a message, max_fragments {}",
                        self.limits.max_fragments
                    );
                }
                if *text {
                    match std::str::from_utf8(bytes) {
                        Ok(_) => {}
                        Err(e) => {
                            // Only a code point cut at the end of what has arrived so far.
                            assert!(
                                e.error_len().is_none() && !*last,
                                "invalid UTF-8 handed out in a text message: {e}"
                            );
                        }
                    }
                }
                if *last {
                    self.message = None;
                }
                assert_eq!(in_message, !*last, "in_message() after {item:?}");
            }
            OwnedFrame::Ping(p) | OwnedFrame::Pong(p) => {
                assert!(p.len() <= 125, "a control payload of {} bytes", p.len());
                assert_eq!(in_message, self.message.is_some());
            }
            OwnedFrame::Close(c) => {
                if let Some((code, reason)) = c {
                    assert!(is_valid_wire_code(*code), "close code {code} accepted");
                    assert!(reason.len() <= 123);
                }
                assert_eq!(in_message, self.message.is_some());
                self.closed = true;
            }
        }
    }
}

/// Decode `pieces` in order, each appended to the buffer once the decoder asks for more.
fn run(limits: DecoderLimits, pieces: &[&[u8]], whole: bool) -> Run {
    let mut dec = Decoder::new(limits);
    let mut checker = Checker {
        limits,
        whole,
        message: None,
        closed: false,
    };
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut rest = pieces.iter();
    loop {
        match dec.decode(&mut buf) {
            Ok(Some(frame)) => {
                let item = to_item(frame);
                checker.item(&item, dec.in_message());
                items.push(item);
            }
            Ok(None) => {
                if checker.closed {
                    assert!(buf.is_empty(), "input after Close was kept");
                }
                match rest.next() {
                    Some(piece) => buf.extend_from_slice(piece),
                    None => return Run { items, end: Ok(()) },
                }
            }
            Err(e) => {
                assert!(!checker.closed, "an error after Close: {e}");
                assert!(
                    [1002, 1007, 1009].contains(&e.code.get()),
                    "close code {}",
                    e.code
                );
                assert!(e.reason.len() <= 123 && e.reason.is_ascii());
                // Errors are final, whatever arrives next.
                assert_eq!(dec.decode(&mut buf), Err(e));
                for piece in rest {
                    buf.extend_from_slice(piece);
                    assert_eq!(dec.decode(&mut buf), Err(e));
                }
                return Run { items, end: Err(e) };
            }
        }
    }
}

/// Join adjacent Data items of one message (nothing in between), so that runs that cut the
/// input differently can be compared.
fn merge(items: &[Item]) -> Vec<Item> {
    let mut out: Vec<Item> = Vec::new();
    for item in items {
        if let (
            Some(OwnedFrame::Data {
                payload,
                text,
                last,
                ..
            }),
            OwnedFrame::Data {
                payload: more,
                text: more_text,
                first: false,
                last: more_last,
            },
        ) = (out.last_mut(), item)
        {
            if !*last {
                assert_eq!(text, more_text);
                payload.extend_from_slice(more);
                *last = *more_last;
                continue;
            }
        }
        out.push(item.clone());
    }
    out
}

/// `reference` was fed whole; `other` the same bytes in pieces.
fn same_outcome(reference: &Run, other: &Run, how: &str) {
    assert_eq!(reference.end, other.end, "a different end when fed {how}");
    let r = merge(&reference.items);
    let o = merge(&other.items);
    if r == o {
        return;
    }
    // Only allowed difference: fed in pieces, the valid start of a text frame with invalid
    // UTF-8 further on may come out before the error.
    let end = other.end.map(|_| 0).unwrap_or_else(|e| e.code.get());
    assert_eq!(
        end,
        CloseCode::INVALID_PAYLOAD.get(),
        "different items when fed {how}:\nwhole:  {r:?}\npieces: {o:?}"
    );
    let Some((
        OwnedFrame::Data {
            payload,
            text: true,
            first,
            last: false,
        },
        o_head,
    )) = o.split_last()
    else {
        panic!("different items when fed {how}:\nwhole:  {r:?}\npieces: {o:?}");
    };
    if r.len() == o.len() {
        let Some((
            OwnedFrame::Data {
                payload: r_payload,
                text: true,
                first: r_first,
                last: false,
            },
            r_head,
        )) = r.split_last()
        else {
            panic!("different items when fed {how}:\nwhole:  {r:?}\npieces: {o:?}");
        };
        assert_eq!(r_head, o_head, "different items when fed {how}");
        assert_eq!(r_first, first, "different items when fed {how}");
        assert!(
            payload.starts_with(r_payload) && payload.len() > r_payload.len(),
            "different items when fed {how}:\nwhole:  {r:?}\npieces: {o:?}"
        );
    } else {
        assert_eq!(r, o_head, "different items when fed {how}");
    }
}

/// Reads little-endian fields, as 0 past the end.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader(data);
    let limits = DecoderLimits {
        max_frame_size: u64::from(u32::from_le_bytes(r.bytes())),
        max_message_size: u64::from(u32::from_le_bytes(r.bytes())),
        max_fragments: u64::from(u8::from_le_bytes(r.bytes())),
    };
    let cuts = usize::from(r.bytes::<1>()[0] % 16);
    let mut cuts: Vec<u16> = (0..cuts).map(|_| u16::from_le_bytes(r.bytes())).collect();
    let stream = r.0;
    let len = stream.len();
    let mut at: Vec<usize> = cuts.drain(..).map(|c| usize::from(c) % (len + 1)).collect();
    at.sort_unstable();
    let mut pieces: Vec<&[u8]> = Vec::with_capacity(at.len() + 1);
    let mut start = 0;
    for cut in at {
        pieces.push(&stream[start..cut]);
        start = cut;
    }
    pieces.push(&stream[start..]);

    let whole = run(limits, &[stream], true);
    let cut = run(limits, &pieces, false);
    same_outcome(&whole, &cut, "in pieces");
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    let bytewise = run(limits, &bytes, false);
    same_outcome(&whole, &bytewise, "one byte at a time");
});
