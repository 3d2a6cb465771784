//! systemd's readiness protocol (`Type=notify`, sd_notify(3)): one datagram per state change to
//! the unix socket named by `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
//!
//! The gateway says `READY=1` once every listener is bound (the moment `/readyz` turns ready),
//! `RELOADING=1` with `MONOTONIC_USEC=` when a SIGHUP reload starts and `READY=1` after it,
//! `STOPPING=1` when the drain starts, and `STATUS=` lines (sessions open) for `systemctl status`.
//! Which moments those are is the server's business; this module owns the socket and the text.
//!
//! Sending never blocks and never fails the gateway: a message that cannot be sent is logged at
//! debug and dropped (systemd then sees a late or missing state, never a stuck process).

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use tracing::{debug, warn};

/// The environment variable systemd sets for a `Type=notify` service.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Longest message sent: systemd reads at most a page-sized datagram; STATUS text is cut
/// before that.
const MAX_STATUS_BYTES: usize = 1024;

/// Where readiness messages go; does nothing when notification is off.
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// The last `STATUS=` line sent, whatever message carried it.
    last_status: std::sync::Mutex<String>,
}

/// Why `NOTIFY_SOCKET` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET {0:?} is neither an absolute path nor an abstract name (@name)")]
    BadAddress(String),
    #[error("NOTIFY_SOCKET {addr:?}: {source}")]
    Socket { addr: String, source: io::Error },
}

/// The socket address of a `NOTIFY_SOCKET` value: `/path` or `@abstract-name`.
pub fn parse_address(value: &str) -> Result<SocketAddr, NotifyError> {
    let bad = || NotifyError::BadAddress(value.to_string());
    if let Some(name) = value.strip_prefix('@') {
        if name.is_empty() {
            return Err(bad());
        }
        return abstract_address(name).ok_or_else(bad);
    }
    if !value.starts_with('/') {
        return Err(bad());
    }
    SocketAddr::from_pathname(value).map_err(|_| bad())
}

/// An address in Linux's abstract socket namespace.
#[cfg(target_os = "linux")]
fn abstract_address(name: &str) -> Option<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name.as_bytes()).ok()
}

#[cfg(not(target_os = "linux"))]
fn abstract_address(_name: &str) -> Option<SocketAddr> {
    None
}

/// A message's `STATUS=` line: one line of text, cut to [`MAX_STATUS_BYTES`] on a character
/// boundary.
fn status_line(text: &str) -> String {
    let mut line: String = text
        .chars()
        .map(|c| if c == '\n' { ' ' } else { c })
        .collect();
    if line.len() > MAX_STATUS_BYTES {
        let mut end = MAX_STATUS_BYTES;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    format!("STATUS={line}")
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares `MONOTONIC_USEC=` with.
fn monotonic_usec() -> u128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u128::try_from(t.tv_sec).unwrap_or(0);
    let nanos = u128::try_from(t.tv_nsec).unwrap_or(0);
    secs * 1_000_000 + nanos / 1_000
}

impl Notifier {
    /// Notification as `[runtime] notify` says: `Some(false)` off; `Some(true)` on (a warning
    /// when `NOTIFY_SOCKET` is missing); `None` on when `NOTIFY_SOCKET` is set.
    pub fn from_env(setting: Option<bool>) -> Notifier {
        if setting == Some(false) {
            return Notifier::default();
        }
        let value = match std::env::var(NOTIFY_SOCKET_ENV) {
            Ok(v) if !v.is_empty() => v,
            _ => {
                if setting == Some(true) {
                    warn!("[runtime] notify = true, but NOTIFY_SOCKET is not set; no readiness messages are sent");
                }
                return Notifier::default();
            }
        };
        match Notifier::to(&value) {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "systemd notification is off");
                Notifier::default()
            }
        }
    }

    /// A notifier sending to the socket `value` (a `NOTIFY_SOCKET` value).
    pub fn to(value: &str) -> Result<Notifier, NotifyError> {
        let addr = parse_address(value)?;
        let failed = |source| NotifyError::Socket {
            addr: value.to_string(),
            source,
        };
        let socket = UnixDatagram::unbound().map_err(failed)?;
        socket.set_nonblocking(true).map_err(failed)?;
        Ok(Notifier {
            target: Some((socket, addr)),
            last_status: Default::default(),
        })
    }

    /// Whether messages are sent at all.
    pub fn is_on(&self) -> bool {
        self.target.is_some()
    }

    /// Send one message (newline-separated `KEY=VALUE` lines), ending with `status` (a
    /// `STATUS=` line).
    fn send(&self, head: &str, status: String) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        let message = format!("{head}{status}");
        *self.last_status.lock().unwrap_or_else(|e| e.into_inner()) = status;
        if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
            debug!(error = %e, "cannot send a systemd notification");
        }
    }

    /// `READY=1`: every listener is bound (or a reload is done), with a status line.
    pub fn ready(&self, status: &str) {
        self.send("READY=1\n", status_line(status));
    }

    /// `MAINPID=` (this process) and `READY=1`: a binary upgrade made this process the service's
    /// main process (the unit needs `NotifyAccess=all` for systemd to accept it).
    pub fn ready_as_main(&self, status: &str) {
        self.send(
            &format!("MAINPID={}\nREADY=1\n", std::process::id()),
            status_line(status),
        );
    }

    /// `RELOADING=1`: a configuration reload starts now.
    pub fn reloading(&self) {
        self.send(
            &format!("RELOADING=1\nMONOTONIC_USEC={}\n", monotonic_usec()),
            status_line("reloading the configuration"),
        );
    }

    /// `STOPPING=1`: the drain starts; no new connections are accepted.
    pub fn stopping(&self, status: &str) {
        self.send("STOPPING=1\n", status_line(status));
    }

    /// A `STATUS=` line alone, if it differs from the last one sent (by any message).
    pub fn status(&self, status: &str) {
        let line = status_line(status);
        if *self.last_status.lock().unwrap_or_else(|e| e.into_inner()) != line {
            self.send("", line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn addresses() {
        assert!(parse_address("/run/systemd/notify").is_ok());
        assert!(parse_address("@sd-notify").is_ok());
        for bad in ["", "@", "relative/path", "notify"] {
            assert!(
                matches!(parse_address(bad), Err(NotifyError::BadAddress(_))),
                "{bad}"
            );
        }
        let long = format!("/{}", "x".repeat(200));
        assert!(parse_address(&long).is_err());
    }

    #[test]
    fn messages_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::to(path.to_str().unwrap()).unwrap();
        assert!(n.is_on());
        n.ready("serving\non 1 listener");
        assert_eq!(recv(&socket), "READY=1\nSTATUS=serving on 1 listener");
        n.reloading();
        let msg = recv(&socket);
        let lines: Vec<&str> = msg.lines().collect();
        assert_eq!(lines[0], "RELOADING=1");
        let usec: u128 = lines[1]
            .strip_prefix("MONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec > 0);
        n.stopping("draining");
        assert_eq!(recv(&socket), "STOPPING=1\nSTATUS=draining");
        n.status(&"é".repeat(MAX_STATUS_BYTES));
        let msg = recv(&socket);
        assert!(
            msg.len() <= "STATUS=".len() + MAX_STATUS_BYTES,
            "{}",
            msg.len()
        );
    }

    #[test]
    fn a_status_is_sent_only_when_it_differs_from_the_last_one_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        let n = Notifier::to(path.to_str().unwrap()).unwrap();
        n.ready("ready; 0 sessions open");
        assert_eq!(recv(&socket), "READY=1\nSTATUS=ready; 0 sessions open");
        // The same text as the ready message's: nothing new to say.
        n.status("ready; 0 sessions open");
        n.status("ready; 1 session open");
        n.status("ready; 1 session open");
        assert_eq!(recv(&socket), "STATUS=ready; 1 session open");
        // A message of another kind counts as the last status too.
        n.stopping("draining");
        assert_eq!(recv(&socket), "STOPPING=1\nSTATUS=draining");
        n.status("draining");
        n.status("ready; 1 session open");
        assert_eq!(recv(&socket), "STATUS=ready; 1 session open");
        let mut buf = [0u8; 64];
        assert!(socket.recv(&mut buf).is_err(), "a repeated status was sent");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn messages_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("wsgate-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::to(&format!("@{name}")).unwrap();
        n.ready("up");
        assert_eq!(recv(&socket), "READY=1\nSTATUS=up");
    }

    #[test]
    fn off_sends_nothing() {
        let n = Notifier::default();
        assert!(!n.is_on());
        n.ready("nobody listens");
        assert!(!Notifier::from_env(Some(false)).is_on());
    }
}
