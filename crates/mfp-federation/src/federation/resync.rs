//! A channel's recovery after DETECT: NEGOTIATE on the peer's report, RESYNC of the
//! channel's log, and the rotation of this side's outbound chains.

use std::sync::atomic::Ordering;

use mfp_core::ChannelId;

use super::accept::confirmed;
use super::peer_task::acked;
use super::transport::send_report;
use super::{FederationError, Peer, Shared};
use crate::recovery::{ANSWER_REQUESTED, ChainPoint, LocalPoint, Recovery, RecoveryReport};

/// NEGOTIATE on the peer's report, then RESYNC, or the suspension of the channel.
pub(super) async fn on_report(shared: &Shared, peer: &Peer, report: RecoveryReport) {
    let rt = &shared.runtime;
    let channel = report.channel;
    let point = match rt.recovery_point(&channel) {
        Ok(p) if rt.positions(&peer.runtime).is_ok_and(|ps| ps.iter().any(|x| x.channel == channel)) => p,
        _ => {
            // The peer has a channel this side does not (closed here while the link was
            // down, or never opened): close it there.
            let _ = peer.handle.with_session(|s| s.close_channel(channel));
            return;
        }
    };
    // The peer reports the channel: it has it stored.
    confirmed(shared, peer, &channel);
    if point.status != mfp_runtime::ChannelStatus::Active {
        tracing::debug!(target: "mfp::federation", channel = %channel.short(), "recovery report on a suspended channel ignored until it is resumed or reset");
        return;
    }
    let local = LocalPoint {
        tx: ChainPoint { step: point.tx_next, hash: point.tx_hash },
        log_from: point.log_from,
        rx: ChainPoint { step: point.rx_next, hash: point.rx_hash },
        rx_rotated_hash: point.rx_rotated_hash,
    };
    let now = shared.clock.now();
    let decided = {
        let mut chans = peer.chans.lock();
        let st = chans.entry(channel).or_default();
        if !st.recovery.is_some_and(|r| r.is_open()) {
            st.recovery = Some(Recovery::begin(now));
        }
        let recovery = st.recovery.get_or_insert(Recovery::begin(now));
        let d = recovery.negotiate(now, &shared.recovery, &local, &report);
        if d.is_err() {
            st.recovery = None;
        }
        d
    };
    shared.counters.negotiations.fetch_add(1, Ordering::Relaxed);
    let n = match decided {
        Ok(n) => n,
        Err(e) => {
            shared.counters.escalated(e);
            let reason = e.explain();
            tracing::error!(target: "mfp::federation", peer = %peer.runtime.short(), channel = %channel.short(), outcome = e.as_str(), "channel diverged beyond repair; suspended");
            if report.has(ANSWER_REQUESTED) {
                // The peer diagnoses the same divergence from this side's report (a peer
                // that resumed after this side would otherwise never hear of it).
                send_report(shared, peer, channel, 0);
            }
            if let Err(err) = rt.suspend_async(&channel, &reason).await {
                tracing::warn!(target: "mfp::federation", channel = %channel.short(), error = %err, "suspending the channel failed");
            }
            return;
        }
    };
    if n.outbound == mfp_core::bilateral::Diagnosis::Spurious {
        shared.counters.in_step.fetch_add(1, Ordering::Relaxed);
    } else {
        shared.counters.resyncs.fetch_add(1, Ordering::Relaxed);
    }
    if report.has(ANSWER_REQUESTED) {
        send_report(shared, peer, channel, 0);
    }
    // Everything below the peer's rx_next is durable there (an acknowledgement), then
    // RESYNC: the log goes again from it.
    acked(shared, peer, channel, report.rx.step);
    resync(shared, peer, channel, Some(n.resend_from)).await;
}

/// 32 random bytes as an X25519 secret.
pub(super) fn draw_secret(shared: &Shared) -> Result<mfp_core::State, mfp_core::Error> {
    let mut b = [0u8; 32];
    shared.entropy.lock().fill(&mut b)?;
    let s = mfp_core::State::from_bytes(b);
    zeroize::Zeroize::zeroize(&mut b);
    Ok(s)
}

/// Starts a rotation of this side's outbound chain of `channel` (at most one at a time).
pub(super) fn request_rotation(
    shared: &Shared,
    peer: &Peer,
    channel: ChannelId,
    tx_next: u64,
    acked: u64,
) -> Result<(), FederationError> {
    {
        let mut chans = peer.chans.lock();
        let st = chans.entry(channel).or_default();
        if st.rotating.is_some() {
            return Err(FederationError::Invalid(format!("a rotation of channel {} is under way", channel.short())));
        }
        if st.last_rotation.is_some_and(|r| acked <= r) {
            return Err(FederationError::Invalid(format!(
                "the peer has not yet acknowledged a message under channel {}'s last rotation; send one first",
                channel.short()
            )));
        }
    }
    let secret = draw_secret(shared).map_err(|_| FederationError::Invalid("entropy source failed".into()))?;
    let message = mfp_core::bilateral::RekeyMessage {
        sender: shared.local,
        receiver: peer.runtime,
        ephemeral_public: mfp_core::crypto::x25519_public(&secret),
        step: tx_next,
    };
    peer.chans.lock().entry(channel).or_default().rotating = Some((tx_next, secret));
    peer.handle
        .with_session(|s| s.request_rotation(channel, message))
        .map_err(|_| FederationError::PeerDown(peer.runtime.short()))
}

/// Rotates `channel`'s outbound chain when its count or age says so (pymfp's triggers).
pub(super) fn maybe_rotate(shared: &Shared, peer: &Peer, channel: ChannelId) {
    let Some((tx_next, acked)) =
        shared.runtime.position(&channel).ok().filter(|p| p.remote.peer == peer.runtime).map(|p| (p.tx_next, p.acked))
    else {
        return;
    };
    let due = {
        let mut chans = peer.chans.lock();
        let st = chans.entry(channel).or_default();
        let (at_step, at_time) = st.rotated_at;
        st.rotating.is_none()
            && ((shared.rotate_after_messages > 0 && tx_next.saturating_sub(at_step) >= shared.rotate_after_messages)
                || (!shared.rotate_after.is_zero() && at_time.elapsed() >= shared.rotate_after))
    };
    if due && let Err(e) = request_rotation(shared, peer, channel, tx_next, acked) {
        tracing::debug!(target: "mfp::federation", channel = %channel.short(), error = %e, "rotation not requested");
    }
}

/// Hands the runtime's log of `channel` to the session again, from `from` (the peer's
/// position) or from where this side stopped, waiting for room as needed; then lets new
/// messages through.
pub(super) async fn resync(shared: &Shared, peer: &Peer, channel: ChannelId, from: Option<u64>) {
    {
        let mut chans = peer.chans.lock();
        let st = chans.entry(channel).or_default();
        match from {
            Some(f) => {
                st.sent_next = f;
                st.awaiting_position = false;
            }
            // Where to resume is the peer's position, which has not come yet.
            None if st.awaiting_position => return,
            None => {}
        }
    }
    loop {
        // Read before taking `chans`: the runtime hands messages over under its channel
        // lock and then takes `chans`, so `chans` is never held while the runtime locks.
        let latest = shared
            .runtime
            .positions(&peer.runtime)
            .ok()
            .and_then(|ps| ps.into_iter().find(|p| p.channel == channel).map(|p| p.tx_next));
        let Some(latest) = latest else { return };
        let start = peer.chans.lock().entry(channel).or_default().sent_next;
        let Ok(msgs) = shared.runtime.unacknowledged(&channel, start) else { return };
        {
            let mut chans = peer.chans.lock();
            let st = chans.entry(channel).or_default();
            let mut blocked = false;
            for m in &msgs {
                if m.step != st.sent_next {
                    continue;
                }
                match peer.handle.with_session(|s| s.send_data(channel, m.wire.to_vec())) {
                    Ok(Ok(())) => st.sent_next = m.step + 1,
                    Ok(Err(_)) => {
                        blocked = true;
                        break;
                    }
                    // Down: the next Up announces positions and resyncs.
                    Err(_) => return,
                }
            }
            if !blocked && st.sent_next >= latest {
                // Caught up. A message sealed since `latest` was read found the channel
                // stalled and queued another resync, which sends it.
                st.stalled = false;
                return;
            }
        }
        // Full: wait until the link drained, then go on.
        peer.handle.writable().await;
        if !peer.handle.is_up() {
            return;
        }
    }
}
