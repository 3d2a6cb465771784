//! `[[listener]]`: the address (`IP:port`, `unix:PATH` for a unix-domain socket with its
//! optional `mode`, or `systemd:NAME` for sockets passed by systemd socket activation) and, for
//! `wss://`, the certificate and key, loaded here (through [`crate::tls`]) so that a bad file is
//! a configuration error naming its path.
//!
//! Behind a load balancer: `proxy_protocol` (a PROXY header starts every connection),
//! `forwarded` (the client address from an HTTP header) and the `trusted` address ranges they
//! need, parsed here ([`crate::forwarded::Cidr`]).
//!
//! Binding, taking the sockets systemd passed, the stale-socket check and the socket file's removal at shutdown belong to the
//! server; this module only says what to bind.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::raw::RawListener;
use super::{ConfigError, Ctx};
use crate::forwarded::{Cidr, ForwardedHeader, Trusted};
use crate::proxy_protocol;

/// The prefix of a unix-domain socket bind: `bind = "unix:/run/wsgate.sock"`.
pub const UNIX_PREFIX: &str = "unix:";

/// The prefix of a listener on sockets passed by systemd: `bind = "systemd:NAME"` takes every
/// inherited socket whose name (the `.socket` unit's `FileDescriptorName=`, in `LISTEN_FDNAMES`)
/// is NAME.
pub const SYSTEMD_PREFIX: &str = "systemd:";

/// Longest file descriptor name systemd accepts (`FileDescriptorName=`).
pub const MAX_FDNAME_BYTES: usize = 255;

/// Longest socket path, in bytes: `sun_path` holds 108 bytes including the terminating NUL.
pub const MAX_UNIX_PATH_BYTES: usize = 107;

/// Largest `mode`: the permission bits with setuid, setgid and sticky.
pub const MAX_MODE: u32 = 0o7777;

/// Where a listener listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    /// A unix-domain stream socket at this path (relative paths resolved against the
    /// configuration file's directory).
    Unix(PathBuf),
    /// The sockets systemd passed under this name (`LISTEN_FDNAMES`), TCP or unix-domain.
    Systemd(String),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "{UNIX_PREFIX}{}", p.display()),
            ListenAddr::Systemd(name) => write!(f, "{SYSTEMD_PREFIX}{name}"),
        }
    }
}

/// One `[[listener]]`, validated, with its TLS configuration loaded.
#[derive(Clone)]
pub struct Listener {
    pub bind: ListenAddr,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The certificate and key files (for the summary, and reloading when they change).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// HTTP/2: on a TLS listener ALPN offers `h2` (default on); on a plain one, h2c with prior
    /// knowledge is accepted (default off).
    pub http2: bool,
    /// `tls.accept_plain`: a TLS listener that also takes plain connections (the first byte
    /// tells them apart).
    pub accept_plain: bool,
    /// `mode`: the permission bits set on a unix socket file after it is bound.
    pub mode: Option<u32>,
    /// `proxy_protocol`: every connection starts with a PROXY header of this version.
    pub proxy_protocol: Option<proxy_protocol::Version>,
    /// `forwarded`: the header that names the client when the peer is trusted.
    pub forwarded: Option<ForwardedHeader>,
    /// `trusted`: the balancers' address ranges (empty when neither of the above is set).
    pub trusted: Arc<Trusted>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("bind", &self.bind)
            .field("tls_cert", &self.tls_cert)
            .field("http2", &self.http2)
            .field("accept_plain", &self.accept_plain)
            .field("mode", &self.mode.map(|m| format!("{m:04o}")))
            .field("proxy_protocol", &self.proxy_protocol)
            .field("forwarded", &self.forwarded)
            .field("trusted", &self.trusted)
            .finish()
    }
}

/// One line of `wsgate check`'s summary.
pub(super) fn summary(l: &Listener) -> String {
    let mut line = transport_summary(l);
    if let Some(v) = l.proxy_protocol {
        line.push_str(&format!("; PROXY {v} header required"));
    }
    if let Some(h) = l.forwarded {
        line.push_str(&format!("; client from {}", h.name()));
    }
    if !l.trusted.0.is_empty() {
        let ranges: Vec<String> = l.trusted.0.iter().map(ToString::to_string).collect();
        line.push_str(&format!(" (trusted {})", ranges.join(", ")));
    }
    line
}

fn transport_summary(l: &Listener) -> String {
    let cert = l.tls_cert.as_ref().map(|c| c.display());
    match (&l.bind, cert) {
        (ListenAddr::Tcp(a), None) => format!("ws://{a}"),
        (ListenAddr::Tcp(a), Some(cert)) if l.accept_plain => {
            format!("wss://{a} and ws://{a}  (certificate {cert}; plain accepted on the same port)")
        }
        (ListenAddr::Tcp(a), Some(cert)) => format!("wss://{a}  (certificate {cert})"),
        (systemd @ ListenAddr::Systemd(_), cert) => {
            let scheme = match cert {
                None => "ws".to_string(),
                Some(cert) if l.accept_plain => {
                    format!("wss and ws, certificate {cert}")
                }
                Some(cert) => format!("wss, certificate {cert}"),
            };
            format!("{systemd}  ({scheme}; sockets passed by systemd)")
        }
        (unix, cert) => {
            let scheme = match cert {
                None => "ws".to_string(),
                Some(cert) => format!("wss, certificate {cert}"),
            };
            let mode = match l.mode {
                None => "mode from the umask".to_string(),
                Some(m) => format!("mode {m:04o}"),
            };
            format!("{unix}  ({scheme}; {mode})")
        }
    }
}

/// A systemd file descriptor name: 1 to [`MAX_FDNAME_BYTES`] printable ASCII characters other
/// than `:` (systemd's own rule for `FileDescriptorName=`).
fn valid_fdname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_FDNAME_BYTES
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// An octal mode string ("0660", "660", "0o660"), at most [`MAX_MODE`].
fn parse_mode(text: &str) -> Option<u32> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return None;
    }
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= MAX_MODE)
}

impl Ctx<'_> {
    pub(super) fn listener(&self, i: usize, l: &RawListener) -> Result<Listener, ConfigError> {
        let key = format!("listener[{i}].bind");
        let text = l.bind.get_ref();
        let bind = match text.strip_prefix(UNIX_PREFIX) {
            None if text == "systemd" || text.starts_with(SYSTEMD_PREFIX) => {
                let name = text.strip_prefix(SYSTEMD_PREFIX).unwrap_or_default();
                if !valid_fdname(name) {
                    return self.err(
                        l.bind.span(),
                        key,
                        format!(
                            "a systemd: bind names the sockets to take, as the .socket unit's FileDescriptorName= sets them (e.g. \"systemd:wsgate\"): 1 to {MAX_FDNAME_BYTES} printable ASCII characters, no ':' or spaces"
                        ),
                    );
                }
                ListenAddr::Systemd(name.to_string())
            }
            Some(path) => {
                if path.is_empty() {
                    return self.err(
                        l.bind.span(),
                        key,
                        "a unix: bind needs a path (e.g. \"unix:/run/wsgate.sock\")",
                    );
                }
                let path = self.resolve(path);
                let len = path.as_os_str().len();
                if len > MAX_UNIX_PATH_BYTES {
                    return self.err(
                        l.bind.span(),
                        key,
                        format!(
                            "the socket path {} is {len} bytes long; a unix socket path holds at most {MAX_UNIX_PATH_BYTES}",
                            path.display()
                        ),
                    );
                }
                ListenAddr::Unix(path)
            }
            None => ListenAddr::Tcp(self.socket_addr(&l.bind, &key)?),
        };
        let mode = match &l.mode {
            None => None,
            Some(m) => {
                let mkey = format!("listener[{i}].mode");
                if !matches!(bind, ListenAddr::Unix(_)) {
                    return self.err(
                        m.span(),
                        mkey,
                        "mode applies only to a unix socket listener (bind = \"unix:PATH\")",
                    );
                }
                match parse_mode(m.get_ref()) {
                    Some(v) => Some(v),
                    None => {
                        return self.err(
                            m.span(),
                            mkey,
                            format!(
                                "{:?} is not an octal file mode (e.g. \"0660\"; at most \"07777\")",
                                m.get_ref()
                            ),
                        )
                    }
                }
            }
        };
        // HTTP/2 is on by default where ALPN can choose it (TLS), and opt-in for h2c.
        let http2 = l.http2.as_ref().map_or(l.tls.is_some(), |v| *v.get_ref());
        let (tls, tls_cert, tls_key, accept_plain) = match &l.tls {
            None => (None, None, None, false),
            Some(t) => {
                let cert = self.resolve(t.cert.get_ref());
                let keyfile = self.resolve(t.key.get_ref());
                let accept_plain = t.accept_plain.as_ref().is_some_and(|a| *a.get_ref());
                if let (Some(a), ListenAddr::Unix(_), true) = (&t.accept_plain, &bind, accept_plain)
                {
                    return self.err(
                        a.span(),
                        format!("listener[{i}].tls.accept_plain"),
                        "accept_plain applies only to a TCP listener",
                    );
                }
                match crate::tls::load_server_config(&cert, &keyfile, http2) {
                    Ok(cfg) => (Some(cfg), Some(cert), Some(keyfile), accept_plain),
                    Err(e) => {
                        let span = match e {
                            crate::tls::TlsError::Key { .. } => t.key.span(),
                            _ => t.cert.span(),
                        };
                        return self.err(span, format!("listener[{i}].tls"), e.to_string());
                    }
                }
            }
        };
        let proxy_protocol = l.proxy_protocol.as_ref().map(|v| *v.get_ref());
        let forwarded = l.forwarded.as_ref().map(|v| *v.get_ref());
        if let (Some(p), ListenAddr::Unix(_)) = (&l.proxy_protocol, &bind) {
            return self.err(
                p.span(),
                format!("listener[{i}].proxy_protocol"),
                "proxy_protocol applies only to a TCP listener",
            );
        }
        let trusted = self.trusted(i, l, proxy_protocol.is_some() || forwarded.is_some())?;
        Ok(Listener {
            bind,
            tls,
            tls_cert,
            tls_key,
            http2,
            accept_plain,
            mode,
            proxy_protocol,
            forwarded,
            trusted: Arc::new(trusted),
        })
    }

    /// `trusted`: required with `proxy_protocol` or `forwarded`, meaningless without them.
    fn trusted(&self, i: usize, l: &RawListener, needed: bool) -> Result<Trusted, ConfigError> {
        let key = format!("listener[{i}].trusted");
        let Some(list) = &l.trusted else {
            if needed {
                return self.err(
                    l.bind.span(),
                    key,
                    "proxy_protocol and forwarded need the balancers' address ranges, e.g. trusted = [\"10.0.0.0/8\"]",
                );
            }
            return Ok(Trusted::default());
        };
        if !needed {
            return self.err(
                list.span(),
                key,
                "trusted applies only with proxy_protocol or forwarded",
            );
        }
        if list.get_ref().is_empty() {
            return self.err(list.span(), key, "at least one address range is needed");
        }
        let mut out = Vec::with_capacity(list.get_ref().len());
        for (j, entry) in list.get_ref().iter().enumerate() {
            match Cidr::parse(entry.get_ref()) {
                Ok(c) => out.push(c),
                Err(reason) => {
                    return self.err(
                        entry.span(),
                        format!("listener[{i}].trusted[{j}]"),
                        format!("{:?}: {reason}", entry.get_ref()),
                    )
                }
            }
        }
        Ok(Trusted(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn with_listener(lines: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "[[listener]]\n{lines}\n[[route]]\npath = \"/echo\"\nbackend = \"127.0.0.1:9001\"\n"
        );
        Config::parse(&text, Path::new("/etc/wsgate"))
    }

    fn key_of(lines: &str) -> String {
        let e = with_listener(lines).unwrap_err();
        e.key.clone().unwrap_or_else(|| panic!("no key in {e}"))
    }

    #[test]
    fn unix_binds_and_modes() {
        let c = with_listener("bind = \"unix:run/ws.sock\"\nmode = \"0660\"").unwrap();
        let l = &c.listeners[0];
        assert_eq!(
            l.bind,
            ListenAddr::Unix(PathBuf::from("/etc/wsgate/run/ws.sock"))
        );
        assert_eq!(l.mode, Some(0o660));
        assert!(c
            .summary()
            .contains("unix:/etc/wsgate/run/ws.sock  (ws; mode 0660)"));
        let c = with_listener("bind = \"unix:/run/ws.sock\"").unwrap();
        assert_eq!(
            c.listeners[0].bind,
            ListenAddr::Unix(PathBuf::from("/run/ws.sock"))
        );
        assert_eq!(c.listeners[0].mode, None);

        assert_eq!(key_of("bind = \"unix:\""), "listener[0].bind");
        let long = format!("bind = \"unix:/{}\"", "s".repeat(MAX_UNIX_PATH_BYTES));
        assert_eq!(key_of(&long), "listener[0].bind");
        assert_eq!(
            key_of("bind = \"unix:/a\"\nmode = \"rw\""),
            "listener[0].mode"
        );
        assert_eq!(
            key_of("bind = \"unix:/a\"\nmode = \"0968\""),
            "listener[0].mode"
        );
        assert_eq!(
            key_of("bind = \"127.0.0.1:0\"\nmode = \"0660\""),
            "listener[0].mode"
        );
        let twice = "bind = \"unix:/a\"\n[[listener]]\nbind = \"unix:/a\"";
        assert_eq!(key_of(twice), "listener[1].bind");
    }

    #[test]
    fn systemd_binds() {
        let c = with_listener("bind = \"systemd:wsgate\"").unwrap();
        assert_eq!(
            c.listeners[0].bind,
            ListenAddr::Systemd("wsgate".to_string())
        );
        assert!(c
            .summary()
            .contains("systemd:wsgate  (ws; sockets passed by systemd)"));
        for bad in ["systemd", "systemd:", "systemd:a:b", "systemd:a b"] {
            assert_eq!(
                key_of(&format!("bind = \"{bad}\"")),
                "listener[0].bind",
                "{bad}"
            );
        }
        let long = format!("bind = \"systemd:{}\"", "n".repeat(MAX_FDNAME_BYTES + 1));
        assert_eq!(key_of(&long), "listener[0].bind");
        assert_eq!(
            key_of("bind = \"systemd:web\"\nmode = \"0660\""),
            "listener[0].mode"
        );
        let twice = "bind = \"systemd:web\"\n[[listener]]\nbind = \"systemd:web\"";
        assert_eq!(key_of(twice), "listener[1].bind");
        let two = "bind = \"systemd:web\"\n[[listener]]\nbind = \"systemd:web-tls\"";
        assert_eq!(with_listener(two).unwrap().listeners.len(), 2);
    }

    #[test]
    fn accept_plain_is_tcp_only() {
        // Checked before the certificate files are read.
        let unix =
            "bind = \"unix:/a\"\ntls = { cert = \"c.pem\", key = \"k.pem\", accept_plain = true }";
        assert_eq!(key_of(unix), "listener[0].tls.accept_plain");
    }

    #[test]
    fn behind_a_balancer() {
        let c = with_listener(
            "bind = \"127.0.0.1:0\"\nproxy_protocol = \"v2\"\nforwarded = \"forwarded\"\ntrusted = [\"10.0.0.0/8\", \"::1\"]",
        )
        .unwrap();
        let l = &c.listeners[0];
        assert_eq!(l.proxy_protocol, Some(proxy_protocol::Version::V2));
        assert_eq!(l.forwarded, Some(ForwardedHeader::Forwarded));
        assert!(l.trusted.contains("10.9.8.7".parse().unwrap()));
        assert!(l.trusted.contains("::1".parse().unwrap()));
        assert!(!l.trusted.contains("127.0.0.1".parse().unwrap()));
        assert!(c.summary().contains(
            "ws://127.0.0.1:0; PROXY v2 header required; client from forwarded (trusted 10.0.0.0/8, ::1/128)"
        ));
        let c = with_listener(
            "bind = \"127.0.0.1:0\"\nforwarded = \"x-forwarded-for\"\ntrusted = [\"127.0.0.1/32\"]",
        )
        .unwrap();
        assert_eq!(
            c.listeners[0].forwarded,
            Some(ForwardedHeader::XForwardedFor)
        );
        assert_eq!(c.listeners[0].proxy_protocol, None);
        let c = with_listener("bind = \"127.0.0.1:0\"").unwrap();
        assert!(c.listeners[0].trusted.0.is_empty());

        // trusted is required with either, and only with them.
        for lines in [
            "bind = \"127.0.0.1:0\"\nproxy_protocol = \"v1\"",
            "bind = \"127.0.0.1:0\"\nforwarded = \"forwarded\"",
            "bind = \"127.0.0.1:0\"\ntrusted = [\"10.0.0.0/8\"]",
            "bind = \"127.0.0.1:0\"\nproxy_protocol = \"v1\"\ntrusted = []",
        ] {
            assert_eq!(key_of(lines), "listener[0].trusted", "{lines}");
        }
        // Bad ranges name their entry and say what is wrong.
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "::/129",
            "example.com",
            "10.0.0.0/08",
            "",
        ] {
            let lines = format!(
                "bind = \"127.0.0.1:0\"\nproxy_protocol = \"v2\"\ntrusted = [\"::1\", \"{bad}\"]"
            );
            let e = with_listener(&lines).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("listener[0].trusted[1]"), "{bad}");
            assert!(e.message.contains(&format!("{bad:?}")), "{e}");
        }
        // Unknown values are refused while the TOML is read.
        assert!(with_listener(
            "bind = \"127.0.0.1:0\"\nproxy_protocol = \"v3\"\ntrusted = [\"::1\"]"
        )
        .is_err());
        assert!(with_listener(
            "bind = \"127.0.0.1:0\"\nforwarded = \"x-real-ip\"\ntrusted = [\"::1\"]"
        )
        .is_err());
        assert_eq!(
            key_of("bind = \"unix:/a\"\nproxy_protocol = \"v2\"\ntrusted = [\"::1\"]"),
            "listener[0].proxy_protocol"
        );
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0660"), Some(0o660));
        assert_eq!(parse_mode("660"), Some(0o660));
        assert_eq!(parse_mode("0o600"), Some(0o600));
        assert_eq!(parse_mode("7777"), Some(0o7777));
        assert_eq!(parse_mode("0"), Some(0));
        for bad in [
            "",
            "0o",
            "0668",
            "rw-rw----",
            "17777",
            "-660",
            "0x1b6",
            "000000",
        ] {
            assert_eq!(parse_mode(bad), None, "{bad}");
        }
    }
}
