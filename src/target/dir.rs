//! Where tokens map to targets: a directory whose entries are named after the tokens.
//!
//! `token-dir:DIR` (websockify's TokenFileName): the regular file `DIR/TOKEN` holds one target
//! (`host:port`, `[v6]:port` or `unix_socket:/path`, at most [`MAX_TOKEN_FILE_BYTES`]).
//! `socket-dir:DIR` (websockify's UnixDomainSocketDirectory): the unix socket `DIR/TOKEN` is the
//! target. The token must be a plain file name ([`is_plain_name`]); anything else, a missing
//! entry, or an entry of another kind (a symbolic link is never followed) is an unknown token. A
//! directory that cannot be read is an unavailable source. Looked up on a blocking thread, never
//! on the runtime's workers. Errors name the directory, never the entry: its name is the token.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::source::{parse_target, SourceError};
use super::Target;

/// Largest token file read.
pub const MAX_TOKEN_FILE_BYTES: u64 = 4096;
/// Longest file name (NAME_MAX on Linux).
pub const MAX_NAME_BYTES: usize = 255;

/// What the directory's entries are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirKind {
    /// `token-dir:`: files holding a target.
    TokenFiles,
    /// `socket-dir:`: unix sockets, each a target.
    Sockets,
}

/// A plain file name: not empty, at most [`MAX_NAME_BYTES`], no `/` or NUL, not starting with
/// `.` (so neither `.` nor `..`, nor a hidden file).
pub fn is_plain_name(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_NAME_BYTES
        && !token.starts_with('.')
        && !token.contains(['/', '\0'])
}

/// A `token-dir:` or `socket-dir:` source.
#[derive(Clone)]
pub struct DirSource {
    dir: PathBuf,
    kind: DirKind,
}

impl DirSource {
    pub fn new(dir: PathBuf, kind: DirKind) -> DirSource {
        DirSource { dir, kind }
    }

    /// The target for `token`: `None` when it names no entry of the right kind.
    pub async fn lookup(&self, token: &str) -> Result<Option<Target>, SourceError> {
        if !is_plain_name(token) {
            return Ok(None);
        }
        let this = self.clone();
        let token = token.to_string();
        tokio::task::spawn_blocking(move || lookup_blocking(this.kind, &this.dir, &token))
            .await
            .map_err(|_| SourceError::Interrupted)?
    }
}

fn lookup_blocking(kind: DirKind, dir: &Path, token: &str) -> Result<Option<Target>, SourceError> {
    let fail = |reason: String| SourceError::Dir {
        dir: dir.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(dir).map_err(|e| fail(format!("cannot read it: {e}")))?;
    if !meta.is_dir() {
        return Err(fail("not a directory".to_string()));
    }
    let path = dir.join(token);
    // Not following a symbolic link: the entry itself must be a file or a socket.
    let entry = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(format!("cannot look up an entry: {e}"))),
    };
    match kind {
        DirKind::Sockets => Ok(entry.file_type().is_socket().then_some(Target::Unix(path))),
        DirKind::TokenFiles if !entry.file_type().is_file() => Ok(None),
        DirKind::TokenFiles => {
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(fail(format!("cannot open a token file: {e}"))),
            };
            // The file opened must be the entry looked at (not a link put there since).
            let opened = file
                .metadata()
                .map_err(|e| fail(format!("cannot read a token file: {e}")))?;
            if !opened.is_file() || (opened.dev(), opened.ino()) != (entry.dev(), entry.ino()) {
                return Ok(None);
            }
            let mut bytes = Vec::new();
            file.take(MAX_TOKEN_FILE_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| fail(format!("cannot read a token file: {e}")))?;
            if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_TOKEN_FILE_BYTES {
                return Err(fail(format!(
                    "a token file is larger than {MAX_TOKEN_FILE_BYTES} bytes"
                )));
            }
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| fail("a token file is not UTF-8".to_string()))?
                .trim();
            if text.is_empty() {
                return Ok(None);
            }
            parse_target(text).map(Some).ok_or_else(|| {
                fail("a token file does not hold host:port or unix_socket:/path".to_string())
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names() {
        for ok in ["vm7", "a.b", "tok-1_x", "é", "a..b"] {
            assert!(is_plain_name(ok), "{ok}");
        }
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "/etc",
            "a\0b",
            long.as_str(),
        ] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn entries_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("vm1"), " 10.0.0.1:5901\n").unwrap();
        std::fs::write(d.join("empty"), "\n").unwrap();
        std::fs::write(d.join("junk"), "nonsense").unwrap();
        std::fs::write(d.join("big"), "1".repeat(5000)).unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::os::unix::fs::symlink(d.join("vm1"), d.join("link")).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
        let files = |t| lookup_blocking(DirKind::TokenFiles, d, t);
        let socks = |t| lookup_blocking(DirKind::Sockets, d, t);
        assert_eq!(
            files("vm1").unwrap(),
            Some(Target::Tcp {
                host: "10.0.0.1".into(),
                port: 5901
            })
        );
        for none in ["empty", "missing", "sub", "link", "sock"] {
            assert_eq!(files(none).unwrap(), None, "{none}");
        }
        for err in ["junk", "big"] {
            let e = files(err).unwrap_err().to_string();
            assert!(!e.contains(err), "the entry is named: {e}");
        }
        assert_eq!(socks("sock").unwrap(), Some(Target::Unix(d.join("sock"))));
        for none in ["vm1", "missing", "sub", "link"] {
            assert_eq!(socks(none).unwrap(), None, "{none}");
        }
        let gone = d.join("gone");
        assert!(lookup_blocking(DirKind::Sockets, &gone, "sock").is_err());
        assert!(lookup_blocking(DirKind::TokenFiles, &d.join("vm1"), "x").is_err());
    }
}
