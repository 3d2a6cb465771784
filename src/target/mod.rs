//! Per-session targets: a route whose backend is chosen for each session by a token in the
//! request (websockify's token plugins, e.g. a noVNC console whose URL names the VNC server).
//!
//! Owns where the token is read ([`TokenFrom`]), the token source ([`source`]: websockify's token
//! files; [`dir`]: a directory of token files or of unix sockets named after the tokens;
//! [`service`]: a token service asked over HTTP(S); [`redis`]: a Redis server; or the `host` and
//! `port` claims of the JWT the route's credential check verified, handed over as [`Claimed`]), the optional `cache_ttl` cache of resolved mappings (`cache`), and the allow-list
//! ([`allow`]) that bounds what a token may point at. It resolves a
//! request to a [`Target`] before any backend is touched; connecting is `backend`'s job, with
//! [`allow::Permit::admits`] checking every resolved address. Refusals: 400 (no token), 404
//! (unknown token, or a JWT without usable `host`/`port` claims), 403 (target not allowed), 503 (source unavailable). Token values are never
//! logged, returned in an error or passed on; logs carry [`token_hash`] instead. This module
//! knows no configuration types: `config` builds [`TargetSettings`], the server builds
//! [`RouteTargets`] from them for each configuration generation.

pub mod allow;
mod cache;
pub mod dir;
pub mod redis;
pub mod service;
pub mod source;

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName};
use http::{StatusCode, Uri};
use sha1::{Digest, Sha1};

use crate::error::Reject;
use allow::{AllowList, Permit};
use cache::TargetCache;
use dir::{DirKind, DirSource};
use redis::{RedisSettings, RedisSource};
use service::{ServiceSettings, ServiceSource};
use source::{FileSource, SourceError};

/// Default `token_name`.
pub const DEFAULT_TOKEN_NAME: &str = "token";
/// Most mappings a route's `cache_ttl` cache holds; the oldest is evicted first.
pub const MAX_CACHED_TARGETS: usize = 10_000;
/// Longest token looked up; a longer one is unknown.
pub const MAX_TOKEN_BYTES: usize = 1024;

/// Where the request carries the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenFrom {
    /// The query parameter of this name (percent-decoded).
    Query(String),
    /// The cookie of this name.
    Cookie(String),
    /// The header of this name.
    Header(HeaderName),
    /// The Host header without its port (websockify's `--host-token`).
    Host,
    /// The route's credential: the JWT `[route.auth]` verified (`source = "jwt"`).
    Credential,
}

/// Where tokens map to targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSettings {
    /// A token file, or a directory of them.
    File(PathBuf),
    /// A token service: `GET` its URL with the token in it.
    Http(ServiceSettings),
    /// The `host` and `port` claims of the JWT verified by the route's `[route.auth]`.
    Jwt,
    /// A Redis server: `GET prefix+token`.
    Redis(RedisSettings),
    /// `token-dir:DIR`: the file `DIR/TOKEN` holds the target.
    TokenDir(PathBuf),
    /// `socket-dir:DIR`: the unix socket `DIR/TOKEN` is the target.
    SocketDir(PathBuf),
}

/// A route's `[route.target]`, validated. Values only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSettings {
    pub token_from: TokenFrom,
    pub source: SourceSettings,
    pub allow: AllowList,
    /// Keep resolved token -> target mappings this long (none: look up every time).
    pub cache_ttl: Option<Duration>,
}

impl fmt::Display for TargetSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.token_from {
            TokenFrom::Query(n) => write!(f, "query parameter {n}")?,
            TokenFrom::Cookie(n) => write!(f, "cookie {n}")?,
            TokenFrom::Header(n) => write!(f, "header {n}")?,
            TokenFrom::Host => f.write_str("Host")?,
            TokenFrom::Credential => f.write_str("the route's JWT")?,
        }
        match &self.source {
            SourceSettings::File(p) => write!(f, " via file:{}", p.display()),
            SourceSettings::Http(s) => write!(f, " via {}", s.url()),
            SourceSettings::Jwt => f.write_str(" via its host and port claims"),
            SourceSettings::Redis(s) => write!(f, " via {}", s.redacted_url()),
            SourceSettings::TokenDir(p) => write!(f, " via token-dir:{}", p.display()),
            SourceSettings::SocketDir(p) => write!(f, " via socket-dir:{}", p.display()),
        }
    }
}

/// A session's target, as a token source names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `host:port`; the host may be a name, resolved at connect.
    Tcp { host: String, port: u16 },
    /// A unix socket.
    Unix(PathBuf),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Target::Tcp { host, port } => write!(f, "{host}:{port}"),
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// What a verified credential names as the target: the `host` and `port` claims of a JWT, if
/// usable, and the hash of the token (for the logs; never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub target: Option<Target>,
    pub token_hash: String,
}

/// The first 8 hex digits of the token's SHA-1: enough to tell sessions apart in the logs, not
/// to recover the token.
pub fn token_hash(token: &str) -> String {
    hash_hex(&Sha1::digest(token.as_bytes()).into())
}

/// The log form of a token's SHA-1: its first 4 bytes in hex.
fn hash_hex(digest: &[u8; 20]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(8);
    for b in &digest[..4] {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s
}

/// The token of a request, if it carries one (pure). Borrowed from the request unless it had to
/// be decoded.
pub fn extract_token<'r>(
    from: &TokenFrom,
    headers: &'r HeaderMap,
    uri: &'r Uri,
) -> Option<Cow<'r, str>> {
    let token: Cow<'r, str> = match from {
        TokenFrom::Query(name) => uri.query().and_then(|q| {
            q.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(k)? == name.as_str()).then(|| percent_decode(v))?
            })
        }),
        TokenFrom::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                (k.trim() == name).then(|| Cow::Borrowed(v.trim().trim_matches('"')))
            }),
        TokenFrom::Header(name) => headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| Cow::Borrowed(v.trim())),
        TokenFrom::Host => headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| uri.host())
            .map(|h| Cow::Borrowed(strip_port(h.trim()))),
        TokenFrom::Credential => None,
    }?;
    (!token.is_empty()).then_some(token)
}

/// `host:port` -> `host`; `[v6]:port` -> `[v6]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..=h.len()]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// `%XX` and `+` (a space) decoded; `None` for a bad escape or bytes that are not UTF-8. Borrowed
/// when there is nothing to decode.
pub(crate) fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// Why a request has no target.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("the request carries no token")]
    Missing,
    #[error("the token is not in the source")]
    Unknown { token_hash: String },
    #[error("the token has no usable host and port claims")]
    NoTarget { token_hash: String },
    #[error("target {target} is not in the route's allow list")]
    NotAllowed { target: Target, token_hash: String },
    #[error("token source unavailable: {source}")]
    Source {
        token_hash: String,
        source: SourceError,
    },
}

impl TargetError {
    /// The answer the client gets instead of a 101.
    pub fn reject(&self) -> Reject {
        match self {
            TargetError::Missing => Reject::client(StatusCode::BAD_REQUEST, "missing token"),
            TargetError::Unknown { .. } => Reject::client(StatusCode::NOT_FOUND, "unknown token"),
            TargetError::NoTarget { .. } => {
                Reject::client(StatusCode::NOT_FOUND, "token names no target")
            }
            TargetError::NotAllowed { .. } => {
                Reject::client(StatusCode::FORBIDDEN, "target not allowed")
            }
            TargetError::Source { .. } => {
                Reject::gateway(StatusCode::SERVICE_UNAVAILABLE, "token source unavailable")
            }
        }
    }

    /// The hash of the token, when there was one.
    pub fn token_hash(&self) -> Option<&str> {
        match self {
            TargetError::Missing => None,
            TargetError::Unknown { token_hash }
            | TargetError::NoTarget { token_hash }
            | TargetError::NotAllowed { token_hash, .. }
            | TargetError::Source { token_hash, .. } => Some(token_hash),
        }
    }
}

/// A route's token source, with its state.
enum Source {
    File(FileSource),
    Service(ServiceSource),
    Redis(RedisSource),
    Dir(DirSource),
    /// The verified JWT's claims: no state, nothing to look up.
    Jwt,
}

impl Source {
    async fn lookup(&self, token: &str) -> Result<Option<Target>, SourceError> {
        match self {
            Source::File(f) => f.lookup(token).await,
            Source::Service(s) => s.lookup(token).await,
            Source::Redis(r) => r.lookup(token).await,
            Source::Dir(d) => d.lookup(token).await,
            Source::Jwt => Ok(None),
        }
    }
}

/// A request's resolved target, admitted by the allow-list by what it names; `permit` checks
/// the addresses it resolves to.
#[derive(Debug, Clone)]
pub struct Resolved<'a> {
    pub target: Target,
    pub token_hash: String,
    pub permit: Permit<'a>,
}

/// A route's target resolution: the settings and the source's state (what was read from the
/// token files, or the token service's connector and bound on requests in flight). Built for
/// each configuration generation.
pub struct RouteTargets {
    settings: TargetSettings,
    source: Source,
    cache: Option<TargetCache>,
}

impl RouteTargets {
    pub fn new(settings: &TargetSettings) -> RouteTargets {
        let source = match &settings.source {
            SourceSettings::File(path) => Source::File(FileSource::new(path.clone())),
            SourceSettings::Http(s) => Source::Service(ServiceSource::new(s)),
            SourceSettings::Jwt => Source::Jwt,
            SourceSettings::Redis(s) => Source::Redis(RedisSource::new(s)),
            SourceSettings::TokenDir(d) => {
                Source::Dir(DirSource::new(d.clone(), DirKind::TokenFiles))
            }
            SourceSettings::SocketDir(d) => {
                Source::Dir(DirSource::new(d.clone(), DirKind::Sockets))
            }
        };
        RouteTargets {
            settings: settings.clone(),
            source,
            cache: settings
                .cache_ttl
                .map(|ttl| TargetCache::new(ttl, MAX_CACHED_TARGETS)),
        }
    }

    /// The request's target: read the token, look it up, check it against the allow-list. With
    /// `source = "jwt"` the target is the one `claimed` by the verified credential instead.
    pub async fn resolve(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        claimed: Option<&Claimed>,
    ) -> Result<Resolved<'_>, TargetError> {
        if matches!(self.source, Source::Jwt) {
            let claimed = claimed.ok_or(TargetError::Missing)?;
            let token_hash = claimed.token_hash.clone();
            let Some(target) = claimed.target.clone() else {
                return Err(TargetError::NoTarget { token_hash });
            };
            return self.admit(target, token_hash);
        }
        let token =
            extract_token(&self.settings.token_from, headers, uri).ok_or(TargetError::Missing)?;
        // One digest: the cache key, and the short hash the logs carry.
        let key: [u8; 20] = Sha1::digest(token.as_bytes()).into();
        let token_hash = hash_hex(&key);
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TargetError::Unknown { token_hash });
        }
        let cached = self.cache.as_ref().and_then(|c| c.get(&key));
        let target = match cached {
            Some(t) => t,
            None => match self.source.lookup(&token).await {
                Ok(Some(t)) => {
                    if let Some(c) = &self.cache {
                        c.insert(key, t.clone());
                    }
                    t
                }
                Ok(None) => return Err(TargetError::Unknown { token_hash }),
                Err(source) => return Err(TargetError::Source { token_hash, source }),
            },
        };
        self.admit(target, token_hash)
    }

    fn admit(&self, target: Target, token_hash: String) -> Result<Resolved<'_>, TargetError> {
        match self.settings.allow.permits(&target) {
            Some(permit) => Ok(Resolved {
                target,
                token_hash,
                permit,
            }),
            None => Err(TargetError::NotAllowed { target, token_hash }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn token_from_query() {
        let from = TokenFrom::Query("token".into());
        let uri: Uri = "/websockify?a=1&token=ab%2Fc+d&token=second"
            .parse()
            .unwrap();
        assert_eq!(
            extract_token(&from, &HeaderMap::new(), &uri).as_deref(),
            Some("ab/c d")
        );
        let none: Uri = "/websockify?tokens=x&token=".parse().unwrap();
        assert_eq!(extract_token(&from, &HeaderMap::new(), &none), None);
        let bad: Uri = "/websockify?token=%zz".parse().unwrap();
        assert_eq!(extract_token(&from, &HeaderMap::new(), &bad), None);
    }

    #[test]
    fn token_from_cookie_header_and_host() {
        let uri: Uri = "/p".parse().unwrap();
        let h = headers(&[
            ("cookie", "a=1; vnc=\"tok1\""),
            ("cookie", "vnc=later"),
            ("x-target", " tok2 "),
            ("host", "vm7.consoles.test:8443"),
        ]);
        let cookie = TokenFrom::Cookie("vnc".into());
        assert_eq!(extract_token(&cookie, &h, &uri).as_deref(), Some("tok1"));
        let header = TokenFrom::Header(HeaderName::from_static("x-target"));
        assert_eq!(extract_token(&header, &h, &uri).as_deref(), Some("tok2"));
        assert_eq!(
            extract_token(&TokenFrom::Host, &h, &uri).as_deref(),
            Some("vm7.consoles.test")
        );
        let v6 = headers(&[("host", "[::1]:80")]);
        assert_eq!(
            extract_token(&TokenFrom::Host, &v6, &uri).as_deref(),
            Some("[::1]")
        );
        assert_eq!(extract_token(&cookie, &HeaderMap::new(), &uri), None);
    }

    #[tokio::test]
    async fn jwt_source_takes_the_claimed_target() {
        let targets = RouteTargets::new(&TargetSettings {
            token_from: TokenFrom::Credential,
            source: SourceSettings::Jwt,
            allow: AllowList::new(vec![
                allow::AllowEntry::parse("127.0.0.1:5900-5901").unwrap()
            ]),
            cache_ttl: None,
        });
        let uri: Uri = "/?token=ignored".parse().unwrap();
        let h = HeaderMap::new();
        let claimed = |target| Claimed {
            target,
            token_hash: "0badcafe".into(),
        };
        let ok = claimed(Some(Target::Tcp {
            host: "127.0.0.1".into(),
            port: 5901,
        }));
        let r = targets.resolve(&h, &uri, Some(&ok)).await.unwrap();
        assert_eq!(r.target.to_string(), "127.0.0.1:5901");
        assert_eq!(r.token_hash, "0badcafe");
        let outside = claimed(Some(Target::Tcp {
            host: "127.0.0.1".into(),
            port: 22,
        }));
        let e = targets.resolve(&h, &uri, Some(&outside)).await.unwrap_err();
        assert_eq!(e.reject().status, StatusCode::FORBIDDEN);
        let none = claimed(None);
        let e = targets.resolve(&h, &uri, Some(&none)).await.unwrap_err();
        assert_eq!(e.reject().status, StatusCode::NOT_FOUND);
        assert_eq!(e.token_hash(), Some("0badcafe"));
        let e = targets.resolve(&h, &uri, None).await.unwrap_err();
        assert_eq!(e.reject().status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn token_hash_is_short_hex() {
        // SHA-1("abc") = a9993e36...
        assert_eq!(token_hash("abc"), "a9993e36");
    }
}
