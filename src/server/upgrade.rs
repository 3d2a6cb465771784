//! Zero-downtime binary upgrade: the hand-over of the listening sockets from a running process
//! (the predecessor) to a new one started with `wsgate --upgrade` (the successor), over the unix
//! socket `[runtime] upgrade_socket`.
//!
//! The conversation, one connection:
//! 1. The successor connects. The predecessor sends one JSON line, `{"pid":N,"sockets":[KEY,...]}`,
//!    with the listening sockets' file descriptors attached (SCM_RIGHTS), in the order of the
//!    keys. A key is the listener's `bind` string (`127.0.0.1:8080`, `unix:/run/ws.sock`,
//!    `systemd:web`), or `admin:ADDR` for the admin listener.
//! 2. The successor binds its configuration's listeners from the sockets whose keys match (the
//!    others fresh), becomes ready, and sends `ready` (or `failed: REASON` and exits).
//! 3. On `ready` the predecessor stops accepting (closes its copies of the sockets: the kernel
//!    sockets live on in the successor, so no connection attempt is refused), answers `done`, and
//!    drains its sessions as on SIGTERM. On anything else it logs why and keeps serving.
//!
//! This module owns the socket file, the messages and the file descriptors in transit; which
//! listener takes which socket, and the drain, belong to the server (`super`). File descriptors
//! cross with `rustix`'s `sendmsg`/`recvmsg`, so no unsafe code is needed here.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::unix::SocketFile;
use super::RunError;

/// Most sockets handed over: Linux passes at most 253 descriptors in one message (SCM_MAX_FD).
pub(super) const MAX_SOCKETS: usize = 250;

/// Longest description line accepted (the JSON with the keys).
const MAX_OFFER_BYTES: usize = 64 * 1024;

/// Longest `ready` / `failed: ...` / `done` line accepted.
const MAX_REPLY_BYTES: usize = 4096;

/// How long the predecessor waits for its successor's `ready`: binding, loading certificates and
/// starting take moments; a successor silent this long is given up on (the predecessor serves on).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// How long each step of the successor's side may take (connect, the offer, `done`).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The key of the admin listener in the offer.
pub(super) fn admin_key(addr: &std::net::SocketAddr) -> String {
    format!("admin:{addr}")
}

/// Why a binary upgrade failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("--upgrade needs [runtime] upgrade_socket in the configuration (the socket the running wsgate listens on)")]
    NotConfigured,
    #[error("no running wsgate answers on the upgrade socket {}: {source} (is it running, with the same [runtime] upgrade_socket?)", path.display())]
    NoPredecessor { path: PathBuf, source: io::Error },
    #[error("the upgrade socket {}: {detail}", path.display())]
    Protocol { path: PathBuf, detail: String },
    #[error("more than {MAX_SOCKETS} listening sockets cannot be handed over")]
    TooManySockets,
}

/// The predecessor's description of the descriptors it sends.
#[derive(Debug, Serialize, Deserialize)]
struct Offer {
    pid: u32,
    sockets: Vec<String>,
}

/// Bind the upgrade socket (mode 0600). A successor binds a temporary name beside it and takes
/// the path over once its predecessor let go ([`Handover::ready`]).
pub(super) async fn bind(
    path: &Path,
    successor: bool,
) -> Result<(UnixListener, SocketFile, PathBuf), RunError> {
    let at = if successor {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{}", std::process::id()));
        PathBuf::from(name)
    } else {
        path.to_path_buf()
    };
    let (listener, file) = super::unix::bind(&at, Some(0o600)).await?;
    Ok((listener, file, at))
}

/// The predecessor's side: answer successors on `listener` until one takes over (then
/// `upgraded` is cancelled) or `stop` is cancelled. `sockets` are copies of the listening
/// sockets, closed when this returns.
pub(super) async fn serve(
    listener: UnixListener,
    file: SocketFile,
    sockets: Vec<(String, OwnedFd)>,
    stop: CancellationToken,
    upgraded: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "upgrade socket: accept failed");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        // Only this user (or root) may take the sockets; the file's mode says so too.
        match stream.peer_cred() {
            Ok(c) if c.uid() == rustix::process::geteuid().as_raw() || c.uid() == 0 => {}
            Ok(c) => {
                warn!(
                    uid = c.uid(),
                    "upgrade socket: a process of another user was refused"
                );
                continue;
            }
            Err(e) => {
                warn!(error = %e, "upgrade socket: cannot tell who connected; refused");
                continue;
            }
        }
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            r = offer(&stream, &sockets) => r,
        };
        match outcome {
            Ok(pid) => {
                info!(
                    successor = pid,
                    "binary upgrade: the new process is ready; stopping accepting and draining"
                );
                upgraded.cancel();
                // The successor's sockets are the same kernel sockets: close our copies, and
                // let the path go to the successor's upgrade socket.
                drop(sockets);
                drop(listener);
                drop(file);
                let mut stream = stream;
                let _ = stream.write_all(b"done\n").await;
                return;
            }
            Err(e) => {
                warn!("binary upgrade failed; this process keeps serving: {e}");
            }
        }
    }
}

/// Send the sockets to one successor and wait for its `ready`: its pid, or why not.
async fn offer(stream: &UnixStream, sockets: &[(String, OwnedFd)]) -> Result<u32, String> {
    if sockets.len() > MAX_SOCKETS {
        return Err(UpgradeError::TooManySockets.to_string());
    }
    let offer = Offer {
        pid: std::process::id(),
        sockets: sockets.iter().map(|(k, _)| k.clone()).collect(),
    };
    let mut line = serde_json::to_vec(&offer).map_err(|e| e.to_string())?;
    line.push(b'\n');
    let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|(_, fd)| fd.as_fd()).collect();
    let sent = stream
        .async_io(Interest::WRITABLE, || {
            let mut space =
                vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
                return Err(io::Error::other("the descriptors do not fit the message"));
            }
            rustix::net::sendmsg(
                stream,
                &[IoSlice::new(&line)],
                &mut control,
                SendFlags::NOSIGNAL,
            )
            .map_err(io::Error::from)
        })
        .await
        .map_err(|e| format!("cannot send the listening sockets: {e}"))?;
    let mut rest = line.get(sent..).unwrap_or_default();
    while !rest.is_empty() {
        stream.writable().await.map_err(|e| e.to_string())?;
        match stream.try_write(rest) {
            Ok(n) => rest = rest.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("cannot send the listening sockets: {e}")),
        }
    }
    let mut pending = Vec::new();
    let reply = tokio::time::timeout(READY_TIMEOUT, read_line(stream, &mut pending))
        .await
        .map_err(|_| format!("the new process did not become ready within {READY_TIMEOUT:?}"))?
        .map_err(|e| format!("the new process went away before it was ready ({e})"))?;
    match reply.as_str() {
        "ready" => Ok(peer_pid(stream).unwrap_or(0)),
        other => Err(match other.strip_prefix("failed: ") {
            Some(reason) => format!("the new process failed to start: {reason}"),
            None => format!("unexpected message from the new process: {other:?}"),
        }),
    }
}

/// The connected process's pid (SO_PEERCRED), for the log.
fn peer_pid(stream: &UnixStream) -> Option<u32> {
    let pid = stream.peer_cred().ok()?.pid()?;
    u32::try_from(pid).ok()
}

/// Read one line (without its `\n`) of at most [`MAX_REPLY_BYTES`]; `pending` holds bytes read
/// past it. End of stream before a whole line is an error.
async fn read_line(stream: &UnixStream, pending: &mut Vec<u8>) -> io::Result<String> {
    loop {
        if let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).take(end).collect();
            return String::from_utf8(line)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"));
        }
        if pending.len() > MAX_REPLY_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
        let mut buf = [0u8; 512];
        stream.readable().await?;
        match stream.try_read(&mut buf) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ))
            }
            Ok(n) => pending.extend_from_slice(buf.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// The successor's side of one hand-over: the sockets received, by key, until the listeners
/// take them.
pub(super) struct Handover {
    stream: UnixStream,
    path: PathBuf,
    /// The predecessor's pid.
    pub pid: u32,
    sockets: HashMap<String, Vec<OwnedFd>>,
}

/// Connect to the running process on `path` and receive its listening sockets.
pub(super) async fn connect(path: &Path) -> Result<Handover, UpgradeError> {
    let protocol = |detail: String| UpgradeError::Protocol {
        path: path.to_path_buf(),
        detail,
    };
    let stream = match tokio::time::timeout(STEP_TIMEOUT, UnixStream::connect(path)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => {
            return Err(UpgradeError::NoPredecessor {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(_) => {
            return Err(UpgradeError::NoPredecessor {
                path: path.to_path_buf(),
                source: io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
            })
        }
    };
    let (line, fds) = tokio::time::timeout(STEP_TIMEOUT, receive(&stream))
        .await
        .map_err(|_| protocol("no listening sockets came from the running process".into()))?
        .map_err(|e| protocol(format!("cannot receive the listening sockets: {e}")))?;
    let offer: Offer = serde_json::from_slice(&line)
        .map_err(|e| protocol(format!("unreadable description of the sockets: {e}")))?;
    if offer.sockets.len() != fds.len() {
        return Err(protocol(format!(
            "{} sockets described, {} received",
            offer.sockets.len(),
            fds.len()
        )));
    }
    let mut sockets: HashMap<String, Vec<OwnedFd>> = HashMap::new();
    for (key, fd) in offer.sockets.into_iter().zip(fds) {
        sockets.entry(key).or_default().push(fd);
    }
    info!(
        predecessor = offer.pid,
        sockets = sockets.values().map(Vec::len).sum::<usize>(),
        "binary upgrade: received the listening sockets"
    );
    Ok(Handover {
        stream,
        path: path.to_path_buf(),
        pid: offer.pid,
        sockets,
    })
}

/// The description line and the descriptors that came with it.
async fn receive(stream: &UnixStream) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut line = Vec::new();
    let mut fds = Vec::new();
    loop {
        let mut buf = [0u8; 4096];
        let (n, truncated) = stream
            .async_io(Interest::READABLE, || {
                let mut space =
                    vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let msg = rustix::net::recvmsg(
                    stream,
                    &mut [IoSliceMut::new(&mut buf)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )
                .map_err(io::Error::from)?;
                for m in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = m {
                        fds.extend(received);
                    }
                }
                Ok((msg.bytes, msg.flags.contains(ReturnFlags::CTRUNC)))
            })
            .await?;
        if truncated {
            return Err(io::Error::other("descriptors were lost in transit"));
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        line.extend_from_slice(buf.get(..n).unwrap_or_default());
        if let Some(end) = line.iter().position(|b| *b == b'\n') {
            if end + 1 != line.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "data after the description",
                ));
            }
            line.truncate(end);
            return Ok((line, fds));
        }
        if line.len() > MAX_OFFER_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "description too long",
            ));
        }
    }
}

impl Handover {
    /// Take the sockets sent under `key` (none when there were none).
    pub(super) fn take(&mut self, key: &str) -> Vec<OwnedFd> {
        self.sockets.remove(key).unwrap_or_default()
    }

    /// Whether sockets were sent under `key`.
    pub(super) fn has(&self, key: &str) -> bool {
        self.sockets.contains_key(key)
    }

    /// Close the sockets no listener took, with a log line each.
    pub(super) fn close_unused(&mut self) {
        for (key, fds) in self.sockets.drain() {
            warn!(socket = %key, count = fds.len(), "binary upgrade: a socket handed over is not used by any listener; closed");
        }
    }

    /// This process is ready: tell the predecessor, and wait for it to stop accepting. Then the
    /// upgrade socket bound at `temporary` takes over the configured path.
    pub(super) async fn ready(mut self, temporary: &Path) -> Result<(), UpgradeError> {
        let protocol = |detail: String| UpgradeError::Protocol {
            path: self.path.clone(),
            detail,
        };
        let exchange = async {
            self.stream.write_all(b"ready\n").await?;
            let mut pending = Vec::new();
            read_line(&self.stream, &mut pending).await
        };
        let reply = tokio::time::timeout(STEP_TIMEOUT, exchange)
            .await
            .map_err(|_| protocol("the running process did not answer `ready`".into()))?
            .map_err(|e| protocol(format!("the running process did not confirm: {e}")))?;
        if reply != "done" {
            return Err(protocol(format!("unexpected answer {reply:?}")));
        }
        std::fs::rename(temporary, &self.path).map_err(|e| {
            protocol(format!(
                "cannot move the new upgrade socket {} into place: {e}",
                temporary.display()
            ))
        })?;
        info!(
            predecessor = self.pid,
            "binary upgrade done: this process serves; the old one drains"
        );
        Ok(())
    }

    /// Starting failed: tell the predecessor why (it keeps serving).
    pub(super) async fn failed(mut self, reason: &str) {
        let line = format!("failed: {}\n", reason.replace('\n', " "));
        let _ = tokio::time::timeout(STEP_TIMEOUT, self.stream.write_all(line.as_bytes())).await;
    }
}
