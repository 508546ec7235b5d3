//! `federation.link`, `federation.listener` and `federation.rotation` (ours): the timers of
//! native links, the limits of the native listener, when channels' chains rotate; and pymfp's `transport.*` timeouts, applied to the links
//! with pymfp peers.

use std::time::Duration;

use mfp_federation::compat_net::CompatNetConfig;
use mfp_federation::net::NetConfig;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{Problem, TransportSection, int_in, positive_secs, problem_at};

/// `federation.link:` — every key optional; a missing one keeps `NetConfig`'s default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LinkSection {
    /// `NetConfig::handshake_timeout` (5 s).
    pub(crate) handshake_timeout_seconds: Option<Spanned<f64>>,
    /// `NetConfig::read_timeout` (10 s): a started frame must arrive whole within it.
    pub(crate) read_timeout_seconds: Option<Spanned<f64>>,
    /// `NetConfig::write_timeout` (10 s): a write must make progress within it.
    pub(crate) write_timeout_seconds: Option<Spanned<f64>>,
    /// `SessionConfig::keepalive` (10 s): a Ping after this long without sending.
    pub(crate) keepalive_seconds: Option<Spanned<f64>>,
    /// `SessionConfig::idle_timeout` (30 s): the link closes after this long without
    /// receiving anything; it must exceed the keepalive of both sides.
    pub(crate) idle_timeout_seconds: Option<Spanned<f64>>,
    /// `NetConfig::dial_backoff_initial` (0.1 s, pymfp's).
    pub(crate) dial_backoff_initial_seconds: Option<Spanned<f64>>,
    /// `NetConfig::dial_backoff_max` (30 s, pymfp's).
    pub(crate) dial_backoff_max_seconds: Option<Spanned<f64>>,
}

/// `federation.rotation:` — when a cross-runtime channel's outbound chain rotates
/// (PROTOCOL §4.11); pymfp's `RotationConfig` defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RotationSection {
    /// Messages on a channel before its outbound chain rotates (1,000,000); 0: never by count.
    pub(crate) after_messages: Option<Spanned<i64>>,
    /// Seconds before it rotates (86,400); 0: never by time.
    pub(crate) after_seconds: Option<Spanned<f64>>,
}

/// `federation.listener:` — every key optional; a missing one keeps `NetConfig`'s default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ListenerSection {
    /// `NetConfig::max_connections` (256).
    pub(crate) max_connections: Option<Spanned<i64>>,
    /// `NetConfig::max_pending_handshakes` (64).
    pub(crate) max_pending_handshakes: Option<Spanned<i64>>,
    /// `NetConfig::handshakes_per_second` (100).
    pub(crate) handshakes_per_second: Option<Spanned<i64>>,
    /// `NetConfig::handshakes_per_second_per_source` (10).
    pub(crate) handshakes_per_second_per_source: Option<Spanned<i64>>,
}

/// The validated values: what a configuration changes in the native and the pymfp
/// transports' defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LinkTuning {
    pub(crate) handshake_timeout: Option<Duration>,
    pub(crate) read_timeout: Option<Duration>,
    pub(crate) write_timeout: Option<Duration>,
    pub(crate) keepalive: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) dial_backoff_initial: Option<Duration>,
    pub(crate) dial_backoff_max: Option<Duration>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_pending_handshakes: Option<usize>,
    pub(crate) handshakes_per_second: Option<u32>,
    pub(crate) handshakes_per_second_per_source: Option<u32>,
    /// `federation.rotation`.
    pub(crate) rotate_after_messages: Option<u64>,
    pub(crate) rotate_after: Option<Duration>,
    /// pymfp's `transport.connect_timeout`, `read_timeout` and `write_timeout`.
    pub(crate) compat_connect_timeout: Duration,
    pub(crate) compat_read_timeout: Duration,
    pub(crate) compat_write_timeout: Duration,
}

/// Largest count the listener limits accept (a larger one is a typo, not a limit).
const MAX_COUNT: i128 = 1_000_000;

/// Checks both sections and pymfp's `transport:` timeouts; every problem is pushed with
/// its location, and the result is only used when there is none.
pub(crate) fn validate(
    problems: &mut Vec<Problem>,
    link: &LinkSection,
    listener: &ListenerSection,
    rotation: &RotationSection,
    transport: &TransportSection,
) -> LinkTuning {
    let mut secs = |v: &Option<Spanned<f64>>, what: &str| {
        v.as_ref().map(|v| Duration::from_millis(positive_secs(problems, v, what)))
    };
    let mut t = LinkTuning {
        handshake_timeout: secs(&link.handshake_timeout_seconds, "federation.link.handshake_timeout_seconds"),
        read_timeout: secs(&link.read_timeout_seconds, "federation.link.read_timeout_seconds"),
        write_timeout: secs(&link.write_timeout_seconds, "federation.link.write_timeout_seconds"),
        keepalive: secs(&link.keepalive_seconds, "federation.link.keepalive_seconds"),
        idle_timeout: secs(&link.idle_timeout_seconds, "federation.link.idle_timeout_seconds"),
        dial_backoff_initial: secs(&link.dial_backoff_initial_seconds, "federation.link.dial_backoff_initial_seconds"),
        dial_backoff_max: secs(&link.dial_backoff_max_seconds, "federation.link.dial_backoff_max_seconds"),
        ..LinkTuning::default()
    };
    t.compat_connect_timeout =
        Duration::from_millis(positive_secs(problems, &transport.connect_timeout, "transport.connect_timeout"));
    t.compat_read_timeout =
        Duration::from_millis(positive_secs(problems, &transport.read_timeout, "transport.read_timeout"));
    t.compat_write_timeout =
        Duration::from_millis(positive_secs(problems, &transport.write_timeout, "transport.write_timeout"));

    let mut count = |v: &Option<Spanned<i64>>, what: &str| {
        v.as_ref().and_then(|v| int_in(problems, v, what, 1, MAX_COUNT)).and_then(|n| u32::try_from(n).ok())
    };
    t.max_connections = count(&listener.max_connections, "federation.listener.max_connections").map(|n| n as usize);
    t.max_pending_handshakes =
        count(&listener.max_pending_handshakes, "federation.listener.max_pending_handshakes").map(|n| n as usize);
    t.handshakes_per_second = count(&listener.handshakes_per_second, "federation.listener.handshakes_per_second");
    t.handshakes_per_second_per_source =
        count(&listener.handshakes_per_second_per_source, "federation.listener.handshakes_per_second_per_source");

    // Rotation costs a key exchange with the peer: not more often than every 1,000 messages
    // or every minute.
    if let Some(v) = &rotation.after_messages {
        if v.value == 0 || (1_000..=i64::MAX).contains(&v.value) {
            t.rotate_after_messages = u64::try_from(v.value).ok();
        } else {
            problems.push(problem_at(
                v,
                format!(
                    "federation.rotation.after_messages must be 0 (never by count) or at least 1000, not {}",
                    v.value
                ),
            ));
        }
    }
    if let Some(v) = &rotation.after_seconds {
        if v.value == 0.0 || (v.value.is_finite() && (60.0..=31_536_000.0).contains(&v.value)) {
            t.rotate_after = Some(Duration::from_secs_f64(v.value));
        } else {
            problems.push(problem_at(
                v,
                "federation.rotation.after_seconds must be 0 (never by time) or between 60 and 31536000 (a year)",
            ));
        }
    }

    // The relations between values are the transport's own rules: ask it, and place its
    // answer at the section that holds the values.
    let mut net = NetConfig::default();
    t.apply(&mut net);
    if let Err(e) = net.validate() {
        let at = [&link.idle_timeout_seconds, &link.keepalive_seconds, &link.dial_backoff_max_seconds]
            .into_iter()
            .flatten()
            .next();
        let message = format!("federation.link: {e}");
        problems.push(match at {
            Some(v) => problem_at(v, message),
            None => Problem { line: 0, column: 0, message },
        });
    }
    t
}

impl LinkTuning {
    /// Sets what the configuration names on a native transport's configuration.
    pub(crate) fn apply(&self, net: &mut NetConfig) {
        fn set<T: Copy>(to: &mut T, v: Option<T>) {
            if let Some(v) = v {
                *to = v;
            }
        }
        set(&mut net.handshake_timeout, self.handshake_timeout);
        set(&mut net.read_timeout, self.read_timeout);
        set(&mut net.write_timeout, self.write_timeout);
        set(&mut net.session.keepalive, self.keepalive);
        set(&mut net.session.idle_timeout, self.idle_timeout);
        set(&mut net.dial_backoff_initial, self.dial_backoff_initial);
        set(&mut net.dial_backoff_max, self.dial_backoff_max);
        set(&mut net.max_connections, self.max_connections);
        set(&mut net.max_pending_handshakes, self.max_pending_handshakes);
        set(&mut net.handshakes_per_second, self.handshakes_per_second);
        set(&mut net.handshakes_per_second_per_source, self.handshakes_per_second_per_source);
    }

    /// Sets the rotation triggers on a federation's configuration.
    pub(crate) fn apply_federation(&self, fed: &mut mfp_federation::federation::FederationConfig) {
        if let Some(n) = self.rotate_after_messages {
            fed.rotate_after_messages = n;
        }
        if let Some(d) = self.rotate_after {
            fed.rotate_after = d;
        }
    }

    /// Sets pymfp's `transport.*` timeouts on the transport of pymfp peers. The outbound
    /// connection is renewed before a pymfp listener with the same `read_timeout` would
    /// drop it: after two thirds of it, and at most after the default 20 s.
    pub(crate) fn apply_compat(&self, net: &mut CompatNetConfig) {
        net.connect_timeout = self.compat_connect_timeout;
        net.read_timeout = self.compat_read_timeout;
        net.write_timeout = self.compat_write_timeout;
        net.idle_renew = net.idle_renew.min(self.compat_read_timeout * 2 / 3).max(Duration::from_millis(1));
    }
}
