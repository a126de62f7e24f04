//! Orders: placing them (stock, order and outbox row in one transaction for
//! a batch of one or more: place.rs; the queue that forms the batches:
//! batch.rs),
//! cancelling one (status, stock back, outbox row in one transaction),
//! listing and reading them, and their timeline.

pub mod batch;
pub mod cancel;
pub mod idempotency;
pub mod place;
pub(crate) mod routes;
mod view;

use axum::{
    Router,
    extract::{RawPathParams, Request},
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
};

use crate::http::state::AppState;

pub use view::OrderView;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", post(routes::create).get(routes::list))
        .route("/{id}", get(routes::get_one))
        .route("/{id}/cancel", post(routes::cancel))
        .route("/{id}/events", get(routes::events))
        .route_layer(middleware::from_fn(name_the_order))
}

/// Puts the `{id}` of an order route on the request's span, so every line
/// logged while serving it carries `order_id`.
async fn name_the_order(params: RawPathParams, request: Request, next: Next) -> Response {
    if let Some((_, id)) = params.iter().find(|(name, _)| *name == "id") {
        tracing::Span::current().record("order_id", id);
    }
    next.run(request).await
}
