//! The file of one recorded session, and the task that writes it.
//!
//! The session never waits for the disk: each half hands its bytes to [`Recorder::record`],
//! which copies them into a bounded queue (at most [`QUEUE_ENTRIES`] entries and
//! [`QUEUE_BUDGET_BYTES`] bytes) or, when the queue is full, only counts them. A task per
//! session drains the queue into the file through a buffer and writes a gap line for what was
//! counted but left out. Once the file reaches `record_max_bytes` (less a small reserve for the
//! last lines), nothing more is queued; the end of the file says how much was left out.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, Notify};
use tracing::warn;

use super::format::{encode_end, encode_gap, encode_message, encode_start};
use super::{Dir, GapReason, Header, Kind};
pub use crate::config::RecordingSettings;
use crate::config::MIN_RECORD_BYTES;

/// Entries the queue holds before bytes are left out.
pub const QUEUE_ENTRIES: usize = 1024;
/// Bytes the queue holds before bytes are left out.
pub const QUEUE_BUDGET_BYTES: usize = 8 * 1024 * 1024;
/// Room kept below `record_max_bytes` for the last lines (gaps and the end line).
pub const END_RESERVE_BYTES: u64 = 2048;
/// The file's write buffer.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

// The smallest size the configuration accepts leaves room for a start line and messages.
const _: () = assert!(MIN_RECORD_BYTES >= 2 * END_RESERVE_BYTES);

/// Why a session's file could not be created.
#[derive(Debug, thiserror::Error)]
#[error("cannot create the recording file {}: {source}", path.display())]
pub struct OpenError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// The counters a recording adds to (the route's metrics).
#[derive(Debug, Clone, Default)]
pub struct RecordingCounters {
    /// Message bytes written to the file.
    pub bytes: Counter,
    /// Gap lines written.
    pub gaps: Counter,
}

/// A session's handle on its recording, shared by both halves of the pump.
pub struct Recorder {
    tx: mpsc::Sender<Item>,
    shared: Arc<Shared>,
    started: tokio::time::Instant,
    file_name: String,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("file_name", &self.file_name)
            .finish_non_exhaustive()
    }
}

/// What the halves and the writer task share.
#[derive(Default)]
struct Shared {
    /// Data bytes in the queue now.
    queued: AtomicUsize,
    /// Per direction: bytes left out because the queue was full, not yet in a gap line.
    dropped: [AtomicU64; 2],
    /// The file reached its size limit: nothing more is queued.
    full: AtomicBool,
    /// Per direction: bytes left out after the size limit.
    limited: [AtomicU64; 2],
    /// The session's close code and reason, once it has ended.
    end: Mutex<Option<(u16, String)>>,
    ended: Notify,
}

struct Item {
    /// Per direction: bytes left out (queue full) just before this item, so that the gap line
    /// lands where the bytes were.
    gap_before: [u64; 2],
    t: u64,
    dir: Dir,
    kind: Kind,
    data: Bytes,
}

impl Recorder {
    /// Create the session's file (`DIR/PREFIX-<id>.jsonl`, mode 0600, never over an existing
    /// one) and start the task that writes it, starting with `header`'s line. Session ids start
    /// again at 1 when the gateway restarts: when the name is taken, the file is
    /// `PREFIX-<id>-<unix milliseconds>.jsonl`.
    pub async fn open(
        settings: &RecordingSettings,
        header: Header,
        counters: RecordingCounters,
    ) -> Result<Recorder, OpenError> {
        let started = tokio::time::Instant::now();
        let name = format!("{}-{}.jsonl", settings.prefix, header.session);
        let (file, name) = match create(&settings.dir.join(&name)).await {
            Ok(f) => (f, name),
            Err(e) if e.source.kind() == io::ErrorKind::AlreadyExists => {
                let ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis();
                let name = format!("{}-{}-{ms}.jsonl", settings.prefix, header.session);
                (create(&settings.dir.join(&name)).await?, name)
            }
            Err(e) => return Err(e),
        };
        let (tx, rx) = mpsc::channel(QUEUE_ENTRIES);
        let shared = Arc::new(Shared::default());
        let task = Writer {
            file: BufWriter::with_capacity(WRITE_BUFFER_BYTES, file),
            line: Vec::new(),
            written: 0,
            limit: settings.max_bytes.saturating_sub(END_RESERVE_BYTES),
            shared: shared.clone(),
            counters,
            started,
            path: settings.dir.join(&name),
        };
        tokio::spawn(task.run(rx, header));
        Ok(Recorder {
            tx,
            shared,
            started,
            file_name: name,
        })
    }

    /// The file's name (in the route's directory), for the access line.
    pub fn file_name(&self) -> &str {
        &self.file_name
    }

    /// Hand over bytes that crossed the backend connection. Never waits: when the queue is full
    /// or the size limit is reached, the bytes are only counted.
    pub fn record(&self, dir: Dir, kind: Kind, data: &[u8]) {
        let d = dir.index();
        let n = data.len();
        if self.shared.full.load(Ordering::Relaxed) {
            self.shared.limited[d].fetch_add(n as u64, Ordering::Relaxed);
            return;
        }
        let queued = self.shared.queued.load(Ordering::Relaxed);
        let permit = if queued.saturating_add(n) > QUEUE_BUDGET_BYTES {
            None
        } else {
            self.tx.try_reserve().ok()
        };
        let Some(permit) = permit else {
            // Queue full (or the writer has stopped after an I/O error, which it logged).
            self.shared.dropped[d].fetch_add(n as u64, Ordering::Relaxed);
            return;
        };
        self.shared.queued.fetch_add(n, Ordering::Relaxed);
        let gap_before = self.shared.dropped.each_ref().map(|d| {
            // A load first: the common case (nothing left out) writes nothing shared.
            if d.load(Ordering::Relaxed) == 0 {
                0
            } else {
                d.swap(0, Ordering::Relaxed)
            }
        });
        permit.send(Item {
            gap_before,
            t: ms_since(self.started),
            dir,
            kind,
            data: Bytes::copy_from_slice(data),
        });
    }

    /// The session is over: the writer writes what is queued, the gap lines and the end line,
    /// and closes the file.
    pub fn finish(&self, close: u16, reason: &str) {
        *self.shared.end.lock().unwrap_or_else(|e| e.into_inner()) = Some((close, reason.into()));
        self.shared.ended.notify_one();
    }
}

async fn create(path: &Path) -> Result<tokio::fs::File, OpenError> {
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true).mode(0o600);
    options.open(path).await.map_err(|source| OpenError {
        path: path.to_path_buf(),
        source,
    })
}

fn ms_since(started: tokio::time::Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The task that owns the file.
struct Writer {
    file: BufWriter<tokio::fs::File>,
    /// The line being built (reused).
    line: Vec<u8>,
    /// Bytes in the file.
    written: u64,
    /// Message and gap lines stop here (`record_max_bytes` less the reserve).
    limit: u64,
    shared: Arc<Shared>,
    counters: RecordingCounters,
    started: tokio::time::Instant,
    path: PathBuf,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Item>, header: Header) {
        // The start line is flushed at once: a reader following the file sees the session.
        let start = match self.write_all(&header_line(&header)).await {
            Ok(()) => self.file.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = start {
            self.failed(&e);
            return;
        }
        let end = loop {
            let shared = self.shared.clone();
            let item = tokio::select! {
                biased;
                item = rx.recv() => item,
                _ = shared.ended.notified() => None,
            };
            let Some(item) = item else {
                // The halves are done (or the session went away without an outcome): take what
                // is still queued, then end.
                let mut rest = Vec::new();
                while let Ok(item) = rx.try_recv() {
                    rest.push(item);
                }
                for item in rest {
                    if let Err(e) = self.message(item).await {
                        self.failed(&e);
                        return;
                    }
                }
                break self
                    .shared
                    .end
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
            };
            let r = match self.message(item).await {
                // Flushed whenever the queue runs dry, so that a reader following the file
                // sees each burst soon after it passed.
                Ok(()) if rx.is_empty() => self.file.flush().await,
                r => r,
            };
            if let Err(e) = r {
                self.failed(&e);
                return;
            }
        };
        if let Err(e) = self.finish(end).await {
            self.failed(&e);
        }
    }

    /// Write one message line, after the gap lines for what was left out before it.
    async fn message(&mut self, item: Item) -> io::Result<()> {
        self.shared
            .queued
            .fetch_sub(item.data.len(), Ordering::Relaxed);
        self.gaps(item.t, item.gap_before).await?;
        if self.shared.full.load(Ordering::Relaxed) {
            self.shared.limited[item.dir.index()]
                .fetch_add(item.data.len() as u64, Ordering::Relaxed);
            return Ok(());
        }
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        encode_message(&mut line, item.t, item.dir, item.kind, &item.data);
        let r = self.limited_line(&line, item.dir, item.data.len()).await;
        if r.as_ref().is_ok_and(|&written| written) {
            self.counters.bytes.inc_by(item.data.len() as u64);
        }
        self.line = line;
        r.map(|_| ())
    }

    /// Gap lines for bytes the full queue left out (`dropped`, per direction).
    async fn gaps(&mut self, t: u64, dropped: [u64; 2]) -> io::Result<()> {
        for dir in [Dir::In, Dir::Out] {
            let n = dropped[dir.index()];
            if n == 0 {
                continue;
            }
            if self.shared.full.load(Ordering::Relaxed) {
                self.shared.limited[dir.index()].fetch_add(n, Ordering::Relaxed);
                continue;
            }
            let mut line = Vec::new();
            encode_gap(&mut line, t, dir, n, GapReason::QueueFull);
            if self.limited_line(&line, dir, 0).await? {
                self.counters.gaps.inc();
            } else {
                self.shared.limited[dir.index()].fetch_add(n, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Write `line` unless it would pass the limit; then the file is full and `data_len` bytes
    /// of `dir` are counted as left out. `Ok(true)`: written.
    async fn limited_line(&mut self, line: &[u8], dir: Dir, data_len: usize) -> io::Result<bool> {
        if self.written.saturating_add(line.len() as u64) > self.limit {
            self.shared.full.store(true, Ordering::Relaxed);
            self.shared.limited[dir.index()].fetch_add(data_len as u64, Ordering::Relaxed);
            return Ok(false);
        }
        self.write_all(line).await.map(|()| true)
    }

    async fn write_all(&mut self, line: &[u8]) -> io::Result<()> {
        self.file.write_all(line).await?;
        self.written += line.len() as u64;
        Ok(())
    }

    /// The last lines: gaps still owed (queue full, then the size limit), then the end line.
    async fn finish(&mut self, end: Option<(u16, String)>) -> io::Result<()> {
        let t = ms_since(self.started);
        // Past the limit the reserve is used: these lines are always written.
        self.limit = u64::MAX;
        let full = self.shared.full.load(Ordering::Relaxed);
        self.shared.full.store(false, Ordering::Relaxed);
        // Bytes left out after the last item that was queued.
        let dropped = self
            .shared
            .dropped
            .each_ref()
            .map(|d| d.swap(0, Ordering::Relaxed));
        self.gaps(t, dropped).await?;
        if full {
            for dir in [Dir::In, Dir::Out] {
                let n = self.shared.limited[dir.index()].swap(0, Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                let mut line = Vec::new();
                encode_gap(&mut line, t, dir, n, GapReason::SizeLimit);
                self.write_all(&line).await?;
                self.counters.gaps.inc();
            }
        }
        let (close, reason) = end.unwrap_or((1006, "session ended without an outcome".into()));
        let mut line = Vec::new();
        encode_end(&mut line, t, close, &reason);
        self.write_all(&line).await?;
        self.file.flush().await?;
        self.file.get_mut().sync_data().await
    }

    fn failed(&self, e: &io::Error) {
        warn!(file = %self.path.display(), error = %e, "session recording stopped: write failed");
    }
}

fn header_line(header: &Header) -> Vec<u8> {
    let mut line = Vec::new();
    encode_start(&mut line, header);
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::{Entry, Reader};

    fn header(session: u64) -> Header {
        Header {
            session,
            route: "/r".into(),
            client: "127.0.0.1:1".into(),
            backend: "127.0.0.1:2".into(),
            subprotocol: None,
            framing: "raw".into(),
            time: "2024-01-01T00:00:00.000Z".into(),
        }
    }

    fn settings(dir: &Path, max_bytes: u64) -> RecordingSettings {
        RecordingSettings {
            dir: dir.to_path_buf(),
            prefix: "s".into(),
            max_bytes,
            required: false,
        }
    }

    /// Wait (bounded) until the file ends with an end line, then read it.
    async fn entries(path: &Path) -> Vec<Entry> {
        for _ in 0..500 {
            let mut r = Reader::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
            let mut all = Vec::new();
            while let Some(e) = r.next_entry().unwrap() {
                all.push(e);
            }
            if matches!(all.last(), Some(Entry::End { .. })) {
                return all;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("no end line in {}", path.display());
    }

    #[tokio::test]
    async fn writes_header_messages_and_end_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let counters = RecordingCounters::default();
        let rec = Recorder::open(&settings(dir.path(), 1 << 20), header(3), counters.clone())
            .await
            .unwrap();
        assert_eq!(rec.file_name(), "s-3.jsonl");
        rec.record(Dir::In, Kind::Text, b"hi\n");
        rec.record(Dir::Out, Kind::Binary, &[0, 1, 2]);
        rec.finish(1000, "client closed");
        let path = dir.path().join("s-3.jsonl");
        let got = entries(&path).await;
        assert_eq!(got[0], Entry::Start(header(3)));
        assert!(
            matches!(&got[1], Entry::Message { dir: Dir::In, kind: Kind::Text, data, .. } if data == b"hi\n")
        );
        assert!(
            matches!(&got[2], Entry::Message { dir: Dir::Out, kind: Kind::Binary, data, .. } if data == &[0, 1, 2])
        );
        assert!(
            matches!(&got[3], Entry::End { close: 1000, reason, .. } if reason == "client closed")
        );
        assert_eq!(got.len(), 4);
        assert_eq!(counters.bytes.get(), 6);
        assert_eq!(counters.gaps.get(), 0);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // The same id again (a restarted gateway): a second file, the first one kept.
        let again = Recorder::open(&settings(dir.path(), 1 << 20), header(3), counters)
            .await
            .unwrap();
        assert_ne!(again.file_name(), "s-3.jsonl");
        assert!(again.file_name().starts_with("s-3-"));
        again.finish(1001, "");
        entries(&dir.path().join(again.file_name())).await;
        assert_eq!(entries(&path).await.len(), 4);
    }

    #[tokio::test]
    async fn size_limit_leaves_out_the_rest_and_says_how_much() {
        let dir = tempfile::tempdir().unwrap();
        let counters = RecordingCounters::default();
        let rec = Recorder::open(
            &settings(dir.path(), MIN_RECORD_BYTES),
            header(1),
            counters.clone(),
        )
        .await
        .unwrap();
        let chunk = [7u8; 1000];
        for _ in 0..10 {
            rec.record(Dir::Out, Kind::Binary, &chunk);
        }
        rec.record(Dir::In, Kind::Binary, &chunk);
        rec.finish(1000, "done");
        let path = dir.path().join(rec.file_name());
        let got = entries(&path).await;
        let kept: usize = got
            .iter()
            .map(|e| match e {
                Entry::Message { data, .. } => data.len(),
                _ => 0,
            })
            .sum();
        let left: u64 = got
            .iter()
            .map(|e| match e {
                Entry::Gap {
                    bytes,
                    reason: GapReason::SizeLimit,
                    ..
                } => *bytes,
                _ => 0,
            })
            .sum();
        assert!(kept > 0 && kept < 11_000, "{kept}");
        assert_eq!(kept as u64 + left, 11_000);
        assert!(matches!(got.last(), Some(Entry::End { .. })));
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len <= MIN_RECORD_BYTES, "{len}");
        assert_eq!(counters.bytes.get(), kept as u64);
        assert_eq!(counters.gaps.get(), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_queue_drops_and_a_gap_line_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let counters = RecordingCounters::default();
        let rec = Recorder::open(&settings(dir.path(), 1 << 30), header(2), counters.clone())
            .await
            .unwrap();
        // The writer task cannot run while this test does not yield: the queue fills.
        let n = QUEUE_ENTRIES + 10;
        for _ in 0..n {
            rec.record(Dir::In, Kind::Binary, b"x");
        }
        rec.finish(1000, "");
        let got = entries(&dir.path().join(rec.file_name())).await;
        let messages = got
            .iter()
            .filter(|e| matches!(e, Entry::Message { .. }))
            .count();
        assert_eq!(messages, QUEUE_ENTRIES);
        assert!(got.contains(&Entry::Gap {
            t: got.last().unwrap().t(),
            dir: Dir::In,
            bytes: 10,
            reason: GapReason::QueueFull
        }));
        assert_eq!(counters.gaps.get(), 1);
    }

    #[tokio::test]
    async fn a_missing_directory_is_an_open_error() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let e = Recorder::open(
            &settings(&gone, 1 << 20),
            header(1),
            RecordingCounters::default(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.source.kind(), io::ErrorKind::NotFound);
    }
}
