//! Criterion micro-benchmarks of the `mfp-core` hot paths:
//!
//! - `sampling`: one depth-4 frame, intra-runtime (PRNG ⊕ jitter) and cross-runtime;
//! - `message_encode_decode`: assemble + parse + validate + decode of a full protocol
//!   message, and its two halves (`message_assemble`, `message_open`);
//! - `ring_aes256gcm`: raw AES-256-GCM seal + open of the same sizes, for comparison;
//! - `ratchet`: one `advance` over a depth-4 frame;
//! - `full_message`: the whole per-message crypto of one intra-runtime message, and one
//!   cross-runtime (bilateral) seal + open.
//!
//! Run with `cargo bench -p mfp-benches --bench core`. Measurement times are short so the
//! whole run takes about two minutes.
// Setup failures in a benchmark are bugs; there is nobody to return an error to.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use mfp_core::bilateral::BilateralState;
use mfp_core::envelope::{self, EnvelopeLimits};
use mfp_core::{
    AgentId, ChannelId, EntropySource, Error, Frame, MerkleSg, RuntimeId, State, encoding, message, ratchet, sampling,
};
use ring::aead;

/// Payload sizes of the throughput groups.
const SIZES: [(usize, &str); 4] = [(64, "64B"), (1 << 10, "1KiB"), (64 << 10, "64KiB"), (1 << 20, "1MiB")];

/// A cheap deterministic entropy source (xorshift64*), so the sampling benchmark measures
/// the frame derivation rather than the operating system's RNG. Not for real use.
struct XorShift(u64);

impl EntropySource for XorShift {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), Error> {
        for chunk in dest.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            for (d, s) in chunk.iter_mut().zip(v) {
                *d = s;
            }
        }
        Ok(())
    }
}

/// A channel with its seed and the runtime's global state, as a runtime would hold them.
struct Fixture {
    channel: ChannelId,
    sl: State,
    sg: State,
}

fn fixture() -> Fixture {
    let runtime = RuntimeId::derive(b"bench-deployment", b"bench-instance");
    let alice = AgentId::derive(&runtime, 1, &[1; 8]);
    let bob = AgentId::derive(&runtime, 2, &[2; 8]);
    let channel = ChannelId::from_bytes([0xa4; 16]);
    let sl = ratchet::channel_seed(&runtime, &alice, &bob, &channel);
    let mut tree = MerkleSg::new();
    tree.insert(channel, &sl).expect("fresh tree");
    let sg = tree.root().expect("one leaf");
    Fixture { channel, sl, sg }
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(7)).collect()
}

fn bench_sampling(c: &mut Criterion) {
    let fx = fixture();
    let mut g = c.benchmark_group("sampling");
    let mut entropy = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut step = 0u64;
    g.bench_function("intra_depth4", |b| {
        b.iter(|| {
            step = step.wrapping_add(1);
            sampling::sample_frame(&fx.sl, black_box(step), &fx.sg, 4, &mut entropy).expect("sample")
        })
    });
    let bi = BilateralState::deterministic(
        &RuntimeId::derive(b"bench", b"runtime-a"),
        &RuntimeId::derive(b"bench", b"runtime-b"),
    );
    let mut step = 0u64;
    g.bench_function("cross_depth4", |b| {
        b.iter(|| {
            step = step.wrapping_add(1);
            sampling::sample_frame_cross(&bi.ratchet, black_box(step), &bi.ratchet, &bi.prng_seed, 4).expect("sample")
        })
    });
    g.finish();
}

/// Sets the per-size group options: byte throughput, and fewer, flat samples for the
/// large sizes so that a 2 s measurement is enough.
fn size_options(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, n: usize) {
    g.throughput(Throughput::Bytes(n as u64));
    if n >= 64 << 10 {
        g.sampling_mode(SamplingMode::Flat).sample_size(20);
    } else {
        g.sampling_mode(SamplingMode::Auto).sample_size(50);
    }
}

fn bench_message(c: &mut Criterion) {
    let fx = fixture();
    let frame = sampling::sample_frame(&fx.sl, 0, &fx.sg, 4, &mut XorShift(1)).expect("sample");
    let mut g = c.benchmark_group("message_encode_decode");
    for (n, label) in SIZES {
        let p = payload(n);
        size_options(&mut g, n);
        g.bench_with_input(BenchmarkId::from_parameter(label), &p, |b, p| {
            b.iter(|| {
                // Sender: E(P) inside M = open ‖ E(P) ‖ close.
                let msg = message::assemble(&frame, &fx.sl, &fx.channel, 0, black_box(p)).expect("assemble");
                // Receiver: split, check the frame pair, decrypt.
                let parts = message::parse(&msg, 4).expect("parse");
                Frame::validate_bytes(parts.frame_open_bytes(), parts.frame_close_bytes(), &frame).expect("valid");
                encoding::decode(&fx.sl, &fx.channel, 0, parts.encoded_payload()).expect("decode")
            })
        });
    }
    g.finish();
}

/// The two halves of `message_encode_decode`, to see where the time goes.
fn bench_message_halves(c: &mut Criterion) {
    let fx = fixture();
    let frame = sampling::sample_frame(&fx.sl, 0, &fx.sg, 4, &mut XorShift(1)).expect("sample");
    let mut g = c.benchmark_group("message_assemble");
    for (n, label) in SIZES {
        let p = payload(n);
        size_options(&mut g, n);
        g.bench_with_input(BenchmarkId::from_parameter(label), &p, |b, p| {
            b.iter(|| message::assemble(&frame, &fx.sl, &fx.channel, 0, black_box(p)).expect("assemble"))
        });
    }
    g.finish();
    let mut g = c.benchmark_group("message_open");
    for (n, label) in SIZES {
        let msg = message::assemble(&frame, &fx.sl, &fx.channel, 0, &payload(n)).expect("assemble");
        size_options(&mut g, n);
        g.bench_with_input(BenchmarkId::from_parameter(label), &msg, |b, msg| {
            b.iter(|| {
                let parts = message::parse(black_box(msg), 4).expect("parse");
                Frame::validate_bytes(parts.frame_open_bytes(), parts.frame_close_bytes(), &frame).expect("valid");
                encoding::decode(&fx.sl, &fx.channel, 0, parts.encoded_payload()).expect("decode")
            })
        });
    }
    g.finish();
}

fn bench_ring(c: &mut Criterion) {
    let key_bytes = [0x42u8; 32];
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, &key_bytes).expect("key"));
    let aad = [0x24u8; 24];
    let mut g = c.benchmark_group("ring_aes256gcm_seal_open");
    for (n, label) in SIZES {
        let p = payload(n);
        size_options(&mut g, n);
        g.bench_with_input(BenchmarkId::from_parameter(label), &p, |b, p| {
            b.iter(|| {
                // One copy of the payload, as `message::assemble` makes; the nonce is fixed
                // because nothing sealed here ever leaves the benchmark.
                let mut buf = Vec::with_capacity(p.len() + 16);
                buf.extend_from_slice(black_box(p));
                key.seal_in_place_append_tag(
                    aead::Nonce::assume_unique_for_key([7; 12]),
                    aead::Aad::from(aad),
                    &mut buf,
                )
                .expect("seal");
                let len = key
                    .open_in_place(aead::Nonce::assume_unique_for_key([7; 12]), aead::Aad::from(aad), &mut buf)
                    .expect("open")
                    .len();
                buf.truncate(len);
                buf
            })
        });
    }
    g.finish();
}

fn bench_ratchet(c: &mut Criterion) {
    let fx = fixture();
    let frame = sampling::sample_frame(&fx.sl, 0, &fx.sg, 4, &mut XorShift(2)).expect("sample");
    c.bench_function("ratchet_advance_depth4", |b| b.iter(|| ratchet::advance(black_box(&fx.sl), &frame)));
}

fn bench_full(c: &mut Criterion) {
    let fx = fixture();
    let p = payload(64);
    let mut g = c.benchmark_group("full_message_64B");
    g.throughput(Throughput::Bytes(64));
    let mut entropy = XorShift(3);
    g.bench_function("intra", |b| {
        b.iter(|| {
            // ds = HMAC(Sl, t ‖ Sg) and the ChaCha20 candidates ⊕ jitter (sample_frame
            // derives ds itself), then E(P) and M, the receiver's parse, validation and
            // decode, and the ratchet step both sides apply.
            let frame = sampling::sample_frame(&fx.sl, 0, &fx.sg, 4, &mut entropy).expect("sample");
            let msg = message::assemble(&frame, &fx.sl, &fx.channel, 0, black_box(&p)).expect("assemble");
            let parts = message::parse(&msg, 4).expect("parse");
            Frame::validate_bytes(parts.frame_open_bytes(), parts.frame_close_bytes(), &frame).expect("valid");
            let out = encoding::decode(&fx.sl, &fx.channel, 0, parts.encoded_payload()).expect("decode");
            (out, ratchet::advance(&fx.sl, &frame))
        })
    });

    let a = RuntimeId::derive(b"bench", b"runtime-a");
    let bi = BilateralState::deterministic(&a, &RuntimeId::derive(b"bench", b"runtime-b"));
    g.bench_function("bilateral_seal_open", |b| {
        b.iter(|| {
            // Runtime A seals (frame, header, M, advance); runtime B parses the wire
            // message, re-derives the frame, validates, decodes and advances.
            let out = bi.seal_outbound(&a, &fx.channel, 4, black_box(&p)).expect("seal");
            let (h, body) = envelope::parse_wire(&out.wire, &EnvelopeLimits::default()).expect("parse");
            bi.open_inbound(&h, body).expect("open")
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = bench_sampling, bench_message, bench_message_halves, bench_ring, bench_ratchet, bench_full
}
criterion_main!(benches);
