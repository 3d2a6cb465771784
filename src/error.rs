//! How sessions end: one close code per failure after the 101, and the side that caused it.
//!
//! Failures before the 101 are HTTP statuses ([`Reject`]); failures after it are
//! [`Close`] values. The tables in README.md list both and must stay in step with this file and
//! the call sites that build them.

use std::fmt;

use http::StatusCode;

use crate::ws::CloseCode;

/// Which side of the gateway a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
    Gateway,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Backend => "backend",
            Side::Gateway => "gateway",
        })
    }
}

/// A refusal before the 101: exactly one HTTP status, a short plain-text reason, the side whose
/// doing it was (recorded where the refusal is decided), and whether the client may retry later
/// (the answer then carries `Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{} {reason} ({by})", status.as_u16())]
pub struct Reject {
    pub status: StatusCode,
    pub reason: &'static str,
    pub by: Side,
    pub retry_after: bool,
}

impl Reject {
    const fn new(status: StatusCode, reason: &'static str, by: Side) -> Reject {
        Reject {
            status,
            reason,
            by,
            retry_after: false,
        }
    }

    /// The request itself is refused: invalid, unknown path, Origin, credential.
    pub const fn client(status: StatusCode, reason: &'static str) -> Reject {
        Reject::new(status, reason, Side::Client)
    }

    /// The backend could not be reached or opened (502, 504).
    pub const fn backend(status: StatusCode, reason: &'static str) -> Reject {
        Reject::new(status, reason, Side::Backend)
    }

    /// The gateway itself (or a service it depends on, such as the auth service) cannot serve it.
    pub const fn gateway(status: StatusCode, reason: &'static str) -> Reject {
        Reject::new(status, reason, Side::Gateway)
    }

    /// 503 because a connection or session limit is reached or a local resource ran out; the
    /// client may retry later.
    pub const fn busy(reason: &'static str) -> Reject {
        Reject {
            retry_after: true,
            ..Reject::new(StatusCode::SERVICE_UNAVAILABLE, reason, Side::Gateway)
        }
    }
}

/// A session-ending event: the close code sent to the client, a short reason, who caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    pub code: CloseCode,
    pub reason: &'static str,
    pub by: Side,
}

impl Close {
    pub const fn new(code: CloseCode, reason: &'static str, by: Side) -> Close {
        Close { code, reason, by }
    }

    /// The backend closed its side (EOF) and everything it sent was delivered.
    pub const BACKEND_EOF: Close = Close::new(
        CloseCode::NORMAL,
        "backend closed the connection",
        Side::Backend,
    );
    /// The backend connection failed (reset, I/O error).
    pub const BACKEND_ERROR: Close = Close::new(
        CloseCode::INTERNAL_ERROR,
        "backend connection failed",
        Side::Backend,
    );
    /// A write to the backend made no progress for `write_timeout`.
    pub const BACKEND_STALLED: Close = Close::new(
        CloseCode::INTERNAL_ERROR,
        "backend stopped reading (write_timeout)",
        Side::Backend,
    );
    /// No traffic either way for `idle_timeout`.
    pub const IDLE: Close = Close::new(CloseCode::GOING_AWAY, "idle timeout", Side::Gateway);
    /// The client's credential (a JWT) expired during the session.
    pub const CREDENTIAL_EXPIRED: Close = Close::new(
        CloseCode::POLICY_VIOLATION,
        "credential expired",
        Side::Client,
    );
    /// An operator closed the session (admin `DELETE /sessions/{id}`).
    pub const OPERATOR: Close = Close::new(
        CloseCode::POLICY_VIOLATION,
        "closed by the operator",
        Side::Gateway,
    );
    /// The client sent Pings or Pongs faster than `control_frames_per_second`.
    pub const TOO_MANY_CONTROL_FRAMES: Close = Close::new(
        CloseCode::POLICY_VIOLATION,
        "too many control frames (control_frames_per_second)",
        Side::Client,
    );
    /// The gateway is shutting down.
    pub const SHUTDOWN: Close = Close::new(
        CloseCode::GOING_AWAY,
        "gateway shutting down",
        Side::Gateway,
    );

    /// The gateway is shutting down and tells this session with `code` (`drain_close_code`:
    /// 1001 or 1012).
    pub const fn draining(code: CloseCode) -> Close {
        Close {
            code,
            ..Close::SHUTDOWN
        }
    }
}

/// Why a session that outlived `shutdown_grace` ended (its connections were cut).
pub(crate) const CUT_AT_GRACE: &str = "cut at shutdown_grace";

/// How a session ended, as the access line and the metrics tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The gateway sent this Close frame.
    Closed(Close),
    /// The connection was cut without a Close from the gateway: why, and which side's failure
    /// (or decision) it was.
    Cut { reason: &'static str, by: Side },
}

impl SessionEnd {
    /// The code of the Close the gateway sent, if it sent one.
    pub fn code(&self) -> Option<CloseCode> {
        match self {
            SessionEnd::Closed(c) => Some(c.code),
            SessionEnd::Cut { .. } => None,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            SessionEnd::Closed(c) => c.reason,
            SessionEnd::Cut { reason, .. } => reason,
        }
    }

    /// Who ended the session.
    pub fn by(&self) -> Side {
        match self {
            SessionEnd::Closed(c) => c.by,
            SessionEnd::Cut { by, .. } => *by,
        }
    }
}

impl fmt::Display for Close {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ({})", self.code, self.reason, self.by)
    }
}
