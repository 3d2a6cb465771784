//! Web origins (RFC 6454) as the gateway compares them: `scheme://host[:port]`, normalised.
//!
//! Owns parsing of `allowed_origins` entries ([`OriginPattern`]: exact, or a leading-label wildcard
//! `https://*.example.com`) and of the `Origin` request header, and the comparison between them.
//! Scheme and host are compared case-insensitively, default ports are dropped, and nothing else
//! is forgiven: no path, no user info, no trailing dot folding. It does not decide which routes
//! need an Origin (that is `auth`'s business).

use std::fmt;

/// A normalised origin.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    scheme: String,
    host: String,
    /// `None` when the port is the scheme's default.
    port: Option<u16>,
}

/// Why a string is not an origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an origin (scheme://host[:port]): {0}")]
pub struct OriginError(&'static str);

impl Origin {
    /// Parse `scheme://host[:port]`. Schemes: http, https (and ws, wss for non-browser clients).
    pub fn parse(s: &str) -> Result<Origin, OriginError> {
        let (scheme, rest) = s.split_once("://").ok_or(OriginError("missing \"://\""))?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" | "ws" => 80,
            "https" | "wss" => 443,
            _ => return Err(OriginError("scheme must be http or https")),
        };
        if rest.is_empty() {
            return Err(OriginError("missing host"));
        }
        if rest.contains(['/', '?', '#', '@', '\\']) || rest.bytes().any(|b| b <= b' ' || b >= 0x7f)
        {
            return Err(OriginError("only scheme, host and port are allowed"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (addr, after) = v6.split_once(']').ok_or(OriginError("unclosed '['"))?;
            addr.parse::<std::net::Ipv6Addr>()
                .map_err(|_| OriginError("bad IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or(OriginError("junk after ']'"))?),
            };
            (format!("[{}]", addr.to_ascii_lowercase()), port)
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
                None => (rest.to_ascii_lowercase(), None),
            }
        };
        if host.is_empty() {
            return Err(OriginError("missing host"));
        }
        if host.starts_with('.') || host.contains("..") {
            return Err(OriginError("empty label in host"));
        }
        if !host.starts_with('[')
            && !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return Err(OriginError("bad character in host"));
        }
        let port = match port {
            None => None,
            Some(p) => {
                if p.is_empty()
                    || !p.bytes().all(|b| b.is_ascii_digit())
                    || p.len() > 5
                    || p.starts_with('0')
                {
                    return Err(OriginError("bad port"));
                }
                let n: u16 = p.parse().map_err(|_| OriginError("bad port"))?;
                if n == 0 {
                    return Err(OriginError("bad port"));
                }
                (n != default_port).then_some(n)
            }
        };
        Ok(Origin { scheme, host, port })
    }
}

/// One `allowed_origins` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// Matches this origin only.
    Exact(Origin),
    /// `scheme://*.domain[:port]`: matches any origin of that scheme and port whose host ends in
    /// `.domain` (one or more labels in front). The bare domain itself does not match.
    Subdomains {
        scheme: String,
        domain: String,
        port: Option<u16>,
    },
}

impl OriginPattern {
    /// Parse an entry; `*.` is allowed only as the whole first label of the host.
    pub fn parse(s: &str) -> Result<OriginPattern, OriginError> {
        if let Some((scheme, rest)) = s.split_once("://*.") {
            let base = Origin::parse(&format!("{scheme}://{rest}"))?;
            if base.host.starts_with('[')
                || !base.host.contains('.')
                || base.host.parse::<std::net::Ipv4Addr>().is_ok()
            {
                return Err(OriginError("a wildcard needs a domain with at least two labels, e.g. https://*.example.com"));
            }
            return Ok(OriginPattern::Subdomains {
                scheme: base.scheme,
                domain: base.host,
                port: base.port,
            });
        }
        if s.contains('*') {
            return Err(OriginError(
                "'*' is only allowed as the first label: https://*.example.com",
            ));
        }
        Origin::parse(s).map(OriginPattern::Exact)
    }

    pub fn matches(&self, origin: &Origin) -> bool {
        match self {
            OriginPattern::Exact(o) => o == origin,
            OriginPattern::Subdomains {
                scheme,
                domain,
                port,
            } => {
                *scheme == origin.scheme
                    && *port == origin.port
                    && origin.host.len() > domain.len() + 1
                    && origin.host.ends_with(domain.as_str())
                    && origin.host.as_bytes()[origin.host.len() - domain.len() - 1] == b'.'
                    && !origin.host.starts_with('.')
            }
        }
    }
}

impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OriginPattern::Exact(o) => o.fmt(f),
            OriginPattern::Subdomains {
                scheme,
                domain,
                port,
            } => {
                write!(f, "{scheme}://*.{domain}")?;
                if let Some(p) = port {
                    write!(f, ":{p}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(s: &str) -> Origin {
        Origin::parse(s).unwrap()
    }

    #[test]
    fn normalises_case_and_default_port() {
        assert_eq!(o("HTTPS://App.Example.COM"), o("https://app.example.com"));
        assert_eq!(
            o("https://app.example.com:443"),
            o("https://app.example.com")
        );
        assert_eq!(o("http://127.0.0.1:80"), o("http://127.0.0.1"));
        assert_eq!(o("http://[::1]:8080").to_string(), "http://[::1]:8080");
    }

    #[test]
    fn attack_list_does_not_match() {
        let allowed = o("https://app.example.com");
        for attack in [
            "https://app.example.com.evil.io",
            "https://evil-app.example.com",
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://app.example.com.",
        ] {
            assert_ne!(o(attack), allowed, "{attack}");
        }
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let p = OriginPattern::parse("https://*.example.com").unwrap();
        assert!(p.matches(&o("https://a.example.com")));
        assert!(p.matches(&o("https://A.b.EXAMPLE.com:443")));
        for no in [
            "https://example.com",
            "https://evil-example.com",
            "https://a.example.com.evil.io",
            "http://a.example.com",
            "https://a.example.com:8443",
            "https://a.example.com.",
        ] {
            assert!(!p.matches(&o(no)), "{no}");
        }
        let exact = OriginPattern::parse("https://app.example.com").unwrap();
        assert!(exact.matches(&o("https://APP.example.com")));
        for bad in [
            "https://*.com",
            "https://a.*.com",
            "https://*example.com",
            "*",
            "https://*.[::1]",
            "https://*.1.2.3.4",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn malformed_values_are_errors() {
        for bad in [
            "null",
            "",
            "app.example.com",
            "https://",
            "https://app.example.com/",
            "https://user@app.example.com",
            "https://app.example.com:",
            "https://app.example.com:99999",
            "https://app.example.com:0",
            "ftp://app.example.com",
            "https://[::1",
            "https://ex ample.com",
            "https://exämple.com",
            "https://a..example.com",
            "https://.example.com",
            "https://app.example.com:0443",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad:?}");
        }
    }
}
