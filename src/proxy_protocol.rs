//! The PROXY protocol header (HAProxy's spec, versions 1 and 2) written to a backend connection
//! before any payload, so that backends learn the real client address.
//!
//! Owns encoding only (pure). Version 2 carries wsgate's own TLVs in the custom range:
//! the authenticated subject, the route path and the session id (see [`TLV_SUBJECT`] etc. and
//! README.md). Cookie and token values are never put in a header.

use std::net::{IpAddr, SocketAddr};

/// Version 2 signature (spec §2.2).
pub const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// TLV: the authenticated subject (UTF-8), when the route authenticates.
pub const TLV_SUBJECT: u8 = 0xE0;
/// TLV: the route path (UTF-8).
pub const TLV_ROUTE: u8 = 0xE1;
/// TLV: the session id (ASCII decimal, as in the gateway's log).
pub const TLV_SESSION_ID: u8 = 0xE2;

/// Which header a route writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// What the header says.
#[derive(Debug, Clone)]
pub struct Header<'a> {
    /// The client's address.
    pub source: SocketAddr,
    /// The gateway address the client connected to.
    pub destination: SocketAddr,
    pub subject: Option<&'a str>,
    pub route: &'a str,
    pub session_id: u64,
}

/// Both addresses in one family: IPv4-mapped IPv6 addresses are turned back into IPv4, and a
/// mixed pair is written as IPv6.
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |s: SocketAddr| match s.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), s.port()),
            None => s,
        },
        IpAddr::V4(_) => s,
    };
    let (a, b) = (canon(a), canon(b));
    let widen = |s: SocketAddr| match s.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), s.port()),
        IpAddr::V6(_) => s,
    };
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (widen(a), widen(b))
    }
}

/// Encode the header.
pub fn encode(version: Version, h: &Header<'_>) -> Vec<u8> {
    let (src, dst) = same_family(h.source, h.destination);
    match version {
        Version::V1 => {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            )
            .into_bytes()
        }
        Version::V2 => {
            let mut body = Vec::with_capacity(64);
            let family = match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    body.extend_from_slice(&s.octets());
                    body.extend_from_slice(&d.octets());
                    0x11 // AF_INET, STREAM
                }
                (s, d) => {
                    let v6 = |ip: IpAddr| match ip {
                        IpAddr::V6(v) => v.octets(),
                        IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
                    };
                    body.extend_from_slice(&v6(s));
                    body.extend_from_slice(&v6(d));
                    0x21 // AF_INET6, STREAM
                }
            };
            body.extend_from_slice(&src.port().to_be_bytes());
            body.extend_from_slice(&dst.port().to_be_bytes());
            if let Some(subject) = h.subject {
                push_tlv(&mut body, TLV_SUBJECT, subject.as_bytes());
            }
            push_tlv(&mut body, TLV_ROUTE, h.route.as_bytes());
            push_tlv(
                &mut body,
                TLV_SESSION_ID,
                h.session_id.to_string().as_bytes(),
            );
            let mut out = Vec::with_capacity(16 + body.len());
            out.extend_from_slice(&V2_SIGNATURE);
            out.push(0x21); // version 2, command PROXY
            out.push(family);
            out.extend_from_slice(&(body.len() as u16).to_be_bytes());
            out.extend_from_slice(&body);
            out
        }
    }
}

fn push_tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    // A TLV value is at most 65535 bytes; subjects and paths are far shorter, but never overflow.
    let value = &value[..value.len().min(u16::MAX as usize - 64)];
    out.push(kind);
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(src: &str, dst: &str) -> Header<'static> {
        Header {
            source: src.parse().unwrap(),
            destination: dst.parse().unwrap(),
            subject: Some("alice"),
            route: "/chat",
            session_id: 42,
        }
    }

    #[test]
    fn v1_ipv4_and_ipv6() {
        let h = header("127.0.0.2:50000", "127.0.0.1:8080");
        assert_eq!(
            encode(Version::V1, &h),
            b"PROXY TCP4 127.0.0.2 127.0.0.1 50000 8080\r\n"
        );
        let h = header("[::1]:5", "[::1]:6");
        assert_eq!(encode(Version::V1, &h), b"PROXY TCP6 ::1 ::1 5 6\r\n");
        let h = header("[::ffff:10.1.2.3]:5", "10.0.0.1:6");
        assert_eq!(
            encode(Version::V1, &h),
            b"PROXY TCP4 10.1.2.3 10.0.0.1 5 6\r\n"
        );
    }

    #[test]
    fn v2_layout_and_tlvs() {
        let h = header("127.0.0.2:50000", "127.0.0.1:8080");
        let b = encode(Version::V2, &h);
        assert_eq!(&b[..12], &V2_SIGNATURE);
        assert_eq!(b[12], 0x21);
        assert_eq!(b[13], 0x11);
        let len = u16::from_be_bytes([b[14], b[15]]) as usize;
        assert_eq!(b.len(), 16 + len);
        assert_eq!(&b[16..20], &[127, 0, 0, 2]);
        assert_eq!(&b[20..24], &[127, 0, 0, 1]);
        assert_eq!(u16::from_be_bytes([b[24], b[25]]), 50000);
        assert_eq!(u16::from_be_bytes([b[26], b[27]]), 8080);
        let tlvs = &b[28..];
        assert_eq!(tlvs, b"\xE0\x00\x05alice\xE1\x00\x05/chat\xE2\x00\x0242");
    }

    #[test]
    fn v2_ipv6_without_subject() {
        let mut h = header("[::1]:1", "[::2]:2");
        h.subject = None;
        let b = encode(Version::V2, &h);
        assert_eq!(b[13], 0x21);
        assert_eq!(u16::from_be_bytes([b[14], b[15]]) as usize, 36 + 8 + 5);
        assert_eq!(b[16 + 36], TLV_ROUTE);
    }
}
