//! The runtime-wide global state `Sg` as pymfp builds it: a Merkle root over the channel
//! states sorted by channel id, leaves `SHA256(Sl)`, parents `SHA256(left ‖ right)`, an odd
//! last node promoted unchanged.

use std::collections::BTreeMap;

use crate::crypto::sha256;
use crate::{ChannelId, MerkleError, State};

/// Incremental Merkle tree over channel states (reference implementation: rebuilds).
#[derive(Default, Clone)]
pub struct MerkleSg {
    leaves: BTreeMap<ChannelId, [u8; 32]>,
}

impl MerkleSg {
    /// An empty tree.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves.
    #[must_use]
    pub fn len(&self) -> usize {
        self.leaves.len()
    }

    /// Whether the tree has no leaves.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    /// Whether `channel` is a leaf.
    #[must_use]
    pub fn contains(&self, channel: &ChannelId) -> bool {
        self.leaves.contains_key(channel)
    }

    /// Adds a channel.
    pub fn insert(&mut self, channel: ChannelId, state: &State) -> Result<(), MerkleError> {
        if self.leaves.contains_key(&channel) {
            return Err(MerkleError::Duplicate);
        }
        self.leaves.insert(channel, sha256(&[state.expose()]));
        Ok(())
    }

    /// Replaces a channel's state.
    pub fn update(&mut self, channel: &ChannelId, state: &State) -> Result<(), MerkleError> {
        let leaf = self.leaves.get_mut(channel).ok_or(MerkleError::NotFound)?;
        *leaf = sha256(&[state.expose()]);
        Ok(())
    }

    /// Removes a channel.
    pub fn remove(&mut self, channel: &ChannelId) -> Result<(), MerkleError> {
        self.leaves.remove(channel).map(|_| ()).ok_or(MerkleError::NotFound)
    }

    /// All levels, leaves first, the last level being `[root]`. Empty for an empty tree.
    #[must_use]
    pub fn levels(&mut self) -> Vec<Vec<[u8; 32]>> {
        let mut levels = Vec::new();
        let mut cur: Vec<[u8; 32]> = self.leaves.values().copied().collect();
        if cur.is_empty() {
            return levels;
        }
        while cur.len() > 1 {
            let next = cur
                .chunks(2)
                .map(|pair| match pair {
                    [l, r] => sha256(&[l, r]),
                    [l] => *l,
                    _ => [0; 32],
                })
                .collect();
            levels.push(std::mem::replace(&mut cur, next));
        }
        levels.push(cur);
        levels
    }

    /// The root `Sg`, or `None` when the tree is empty.
    pub fn root(&mut self) -> Option<State> {
        self.levels().last().and_then(|l| l.first()).map(|r| State::from_bytes(*r))
    }
}
