//! A session after the 101: take the connection from hyper, register it (admin `/sessions`),
//! run the pump, release its claims, count it in the metrics and write its access line.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tracing::{debug, info};

use super::request::{ClientSide, PendingSession, PlainIo};
use super::router::SessionSlot;
use super::{ConnGuard, Gateway};
use crate::error::{Close, SessionEnd, Side};
use crate::fallback::Transport;
use crate::pump::{self, SessionInfo};
use crate::ws::CloseCode;

/// Close code logged when no Close frame was sent (RFC 6455 §7.4.1: abnormal closure).
pub(super) const CLOSE_CODE_NONE_SENT: u16 = 1006;

/// Close code logged for a Close frame without a code (RFC 6455 §7.4.1: no status received).
pub(super) const CLOSE_CODE_EMPTY: u16 = 1005;

/// The session task after the upgrade: register, pump, account, log.
/// What a session holds while it runs: its backend, its route slot, its connection's place in the
/// connection counts. Released before the access line is written, so a client that reconnects on
/// seeing the close finds the capacity free.
pub(super) struct Claims {
    /// The pool's claim on a fixed backend; `None` for a per-session target (no pool).
    pub(super) _lease: Option<crate::backend::Lease>,
    pub(super) _slot: SessionSlot,
    pub(super) _conn: Arc<ConnGuard>,
    /// The client's place in the per-address count when it was taken per request (`forwarded`).
    pub(super) _client: Option<Arc<super::IpClaim>>,
}

/// The session: take the connection from hyper (the 101 is written), then register, pump,
/// account, log. Everything a session keeps while it runs is in this future, so it is kept small
/// (large values are never held across an `await`).
///
/// The session comes boxed: an async function keeps its arguments for its whole life, beside
/// the locals they are moved into.
pub(super) async fn run_session(gw: Arc<Gateway>, pending: Box<PendingSession>) {
    let PendingSession {
        info,
        client,
        backend,
        token_hash,
        claims,
        http_version,
        stream,
    } = {
        // Moved out in a scope of its own, so that the box is freed now rather than when the
        // session ends.
        let pending = pending;
        *pending
    };
    let (client, preread, fallback) = match client {
        ClientSide::Upgrade(on_upgrade) => match on_upgrade.await {
            Ok(upgraded) => {
                let (client, preread) = ClientIo::from_upgraded(upgraded);
                (client, preread, None)
            }
            Err(e) => {
                debug!(session = info.id, error = %e, "upgrade did not complete");
                return;
            }
        },
        ClientSide::Fallback(pipe, session) => {
            let (r, w) = tokio::io::split(pipe);
            (ClientIo::Fallback(r, w), Vec::new(), Some(session))
        }
    };
    let started = Instant::now();
    info.metrics.session_opened(http_version);
    {
        let subject = info.subject.as_deref().unwrap_or("-");
        let token_hash = token_hash.as_deref().unwrap_or("-");
        let fallback_id = fallback.as_ref().map(|s| s.id.as_str());
        let compression = compression(&info);
        info!(session = info.id, route = %info.route.path, client = %info.client, subject, backend = %info.backend, token_hash = %token_hash, http_version, compression, fallback_id, "session open");
    }
    // What the session keeps while it runs is in `info`, shared with its registry entry; the
    // rest is freed before the pump starts.
    drop(token_hash);
    gw.registry.insert(info.clone());

    // A plain TCP session with a plain backend runs on a session thread from here on, its end
    // accounted there; this task ends. Unless it ends at once: then it stays here.
    let mut preread = preread;
    let first_word = match &client {
        ClientIo::Tcp(r, _) if movable(&client, &backend) => Some(r),
        _ => None,
    };
    let stays = match first_word {
        Some(r) => super::first_word::ends_at_once(r, &backend.0, &mut preread, &info).await,
        None => false,
    };
    let (client, backend) = match placement(client, backend, stays) {
        Placement::Here(client, backend) => (client, backend),
        Placement::Thread(moved) => {
            let token = gw.sessions.token();
            let gw = gw.clone();
            let end = move |info: &SessionInfo, outcome| {
                drop(claims);
                drop(stream);
                close_session(&gw, info, outcome, http_version, Transport::WebSocket);
                // Shutdown waits for the session until here.
                drop(token);
            };
            let session = ThreadSession {
                info,
                started,
                end: Some(end),
            };
            match moved {
                Ok((plane, fds)) => on_session_thread(plane, fds, session, preread),
                // Accounted as failed when dropped.
                Err(e) => debug!(session = session.info.id, error = %e, "{SESSION_THREAD_FAILED}"),
            }
            return;
        }
    };

    // The pump future is built in place inside the select (never bound to a local first and
    // moved): a moved future would take its size twice in this one.
    // The cut is polled only when the token wakes it, not at every wake-up of the session.
    let cut = std::pin::pin!(gw.cut.cancelled());
    let outcome = tokio::select! {
        biased;
        outcome = client.pump(&info, preread, backend) => outcome,
        _ = pump::Gated::new(cut) => pump::Outcome {
            end: SessionEnd::Cut { reason: crate::error::CUT_AT_GRACE, by: Side::Gateway },
            client_close: None,
            up: info.stats.up.snapshot(),
            down: info.stats.down.snapshot(),
            duration: started.elapsed(),
        },
    };
    drop(claims);
    drop(stream);
    let mut outcome = outcome;
    if fallback.as_ref().is_some_and(|s| s.timed_out()) {
        outcome.end = SessionEnd::Cut {
            reason: FALLBACK_TIMED_OUT,
            by: Side::Client,
        };
    }
    let transport = fallback
        .as_ref()
        .map_or(Transport::WebSocket, |s| s.transport());
    close_session(&gw, &info, outcome, http_version, transport);
    // A fallback session's close record reaches its client in a later response: the task
    // (which shutdown waits for) lasts until it went out, at most `fallback_session_timeout`.
    if let Some(s) = fallback {
        let _ = tokio::time::timeout(s.limits.session_timeout, async {
            tokio::select! {
                () = s.delivered() => {}
                () = gw.cut.cancelled() => {}
            }
        })
        .await;
    }
}

/// The end of a session: out of the registry, into the metrics, the recording closed, the access
/// line written.
fn close_session(
    gw: &Gateway,
    info: &SessionInfo,
    outcome: pump::Outcome,
    http_version: &'static str,
    transport: Transport,
) {
    gw.registry.remove(info.id);
    let code = outcome.end.code().map(CloseCode::get);
    let reason = outcome.end.reason();
    let by = outcome.end.by();
    info.metrics
        .session_closed(outcome.duration, transport, code, by);
    let counters = info.metrics.counters();
    counters.bytes_up.inc_by(outcome.up.bytes);
    counters.bytes_down.inc_by(outcome.down.bytes);
    counters.messages_up.inc_by(outcome.up.messages);
    counters.messages_down.inc_by(outcome.down.messages);
    // Numbers in the log: 1006 when no Close was sent, 1005 for a Close without a code (their
    // meanings in RFC 6455 §7.4.1; neither ever goes on the wire).
    let close_code = code.unwrap_or(CLOSE_CODE_NONE_SENT);
    let client_close_code = match outcome.client_close {
        None => CLOSE_CODE_NONE_SENT,
        Some(None) => CLOSE_CODE_EMPTY,
        Some(Some(c)) => c.get(),
    };
    if let Some(rec) = &info.recording {
        rec.finish(close_code, reason);
    }
    let record = info.recording.as_ref().map(|r| r.file_name());
    if outcome.end == SessionEnd::Closed(Close::draining(info.drain_code)) {
        gw.metrics
            .drain_closes
            .get_or_create(&crate::metrics::CodeLabel {
                code: info.drain_code.get(),
            })
            .inc();
    }
    let subject = info.subject.as_deref().unwrap_or("-");
    let compression = compression(info);
    info!(
        target: "wsgate::access",
        session = info.id,
        route = %info.route.path,
        client = %info.client,
        subject,
        backend = %info.backend,
        duration_ms = u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX),
        close_code,
        reason,
        closed_by = %by,
        client_close_code,
        bytes_up = outcome.up.bytes,
        messages_up = outcome.up.messages,
        bytes_down = outcome.down.bytes,
        messages_down = outcome.down.messages,
        http_version,
        compression,
        record,
        transport = transport.label(),
        "session closed"
    );
}

/// Run a session on a session thread, the gateway's cut included; `end` accounts for it there.
fn on_session_thread<E>(
    plane: &crate::dataplane::DataPlane,
    (client, backend): (OwnedFd, OwnedFd),
    session: ThreadSession<E>,
    mut preread: Vec<u8>,
) where
    E: FnOnce(&SessionInfo, pump::Outcome) + Send + 'static,
{
    plane.spawn(client, backend, move |sockets| {
        // The sockets stay where the session's future keeps them; the pump borrows them (moved
        // into it, they would take their size twice in the future).
        let ((mut cr, mut cw), (mut br, mut bw)) = sockets;
        async move {
            let info = &session.info;
            let client = (&mut cr, &mut cw);
            let backend = (&mut br, &mut bw);
            let outcome = pump::run(info, client, &mut preread, backend).await;
            session.finish(outcome);
        }
    });
}

/// A session bound for a session thread, accounted exactly once: with the pump's outcome, or,
/// when it is dropped unfinished (its sockets could not leave tokio's reactor or join the
/// thread's loop, or it panicked), as cut by the gateway ([`SESSION_THREAD_FAILED`]). So its
/// registry entry, metrics and access line never outlive it.
struct ThreadSession<E: FnOnce(&SessionInfo, pump::Outcome)> {
    info: Arc<SessionInfo>,
    started: Instant,
    end: Option<E>,
}

impl<E: FnOnce(&SessionInfo, pump::Outcome)> ThreadSession<E> {
    fn finish(mut self, outcome: pump::Outcome) {
        if let Some(end) = self.end.take() {
            end(&self.info, outcome);
        }
    }
}

impl<E: FnOnce(&SessionInfo, pump::Outcome)> Drop for ThreadSession<E> {
    fn drop(&mut self) {
        if let Some(end) = self.end.take() {
            let outcome = pump::Outcome {
                end: SessionEnd::Cut {
                    reason: SESSION_THREAD_FAILED,
                    by: Side::Gateway,
                },
                client_close: None,
                up: self.info.stats.up.snapshot(),
                down: self.info.stats.down.snapshot(),
                duration: self.started.elapsed(),
            };
            end(&self.info, outcome);
        }
    }
}

/// The access line's reason for a session that failed on its way to, or on, a session thread.
const SESSION_THREAD_FAILED: &str = "session thread failed";

/// The session's compression, as the log lines name it.
fn compression(info: &SessionInfo) -> &'static str {
    if info.deflate.is_some() {
        "permessage-deflate"
    } else {
        "-"
    }
}

/// The access-line reason of a fallback session whose client stopped making requests.
pub(super) const FALLBACK_TIMED_OUT: &str = "fallback client stopped polling";

pub(super) type TlsClient = tokio_rustls::server::TlsStream<TcpStream>;

/// The client connection after the upgrade, split into read and write halves.
pub(super) enum ClientIo {
    /// Plain TCP: owned halves, no lock between the directions.
    Tcp(OwnedReadHalf, OwnedWriteHalf),
    /// TLS: the stream itself (not hyper's boxed wrapper), shared by the two halves.
    Tls(ReadHalf<TlsClient>, WriteHalf<TlsClient>),
    /// Any other transport hyper hands back.
    Other(ReadHalf<TokioIo<Upgraded>>, WriteHalf<TokioIo<Upgraded>>),
    /// The fallback transport's adapter, on the other end of an in-process pipe.
    Fallback(ReadHalf<DuplexStream>, WriteHalf<DuplexStream>),
}

impl ClientIo {
    /// Unwrap hyper's upgraded connection to the transport underneath. Returns the bytes hyper
    /// read past the request head (usually none): they are the first frames. They are copied so
    /// that hyper's read buffer is freed now; a slice of it would keep the whole buffer alive for
    /// the life of the session.
    pub(super) fn from_upgraded(upgraded: Upgraded) -> (ClientIo, Vec<u8>) {
        let upgraded = match upgraded.downcast::<TokioIo<PlainIo>>() {
            Ok(parts) => {
                let (r, w) = parts.io.into_inner().tcp.into_split();
                return (ClientIo::Tcp(r, w), parts.read_buf.to_vec());
            }
            Err(upgraded) => upgraded,
        };
        match upgraded.downcast::<TokioIo<TlsClient>>() {
            Ok(parts) => {
                let (r, w) = tokio::io::split(parts.io.into_inner());
                (ClientIo::Tls(r, w), parts.read_buf.to_vec())
            }
            Err(upgraded) => {
                let (r, w) = tokio::io::split(TokioIo::new(upgraded));
                (ClientIo::Other(r, w), Vec::new())
            }
        }
    }
}

impl ClientIo {
    /// Run the session's pump on this task.
    pub(super) async fn pump(
        self,
        info: &SessionInfo,
        mut preread: Vec<u8>,
        backend: (crate::backend::BackendReader, crate::backend::BackendWriter),
    ) -> pump::Outcome {
        match self {
            ClientIo::Tcp(r, w) => pump::run(info, (r, w), &mut preread, backend).await,
            ClientIo::Tls(r, w) => pump::run(info, (r, w), &mut preread, backend).await,
            ClientIo::Other(r, w) => pump::run(info, (r, w), &mut preread, backend).await,
            ClientIo::Fallback(r, w) => pump::run(info, (r, w), &mut preread, backend).await,
        }
    }
}

type BackendIo = (crate::backend::BackendReader, crate::backend::BackendWriter);

/// Where a session runs.
enum Placement {
    /// On a session thread: the client's and the backend's sockets, out of tokio's reactor; or
    /// why they could not leave it (they are closed then).
    Thread(io::Result<(&'static crate::dataplane::DataPlane, (OwnedFd, OwnedFd))>),
    /// On this task.
    Here(ClientIo, BackendIo),
}

/// Whether a session could run on a session thread: the binary started them, and its client and
/// backend are both plain stream sockets.
fn movable(client: &ClientIo, backend: &BackendIo) -> bool {
    use crate::backend::{BackendReader, BackendWriter};
    crate::dataplane::get().is_some()
        && matches!(client, ClientIo::Tcp(..))
        && matches!(
            backend,
            (BackendReader::Tcp(_), BackendWriter::Tcp(_))
                | (BackendReader::Unix(_), BackendWriter::Unix(_))
        )
}

/// A session runs on a session thread when it is [`movable`] and does not end at once (`stays`,
/// see [`super::first_word`]);
/// its sockets are taken out of tokio's reactor whole (non-blocking, their options kept).
fn placement(client: ClientIo, backend: BackendIo, stays: bool) -> Placement {
    use crate::backend::{BackendReader, BackendWriter};
    let Some(plane) = crate::dataplane::get() else {
        return Placement::Here(client, backend);
    };
    if stays || !movable(&client, &backend) {
        return Placement::Here(client, backend);
    }
    let (r, w) = match client {
        ClientIo::Tcp(r, w) => (r, w),
        client => return Placement::Here(client, backend),
    };
    // Halves of one stream always reunite; only leaving the reactor can fail.
    let fds = r.reunite(w).map_err(io::Error::other).and_then(|tcp| {
        let client = OwnedFd::from(tcp.into_std()?);
        let backend = match backend {
            (BackendReader::Tcp(r), BackendWriter::Tcp(w)) => {
                OwnedFd::from(r.reunite(w).map_err(io::Error::other)?.into_std()?)
            }
            (BackendReader::Unix(r), BackendWriter::Unix(w)) => {
                OwnedFd::from(r.reunite(w).map_err(io::Error::other)?.into_std()?)
            }
            _ => return Err(io::Error::other("not a plain stream socket")),
        };
        Ok((client, backend))
    });
    Placement::Thread(fds.map(|fds| (plane, fds)))
}
