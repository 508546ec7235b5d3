//! What the federation benchmark's two processes share: the two runtimes' identities and
//! keys (fixed, so each side can pin the other without an exchange), their configuration
//! and the network's.

use std::net::SocketAddr;
use std::time::Duration;

use mfp_core::RuntimeId;
use mfp_core::testing::SplitMix64;
use mfp_federation::federation::{FederatedPeer, FederationConfig};
use mfp_federation::net::{NetConfig, PeerConfig};
use mfp_federation::{IdentityError, IdentityKey};
use mfp_runtime::RuntimeConfig;

/// The deployment both benchmark runtimes belong to.
pub const DEPLOYMENT: &[u8] = b"mfp-bench-federation";
/// The near runtime (the benchmark program).
pub const NEAR: &[u8] = b"near";
/// The far runtime (the child process).
pub const FAR: &[u8] = b"far";
/// Frame depth of the benchmark's channels.
pub const DEPTH: usize = 4;

/// The runtime id of `instance`.
#[must_use]
pub fn runtime_id(instance: &[u8]) -> RuntimeId {
    RuntimeId::derive(DEPLOYMENT, instance)
}

/// The identity key of `instance` (derived from a fixed seed: benchmark keys, not secrets).
///
/// # Errors
/// If key generation fails.
pub fn key(instance: &[u8]) -> Result<IdentityKey, IdentityError> {
    let seed = if instance == NEAR { 0x6e65_6172 } else { 0x0066_6172 };
    IdentityKey::generate(&mut SplitMix64(seed))
}

/// A runtime configuration for `instance` with no rate limit and room for 64 KiB payloads.
#[must_use]
pub fn runtime_config(instance: &[u8]) -> RuntimeConfig {
    let mut c = RuntimeConfig::default();
    c.deployment_id = DEPLOYMENT.to_vec();
    c.instance_id = instance.to_vec();
    c.max_message_rate = 0;
    c.max_payload_size = 2 << 20;
    c.mailbox_capacity = 4096;
    c.pipeline_timeout = Duration::from_secs(60);
    c
}

/// The federation configuration of `instance`: it pins the other runtime, which it dials
/// at `peer_endpoint` if given; it listens on 127.0.0.1 (port 0) if `listen`.
///
/// # Errors
/// If the other runtime's key cannot be derived.
pub fn federation_config(
    instance: &[u8],
    listen: bool,
    peer_endpoint: Option<String>,
) -> Result<FederationConfig, IdentityError> {
    let other: &[u8] = if instance == NEAR { FAR } else { NEAR };
    let mut net = NetConfig::default();
    if listen {
        net.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    }
    net.dial_backoff_initial = Duration::from_millis(10);
    net.dial_backoff_max = Duration::from_millis(200);
    net.shutdown_timeout = Duration::from_secs(1);
    // The default in-flight limits (1,024 messages, 16 MiB).
    Ok(FederationConfig::new(net, vec![FederatedPeer::new(peer_config(other, peer_endpoint)?)]))
}

/// The environment variable through which the benchmark asks `mfp-bench-fed-node` to
/// busy-poll its link ([`mfp_federation::net::NetConfig::busy_poll`], in microseconds).
pub const BUSY_POLL_ENV: &str = "MFP_BENCH_FED_BUSY_POLL_US";

/// The busy-poll time of the benchmark's links: what [`BUSY_POLL_ENV`] says (zero if unset
/// or not a number).
#[must_use]
pub fn busy_poll_from_env() -> Duration {
    std::env::var(BUSY_POLL_ENV).ok().and_then(|v| v.parse().ok()).map_or(Duration::ZERO, Duration::from_micros)
}

/// `instance` as a peer: its runtime id, where to dial it, its pinned key.
///
/// # Errors
/// If its key cannot be derived.
pub fn peer_config(instance: &[u8], endpoint: Option<String>) -> Result<PeerConfig, IdentityError> {
    Ok(PeerConfig { runtime: runtime_id(instance), endpoint, key: key(instance)?.public() })
}
