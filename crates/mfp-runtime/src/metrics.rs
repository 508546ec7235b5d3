//! In-process metrics with bounded memory: counters and fixed-bucket histograms.
//!
//! No per-agent or per-channel labels exist, so memory does not grow with the number of
//! agents, channels or messages (pymfp keeps every histogram observation forever).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds in seconds of the latency buckets (pymfp's buckets).
pub const LATENCY_BUCKETS: [f64; 12] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Upper bounds in bytes of the message size buckets.
pub const SIZE_BUCKETS: [f64; 10] =
    [64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262_144.0, 1_048_576.0, 4_194_304.0, 16_777_216.0];

/// A monotonically increasing counter (on its own cache line, so counters written by
/// different threads do not slow each other down).
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Current value.
    #[must_use]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram with fixed bucket bounds (cumulative on read, like Prometheus).
#[derive(Debug)]
#[repr(align(64))]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
}

/// A histogram's values at one moment.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HistogramSnapshot {
    /// `(upper bound, cumulative count)`; the last bound is `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// Number of observations.
    pub count: u64,
    /// Sum of observations (seconds for latencies, bytes for sizes).
    pub sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum_micros: AtomicU64::new(0) }
    }

    fn observe_raw(&self, value: f64, sum_units: u64) {
        let idx = self.bounds.iter().position(|b| value <= *b).unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get(idx) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros.fetch_add(sum_units, Ordering::Relaxed);
    }

    pub(crate) fn observe_duration(&self, d: Duration) {
        self.observe_raw(d.as_secs_f64(), u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    pub(crate) fn observe_size(&self, bytes: usize) {
        self.observe_raw(bytes as f64, bytes as u64);
    }

    fn snapshot(&self, unit: f64) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            buckets.push((self.bounds.get(i).copied().unwrap_or(f64::INFINITY), cumulative));
        }
        HistogramSnapshot { buckets, count: cumulative, sum: self.sum_micros.load(Ordering::Relaxed) as f64 * unit }
    }
}

/// The runtime's metrics.
#[derive(Debug)]
#[non_exhaustive]
pub struct Metrics {
    /// Messages accepted and queued (`mfp_messages_sent_total`).
    pub messages_sent: Counter,
    /// Messages whose handler completed (`mfp_messages_received_total`).
    pub messages_delivered: Counter,
    /// Handlers that panicked.
    pub handler_panics: Counter,
    /// Handlers that exceeded the agent timeout.
    pub handler_timeouts: Counter,
    /// Frame validation failures (`mfp_validation_failures_total`).
    pub validation_failures: Counter,
    /// Decode failures.
    pub decode_failures: Counter,
    /// Agent quarantines (`mfp_quarantine_events_total{scope="agent"}`).
    pub agent_quarantines: Counter,
    /// Channel quarantines.
    pub channel_quarantines: Counter,
    /// Sends refused or delayed by the rate limit.
    pub rate_limited: Counter,
    /// Sends refused because a mailbox stayed full.
    pub mailbox_full: Counter,
    /// Retries answered from the idempotency window.
    pub duplicates_suppressed: Counter,
    /// Storage writes that failed.
    pub storage_failures: Counter,
    /// Messages sealed for agents of peer runtimes (also counted in `messages_sent`).
    pub remote_sent: Counter,
    /// Messages from peer runtimes validated, decoded and delivered.
    pub remote_received: Counter,
    /// Messages from peer runtimes received a second time (a resend after a reconnect)
    /// and dropped.
    pub remote_duplicates: Counter,
    /// Messages from peer runtimes refused (malformed, wrong peer, wrong step, failed
    /// validation or decoding).
    pub remote_rejected: Counter,
    /// Rotations of cross-runtime chains (outbound applied, inbound seen in a message).
    pub remote_rotations: Counter,
    /// Send latency, ACCEPT to queued (`mfp_pipeline_duration_seconds`).
    pub send_latency: Histogram,
    /// Handler run time.
    pub handler_duration: Histogram,
    /// Payload sizes (`mfp_message_size_bytes`).
    pub message_size: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            messages_sent: Counter::default(),
            messages_delivered: Counter::default(),
            handler_panics: Counter::default(),
            handler_timeouts: Counter::default(),
            validation_failures: Counter::default(),
            decode_failures: Counter::default(),
            agent_quarantines: Counter::default(),
            channel_quarantines: Counter::default(),
            rate_limited: Counter::default(),
            mailbox_full: Counter::default(),
            duplicates_suppressed: Counter::default(),
            storage_failures: Counter::default(),
            remote_sent: Counter::default(),
            remote_received: Counter::default(),
            remote_duplicates: Counter::default(),
            remote_rejected: Counter::default(),
            remote_rotations: Counter::default(),
            send_latency: Histogram::new(&LATENCY_BUCKETS),
            handler_duration: Histogram::new(&LATENCY_BUCKETS),
            message_size: Histogram::new(&SIZE_BUCKETS),
        }
    }
}

impl Metrics {
    /// Send latency histogram (seconds).
    #[must_use]
    pub fn send_latency(&self) -> HistogramSnapshot {
        self.send_latency.snapshot(1e-6)
    }
    /// Handler duration histogram (seconds).
    #[must_use]
    pub fn handler_duration(&self) -> HistogramSnapshot {
        self.handler_duration.snapshot(1e-6)
    }
    /// Message size histogram (bytes).
    #[must_use]
    pub fn message_size(&self) -> HistogramSnapshot {
        self.message_size.snapshot(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.send_latency.observe_duration(Duration::from_micros(500));
        m.send_latency.observe_duration(Duration::from_millis(20));
        m.send_latency.observe_duration(Duration::from_secs(60));
        let s = m.send_latency();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets.first(), Some(&(0.001, 1)));
        assert_eq!(s.buckets.iter().find(|b| b.0 == 0.025).map(|b| b.1), Some(2));
        assert_eq!(s.buckets.last(), Some(&(f64::INFINITY, 3)));
        m.message_size.observe_size(100);
        assert_eq!(m.message_size().buckets.get(1), Some(&(256.0, 1)));
        assert_eq!(m.message_size().sum, 100.0);
    }
}
