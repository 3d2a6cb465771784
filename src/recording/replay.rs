//! `wsgate replay FILE`: a recording, readable or as the raw bytes of one direction.
//!
//! - default: the start line's fields, then one line per entry: time offset, direction arrow
//!   (`->` client to backend, `<-` backend to client), kind, length, and the text (escaped) or a
//!   hex and ASCII preview;
//! - `--raw in|out`: exactly the bytes that direction carried on the backend connection (the
//!   envelope headers of a length-prefixed route put back), nothing else on the output;
//! - `--realtime`: each entry waits until its time offset since the replay began;
//! - `--follow`: at the end of the file, wait for more (a session still being recorded) until
//!   the end line.
//!
//! A last line cut short is skipped, with a note on stderr; so are gaps in `--raw` output.

use std::io::{self, BufReader, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use super::format::{Entry, Header};
use super::reader::{ReadError, Reader};
use super::{Dir, GapReason, Kind};
use crate::framing::{ENVELOPE_BINARY, ENVELOPE_TEXT};

/// How often `--follow` looks for more at the end of the file.
pub const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Bytes of a binary message shown in the readable listing.
const PREVIEW_BYTES: usize = 32;
/// Characters of a text message shown in the readable listing.
const PREVIEW_CHARS: usize = 200;

/// What `wsgate replay` was asked.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayOptions {
    /// Write this direction's bytes, exactly, instead of the listing.
    pub raw: Option<Dir>,
    pub realtime: bool,
    pub follow: bool,
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{path}: {source}")]
    Open { path: String, source: io::Error },
    #[error("{0}")]
    Read(#[from] ReadError),
    #[error("writing the output: {0}")]
    Output(io::Error),
    #[error("not a recording: the first line is not a start line")]
    NoStart,
}

/// Replay the recording at `path` onto `out`; notes (cut-short file, gaps) go to `notes`.
pub fn replay(
    path: &Path,
    opts: ReplayOptions,
    out: &mut dyn Write,
    notes: &mut dyn Write,
) -> Result<(), ReplayError> {
    let file = std::fs::File::open(path).map_err(|source| ReplayError::Open {
        path: path.display().to_string(),
        source,
    })?;
    let mut reader = Reader::new(BufReader::new(file));
    let began = Instant::now();
    let mut framing_lp = false;
    let mut first = true;
    loop {
        let entry = match reader.next_entry()? {
            Some(e) => e,
            None if opts.follow => {
                std::thread::sleep(FOLLOW_POLL);
                continue;
            }
            None => {
                if first {
                    return Err(ReplayError::NoStart);
                }
                let _ = writeln!(
                    notes,
                    "wsgate replay: the recording ends without an end line{} (cut short, or still being written)",
                    if reader.pending() > 0 {
                        format!("; a last partial line of {} bytes was skipped", reader.pending())
                    } else {
                        String::new()
                    }
                );
                return Ok(());
            }
        };
        if first {
            let Entry::Start(h) = &entry else {
                return Err(ReplayError::NoStart);
            };
            first = false;
            framing_lp = h.framing == "length-prefixed";
            if opts.raw.is_none() {
                writeln!(out, "{}", header_text(h)).map_err(ReplayError::Output)?;
            }
            continue;
        }
        if opts.realtime {
            let due = began + Duration::from_millis(entry.t());
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        match opts.raw {
            Some(want) => write_raw(&entry, want, framing_lp, out, notes)?,
            None => writeln!(out, "{}", entry_text(&entry)).map_err(ReplayError::Output)?,
        }
        out.flush().map_err(ReplayError::Output)?;
        if matches!(entry, Entry::End { .. }) {
            return Ok(());
        }
    }
}

fn write_raw(
    entry: &Entry,
    want: Dir,
    length_prefixed: bool,
    out: &mut dyn Write,
    notes: &mut dyn Write,
) -> Result<(), ReplayError> {
    match entry {
        Entry::Message {
            dir, kind, data, ..
        } if *dir == want => {
            if length_prefixed {
                let kind = match kind {
                    Kind::Text => ENVELOPE_TEXT,
                    Kind::Binary => ENVELOPE_BINARY,
                };
                let len = u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes();
                out.write_all(&[kind, len[0], len[1], len[2], len[3]])
                    .map_err(ReplayError::Output)?;
            }
            out.write_all(data).map_err(ReplayError::Output)
        }
        Entry::Gap {
            dir, bytes, reason, ..
        } if *dir == want => {
            let _ = writeln!(
                notes,
                "wsgate replay: {bytes} bytes are missing here ({}): the output is incomplete",
                reason.as_str()
            );
            Ok(())
        }
        _ => Ok(()),
    }
}

fn header_text(h: &Header) -> String {
    format!(
        "session {}  route {}  client {}  backend {}  framing {}  subprotocol {}  started {}",
        h.session,
        h.route,
        h.client,
        h.backend,
        h.framing,
        h.subprotocol.as_deref().unwrap_or("-"),
        h.time
    )
}

/// `+S.mmms`.
fn offset(t: u64) -> String {
    format!("+{}.{:03}s", t / 1000, t % 1000)
}

fn arrow(dir: Dir) -> &'static str {
    match dir {
        Dir::In => "->",
        Dir::Out => "<-",
    }
}

/// One readable line for an entry after the start line.
pub fn entry_text(entry: &Entry) -> String {
    match entry {
        Entry::Start(h) => header_text(h),
        Entry::Message {
            t, dir, kind, data, ..
        } => {
            let preview = match (kind, std::str::from_utf8(data)) {
                (Kind::Text, Ok(s)) => text_preview(s),
                _ => hex_preview(data),
            };
            format!(
                "{:>10}  {}  {:<6}  {:>7} B  {preview}",
                offset(*t),
                arrow(*dir),
                kind.as_str(),
                data.len()
            )
        }
        Entry::Gap {
            t,
            dir,
            bytes,
            reason,
        } => format!(
            "{:>10}  {}  gap     {bytes:>7} B  left out ({}{})",
            offset(*t),
            arrow(*dir),
            reason.as_str(),
            match reason {
                GapReason::QueueFull => ": the recording fell behind",
                GapReason::SizeLimit => ": record_max_bytes reached",
            }
        ),
        Entry::End { t, close, reason } => {
            format!("{:>10}  end  close {close} {reason:?}", offset(*t))
        }
    }
}

fn text_preview(s: &str) -> String {
    let mut cut: String = s.chars().take(PREVIEW_CHARS).collect();
    let more = cut.len() < s.len();
    cut = format!("{cut:?}");
    if more {
        cut.push_str(" ...");
    }
    cut
}

fn hex_preview(data: &[u8]) -> String {
    let shown = &data[..data.len().min(PREVIEW_BYTES)];
    let hex: Vec<String> = shown.iter().map(|b| format!("{b:02x}")).collect();
    let ascii: String = shown
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '.'
            }
        })
        .collect();
    format!(
        "{}  |{ascii}|{}",
        hex.join(" "),
        if data.len() > shown.len() { " ..." } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(entries: &[Entry], tail: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let mut text = Vec::new();
        for e in entries {
            e.encode(&mut text);
        }
        text.extend_from_slice(tail);
        f.write_all(&text).unwrap();
        f
    }

    fn start(framing: &str) -> Entry {
        Entry::Start(Header {
            session: 1,
            route: "/r".into(),
            client: "127.0.0.1:1".into(),
            backend: "127.0.0.1:2".into(),
            subprotocol: None,
            framing: framing.into(),
            time: "2024-01-01T00:00:00.000Z".into(),
        })
    }

    fn msg(t: u64, dir: Dir, kind: Kind, data: &[u8]) -> Entry {
        Entry::Message {
            t,
            dir,
            kind,
            data: data.to_vec(),
        }
    }

    fn run(path: &Path, opts: ReplayOptions) -> (Vec<u8>, String) {
        let mut out = Vec::new();
        let mut notes = Vec::new();
        replay(path, opts, &mut out, &mut notes).unwrap();
        (out, String::from_utf8(notes).unwrap())
    }

    #[test]
    fn raw_gives_back_one_direction_and_rebuilds_envelopes() {
        let f = file(
            &[
                start("length-prefixed"),
                msg(1, Dir::In, Kind::Text, b"hi"),
                msg(2, Dir::Out, Kind::Binary, &[9, 9]),
                msg(3, Dir::In, Kind::Binary, &[0xff]),
                Entry::End {
                    t: 4,
                    close: 1000,
                    reason: String::new(),
                },
            ],
            b"",
        );
        let raw_in = ReplayOptions {
            raw: Some(Dir::In),
            ..Default::default()
        };
        let (out, notes) = run(f.path(), raw_in);
        assert_eq!(out, [1, 0, 0, 0, 2, b'h', b'i', 2, 0, 0, 0, 1, 0xff]);
        assert_eq!(notes, "");
        let raw_out = ReplayOptions {
            raw: Some(Dir::Out),
            ..Default::default()
        };
        assert_eq!(run(f.path(), raw_out).0, [2, 0, 0, 0, 2, 9, 9]);
    }

    #[test]
    fn listing_shows_each_entry_and_notes_a_cut_short_file() {
        let f = file(
            &[
                start("raw"),
                msg(1500, Dir::In, Kind::Text, b"hello\n"),
                msg(1501, Dir::Out, Kind::Binary, b"\x00AB"),
                Entry::Gap {
                    t: 1502,
                    dir: Dir::Out,
                    bytes: 10,
                    reason: GapReason::QueueFull,
                },
            ],
            b"{\"t\":1503,\"dir\":\"in\"",
        );
        let (out, notes) = run(f.path(), ReplayOptions::default());
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines[0].starts_with("session 1  route /r"), "{out}");
        assert!(lines[1].contains("+1.500s  ->  text") && lines[1].contains("\"hello\\n\""));
        assert!(lines[2].contains("<-  binary") && lines[2].contains("00 41 42  |.AB|"));
        assert!(lines[3].contains("gap") && lines[3].contains("10 B"));
        assert!(notes.contains("partial line of 20 bytes"), "{notes}");
    }

    #[test]
    fn a_file_that_is_not_a_recording_is_an_error() {
        let f = file(&[msg(1, Dir::In, Kind::Text, b"x")], b"");
        let mut sink = Vec::new();
        let mut notes = Vec::new();
        assert!(matches!(
            replay(f.path(), ReplayOptions::default(), &mut sink, &mut notes),
            Err(ReplayError::NoStart)
        ));
    }
}
