//! Close frames (RFC 6455 §5.5.1, §7.1.5, §7.4): status codes, parsing a received Close body
//! and encoding the Close frame a server sends.
//!
//! Owns: which status codes are valid on the wire, the layout of a Close body (2-byte big-endian
//! code + UTF-8 reason) and the <= 125-byte limit on what the server sends.
//! Does not own: the closing handshake itself (who sends what when, timeouts, closing the TCP
//! connection) or unmasking (the payload given to [`parse_close_payload`] is already unmasked).

use bytes::BytesMut;

use crate::ws::frame::{encode_header, OpCode, ProtocolError, MAX_SERVER_HEADER_BYTES};

/// A close status code that may go on the wire (RFC 6455 §7.4). Values come only from the
/// constants below or from [`CloseCode::from_wire`], so the codes that MUST NOT be sent in a
/// Close frame (1005, 1006, 1015) and the invalid ranges cannot be encoded. Those codes exist
/// only as numbers in the access log, for "no code" and "no Close" (RFC 6455 §7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(u16);

impl CloseCode {
    pub const NORMAL: CloseCode = CloseCode(1000);
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// The server is restarting: the client may reconnect (with a random delay).
    pub const SERVICE_RESTART: CloseCode = CloseCode(1012);
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);

    /// A code received from a peer, if it is one that may be sent on the wire.
    pub fn from_wire(code: u16) -> Option<CloseCode> {
        is_valid_wire_code(code).then_some(CloseCode(code))
    }

    /// The number.
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl PartialEq<u16> for CloseCode {
    fn eq(&self, other: &u16) -> bool {
        self.0 == *other
    }
}

/// Largest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;
/// Largest reason that fits next to the 2-byte code in a control frame.
const MAX_REASON_BYTES: usize = MAX_CONTROL_PAYLOAD - 2;

const ONE_BYTE_BODY: ProtocolError = ProtocolError {
    code: CloseCode::PROTOCOL_ERROR,
    reason: "close frame with a 1-byte payload",
};
const INVALID_CODE: ProtocolError = ProtocolError {
    code: CloseCode::PROTOCOL_ERROR,
    reason: "close frame with an invalid status code",
};
const CLOSE_TOO_LONG: ProtocolError = ProtocolError {
    code: CloseCode::PROTOCOL_ERROR,
    reason: "close frame payload longer than 125 bytes",
};
const REASON_NOT_UTF8: ProtocolError = ProtocolError {
    code: CloseCode::INVALID_PAYLOAD,
    reason: "close reason is not valid UTF-8",
};

/// True for codes a peer may send on the wire: 1000-1003, 1007-1014, 3000-4999.
/// (1004, 1005, 1006, 1015, 0-999, 1016-2999 and >= 5000 are invalid on the wire.)
pub fn is_valid_wire_code(code: u16) -> bool {
    // RFC 6455 §7.4.1: 1004 is reserved, 1005/1006/1015 MUST NOT be sent in a Close frame;
    // §7.4.2: 0-999 are unused, 1000-2999 are for the protocol (only registered ones are
    // valid: 1000-1003, 1007-1014 per the IANA registry), 3000-4999 are for libraries and
    // applications.
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A validated Close frame body: the code and a UTF-8 reason (may be empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    pub code: CloseCode,
    pub reason: &'a str,
}

/// Parse a received Close payload (already unmasked). Empty payload -> `Ok(None)`.
/// 1-byte payload -> 1002; invalid code -> 1002; reason not UTF-8 -> 1007.
/// (RFC 6455 §5.5.1, §7.1.5, §7.4)
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<CloseFrame<'_>>, ProtocolError> {
    // RFC 6455 §5.5: all control frames MUST have a payload of 125 bytes or less.
    if payload.len() > MAX_CONTROL_PAYLOAD {
        return Err(CLOSE_TOO_LONG);
    }
    match payload {
        // RFC 6455 §5.5.1 / §7.1.5: no body means "no status code" (1005 locally).
        [] => Ok(None),
        // RFC 6455 §5.5.1: if there is a body, its first two bytes MUST be the status code.
        [_] => Err(ONE_BYTE_BODY),
        [hi, lo, reason @ ..] => {
            // RFC 6455 §7.4: only codes valid on the wire may be received.
            let code = CloseCode::from_wire(u16::from_be_bytes([*hi, *lo])).ok_or(INVALID_CODE)?;
            // RFC 6455 §5.5.1: the reason is UTF-8; §8.1: invalid UTF-8 fails the connection
            // (1007).
            let reason = std::str::from_utf8(reason).map_err(|_| REASON_NOT_UTF8)?;
            Ok(Some(CloseFrame { code, reason }))
        }
    }
}

/// Longest prefix of `reason` that is at most `max` bytes and ends on a char boundary.
fn truncate_on_char_boundary(reason: &str, max: usize) -> &str {
    if reason.len() <= max {
        return reason;
    }
    let mut end = max;
    // A UTF-8 code point is at most 4 bytes, so this runs at most 3 times.
    while end > 0 && !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason.get(..end).unwrap_or_default()
}

/// Append a complete, unmasked server Close frame (header + 2-byte code + reason) to `out`.
/// The reason is truncated on a char boundary so that the payload stays <= 125 bytes.
/// `code == None` writes a Close frame with an empty payload (the reason is then ignored,
/// RFC 6455 §5.5.1: a reason may only follow a code).
pub fn encode_close(code: Option<CloseCode>, reason: &str, out: &mut BytesMut) {
    let mut header = [0u8; MAX_SERVER_HEADER_BYTES];
    match code {
        None => {
            let n = encode_header(true, OpCode::Close, 0, &mut header);
            out.extend_from_slice(header.get(..n).unwrap_or_default());
        }
        Some(code) => {
            // RFC 6455 §5.5: control frame payloads are <= 125 bytes.
            let reason = truncate_on_char_boundary(reason, MAX_REASON_BYTES);
            let payload_len = 2 + reason.len();
            let n = encode_header(true, OpCode::Close, payload_len as u64, &mut header);
            out.reserve(n + payload_len);
            out.extend_from_slice(header.get(..n).unwrap_or_default());
            // RFC 6455 §5.5.1: the code is a 2-byte unsigned integer in network byte order.
            out.extend_from_slice(&code.get().to_be_bytes());
            out.extend_from_slice(reason.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_code_validity() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
        ] {
            assert!(is_valid_wire_code(code), "{code}");
        }
        for code in [3000, 3999, 4000, 4999] {
            assert!(is_valid_wire_code(code), "{code}");
        }
        for code in [
            0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!is_valid_wire_code(code), "{code}");
        }
        let valid = (0..=u16::MAX).filter(|c| is_valid_wire_code(*c)).count();
        assert_eq!(valid, 4 + 8 + 2000);
    }

    #[test]
    fn constants() {
        assert_eq!(CloseCode::NORMAL, 1000);
        assert_eq!(CloseCode::GOING_AWAY, 1001);
        assert_eq!(CloseCode::PROTOCOL_ERROR, 1002);
        assert_eq!(CloseCode::UNSUPPORTED_DATA, 1003);
        assert_eq!(CloseCode::INVALID_PAYLOAD, 1007);
        assert_eq!(CloseCode::POLICY_VIOLATION, 1008);
        assert_eq!(CloseCode::MESSAGE_TOO_BIG, 1009);
        assert_eq!(CloseCode::INTERNAL_ERROR, 1011);
    }

    #[test]
    fn parse_valid_payloads() {
        assert_eq!(parse_close_payload(&[]), Ok(None));
        assert_eq!(
            parse_close_payload(&[0x03, 0xE8]),
            Ok(Some(CloseFrame {
                code: CloseCode(1000),
                reason: ""
            }))
        );
        let mut p = vec![0x0F, 0xA0]; // 4000
        p.extend_from_slice("bye ☃".as_bytes());
        assert_eq!(
            parse_close_payload(&p),
            Ok(Some(CloseFrame {
                code: CloseCode(4000),
                reason: "bye ☃"
            }))
        );
        let mut max = vec![0x03, 0xE9];
        max.extend(std::iter::repeat_n(b'x', 123));
        assert_eq!(
            parse_close_payload(&max).map(|c| c.map(|c| c.code)),
            Ok(Some(CloseCode(1001)))
        );
    }

    #[test]
    fn parse_invalid_payloads() {
        assert_eq!(parse_close_payload(&[0x03]).unwrap_err().code, 1002);
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            let p = code.to_be_bytes();
            assert_eq!(parse_close_payload(&p).unwrap_err().code, 1002, "{code}");
        }
        assert_eq!(
            parse_close_payload(&[0x03, 0xE8, b'o', 0xFF])
                .unwrap_err()
                .code,
            1007
        );
        // Truncated code point at the end of the reason.
        assert_eq!(
            parse_close_payload(&[0x03, 0xE8, 0xE2, 0x82])
                .unwrap_err()
                .code,
            1007
        );
        let mut long = vec![0x03, 0xE8];
        long.extend(std::iter::repeat_n(b'x', 124));
        assert_eq!(parse_close_payload(&long).unwrap_err().code, 1002);
    }

    #[test]
    fn error_reasons_fit_a_close_frame() {
        for e in [ONE_BYTE_BODY, INVALID_CODE, CLOSE_TOO_LONG, REASON_NOT_UTF8] {
            assert!(e.reason.len() <= MAX_REASON_BYTES && e.reason.is_ascii());
        }
    }

    #[test]
    fn encode_empty_close() {
        let mut out = BytesMut::new();
        encode_close(None, "ignored", &mut out);
        assert_eq!(&out[..], &[0x88, 0x00]);
    }

    #[test]
    fn encode_code_and_reason() {
        let mut out = BytesMut::from(&b"prefix"[..]);
        encode_close(Some(CloseCode::GOING_AWAY), "shutting down", &mut out);
        assert_eq!(&out[..6], b"prefix");
        let frame = &out[6..];
        assert_eq!(frame[0], 0x88);
        assert_eq!(frame[1] as usize, 2 + "shutting down".len());
        assert_eq!(
            parse_close_payload(&frame[2..]),
            Ok(Some(CloseFrame {
                code: CloseCode(1001),
                reason: "shutting down"
            }))
        );
        let mut out = BytesMut::new();
        encode_close(Some(CloseCode(1000)), "", &mut out);
        assert_eq!(&out[..], &[0x88, 0x02, 0x03, 0xE8]);
    }

    #[test]
    fn encode_truncates_reason_on_char_boundary() {
        // 122 ASCII bytes + a 3-byte char: 125 bytes of reason, so the char must go.
        let mut reason = "r".repeat(122);
        reason.push('€');
        let mut out = BytesMut::new();
        encode_close(Some(CloseCode(1011)), &reason, &mut out);
        assert_eq!(out[1], 2 + 122);
        let parsed = parse_close_payload(&out[2..]).unwrap().unwrap();
        assert_eq!(parsed.reason, &reason[..122]);

        for len in 0..200 {
            for filler in ["a", "é", "€", "😀"] {
                let reason = filler.repeat(len);
                let mut out = BytesMut::new();
                encode_close(Some(CloseCode(1000)), &reason, &mut out);
                let payload_len = out[1] as usize;
                assert!(payload_len <= 125);
                assert_eq!(out.len(), 2 + payload_len);
                let parsed = parse_close_payload(&out[2..]).unwrap().unwrap();
                assert!(reason.starts_with(parsed.reason));
                // Nothing was dropped that would still have fitted.
                assert!(parsed.reason.len() + filler.len() > 123 || parsed.reason == reason);
            }
        }
    }
}
