//! Incremental UTF-8 validation of text messages (RFC 6455 §5.6 and §8.1).
//!
//! Owns: validating a message that arrives in arbitrary pieces, carrying at most 3 bytes of an
//! unfinished code point between pieces, and failing as soon as the bytes seen so far cannot be
//! the start of valid UTF-8 (fail fast, as the Autobahn 6.x cases expect).
//! Does not own: choosing the close code (the decoder maps a failure to 1007) or buffering the
//! message: the validator never copies more than the carried bytes.

/// Incremental UTF-8 validator that carries at most 3 bytes of an incomplete code point across
/// chunks and fails as soon as a byte makes the sequence impossible (fail fast, RFC 6455 §8.1,
/// Autobahn 6.x).
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    /// The bytes of an incomplete (but so far valid) code point from the previous chunk.
    carry: [u8; 4],
    /// How many bytes of `carry` are in use (0..=3).
    carry_len: u8,
}

/// Length of the sequence a lead byte starts. Only called on the first byte of a carry, which
/// std has accepted as a valid prefix, so it is one of C2..=F4.
fn sequence_width(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

impl Utf8Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Validate the next chunk. `Err(())` as soon as the input cannot be valid UTF-8 whatever
    /// follows. After an `Err` the validator's state is unspecified until [`Self::reset`].
    #[allow(clippy::result_unit_err)]
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), ()> {
        let mut rest = chunk;
        let carry_len = usize::from(self.carry_len);
        if carry_len > 0 {
            // Complete the pending code point with as few bytes of the chunk as it needs.
            let width = sequence_width(self.carry[0]);
            let take = width.saturating_sub(carry_len).min(rest.len());
            let (head, tail) = rest.split_at(take);
            let mut tmp = self.carry;
            let end = carry_len + take;
            let Some(dst) = tmp.get_mut(carry_len..end) else {
                return Err(());
            };
            dst.copy_from_slice(head);
            let Some(piece) = tmp.get(..end) else {
                return Err(());
            };
            match std::str::from_utf8(piece) {
                Ok(_) => self.carry_len = 0,
                // Still a valid prefix: the chunk ended inside the code point.
                Err(e) if e.error_len().is_none() => {
                    self.carry = tmp;
                    // `end` indexes the 4-byte carry buffer.
                    self.carry_len = u8::try_from(end).map_err(|_| ())?;
                    return Ok(());
                }
                // RFC 6455 §8.1: the bytes can never become valid UTF-8.
                Err(_) => return Err(()),
            }
            rest = tail;
        }
        // The bulk of a message: SIMD validation (AVX2 or SSE 4.2 when the CPU has them,
        // chosen at run time), with the same error report as std's (`valid_up_to`, `error_len`).
        match simdutf8::compat::from_utf8(rest) {
            Ok(_) => Ok(()),
            Err(e) => {
                // `error_len() == Some(_)`: an impossible sequence (overlong, surrogate,
                // > U+10FFFF, F5..FF, stray continuation...), even if it is only a prefix.
                if e.error_len().is_some() {
                    return Err(());
                }
                // `None`: the chunk ends with a valid but incomplete code point (<= 3 bytes).
                let tail = rest.get(e.valid_up_to()..).unwrap_or_default();
                let Some(dst) = self.carry.get_mut(..tail.len()) else {
                    return Err(());
                };
                dst.copy_from_slice(tail);
                self.carry_len = u8::try_from(tail.len()).map_err(|_| ())?;
                Ok(())
            }
        }
    }

    /// End of message: `Err(())` if an incomplete code point is pending. Resets the validator
    /// either way.
    #[allow(clippy::result_unit_err)]
    pub fn finish(&mut self) -> Result<(), ()> {
        let pending = self.carry_len != 0;
        self.reset();
        if pending {
            Err(())
        } else {
            Ok(())
        }
    }

    pub fn reset(&mut self) {
        self.carry_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Feed `chunks` one after the other, then finish. Returns the overall verdict.
    fn verdict(chunks: &[&[u8]]) -> bool {
        let mut v = Utf8Validator::new();
        for c in chunks {
            if v.feed(c).is_err() {
                return false;
            }
        }
        v.finish().is_ok()
    }

    /// Index of the first chunk whose feed fails, if any.
    fn first_failing_chunk(chunks: &[&[u8]]) -> Option<usize> {
        let mut v = Utf8Validator::new();
        chunks.iter().position(|c| v.feed(c).is_err())
    }

    fn valid_samples() -> Vec<Vec<u8>> {
        vec![
            b"".to_vec(),
            b"Hello-\xc2\xb5@\xc3\x9f\xc3\xb6\xc3\xa4\xc3\xbc\xc3\xa0\xc3\xa1-UTF-8!!".to_vec(),
            "κόσμε".as_bytes().to_vec(),
            // Boundaries of each sequence length (Autobahn 6.6-6.9 style).
            vec![0x00],
            vec![0x7F],
            vec![0xC2, 0x80],
            vec![0xDF, 0xBF],
            vec![0xE0, 0xA0, 0x80],
            vec![0xEF, 0xBF, 0xBF],
            vec![0xED, 0x9F, 0xBF], // U+D7FF
            vec![0xEE, 0x80, 0x80], // U+E000
            vec![0xEF, 0xBF, 0xBD], // U+FFFD
            vec![0xF0, 0x90, 0x80, 0x80],
            vec![0xF4, 0x8F, 0xBF, 0xBF], // U+10FFFF
            "a€😀b𝄞ü".as_bytes().to_vec(),
        ]
    }

    #[test]
    fn valid_strings_split_at_every_boundary() {
        for s in valid_samples() {
            assert!(verdict(&[&s]), "{s:x?}");
            for i in 0..=s.len() {
                for j in i..=s.len() {
                    let chunks: [&[u8]; 3] = [&s[..i], &s[i..j], &s[j..]];
                    assert!(verdict(&chunks), "{s:x?} split at {i},{j}");
                }
            }
            // One byte at a time.
            let singles: Vec<&[u8]> = s.chunks(1).collect();
            assert!(verdict(&singles), "{s:x?} bytewise");
        }
    }

    #[test]
    fn invalid_sequences_fail() {
        let invalid: Vec<Vec<u8>> = vec![
            // Overlong encodings (Autobahn 6.8-6.9).
            vec![0xC0, 0xAF],
            vec![0xC1, 0xBF],
            vec![0xE0, 0x80, 0xAF],
            vec![0xE0, 0x9F, 0xBF],
            vec![0xF0, 0x80, 0x80, 0xAF],
            vec![0xF0, 0x8F, 0xBF, 0xBF],
            // UTF-16 surrogates (Autobahn 6.18-6.19).
            vec![0xED, 0xA0, 0x80],
            vec![0xED, 0xBF, 0xBF],
            vec![0xED, 0xA0, 0x80, 0xED, 0xB0, 0x80],
            // Above U+10FFFF.
            vec![0xF4, 0x90, 0x80, 0x80],
            vec![0xF7, 0xBF, 0xBF, 0xBF],
            // Bytes that never appear.
            vec![0xF5],
            vec![0xF8, 0x88, 0x80, 0x80, 0x80],
            vec![0xFC, 0x84, 0x80, 0x80, 0x80, 0x80],
            vec![0xFE],
            vec![0xFF],
            // Lone continuation bytes.
            vec![0x80],
            vec![0xBF],
            vec![b'a', 0x80, b'b'],
            // A lead byte followed by a non-continuation.
            vec![0xC2, b'a'],
            vec![0xE2, 0x82, b'a'],
            vec![0xF0, 0x9F, 0x98, b'a'],
            // Valid text then an error (Autobahn 6.3.1 style).
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited".to_vec(),
        ];
        for s in &invalid {
            assert!(std::str::from_utf8(s).is_err());
            assert!(!verdict(&[s]), "{s:x?}");
            for i in 0..=s.len() {
                assert!(!verdict(&[&s[..i], &s[i..]]), "{s:x?} split at {i}");
            }
            let singles: Vec<&[u8]> = s.chunks(1).collect();
            assert!(!verdict(&singles), "{s:x?} bytewise");
        }
    }

    #[test]
    fn fails_fast_on_impossible_prefixes() {
        // Each of these is rejected at the byte that makes it impossible, before the rest of the
        // "code point" arrives.
        let cases: &[(&[u8], usize)] = &[
            (&[0xF4, 0x90], 1),       // > U+10FFFF, known at the second byte
            (&[0xED, 0xA0], 1),       // surrogate
            (&[0xE0, 0x80], 1),       // overlong 3-byte
            (&[0xF0, 0x80], 1),       // overlong 4-byte
            (&[0xC0], 0),             // overlong 2-byte lead, never valid
            (&[0xF5], 0),             // > U+10FFFF lead
            (&[b'a', 0xFF], 1),       // invalid byte after valid text
            (&[0xCE, 0xBA, 0x80], 2), // stray continuation after a complete char
        ];
        for (bytes, at) in cases {
            let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(first_failing_chunk(&chunks), Some(*at), "{bytes:x?}");
        }
        // Whole prefix in one chunk also fails immediately (no finish needed).
        let mut v = Utf8Validator::new();
        assert!(v.feed(&[0x41, 0xF4, 0x90]).is_err());
        // Autobahn 6.4.x: fail fast in the middle of a frame.
        let mut v = Utf8Validator::new();
        assert!(v
            .feed(b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5")
            .is_ok());
        assert!(v.feed(b"\xf4\x90\x80\x80").is_err());
    }

    #[test]
    fn truncated_sequence_at_end_of_message() {
        for s in [
            &[0xC2][..],
            &[0xE2, 0x82],
            &[0xF0, 0x9F, 0x98],
            &[b'a', b'b', 0xE2],
        ] {
            let mut v = Utf8Validator::new();
            assert!(v.feed(s).is_ok(), "{s:x?} is a valid prefix");
            assert!(v.finish().is_err(), "{s:x?}");
            // finish() reset the validator.
            assert!(v.feed(b"ok").is_ok());
            assert!(v.finish().is_ok());
        }
    }

    #[test]
    fn reset_drops_carry() {
        let mut v = Utf8Validator::new();
        assert!(v.feed(&[0xE2, 0x82]).is_ok());
        v.reset();
        assert!(v.feed(b"abc").is_ok());
        assert!(v.finish().is_ok());
    }

    #[test]
    fn carry_completed_then_more_text_in_same_chunk() {
        let euro = "€".as_bytes(); // E2 82 AC
        let mut v = Utf8Validator::new();
        assert!(v.feed(&euro[..1]).is_ok());
        assert!(v.feed(&euro[1..2]).is_ok());
        let mut rest = euro[2..].to_vec();
        rest.extend_from_slice("x€".as_bytes());
        rest.push(0xF0);
        assert!(v.feed(&rest).is_ok());
        assert!(v.feed(&[0x9F, 0x98, 0x80, b'!']).is_ok());
        assert!(v.finish().is_ok());
        // Carry completed, but the bytes right after it are invalid.
        let mut v = Utf8Validator::new();
        assert!(v.feed(&euro[..2]).is_ok());
        assert!(v.feed(&[0xAC, 0x80]).is_err());
    }

    #[test]
    fn randomized_against_std() {
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        let alphabet: Vec<char> = vec![
            'a',
            'Z',
            '0',
            '\u{7F}',
            '\u{80}',
            'é',
            '\u{7FF}',
            '\u{800}',
            '€',
            '\u{D7FF}',
            '\u{E000}',
            '\u{FFFD}',
            '\u{FFFF}',
            '\u{10000}',
            '😀',
            '\u{10FFFF}',
        ];
        let mut valid_count = 0;
        for round in 0..20_000 {
            let mut bytes = Vec::new();
            let nchars = rng.below(12) as usize;
            for _ in 0..nchars {
                let c = alphabet[rng.below(alphabet.len() as u64) as usize];
                let mut tmp = [0u8; 4];
                bytes.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
            }
            // Corrupt about half of the strings: flip, insert, truncate or splice random bytes.
            if round % 2 == 1 && !bytes.is_empty() {
                match rng.below(4) {
                    0 => {
                        let i = rng.below(bytes.len() as u64) as usize;
                        bytes[i] = rng.next() as u8;
                    }
                    1 => {
                        let i = rng.below(bytes.len() as u64 + 1) as usize;
                        bytes.insert(i, 0x80 | (rng.next() as u8 & 0x7F));
                    }
                    2 => {
                        let n = rng.below(bytes.len() as u64) as usize;
                        bytes.truncate(n);
                    }
                    _ => {
                        let i = rng.below(bytes.len() as u64) as usize;
                        bytes[i] =
                            [0xC0, 0xC1, 0xED, 0xF4, 0xF5, 0xFF, 0xE0, 0xF0][rng.below(8) as usize];
                    }
                }
            }
            let expected = std::str::from_utf8(&bytes).is_ok();
            valid_count += usize::from(expected);
            // Split at random points.
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut start = 0;
            while start < bytes.len() {
                let len = 1 + rng.below(6) as usize;
                let end = (start + len).min(bytes.len());
                chunks.push(&bytes[start..end]);
                if rng.below(5) == 0 {
                    chunks.push(&[]);
                }
                start = end;
            }
            assert_eq!(verdict(&chunks), expected, "{bytes:x?} as {chunks:x?}");
        }
        // Both outcomes were exercised.
        assert!(valid_count > 5_000 && valid_count < 15_000, "{valid_count}");
    }

    /// Long messages in large chunks, so that the vectorised path sees whole blocks, errors in
    /// the middle of a block and code points cut at chunk ends: the verdict, and the chunk at
    /// which it fails, match std's validation of the bytes seen so far.
    #[test]
    fn large_chunks_match_std_and_fail_at_the_same_chunk() {
        let pieces: [&str; 8] = ["a", "ü", "世", "🦀", "The quick fox ", "ß", "€", "\n"];
        let mut rng = XorShift(0x5EED_F7E5_7000);
        let mut failed = 0;
        for round in 0..3_000 {
            let target = 1 + rng.below(5_000) as usize;
            let mut bytes = Vec::with_capacity(target + 16);
            while bytes.len() < target {
                bytes.extend_from_slice(pieces[rng.below(8) as usize].as_bytes());
            }
            if round % 3 != 0 {
                let i = rng.below(bytes.len() as u64) as usize;
                bytes[i] = [0x80, 0xC0, 0xED, 0xF5, 0xFF, 0xE0, 0xF4, rng.next() as u8]
                    [rng.below(8) as usize];
            }
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut start = 0;
            while start < bytes.len() {
                let end = (start + 1 + rng.below(700) as usize).min(bytes.len());
                chunks.push(&bytes[start..end]);
                start = end;
            }
            // Reference: the first chunk after which the bytes seen so far cannot be completed.
            let mut seen = 0;
            let expected_fail = chunks.iter().position(|c| {
                seen += c.len();
                matches!(std::str::from_utf8(&bytes[..seen]), Err(e) if e.error_len().is_some())
            });
            assert_eq!(first_failing_chunk(&chunks), expected_fail, "round {round}");
            assert_eq!(
                verdict(&chunks),
                std::str::from_utf8(&bytes).is_ok(),
                "round {round}"
            );
            failed += usize::from(expected_fail.is_some());
        }
        assert!(failed > 500 && failed < 2_500, "{failed}");
    }
}
