//! Runtime configuration: pymfp's `RuntimeConfig` fields with the same defaults and
//! meaning, plus the limits and policies pymfp lacks.

use std::time::Duration;

use mfp_core::encoding::Algorithm;
use mfp_core::{MAX_FRAME_DEPTH, MIN_FRAME_DEPTH, RuntimeId};

use crate::error::ConfigError;

/// What happens when a sender exceeds `max_message_rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RateLimitAction {
    /// Quarantine the sender (pymfp's behaviour).
    #[default]
    Quarantine,
    /// Refuse the send with [`crate::Error::RateLimited`]; the sender stays active.
    Reject,
    /// Wait until the window allows the send (at most `pipeline_timeout`), then send;
    /// [`crate::Error::RateLimited`] if the wait would be longer.
    Wait,
}

/// What happens when the recipient's mailbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Backpressure {
    /// Wait for space, at most `pipeline_timeout`, then fail with
    /// [`crate::Error::MailboxFull`]. No lock is held while waiting.
    #[default]
    Wait,
    /// Fail at once with [`crate::Error::MailboxFull`].
    Reject,
}

/// Configuration of a [`crate::Runtime`].
///
/// The first block of fields are pymfp 1.0.0's, with its defaults. Call
/// [`RuntimeConfig::validate`] (the runtime does so on construction) to check ranges.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RuntimeConfig {
    /// Deployment id; with `instance_id` it derives the runtime identity
    /// `SHA256(deployment_id ‖ instance_id)`. Empty ⇒ a random identity.
    pub deployment_id: Vec<u8>,
    /// Instance id (see `deployment_id`).
    pub instance_id: Vec<u8>,
    /// Frame depth of channels established without an explicit depth (pymfp declares it
    /// but does not use it; we do).
    pub default_frame_depth: usize,
    /// Consecutive frame-validation failures that quarantine a channel.
    pub validation_failure_threshold: u32,
    /// Successful sends allowed per sender per rolling second; 0 = unlimited.
    pub max_message_rate: u32,
    /// Largest payload in bytes; 0 = no limit beyond what AES-GCM can encode.
    pub max_payload_size: usize,
    /// Payload encoding algorithm. Validated, otherwise not read: AES-256-GCM is the only
    /// algorithm there is (pymfp 1.0.0 has the same single value).
    pub encoding_algorithm: Algorithm,
    /// Algorithms this runtime supports (must include `encoding_algorithm`). Validated,
    /// otherwise not read (see `encoding_algorithm`).
    pub supported_algorithms: Vec<Algorithm>,
    /// Channels one agent may be on.
    pub max_channels_per_agent: usize,
    /// Agents one runtime may host.
    pub max_agents: usize,
    /// Cross-runtime channels per peer runtime; one more is refused with
    /// [`crate::Error::ResourceLimit`].
    pub max_bilateral_channels: usize,
    /// Storage size budget in MiB. **Not used**: accepted for pymfp compatibility (which
    /// does not enforce it either); no store caps its size.
    pub max_storage_size_mb: u64,
    /// Time a handler may take for one message; past it the agent is quarantined.
    pub agent_timeout: Duration,
    /// Longest time a send may wait (for mailbox space or the rate window).
    pub pipeline_timeout: Duration,
    /// Storage operation timeout. **Not used** by the runtime: accepted for pymfp
    /// compatibility. A commit wait is not cut short by the runtime, because a batch that
    /// timed out could still commit afterwards and leave the stored state ahead of memory;
    /// the store bounds its own waits (`mfp_storage::StorageConfig::busy_timeout` and
    /// `writer_timeout`), and fails the batch — which then never commits — when they pass.
    pub storage_timeout: Duration,

    /// Explicit runtime identity, overriding `deployment_id`/`instance_id` (tests,
    /// migrations, vector checks).
    pub identity: Option<RuntimeId>,
    /// Largest frame depth a channel may have.
    pub max_frame_depth: usize,
    /// Messages an agent's mailbox holds before backpressure applies.
    pub mailbox_capacity: usize,
    /// Payload bytes an agent's mailbox holds — messages queued plus the one its handler
    /// is running on — before backpressure applies (the same [`Backpressure`] policy as
    /// `mailbox_capacity`). A single message larger than this still goes through when the
    /// mailbox is empty. Default 64 MiB; at most `u32::MAX`.
    pub mailbox_max_bytes: usize,
    /// Behaviour when a mailbox is full.
    pub backpressure: Backpressure,
    /// Behaviour when a sender exceeds `max_message_rate`.
    pub rate_limit_action: RateLimitAction,
    /// Idempotency keys remembered per channel.
    pub dedup_window: usize,
    /// How long an idempotency key is remembered.
    pub dedup_ttl: Duration,
    /// With storage: keep going when a write fails (the runtime runs degraded and a
    /// restart loses the unsaved changes) instead of failing the operation. Off by
    /// default: a send whose state advance cannot be saved fails. With it on, a restart
    /// also accepts a stored Sg that no longer matches the channel states (it is recomputed)
    /// instead of refusing the store as corrupt.
    pub storage_fail_open: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            deployment_id: Vec::new(),
            instance_id: Vec::new(),
            default_frame_depth: mfp_core::DEFAULT_FRAME_DEPTH,
            validation_failure_threshold: 5,
            max_message_rate: 1000,
            max_payload_size: 1 << 20,
            encoding_algorithm: Algorithm::Aes256Gcm,
            supported_algorithms: vec![Algorithm::Aes256Gcm],
            max_channels_per_agent: 100,
            max_agents: 10_000,
            max_bilateral_channels: 100,
            max_storage_size_mb: 1024,
            agent_timeout: Duration::from_secs(30),
            pipeline_timeout: Duration::from_secs(5),
            storage_timeout: Duration::from_secs(10),
            identity: None,
            max_frame_depth: 32,
            mailbox_capacity: 1024,
            mailbox_max_bytes: DEFAULT_MAILBOX_MAX_BYTES,
            backpressure: Backpressure::Wait,
            rate_limit_action: RateLimitAction::Quarantine,
            dedup_window: 1000,
            dedup_ttl: Duration::from_secs(300),
            storage_fail_open: false,
        }
    }
}

/// Default for `mailbox_max_bytes`: 64 MiB per agent.
pub const DEFAULT_MAILBOX_MAX_BYTES: usize = 64 << 20;

/// Upper bound for `mailbox_capacity` and `dedup_window` (memory is reserved lazily,
/// but a typo should not make a single queue able to hold millions of messages).
pub const MAX_QUEUE_LIMIT: usize = 1 << 20;

/// Upper bound for `deployment_id` and `instance_id` lengths.
pub const MAX_ID_INPUT_LEN: usize = 1024;

fn bad(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError { field, reason: reason.into() }
}

impl RuntimeConfig {
    /// Checks every field; the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.deployment_id.len() > MAX_ID_INPUT_LEN {
            return Err(bad("deployment_id", format!("longer than {MAX_ID_INPUT_LEN} bytes")));
        }
        if self.instance_id.len() > MAX_ID_INPUT_LEN {
            return Err(bad("instance_id", format!("longer than {MAX_ID_INPUT_LEN} bytes")));
        }
        if !(MIN_FRAME_DEPTH..=MAX_FRAME_DEPTH).contains(&self.max_frame_depth) {
            return Err(bad("max_frame_depth", format!("must be in {MIN_FRAME_DEPTH}..={MAX_FRAME_DEPTH}")));
        }
        if !(MIN_FRAME_DEPTH..=self.max_frame_depth).contains(&self.default_frame_depth) {
            return Err(bad(
                "default_frame_depth",
                format!("must be in {MIN_FRAME_DEPTH}..={} (max_frame_depth)", self.max_frame_depth),
            ));
        }
        if self.validation_failure_threshold == 0 {
            return Err(bad("validation_failure_threshold", "must be at least 1"));
        }
        if self.max_payload_size > mfp_core::encoding::MAX_ENCODABLE_PAYLOAD {
            return Err(bad("max_payload_size", "exceeds what one encoded message can carry"));
        }
        if !self.supported_algorithms.contains(&self.encoding_algorithm) {
            return Err(bad("encoding_algorithm", "not in supported_algorithms"));
        }
        if self.max_channels_per_agent == 0 {
            return Err(bad("max_channels_per_agent", "must be at least 1"));
        }
        if self.max_agents == 0 {
            return Err(bad("max_agents", "must be at least 1"));
        }
        for (field, d) in [
            ("agent_timeout", self.agent_timeout),
            ("pipeline_timeout", self.pipeline_timeout),
            ("storage_timeout", self.storage_timeout),
            ("dedup_ttl", self.dedup_ttl),
        ] {
            if d.is_zero() {
                return Err(bad(field, "must be greater than zero"));
            }
            if d > Duration::from_secs(86_400 * 365) {
                return Err(bad(field, "must be at most a year"));
            }
        }
        if !(1..=MAX_QUEUE_LIMIT).contains(&self.mailbox_capacity) {
            return Err(bad("mailbox_capacity", format!("must be in 1..={MAX_QUEUE_LIMIT}")));
        }
        if self.mailbox_max_bytes == 0 || u32::try_from(self.mailbox_max_bytes).is_err() {
            return Err(bad("mailbox_max_bytes", format!("must be in 1..={}", u32::MAX)));
        }
        if !(1..=MAX_QUEUE_LIMIT).contains(&self.dedup_window) {
            return Err(bad("dedup_window", format!("must be in 1..={MAX_QUEUE_LIMIT}")));
        }
        Ok(())
    }

    /// The runtime identity this configuration gives, drawing 32 random bytes from
    /// `random` when `deployment_id` or `instance_id` is empty (as pymfp does).
    pub(crate) fn derive_identity(&self, random: impl FnOnce() -> [u8; 32]) -> RuntimeId {
        if let Some(id) = self.identity {
            return id;
        }
        if self.deployment_id.is_empty() || self.instance_id.is_empty() {
            return RuntimeId::from_bytes(random());
        }
        RuntimeId::derive(&self.deployment_id, &self.instance_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_pymfp() {
        let c = RuntimeConfig::default();
        c.validate().unwrap();
        assert_eq!(c.validation_failure_threshold, 5);
        assert_eq!(c.max_message_rate, 1000);
        assert_eq!(c.max_payload_size, 1_048_576);
        assert_eq!(c.max_channels_per_agent, 100);
        assert_eq!(c.max_agents, 10_000);
        assert_eq!(c.agent_timeout, Duration::from_secs(30));
    }

    #[test]
    fn every_bad_value_is_named() {
        type Mutation = Box<dyn Fn(&mut RuntimeConfig)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("default_frame_depth", Box::new(|c| c.default_frame_depth = 1)),
            ("default_frame_depth", Box::new(|c| c.default_frame_depth = 33)),
            ("max_frame_depth", Box::new(|c| c.max_frame_depth = 257)),
            ("validation_failure_threshold", Box::new(|c| c.validation_failure_threshold = 0)),
            ("max_channels_per_agent", Box::new(|c| c.max_channels_per_agent = 0)),
            ("max_agents", Box::new(|c| c.max_agents = 0)),
            ("agent_timeout", Box::new(|c| c.agent_timeout = Duration::ZERO)),
            ("pipeline_timeout", Box::new(|c| c.pipeline_timeout = Duration::ZERO)),
            ("mailbox_capacity", Box::new(|c| c.mailbox_capacity = 0)),
            ("mailbox_capacity", Box::new(|c| c.mailbox_capacity = MAX_QUEUE_LIMIT + 1)),
            ("mailbox_max_bytes", Box::new(|c| c.mailbox_max_bytes = 0)),
            ("mailbox_max_bytes", Box::new(|c| c.mailbox_max_bytes = u32::MAX as usize + 1)),
            ("dedup_window", Box::new(|c| c.dedup_window = 0)),
            ("encoding_algorithm", Box::new(|c| c.supported_algorithms.clear())),
            ("deployment_id", Box::new(|c| c.deployment_id = vec![0; MAX_ID_INPUT_LEN + 1])),
        ];
        for (field, mutate) in cases {
            let mut c = RuntimeConfig::default();
            mutate(&mut c);
            assert_eq!(c.validate().unwrap_err().field, field);
        }
    }

    #[test]
    fn identity_derivation() {
        let mut c = RuntimeConfig { deployment_id: b"d".to_vec(), instance_id: b"i".to_vec(), ..Default::default() };
        assert_eq!(c.derive_identity(|| [9; 32]), RuntimeId::derive(b"d", b"i"));
        c.instance_id.clear();
        assert_eq!(c.derive_identity(|| [9; 32]), RuntimeId::from_bytes([9; 32]));
        c.identity = Some(RuntimeId::from_bytes([1; 32]));
        assert_eq!(c.derive_identity(|| [9; 32]), RuntimeId::from_bytes([1; 32]));
    }
}
