//! Criterion benchmarks of the global state tree [`MerkleSg`]:
//!
//! - `merkle_update_leaf`: one leaf update (eager leaf-to-root path) at 1k and 1M leaves;
//! - `merkle_root_after_insert`: `root()` after inserting one channel at 1k and 1M leaves,
//!   with an id that sorts last (`append`: only the right edge is rehashed) and with a random
//!   id (`random`: every leaf right of it shifts, so about half the tree is rehashed — the
//!   pymfp tree shape makes that unavoidable);
//! - `merkle_bulk_1M`: building a 1M-leaf tree with `from_states`, and with 1M `insert`s of
//!   random ids followed by one `root()` (a runtime establishing 1M channels in a row).
//!
//! The 1M-leaf trees are built once outside the timing loops; the 1M cases use 10 samples.
//! Run with `cargo bench -p mfp-benches --bench merkle`.
// Setup failures in a benchmark are bugs; there is nobody to return an error to.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use mfp_core::testing::SplitMix64;
use mfp_core::{ChannelId, MerkleSg, State};

/// Deterministic ids and states.
struct Rng(SplitMix64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn channel(&mut self) -> ChannelId {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.next().to_le_bytes());
        b[8..].copy_from_slice(&self.next().to_le_bytes());
        ChannelId::from_bytes(b)
    }

    fn state(&mut self) -> State {
        let mut b = [0u8; 32];
        for chunk in b.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        State::from_bytes(b)
    }
}

/// `n` random channels and states. Ids never start with `0xff`, so ids that do sort last.
fn entries(n: usize, seed: u64) -> Vec<(ChannelId, State)> {
    let mut rng = Rng(SplitMix64(seed));
    (0..n)
        .map(|_| {
            let mut c = *rng.channel().as_bytes();
            c[0] &= 0x7f;
            (ChannelId::from_bytes(c), rng.state())
        })
        .collect()
}

fn tree_of(entries: &[(ChannelId, State)]) -> MerkleSg {
    let mut tree = MerkleSg::from_states(entries.iter().map(|(c, s)| (*c, s))).expect("distinct random ids");
    assert!(tree.root().is_some());
    tree
}

const SIZES: [(usize, &str); 2] = [(1_000, "1k"), (1_000_000, "1M")];

fn update_leaf(c: &mut Criterion) {
    let mut group = c.benchmark_group("merkle_update_leaf");
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for (n, label) in SIZES {
        let entries = entries(n, 1);
        let mut tree = tree_of(&entries);
        let mut rng = Rng(SplitMix64(2));
        let state = rng.state();
        let mut i = 0usize;
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                tree.update(black_box(&entries[i].0), &state).expect("present");
            });
        });
        assert!(tree.is_clean());
    }
    group.finish();
}

fn root_after_insert(c: &mut Criterion) {
    let mut group = c.benchmark_group("merkle_root_after_insert");
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for (n, label) in SIZES {
        if n >= 1_000_000 {
            group.sample_size(10).sampling_mode(SamplingMode::Flat);
        }
        let entries = entries(n, 3);
        let mut tree = tree_of(&entries);
        let mut rng = Rng(SplitMix64(4));
        let state = rng.state();
        for (case, last) in [("append", true), ("random", false)] {
            group.bench_function(BenchmarkId::new(case, label), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let mut id = *rng.channel().as_bytes();
                        if last {
                            id[0] = 0xff;
                        } else {
                            id[0] &= 0x7f;
                        }
                        let id = ChannelId::from_bytes(id);
                        tree.insert(id, &state).expect("fresh id");
                        let start = Instant::now();
                        black_box(tree.root());
                        total += start.elapsed();
                        // Restore the original size, untimed.
                        tree.remove(&id).expect("just inserted");
                        tree.commit();
                    }
                    total
                });
            });
        }
    }
    group.finish();
}

fn bulk(c: &mut Criterion) {
    let mut group = c.benchmark_group("merkle_bulk_1M");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    let entries = entries(1_000_000, 5);
    group.bench_function("from_states", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let mut tree = MerkleSg::from_states(entries.iter().map(|(c, s)| (*c, s))).expect("distinct");
                black_box(tree.root());
                total += start.elapsed();
                drop(tree);
            }
            total
        });
    });
    group.bench_function("insert_each_then_root", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let mut tree = MerkleSg::new();
                for (c, s) in &entries {
                    tree.insert(*c, s).expect("distinct");
                }
                black_box(tree.root());
                total += start.elapsed();
                drop(tree);
            }
            total
        });
    });
    group.finish();
}

criterion_group!(benches, update_leaf, root_after_insert, bulk);
criterion_main!(benches);
