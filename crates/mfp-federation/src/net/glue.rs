//! Every call of the transport into the handshake functions and `Session::new`, and
//! what a peer's link keeps between sessions. Kept in this one file so a change of
//! those signatures changes the transport here only.

use std::time::Instant;

use mfp_core::{EntropySource, RuntimeId};

use crate::codec::LinkFrame;
use crate::handshake::{self, Accepted, Established, HandshakeError, Initiator, LocalIdentity, PeerTable, Timestamp};
use crate::identity::PublicKey;
use crate::session::{Session, SessionConfig};

/// What the link with one peer keeps while no session is up: nothing (the runtime keeps
/// the channels, their chains and the outbound log; positions are exchanged after each
/// handshake).
#[derive(Debug, Default)]
pub(super) struct Carry;

/// The state a link with `peer` starts from.
pub(super) fn new_carry(_local: RuntimeId, _peer: RuntimeId) -> Carry {
    Carry
}

/// Kept for the link's bookkeeping: the handshake no longer carries a count.
pub(super) fn received(_carry: Option<&Carry>, _session: Option<&Session>) -> u64 {
    0
}

/// Message 1 to `peer`.
pub(super) fn start(
    local: &LocalIdentity,
    peer: RuntimeId,
    key: PublicKey,
    _received: u64,
    now: Timestamp,
    entropy: &mut dyn EntropySource,
) -> Result<(Initiator, Vec<u8>), HandshakeError> {
    Initiator::start(local, peer, key, now, entropy)
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
    _received: u64,
    entropy: &mut dyn EntropySource,
) -> Result<(Established, Vec<u8>), HandshakeError> {
    accepted.finish(entropy)
}

/// A session on a completed handshake; on failure the carried state comes back.
pub(super) fn open(
    est: Established,
    carry: Carry,
    cfg: SessionConfig,
    now: Instant,
) -> Result<Session, Box<(String, Carry)>> {
    Session::new(est, cfg, now).map_err(|e| Box::new((e.to_string(), carry)))
}

/// What an ended (or replaced) session leaves for the next one.
pub(super) fn retire(_session: Session) -> Carry {
    Carry
}
