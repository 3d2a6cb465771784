//! Backend -> client: read the backend, write frames to the client, and act on every control
//! event and deadline of the session.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::gate::Gate;
use super::io::{poll_read_more, spare, Output, ReadBytes, Release};
use super::keepalive::{Due, Keepalive};
use super::{far_future, Shared, Traffic, FLUSH_THRESHOLD_BYTES};
use super::{Extras, SessionControl, Told};
use crate::config::Route;
use crate::error::{Close, SessionEnd, Side};
use crate::framing::FromBackend;
use crate::recording::{Dir, Kind, Recorder};
use crate::ws::{self, encode_frame, CloseCode, DeflateParams, Deflater, OpCode};

pub(super) struct Downstream<'s, R, W> {
    backend: R,
    client: W,
    shared: &'s Shared,
    from: FromBackend,
    out: Output,
    route: &'s Route,
    traffic: &'s Traffic,
    /// Why the connection was cut without a Close, if it was.
    cut: Option<&'static str>,
    /// Where the bytes read from the backend are recorded, if the route records sessions.
    rec: Option<&'s Recorder>,
    /// permessage-deflate: compresses messages of at least `min_compress_bytes`.
    deflater: Option<(Deflater, usize)>,
    /// What the gateway tells the session from outside (drain, operator close, the cut).
    control: &'s SessionControl,
    /// The code of the Close the session gets when the gateway drains.
    drain_code: CloseCode,
    /// When the client's credential expires (the session is closed with 1008 then).
    expires: Option<tokio::time::Instant>,
}

/// What a session is told from outside its connections, for downstream: the control block, the
/// Close code when the gateway drains, and when the client's credential expires.
pub(super) struct Outside<'s> {
    pub(super) control: &'s SessionControl,
    pub(super) drain_code: CloseCode,
    pub(super) expires: Option<tokio::time::Instant>,
}

/// How downstream's main loop ended, and so what its Close frame is.
enum DownEnd {
    /// Send this Close after every frame already queued (the backend ended or failed: what it
    /// sent before is delivered first).
    Initiate(Close),
    /// A control event (shutdown, operator, credential expiry, idle): frames queued but not yet
    /// started are dropped, and this Close follows the frame in progress.
    Interrupt(Close),
    /// The client closed first: answer with its code, after the queued frames unless
    /// `drop_queued` (the close deadline passed, or a control event came while draining).
    Answer {
        code: Option<CloseCode>,
        drop_queued: bool,
    },
    /// The client broke the protocol: queued frames are dropped, this Close is sent, and the
    /// client's Close is not waited for.
    Fail(Close),
    /// The client connection is unusable; nothing can be sent. The reason is logged.
    Abort(&'static str),
    /// The gateway's `shutdown_grace` passed: the connections are cut, nothing more is sent.
    Cut,
}

/// What woke downstream's main loop.
enum DownNext {
    /// A control future fired; `told`: upstream changed the control block.
    Control { told: bool },
    /// A write to the client went through (`false`: it failed).
    Wrote(bool),
    /// A read from the backend ended.
    Read(std::io::Result<usize>),
}

const CLIENT_GONE: &str = "client connection lost without a Close";
const CLIENT_STALLED: &str = "client stopped reading (write_timeout)";
const CLIENT_UNRESPONSIVE: &str = "client did not answer a keepalive ping (pong_timeout)";
const CLIENT_CLOSE_SLOW: &str = "client did not take the Close within close_timeout";

impl<'s, R, W> Downstream<'s, R, W>
where
    R: ReadBytes,
    W: AsyncWrite + Unpin,
{
    pub(super) fn new(
        (backend, client): (R, W),
        shared: &'s Shared,
        from: FromBackend,
        route: &'s Route,
        traffic: &'s Traffic,
        extras: Extras<'s>,
        outside: Outside<'s>,
    ) -> Self {
        let Extras { rec, deflate } = extras;
        Downstream {
            control: outside.control,
            drain_code: outside.drain_code,
            expires: outside.expires,
            backend,
            client,
            shared,
            from,
            out: Output::default(),
            route,
            traffic,
            cut: None,
            rec,
            deflater: deflate
                .filter(DeflateParams::compress_to_client)
                .map(|p| (Deflater::new(&p), p.min_compress_bytes)),
        }
    }

    pub(super) async fn run(&mut self) -> SessionEnd {
        let end = self.pump().await;
        let by_gateway = matches!(end, DownEnd::Cut);
        // The cut also ends a closing handshake in progress.
        let finished = if by_gateway {
            None
        } else {
            tokio::select! {
                biased;
                _ = self.control.told_of(Told::CUT) => None,
                sent = self.finish(end) => Some(sent),
            }
        };
        match finished {
            Some(Some(close)) => SessionEnd::Closed(close),
            Some(None) => SessionEnd::Cut {
                // Every other way of ending without a Close is the client connection failing.
                reason: self.cut.unwrap_or(CLIENT_GONE),
                by: Side::Client,
            },
            None => {
                self.shared.tell_up(|c| c.stop_up = true);
                SessionEnd::Cut {
                    reason: crate::error::CUT_AT_GRACE,
                    by: Side::Gateway,
                }
            }
        }
    }

    /// Move backend bytes to the client until something ends the session.
    ///
    /// Reading the backend, writing the client and every control event (drain, operator close,
    /// the cut, credential expiry, the client's Close, the close, idle, keepalive and write
    /// deadlines) are the branches of one wait, polled in that order. Control is also checked
    /// at the top of every pass after something behind the control gate fired (the control
    /// block's flags, whether the deadline timer has fired), so that a backend that always has
    /// data ready or a client that reads slowly never keeps an event from being seen, without
    /// polling the control sources on every message: they are polled only after one of them
    /// woke the task (a [`Gate`]), and first. The backend is read only while less than
    /// [`FLUSH_THRESHOLD_BYTES`] wait for the client (backpressure).
    async fn pump(&mut self) -> DownEnd {
        // Only the few durations used on the way are kept (not a copy of every limit).
        let close_timeout = self.route.limits.close_timeout;
        let mut rbuf = spare::Recycled(BytesMut::new());
        // Set once the client has sent Close: the code we echo, and until when the backend may
        // still send (it got a FIN).
        let mut answer: Option<(Option<CloseCode>, tokio::time::Instant)> = None;
        let limits = &self.route.limits;
        let mut keepalive = Keepalive::new(limits.ping_interval, limits.pong_timeout);
        let mut release = Release::new(None);
        // One timer for every deadline of this half (idle, keepalive, credential expiry, backend
        // drain, write stall, the idle-buffer release). It is re-armed when it fires or when an
        // earlier deadline appears, never per message.
        let housekeeping = tokio::time::sleep_until(far_future());
        tokio::pin!(housekeeping);
        let mut armed = far_future();
        // What the earliest deadline was last computed from.
        let mut seen = None;
        let shared = self.shared;
        // The other half's word, the timer and the control block are polled only when one of
        // them woke the task.
        let mut gate = Gate::new();
        // The control block is looked at only when something behind the gate fired since.
        let mut control_fired = true;
        loop {
            // Write what is queued as far as the socket takes it now; only a full socket waits.
            if let Err(why) = self.write_now().await {
                return DownEnd::Abort(why);
            }
            if std::mem::take(&mut control_fired) {
                let told = self.control.told();
                if told.cut() {
                    return DownEnd::Cut;
                }
                let answering = answer.map(|(code, _)| DownEnd::Answer {
                    code,
                    drop_queued: true,
                });
                if told.drain() {
                    let close = Close::draining(self.drain_code);
                    return answering.unwrap_or(DownEnd::Interrupt(close));
                }
                if told.close() {
                    return answering.unwrap_or(DownEnd::Interrupt(Close::OPERATOR));
                }
            }
            let elapsed = housekeeping.is_elapsed();
            if elapsed {
                armed = far_future();
                if let Some(end) = self.deadlines(answer, &mut keepalive) {
                    return end;
                }
                if release.expire(tokio::time::Instant::now()) {
                    let idle_tick = || self.deflater.as_mut().is_some_and(|(d, _)| d.idle_tick());
                    release.tick(&mut rbuf, idle_tick);
                }
            }
            // Traffic only moves the idle and keepalive deadlines later, so the earliest one is
            // computed again only when the timer fired or a deadline may have come closer: the
            // client's Close, a write stall, a Ping waiting for its answer.
            let inputs = (answer.is_some(), self.out.stalled_since, release.due());
            if elapsed || keepalive.awaiting() || seen != Some(inputs) {
                seen = Some(inputs);
                let due = self.next_deadline(&answer, &mut keepalive);
                let due = release.due().map_or(due, |r| due.min(r));
                if due < armed || elapsed {
                    // Never in the past: a deadline that is not acted on must not spin the loop.
                    let due = due.max(tokio::time::Instant::now() + Duration::from_millis(1));
                    housekeeping.as_mut().reset(due);
                    armed = due;
                    gate.open();
                }
            }
            let room = self.out.pending() < FLUSH_THRESHOLD_BYTES;
            let busy = self.out.busy();
            // In this order: the control sources (polled only once one of them woke the task),
            // the client's socket when output waits, the backend while there is room.
            let next = std::future::poll_fn(|cx| {
                let gated = gate.poll(cx, |cx| {
                    if shared.to_down.poll(cx).is_ready() {
                        return Poll::Ready(true);
                    }
                    // These only wake an idle session; the top of the loop acts on them.
                    let fired = [
                        housekeeping.as_mut().poll(cx).is_ready(),
                        self.control.poll_told(cx, Told::ANY).is_ready(),
                    ];
                    if fired.contains(&true) {
                        Poll::Ready(false)
                    } else {
                        Poll::Pending
                    }
                });
                if let Poll::Ready(told) = gated {
                    return Poll::Ready(DownNext::Control { told });
                }
                if busy {
                    if let Poll::Ready(r) = self.out.poll_step(cx, &mut self.client) {
                        return Poll::Ready(DownNext::Wrote(r.is_ok()));
                    }
                }
                if room {
                    return poll_read_more(&mut self.backend, cx, &mut rbuf).map(DownNext::Read);
                }
                Poll::Pending
            })
            .await;
            match next {
                DownNext::Control { told } => {
                    control_fired = true;
                    if !told {
                        continue;
                    }
                    let (fail, client_close, gone, write_failed) = {
                        let mut c = self.shared.lock();
                        if answer.is_none() && !c.pongs.is_empty() {
                            self.out.buf.extend_from_slice(&c.pongs);
                            c.pongs.clear();
                        }
                        (
                            c.fail,
                            c.client_close,
                            c.client_gone,
                            c.backend_write_failed,
                        )
                    };
                    if gone {
                        return DownEnd::Abort(CLIENT_GONE);
                    }
                    if let Some(close) = fail {
                        return DownEnd::Fail(close);
                    }
                    if let Some(code) = client_close {
                        if answer.is_none() {
                            answer = Some((code, tokio::time::Instant::now() + close_timeout));
                        }
                    } else if let Some(close) = write_failed {
                        return DownEnd::Initiate(close);
                    }
                }
                DownNext::Wrote(ok) => {
                    if !ok {
                        return DownEnd::Abort(CLIENT_GONE);
                    }
                }
                DownNext::Read(r) => {
                    let eof = !matches!(r, Ok(n) if n > 0);
                    if !eof {
                        self.shared.touch();
                        // Timed by housekeeping: the deadlines are computed again at the top.
                        release.woke();
                    }
                    // Everything read so far is queued, on EOF too (a last unterminated line).
                    let queued = std::future::poll_fn(|cx| {
                        Poll::Ready(self.queue(cx, &mut rbuf, matches!(r, Ok(0))))
                    })
                    .await;
                    if let Err(close) = queued {
                        return match answer {
                            Some((code, _)) => DownEnd::Answer {
                                code,
                                drop_queued: false,
                            },
                            None => DownEnd::Initiate(close),
                        };
                    }
                    if eof {
                        if let Some((code, _)) = answer {
                            return DownEnd::Answer {
                                code,
                                drop_queued: false,
                            };
                        }
                        return DownEnd::Initiate(if r.is_ok() {
                            Close::BACKEND_EOF
                        } else {
                            Close::BACKEND_ERROR
                        });
                    }
                }
            }
        }
    }

    /// Act on the deadlines that are due: `Some` ends the session; a keepalive Ping may be
    /// queued.
    fn deadlines(
        &mut self,
        answer: Option<(Option<CloseCode>, tokio::time::Instant)>,
        keepalive: &mut Keepalive,
    ) -> Option<DownEnd> {
        let limits = self.route.limits;
        let now = tokio::time::Instant::now();
        if self
            .out
            .stalled_since
            .is_some_and(|t| now >= t + limits.write_timeout)
        {
            return Some(DownEnd::Abort(CLIENT_STALLED));
        }
        if let Some((code, until)) = answer {
            return (now >= until).then_some(DownEnd::Answer {
                code,
                drop_queued: true,
            });
        }
        if self.expires.is_some_and(|at| now >= at) {
            return Some(DownEnd::Interrupt(Close::CREDENTIAL_EXPIRED));
        }
        if self
            .shared
            .idle_deadline(limits.idle_timeout)
            .is_some_and(|at| at <= now)
        {
            return Some(DownEnd::Interrupt(Close::IDLE));
        }
        match keepalive.due(self.shared.now_ms(), self.shared.last_client_read()) {
            Due::Nothing => None,
            Due::Ping => {
                encode_frame(&mut self.out.buf, OpCode::Ping, b"wsgate");
                None
            }
            Due::Dead => Some(DownEnd::Abort(CLIENT_UNRESPONSIVE)),
        }
    }

    /// The earliest deadline this half has to act on.
    fn next_deadline(
        &self,
        answer: &Option<(Option<CloseCode>, tokio::time::Instant)>,
        keepalive: &mut Keepalive,
    ) -> tokio::time::Instant {
        let stall = self
            .out
            .stalled_since
            .map(|t| t + self.route.limits.write_timeout);
        let mut due = stall.unwrap_or_else(far_future);
        if let Some((_, until)) = answer {
            return due.min(*until);
        }
        if let Some(idle) = self.shared.idle_deadline(self.route.limits.idle_timeout) {
            due = due.min(idle);
        }
        if let Some(k) = keepalive.next(self.shared.last_client_read()) {
            due = due.min(self.shared.at_ms(k));
        }
        if let Some(e) = self.expires {
            due = due.min(e);
        }
        due
    }

    /// Turn what the backend sent into frames on the output queue (a large one may go out at
    /// once, see [`Output::push_frame`]). `Err`: the backend broke the framing rules (what came
    /// before the fault is queued).
    fn queue(
        &mut self,
        cx: &mut std::task::Context<'_>,
        rbuf: &mut BytesMut,
        eof: bool,
    ) -> Result<(), Close> {
        loop {
            match self.from.next(rbuf, eof)? {
                Some(m) => {
                    let text = m.text;
                    let opcode = if text { OpCode::Text } else { OpCode::Binary };
                    self.traffic.add_message();
                    self.traffic.add_bytes(m.payload.len());
                    match self.deflater.as_mut() {
                        // Control frames are never compressed (RFC 7692 §6.1); they are not
                        // queued here.
                        Some((d, min)) if m.payload.len() >= *min => {
                            d.encode_frame(&mut self.out.buf, opcode, m.payload);
                        }
                        _ => self.out.push_frame(cx, &mut self.client, opcode, m.payload),
                    }
                    if let Some(rec) = self.rec {
                        let kind = if text { Kind::Text } else { Kind::Binary };
                        rec.record(Dir::Out, kind, self.from.last_backend_bytes(rbuf));
                    }
                }
                None => return Ok(()),
            }
        }
    }

    /// Write and flush as much as the client takes without waiting. A write that cannot go on
    /// starts the stall clock (`write_timeout`); the loop waits for the socket.
    async fn write_now(&mut self) -> Result<(), &'static str> {
        while self.out.busy() {
            let step =
                std::future::poll_fn(|cx| Poll::Ready(self.out.poll_step(cx, &mut self.client)))
                    .await;
            match step {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Err(CLIENT_GONE),
                Poll::Pending => {
                    if self.out.stalled_since.is_none() {
                        self.out.stalled_since = Some(tokio::time::Instant::now());
                    }
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Send the session's Close (if any can be sent), run the closing handshake, close the client
    /// connection. The whole closing handshake, writing what is left of the queue included, is
    /// bounded by `close_timeout`. Returns the Close we sent.
    async fn finish(&mut self, end: DownEnd) -> Option<Close> {
        let deadline = tokio::time::Instant::now() + self.route.limits.close_timeout;
        let failed = matches!(end, DownEnd::Fail(_));
        let sent = match end {
            DownEnd::Abort(why) => {
                self.cut = Some(why);
                None
            }
            DownEnd::Cut => None,
            DownEnd::Answer { code, drop_queued } => {
                if drop_queued {
                    self.out.drop_unstarted();
                }
                ws::close::encode_close(code, "", &mut self.out.buf);
                let close = Close::new(
                    code.unwrap_or(CloseCode::NORMAL),
                    "client closed",
                    Side::Client,
                );
                self.send_close(deadline).await.then_some(close)
            }
            DownEnd::Initiate(close) | DownEnd::Interrupt(close) | DownEnd::Fail(close) => {
                if !matches!(end, DownEnd::Initiate(_)) {
                    self.out.drop_unstarted();
                }
                ws::close::encode_close(Some(close.code), close.reason, &mut self.out.buf);
                let ok = self.send_close(deadline).await;
                if ok && !failed {
                    // RFC 6455 §5.5.1: wait (bounded) for the client's Close before closing TCP.
                    self.wait_for_upstream(deadline).await;
                }
                ok.then_some(close)
            }
        };
        if sent.is_some() {
            // FIN (and TLS close_notify): the server closes the TCP connection first (RFC 6455 §7.1.1).
            let _ = tokio::time::timeout_at(deadline, self.client.shutdown()).await;
        }
        if !failed {
            // After a protocol error upstream keeps draining the client until it closes (bounded by
            // close_timeout), so that unread bytes do not turn our close into a reset.
            self.shared.tell_up(|c| c.stop_up = true);
        }
        sent
    }

    /// Write the queue, the Close last, by `deadline`. `false`: it could not be sent (the reason
    /// is kept for the log).
    async fn send_close(&mut self, deadline: tokio::time::Instant) -> bool {
        let write = async {
            while self.out.busy() {
                std::future::poll_fn(|cx| self.out.poll_step(cx, &mut self.client))
                    .await
                    .map_err(|_| CLIENT_GONE)?;
            }
            Ok(())
        };
        match tokio::time::timeout_at(deadline, write).await {
            Ok(Ok(())) => true,
            Ok(Err(why)) => {
                self.cut = Some(why);
                false
            }
            Err(_) => {
                self.cut = Some(CLIENT_CLOSE_SLOW);
                false
            }
        }
    }

    async fn wait_for_upstream(&mut self, deadline: tokio::time::Instant) {
        loop {
            if self.shared.lock().up_done {
                return;
            }
            tokio::select! {
                () = std::future::poll_fn(|cx| self.shared.to_down.poll(cx)) => {}
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }
}
