//! Prometheus metrics: one recorder per process, rendered by each service's
//! `GET /metrics`. Code counts where things happen with the `metrics`
//! macros (`counter!`, `histogram!`, `gauge!`) under the names each service
//! lists in its own `metrics` module; gauges that describe the world (the
//! outbox backlog, queue depths) are refreshed just before rendering.

use std::{sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Whole transactions run again after a transient error, by `operation`.
pub const TRANSACTION_RETRIES: &str = "transaction_retries_total";

/// Batches written another way, by `reason` (`bulk_write_refused`: see
/// `mongo::bulk`; order-api adds its own reasons).
pub const BATCH_FALLBACKS: &str = "order_batch_fallbacks_total";

/// Commands sent to MongoDB, by `command` and `collection`.
pub const MONGODB_COMMANDS: &str = "mongodb_commands_total";

/// Upper bounds, in seconds, of every `*_seconds` histogram: from a fast
/// request to a slow retry.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often recorded histogram samples are folded into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

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
            // A recorder built this way holds every histogram sample until
            // something runs its upkeep; without it, a process nobody
            // scrapes grows by each request's samples (measured: order-api
            // 46.9 -> 66.2 MiB over a 10-minute soak, 50,400 orders).
            // `PrometheusBuilder::install` would spawn this task but also
            // its own HTTP listener; /metrics is served by each service.
            let upkept = handle.clone();
            if let Err(e) = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkept.run_upkeep();
                    }
                })
            {
                tracing::warn!(error = %e, "could not start the metrics upkeep thread; histograms drain only when /metrics is read");
            }
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "another metrics recorder was installed first; /metrics stays empty"
                );
            }
            metrics::describe_counter!(
                TRANSACTION_RETRIES,
                "Transactions run again after a transient error, by operation"
            );
            metrics::describe_counter!(
                MONGODB_COMMANDS,
                "Commands sent to MongoDB (round trips), by command and the collection it names"
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
