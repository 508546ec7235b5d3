//! The per-channel ratchet: seed, advance, distribution seed, and plain composition.

use crate::crypto::{HmacKey, hmac_state, sha256};
use crate::{AgentId, ChannelId, Frame, RuntimeId, State};

/// The initial local state of a channel:
/// `Sl0 = HMAC(runtime_id, lo ‖ hi ‖ channel_id)` with the two agent ids in lexicographic
/// order (so it does not depend on which agent is named first).
#[must_use]
pub fn channel_seed(runtime: &RuntimeId, a: &AgentId, b: &AgentId, channel: &ChannelId) -> State {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    hmac_state(runtime.as_bytes(), &[lo.as_bytes(), hi.as_bytes(), channel.as_bytes()])
}

/// The ratchet function `f(S, frame) = HMAC(S, B1 ‖ … ‖ Bk)` over `frame_open`.
#[must_use]
pub fn advance(state: &State, frame: &Frame) -> State {
    advance_keyed(&HmacKey::new(state.expose()), frame)
}

/// [`advance`] with the state keyed already ([`HmacKey::new`] of its bytes).
#[must_use]
pub fn advance_keyed(state: &HmacKey, frame: &Frame) -> State {
    state.mac_state(&[frame.as_bytes()])
}

/// The distribution seed `ds = HMAC(Sl, u64be(t) ‖ Sg)` that keys a frame's PRNG.
///
/// For cross-runtime frames pymfp passes the bilateral ratchet state in place of `Sg`.
#[must_use]
pub fn distribution_seed(local: &State, step: u64, global: &State) -> State {
    distribution_seed_keyed(&HmacKey::new(local.expose()), step, global)
}

/// [`distribution_seed`] with `Sl` keyed already ([`HmacKey::new`] of its bytes).
#[must_use]
pub fn distribution_seed_keyed(local: &HmacKey, step: u64, global: &State) -> State {
    local.mac_state(&[&step.to_be_bytes(), global.expose()])
}

/// Plain composition `SHA256(S1 ‖ … ‖ Sn)` of states in the given order.
///
/// This is the design document's Sg; pymfp's runtime uses the Merkle root instead
/// ([`crate::MerkleSg`]). Kept for completeness and for the `compose_plain` vectors.
#[must_use]
pub fn compose_plain(states: &[State]) -> State {
    let parts: Vec<&[u8]> = states.iter().map(|s| s.expose().as_slice()).collect();
    State::from_bytes(sha256(&parts))
}

/// Plain composition of `(channel, state)` pairs sorted by channel id.
#[must_use]
pub fn compose_ordered(pairs: &[(ChannelId, State)]) -> State {
    let mut refs: Vec<&(ChannelId, State)> = pairs.iter().collect();
    refs.sort_by_key(|x| x.0);
    let parts: Vec<&[u8]> = refs.iter().map(|(_, s)| s.expose().as_slice()).collect();
    State::from_bytes(sha256(&parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_is_symmetric_and_channel_bound() {
        let rt = RuntimeId::derive(b"d", b"i");
        let a = AgentId::from_bytes([1; 32]);
        let b = AgentId::from_bytes([2; 32]);
        let c1 = ChannelId::from_bytes([3; 16]);
        let c2 = ChannelId::from_bytes([4; 16]);
        assert_eq!(channel_seed(&rt, &a, &b, &c1), channel_seed(&rt, &b, &a, &c1));
        assert_ne!(channel_seed(&rt, &a, &b, &c1), channel_seed(&rt, &a, &b, &c2));
    }

    #[test]
    fn compose_ordered_sorts() {
        let s1 = State::from_bytes([1; 32]);
        let s2 = State::from_bytes([2; 32]);
        let c1 = ChannelId::from_bytes([9; 16]);
        let c2 = ChannelId::from_bytes([1; 16]);
        let got = compose_ordered(&[(c1, s1.clone()), (c2, s2.clone())]);
        assert_eq!(got, compose_plain(&[s2, s1]));
    }
}
