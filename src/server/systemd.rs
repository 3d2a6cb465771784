//! Socket activation (sd_listen_fds(3)): the listening sockets systemd passed to this process
//! (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`; the sockets are the file descriptors from 3 on),
//! matched to the `bind = "systemd:NAME"` listeners by name. Every socket with that name is taken
//! (a `.socket` unit with two `ListenStream=` lines passes two); each must be a listening TCP or
//! unix-domain stream socket. The variables are removed once read, so that nothing started later
//! takes the sockets again.
//!
//! Serving the sockets belongs to the accept loop (`super`); this module only hands them over.
//! The file descriptors become sockets through the `listenfd` crate, which owns the one unsafe
//! step (a number into a socket) after checking the descriptor is a socket of the kind asked.

use std::collections::{HashMap, HashSet};
use std::io;

use tokio::net::{TcpListener, UnixListener};
use tracing::warn;

use super::{Listening, RunError};
use crate::config::{ListenAddr, Listener};

pub(super) const LISTEN_PID_ENV: &str = "LISTEN_PID";
pub(super) const LISTEN_FDS_ENV: &str = "LISTEN_FDS";
pub(super) const LISTEN_FDNAMES_ENV: &str = "LISTEN_FDNAMES";

/// The first file descriptor systemd passes (`SD_LISTEN_FDS_START`).
pub(super) const LISTEN_FDS_START: usize = 3;

/// Most sockets taken from `LISTEN_FDS` (a larger count is refused, not allocated).
const MAX_LISTEN_FDS: usize = 4096;

/// Why the sockets systemd passed cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivationError {
    #[error("no sockets were passed to wsgate (LISTEN_FDS is not set): start it from a systemd .socket unit or with systemd-socket-activate, or bind an address instead")]
    NoSockets,
    #[error("LISTEN_PID is {listen_pid:?}, not this process ({ours}): the sockets were passed to another process")]
    OtherProcess { listen_pid: String, ours: u32 },
    #[error("LISTEN_FDS {0:?} is not a number of sockets (at most {MAX_LISTEN_FDS})")]
    BadCount(String),
    #[error("LISTEN_FDNAMES has {names} names for {fds} sockets")]
    NameCount { names: usize, fds: usize },
    #[error("no socket passed by systemd is named {name:?} (LISTEN_FDNAMES: {known}); set FileDescriptorName={name} in the .socket unit")]
    NameNotFound { name: String, known: String },
    #[error("the socket {name:?} (file descriptor {fd}) is not a listening TCP or unix stream socket: {reason}")]
    NotAListener {
        name: String,
        fd: usize,
        reason: String,
    },
    #[error("the socket {name:?} (file descriptor {fd}) is a unix socket; accept_plain applies only to TCP")]
    AcceptPlainOnUnix { name: String, fd: usize },
}

/// The names of the passed sockets, in file descriptor order (fd 3 first), from the variables'
/// values. `LISTEN_FDNAMES` is optional: without it every socket is named `unknown`, as
/// systemd's own library names them.
pub(super) fn parse_env(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    ours: u32,
) -> Result<Vec<String>, ActivationError> {
    let Some(fds) = listen_fds else {
        return Err(ActivationError::NoSockets);
    };
    let pid = listen_pid.unwrap_or_default();
    if pid.trim().parse::<u32>().ok() != Some(ours) {
        return Err(ActivationError::OtherProcess {
            listen_pid: pid.to_string(),
            ours,
        });
    }
    let count = fds
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n <= MAX_LISTEN_FDS)
        .ok_or_else(|| ActivationError::BadCount(fds.to_string()))?;
    match listen_fdnames {
        None => Ok(vec!["unknown".to_string(); count]),
        Some(names) => {
            let names: Vec<String> = if count == 0 {
                Vec::new()
            } else {
                names.split(':').map(str::to_string).collect()
            };
            if names.len() != count {
                return Err(ActivationError::NameCount {
                    names: names.len(),
                    fds: count,
                });
            }
            Ok(names)
        }
    }
}

/// Passed sockets by their index from fd 3: which ones each `systemd:NAME` listener takes (by
/// listener index), and the ones no listener takes.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Assigned {
    pub taken: Vec<(usize, Vec<usize>)>,
    pub unused: Vec<usize>,
}

/// Match the passed sockets' names to the `systemd:NAME` listeners.
pub(super) fn assign(
    listeners: &[Listener],
    names: &[String],
    handed_over: &HashSet<usize>,
) -> Result<Assigned, ActivationError> {
    let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in names.iter().enumerate() {
        by_name.entry(n.as_str()).or_default().push(i);
    }
    let mut taken = Vec::new();
    for (index, l) in listeners.iter().enumerate() {
        let ListenAddr::Systemd(name) = &l.bind else {
            continue;
        };
        if handed_over.contains(&index) {
            continue;
        }
        match by_name.remove(name.as_str()) {
            Some(fds) => taken.push((index, fds)),
            None => {
                let mut known: Vec<&str> = names.iter().map(String::as_str).collect();
                known.dedup();
                return Err(ActivationError::NameNotFound {
                    name: name.clone(),
                    known: if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(":")
                    },
                });
            }
        }
    }
    let mut unused: Vec<usize> = by_name.into_values().flatten().collect();
    unused.sort_unstable();
    Ok(Assigned { taken, unused })
}

/// A socket taken from systemd, ready for the accept loop, and what to log about it.
pub(super) struct Inherited {
    pub listening: Listening,
    pub index: usize,
    pub name: String,
    pub fd: usize,
}

/// Take the sockets of every `systemd:NAME` listener from the environment; nothing (and the
/// environment left alone) when no listener asks for one. Listeners in `handed_over` got their
/// sockets in a binary upgrade and take none.
pub(super) fn take(
    listeners: &[Listener],
    handed_over: &HashSet<usize>,
) -> Result<Vec<Inherited>, RunError> {
    if !listeners
        .iter()
        .enumerate()
        .any(|(i, l)| matches!(l.bind, ListenAddr::Systemd(_)) && !handed_over.contains(&i))
    {
        return Ok(Vec::new());
    }
    let var = |k: &str| std::env::var(k).ok();
    let names = parse_env(
        var(LISTEN_PID_ENV).as_deref(),
        var(LISTEN_FDS_ENV).as_deref(),
        var(LISTEN_FDNAMES_ENV).as_deref(),
        std::process::id(),
    )?;
    // listenfd reads LISTEN_FDS (and LISTEN_PID, already checked above) and removes both. This
    // runs at startup, before any task that could read the environment (DNS lookups, health
    // checks, connections) exists.
    let mut fds = listenfd::ListenFd::from_env();
    std::env::remove_var(LISTEN_FDNAMES_ENV);
    let Assigned { taken, unused } = assign(listeners, &names, handed_over)?;
    for i in unused {
        warn!(
            name = %names[i],
            fd = LISTEN_FDS_START + i,
            "a socket passed by systemd is not used by any listener"
        );
    }
    let mut out = Vec::new();
    for (index, sockets) in taken {
        for i in sockets {
            let name = names[i].clone();
            let fd = LISTEN_FDS_START + i;
            let not_listener = |reason: String| ActivationError::NotAListener {
                name: name.clone(),
                fd,
                reason,
            };
            let listening = match fds.take_tcp_listener(i) {
                Ok(Some(l)) => {
                    check_listening(socket2::SockRef::from(&l)).map_err(not_listener)?;
                    tcp_options(&l).map_err(|e| not_listener(e.to_string()))?;
                    l.set_nonblocking(true)
                        .map_err(|e| not_listener(e.to_string()))?;
                    Listening::Tcp(
                        TcpListener::from_std(l).map_err(|e| not_listener(e.to_string()))?,
                    )
                }
                Ok(None) => return Err(not_listener("already taken".to_string()).into()),
                Err(tcp_err) => match fds.take_unix_listener(i) {
                    Ok(Some(l)) => {
                        check_listening(socket2::SockRef::from(&l)).map_err(not_listener)?;
                        if listeners.get(index).is_some_and(|l| l.accept_plain) {
                            return Err(ActivationError::AcceptPlainOnUnix { name, fd }.into());
                        }
                        l.set_nonblocking(true)
                            .map_err(|e| not_listener(e.to_string()))?;
                        Listening::Unix(
                            UnixListener::from_std(l).map_err(|e| not_listener(e.to_string()))?,
                        )
                    }
                    Ok(None) => return Err(not_listener("already taken".to_string()).into()),
                    Err(_) => return Err(not_listener(tcp_err.to_string()).into()),
                },
            };
            out.push(Inherited {
                listening,
                index,
                name,
                fd,
            });
        }
    }
    Ok(out)
}

/// A stream socket in the listening state (`SO_TYPE`, `SO_ACCEPTCONN`).
pub(super) fn check_listening(socket: socket2::SockRef<'_>) -> Result<(), String> {
    match socket.r#type() {
        Ok(socket2::Type::STREAM) => {}
        Ok(_) => return Err("not a stream socket".to_string()),
        Err(e) => return Err(e.to_string()),
    }
    match socket.is_listener() {
        Ok(true) => Ok(()),
        Ok(false) => Err(
            "not listening (no listen() call; use ListenStream=, not Accept=yes connections)"
                .to_string(),
        ),
        Err(e) => Err(e.to_string()),
    }
}

/// The options [`super::bind_listener`] sets on a socket it binds, for a passed one.
pub(super) fn tcp_options(l: &std::net::TcpListener) -> io::Result<()> {
    let sock = socket2::SockRef::from(l);
    sock.set_tcp_nodelay(true)?;
    #[cfg(target_os = "linux")]
    sock.set_tcp_notsent_lowat(super::CLIENT_NOTSENT_LOWAT_BYTES)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    #[test]
    fn environment() {
        let ok = |pid, fds, names| parse_env(Some(pid), Some(fds), names, 42);
        assert_eq!(
            ok("42", "2", Some("web:tls")).unwrap(),
            vec!["web".to_string(), "tls".to_string()]
        );
        assert_eq!(ok("42", "1", None).unwrap(), vec!["unknown".to_string()]);
        assert_eq!(ok("42", "0", Some("")).unwrap(), Vec::<String>::new());
        assert_eq!(
            parse_env(None, None, None, 42),
            Err(ActivationError::NoSockets)
        );
        assert!(matches!(
            ok("41", "1", None),
            Err(ActivationError::OtherProcess { .. })
        ));
        assert!(matches!(
            parse_env(None, Some("1"), None, 42),
            Err(ActivationError::OtherProcess { .. })
        ));
        assert!(matches!(
            ok("42", "x", None),
            Err(ActivationError::BadCount(_))
        ));
        assert!(matches!(
            ok("42", "100000", None),
            Err(ActivationError::BadCount(_))
        ));
        assert_eq!(
            ok("42", "2", Some("web")),
            Err(ActivationError::NameCount { names: 1, fds: 2 })
        );
    }

    #[test]
    fn sockets_go_to_listeners_by_name() {
        let text = "[[listener]]\nbind = \"systemd:web\"\n[[listener]]\nbind = \"127.0.0.1:0\"\n\
                    [[listener]]\nbind = \"systemd:tls\"\n\
                    [[route]]\npath = \"/\"\nbackend = \"127.0.0.1:9\"\n";
        let config = Config::parse(text, Path::new("/etc/wsgate")).unwrap();
        let names: Vec<String> = ["web", "tls", "web", "spare"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let a = assign(&config.listeners, &names, &HashSet::new()).unwrap();
        assert_eq!(a.taken, vec![(0, vec![0, 2]), (2, vec![1])]);
        assert_eq!(a.unused, vec![3]);
        let names = vec!["web".to_string()];
        match assign(&config.listeners, &names, &HashSet::new()) {
            Err(ActivationError::NameNotFound { name, known }) => {
                assert_eq!(name, "tls");
                assert_eq!(known, "web");
            }
            other => panic!("{other:?}"),
        }
    }
}
