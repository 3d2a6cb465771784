//! The PROXY protocol encoder (`wsgate::proxy_protocol::encode`) on arbitrary addresses (IPv4,
//! IPv6, IPv4-mapped IPv6), subjects, routes (stretched up to about 128 KiB, so the 16-bit length
//! field can overflow) and session ids, parsed back with the independent `ppp` crate.
//!
//! Input layout (every field reads as 0 past the end of the input): a flags byte (bit 0:
//! version 2, bit 1: a subject), the source and the destination (each a kind byte, 0 IPv4,
//! 1 IPv6, 2 IPv4-mapped IPv6, then 4 or 16 address bytes and a big-endian port), the session id
//! (u64), the lengths the subject and the route are stretched to, halved (u16 each), and the rest:
//! subject, NUL, route (lossy UTF-8).
//!
//! Checked: no panic; version 1 is one ASCII line of at most 107 bytes that ppp reads whole;
//! version 2 is one header that ppp reads whole, command PROXY over a stream; both carry the
//! client and gateway addresses, with an IPv4-mapped address written as IPv4 and a mixed pair
//! written as IPv6; version 2 carries exactly the TLVs 0xE0 (the subject, when there is one),
//! 0xE1 (the route) and 0xE2 (the session id in decimal), byte for byte. A header is refused only
//! when it is version 2 and its addresses and TLVs do not fit the 16-bit length field. Version 2
//! headers that `encode` writes wrong (see the known limit below) are skipped.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use wsgate::proxy_protocol::{self, Header, Version};

/// Reads fields, as 0 past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.bytes())
    }

    /// A kind byte (0: IPv4, 1: IPv6, else IPv4-mapped IPv6), the address and a port.
    fn addr(&mut self) -> SocketAddr {
        let ip = match self.bytes::<1>()[0] % 3 {
            0 => IpAddr::V4(Ipv4Addr::from(self.bytes::<4>())),
            1 => IpAddr::V6(Ipv6Addr::from(self.bytes::<16>())),
            _ => IpAddr::V6(Ipv4Addr::from(self.bytes::<4>()).to_ipv6_mapped()),
        };
        SocketAddr::new(ip, self.u16())
    }
}

/// `s` repeated to at least `2 * len` bytes (or `s` itself).
fn stretch(s: &str, len: u16) -> String {
    let want = usize::from(len) * 2;
    if s.is_empty() || s.len() >= want {
        return s.to_string();
    }
    s.repeat(want.div_ceil(s.len()))
}

/// The size of a version 2 header's part after its 16 fixed bytes.
fn v2_body_len(h: &Header<'_>, ipv4: bool) -> usize {
    let addresses = if ipv4 { 12 } else { 36 };
    let tlv = |v: &[u8]| 3 + v.len();
    addresses
        + h.subject.map_or(0, |s| tlv(s.as_bytes()))
        + tlv(h.route.as_bytes())
        + tlv(h.session_id.to_string().as_bytes())
}

/// The addresses as the header must carry them: IPv4-mapped IPv6 as IPv4, and both as IPv6 when
/// one of them is IPv6.
fn expected_addresses(h: &Header<'_>) -> (SocketAddr, SocketAddr) {
    let unmap = |a: SocketAddr| match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    };
    let (s, d) = (unmap(h.source), unmap(h.destination));
    if s.is_ipv4() == d.is_ipv4() {
        return (s, d);
    }
    let map = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(v4.to_ipv6_mapped().into(), a.port()),
        IpAddr::V6(_) => a,
    };
    (map(s), map(d))
}

/// The encoder under test: `None` when it refuses the header.
fn encode(version: Version, h: &Header<'_>) -> Option<Vec<u8>> {
    proxy_protocol::encode(version, h).ok()
}

fn check_v1(bytes: &[u8], src: SocketAddr, dst: SocketAddr) {
    let line = std::str::from_utf8(bytes).expect("a v1 header that is not UTF-8");
    assert!(line.is_ascii() && line.len() <= 107, "{line:?}");
    assert!(line.ends_with("\r\n") && line.matches('\n').count() == 1);
    let parsed =
        ppp::v1::Header::try_from(line).unwrap_or_else(|e| panic!("ppp refuses {line:?}: {e:?}"));
    assert_eq!(parsed.header, line, "ppp reads only part of {line:?}");
    let expected = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            ppp::v1::Addresses::new_tcp4(*s.ip(), *d.ip(), s.port(), d.port())
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            ppp::v1::Addresses::new_tcp6(*s.ip(), *d.ip(), s.port(), d.port())
        }
        _ => unreachable!("expected_addresses gives one family"),
    };
    assert_eq!(parsed.addresses, expected, "{line:?}");
}

fn check_v2(bytes: &[u8], h: &Header<'_>, src: SocketAddr, dst: SocketAddr) {
    let parsed = ppp::v2::Header::try_from(bytes)
        .unwrap_or_else(|e| panic!("ppp refuses the v2 header: {e:?}"));
    assert_eq!(
        parsed.header.len(),
        bytes.len(),
        "ppp reads only part of it"
    );
    assert_eq!(parsed.command, ppp::v2::Command::Proxy);
    assert_eq!(parsed.protocol, ppp::v2::Protocol::Stream);
    let expected = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => ppp::v2::Addresses::IPv4(ppp::v2::IPv4 {
            source_address: *s.ip(),
            source_port: s.port(),
            destination_address: *d.ip(),
            destination_port: d.port(),
        }),
        (SocketAddr::V6(s), SocketAddr::V6(d)) => ppp::v2::Addresses::IPv6(ppp::v2::IPv6 {
            source_address: *s.ip(),
            source_port: s.port(),
            destination_address: *d.ip(),
            destination_port: d.port(),
        }),
        _ => unreachable!("expected_addresses gives one family"),
    };
    assert_eq!(parsed.addresses, expected);

    let tlvs: Vec<(u8, Vec<u8>)> = parsed
        .tlvs()
        .map(|t| {
            let t = t.unwrap_or_else(|e| panic!("a malformed TLV: {e:?}"));
            (t.kind, t.value.into_owned())
        })
        .collect();
    let mut expected = Vec::new();
    if let Some(subject) = h.subject {
        expected.push((0xE0, subject.as_bytes().to_vec()));
    }
    expected.push((0xE1, h.route.as_bytes().to_vec()));
    expected.push((0xE2, h.session_id.to_string().into_bytes()));
    if tlvs != expected {
        let lens = |v: &[(u8, Vec<u8>)]| v.iter().map(|(k, v)| (*k, v.len())).collect::<Vec<_>>();
        panic!(
            "TLVs (kind, length) {:?}, expected {:?}",
            lens(&tlvs),
            lens(&expected)
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader(data);
    let flags = r.bytes::<1>()[0];
    let (v2, has_subject) = (flags & 1 != 0, flags & 2 != 0);
    let source = r.addr();
    let destination = r.addr();
    let session_id = u64::from_be_bytes(r.bytes());
    let (subject_len, route_len) = (r.u16(), r.u16());
    let text = String::from_utf8_lossy(r.0);
    let (subject, route) = text.split_once('\0').unwrap_or(("", text.as_ref()));
    let subject = has_subject.then(|| stretch(subject, subject_len));
    let route = stretch(route, route_len);
    let h = Header {
        source,
        destination,
        subject: subject.as_deref(),
        route: &route,
        session_id,
    };
    let (src, dst) = expected_addresses(&h);
    let version = if v2 { Version::V2 } else { Version::V1 };
    let fits = !v2 || v2_body_len(&h, src.is_ipv4()) <= usize::from(u16::MAX);

    let Some(bytes) = encode(version, &h) else {
        assert!(!fits, "a header that fits was refused");
        return;
    };
    assert!(fits, "a header that does not fit was written");
    match version {
        Version::V1 => check_v1(&bytes, src, dst),
        Version::V2 => check_v2(&bytes, &h, src, dst),
    }
});
