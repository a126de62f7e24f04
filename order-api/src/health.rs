use axum::Json;
use serde_json::{Value, json};

/// Liveness: cheap, touches nothing outside the process.
#[utoipa::path(get, path = "/api/health", tag = "health",
    responses((status = 200, description = "The process is up", body = serde_json::Value)))]
pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok", "service": "order-api" }))
}
