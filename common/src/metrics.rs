//! Prometheus metrics: one recorder per process, rendered by each service's
//! `GET /metrics`. Code counts where things happen with the `metrics`
//! macros (`counter!`, `histogram!`, `gauge!`) under the names each service
//! lists in its own `metrics` module; gauges that describe the world (the
//! outbox backlog, queue depths) are refreshed just before rendering.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Whole transactions run again after a transient error, by `operation`.
pub const TRANSACTION_RETRIES: &str = "transaction_retries_total";

/// Upper bounds, in seconds, of every `*_seconds` histogram: from a fast
/// request to a slow retry.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once (tests start several services in
/// one process; they share it) and returns the handle that renders it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = builder
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "another metrics recorder was installed first; /metrics stays empty"
                );
            }
            metrics::describe_counter!(
                TRANSACTION_RETRIES,
                "Transactions run again after a transient error, by operation"
            );
            handle
        })
        .clone()
}

/// The Prometheus text exposition of everything recorded so far.
pub fn render() -> String {
    let handle = install();
    handle.run_upkeep();
    handle.render()
}

/// The content type of `render`'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
