use axum::Json;
use serde_json::{Value, json};

/// Readiness: MongoDB and SQS answer (each within 2 s); 503 names what is down.
#[utoipa::path(get, path = "/api/ready", tag = "health",
    responses(
        (status = 200, description = "MongoDB and SQS answer", body = serde_json::Value),
        (status = 503, description = "Something is down; `checks` says what", body = serde_json::Value),
    ))]
pub async fn ready(
    axum::extract::State(state): axum::extract::State<crate::http::state::AppState>,
) -> (axum::http::StatusCode, Json<Value>) {
    let report = state.readiness.check().await;
    let status = if report.is_ready() {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report.to_json("order-api")))
}

/// Liveness: cheap, touches nothing outside the process.
#[utoipa::path(get, path = "/api/health", tag = "health",
    responses((status = 200, description = "The process is up", body = serde_json::Value)))]
pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok", "service": "order-api" }))
}
