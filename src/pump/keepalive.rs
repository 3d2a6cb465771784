//! Keepalive deadlines, as pure functions of the session's millisecond clock: when to send a
//! Ping, and when a client that answered nothing is dead.

use std::time::Duration;

/// Keepalive: a Ping after `interval` without hearing from the client; the client is dead if
/// nothing at all arrives within `pong_timeout` after it. Times are milliseconds since the
/// session started; `last_read` is when bytes last came from the client.
pub(super) struct Keepalive {
    interval: Option<Duration>,
    pong_timeout: Duration,
    /// When the outstanding Ping was sent, on the same millisecond clock as the client reads, so
    /// that a Pong arriving within the same millisecond counts as an answer.
    ping_sent: Option<u64>,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Due {
    Nothing,
    Ping,
    Dead,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Keepalive {
    /// `interval: None`: keepalive is off.
    pub(super) fn new(interval: Option<Duration>, pong_timeout: Duration) -> Keepalive {
        Keepalive {
            interval,
            pong_timeout,
            ping_sent: None,
        }
    }

    /// A Ping is waiting for an answer (its deadline may move earlier when one comes).
    pub(super) fn awaiting(&self) -> bool {
        self.ping_sent.is_some()
    }

    /// When to look again (`None`: never).
    pub(super) fn next(&mut self, last_read: u64) -> Option<u64> {
        let interval = ms(self.interval?);
        Some(match self.ping_sent {
            Some(sent) if last_read >= sent => {
                self.ping_sent = None;
                last_read.saturating_add(interval)
            }
            Some(sent) => sent.saturating_add(ms(self.pong_timeout)),
            None => last_read.saturating_add(interval),
        })
    }

    /// What is due at `now`.
    pub(super) fn due(&mut self, now: u64, last_read: u64) -> Due {
        let Some(interval) = self.interval else {
            return Due::Nothing;
        };
        match self.ping_sent {
            Some(sent) if last_read >= sent => {
                self.ping_sent = None;
                Due::Nothing
            }
            Some(sent) if now >= sent.saturating_add(ms(self.pong_timeout)) => Due::Dead,
            Some(_) => Due::Nothing,
            None if now >= last_read.saturating_add(ms(interval)) => {
                self.ping_sent = Some(now);
                Due::Ping
            }
            None => Due::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1000;

    fn keepalive() -> Keepalive {
        Keepalive::new(Some(Duration::from_secs(30)), Duration::from_secs(10))
    }

    #[test]
    fn off_never_pings() {
        let mut k = Keepalive::new(None, Duration::from_secs(10));
        assert_eq!(k.next(0), None);
        assert_eq!(k.due(u64::MAX, 0), Due::Nothing);
    }

    #[test]
    fn pings_after_the_interval_of_silence() {
        let mut k = keepalive();
        assert_eq!(k.next(5 * SEC), Some(35 * SEC));
        assert_eq!(k.due(34 * SEC, 5 * SEC), Due::Nothing);
        assert_eq!(k.due(35 * SEC, 5 * SEC), Due::Ping);
        // Now the pong deadline is what counts.
        assert_eq!(k.next(5 * SEC), Some(45 * SEC));
    }

    #[test]
    fn an_answer_clears_the_ping_and_restarts_the_interval() {
        let mut k = keepalive();
        assert_eq!(k.due(30 * SEC, 0), Due::Ping);
        // Anything read at or after the Ping's millisecond is an answer.
        assert_eq!(k.next(30 * SEC), Some(60 * SEC));
        assert_eq!(k.due(59 * SEC, 30 * SEC), Due::Nothing);
        assert_eq!(k.due(60 * SEC, 30 * SEC), Due::Ping);
    }

    #[test]
    fn silence_after_the_ping_is_death_at_the_pong_timeout() {
        let mut k = keepalive();
        assert_eq!(k.due(30 * SEC, 0), Due::Ping);
        assert_eq!(k.due(39 * SEC, 0), Due::Nothing);
        assert_eq!(k.due(40 * SEC, 0), Due::Dead);
    }

    #[test]
    fn huge_durations_saturate() {
        let mut k = Keepalive::new(Some(Duration::MAX), Duration::MAX);
        assert_eq!(k.next(u64::MAX - 1), Some(u64::MAX));
        assert_eq!(k.due(u64::MAX - 1, 0), Due::Nothing);
    }
}
