//! The catalogue: admins add products; anyone may browse.

mod routes;
pub mod store;

use axum::{Router, routing::get};

use crate::state::AppState;

pub use store::ProductView;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(routes::list).post(routes::create))
        .route("/{id}", get(routes::get_one))
}
