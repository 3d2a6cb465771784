//! `[[route]]`: path, backends and their health (or `[route.target]`, a backend per session),
//! framing, Origin policy, subprotocols, PROXY header, and the route's limits and credential
//! settings (validated in `limits` and `auth`).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::limits::SessionLimits;
use super::raw::{Compression, RawRoute, RawTarget, TargetTokenFrom};
pub use super::recording::RecordingSettings;
use super::units::Bounded;
use super::{ConfigError, Ctx};
pub use crate::auth::AuthSettings;
use crate::origin::OriginPattern;
use crate::proxy_protocol;
use crate::target::allow::{AllowEntry, AllowList};
use crate::target::redis::{RedisSettings, MAX_KEY_PREFIX_BYTES};
use crate::target::service::{ServiceSettings, ServiceSettingsError, DEFAULT_SOURCE_TIMEOUT};
pub use crate::target::TargetSettings;
use crate::target::{SourceSettings, TokenFrom, DEFAULT_TOKEN_NAME};
use crate::tls::BackendTls;
pub use crate::ws::DeflateSettings;

/// Longest `[route.target] token_name`.
pub const MAX_TOKEN_NAME_BYTES: usize = 256;
/// Most `[route.target] allow` entries.
pub const MAX_ALLOW_ENTRIES: usize = 10_000;

/// Default consecutive connect failures after which a backend is skipped.
pub const DEFAULT_HEALTH_FAILURES: u32 = 3;
/// Default time a failing backend is skipped.
pub const DEFAULT_HEALTH_COOLOFF_SECS: u64 = 10;

/// How messages become bytes on the backend connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Framing {
    /// Payloads as a byte stream both ways; backend bytes reach the client as binary messages.
    #[default]
    Raw,
    /// One text message per `\n`-terminated line.
    Lines,
    /// `[type u8][length u32 BE][payload]` envelopes both ways.
    LengthPrefixed,
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Framing::Raw => "raw",
            Framing::Lines => "lines",
            Framing::LengthPrefixed => "length-prefixed",
        })
    }
}

/// Where a route's backend lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendAddr {
    /// `host:port`; the host may be a name, resolved at each connect.
    Tcp { host: String, port: u16 },
    /// `unix:/path/to/socket`.
    Unix(PathBuf),
    /// `tls://host:port`: TCP, then TLS as the route's `[route.backend_tls]` says.
    Tls { host: String, port: u16 },
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendAddr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            BackendAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            BackendAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            BackendAddr::Tls { host, port } if host.contains(':') => {
                write!(f, "tls://[{host}]:{port}")
            }
            BackendAddr::Tls { host, port } => write!(f, "tls://{host}:{port}"),
        }
    }
}

/// How a route picks among its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConnections,
}

/// Health rules of a route's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Consecutive failed connects after which a backend is skipped.
    pub failures: u32,
    /// How long it is skipped.
    pub cooloff: Duration,
    /// Active TCP connect checks, if set.
    pub check_interval: Option<Duration>,
}

/// One `[[route]]`, validated.
#[derive(Debug)]
pub struct Route {
    /// Index in the file, for messages.
    pub index: usize,
    pub path: String,
    /// One or more backends, in config order; none when the route has a per-session `target`.
    pub backends: Vec<BackendAddr>,
    /// `[route.target]`: the backend is chosen per session by a token.
    pub target: Option<TargetSettings>,
    pub balance: Balance,
    pub health: Health,
    /// Cap on this route's open sessions.
    pub max_sessions: Option<usize>,
    pub framing: Framing,
    /// `None` = any Origin (or none) accepted.
    pub allowed_origins: Option<Vec<OriginPattern>>,
    /// With `allowed_origins`: a request without an Origin header is accepted (non-browser clients).
    pub allow_missing_origin: bool,
    /// The credential check, if any.
    pub auth: Option<AuthSettings>,
    /// Write a PROXY protocol header to the backend first.
    pub proxy_protocol: Option<proxy_protocol::Version>,
    /// Subprotocols the route may select, in preference order.
    pub subprotocols: Vec<String>,
    pub limits: SessionLimits,
    /// `[route.backend_tls]`, loaded: set when a backend is `tls://` or `target_tls` is set.
    pub backend_tls: Option<Arc<BackendTls>>,
    /// `[route.target] tls = true`: per-session targets are connected with TLS.
    pub target_tls: bool,
    /// `record = "DIR"`: each session is written to a file there.
    pub record: Option<RecordingSettings>,
    /// `compression = "permessage-deflate"` with its `[route.deflate]` settings; `None`: off.
    pub deflate: Option<DeflateSettings>,
    /// `fallback = true`: the route also serves the fallback transport (streaming and
    /// long-polling over plain HTTP, for clients without WebSocket).
    pub fallback: bool,
}

impl Route {
    /// For a prefix route (`path = "/prefix/*"`, or `"/*"` for every path): the part before the
    /// `*`, which every path it matches starts with. `None` for an exact route.
    pub fn prefix(&self) -> Option<&str> {
        self.path.strip_suffix('*').filter(|p| p.ends_with('/'))
    }

    /// What the Origin, credential and subprotocol checks need to know of this route.
    pub fn policy(&self) -> crate::auth::RoutePolicy<'_> {
        crate::auth::RoutePolicy {
            path: &self.path,
            allowed_origins: self.allowed_origins.as_deref(),
            allow_missing_origin: self.allow_missing_origin,
            subprotocols: &self.subprotocols,
            raw: self.framing == Framing::Raw,
        }
    }
}

impl Ctx<'_> {
    pub(super) fn route(
        &self,
        i: usize,
        r: &mut RawRoute,
        global: &SessionLimits,
    ) -> Result<Route, ConfigError> {
        let path = r.path.get_ref();
        if !path.starts_with('/') {
            return self.err(
                r.path.span(),
                format!("route[{i}].path"),
                format!("{path:?} must start with '/'"),
            );
        }
        if path.contains(['?', '#']) || path.chars().any(|c| c.is_ascii_control() || c == ' ') {
            return self.err(
                r.path.span(),
                format!("route[{i}].path"),
                format!("{path:?} must be a plain path (no query, fragment, spaces or control characters)"),
            );
        }
        if path == crate::fallback::SCRIPT_PATH {
            return self.err(
                r.path.span(),
                format!("route[{i}].path"),
                format!("{path:?} is served by the gateway itself (the fallback client script)"),
            );
        }
        if let Some(star) = path.find('*') {
            if star + 1 != path.len() || !path.ends_with("/*") {
                return self.err(
                    r.path.span(),
                    format!("route[{i}].path"),
                    format!("{path:?}: `*` may only end the path, after a '/' (\"/prefix/*\" matches every path under /prefix/)"),
                );
            }
        }
        let fixed = (r.backend.as_ref().map(|b| b.span()))
            .or_else(|| r.backends.as_ref().map(|b| b.span()));
        if let (Some(_), Some(b)) = (&r.target, fixed) {
            return self.err(
                b,
                format!("route[{i}].target"),
                "a route has backend/backends or [route.target] (a backend per session), not both",
            );
        }
        let target = match &r.target {
            None => None,
            Some(t) => Some(self.target(i, t)?),
        };
        let backends = match (&r.backend, &r.backends) {
            (None, None) if target.is_some() => Vec::new(),
            (Some(b), None) => vec![self.backend(&format!("route[{i}].backend"), b)?],
            (None, Some(list)) if !list.get_ref().is_empty() => list
                .get_ref()
                .iter()
                .enumerate()
                .map(|(j, b)| self.backend(&format!("route[{i}].backends[{j}]"), b))
                .collect::<Result<Vec<_>, _>>()?,
            (None, Some(list)) => {
                return self.err(
                    list.span(),
                    format!("route[{i}].backends"),
                    "must not be empty",
                )
            }
            (Some(b), Some(_)) => {
                return self.err(
                    b.span(),
                    format!("route[{i}].backend"),
                    "give backend (one) or backends (a list), not both",
                )
            }
            (None, None) => {
                return self.err(
                    r.path.span(),
                    format!("route[{i}].backend"),
                    "a route needs backend = \"host:port\", backends = [...] or [route.target]",
                )
            }
        };
        let tls = self.route_tls(i, r, &backends)?;
        let health = Health {
            failures: r
                .health
                .failures
                .map_or(DEFAULT_HEALTH_FAILURES, |n| n.u32()),
            cooloff: r
                .health
                .cooloff
                .map_or(Duration::from_secs(DEFAULT_HEALTH_COOLOFF_SECS), |d| d.0),
            check_interval: r.health.check_interval.map(|d| d.0),
        };
        let allowed_origins = match &r.allowed_origins {
            None => None,
            Some(list) => {
                let mut out = Vec::with_capacity(list.len());
                for (j, o) in list.iter().enumerate() {
                    match OriginPattern::parse(o.get_ref()) {
                        Ok(origin) => out.push(origin),
                        Err(e) => {
                            return self.err(
                                o.span(),
                                format!("route[{i}].allowed_origins[{j}]"),
                                e.to_string(),
                            )
                        }
                    }
                }
                Some(out)
            }
        };
        let mut subprotocols = Vec::new();
        for (j, p) in r.subprotocols.iter().enumerate() {
            let name = p.get_ref();
            if name.is_empty() || !name.bytes().all(crate::handshake::is_token_byte) {
                return self.err(
                    p.span(),
                    format!("route[{i}].subprotocols[{j}]"),
                    format!("{name:?} is not a valid subprotocol token (RFC 6455 §4.1)"),
                );
            }
            subprotocols.push(name.clone());
        }
        let limits = self.route_limits(i, &mut r.limits, global)?;
        let deflate = self.deflate(i, r)?;
        let auth = match &mut r.auth {
            None => None,
            Some(a) => Some(self.auth(i, a, &subprotocols)?),
        };
        if target
            .as_ref()
            .is_some_and(|t| t.source == SourceSettings::Jwt)
            && !matches!(auth, Some(AuthSettings::Jwt(_)))
        {
            let at = r.target.as_ref().map_or(0..0, |t| {
                t.get_ref().source.as_ref().map_or(t.span(), |s| s.span())
            });
            return self.err(
                at,
                format!("route[{i}].target.source"),
                "source = \"jwt\" takes the target from the token [route.auth] verifies: the route needs [route.auth] type = \"jwt\"",
            );
        }
        let ambient = auth.as_ref().is_some_and(AuthSettings::is_ambient);
        if ambient && allowed_origins.is_none() {
            return self.err(
                r.auth.as_ref().map(|a| a.span()).unwrap_or(0..0),
                format!("route[{i}].allowed_origins"),
                "this route authenticates with a credential browsers send on their own (a cookie), \
                 so it must list allowed_origins (cross-site WebSocket hijacking defence)",
            );
        }
        let allow_missing_origin = match &r.allow_missing_origin {
            None => false,
            Some(v) if *v.get_ref() && ambient => {
                return self.err(
                    v.span(),
                    format!("route[{i}].allow_missing_origin"),
                    "not allowed on a route whose credential browsers send on their own (a cookie, or forward auth)",
                )
            }
            Some(v) if *v.get_ref() && allowed_origins.is_none() => {
                return self.err(
                    v.span(),
                    format!("route[{i}].allow_missing_origin"),
                    "only meaningful together with allowed_origins",
                )
            }
            Some(v) => *v.get_ref(),
        };
        let path = r.path.get_ref();
        if r.proxy_protocol == Some(proxy_protocol::Version::V2)
            && path.len() > proxy_protocol::MAX_ROUTE_BYTES
        {
            return self.err(
                r.path.span(),
                format!("route[{i}].path"),
                format!(
                    "a route with proxy_protocol = \"v2\" has a path of at most {} bytes",
                    proxy_protocol::MAX_ROUTE_BYTES
                ),
            );
        }
        let record = self.record(i, r)?;
        Ok(Route {
            index: i,
            path: path.clone(),
            backends,
            target,
            balance: r.balance.unwrap_or_default(),
            health,
            max_sessions: r.max_sessions.map(|n| n.usize()),
            framing: r.framing.unwrap_or_default(),
            allowed_origins,
            allow_missing_origin,
            auth,
            proxy_protocol: r.proxy_protocol,
            subprotocols,
            limits,
            backend_tls: tls.backend_tls,
            target_tls: tls.target_tls,
            record,
            deflate,
            fallback: r.fallback.unwrap_or(false),
        })
    }

    /// `compression` and `[route.deflate]`.
    fn deflate(&self, i: usize, r: &RawRoute) -> Result<Option<DeflateSettings>, ConfigError> {
        match (r.compression.unwrap_or_default(), &r.deflate) {
            (Compression::Off, None) => Ok(None),
            (Compression::Off, Some(d)) => self.err(
                d.span(),
                format!("route[{i}].deflate"),
                "needs compression = \"permessage-deflate\" on the route",
            ),
            (Compression::PermessageDeflate, d) => {
                let d = d.as_ref().map(Spanned::get_ref);
                let defaults = DeflateSettings::default();
                let bits = |b: Option<Bounded<8, 15>>, default: u8| {
                    b.map_or(default, |b| u8::try_from(b.0).unwrap_or(default))
                };
                Ok(Some(DeflateSettings {
                    server_max_window_bits: bits(
                        d.and_then(|d| d.server_max_window_bits),
                        defaults.server_max_window_bits,
                    ),
                    client_max_window_bits: bits(
                        d.and_then(|d| d.client_max_window_bits),
                        defaults.client_max_window_bits,
                    ),
                    server_no_context_takeover: d
                        .and_then(|d| d.server_no_context_takeover)
                        .unwrap_or(defaults.server_no_context_takeover),
                    client_no_context_takeover: d
                        .and_then(|d| d.client_no_context_takeover)
                        .unwrap_or(defaults.client_no_context_takeover),
                    min_compress_bytes: d
                        .and_then(|d| d.min_compress_bytes)
                        .map_or(defaults.min_compress_bytes, |n| {
                            usize::try_from(n.0).unwrap_or(usize::MAX)
                        }),
                }))
            }
        }
    }

    fn target(&self, i: usize, t: &Spanned<RawTarget>) -> Result<TargetSettings, ConfigError> {
        let key = |k: &str| format!("route[{i}].target.{k}");
        let span = t.span();
        let t = t.get_ref();
        let (token_from, source) = if t
            .source
            .as_ref()
            .is_some_and(|s| s.get_ref().trim() == "jwt")
        {
            // The token is the route's credential, verified by [route.auth] (checked in `route`):
            // nothing else to read it from, nothing to look up or cache.
            for (k, at) in [
                ("token_from", t.token_from.map(|_| span.clone())),
                ("token_name", t.token_name.as_ref().map(|v| v.span())),
                ("cache_ttl", t.cache_ttl.map(|_| span.clone())),
                (
                    "source_timeout",
                    t.source_timeout.as_ref().map(|v| v.span()),
                ),
                (
                    "source_ca_file",
                    t.source_ca_file.as_ref().map(|v| v.span()),
                ),
                (
                    "redis_key_prefix",
                    t.redis_key_prefix.as_ref().map(|v| v.span()),
                ),
            ] {
                if let Some(at) = at {
                    return self.err(
                        at,
                        key(k),
                        "does not apply to source = \"jwt\" (the target comes from the claims of the route's JWT)",
                    );
                }
            }
            (TokenFrom::Credential, SourceSettings::Jwt)
        } else {
            self.token_source(i, span.clone(), t)?
        };
        let Some(list) = &t.allow else {
            return self.err(
                span,
                key("allow"),
                "required: the targets a token may name (e.g. [\"10.0.0.0/8:5900-5999\"]); nothing outside it is connected",
            );
        };
        if list.get_ref().is_empty() {
            return self.err(list.span(), key("allow"), "must not be empty");
        }
        if list.get_ref().len() > MAX_ALLOW_ENTRIES {
            return self.err(
                list.span(),
                key("allow"),
                format!("at most {MAX_ALLOW_ENTRIES} entries"),
            );
        }
        let mut entries = Vec::with_capacity(list.get_ref().len());
        for (j, e) in list.get_ref().iter().enumerate() {
            entries.push(AllowEntry::parse(e.get_ref()).or_else(|m| {
                self.err(
                    e.span(),
                    format!("route[{i}].target.allow[{j}]"),
                    m.to_string(),
                )
            })?);
        }
        Ok(TargetSettings {
            token_from,
            source,
            allow: AllowList::new(entries),
            cache_ttl: t.cache_ttl.map(|d| d.0),
        })
    }

    /// `token_from`, `token_name` and a file, directory, http(s) or redis `source` of a
    /// `[route.target]`.
    fn token_source(
        &self,
        i: usize,
        span: std::ops::Range<usize>,
        t: &RawTarget,
    ) -> Result<(TokenFrom, SourceSettings), ConfigError> {
        let key = |k: &str| format!("route[{i}].target.{k}");
        let from = t.token_from.ok_or_else(|| {
            self.error(
                span.clone(),
                key("token_from"),
                "missing: \"query\", \"cookie\", \"header\" or \"host\"",
            )
        })?;
        let name = match &t.token_name {
            Some(n) if from == TargetTokenFrom::Host => {
                return self.err(
                    n.span(),
                    key("token_name"),
                    "does not apply to token_from = \"host\"",
                )
            }
            Some(n) => {
                let v = n.get_ref();
                if v.is_empty()
                    || v.len() > MAX_TOKEN_NAME_BYTES
                    || !v.bytes().all(crate::handshake::is_token_byte)
                {
                    return self.err(
                        n.span(),
                        key("token_name"),
                        format!("{v:?} is not a name of 1 to {MAX_TOKEN_NAME_BYTES} letters, digits or -_.!#$%&'*+^`|~"),
                    );
                }
                v.clone()
            }
            None => DEFAULT_TOKEN_NAME.to_string(),
        };
        let token_from = match from {
            TargetTokenFrom::Query => TokenFrom::Query(name),
            TargetTokenFrom::Cookie => TokenFrom::Cookie(name),
            TargetTokenFrom::Host => TokenFrom::Host,
            TargetTokenFrom::Header => match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => TokenFrom::Header(h),
                Err(_) => {
                    return self.err(
                        t.token_name.as_ref().map_or(span.clone(), |n| n.span()),
                        key("token_name"),
                        format!("{name:?} is not a header name"),
                    )
                }
            },
        };
        let source = t.source.as_ref().ok_or_else(|| {
            self.error(
                span.clone(),
                key("source"),
                "missing: \"file:PATH\" (a token file or a directory of them), \"token-dir:DIR\", \"socket-dir:DIR\", an http(s):// token service URL, a redis:// URL, or \"jwt\"",
            )
        })?;
        let value = source.get_ref().trim();
        let http = value.starts_with("http://") || value.starts_with("https://");
        let redis = value.starts_with("redis://") || value.starts_with("rediss://");
        if let (Some(at), false) = (&t.source_timeout, http || redis) {
            return self.err(
                at.span(),
                key("source_timeout"),
                "only applies to an http://, https:// or redis:// source",
            );
        }
        if let (Some(at), false) = (&t.source_ca_file, http) {
            return self.err(
                at.span(),
                key("source_ca_file"),
                "only applies to an https:// source",
            );
        }
        if let (Some(at), false) = (&t.redis_key_prefix, redis) {
            return self.err(
                at.span(),
                key("redis_key_prefix"),
                "only applies to a redis:// source",
            );
        }
        let dir = |prefix: &str| {
            let path = value.strip_prefix(prefix)?.trim();
            Some(if path.is_empty() {
                self.err(
                    source.span(),
                    key("source"),
                    format!("\"{prefix}\" needs a directory"),
                )
            } else {
                // Absolute: a socket-dir target is a unix socket path, and the allow list
                // admits only absolute ones.
                std::path::absolute(self.resolve(path))
                    .or_else(|e| self.err(source.span(), key("source"), format!("{path}: {e}")))
            })
        };
        let source = if let Some(path) = value.strip_prefix("file:") {
            if path.trim().is_empty() {
                return self.err(source.span(), key("source"), "\"file:\" needs a path");
            }
            SourceSettings::File(self.resolve(path.trim()))
        } else if let Some(d) = dir("token-dir:") {
            SourceSettings::TokenDir(d?)
        } else if let Some(d) = dir("socket-dir:") {
            let d = d?;
            if d.components().any(|c| c == std::path::Component::ParentDir) {
                return self.err(
                    source.span(),
                    key("source"),
                    "a socket-dir path must not contain '..' (the allow list refuses such socket paths)",
                );
            }
            SourceSettings::SocketDir(d)
        } else if redis {
            let prefix = t.redis_key_prefix.as_ref();
            let prefix_str = prefix.map_or("", |p| p.get_ref().as_str());
            if prefix_str.len() > MAX_KEY_PREFIX_BYTES {
                return self.err(
                    prefix.map_or(source.span(), |p| p.span()),
                    key("redis_key_prefix"),
                    format!("at most {MAX_KEY_PREFIX_BYTES} bytes"),
                );
            }
            let timeout = t
                .source_timeout
                .as_ref()
                .map_or(DEFAULT_SOURCE_TIMEOUT, |d| d.get_ref().0);
            match RedisSettings::parse(value, prefix_str, timeout) {
                Ok(s) => SourceSettings::Redis(s),
                // The message never quotes the URL: it may hold a password.
                Err(e) => return self.err(source.span(), key("source"), e.to_string()),
            }
        } else if value.starts_with("http://") || value.starts_with("https://") {
            let ca = match &t.source_ca_file {
                None => None,
                Some(f) => {
                    if !value.starts_with("https://") {
                        return self.err(
                            f.span(),
                            key("source_ca_file"),
                            "only applies to an https:// source",
                        );
                    }
                    let path = self.resolve(f.get_ref());
                    Some(std::fs::read(&path).or_else(|e| {
                        self.err(
                            f.span(),
                            key("source_ca_file"),
                            format!("{}: {e}", path.display()),
                        )
                    })?)
                }
            };
            let timeout = t
                .source_timeout
                .as_ref()
                .map_or(DEFAULT_SOURCE_TIMEOUT, |d| d.get_ref().0);
            match ServiceSettings::new(value, timeout, ca) {
                Ok(s) => SourceSettings::Http(s),
                Err(e @ ServiceSettingsError::Tls(_)) => {
                    let at = t
                        .source_ca_file
                        .as_ref()
                        .map_or(source.span(), |f| f.span());
                    return self.err(at, key("source_ca_file"), e.to_string());
                }
                Err(e) => return self.err(source.span(), key("source"), e.to_string()),
            }
        } else {
            // Not quoted when it may hold a password (a mistyped redis:// URL).
            let shown = if value.contains('@') {
                "this".to_string()
            } else {
                format!("{:?}", source.get_ref())
            };
            return self.err(
                source.span(),
                key("source"),
                format!("{shown} is not a source; write \"file:PATH\" (a token file or a directory of them), \"token-dir:DIR\" (a file per token), \"socket-dir:DIR\" (a unix socket per token), an http:// or https:// token service URL, a redis:// URL, or \"jwt\" (the claims of the route's JWT)"),
            );
        };
        Ok((token_from, source))
    }

    fn backend(&self, key: &str, value: &Spanned<String>) -> Result<BackendAddr, ConfigError> {
        let key = key.to_string();
        let s = value.get_ref().trim();
        let (tls, s) = match s.strip_prefix("tls://") {
            Some(rest) if rest.starts_with("unix:") => {
                return self.err(
                    value.span(),
                    key,
                    "TLS to backends goes over TCP only: write tls://host:port",
                )
            }
            Some(rest) => (true, rest),
            None => (false, s),
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return self.err(
                    value.span(),
                    key,
                    "\"unix:\" needs a socket path, e.g. \"unix:/run/app.sock\"",
                );
            }
            return Ok(BackendAddr::Unix(self.resolve(path)));
        }
        let bad = || {
            self.err(
                value.span(),
                &key,
                format!(
                    "{:?} is not host:port (e.g. \"127.0.0.1:9001\", \"[::1]:9001\", \"backend.local:9001\"), tls://host:port or unix:/path",
                    value.get_ref().trim()
                ),
            )
        };
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            match rest.split_once("]:") {
                Some((h, p)) if h.parse::<std::net::Ipv6Addr>().is_ok() => (h, p),
                _ => return bad(),
            }
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) if !h.is_empty() && !h.contains(':') => (h, p),
                _ => return bad(),
            }
        };
        let port: u16 = match port.parse() {
            Ok(p) if p != 0 => p,
            _ => return bad(),
        };
        let host_ok = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_' || b == b':');
        if !host_ok {
            return bad();
        }
        let host = host.to_string();
        Ok(if tls {
            BackendAddr::Tls { host, port }
        } else {
            BackendAddr::Tcp { host, port }
        })
    }
}
