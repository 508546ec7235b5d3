//! The acceptance of a peer's channel request (who it is for, the policy, the runtime
//! opens it) and of the opener's confirmation that it stored the channel.

use mfp_core::{AgentId, ChannelId};
use mfp_runtime::Error as RuntimeError;
use mfp_runtime::remote::{Chains, RemoteEnd};

use super::{AcceptPolicy, Peer, Shared};
use crate::control::{RefuseReason, Target};

/// A peer's channel request: who it is for, whether the policy allows it, then the
/// runtime opens it. `Ok(acceptor)` or the refusal.
pub(super) async fn accept_request(
    shared: &Shared,
    peer: &Peer,
    channel: ChannelId,
    depth: usize,
    opener: AgentId,
    target: &Target,
    secret: &[u8; 32],
) -> Result<AgentId, RefuseReason> {
    let rt = &shared.runtime;
    let local = match target {
        Target::Id(id) => *id,
        Target::Name(n) => rt.agent_named(n).map_err(|_| RefuseReason::UnknownAgent)?,
    };
    let allowed = match &peer.accept {
        AcceptPolicy::Any => true,
        AcceptPolicy::Nobody => false,
        AcceptPolicy::Named(names) => names.iter().any(|n| rt.agent_named(n).is_ok_and(|id| id == local)),
    };
    if !allowed {
        return Err(RefuseReason::NotAllowed);
    }
    let (opener_to_acceptor, acceptor_to_opener) =
        crate::channel_chains(secret, &channel, &peer.runtime, &shared.local);
    let chains = Chains::Split { tx: acceptor_to_opener, rx: opener_to_acceptor };
    // Until the opener confirms it stored the channel, this side does not send on it (a
    // receipt for a message on a channel the opener might never store would be a lie).
    let fresh = peer.unconfirmed.lock().insert(channel);
    // Stored unconfirmed in the same transaction as the channel, so that a restart before
    // the confirmation still waits for it.
    match rt.establish_accepted_async(local, RemoteEnd::new(peer.runtime, opener), channel, depth, chains).await {
        Ok(()) => {
            peer.chans.lock().entry(channel).or_default();
            Ok(local)
        }
        // The same request again (its answer was lost with a broken link): same answer.
        Err(RuntimeError::ChannelExists(_))
            if rt.positions(&peer.runtime).is_ok_and(|ps| {
                ps.iter().any(|p| p.channel == channel && p.local_agent == local && p.remote.agent == opener)
            }) =>
        {
            Ok(local)
        }
        Err(e) => {
            if fresh {
                peer.unconfirmed.lock().remove(&channel);
            }
            Err(refusal(e))
        }
    }
}

/// Why a channel request is refused, from the runtime's error.
fn refusal(e: RuntimeError) -> RefuseReason {
    match e {
        RuntimeError::ChannelExists(_) => RefuseReason::Collision,
        RuntimeError::ResourceLimit { .. } => RefuseReason::LimitReached,
        RuntimeError::InvalidDepth { .. } => RefuseReason::BadDepth,
        RuntimeError::AgentNotBound(_) | RuntimeError::UnknownAgentName(_) => RefuseReason::UnknownAgent,
        _ => RefuseReason::NotAllowed,
    }
}

/// The opener of `channel` showed that it stored it: this side may send on it (and the
/// stored mark is cleared).
pub(super) fn confirmed(shared: &Shared, peer: &Peer, channel: &ChannelId) {
    let removed = {
        let mut u = peer.unconfirmed.lock();
        !u.is_empty() && u.remove(channel)
    };
    if removed {
        if let Err(e) = shared.runtime.opener_confirmed(channel) {
            tracing::debug!(target: "mfp::federation", channel = %channel.short(), error = %e, "confirmation of a channel not stored");
        }
        peer.ready.notify_waiters();
    }
}
