//! A recording as a sequence of [`Entry`]s, read line by line.
//!
//! A last line without its `\n` (the file was cut short, or is still being written) is not an
//! entry: [`Reader::next_entry`] says the input is at its end and keeps the partial line, so a
//! reader following a live file picks it up once the rest arrives. Blank lines are skipped;
//! any other line that is not an entry is an error naming its line number.

use std::io::{self, BufRead};

use super::format::{Entry, LineError};

/// The longest line read: far beyond what a message line of any accepted size needs, and a
/// bound against a file that is not a recording.
pub const MAX_LINE_BYTES: u64 = 8 << 30;

/// Why a recording could not be read on.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("line {line}: {source}")]
    Line {
        line: u64,
        #[source]
        source: LineError,
    },
    #[error("line {line} is longer than {MAX_LINE_BYTES} bytes: not a recording")]
    TooLong { line: u64 },
}

/// Entries from any buffered input.
#[derive(Debug)]
pub struct Reader<R> {
    inner: R,
    /// The line read so far (its `\n` not yet seen).
    partial: Vec<u8>,
    /// Lines completed so far.
    line: u64,
}

impl<R: BufRead> Reader<R> {
    pub fn new(inner: R) -> Reader<R> {
        Reader {
            inner,
            partial: Vec::new(),
            line: 0,
        }
    }

    /// The next entry, or `None` at the end of the input so far (a cut-short last line is
    /// kept, not returned). Calling again after `None` reads what was added since.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, ReadError> {
        loop {
            let avail = match self.inner.fill_buf() {
                Ok(a) => a,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if avail.is_empty() {
                return Ok(None);
            }
            let (take, done) = match memchr::memchr(b'\n', avail) {
                Some(i) => (i, true),
                None => (avail.len(), false),
            };
            if (self.partial.len() + take) as u64 > MAX_LINE_BYTES {
                return Err(ReadError::TooLong {
                    line: self.line + 1,
                });
            }
            self.partial.extend_from_slice(&avail[..take]);
            self.inner.consume(take + usize::from(done));
            if !done {
                continue;
            }
            self.line += 1;
            let line = std::mem::take(&mut self.partial);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Entry::parse(&line)
                .map(Some)
                .map_err(|source| ReadError::Line {
                    line: self.line,
                    source,
                });
        }
    }

    /// Bytes of a last line whose `\n` has not been read (a cut-short or still growing file).
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// Lines read so far.
    pub fn lines(&self) -> u64 {
        self.line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::{Dir, Kind};

    #[test]
    fn a_cut_short_last_line_is_kept_until_it_is_complete() {
        let mut text = Vec::new();
        Entry::End {
            t: 1,
            close: 1000,
            reason: String::new(),
        }
        .encode(&mut text);
        let message = {
            let mut m = Vec::new();
            Entry::Message {
                t: 0,
                dir: Dir::In,
                kind: Kind::Text,
                data: b"abc".to_vec(),
            }
            .encode(&mut m);
            m
        };
        let cut = message.len() / 2;
        // The first half of the file: one whole line, then half a line.
        let mut file = message.clone();
        file.extend_from_slice(&message[..cut]);
        let mut r = Reader::new(io::Cursor::new(file));
        assert!(matches!(
            r.next_entry().unwrap(),
            Some(Entry::Message { .. })
        ));
        assert_eq!(r.next_entry().unwrap(), None);
        assert_eq!(r.pending(), cut);
        // The rest arrives (a growing file): the line is whole now.
        let mut rest = message[cut..].to_vec();
        rest.extend_from_slice(&text);
        let pos = r.inner.get_ref().len();
        r.inner.get_mut().extend_from_slice(&rest);
        r.inner.set_position(pos as u64);
        assert!(matches!(
            r.next_entry().unwrap(),
            Some(Entry::Message { .. })
        ));
        assert!(matches!(r.next_entry().unwrap(), Some(Entry::End { .. })));
        assert_eq!(r.next_entry().unwrap(), None);
        assert_eq!(r.pending(), 0);
        assert_eq!(r.lines(), 3);
    }

    #[test]
    fn a_bad_line_names_its_number() {
        let mut r = Reader::new(io::Cursor::new(b"\n{\"t\":1}\n".to_vec()));
        match r.next_entry() {
            Err(ReadError::Line { line: 2, .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}
