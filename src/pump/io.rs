//! I/O helpers of the session: reading without holding a buffer while idle, and the queue of
//! frames on their way to the client.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use super::gate::Gate;
use super::{BUFFER_RELEASE, FLUSH_THRESHOLD_BYTES, READ_CHUNK_BYTES};
use crate::ws;

/// A reader that can say when data is there without being handed a buffer, so that an idle
/// session holds no read buffer. Transports without such a signal read into a buffer at once.
pub trait ReadReady: AsyncRead + Unpin {
    /// Resolves when a read would make progress (or fail).
    fn ready(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        std::future::ready(Ok(()))
    }

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

/// Read once into `buf` (see [`ReadReady::poll_read_bytes`]).
pub(super) async fn read_bytes<R: ReadReady>(r: &mut R, buf: &mut BytesMut) -> io::Result<usize> {
    std::future::poll_fn(|cx| r.poll_read_bytes(cx, buf)).await
}

impl ReadReady for tokio::net::tcp::OwnedReadHalf {
    fn ready(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        self.readable()
    }
}

impl ReadReady for crate::backend::BackendReader {
    async fn ready(&mut self) -> io::Result<()> {
        match self {
            crate::backend::BackendReader::Tcp(r) => r.readable().await,
            crate::backend::BackendReader::Unix(r) => r.readable().await,
            // TLS may hold decrypted bytes the socket no longer signals: read into a buffer.
            crate::backend::BackendReader::Tls(_) => Ok(()),
        }
    }
}

impl<T: AsyncRead + Send> ReadReady for tokio::io::ReadHalf<T> {}

/// Read more bytes into `buf`. An empty buffer is freed when `release` fires while waiting, and
/// allocated again when data is there, so idle sessions hold no read buffers. `release` is one
/// long-lived timer per half, re-armed only when it fires (at most once per [`BUFFER_RELEASE`]),
/// never per message. `on_release` runs at each firing while waiting (the half frees its other
/// idle state with it: a compression context) and returns whether it still holds something a
/// later tick may free; the timer keeps ticking while it does, and stops when it does not (an
/// idle session then waits with no timer at all). Cancel-safe (usable in `select!`).
pub(super) async fn read_more<R: ReadReady>(
    r: &mut R,
    buf: &mut BytesMut,
    release: &mut Release<'_>,
    mut on_release: impl FnMut() -> bool,
) -> io::Result<usize> {
    let mut ticking = true;
    while buf.is_empty() && (ticking || buf.capacity() > 0) {
        if buf.capacity() > 0 {
            // A buffer is held (the session is not idle): read into it at once, so the socket's
            // readiness is polled once per read, not once to wait and once more to read.
            if buf.capacity() < READ_CHUNK_BYTES / 4 {
                buf.reserve(READ_CHUNK_BYTES);
            }
            tokio::select! {
                biased;
                read = read_bytes(r, buf) => return read,
                () = std::future::poll_fn(|cx| release.poll(cx)) => {}
            }
        } else {
            tokio::select! {
                biased;
                ready = r.ready() => {
                    ready?;
                    break;
                }
                () = std::future::poll_fn(|cx| release.poll(cx)) => {}
            }
        }
        // The release timer fired.
        *buf = BytesMut::new();
        ticking = on_release();
        release.reset(tokio::time::Instant::now() + BUFFER_RELEASE);
    }
    if buf.capacity() == 0 {
        r.ready().await?;
    }
    if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 4 {
        buf.reserve(READ_CHUNK_BYTES);
    }
    read_bytes(r, buf).await
}

/// A half's idle-buffer release timer ([`read_more`]), polled only after its own waker fired (a
/// [`Gate`]): a read that waits does not poll (and re-register) the timer every time.
pub(super) struct Release<'a> {
    sleep: Pin<&'a mut tokio::time::Sleep>,
    gate: Gate,
}

impl<'a> Release<'a> {
    pub(super) fn new(sleep: Pin<&'a mut tokio::time::Sleep>) -> Release<'a> {
        Release {
            sleep,
            gate: Gate::new(),
        }
    }

    fn poll(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let sleep = &mut self.sleep;
        self.gate.poll(cx, |cx| sleep.as_mut().poll(cx))
    }

    fn reset(&mut self, at: tokio::time::Instant) {
        self.sleep.as_mut().reset(at);
        self.gate.open();
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
