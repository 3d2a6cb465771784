//! `[log]` and `[runtime]`: settings of the process itself, applied once at start.

use serde::Deserialize;

use super::raw::{RawLog, RawRuntime};

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

/// The `[log]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// One line per session and per refused handshake (target `wsgate::access`).
    pub access: bool,
}

/// The `[runtime]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RuntimeConfig {
    /// Threads that run connections; `None`: one per CPU the process may use.
    pub worker_threads: Option<usize>,
}

pub(super) fn log(l: &RawLog) -> LogConfig {
    LogConfig {
        format: l.format.unwrap_or_default(),
        access: l.access.unwrap_or(true),
    }
}

pub(super) fn runtime(r: &RawRuntime) -> RuntimeConfig {
    RuntimeConfig {
        worker_threads: r.worker_threads.map(|n| n.usize()),
    }
}
