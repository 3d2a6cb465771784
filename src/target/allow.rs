//! The allow-list of a per-session target route: which targets may be connected at all, and
//! which resolved addresses. Pure: parsing and matching, no I/O.
//!
//! Entries are `IP[:ports]`, `CIDR[:ports]` (IPv6 in brackets when a port follows:
//! `[fd00::/8]:5900`), `name[:ports]` (`*.vm.internal` matches any subdomain, other names match
//! exactly) and `unix:/dir/` (unix sockets under that directory). Ports are `N` or `N-M`; no
//! port means any port. A target is checked twice: by what it names ([`AllowList::permits`]), and
//! then every address its name resolves to ([`Permit::admits`]). Loopback, link-local (the cloud
//! metadata address 169.254.169.254 among them) and unspecified addresses are only ever admitted
//! by an IP or CIDR entry that covers them, never through a name.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};

use super::Target;

/// Why an allow-list entry is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowError {
    #[error("{0:?} is not an allow entry; write IP[:ports], CIDR[:ports], [IPv6 or IPv6 CIDR]:ports, name[:ports], *.domain[:ports] or unix:/dir/")]
    Syntax(String),
    #[error("{0:?}: ports are N or N-M with 1 <= N <= M <= 65535")]
    Ports(String),
    #[error("{0:?}: a CIDR prefix length is at most 32 (IPv4) or 128 (IPv6)")]
    Prefix(String),
    #[error("{0:?}: a unix: entry is an absolute directory without `..`")]
    Unix(String),
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub low: u16,
    pub high: u16,
}

impl Ports {
    const ANY: Ports = Ports {
        low: 1,
        high: u16::MAX,
    };

    fn contains(self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }
}

/// What an entry names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    /// An address or a network: `net` with the first `prefix` bits significant.
    Net { net: IpAddr, prefix: u8 },
    /// An exact host name (lower case).
    Name(String),
    /// `*.suffix`: any name ending in `.suffix` (lower case, without the leading dot).
    Subdomains(String),
    /// Unix sockets under this directory.
    Unix(PathBuf),
}

/// One allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    scope: Scope,
    ports: Ports,
}

/// A route's allow-list, in config order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AllowList(Vec<AllowEntry>);

/// A target the list admits by what it names; its resolved addresses still go through
/// [`Permit::admits`].
#[derive(Debug, Clone, Copy)]
pub struct Permit<'a> {
    list: &'a AllowList,
    /// The target is a host name admitted by a name entry (so a resolved address outside the IP
    /// entries is admitted too, unless it is of a forbidden class).
    by_name: bool,
}

impl AllowEntry {
    pub fn parse(s: &str) -> Result<AllowEntry, AllowError> {
        let syntax = || AllowError::Syntax(s.to_string());
        let t = s.trim();
        if let Some(dir) = t.strip_prefix("unix:") {
            let path = Path::new(dir);
            if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
                return Err(AllowError::Unix(s.to_string()));
            }
            return Ok(AllowEntry {
                scope: Scope::Unix(path.to_path_buf()),
                ports: Ports::ANY,
            });
        }
        let (host, ports) = if let Some(rest) = t.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or_else(syntax)?;
            let ports = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(syntax)?),
            };
            if !inner.contains(':') {
                return Err(syntax());
            }
            (inner, ports)
        } else if t.matches(':').count() > 1 {
            // A bare IPv6 address or network: no port.
            (t, None)
        } else {
            match t.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (t, None),
            }
        };
        let ports = match ports {
            None => Ports::ANY,
            Some(p) => parse_ports(p).ok_or_else(|| AllowError::Ports(s.to_string()))?,
        };
        let scope = if let Some((addr, len)) = host.split_once('/') {
            let net: IpAddr = addr.parse().map_err(|_| syntax())?;
            let prefix: u8 = len.parse().map_err(|_| AllowError::Prefix(s.to_string()))?;
            let max = if net.is_ipv4() { 32 } else { 128 };
            if prefix > max {
                return Err(AllowError::Prefix(s.to_string()));
            }
            Scope::Net {
                net: mask(net, prefix),
                prefix,
            }
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            Scope::Net {
                net: ip,
                prefix: if ip.is_ipv4() { 32 } else { 128 },
            }
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if !is_host_name(suffix) {
                return Err(syntax());
            }
            Scope::Subdomains(suffix.to_ascii_lowercase())
        } else {
            if !is_host_name(host) {
                return Err(syntax());
            }
            Scope::Name(host.to_ascii_lowercase())
        };
        Ok(AllowEntry { scope, ports })
    }

    fn covers_ip(&self, ip: IpAddr, port: u16) -> bool {
        match self.scope {
            Scope::Net { net, prefix } => {
                self.ports.contains(port)
                    && net.is_ipv4() == ip.is_ipv4()
                    && mask(ip, prefix) == net
            }
            _ => false,
        }
    }

    fn covers_name(&self, name: &str, port: u16) -> bool {
        if !self.ports.contains(port) {
            return false;
        }
        match &self.scope {
            Scope::Name(n) => n.eq_ignore_ascii_case(name),
            Scope::Subdomains(suffix) => {
                let name = name.to_ascii_lowercase();
                name.len() > suffix.len() + 1
                    && name.ends_with(suffix.as_str())
                    && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
            }
            _ => false,
        }
    }
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scope {
            Scope::Unix(dir) => return write!(f, "unix:{}", dir.display()),
            Scope::Net { net, prefix } => {
                let full = if net.is_ipv4() { 32 } else { 128 };
                let host = if *prefix == full {
                    net.to_string()
                } else {
                    format!("{net}/{prefix}")
                };
                if net.is_ipv6() && self.ports != Ports::ANY {
                    write!(f, "[{host}]")?
                } else {
                    f.write_str(&host)?
                }
            }
            Scope::Name(n) => f.write_str(n)?,
            Scope::Subdomains(s) => write!(f, "*.{s}")?,
        }
        match self.ports {
            Ports::ANY => Ok(()),
            Ports { low, high } if low == high => write!(f, ":{low}"),
            Ports { low, high } => write!(f, ":{low}-{high}"),
        }
    }
}

impl AllowList {
    pub fn new(entries: Vec<AllowEntry>) -> AllowList {
        AllowList(entries)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `target` may be connected at all, judged by what it names. An IP literal needs an
    /// IP or CIDR entry; a host name needs a name entry; a unix socket needs a `unix:` entry
    /// whose directory holds it.
    pub fn permits(&self, target: &Target) -> Option<Permit<'_>> {
        match target {
            Target::Unix(path) => {
                let clean =
                    path.is_absolute() && !path.components().any(|c| c == Component::ParentDir);
                let ok = clean
                    && self.0.iter().any(|e| match &e.scope {
                        Scope::Unix(dir) => path.starts_with(dir),
                        _ => false,
                    });
                ok.then_some(Permit {
                    list: self,
                    by_name: false,
                })
            }
            Target::Tcp { host, port } => {
                if let Ok(ip) = host.parse::<IpAddr>() {
                    let ip = canonical(ip);
                    return self
                        .0
                        .iter()
                        .any(|e| e.covers_ip(ip, *port))
                        .then_some(Permit {
                            list: self,
                            by_name: false,
                        });
                }
                self.0
                    .iter()
                    .any(|e| e.covers_name(host, *port))
                    .then_some(Permit {
                        list: self,
                        by_name: true,
                    })
            }
        }
    }
}

impl Permit<'_> {
    /// Whether a resolved address of the permitted target may be connected: an IP or CIDR entry
    /// covers it, or the target was admitted by name and the address is of no forbidden class.
    pub fn admits(&self, addr: SocketAddr) -> bool {
        let ip = canonical(addr.ip());
        if self.list.0.iter().any(|e| e.covers_ip(ip, addr.port())) {
            return true;
        }
        self.by_name && !is_forbidden(ip)
    }
}

/// Addresses only an explicit IP or CIDR entry admits: loopback (127/8, ::1), link-local
/// (169.254/16 with the metadata address 169.254.169.254, fe80::/10) and unspecified (0.0.0.0,
/// ::). Also `0/8`, which Linux connects as the local host.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// `ip` with all but the first `prefix` bits cleared.
fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

fn parse_ports(s: &str) -> Option<Ports> {
    let (low, high) = match s.split_once('-') {
        Some((l, h)) => (l.parse::<u16>().ok()?, h.parse::<u16>().ok()?),
        None => {
            let p = s.parse::<u16>().ok()?;
            (p, p)
        }
    };
    (low >= 1 && low <= high).then_some(Ports { low, high })
}

/// Letters, digits, `-` and `_`, in dot-separated labels of 1 to 63 bytes, at most 253 in all.
fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowList {
        AllowList::new(
            entries
                .iter()
                .map(|e| AllowEntry::parse(e).unwrap())
                .collect(),
        )
    }

    fn tcp(host: &str, port: u16) -> Target {
        Target::Tcp {
            host: host.to_string(),
            port,
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints_entries() {
        for (input, shown) in [
            ("127.0.0.1:5900-5999", "127.0.0.1:5900-5999"),
            ("10.1.2.3/8:5900", "10.0.0.0/8:5900"),
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("[fd00::/8]:5900", "[fd00::/8]:5900"),
            ("fd00::/8", "fd00::/8"),
            ("[::1]:22", "[::1]:22"),
            ("::1", "::1"),
            ("*.VM.internal:5900", "*.vm.internal:5900"),
            ("host.example", "host.example"),
            ("unix:/run/vnc/", "unix:/run/vnc/"),
        ] {
            let e = AllowEntry::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(e.to_string(), shown, "{input}");
        }
    }

    #[test]
    fn refuses_bad_entries() {
        for bad in [
            "",
            "1.2.3.4:",
            "1.2.3.4:0",
            "1.2.3.4:5-4",
            "1.2.3.4:65536",
            "1.2.3.4:a",
            "10.0.0.0/33",
            "[fd00::/129]:1",
            "[1.2.3.4]:80",
            "[fd00::1]x",
            "*.:80",
            "*:80",
            "bad name:80",
            "a..b",
            "unix:relative/dir",
            "unix:/run/../etc",
            "1.2.3.4/x",
        ] {
            assert!(AllowEntry::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cidr_edges() {
        let l = list(&["10.0.0.0/8:5900", "192.168.1.0/24", "0.0.0.0/0:7"]);
        assert!(l.permits(&tcp("10.0.0.0", 5900)).is_some());
        assert!(l.permits(&tcp("10.255.255.255", 5900)).is_some());
        assert!(l.permits(&tcp("11.0.0.0", 5900)).is_none());
        assert!(l.permits(&tcp("9.255.255.255", 5900)).is_none());
        assert!(l.permits(&tcp("192.168.1.255", 1)).is_some());
        assert!(l.permits(&tcp("192.168.2.0", 1)).is_none());
        // /0 covers every IPv4 address, none of IPv6.
        assert!(l.permits(&tcp("8.8.8.8", 7)).is_some());
        assert!(l.permits(&tcp("::1", 7)).is_none());
    }

    #[test]
    fn port_ranges() {
        let l = list(&["127.0.0.1:5900-5999", "10.0.0.1"]);
        assert!(l.permits(&tcp("127.0.0.1", 5899)).is_none());
        assert!(l.permits(&tcp("127.0.0.1", 5900)).is_some());
        assert!(l.permits(&tcp("127.0.0.1", 5999)).is_some());
        assert!(l.permits(&tcp("127.0.0.1", 6000)).is_none());
        // No port: any port.
        assert!(l.permits(&tcp("10.0.0.1", 1)).is_some());
        assert!(l.permits(&tcp("10.0.0.1", 65535)).is_some());
    }

    #[test]
    fn ipv6_entries() {
        let l = list(&["[fd00::/8]:5900", "[::1]:22"]);
        assert!(l.permits(&tcp("fd12:3456::1", 5900)).is_some());
        assert!(l.permits(&tcp("fe00::1", 5900)).is_none());
        assert!(l.permits(&tcp("fd00::1", 5901)).is_none());
        assert!(l.permits(&tcp("::1", 22)).is_some());
        // An IPv4-mapped address is judged as the IPv4 address it is.
        let v4 = list(&["127.0.0.1:22"]);
        assert!(v4.permits(&tcp("::ffff:127.0.0.1", 22)).is_some());
        assert!(!list(&["*.x.test"])
            .permits(&tcp("a.x.test", 1))
            .unwrap()
            .admits(sa("[::ffff:127.0.0.1]:1")));
    }

    #[test]
    fn wildcard_and_exact_names() {
        let l = list(&["*.vm.internal:5900", "exact.test"]);
        assert!(l.permits(&tcp("a.vm.internal", 5900)).is_some());
        assert!(l.permits(&tcp("A.b.VM.internal", 5900)).is_some());
        assert!(l.permits(&tcp("vm.internal", 5900)).is_none());
        assert!(l.permits(&tcp("avm.internal", 5900)).is_none());
        assert!(l.permits(&tcp("a.vm.internal", 5901)).is_none());
        assert!(l.permits(&tcp("exact.test", 80)).is_some());
        assert!(l.permits(&tcp("sub.exact.test", 80)).is_none());
        // A name entry never admits an IP literal.
        assert!(list(&["*.vm.internal"])
            .permits(&tcp("10.0.0.1", 1))
            .is_none());
    }

    #[test]
    fn resolved_addresses_of_a_name() {
        let l = list(&["*.vm.internal:5900", "127.0.0.1:5900"]);
        let permit = l.permits(&tcp("a.vm.internal", 5900)).unwrap();
        assert!(permit.admits(sa("10.1.2.3:5900")));
        assert!(permit.admits(sa("[2001:db8::1]:5900")));
        // Listed explicitly by IP: admitted.
        assert!(permit.admits(sa("127.0.0.1:5900")));
        // Forbidden classes: not through a name.
        for forbidden in [
            "127.0.0.2:5900",
            "169.254.169.254:5900",
            "169.254.0.1:5900",
            "0.0.0.0:5900",
            "[::1]:5900",
            "[::]:5900",
            "[fe80::1]:5900",
            "[febf::1]:5900",
        ] {
            assert!(!permit.admits(sa(forbidden)), "{forbidden}");
        }
        assert!(permit.admits(sa("[fec0::1]:5900")));
        // An IP target is admitted only where an IP entry covers the address.
        let ip = l.permits(&tcp("127.0.0.1", 5900)).unwrap();
        assert!(ip.admits(sa("127.0.0.1:5900")));
        assert!(!ip.admits(sa("10.1.2.3:5900")));
    }

    #[test]
    fn forbidden_classes_need_an_explicit_entry() {
        let meta = tcp("169.254.169.254", 80);
        assert!(list(&["*.internal", "10.0.0.0/8"]).permits(&meta).is_none());
        assert!(list(&["169.254.0.0/16:80"]).permits(&meta).is_some());
    }

    #[test]
    fn unix_prefixes() {
        let l = list(&["unix:/run/vnc/"]);
        let unix = |p: &str| Target::Unix(PathBuf::from(p));
        assert!(l.permits(&unix("/run/vnc/a.sock")).is_some());
        assert!(l.permits(&unix("/run/vnc/sub/a.sock")).is_some());
        assert!(l.permits(&unix("/run/vncx/a.sock")).is_none());
        assert!(l.permits(&unix("/run/vnc/../ssh.sock")).is_none());
        assert!(l.permits(&unix("run/vnc/a.sock")).is_none());
        assert!(list(&["127.0.0.1"])
            .permits(&unix("/run/vnc/a.sock"))
            .is_none());
    }
}
