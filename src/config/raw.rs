//! The configuration file as written: serde structs, every table with `deny_unknown_fields`.
//!
//! Values are parsed and bounded here by their types ([`super::units`], derived enums), so a bad
//! value is refused while the TOML is read, with its key and line. Checks that need more than one
//! value, the file system or the environment belong to validation (the sibling modules).
//! `[limits]` and `[route.auth]` are kept as [`Table`]s: each holds keys of more than one type.

use serde::Deserialize;
use toml::Spanned;

use super::limits::{
    MAX_CONTROL_FRAMES_PER_SECOND, MAX_COUNT, MAX_HEADER_BYTES, MAX_HTTP2_STREAMS,
    MAX_MESSAGE_BYTES_CEILING, MIN_HEADER_BYTES, MIN_PARTIAL_MESSAGE_BUDGET_BYTES,
};
use super::process::{LogFormat, LogLevel, MAX_WORKER_THREADS};
use super::routes::{Balance, Framing};
use super::services::DemoKind;
use super::table::Table;
use super::units::{Bounded, ByteSize, DrainCloseCode, Off, Period, Timeout};
use crate::auth::jwt::JwtAlgorithm;
use crate::proxy_protocol;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub listener: Vec<RawListener>,
    #[serde(default)]
    pub route: Vec<RawRoute>,
    /// [`RawSessionLimits`] and [`RawGlobalLimits`].
    #[serde(default)]
    pub limits: Table,
    #[serde(rename = "static")]
    pub static_files: Option<RawStatic>,
    #[serde(default)]
    pub demo_backend: Vec<RawDemo>,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub runtime: RawRuntime,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub worker_threads: Option<Bounded<1, MAX_WORKER_THREADS>>,
    pub session_threads: Option<Bounded<0, MAX_WORKER_THREADS>>,
    pub session_io: Option<super::SessionIo>,
    /// systemd readiness notification (`Type=notify`); absent: on when `NOTIFY_SOCKET` is set.
    pub notify: Option<bool>,
    /// A unix socket a successor (`wsgate --upgrade`) takes the listening sockets from.
    pub upgrade_socket: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub bind: Spanned<String>,
    pub token_env: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<LogFormat>,
    pub access: Option<bool>,
    pub file: Option<Spanned<String>>,
    pub level: Option<LogLevel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub bind: Spanned<String>,
    pub tls: Option<RawTls>,
    /// HTTP/2 (RFC 8441 WebSockets): ALPN `h2` on TLS listeners (default on), h2c with prior
    /// knowledge on plain ones (default off).
    pub http2: Option<Spanned<bool>>,
    /// Only with a `unix:` bind: the socket file's permission bits, an octal string.
    pub mode: Option<Spanned<String>>,
    /// Behind a load balancer: every connection starts with a PROXY header of this version.
    pub proxy_protocol: Option<Spanned<proxy_protocol::Version>>,
    /// The client address is taken from this header when the peer is `trusted`.
    pub forwarded: Option<Spanned<crate::forwarded::ForwardedHeader>>,
    /// The balancers' and proxies' address ranges (CIDRs).
    pub trusted: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    /// Plain `ws://` on the same port too, told apart by the first byte.
    pub accept_plain: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path: Spanned<String>,
    pub backend: Option<Spanned<String>>,
    pub backends: Option<Spanned<Vec<Spanned<String>>>>,
    pub balance: Option<Balance>,
    #[serde(default)]
    pub health: RawHealth,
    pub max_sessions: Option<Bounded<1, MAX_COUNT>>,
    pub framing: Option<Framing>,
    pub allowed_origins: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub subprotocols: Vec<Spanned<String>>,
    /// [`RawSessionLimits`] only.
    #[serde(default)]
    pub limits: Table,
    pub allow_missing_origin: Option<Spanned<bool>>,
    pub proxy_protocol: Option<proxy_protocol::Version>,
    /// `type` ([`AuthType`]) and the keys of that type: [`RawJwt`] or [`RawForward`].
    pub auth: Option<Spanned<Table>>,
    pub target: Option<Spanned<RawTarget>>,
    pub backend_tls: Option<Spanned<RawBackendTls>>,
    /// Session recording: a directory, and the keys that only apply with it.
    pub record: Option<Spanned<String>>,
    pub record_prefix: Option<Spanned<String>>,
    pub record_max_bytes: Option<Spanned<RecordSize>>,
    pub record_required: Option<Spanned<bool>>,
    pub compression: Option<Compression>,
    pub deflate: Option<Spanned<RawDeflate>>,
    /// Also serve the fallback transport (streaming and long-polling over plain HTTP).
    pub fallback: Option<bool>,
}

/// `[route] compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    #[default]
    Off,
    PermessageDeflate,
}

/// `[route.deflate]`: permessage-deflate (RFC 7692) parameters of a route.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeflate {
    pub server_max_window_bits: Option<Bounded<8, 15>>,
    pub client_max_window_bits: Option<Bounded<8, 15>>,
    pub server_no_context_takeover: Option<bool>,
    pub client_no_context_takeover: Option<bool>,
    pub min_compress_bytes: Option<MessageSize>,
}

/// `[route.backend_tls]`: how `tls://` backends and TLS targets are spoken to.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackendTls {
    pub ca_file: Option<Spanned<String>>,
    pub server_name: Option<Spanned<String>>,
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub verify: Option<Spanned<bool>>,
}

/// `record_max_bytes`: room for the start line, a few messages and the last lines.
pub type RecordSize = ByteSize<{ super::recording::MIN_RECORD_BYTES }, { u64::MAX }>;

/// `[route.target]`: a backend per session, named by a token. The keys are options so that a
/// missing one is explained in validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub token_from: Option<TargetTokenFrom>,
    pub token_name: Option<Spanned<String>>,
    pub source: Option<Spanned<String>>,
    pub allow: Option<Spanned<Vec<Spanned<String>>>>,
    pub cache_ttl: Option<Timeout>,
    /// Only with an `http://`, `https://` or `redis://` source.
    pub source_timeout: Option<Spanned<Timeout>>,
    /// Only with an `https://` source.
    pub source_ca_file: Option<Spanned<String>>,
    /// Connect the targets with TLS.
    pub tls: Option<Spanned<bool>>,
    /// Only with a `redis://` source.
    pub redis_key_prefix: Option<Spanned<String>>,
}

/// `[route.target] token_from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetTokenFrom {
    Query,
    Cookie,
    Header,
    Host,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub failures: Option<Bounded<1, 1000>>,
    pub cooloff: Option<Timeout>,
    pub check_interval: Option<Timeout>,
}

/// A message or frame size: at most what the length-prefixed envelope's u32 length carries.
pub type MessageSize = ByteSize<1, MAX_MESSAGE_BYTES_CEILING>;

/// The per-session limit keys, declared once: in `[limits]` (global defaults) and in
/// `[route.limits]` (a route's overrides).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSessionLimits {
    pub max_message_size: Option<MessageSize>,
    pub max_frame_size: Option<MessageSize>,
    pub max_fragments: Option<Bounded<1, { u64::MAX }>>,
    pub idle_timeout: Option<Off<Timeout>>,
    pub connect_timeout: Option<Timeout>,
    pub close_timeout: Option<Timeout>,
    pub ping_interval: Option<Off<Timeout>>,
    pub pong_timeout: Option<Timeout>,
    pub write_timeout: Option<Timeout>,
    pub control_frames_per_second: Option<Bounded<1, MAX_CONTROL_FRAMES_PER_SECOND>>,
    pub fallback_session_timeout: Option<Timeout>,
    pub fallback_poll_timeout: Option<Timeout>,
    pub fallback_buffer: Option<MessageSize>,
}

/// The keys only `[limits]` has: they apply before routing, or to the whole gateway.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGlobalLimits {
    pub handshake_timeout: Option<Timeout>,
    pub tls_handshake_timeout: Option<Timeout>,
    pub max_header_bytes: Option<ByteSize<MIN_HEADER_BYTES, MAX_HEADER_BYTES>>,
    pub max_headers: Option<Bounded<8, 1000>>,
    pub max_connections: Option<Bounded<1, MAX_COUNT>>,
    pub max_connections_per_ip: Option<Bounded<1, MAX_COUNT>>,
    pub shutdown_grace: Option<Timeout>,
    pub drain_window: Option<Period>,
    pub drain_close_code: Option<DrainCloseCode>,
    pub partial_message_budget: Option<ByteSize<MIN_PARTIAL_MESSAGE_BUDGET_BYTES, { u64::MAX }>>,
    pub http2_max_streams: Option<Bounded<1, MAX_HTTP2_STREAMS>>,
}

/// `[route.auth] type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthType {
    Jwt,
    Forward,
}

/// `token_from` of a JWT route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenFrom {
    Cookie,
    Bearer,
    Subprotocol,
    Query,
}

/// `[route.auth]` with `type = "jwt"`. The required keys are options so that their absence is
/// explained in validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    pub token_from: Option<TokenFrom>,
    pub cookie: Option<String>,
    pub subprotocol_prefix: Option<String>,
    /// The query parameter of `token_from = "query"`.
    pub token_name: Option<String>,
    pub algorithms: Option<Vec<JwtAlgorithm>>,
    pub key_file: Option<String>,
    pub secret_file: Option<String>,
    pub secret_env: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Option<Period>,
    pub subject_claim: Option<String>,
}

/// `[route.auth]` with `type = "forward"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    pub url: Option<String>,
    pub timeout: Option<Timeout>,
    pub identity_header: Option<String>,
    pub cache_ttl: Option<Timeout>,
    pub cache_size: Option<Bounded<1, MAX_COUNT>>,
    pub max_concurrent: Option<Bounded<1, MAX_COUNT>>,
    pub ca_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatic {
    pub dir: Spanned<String>,
    pub index: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDemo {
    pub bind: Spanned<String>,
    pub kind: DemoKind,
    pub greeting: Option<Spanned<String>>,
}
