//! The admin listener: `/livez`, `/readyz` (and pymfp's `/health/live`, `/health/ready`),
//! `/metrics` in Prometheus text (no per-agent or per-channel labels; one gauge per configured
//! peer), and the operator
//! endpoints of the federation (`/federation…`, behind `admin.token`; see `operator.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::adapter::Mfp;
use crate::agents::Counters;

/// What the admin endpoints read.
pub(crate) struct AdminState {
    pub(crate) ready: AtomicBool,
    pub(crate) registry: Registry,
    /// pymfp compat peers add their own counters (`mfp_compat_*`) to `/metrics`; the
    /// operator endpoints act on the native ones.
    pub(crate) federation: FedSlot,
    /// The runtime, once it runs (the operator endpoints).
    pub(crate) mfp: std::sync::OnceLock<Arc<Mfp>>,
    /// `admin.token`: the operator endpoints answer only to it; `None`: they are off.
    pub(crate) operator_token: Option<Arc<zeroize::Zeroizing<String>>>,
}

/// The admin routes: health and metrics, and the operator endpoints (`operator.rs`).
pub(crate) fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/livez", get(live))
        .route("/health/live", get(live))
        .route("/readyz", get(ready))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/federation", get(crate::operator::status))
        .route("/federation/channels/{channel}/{action}", post(crate::operator::act))
        .with_state(state)
}

async fn live() -> &'static str {
    "ok\n"
}

async fn ready(State(s): State<Arc<AdminState>>) -> (StatusCode, &'static str) {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let mut out = String::new();
    match prometheus_client::encoding::prometheus_text::encode(&mut out, &s.registry) {
        Ok(()) => {
            let compat = s.federation.read().as_ref().and_then(|f| f.compat_prometheus());
            if let Some(text) = compat {
                // Before a terminating `# EOF` line (OpenMetrics), else at the end.
                let at = out.rfind("# EOF").unwrap_or(out.len());
                out.insert_str(at, &text);
            }
            (StatusCode::OK, [(header::CONTENT_TYPE, prometheus_client::encoding::prometheus_text::CONTENT_TYPE)], out)
        }
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            String::from("encoding failed\n"),
        ),
    }
}

/// Reads the runtime's and the server's numbers at each scrape.
pub(crate) struct MetricsCollector {
    pub(crate) mfp: std::sync::OnceLock<Arc<Mfp>>,
    pub(crate) counters: Arc<Counters>,
    /// The federation, while it runs.
    pub(crate) federation: FedSlot,
}

/// The running federation, shared by the collector and `/metrics`.
pub(crate) type FedSlot = Arc<parking_lot::RwLock<Option<Arc<crate::federation::Running>>>>;

impl std::fmt::Debug for MetricsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsCollector")
    }
}

fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    // Registered without `_total`: the encoder adds it.
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

fn histogram(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    h: &mfp_runtime::metrics::HistogramSnapshot,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    // Prometheus wants per-bucket counts here; the snapshot is cumulative.
    let mut prev = 0;
    let buckets: Vec<(f64, u64)> = h
        .buckets
        .iter()
        .map(|(b, c)| {
            let n = c.saturating_sub(prev);
            prev = *c;
            (*b, n)
        })
        .collect();
    m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(h.sum, h.count, &buckets, None)
}

impl Collector for MetricsCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let c = &self.counters;
        let ld = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        counter(&mut enc, "mfp_server_deliveries", "Messages handed to agents and acknowledged.", ld(&c.delivered))?;
        counter(
            &mut enc,
            "mfp_server_deliveries_dropped",
            "Messages dropped (webhook retries exhausted).",
            ld(&c.dropped),
        )?;
        counter(&mut enc, "mfp_server_agent_restarts", "Subprocess agents restarted.", ld(&c.restarts))?;
        counter(
            &mut enc,
            "mfp_server_agent_protocol_errors",
            "Invalid or oversized lines from subprocess agents.",
            ld(&c.protocol_errors),
        )?;
        counter(&mut enc, "mfp_server_webhook_failures", "Failed webhook delivery attempts.", ld(&c.webhook_failures))?;
        let Some(mfp) = self.mfp.get() else { return Ok(()) };
        let s = mfp.stats();
        counter(&mut enc, "mfp_messages_sent", "Messages accepted by the runtime.", s.sent)?;
        counter(
            &mut enc,
            "mfp_messages_received",
            "Messages whose delivery to the agent's handler completed.",
            s.received,
        )?;
        counter(&mut enc, "mfp_validation_failures", "Frame validation failures.", s.validation_failures)?;
        counter(&mut enc, "mfp_quarantine_events", "Agent and channel quarantines.", s.quarantines)?;
        counter(&mut enc, "mfp_handler_panics", "Agent handlers that panicked.", s.handler_panics)?;
        counter(&mut enc, "mfp_storage_failures", "Storage writes that failed.", s.storage_failures)?;
        gauge(&mut enc, "mfp_active_agents", "Bound agents.", s.agents)?;
        gauge(&mut enc, "mfp_active_channels", "Open channels.", s.channels)?;
        gauge(&mut enc, "mfp_quarantined_agents", "Quarantined agents.", s.quarantined_agents)?;
        gauge(
            &mut enc,
            "mfp_pending_messages",
            "Messages queued in the runtime or for agents.",
            s.in_flight + ld(&c.pending),
        )?;
        gauge(
            &mut enc,
            "mfp_server_mcp_inbox_messages",
            "Messages waiting in mcp agents' inboxes for an MCP host (mfp_receive).",
            ld(&c.in_inboxes),
        )?;
        histogram(&mut enc, "mfp_pipeline_duration_seconds", "Send latency, accept to queued.", &s.send_latency)?;
        histogram(&mut enc, "mfp_message_size_bytes", "Payload sizes.", &s.message_size)?;
        // Cross-runtime channels (native and pymfp peers alike).
        let r = mfp.remote_stats();
        counter(&mut enc, "mfp_remote_messages_sent", "Messages sealed for agents of peer runtimes.", r.sent)?;
        counter(
            &mut enc,
            "mfp_remote_messages_received",
            "Messages from peer runtimes validated, decoded and delivered.",
            r.received,
        )?;
        counter(
            &mut enc,
            "mfp_remote_messages_rejected",
            "Messages from peer runtimes refused (malformed, wrong peer or step, failed validation or decoding).",
            r.rejected,
        )?;
        counter(
            &mut enc,
            "mfp_remote_messages_duplicate",
            "Messages from peer runtimes received again (a resend after a reconnect) and dropped.",
            r.duplicates,
        )?;
        counter(&mut enc, "mfp_remote_rotations", "Rotations of cross-runtime chains.", r.rotations)?;
        let fed = self.federation.read().as_ref().map(|f| f.stats());
        if let Some(f) = fed {
            gauge(&mut enc, "mfp_federation_peers", "Configured peer runtimes.", f.peers)?;
            gauge(&mut enc, "mfp_federation_links_up", "Peer runtimes with a link up now.", f.links_up)?;
            // One series per configured peer: their number is the configuration's.
            let mut family = enc.encode_descriptor(
                "mfp_federation_link_up",
                "Whether the link to each configured peer runtime is up now (1) or not (0).",
                None,
                MetricType::Gauge,
            )?;
            for (peer, kind, up) in &f.links {
                let labels = [("peer", peer.as_str()), ("kind", *kind)];
                ConstGauge::new(i64::from(*up)).encode(family.encode_family(&labels)?)?;
            }
            counter(&mut enc, "mfp_federation_handshakes", "Authenticated handshakes completed.", f.handshakes)?;
            counter(
                &mut enc,
                "mfp_federation_handshake_failures",
                "Handshakes refused (unknown runtime, key mismatch, replay, malformed).",
                f.handshake_failures,
            )?;
            counter(&mut enc, "mfp_federation_received_bytes", "Bytes read from federation links.", f.bytes_in)?;
            counter(&mut enc, "mfp_federation_sent_bytes", "Bytes written to federation links.", f.bytes_out)?;
            counter(
                &mut enc,
                "mfp_federation_channels_opened",
                "Channels of federation.channels opened by this process.",
                f.channels_opened,
            )?;
            gauge(&mut enc, "mfp_federation_channels", "Cross-runtime channels with native peers.", f.channels)?;
            gauge(
                &mut enc,
                "mfp_federation_channels_suspended",
                "Cross-runtime channels with native peers suspended now (quarantined: by a recovery that could not repair them, or by an operator).",
                f.channels_suspended,
            )?;
            counter(&mut enc, "mfp_federation_resyncs", "Recoveries that resent what a peer lacked.", f.resyncs)?;
            counter(
                &mut enc,
                "mfp_federation_suspensions",
                "Recoveries that ended in suspending their channel (corruption, gap beyond the log, never sent, attempts or time exhausted).",
                f.suspensions,
            )?;
            counter(&mut enc, "mfp_federation_resets", "Channel resets completed with a peer.", f.resets)?;
        }
        Ok(())
    }
}
