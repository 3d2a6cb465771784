//! The session recording reader (`wsgate::recording::Reader`, behind `wsgate replay`) on
//! arbitrary bytes: whole, and cut at a position taken from the input (a file still being
//! written, then the rest arriving).
//!
//! Checked: no panic; both ways give the same entries up to the first error; every entry read is
//! written back by the recording's encoder as exactly one line that reads back to the same entry.

#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use wsgate::recording::{Entry, Reader};

/// Entries until the end of the input or the first error (`true` if there was one).
fn read_all(r: &mut Reader<Cursor<Vec<u8>>>, out: &mut Vec<Entry>) -> bool {
    loop {
        match r.next_entry() {
            Ok(Some(e)) => out.push(e),
            Ok(None) => return false,
            Err(_) => return true,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut whole = Vec::new();
    let whole_failed = read_all(&mut Reader::new(Cursor::new(data.to_vec())), &mut whole);

    // The same bytes in two parts: a file that grows while it is read.
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut first = Reader::new(Cursor::new(data[..cut].to_vec()));
    let mut parts = Vec::new();
    let mut parts_failed = read_all(&mut first, &mut parts);
    if !parts_failed {
        // The rest of the file, from the start of the line the first part left pending.
        let from = cut - first.pending();
        let mut rest = Reader::new(Cursor::new(data[from..].to_vec()));
        parts_failed = read_all(&mut rest, &mut parts);
    }
    if !whole_failed && !parts_failed {
        assert_eq!(whole, parts);
    }

    for e in &whole {
        let mut line = Vec::new();
        e.encode(&mut line);
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let back = Entry::parse(&line[..line.len() - 1]).expect("an encoded entry reads back");
        assert_eq!(&back, e);
    }
});
