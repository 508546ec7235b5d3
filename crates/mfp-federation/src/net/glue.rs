//! Every call of the transport into the handshake functions and `Session::new`, and
//! what a peer's link keeps between sessions. Kept in this one file so a change of
//! those signatures changes the transport here only.

use std::time::Instant;

use mfp_core::{EntropySource, RuntimeId};

use crate::codec::LinkFrame;
use crate::handshake::{self, Accepted, Established, HandshakeError, Initiator, LocalIdentity, PeerTable, Timestamp};
use crate::identity::PublicKey;
use crate::session::{LinkLimits, LinkState, Session, SessionConfig};

/// What the link with one peer keeps while no session is up: the session's link state
/// (outbound log, positions, channels), handed to the next session.
pub(super) type Carry = LinkState;

/// The state a link with `peer` starts from.
pub(super) fn new_carry(local: RuntimeId, peer: RuntimeId) -> Carry {
    LinkState::new(local, peer, LinkLimits::default())
}

/// This side's count of data messages received from the peer, as the handshake carries it.
pub(super) fn received(carry: Option<&Carry>, session: Option<&Session>) -> u64 {
    session.map(|s| s.link().received()).or_else(|| carry.map(LinkState::received)).unwrap_or(0)
}

/// Message 1 to `peer`.
pub(super) fn start(
    local: &LocalIdentity,
    peer: RuntimeId,
    key: PublicKey,
    received: u64,
    now: Timestamp,
    entropy: &mut dyn EntropySource,
) -> Result<(Initiator, Vec<u8>), HandshakeError> {
    Initiator::start(local, peer, key, received, now, entropy)
}

/// Message 2 read: the initiator's side completed.
pub(super) fn complete(initiator: Initiator, frame: &LinkFrame) -> Result<Established, HandshakeError> {
    initiator.complete(frame)
}

/// Message 1 read and checked by the responder (table lookup before any cryptography).
pub(super) fn accept(
    local: &LocalIdentity,
    table: &mut PeerTable,
    frame: &LinkFrame,
    entropy: &mut dyn EntropySource,
) -> Result<Accepted, HandshakeError> {
    handshake::accept(local, table, frame, entropy)
}

/// Message 2 written: the responder's side completed.
pub(super) fn finish(
    accepted: Accepted,
    received: u64,
    entropy: &mut dyn EntropySource,
) -> Result<(Established, Vec<u8>), HandshakeError> {
    accepted.finish(received, entropy)
}

/// A session on a completed handshake; on failure the carried state comes back.
pub(super) fn open(
    est: Established,
    carry: Carry,
    cfg: SessionConfig,
    now: Instant,
) -> Result<Session, Box<(String, Carry)>> {
    Session::new(est, carry, cfg, now).map_err(|refused| Box::new((refused.error.to_string(), refused.link)))
}

/// What an ended (or replaced) session leaves for the next one.
pub(super) fn retire(session: Session) -> Carry {
    session.into_link_state()
}
