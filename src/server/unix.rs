//! A unix-socket listener's file, from bind to removal: a stale socket left by a process that
//! died is replaced, a live one (something accepts on it) or a file that is not a socket is a
//! startup error and is left untouched; `mode` is applied after the bind; the file is removed at
//! shutdown only if it is still the one this process created (same device and inode).
//!
//! Accepting on the socket and serving its clients belong to the accept loop (`super`).

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info, warn};

use super::RunError;

/// How long the stale check waits for a connection to an existing socket file: a live listener
/// accepts at once (the kernel queues the connection); no answer in this time counts as live.
const STALE_PROBE_TIMEOUT_MS: u64 = 1000;

/// A socket file this process created. Dropping it removes the file, if the path still names the
/// same file (another process may have replaced it meanwhile).
pub(super) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {
                match fs::remove_file(&self.path) {
                    Ok(()) => debug!(path = %self.path.display(), "unix socket file removed"),
                    Err(e) => {
                        warn!(path = %self.path.display(), error = %e, "cannot remove the unix socket file")
                    }
                }
            }
            Ok(_) => {
                info!(path = %self.path.display(), "unix socket file was replaced by another; left in place")
            }
            Err(_) => {}
        }
    }
}

impl SocketFile {
    /// The socket file now at `path` (one bound by another process, handed over to this one), to
    /// be removed at shutdown like one bound here.
    pub(super) fn adopt(path: &Path) -> io::Result<SocketFile> {
        let meta = fs::symlink_metadata(path)?;
        Ok(SocketFile {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Leave the file in place (its socket lives on in a successor process).
    pub(super) fn keep(self) {
        std::mem::forget(self);
    }
}

/// Bind a unix-socket listener at `path`, replacing a stale socket file, and set `mode`.
pub(super) async fn bind(
    path: &Path,
    mode: Option<u32>,
) -> Result<(UnixListener, SocketFile), RunError> {
    let failed = |source: io::Error| RunError::BindUnix {
        path: path.to_path_buf(),
        source,
    };
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed(e)),
        Ok(m) if !m.file_type().is_socket() => {
            return Err(RunError::NotASocket {
                path: path.to_path_buf(),
            })
        }
        Ok(_) => {
            let probe = tokio::time::timeout(
                Duration::from_millis(STALE_PROBE_TIMEOUT_MS),
                UnixStream::connect(path),
            )
            .await;
            match probe {
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    // Nobody listens: the socket of a process that is gone.
                    fs::remove_file(path).map_err(failed)?;
                    info!(path = %path.display(), "removed a stale unix socket file");
                }
                Ok(Err(e)) => return Err(failed(e)),
                Ok(Ok(_)) | Err(_) => {
                    return Err(RunError::UnixInUse {
                        path: path.to_path_buf(),
                    })
                }
            }
        }
    }
    let listener = UnixListener::bind(path).map_err(failed)?;
    let meta = fs::symlink_metadata(path).map_err(failed)?;
    let file = SocketFile {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    if let Some(mode) = mode {
        // `file` is dropped on failure: the socket file goes too.
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(failed)?;
    }
    Ok((listener, file))
}
