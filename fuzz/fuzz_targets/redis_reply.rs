//! The RESP2 reply parser of the Redis token source (`wsgate::target::redis::parse_reply`) on
//! arbitrary bytes, read as a stream of replies, and the value parser (`parse_value`) on every
//! bulk string it yields.
//!
//! Checked: no panic; a reply takes at least one byte and no more than there are; it is the
//! bytes it took, as this target reads them on its own (type byte, a line without CR or LF, CRLF;
//! a bulk string's declared length, body and CRLF), and the bytes this target writes for it parse
//! back to it; no bulk string is longer than `MAX_BULK_BYTES` and no line longer than
//! `MAX_LINE_BYTES`; every shorter prefix of a reply asks for more bytes, as does nothing else
//! once the limits are passed (the parser never waits past `MAX_LINE_BYTES + MAX_BULK_BYTES`
//! plus framing); the bytes after a reply do not change it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::target::redis::{parse_reply, parse_value, Reply, MAX_BULK_BYTES, MAX_LINE_BYTES};

/// Most replies read from one input.
const MAX_REPLIES: usize = 64;

/// The canonical bytes of a reply, written here without the parser.
fn encode(r: &Reply) -> Vec<u8> {
    match r {
        Reply::Simple(s) => format!("+{s}\r\n").into_bytes(),
        Reply::Error(s) => format!("-{s}\r\n").into_bytes(),
        Reply::Integer(i) => format!(":{i}\r\n").into_bytes(),
        Reply::Nil => b"$-1\r\n".to_vec(),
        Reply::Bulk(b) => {
            let mut out = format!("${}\r\n", b.len()).into_bytes();
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
            out
        }
    }
}

/// The first line after the type byte, read plainly: the bytes before the first CRLF.
fn first_line(buf: &[u8]) -> Option<&[u8]> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    Some(&buf[..end])
}

/// `taken` is the reply `r`, read independently of the parser.
fn check_taken(r: &Reply, taken: &[u8]) {
    let line = first_line(&taken[1..]).expect("a reply without a CRLF line");
    assert!(
        line.len() <= MAX_LINE_BYTES,
        "a line of {} bytes",
        line.len()
    );
    assert!(
        !line.contains(&b'\r') && !line.contains(&b'\n'),
        "CR or LF inside a line"
    );
    let text = std::str::from_utf8(line).ok();
    match r {
        Reply::Simple(s) => assert_eq!((taken[0], text), (b'+', Some(s.as_str()))),
        Reply::Error(s) => assert_eq!((taken[0], text), (b'-', Some(s.as_str()))),
        Reply::Integer(i) => {
            assert_eq!(taken[0], b':');
            assert_eq!(text.and_then(|t| t.parse::<i64>().ok()), Some(*i));
            assert_eq!(taken.len(), line.len() + 3);
        }
        Reply::Nil => {
            assert!(taken[0] == b'$' || taken[0] == b'*');
            assert_eq!(text.and_then(|t| t.parse::<i64>().ok()), Some(-1));
            assert_eq!(taken.len(), line.len() + 3);
        }
        Reply::Bulk(b) => {
            assert_eq!(taken[0], b'$');
            assert!(b.len() <= MAX_BULK_BYTES, "a value of {} bytes", b.len());
            assert_eq!(text.and_then(|t| t.parse::<usize>().ok()), Some(b.len()));
            let head = line.len() + 3;
            assert_eq!(&taken[head..head + b.len()], b.as_slice());
            assert_eq!(&taken[head + b.len()..], b"\r\n");
            let _ = parse_value(b);
        }
    }
    if !matches!(r, Reply::Bulk(_)) {
        assert_eq!(taken.len(), line.len() + 3);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    for _ in 0..MAX_REPLIES {
        match parse_reply(rest) {
            Err(_) => return,
            Ok(None) => {
                // Waiting is only allowed within the bounds.
                assert!(rest.len() < MAX_LINE_BYTES + MAX_BULK_BYTES + 8);
                return;
            }
            Ok(Some((reply, n))) => {
                assert!(n >= 3 && n <= rest.len(), "took {n} of {}", rest.len());
                let taken = &rest[..n];
                check_taken(&reply, taken);
                assert_eq!(parse_reply(taken), Ok(Some((reply.clone(), n))));
                for cut in [0, 1, n / 2, n - 1] {
                    assert_eq!(parse_reply(&taken[..cut]), Ok(None), "prefix of {cut}");
                }
                let canonical = encode(&reply);
                assert_eq!(parse_reply(&canonical), Ok(Some((reply, canonical.len()))));
                rest = &rest[n..];
            }
        }
    }
});
