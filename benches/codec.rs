//! Codec micro-benchmarks (criterion): unmasking, UTF-8 validation and frame decoding.
//!
//! Run with `cargo bench --bench codec` (results in BENCHMARKS.md). Throughput is reported in
//! bytes of input per second.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use wsgate::ws::mask::{apply_mask, apply_mask_bytewise};
use wsgate::ws::utf8::Utf8Validator;
use wsgate::ws::{Decoder, DecoderLimits, Frame};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn sizes() -> [(usize, &'static str); 3] {
    [(64, "64B"), (4096, "4KiB"), (1 << 20, "1MiB")]
}

fn mask(c: &mut Criterion) {
    let mut g = c.benchmark_group("mask");
    for (size, name) in sizes() {
        let mut buf: Vec<u8> = (0..size).map(|i| i as u8).collect();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("apply_mask/{name}"), |b| {
            b.iter(|| apply_mask(black_box(&mut buf), black_box(KEY), black_box(1)))
        });
        g.bench_function(format!("apply_mask_bytewise/{name}"), |b| {
            b.iter(|| apply_mask_bytewise(black_box(&mut buf), black_box(KEY), black_box(1)))
        });
    }
    g.finish();
}

/// `len` bytes of valid UTF-8 made of repeats of `unit`, cut at a code point boundary.
fn text(unit: &str, len: usize) -> Vec<u8> {
    let mut s = String::with_capacity(len + unit.len());
    while s.len() + unit.len() <= len {
        s.push_str(unit);
    }
    s.into_bytes()
}

fn utf8(c: &mut Criterion) {
    let mut g = c.benchmark_group("utf8");
    let inputs = [
        (
            "ascii",
            "The quick brown fox jumps over the lazy dog. 0123456789 ",
        ),
        // 2-, 3- and 4-byte code points mixed with ASCII.
        ("multibyte", "Grüße, 世界! Ünïcödé 🦀 ∑ x² — año "),
    ];
    for (kind, unit) in inputs {
        for (size, name) in [(4096usize, "4KiB"), (1 << 20, "1MiB")] {
            let data = text(unit, size);
            g.throughput(Throughput::Bytes(data.len() as u64));
            g.bench_function(format!("feed/{kind}/{name}"), |b| {
                b.iter(|| {
                    let mut v = Utf8Validator::new();
                    v.feed(black_box(&data)).unwrap();
                    v.finish().unwrap();
                })
            });
            // The reference: std's validation of the same bytes.
            g.bench_function(format!("std_from_utf8/{kind}/{name}"), |b| {
                b.iter(|| std::str::from_utf8(black_box(&data)).unwrap().len())
            });
        }
    }
    g.finish();
}

/// `count` masked binary frames of `payload` bytes each, back to back, as a client sends them.
fn masked_frames(count: usize, payload: usize) -> BytesMut {
    let mut out = BytesMut::with_capacity(count * (payload + 8));
    for i in 0..count {
        out.extend_from_slice(&[0x82, 0x80 | payload as u8]);
        out.extend_from_slice(&KEY);
        let start = out.len();
        out.extend((0..payload).map(|j| (i + j) as u8));
        apply_mask(&mut out[start..], KEY, 0);
    }
    out
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decoder");
    let limits = DecoderLimits {
        max_frame_size: 1 << 20,
        max_message_size: 1 << 20,
        max_fragments: 65536,
    };
    for payload in [16usize, 64, 125] {
        let frames = 1000;
        let input = masked_frames(frames, payload);
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(format!("decode/{frames}x{payload}B"), |b| {
            b.iter_batched_ref(
                || input.clone(),
                |buf| {
                    let mut dec = Decoder::new(limits);
                    let mut n = 0usize;
                    loop {
                        match dec.decode(buf) {
                            Ok(Some(Frame::Data { payload, .. })) => n += payload.len(),
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    assert_eq!(n, frames * payload);
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, mask, utf8, decode);
criterion_main!(benches);
