//! Orders: placing one (stock, order and outbox row in one transaction) and
//! reading it back.

pub mod place;
mod routes;
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
        .route("/", post(routes::create))
        .route("/{id}", get(routes::get_one))
}
