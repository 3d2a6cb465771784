//! Configuration: TOML as written -> validated -> typed [`Config`].
//!
//! Owns parsing, defaults and every check that can be made before a port is bound: unknown keys,
//! addresses, paths, limits, certificates (loaded through `tls`). It does not bind,
//! connect or serve anything, and builds no runtime state (pools, caches, semaphores are built
//! from it by the server). Every error names the key and, where the TOML parser knows it, the line.
//!
//! - `raw`: the file as written (serde structs); `units`: durations, sizes, counts;
//!   `table`: tables whose keys belong to more than one type
//! - `limits`: `[limits]` and `[route.limits]`; `routes`: `[[route]]` and `[route.target]`;
//!   `backend_tls`: `[route.backend_tls]` and `[route.target] tls`;
//!   `auth`: `[route.auth]`;
//!   `listeners`: `[[listener]]` and TLS; `services`: `[static]`, `[[demo_backend]]`, `[admin]`;
//!   `process`: `[log]`, `[runtime]`; `recording`: a route's `record*` keys

mod auth;
mod backend_tls;
mod limits;
mod listeners;
mod process;
mod raw;
mod recording;
mod routes;
mod services;
mod table;
mod units;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::Spanned;

pub use limits::{
    HttpLimits, SessionLimits, DEFAULT_CLOSE_TIMEOUT_SECS, DEFAULT_CONNECT_TIMEOUT_SECS,
    DEFAULT_CONTROL_FRAMES_PER_SECOND, DEFAULT_HANDSHAKE_TIMEOUT_SECS, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_IP, DEFAULT_MAX_FRAGMENTS,
    DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_HEADERS, DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_PARTIAL_MESSAGE_BUDGET_BYTES, DEFAULT_PING_INTERVAL_SECS,
    DEFAULT_PONG_TIMEOUT_SECS, DEFAULT_SHUTDOWN_GRACE_SECS, DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS,
    DEFAULT_WRITE_TIMEOUT_SECS, MAX_CONTROL_FRAMES_PER_SECOND,
};
pub use listeners::{ListenAddr, Listener};
pub use process::{LogConfig, LogFormat, LogLevel, RuntimeConfig, SessionIo, MAX_WORKER_THREADS};
pub use recording::{
    RecordingSettings, DEFAULT_RECORD_MAX_BYTES, DEFAULT_RECORD_PREFIX, MAX_RECORD_PREFIX_BYTES,
    MIN_RECORD_BYTES,
};
pub use routes::{
    AuthSettings, BackendAddr, Balance, Framing, Health, Route, TargetSettings,
    DEFAULT_HEALTH_COOLOFF_SECS, DEFAULT_HEALTH_FAILURES, MAX_ALLOW_ENTRIES, MAX_TOKEN_NAME_BYTES,
};
pub use services::{
    Admin, DemoBackend, DemoKind, StaticFiles, DEFAULT_DEMO_GREETING, DEFAULT_STATIC_INDEX,
};
pub use units::{parse_duration, parse_size, UnitError, MAX_DURATION, MAX_DURATION_DAYS};

use raw::RawConfig;
use table::DecodeError;

/// A configuration error: what is wrong, and where (`file:line: key: message`).
#[derive(Debug, thiserror::Error)]
#[error("{}{}{}", self.place(), self.key.as_deref().map(|k| format!("{k}: ")).unwrap_or_default(), self.message)]
pub struct ConfigError {
    /// The file, when the error came from one.
    pub file: Option<PathBuf>,
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// The key, e.g. `route[0].backend`.
    pub key: Option<String>,
    pub message: String,
}

impl ConfigError {
    /// `file:line: `, `file: ` or `line N: `, as far as they are known.
    fn place(&self) -> String {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => format!("{}:{line}: ", file.display()),
            (Some(file), None) => format!("{}: ", file.display()),
            (None, Some(line)) => format!("line {line}: "),
            (None, None) => String::new(),
        }
    }
}

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

impl Config {
    /// Read, parse and validate the file at `path`. Relative paths inside it (certificates, the
    /// static directory, unix sockets, token files) are resolved against the file's directory.
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
        let raw: RawConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| {
                let key = key_of(e.path());
                let e = e.into_inner();
                ConfigError {
                    file: None,
                    line: e.span().map(|s| line_of(text, s.start)),
                    key,
                    message: toml_message(&e),
                }
            })?;
        Ctx { text, base }.validate(raw)
    }

    /// A one-screen summary for `wsgate check`.
    pub fn summary(&self) -> String {
        use fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "listeners:");
        for l in &self.listeners {
            let _ = writeln!(s, "  {}", listeners::summary(l));
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
                match &r.target {
                    Some(t) => format!("per-session target from {t}"),
                    None => r
                        .backends
                        .iter()
                        .map(|b| b.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                },
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
        let _ = match self.runtime.session_threads {
            Some(0) => writeln!(s, "sessions: on the worker threads"),
            Some(n) => writeln!(s, "sessions: {n} session threads"),
            None => writeln!(s, "sessions: one session thread per CPU"),
        };
        if self.runtime.session_threads != Some(0) {
            let _ = match self.runtime.session_io {
                SessionIo::Auto => writeln!(
                    s,
                    "session threads: io_uring where the kernel allows it, else epoll"
                ),
                SessionIo::IoUring => writeln!(s, "session threads: io_uring"),
                SessionIo::Epoll => writeln!(s, "session threads: epoll"),
            };
        }
        let _ = match self.runtime.notify {
            Some(true) => writeln!(s, "systemd notify: on"),
            Some(false) => writeln!(s, "systemd notify: off"),
            None => writeln!(s, "systemd notify: when NOTIFY_SOCKET is set"),
        };
        if let Some(p) = &self.runtime.upgrade_socket {
            let _ = writeln!(s, "binary upgrade socket: {}", p.display());
        }
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

/// What validation needs besides the raw values: the text (for lines) and the directory that
/// relative paths are resolved against.
struct Ctx<'a> {
    text: &'a str,
    base: &'a Path,
}

impl Ctx<'_> {
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

    /// A value of the table at `prefix` that did not decode; `table` is the table's own span,
    /// for errors about the table as a whole.
    fn decode_error(
        &self,
        prefix: &str,
        table: Option<Range<usize>>,
        e: DecodeError,
    ) -> ConfigError {
        ConfigError {
            file: None,
            line: e.span.or(table).map(|s| line_of(self.text, s.start)),
            key: Some(match e.key {
                Some(k) => format!("{prefix}.{k}"),
                None => prefix.to_string(),
            }),
            message: e.message,
        }
    }

    fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
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

    fn validate(&self, mut raw: RawConfig) -> Result<Config, ConfigError> {
        let (global, http) = self.global_limits(&mut raw.limits)?;

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
        let mut socket_paths = HashSet::new();
        let mut fdnames = HashSet::new();
        for (i, l) in raw.listener.iter().enumerate() {
            let listener = self.listener(i, l)?;
            let taken = match &listener.bind {
                ListenAddr::Tcp(a) => a.port() != 0 && !binds.insert(*a),
                ListenAddr::Unix(p) => !socket_paths.insert(p.clone()),
                ListenAddr::Systemd(name) => !fdnames.insert(name.clone()),
            };
            if taken {
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
        for (i, r) in raw.route.iter_mut().enumerate() {
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
            Some(a) => Some(self.admin(a, &mut binds)?),
        };
        let log = self.log(&raw.log)?;
        Ok(Config {
            listeners,
            routes,
            http,
            static_files,
            demo_backends,
            admin,
            log,
            runtime: self.runtime(&raw.runtime)?,
        })
    }
}

/// The key named by serde's path, e.g. `route[0].limits.idle_timeout`; `None` at the top.
fn key_of(path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            // toml's Spanned reads its value through fields of these names.
            Segment::Map { key: k } if k.starts_with("$__serde_spanned_private") => {}
            Segment::Map { key: k } | Segment::Enum { variant: k } => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(k);
            }
            Segment::Unknown => {}
        }
    }
    (!key.is_empty()).then_some(key)
}

/// The TOML parser's message for `e`; some syntax errors (a key without a value, a control
/// character in a comment) come without one, and an error must always say something.
pub(crate) fn toml_message(e: &toml::de::Error) -> String {
    match e.message().trim() {
        "" => "not valid TOML here (a key without a value, or a character TOML does not allow)"
            .to_string(),
        m => m.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy_protocol;
    use std::time::Duration;

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
    fn fallback_buffer_follows_max_message_size_unless_set() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.routes[0].limits.fallback_buffer(), 1024 * 1024);
        // Large messages without the key: the buffer holds one (no error, fallback or not).
        let big = format!(
            "{MINIMAL}[limits]\nmax_message_size = \"20MiB\"\nmax_frame_size = \"20MiB\"\n"
        );
        assert_eq!(
            parse(&big).unwrap().routes[0].limits.fallback_buffer(),
            20 << 20
        );
        let route_big = format!(
            "{MINIMAL}[route.limits]\nmax_message_size = \"4MiB\"\nmax_frame_size = \"4MiB\"\n"
        );
        assert_eq!(
            parse(&route_big).unwrap().routes[0]
                .limits
                .fallback_buffer(),
            4 << 20
        );
        // Set: as set, and never below max_message_size.
        let set = format!("{MINIMAL}[limits]\nfallback_buffer = \"2MiB\"\n");
        assert_eq!(
            parse(&set).unwrap().routes[0].limits.fallback_buffer(),
            2 << 20
        );
        let small = format!("{big}fallback_buffer = \"1MiB\"\n");
        let e = parse(&small).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("limits.fallback_buffer"), "{e}");
    }

    #[test]
    fn route_compression_and_deflate_keys() {
        assert!(parse(MINIMAL).unwrap().routes[0].deflate.is_none());
        let on = format!("{MINIMAL}compression = \"permessage-deflate\"\n");
        assert_eq!(
            parse(&on).unwrap().routes[0].deflate,
            Some(crate::ws::DeflateSettings::default())
        );
        let tuned = format!(
            "{on}[route.deflate]\nserver_max_window_bits = 9\nclient_max_window_bits = 8\n\
             server_no_context_takeover = true\nclient_no_context_takeover = true\n\
             min_compress_bytes = \"1KiB\"\n"
        );
        let d = parse(&tuned).unwrap().routes[0].deflate.unwrap();
        assert_eq!((d.server_max_window_bits, d.client_max_window_bits), (9, 8));
        assert!(d.server_no_context_takeover && d.client_no_context_takeover);
        assert_eq!(d.min_compress_bytes, 1024);
        // [route.deflate] without compression, out-of-range bits, unknown keys and values.
        let e = parse(&format!("{MINIMAL}[route.deflate]\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("route[0].deflate"), "{e}");
        for bad in [
            format!("{on}[route.deflate]\nserver_max_window_bits = 16\n"),
            format!("{on}[route.deflate]\nclient_max_window_bits = 7\n"),
            format!("{on}[route.deflate]\nlevel = 9\n"),
            format!("{MINIMAL}compression = \"gzip\"\n"),
        ] {
            assert!(parse(&bad).is_err(), "{bad}");
        }
    }

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
    fn prefix_paths_and_log_keys() {
        let c = parse(&MINIMAL.replace("/echo", "/vnc/*")).unwrap();
        assert_eq!(c.routes[0].prefix(), Some("/vnc/"));
        assert_eq!(parse(MINIMAL).unwrap().routes[0].prefix(), None);
        for bad in ["/a*", "/*/b", "/a/**"] {
            let e = parse(&MINIMAL.replace("/echo", bad)).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("route[0].path"), "{bad}: {e}");
        }
        let c = parse(&format!(
            "{MINIMAL}\n[log]\nlevel = \"debug\"\nfile = \"w.log\"\n"
        ))
        .unwrap();
        assert_eq!(c.log.level, LogLevel::Debug);
        assert_eq!(c.log.file.as_deref(), Some(Path::new("./w.log")));
        assert!(parse(&format!("{MINIMAL}\n[log]\nlevel = \"loud\"\n")).is_err());
    }

    #[test]
    fn jwt_from_query() {
        let q = HS_BEARER.replace("bearer", "query");
        let c = with_auth("", &format!("{q}\ntoken_name = \"t\"")).unwrap();
        assert!(matches!(
            &c.routes[0].auth,
            Some(AuthSettings::Jwt(j)) if j.source == crate::auth::jwt::TokenSource::Query("t".into())
        ));
        let e = with_auth("", &format!("{HS_BEARER}\ntoken_name = \"t\"")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("route[0].auth.token_name"), "{e}");
    }

    #[test]
    fn no_listener_or_route_is_an_error() {
        assert!(parse("[[route]]\npath = \"/\"\nbackend = \"127.0.0.1:1\"\n").is_err());
        assert!(parse("[[listener]]\nbind = \"127.0.0.1:0\"\n").is_err());
    }

    #[test]
    fn drain_window_and_close_code() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.http.drain_window, Duration::ZERO);
        assert_eq!(c.http.drain_close_code, crate::ws::CloseCode::GOING_AWAY);
        let c = parse(&format!(
            "{MINIMAL}\n[limits]\ndrain_window = \"3s\"\ndrain_close_code = 1012\nshutdown_grace = \"10s\"\n"
        ))
        .unwrap();
        assert_eq!(c.http.drain_window, Duration::from_secs(3));
        assert_eq!(c.http.drain_close_code, 1012);
        for (limits, key) in [
            (
                "drain_window = \"10s\"\nshutdown_grace = \"10s\"",
                "limits.drain_window",
            ),
            ("drain_window = \"11s\"", "limits.drain_window"),
            ("drain_close_code = 1000", "limits.drain_close_code"),
            ("drain_close_code = 4000", "limits.drain_close_code"),
            ("drain_close_code = \"1012\"", "limits.drain_close_code"),
        ] {
            let e = parse(&format!("{MINIMAL}\n[limits]\n{limits}\n")).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{limits}: {e}");
        }
        let text = format!("{MINIMAL}\n[route.limits]\ndrain_window = \"1s\"\n");
        assert!(parse(&text).is_err(), "drain_window is global only");
    }
}
