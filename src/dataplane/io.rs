//! A socket of an epoll session loop: readiness flags set by the loop's epoll events, and the halves
//! the pump reads and writes through (`AsyncRead` / `AsyncWrite` / [`ReadBytes`]), each call
//! one system call at most.
//!
//! Readiness is edge-triggered: a flag is set when the loop sees an event, and cleared when a
//! call finds the socket empty (or full). A read that returns less than it asked for also clears
//! it, because on a stream socket that means the queue was emptied: the next arrival brings a
//! new event (events are handled on the loop's thread, between polls, so none is lost). This
//! saves the failing call that would otherwise end every batch.

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use rustix::net::{RecvFlags, SendFlags, Shutdown};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::pump::ReadBytes;

/// How much one read asks for (the pump's own read size: a 64 KiB message and its frame header
/// in one read).
const READ_BYTES: usize = 65 * 1024;
const _: () = assert!(READ_BYTES >= 64 * 1024 + 14);
/// Room made for a read into a full buffer (as tokio's `read_buf` does).
const MIN_READ_BYTES: usize = 64;

/// One socket (TCP or unix stream) registered with a loop.
pub(crate) struct Source {
    fd: OwnedFd,
    readable: AtomicBool,
    writable: AtomicBool,
    /// The peer closed its side, or the socket failed: readable for good (a read returns the
    /// end of the stream or the error), never cleared again. The end of the stream comes with
    /// no further event once seen, so an empty queue must not hide it.
    read_closed: AtomicBool,
    /// Woken when the socket becomes readable (the half that reads).
    read_waker: Mutex<Option<Waker>>,
    /// Woken when the socket becomes writable (the half that writes).
    write_waker: Mutex<Option<Waker>>,
}

impl Source {
    pub(super) fn new(fd: OwnedFd) -> Source {
        // Readable: told by the event the registration brings when bytes are already queued
        // (epoll reports the state at registration), so that a session that starts idle never
        // allocates a read buffer. Writable: assumed (a fresh connection has room), tried.
        Source {
            fd,
            readable: AtomicBool::new(false),
            writable: AtomicBool::new(true),
            read_closed: AtomicBool::new(false),
            read_waker: Mutex::new(None),
            write_waker: Mutex::new(None),
        }
    }

    /// The loop saw an event for this socket (`read_closed`: the peer's FIN, a hang-up or an
    /// error). Errors and hang-ups wake both sides: their next call reports them.
    #[inline]
    pub(super) fn on_event(&self, readable: bool, writable: bool, read_closed: bool) {
        if read_closed {
            self.read_closed.store(true, Ordering::Release);
        }
        if readable || read_closed {
            self.readable.store(true, Ordering::Release);
            wake(&self.read_waker);
        }
        if writable {
            self.writable.store(true, Ordering::Release);
            wake(&self.write_waker);
        }
    }

    /// The receive queue is empty: wait for the next event, unless the stream has ended (its
    /// end is still to be read, and no event will announce it again).
    #[inline]
    fn not_readable(&self) {
        if !self.read_closed.load(Ordering::Acquire) {
            self.readable.store(false, Ordering::Release);
        }
    }

    /// Split into the two halves a session uses.
    pub(super) fn halves(self: &Arc<Source>) -> (EpollRead, EpollWrite) {
        (
            EpollRead {
                source: self.clone(),
                waker: None,
            },
            EpollWrite {
                source: self.clone(),
                waker: None,
                shut: false,
            },
        )
    }
}

fn wake(slot: &Mutex<Option<Waker>>) {
    // A panic while holding this lock leaves a valid waker (or none).
    if let Some(w) = &*slot.lock().unwrap_or_else(|e| e.into_inner()) {
        w.wake_by_ref();
    }
}

/// Wait for `flag`: `Ready` when it is set, `Pending` (with `cx`'s waker in `slot`) otherwise.
/// The flag is only set by the loop, on this thread, between polls, so registering before or
/// after the load makes no difference. `last` is the half's own copy of the waker it put in
/// `slot`: the slot's lock is taken only when the waker changed (in practice, once).
#[inline]
fn poll_flag(
    flag: &AtomicBool,
    slot: &Mutex<Option<Waker>>,
    last: &mut Option<Waker>,
    cx: &Context<'_>,
) -> Poll<()> {
    if flag.load(Ordering::Acquire) {
        return Poll::Ready(());
    }
    if !last.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        let waker = cx.waker().clone();
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker.clone());
        *last = Some(waker);
    }
    Poll::Pending
}

#[inline]
fn would_block(e: rustix::io::Errno) -> bool {
    e == rustix::io::Errno::WOULDBLOCK || e == rustix::io::Errno::AGAIN
}

/// The read half of a loop socket.
pub(crate) struct EpollRead {
    source: Arc<Source>,
    /// The waker last left in the source's read slot.
    waker: Option<Waker>,
}

/// The write half of a loop socket. Dropping it without a shutdown shuts the write side (like
/// tokio's owned write halves), so the peer sees a FIN, not a silent close.
pub(crate) struct EpollWrite {
    source: Arc<Source>,
    /// The waker last left in the source's write slot.
    waker: Option<Waker>,
    shut: bool,
}

impl EpollRead {
    /// One read: `recv` fills up to `want` bytes through `fill` (which returns how many came).
    /// Readiness is waited for first and cleared by an empty queue (see the module doc).
    #[inline]
    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        want: usize,
        mut fill: impl FnMut(&OwnedFd) -> rustix::io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        let s = &self.source;
        loop {
            std::task::ready!(poll_flag(&s.readable, &s.read_waker, &mut self.waker, cx));
            match fill(&s.fd) {
                Ok(n) => {
                    if n > 0 && n < want {
                        // The queue is empty now (see the module doc).
                        s.not_readable();
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if would_block(e) => s.not_readable(),
                Err(e) if e == rustix::io::Errno::INTR => {}
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }
}

/// For readers other than the pump's (which reads through [`ReadBytes::poll_read_bytes`]):
/// received into the initialised part of the caller's buffer.
impl AsyncRead for EpollRead {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let want = buf.remaining().min(READ_BYTES);
        if want == 0 {
            return Poll::Ready(Ok(()));
        }
        let n = std::task::ready!(self.get_mut().poll_recv(cx, want, |fd| {
            let room = buf.initialize_unfilled_to(want);
            rustix::net::recv(fd, room, RecvFlags::empty()).map(|(n, _)| n)
        }))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// Receive at most `want` bytes straight into the spare capacity of `buf` (appended); how many
/// came.
///
/// The crate's one exception to `unsafe_code = "deny"`: the spare capacity is uninitialised
/// memory; the kernel may write it (rustix takes it as such), but only `unsafe` can then tell
/// the buffer those bytes are there. Without it, every read went through an initialised buffer
/// and a copy: two more copies of each message's bytes (measured with bench/instructions.sh:
/// 283 k against 150 k instructions per 64 KiB message through a session thread).
#[allow(unsafe_code)]
#[inline]
fn recv_into(fd: &OwnedFd, buf: &mut BytesMut, want: usize) -> rustix::io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let len = spare.len().min(want);
    let ((received, _), _) = rustix::net::recv(fd, &mut spare[..len], RecvFlags::empty())?;
    let n = received.len();
    // SAFETY: recv(2) initialised the first `n` bytes of the spare capacity (`received` is that
    // prefix, as rustix returns it), and `n` is at most the spare capacity's length.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

impl ReadBytes for EpollRead {
    #[inline]
    fn poll_read_bytes(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        if buf.capacity() == buf.len() {
            buf.reserve(MIN_READ_BYTES);
        }
        let want = (buf.capacity() - buf.len()).min(READ_BYTES);
        self.poll_recv(cx, want, |fd| recv_into(fd, buf, want))
    }
}

impl EpollWrite {
    /// Send up to `len` bytes with `send` once the socket has room; how many it took.
    #[inline]
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        len: usize,
        mut send: impl FnMut(&OwnedFd) -> rustix::io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        let s = &self.source;
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        loop {
            std::task::ready!(poll_flag(&s.writable, &s.write_waker, &mut self.waker, cx));
            match send(&s.fd) {
                Ok(n) => {
                    if n < len {
                        // The send queue is full: the next event says when there is room.
                        s.writable.store(false, Ordering::Release);
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if would_block(e) => s.writable.store(false, Ordering::Release),
                Err(e) if e == rustix::io::Errno::INTR => {}
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }
}

impl AsyncWrite for EpollWrite {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, buf.len(), |fd| {
            rustix::net::send(fd, buf, SendFlags::NOSIGNAL)
        })
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total = bufs.iter().map(|b| b.len()).sum();
        // writev(2): a peer that is gone gives EPIPE (the process ignores SIGPIPE).
        self.get_mut()
            .poll_send(cx, total, |fd| rustix::io::writev(fd, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shut = true;
        Poll::Ready(rustix::net::shutdown(&self.source.fd, Shutdown::Write).map_err(Into::into))
    }
}

impl Drop for EpollWrite {
    fn drop(&mut self) {
        if !self.shut {
            let _ = rustix::net::shutdown(&self.source.fd, Shutdown::Write);
        }
    }
}
