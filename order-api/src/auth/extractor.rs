use axum::{extract::FromRequestParts, http::request::Parts};
use bson::oid::ObjectId;

use super::Role;
use crate::{http::error::ApiError, http::state::AppState};

/// The caller, proven by a valid `Authorization: Bearer <access token>`.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: ObjectId,
    pub role: Role,
    /// The account's email, from the token (`None` in an older token).
    pub email: Option<common::domain::EmailAddress>,
    /// The account's username, from the token (`None` in an older token).
    pub name: Option<String>,
}

impl AuthUser {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden())
        }
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer <token>`"))?;
        let claims = state
            .auth
            .tokens
            .verify_access(token)
            .ok_or_else(|| ApiError::unauthorized("invalid or expired access token"))?;
        let id = ObjectId::parse_str(&claims.sub)
            .map_err(|_| ApiError::unauthorized("invalid or expired access token"))?;
        Ok(AuthUser {
            id,
            role: claims.role,
            email: claims.email,
            name: claims.name,
        })
    }
}
