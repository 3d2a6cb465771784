//! A route's session recording keys: `record`, `record_prefix`, `record_max_bytes`,
//! `record_required`. The directory is checked at load: it exists and a file can be created in
//! it (a real probe: permission bits say nothing to root).

use std::path::PathBuf;

use super::raw::RawRoute;
use super::{ConfigError, Ctx};

/// `record_max_bytes` when not set.
pub const DEFAULT_RECORD_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Smallest `record_max_bytes`: the start line, some messages, and room for the last lines.
pub const MIN_RECORD_BYTES: u64 = 4096;
/// `record_prefix` when not set.
pub const DEFAULT_RECORD_PREFIX: &str = "session";
/// Longest `record_prefix`.
pub const MAX_RECORD_PREFIX_BYTES: usize = 64;

/// A route's `record*` keys, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingSettings {
    /// An existing directory, writable when the configuration was loaded.
    pub dir: PathBuf,
    /// File names are `PREFIX-<session id>.jsonl`.
    pub prefix: String,
    pub max_bytes: u64,
    /// A session whose file cannot be created is refused (503) instead of running unrecorded.
    pub required: bool,
}

impl Ctx<'_> {
    pub(super) fn record(
        &self,
        i: usize,
        r: &RawRoute,
    ) -> Result<Option<RecordingSettings>, ConfigError> {
        let key = |k: &str| format!("route[{i}].{k}");
        let Some(dir) = &r.record else {
            for (k, at) in [
                ("record_prefix", r.record_prefix.as_ref().map(|v| v.span())),
                (
                    "record_max_bytes",
                    r.record_max_bytes.as_ref().map(|v| v.span()),
                ),
                (
                    "record_required",
                    r.record_required.as_ref().map(|v| v.span()),
                ),
            ] {
                if let Some(at) = at {
                    return self.err(
                        at,
                        key(k),
                        "only applies with record = \"DIR\" (session recording is off)",
                    );
                }
            }
            return Ok(None);
        };
        if dir.get_ref().trim().is_empty() {
            return self.err(dir.span(), key("record"), "must name a directory");
        }
        let path = self.resolve(dir.get_ref().trim());
        if let Err(why) = probe_dir(&path) {
            return self.err(
                dir.span(),
                key("record"),
                format!(
                    "{}: {why} (it must be an existing directory the gateway can write)",
                    path.display()
                ),
            );
        }
        let prefix = match &r.record_prefix {
            None => DEFAULT_RECORD_PREFIX.to_string(),
            Some(p) => {
                let v = p.get_ref();
                let plain = !v.is_empty()
                    && v.len() <= MAX_RECORD_PREFIX_BYTES
                    && !v.starts_with('.')
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
                if !plain {
                    return self.err(
                        p.span(),
                        key("record_prefix"),
                        format!("{v:?} is not a plain file name prefix: 1 to {MAX_RECORD_PREFIX_BYTES} letters, digits, '-', '_' or '.', not starting with '.'"),
                    );
                }
                v.clone()
            }
        };
        Ok(Some(RecordingSettings {
            dir: path,
            prefix,
            max_bytes: r
                .record_max_bytes
                .as_ref()
                .map_or(DEFAULT_RECORD_MAX_BYTES, |v| v.get_ref().0),
            required: r.record_required.as_ref().is_some_and(|v| *v.get_ref()),
        }))
    }
}

/// Is `dir` a directory a file can be created in? Tried for real: a probe file is created and
/// removed.
fn probe_dir(dir: &std::path::Path) -> Result<(), String> {
    let meta = std::fs::metadata(dir).map_err(|e| e.to_string())?;
    if !meta.is_dir() {
        return Err("not a directory".into());
    }
    // Unique within the process too: configurations may be validated concurrently.
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = dir.join(format!(".wsgate-probe-{}-{n}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| format!("cannot create a file there: {e}"))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
