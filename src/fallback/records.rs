//! The fallback transport's record format, both directions: `type: u8`, `length: u32`
//! big-endian, `payload`. Pure: bytes in, records out; no I/O.
//!
//! Owns the encoding and the incremental parse (a short input is `Ok(None)`, a declared length
//! beyond the limit is refused before anything is allocated). What a record means to a session
//! is the adapter's business.

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes before a record's payload: type and length.
pub const HEADER_BYTES: usize = 5;

/// A record's type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A text message (UTF-8).
    Text = 0x01,
    /// A binary message.
    Binary = 0x02,
    /// Close: the payload is a WebSocket Close frame body (optional code + reason).
    Close = 0x08,
    /// Server -> client only, empty, not a message: the stream is alive.
    Heartbeat = 0x09,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            0x01 => Some(Kind::Text),
            0x02 => Some(Kind::Binary),
            0x08 => Some(Kind::Close),
            0x09 => Some(Kind::Heartbeat),
            _ => None,
        }
    }
}

/// One record, owning its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: Kind,
    pub payload: Bytes,
}

/// Why a record stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("unknown record type {0:#04x}")]
    UnknownType(u8),
    #[error("record of {len} bytes is larger than the limit of {max}")]
    TooLarge { len: u64, max: u64 },
}

/// Append one record to `out`.
pub fn encode(kind: Kind, payload: &[u8], out: &mut BytesMut) {
    // Payloads are bounded by max_message_size, itself at most u32::MAX (config).
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.reserve(HEADER_BYTES + payload.len());
    out.put_u8(kind as u8);
    out.put_u32(len);
    out.extend_from_slice(payload);
}

/// Parse the record at the start of `buf`: `Ok(None)` when `buf` does not hold all of it yet
/// (nothing consumed); otherwise the record and the bytes it took. A declared length over
/// `max_payload` is refused from the header alone.
pub fn parse(buf: &[u8], max_payload: u64) -> Result<Option<(Record, usize)>, RecordError> {
    let Some(header) = buf.get(..HEADER_BYTES) else {
        if let Some(&b) = buf.first() {
            Kind::from_byte(b).ok_or(RecordError::UnknownType(b))?;
        }
        return Ok(None);
    };
    let kind = Kind::from_byte(header[0]).ok_or(RecordError::UnknownType(header[0]))?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if u64::from(len) > max_payload {
        return Err(RecordError::TooLarge {
            len: u64::from(len),
            max: max_payload,
        });
    }
    let total = HEADER_BYTES + len as usize;
    let Some(payload) = buf.get(HEADER_BYTES..total) else {
        return Ok(None);
    };
    Ok(Some((
        Record {
            kind,
            payload: Bytes::copy_from_slice(payload),
        },
        total,
    )))
}

/// Every record in `buf`, which must hold whole records only (a request body).
pub fn parse_all(mut buf: &[u8], max_payload: u64) -> Result<Vec<Record>, ParseAllError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        match parse(buf, max_payload)? {
            Some((r, used)) => {
                out.push(r);
                buf = &buf[used..];
            }
            None => return Err(ParseAllError::Truncated),
        }
    }
    Ok(out)
}

/// Why a request body's records were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseAllError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("the body ends inside a record")]
    Truncated,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_whatever_the_cut() {
        let mut out = BytesMut::new();
        encode(Kind::Text, b"hello", &mut out);
        encode(Kind::Heartbeat, b"", &mut out);
        encode(Kind::Close, &[0x03, 0xe8, b'o', b'k'], &mut out);
        assert_eq!(&out[..5], &[1, 0, 0, 0, 5]);
        for cut in 0..out.len() {
            let mut at = 0;
            let mut seen = Vec::new();
            // Feed the first `cut` bytes, then all: short input is None and consumes nothing.
            if let Some((r, n)) = parse(&out[..cut], 100).unwrap() {
                assert!(n <= cut);
                seen.push(r);
                at = n;
            }
            while at < out.len() {
                let (r, n) = parse(&out[at..], 100).unwrap().unwrap();
                seen.push(r);
                at += n;
            }
            let kinds: Vec<Kind> = seen.iter().map(|r| r.kind).collect();
            assert_eq!(
                kinds,
                [Kind::Text, Kind::Heartbeat, Kind::Close],
                "cut {cut}"
            );
            assert_eq!(&seen[0].payload[..], b"hello");
        }
        assert_eq!(parse(&[], 100), Ok(None));
        assert_eq!(parse(&[2, 0, 0], 100), Ok(None));
    }

    #[test]
    fn an_oversized_length_is_refused_from_the_header() {
        // Declares 4 GiB - 1 with no payload present: refused without waiting or allocating.
        assert_eq!(
            parse(&[2, 0xff, 0xff, 0xff, 0xff], 1024),
            Err(RecordError::TooLarge {
                len: u64::from(u32::MAX),
                max: 1024
            })
        );
        assert_eq!(
            parse(&[2, 0, 0, 4, 1], 1024).unwrap_err(),
            RecordError::TooLarge {
                len: 1025,
                max: 1024
            }
        );
        assert_eq!(parse(&[2, 0, 0, 4, 0], 1024), Ok(None));
    }

    #[test]
    fn unknown_types_and_truncated_bodies_are_refused() {
        assert_eq!(parse(&[7], 10), Err(RecordError::UnknownType(7)));
        assert_eq!(
            parse_all(&[1, 0, 0, 0, 2, b'a'], 10),
            Err(ParseAllError::Truncated)
        );
        let mut out = BytesMut::new();
        encode(Kind::Binary, &[0, 1, 2], &mut out);
        encode(Kind::Binary, &[], &mut out);
        let all = parse_all(&out, 10).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(&all[0].payload[..], &[0, 1, 2]);
    }
}
