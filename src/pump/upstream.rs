//! Client -> backend: decode frames, hand messages to the backend, tell downstream about
//! Pings, the client's Close and protocol errors.

use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::gate::Gate;
use super::io::{
    flush_now, poll_read_more, read_bytes, spare, write_now, write_or_flush, ReadBytes, Release,
};
use super::Extras;
use super::{
    Shared, Traffic, BUFFER_RELEASE, DIRECT_WRITE_BYTES, DISCARD_CHUNK_BYTES,
    FLUSH_THRESHOLD_BYTES, MAX_PENDING_PONG_BYTES,
};
use crate::config::Route;
use crate::error::{Close, Side};
use crate::framing::ToBackend;
use crate::recording::{Dir, Kind, Recorder};
use crate::ws::{
    encode_frame, CloseCode, Decoder, DecoderLimits, DeflateParams, Frame, Inflater, OpCode,
};

/// Why upstream stopped decoding.
enum UpStop {
    ClientClose(Option<CloseCode>),
    Fail(Close),
}

pub(super) struct Upstream<'s, R, W> {
    client: R,
    backend: W,
    shared: &'s Shared,
    out: ToBackend,
    route: &'s Route,
    traffic: &'s Traffic,
    /// The backend's write side has been shut.
    backend_shut: bool,
    /// Bytes were written to the backend and not flushed since.
    unflushed: bool,
    control: ControlRate,
    /// Where the bytes for the backend are recorded, if the route records sessions.
    rec: Option<&'s Recorder>,
    /// permessage-deflate, when negotiated.
    deflate: Option<DeflateParams>,
}

/// A token bucket for the control frames (Ping, Pong) a client sends: `per_second` of them a
/// second, and as many in one burst. Answering Pings costs the gateway a write each; past the
/// rate the session is closed with 1008, so a ping flood cannot keep a core busy.
struct ControlRate {
    per_second: u64,
    /// Thousandths of a frame, refilled by `per_second` every millisecond.
    tokens: u64,
    last_ms: u64,
}

impl ControlRate {
    /// One frame costs this many tokens.
    const FRAME: u64 = 1000;

    fn new(per_second: u32) -> ControlRate {
        let per_second = u64::from(per_second);
        ControlRate {
            per_second,
            tokens: per_second * Self::FRAME,
            last_ms: 0,
        }
    }

    /// May one more control frame arrive at `now_ms`?
    fn allow(&mut self, now_ms: u64) -> bool {
        let refill = now_ms
            .saturating_sub(self.last_ms)
            .saturating_mul(self.per_second);
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = self
            .tokens
            .saturating_add(refill)
            .min(self.per_second * Self::FRAME);
        match self.tokens.checked_sub(Self::FRAME) {
            Some(left) => {
                self.tokens = left;
                true
            }
            None => false,
        }
    }
}

impl<'s, R, W> Upstream<'s, R, W>
where
    R: ReadBytes,
    W: AsyncWrite + Unpin,
{
    pub(super) fn new(
        client: R,
        backend: W,
        shared: &'s Shared,
        out: ToBackend,
        route: &'s Route,
        traffic: &'s Traffic,
        extras: Extras<'s>,
    ) -> Self {
        let Extras { rec, deflate } = extras;
        Upstream {
            client,
            backend,
            shared,
            out,
            route,
            traffic,
            backend_shut: false,
            unflushed: false,
            control: ControlRate::new(route.limits.control_frames_per_second),
            rec,
            deflate,
        }
    }

    /// `preread`: the client's first bytes, taken over as the first read buffer.
    pub(super) async fn run(&mut self, preread: &mut Vec<u8>) {
        self.pump(preread).await;
        // Whatever ended the session, the backend sees an orderly FIN.
        self.shut_backend().await;
        self.shared.tell_down(|c| c.up_done = true);
    }

    /// Shut the backend's write side (FIN), once.
    async fn shut_backend(&mut self) {
        if !self.backend_shut {
            self.backend_shut = true;
            let _ = tokio::time::timeout(self.route.limits.close_timeout, self.backend.shutdown())
                .await;
        }
    }

    async fn pump(&mut self, preread: &mut Vec<u8>) {
        let limits = &self.route.limits;
        let mut decoder = Decoder::new(DecoderLimits {
            max_frame_size: limits.max_frame_size,
            max_message_size: limits.max_message_size,
            max_fragments: limits.max_fragments,
        })
        .with_compression(self.deflate.is_some());
        // Inflated sizes are held to the same limits as plain ones.
        // Boxed: a session without compression keeps a pointer, not an inflater's size.
        let mut inflater = self.deflate.map(|p| {
            Box::new(Inflater::new(
                &p,
                limits.max_message_size,
                limits.max_frame_size,
            ))
        });
        let mut rbuf = spare::Recycled(first_read_buffer(std::mem::take(preread)));
        let mut forward = true;
        let release = tokio::time::sleep(BUFFER_RELEASE);
        tokio::pin!(release);
        let shared = self.shared;
        let mut wake = Told {
            release: Release::new(Some(release)),
            gate: Gate::new(),
            shared,
        };
        // When the bytes of this batch were read (milliseconds since the start): one clock read
        // serves both the liveness and the activity clocks.
        let mut read_at = None;
        loop {
            let mut stop = None;
            // Data or a Ping in this batch: the session is not idle (Pongs do not count). The
            // clock is read once per batch, not per frame.
            let mut active = false;
            loop {
                let frame = match decoder.decode(&mut rbuf) {
                    Ok(None) => break,
                    Ok(Some(frame)) => frame,
                    Err(e) => {
                        stop = Some(UpStop::Fail(Close::new(e.code, e.reason, Side::Client)));
                        break;
                    }
                };
                match frame {
                    Frame::Data {
                        payload,
                        text,
                        first,
                        last,
                    } => {
                        if last {
                            self.traffic.add_message();
                        }
                        active = true;
                        if !forward {
                            continue;
                        }
                        if let Some(inf) =
                            inflater.as_mut().filter(|_| decoder.message_compressed())
                        {
                            let piece = Piece {
                                payload,
                                text,
                                first,
                                last,
                                new_frame: decoder.piece_starts_frame(),
                            };
                            // Boxed, like every rare wait of this loop: the session's future
                            // is as large as its largest wait.
                            let step = self.forward_compressed(inf, piece, &mut forward, &mut wake);
                            match Box::pin(step).await {
                                Ok(true) => continue,
                                Ok(false) => return,
                                Err(close) => {
                                    stop = Some(UpStop::Fail(close));
                                    break;
                                }
                            }
                        }
                        self.traffic.add_bytes(payload.len());
                        // A large raw piece with nothing waiting before it goes to the backend
                        // straight from the read buffer; only what the socket does not take now
                        // is copied (a failed write queues it all: the flush meets the error).
                        let mut rest = payload;
                        if self.out.streamed()
                            && payload.len() >= DIRECT_WRITE_BYTES
                            && self.out.ready().is_empty()
                        {
                            if let Poll::Ready(Ok(n)) = write_now(&mut self.backend, payload).await
                            {
                                rest = &payload[n.min(payload.len())..];
                                self.unflushed |= n > 0;
                            }
                        }
                        if let Err(close) = push_piece(&mut self.out, rest, text, first, last) {
                            stop = Some(UpStop::Fail(close));
                            break;
                        }
                        if let Some(rec) = self.rec {
                            record_piece(rec, &self.out, payload, text, last);
                        }
                        if self.out.ready().len() >= FLUSH_THRESHOLD_BYTES
                            && !self.flush(&mut forward, &mut wake).await
                        {
                            return;
                        }
                    }
                    Frame::Ping(_) | Frame::Pong(_) if !self.control.allow(shared.now_ms()) => {
                        stop = Some(UpStop::Fail(Close::TOO_MANY_CONTROL_FRAMES));
                        break;
                    }
                    Frame::Ping(payload) => {
                        active = true;
                        self.shared.tell_down(|c| {
                            if c.pongs.len() + payload.len() + 2 > MAX_PENDING_PONG_BYTES {
                                c.pongs.clear();
                            }
                            encode_frame(&mut c.pongs, OpCode::Pong, payload);
                        })
                    }
                    Frame::Pong(_) => {}
                    Frame::Close(frame) => {
                        stop = Some(UpStop::ClientClose(frame.map(|f| f.code)));
                        break;
                    }
                }
            }
            if active {
                let now = read_at.take().unwrap_or_else(|| shared.now_ms());
                self.shared.touch_at(now);
            }
            if forward && !self.out.ready().is_empty() && !self.flush(&mut forward, &mut wake).await
            {
                return;
            }
            match stop {
                Some(UpStop::ClientClose(code)) => {
                    // Client Close -> backend write side shut; downstream delivers what is left.
                    if forward {
                        self.shut_backend().await;
                    }
                    self.shared.tell_down(|c| c.client_close = Some(code));
                    return;
                }
                Some(UpStop::Fail(close)) => {
                    self.shared.tell_down(|c| c.fail = Some(close));
                    self.shut_backend().await;
                    Box::pin(self.discard_until_eof(&mut rbuf, &mut wake)).await;
                    return;
                }
                None => {}
            }
            // Downstream's word and the release timer first (polled only once one of them
            // fired): a client that always has data ready never keeps upstream from seeing
            // `stop_up`.
            let read = std::future::poll_fn(|cx| {
                if wake.poll(cx, true).is_ready() {
                    return Poll::Ready(None);
                }
                poll_read_more(&mut self.client, cx, &mut rbuf).map(Some)
            })
            .await;
            match read {
                None => {
                    let idle_tick = || {
                        inflater
                            .as_mut()
                            .filter(|_| !decoder.in_message())
                            .is_some_and(|inf| inf.idle_tick())
                    };
                    if wake.release.tick(&mut rbuf, idle_tick) {
                        wake.gate.open();
                    }
                    if shared.lock().stop_up {
                        return;
                    }
                }
                Some(Ok(n)) if n > 0 => {
                    if wake.release.woke() {
                        wake.gate.open();
                    }
                    let now = shared.now_ms();
                    self.shared.client_read_at(now);
                    read_at = Some(now);
                }
                // EOF or error without a Close: the client is gone (1006 on its side).
                Some(_) => {
                    self.shared.tell_down(|c| c.client_gone = true);
                    return;
                }
            }
        }
    }

    /// Write the ready bytes to the backend. Returns false when upstream must stop. A backend
    /// that stops reading stalls us here (backpressure); `stop_up` still ends the wait.
    async fn flush(&mut self, forward: &mut bool, wake: &mut Told<'_, 's>) -> bool {
        // The bytes are written, then flushed: a TLS backend connection may hold written bytes
        // in its own buffer until then (a no-op for TCP and unix sockets). The flush reports 1
        // byte so that the handling below is the same.
        while !self.out.ready().is_empty() || self.unflushed {
            let flushing = self.out.ready().is_empty();
            // Tried first without a timer: when the write completes at once (the common case),
            // no clock is read and no timer or wake-up is registered.
            let now = if flushing {
                flush_now(&mut self.backend).await.map(|r| r.map(|()| 1))
            } else {
                write_now(&mut self.backend, self.out.ready()).await
            };
            let r = match now {
                Poll::Ready(r) => r,
                // The backend's socket is full: the wait, with its timer, is allocated only now.
                Poll::Pending => match Box::pin(self.wait_for_backend(flushing, wake)).await {
                    Waited::Done(r) => r,
                    Waited::Stalled => {
                        self.backend_failed(forward, Close::BACKEND_STALLED);
                        return true;
                    }
                    Waited::Told => {
                        if self.shared.lock().stop_up {
                            return false;
                        }
                        continue;
                    }
                },
            };
            match r {
                Ok(_) if flushing => self.unflushed = false,
                Ok(n) if n > 0 => {
                    self.out.consume(n);
                    self.unflushed = true;
                }
                _ => {
                    self.backend_failed(forward, Close::BACKEND_ERROR);
                    return true;
                }
            }
        }
        true
    }

    /// Wait until the backend takes the write (or flush) `flush` tried, at most `write_timeout`,
    /// or until downstream has a word.
    async fn wait_for_backend(&mut self, flushing: bool, wake: &mut Told<'_, 's>) -> Waited {
        let stalled = tokio::time::sleep(self.route.limits.write_timeout);
        tokio::select! {
            biased;
            // `write` and `flush` are cancel-safe: if another branch wins, nothing was written.
            r = write_or_flush(&mut self.backend, self.out.ready(), flushing) => Waited::Done(r),
            _ = stalled => Waited::Stalled,
            () = std::future::poll_fn(|cx| wake.poll(cx, false)) => Waited::Told,
        }
    }

    /// Inflate one piece of a compressed message and forward it, [`INFLATE_CHUNK_BYTES`] at a
    /// time, writing to the backend whenever enough is ready (so a large message never sits
    /// inflated in memory, and a slow backend slows the inflating). `Ok(false)`: upstream must
    /// stop; `Err`: the client broke a rule (1007, 1008, 1009) or the framing refused.
    ///
    /// [`INFLATE_CHUNK_BYTES`]: crate::ws::deflate::INFLATE_CHUNK_BYTES
    async fn forward_compressed(
        &mut self,
        inf: &mut Inflater,
        piece: Piece<'_>,
        forward: &mut bool,
        wake: &mut Told<'_, 's>,
    ) -> Result<bool, Close> {
        if piece.first {
            inf.begin(piece.text);
            self.out.begin(piece.text)?;
        }
        if piece.new_frame {
            inf.begin_frame();
        }
        let mut input = piece.payload;
        loop {
            let step = inf
                .step(input, piece.last)
                .map_err(|e| Close::new(e.code, e.reason, Side::Client))?;
            input = &input[step.consumed.min(input.len())..];
            self.traffic.add_bytes(step.output.len());
            self.out.push(step.output)?;
            let rec = self.rec;
            if let Some(rec) = rec.filter(|_| self.out.streamed() && !step.output.is_empty()) {
                record_piece(rec, &self.out, step.output, piece.text, false);
            }
            if step.done {
                if piece.last {
                    self.out.end();
                    if let Some(rec) = rec.filter(|_| !self.out.streamed()) {
                        record_piece(rec, &self.out, &[], piece.text, true);
                    }
                }
                return Ok(true);
            }
            if self.out.ready().len() >= FLUSH_THRESHOLD_BYTES {
                if !self.flush(forward, wake).await {
                    return Ok(false);
                }
                if !*forward {
                    // The backend failed: nothing more of this session is forwarded.
                    return Ok(true);
                }
            }
        }
    }

    /// Stop forwarding: the backend cannot take more. Downstream ends the session with `close`.
    fn backend_failed(&mut self, forward: &mut bool, close: Close) {
        *forward = false;
        self.out.discard();
        self.shared
            .tell_down(|c| c.backend_write_failed = Some(close));
    }

    /// After a protocol error: read and drop whatever the client still sends until it closes,
    /// the close deadline passes, or downstream says stop, so that our close is not turned into
    /// a reset by unread data. `buf` (the read buffer, whose content no longer matters) is reused
    /// for the discarded bytes.
    async fn discard_until_eof(&mut self, buf: &mut BytesMut, wake: &mut Told<'_, 's>) {
        let deadline = tokio::time::Instant::now() + self.route.limits.close_timeout;
        loop {
            buf.clear();
            if buf.capacity() < DISCARD_CHUNK_BYTES {
                buf.reserve(DISCARD_CHUNK_BYTES);
            }
            tokio::select! {
                r = read_bytes(&mut self.client, buf) => match r {
                    Ok(n) if n > 0 => {}
                    _ => return,
                },
                _ = tokio::time::sleep_until(deadline) => return,
                () = std::future::poll_fn(|cx| wake.poll(cx, false)) => {
                    if self.shared.lock().stop_up {
                        return;
                    }
                }
            }
        }
    }
}

/// Upstream's control futures: downstream's word ([`Shared::to_up`]) and the idle-buffer release
/// timer, polled only once one of them fired (not on every pass of the data path).
struct Told<'a, 's> {
    release: Release<'a>,
    gate: Gate,
    shared: &'s Shared,
}

impl Told<'_, '_> {
    /// Ready when downstream changed the control block, or, with
    /// `release`, when the release timer fired and waits for its tick (which the caller runs).
    fn poll(&mut self, cx: &mut Context<'_>, release: bool) -> Poll<()> {
        if release && self.release.fired() {
            return Poll::Ready(());
        }
        let (shared, timer) = (self.shared, &mut self.release);
        let told = std::task::ready!(self.gate.poll(cx, |cx| {
            let fired = timer.poll(cx);
            match shared.to_up.poll(cx) {
                Poll::Ready(()) => Poll::Ready(true),
                Poll::Pending if fired => Poll::Ready(false),
                Poll::Pending => Poll::Pending,
            }
        }));
        if told {
            return Poll::Ready(());
        }
        // Only the timer fired: a caller that does not run its tick waits on.
        if release {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// How a wait for the backend's socket ended.
enum Waited {
    /// The write (or flush) completed: as [`Upstream::flush`] handles its result.
    Done(std::io::Result<usize>),
    /// `write_timeout` passed without progress.
    Stalled,
    /// Downstream changed the control block.
    Told,
}

/// A piece of a compressed message, as the decoder handed it out.
struct Piece<'a> {
    payload: &'a [u8],
    text: bool,
    first: bool,
    last: bool,
    /// The piece starts a frame (the inflated frame size is counted from here).
    new_frame: bool,
}

/// The bytes read before the session started, as its first read buffer: the allocation is taken
/// over (no copy), and none is held when there were none.
fn first_read_buffer(preread: Vec<u8>) -> BytesMut {
    BytesMut::from(bytes::Bytes::from(preread))
}

fn push_piece(
    out: &mut ToBackend,
    payload: &[u8],
    text: bool,
    first: bool,
    last: bool,
) -> Result<(), Close> {
    if first {
        out.begin(text)?;
    }
    out.push(payload)?;
    if last {
        out.end();
    }
    Ok(())
}

/// Record what this piece adds to the backend stream: the piece itself on a raw route (bytes
/// are streamed as they come), the whole message once it is complete otherwise.
fn record_piece(rec: &Recorder, out: &ToBackend, payload: &[u8], text: bool, last: bool) {
    let kind = if text { Kind::Text } else { Kind::Binary };
    if out.streamed() {
        rec.record(Dir::In, kind, payload);
    } else if last {
        rec.record(Dir::In, kind, out.last_message());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preread_buffer_is_taken_over_and_none_is_held_without_it() {
        let preread = b"\x82\x80abcd".to_vec();
        let at = preread.as_ptr();
        let buf = first_read_buffer(preread);
        assert_eq!((buf.as_ptr(), &buf[..]), (at, &b"\x82\x80abcd"[..]));
        assert_eq!(first_read_buffer(Vec::new()).capacity(), 0);
    }

    #[test]
    fn control_rate_allows_a_burst_then_the_rate() {
        let mut c = ControlRate::new(10);
        // A full bucket: ten at once.
        assert!((0..10).all(|_| c.allow(0)));
        assert!(!c.allow(0));
        // One frame's worth comes back every 100 ms.
        assert!(!c.allow(99));
        assert!(c.allow(100));
        assert!(!c.allow(150));
        // A quiet second refills the bucket, never beyond one burst.
        assert!((0..10).all(|_| c.allow(10_000)));
        assert!(!c.allow(10_000));
        // A clock that goes backwards adds nothing.
        assert!(!c.allow(5_000));
    }
}
