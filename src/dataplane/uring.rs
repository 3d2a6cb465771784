//! Session loops on io_uring: every read and write of a pass goes to the kernel in one system
//! call.
//!
//! On the epoll loop (`super::io`) a 64 B message through the gateway costs four system calls
//! (a `recv` and a `send` on each side) plus its share of an `epoll_wait`, and on a machine whose
//! kernel entry is expensive (speculative-execution mitigations, a hypervisor) the entries and
//! exits alone are a tenth of the proxy's CPU. Here a pass of the loop polls the sessions that
//! were woken, which queue their reads and writes as submission entries, and then makes one
//! `io_uring_enter` that submits all of them and waits for the next completions: one system call
//! per pass, whatever the number of messages in it.
//!
//! - **Reads** are single-shot `RECV`s with a buffer the kernel picks from the loop's pool
//!   (provided buffers, 64 of 65 KiB each): a read is armed only when the session asks to read
//!   (so a session that does not read leaves its bytes in its socket, as before: backpressure),
//!   and an idle session holds no buffer, only its armed request. When the session reads, small
//!   reads are copied into its own read buffer and the pool buffer goes straight back; a large
//!   one (16 KiB and more) into an empty read buffer becomes the session's buffer whole, its
//!   empty buffer taking the place in the pool. A read whose last one emptied the socket waits
//!   for bytes before it tries (`IORING_RECVSEND_POLL_FIRST`). A read that finds the pool empty
//!   (`ENOBUFS`) is armed again once a buffer came back. The kernel takes a group's buffers in
//!   the order they were given back, so a large read lands in the buffer used longest ago: for
//!   bulk transfers, cold memory (64 x 64 KiB is more than a core's cache). A socket whose last
//!   read was large therefore reads from a second group of 4 buffers, which stay warm; when that
//!   group is empty its read goes to the main pool at once.
//! - **Writes** are copied into the socket's send queue and accepted at once; the queue goes out
//!   as one `SEND` per pass (a send the socket cannot take whole is continued when it has room).
//!   A write waits (`Pending`) while 64 KiB are queued, which is what makes a client that does
//!   not read stall its session, with the pump's send deadlines. A large write with nothing
//!   queued before it (16 KiB and more: bulk transfers) is sent straight from the caller's
//!   buffer with a non-blocking `send`, without the copy. An error of a queued send is reported
//!   by the next write, flush or shutdown.
//! - **Ends**: a shutdown waits until the queue is sent. When a session's future is done, what
//!   is queued is offered to the socket once, requests still in the kernel are cancelled, and
//!   the socket is closed when the last of their completions came back (the kernel holds
//!   pointers into the socket's buffers until then).
//!
//! The ring is the loop thread's alone (`IORING_SETUP_SINGLE_ISSUER`), completions are posted
//! only when the loop enters the kernel (`IORING_SETUP_DEFER_TASKRUN`: no interruptions while
//! it polls sessions), and sockets are named by their slot in the ring's table of registered
//! files (no file lookup per request). Everything runs on the loop's thread: a socket's state is
//! a `RefCell`, shared by its halves and the loop through an `Rc`.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use rustix::net::{SendFlags, Shutdown};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{LoopShared, NewSession, Tasks};
use crate::pump::ReadBytes;

/// One pool buffer: a 64 KiB message and its frame header in one read (the pump's read size).
const BUF_LEN: u32 = 65 * 1024;
const BUF_BYTES: usize = BUF_LEN as usize;
/// Buffers in a loop's pool: reads completed in one pass and not yet taken by their sessions.
const BUFS: u16 = 64;
/// The pool's buffer group.
const GROUP: u16 = 0;
/// The few buffers reads after a large read take (buffer ids `BUFS..BUFS + BULK_BUFS`), in their
/// own group.
const BULK_BUFS: u16 = 4;
const BULK_GROUP: u16 = 1;
/// Submission queue entries; a pass with more requests submits in several calls.
const SQ_ENTRIES: u32 = 1024;
/// Completion queue entries (every armed read may complete in the same pass).
const CQ_ENTRIES: u32 = 16 * 1024;
/// A write waits while this much is queued on its socket.
const QUEUE_BYTES: usize = 64 * 1024;
/// A write this large, with nothing queued before it, goes straight to the socket.
const DIRECT_BYTES: usize = 16 * 1024;
/// `IORING_RECVSEND_POLL_FIRST` (in a read's `ioprio`): wait for bytes before trying the read.
const RECV_POLL_FIRST: u16 = 1;
/// The most slots of a loop's table of registered files.
const FIXED_FILES: u64 = 16 * 1024;
/// Room made for a read into a full buffer (as tokio's `read_buf` does).
const MIN_READ_BYTES: usize = 64;
/// Empty send buffers a loop keeps for the next writes.
const SPARE_SEND_BUFFERS: usize = 16;

/// What a completion is for: the socket's token times four plus the kind, or one of the loop's
/// own requests.
const KIND_RECV: u64 = 0;
const KIND_SEND: u64 = 1;
const UD_WAKE: u64 = u64::MAX;
const UD_NOTHING: u64 = u64::MAX - 1;

fn user_data(token: usize, kind: u64) -> u64 {
    ((token as u64) << 2) | kind
}

/// Whether io_uring can run session loops here: the ring with the loop's flags, and the
/// operations and features it uses. The error says why not.
pub(super) fn probe() -> io::Result<()> {
    let ring = build_ring(8)?;
    if !ring.params().is_feature_skip_cqe_on_success() {
        return Err(io::Error::other(
            "the kernel's io_uring lacks IOSQE_CQE_SKIP_SUCCESS (Linux 5.17)",
        ));
    }
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for (code, name) in [
        (opcode::Recv::CODE, "RECV"),
        (opcode::Send::CODE, "SEND"),
        (opcode::ProvideBuffers::CODE, "PROVIDE_BUFFERS"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        (opcode::Read::CODE, "READ"),
    ] {
        if !probe.is_supported(code) {
            return Err(io::Error::other(format!(
                "the kernel's io_uring lacks the {name} operation"
            )));
        }
    }
    Ok(())
}

fn build_ring(entries: u32) -> io::Result<IoUring> {
    // One thread submits (the loop's), and completions wait for its next entry into the kernel
    // rather than interrupting it.
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(CQ_ENTRIES.max(entries * 2))
        .build(entries)
}

/// The pool of receive buffers, one allocation each (of `BUF_BYTES`, kept empty: `len` 0). The
/// kernel writes into a buffer's spare capacity between the read that takes it and its
/// completion; the loop reads it between the completion and its return to the pool. A buffer
/// filled by a large read may be handed to the session whole, the session's empty read buffer
/// taking its place in the pool (no copy).
struct Pool {
    bufs: RefCell<Vec<Vec<u8>>>,
}

impl Pool {
    fn new() -> Pool {
        // Untouched until the kernel writes them: pages of buffers never used take no memory.
        Pool {
            bufs: RefCell::new(
                (0..BUFS + BULK_BUFS)
                    .map(|_| Vec::with_capacity(BUF_BYTES))
                    .collect(),
            ),
        }
    }

    /// The group buffer `bid` belongs to.
    fn group(bid: u16) -> u16 {
        if bid < BUFS {
            GROUP
        } else {
            BULK_GROUP
        }
    }

    /// Whether any of `bids` is a buffer of the main group (what reads starved of it wait for).
    fn any_main(bids: &[u16]) -> bool {
        bids.iter().any(|&bid| Pool::group(bid) == GROUP)
    }

    fn addr(&self, bid: u16) -> *mut u8 {
        self.bufs.borrow_mut()[bid as usize].as_mut_ptr()
    }

    /// Copy the first `len` bytes of buffer `bid`, which a completed read filled, to `put`.
    fn copy(&self, bid: u16, len: usize, put: impl FnOnce(&[u8])) {
        let bufs = self.bufs.borrow();
        let buf = &bufs[bid as usize];
        assert!(len <= buf.capacity());
        // SAFETY: a completed read handed buffer `bid` to the loop: the kernel no longer writes
        // it until the loop provides it again, which happens only after this slice is gone, and
        // the kernel wrote its first `len` bytes (the read's result), within its capacity
        // (checked above; the read was given at most `BUF_BYTES`, which each buffer has).
        put(unsafe { std::slice::from_raw_parts(buf.as_ptr(), len) });
    }

    /// Take buffer `bid`, which a completed read filled with `len` bytes, as a read buffer, and
    /// put `empty` (an empty read buffer) in its place, or a new buffer when it is too small.
    fn swap(&self, bid: u16, len: usize, empty: BytesMut) -> BytesMut {
        let mut replacement = Vec::from(empty);
        replacement.clear();
        if replacement.capacity() < BUF_BYTES {
            replacement = Vec::with_capacity(BUF_BYTES);
        }
        let mut filled = std::mem::replace(&mut self.bufs.borrow_mut()[bid as usize], replacement);
        assert!(len <= filled.capacity());
        // SAFETY: as in `copy`: the kernel is done with this buffer and wrote its first `len`
        // bytes, within its capacity (checked above).
        unsafe { filled.set_len(len) };
        // Without a copy: a `Bytes` made from a `Vec` keeps its allocation, and a unique `Bytes`
        // becomes a `BytesMut` in place.
        BytesMut::from(bytes::Bytes::from(filled))
    }
}

/// What a loop's sockets share with it: the pool, and the work for the next submission.
struct Ctx {
    pool: Pool,
    /// Sockets with something to submit (a read to arm, a queue to send), each once.
    submit: RefCell<Vec<usize>>,
    /// Pool buffers to give back to the kernel.
    returned: RefCell<Vec<u16>>,
    /// Sockets whose read found the pool empty, to arm again once buffers came back.
    starved: RefCell<Vec<usize>>,
    /// Empty send buffers, for the next queue.
    spare: RefCell<Vec<Vec<u8>>>,
}

impl Ctx {
    fn take_buffer(&self, at_least: usize) -> Vec<u8> {
        let mut b = self.spare.borrow_mut().pop().unwrap_or_default();
        b.reserve(at_least);
        b
    }

    fn give_buffer(&self, mut b: Vec<u8>) {
        b.clear();
        let mut spare = self.spare.borrow_mut();
        if spare.len() < SPARE_SEND_BUFFERS && b.capacity() <= QUEUE_BYTES + DIRECT_BYTES {
            spare.push(b);
        }
    }
}

/// How a socket's reading ended.
#[derive(Clone, Copy)]
enum ReadEnd {
    Eof,
    Err(i32),
}

/// A socket's state, shared by its halves and the loop (on the loop's thread).
#[derive(Default)]
struct State {
    /// In `Ctx::submit`.
    queued: bool,
    /// The read half waits for bytes: a read is to be armed.
    want_read: bool,
    recv_armed: bool,
    /// A completed read: its pool buffer and length.
    chunk: Option<(u16, u32)>,
    /// Bytes of a completed read the reader had no room for.
    leftover: Option<Box<BytesMut>>,
    read_end: Option<ReadEnd>,
    /// The last read took less than a buffer: the socket's queue was emptied, so the next read
    /// waits for bytes before it tries (rather than failing once first).
    emptied: bool,
    /// The last read was large (`DIRECT_BYTES` and more): the next one takes a buffer of the bulk
    /// group.
    bulk: bool,
    read_waker: Option<Waker>,
    /// Written and not yet submitted.
    out: Vec<u8>,
    /// Submitted (`sent` bytes of it already taken by the socket).
    inflight: Vec<u8>,
    sent: usize,
    send_armed: bool,
    write_err: Option<i32>,
    write_waker: Option<Waker>,
    /// The write side is to be shut once the queue is out.
    shut_wanted: bool,
    shut_done: bool,
    /// The session is done: nothing more is submitted for it but cancellations.
    released: bool,
    /// Requests in the kernel (each brings one completion).
    ops: u32,
}

impl State {
    fn queued_bytes(&self) -> usize {
        self.out.len() + self.inflight.len() - self.sent
    }

    fn drained(&self) -> bool {
        self.out.is_empty() && !self.send_armed
    }
}

/// One socket (TCP or unix stream) of a session on an io_uring loop.
pub(super) struct Source {
    fd: OwnedFd,
    /// The socket's slot in the ring's table of registered files (no file lookup per request),
    /// when the table had room.
    fixed: Option<u32>,
    token: usize,
    ctx: Rc<Ctx>,
    st: RefCell<State>,
}

impl Source {
    /// Have the loop look at this socket in its next submission.
    fn queue(&self, st: &mut State) {
        if !st.queued {
            st.queued = true;
            self.ctx.submit.borrow_mut().push(self.token);
        }
    }

    /// The write side is drained: shut it if that was asked for.
    fn shut_if_wanted(&self, st: &mut State) {
        if st.shut_wanted && !st.shut_done && st.drained() {
            st.shut_done = true;
            let _ = rustix::net::shutdown(&self.fd, Shutdown::Write);
        }
    }

    pub(super) fn halves(self: &Rc<Source>) -> (UringRead, UringWrite) {
        (
            UringRead {
                source: self.clone(),
            },
            UringWrite {
                source: self.clone(),
                shut: false,
            },
        )
    }
}

fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *slot = Some(cx.waker().clone());
    }
}

/// The read half of a socket on an io_uring loop.
pub(crate) struct UringRead {
    source: Rc<Source>,
}

impl UringRead {
    /// Hand at most `room` bytes of what was received to `put`; `Pending` arms a read.
    #[inline]
    fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        room: usize,
        put: impl FnOnce(&[u8]),
    ) -> Poll<io::Result<usize>> {
        let s = &*self.source;
        let mut st = s.st.borrow_mut();
        if let Some(leftover) = st.leftover.as_mut() {
            let n = leftover.len().min(room);
            put(&leftover[..n]);
            leftover.advance(n);
            if leftover.is_empty() {
                st.leftover = None;
            }
            return Poll::Ready(Ok(n));
        }
        if let Some((bid, len)) = st.chunk.take() {
            let len = len as usize;
            let n = len.min(room);
            s.ctx.pool.copy(bid, len, |bytes| {
                put(&bytes[..n]);
                if n < len {
                    st.leftover = Some(Box::new(BytesMut::from(&bytes[n..])));
                }
            });
            s.ctx.returned.borrow_mut().push(bid);
            return Poll::Ready(Ok(n));
        }
        match st.read_end {
            Some(ReadEnd::Eof) => return Poll::Ready(Ok(0)),
            Some(ReadEnd::Err(e)) => return Poll::Ready(Err(io::Error::from_raw_os_error(e))),
            None => {}
        }
        set_waker(&mut st.read_waker, cx);
        if !st.want_read && !st.recv_armed {
            st.want_read = true;
            s.queue(&mut st);
        }
        Poll::Pending
    }
}

impl ReadBytes for UringRead {
    #[inline]
    fn poll_read_bytes(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            // A large read into an empty buffer: the pool's buffer becomes the session's.
            let s = &*self.source;
            let mut st = s.st.borrow_mut();
            if let Some((bid, len)) = st.chunk.filter(|&(_, len)| len as usize >= DIRECT_BYTES) {
                if st.leftover.is_none() {
                    st.chunk = None;
                    let len = len as usize;
                    *buf = s.ctx.pool.swap(bid, len, std::mem::take(buf));
                    s.ctx.returned.borrow_mut().push(bid);
                    return Poll::Ready(Ok(len));
                }
            }
        }
        if buf.capacity() == buf.len() {
            buf.reserve(MIN_READ_BYTES);
        }
        let room = (buf.capacity() - buf.len()).min(BUF_BYTES);
        self.poll_take(cx, room, |bytes| buf.extend_from_slice(bytes))
    }
}

impl AsyncRead for UringRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let room = buf.remaining();
        if room == 0 {
            return Poll::Ready(Ok(()));
        }
        std::task::ready!(self
            .get_mut()
            .poll_take(cx, room, |bytes| buf.put_slice(bytes)))?;
        Poll::Ready(Ok(()))
    }
}

/// The write half of a socket on an io_uring loop. Dropping it without a shutdown shuts the
/// write side once the queue is out (or at the session's end), so the peer sees a FIN.
pub(crate) struct UringWrite {
    source: Rc<Source>,
    shut: bool,
}

impl UringWrite {
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        let s = &*self.source;
        let mut st = s.st.borrow_mut();
        if let Some(e) = st.write_err {
            return Poll::Ready(Err(io::Error::from_raw_os_error(e)));
        }
        if st.queued_bytes() >= QUEUE_BYTES {
            set_waker(&mut st.write_waker, cx);
            return Poll::Pending;
        }
        if total >= DIRECT_BYTES && st.drained() {
            // writev(2) does not wait on a non-blocking socket (which these are); a peer that is
            // gone gives EPIPE (the process ignores SIGPIPE).
            match rustix::io::writev(&s.fd, bufs) {
                Ok(n) if n > 0 => return Poll::Ready(Ok(n)),
                Ok(_) => {}
                Err(e) if e == rustix::io::Errno::WOULDBLOCK || e == rustix::io::Errno::AGAIN => {}
                Err(e) if e == rustix::io::Errno::INTR => {}
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
        if st.out.capacity() == 0 {
            st.out = s.ctx.take_buffer(total);
        }
        for b in bufs {
            st.out.extend_from_slice(b);
        }
        s.queue(&mut st);
        Poll::Ready(Ok(total))
    }
}

impl AsyncWrite for UringWrite {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, &[io::IoSlice::new(buf)])
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// What was written is the kernel's to send: a flush has nothing to wait for (an error of a
    /// queued send is reported here, as by the next write).
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.source.st.borrow().write_err {
            Some(e) => Poll::Ready(Err(io::Error::from_raw_os_error(e))),
            None => Poll::Ready(Ok(())),
        }
    }

    /// Shut the write side once the queue is out.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shut = true;
        let s = &*self.source;
        let mut st = s.st.borrow_mut();
        if let Some(e) = st.write_err {
            return Poll::Ready(Err(io::Error::from_raw_os_error(e)));
        }
        st.shut_wanted = true;
        if st.drained() {
            if !st.shut_done {
                st.shut_done = true;
                return Poll::Ready(
                    rustix::net::shutdown(&s.fd, Shutdown::Write).map_err(Into::into),
                );
            }
            return Poll::Ready(Ok(()));
        }
        set_waker(&mut st.write_waker, cx);
        Poll::Pending
    }
}

impl Drop for UringWrite {
    fn drop(&mut self) {
        if !self.shut {
            let s = &*self.source;
            let mut st = s.st.borrow_mut();
            st.shut_wanted = true;
            s.shut_if_wanted(&mut st);
        }
    }
}

/// One io_uring loop, owned by its thread.
pub(super) struct UringLoop {
    shared: Arc<LoopShared>,
    /// The loop's eventfd (other threads' wake-ups), read through the ring.
    wake_fd: OwnedFd,
    ring: IoUring,
    ctx: Rc<Ctx>,
    tasks: Tasks,
    sources: Vec<Option<Rc<Source>>>,
    free_sources: Vec<usize>,
    /// Sessions done whose sockets still have requests in the kernel.
    closing: Vec<usize>,
    /// Where the eventfd's counter is read to (stable while the read is in the kernel).
    wake_buf: Box<[u8; 8]>,
    wake_armed: bool,
    /// Free slots of the ring's table of registered files.
    free_slots: Vec<u32>,
}

impl UringLoop {
    /// The loop's ring, built on its own thread (the only one that submits to it).
    pub(super) fn new(shared: Arc<LoopShared>, wake_fd: OwnedFd) -> io::Result<UringLoop> {
        let ring = build_ring(SQ_ENTRIES)?;
        // A table of registered files as large as the process may have files (the kernel's
        // limit), at most FIXED_FILES; without one, requests name their sockets by descriptor.
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX)
            .min(FIXED_FILES) as u32;
        let free_slots = match ring.submitter().register_files_sparse(limit) {
            Ok(()) => (0..limit).rev().collect(),
            Err(e) => {
                tracing::debug!(error = %e, "no registered files for a session loop");
                Vec::new()
            }
        };
        Ok(UringLoop {
            shared,
            wake_fd,
            ring,
            free_slots,
            ctx: Rc::new(Ctx {
                pool: Pool::new(),
                submit: RefCell::new(Vec::new()),
                returned: RefCell::new(Vec::new()),
                starved: RefCell::new(Vec::new()),
                spare: RefCell::new(Vec::new()),
            }),
            tasks: Tasks::default(),
            sources: Vec::new(),
            free_sources: Vec::new(),
            closing: Vec::new(),
            wake_buf: Box::new([0; 8]),
            wake_armed: false,
        })
    }

    pub(super) fn run(mut self) {
        self.shared.enter();
        // The whole pool to the kernel.
        self.ctx.returned.borrow_mut().extend(0..BUFS + BULK_BUFS);
        let mut ended = Vec::new();
        loop {
            for new in self.shared.take_inbox() {
                self.start(new);
            }
            self.tasks.poll_woken(&self.shared, &mut ended);
            for token in ended.drain(..) {
                self.release(token);
            }
            self.prepare();
            // Nothing to poll, and nothing a completion taken while submitting left to submit.
            let idle = self.shared.nothing_to_poll()
                && self.ctx.submit.borrow().is_empty()
                && self.ctx.returned.borrow().is_empty();
            match self.enter(u32::from(idle)) {
                Ok(_) => {}
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {}
                Err(e) => {
                    // The loop cannot submit or wait any more; its sessions would hang. Nothing
                    // else can serve them: end the process loudly rather than leave them.
                    tracing::error!(error = %e, "session loop failed");
                    std::process::abort();
                }
            }
            crate::pump::clock::start_pass();
            self.complete();
        }
    }

    /// Submit what is queued and run the completions the kernel deferred to this thread, waiting
    /// for at least `wait` of them.
    fn enter(&mut self, wait: u32) -> io::Result<usize> {
        let queued = u32::try_from(self.ring.submission().len()).unwrap_or(u32::MAX);
        // SAFETY: the submission queue's entries were pushed through `push` (see there), and
        // no argument is passed.
        unsafe {
            self.ring.submitter().enter::<()>(
                queued,
                wait,
                io_uring::EnterFlags::GETEVENTS.bits(),
                None,
            )
        }
    }

    /// Push one entry, submitting first when the queue is full.
    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every entry points only at memory that stays valid and untouched by the
            // loop until its completion: pool buffers (the loop's pool keeps each buffer given
            // to the kernel, unmoved and unread, until a read completed with it), a socket's
            // `inflight` send buffer (not modified while `send_armed`, and the socket is kept
            // until its last completion: see `release`), and `wake_buf` (owned by the loop, read
            // only after the eventfd read completed). File descriptors are the sockets', open
            // until their last completion came back.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            if let Err(e) = self.enter(0) {
                if e.kind() != io::ErrorKind::Interrupted
                    && e.raw_os_error() != Some(rustix::io::Errno::BUSY.raw_os_error())
                {
                    tracing::error!(error = %e, "session loop failed");
                    std::process::abort();
                }
                self.complete();
            }
        }
    }

    /// Everything the last pass asked for, as submission entries.
    fn prepare(&mut self) {
        if !self.wake_armed {
            self.wake_armed = true;
            let read = opcode::Read::new(
                types::Fd(self.wake_fd.as_raw_fd()),
                self.wake_buf.as_mut_ptr(),
                8,
            )
            .build()
            .user_data(UD_WAKE);
            self.push(read);
        }
        // Bulk buffers coming back do not help reads starved of the main pool.
        if !self.ctx.starved.borrow().is_empty() && !Pool::any_main(&self.ctx.returned.borrow()) {
            self.unhold();
        }
        let returned = std::mem::take(&mut *self.ctx.returned.borrow_mut());
        for &bid in &returned {
            let provide = opcode::ProvideBuffers::new(
                self.ctx.pool.addr(bid),
                BUF_LEN.cast_signed(),
                1,
                Pool::group(bid),
                bid,
            )
            .build()
            .user_data(UD_NOTHING)
            .flags(squeue::Flags::SKIP_SUCCESS);
            self.push(provide);
        }
        // Reads starved of the main pool: a buffer of it came back.
        if Pool::any_main(&returned) {
            let starved = std::mem::take(&mut *self.ctx.starved.borrow_mut());
            for token in starved {
                if let Some(Some(s)) = self.sources.get(token) {
                    let s = s.clone();
                    s.queue(&mut s.st.borrow_mut());
                }
            }
        }
        let submit = std::mem::take(&mut *self.ctx.submit.borrow_mut());
        for token in submit {
            let Some(Some(s)) = self.sources.get(token) else {
                continue;
            };
            let s = s.clone();
            let mut entries: [Option<squeue::Entry>; 2] = [None, None];
            {
                let mut st = s.st.borrow_mut();
                st.queued = false;
                if st.released {
                    continue;
                }
                if st.want_read && !st.recv_armed && st.read_end.is_none() && st.chunk.is_none() {
                    st.want_read = false;
                    st.recv_armed = true;
                    st.ops += 1;
                    entries[0] = Some(recv_entry(&s, st.emptied, st.bulk));
                }
                if !st.send_armed && st.write_err.is_none() && !st.out.is_empty() {
                    let out = std::mem::take(&mut st.out);
                    let old = std::mem::replace(&mut st.inflight, out);
                    if old.capacity() > 0 {
                        st.out = old;
                    }
                    st.sent = 0;
                    entries[1] = Some(send_entry(&s, &st));
                    st.send_armed = true;
                    st.ops += 1;
                }
            }
            for e in entries.into_iter().flatten() {
                self.push(e);
            }
        }
    }

    /// Reads wait for the pool, and no buffer of it came back in this pass: the pool is held by
    /// bytes received for sessions that have not read them (yet). Their bytes move to the
    /// sessions' own buffers, and the pool's buffers go back, so that the other sessions on this
    /// thread are not kept waiting by them (rare: a session reads what it asked for in the same
    /// pass, unless it stopped reading in between).
    fn unhold(&mut self) {
        for s in self.sources.iter().flatten() {
            let mut st = s.st.borrow_mut();
            if let Some((bid, len)) = st.chunk.take() {
                // Nothing was left over: a read is armed only when the last one was taken.
                let leftover = st.leftover.get_or_insert_default();
                let len = len as usize;
                self.ctx
                    .pool
                    .copy(bid, len, |bytes| leftover.extend_from_slice(bytes));
                self.ctx.returned.borrow_mut().push(bid);
            }
        }
    }

    /// Take every completion.
    fn complete(&mut self) {
        loop {
            let Some(cqe) = self.ring.completion().next() else {
                break;
            };
            self.on_completion(cqe.user_data(), cqe.result(), cqe.flags());
        }
        let mut i = 0;
        while i < self.closing.len() {
            let token = self.closing[i];
            let idle = self.sources[token]
                .as_ref()
                .is_none_or(|s| s.st.borrow().ops == 0);
            if idle {
                self.closing.swap_remove(i);
                self.free(token);
            } else {
                i += 1;
            }
        }
    }

    fn on_completion(&mut self, ud: u64, res: i32, flags: u32) {
        if ud == UD_WAKE {
            self.wake_armed = false;
            return;
        }
        if ud == UD_NOTHING {
            // A cancelled request that had already completed (or was completing) is no failure.
            let gone = [rustix::io::Errno::NOENT, rustix::io::Errno::ALREADY];
            if res < 0 && !gone.iter().any(|e| -res == libc_errno(*e)) {
                tracing::warn!(error = %io::Error::from_raw_os_error(-res), "a session loop request failed");
            }
            return;
        }
        let token = (ud >> 2) as usize;
        let Some(Some(s)) = self.sources.get(token) else {
            return;
        };
        let s = s.clone();
        let mut st = s.st.borrow_mut();
        st.ops = st.ops.saturating_sub(1);
        let waker = match ud & 3 {
            KIND_RECV => {
                st.recv_armed = false;
                let bid = cqueue::buffer_select(flags);
                if st.released {
                    if let Some(bid) = bid {
                        self.ctx.returned.borrow_mut().push(bid);
                    }
                    return;
                }
                if res > 0 {
                    match bid {
                        Some(bid) => {
                            st.chunk = Some((bid, res.unsigned_abs()));
                            st.emptied = (res.unsigned_abs() as usize) < BUF_BYTES;
                            st.bulk = res.unsigned_abs() as usize >= DIRECT_BYTES;
                        }
                        None => st.read_end = Some(ReadEnd::Err(libc_errno(rustix::io::Errno::IO))),
                    }
                } else if res == 0 {
                    st.read_end = Some(ReadEnd::Eof);
                } else if -res == libc_errno(rustix::io::Errno::NOBUFS) {
                    st.want_read = true;
                    if st.bulk {
                        // The bulk group is empty: the main pool, in the next pass.
                        st.bulk = false;
                        s.queue(&mut st);
                    } else {
                        // The pool is empty: armed again once a buffer came back.
                        self.ctx.starved.borrow_mut().push(token);
                    }
                    return;
                } else if -res == libc_errno(rustix::io::Errno::INTR)
                    || -res == libc_errno(rustix::io::Errno::AGAIN)
                {
                    st.want_read = true;
                    s.queue(&mut st);
                    return;
                } else {
                    st.read_end = Some(ReadEnd::Err(-res));
                }
                st.read_waker.clone()
            }
            _ => {
                st.send_armed = false;
                if st.released {
                    return;
                }
                if res < 0 {
                    let e = -res;
                    if e == libc_errno(rustix::io::Errno::INTR)
                        || e == libc_errno(rustix::io::Errno::AGAIN)
                    {
                        // Try the same bytes again.
                        self.send_rest(&s, st);
                        return;
                    }
                    st.write_err = Some(e);
                    st.out.clear();
                } else {
                    st.sent += res.unsigned_abs() as usize;
                    if st.sent < st.inflight.len() {
                        // The socket took part of it: the rest when it has room.
                        self.send_rest(&s, st);
                        return;
                    }
                    if st.out.is_empty() {
                        let done = std::mem::take(&mut st.inflight);
                        self.ctx.give_buffer(done);
                        if st.out.capacity() > 0 {
                            let out = std::mem::take(&mut st.out);
                            self.ctx.give_buffer(out);
                        }
                    } else {
                        st.inflight.clear();
                        s.queue(&mut st);
                    }
                    st.sent = 0;
                }
                s.shut_if_wanted(&mut st);
                st.write_waker.clone()
            }
        };
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Submit what the socket's in-flight send has not sent yet.
    fn send_rest(&mut self, s: &Source, mut st: std::cell::RefMut<'_, State>) {
        let entry = send_entry(s, &st);
        st.send_armed = true;
        st.ops += 1;
        drop(st);
        self.push(entry);
    }

    /// A new session: its two sockets, and its future made from their halves.
    fn start(&mut self, new: NewSession) {
        let NewSession {
            client,
            backend,
            make,
        } = new;
        let (c, client) = self.add(client);
        let (b, backend) = self.add(backend);
        let (cr, cw) = client.halves();
        let (br, bw) = backend.halves();
        let sockets = (
            (super::LoopRead::Uring(cr), super::LoopWrite::Uring(cw)),
            (super::LoopRead::Uring(br), super::LoopWrite::Uring(bw)),
        );
        self.tasks.start(&self.shared, make(sockets), [c, b]);
    }

    /// A socket joins the loop: its token and its state.
    fn add(&mut self, fd: OwnedFd) -> (usize, Rc<Source>) {
        let token = self.free_sources.pop().unwrap_or(self.sources.len());
        let fixed = self.free_slots.pop().and_then(|slot| {
            match self
                .ring
                .submitter()
                .register_files_update(slot, &[fd.as_raw_fd()])
            {
                Ok(_) => Some(slot),
                Err(_) => {
                    self.free_slots.push(slot);
                    None
                }
            }
        });
        let source = Rc::new(Source {
            fd,
            fixed,
            token,
            ctx: self.ctx.clone(),
            st: RefCell::new(State::default()),
        });
        if token == self.sources.len() {
            self.sources.push(Some(source.clone()));
        } else {
            self.sources[token] = Some(source.clone());
        }
        (token, source)
    }

    /// A session is done (its halves are gone): offer what is queued to the socket once, cancel
    /// its requests in the kernel, and close it once their completions came back.
    fn release(&mut self, token: usize) {
        let Some(Some(s)) = self.sources.get(token) else {
            return;
        };
        let s = s.clone();
        let mut cancel = Vec::new();
        {
            let mut st = s.st.borrow_mut();
            st.released = true;
            if !st.send_armed && !st.out.is_empty() && st.write_err.is_none() {
                let _ =
                    rustix::net::send(&s.fd, &st.out, SendFlags::NOSIGNAL | SendFlags::DONTWAIT);
                st.out.clear();
            }
            if st.shut_wanted && !st.shut_done && !st.send_armed {
                st.shut_done = true;
                let _ = rustix::net::shutdown(&s.fd, Shutdown::Write);
            }
            if let Some((bid, _)) = st.chunk.take() {
                self.ctx.returned.borrow_mut().push(bid);
            }
            if st.recv_armed {
                cancel.push(user_data(token, KIND_RECV));
            }
            if st.send_armed {
                cancel.push(user_data(token, KIND_SEND));
            }
        }
        for ud in cancel {
            self.push(
                opcode::AsyncCancel::new(ud)
                    .build()
                    .user_data(UD_NOTHING)
                    .flags(squeue::Flags::SKIP_SUCCESS),
            );
        }
        if s.st.borrow().ops == 0 {
            self.free(token);
        } else {
            self.closing.push(token);
        }
    }

    /// Forget a socket: it is closed with its last reference (its halves went with the
    /// session's future).
    fn free(&mut self, token: usize) {
        if let Some(Some(s)) = self.sources.get_mut(token).map(Option::take) {
            let mut st = s.st.borrow_mut();
            for b in [
                std::mem::take(&mut st.out),
                std::mem::take(&mut st.inflight),
            ] {
                if b.capacity() > 0 {
                    self.ctx.give_buffer(b);
                }
            }
            drop(st);
            if let Some(slot) = s.fixed {
                // The table holds the file open: the slot is emptied, or the socket would stay.
                if self
                    .ring
                    .submitter()
                    .register_files_update(slot, &[-1])
                    .is_ok()
                {
                    self.free_slots.push(slot);
                }
            }
            self.free_sources.push(token);
        }
    }
}

/// A send of what `inflight` holds past `sent`.
fn send_entry(s: &Source, st: &State) -> squeue::Entry {
    let rest = &st.inflight[st.sent..];
    // A queue is at most QUEUE_BYTES and a write; a send takes what it can anyway.
    let (ptr, len) = (rest.as_ptr(), u32::try_from(rest.len()).unwrap_or(u32::MAX));
    match s.fixed {
        Some(slot) => opcode::Send::new(types::Fixed(slot), ptr, len),
        None => opcode::Send::new(types::Fd(s.fd.as_raw_fd()), ptr, len),
    }
    .flags(SendFlags::NOSIGNAL.bits().cast_signed())
    .build()
    .user_data(user_data(s.token, KIND_SEND))
}

/// A read into a buffer of the pool (of its bulk group when `bulk`).
fn recv_entry(s: &Source, poll_first: bool, bulk: bool) -> squeue::Entry {
    let len = BUF_LEN;
    match s.fixed {
        Some(slot) => opcode::Recv::new(types::Fixed(slot), std::ptr::null_mut(), len),
        None => opcode::Recv::new(types::Fd(s.fd.as_raw_fd()), std::ptr::null_mut(), len),
    }
    .buf_group(if bulk { BULK_GROUP } else { GROUP })
    .ioprio(if poll_first { RECV_POLL_FIRST } else { 0 })
    .build()
    .flags(squeue::Flags::BUFFER_SELECT)
    .user_data(user_data(s.token, KIND_RECV))
}

fn libc_errno(e: rustix::io::Errno) -> i32 {
    e.raw_os_error()
}
