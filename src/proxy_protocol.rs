//! The PROXY protocol header (HAProxy's spec, versions 1 and 2) written to a backend connection
//! before any payload, so that backends learn the real client address.
//!
//! Owns encoding only (pure). Version 2 carries wsgate's own TLVs in the custom range:
//! the authenticated subject, the route path and the session id (see [`TLV_SUBJECT`] etc. and
//! README.md). Cookie and token values are never put in a header. A header whose length does not
//! fit its 16-bit length field is refused ([`EncodeError`]), never written cut or wrapped; the
//! subject bound ([`MAX_SUBJECT_BYTES`], checked with the credential) and the route path bound
//! ([`MAX_ROUTE_BYTES`], checked in the configuration) keep every real header far below it.

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

/// Longest authenticated subject, in bytes: a credential naming a longer one is refused (401)
/// before any backend is connected, whether or not the route writes a PROXY header.
pub const MAX_SUBJECT_BYTES: usize = 4096;
/// Longest route path, in bytes, on a route with `proxy_protocol = "v2"` (checked in the
/// configuration).
pub const MAX_ROUTE_BYTES: usize = 4096;

/// A header that cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The v2 header's addresses and TLVs would not fit its 16-bit length field.
    #[error("the PROXY v2 header would carry {0} bytes after its fixed part; at most 65535 fit")]
    TooLong(usize),
}

/// Which header a route writes (`proxy_protocol = "v1"` or `"v2"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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

/// Encode the header, or refuse one that does not fit (v2 only; a v1 line always fits).
pub fn encode(version: Version, h: &Header<'_>) -> Result<Vec<u8>, EncodeError> {
    let (src, dst) = same_family(h.source, h.destination);
    match version {
        Version::V1 => {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            Ok(format!(
                "PROXY {family} {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            )
            .into_bytes())
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
            // Version 2, command PROXY.
            v2_with_tlvs(0x21, family, body, h)
        }
    }
}

/// Encode the header for a client whose address is not an IP address (a client of a unix-socket
/// listener); `h.source` and `h.destination` are not written. Spec §2.1: v1 says `PROXY UNKNOWN`,
/// after which the receiver uses the connection's own addresses. Spec §2.2: v2 uses the LOCAL
/// command with the AF_UNSPEC family and no address block, as HAProxy itself sends for a family it
/// cannot carry; the receiver keeps the connection's own addresses. wsgate's TLVs (subject,
/// route, session id) follow the empty address block and are counted in the length; a receiver
/// that treats an AF_UNSPEC payload as one opaque address block skips them.
pub fn encode_unknown(version: Version, h: &Header<'_>) -> Result<Vec<u8>, EncodeError> {
    match version {
        Version::V1 => Ok(b"PROXY UNKNOWN\r\n".to_vec()),
        // Version 2, command LOCAL; AF_UNSPEC, UNSPEC.
        Version::V2 => v2_with_tlvs(0x20, 0x00, Vec::new(), h),
    }
}

/// A v2 header: the fixed part, the address block `body`, then wsgate's TLVs from `h`.
fn v2_with_tlvs(
    ver_cmd: u8,
    family: u8,
    mut body: Vec<u8>,
    h: &Header<'_>,
) -> Result<Vec<u8>, EncodeError> {
    let session_id = h.session_id.to_string();
    let mut tlvs: Vec<(u8, &[u8])> = Vec::with_capacity(3);
    if let Some(subject) = h.subject {
        tlvs.push((TLV_SUBJECT, subject.as_bytes()));
    }
    tlvs.push((TLV_ROUTE, h.route.as_bytes()));
    tlvs.push((TLV_SESSION_ID, session_id.as_bytes()));
    // Spec §2.2: the length field counts the address block and the TLVs. Check before
    // building: every TLV length is at most the total, so it fits too.
    let total = tlvs
        .iter()
        .map(|(_, v)| 3 + v.len())
        .fold(body.len(), usize::saturating_add);
    let total16 = u16::try_from(total).map_err(|_| EncodeError::TooLong(total))?;
    for (kind, value) in tlvs {
        let len = u16::try_from(value.len()).map_err(|_| EncodeError::TooLong(total))?;
        body.push(kind);
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(value);
    }
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(ver_cmd);
    out.push(family);
    out.extend_from_slice(&total16.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
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
            encode(Version::V1, &h).unwrap(),
            b"PROXY TCP4 127.0.0.2 127.0.0.1 50000 8080\r\n"
        );
        let h = header("[::1]:5", "[::1]:6");
        assert_eq!(
            encode(Version::V1, &h).unwrap(),
            b"PROXY TCP6 ::1 ::1 5 6\r\n"
        );
        let h = header("[::ffff:10.1.2.3]:5", "10.0.0.1:6");
        assert_eq!(
            encode(Version::V1, &h).unwrap(),
            b"PROXY TCP4 10.1.2.3 10.0.0.1 5 6\r\n"
        );
    }

    #[test]
    fn v2_layout_and_tlvs() {
        let h = header("127.0.0.2:50000", "127.0.0.1:8080");
        let b = encode(Version::V2, &h).unwrap();
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
        let b = encode(Version::V2, &h).unwrap();
        assert_eq!(b[13], 0x21);
        assert_eq!(u16::from_be_bytes([b[14], b[15]]) as usize, 36 + 8 + 5);
        assert_eq!(b[16 + 36], TLV_ROUTE);
    }

    #[test]
    fn v2_too_long_is_refused_not_wrapped() {
        let subject = "s".repeat(70_000);
        let mut h = header("127.0.0.2:1", "127.0.0.1:2");
        h.subject = Some(&subject);
        assert!(matches!(
            encode(Version::V2, &h),
            Err(EncodeError::TooLong(n)) if n > 65_535
        ));
        // Exactly at the limit: 12 address bytes, three TLVs.
        let fits = "s".repeat(65_535 - 12 - 3 * 3 - "/chat".len() - "42".len());
        h.subject = Some(&fits);
        let b = encode(Version::V2, &h).unwrap();
        assert_eq!(b.len(), 16 + 65_535);
        let one_more = format!("{fits}s");
        h.subject = Some(&one_more);
        assert_eq!(encode(Version::V2, &h), Err(EncodeError::TooLong(65_536)));
    }

    /// A unix-socket client: `PROXY UNKNOWN` for v1, LOCAL with AF_UNSPEC (no addresses, the
    /// TLVs still there) for v2, as `ppp` (an independent parser of the spec) reads them.
    #[test]
    fn unknown_source_v1_and_v2() {
        let h = header("0.0.0.0:0", "0.0.0.0:0");
        let v1 = encode_unknown(Version::V1, &h).unwrap();
        assert_eq!(v1, b"PROXY UNKNOWN\r\n");
        let parsed = ppp::v1::Header::try_from(std::str::from_utf8(&v1).unwrap()).unwrap();
        assert!(matches!(parsed.addresses, ppp::v1::Addresses::Unknown));

        let v2 = encode_unknown(Version::V2, &h).unwrap();
        assert_eq!(&v2[..12], &V2_SIGNATURE);
        assert_eq!(v2[12], 0x20);
        assert_eq!(v2[13], 0x00);
        let parsed = ppp::v2::Header::try_from(v2.as_slice()).unwrap();
        assert_eq!(parsed.header.len(), v2.len());
        assert_eq!(parsed.command, ppp::v2::Command::Local);
        assert!(matches!(parsed.addresses, ppp::v2::Addresses::Unspecified));
        // No address block: the TLVs follow the fixed part directly. (`ppp` treats an AF_UNSPEC
        // payload as one opaque address block, so it is not asked for them.)
        assert_eq!(
            &v2[16..],
            b"\xE0\x00\x05alice\xE1\x00\x05/chat\xE2\x00\x0242"
        );
    }

    use proptest::prelude::*;

    fn addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
            // IPv4-mapped IPv6, as a dual-stack listener reports IPv4 clients.
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(
                IpAddr::V6(std::net::Ipv4Addr::from(ip).to_ipv6_mapped()),
                port
            )),
        ]
    }

    /// Lengths around the places where a header stops fitting, and everything in between.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            0usize..64,
            4000usize..4200,
            32_700usize..32_800,
            65_400usize..65_600,
            0usize..140_000,
        ]
        .prop_map(|n| "x".repeat(n))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Every header the encoder writes parses back (with the `ppp` crate, an independent
        /// implementation of HAProxy's spec) to exactly what it was given; the only other
        /// outcome is a refusal, and only for a header that cannot fit.
        #[test]
        fn v2_parses_back_or_is_refused(
            src in addr(),
            dst in addr(),
            subject in proptest::option::of(text()),
            route in text(),
            session_id in any::<u64>(),
        ) {
            let h = Header { source: src, destination: dst, subject: subject.as_deref(), route: &route, session_id };
            let id = session_id.to_string();
            let (want_src, want_dst) = same_family(src, dst);
            let addr_len = if want_src.is_ipv4() { 12 } else { 36 };
            let need = addr_len + subject.as_ref().map_or(0, |s| 3 + s.len()) + 3 + route.len() + 3 + id.len();
            let bytes = match encode(Version::V2, &h) {
                Ok(b) => b,
                Err(EncodeError::TooLong(n)) => {
                    prop_assert_eq!(n, need);
                    prop_assert!(n > usize::from(u16::MAX), "refused a header of {} bytes", n);
                    return Ok(());
                }
            };
            prop_assert!(need <= usize::from(u16::MAX), "{}", need);
            let parsed = ppp::v2::Header::try_from(bytes.as_slice()).expect("ppp parses the header");
            prop_assert_eq!(parsed.header.len(), bytes.len(), "the length field covers the whole header");
            prop_assert_eq!(parsed.command, ppp::v2::Command::Proxy);
            prop_assert_eq!(parsed.protocol, ppp::v2::Protocol::Stream);
            let got = match parsed.addresses {
                ppp::v2::Addresses::IPv4(a) => (
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                ),
                ppp::v2::Addresses::IPv6(a) => (
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                ),
                other => panic!("unexpected addresses {other:?}"),
            };
            prop_assert_eq!(got, (want_src, want_dst));
            // The mapped forms name the same endpoints as the input.
            let canon = |a: SocketAddr| match a.ip() {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, |v4| SocketAddr::from((v4, a.port()))),
                IpAddr::V4(_) => a,
            };
            prop_assert_eq!((canon(got.0), canon(got.1)), (canon(src), canon(dst)));
            let tlvs: Vec<(u8, Vec<u8>)> = parsed
                .tlvs()
                .map(|t| t.map(|t| (t.kind, t.value.to_vec())))
                .collect::<Result<_, _>>()
                .expect("ppp parses the TLVs");
            let mut want = Vec::new();
            if let Some(s) = &subject {
                want.push((TLV_SUBJECT, s.as_bytes().to_vec()));
            }
            want.push((TLV_ROUTE, route.as_bytes().to_vec()));
            want.push((TLV_SESSION_ID, id.into_bytes()));
            prop_assert_eq!(tlvs, want);
        }

        #[test]
        fn v1_parses_back(src in addr(), dst in addr()) {
            let h = Header { source: src, destination: dst, subject: None, route: "/", session_id: 1 };
            let bytes = encode(Version::V1, &h).unwrap();
            let text = std::str::from_utf8(&bytes).unwrap();
            let parsed = ppp::v1::Header::try_from(text).expect("ppp parses the line");
            let (want_src, want_dst) = same_family(src, dst);
            let got = match parsed.addresses {
                ppp::v1::Addresses::Tcp4(a) => (
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                ),
                ppp::v1::Addresses::Tcp6(a) => (
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                ),
                other => panic!("unexpected addresses {other:?}"),
            };
            prop_assert_eq!(got, (want_src, want_dst));
        }
    }
}
