//! Accounts and tokens: registration, login (throttled), refresh-token
//! rotation, logout, and the `AuthUser` extractor every protected route takes.

mod extractor;
pub mod password;
pub mod rate_limit;
pub(crate) mod routes;
pub mod tokens;
pub mod users;

use std::sync::Arc;

use axum::{
    Router,
    routing::{get, post},
};

pub use extractor::AuthUser;
pub use password::PasswordHasher;
pub use rate_limit::LoginLimiter;
pub use tokens::{AccessClaims, TokenIssuer};
pub use users::{Role, User};

use crate::{config::AuthConfig, http::state::AppState};

/// Everything needed to turn credentials into tokens and tokens into users.
pub struct Authenticator {
    pub passwords: PasswordHasher,
    pub tokens: TokenIssuer,
    pub cookie_secure: bool,
    pub login_limiter: LoginLimiter,
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Authenticator {
            passwords: PasswordHasher::new(config.max_concurrent_hashes)?,
            tokens: TokenIssuer::new(config),
            cookie_secure: config.cookie_secure,
            login_limiter: LoginLimiter::new(config.login_rate),
        }))
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/register", post(routes::register))
        .route("/login", post(routes::login))
        .route("/refresh", post(routes::refresh))
        .route("/logout", post(routes::logout))
        .route("/me", get(routes::me))
}
