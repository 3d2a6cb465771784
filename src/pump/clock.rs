//! The session's millisecond clock, cheap on a session thread.
//!
//! The pump keeps the times of the last traffic in milliseconds since the session started
//! ([`super::Shared`]), read at every batch of data. Anywhere, that is tokio's clock (so a test
//! that pauses time pauses it too). On a session thread (see `src/dataplane`) the loop reads the
//! monotonic clock once per pass, after each wait for events, and a session reads that value: a
//! load instead of a clock read and a subtraction per batch. It is behind by at most the time one
//! pass takes, far below the millisecond resolution of the deadlines it serves.

use std::cell::Cell;

thread_local! {
    /// On a session thread: the monotonic clock in milliseconds, as of the loop's current pass.
    static PASS_MS: Cell<Option<u64>> = const { Cell::new(None) };
}

/// The monotonic clock (that of `std::time::Instant` and tokio's timers) in milliseconds since
/// the first call in this process.
fn monotonic_ms() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let base = BASE.get_or_init(std::time::Instant::now);
    u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A session loop starts a pass: read the clock for the sessions it polls.
pub(crate) fn start_pass() {
    PASS_MS.with(|p| p.set(Some(monotonic_ms())));
}

/// The loop's clock, on a session thread.
pub(super) fn pass_ms() -> Option<u64> {
    PASS_MS.with(Cell::get)
}
