//! The configuration loader (`wsgate::config::Config::parse`) on arbitrary UTF-8 text (the seeds
//! include the shipped config.toml), relative paths resolved against the repository root so
//! that the shipped configuration's certificates and demo directory are found.
//!
//! Checked: no panic; an accepted configuration renders its summary; an error renders with
//! Display, names a line inside the text when it names one, and carries a message (except for
//! some TOML syntax errors, see below). The
//! duration and size parsers (`parse_duration`, `parse_size`) run on the whole text and on
//! each line: no panic, and what they accept reads back the same from its canonical form
//! (`"<n>ms"`, `"<n>"`); a size is never 0.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wsgate::config::{parse_duration, parse_size, Config};

/// Text that could name a device or a pseudo-file (whose reads may never end) is skipped: the
/// loader reads the files a configuration names, and that is not what is fuzzed. TOML's `\u`
/// escapes could spell any of these, so text with them is skipped too.
fn may_read_special_files(text: &str) -> bool {
    ["/dev", "/proc", "/sys", "\\u", "\\U"]
        .iter()
        .any(|s| text.contains(s))
}

fn check_duration(s: &str) {
    if let Ok(d) = parse_duration(s) {
        if let Ok(ms) = u64::try_from(d.as_millis()) {
            assert_eq!(parse_duration(&format!("{ms}ms")), Ok(d), "{s:?}");
        }
    }
}

fn check_size(s: &str) {
    if let Ok(n) = parse_size(s) {
        assert!(n > 0, "{s:?} is a size of 0");
        assert_eq!(parse_size(&n.to_string()), Ok(n), "{s:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_duration(text);
    check_size(text);
    for line in text.lines().take(64) {
        check_duration(line);
        check_size(line);
    }
    if may_read_special_files(text) {
        return;
    }
    let base = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    match Config::parse(text, base) {
        Ok(config) => {
            assert!(!config.summary().is_empty());
        }
        Err(e) => {
            assert!(!e.message.is_empty(), "an error without a message: {e:?}");
            if let Some(line) = e.line {
                let lines = text.lines().count().max(1);
                assert!(
                    (1..=lines + 1).contains(&line),
                    "line {line} of a {lines}-line text: {e}"
                );
            }
            assert!(!e.to_string().is_empty());
        }
    }
});
