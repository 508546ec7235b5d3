//! The bilateral chains of a cross-runtime channel.
//!
//! The runtime that opens a channel draws a 32-byte secret from its entropy and sends it
//! to the peer inside the Noise transport ([`crate::control::Control::ChannelOpen`]). Both
//! runtimes then derive the channel's two chains, one per direction, with
//! [`channel_chains`]:
//!
//! ```text
//! ss(S→R)    = HMAC-SHA256(key = secret, msg = "mfp-federation/1 channel" ‖ channel ‖ id_S ‖ id_R)
//! chain(S→R) = BilateralState::ceremonial(ss(S→R), id_S, id_R)
//! ```
//!
//! (pymfp's ceremonial bilateral derivation.) Data from S to R on the channel is sealed with
//! `chain(S→R)` only and opened by R with its copy of it; the two directions never share a
//! ratchet state, so both runtimes sending at once cannot reuse an AES-GCM (key, nonce).
//! The runtime owns the chains: it seals, opens and persists them; the session carries the
//! wire messages.

use mfp_core::bilateral::BilateralState;
use mfp_core::crypto::hmac_state;
use mfp_core::{ChannelId, RuntimeId};

/// Label of the per-direction channel secrets.
pub const CHANNEL_CHAIN_LABEL: &[u8] = b"mfp-federation/1 channel";

fn chain(secret: &[u8; 32], channel: &ChannelId, sender: &RuntimeId, receiver: &RuntimeId) -> BilateralState {
    // `State` is zeroized on drop.
    let ss = hmac_state(secret, &[CHANNEL_CHAIN_LABEL, channel.as_bytes(), sender.as_bytes(), receiver.as_bytes()]);
    BilateralState::ceremonial(&ss, sender, receiver)
}

/// The two chains of `channel`: (opener → acceptor, acceptor → opener).
///
/// Both runtimes call it with the same arguments (the opener's secret, the channel, the
/// opener's and the acceptor's runtime ids). The opener seals with the first and opens with
/// the second; the acceptor seals with the second and opens with the first.
#[must_use]
pub fn channel_chains(
    secret: &[u8; 32],
    channel: &ChannelId,
    opener: &RuntimeId,
    acceptor: &RuntimeId,
) -> (BilateralState, BilateralState) {
    (chain(secret, channel, opener, acceptor), chain(secret, channel, acceptor, opener))
}

/// The id of a reset of `channel` from `secret` (the 32 bytes of its ChannelReset):
/// `SHA-256("mfp-channel-reset-id" ‖ channel ‖ secret)`, its first 16 bytes. Both runtimes
/// derive it; the runtime mixes it into the ids of the messages after the reset
/// (`RemoteHandle::reset_chains_async`), so that they differ from those before it. A new
/// secret for every reset gives every reset its own id; the id tells nothing of the secret.
#[must_use]
pub fn reset_id(secret: &[u8; 32], channel: &ChannelId) -> [u8; 16] {
    let d = mfp_core::crypto::sha256(&[b"mfp-channel-reset-id", channel.as_bytes(), secret]);
    let mut id = [0u8; 16];
    id.copy_from_slice(d.get(..16).unwrap_or(&[0; 16]));
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use mfp_core::envelope::{EnvelopeLimits, parse_wire};

    fn ids() -> (RuntimeId, RuntimeId) {
        (RuntimeId::derive(b"chains", b"a"), RuntimeId::derive(b"chains", b"b"))
    }

    #[test]
    fn directions_differ_and_both_sides_agree() {
        let (a, b) = ids();
        let ch = ChannelId::from_bytes([7; 16]);
        let secret = [0x42; 32];
        let (a_tx, a_rx) = channel_chains(&secret, &ch, &a, &b);
        let (b_rx, b_tx) = channel_chains(&secret, &ch, &a, &b);
        assert!(a_tx != a_rx, "the two directions share a chain");
        assert!(a_tx.ratchet != a_rx.ratchet && a_tx.prng_seed != a_rx.prng_seed);
        assert!(a_tx == b_rx && a_rx == b_tx);
        assert_eq!((a_tx.step, a_rx.step), (0, 0));

        // What one side seals with its sending chain, the other opens with its receiving one.
        let out = a_tx.seal_outbound(&a, &ch, 4, b"hello").unwrap();
        let (header, body) = parse_wire(&out.wire, &EnvelopeLimits::default()).unwrap();
        let (payload, next) = b_rx.open_inbound(&header, body).unwrap();
        assert_eq!(payload, b"hello");
        assert!(next == out.next);
        // ... and not with the chain of the other direction.
        assert!(b_tx.open_inbound(&header, body).is_err());
    }

    #[test]
    fn another_secret_channel_or_runtime_gives_other_chains() {
        let (a, b) = ids();
        let c = RuntimeId::derive(b"chains", b"c");
        let ch = ChannelId::from_bytes([7; 16]);
        let base = channel_chains(&[1; 32], &ch, &a, &b);
        let variants = [
            channel_chains(&[2; 32], &ch, &a, &b),
            channel_chains(&[1; 32], &ChannelId::from_bytes([8; 16]), &a, &b),
            channel_chains(&[1; 32], &ch, &a, &c),
        ];
        for (i, v) in variants.iter().enumerate() {
            for got in [&v.0, &v.1] {
                for old in [&base.0, &base.1] {
                    assert!(got.ratchet != old.ratchet, "variant {i} repeats a chain");
                }
            }
        }
        // A chain depends on its direction, not on who opened: roles swapped, the pair swaps.
        let (x, y) = channel_chains(&[1; 32], &ch, &b, &a);
        assert!(x == base.1 && y == base.0);
    }
}
