//! Liveness (constant) and readiness (MongoDB and SQS answer).

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use common::readiness::ReadinessProbe;
use serde_json::{Value, json};

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok", "service": "order-processor" }))
}

async fn ready(State(probe): State<ReadinessProbe>) -> (StatusCode, Json<Value>) {
    let report = probe.check().await;
    let status = if report.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report.to_json("order-processor")))
}

pub fn router(probe: ReadinessProbe) -> Router {
    Router::new()
        .route("/processor/api/health", get(health))
        .route("/processor/api/ready", get(ready))
        .with_state(probe)
}
