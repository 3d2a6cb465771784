//! The real client address behind a load balancer or reverse proxy: the `trusted` address ranges
//! of a `[[listener]]` ([`Trusted`], [`Cidr`]) and the client address carried by an HTTP header
//! (`X-Forwarded-For`, or RFC 7239 `Forwarded`), chosen from the right: the right-most address
//! that is not a trusted proxy ([`client_from_headers`]).
//!
//! Pure: strings and header values in, addresses out. Where the header is read (only from a
//! trusted peer) and what the address is used for belong to the server; the PROXY protocol header
//! has its own module (`proxy_protocol`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::HeaderMap;

/// Which header carries the client address (`[[listener]] forwarded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx's `$proxy_add_x_forwarded_for`).
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client;proto=https, for="[2001:db8::1]:4711"`.
    #[serde(rename = "forwarded")]
    Forwarded,
}

impl ForwardedHeader {
    pub fn name(self) -> &'static str {
        match self {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        }
    }
}

/// An address range: `10.0.0.0/8`, `::1/128`, or one address (`192.0.2.7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// Strict: a canonical address, `/` and a decimal prefix length without sign or leading
    /// zeros, no bits set past the prefix. The reason is given for the configuration error.
    pub fn parse(text: &str) -> Result<Cidr, &'static str> {
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| "not an IPv4 or IPv6 address (e.g. \"10.0.0.0/8\", \"::1/128\")")?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix =
            match prefix {
                None => max,
                Some(p) => {
                    let digits = !p.is_empty()
                        && p.len() <= 3
                        && p.bytes().all(|b| b.is_ascii_digit())
                        && (p == "0" || !p.starts_with('0'));
                    match p.parse::<u8>() {
                        Ok(n) if digits && n <= max => n,
                        _ => return Err(
                            "the prefix length must be a number from 0 to 32 (IPv4) or 128 (IPv6)",
                        ),
                    }
                }
            };
        let cidr = Cidr { addr, prefix };
        if masked(addr, prefix) != addr {
            return Err(
                "address bits are set past the prefix length (e.g. 10.0.0.1/8; write 10.0.0.0/8)",
            );
        }
        Ok(cidr)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.addr.is_ipv4() && masked(ip, self.prefix) == self.addr
    }
}

fn masked(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & mask))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & mask))
        }
    }
}

/// An IPv4-mapped IPv6 address (a dual-stack listener's IPv4 client) as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// A listener's `trusted` ranges: the proxies whose word about the client is taken.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trusted(pub Vec<Cidr>);

impl Trusted {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }
}

/// A header from a trusted proxy that cannot be read: the request is refused with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardedError {
    #[error("malformed {header} header: {reason}")]
    Malformed {
        header: &'static str,
        reason: &'static str,
    },
}

/// One hop named by the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    Addr(SocketAddr),
    /// `unknown`, an obfuscated identifier (`_hidden`, RFC 7239 §6.3), or a `Forwarded` element
    /// without `for=`: the hop exists but has no address.
    Hidden,
}

/// The client address the header gives, for a request from a trusted `peer`: walking from the
/// right, trusted addresses are skipped and the first untrusted one is the client; a hidden hop
/// there keeps the peer (`Ok(None)`), as does an absent header. When every address is trusted,
/// the left-most one is the client. The port is the one the header names, else 0.
pub fn client_from_headers(
    which: ForwardedHeader,
    headers: &HeaderMap,
    trusted: &Trusted,
) -> Result<Option<SocketAddr>, ForwardedError> {
    let mut hops = Vec::new();
    for value in headers.get_all(which.name()) {
        let malformed = |reason| ForwardedError::Malformed {
            header: which.name(),
            reason,
        };
        let text = value.to_str().map_err(|_| malformed("not visible ASCII"))?;
        match which {
            ForwardedHeader::XForwardedFor => parse_xff(text, &mut hops).map_err(malformed)?,
            ForwardedHeader::Forwarded => parse_forwarded(text, &mut hops).map_err(malformed)?,
        }
    }
    let mut leftmost = None;
    for hop in hops.iter().rev() {
        match hop {
            Hop::Hidden => return Ok(None),
            Hop::Addr(a) if trusted.contains(a.ip()) => leftmost = Some(*a),
            Hop::Addr(a) => return Ok(Some(*a)),
        }
    }
    Ok(leftmost)
}

/// Longest list of hops read from one request's header(s).
pub const MAX_HOPS: usize = 64;

fn push(hops: &mut Vec<Hop>, hop: Hop) -> Result<(), &'static str> {
    if hops.len() >= MAX_HOPS {
        return Err("too many addresses");
    }
    hops.push(hop);
    Ok(())
}

/// `X-Forwarded-For: 203.0.113.7, 2001:db8::1, 10.0.0.2` (optional whitespace around commas).
fn parse_xff(text: &str, hops: &mut Vec<Hop>) -> Result<(), &'static str> {
    for item in text.split(',') {
        let item = item.trim_matches([' ', '\t']);
        let hop = if item.eq_ignore_ascii_case("unknown") {
            Hop::Hidden
        } else if let Ok(ip) = item.parse::<IpAddr>() {
            Hop::Addr(SocketAddr::new(canonical(ip), 0))
        } else if let Some(a) = bracketed_or_v4_with_port(item) {
            Hop::Addr(a)
        } else {
            return Err("an entry is not an IP address");
        };
        push(hops, hop)?;
    }
    Ok(())
}

/// `[2001:db8::1]:4711`, `[2001:db8::1]`, `192.0.2.7:4711`.
fn bracketed_or_v4_with_port(s: &str) -> Option<SocketAddr> {
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let ip: Ipv6Addr = ip.parse().ok()?;
        let port = match after {
            "" => 0,
            p => port(p.strip_prefix(':')?)?,
        };
        return Some(SocketAddr::new(canonical(IpAddr::V6(ip)), port));
    }
    let (ip, p) = s.split_once(':')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    Some(SocketAddr::new(IpAddr::V4(ip), port(p)?))
}

fn port(p: &str) -> Option<u16> {
    let digits = !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| p.parse().ok()).flatten()
}

/// RFC 7230 §3.2.6 tchar.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 7239 §4: `Forwarded: element *( "," element )`, an element being `pair *( ";" pair )`, a
/// pair `token "=" ( token / quoted-string )`. Only `for` is used; the other parameters are
/// checked for syntax and skipped.
fn parse_forwarded(text: &str, hops: &mut Vec<Hop>) -> Result<(), &'static str> {
    let b = text.as_bytes();
    let mut i = 0;
    let ows = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t') {
            *i += 1;
        }
    };
    loop {
        // One element.
        let mut hop = Hop::Hidden;
        let mut seen_for = false;
        loop {
            ows(&mut i);
            let start = i;
            while i < b.len() && is_tchar(b[i]) {
                i += 1;
            }
            let name = &text[start..i];
            if name.is_empty() {
                return Err("expected a parameter name");
            }
            if i >= b.len() || b[i] != b'=' {
                return Err("expected '=' after a parameter name");
            }
            i += 1;
            let value = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut v = String::new();
                loop {
                    match b.get(i) {
                        None => return Err("unterminated quoted string"),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => {
                            let c = *b.get(i + 1).ok_or("unterminated quoted string")?;
                            v.push(char::from(c));
                            i += 2;
                        }
                        Some(&c) => {
                            v.push(char::from(c));
                            i += 1;
                        }
                    }
                }
                v
            } else {
                let start = i;
                while i < b.len() && is_tchar(b[i]) {
                    i += 1;
                }
                if start == i {
                    return Err("empty parameter value");
                }
                text[start..i].to_string()
            };
            if name.eq_ignore_ascii_case("for") {
                if seen_for {
                    return Err("two for= parameters in one element");
                }
                seen_for = true;
                hop = node(&value)?;
            }
            ows(&mut i);
            match b.get(i) {
                Some(b';') => i += 1,
                _ => break,
            }
        }
        push(hops, hop)?;
        match b.get(i) {
            None => return Ok(()),
            Some(b',') => i += 1,
            Some(_) => return Err("expected ',' or ';' between parameters"),
        }
    }
}

/// RFC 7239 §6: `node = nodename [ ":" node-port ]`; `nodename` is an IPv4 address, a bracketed
/// IPv6 address, `unknown` or an obfuscated identifier (`_` then letters, digits, `.`, `_`, `-`);
/// the port likewise may be obfuscated.
fn node(v: &str) -> Result<Hop, &'static str> {
    const BAD: &str = "a for= value is not an address, \"unknown\" or an obfuscated identifier";
    let obfuscated = |s: &str| {
        s.len() > 1
            && s.starts_with('_')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    if let Some(rest) = v.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or(BAD)?;
        let ip: Ipv6Addr = ip.parse().map_err(|_| BAD)?;
        let port = match after {
            "" => 0,
            p => {
                let p = p.strip_prefix(':').ok_or(BAD)?;
                if obfuscated(p) {
                    0
                } else {
                    port(p).ok_or(BAD)?
                }
            }
        };
        return Ok(Hop::Addr(SocketAddr::new(canonical(IpAddr::V6(ip)), port)));
    }
    let (name, port_text) = match v.split_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (v, None),
    };
    let port = match port_text {
        None => 0,
        Some(p) if obfuscated(p) => 0,
        Some(p) => port(p).ok_or(BAD)?,
    };
    if name.eq_ignore_ascii_case("unknown") || obfuscated(name) {
        return Ok(Hop::Hidden);
    }
    // RFC 7239 §6.1: an IPv6 address is always bracketed.
    let ip: Ipv4Addr = name.parse().map_err(|_| BAD)?;
    Ok(Hop::Addr(SocketAddr::new(IpAddr::V4(ip), port)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn trusted(list: &[&str]) -> Trusted {
        Trusted(list.iter().map(|c| Cidr::parse(c).unwrap()).collect())
    }

    fn client(
        which: ForwardedHeader,
        values: &[&str],
        t: &Trusted,
    ) -> Result<Option<String>, ForwardedError> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(which.name(), HeaderValue::from_str(v).unwrap());
        }
        client_from_headers(which, &h, t).map(|a| a.map(|a| a.to_string()))
    }

    fn some(s: &str) -> Result<Option<String>, ForwardedError> {
        Ok(Some(s.to_string()))
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.255.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::a00:1".parse().unwrap()));
        let c = Cidr::parse("2001:db8::/32").unwrap();
        assert!(c.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!c.contains("2001:db9::".parse().unwrap()));
        assert_eq!(
            Cidr::parse("127.0.0.1").unwrap().to_string(),
            "127.0.0.1/32"
        );
        assert_eq!(Cidr::parse("::1").unwrap().to_string(), "::1/128");
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("::/0")
            .unwrap()
            .contains("2001::1".parse().unwrap()));
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.1/8",
            "10.0.0.0/08",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "10.0.0/8",
            "010.0.0.0/8",
            "host/8",
            " 10.0.0.0/8",
            "[::1]/128",
            "::1/1x",
            "fe80::1%eth0/128",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn x_forwarded_for_right_most_untrusted() {
        let t = trusted(&["10.0.0.0/8", "::1/128"]);
        let x = ForwardedHeader::XForwardedFor;
        assert_eq!(client(x, &[], &t), Ok(None));
        assert_eq!(client(x, &["203.0.113.7"], &t), some("203.0.113.7:0"));
        // A client-supplied left part is not believed past the first untrusted hop.
        assert_eq!(
            client(x, &["1.1.1.1, 203.0.113.7, 10.0.0.2"], &t),
            some("203.0.113.7:0")
        );
        assert_eq!(
            client(x, &["1.1.1.1", "203.0.113.7,10.0.0.2"], &t),
            some("203.0.113.7:0")
        );
        assert_eq!(
            client(x, &["2001:db8::1 ,\t::1"], &t),
            some("[2001:db8::1]:0")
        );
        assert_eq!(
            client(x, &["[2001:db8::1]:443"], &t),
            some("[2001:db8::1]:443")
        );
        assert_eq!(client(x, &["::ffff:192.0.2.1"], &t), some("192.0.2.1:0"));
        // All trusted: the left-most.
        assert_eq!(client(x, &["10.0.0.9, 10.0.0.2"], &t), some("10.0.0.9:0"));
        // unknown where the client would be: the peer stands.
        assert_eq!(client(x, &["1.1.1.1, unknown, 10.0.0.2"], &t), Ok(None));
        for bad in [
            "",
            "1.1.1.1,",
            ",1.1.1.1",
            "1.1.1.1 2.2.2.2",
            "example.com",
            "1.1.1.1:x",
            "1.1.1.256",
        ] {
            assert!(client(x, &[bad], &t).is_err(), "{bad:?}");
        }
        let many = vec!["10.0.0.1"; MAX_HOPS + 1].join(",");
        assert!(client(x, &[&many], &t).is_err());
    }

    #[test]
    fn forwarded_rfc7239() {
        let t = trusted(&["10.0.0.0/8"]);
        let f = ForwardedHeader::Forwarded;
        // RFC 7239 §4 examples.
        assert_eq!(client(f, &["for=\"_gazonk\""], &t), Ok(None));
        assert_eq!(
            client(f, &["For=\"[2001:db8:cafe::17]:4711\""], &t),
            some("[2001:db8:cafe::17]:4711")
        );
        assert_eq!(
            client(f, &["for=192.0.2.60;proto=http;by=203.0.113.43"], &t),
            some("192.0.2.60:0")
        );
        assert_eq!(
            client(f, &["for=192.0.2.43, for=198.51.100.17"], &t),
            some("198.51.100.17:0")
        );
        // Multiple elements and header lines; trusted hops skipped from the right.
        assert_eq!(
            client(
                f,
                &[
                    "for=198.51.100.17;proto=https",
                    "for=\"10.0.0.3:80\" ; by=_lb, for=10.1.1.1"
                ],
                &t
            ),
            some("198.51.100.17:0")
        );
        assert_eq!(
            client(f, &["for=\"192.0.2.9:8443\""], &t),
            some("192.0.2.9:8443")
        );
        assert_eq!(
            client(f, &["for=\"[2001:db8::5]\""], &t),
            some("[2001:db8::5]:0")
        );
        assert_eq!(
            client(f, &["for=\"[2001:db8::5]:_port\""], &t),
            some("[2001:db8::5]:0")
        );
        // Obfuscated, unknown or no for=: the peer stands.
        assert_eq!(client(f, &["for=unknown, for=10.0.0.1"], &t), Ok(None));
        assert_eq!(client(f, &["for=_hidden"], &t), Ok(None));
        assert_eq!(client(f, &["proto=https"], &t), Ok(None));
        // An untrusted hop further right hides what is left of it.
        assert_eq!(
            client(f, &["for=_x, for=192.0.2.1"], &t),
            some("192.0.2.1:0")
        );
        // Quoted-pair inside a quoted string.
        assert_eq!(
            client(f, &["for=1.2.3.4;ext=\"a\\\"b\""], &t),
            some("1.2.3.4:0")
        );
        for bad in [
            "for=2001:db8::1",   // IPv6 must be bracketed and quoted
            "for=[2001:db8::1]", // brackets are not tchars: quoted only
            "for=\"[2001:db8::1\"",
            "for=\"192.0.2.1", // unterminated
            "for=",
            "for",
            "=1.2.3.4",
            "for=1.2.3.4 for=5.6.7.8",
            "for=1.2.3.4;for=5.6.7.8",
            "for=\"1.2.3.4:99999\"",
            "for=example.com",
            "for=1.2.3.4,",
        ] {
            assert!(
                client(f, &[bad], &t).is_err(),
                "{bad:?}: {:?}",
                client(f, &[bad], &t)
            );
        }
    }
}
