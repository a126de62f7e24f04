//! One place that sets up logging and tracing for both services.
//!
//! `LOG_FORMAT=json` gives one JSON object a line (for log shippers);
//! anything else gives readable lines. `RUST_LOG` filters, default `info`.
//!
//! Every span also lives in OpenTelemetry, so it has a W3C trace id: a
//! request's trace id is logged on its lines (`trace_id`), written into the
//! outbox row as a `traceparent`, sent with the SQS message, and picked up
//! by the processor, whose lines for that order then carry the same id.
//! Spans are exported over OTLP only when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set; otherwise the provider has no processor and nothing leaves the
//! process.

use std::collections::HashMap;

use anyhow::Context as _;
use opentelemetry::{
    Context,
    propagation::TextMapPropagator,
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt};

/// Used when `RUST_LOG` is unset: our own lines at info, the cron
/// scheduler's per-tick chatter only when something is wrong.
pub const DEFAULT_FILTER: &str = "info,tokio_cron_scheduler=warn";

/// The W3C header (and SQS message attribute) carrying the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Keeps the tracer provider alive; `shutdown` flushes spans not yet
/// exported.
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl Telemetry {
    /// Exports what is still buffered (bounded by the SDK's own timeout).
    pub fn shutdown(self) {
        if self.exporting
            && let Err(e) = self.provider.shutdown()
        {
            tracing::warn!(error = %e, "flushing traces at shutdown");
        }
    }
}

/// Installs the global subscriber: the filter, OpenTelemetry, and the log
/// formatter writing to stdout. A second call (tests) keeps the first
/// subscriber.
pub fn init_telemetry(service: &'static str, default_filter: &str) -> anyhow::Result<Telemetry> {
    let json =
        crate::config::optional("LOG_FORMAT").is_some_and(|f| f.eq_ignore_ascii_case("json"));
    init_telemetry_writing_to(service, default_filter, json, std::io::stdout)
}

/// `init_telemetry` with the log lines going to `writer` (tests capture
/// them), as JSON when `json`.
pub fn init_telemetry_writing_to<W>(
    service: &'static str,
    default_filter: &str,
    json: bool,
    writer: W,
) -> anyhow::Result<Telemetry>
where
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let endpoint = crate::config::optional("OTEL_EXPORTER_OTLP_ENDPOINT");
    let resource = Resource::builder().with_service_name(service).build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &endpoint {
        // The blocking HTTP client must not be built (or dropped) on a
        // runtime thread; the batch processor then owns it on its own thread.
        let exporter = std::thread::spawn(|| {
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("building the OTLP exporter panicked"))?
        .with_context(|| format!("OTEL_EXPORTER_OTLP_ENDPOINT {endpoint:?}"))?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let filter = crate::config::optional(EnvFilter::DEFAULT_ENV)
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let _ = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(writer),
            )
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_target(false).with_writer(writer))
            .try_init()
    };
    if let Some(endpoint) = &endpoint {
        tracing::info!(%endpoint, "exporting traces over OTLP");
    }
    Ok(Telemetry {
        provider,
        exporting: endpoint.is_some(),
    })
}

/// Makes `span` a child of the trace named by a W3C `traceparent` (an
/// incoming header or message attribute), then records the span's trace id
/// in its `trace_id` field (declared `Empty` by the caller). Without a valid
/// parent the span starts a trace of its own. Call it before anything reads
/// the span's context.
pub fn continue_trace(span: &Span, traceparent: Option<&str>) {
    if let Some(traceparent) = traceparent {
        let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
        let parent = TraceContextPropagator::new().extract(&carrier);
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
    }
    if let Some(trace_id) = trace_id(span) {
        span.record("trace_id", trace_id);
    }
}

/// The span's trace id as 32 hex digits; `None` when no tracing layer runs.
pub fn trace_id(span: &Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// The `traceparent` that makes work done elsewhere (the processor) a child
/// of `span`; `None` when no tracing layer runs.
pub fn traceparent(span: &Span) -> Option<String> {
    traceparent_of(&span.context())
}

fn traceparent_of(context: &Context) -> Option<String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// This process's name where records say who wrote them (the relay's
/// published rows, the processor's inbox): its pid and a random part, so
/// no two share one, in one process or across restarts and machines.
pub fn instance_name() -> String {
    // An ObjectId's bytes 4 to 8 are random per process, and 9 to 11 a
    // counter: no two calls share them.
    let random = bson::oid::ObjectId::new().to_hex();
    format!("{}-{}", std::process::id(), &random[8..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_through_a_span() {
        let _ = init_telemetry("test", "info");
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let span = tracing::info_span!("work", trace_id = tracing::field::Empty);
        continue_trace(&span, Some(incoming));
        assert_eq!(
            trace_id(&span).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let outgoing = traceparent(&span).expect("a traceparent");
        assert!(
            outgoing.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{outgoing}"
        );
        assert!(!outgoing.contains("00f067aa0ba902b7"), "a new span id");
    }

    #[test]
    fn garbage_starts_a_fresh_trace() {
        let _ = init_telemetry("test", "info");
        let span = tracing::info_span!("work", trace_id = tracing::field::Empty);
        continue_trace(&span, Some("not-a-traceparent"));
        let id = trace_id(&span).expect("a trace id");
        assert_eq!(id.len(), 32);
        assert_ne!(id, "0".repeat(32));
    }
}
