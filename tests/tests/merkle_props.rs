//! Property tests of the incremental global state tree [`MerkleSg`].
//!
//! For arbitrary sequences of insert / update / remove / root operations, the incremental
//! tree must agree with
//! - a model (`BTreeMap`) on every operation's result, `len` and `contains`;
//! - a from-scratch naive rebuild of the sorted set (leaves SHA-256 of each state in channel-id
//!   order, parents SHA-256 of the pair, an odd last node promoted) on the root and all
//!   levels;
//! - `rs_merkle` 1.5 with its `Sha256` algorithm on the root.
//!
//! `rs_merkle` and pymfp build the same tree for **every** leaf count: `rs_merkle`'s default
//! `Hasher::concat_and_hash(left, None)` returns `left` unchanged, i.e. an odd last node is
//! promoted, not duplicated or re-hashed (see `rs_merkle-1.5.0/src/hasher.rs`). Its tree can
//! have extra top levels (its depth is the bit length of the leaf count, so e.g. 4 leaves get
//! a `[root]` level repeated), but the extra levels are copies and the root is the same, so
//! only roots are compared with it. With 0 leaves both give no root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;

use mfp_core::crypto::sha256;
use mfp_core::{ChannelId, MerkleError, MerkleSg, State};
use proptest::collection::vec;
use proptest::prelude::*;
use rs_merkle::MerkleTree;
use rs_merkle::algorithms::Sha256;

type Hash = [u8; 32];

/// Leaf hashes `SHA256(Sl)` in channel-id order.
fn leaves(model: &BTreeMap<ChannelId, State>) -> Vec<Hash> {
    model.values().map(|s| sha256(&[s.expose()])).collect()
}

/// pymfp's Sg tree, written out independently of `mfp-core`.
fn naive_levels(model: &BTreeMap<ChannelId, State>) -> Vec<Vec<Hash>> {
    let mut cur = leaves(model);
    let mut out = Vec::new();
    if cur.is_empty() {
        return out;
    }
    while cur.len() > 1 {
        let mut next = Vec::with_capacity(cur.len().div_ceil(2));
        let mut i = 0;
        while i < cur.len() {
            if i + 1 < cur.len() {
                next.push(sha256(&[&cur[i], &cur[i + 1]]));
            } else {
                next.push(cur[i]);
            }
            i += 2;
        }
        out.push(std::mem::replace(&mut cur, next));
    }
    out.push(cur);
    out
}

fn naive_root(model: &BTreeMap<ChannelId, State>) -> Option<Hash> {
    naive_levels(model).last().map(|l| l[0])
}

fn rs_merkle_root(model: &BTreeMap<ChannelId, State>) -> Option<Hash> {
    MerkleTree::<Sha256>::from_leaves(&leaves(model)).root()
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, [u8; 32]),
    Update(u8, [u8; 32]),
    Remove(u8),
    Root,
}

/// Channel ids drawn from a small key space (so operations hit existing leaves), spread over
/// the id range so that inserts land at the front, middle and end of the tree.
fn channel_of(key: u8) -> ChannelId {
    let mut b = [0u8; 16];
    b[0] = key.wrapping_mul(157);
    b[15] = key;
    ChannelId::from_bytes(b)
}

fn op(keys: u8) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..keys, any::<[u8; 32]>()).prop_map(|(k, s)| Op::Insert(k, s)),
        3 => (0..keys, any::<[u8; 32]>()).prop_map(|(k, s)| Op::Update(k, s)),
        2 => (0..keys).prop_map(Op::Remove),
        1 => Just(Op::Root),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop_oneof![vec(op(4), 0..40), vec(op(24), 0..200), vec(op(200), 0..400),]
}

fn check_root(tree: &mut MerkleSg, model: &BTreeMap<ChannelId, State>) -> Result<(), TestCaseError> {
    let root = tree.root().map(|r| *r.expose());
    prop_assert_eq!(root, naive_root(model));
    prop_assert_eq!(root, rs_merkle_root(model));
    prop_assert!(tree.is_clean());
    if !model.is_empty() {
        prop_assert_eq!(tree.root_if_clean().map(|r| *r.expose()), root);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Incremental tree == naive rebuild == rs_merkle, after every `Root` op and at the end.
    #[test]
    fn incremental_matches_naive_and_rs_merkle(ops in ops()) {
        let mut tree = MerkleSg::new();
        let mut model: BTreeMap<ChannelId, State> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Insert(k, s) => {
                    let c = channel_of(k);
                    let want = if model.contains_key(&c) { Err(MerkleError::Duplicate) } else { Ok(()) };
                    prop_assert_eq!(tree.insert(c, &State::from_bytes(s)), want);
                    model.entry(c).or_insert(State::from_bytes(s));
                    prop_assert!(tree.contains(&c));
                }
                Op::Update(k, s) => {
                    let c = channel_of(k);
                    let want = if model.contains_key(&c) { Ok(()) } else { Err(MerkleError::NotFound) };
                    prop_assert_eq!(tree.update(&c, &State::from_bytes(s)), want);
                    if let Some(st) = model.get_mut(&c) {
                        *st = State::from_bytes(s);
                    }
                }
                Op::Remove(k) => {
                    let c = channel_of(k);
                    let want = model.remove(&c).map(|_| ()).ok_or(MerkleError::NotFound);
                    prop_assert_eq!(tree.remove(&c), want);
                    prop_assert!(!tree.contains(&c));
                }
                Op::Root => check_root(&mut tree, &model)?,
            }
            prop_assert_eq!(tree.len(), model.len());
            prop_assert_eq!(tree.is_empty(), model.is_empty());
        }
        check_root(&mut tree, &model)?;
        prop_assert_eq!(tree.levels(), naive_levels(&model));
    }

    /// Bulk build == one-by-one inserts == naive == rs_merkle, for any set of channels.
    #[test]
    fn bulk_build_matches(entries in vec((any::<[u8; 16]>(), any::<[u8; 32]>()), 0..300)) {
        let model: BTreeMap<ChannelId, State> =
            entries.iter().map(|(c, s)| (ChannelId::from_bytes(*c), State::from_bytes(*s))).collect();
        let mut bulk = MerkleSg::from_states(model.iter().map(|(c, s)| (*c, s))).unwrap();
        let mut one_by_one = MerkleSg::new();
        for (c, s) in &model {
            one_by_one.insert(*c, s).unwrap();
        }
        prop_assert_eq!(bulk.len(), model.len());
        prop_assert_eq!(bulk.levels(), naive_levels(&model));
        prop_assert_eq!(one_by_one.levels(), naive_levels(&model));
        check_root(&mut bulk, &model)?;
    }

    /// A leaf update on a clean tree is applied eagerly: the tree stays clean and the root
    /// readable through `&self`, equal to a rebuild.
    #[test]
    fn eager_update_keeps_tree_clean(
        entries in vec((any::<[u8; 16]>(), any::<[u8; 32]>()), 1..200),
        pick in any::<prop::sample::Index>(),
        new_state in any::<[u8; 32]>(),
    ) {
        let mut model: BTreeMap<ChannelId, State> =
            entries.iter().map(|(c, s)| (ChannelId::from_bytes(*c), State::from_bytes(*s))).collect();
        let mut tree = MerkleSg::from_states(model.iter().map(|(c, s)| (*c, s))).unwrap();
        let c = *pick.get(&model.keys().copied().collect::<Vec<_>>());
        tree.update(&c, &State::from_bytes(new_state)).unwrap();
        model.insert(c, State::from_bytes(new_state));
        prop_assert!(tree.is_clean());
        prop_assert_eq!(tree.root_if_clean().map(|r| *r.expose()), naive_root(&model));
    }
}

/// `rs_merkle` agrees with the naive pymfp algorithm for every leaf count 0..=70, including
/// the non-powers of two (odd last node promoted unchanged).
#[test]
fn rs_merkle_promotes_odd_nodes_like_pymfp() {
    let mut model = BTreeMap::new();
    for n in 0u8..=70 {
        assert_eq!(rs_merkle_root(&model), naive_root(&model), "n = {n}");
        model.insert(channel_of(n), State::from_bytes([n; 32]));
    }
}
