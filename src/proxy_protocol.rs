//! The PROXY protocol header (HAProxy's spec, versions 1 and 2): written to a backend connection
//! before any payload, so that backends learn the real client address, and read from a client
//! connection on a listener behind a load balancer (`[[listener]] proxy_protocol`), so that the
//! gateway learns it.
//!
//! Owns the format, both ways, pure over bytes; the sockets belong to the server.
//!
//! Encoding ([`encode`], [`encode_unknown`]): version 2 carries wsgate's own TLVs in the custom
//! range: the authenticated subject, the route path and the session id (see [`TLV_SUBJECT`] etc.
//! and README.md). Cookie and token values are never put in a header. A header whose length does
//! not fit its 16-bit length field is refused ([`EncodeError`]), never written cut or wrapped; the
//! subject bound ([`MAX_SUBJECT_BYTES`], checked with the credential) and the route path bound
//! ([`MAX_ROUTE_BYTES`], checked in the configuration) keep every real header far below it.
//!
//! Decoding ([`decode`]): over the bytes received so far, the answer is "need more"
//! (`Ok(None)`, nothing consumed), a header with the number of bytes it took
//! (`Ok(Some((Proxied, len)))`), or a [`DecodeError`]. Parsing is strict: a v1 line of at most
//! [`V1_MAX_BYTES`] with single spaces, canonical addresses and ports; a v2 header with the exact
//! signature, version 2, command LOCAL or PROXY, families INET / INET6 over STREAM (UNSPEC only
//! with LOCAL), and at most [`V2_MAX_TLV_BYTES`] after the addresses. TLVs are skipped, not read.

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

/// Longest v1 line, CRLF included (spec §2.1).
pub const V1_MAX_BYTES: usize = 107;
/// Most bytes a received v2 header may carry after its addresses (TLVs, which are skipped). A
/// balancer's TLVs (ALPN, authority, unique id, SSL details) take a few hundred.
pub const V2_MAX_TLV_BYTES: usize = 4096;
/// The fixed part of a v2 header: signature, version/command, family, length.
const V2_FIXED_BYTES: usize = 16;

/// What a received header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxied {
    /// The client's address and the address it connected to, as the balancer saw them.
    Proxy {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// No address to tell: v2 LOCAL (the balancer's own connection, e.g. a health check) or v1
    /// `UNKNOWN`. The connection's own peer address stands.
    Local,
}

/// Why a received header is refused. The label ([`DecodeError::label`]) is the metric's `reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("no PROXY {0} header at the start of the connection")]
    Missing(Version),
    #[error("PROXY v1 line longer than {V1_MAX_BYTES} bytes")]
    V1TooLong,
    #[error("malformed PROXY v1 line: {0}")]
    V1Malformed(&'static str),
    #[error("PROXY v2 version/command byte {0:#04x} (only version 2, LOCAL or PROXY)")]
    V2VersionCommand(u8),
    #[error("PROXY v2 family/protocol byte {0:#04x} not supported")]
    V2Family(u8),
    #[error("PROXY v2 length {0} too short for its addresses")]
    V2Short(u16),
    #[error("PROXY v2 header carries {0} bytes of TLVs; at most {V2_MAX_TLV_BYTES}")]
    V2TooLong(usize),
}

impl DecodeError {
    /// A short fixed label for the refusal metric.
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::Missing(_) => "missing",
            DecodeError::V1TooLong | DecodeError::V2TooLong(_) => "too_long",
            DecodeError::V1Malformed(_)
            | DecodeError::V2VersionCommand(_)
            | DecodeError::V2Family(_)
            | DecodeError::V2Short(_) => "malformed",
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        })
    }
}

/// Decode the header of `version` at the start of `buf`: `Ok(None)` while `buf` is a proper
/// prefix of a possible header, `Ok(Some((header, consumed)))` once it is whole.
pub fn decode(version: Version, buf: &[u8]) -> Result<Option<(Proxied, usize)>, DecodeError> {
    match version {
        Version::V1 => decode_v1(buf),
        Version::V2 => decode_v2(buf),
    }
}

/// Spec §2.1: `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n` or `PROXY UNKNOWN...\r\n`.
fn decode_v1(buf: &[u8]) -> Result<Option<(Proxied, usize)>, DecodeError> {
    const PREFIX: &[u8] = b"PROXY ";
    let n = buf.len().min(PREFIX.len());
    if buf[..n] != PREFIX[..n] {
        return Err(DecodeError::Missing(Version::V1));
    }
    let Some(lf) = buf.iter().take(V1_MAX_BYTES).position(|b| *b == b'\n') else {
        return if buf.len() >= V1_MAX_BYTES {
            Err(DecodeError::V1TooLong)
        } else {
            Ok(None)
        };
    };
    let consumed = lf + 1;
    let Some(line) = buf[..lf].strip_suffix(b"\r") else {
        return Err(DecodeError::V1Malformed("the line does not end with CRLF"));
    };
    let line = std::str::from_utf8(&line[PREFIX.len()..])
        .map_err(|_| DecodeError::V1Malformed("not ASCII"))?;
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        // Spec §2.1: the rest of an UNKNOWN line is ignored.
        return Ok(Some((Proxied::Local, consumed)));
    }
    let fields: Vec<&str> = line.split(' ').collect();
    let [proto, src, dst, sport, dport] = fields[..] else {
        return Err(DecodeError::V1Malformed(
            "expected protocol, two addresses and two ports separated by single spaces",
        ));
    };
    let ip = |s: &str| -> Result<IpAddr, DecodeError> {
        let parsed = match proto {
            "TCP4" => s.parse::<std::net::Ipv4Addr>().map(IpAddr::V4),
            "TCP6" => s.parse::<std::net::Ipv6Addr>().map(IpAddr::V6),
            _ => {
                return Err(DecodeError::V1Malformed(
                    "protocol is not TCP4, TCP6 or UNKNOWN",
                ))
            }
        };
        parsed.map_err(|_| DecodeError::V1Malformed("bad address"))
    };
    let port = |s: &str| -> Result<u16, DecodeError> {
        // Decimal without sign or leading zeros (spec §2.1), 0..=65535.
        let ok = !s.is_empty()
            && s.len() <= 5
            && s.bytes().all(|b| b.is_ascii_digit())
            && (s == "0" || !s.starts_with('0'));
        ok.then(|| s.parse::<u16>().ok())
            .flatten()
            .ok_or(DecodeError::V1Malformed("bad port"))
    };
    let source = SocketAddr::new(ip(src)?, port(sport)?);
    let destination = SocketAddr::new(ip(dst)?, port(dport)?);
    Ok(Some((
        Proxied::Proxy {
            source,
            destination,
        },
        consumed,
    )))
}

/// Spec §2.2: signature, version and command, family and protocol, length, addresses, TLVs.
fn decode_v2(buf: &[u8]) -> Result<Option<(Proxied, usize)>, DecodeError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err(DecodeError::Missing(Version::V2));
    }
    if buf.len() < V2_FIXED_BYTES {
        return Ok(None);
    }
    let ver_cmd = buf[12];
    let local = match ver_cmd {
        0x20 => true,
        0x21 => false,
        other => return Err(DecodeError::V2VersionCommand(other)),
    };
    let family = buf[13];
    let len16 = u16::from_be_bytes([buf[14], buf[15]]);
    let len = usize::from(len16);
    // The address block's size by family; LOCAL may carry any family (or UNSPEC) and its
    // addresses are ignored.
    let addr_len = match (family, local) {
        (0x11, _) => 12, // AF_INET, STREAM
        (0x21, _) => 36, // AF_INET6, STREAM
        (_, true) => 0,
        (other, false) => return Err(DecodeError::V2Family(other)),
    };
    if len < addr_len {
        return Err(DecodeError::V2Short(len16));
    }
    // Refused before waiting for (or keeping) the bytes.
    if len - addr_len > V2_MAX_TLV_BYTES {
        return Err(DecodeError::V2TooLong(len - addr_len));
    }
    let total = V2_FIXED_BYTES + len;
    if buf.len() < total {
        return Ok(None);
    }
    if local {
        return Ok(Some((Proxied::Local, total)));
    }
    let a = &buf[V2_FIXED_BYTES..V2_FIXED_BYTES + addr_len];
    let (source, destination) = if addr_len == 12 {
        let ip = |o: usize| IpAddr::from([a[o], a[o + 1], a[o + 2], a[o + 3]]);
        let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
        (
            SocketAddr::new(ip(0), port(8)),
            SocketAddr::new(ip(4), port(10)),
        )
    } else {
        let ip = |o: usize| {
            let mut b = [0u8; 16];
            b.copy_from_slice(&a[o..o + 16]);
            IpAddr::from(b)
        };
        let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
        (
            SocketAddr::new(ip(0), port(32)),
            SocketAddr::new(ip(16), port(34)),
        )
    };
    Ok(Some((
        Proxied::Proxy {
            source,
            destination,
        },
        total,
    )))
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

    fn proxied(src: &str, dst: &str) -> Proxied {
        Proxied::Proxy {
            source: src.parse().unwrap(),
            destination: dst.parse().unwrap(),
        }
    }

    /// Every proper prefix of a whole header needs more; the whole one decodes to `want`, with
    /// the bytes after it left unconsumed.
    fn whole(version: Version, bytes: &[u8], want: Proxied) {
        for n in 0..bytes.len() {
            assert_eq!(
                decode(version, &bytes[..n]),
                Ok(None),
                "prefix of {n} bytes"
            );
        }
        let mut more = bytes.to_vec();
        more.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(decode(version, &more), Ok(Some((want, bytes.len()))));
    }

    #[test]
    fn decode_v1_fields() {
        whole(
            Version::V1,
            b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n",
            proxied("192.0.2.7:56324", "198.51.100.1:443"),
        );
        whole(
            Version::V1,
            b"PROXY TCP6 2001:db8::7 ::1 0 65535\r\n",
            proxied("[2001:db8::7]:0", "[::1]:65535"),
        );
        whole(Version::V1, b"PROXY UNKNOWN\r\n", Proxied::Local);
        whole(
            Version::V1,
            b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
            Proxied::Local,
        );
        // The longest lines the spec allows fit (107 bytes: UNKNOWN with IPv6 addresses).
        let a = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let tcp6 = format!("PROXY TCP6 {a} {a} 65535 65535\r\n");
        assert!(matches!(
            decode(Version::V1, tcp6.as_bytes()),
            Ok(Some((Proxied::Proxy { .. }, 104)))
        ));
        let unknown = format!("PROXY UNKNOWN {a} {a} 65535 65535\r\n");
        assert_eq!(unknown.len(), V1_MAX_BYTES);
        assert_eq!(
            decode(Version::V1, unknown.as_bytes()),
            Ok(Some((Proxied::Local, 107)))
        );
    }

    #[test]
    fn decode_v1_refusals() {
        let malformed = [
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",       // no CR
            "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",    // two spaces
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",    // trailing space
            "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",       // a port missing
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",   // one field too many
            "PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",   // bad address
            "PROXY TCP4 ::1 5.6.7.8 1 2\r\n",         // IPv6 in TCP4
            "PROXY TCP6 1.2.3.4 ::1 1 2\r\n",         // IPv4 in TCP6
            "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", // port too big
            "PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n",   // leading zero
            "PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n",   // sign
            "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 x\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n",  // empty port
            "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", // protocol
            "PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n",
            "PROXY \r\n",
            "PROXY UNKNOWNX\r\n",
        ];
        for line in malformed {
            assert!(
                matches!(
                    decode(Version::V1, line.as_bytes()),
                    Err(DecodeError::V1Malformed(_))
                ),
                "{line:?}: {:?}",
                decode(Version::V1, line.as_bytes())
            );
        }
        assert!(matches!(
            decode(Version::V1, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\xff\n"),
            Err(DecodeError::V1Malformed(_))
        ));
        for missing in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"proxy ",
            b"\x16\x03\x01",
            b"P ROXY",
        ] {
            assert_eq!(
                decode(Version::V1, missing),
                Err(DecodeError::Missing(Version::V1))
            );
        }
        // A v2 header on a v1 listener, and the other way round.
        assert_eq!(
            decode(Version::V1, &V2_SIGNATURE),
            Err(DecodeError::Missing(Version::V1))
        );
        assert_eq!(
            decode(Version::V2, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
            Err(DecodeError::Missing(Version::V2))
        );
        // No line end within 107 bytes: refused as soon as the 107th byte is in, not before.
        let long = format!("PROXY TCP4 {}", "1".repeat(200));
        assert_eq!(decode(Version::V1, &long.as_bytes()[..106]), Ok(None));
        assert_eq!(
            decode(Version::V1, &long.as_bytes()[..107]),
            Err(DecodeError::V1TooLong)
        );
        assert_eq!(
            decode(Version::V1, long.as_bytes()),
            Err(DecodeError::V1TooLong)
        );
    }

    fn v2(ver_cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.push(ver_cmd);
        b.push(family);
        b.extend_from_slice(&(body.len() as u16).to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn decode_v2_fields() {
        let mut body = vec![192, 0, 2, 7, 198, 51, 100, 1];
        body.extend_from_slice(&56324u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        whole(
            Version::V2,
            &v2(0x21, 0x11, &body),
            proxied("192.0.2.7:56324", "198.51.100.1:443"),
        );
        // TLVs are skipped.
        body.extend_from_slice(b"\x01\x00\x02h2\x04\x00\x00");
        whole(
            Version::V2,
            &v2(0x21, 0x11, &body),
            proxied("192.0.2.7:56324", "198.51.100.1:443"),
        );
        let src: std::net::Ipv6Addr = "2001:db8::7".parse().unwrap();
        let dst: std::net::Ipv6Addr = "::1".parse().unwrap();
        let mut body = src.octets().to_vec();
        body.extend_from_slice(&dst.octets());
        body.extend_from_slice(&1u16.to_be_bytes());
        body.extend_from_slice(&2u16.to_be_bytes());
        whole(
            Version::V2,
            &v2(0x21, 0x21, &body),
            proxied("[2001:db8::7]:1", "[::1]:2"),
        );
        // LOCAL: a health check, UNSPEC without addresses, or with addresses that are ignored.
        whole(Version::V2, &v2(0x20, 0x00, b""), Proxied::Local);
        whole(Version::V2, &v2(0x20, 0x11, &[0; 12]), Proxied::Local);
        whole(
            Version::V2,
            &v2(0x20, 0x00, b"\x04\x00\x00"),
            Proxied::Local,
        );
        // What the encoder writes reads back.
        let h = header("[::ffff:10.1.2.3]:5", "10.0.0.1:6");
        let b = encode(Version::V2, &h).unwrap();
        assert_eq!(
            decode(Version::V2, &b),
            Ok(Some((proxied("10.1.2.3:5", "10.0.0.1:6"), b.len())))
        );
        let b = encode(Version::V1, &h).unwrap();
        assert_eq!(
            decode(Version::V1, &b),
            Ok(Some((proxied("10.1.2.3:5", "10.0.0.1:6"), b.len())))
        );
    }

    #[test]
    fn decode_v2_refusals() {
        let mut bad_sig = v2(0x21, 0x11, &[0; 12]);
        bad_sig[11] = 0x0B;
        assert_eq!(
            decode(Version::V2, &bad_sig),
            Err(DecodeError::Missing(Version::V2))
        );
        // Refused on the first wrong byte, without waiting for more.
        assert_eq!(
            decode(Version::V2, &bad_sig[..12]),
            Err(DecodeError::Missing(Version::V2))
        );
        assert_eq!(
            decode(Version::V2, b"GET"),
            Err(DecodeError::Missing(Version::V2))
        );
        for vc in [0x11, 0x22, 0x2F, 0x31, 0x00] {
            assert_eq!(
                decode(Version::V2, &v2(vc, 0x11, &[0; 12])),
                Err(DecodeError::V2VersionCommand(vc))
            );
        }
        // PROXY over UNSPEC, UDP or unix sockets is not a TCP client address.
        for fam in [0x00, 0x12, 0x22, 0x31, 0x32, 0x10, 0xFF] {
            assert_eq!(
                decode(Version::V2, &v2(0x21, fam, &[0; 216])),
                Err(DecodeError::V2Family(fam))
            );
        }
        assert_eq!(
            decode(Version::V2, &v2(0x21, 0x11, &[0; 11])),
            Err(DecodeError::V2Short(11))
        );
        assert_eq!(
            decode(Version::V2, &v2(0x21, 0x21, &[0; 35])),
            Err(DecodeError::V2Short(35))
        );
        // Oversize: refused from the fixed part alone, before the TLVs arrive.
        let big = v2(0x21, 0x11, &vec![0; 12 + V2_MAX_TLV_BYTES + 1]);
        assert_eq!(
            decode(Version::V2, &big[..16]),
            Err(DecodeError::V2TooLong(V2_MAX_TLV_BYTES + 1))
        );
        let mut fixed = v2(0x21, 0x11, b"");
        fixed[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(
            decode(Version::V2, &fixed),
            Err(DecodeError::V2TooLong(_))
        ));
        // Exactly at the bound: accepted.
        let at = v2(0x21, 0x11, &vec![0; 12 + V2_MAX_TLV_BYTES]);
        assert!(matches!(decode(Version::V2, &at), Ok(Some((_, n))) if n == at.len()));
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
