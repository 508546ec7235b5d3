//! The runtime-wide global state `Sg` as pymfp builds it: a Merkle root over the channel
//! states sorted by channel id, leaves `SHA256(Sl)`, parents `SHA256(left ‖ right)`, an odd
//! last node promoted unchanged (docs/protocol.md; the `merkle_sg` vectors pin the shape).
//!
//! # Tree shape
//!
//! Level 0 holds the leaf hashes `SHA256(Sl_i)` in channel-id order. Level `l + 1` pairs the
//! nodes `(2j, 2j + 1)` of level `l` into `SHA256(left ‖ right)`; when level `l` has an odd
//! length its last node is copied unchanged into level `l + 1`. The last level has exactly one
//! node, the root `Sg`. One leaf: the root is that leaf's hash. No leaves: no root.
//!
//! Because the pairing is positional, inserting or removing a channel shifts every leaf to its
//! right and changes every node above them: that part of the tree has to be rehashed whatever
//! the data structure. What *can* be made cheap is everything else, and that is what this
//! implementation does.
//!
//! # Design
//!
//! * **Flat arrays.** Each level is one `Vec<[u8; 32]>`; the committed channel ids are one
//!   sorted `Vec<ChannelId>` parallel to level 0 and are looked up by binary search. There is
//!   no per-node allocation: about `16 + 32 + 32` bytes per leaf (id, leaf hash, and the
//!   upper levels, which together hold about as many nodes as level 0), plus at most ~12.5 %
//!   spare capacity from amortised growth.
//! * **Eager leaf updates.** [`MerkleSg::update`] of a committed leaf rewrites the leaf and its
//!   path to the root: `O(log N)` hashes, so [`MerkleSg::root`] afterwards is `O(1)`.
//! * **Deferred structural changes.** [`MerkleSg::insert`] puts the channel in a small sorted
//!   side buffer (a `BTreeMap`) and [`MerkleSg::remove`] only sets a bit in a removal bitmap.
//!   Both lower a *dirty watermark*: the smallest committed leaf index whose position or value
//!   may change. At level `l` the watermark is `dirty >> l`; every node left of it is still
//!   correct, because its subtree lies entirely left of the watermark at level 0.
//! * **One merge per read.** [`MerkleSg::root`] and [`MerkleSg::levels`] (which take
//!   `&mut self`) first [`commit`](MerkleSg::commit) the pending changes: removed leaves right
//!   of the watermark are compacted in place, the buffered inserts are merged in from the back
//!   (no temporary copy of the arrays), and each level is recomputed only from its watermark
//!   to its end.
//! * While changes are pending, [`MerkleSg::update`] of a committed leaf still writes the leaf
//!   and refreshes the part of its path that lies left of the watermark; an update of a
//!   buffered insert rewrites the buffered hash.
//!
//! # Complexity (`N` leaves, `p` pending inserts, `r` pending removals, `w` the watermark)
//!
//! | operation | cost |
//! |---|---|
//! | [`contains`](MerkleSg::contains), [`len`](MerkleSg::len) | `O(log N + log p)`, `O(1)` |
//! | [`update`](MerkleSg::update) | `O(log N)` hashes |
//! | [`insert`](MerkleSg::insert), [`remove`](MerkleSg::remove) | `O(log N + log p)`, no hashing besides the leaf |
//! | [`root`](MerkleSg::root) when nothing is pending | `O(1)` |
//! | [`root`](MerkleSg::root) after structural changes | `O((N − w) + p log N)` moves and about `2 (N + p − r − w)` hashes |
//! | [`from_states`](MerkleSg::from_states) | `O(N log N)` sort and about `2N` hashes |
//!
//! So `N` inserts in a row followed by one `root()` cost one sort-like merge and one full
//! hashing pass, not `N` rebuilds; appending channels whose ids sort last costs `O(log N)`
//! per `root()`.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use crate::crypto::sha256;
use crate::{ChannelId, MerkleError, State};

/// One node of the tree.
type Hash = [u8; 32];

/// Bits per word of the removal bitmap.
const WORD_BITS: usize = u64::BITS as usize;

/// The hash of a leaf: `SHA256(Sl)`.
fn leaf_hash(state: &State) -> Hash {
    sha256(&[state.expose()])
}

/// The parent of two nodes: `SHA256(left ‖ right)`.
fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[left, right])
}

/// The parent of a chunk of one or two nodes; a lone node is promoted unchanged.
fn parent_of(pair: &[Hash]) -> Hash {
    match pair {
        [left, right] => node_hash(left, right),
        [single] => *single,
        // `chunks(2)` never yields an empty or longer chunk.
        _ => [0; 32],
    }
}

/// `dirty >> shift`, zero once the shift exceeds the word size.
fn shr(dirty: usize, shift: usize) -> usize {
    u32::try_from(shift).ok().and_then(|s| dirty.checked_shr(s)).unwrap_or(0)
}

/// Whether bit `i` of the removal bitmap is set.
fn bit(bits: &[u64], i: usize) -> bool {
    bits.get(i / WORD_BITS).is_some_and(|w| (w >> (i % WORD_BITS)) & 1 == 1)
}

/// Makes room for `additional` more elements, growing by at least 1/8 of the length so that
/// repeated small appends stay amortised `O(1)` while spare capacity stays below ~12.5 %.
fn reserve<T>(v: &mut Vec<T>, additional: usize) {
    if v.capacity() - v.len() < additional {
        v.reserve_exact(additional.max(v.len() / 8));
    }
}

/// Incremental Merkle tree over channel states: the global state `Sg`.
///
/// See the [module documentation](self) for the tree shape, the design and the cost of each
/// operation. Reads that may have to apply deferred changes ([`root`](Self::root),
/// [`levels`](Self::levels), [`commit`](Self::commit)) take `&mut self`.
#[derive(Default, Clone)]
pub struct MerkleSg {
    /// Committed channel ids, sorted, parallel to `levels[0]`. May include channels marked in
    /// `removed` until the next commit.
    ids: Vec<ChannelId>,
    /// `levels[0]` are the committed leaf hashes, the last level is `[root]`. Nodes at or right
    /// of the level's watermark are stale while `dirty` is set.
    levels: Vec<Vec<Hash>>,
    /// Channels inserted since the last commit, with their leaf hashes. Never holds an id that
    /// is also in `ids`.
    pending: BTreeMap<ChannelId, Hash>,
    /// Bitmap over indices of `ids`: removed since the last commit. Empty when `removed_count`
    /// is zero.
    removed: Vec<u64>,
    /// Number of bits set in `removed`.
    removed_count: usize,
    /// Smallest index of `ids` whose position or leaf may differ in the committed tree, or
    /// `None` when the levels are up to date.
    dirty: Option<usize>,
}

impl MerkleSg {
    /// An empty tree.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a tree from `(channel, state)` pairs in any order, hashing it once: `O(N log N)`
    /// for the sort plus about `2N` hashes. Faster than `N` calls to [`insert`](Self::insert)
    /// when the whole set is known up front.
    ///
    /// # Errors
    ///
    /// [`MerkleError::Duplicate`] if a channel appears twice.
    pub fn from_states<I, S>(states: I) -> Result<Self, MerkleError>
    where
        I: IntoIterator<Item = (ChannelId, S)>,
        S: Borrow<State>,
    {
        let mut entries: Vec<(ChannelId, Hash)> =
            states.into_iter().map(|(channel, state)| (channel, leaf_hash(state.borrow()))).collect();
        entries.sort_unstable_by_key(|e| e.0);
        if entries.windows(2).any(|w| matches!(w, [a, b] if a.0 == b.0)) {
            return Err(MerkleError::Duplicate);
        }
        let (ids, leaves): (Vec<ChannelId>, Vec<Hash>) = entries.into_iter().unzip();
        let mut tree = Self { ids, levels: vec![leaves], ..Self::default() };
        tree.rehash_from(0);
        Ok(tree)
    }

    /// Number of leaves, counting pending inserts and not counting pending removals.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ids.len() - self.removed_count + self.pending.len()
    }

    /// Whether the tree has no leaves.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `channel` is a leaf (pending inserts included, pending removals excluded).
    #[must_use]
    pub fn contains(&self, channel: &ChannelId) -> bool {
        match self.ids.binary_search(channel) {
            Ok(i) => !bit(&self.removed, i),
            Err(_) => self.pending.contains_key(channel),
        }
    }

    /// Adds a channel. The tree is rehashed lazily, by the next [`root`](Self::root),
    /// [`levels`](Self::levels) or [`commit`](Self::commit).
    ///
    /// # Errors
    ///
    /// [`MerkleError::Duplicate`] if the channel is already a leaf (including a pending insert).
    pub fn insert(&mut self, channel: ChannelId, state: &State) -> Result<(), MerkleError> {
        match self.ids.binary_search(&channel) {
            Ok(i) if bit(&self.removed, i) => {
                // Removed and re-added before a commit: revive the slot with the new hash. The
                // removal already put the watermark at or left of `i`.
                self.set_removed(i, false);
                if let Some(leaf) = self.levels.first_mut().and_then(|l| l.get_mut(i)) {
                    *leaf = leaf_hash(state);
                }
                self.mark_dirty(i);
                Ok(())
            }
            Ok(_) => Err(MerkleError::Duplicate),
            Err(pos) => match self.pending.entry(channel) {
                Entry::Occupied(_) => Err(MerkleError::Duplicate),
                Entry::Vacant(slot) => {
                    slot.insert(leaf_hash(state));
                    self.mark_dirty(pos);
                    Ok(())
                }
            },
        }
    }

    /// Replaces a channel's state. For a committed leaf the path to the root is recomputed
    /// at once (`O(log N)` hashes, only the part left of the watermark while structural changes
    /// are pending); for a pending insert the buffered leaf is replaced.
    ///
    /// # Errors
    ///
    /// [`MerkleError::NotFound`] if the channel is not a leaf (or has a pending removal).
    pub fn update(&mut self, channel: &ChannelId, state: &State) -> Result<(), MerkleError> {
        let mut hint = usize::MAX;
        self.update_hinted(channel, state, &mut hint)
    }

    /// [`update`](Self::update) with a position hint: if `*hint` is the channel's current
    /// leaf index the binary search is skipped (at a million leaves it costs about twenty
    /// cache misses). On return `*hint` holds the channel's index (or `usize::MAX` while its
    /// insertion is pending), for the next call. A stale hint — leaves move when channels
    /// are added or removed — is detected and corrected; results never depend on it.
    ///
    /// # Errors
    ///
    /// [`MerkleError::NotFound`] if the channel is not a leaf.
    pub fn update_hinted(&mut self, channel: &ChannelId, state: &State, hint: &mut usize) -> Result<(), MerkleError> {
        let found = if self.ids.get(*hint) == Some(channel) { Ok(*hint) } else { self.ids.binary_search(channel) };
        *hint = usize::MAX;
        match found {
            Ok(i) if !bit(&self.removed, i) => {
                let leaf = self.levels.first_mut().and_then(|l| l.get_mut(i)).ok_or(MerkleError::NotFound)?;
                *leaf = leaf_hash(state);
                self.propagate(i);
                *hint = i;
                Ok(())
            }
            Ok(_) => Err(MerkleError::NotFound),
            Err(_) => {
                let leaf = self.pending.get_mut(channel).ok_or(MerkleError::NotFound)?;
                *leaf = leaf_hash(state);
                Ok(())
            }
        }
    }

    /// Removes a channel. The tree is rehashed lazily, like after [`insert`](Self::insert).
    ///
    /// # Errors
    ///
    /// [`MerkleError::NotFound`] if the channel is not a leaf (or already has a pending
    /// removal).
    pub fn remove(&mut self, channel: &ChannelId) -> Result<(), MerkleError> {
        match self.ids.binary_search(channel) {
            Ok(i) if !bit(&self.removed, i) => {
                self.set_removed(i, true);
                self.mark_dirty(i);
                Ok(())
            }
            Ok(_) => Err(MerkleError::NotFound),
            Err(_) => self.pending.remove(channel).map(|_| ()).ok_or(MerkleError::NotFound),
        }
    }

    /// Whether no structural change is pending, i.e. [`root`](Self::root) costs `O(1)`.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.dirty.is_none()
    }

    /// The root without applying pending changes: `Some` only when the tree is non-empty and
    /// [clean](Self::is_clean). Usable through a shared reference.
    #[must_use]
    pub fn root_if_clean(&self) -> Option<State> {
        if self.is_clean() { self.committed_root() } else { None }
    }

    /// Applies pending inserts and removals and rehashes what they changed. Called by
    /// [`root`](Self::root) and [`levels`](Self::levels); a no-op when the tree is clean.
    pub fn commit(&mut self) {
        let Some(from) = self.dirty.take() else {
            return;
        };
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        if self.removed_count > 0 {
            self.compact_removed(from);
        }
        self.removed = Vec::new();
        self.removed_count = 0;
        if !self.pending.is_empty() {
            self.merge_pending(from);
        }
        self.rehash_from(from);
    }

    /// All levels, leaves first, the last level being `[root]`. Empty for an empty tree.
    #[must_use]
    pub fn levels(&mut self) -> Vec<Vec<[u8; 32]>> {
        self.commit();
        if self.is_empty() { Vec::new() } else { self.levels.clone() }
    }

    /// The root `Sg`, or `None` when the tree is empty.
    pub fn root(&mut self) -> Option<State> {
        self.commit();
        self.committed_root()
    }

    /// Approximate heap memory held by the tree, in bytes: the capacity of the flat arrays,
    /// plus an estimate for pending inserts and the removal bitmap.
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        let ids = self.ids.capacity() * size_of::<ChannelId>();
        let levels: usize = self.levels.iter().map(|l| l.capacity() * size_of::<Hash>()).sum::<usize>()
            + self.levels.capacity() * size_of::<Vec<Hash>>();
        // B-tree nodes hold up to 11 entries; count each entry at about 1.5x its size.
        let pending = self.pending.len() * (size_of::<ChannelId>() + size_of::<Hash>()) * 3 / 2;
        ids + levels + pending + self.removed.capacity() * size_of::<u64>()
    }

    /// The top of the committed levels, as a state.
    fn committed_root(&self) -> Option<State> {
        self.levels.last().and_then(|l| l.first()).map(|r| State::from_bytes(*r))
    }

    /// Lowers the watermark to `index`.
    fn mark_dirty(&mut self, index: usize) {
        self.dirty = Some(self.dirty.map_or(index, |d| d.min(index)));
    }

    /// Sets or clears the pending-removal bit of committed leaf `i`.
    fn set_removed(&mut self, i: usize, removed: bool) {
        if self.removed.is_empty() {
            self.removed = vec![0; self.ids.len().div_ceil(WORD_BITS)];
        }
        if let Some(word) = self.removed.get_mut(i / WORD_BITS) {
            let mask = 1u64 << (i % WORD_BITS);
            let was = *word & mask != 0;
            if removed {
                *word |= mask;
            } else {
                *word &= !mask;
            }
            match (was, removed) {
                (false, true) => self.removed_count += 1,
                (true, false) => self.removed_count -= 1,
                _ => {}
            }
        }
    }

    /// Recomputes the ancestors of leaf `leaf` that lie left of the watermark (all of them when
    /// the tree is clean). Nodes at or right of the watermark are recomputed by the next commit.
    fn propagate(&mut self, leaf: usize) {
        let mut index = leaf;
        let mut level = 0;
        while level + 1 < self.levels.len() {
            let parent = index / 2;
            if let Some(d) = self.dirty
                && parent >= shr(d, level + 1)
            {
                break;
            }
            let (lower, upper) = self.levels.split_at_mut(level + 1);
            let (Some(children), Some(parents)) = (lower.last(), upper.first_mut()) else {
                break;
            };
            let start = 2 * parent;
            let (Some(pair), Some(slot)) =
                (children.get(start..children.len().min(start + 2)), parents.get_mut(parent))
            else {
                break;
            };
            *slot = parent_of(pair);
            index = parent;
            level += 1;
        }
    }

    /// Drops the leaves marked removed at or right of `from`, keeping order. `O(len - from)`.
    fn compact_removed(&mut self, from: usize) {
        let Some(leaves) = self.levels.first_mut() else {
            return;
        };
        let mut write = from;
        for read in from..self.ids.len() {
            if bit(&self.removed, read) {
                continue;
            }
            if write != read {
                self.ids.swap(write, read);
                leaves.swap(write, read);
            }
            write += 1;
        }
        self.ids.truncate(write);
        leaves.truncate(write);
    }

    /// Merges the pending inserts into the committed arrays, from the back, moving only
    /// entries at or right of `from` (every pending id sorts after the ids left of `from`).
    fn merge_pending(&mut self, from: usize) {
        let pending = std::mem::take(&mut self.pending);
        let Some(leaves) = self.levels.first_mut() else {
            return;
        };
        let old_len = self.ids.len();
        let extra = pending.len();
        reserve(&mut self.ids, extra);
        reserve(leaves, extra);
        self.ids.resize(old_len + extra, ChannelId::from_bytes([0; ChannelId::LEN]));
        leaves.resize(old_len + extra, [0; 32]);
        // Invariant: committed entries still to place are `[from, end)`; the free slots are
        // `[end, end + gap)`; `gap` is the number of pending entries still to place.
        let mut end = old_len;
        let mut gap = extra;
        for (channel, hash) in pending.into_iter().rev() {
            let start = from + self.ids.get(from..end).map_or(0, |s| s.partition_point(|c| *c < channel));
            if start < end {
                self.ids.copy_within(start..end, start + gap);
                leaves.copy_within(start..end, start + gap);
            }
            gap = gap.saturating_sub(1);
            if let Some(slot) = self.ids.get_mut(start + gap) {
                *slot = channel;
            }
            if let Some(slot) = leaves.get_mut(start + gap) {
                *slot = hash;
            }
            end = start;
        }
    }

    /// Recomputes every level from its watermark (`from >> level`) to its end, resizing the
    /// levels to the current number of leaves.
    fn rehash_from(&mut self, from: usize) {
        let mut dirty = from;
        let mut level = 0;
        while let Some(len) = self.levels.get(level).map(Vec::len) {
            if len <= 1 {
                self.levels.truncate(level + 1);
                break;
            }
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
            }
            let (lower, upper) = self.levels.split_at_mut(level + 1);
            let (Some(children), Some(parents)) = (lower.last(), upper.first_mut()) else {
                break;
            };
            let start = (dirty / 2).min(parents.len());
            parents.truncate(start);
            reserve(parents, len.div_ceil(2).saturating_sub(start));
            if let Some(rest) = children.get(2 * start..) {
                parents.extend(rest.chunks(2).map(parent_of));
            }
            dirty = start;
            level += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference algorithm: sort, hash the leaves, pair level by level.
    fn naive_levels(model: &BTreeMap<ChannelId, State>) -> Vec<Vec<Hash>> {
        let mut levels = Vec::new();
        let mut cur: Vec<Hash> = model.values().map(leaf_hash).collect();
        if cur.is_empty() {
            return levels;
        }
        while cur.len() > 1 {
            let next = cur.chunks(2).map(parent_of).collect();
            levels.push(std::mem::replace(&mut cur, next));
        }
        levels.push(cur);
        levels
    }

    fn naive_root(model: &BTreeMap<ChannelId, State>) -> Option<Hash> {
        naive_levels(model).last().and_then(|l| l.first()).copied()
    }

    fn h(s: &str) -> [u8; 32] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    fn cid(s: &str) -> ChannelId {
        s.parse().unwrap()
    }

    fn st(s: &str) -> State {
        State::from_bytes(h(s))
    }

    struct Vector {
        ids: &'static [&'static str],
        states: &'static [&'static str],
        levels: &'static [&'static [&'static str]],
        update: (&'static str, &'static str, &'static str),
    }

    /// The `merkle_sg` entries of `vectors.json` (n = 1, 2, 3, 5).
    const VECTORS: &[Vector] = &[
        Vector {
            ids: &["978c5be7a5817a9dba30c71c00a7275a"],
            states: &["093ca57c95a145fa14141f88e99212e85e07e57f20504b11f2821cde39d5a507"],
            levels: &[&["08eb4851195fc23cf0c649c52cb6696b3c4ff3b01fe80aae76148d5329aaf245"]],
            update: (
                "978c5be7a5817a9dba30c71c00a7275a",
                "cbcaeddcfd78987ac474d557f10fca8e4bf4ed4b14ab38484356d5198bab5cf0",
                "2dc979790284bc093ef8cdc561d5eeb80c6a7a8a4c52090396e8298e668702d8",
            ),
        },
        Vector {
            ids: &["0a7017cebe6fde1d6214d9e63639ab2b", "90dd7dc1f77ea312cd7889476b145ea7"],
            states: &[
                "4a8258a4f44baf079119feb88eba405298cb73198e3bf766ad3606f81416a331",
                "785a5f849de481d6346515934f33005e1df24a9fc80314b8842b531b2f5de6fa",
            ],
            levels: &[
                &[
                    "77cd3c4e3ca08fcb2d8acb0b030a4356f3d41567ade17e4e542ed7f35a7a06ed",
                    "2f60894a9e8b0f90db122fa37fd332034cd5a3431010dc4d05950ef423b431ac",
                ],
                &["b29ee8c5a1ee2e51dee7e853a82ac02564581871567b60bb0ef1d01fc5384e19"],
            ],
            update: (
                "0a7017cebe6fde1d6214d9e63639ab2b",
                "48235cf70130c0dc55e439f382e391ec3282547469929ff405dc5ab4d7622587",
                "62b33c874917e9140ac7111578be8be745679f934557ba1e2c5941b6d010e17c",
            ),
        },
        Vector {
            ids: &[
                "f1e452ed1fba1dd8d9af1f2a2e910385",
                "af9ab9b741069ff1511763403b448dda",
                "18abebb94569902aa7450b4a54035d27",
            ],
            states: &[
                "203252ff55313a0a2417f4d42f10298bf94cff5bbe14bebb992b5ea02d8d0002",
                "3c70b1a1cd76ce5a231e9628e40c197362e4f8bd654ee25a51faf42f867cda5d",
                "56ab02da4c3f1206cc5f46f364cf89bcc58f0d9f037454bbc2d12f32542d8199",
            ],
            levels: &[
                &[
                    "21892fb040e26c699b7249294512096fddb48f8a3c8a237615e17222d505a396",
                    "e73682e340361a19eec7f7a8bdd98c5b809c877bdc45469ac26a4ee250ba5e5c",
                    "06f2ddfdbea01174bdef99c2ab452fdfc5d95d3e1d4473f835904146b76e5b22",
                ],
                &[
                    "ece729be0dbb08c48c202f16f5fbb90086c8c6be0353806ab60636a7c201deb4",
                    "06f2ddfdbea01174bdef99c2ab452fdfc5d95d3e1d4473f835904146b76e5b22",
                ],
                &["4bb985590fbbc04c290c24e6149f080a31f2e3efcbeca887fa01e30c6c735fc2"],
            ],
            update: (
                "f1e452ed1fba1dd8d9af1f2a2e910385",
                "ef711d2aa854e176dfe44f98f316dbccdde06852e25153c985e5a3062210cdfc",
                "fa2fad3888e760572d766cd472b4b570a769dcdabafb522b812d7d6dfb20e60a",
            ),
        },
        Vector {
            ids: &[
                "313df6e9396e3c123c710eea1fbd00b9",
                "3f1504c0848e4a86a1034e374603e18c",
                "aa04e685bca2b4ea8aee88267270b84e",
                "cdb82d81d9ce639e597c69231ea4aa74",
                "9b784209f07fda015de83686d5386ff9",
            ],
            states: &[
                "88daf5c4cb7b1d4cbfebc5c0a4e4361163810b9a012eece3c8808a4ab9baca62",
                "a7fba111bbeb6b7b1f1ee2bee0b901a6b2256f27fbb231a3739f8b501d3b3f3d",
                "acbd4284a7fb887b8080fec03346342accfc46c72eda6f8b947e7ac92028f57d",
                "9a02b9e473bf8013559405e5d6c3c3a0f18a3273572d9458806dd0aee52f8253",
                "93bcb67ddf59f2f247a1bd193145a07b2e3bcc34f35c67af6d06123f7b38a5d5",
            ],
            levels: &[
                &[
                    "a1c0f482a972f486f6a4ffd48a706de1f7c1ca02d6f99880f51284be7b8dcd27",
                    "1500216a00790c2807f30cf662edcc5cf802a3b7eeb68d2e71544cc0d4652e07",
                    "4ade88e7d175088f1fb2e585a190b9e9f341b08f135c451f06890fa8e207c459",
                    "bbc293b284bb84aaa4c01f745d12af0512e438ef58af8874e6413c7c691b989b",
                    "198ad7934cbb4868c94f7964dd3732b13ff98b6de52fb17c027352a62a091cd6",
                ],
                &[
                    "ef3d7abbb660d24994cd79c723215a25e272634030bd49516c3210281d22ba1b",
                    "0ca5633bac63e0ca3faaaca2e2137e89f44e801198ba69e559196a104a9bfd5a",
                    "198ad7934cbb4868c94f7964dd3732b13ff98b6de52fb17c027352a62a091cd6",
                ],
                &[
                    "40bc1a589feedf298a1f325571778e3107450b748c9d114d8bdd9e5d35a314ee",
                    "198ad7934cbb4868c94f7964dd3732b13ff98b6de52fb17c027352a62a091cd6",
                ],
                &["8a7065329d6d177c025d669d906a33c2cfccc42040f2b7646058ac0a8eacf3c6"],
            ],
            update: (
                "313df6e9396e3c123c710eea1fbd00b9",
                "a21d3bc2fce34f8a57cd7753fab5e66c924dfe3d4bf60cf223609c728655bfcd",
                "561f4122cd11389af45125aadb51bf91979124ff68c2c1e48679d9e94fd8ee70",
            ),
        },
    ];

    fn vector_levels(v: &Vector) -> Vec<Vec<Hash>> {
        v.levels.iter().map(|l| l.iter().map(|x| h(x)).collect()).collect()
    }

    #[test]
    fn pymfp_vectors_insert_one_by_one() {
        for v in VECTORS {
            let mut tree = MerkleSg::new();
            for (c, s) in v.ids.iter().zip(v.states) {
                tree.insert(cid(c), &st(s)).unwrap();
            }
            assert_eq!(tree.len(), v.ids.len());
            assert_eq!(tree.levels(), vector_levels(v), "n={}", v.ids.len());
            let want_root = h(v.levels.last().unwrap()[0]);
            assert_eq!(tree.root().unwrap().expose(), &want_root);
            assert_eq!(tree.root_if_clean().unwrap().expose(), &want_root);
            let (c, s, root) = v.update;
            tree.update(&cid(c), &st(s)).unwrap();
            assert!(tree.is_clean(), "an update of a committed leaf is applied eagerly");
            assert_eq!(tree.root_if_clean().unwrap().expose(), &h(root));
            assert_eq!(tree.root().unwrap().expose(), &h(root));
        }
    }

    #[test]
    fn pymfp_vectors_any_build_order() {
        for v in VECTORS {
            let pairs: Vec<(ChannelId, State)> = v.ids.iter().zip(v.states).map(|(c, s)| (cid(c), st(s))).collect();
            // Bulk build.
            let mut bulk = MerkleSg::from_states(pairs.iter().map(|(c, s)| (*c, s))).unwrap();
            assert_eq!(bulk.levels(), vector_levels(v));
            // Reverse order with a root after every insert (exercises many watermarks).
            let mut step = MerkleSg::new();
            for (c, s) in pairs.iter().rev() {
                step.insert(*c, s).unwrap();
                assert!(step.root().is_some());
            }
            assert_eq!(step.levels(), vector_levels(v));
            // The update applied while an insert is still pending.
            let (c, s, root) = v.update;
            let mut late = MerkleSg::from_states(pairs.iter().skip(1).map(|(c, s)| (*c, s))).unwrap();
            let (c0, s0) = &pairs[0];
            late.insert(*c0, s0).unwrap();
            late.update(&cid(c), &st(s)).unwrap();
            assert_eq!(late.root().unwrap().expose(), &h(root));
        }
    }

    #[test]
    fn hand_built_n5_shape() {
        let v = &VECTORS[3];
        let mut pairs: Vec<(ChannelId, State)> = v.ids.iter().zip(v.states).map(|(c, s)| (cid(c), st(s))).collect();
        pairs.sort_by_key(|p| p.0);
        let l: Vec<Hash> = pairs.iter().map(|(_, s)| sha256(&[s.expose()])).collect();
        let h01 = sha256(&[&l[0], &l[1]]);
        let h23 = sha256(&[&l[2], &l[3]]);
        let h0123 = sha256(&[&h01, &h23]);
        let root = sha256(&[&h0123, &l[4]]);
        let mut tree = MerkleSg::from_states(pairs.iter().map(|(c, s)| (*c, s))).unwrap();
        assert_eq!(tree.levels(), vec![l.clone(), vec![h01, h23, l[4]], vec![h0123, l[4]], vec![root]]);
        assert_eq!(tree.root().unwrap().expose(), &root);
    }

    #[test]
    fn small_shapes() {
        let s = |b: u8| State::from_bytes([b; 32]);
        let c = |b: u8| ChannelId::from_bytes([b; 16]);
        let lh = |b: u8| sha256(&[&[b; 32]]);
        let mut tree = MerkleSg::new();
        assert!(tree.is_empty());
        assert!(tree.root().is_none());
        assert!(tree.levels().is_empty());
        assert!(tree.root_if_clean().is_none());

        tree.insert(c(2), &s(2)).unwrap();
        assert_eq!(tree.root().unwrap().expose(), &lh(2), "n = 1: the leaf hash");
        tree.insert(c(1), &s(1)).unwrap();
        assert_eq!(tree.root().unwrap().expose(), &sha256(&[&lh(1), &lh(2)]), "sorted by channel id");
        tree.insert(c(3), &s(3)).unwrap();
        let h12 = sha256(&[&lh(1), &lh(2)]);
        assert_eq!(tree.levels(), vec![vec![lh(1), lh(2), lh(3)], vec![h12, lh(3)], vec![sha256(&[&h12, &lh(3)])]]);
        tree.remove(&c(1)).unwrap();
        tree.remove(&c(2)).unwrap();
        assert_eq!(tree.levels(), vec![vec![lh(3)]]);
        tree.remove(&c(3)).unwrap();
        assert!(tree.root().is_none());
        assert!(tree.levels().is_empty());
        assert!(tree.is_empty());
        tree.insert(c(9), &s(9)).unwrap();
        assert_eq!(tree.root().unwrap().expose(), &lh(9));
    }

    #[test]
    fn errors_and_pending_states() {
        let s = |b: u8| State::from_bytes([b; 32]);
        let c = |b: u8| ChannelId::from_bytes([b; 16]);
        let mut tree = MerkleSg::new();
        tree.insert(c(1), &s(1)).unwrap();
        // Duplicate while pending, and once committed.
        assert_eq!(tree.insert(c(1), &s(7)), Err(MerkleError::Duplicate));
        assert!(tree.root().is_some());
        assert_eq!(tree.insert(c(1), &s(7)), Err(MerkleError::Duplicate));
        // Unknown channel.
        assert_eq!(tree.update(&c(2), &s(2)), Err(MerkleError::NotFound));
        assert_eq!(tree.remove(&c(2)), Err(MerkleError::NotFound));
        // Update of a pending insert.
        tree.insert(c(2), &s(2)).unwrap();
        assert!(!tree.is_clean());
        assert!(tree.root_if_clean().is_none());
        tree.update(&c(2), &s(22)).unwrap();
        assert!(tree.contains(&c(2)));
        // Remove of a pending insert.
        tree.insert(c(3), &s(3)).unwrap();
        tree.remove(&c(3)).unwrap();
        assert!(!tree.contains(&c(3)));
        assert_eq!(tree.remove(&c(3)), Err(MerkleError::NotFound));
        assert_eq!(tree.len(), 2);
        // Pending removal of a committed leaf: invisible to update/remove/contains.
        tree.commit();
        tree.remove(&c(1)).unwrap();
        assert!(!tree.contains(&c(1)));
        assert_eq!(tree.len(), 1);
        assert_eq!(tree.update(&c(1), &s(1)), Err(MerkleError::NotFound));
        assert_eq!(tree.remove(&c(1)), Err(MerkleError::NotFound));
        // Re-insert before the commit revives it with the new state.
        tree.insert(c(1), &s(11)).unwrap();
        assert_eq!(tree.insert(c(1), &s(11)), Err(MerkleError::Duplicate));
        assert_eq!(tree.len(), 2);
        let mut model = BTreeMap::new();
        model.insert(c(1), s(11));
        model.insert(c(2), s(22));
        assert_eq!(tree.root().unwrap().expose(), &naive_root(&model).unwrap());
        assert_eq!(tree.levels(), naive_levels(&model));
    }

    use crate::testing::SplitMix64 as Rng;

    fn random_state(rng: &mut Rng) -> State {
        let mut b = [0u8; 32];
        for chunk in b.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        State::from_bytes(b)
    }

    /// Channel ids from a small key space so that operations hit existing leaves often.
    fn random_channel(rng: &mut Rng, space: u64) -> ChannelId {
        let k = rng.below(space);
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&k.wrapping_mul(0x2545_f491_4f6c_dd1d).to_be_bytes());
        ChannelId::from_bytes(b)
    }

    #[test]
    fn incremental_matches_naive_after_random_ops() {
        let mut rng = Rng(0x5eed);
        for round in 0..60 {
            let space = [4, 16, 64, 300][round % 4];
            let ops = 50 + rng.below(600);
            let root_every = 1 + rng.below(40);
            let mut tree = MerkleSg::new();
            let mut model: BTreeMap<ChannelId, State> = BTreeMap::new();
            for op in 0..ops {
                let channel = random_channel(&mut rng, space);
                let state = random_state(&mut rng);
                match rng.below(10) {
                    0..=4 => {
                        let want = if model.contains_key(&channel) { Err(MerkleError::Duplicate) } else { Ok(()) };
                        assert_eq!(tree.insert(channel, &state), want);
                        model.entry(channel).or_insert(state);
                    }
                    5..=7 => {
                        let want = if model.contains_key(&channel) { Ok(()) } else { Err(MerkleError::NotFound) };
                        assert_eq!(tree.update(&channel, &state), want);
                        if let Some(s) = model.get_mut(&channel) {
                            *s = state;
                        }
                    }
                    _ => {
                        let want = model.remove(&channel).map(|_| ()).ok_or(MerkleError::NotFound);
                        assert_eq!(tree.remove(&channel), want);
                    }
                }
                assert_eq!(tree.len(), model.len());
                assert_eq!(tree.contains(&channel), model.contains_key(&channel));
                if op % root_every == 0 {
                    assert_eq!(tree.root().map(|r| *r.expose()), naive_root(&model), "round {round} op {op}");
                    if !model.is_empty() {
                        assert_eq!(tree.root_if_clean().map(|r| *r.expose()), naive_root(&model));
                    }
                }
            }
            assert_eq!(tree.levels(), naive_levels(&model), "round {round}");
            let mut bulk = MerkleSg::from_states(model.iter().map(|(c, s)| (*c, s))).unwrap();
            assert_eq!(bulk.levels(), naive_levels(&model));
        }
    }

    #[test]
    fn from_states_rejects_duplicates() {
        let s = State::from_bytes([1; 32]);
        let c = ChannelId::from_bytes([1; 16]);
        assert_eq!(MerkleSg::from_states([(c, &s), (c, &s)]).err(), Some(MerkleError::Duplicate));
        let mut empty = MerkleSg::from_states(Vec::<(ChannelId, State)>::new()).unwrap();
        assert!(empty.root().is_none());
        assert!(empty.levels().is_empty());
    }

    #[test]
    fn memory_per_leaf_is_small() {
        let mut rng = Rng(42);
        let n = 20_000;
        let mut tree = MerkleSg::new();
        for _ in 0..n {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
            let _ = tree.insert(ChannelId::from_bytes(b), &random_state(&mut rng));
        }
        assert!(tree.root().is_some());
        let per_leaf = tree.memory_bytes() / tree.len();
        assert!(per_leaf < 100, "{per_leaf} bytes per leaf");
    }

    #[test]
    fn hinted_updates_match_and_survive_stale_hints() {
        let ids: Vec<ChannelId> = (0u8..40).map(|i| ChannelId::from_bytes([i.wrapping_mul(37); 16])).collect();
        let mut a = MerkleSg::new();
        let mut b = MerkleSg::new();
        for id in &ids {
            a.insert(*id, &State::from_bytes([1; 32])).unwrap();
            b.insert(*id, &State::from_bytes([1; 32])).unwrap();
        }
        let mut hints = vec![usize::MAX; ids.len()];
        for round in 0u8..3 {
            for (k, id) in ids.iter().enumerate() {
                let st = State::from_bytes([round.wrapping_add(k as u8); 32]);
                a.update(id, &st).unwrap();
                b.update_hinted(id, &st, &mut hints[k]).unwrap();
                assert_eq!(a.root(), b.root());
            }
            // A structural change moves leaves: every hint goes stale.
            let extra = ChannelId::from_bytes([round; 16]);
            if !a.contains(&extra) {
                a.insert(extra, &State::zero()).unwrap();
                b.insert(extra, &State::zero()).unwrap();
            }
            assert_eq!(a.root(), b.root());
        }
        let mut wrong = 0usize;
        assert_eq!(
            b.update_hinted(&ChannelId::from_bytes([0xee; 16]), &State::zero(), &mut wrong),
            Err(MerkleError::NotFound)
        );
    }
}
