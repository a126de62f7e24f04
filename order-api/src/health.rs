use axum::Json;
use serde_json::{Value, json};

/// Liveness: cheap, touches nothing outside the process.
pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok", "service": "order-api" }))
}
