//! One place that sets up logging for both services.
//!
//! `LOG_FORMAT=json` gives one JSON object a line (for log shippers);
//! anything else gives readable lines. `RUST_LOG` filters, default `info`.

use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt};

/// Used when `RUST_LOG` is unset: our own lines at info, the cron
/// scheduler's per-tick chatter only when something is wrong.
pub const DEFAULT_FILTER: &str = "info,tokio_cron_scheduler=warn";

pub fn init_telemetry(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry().with(filter);
    // try_init: a second call (tests) keeps the first subscriber.
    let _ = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .try_init()
    } else {
        registry.with(fmt::layer().with_target(false)).try_init()
    };
}
