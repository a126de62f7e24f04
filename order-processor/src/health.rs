//! Liveness (constant), readiness (MongoDB and SQS answer) and metrics.

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use common::readiness::ReadinessProbe;
use serde_json::{Value, json};

use crate::{dlq::Queues, metrics};

#[derive(Clone)]
pub struct HealthState {
    pub probe: ReadinessProbe,
    pub sqs: aws_sdk_sqs::Client,
    pub queues: Queues,
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
    (status, Json(report.to_json("order-processor")))
}

async fn scrape(State(state): State<HealthState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, common::metrics::CONTENT_TYPE)],
        metrics::render(&state.sqs, &state.queues).await,
    )
}

pub fn router(state: HealthState) -> Router {
    Router::new()
        .route("/processor/api/health", get(health))
        .route("/processor/api/ready", get(ready))
        .route("/metrics", get(scrape))
        .with_state(state)
}
