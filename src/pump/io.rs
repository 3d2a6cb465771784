//! I/O helpers of the session: reading without holding a buffer while idle, and the queue of
//! frames on their way to the client.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{BUFFER_RELEASE, DIRECT_WRITE_BYTES, FLUSH_THRESHOLD_BYTES, READ_CHUNK_BYTES};
use crate::ws;

/// A reader the pump reads through: into a `BytesMut`'s spare capacity, without tokio's
/// `ReadBuf` where the transport can (the session threads' sockets read with one `recv`).
pub trait ReadBytes: AsyncRead + Unpin {
    /// Read into `buf`'s spare capacity (appended): how many bytes came, 0 at the end of the
    /// stream. The pump reads through this; a transport may read without tokio's `ReadBuf`.
    fn poll_read_bytes(
        &mut self,
        cx: &mut std::task::Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        tokio_util::io::poll_read_buf(Pin::new(self), cx, buf)
    }
}

/// Read once into `buf` (see [`ReadBytes::poll_read_bytes`]).
pub(super) async fn read_bytes<R: ReadBytes>(r: &mut R, buf: &mut BytesMut) -> io::Result<usize> {
    std::future::poll_fn(|cx| r.poll_read_bytes(cx, buf)).await
}

impl<T: ReadBytes + ?Sized> ReadBytes for &mut T {
    #[inline]
    fn poll_read_bytes(
        &mut self,
        cx: &mut std::task::Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        (**self).poll_read_bytes(cx, buf)
    }
}

impl ReadBytes for tokio::net::tcp::OwnedReadHalf {}

impl ReadBytes for crate::backend::BackendReader {}

impl<T: AsyncRead + Send> ReadBytes for tokio::io::ReadHalf<T> {}

/// Read more bytes into `buf`. A half holds a read buffer only while bytes it read wait in it
/// or it is reading: when a read finds nothing and nothing waits in the buffer, the buffer goes
/// back to the thread's spare slot ([`spare`]), and the next read on the thread takes the buffer
/// given back last, whose first lines are still in the CPU's cache. So idle sessions hold no
/// read buffers, and a thread with a thousand busy sessions reads into one warm buffer instead
/// of two thousand cold ones. No state of its own between polls (usable in `select!` as a
/// `poll_fn`).
// Always inlined: once per message each way, and its moves of the buffer fold into the caller's.
#[inline(always)]
pub(super) fn poll_read_more<R: ReadBytes>(
    r: &mut R,
    cx: &mut std::task::Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    if buf.capacity() == 0 {
        *buf = spare::take();
    }
    if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 4 {
        buf.reserve(READ_CHUNK_BYTES);
    }
    let read = r.poll_read_bytes(cx, buf);
    if read.is_pending() && buf.is_empty() {
        spare::give(std::mem::take(buf));
    }
    read
}

/// The read buffer of this thread that no session holds: the one given back last.
///
/// A session thread polls its sessions one at a time, and a half gives its buffer back as soon
/// as a read finds nothing more, so with small messages one buffer serves every session of the
/// thread in turn; a half that keeps bytes (part of a frame) keeps its buffer, and one given
/// back while the slot is taken is freed.
pub(super) mod spare {
    use std::cell::Cell;

    use bytes::BytesMut;

    use super::READ_CHUNK_BYTES;

    thread_local! {
        static SPARE: Cell<Option<BytesMut>> = const { Cell::new(None) };
    }

    /// A read buffer with room for a whole read: the spare, or a new one.
    #[inline(always)]
    pub(crate) fn take() -> BytesMut {
        SPARE
            .with(Cell::take)
            .unwrap_or_else(|| BytesMut::with_capacity(READ_CHUNK_BYTES))
    }

    /// Keep `buf` (empty) for the next [`take`] on this thread if it is [`whole`]; the spare it
    /// replaces, if any, is freed.
    /// (The reader reserves room again before it reads: a buffer whose allocation is still
    /// shared gets a new one then.)
    #[inline(always)]
    pub(crate) fn give(buf: BytesMut) {
        debug_assert!(buf.is_empty());
        if whole(&buf) {
            SPARE.with(|spare| spare.set(Some(buf)));
        }
    }

    /// A buffer worth keeping as the spare: room for a whole read, not the small first buffer a
    /// session may start with.
    #[inline(always)]
    fn whole(buf: &BytesMut) -> bool {
        buf.capacity() >= READ_CHUNK_BYTES / 4
    }

    /// A half's read buffer, which goes to the thread's spare when the half ends (if it is
    /// empty and there is no spare yet) instead of being freed: a session that ends leaves its
    /// buffer to the next one. (Freeing a 64 KiB block also makes glibc's allocator consolidate
    /// its free lists, which a session that only opens and closes paid for every time.)
    pub(crate) struct Recycled(pub(crate) BytesMut);

    impl Drop for Recycled {
        fn drop(&mut self) {
            if self.0.is_empty() && whole(&self.0) {
                let buf = std::mem::take(&mut self.0);
                SPARE.with(|spare| {
                    let kept = spare.take();
                    spare.set(Some(kept.unwrap_or(buf)));
                });
            }
        }
    }

    impl std::ops::Deref for Recycled {
        type Target = BytesMut;
        fn deref(&self) -> &BytesMut {
            &self.0
        }
    }

    impl std::ops::DerefMut for Recycled {
        fn deref_mut(&mut self) -> &mut BytesMut {
            &mut self.0
        }
    }

    /// Whether this thread keeps a spare (for tests).
    #[cfg(test)]
    pub(crate) fn kept() -> bool {
        SPARE.with(|spare| {
            let kept = spare.take();
            let is = kept.is_some();
            spare.set(kept);
            is
        })
    }
}

/// A half's idle-buffer release timer: it ticks every [`BUFFER_RELEASE`] while the half holds
/// something to free (its read buffer, a compression context), and each tick frees an empty
/// read buffer. It is re-armed only when it fires or when an idle half takes a buffer again,
/// never per message; an idle half that holds nothing waits with no timer at all.
///
/// Upstream gives it a timer of its own, polled with upstream's other control futures behind
/// their [`Gate`](super::gate::Gate) ([`Release::poll`]): a read that waits does not poll (and
/// re-register) the timer every time. Downstream has one timer for all its deadlines, and this
/// is one of them ([`Release::due`], [`Release::expire`]).
pub(super) struct Release<'a> {
    sleep: Option<Pin<&'a mut tokio::time::Sleep>>,
    /// When it fires next, while it runs.
    due: Option<tokio::time::Instant>,
    /// It fired and [`Release::tick`] has not run since.
    fired: bool,
}

impl<'a> Release<'a> {
    /// Running from now; `sleep`, if given, is its timer (set to fire then).
    pub(super) fn new(sleep: Option<Pin<&'a mut tokio::time::Sleep>>) -> Release<'a> {
        let mut release = Release {
            sleep,
            due: None,
            fired: false,
        };
        release.arm();
        release
    }

    /// Poll its own timer (from the gate's poll); whether it fired and waits for its tick.
    pub(super) fn poll(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        if let (Some(sleep), Some(_)) = (&mut self.sleep, self.due) {
            if sleep.as_mut().poll(cx).is_ready() {
                self.due = None;
                self.fired = true;
            }
        }
        self.fired
    }

    /// When it fires next, if it runs (for a half that times it itself).
    pub(super) fn due(&self) -> Option<tokio::time::Instant> {
        self.due
    }

    /// For a half that times it itself: it fires if it was due by `now`; whether it fired and
    /// waits for its tick.
    pub(super) fn expire(&mut self, now: tokio::time::Instant) -> bool {
        if self.due.is_some_and(|due| due <= now) {
            self.due = None;
            self.fired = true;
        }
        self.fired
    }

    /// It fired and waits for [`Release::tick`].
    pub(super) fn fired(&self) -> bool {
        self.fired
    }

    /// After it fired: free `buf` if it is empty (then `on_release` frees the half's other idle
    /// state and says whether it still holds some), and run again while something is held.
    /// `true`: the timer was re-armed (a caller whose gate polls it opens the gate).
    pub(super) fn tick(&mut self, buf: &mut BytesMut, on_release: impl FnOnce() -> bool) -> bool {
        if !std::mem::take(&mut self.fired) {
            return false;
        }
        let mut holding = buf.capacity() > 0;
        if buf.is_empty() {
            *buf = BytesMut::new();
            holding = on_release();
        }
        holding && self.arm()
    }

    /// The half took a read buffer: the timer runs if it did not. `true`: it was re-armed (a
    /// caller whose gate polls it opens the gate).
    pub(super) fn woke(&mut self) -> bool {
        !self.fired && self.arm()
    }

    fn arm(&mut self) -> bool {
        if self.due.is_some() {
            return false;
        }
        let at = tokio::time::Instant::now() + BUFFER_RELEASE;
        if let Some(sleep) = &mut self.sleep {
            sleep.as_mut().reset(at);
        }
        self.due = Some(at);
        true
    }
}

/// Try one flush without waiting: `Pending` when the transport still holds bytes the socket has
/// no room for now (the task's waker is then registered).
pub(super) async fn flush_now<W: AsyncWrite + Unpin>(w: &mut W) -> Poll<io::Result<()>> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *w).poll_flush(cx))).await
}

/// Write `buf` (returning how much was taken), or with `flushing`, flush (returning 1).
pub(super) async fn write_or_flush<W: AsyncWrite + Unpin>(
    w: &mut W,
    buf: &[u8],
    flushing: bool,
) -> io::Result<usize> {
    use tokio::io::AsyncWriteExt;
    if flushing {
        w.flush().await.map(|()| 1)
    } else {
        w.write(buf).await
    }
}

/// Try one write without waiting: `Pending` when the socket has no room now (the task's waker is
/// then registered, and the caller waits with a deadline).
pub(super) async fn write_now<W: AsyncWrite + Unpin>(
    w: &mut W,
    buf: &[u8],
) -> Poll<io::Result<usize>> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *w).poll_write(cx, buf))).await
}

/// Frames on their way to the client: the queue downstream writes from.
///
/// Frames are appended whole and written as far as the socket takes them. The buffer is only
/// ever cut at frame boundaries, so that a Close can be put right behind the frame in progress
/// (dropping the frames not yet started) without corrupting the stream.
#[derive(Default)]
pub(super) struct Output {
    pub(super) buf: BytesMut,
    /// Bytes at the front of `buf` already written.
    pub(super) written: usize,
    /// Bytes at the front of `buf` that finish a frame whose start was already written and
    /// dropped (see [`Output::compact`]); frame boundaries are counted from here.
    pub(super) partial: usize,
    /// Everything in `buf` was written; the transport (TLS) may still hold some of it.
    pub(super) unflushed: bool,
    /// When the current write started waiting for the client without progress.
    pub(super) stalled_since: Option<tokio::time::Instant>,
}

impl Output {
    /// Bytes queued and not yet written.
    pub(super) fn pending(&self) -> usize {
        self.buf.len() - self.written
    }

    /// Something is left to write or flush.
    pub(super) fn busy(&self) -> bool {
        self.pending() > 0 || self.unflushed
    }

    /// One step of output: write what is pending, or flush once everything is written.
    pub(super) fn poll_step<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        w: &mut W,
    ) -> Poll<io::Result<()>> {
        if self.pending() > 0 {
            let n = std::task::ready!(Pin::new(&mut *w).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        } else if self.unflushed {
            std::task::ready!(Pin::new(&mut *w).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, n: usize) {
        self.written += n;
        self.unflushed = true;
        if self.written == self.buf.len() {
            self.buf.clear();
            self.written = 0;
            self.partial = 0;
            self.stalled_since = None;
        } else {
            // Progress, but the socket is full: the stall clock restarts now.
            self.stalled_since = Some(tokio::time::Instant::now());
            if self.written >= FLUSH_THRESHOLD_BYTES {
                self.compact();
            }
        }
    }

    /// Queue one frame. When nothing waits before it and its payload is large, it is written
    /// straight from `payload` (its header and payload in one vectored write): only what the
    /// socket does not take now is copied into the queue. A write that fails or finds no room
    /// queues the whole frame (the next write meets the same error, or waits).
    pub(super) fn push_frame<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        w: &mut W,
        opcode: ws::OpCode,
        payload: &[u8],
    ) {
        if payload.len() < DIRECT_WRITE_BYTES || self.pending() > 0 || !w.is_write_vectored() {
            ws::encode_frame(&mut self.buf, opcode, payload);
            return;
        }
        let mut header = [0u8; ws::MAX_SERVER_HEADER_BYTES];
        let h = ws::encode_header(true, opcode, payload.len() as u64, &mut header);
        let total = h + payload.len();
        let parts = [io::IoSlice::new(&header[..h]), io::IoSlice::new(payload)];
        let written = match Pin::new(&mut *w).poll_write_vectored(cx, &parts) {
            Poll::Ready(Ok(n)) => n.min(total),
            Poll::Ready(Err(_)) | Poll::Pending => 0,
        };
        if written > 0 {
            self.unflushed = true;
        }
        if written == total {
            return;
        }
        // Nothing was pending, so the queue is empty: the rest of this frame goes first.
        if written < h {
            self.buf.reserve(total - written);
            self.buf.extend_from_slice(&header[written..h]);
            self.buf.extend_from_slice(payload);
        } else {
            self.buf.extend_from_slice(&payload[written - h..]);
        }
        if written > 0 {
            // The frame's start is out: its rest is a frame in progress (kept whole by
            // `drop_unstarted`), and the socket is full, so the stall clock starts.
            self.partial = total - written;
            self.stalled_since = Some(tokio::time::Instant::now());
        }
    }

    /// Where the frame that holds byte `at` ends (or `at` itself, when a frame starts there).
    fn frame_end(&self, at: usize) -> usize {
        let mut pos = self.partial;
        while pos < at {
            match ws::frame::server_frame_len(&self.buf[pos..]) {
                Some(len) => pos += len,
                // Never happens: only whole frames are queued. Keep everything.
                None => return self.buf.len(),
            }
        }
        pos
    }

    /// Drop the written bytes, so that a client that never lets the queue run empty does not
    /// make it grow. Runs at most once per [`FLUSH_THRESHOLD_BYTES`] written.
    fn compact(&mut self) {
        let end = self.frame_end(self.written);
        self.partial = end - self.written;
        self.buf.advance(self.written);
        self.written = 0;
    }

    /// Drop the frames not yet started; the frame in progress is kept whole.
    pub(super) fn drop_unstarted(&mut self) {
        let end = self.frame_end(self.written);
        self.buf.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::{encode_frame, OpCode};

    fn frames(sizes: &[usize]) -> Output {
        let mut out = Output::default();
        for (i, &n) in sizes.iter().enumerate() {
            encode_frame(
                &mut out.buf,
                OpCode::Binary,
                &vec![u8::try_from(i).unwrap(); n],
            );
        }
        out
    }

    async fn poll_release(r: &mut Release<'_>) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(r.poll(cx))).await
    }

    #[tokio::test(start_paused = true)]
    async fn the_release_timer_frees_idle_buffers_and_stops_when_nothing_is_held() {
        let sleep = tokio::time::sleep(BUFFER_RELEASE);
        tokio::pin!(sleep);
        let mut release = Release::new(Some(sleep));
        let mut buf = BytesMut::with_capacity(1024);
        assert!(!poll_release(&mut release).await);
        tokio::time::advance(BUFFER_RELEASE).await;
        assert!(poll_release(&mut release).await);
        // The tick frees the empty buffer; nothing else is held, so the timer stops.
        assert!(!release.tick(&mut buf, || false));
        assert_eq!(buf.capacity(), 0);
        assert!(!release.fired());
        tokio::time::advance(BUFFER_RELEASE * 3).await;
        assert!(!poll_release(&mut release).await);
        // A buffer taken again starts it, once.
        buf.reserve(10);
        assert!(release.woke());
        assert!(!release.woke());
        // Bytes of a frame not yet whole are kept, and the timer runs on.
        buf.extend_from_slice(b"partial");
        tokio::time::advance(BUFFER_RELEASE).await;
        assert!(poll_release(&mut release).await);
        assert!(release.tick(&mut buf, || unreachable!("the buffer is not empty")));
        assert_eq!(&buf[..], b"partial");
        // Other idle state still held (a compression context): it ticks on without a buffer.
        buf.clear();
        tokio::time::advance(BUFFER_RELEASE).await;
        assert!(poll_release(&mut release).await);
        assert!(release.tick(&mut buf, || true));
        assert_eq!(buf.capacity(), 0);
        // A tick that did not fire does nothing.
        assert!(!release.tick(&mut buf, || unreachable!("not fired")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_timed_by_its_half_fires_when_due() {
        let start = tokio::time::Instant::now();
        let mut release = Release::new(None);
        assert_eq!(release.due(), Some(start + BUFFER_RELEASE));
        assert!(!release.expire(start + BUFFER_RELEASE / 2));
        assert!(release.expire(start + BUFFER_RELEASE));
        assert_eq!(release.due(), None);
        let mut buf = BytesMut::with_capacity(64);
        assert!(!release.tick(&mut buf, || false));
        assert_eq!((buf.capacity(), release.due()), (0, None));
        // A buffer taken again: due one period later.
        tokio::time::advance(BUFFER_RELEASE * 5).await;
        assert!(release.woke());
        assert_eq!(release.due(), Some(start + BUFFER_RELEASE * 6));
    }

    /// A socket that takes at most `room` more bytes (none: it would block).
    struct Socket {
        room: usize,
        got: Vec<u8>,
    }

    impl Socket {
        fn with_room(room: usize) -> Socket {
            Socket {
                room,
                got: Vec::new(),
            }
        }
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(_cx, &[io::IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            if this.room == 0 {
                return Poll::Pending;
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(this.room - n);
                this.got.extend_from_slice(&b[..take]);
                n += take;
            }
            this.room -= n;
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn push(out: &mut Output, socket: &mut Socket, payload: &[u8]) {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        out.push_frame(&mut cx, socket, OpCode::Binary, payload);
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        encode_frame(&mut b, OpCode::Binary, payload);
        b.to_vec()
    }

    #[test]
    fn an_emptied_read_buffer_is_the_next_one_taken_and_a_small_one_is_not_kept() {
        // Its own thread: the spare is per thread.
        std::thread::spawn(|| {
            let mut first = spare::take();
            assert!(first.capacity() >= READ_CHUNK_BYTES);
            first.extend_from_slice(b"read and passed on");
            let at = first.as_ptr();
            first.clear();
            spare::give(first);
            assert!(spare::kept());
            let again = spare::take();
            assert_eq!((again.as_ptr(), again.len()), (at, 0));
            assert!(!spare::kept());
            // A small buffer (a session's first bytes, taken over) is not kept.
            spare::give(BytesMut::with_capacity(100));
            assert!(!spare::kept());
            // The one given back last is the one kept.
            spare::give(again);
            let last = BytesMut::with_capacity(READ_CHUNK_BYTES);
            let at = last.as_ptr();
            spare::give(last);
            assert_eq!(spare::take().as_ptr(), at);
        })
        .join()
        .expect("spares");
    }

    #[test]
    fn an_ending_half_leaves_its_empty_buffer_to_the_next_session() {
        std::thread::spawn(|| {
            let buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
            let at = buf.as_ptr();
            drop(spare::Recycled(buf));
            assert!(spare::kept());
            // A spare already kept stays.
            drop(spare::Recycled(BytesMut::with_capacity(READ_CHUNK_BYTES)));
            assert_eq!(spare::take().as_ptr(), at);
            // A buffer with bytes left, or a small one, is freed.
            let mut full = BytesMut::with_capacity(READ_CHUNK_BYTES);
            full.extend_from_slice(b"unread");
            drop(spare::Recycled(full));
            drop(spare::Recycled(BytesMut::with_capacity(100)));
            assert!(!spare::kept());
        })
        .join()
        .expect("recycled");
    }

    #[tokio::test]
    async fn a_read_that_finds_nothing_gives_its_buffer_back() {
        let (a, _b) = tokio::io::duplex(1024);
        let (mut r, _w) = tokio::io::split(a);
        let mut buf = BytesMut::new();
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(poll_read_more(&mut r, &mut cx, &mut buf).is_pending());
        assert_eq!(buf.capacity(), 0);
        // An emptied buffer goes back to the thread when the read waits, too.
        buf = spare::take();
        let at = buf.as_ptr();
        assert!(poll_read_more(&mut r, &mut cx, &mut buf).is_pending());
        assert_eq!(buf.capacity(), 0);
        assert_eq!(spare::take().as_ptr(), at);
        // One holding bytes not passed on yet is kept.
        buf = spare::take();
        buf.extend_from_slice(b"half a frame");
        assert!(poll_read_more(&mut r, &mut cx, &mut buf).is_pending());
        assert_eq!(&buf[..], b"half a frame");
    }

    #[tokio::test]
    async fn a_64_kib_message_and_its_header_come_in_one_read() {
        use tokio::io::AsyncWriteExt;
        let (a, mut b) = tokio::io::duplex(256 * 1024);
        let (mut r, _w) = tokio::io::split(a);
        // A client's masked frame: 14 header bytes (64-bit length, mask key) and 64 KiB.
        let mut frame = vec![0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4];
        frame.extend(std::iter::repeat_n(7u8, 64 * 1024));
        b.write_all(&frame).await.expect("write");
        let mut buf = BytesMut::new();
        let n = std::future::poll_fn(|cx| poll_read_more(&mut r, cx, &mut buf))
            .await
            .expect("read");
        assert_eq!(n, frame.len());
        assert_eq!(&buf[..], &frame[..]);
    }

    #[tokio::test]
    async fn large_frames_go_out_without_a_copy_and_what_is_left_keeps_its_place() {
        let big: Vec<u8> = (0..DIRECT_WRITE_BYTES * 2).map(|i| i as u8).collect();
        let whole = frame(&big);
        // All taken: nothing queued.
        let (mut out, mut socket) = (Output::default(), Socket::with_room(usize::MAX));
        push(&mut out, &mut socket, &big);
        assert_eq!((out.buf.len(), out.unflushed), (0, true));
        assert_eq!(socket.got, whole);
        // Part taken, inside the header and inside the payload: the rest is queued, and it is the
        // frame in progress (a Close would go after it).
        for room in [3, 1000] {
            let (mut out, mut socket) = (Output::default(), Socket::with_room(room));
            push(&mut out, &mut socket, &big);
            push(&mut out, &mut socket, b"next");
            assert_eq!(
                [&socket.got[..], &out.buf[..]].concat(),
                [whole.clone(), frame(b"next")].concat()
            );
            assert!(out.stalled_since.is_some());
            out.drop_unstarted();
            assert_eq!(out.buf.len(), whole.len() - room, "room {room}");
        }
        // No room: the frame is queued whole.
        let (mut out, mut socket) = (Output::default(), Socket::with_room(0));
        push(&mut out, &mut socket, &big);
        assert_eq!((&out.buf[..], out.partial), (&whole[..], 0));
        // Small frames are queued (and written with the next batch).
        let (mut out, mut socket) = (Output::default(), Socket::with_room(usize::MAX));
        push(&mut out, &mut socket, b"small");
        assert_eq!((&out.buf[..], socket.got.len()), (&frame(b"small")[..], 0));
        // Something pending before it: queued behind, in order.
        push(&mut out, &mut socket, &big);
        assert_eq!(out.buf[..], [frame(b"small"), whole].concat()[..]);
        assert!(socket.got.is_empty());
    }

    #[test]
    fn output_keeps_the_frame_in_progress_and_drops_the_rest() {
        // Frames of 2+100, 4+200 and 4+70000 (10-byte header) bytes.
        let mut out = frames(&[100, 200, 70_000]);
        out.written = 150; // inside the second frame
        out.drop_unstarted();
        assert_eq!(out.buf.len(), 102 + 204);
        // On a boundary nothing of the next frame is kept.
        let mut out = frames(&[100, 200]);
        out.written = 102;
        out.drop_unstarted();
        assert_eq!(out.buf.len(), 102);
    }

    #[test]
    fn output_compaction_keeps_frame_boundaries() {
        let mut out = frames(&[70_000, 10, 20]);
        // Write into the middle of the first (large) frame: compaction drops the written bytes.
        out.advance(FLUSH_THRESHOLD_BYTES + 5);
        assert_eq!(out.written, 0);
        let rest_of_first = 70_010 - (FLUSH_THRESHOLD_BYTES + 5);
        assert_eq!(out.partial, rest_of_first);
        assert_eq!(out.buf.len(), rest_of_first + 12 + 22);
        // A Close now still goes after the first frame, not in the middle of it.
        out.advance(10);
        out.drop_unstarted();
        assert_eq!(out.buf.len(), rest_of_first);
        // Everything written: the queue is empty and boundaries start afresh.
        out.advance(rest_of_first - 10);
        assert_eq!((out.buf.len(), out.written, out.partial), (0, 0, 0));
        assert!(out.unflushed);
    }
}
