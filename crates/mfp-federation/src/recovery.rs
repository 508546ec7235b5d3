//! Recovery of a cross-runtime channel after a reconnect: pymfp's DETECT → NEGOTIATE →
//! RESYNC (PROTOCOL §4.10), put on the wire.
//!
//! - **DETECT.** Each runtime sends, per shared channel, a [`RecoveryReport`]: an `MFP1`
//!   envelope with the `RECOVERY` flag (`0x0002`) whose body holds, for each direction, the
//!   step of its chain and pymfp's state hash of that chain at that step
//!   (`compute_state_hash(S) = SHA-256(R ‖ P)`), and the first step its outbound log can
//!   send again. It travels as control message `0x11` inside the Noise transport.
//! - **NEGOTIATE.** [`decide`] compares the peer's report with this side's chains, one
//!   direction at a time, with pymfp's `diagnose_divergence` ([`mfp_core::bilateral::diagnose`])
//!   — spurious, corruption, local behind, local ahead — where the gap allowed is the extent
//!   of the outbound log instead of pymfp's `max_step_gap`. [`Recovery`] adds pymfp's
//!   attempt and time limits ([`RecoveryLimits`], 3 attempts, 30 s).
//! - **RESYNC.** The runtime sends its log again from the peer's inbound step; the recovery
//!   is complete once the peer acknowledged everything up to where this side stood.
//!
//! Sans-IO: no clock here, `now` is passed in.
//!
//! ## Layout of a report (control type `0x11`, 178 bytes)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | control type `0x11` |
//! | 1 | 4 | magic `MFP1` |
//! | 5 | 2 | version `1` |
//! | 7 | 2 | flags: exactly `0x0002` (`RECOVERY`) |
//! | 9 | 4 | frame depth: `0` (no frame) |
//! | 13 | 4 | payload length: `113` (the body below) |
//! | 17 | 16 | channel id |
//! | 33 | 8 | step: the sender's outbound step (`tx_next`) |
//! | 41 | 16 | sender runtime (first 16 bytes of its id) |
//! | 57 | 8 | reserved, zero |
//! | 65 | 1 | report flags: bit 0 answer requested, bit 1 resend request; others zero |
//! | 66 | 32 | state hash of the sender's outbound chain at `tx_next` |
//! | 98 | 8 | `log_from`: first step the sender can send again (≤ `tx_next`) |
//! | 106 | 8 | `rx_next`: the step the sender expects next |
//! | 114 | 32 | state hash of the sender's inbound chain at `rx_next` |
//! | 146 | 32 | the same after the inbound rotation the sender accepted and has not seen used (equal to the previous field when none) |

use core::fmt;
use core::time::Duration;
use std::time::Instant;

use mfp_core::bilateral::{Diagnosis, diagnose};
use mfp_core::envelope::{EnvelopeFlags, EnvelopeHeader};
use mfp_core::{ChannelId, ENVELOPE_HEADER_SIZE, PROTOCOL_MAGIC, PROTOCOL_VERSION, RuntimeId};

/// Length of a report's body (after its envelope header).
pub const REPORT_BODY: usize = 113;
/// Length of a report: envelope header and body (the control type byte not counted).
pub const REPORT_LEN: usize = ENVELOPE_HEADER_SIZE + REPORT_BODY;

/// Report flag: the receiver answers with its own report (sent by a side that resumed a
/// channel or completed a reset, when the peer has no reason to announce by itself).
pub const ANSWER_REQUESTED: u8 = 0x01;
/// Report flag: the sender could not take a message (its recipient's mailbox stayed full,
/// or its storage failed) and asks for the log again from its `rx_next`. Flow control, not
/// a divergence: it does not count as a recovery attempt.
pub const RESEND_REQUEST: u8 = 0x02;
const KNOWN_FLAGS: u8 = ANSWER_REQUESTED | RESEND_REQUEST;

/// A chain's step and its state hash.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ChainPoint {
    /// The step.
    pub step: u64,
    /// `SHA-256(R ‖ P)` of the chain at `step`.
    pub hash: [u8; 32],
}

impl fmt::Debug for ChainPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainPoint").field("step", &self.step).finish_non_exhaustive()
    }
}

/// One runtime's positions on one channel (DETECT). `Debug` shows steps, never hashes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The channel.
    pub channel: ChannelId,
    /// The sender's runtime (first 16 bytes of its id, as in every envelope).
    pub sender: [u8; 16],
    /// Report flags ([`ANSWER_REQUESTED`], [`RESEND_REQUEST`]).
    pub flags: u8,
    /// The sender's outbound chain: the next step it sends.
    pub tx: ChainPoint,
    /// First step of the sender's outbound log (it can send every step from here to
    /// `tx.step` again).
    pub log_from: u64,
    /// The sender's inbound chain: the next step it expects.
    pub rx: ChainPoint,
    /// State hash of the sender's inbound chain after an accepted rotation not yet seen
    /// (equal to `rx.hash` when none is pending).
    pub rx_rotated_hash: [u8; 32],
}

impl fmt::Debug for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoveryReport")
            .field("channel", &self.channel)
            .field("flags", &self.flags)
            .field("tx_next", &self.tx.step)
            .field("log_from", &self.log_from)
            .field("rx_next", &self.rx.step)
            .finish_non_exhaustive()
    }
}

/// Why bytes are not a recovery report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// Not exactly [`REPORT_LEN`] bytes.
    #[error("a recovery report has {REPORT_LEN} bytes, not {0}")]
    Length(usize),
    /// The envelope's magic is not `MFP1`.
    #[error("recovery report envelope without the MFP1 magic")]
    Magic,
    /// The envelope's version is not 1.
    #[error("recovery report envelope of version {0}")]
    Version(u16),
    /// The envelope's flags are not exactly `RECOVERY`.
    #[error("recovery report envelope with flags {0:#06x} (exactly RECOVERY, 0x0002, expected)")]
    Flags(u16),
    /// The envelope announces a frame.
    #[error("recovery report envelope with frame depth {0} (0 expected)")]
    Depth(u32),
    /// The envelope announces another body length.
    #[error("recovery report envelope announcing {0} body bytes ({REPORT_BODY} expected)")]
    BodyLength(u32),
    /// The envelope's reserved bytes are not zero.
    #[error("recovery report envelope with non-zero reserved bytes")]
    Reserved,
    /// Unknown report flags.
    #[error("recovery report with unknown flags {0:#04x}")]
    ReportFlags(u8),
    /// `log_from` above `tx_next`.
    #[error("recovery report whose log starts at step {log_from}, beyond its next step {tx_next}")]
    LogBeyondNext {
        /// The log's first step.
        log_from: u64,
        /// The outbound step.
        tx_next: u64,
    },
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8).and_then(|s| s.try_into().ok()).map(u64::from_be_bytes)
}

fn hash_at(b: &[u8], at: usize) -> Option<[u8; 32]> {
    b.get(at..at + 32).and_then(|s| s.try_into().ok())
}

impl RecoveryReport {
    /// The report of `sender` (this runtime) on `channel`.
    #[must_use]
    pub fn new(
        channel: ChannelId,
        sender: &RuntimeId,
        flags: u8,
        tx: ChainPoint,
        log_from: u64,
        rx: ChainPoint,
        rx_rotated_hash: [u8; 32],
    ) -> Self {
        Self { channel, sender: sender.sender_field(), flags, tx, log_from: log_from.min(tx.step), rx, rx_rotated_hash }
    }

    /// Whether the flag bits `flag` are set.
    #[must_use]
    pub const fn has(&self, flag: u8) -> bool {
        self.flags & flag == flag
    }

    /// The [`REPORT_LEN`] bytes (envelope header, then body).
    #[must_use]
    pub fn to_bytes(&self) -> [u8; REPORT_LEN] {
        let header = EnvelopeHeader {
            magic: PROTOCOL_MAGIC,
            version: PROTOCOL_VERSION,
            flags: EnvelopeFlags::RECOVERY,
            frame_depth: 0,
            payload_len: REPORT_BODY as u32,
            channel_id: self.channel,
            step: self.tx.step,
            sender_runtime: self.sender,
            reserved: [0; 8],
        };
        let mut out = [0u8; REPORT_LEN];
        let parts: [&[u8]; 7] = [
            &header.to_bytes(),
            &[self.flags],
            &self.tx.hash,
            &self.log_from.to_be_bytes(),
            &self.rx.step.to_be_bytes(),
            &self.rx.hash,
            &self.rx_rotated_hash,
        ];
        let mut at = 0;
        for part in parts {
            if let Some(dst) = out.get_mut(at..at + part.len()) {
                dst.copy_from_slice(part);
            }
            at += part.len();
        }
        out
    }

    /// Parses exactly one report. The length is checked first (nothing is allocated),
    /// then every envelope field, then the body.
    pub fn parse(b: &[u8]) -> Result<Self, ReportError> {
        if b.len() != REPORT_LEN {
            return Err(ReportError::Length(b.len()));
        }
        let bad = ReportError::Length(b.len());
        let h = EnvelopeHeader::parse(b).map_err(|_| bad)?;
        if h.magic != PROTOCOL_MAGIC {
            return Err(ReportError::Magic);
        }
        if h.version != PROTOCOL_VERSION {
            return Err(ReportError::Version(h.version));
        }
        if h.flags != EnvelopeFlags::RECOVERY {
            return Err(ReportError::Flags(h.flags.0));
        }
        if h.frame_depth != 0 {
            return Err(ReportError::Depth(h.frame_depth));
        }
        if h.payload_len as usize != REPORT_BODY {
            return Err(ReportError::BodyLength(h.payload_len));
        }
        if h.reserved != [0; 8] {
            return Err(ReportError::Reserved);
        }
        let body = b.get(ENVELOPE_HEADER_SIZE..).ok_or(bad)?;
        let flags = *body.first().ok_or(bad)?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(ReportError::ReportFlags(flags));
        }
        let tx = ChainPoint { step: h.step, hash: hash_at(body, 1).ok_or(bad)? };
        let log_from = u64_at(body, 33).ok_or(bad)?;
        if log_from > tx.step {
            return Err(ReportError::LogBeyondNext { log_from, tx_next: tx.step });
        }
        let rx = ChainPoint { step: u64_at(body, 41).ok_or(bad)?, hash: hash_at(body, 49).ok_or(bad)? };
        let rx_rotated_hash = hash_at(body, 81).ok_or(bad)?;
        Ok(Self { channel: h.channel_id, sender: h.sender_runtime, flags, tx, log_from, rx, rx_rotated_hash })
    }
}

/// This runtime's side of a channel, compared with the peer's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalPoint {
    /// The outbound chain.
    pub tx: ChainPoint,
    /// First step of the outbound log.
    pub log_from: u64,
    /// The inbound chain.
    pub rx: ChainPoint,
    /// The inbound chain's hash after a pending accepted rotation (`rx.hash` if none).
    pub rx_rotated_hash: [u8; 32],
}

/// A direction of a channel, seen from this runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// What this runtime sends.
    Outbound,
    /// What this runtime receives.
    Inbound,
}

impl Direction {
    const fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// A divergence that recovery cannot repair: the channel is suspended until an operator
/// resumes or resets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Escalation {
    /// Same step, different state hash (pymfp's `corruption`).
    Corruption(Direction),
    /// The receiver of the direction is behind the first step its sender can still send:
    /// it lost messages it had acknowledged (restored from an older copy of its state).
    GapBeyondLog(Direction),
    /// The receiver of the direction is ahead of its sender: it claims steps never sent
    /// (the sender lost state).
    NeverSent(Direction),
    /// More negotiations than [`RecoveryLimits::max_attempts`] without the resend being
    /// acknowledged.
    AttemptsExhausted,
    /// A negotiation later than [`RecoveryLimits::timeout`] after the recovery began.
    TimedOut,
}

impl Escalation {
    /// A short name (for metrics and audit events): `corruption`, `gap_beyond_log`,
    /// `never_sent`, `attempts_exhausted`, `timed_out`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Escalation::Corruption(_) => "corruption",
            Escalation::GapBeyondLog(_) => "gap_beyond_log",
            Escalation::NeverSent(_) => "never_sent",
            Escalation::AttemptsExhausted => "attempts_exhausted",
            Escalation::TimedOut => "timed_out",
        }
    }

    /// What happened and what to do, for the operator (no state, no hash).
    #[must_use]
    pub fn explain(self) -> String {
        let what = match self {
            Escalation::Corruption(d) => format!(
                "the {} chain has the same step on both runtimes but a different state (corruption)",
                d.as_str()
            ),
            Escalation::GapBeyondLog(d) => format!(
                "on the {} direction the receiver is behind what the sender's log still holds (a runtime lost acknowledged messages)",
                d.as_str()
            ),
            Escalation::NeverSent(d) => format!(
                "on the {} direction the receiver is ahead of the sender (a runtime lost messages it had sent)",
                d.as_str()
            ),
            Escalation::AttemptsExhausted => "recovery attempts exhausted without the resend being acknowledged".into(),
            Escalation::TimedOut => "recovery did not complete in time".into(),
        };
        format!(
            "federation recovery ({}): {what}; channel suspended: resume it, or reset it with the peer",
            self.as_str()
        )
    }
}

/// What to do after a negotiation that did not escalate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// pymfp's diagnosis of the outbound direction (`spurious` or `local_ahead`).
    pub outbound: Diagnosis,
    /// pymfp's diagnosis of the inbound direction (`spurious` or `local_behind`: the peer
    /// resends).
    pub inbound: Diagnosis,
    /// Send the log again from this step (the peer's `rx_next`; equal to this side's
    /// `tx_next` when there is nothing to send again).
    pub resend_from: u64,
}

/// NEGOTIATE on one report: pymfp's `diagnose_divergence` per direction, the gap bounded by
/// the outbound log instead of `max_step_gap`.
pub fn decide(local: &LocalPoint, peer: &RecoveryReport) -> Result<Negotiated, Escalation> {
    use Direction::{Inbound, Outbound};
    // Outbound: this side's chain against the peer's inbound chain (either hash the peer
    // may hold: it may have accepted a rotation this side already applied).
    let same =
        |h: &[u8; 32], a: &[u8; 32], b: &[u8; 32]| mfp_core::crypto::ct_eq(h, a) || mfp_core::crypto::ct_eq(h, b);
    let peer_rx = if same(&local.tx.hash, &peer.rx.hash, &peer.rx_rotated_hash) { local.tx.hash } else { peer.rx.hash };
    let outbound = match diagnose(local.tx.step, peer.rx.step, &local.tx.hash, &peer_rx, u64::MAX) {
        Diagnosis::Corruption => return Err(Escalation::Corruption(Outbound)),
        Diagnosis::LocalBehind => return Err(Escalation::NeverSent(Outbound)),
        Diagnosis::LocalAhead if peer.rx.step < local.log_from => return Err(Escalation::GapBeyondLog(Outbound)),
        Diagnosis::Escalate => return Err(Escalation::GapBeyondLog(Outbound)),
        d => d,
    };
    let local_rx =
        if same(&peer.tx.hash, &local.rx.hash, &local.rx_rotated_hash) { peer.tx.hash } else { local.rx.hash };
    let inbound = match diagnose(local.rx.step, peer.tx.step, &local_rx, &peer.tx.hash, u64::MAX) {
        Diagnosis::Corruption => return Err(Escalation::Corruption(Inbound)),
        Diagnosis::LocalAhead => return Err(Escalation::NeverSent(Inbound)),
        Diagnosis::LocalBehind if local.rx.step < peer.log_from => return Err(Escalation::GapBeyondLog(Inbound)),
        Diagnosis::Escalate => return Err(Escalation::GapBeyondLog(Inbound)),
        d => d,
    };
    let resend_from = if outbound == Diagnosis::Spurious { local.tx.step } else { peer.rx.step };
    Ok(Negotiated { outbound, inbound, resend_from })
}

/// Limits of one recovery (pymfp's `RecoveryConfig`, without `max_step_gap`: the outbound
/// log's extent bounds the gap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryLimits {
    /// Negotiations allowed before the resend is acknowledged (pymfp: 3).
    pub max_attempts: u32,
    /// Time allowed from the recovery's start to a negotiation (pymfp: 30 s).
    pub timeout: Duration,
}

impl Default for RecoveryLimits {
    fn default() -> Self {
        Self { max_attempts: 3, timeout: Duration::from_secs(30) }
    }
}

impl RecoveryLimits {
    /// Limits of `max_attempts` negotiations within `timeout`.
    #[must_use]
    pub const fn new(max_attempts: u32, timeout: Duration) -> Self {
        Self { max_attempts, timeout }
    }
}

/// pymfp's recovery phases (`negotiate` is the instant of [`Recovery::negotiate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Positions announced, the peer's not received yet.
    Detect,
    /// The log is being sent again; complete once acknowledged up to `target`.
    Resync {
        /// This side's `tx_next` at the negotiation.
        target: u64,
    },
    /// In step.
    Complete,
    /// Irreparable: the channel is suspended.
    Escalated(Escalation),
}

/// One channel's recovery: begun at DETECT, negotiated on each report from the peer,
/// complete once the peer acknowledged the resend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Where it stands.
    pub phase: Phase,
    /// When it began.
    pub started_at: Instant,
    /// Negotiations so far.
    pub attempts: u32,
}

impl Recovery {
    /// DETECT at `now`.
    #[must_use]
    pub const fn begin(now: Instant) -> Self {
        Self { phase: Phase::Detect, started_at: now, attempts: 0 }
    }

    /// Whether it is still under way (not complete, not escalated).
    #[must_use]
    pub const fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Detect | Phase::Resync { .. })
    }

    /// NEGOTIATE on the peer's report at `now`, in pymfp's order: time, then the attempt
    /// count, then the diagnosis (in step → complete; irreparable → escalated), then the
    /// attempt limit, else RESYNC. A resend request ([`RESEND_REQUEST`]) is flow control:
    /// it is diagnosed but neither counted nor timed.
    pub fn negotiate(
        &mut self,
        now: Instant,
        limits: &RecoveryLimits,
        local: &LocalPoint,
        peer: &RecoveryReport,
    ) -> Result<Negotiated, Escalation> {
        let counted = !peer.has(RESEND_REQUEST);
        if counted && now.saturating_duration_since(self.started_at) > limits.timeout {
            return Err(self.escalate(Escalation::TimedOut));
        }
        if counted {
            self.attempts = self.attempts.saturating_add(1);
        }
        let n = decide(local, peer).map_err(|e| self.escalate(e))?;
        if n.outbound == Diagnosis::Spurious {
            // The peer holds everything this side sent.
            self.phase = Phase::Complete;
            return Ok(n);
        }
        if counted && self.attempts > limits.max_attempts {
            return Err(self.escalate(Escalation::AttemptsExhausted));
        }
        self.phase = Phase::Resync { target: local.tx.step };
        Ok(n)
    }

    /// The peer acknowledged every step below `next`; `true` when that completed the resync.
    pub fn acknowledged(&mut self, next: u64) -> bool {
        match self.phase {
            Phase::Resync { target } if next >= target => {
                self.phase = Phase::Complete;
                true
            }
            _ => false,
        }
    }

    fn escalate(&mut self, e: Escalation) -> Escalation {
        self.phase = Phase::Escalated(e);
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prop_assert;

    fn h(b: u8) -> [u8; 32] {
        [b; 32]
    }

    fn report(tx: (u64, u8), log_from: u64, rx: (u64, u8)) -> RecoveryReport {
        RecoveryReport::new(
            ChannelId::from_bytes([7; 16]),
            &RuntimeId::from_bytes([9; 32]),
            0,
            ChainPoint { step: tx.0, hash: h(tx.1) },
            log_from,
            ChainPoint { step: rx.0, hash: h(rx.1) },
            h(rx.1),
        )
    }

    fn local(tx: (u64, u8), log_from: u64, rx: (u64, u8)) -> LocalPoint {
        LocalPoint {
            tx: ChainPoint { step: tx.0, hash: h(tx.1) },
            log_from,
            rx: ChainPoint { step: rx.0, hash: h(rx.1) },
            rx_rotated_hash: h(rx.1),
        }
    }

    #[test]
    fn the_layout_is_the_documented_one_and_round_trips() {
        let mut r = report((0x0102_0304_0506_0708, 0xaa), 5, (42, 0xbb));
        r.flags = ANSWER_REQUESTED;
        r.rx_rotated_hash = h(0xcc);
        let b = r.to_bytes();
        assert_eq!(b.len(), 177);
        assert_eq!(&b[0..4], b"MFP1");
        assert_eq!(&b[4..6], &[0, 1]);
        assert_eq!(&b[6..8], &[0, 2], "RECOVERY flag, nothing else");
        assert_eq!(&b[8..12], &[0; 4], "no frame");
        assert_eq!(&b[12..16], &113u32.to_be_bytes());
        assert_eq!(&b[16..32], &[7; 16]);
        assert_eq!(&b[32..40], &0x0102_0304_0506_0708u64.to_be_bytes());
        assert_eq!(&b[40..56], &RuntimeId::from_bytes([9; 32]).sender_field());
        assert_eq!(&b[56..64], &[0; 8]);
        assert_eq!(b[64], ANSWER_REQUESTED);
        assert_eq!(&b[65..97], &h(0xaa));
        assert_eq!(&b[97..105], &5u64.to_be_bytes());
        assert_eq!(&b[105..113], &42u64.to_be_bytes());
        assert_eq!(&b[113..145], &h(0xbb));
        assert_eq!(&b[145..177], &h(0xcc));
        assert_eq!(RecoveryReport::parse(&b).unwrap(), r);
        assert!(!format!("{r:?}").contains("170"), "Debug shows no hash bytes");
    }

    fn unhex<const N: usize>(s: &str) -> [u8; N] {
        let mut out = [0u8; N];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn a_report_carries_pymfps_recovery_message_fields() {
        // pymfp's `recovery` vector: a state at step 3, its `compute_state_hash`, and the
        // fields of its `RecoveryMessage` (channel id, step, state hash).
        let state = mfp_core::bilateral::BilateralState {
            ratchet: mfp_core::State::from_bytes(unhex(
                "cffb286331e5b3b9656d8950e7d441e85a1a3e01432f143690f69b3f775bf320",
            )),
            prng_seed: mfp_core::State::from_bytes(unhex(
                "516c3036026f11b72945d107fed6e987430f20d210efed39bc9d9d618f294174",
            )),
            step: 3,
        };
        let hash = state.state_hash();
        assert_eq!(hash, unhex::<32>("ddb13c3b62aaf663ba45037ca9bac00b491770b2a60fe293f96ed285b858fabf"));
        let channel = ChannelId::from_bytes(unhex("a4aa02efdd355541014e879bde4db568"));
        let point = ChainPoint { step: state.step, hash };
        let r = RecoveryReport::new(channel, &RuntimeId::from_bytes([1; 32]), 0, point, 3, point, hash);
        let b = r.to_bytes();
        assert_eq!(&b[16..32], channel.as_bytes(), "channel_id");
        assert_eq!(&b[32..40], &3u64.to_be_bytes(), "step");
        assert_eq!(&b[65..97], &hash, "state_hash");
    }

    #[test]
    fn every_truncation_extension_and_bad_field_is_refused() {
        let b = report((9, 1), 3, (4, 2)).to_bytes();
        for n in 0..REPORT_LEN {
            assert_eq!(RecoveryReport::parse(&b[..n]), Err(ReportError::Length(n)), "{n} bytes");
        }
        let mut longer = b.to_vec();
        longer.push(0);
        assert_eq!(RecoveryReport::parse(&longer), Err(ReportError::Length(REPORT_LEN + 1)));
        let with = |at: usize, v: &[u8]| {
            let mut c = b;
            c[at..at + v.len()].copy_from_slice(v);
            RecoveryReport::parse(&c)
        };
        assert_eq!(with(0, b"MFP2"), Err(ReportError::Magic));
        assert_eq!(with(4, &[0, 2]), Err(ReportError::Version(2)));
        assert_eq!(with(6, &[0, 0]), Err(ReportError::Flags(0)));
        assert_eq!(with(6, &[0, 3]), Err(ReportError::Flags(3)), "RECOVERY with ACK");
        assert_eq!(with(8, &[0, 0, 0, 4]), Err(ReportError::Depth(4)));
        assert_eq!(with(12, &[0, 0, 0, 112]), Err(ReportError::BodyLength(112)));
        assert_eq!(with(12, &[0xff; 4]), Err(ReportError::BodyLength(u32::MAX)));
        assert_eq!(with(63, &[1]), Err(ReportError::Reserved));
        assert_eq!(with(64, &[4]), Err(ReportError::ReportFlags(4)));
        assert_eq!(with(97, &10u64.to_be_bytes()), Err(ReportError::LogBeyondNext { log_from: 10, tx_next: 9 }));
        assert!(with(64, &[3]).is_ok(), "both known flags");
    }

    #[test]
    fn decisions_follow_pymfps_diagnoses_bounded_by_the_log() {
        use Direction::{Inbound, Outbound};
        // In step both ways: spurious.
        let n = decide(&local((5, 1), 5, (7, 2)), &report((7, 2), 7, (5, 1))).unwrap();
        assert_eq!((n.outbound, n.inbound, n.resend_from), (Diagnosis::Spurious, Diagnosis::Spurious, 5));
        // Same steps, other hash: corruption, each direction.
        assert_eq!(
            decide(&local((5, 1), 5, (7, 2)), &report((7, 2), 7, (5, 9))),
            Err(Escalation::Corruption(Outbound))
        );
        assert_eq!(decide(&local((5, 1), 5, (7, 2)), &report((7, 9), 7, (5, 1))), Err(Escalation::Corruption(Inbound)));
        // The peer is behind what this side sent, within the log: resend from its step.
        let n = decide(&local((9, 1), 3, (7, 2)), &report((7, 2), 7, (3, 8))).unwrap();
        assert_eq!((n.outbound, n.resend_from), (Diagnosis::LocalAhead, 3));
        // ... below the log: gap beyond the log.
        assert_eq!(
            decide(&local((9, 1), 4, (7, 2)), &report((7, 2), 7, (3, 8))),
            Err(Escalation::GapBeyondLog(Outbound))
        );
        // The peer expects a step never sent.
        assert_eq!(
            decide(&local((9, 1), 9, (7, 2)), &report((7, 2), 7, (10, 8))),
            Err(Escalation::NeverSent(Outbound))
        );
        // This side is behind the peer's sending, within the peer's log: the peer resends.
        let n = decide(&local((5, 1), 5, (7, 2)), &report((12, 3), 6, (5, 1))).unwrap();
        assert_eq!((n.outbound, n.inbound, n.resend_from), (Diagnosis::Spurious, Diagnosis::LocalBehind, 5));
        // ... below the peer's log, or ahead of its sending.
        assert_eq!(
            decide(&local((5, 1), 5, (7, 2)), &report((12, 3), 8, (5, 1))),
            Err(Escalation::GapBeyondLog(Inbound))
        );
        assert_eq!(decide(&local((5, 1), 5, (7, 2)), &report((6, 3), 6, (5, 1))), Err(Escalation::NeverSent(Inbound)));
        // A large backlog is no escalation (pymfp's max_step_gap of 5 would be).
        assert!(decide(&local((100_000, 1), 0, (0, 2)), &report((0, 2), 0, (0, 8))).is_ok());
    }

    #[test]
    fn a_pending_rotation_is_not_corruption() {
        // The peer accepted a rotation of this side's outbound chain; this side applied it.
        let mut r = report((7, 2), 7, (5, 8));
        r.rx_rotated_hash = h(1);
        assert!(decide(&local((5, 1), 5, (7, 2)), &r).is_ok());
        // This side accepted one the peer applied.
        let mut l = local((5, 1), 5, (7, 2));
        l.rx_rotated_hash = h(3);
        assert!(decide(&l, &report((7, 3), 7, (5, 1))).is_ok());
        assert_eq!(decide(&l, &report((7, 4), 7, (5, 1))), Err(Escalation::Corruption(Direction::Inbound)));
    }

    #[test]
    fn attempts_and_time_escalate_and_an_acknowledged_resync_completes() {
        let t0 = Instant::now();
        let limits = RecoveryLimits::default();
        let behind = report((0, 2), 0, (3, 8));
        let l = local((9, 1), 0, (0, 2));
        let mut r = Recovery::begin(t0);
        for i in 1..=3 {
            assert!(r.negotiate(t0 + Duration::from_secs(i), &limits, &l, &behind).is_ok(), "attempt {i}");
            assert_eq!(r.phase, Phase::Resync { target: 9 });
        }
        // Resend requests do not count.
        let mut resend = behind;
        resend.flags = RESEND_REQUEST;
        assert!(r.negotiate(t0 + Duration::from_secs(31), &limits, &l, &resend).is_ok());
        assert_eq!(r.negotiate(t0 + Duration::from_secs(4), &limits, &l, &behind), Err(Escalation::AttemptsExhausted));
        assert_eq!(r.phase, Phase::Escalated(Escalation::AttemptsExhausted));
        assert!(!r.is_open());

        let mut r = Recovery::begin(t0);
        assert_eq!(r.negotiate(t0 + Duration::from_millis(30_001), &limits, &l, &behind), Err(Escalation::TimedOut));
        let mut r = Recovery::begin(t0);
        assert!(r.negotiate(t0 + Duration::from_secs(30), &limits, &l, &behind).is_ok(), "30 s is still in time");
        assert!(!r.acknowledged(8));
        assert!(r.is_open());
        assert!(r.acknowledged(9));
        assert_eq!(r.phase, Phase::Complete);

        // In step: complete at once; an irreparable report escalates at the first attempt.
        let mut r = Recovery::begin(t0);
        assert!(r.negotiate(t0, &limits, &local((5, 1), 5, (7, 2)), &report((7, 2), 7, (5, 1))).is_ok());
        assert_eq!(r.phase, Phase::Complete);
        let mut r = Recovery::begin(t0);
        let e = r.negotiate(t0, &limits, &local((5, 1), 5, (7, 2)), &report((7, 2), 7, (5, 9)));
        assert_eq!(e, Err(Escalation::Corruption(Direction::Outbound)));
        assert!(Escalation::Corruption(Direction::Outbound).explain().contains("resume it, or reset it"));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            crate::fuzzing::recovery(&bytes);
        }

        #[test]
        fn altered_reports_parse_or_fail_cleanly(
            mask in proptest::collection::vec(proptest::prelude::any::<u8>(), REPORT_LEN),
            tx in proptest::prelude::any::<u64>(),
            rx in proptest::prelude::any::<u64>(),
            flips in 0usize..4,
        ) {
            let genuine = report((tx, 1), tx / 2, (rx, 2)).to_bytes();
            crate::fuzzing::recovery(&genuine);
            prop_assert!(RecoveryReport::parse(&genuine).is_ok());
            // A few bytes changed: parsed exactly or refused, never a panic.
            let mut altered = genuine;
            for (i, m) in mask.iter().enumerate().take(flips * 40 + 1) {
                let at = (usize::from(*m) * 7 + i * 13) % REPORT_LEN;
                altered[at] ^= m | 1;
            }
            crate::fuzzing::recovery(&altered);
        }
    }
}
