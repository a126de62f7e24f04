//! Liveness (constant) and readiness (MongoDB and SQS answer) on the health
//! port; `GET /metrics` on a listener of its own (`PROCESSOR_METRICS_ADDR`).

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use common::readiness::ReadinessProbe;
use serde_json::{Value, json};

use crate::{
    dlq::Queues,
    email::{BreakerState, Policy},
    metrics,
};

#[derive(Clone)]
pub struct HealthState {
    pub probe: ReadinessProbe,
    pub db: mongodb::Database,
    pub sqs: aws_sdk_sqs::Client,
    pub queues: Queues,
    pub policy: Policy,
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok", "service": "order-processor" }))
}

async fn ready(State(state): State<HealthState>) -> (StatusCode, Json<Value>) {
    let report = state.probe.check().await;
    let status = if report.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = report.to_json("order-processor");
    body["email"] = email_detail(&state.policy);
    (status, Json(body))
}

/// The email worker's state. A mail server that is down or refuses does not make
/// the processor unready: orders are still processed, only email waits, and
/// this names the provider and its reply.
fn email_detail(policy: &Policy) -> Value {
    let report = policy.report();
    let mut detail = json!({ "state": report.state.as_str(), "provider": report.provider });
    if report.state != BreakerState::Closed {
        detail["reason"] = json!(report.reason);
        detail["nextProbeInSecs"] =
            json!(report.next_probe_in.map(|d| d.as_secs_f64()).unwrap_or(0.0));
    }
    detail
}

async fn scrape(State(state): State<HealthState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, common::metrics::CONTENT_TYPE)],
        metrics::render(&state.db, &state.sqs, &state.queues).await,
    )
}

pub fn router(state: HealthState) -> Router {
    Router::new()
        .route("/processor/api/health", get(health))
        .route("/processor/api/ready", get(ready))
        .with_state(state)
}

/// The metrics listener's routes: `GET /metrics` only, never on the health
/// port a load balancer or anyone routed to it may reach.
pub fn metrics_router(state: HealthState) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(state)
}
