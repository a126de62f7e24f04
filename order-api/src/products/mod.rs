//! The catalogue: admins add and change products (or seed them from a file);
//! anyone may browse.

pub mod requests;
pub(crate) mod routes;
pub mod seed;
pub mod store;

use axum::{Router, routing::get};

use crate::http::state::AppState;

pub use store::ProductView;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(routes::list).post(routes::create))
        .route("/{id}", get(routes::get_one).patch(routes::update))
}
