//! Orders: placing one (stock, order and outbox row in one transaction,
//! shared with the orders placed alongside it: batch.rs),
//! cancelling one (status, stock back, outbox row in one transaction),
//! listing and reading them, and their timeline.

pub mod batch;
pub mod cancel;
pub mod idempotency;
pub mod place;
pub(crate) mod routes;
pub mod store;
mod view;

use axum::{
    Router,
    routing::{get, post},
};

use crate::state::AppState;

pub use view::OrderView;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", post(routes::create).get(routes::list))
        .route("/{id}", get(routes::get_one))
        .route("/{id}/cancel", post(routes::cancel))
        .route("/{id}/events", get(routes::events))
}
