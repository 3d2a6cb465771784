//! `[log]` and `[runtime]`: settings of the process itself, applied once at start.

use std::path::PathBuf;

use serde::Deserialize;

use super::listeners::MAX_UNIX_PATH_BYTES;
use super::raw::{RawLog, RawRuntime};
use super::{ConfigError, Ctx};

/// Largest `[runtime] worker_threads` accepted.
pub const MAX_WORKER_THREADS: u64 = 1024;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[runtime] session_io`: how the session threads move their sockets' bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionIo {
    /// io_uring where the kernel allows it, epoll otherwise.
    #[default]
    Auto,
    /// io_uring, or the gateway does not start.
    IoUring,
    Epoll,
}

/// `[log] level`: the least severe lines written when `WSGATE_LOG` is not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The level as a `tracing` filter directive.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// The `[log]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// One line per session and per refused handshake (target `wsgate::access`).
    pub access: bool,
    /// Append the log lines to this file (created with mode 0640); `None`: stderr.
    pub file: Option<PathBuf>,
    /// The default filter when `WSGATE_LOG` is unset.
    pub level: LogLevel,
}

/// The `[runtime]` table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuntimeConfig {
    /// Threads that run connections; `None`: one per CPU the process may use.
    pub worker_threads: Option<usize>,
    /// Threads that run sessions after the handshake (src/dataplane); `None`: one per CPU the
    /// process may use; 0: sessions stay on the worker threads.
    pub session_threads: Option<usize>,
    /// How the session threads move bytes.
    pub session_io: SessionIo,
    /// `notify`: send systemd's readiness messages to `NOTIFY_SOCKET`; `None`: when it is set.
    pub notify: Option<bool>,
    /// `upgrade_socket`: the unix socket a successor (`wsgate --upgrade`) connects to for the
    /// listening sockets; `None`: binary upgrades are off.
    pub upgrade_socket: Option<PathBuf>,
}

impl Ctx<'_> {
    pub(super) fn log(&self, l: &RawLog) -> Result<LogConfig, ConfigError> {
        let file = match &l.file {
            None => None,
            Some(f) if f.get_ref().trim().is_empty() => {
                return self.err(f.span(), "log.file", "must name a file")
            }
            Some(f) => Some(self.resolve(f.get_ref())),
        };
        Ok(LogConfig {
            format: l.format.unwrap_or_default(),
            access: l.access.unwrap_or(true),
            file,
            level: l.level.unwrap_or_default(),
        })
    }

    pub(super) fn runtime(&self, r: &RawRuntime) -> Result<RuntimeConfig, ConfigError> {
        let upgrade_socket = match &r.upgrade_socket {
            None => None,
            Some(p) if p.get_ref().trim().is_empty() => {
                return self.err(
                    p.span(),
                    "runtime.upgrade_socket",
                    "must name a socket file",
                )
            }
            Some(p) => {
                let path = self.resolve(p.get_ref());
                if path.as_os_str().len() > MAX_UNIX_PATH_BYTES {
                    return self.err(
                        p.span(),
                        "runtime.upgrade_socket",
                        format!(
                            "the path is longer than a unix socket path may be ({MAX_UNIX_PATH_BYTES} bytes)"
                        ),
                    );
                }
                Some(path)
            }
        };
        Ok(RuntimeConfig {
            worker_threads: r.worker_threads.map(|n| n.usize()),
            session_threads: r.session_threads.map(|n| n.usize()),
            session_io: r.session_io.unwrap_or_default(),
            notify: r.notify,
            upgrade_socket,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::{Path, PathBuf};

    const BASE: &str = "[[listener]]\nbind = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nbackend = \"127.0.0.1:9\"\n";

    #[test]
    fn upgrade_socket() {
        let c = Config::parse(BASE, Path::new("/etc/wsgate")).unwrap();
        assert_eq!(c.runtime.upgrade_socket, None);
        let text = format!("{BASE}[runtime]\nupgrade_socket = \"run/upgrade.sock\"\n");
        let c = Config::parse(&text, Path::new("/etc/wsgate")).unwrap();
        assert_eq!(
            c.runtime.upgrade_socket,
            Some(PathBuf::from("/etc/wsgate/run/upgrade.sock"))
        );
        for (bad, want) in [
            ("\"\"", "must name a socket file"),
            (
                &format!("\"/{}\"", "x".repeat(120)),
                "longer than a unix socket path",
            ),
        ] {
            let text = format!("{BASE}[runtime]\nupgrade_socket = {bad}\n");
            let e = Config::parse(&text, Path::new("/etc/wsgate"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("runtime.upgrade_socket") && e.contains(want),
                "{e}"
            );
        }
    }
}
