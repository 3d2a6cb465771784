//! `[limits]` and `[route.limits]`: the per-session limits (declared once in
//! [`RawSessionLimits`], global defaults overridden per route) and the global-only limits that
//! apply before routing ([`HttpLimits`]).

use std::time::Duration;

use super::raw::{RawGlobalLimits, RawSessionLimits};
use super::table::{unknown_key, Table};
use super::{ConfigError, Ctx};
use crate::ws::CloseCode;

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
pub const MAX_CONTROL_FRAMES_PER_SECOND: u64 = 100_000;
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
/// Default cap on concurrent streams per HTTP/2 connection (`http2_max_streams`).
pub const DEFAULT_HTTP2_MAX_STREAMS: u32 = 100;
/// Largest `http2_max_streams`.
pub const MAX_HTTP2_STREAMS: u64 = 10_000;
/// Default cap on open client connections (`max_connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default cap on open client connections from one IP address (`max_connections_per_ip`).
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
/// Default deadline for the TLS handshake (within `handshake_timeout`).
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS: u64 = 5;
/// Default time sessions get to close after SIGTERM before they are cut.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 10;
/// Default time the Close frames of a drain are spread over: none (all at once).
pub const DEFAULT_DRAIN_WINDOW_SECS: u64 = 0;
/// Default close code of a drain: 1001, going away.
pub const DEFAULT_DRAIN_CLOSE_CODE: CloseCode = CloseCode::GOING_AWAY;

/// Default time a fallback session lives without a request (`fallback_session_timeout`).
pub const DEFAULT_FALLBACK_SESSION_TIMEOUT_SECS: u64 = 30;
/// Default wait of an empty long-poll, and the stream heartbeat interval (`fallback_poll_timeout`).
pub const DEFAULT_FALLBACK_POLL_TIMEOUT_SECS: u64 = 25;
/// Default server->client bytes a fallback session holds until acknowledged (`fallback_buffer`).
pub const DEFAULT_FALLBACK_BUFFER_BYTES: u64 = 1024 * 1024;

/// Smallest request head bound we accept, in bytes; below this even ordinary browsers fail.
pub const MIN_HEADER_BYTES: u64 = 1024;
/// Largest request head bound we accept, in bytes.
pub const MAX_HEADER_BYTES: u64 = 1024 * 1024;
/// Smallest `partial_message_budget`, in bytes.
pub const MIN_PARTIAL_MESSAGE_BUDGET_BYTES: u64 = 64 * 1024;
/// Largest message bound we accept, in bytes (the length-prefixed envelope carries a u32 length).
pub const MAX_MESSAGE_BYTES_CEILING: u64 = u32::MAX as u64;
/// Largest count of connections, sessions, cache entries or requests in flight.
pub const MAX_COUNT: u64 = 10_000_000;

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
    /// Fallback transport: a session without a request for this long ends.
    pub fallback_session_timeout: Duration,
    /// Fallback transport: an empty long-poll answers after this long; a stream's heartbeat.
    pub fallback_poll_timeout: Duration,
    /// Fallback transport: server->client bytes held per session until acknowledged, as set;
    /// 0 when not set (then [`SessionLimits::fallback_buffer`] is the default, raised to
    /// `max_message_size` where that is larger).
    pub fallback_buffer_set: u64,
}

impl SessionLimits {
    /// The limits of a configuration without `[limits]`.
    pub const DEFAULT: SessionLimits = SessionLimits {
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
        fallback_session_timeout: Duration::from_secs(DEFAULT_FALLBACK_SESSION_TIMEOUT_SECS),
        fallback_poll_timeout: Duration::from_secs(DEFAULT_FALLBACK_POLL_TIMEOUT_SECS),
        fallback_buffer_set: 0,
    };

    /// Fallback transport: server->client bytes held per session until acknowledged: the
    /// configured value, else the default or `max_message_size` if that is larger (a session
    /// must be able to hold one whole message).
    pub fn fallback_buffer(&self) -> u64 {
        if self.fallback_buffer_set == 0 {
            DEFAULT_FALLBACK_BUFFER_BYTES.max(self.max_message_size)
        } else {
            self.fallback_buffer_set
        }
    }
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
    /// On shutdown, the sessions' Close frames go out spread evenly over this (shorter than
    /// `shutdown_grace`); zero: all at once.
    pub drain_window: Duration,
    /// The code of those Close frames: 1001 or 1012.
    pub drain_close_code: CloseCode,
    /// Client message bytes all sessions together may hold on `lines` and `length-prefixed`
    /// routes.
    pub partial_message_budget: u64,
    /// Concurrent streams (WebSocket sessions and plain requests) on one HTTP/2 connection.
    pub http2_max_streams: u32,
}

impl RawSessionLimits {
    /// These keys over `base`: what is written wins.
    fn over(&self, base: &SessionLimits) -> SessionLimits {
        SessionLimits {
            max_message_size: self.max_message_size.map_or(base.max_message_size, |v| v.0),
            max_frame_size: self.max_frame_size.map_or(base.max_frame_size, |v| v.0),
            max_fragments: self.max_fragments.map_or(base.max_fragments, |v| v.0),
            idle_timeout: self
                .idle_timeout
                .map_or(base.idle_timeout, |v| v.into_option().map(|t| t.0)),
            connect_timeout: self.connect_timeout.map_or(base.connect_timeout, |v| v.0),
            close_timeout: self.close_timeout.map_or(base.close_timeout, |v| v.0),
            ping_interval: self
                .ping_interval
                .map_or(base.ping_interval, |v| v.into_option().map(|t| t.0)),
            pong_timeout: self.pong_timeout.map_or(base.pong_timeout, |v| v.0),
            write_timeout: self.write_timeout.map_or(base.write_timeout, |v| v.0),
            control_frames_per_second: self
                .control_frames_per_second
                .map_or(base.control_frames_per_second, |v| v.u32()),
            fallback_session_timeout: self
                .fallback_session_timeout
                .map_or(base.fallback_session_timeout, |v| v.0),
            fallback_poll_timeout: self
                .fallback_poll_timeout
                .map_or(base.fallback_poll_timeout, |v| v.0),
            fallback_buffer_set: self
                .fallback_buffer
                .map_or(base.fallback_buffer_set, |v| v.0),
        }
    }
}

impl RawGlobalLimits {
    fn http(&self) -> HttpLimits {
        let handshake_timeout = self
            .handshake_timeout
            .map_or(Duration::from_secs(DEFAULT_HANDSHAKE_TIMEOUT_SECS), |v| v.0);
        HttpLimits {
            handshake_timeout,
            tls_handshake_timeout: self.tls_handshake_timeout.map_or(
                Duration::from_secs(DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS).min(handshake_timeout),
                |v| v.0,
            ),
            max_header_bytes: self.max_header_bytes.map_or(DEFAULT_MAX_HEADER_BYTES, |v| {
                usize::try_from(v.0).unwrap_or(usize::MAX)
            }),
            max_headers: self.max_headers.map_or(DEFAULT_MAX_HEADERS, |v| v.usize()),
            max_connections: self
                .max_connections
                .map_or(DEFAULT_MAX_CONNECTIONS, |v| v.usize()),
            max_connections_per_ip: self
                .max_connections_per_ip
                .map_or(DEFAULT_MAX_CONNECTIONS_PER_IP, |v| v.usize()),
            shutdown_grace: self
                .shutdown_grace
                .map_or(Duration::from_secs(DEFAULT_SHUTDOWN_GRACE_SECS), |v| v.0),
            drain_window: self
                .drain_window
                .map_or(Duration::from_secs(DEFAULT_DRAIN_WINDOW_SECS), |v| v.0),
            drain_close_code: self
                .drain_close_code
                .map_or(DEFAULT_DRAIN_CLOSE_CODE, |v| v.0),
            partial_message_budget: self
                .partial_message_budget
                .map_or(DEFAULT_PARTIAL_MESSAGE_BUDGET_BYTES, |v| v.0),
            http2_max_streams: self
                .http2_max_streams
                .map_or(DEFAULT_HTTP2_MAX_STREAMS, |v| v.u32()),
        }
    }
}

impl Ctx<'_> {
    /// `[limits]`: the per-session defaults every route starts from, and the global-only limits.
    pub(super) fn global_limits(
        &self,
        table: &mut Table,
    ) -> Result<(SessionLimits, HttpLimits), ConfigError> {
        let decode = |e| self.decode_error("limits", None, e);
        let (session, session_keys) = table.take::<RawSessionLimits>().map_err(decode)?;
        let (global, global_keys) = table.take::<RawGlobalLimits>().map_err(decode)?;
        if let Some((key, span)) = table.leftover() {
            let known = [session_keys, global_keys].concat();
            return self.err(span, format!("limits.{key}"), unknown_key(key, &known));
        }
        let limits = self.checked("limits", session.over(&SessionLimits::DEFAULT))?;
        let http = global.http();
        if http.drain_window >= http.shutdown_grace {
            return self.err_nospan(
                "limits.drain_window",
                format!(
                    "drain_window ({:?}) is not shorter than shutdown_grace ({:?}); the last sessions told would have no time for their closing handshake",
                    http.drain_window, http.shutdown_grace
                ),
            );
        }
        Ok((limits, http))
    }

    /// `[route.limits]` of route `i`, over the global limits.
    pub(super) fn route_limits(
        &self,
        i: usize,
        table: &mut Table,
        global: &SessionLimits,
    ) -> Result<SessionLimits, ConfigError> {
        let prefix = format!("route[{i}].limits");
        let (session, keys) = table
            .take::<RawSessionLimits>()
            .map_err(|e| self.decode_error(&prefix, None, e))?;
        if let Some((key, span)) = table.leftover() {
            return self.err(span, format!("{prefix}.{key}"), unknown_key(key, keys));
        }
        self.checked(&prefix, session.over(global))
    }

    fn checked(&self, prefix: &str, limits: SessionLimits) -> Result<SessionLimits, ConfigError> {
        if limits.max_frame_size > limits.max_message_size {
            return self.err_nospan(
                format!("{prefix}.max_frame_size"),
                format!(
                    "max_frame_size ({}) is larger than max_message_size ({}); a frame can never exceed its message",
                    limits.max_frame_size, limits.max_message_size
                ),
            );
        }
        if limits.fallback_buffer_set != 0 && limits.fallback_buffer_set < limits.max_message_size {
            return self.err_nospan(
                format!("{prefix}.fallback_buffer"),
                format!(
                    "fallback_buffer ({}) is smaller than max_message_size ({}); a fallback session must hold one whole message",
                    limits.fallback_buffer_set, limits.max_message_size
                ),
            );
        }
        Ok(limits)
    }
}
