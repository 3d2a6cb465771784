//! A session's first word, before it moves to a session thread: a session whose client closes
//! at once stays on the worker threads.
//!
//! Moving a session costs system calls of its own (its two sockets leave the worker's epoll and
//! join the session thread's, the thread is woken), more than a session that opens and closes at
//! once costs in all. So a session that could move waits on its worker for the first bytes from
//! either side, at most `FIRST_WORD_WAIT_MS`: a client whose first bytes are a WebSocket Close
//! (or the end of its stream) keeps its session here; any other first word, from either side,
//! moves it at once, and so does silence.
//!
//! The wait is timed by one shared clock, not a timer per session: registering a timer earlier
//! than every other one wakes tokio's driver with a system call, which would be a session's
//! whole saving again. The clock ticks only while sessions wait (and for a moment after).
//!
//! This module owns the wait and the clock; where a session runs is `session`'s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{watch, Notify};

use crate::backend::BackendReader;
use crate::pump::SessionInfo;

/// The longest first-word wait, in milliseconds: short enough that no deadline of the session
/// (idle, ping) notices the delay of an idle session's move.
const FIRST_WORD_WAIT_MS: u64 = 20;

/// The clock's period. A session waits for its second tick, so between one period and
/// `FIRST_WORD_WAIT_MS`.
const TICK: Duration = Duration::from_millis(FIRST_WORD_WAIT_MS / 2);

/// Ticks without a waiting session after which the clock stops until the next one.
const QUIET_TICKS: u32 = 100;

/// Most bytes of the client's first word read here (they become the pump's first bytes, as
/// hyper's read-ahead does). A Close frame is at most 131 bytes; a longer message goes on
/// being read where the session runs.
const FIRST_WORD_BYTES: usize = 512;

/// The shared clock: a tick count the waiting sessions watch.
struct Clock {
    tick: watch::Sender<u64>,
    /// The ticking task waits for a session to wait.
    stopped: AtomicBool,
    start: Notify,
}

static CLOCK: OnceLock<Clock> = OnceLock::new();

/// The clock, its task started on first use (on the current runtime).
fn clock() -> &'static Clock {
    if let Some(clock) = CLOCK.get() {
        return clock;
    }
    let mut first = false;
    let clock = CLOCK.get_or_init(|| {
        first = true;
        Clock {
            tick: watch::Sender::new(0),
            stopped: AtomicBool::new(false),
            start: Notify::new(),
        }
    });
    if first {
        tokio::spawn(run_clock(clock));
    }
    clock
}

async fn run_clock(clock: &'static Clock) {
    let mut quiet = 0;
    loop {
        tokio::time::sleep(TICK).await;
        clock.tick.send_modify(|t| *t = t.wrapping_add(1));
        quiet = if clock.tick.receiver_count() == 0 {
            quiet + 1
        } else {
            0
        };
        if quiet >= QUIET_TICKS {
            clock.stopped.store(true, Ordering::SeqCst);
            // A session that subscribed before the flag was set is seen here; one after it
            // finds the flag and starts the clock (a start left over only costs a tick).
            if clock.tick.receiver_count() == 0 {
                clock.start.notified().await;
            }
            clock.stopped.store(false, Ordering::SeqCst);
            quiet = 0;
        }
    }
}

/// Wait for the clock's second tick from now.
async fn two_ticks() {
    let clock = clock();
    let mut ticks = clock.tick.subscribe();
    if clock.stopped.swap(false, Ordering::SeqCst) {
        clock.start.notify_one();
    }
    for _ in 0..2 {
        if ticks.changed().await.is_err() {
            // The clock is gone (the runtime is shutting down): the session moves now.
            return;
        }
    }
}

/// Whether a session that could move to a session thread (`r` is its client's read half) ends
/// at once, so that it stays on this worker: its client's first bytes (those hyper read past
/// the request, or the first to arrive within `FIRST_WORD_WAIT_MS`) are a WebSocket Close, or its
/// client closed the connection. The bytes read here are appended to `preread`. Drain, cut and
/// operator close end the wait; the session then stays here and the pump acts on them at once.
pub(super) async fn ends_at_once(
    r: &OwnedReadHalf,
    backend: &BackendReader,
    preread: &mut Vec<u8>,
    info: &SessionInfo,
) -> bool {
    if !preread.is_empty() {
        return starts_with_close(preread);
    }
    let backend_readable = async {
        match backend {
            BackendReader::Tcp(b) => b.readable().await,
            BackendReader::Unix(b) => b.readable().await,
            BackendReader::Tls(_) => std::future::pending().await,
        }
    };
    let client_spoke = tokio::select! {
        biased;
        ready = r.readable() => ready.is_ok(),
        _ = backend_readable => false,
        _ = info.control.told_of(crate::pump::Told::ANY) => return true,
        () = two_ticks() => false,
    };
    if !client_spoke {
        return false;
    }
    let mut first = Vec::with_capacity(FIRST_WORD_BYTES);
    match r.try_read_buf(&mut first) {
        // The client closed its side (or the read failed: the pump meets the same end here).
        Ok(0) => true,
        Ok(_) => {
            let close = starts_with_close(&first);
            *preread = first;
            close
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// Whether `bytes` start with a WebSocket Close frame's first byte (RFC 6455 §5.5.1: opcode 0x8;
/// §5.4: control frames are never fragmented, so FIN is set).
fn starts_with_close(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(|b| b & 0x8f == 0x88)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_frame_is_told_from_other_first_bytes() {
        // Masked Close with code 1000, as a client sends it.
        assert!(starts_with_close(&[0x88, 0x82, 1, 2, 3, 4, 0x02, 0xea]));
        assert!(starts_with_close(&[0x88]));
        // Binary, text, ping; a Close opcode without FIN is no Close (and invalid).
        assert!(!starts_with_close(&[0x82, 0x80]));
        assert!(!starts_with_close(&[0x81, 0x80]));
        assert!(!starts_with_close(&[0x89, 0x80]));
        assert!(!starts_with_close(&[0x08, 0x80]));
        assert!(!starts_with_close(&[]));
    }
}
