//! Forward authentication: ask an external HTTP(S) service whether a handshake may proceed, like
//! nginx `auth_request` or Traefik ForwardAuth.
//!
//! Owns the auth request (a `GET` to the configured URL carrying the original `Cookie`,
//! `Authorization`, `Origin`, and `X-Forwarded-*` headers for host, path and query, client
//! address and scheme), the mapping of its answer (2xx allow, 401/403 passed on, anything else or
//! a timeout -> 503), the per-credential decision cache (bounded, with a TTL; keyed by a hash so no
//! secret is kept), and the bound on concurrent auth requests. One connection per auth request.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, StatusCode, Uri};
use http_body_util::Empty;
use sha1::{Digest, Sha1};
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

use crate::outbound::{self, ClientTlsError, Failure};

/// Default deadline for one auth request (connect included).
pub const DEFAULT_FORWARD_TIMEOUT_SECS: u64 = 2;
/// Default largest number of cached decisions.
pub const DEFAULT_CACHE_ENTRIES: usize = 10_000;
/// Default largest number of auth requests in flight at once.
pub const DEFAULT_MAX_CONCURRENT: usize = 64;

/// The auth service's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// 2xx; the subject from the identity header, if configured and present.
    Allow(Option<String>),
    /// 401 or 403, passed on to the client.
    Deny(StatusCode),
    /// No usable answer: 503 to the client (never cached).
    Unavailable(&'static str),
}

/// A route's forward-auth settings, checked: the URL, the identity header name and the trust
/// anchors are parsed. Values only; [`ForwardAuth`] (with its cache, its bound on requests in
/// flight and its TLS connector) is built from them.
#[derive(Clone)]
pub struct ForwardSettings {
    uri: Uri,
    host: String,
    port: u16,
    /// For an `https://` URL: the client configuration (trust anchors from `ca_file`, else the
    /// well-known public roots).
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    identity_header: Option<HeaderName>,
    cache_ttl: Option<Duration>,
    cache_entries: usize,
    max_concurrent: usize,
}

impl std::fmt::Debug for ForwardSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardSettings")
            .field("uri", &self.uri)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Why forward-auth settings are refused (a configuration error of `[route.auth]`).
#[derive(Debug, thiserror::Error)]
pub enum ForwardSettingsError {
    #[error("{url:?} is not a URL: {source}")]
    NotAUrl {
        url: String,
        source: http::uri::InvalidUri,
    },
    #[error("{0:?} must start with http:// or https://")]
    Scheme(String),
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error("ca_file is not valid PEM: {0}")]
    CaPem(String),
    #[error("ca_file: {0}")]
    CaCertificate(String),
    #[error("ca_file holds no certificate")]
    CaEmpty,
    #[error("ca_file only applies to an https:// url")]
    CaWithoutHttps,
    #[error("TLS setup for the auth service: {0}")]
    Tls(String),
    #[error("{0:?} is not a header name")]
    HeaderName(String),
    #[error("max_concurrent and cache_size must be at least 1")]
    ZeroBound,
}

impl ForwardSettings {
    /// `url` is `http://` or `https://`; `ca_pem` adds trust anchors for https (else the
    /// well-known public roots are used).
    pub fn new(
        url: &str,
        timeout: Duration,
        identity_header: Option<&str>,
        cache_ttl: Option<Duration>,
        cache_entries: usize,
        max_concurrent: usize,
        ca_pem: Option<Vec<u8>>,
    ) -> Result<ForwardSettings, ForwardSettingsError> {
        use ForwardSettingsError as E;
        let uri: Uri = url.parse().map_err(|source| E::NotAUrl {
            url: url.to_string(),
            source,
        })?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(E::Scheme(url.to_string())),
        };
        let host = uri
            .host()
            .ok_or_else(|| E::NoHost(url.to_string()))?
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            Some(
                crate::outbound::client_tls(ca_pem.as_deref()).map_err(|e| match e {
                    ClientTlsError::CaPem(m) => E::CaPem(m),
                    ClientTlsError::CaCertificate(m) => E::CaCertificate(m),
                    ClientTlsError::CaEmpty => E::CaEmpty,
                    ClientTlsError::Tls(m) => E::Tls(m),
                })?,
            )
        } else {
            if ca_pem.is_some() {
                return Err(E::CaWithoutHttps);
            }
            None
        };
        let identity_header = match identity_header {
            None => None,
            Some(h) => Some(
                HeaderName::from_bytes(h.as_bytes()).map_err(|_| E::HeaderName(h.to_string()))?,
            ),
        };
        if max_concurrent == 0 || cache_entries == 0 {
            return Err(E::ZeroBound);
        }
        Ok(ForwardSettings {
            uri,
            host,
            port,
            tls,
            timeout,
            identity_header,
            cache_ttl,
            cache_entries,
            max_concurrent,
        })
    }
}

/// A configured forward-auth check.
pub struct ForwardAuth {
    uri: Uri,
    host: String,
    port: u16,
    tls: Option<TlsConnector>,
    timeout: Duration,
    identity_header: Option<HeaderName>,
    cache: Option<Cache>,
    permits: Semaphore,
}

impl std::fmt::Debug for ForwardAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardAuth")
            .field("uri", &self.uri)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What the auth request is built from.
pub struct Subject<'a> {
    pub headers: &'a HeaderMap,
    pub uri: &'a Uri,
    pub client: SocketAddr,
    pub tls: bool,
    pub route: &'a str,
}

impl ForwardAuth {
    /// Build the check (an empty cache, the bound on requests in flight) from its settings.
    pub fn new(s: &ForwardSettings) -> ForwardAuth {
        ForwardAuth {
            uri: s.uri.clone(),
            host: s.host.clone(),
            port: s.port,
            tls: s.tls.clone().map(TlsConnector::from),
            timeout: s.timeout,
            identity_header: s.identity_header.clone(),
            cache: s.cache_ttl.map(|ttl| Cache::new(ttl, s.cache_entries)),
            permits: Semaphore::new(s.max_concurrent),
        }
    }

    /// Ask the service (or the cache).
    pub async fn check(&self, s: &Subject<'_>) -> Decision {
        let key = cache_key(s);
        if let Some(cache) = &self.cache {
            if let Some(d) = cache.get(&key) {
                return d;
            }
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let _permit = match tokio::time::timeout_at(deadline, self.permits.acquire()).await {
            Ok(Ok(p)) => p,
            _ => return Decision::Unavailable("too many auth requests in flight"),
        };
        let decision = match tokio::time::timeout_at(deadline, self.ask(s)).await {
            Ok(d) => d,
            Err(_) => Decision::Unavailable("auth service timed out"),
        };
        if let (Some(cache), Decision::Allow(_) | Decision::Deny(_)) = (&self.cache, &decision) {
            cache.put(key, decision.clone());
        }
        decision
    }

    async fn ask(&self, s: &Subject<'_>) -> Decision {
        let Some(request) = self.request(s) else {
            return Decision::Unavailable("cannot build the auth request");
        };
        let resp = match outbound::get(&self.host, self.port, self.tls.as_ref(), request, 0).await {
            Ok(r) => r,
            Err(f) => {
                return Decision::Unavailable(match f {
                    Failure::Unreachable => "auth service unreachable",
                    Failure::TlsName => "auth service host is not a valid TLS name",
                    Failure::TlsHandshake => "auth service TLS handshake failed",
                    Failure::HttpHandshake => "auth service HTTP handshake failed",
                    Failure::NoAnswer | Failure::BodyTooLarge | Failure::Body => {
                        "auth service did not answer"
                    }
                })
            }
        };
        let status = resp.status;
        if status.is_success() {
            let subject = self
                .identity_header
                .as_ref()
                .and_then(|h| resp.headers.get(h))
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(str::to_owned);
            Decision::Allow(subject)
        } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            Decision::Deny(status)
        } else {
            Decision::Unavailable("auth service answered with an unexpected status")
        }
    }

    fn request(&self, s: &Subject<'_>) -> Option<Request<Empty<Bytes>>> {
        let mut req = Request::get(self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
            .body(Empty::new())
            .ok()?;
        let h = req.headers_mut();
        let authority = match self.uri.port_u16() {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        };
        h.insert(header::HOST, HeaderValue::from_str(&authority).ok()?);
        for name in [
            header::COOKIE,
            header::AUTHORIZATION,
            header::ORIGIN,
            header::USER_AGENT,
        ] {
            for v in s.headers.get_all(&name) {
                h.append(name.clone(), v.clone());
            }
        }
        if let Some(host) = s.headers.get(header::HOST) {
            h.insert("x-forwarded-host", host.clone());
        }
        let uri = s.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        h.insert("x-forwarded-uri", HeaderValue::from_str(uri).ok()?);
        h.insert("x-forwarded-method", HeaderValue::from_static("GET"));
        h.insert(
            "x-forwarded-proto",
            HeaderValue::from_static(if s.tls { "wss" } else { "ws" }),
        );
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_str(&s.client.ip().to_string()).ok()?,
        );
        h.insert("x-wsgate-route", HeaderValue::from_str(s.route).ok()?);
        Some(req)
    }
}

/// The cache key: a hash of the route and every header the service decides on.
fn cache_key(s: &Subject<'_>) -> [u8; 20] {
    let mut sha = Sha1::new();
    sha.update(s.route.as_bytes());
    for name in [header::COOKIE, header::AUTHORIZATION, header::ORIGIN] {
        sha.update([0u8]);
        for v in s.headers.get_all(&name) {
            sha.update(v.as_bytes());
            sha.update([1u8]);
        }
    }
    sha.finalize().into()
}

/// Decisions by credential hash, each valid for `ttl`, at most `capacity` of them (oldest first out).
struct Cache {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    map: HashMap<[u8; 20], (Decision, Instant)>,
    order: VecDeque<[u8; 20]>,
}

impl Cache {
    fn new(ttl: Duration, capacity: usize) -> Cache {
        Cache {
            ttl,
            capacity,
            inner: Mutex::new(CacheInner::default()),
        }
    }

    fn get(&self, key: &[u8; 20]) -> Option<Decision> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (d, stored) = inner.map.get(key)?;
        (stored.elapsed() < self.ttl).then(|| d.clone())
    }

    fn put(&self, key: [u8; 20], d: Decision) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.map.insert(key, (d, Instant::now())).is_none() {
            inner.order.push_back(key);
        }
        while inner.map.len() > self.capacity {
            match inner.order.pop_front() {
                Some(old) => {
                    inner.map.remove(&old);
                }
                None => break,
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().unwrap().map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_is_bounded_and_expires() {
        let c = Cache::new(Duration::from_millis(50), 2);
        c.put([1; 20], Decision::Allow(None));
        c.put([2; 20], Decision::Deny(StatusCode::FORBIDDEN));
        c.put([3; 20], Decision::Allow(Some("x".into())));
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&[1; 20]), None);
        assert_eq!(c.get(&[3; 20]), Some(Decision::Allow(Some("x".into()))));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get(&[3; 20]), None);
    }

    #[test]
    fn url_checks() {
        let mk = |u: &str| ForwardSettings::new(u, Duration::from_secs(1), None, None, 10, 1, None);
        assert!(mk("http://127.0.0.1:9000/auth").is_ok());
        assert!(mk("https://auth.example.com/check").is_ok());
        assert!(mk("ftp://x/").is_err());
        assert!(mk("127.0.0.1:9000").is_err());
    }

    #[test]
    fn cache_key_depends_on_credentials_not_order_of_calls() {
        let uri: Uri = "/chat?x=1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("s=1"));
        let s = |h: &HeaderMap| {
            cache_key(&Subject {
                headers: h,
                uri: &uri,
                client: "127.0.0.1:1".parse().unwrap(),
                tls: false,
                route: "/chat",
            })
        };
        let a = s(&h);
        assert_eq!(a, s(&h));
        h.insert(header::COOKIE, HeaderValue::from_static("s=2"));
        assert_ne!(a, s(&h));
    }
}
