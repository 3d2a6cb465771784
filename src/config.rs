//! Configuration: TOML as written -> validated -> typed [`Config`].
//!
//! Owns parsing, defaults and every check that can be made before a port is bound: unknown keys,
//! addresses, paths, limits, certificates (loaded here through [`crate::tls`]). It does not bind,
//! connect or serve anything. Every error names the key and, where the TOML parser knows it, the line.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::auth::forward::{self, ForwardSettings};
use crate::auth::jwt::{self, JwtSettings, KeyMaterial, TokenSource};
use crate::origin::OriginPattern;
use crate::proxy_protocol;

/// Default largest message payload, in bytes (`max_message_size`).
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 1024 * 1024;
/// Default largest frame payload, in bytes (`max_frame_size`).
pub const DEFAULT_MAX_FRAME_BYTES: u64 = 1024 * 1024;
/// Default largest number of frames in one message (`max_fragments`).
pub const DEFAULT_MAX_FRAGMENTS: u64 = 65_536;
/// Default idle timeout: none. Keepalive Ping/Pong finds dead peers; a quiet but healthy
/// session (a console showing a static screen) stays open unless `idle_timeout` is set.
pub const DEFAULT_IDLE_TIMEOUT: Option<Duration> = None;
/// Default bound on control frames (Ping, Pong) a client may send per second; beyond it -> 1008.
pub const DEFAULT_CONTROL_FRAMES_PER_SECOND: u32 = 100;
/// Largest `control_frames_per_second`.
pub const MAX_CONTROL_FRAMES_PER_SECOND: i64 = 100_000;
/// Default gateway-wide bound on client message bytes held on `lines` and `length-prefixed`
/// routes (incomplete, or waiting for the backend), in bytes (`partial_message_budget`).
pub const DEFAULT_PARTIAL_MESSAGE_BUDGET_BYTES: u64 = 256 * 1024 * 1024;
/// Default deadline from TCP accept to a complete request head, TLS handshake included.
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: u64 = 10;
/// Default deadline for connecting to a backend.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 5;
/// Default deadline for the closing handshake (and for draining the backend after a client Close).
pub const DEFAULT_CLOSE_TIMEOUT_SECS: u64 = 5;
/// Default keepalive: a Ping after this long without hearing from the client.
pub const DEFAULT_PING_INTERVAL_SECS: u64 = 30;
/// Default deadline for the client to answer a keepalive Ping (any frame counts).
pub const DEFAULT_PONG_TIMEOUT_SECS: u64 = 10;
/// Default bound on a write to the client or the backend that makes no progress.
pub const DEFAULT_WRITE_TIMEOUT_SECS: u64 = 30;
/// Default bound on the request head (request line and headers), in bytes.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 8 * 1024;
/// Default bound on the number of request headers.
pub const DEFAULT_MAX_HEADERS: usize = 64;
/// Default cap on open client connections (`max_connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default cap on open client connections from one IP address (`max_connections_per_ip`).
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
/// Default deadline for the TLS handshake (within `handshake_timeout`).
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS: u64 = 5;
/// Default time sessions get to close after SIGTERM before they are cut.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 10;
/// Default consecutive connect failures after which a backend is skipped.
pub const DEFAULT_HEALTH_FAILURES: u32 = 3;
/// Default time a failing backend is skipped.
pub const DEFAULT_HEALTH_COOLOFF_SECS: u64 = 10;
/// Default greeting of the `greeter` demo backend.
pub const DEFAULT_DEMO_GREETING: &str = "world";
/// Default index file of the static directory.
pub const DEFAULT_STATIC_INDEX: &str = "index.html";

/// Smallest request head bound we accept; below this even ordinary browsers fail.
const MIN_HEADER_BYTES: usize = 1024;
/// Smallest `partial_message_budget`, in bytes.
const MIN_PARTIAL_MESSAGE_BUDGET_BYTES: u64 = 64 * 1024;
/// Largest message bound we accept (the length-prefixed envelope carries a u32 length).
const MAX_MESSAGE_BYTES_CEILING: u64 = u32::MAX as u64;

/// A configuration error: what is wrong, and where.
#[derive(Debug)]
pub struct ConfigError {
    /// The file, when the error came from one.
    pub file: Option<PathBuf>,
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// The key, e.g. `route[0].backend`.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
            write!(f, ": ")?;
        } else if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// How messages become bytes on the backend connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Payloads as a byte stream both ways; backend bytes reach the client as binary messages.
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
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendAddr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            BackendAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            BackendAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Limits that apply per session; global in `[limits]`, overridable per route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    pub max_message_size: u64,
    pub max_frame_size: u64,
    pub max_fragments: u64,
    /// `None`: sessions are never closed for being idle.
    pub idle_timeout: Option<Duration>,
    pub connect_timeout: Duration,
    pub close_timeout: Duration,
    /// `None`: no keepalive pings.
    pub ping_interval: Option<Duration>,
    pub pong_timeout: Duration,
    pub write_timeout: Duration,
    /// Control frames (Ping, Pong) the client may send per second (and in one burst).
    pub control_frames_per_second: u32,
}

/// Limits that apply before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub handshake_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub shutdown_grace: Duration,
    /// Client message bytes all sessions together may hold on `lines` and `length-prefixed`
    /// routes.
    pub partial_message_budget: u64,
}

/// How a route picks among its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
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

/// The `[admin]` table.
#[derive(Debug, Clone)]
pub struct Admin {
    pub bind: SocketAddr,
    /// Bearer token required on every admin request, if set.
    pub token: Option<String>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The `[log]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// One line per session and per refused handshake (target `wsgate::access`).
    pub access: bool,
}

/// One `[[route]]`, validated.
#[derive(Debug)]
pub struct Route {
    /// Index in the file, for messages.
    pub index: usize,
    pub path: String,
    /// One or more backends, in config order.
    pub backends: Vec<BackendAddr>,
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
}

/// A route's credential check, as configured (`[route.auth]`, by `type`).
#[derive(Debug, Clone)]
pub enum AuthSettings {
    Jwt(JwtSettings),
    Forward(ForwardSettings),
}

impl AuthSettings {
    /// Whether browsers send this credential on their own, so that any page can use it.
    pub fn is_ambient(&self) -> bool {
        match self {
            AuthSettings::Jwt(j) => j.source.is_ambient(),
            // The auth service sees the Cookie header, so cookies can carry the decision.
            AuthSettings::Forward(_) => true,
        }
    }
}

/// One `[[listener]]`, validated, with its TLS configuration loaded.
#[derive(Clone)]
pub struct Listener {
    pub bind: SocketAddr,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The certificate and key files (for the summary, and reloading when they change).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("bind", &self.bind)
            .field("tls_cert", &self.tls_cert)
            .finish()
    }
}

/// What a built-in demo backend does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoKind {
    /// Sends the greeting line on connect and logs every line it receives.
    Greeter,
    /// Echoes every byte back.
    Echo,
}

/// One `[[demo_backend]]`.
#[derive(Debug, Clone)]
pub struct DemoBackend {
    pub bind: SocketAddr,
    pub kind: DemoKind,
    pub greeting: String,
}

/// The `[static]` table.
#[derive(Debug, Clone)]
pub struct StaticFiles {
    pub dir: PathBuf,
    pub index: String,
}

/// The `[runtime]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RuntimeConfig {
    /// Threads that run connections; `None`: one per CPU the process may use.
    pub worker_threads: Option<usize>,
}

/// Largest `[runtime] worker_threads` accepted.
pub const MAX_WORKER_THREADS: i64 = 1024;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Vec<Listener>,
    pub routes: Vec<Arc<Route>>,
    pub http: HttpLimits,
    pub static_files: Option<StaticFiles>,
    pub demo_backends: Vec<DemoBackend>,
    pub admin: Option<Admin>,
    pub log: LogConfig,
    pub runtime: RuntimeConfig,
}

// ---- the TOML as written -------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    listener: Vec<RawListener>,
    #[serde(default)]
    route: Vec<RawRoute>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(rename = "static")]
    static_files: Option<RawStatic>,
    #[serde(default)]
    demo_backend: Vec<RawDemo>,
    admin: Option<RawAdmin>,
    log: Option<RawLog>,
    runtime: Option<RawRuntime>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    worker_threads: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    bind: Spanned<String>,
    token_env: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<Spanned<String>>,
    access: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    failures: Option<Spanned<i64>>,
    cooloff: Option<Spanned<String>>,
    check_interval: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    bind: Spanned<String>,
    tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path: Spanned<String>,
    backend: Option<Spanned<String>>,
    backends: Option<Spanned<Vec<Spanned<String>>>>,
    balance: Option<Spanned<String>>,
    #[serde(default)]
    health: RawHealth,
    max_sessions: Option<Spanned<i64>>,
    framing: Option<Spanned<String>>,
    allowed_origins: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    subprotocols: Vec<Spanned<String>>,
    #[serde(default)]
    limits: RawRouteLimits,
    allow_missing_origin: Option<Spanned<bool>>,
    proxy_protocol: Option<Spanned<String>>,
    auth: Option<Spanned<RawAuth>>,
}

/// `[route.auth]`: one table for both kinds; keys of the other kind are refused in validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    // jwt
    token_from: Option<Spanned<String>>,
    cookie: Option<Spanned<String>>,
    subprotocol_prefix: Option<Spanned<String>>,
    algorithms: Option<Spanned<Vec<String>>>,
    key_file: Option<Spanned<String>>,
    secret_file: Option<Spanned<String>>,
    secret_env: Option<Spanned<String>>,
    issuer: Option<Spanned<String>>,
    audience: Option<Spanned<String>>,
    leeway: Option<Spanned<String>>,
    subject_claim: Option<Spanned<String>>,
    // forward
    url: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    identity_header: Option<Spanned<String>>,
    cache_ttl: Option<Spanned<String>>,
    cache_size: Option<Spanned<i64>>,
    max_concurrent: Option<Spanned<i64>>,
    ca_file: Option<Spanned<String>>,
}

/// Sizes may be written as integers (bytes) or strings with a unit: "64KiB", "16MiB".
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(i64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_message_size: Option<Spanned<RawSize>>,
    max_frame_size: Option<Spanned<RawSize>>,
    max_fragments: Option<Spanned<i64>>,
    idle_timeout: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    close_timeout: Option<Spanned<String>>,
    ping_interval: Option<Spanned<String>>,
    pong_timeout: Option<Spanned<String>>,
    write_timeout: Option<Spanned<String>>,
    control_frames_per_second: Option<Spanned<i64>>,
    handshake_timeout: Option<Spanned<String>>,
    tls_handshake_timeout: Option<Spanned<String>>,
    max_header_bytes: Option<Spanned<RawSize>>,
    max_headers: Option<Spanned<i64>>,
    max_connections: Option<Spanned<i64>>,
    max_connections_per_ip: Option<Spanned<i64>>,
    shutdown_grace: Option<Spanned<String>>,
    partial_message_budget: Option<Spanned<RawSize>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouteLimits {
    max_message_size: Option<Spanned<RawSize>>,
    max_frame_size: Option<Spanned<RawSize>>,
    max_fragments: Option<Spanned<i64>>,
    idle_timeout: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    close_timeout: Option<Spanned<String>>,
    ping_interval: Option<Spanned<String>>,
    pong_timeout: Option<Spanned<String>>,
    write_timeout: Option<Spanned<String>>,
    control_frames_per_second: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatic {
    dir: Spanned<String>,
    index: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDemo {
    bind: Spanned<String>,
    kind: Spanned<String>,
    greeting: Option<Spanned<String>>,
}

// ---- loading and validation ------------------------------------------------------------------

impl Config {
    /// Read, parse and validate the file at `path`. Relative paths inside it (certificates, the
    /// static directory, unix sockets) are resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_path_buf()),
            line: None,
            key: None,
            message: format!("cannot read the configuration file: {e}"),
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Config::parse(&text, base).map_err(|mut e| {
            e.file = Some(path.to_path_buf());
            e
        })
    }

    /// Parse and validate TOML text; `base` resolves relative paths.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: None,
            line: e.span().map(|s| line_of(text, s.start)),
            key: None,
            message: e.message().trim().to_string(),
        })?;
        Validator { text, base }.validate(raw)
    }

    /// A one-screen summary for `wsgate check`.
    pub fn summary(&self) -> String {
        use fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "listeners:");
        for l in &self.listeners {
            match &l.tls_cert {
                Some(cert) => {
                    let _ = writeln!(s, "  wss://{}  (certificate {})", l.bind, cert.display());
                }
                None => {
                    let _ = writeln!(s, "  ws://{}", l.bind);
                }
            }
        }
        let _ = writeln!(s, "routes:");
        for r in &self.routes {
            let origins = match &r.allowed_origins {
                None => "any origin".to_string(),
                Some(list) => format!(
                    "origins {}",
                    list.iter()
                        .map(|o| o.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            let _ = writeln!(
                s,
                "  {} -> {}  [{}; {}; auth {}; max message {} B; idle {}{}]",
                r.path,
                r.backends
                    .iter()
                    .map(|b| b.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                r.framing,
                origins,
                match &r.auth {
                    None => "none".to_string(),
                    Some(AuthSettings::Jwt(j)) => format!("jwt from {:?}", j.source),
                    Some(AuthSettings::Forward(_)) => "forward".to_string(),
                },
                r.limits.max_message_size,
                r.limits
                    .idle_timeout
                    .map_or_else(|| "off".to_string(), |d| format!("{d:?}")),
                match r.proxy_protocol {
                    Some(v) => format!("; PROXY {v:?}"),
                    None => String::new(),
                }
            );
        }
        if !self.demo_backends.is_empty() {
            let _ = writeln!(s, "demo backends:");
            for d in &self.demo_backends {
                let _ = writeln!(s, "  {} ({:?})", d.bind, d.kind);
            }
        }
        if let Some(st) = &self.static_files {
            let _ = writeln!(s, "static files: {}", st.dir.display());
        }
        let _ = match self.runtime.worker_threads {
            Some(n) => writeln!(s, "runtime: {n} worker threads"),
            None => writeln!(s, "runtime: one worker thread per CPU"),
        };
        if let Some(a) = &self.admin {
            let _ = writeln!(
                s,
                "admin: http://{}{}",
                a.bind,
                if a.token.is_some() {
                    " (token required)"
                } else {
                    ""
                }
            );
        }
        s
    }
}

struct Validator<'a> {
    text: &'a str,
    base: &'a Path,
}

impl Validator<'_> {
    fn err<T>(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Result<T, ConfigError> {
        Err(self.error(span, key, message))
    }

    fn error(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: None,
            line: Some(line_of(self.text, span.start)),
            key: Some(key.into()),
            message: message.into(),
        }
    }

    fn err_nospan<T>(
        &self,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Result<T, ConfigError> {
        Err(ConfigError {
            file: None,
            line: None,
            key: Some(key.into()),
            message: message.into(),
        })
    }

    fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let global = self.global_limits(&raw.limits)?;
        let http = self.http_limits(&raw.limits)?;

        let demo_backends = raw
            .demo_backend
            .iter()
            .enumerate()
            .map(|(i, d)| self.demo(i, d))
            .collect::<Result<Vec<_>, _>>()?;

        if raw.listener.is_empty() {
            return self.err_nospan("listener", "at least one [[listener]] is required");
        }
        let mut binds = HashSet::new();
        for d in &demo_backends {
            binds.insert(d.bind);
        }
        let mut listeners = Vec::new();
        for (i, l) in raw.listener.iter().enumerate() {
            let listener = self.listener(i, l)?;
            if listener.bind.port() != 0 && !binds.insert(listener.bind) {
                return self.err(
                    l.bind.span(),
                    format!("listener[{i}].bind"),
                    format!("address {} is used twice", listener.bind),
                );
            }
            listeners.push(listener);
        }

        if raw.route.is_empty() {
            return self.err_nospan("route", "at least one [[route]] is required");
        }
        let mut routes: Vec<Arc<Route>> = Vec::new();
        for (i, r) in raw.route.iter().enumerate() {
            let route = self.route(i, r, &global)?;
            if let Some(other) = routes.iter().find(|o| o.path == route.path) {
                return self.err(
                    r.path.span(),
                    format!("route[{i}].path"),
                    format!(
                        "path {:?} is already used by route[{}]",
                        route.path, other.index
                    ),
                );
            }
            routes.push(Arc::new(route));
        }

        let static_files = match &raw.static_files {
            None => None,
            Some(s) => Some(self.static_files(s)?),
        };

        let admin = match &raw.admin {
            None => None,
            Some(a) => {
                let bind = self.socket_addr(&a.bind, "admin.bind")?;
                if bind.port() != 0 && !binds.insert(bind) {
                    return self.err(
                        a.bind.span(),
                        "admin.bind",
                        format!("address {bind} is used twice"),
                    );
                }
                let token = match (&a.token_env, &a.token_file) {
                    (None, None) => None,
                    (Some(v), None) => match std::env::var(v.get_ref()) {
                        Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
                        _ => {
                            return self.err(
                                v.span(),
                                "admin.token_env",
                                format!("environment variable {} is not set or empty", v.get_ref()),
                            )
                        }
                    },
                    (None, Some(f)) => {
                        let path = self.resolve(f.get_ref());
                        match std::fs::read_to_string(&path) {
                            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
                            Ok(_) => {
                                return self.err(
                                    f.span(),
                                    "admin.token_file",
                                    format!("{} is empty", path.display()),
                                )
                            }
                            Err(e) => {
                                return self.err(
                                    f.span(),
                                    "admin.token_file",
                                    format!("{}: {e}", path.display()),
                                )
                            }
                        }
                    }
                    (Some(v), Some(_)) => {
                        return self.err(
                            v.span(),
                            "admin.token_env",
                            "give token_env or token_file, not both",
                        )
                    }
                };
                Some(Admin { bind, token })
            }
        };
        let log = match &raw.log {
            None => LogConfig {
                format: LogFormat::Text,
                access: true,
            },
            Some(l) => LogConfig {
                format: match &l.format {
                    None => LogFormat::Text,
                    Some(f) => match f.get_ref().as_str() {
                        "text" => LogFormat::Text,
                        "json" => LogFormat::Json,
                        other => {
                            return self.err(
                                f.span(),
                                "log.format",
                                format!("{other:?} is not a log format; use \"text\" or \"json\""),
                            )
                        }
                    },
                },
                access: l.access.unwrap_or(true),
            },
        };
        let runtime = match raw.runtime.as_ref().and_then(|r| r.worker_threads.as_ref()) {
            None => RuntimeConfig::default(),
            Some(n) if (1..=MAX_WORKER_THREADS).contains(n.get_ref()) => RuntimeConfig {
                worker_threads: Some(fit(*n.get_ref(), usize::MAX)),
            },
            Some(n) => {
                return self.err(
                    n.span(),
                    "runtime.worker_threads",
                    format!("must be between 1 and {MAX_WORKER_THREADS}"),
                )
            }
        };
        Ok(Config {
            listeners,
            routes,
            http,
            static_files,
            demo_backends,
            admin,
            log,
            runtime,
        })
    }

    fn listener(&self, i: usize, l: &RawListener) -> Result<Listener, ConfigError> {
        let key = format!("listener[{i}].bind");
        let bind = self.socket_addr(&l.bind, &key)?;
        let (tls, tls_cert, tls_key) = match &l.tls {
            None => (None, None, None),
            Some(t) => {
                let cert = self.resolve(t.cert.get_ref());
                let keyfile = self.resolve(t.key.get_ref());
                match crate::tls::load_server_config(&cert, &keyfile) {
                    Ok(cfg) => (Some(cfg), Some(cert), Some(keyfile)),
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
        Ok(Listener {
            bind,
            tls,
            tls_cert,
            tls_key,
        })
    }

    fn socket_addr(&self, value: &Spanned<String>, key: &str) -> Result<SocketAddr, ConfigError> {
        value.get_ref().parse::<SocketAddr>().or_else(|_| {
            self.err(
                value.span(),
                key,
                format!(
                    "{:?} is not an IP address with a port (e.g. \"127.0.0.1:8080\" or \"[::1]:8080\")",
                    value.get_ref()
                ),
            )
        })
    }

    fn route(&self, i: usize, r: &RawRoute, global: &SessionLimits) -> Result<Route, ConfigError> {
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
        let backends = match (&r.backend, &r.backends) {
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
                    "a route needs backend = \"host:port\" or backends = [...]",
                )
            }
        };
        let balance = match &r.balance {
            None => Balance::RoundRobin,
            Some(b) => match b.get_ref().as_str() {
                "round-robin" => Balance::RoundRobin,
                "least-connections" => Balance::LeastConnections,
                other => {
                    return self.err(
                        b.span(),
                        format!("route[{i}].balance"),
                        format!("{other:?} is not a balance mode; use \"round-robin\" or \"least-connections\""),
                    )
                }
            },
        };
        let health = Health {
            failures: match &r.health.failures {
                None => DEFAULT_HEALTH_FAILURES,
                Some(n) if (1..=1000).contains(n.get_ref()) => fit(*n.get_ref(), u32::MAX),
                Some(n) => {
                    return self.err(
                        n.span(),
                        format!("route[{i}].health.failures"),
                        "must be between 1 and 1000",
                    )
                }
            },
            cooloff: match &r.health.cooloff {
                None => Duration::from_secs(DEFAULT_HEALTH_COOLOFF_SECS),
                Some(v) => self.duration(v, &format!("route[{i}].health.cooloff"))?,
            },
            check_interval: match &r.health.check_interval {
                None => None,
                Some(v) => Some(self.duration(v, &format!("route[{i}].health.check_interval"))?),
            },
        };
        let max_sessions = match &r.max_sessions {
            None => None,
            Some(n) if (1..=10_000_000).contains(n.get_ref()) => {
                Some(fit(*n.get_ref(), usize::MAX))
            }
            Some(n) => {
                return self.err(
                    n.span(),
                    format!("route[{i}].max_sessions"),
                    "must be between 1 and 10000000",
                )
            }
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
        let limits = self.route_limits(i, &r.limits, global)?;
        let auth = match &r.auth {
            None => None,
            Some(a) => Some(self.auth(i, a, &subprotocols)?),
        };
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
        Ok(Route {
            index: i,
            path: path.clone(),
            backends,
            balance,
            health,
            max_sessions,
            framing: match &r.framing {
                None => Framing::Raw,
                Some(f) => match f.get_ref().as_str() {
                    "raw" => Framing::Raw,
                    "lines" => Framing::Lines,
                    "length-prefixed" => Framing::LengthPrefixed,
                    other => {
                        return self.err(
                            f.span(),
                            format!("route[{i}].framing"),
                            format!("{other:?} is not a framing; use \"raw\", \"lines\" or \"length-prefixed\""),
                        )
                    }
                },
            },
            allowed_origins,
            allow_missing_origin,
            auth,
            proxy_protocol: match &r.proxy_protocol {
                None => None,
                Some(v) => match v.get_ref().as_str() {
                    "v1" => Some(proxy_protocol::Version::V1),
                    "v2" if path.len() > proxy_protocol::MAX_ROUTE_BYTES => {
                        return self.err(
                            r.path.span(),
                            format!("route[{i}].path"),
                            format!(
                                "a route with proxy_protocol = \"v2\" has a path of at most {} bytes",
                                proxy_protocol::MAX_ROUTE_BYTES
                            ),
                        )
                    }
                    "v2" => Some(proxy_protocol::Version::V2),
                    other => {
                        return self.err(
                            v.span(),
                            format!("route[{i}].proxy_protocol"),
                            format!("{other:?} is not a PROXY protocol version; use \"v1\" or \"v2\""),
                        )
                    }
                },
            },
            subprotocols,
            limits,
        })
    }

    fn auth(
        &self,
        i: usize,
        a: &Spanned<RawAuth>,
        subprotocols: &[String],
    ) -> Result<AuthSettings, ConfigError> {
        let key = |k: &str| format!("route[{i}].auth.{k}");
        let a_span = a.span();
        let a = a.get_ref();
        let jwt_keys = [
            ("token_from", a.token_from.as_ref().map(|v| v.span())),
            ("cookie", a.cookie.as_ref().map(|v| v.span())),
            (
                "subprotocol_prefix",
                a.subprotocol_prefix.as_ref().map(|v| v.span()),
            ),
            ("algorithms", a.algorithms.as_ref().map(|v| v.span())),
            ("key_file", a.key_file.as_ref().map(|v| v.span())),
            ("secret_file", a.secret_file.as_ref().map(|v| v.span())),
            ("secret_env", a.secret_env.as_ref().map(|v| v.span())),
            ("issuer", a.issuer.as_ref().map(|v| v.span())),
            ("audience", a.audience.as_ref().map(|v| v.span())),
            ("leeway", a.leeway.as_ref().map(|v| v.span())),
            ("subject_claim", a.subject_claim.as_ref().map(|v| v.span())),
        ];
        let forward_keys = [
            ("url", a.url.as_ref().map(|v| v.span())),
            ("timeout", a.timeout.as_ref().map(|v| v.span())),
            (
                "identity_header",
                a.identity_header.as_ref().map(|v| v.span()),
            ),
            ("cache_ttl", a.cache_ttl.as_ref().map(|v| v.span())),
            ("cache_size", a.cache_size.as_ref().map(|v| v.span())),
            (
                "max_concurrent",
                a.max_concurrent.as_ref().map(|v| v.span()),
            ),
            ("ca_file", a.ca_file.as_ref().map(|v| v.span())),
        ];
        let (kind, foreign) = match a.kind.get_ref().as_str() {
            "jwt" => ("jwt", &forward_keys[..]),
            "forward" => ("forward", &jwt_keys[..]),
            other => {
                return self.err(
                    a.kind.span(),
                    key("type"),
                    format!("{other:?} is not an auth type; use \"jwt\" or \"forward\""),
                )
            }
        };
        if let Some((name, Some(span))) = foreign.iter().find(|(_, s)| s.is_some()) {
            return self.err(
                span.clone(),
                key(name),
                format!("does not apply to type = \"{kind}\""),
            );
        }
        if kind == "forward" {
            let url = a.url.as_ref().ok_or_else(|| {
                self.error(a_span.clone(), key("url"), "type = \"forward\" needs a url")
            })?;
            let timeout = match &a.timeout {
                Some(t) => self.duration(t, &key("timeout"))?,
                None => Duration::from_secs(forward::DEFAULT_FORWARD_TIMEOUT_SECS),
            };
            let cache_ttl = match &a.cache_ttl {
                Some(t) => Some(self.duration(t, &key("cache_ttl"))?),
                None => None,
            };
            let positive =
                |v: &Option<Spanned<i64>>, k: &str, default: usize| -> Result<usize, ConfigError> {
                    match v {
                        None => Ok(default),
                        Some(n) if (1..=10_000_000).contains(n.get_ref()) => {
                            Ok(fit(*n.get_ref(), usize::MAX))
                        }
                        Some(n) => self.err(n.span(), key(k), "must be between 1 and 10000000"),
                    }
                };
            let cache_size = positive(&a.cache_size, "cache_size", forward::DEFAULT_CACHE_ENTRIES)?;
            let max_concurrent = positive(
                &a.max_concurrent,
                "max_concurrent",
                forward::DEFAULT_MAX_CONCURRENT,
            )?;
            let ca = match &a.ca_file {
                None => None,
                Some(f) => {
                    let path = self.resolve(f.get_ref());
                    Some(std::fs::read(&path).or_else(|e| {
                        self.err(f.span(), key("ca_file"), format!("{}: {e}", path.display()))
                    })?)
                }
            };
            let fwd = ForwardSettings::new(
                url.get_ref(),
                timeout,
                a.identity_header.as_ref().map(|h| h.get_ref().as_str()),
                cache_ttl,
                cache_size,
                max_concurrent,
                ca,
            )
            .or_else(|m| self.err(url.span(), key("url"), m))?;
            return Ok(AuthSettings::Forward(fwd));
        }

        // type = "jwt"
        let from = a.token_from.as_ref().ok_or_else(|| {
            self.error(
                a_span.clone(),
                key("token_from"),
                "type = \"jwt\" needs token_from = \"cookie\", \"bearer\" or \"subprotocol\"",
            )
        })?;
        let source = match from.get_ref().as_str() {
            "cookie" => {
                let name = a.cookie.as_ref().ok_or_else(|| {
                    self.error(from.span(), key("cookie"), "token_from = \"cookie\" needs the cookie name in cookie")
                })?;
                if name.get_ref().is_empty() || !name.get_ref().bytes().all(crate::handshake::is_token_byte) {
                    return self.err(name.span(), key("cookie"), "not a valid cookie name");
                }
                TokenSource::Cookie(name.get_ref().clone())
            }
            "bearer" => TokenSource::Bearer,
            "subprotocol" => {
                let prefix = a
                    .subprotocol_prefix
                    .as_ref()
                    .map(|p| p.get_ref().clone())
                    .unwrap_or_else(|| jwt::DEFAULT_SUBPROTOCOL_PREFIX.to_string());
                if prefix.is_empty() || !prefix.bytes().all(crate::handshake::is_token_byte) {
                    return self.err(
                        a.subprotocol_prefix.as_ref().map(|p| p.span()).unwrap_or(from.span()),
                        key("subprotocol_prefix"),
                        "must be a non-empty run of token characters",
                    );
                }
                if subprotocols.is_empty() {
                    return self.err(
                        from.span(),
                        format!("route[{i}].subprotocols"),
                        "token_from = \"subprotocol\" needs at least one subprotocol for the gateway to answer with \
                         (browsers refuse a connection whose offered subprotocols all go unanswered)",
                    );
                }
                if let Some(p) = subprotocols.iter().find(|p| p.starts_with(&prefix)) {
                    return self.err(
                        from.span(),
                        format!("route[{i}].subprotocols"),
                        format!("{p:?} starts with the token prefix {prefix:?}; it would echo a token back"),
                    );
                }
                TokenSource::Subprotocol { prefix }
            }
            other => {
                return self.err(
                    from.span(),
                    key("token_from"),
                    format!("{other:?} is not a token source; use \"cookie\", \"bearer\" or \"subprotocol\""),
                )
            }
        };
        if let (Some(cookie), false) = (&a.cookie, matches!(source, TokenSource::Cookie(_))) {
            return self.err(
                cookie.span(),
                key("cookie"),
                "only applies to token_from = \"cookie\"",
            );
        }
        let algs_spanned = a.algorithms.as_ref().ok_or_else(|| {
            self.error(
                a_span.clone(),
                key("algorithms"),
                "list the accepted algorithms, e.g. [\"RS256\"]",
            )
        })?;
        let mut algorithms = Vec::new();
        for name in algs_spanned.get_ref() {
            match parse_algorithm(name) {
                Some(alg) => algorithms.push(alg),
                None => {
                    return self.err(
                        algs_spanned.span(),
                        key("algorithms"),
                        format!("{name:?} is not supported; use HS256, RS256, ES256 or EdDSA (\"none\" is never accepted)"),
                    )
                }
            }
        }
        let material = match (&a.key_file, &a.secret_file, &a.secret_env) {
            (Some(f), None, None) => {
                let path = self.resolve(f.get_ref());
                KeyMaterial::PublicPem(std::fs::read(&path).or_else(|e| {
                    self.err(
                        f.span(),
                        key("key_file"),
                        format!("{}: {e}", path.display()),
                    )
                })?)
            }
            (None, Some(f), None) => {
                let path = self.resolve(f.get_ref());
                let mut bytes = std::fs::read(&path).or_else(|e| {
                    self.err(
                        f.span(),
                        key("secret_file"),
                        format!("{}: {e}", path.display()),
                    )
                })?;
                while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    bytes.pop();
                }
                KeyMaterial::Secret(bytes)
            }
            (None, None, Some(v)) => match std::env::var_os(v.get_ref()) {
                Some(val) if !val.is_empty() => KeyMaterial::Secret(val.into_encoded_bytes()),
                _ => {
                    return self.err(
                        v.span(),
                        key("secret_env"),
                        format!("environment variable {} is not set or empty", v.get_ref()),
                    )
                }
            },
            (None, None, None) => {
                return self.err(
                    a_span,
                    key("key_file"),
                    "give key_file (RS256, ES256, EdDSA) or secret_file / secret_env (HS256)",
                )
            }
            _ => {
                return self.err(
                    a_span,
                    key("key_file"),
                    "give exactly one of key_file, secret_file, secret_env",
                )
            }
        };
        let leeway = match &a.leeway {
            None => Duration::from_secs(jwt::DEFAULT_LEEWAY_SECS),
            Some(l) => {
                parse_duration(l.get_ref()).or_else(|m| self.err(l.span(), key("leeway"), m))?
            }
        };
        let claim = a
            .subject_claim
            .as_ref()
            .map(|c| c.get_ref().as_str())
            .unwrap_or("sub");
        let auth = JwtSettings::new(
            source,
            &algorithms,
            material,
            a.issuer.as_ref().map(|v| v.get_ref().as_str()),
            a.audience.as_ref().map(|v| v.get_ref().as_str()),
            leeway,
            claim,
        )
        .or_else(|m| self.err(algs_spanned.span(), format!("route[{i}].auth"), m))?;
        Ok(AuthSettings::Jwt(auth))
    }

    fn backend(&self, key: &str, value: &Spanned<String>) -> Result<BackendAddr, ConfigError> {
        let key = key.to_string();
        let s = value.get_ref().trim();
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
                    "{s:?} is not host:port (e.g. \"127.0.0.1:9001\", \"[::1]:9001\", \"backend.local:9001\") or unix:/path"
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
        Ok(BackendAddr::Tcp {
            host: host.to_string(),
            port,
        })
    }

    fn global_limits(&self, l: &RawLimits) -> Result<SessionLimits, ConfigError> {
        let defaults = SessionLimits {
            max_message_size: DEFAULT_MAX_MESSAGE_BYTES,
            max_frame_size: DEFAULT_MAX_FRAME_BYTES,
            max_fragments: DEFAULT_MAX_FRAGMENTS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            connect_timeout: Duration::from_secs(DEFAULT_CONNECT_TIMEOUT_SECS),
            close_timeout: Duration::from_secs(DEFAULT_CLOSE_TIMEOUT_SECS),
            ping_interval: Some(Duration::from_secs(DEFAULT_PING_INTERVAL_SECS)),
            pong_timeout: Duration::from_secs(DEFAULT_PONG_TIMEOUT_SECS),
            write_timeout: Duration::from_secs(DEFAULT_WRITE_TIMEOUT_SECS),
            control_frames_per_second: DEFAULT_CONTROL_FRAMES_PER_SECOND,
        };
        let over = RawRouteLimitsRef {
            max_message_size: &l.max_message_size,
            max_frame_size: &l.max_frame_size,
            max_fragments: &l.max_fragments,
            idle_timeout: &l.idle_timeout,
            connect_timeout: &l.connect_timeout,
            close_timeout: &l.close_timeout,
            ping_interval: &l.ping_interval,
            pong_timeout: &l.pong_timeout,
            write_timeout: &l.write_timeout,
            control_frames_per_second: &l.control_frames_per_second,
        };
        self.merge_limits("limits", over, &defaults)
    }

    fn route_limits(
        &self,
        i: usize,
        l: &RawRouteLimits,
        global: &SessionLimits,
    ) -> Result<SessionLimits, ConfigError> {
        let over = RawRouteLimitsRef {
            max_message_size: &l.max_message_size,
            max_frame_size: &l.max_frame_size,
            max_fragments: &l.max_fragments,
            idle_timeout: &l.idle_timeout,
            connect_timeout: &l.connect_timeout,
            close_timeout: &l.close_timeout,
            ping_interval: &l.ping_interval,
            pong_timeout: &l.pong_timeout,
            write_timeout: &l.write_timeout,
            control_frames_per_second: &l.control_frames_per_second,
        };
        self.merge_limits(&format!("route[{i}].limits"), over, global)
    }

    fn merge_limits(
        &self,
        prefix: &str,
        l: RawRouteLimitsRef<'_>,
        base: &SessionLimits,
    ) -> Result<SessionLimits, ConfigError> {
        let key = |k: &str| format!("{prefix}.{k}");
        let size =
            |v: &Option<Spanned<RawSize>>, k: &str, default: u64| -> Result<u64, ConfigError> {
                match v {
                    None => Ok(default),
                    Some(v) => {
                        let n = self.size(v, &key(k))?;
                        if n == 0 || n > MAX_MESSAGE_BYTES_CEILING {
                            return self.err(
                                v.span(),
                                key(k),
                                format!("must be between 1 and {MAX_MESSAGE_BYTES_CEILING} bytes"),
                            );
                        }
                        Ok(n)
                    }
                }
            };
        let dur = |v: &Option<Spanned<String>>,
                   k: &str,
                   default: Duration|
         -> Result<Duration, ConfigError> {
            match v {
                None => Ok(default),
                Some(v) => self.duration(v, &key(k)),
            }
        };
        let limits = SessionLimits {
            max_message_size: size(
                l.max_message_size,
                "max_message_size",
                base.max_message_size,
            )?,
            max_frame_size: size(l.max_frame_size, "max_frame_size", base.max_frame_size)?,
            max_fragments: match l.max_fragments {
                None => base.max_fragments,
                Some(v) if *v.get_ref() >= 1 => fit(*v.get_ref(), u64::MAX),
                Some(v) => return self.err(v.span(), key("max_fragments"), "must be at least 1"),
            },
            idle_timeout: match l.idle_timeout {
                None => base.idle_timeout,
                Some(v) if v.get_ref().trim() == "off" => None,
                Some(v) => Some(self.duration(v, &key("idle_timeout"))?),
            },
            connect_timeout: dur(l.connect_timeout, "connect_timeout", base.connect_timeout)?,
            close_timeout: dur(l.close_timeout, "close_timeout", base.close_timeout)?,
            ping_interval: match l.ping_interval {
                None => base.ping_interval,
                Some(v) if v.get_ref().trim() == "off" => None,
                Some(v) => Some(self.duration(v, &key("ping_interval"))?),
            },
            pong_timeout: dur(l.pong_timeout, "pong_timeout", base.pong_timeout)?,
            write_timeout: dur(l.write_timeout, "write_timeout", base.write_timeout)?,
            control_frames_per_second: match l.control_frames_per_second {
                None => base.control_frames_per_second,
                Some(v) => match u32::try_from(*v.get_ref()) {
                    Ok(n) if n >= 1 && i64::from(n) <= MAX_CONTROL_FRAMES_PER_SECOND => n,
                    _ => {
                        return self.err(
                            v.span(),
                            key("control_frames_per_second"),
                            format!("must be between 1 and {MAX_CONTROL_FRAMES_PER_SECOND}"),
                        )
                    }
                },
            },
        };
        if limits.max_frame_size > limits.max_message_size {
            return self.err_nospan(
                key("max_frame_size"),
                format!(
                    "max_frame_size ({}) is larger than max_message_size ({}); a frame can never exceed its message",
                    limits.max_frame_size, limits.max_message_size
                ),
            );
        }
        Ok(limits)
    }

    fn http_limits(&self, l: &RawLimits) -> Result<HttpLimits, ConfigError> {
        let handshake_timeout = match &l.handshake_timeout {
            None => Duration::from_secs(DEFAULT_HANDSHAKE_TIMEOUT_SECS),
            Some(v) => self.duration(v, "limits.handshake_timeout")?,
        };
        let max_header_bytes = match &l.max_header_bytes {
            None => DEFAULT_MAX_HEADER_BYTES,
            Some(v) => {
                let n = self.size(v, "limits.max_header_bytes")?;
                if n < MIN_HEADER_BYTES as u64 || n > 1024 * 1024 {
                    return self.err(
                        v.span(),
                        "limits.max_header_bytes",
                        format!("must be between {MIN_HEADER_BYTES} and 1048576 bytes"),
                    );
                }
                fit(n, usize::MAX)
            }
        };
        let max_headers = match &l.max_headers {
            None => DEFAULT_MAX_HEADERS,
            Some(v) if (8..=1000).contains(v.get_ref()) => fit(*v.get_ref(), usize::MAX),
            Some(v) => {
                return self.err(v.span(), "limits.max_headers", "must be between 8 and 1000")
            }
        };
        let tls_handshake_timeout = match &l.tls_handshake_timeout {
            None => Duration::from_secs(DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS).min(handshake_timeout),
            Some(v) => self.duration(v, "limits.tls_handshake_timeout")?,
        };
        let count =
            |v: &Option<Spanned<i64>>, key: &str, default: usize| -> Result<usize, ConfigError> {
                match v {
                    None => Ok(default),
                    Some(n) if (1..=10_000_000).contains(n.get_ref()) => {
                        Ok(fit(*n.get_ref(), usize::MAX))
                    }
                    Some(n) => self.err(n.span(), key, "must be between 1 and 10000000"),
                }
            };
        let shutdown_grace = match &l.shutdown_grace {
            None => Duration::from_secs(DEFAULT_SHUTDOWN_GRACE_SECS),
            Some(v) => self.duration(v, "limits.shutdown_grace")?,
        };
        let partial_message_budget = match &l.partial_message_budget {
            None => DEFAULT_PARTIAL_MESSAGE_BUDGET_BYTES,
            Some(v) => {
                let n = self.size(v, "limits.partial_message_budget")?;
                if n < MIN_PARTIAL_MESSAGE_BUDGET_BYTES {
                    return self.err(
                        v.span(),
                        "limits.partial_message_budget",
                        format!("must be at least {MIN_PARTIAL_MESSAGE_BUDGET_BYTES} bytes"),
                    );
                }
                n
            }
        };
        Ok(HttpLimits {
            handshake_timeout,
            tls_handshake_timeout,
            max_header_bytes,
            max_headers,
            max_connections: count(
                &l.max_connections,
                "limits.max_connections",
                DEFAULT_MAX_CONNECTIONS,
            )?,
            max_connections_per_ip: count(
                &l.max_connections_per_ip,
                "limits.max_connections_per_ip",
                DEFAULT_MAX_CONNECTIONS_PER_IP,
            )?,
            shutdown_grace,
            partial_message_budget,
        })
    }

    fn size(&self, v: &Spanned<RawSize>, key: &str) -> Result<u64, ConfigError> {
        match v.get_ref() {
            RawSize::Bytes(n) if *n > 0 => Ok(fit(*n, u64::MAX)),
            RawSize::Bytes(_) => self.err(v.span(), key, "must be a positive number of bytes"),
            RawSize::Text(s) => parse_size(s).map_err(|m| ConfigError {
                file: None,
                line: Some(line_of(self.text, v.span().start)),
                key: Some(key.to_string()),
                message: m,
            }),
        }
    }

    fn duration(&self, v: &Spanned<String>, key: &str) -> Result<Duration, ConfigError> {
        match parse_duration(v.get_ref()) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => self.err(v.span(), key, "must be longer than zero"),
            Err(m) => self.err(v.span(), key, m),
        }
    }

    fn demo(&self, i: usize, d: &RawDemo) -> Result<DemoBackend, ConfigError> {
        let key = format!("demo_backend[{i}].bind");
        let bind = self.socket_addr(&d.bind, &key)?;
        if !bind.ip().is_loopback() {
            return self.err(
                d.bind.span(),
                key,
                "demo backends listen on loopback only (127.0.0.0/8 or ::1)",
            );
        }
        let kind = match d.kind.get_ref().as_str() {
            "greeter" => DemoKind::Greeter,
            "echo" => DemoKind::Echo,
            other => {
                return self.err(
                    d.kind.span(),
                    format!("demo_backend[{i}].kind"),
                    format!("{other:?} is not a demo backend kind; use \"greeter\" or \"echo\""),
                )
            }
        };
        let greeting = match &d.greeting {
            None => DEFAULT_DEMO_GREETING.to_string(),
            Some(g) if kind != DemoKind::Greeter => {
                return self.err(
                    g.span(),
                    format!("demo_backend[{i}].greeting"),
                    "only a \"greeter\" demo backend has a greeting",
                )
            }
            Some(g) if g.get_ref().contains(['\n', '\r']) => {
                return self.err(
                    g.span(),
                    format!("demo_backend[{i}].greeting"),
                    "must be one line",
                )
            }
            Some(g) => g.get_ref().clone(),
        };
        Ok(DemoBackend {
            bind,
            kind,
            greeting,
        })
    }

    fn static_files(&self, s: &RawStatic) -> Result<StaticFiles, ConfigError> {
        let dir = self.resolve(s.dir.get_ref());
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return self.err(
                    s.dir.span(),
                    "static.dir",
                    format!("{} is not a directory", dir.display()),
                )
            }
            Err(e) => {
                return self.err(
                    s.dir.span(),
                    "static.dir",
                    format!("{}: {e}", dir.display()),
                )
            }
        }
        let dir = dir.canonicalize().or_else(|e| {
            self.err(
                s.dir.span(),
                "static.dir",
                format!("{}: {e}", dir.display()),
            )
        })?;
        let index = match &s.index {
            None => DEFAULT_STATIC_INDEX.to_string(),
            Some(i)
                if i.get_ref().is_empty()
                    || i.get_ref().contains(['/', '\\'])
                    || i.get_ref() == ".." =>
            {
                return self.err(i.span(), "static.index", "must be a plain file name")
            }
            Some(i) => i.get_ref().clone(),
        };
        Ok(StaticFiles { dir, index })
    }
}

/// The per-session limit keys, shared by `[limits]` and `[route.limits]`.
struct RawRouteLimitsRef<'a> {
    max_message_size: &'a Option<Spanned<RawSize>>,
    max_frame_size: &'a Option<Spanned<RawSize>>,
    max_fragments: &'a Option<Spanned<i64>>,
    idle_timeout: &'a Option<Spanned<String>>,
    connect_timeout: &'a Option<Spanned<String>>,
    close_timeout: &'a Option<Spanned<String>>,
    ping_interval: &'a Option<Spanned<String>>,
    pong_timeout: &'a Option<Spanned<String>>,
    write_timeout: &'a Option<Spanned<String>>,
    control_frames_per_second: &'a Option<Spanned<i64>>,
}

/// A number its match guard has already checked to be positive and within the key's range, as
/// the type the key needs. Every range is far inside that type, so the saturating fallback is
/// never taken; it only keeps the conversion free of `as`.
fn fit<F, T: TryFrom<F>>(n: F, max: T) -> T {
    T::try_from(n).unwrap_or(max)
}

/// An algorithm name as written in the config.
fn parse_algorithm(name: &str) -> Option<jsonwebtoken::Algorithm> {
    match name {
        "HS256" => Some(jsonwebtoken::Algorithm::HS256),
        "RS256" => Some(jsonwebtoken::Algorithm::RS256),
        "ES256" => Some(jsonwebtoken::Algorithm::ES256),
        "EdDSA" => Some(jsonwebtoken::Algorithm::EdDSA),
        _ => None,
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Longest duration any key accepts: 365 days. Deadlines are added to the clock (`Instant +
/// duration`), and a few of them together must stay far from where that overflows.
pub const MAX_DURATION: Duration = Duration::from_secs(MAX_DURATION_DAYS * 24 * 3600);
/// [`MAX_DURATION`] in days, as the error messages and README.md say it.
pub const MAX_DURATION_DAYS: u64 = 365;

/// Parse "250ms", "10s", "5m", "1h" (one whole number, one unit), at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let hint = || {
        format!("{s:?} is not a duration; write a whole number and a unit: \"250ms\", \"10s\", \"5m\", \"1h\"")
    };
    let too_long = || {
        format!(
            "{s:?} is too long; the longest duration accepted is {MAX_DURATION_DAYS} days (\"{}h\")",
            MAX_DURATION_DAYS * 24
        )
    };
    let unit_ms: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1000,
        "m" => 60 * 1000,
        "h" => 3600 * 1000,
        _ => return Err(hint()),
    };
    if num.is_empty() {
        return Err(hint());
    }
    // Only digits: a parse error means the number does not fit in a u64.
    let n: u64 = num.parse().map_err(|_| too_long())?;
    let max_ms = MAX_DURATION.as_secs() * 1000;
    let ms = n
        .checked_mul(unit_ms)
        .filter(|&ms| ms <= max_ms)
        .ok_or_else(too_long)?;
    Ok(Duration::from_millis(ms))
}

/// Parse "4096", "64KiB", "16MiB", "1GiB" (binary units; "KB"/"MB" are accepted as the same).
/// The product never wraps: a size that does not fit in a u64 is an error. Each key bounds the
/// value further.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let hint = || {
        format!("{s:?} is not a size; write bytes as a number, or a number and a unit: \"64KiB\", \"16MiB\"")
    };
    let n: u64 = num.parse().map_err(|_| hint())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" => 1024,
        "MiB" | "MB" | "M" => 1024 * 1024,
        "GiB" | "GB" | "G" => 1024 * 1024 * 1024,
        _ => return Err(hint()),
    };
    n.checked_mul(mult).filter(|&v| v > 0).ok_or_else(hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("."))
    }

    const MINIMAL: &str = r#"
[[listener]]
bind = "127.0.0.1:0"

[[route]]
path = "/echo"
backend = "127.0.0.1:9001"
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.listeners.len(), 1);
        let r = &c.routes[0];
        assert_eq!(r.framing, Framing::Raw);
        assert_eq!(r.limits.max_message_size, DEFAULT_MAX_MESSAGE_BYTES);
        assert_eq!(r.limits.idle_timeout, None);
        assert_eq!(
            r.limits.control_frames_per_second,
            DEFAULT_CONTROL_FRAMES_PER_SECOND
        );
        assert_eq!(
            c.http.partial_message_budget,
            DEFAULT_PARTIAL_MESSAGE_BUDGET_BYTES
        );
        assert_eq!(
            c.http.handshake_timeout,
            Duration::from_secs(DEFAULT_HANDSHAKE_TIMEOUT_SECS)
        );
        assert!(r.allowed_origins.is_none());
        assert_eq!(
            r.backends[0],
            BackendAddr::Tcp {
                host: "127.0.0.1".into(),
                port: 9001
            }
        );
    }

    #[test]
    fn unknown_key_is_an_error_with_line() {
        let e = parse(&format!("{MINIMAL}colour = \"blue\"\n")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("colour"), "{msg}");
        assert_eq!(e.line, Some(8), "{msg}");
    }

    #[test]
    fn unknown_route_key_is_an_error() {
        let text = MINIMAL.replace("path = \"/echo\"", "path = \"/echo\"\nbackendz = 3");
        let e = parse(&text).unwrap_err();
        assert!(e.to_string().contains("backendz"), "{e}");
    }

    #[test]
    fn bad_backend_names_key_and_line() {
        let text = MINIMAL.replace("127.0.0.1:9001", "nowhere");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("route[0].backend"));
        assert_eq!(e.line, Some(7));
    }

    #[test]
    fn backend_forms() {
        for (text, want) in [
            (
                "[::1]:9",
                BackendAddr::Tcp {
                    host: "::1".into(),
                    port: 9,
                },
            ),
            (
                "db.internal:5432",
                BackendAddr::Tcp {
                    host: "db.internal".into(),
                    port: 5432,
                },
            ),
            ("unix:/run/x.sock", BackendAddr::Unix("/run/x.sock".into())),
        ] {
            let c = parse(&MINIMAL.replace("127.0.0.1:9001", text)).unwrap();
            assert_eq!(c.routes[0].backends[0], want);
        }
        for bad in ["host:0", "host:99999", ":80", "::1:80", "unix:", "a b:1"] {
            assert!(
                parse(&MINIMAL.replace("127.0.0.1:9001", bad)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_framing_is_an_error() {
        let text = MINIMAL.replace("path = \"/echo\"", "path = \"/echo\"\nframing = \"json\"");
        let e = parse(&text).unwrap_err();
        assert!(
            e.to_string().contains("json") || e.to_string().contains("framing"),
            "{e}"
        );
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("five seconds").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert!(parse_size("1PB").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn durations_are_bounded() {
        assert_eq!(parse_duration("8760h").unwrap(), MAX_DURATION);
        assert_eq!(parse_duration("525600m").unwrap(), MAX_DURATION);
        assert_eq!(parse_duration("31536000000ms").unwrap(), MAX_DURATION);
        for long in [
            "8761h",
            "31536000001ms",
            "3000000000000000h",
            "18446744073709551615ms",
            "18446744073709551616s",
            "99999999999999999999999999h",
        ] {
            let e = parse_duration(long).unwrap_err();
            assert!(e.contains("365 days"), "{long}: {e}");
        }
    }

    /// The number as written times the unit, exactly (u128: no wrapping), in milliseconds.
    fn duration_oracle(digits: &str, unit: &str) -> Option<u128> {
        let n: u128 = digits.parse().ok()?;
        let ms = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return None,
        };
        n.checked_mul(ms)
    }

    fn size_oracle(digits: &str, unit: &str) -> Option<u128> {
        let n: u128 = digits.parse().ok()?;
        let mult = match unit {
            "" | "B" => 1,
            "KiB" | "KB" | "K" => 1 << 10,
            "MiB" | "MB" | "M" => 1 << 20,
            "GiB" | "GB" | "G" => 1 << 30,
            _ => return None,
        };
        n.checked_mul(mult)
    }

    /// An accepted duration can be added to both clocks, twice over, without overflowing.
    fn assert_usable(d: Duration) {
        assert!(d <= MAX_DURATION, "{d:?}");
        let _ = std::time::Instant::now() + d + d;
        let _ = tokio::time::Instant::now() + d + d;
        let _ = std::time::SystemTime::now() + d + d;
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        #[test]
        fn duration_parser_never_panics(s in "\\PC{0,30}") {
            if let Ok(d) = parse_duration(&s) {
                assert_usable(d);
            }
        }

        #[test]
        fn duration_parser_is_exact_and_bounded(
            digits in "[0-9]{1,26}",
            unit in "(ms|s|m|h|d|us|)",
            pad in "( ?)",
        ) {
            let text = format!("{digits}{pad}{unit}");
            let want = duration_oracle(&digits, &unit)
                .filter(|&ms| ms <= MAX_DURATION.as_millis());
            match parse_duration(&text) {
                Ok(d) => {
                    proptest::prop_assert_eq!(Some(d.as_millis()), want, "{}", text);
                    assert_usable(d);
                }
                Err(_) => proptest::prop_assert_eq!(want, None, "{}", text),
            }
        }

        #[test]
        fn size_parser_never_panics_or_wraps(
            digits in "[0-9]{1,22}",
            unit in "(|B|KiB|KB|K|MiB|MB|M|GiB|GB|G|TiB|PB)",
            junk in "\\PC{0,12}",
        ) {
            let _ = parse_size(&junk);
            let text = format!("{digits}{unit}");
            let want = size_oracle(&digits, &unit)
                .filter(|&v| v > 0 && v <= u128::from(u64::MAX));
            match parse_size(&text) {
                Ok(v) => proptest::prop_assert_eq!(Some(u128::from(v)), want, "{}", text),
                Err(_) => proptest::prop_assert_eq!(want, None, "{}", text),
            }
        }
    }

    #[test]
    fn route_limits_override_global() {
        let text = format!(
            "{MINIMAL}\n[route.limits]\nmax_message_size = \"16MiB\"\nmax_frame_size = \"16MiB\"\nidle_timeout = \"10s\"\n\n[limits]\nmax_frame_size = 4096\n"
        );
        let c = parse(&text).unwrap();
        let l = c.routes[0].limits;
        assert_eq!(l.max_message_size, 16 << 20);
        assert_eq!(l.max_frame_size, 16 << 20);
        assert_eq!(l.idle_timeout, Some(Duration::from_secs(10)));
    }

    #[test]
    fn handshake_timeout_is_global_only() {
        let text = format!("{MINIMAL}\n[route.limits]\nhandshake_timeout = \"1s\"\n");
        assert!(parse(&text).is_err());
    }

    #[test]
    fn frame_larger_than_message_is_an_error() {
        let text = format!("{MINIMAL}\n[limits]\nmax_message_size = 1024\n");
        let e = parse(&text).unwrap_err();
        assert!(e.to_string().contains("max_frame_size"), "{e}");
    }

    #[test]
    fn duplicate_path_and_bind_are_errors() {
        let text = format!("{MINIMAL}\n[[route]]\npath = \"/echo\"\nbackend = \"127.0.0.1:1\"\n");
        assert!(parse(&text)
            .unwrap_err()
            .to_string()
            .contains("already used"));
        let twice = "[[listener]]\nbind = \"127.0.0.1:8080\"\n";
        let text = format!("{twice}{twice}{MINIMAL}");
        assert!(parse(&text).unwrap_err().to_string().contains("twice"));
        // Port 0 picks a fresh port each time: never a duplicate.
        let text = format!("{MINIMAL}\n[[listener]]\nbind = \"127.0.0.1:0\"\n");
        assert_eq!(parse(&text).unwrap().listeners.len(), 2);
    }

    #[test]
    fn missing_tls_file_names_the_path() {
        let text = MINIMAL.replace(
            "bind = \"127.0.0.1:0\"",
            "bind = \"127.0.0.1:0\"\ntls = { cert = \"/nonexistent/c.pem\", key = \"/nonexistent/k.pem\" }",
        );
        let e = parse(&text).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/c.pem"), "{e}");
    }

    #[test]
    fn bad_origin_is_an_error() {
        let text = MINIMAL.replace(
            "path = \"/echo\"",
            "path = \"/echo\"\nallowed_origins = [\"app.example.com\"]",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("route[0].allowed_origins[0]"));
    }

    #[test]
    fn demo_backend_must_be_loopback() {
        let text =
            format!("{MINIMAL}\n[[demo_backend]]\nbind = \"0.0.0.0:9001\"\nkind = \"greeter\"\n");
        assert!(parse(&text).unwrap_err().to_string().contains("loopback"));
    }

    fn with_auth(route_extra: &str, auth: &str) -> Result<Config, ConfigError> {
        std::env::set_var("WSGATE_TEST_SECRET", "0123456789abcdef0123456789abcdef");
        let text = MINIMAL.replace(
            "path = \"/echo\"",
            &format!("path = \"/echo\"\n{route_extra}"),
        );
        parse(&format!("{text}\n[route.auth]\n{auth}\n"))
    }

    const HS_BEARER: &str = "type = \"jwt\"\ntoken_from = \"bearer\"\nalgorithms = [\"HS256\"]\nsecret_env = \"WSGATE_TEST_SECRET\"";
    const HS_COOKIE: &str = "type = \"jwt\"\ntoken_from = \"cookie\"\ncookie = \"session\"\nalgorithms = [\"HS256\"]\nsecret_env = \"WSGATE_TEST_SECRET\"";

    #[test]
    fn cookie_auth_needs_allowed_origins() {
        let e = with_auth("", HS_COOKIE).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("route[0].allowed_origins"), "{e}");
        assert!(with_auth("allowed_origins = [\"https://app.example.com\"]", HS_COOKIE).is_ok());
        let forward = "type = \"forward\"\nurl = \"http://127.0.0.1:9/auth\"";
        assert!(with_auth("", forward).is_err());
    }

    #[test]
    fn allow_missing_origin_only_for_non_ambient_credentials() {
        let origins =
            "allowed_origins = [\"https://app.example.com\"]\nallow_missing_origin = true";
        assert!(with_auth(origins, HS_BEARER).unwrap().routes[0].allow_missing_origin);
        let e = with_auth(origins, HS_COOKIE).unwrap_err();
        assert_eq!(
            e.key.as_deref(),
            Some("route[0].allow_missing_origin"),
            "{e}"
        );
    }

    #[test]
    fn jwt_config_errors_name_the_key() {
        let cases = [
            (
                HS_BEARER.replace("HS256", "none"),
                "route[0].auth.algorithms",
            ),
            (
                HS_BEARER.replace("[\"HS256\"]", "[\"HS256\", \"RS256\"]"),
                "route[0].auth",
            ),
            (
                HS_BEARER.replace("WSGATE_TEST_SECRET", "WSGATE_UNSET_VARIABLE"),
                "route[0].auth.secret_env",
            ),
            (
                HS_BEARER.replace("bearer", "header"),
                "route[0].auth.token_from",
            ),
            (
                format!("{HS_BEARER}\nurl = \"http://x/\""),
                "route[0].auth.url",
            ),
            (
                HS_BEARER.replace(
                    "secret_env = \"WSGATE_TEST_SECRET\"",
                    "key_file = \"/nonexistent.pem\"",
                ),
                "route[0].auth.key_file",
            ),
            (
                HS_BEARER.replace("bearer", "subprotocol"),
                "route[0].subprotocols",
            ),
        ];
        for (auth, key) in cases {
            let e = with_auth("", &auth).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{auth}: {e}");
        }
    }

    #[test]
    fn wildcard_origins_and_proxy_protocol_parse() {
        let c = parse(&MINIMAL.replace(
            "path = \"/echo\"",
            "path = \"/echo\"\nallowed_origins = [\"https://*.example.com\"]\nproxy_protocol = \"v2\"",
        ))
        .unwrap();
        assert_eq!(
            c.routes[0].proxy_protocol,
            Some(proxy_protocol::Version::V2)
        );
        assert!(parse(&MINIMAL.replace(
            "path = \"/echo\"",
            "path = \"/echo\"\nproxy_protocol = \"v3\""
        ))
        .is_err());
        // The route path travels in a v2 TLV: it is bounded there (v1 carries no path).
        let max = proxy_protocol::MAX_ROUTE_BYTES;
        for (len, ok) in [(max, true), (max + 1, false)] {
            let path = format!("/{}", "p".repeat(len - 1));
            let text = MINIMAL.replace(
                "path = \"/echo\"",
                &format!("path = \"{path}\"\nproxy_protocol = \"v2\""),
            );
            match parse(&text) {
                Ok(_) => assert!(ok, "{len}"),
                Err(e) => {
                    assert!(!ok, "{len}: {e}");
                    assert_eq!(e.key.as_deref(), Some("route[0].path"), "{e}");
                }
            }
            assert!(parse(&text.replace("\"v2\"", "\"v1\"")).is_ok());
        }
    }

    #[test]
    fn no_listener_or_route_is_an_error() {
        assert!(parse("[[route]]\npath = \"/\"\nbackend = \"127.0.0.1:1\"\n").is_err());
        assert!(parse("[[listener]]\nbind = \"127.0.0.1:0\"\n").is_err());
    }
}
