//! Where tokens map to targets: websockify's token files.
//!
//! A token file holds `token: host:port` lines (also `token: unix_socket:/path`); blank lines and
//! lines starting with `#` are skipped, and so are malformed lines, with a warning that names the
//! file and the line number, never the token. A directory source reads every regular file in it.
//! The files are checked (their size, modification time and inode) at each lookup and read again
//! when they changed, on a blocking thread, never on the runtime's workers. Bounded: at most
//! [`MAX_SOURCE_BYTES`] in all and [`MAX_SOURCE_FILES`] files.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tracing::warn;

use super::Target;

/// Largest token source read, all files together.
pub const MAX_SOURCE_BYTES: u64 = 16 * 1024 * 1024;
/// Most files read from a directory source.
pub const MAX_SOURCE_FILES: usize = 10_000;

/// A malformed line of a token file (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadLine(pub usize);

/// Parse a token file: the mappings in file order (a later line for the same token wins when
/// collected into a map), and the numbers of the lines that were not understood.
pub fn parse_token_file(text: &str) -> (Vec<(String, Target)>, Vec<BadLine>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Some(entry) => good.push(entry),
            None => bad.push(BadLine(n + 1)),
        }
    }
    (good, bad)
}

fn parse_line(line: &str) -> Option<(String, Target)> {
    let (token, target) = line.split_once(':')?;
    let token = token.trim();
    if token.is_empty() || token.chars().any(char::is_whitespace) {
        return None;
    }
    Some((token.to_string(), parse_target(target.trim())?))
}

/// `host:port`, `[v6]:port` or `unix_socket:/path`.
pub fn parse_target(s: &str) -> Option<Target> {
    if let Some(path) = s.strip_prefix("unix_socket:") {
        let path = path.trim();
        return (!path.is_empty()).then(|| Target::Unix(PathBuf::from(path)));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:")?;
        h.parse::<std::net::Ipv6Addr>().ok()?;
        (h, p)
    } else {
        let (h, p) = s.rsplit_once(':')?;
        if h.contains(':') {
            return None;
        }
        (h, p)
    };
    let port: u16 = port.parse().ok().filter(|&p| p != 0)?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'));
    host_ok.then(|| Target::Tcp {
        host: host.to_string(),
        port,
    })
}

/// Why the source gave no answer (the client gets 503).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_SOURCE_BYTES} bytes (all token files together)")]
    TooLarge { path: PathBuf },
    #[error("{path} holds more than {MAX_SOURCE_FILES} files")]
    TooManyFiles { path: PathBuf },
    #[error("the token source lookup did not finish")]
    Interrupted,
    /// A token service gave no usable answer (never names the token).
    #[error("{0}")]
    Service(String),
    /// A Redis source gave no usable answer: its URL with the password hidden, and why (never
    /// the token nor the server's message).
    #[error("{url}: {reason}")]
    Redis { url: String, reason: String },
    /// A `token-dir:` or `socket-dir:` directory cannot be used (never names the entry: its name
    /// is the token).
    #[error("{dir}: {reason}")]
    Dir { dir: PathBuf, reason: String },
}

/// What identifies a version of a file: size, modification time, inode.
type Stamp = Vec<(PathBuf, u64, Option<SystemTime>, u64)>;

#[derive(Default)]
struct Loaded {
    stamp: Option<Stamp>,
    map: HashMap<String, Target>,
}

/// A `file:` source: the file or directory, and what was read from it last.
#[derive(Clone)]
pub struct FileSource {
    path: PathBuf,
    loaded: Arc<Mutex<Loaded>>,
}

impl FileSource {
    pub fn new(path: PathBuf) -> FileSource {
        FileSource {
            path,
            loaded: Arc::default(),
        }
    }

    /// The target for `token`, reading the files again first if they changed.
    pub async fn lookup(&self, token: &str) -> Result<Option<Target>, SourceError> {
        let this = self.clone();
        let token = token.to_string();
        let (found, skipped) = tokio::task::spawn_blocking(move || this.lookup_blocking(&token))
            .await
            .map_err(|_| SourceError::Interrupted)??;
        // Logged here, in the request's task (and its log context), not on the blocking thread.
        for (file, line) in skipped {
            warn!(file = %file.display(), line, "token file line skipped: not `token: host:port` or `token: unix_socket:/path`");
        }
        Ok(found)
    }

    /// The target, and the malformed lines (file, line number) if the files were read anew.
    fn lookup_blocking(&self, token: &str) -> Result<(Option<Target>, Skipped), SourceError> {
        let stamp = self.stamp()?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let mut skipped = Vec::new();
        if loaded.stamp.as_ref() != Some(&stamp) {
            let (map, bad) = read_all(&stamp)?;
            skipped = bad;
            *loaded = Loaded {
                stamp: Some(stamp),
                map,
            };
        }
        Ok((loaded.map.get(token).cloned(), skipped))
    }

    /// The files of the source with their stamps, in name order; bounded in count and size.
    fn stamp(&self) -> Result<Stamp, SourceError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SourceError::Io { path, source }
        };
        let meta = std::fs::metadata(&self.path).map_err(io(&self.path))?;
        let mut files = Vec::new();
        if meta.is_dir() {
            for entry in std::fs::read_dir(&self.path).map_err(io(&self.path))? {
                let entry = entry.map_err(io(&self.path))?;
                let path = entry.path();
                // Following symbolic links, as reading the file does.
                let Ok(m) = std::fs::metadata(&path) else {
                    continue;
                };
                if m.is_file() {
                    if files.len() == MAX_SOURCE_FILES {
                        return Err(SourceError::TooManyFiles {
                            path: self.path.clone(),
                        });
                    }
                    files.push((path, m.len(), m.modified().ok(), m.ino()));
                }
            }
            files.sort_by(|a, b| a.0.cmp(&b.0));
        } else {
            files.push((
                self.path.clone(),
                meta.len(),
                meta.modified().ok(),
                meta.ino(),
            ));
        }
        let total: u64 = files.iter().map(|f| f.1).fold(0, u64::saturating_add);
        if total > MAX_SOURCE_BYTES {
            return Err(SourceError::TooLarge {
                path: self.path.clone(),
            });
        }
        Ok(files)
    }
}

/// Malformed lines: file and line number.
type Skipped = Vec<(PathBuf, usize)>;

/// Read and parse every file of `stamp`: the mappings, and the malformed lines.
fn read_all(stamp: &Stamp) -> Result<(HashMap<String, Target>, Skipped), SourceError> {
    use std::io::Read;
    let mut map = HashMap::new();
    let mut skipped = Vec::new();
    for (path, _, _, _) in stamp {
        let file = std::fs::File::open(path).map_err(|source| SourceError::Io {
            path: path.clone(),
            source,
        })?;
        // The stamp bounded the sizes; a file growing since is cut at the bound.
        let mut bytes = Vec::new();
        file.take(MAX_SOURCE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| SourceError::Io {
                path: path.clone(),
                source,
            })?;
        if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_SOURCE_BYTES {
            return Err(SourceError::TooLarge { path: path.clone() });
        }
        let text = String::from_utf8_lossy(&bytes);
        let (good, bad) = parse_token_file(&text);
        skipped.extend(bad.into_iter().map(|BadLine(n)| (path.clone(), n)));
        map.extend(good);
    }
    Ok((map, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Target {
        Target::Tcp {
            host: host.to_string(),
            port,
        }
    }

    #[test]
    fn websockify_token_file() {
        let text = "# comment\n\
                    \n\
                    alpha: 127.0.0.1:5901\n\
                    \tbeta :  vm1.internal:5902  \n\
                    gamma: [fd00::1]:5903\n\
                    delta: unix_socket:/run/vnc/d.sock\n\
                    alpha: 127.0.0.1:5999\n";
        let (good, bad) = parse_token_file(text);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(
            good,
            vec![
                ("alpha".to_string(), tcp("127.0.0.1", 5901)),
                ("beta".to_string(), tcp("vm1.internal", 5902)),
                ("gamma".to_string(), tcp("fd00::1", 5903)),
                ("delta".to_string(), Target::Unix("/run/vnc/d.sock".into())),
                ("alpha".to_string(), tcp("127.0.0.1", 5999)),
            ]
        );
        // The later line wins, as in websockify.
        let map: HashMap<_, _> = good.into_iter().collect();
        assert_eq!(map["alpha"], tcp("127.0.0.1", 5999));
    }

    #[test]
    fn malformed_lines_are_skipped_by_number() {
        let text = "ok: 10.0.0.1:5900\n\
                    no-colon\n\
                    : 10.0.0.1:5900\n\
                    two words: 10.0.0.1:5900\n\
                    noport: 10.0.0.1\n\
                    zero: 10.0.0.1:0\n\
                    big: 10.0.0.1:65536\n\
                    v6: fd00::1:5900\n\
                    sock: unix_socket:\n\
                    space: bad host:1\n\
                    fine: h:1\n";
        let (good, bad) = parse_token_file(text);
        assert_eq!(good.len(), 2, "{good:?}");
        assert_eq!(
            bad,
            (2..=10).map(BadLine).collect::<Vec<_>>(),
            "line numbers are 1-based and count every line"
        );
    }
}
