//! Payload masking (RFC 6455 §5.3): XOR of the payload with a 4-byte key.
//!
//! Owns: the in-place XOR, a word-at-a-time fast path and a byte-at-a-time reference version.
//! Does not own: deciding whether a frame must be masked (that is [`crate::ws::frame`]) or
//! generating keys (a server never masks what it sends, RFC 6455 §5.1).

/// XOR `buf` in place with the 4-byte `mask`, where `buf[0]` is at position `offset` of the frame
/// payload (so the key byte used for `buf[i]` is `mask[(offset + i) % 4]`).
///
/// Fast path: eight bytes at a time as a `u64` (safe code only, shaped so that LLVM can
/// vectorize it); the tail is done byte by byte. Unaligned slices are fine.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    // RFC 6455 §5.3: octet i of the payload is XORed with octet (i MOD 4) of the key.
    // Rotate the key so that index 0 of the rotated key lines up with buf[0].
    let phase = offset & 3;
    let key = [
        mask[phase],
        mask[(phase + 1) & 3],
        mask[(phase + 2) & 3],
        mask[(phase + 3) & 3],
    ];
    let word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);

    // 32 bytes a step (four words the compiler turns into vector instructions), then 8.
    let mut wide = buf.chunks_exact_mut(32);
    for chunk in &mut wide {
        for part in chunk.chunks_exact_mut(8) {
            xor_word(part, word);
        }
    }
    let mut chunks = wide.into_remainder().chunks_exact_mut(8);
    for chunk in &mut chunks {
        xor_word(chunk, word);
    }
    // Every full chunk is a multiple of 4 bytes, so the key phase of the tail is still 0.
    for (b, k) in chunks.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *b ^= *k;
    }
}

/// XOR 8 bytes with `word`.
#[inline(always)]
fn xor_word(chunk: &mut [u8], word: u64) {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(chunk);
    chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
}

/// Byte-at-a-time reference implementation of [`apply_mask`], kept for tests and as documentation.
pub fn apply_mask_bytewise(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        // 2^64 (and 2^32) are multiples of 4, so wrapping keeps the position modulo 4 right.
        *b ^= mask[offset.wrapping_add(i) & 3];
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

    #[test]
    fn rfc_6455_5_7_hello() {
        // RFC 6455 §5.7: a masked "Hello" with key 37 fa 21 3d.
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&payload, b"Hello");
    }

    #[test]
    fn empty_buffer_is_a_no_op() {
        let mut empty: [u8; 0] = [];
        apply_mask(&mut empty, [1, 2, 3, 4], 3);
        apply_mask_bytewise(&mut empty, [1, 2, 3, 4], 3);
    }

    #[test]
    fn offset_continues_the_key() {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, mask, 0);
        // Masking in pieces with the running offset gives the same bytes.
        let mut pieces = data.clone();
        let mut start = 0;
        for len in [1usize, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233] {
            let end = (start + len).min(pieces.len());
            apply_mask(&mut pieces[start..end], mask, start);
            start = end;
        }
        apply_mask(&mut pieces[start..], mask, start);
        assert_eq!(whole, pieces);
        // Masking twice restores the input.
        apply_mask(&mut whole, mask, 0);
        assert_eq!(whole, data);
    }

    #[test]
    fn huge_offset_does_not_overflow() {
        let mask = [1, 2, 4, 8];
        let mut a = [0u8; 19];
        let mut b = [0u8; 19];
        apply_mask(&mut a, mask, usize::MAX - 2);
        apply_mask_bytewise(&mut b, mask, usize::MAX - 2);
        assert_eq!(a, b);
        // usize::MAX - 2 ≡ 1 (mod 4)
        assert_eq!(a[0], 2);
    }

    #[test]
    fn fast_path_matches_bytewise_randomized() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut backing = vec![0u8; 320];
        for _ in 0..20_000 {
            let len = rng.below(300) as usize;
            let offset = rng.below(8) as usize;
            let misalign = rng.below(8) as usize;
            let m = rng.next().to_le_bytes();
            let mask = [m[0], m[1], m[2], m[3]];
            for b in backing.iter_mut() {
                *b = rng.next() as u8;
            }
            let mut reference = backing.clone();
            apply_mask(&mut backing[misalign..misalign + len], mask, offset);
            apply_mask_bytewise(&mut reference[misalign..misalign + len], mask, offset);
            assert_eq!(
                backing, reference,
                "len {len} offset {offset} misalign {misalign}"
            );
        }
    }
}
