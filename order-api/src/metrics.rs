//! What order-api counts, and `GET /metrics` in the Prometheus text format
//! on a listener of its own (`API_METRICS_ADDR`).
//!
//! Counters and histograms are recorded where things happen; the outbox
//! backlog is read from MongoDB at each scrape (bounded by a short timeout),
//! so it is right even when this instance's relay is not the one publishing.

use std::time::{Duration, Instant};

use ::metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};

use crate::{http::state::AppState, outbox};

pub const HTTP_REQUESTS: &str = "http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";
pub const ORDERS_CREATED: &str = "orders_created_total";
pub const ORDERS_CANCELLED: &str = "orders_cancelled_total";
pub const ORDERS_REFUSED: &str = "orders_refused_total";
pub use common::metrics::BATCH_FALLBACKS as ORDER_BATCH_FALLBACKS;
pub const OUTBOX_PENDING: &str = "outbox_pending_rows";
pub const OUTBOX_OLDEST_PENDING_AGE: &str = "outbox_oldest_pending_age_seconds";
pub const OUTBOX_BACKLOG_READ: &str = "outbox_backlog_read_ok";
pub const OUTBOX_PUBLISHED: &str = "outbox_published_total";
pub const OUTBOX_PUBLISH_FAILURES: &str = "outbox_publish_failures_total";
pub const OUTBOX_PUBLISH_LATENCY: &str = "outbox_publish_latency_seconds";

/// How long a scrape waits for the backlog query.
const BACKLOG_TIMEOUT: Duration = Duration::from_secs(1);

/// Installs the recorder and gives every metric its help text, so a scrape
/// shows what each one means before it has a value.
pub fn describe() {
    common::metrics::install();
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by method, matched route and status"
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        ::metrics::Unit::Seconds,
        "Time to answer an HTTP request, by method, matched route and status"
    );
    describe_counter!(
        ORDERS_CREATED,
        "Orders placed (committed with their outbox row)"
    );
    describe_counter!(ORDERS_CANCELLED, "Orders cancelled (stock restored)");
    describe_counter!(
        ORDERS_REFUSED,
        "Order requests refused, by reason (insufficient_stock, unknown_product, product_inactive, total_too_large, timed_out, database)"
    );
    describe_counter!(
        ORDER_BATCH_FALLBACKS,
        "Order batches written another way, by reason (bulk_write_refused: MongoDB or its featureCompatibilityVersion below 8.0, batches go one statement at a time from then on; one_order_failed: the batch ran again without the order that failed it)"
    );
    describe_gauge!(OUTBOX_PENDING, "Outbox rows not yet published to SQS");
    describe_gauge!(
        OUTBOX_OLDEST_PENDING_AGE,
        ::metrics::Unit::Seconds,
        "Age of the oldest unpublished outbox row (0 when none)"
    );
    describe_gauge!(
        OUTBOX_BACKLOG_READ,
        "1 when the last scrape could read the outbox backlog, 0 when MongoDB did not answer in time"
    );
    describe_counter!(OUTBOX_PUBLISHED, "Outbox rows SQS accepted, by event type");
    describe_counter!(
        OUTBOX_PUBLISH_FAILURES,
        "Outbox rows not published, by reason (send_failed, refused, lease_lost)"
    );
    describe_histogram!(
        OUTBOX_PUBLISH_LATENCY,
        ::metrics::Unit::Seconds,
        "From the order's commit to SQS accepting its event"
    );
    // Known series start at zero, so rates and dashboards show 0, not
    // "no data", before the first event.
    counter!(ORDERS_CREATED).increment(0);
    counter!(ORDERS_CANCELLED).increment(0);
    for reason in [
        "insufficient_stock",
        "unknown_product",
        "product_inactive",
        "total_too_large",
        "timed_out",
        "database",
    ] {
        counter!(ORDERS_REFUSED, "reason" => reason).increment(0);
    }
    for reason in ["bulk_write_refused", "one_order_failed"] {
        counter!(ORDER_BATCH_FALLBACKS, "reason" => reason).increment(0);
    }
    for event_type in ["order.created", "order.cancelled"] {
        counter!(OUTBOX_PUBLISHED, "event_type" => event_type).increment(0);
    }
    for reason in ["send_failed", "refused", "lease_lost"] {
        counter!(OUTBOX_PUBLISH_FAILURES, "reason" => reason).increment(0);
    }
    for operation in ["place_order_batch", "cancel_order"] {
        counter!(common::metrics::TRANSACTION_RETRIES, "operation" => operation).increment(0);
    }
}

/// Counts and times every request under its matched route (a template, so
/// ids do not explode the label set; unmatched paths share one label).
pub async fn track_http(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    let labels = [
        ("method", method),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    counter!(HTTP_REQUESTS, &labels).increment(1);
    histogram!(HTTP_REQUEST_DURATION, &labels).record(started.elapsed());
    response
}

/// The metrics listener's routes: `GET /metrics` only. Served on
/// `API_METRICS_ADDR`, never on the public port, so a shop's clients cannot
/// read its order rates and backlog.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(state)
}

/// Prometheus metrics of this instance (the outbox backlog is the shared
/// database's).
async fn scrape(State(state): State<AppState>) -> Response {
    match tokio::time::timeout(BACKLOG_TIMEOUT, outbox::store::backlog(&state.db)).await {
        Ok(Ok(backlog)) => {
            gauge!(OUTBOX_PENDING).set(backlog.pending as f64);
            gauge!(OUTBOX_OLDEST_PENDING_AGE).set(backlog.oldest_age.as_secs_f64());
            gauge!(OUTBOX_BACKLOG_READ).set(1.0);
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "reading the outbox backlog for /metrics");
            gauge!(OUTBOX_BACKLOG_READ).set(0.0);
        }
        Err(_) => {
            tracing::warn!(timeout = ?BACKLOG_TIMEOUT, "reading the outbox backlog for /metrics timed out");
            gauge!(OUTBOX_BACKLOG_READ).set(0.0);
        }
    }
    (
        [(header::CONTENT_TYPE, common::metrics::CONTENT_TYPE)],
        common::metrics::render(),
    )
        .into_response()
}
