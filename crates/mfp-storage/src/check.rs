//! The consistency report of a database (`mfp-storage check`, `mfp-server storage check`).

use std::path::Path;

use mfp_runtime::storage::Snapshot;
use mfp_runtime::{AgentState, ChannelStatus};

use crate::StorageError;
use crate::key::MasterKey;
use crate::storage::inspect;

/// What [`check`] found: one line per finding, in order, and whether the database is
/// consistent. Lines name counts, ids and steps, never states, keys or payloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The report's lines (the last one is `OK` when `ok`).
    pub lines: Vec<String>,
    /// The stored Sg is the root of the stored channel states and the outbound log agrees
    /// with its channels.
    pub ok: bool,
}

impl core::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for line in &self.lines {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// Opens the database at `db` read-only (see [`inspect`]) and checks it: schema, key id,
/// agents, channels, the durable inbox, cross-runtime channels and their outbound log, and
/// that the stored Sg is the Merkle root of the stored channel states.
///
/// # Errors
///
/// As [`inspect`] (missing file, wrong key, damaged data); an inconsistency is not an
/// error but a report with `ok == false`.
pub fn check(db: &Path, key: &MasterKey) -> Result<CheckReport, StorageError> {
    let found = inspect(db, key)?;
    let mut lines = vec![
        format!("database: {}", db.display()),
        format!("schema version: {}", found.schema_version),
        format!("key id: {}", found.key_id.map_or_else(|| "none".into(), hex::encode)),
    ];
    let federation = [
        format!("bilateral channels: {}", found.federation.bilateral.len()),
        format!("pending outbound messages: {}", found.federation.outbound.len()),
    ];
    let Some(snapshot) = found.snapshot else {
        lines.push("runtime: none stored".into());
        lines.extend(federation);
        lines.push("OK".into());
        return Ok(CheckReport { lines, ok: true });
    };
    if let Some(meta) = &snapshot.meta {
        lines.push(format!("runtime: {} (agent counter {})", meta.identity, meta.agent_counter));
    }
    let agents = |s: AgentState| snapshot.agents.iter().filter(|a| a.state == s).count();
    lines.push(format!(
        "agents: {} (bound {}, active {}, quarantined {})",
        snapshot.agents.len(),
        agents(AgentState::Bound),
        agents(AgentState::Active),
        agents(AgentState::Quarantined)
    ));
    let channels = |s: ChannelStatus| snapshot.channels.iter().filter(|c| c.status == s).count();
    lines.push(format!(
        "channels: {} (active {}, quarantined {})",
        snapshot.channels.len(),
        channels(ChannelStatus::Active),
        channels(ChannelStatus::Quarantined)
    ));
    lines.push(format!(
        "pending deliveries: {} (stored, not yet handled; delivered again, flagged, at the next start)",
        snapshot.deliveries.len()
    ));
    let remote = |s: ChannelStatus| snapshot.remote_channels.iter().filter(|c| c.status == s).count();
    lines.push(format!(
        "cross-runtime channels: {} (active {}, quarantined {})",
        snapshot.remote_channels.len(),
        remote(ChannelStatus::Active),
        remote(ChannelStatus::Quarantined)
    ));
    let logged: std::collections::BTreeSet<_> = snapshot.outbound.iter().map(|o| o.channel).collect();
    lines.push(format!(
        "outbound log: {} messages on {} channels (sealed, not yet acknowledged by the peer; sent again after a \
         restart)",
        snapshot.outbound.len(),
        logged.len()
    ));
    lines.extend(federation);
    let log_problems = outbound_log_problems(&snapshot);
    lines.extend(log_problems.iter().map(|p| format!("outbound log: MISMATCH ({p})")));
    let sg_ok = match mfp_core::MerkleSg::from_states(snapshot.channels.iter().map(|c| (c.id, &c.state))) {
        Ok(mut tree) => tree.root() == snapshot.sg,
        Err(e) => return Err(StorageError::Corrupt(format!("cannot compute Sg from the stored channel states: {e}"))),
    };
    if sg_ok {
        lines.push(format!("sg: consistent with the {} channel states", snapshot.channels.len()));
    } else {
        lines.push("sg: MISMATCH (stored Sg is not the Merkle root of the stored channel states)".into());
    }
    let ok = sg_ok && log_problems.is_empty();
    if ok {
        lines.push("OK".into());
    }
    Ok(CheckReport { lines, ok })
}

/// Messages of the outbound log that do not agree with their channel: each was sealed on the
/// channel's outbound chain before its current step, and goes to the channel's peer.
fn outbound_log_problems(snapshot: &Snapshot) -> Vec<String> {
    let channels: std::collections::BTreeMap<_, _> = snapshot.remote_channels.iter().map(|c| (c.id, c)).collect();
    let mut problems = Vec::new();
    for o in &snapshot.outbound {
        match channels.get(&o.channel) {
            None => problems.push(format!("channel {}: messages for a channel that is not stored", o.channel)),
            Some(c) if o.step >= c.tx.step => problems.push(format!(
                "channel {}: message at step {} is not below the outbound chain's step {}",
                o.channel, o.step, c.tx.step
            )),
            Some(c) if o.peer != c.peer => problems.push(format!(
                "channel {}: message at step {} is addressed to runtime {}, the channel's peer is {}",
                o.channel, o.step, o.peer, c.peer
            )),
            Some(_) => {}
        }
    }
    problems
}
