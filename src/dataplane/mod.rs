//! Session loops: threads that run sessions after the handshake on an event loop of their own.
//!
//! The HTTP phase, TLS, authentication, the admin endpoint and every timer stay on tokio. A
//! session whose client and backend are both plain stream sockets (TCP, or a unix-socket
//! backend) is handed, after the 101, to one of these threads (`[runtime] session_threads`):
//! the two sockets are taken out of tokio's reactor and the session's future, the unchanged
//! [`crate::pump`], is polled by the loop. A loop moves its sockets' bytes one of two ways
//! (`[runtime] session_io`):
//!
//! - **io_uring** (`uring`): the sessions polled in a pass queue their reads and writes as
//!   submission entries, and one `io_uring_enter` per pass submits them all and waits for the
//!   next completions.
//! - **epoll** (`io`): the sockets are registered with the loop's own epoll instance (mio,
//!   edge-triggered); a read or write is one system call, readiness two flags set by the
//!   loop's events.
//!
//! Everything else the pump waits on (timers, the drain and operator-close tokens, the other
//! half's word) is runtime-independent and wakes the session through its waker from whichever
//! thread fired it: a wake from the loop's own thread is a push on a local queue, one from
//! elsewhere goes through a locked inbox and the loop's eventfd.
//!
//! Why: a message through tokio's reactor and scheduler costs a readiness check with a waker
//! registration per call, a task wake-up and a scheduler pass per event. Here an event or a
//! completion sets a flag and queues the session. BENCHMARKS.md has the numbers.
//!
//! The loops are started by the binary (`wsgate --config`): a gateway embedded in another
//! program (the library's `run`) keeps every session on its own runtime, and so runs under a
//! test's paused clock.

mod io;
// The ring's entries point into the loop's buffers: see the module's SAFETY notes.
#[allow(unsafe_code)]
mod uring;

use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Wake, Waker};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use io::{EpollRead, EpollWrite, Source};

/// The loops of this process, once the binary started them.
static DATA_PLANE: OnceLock<DataPlane> = OnceLock::new();

/// The token of the loop's own waker (remote wake-ups and new sessions).
const WAKE_TOKEN: Token = Token(usize::MAX);

pub use crate::config::SessionIo;

/// Start `threads` session loops for this process (the binary does, from `[runtime]
/// session_threads` and `session_io`); sessions started from then on may run on them. Must be
/// called from inside the tokio runtime: the loops enter it, so that the sessions' timers are
/// tokio's. Returns what the loops use ("io_uring" or "epoll"; `None` when none started).
pub fn start(threads: usize, io: SessionIo) -> std::io::Result<Option<&'static str>> {
    if threads == 0 || DATA_PLANE.get().is_some() {
        return Ok(None);
    }
    let use_uring = match io {
        SessionIo::Epoll => false,
        SessionIo::IoUring => {
            uring::probe().map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("session_io = \"io_uring\", but io_uring cannot run here: {e}"),
                )
            })?;
            true
        }
        SessionIo::Auto => match uring::probe() {
            Ok(()) => true,
            Err(e) => {
                tracing::info!(error = %e, "io_uring is not available here: the session threads use epoll");
                false
            }
        },
    };
    let handle = tokio::runtime::Handle::current();
    let mut loops = Vec::with_capacity(threads);
    for i in 0..threads {
        let name =
            |e: std::io::Error| std::io::Error::new(e.kind(), format!("session loop {i}: {e}"));
        let shared;
        let body: LoopBody;
        if use_uring {
            // Blocking: a read of it in the ring waits for a wake-up (writers never block: the
            // counter would have to reach 2^64 - 1).
            let fd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)
                .map_err(|e| name(e.into()))?;
            let loop_fd = fd.try_clone().map_err(name)?;
            shared = Arc::new(LoopShared::new(LoopWaker::EventFd(fd)));
            body = Box::new(move |shared| {
                let l = uring::UringLoop::new(shared, loop_fd)?;
                Ok(Box::new(move || l.run()))
            });
        } else {
            let poll = Poll::new().map_err(name)?;
            let waker = mio::Waker::new(poll.registry(), WAKE_TOKEN).map_err(name)?;
            shared = Arc::new(LoopShared::new(LoopWaker::Epoll(waker)));
            body = Box::new(move |shared| {
                let l = EventLoop {
                    shared,
                    poll,
                    tasks: Tasks::default(),
                    sources: Vec::new(),
                    free_sources: Vec::new(),
                };
                Ok(Box::new(move || l.run()))
            });
        }
        let handle = handle.clone();
        let loop_shared = shared.clone();
        // The loop is built on its own thread (an io_uring ring belongs to the thread that
        // submits to it), which says whether that worked before it runs.
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("wsgate-session".into())
            .spawn(move || {
                let _runtime = handle.enter();
                match body(loop_shared) {
                    Ok(run) => {
                        let _ = ready_tx.send(Ok(()));
                        run();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(name)?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(name(e)),
            Err(_) => return Err(name(std::io::Error::other("the thread ended at its start"))),
        }
        loops.push(shared);
    }
    let _ = DATA_PLANE.set(DataPlane { loops });
    Ok(Some(if use_uring { "io_uring" } else { "epoll" }))
}

/// Builds a loop on its thread (from what the other threads share with it) and returns its run.
type LoopBody =
    Box<dyn FnOnce(Arc<LoopShared>) -> std::io::Result<Box<dyn FnOnce() + 'static>> + Send>;

/// The session loops, if the binary started them.
pub(crate) fn get() -> Option<&'static DataPlane> {
    DATA_PLANE.get()
}

/// The running loops.
pub(crate) struct DataPlane {
    loops: Vec<Arc<LoopShared>>,
}

/// The read half of a socket on a session loop.
pub(crate) enum LoopRead {
    Epoll(EpollRead),
    Uring(uring::UringRead),
}

/// The write half of a socket on a session loop.
pub(crate) enum LoopWrite {
    Epoll(EpollWrite),
    Uring(uring::UringWrite),
}

impl crate::pump::ReadBytes for LoopRead {
    #[inline]
    fn poll_read_bytes(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut bytes::BytesMut,
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self {
            LoopRead::Epoll(r) => r.poll_read_bytes(cx, buf),
            LoopRead::Uring(r) => r.poll_read_bytes(cx, buf),
        }
    }
}

impl tokio::io::AsyncRead for LoopRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            LoopRead::Epoll(r) => Pin::new(r).poll_read(cx, buf),
            LoopRead::Uring(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for LoopWrite {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            LoopWrite::Epoll(w) => Pin::new(w).poll_write(cx, buf),
            LoopWrite::Uring(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            LoopWrite::Epoll(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            LoopWrite::Uring(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    #[inline]
    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            LoopWrite::Epoll(w) => Pin::new(w).poll_flush(cx),
            LoopWrite::Uring(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            LoopWrite::Epoll(w) => Pin::new(w).poll_shutdown(cx),
            LoopWrite::Uring(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// What a session gets on its loop: the read and write halves of its client and backend sockets.
pub(crate) type LoopSockets = ((LoopRead, LoopWrite), (LoopRead, LoopWrite));

/// Builds a session's future on its loop, from its sockets.
type MakeSession = Box<dyn FnOnce(LoopSockets) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

impl DataPlane {
    /// Run a session on the least busy loop: `make` is called there with the halves of
    /// `client` and `backend` (already non-blocking, out of tokio's reactor) and returns the
    /// session's future.
    pub(crate) fn spawn<F, Fut>(&self, client: OwnedFd, backend: OwnedFd, make: F)
    where
        F: FnOnce(LoopSockets) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let Some(target) = self
            .loops
            .iter()
            .min_by_key(|l| l.sessions.load(Ordering::Relaxed))
        else {
            return;
        };
        target.sessions.fetch_add(1, Ordering::Relaxed);
        let make: MakeSession = Box::new(move |sockets| Box::pin(make(sockets)));
        target
            .inbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .spawn
            .push(NewSession {
                client,
                backend,
                make,
            });
        target.has_inbox.store(true, Ordering::Release);
        // A loop that cannot be woken is gone with its thread: nothing more can be done here.
        let _ = target.waker.wake();
    }
}

struct NewSession {
    client: OwnedFd,
    backend: OwnedFd,
    make: MakeSession,
}

/// How other threads wake a loop.
enum LoopWaker {
    Epoll(mio::Waker),
    /// An eventfd the loop reads through its ring.
    EventFd(OwnedFd),
}

impl LoopWaker {
    fn wake(&self) -> std::io::Result<()> {
        match self {
            LoopWaker::Epoll(w) => w.wake(),
            LoopWaker::EventFd(fd) => rustix::io::write(fd, &1u64.to_ne_bytes())
                .map(drop)
                .map_err(Into::into),
        }
    }
}

/// What other threads share with a loop.
struct LoopShared {
    waker: LoopWaker,
    inbox: Mutex<Inbox>,
    /// The inbox has something (read without its lock on every pass).
    has_inbox: AtomicBool,
    /// Sessions running on this loop (for choosing the least busy one).
    sessions: AtomicUsize,
}

impl LoopShared {
    /// On the loop's thread, before its first pass: wake-ups from this thread go to its local
    /// queue.
    fn enter(self: &Arc<Self>) {
        let id = Arc::as_ptr(self) as usize;
        LOCAL.with(|l| l.borrow_mut().0 = id);
        crate::pump::clock::start_pass();
    }

    /// New sessions from other threads (their wake-ups are queued locally).
    fn take_inbox(&self) -> Vec<NewSession> {
        if !self.has_inbox.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        let Inbox { spawn, woken } =
            std::mem::take(&mut *self.inbox.lock().unwrap_or_else(|e| e.into_inner()));
        LOCAL.with(|l| l.borrow_mut().1.extend(woken));
        spawn
    }

    /// Nothing is queued to poll, from this thread or another.
    fn nothing_to_poll(&self) -> bool {
        LOCAL.with(|l| l.borrow().1.is_empty()) && !self.has_inbox.load(Ordering::Acquire)
    }

    fn new(waker: LoopWaker) -> LoopShared {
        LoopShared {
            waker,
            inbox: Mutex::new(Inbox::default()),
            has_inbox: AtomicBool::new(false),
            sessions: AtomicUsize::new(0),
        }
    }
}

#[derive(Default)]
struct Inbox {
    spawn: Vec<NewSession>,
    /// Sessions woken from other threads (their index).
    woken: Vec<usize>,
}

thread_local! {
    /// On a loop's thread: that loop (its shared part's address) and its queue of sessions to
    /// poll.
    static LOCAL: std::cell::RefCell<(usize, VecDeque<usize>)> =
        const { std::cell::RefCell::new((0, VecDeque::new())) };
}

/// A session's waker: queues the session on its loop, at most once until it is polled.
struct TaskWaker {
    index: usize,
    queued: AtomicBool,
    shared: Arc<LoopShared>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let id = Arc::as_ptr(&self.shared) as usize;
        let local = LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            if l.0 == id {
                l.1.push_back(self.index);
                true
            } else {
                false
            }
        });
        if !local {
            self.shared
                .inbox
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .woken
                .push(self.index);
            self.shared.has_inbox.store(true, Ordering::Release);
            let _ = self.shared.waker.wake();
        }
    }
}

struct Task {
    future: Pin<Box<dyn Future<Output = ()>>>,
    waker: Waker,
    state: Arc<TaskWaker>,
    /// The tokens of its two sockets.
    sources: [usize; 2],
}

/// A loop's sessions (either kind of loop).
#[derive(Default)]
struct Tasks {
    tasks: Vec<Option<Task>>,
    free: Vec<usize>,
}

impl Tasks {
    /// Add a session (the tokens of its two sockets) and queue it for its first poll.
    fn start(
        &mut self,
        shared: &Arc<LoopShared>,
        future: Pin<Box<dyn Future<Output = ()>>>,
        sources: [usize; 2],
    ) {
        let index = self.free.pop().unwrap_or(self.tasks.len());
        let state = Arc::new(TaskWaker {
            index,
            queued: AtomicBool::new(true),
            shared: shared.clone(),
        });
        let task = Task {
            future,
            waker: Waker::from(state.clone()),
            state,
            sources,
        };
        if index == self.tasks.len() {
            self.tasks.push(Some(task));
        } else {
            self.tasks[index] = Some(task);
        }
        LOCAL.with(|l| l.borrow_mut().1.push_back(index));
    }

    /// Poll the sessions woken since the last pass; the tokens of the sockets of those that
    /// ended are added to `ended`.
    fn poll_woken(&mut self, shared: &LoopShared, ended: &mut Vec<usize>) {
        while let Some(index) = LOCAL.with(|l| l.borrow_mut().1.pop_front()) {
            if let Some(done) = self.poll(index) {
                shared.sessions.fetch_sub(1, Ordering::Relaxed);
                ended.extend(done);
            }
        }
    }

    /// Poll a session; when it is done, the tokens of its sockets (its future is dropped).
    fn poll(&mut self, index: usize) -> Option<[usize; 2]> {
        let Some(Some(task)) = self.tasks.get_mut(index) else {
            return None;
        };
        task.state.queued.store(false, Ordering::Release);
        let mut cx = Context::from_waker(&task.waker);
        let future = task.future.as_mut();
        // A session that panics ends alone (its caller sees its result channel closed), as a
        // panicking task would on tokio; the loop and its other sessions go on.
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.poll(&mut cx)))
            .map_or(true, |p| p.is_ready());
        if !done {
            return None;
        }
        let task = self.tasks[index].take()?;
        drop(task.future);
        self.free.push(index);
        Some(task.sources)
    }
}

/// One loop, owned by its thread.
struct EventLoop {
    shared: Arc<LoopShared>,
    poll: Poll,
    tasks: Tasks,
    sources: Vec<Option<Arc<Source>>>,
    free_sources: Vec<usize>,
}

impl EventLoop {
    fn run(mut self) {
        self.shared.enter();
        let mut events = Events::with_capacity(256);
        let mut ended = Vec::new();
        loop {
            for new in self.shared.take_inbox() {
                self.start(new);
            }
            self.tasks.poll_woken(&self.shared, &mut ended);
            for token in ended.drain(..) {
                self.release(token);
            }
            let timeout = if self.shared.nothing_to_poll() {
                None
            } else {
                Some(std::time::Duration::ZERO)
            };
            let waited = self.poll.poll(&mut events, timeout);
            crate::pump::clock::start_pass();
            if let Err(e) = waited {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // The loop cannot wait any more; its sessions would hang. Nothing else can
                // serve them: end the process loudly rather than leave them.
                tracing::error!(error = %e, "session loop failed");
                std::process::abort();
            }
            for event in &events {
                if event.token() == WAKE_TOKEN {
                    continue;
                }
                if let Some(Some(source)) = self.sources.get(event.token().0) {
                    let broken = event.is_error();
                    source.on_event(
                        event.is_readable(),
                        event.is_writable() || event.is_write_closed() || broken,
                        event.is_read_closed() || broken,
                    );
                }
            }
        }
    }

    fn start(&mut self, new: NewSession) {
        let NewSession {
            client,
            backend,
            make,
        } = new;
        let c = self.register(client);
        let b = self.register(backend);
        let sockets = (
            c.and_then(|c| self.sources[c].as_ref().map(Source::halves)),
            b.and_then(|b| self.sources[b].as_ref().map(Source::halves)),
        );
        let (Some(c), Some(b), (Some(client), Some(backend))) = (c, b, sockets) else {
            // Registration failed (epoll out of memory): the sockets are closed, and the
            // session's caller sees its result channel closed.
            for token in [c, b].into_iter().flatten() {
                self.release(token);
            }
            self.shared.sessions.fetch_sub(1, Ordering::Relaxed);
            return;
        };
        let sockets = (
            (LoopRead::Epoll(client.0), LoopWrite::Epoll(client.1)),
            (LoopRead::Epoll(backend.0), LoopWrite::Epoll(backend.1)),
        );
        self.tasks.start(&self.shared, make(sockets), [c, b]);
    }

    /// Register a socket (edge-triggered, both directions); its token.
    fn register(&mut self, fd: OwnedFd) -> Option<usize> {
        let token = self.free_sources.pop().unwrap_or(self.sources.len());
        let raw = fd.as_raw_fd();
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&raw),
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(error = %e, "a session's socket could not join its loop");
            if token < self.sources.len() {
                self.free_sources.push(token);
            }
            return None;
        }
        let source = Arc::new(Source::new(fd));
        if token == self.sources.len() {
            self.sources.push(Some(source));
        } else {
            self.sources[token] = Some(source);
        }
        Some(token)
    }

    /// Forget a socket: it is closed once no half holds it (a finished session's halves went with
    /// its future), which takes it out of the epoll set (it is never duplicated), without a
    /// system call of its own.
    fn release(&mut self, token: usize) {
        if self.sources.get_mut(token).and_then(Option::take).is_some() {
            self.free_sources.push(token);
        }
    }
}
