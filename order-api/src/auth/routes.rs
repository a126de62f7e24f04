use std::net::SocketAddr;

use axum::{
    Json as JsonResponse,
    extract::{ConnectInfo, State},
    http::StatusCode,
    response::IntoResponse,
};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use bson::{DateTime, oid::ObjectId};
use common::domain::EmailAddress;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use validator::Validate;

use super::{
    AuthUser, Role, User,
    tokens::{self, Rotation},
    users::{self, UserView},
};
use crate::{
    http::error::{ApiError, ApiResult},
    http::extract::Json,
    http::state::AppState,
};

pub const REFRESH_COOKIE: &str = "refresh_token";

fn valid_username(username: &str) -> Result<(), validator::ValidationError> {
    let ok = username
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(validator::ValidationError::new("username")
            .with_message("only letters, digits, '_', '.' and '-'".into()))
    }
}

fn parse_email(raw: &str) -> Result<EmailAddress, validator::ValidationError> {
    EmailAddress::parse(raw)
        .map_err(|e| validator::ValidationError::new("email").with_message(e.to_string().into()))
}

fn valid_email(raw: &str) -> Result<(), validator::ValidationError> {
    parse_email(raw).map(drop)
}

#[derive(Debug, Deserialize, Validate, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// 3 to 32 of letters, digits, `_`, `.`, `-`; unique.
    #[validate(
        length(min = 3, max = 32, message = "must be 3 to 32 characters"),
        custom(function = "valid_username")
    )]
    #[schema(pattern = "^[A-Za-z0-9_.-]{3,32}$")]
    username: String,
    /// Kept lowercase; refused unless an email can be sent to it.
    #[validate(custom(function = "valid_email"))]
    #[schema(format = Email, max_length = 254)]
    email: String,
    /// `crate::config::PASSWORD_LENGTH`: the admin's password is held to it too.
    #[validate(length(min = 8, max = 128, message = "must be 8 to 128 characters"))]
    #[schema(min_length = 8, max_length = 128)]
    password: String,
}

#[utoipa::path(post, path = "/api/auth/register", tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered", body = crate::auth::users::UserView),
        (status = 409, description = "`account_exists`", body = crate::http::error::ErrorResponse),
        (status = 422, description = "Invalid fields, per field in `details`", body = crate::http::error::ErrorResponse),
    ))]
pub async fn register(
    State(state): State<AppState>,
    Json(body): Json<RegisterRequest>,
) -> ApiResult<impl IntoResponse> {
    let password_hash = state
        .auth
        .passwords
        .hash(SecretString::from(body.password))
        .await?;
    // Validated already; parsed here into what the account keeps.
    let email = parse_email(&body.email).map_err(|e| {
        let mut errors = validator::ValidationErrors::new();
        errors.add("email", e);
        ApiError::from(errors)
    })?;
    let user = User {
        id: ObjectId::new(),
        username: body.username,
        email,
        password_hash,
        role: Role::Customer,
        created_at: DateTime::now(),
    };
    match users::insert(&state.db, &user).await {
        Ok(()) => Ok((StatusCode::CREATED, JsonResponse(UserView::from(&user)))),
        Err(e) if common::mongo::is_duplicate_key(&e) => Err(ApiError::conflict(
            "account_exists",
            "an account with this email or username already exists",
        )),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize, Validate, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[validate(length(min = 1, max = 320))]
    #[schema(min_length = 1, max_length = 320)]
    email: String,
    #[validate(length(min = 1, max = 128))]
    #[schema(min_length = 1, max_length = 128)]
    password: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    refresh_token: String,
    user: UserView,
}

/// Throttled per client address and per account before any password work,
/// so guessing costs the guesser time and the server nothing.
#[utoipa::path(post, path = "/api/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Tokens; the refresh token also as an HttpOnly SameSite=Strict cookie", body = TokenResponse),
        (status = 401, description = "Wrong email or password (the same answer either way)", body = crate::http::error::ErrorResponse),
        (status = 422, description = "Invalid fields", body = crate::http::error::ErrorResponse),
        (status = 429, description = "Too many attempts for this address or account; see `Retry-After`", body = crate::http::error::ErrorResponse),
    ))]
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    Json(body): Json<LoginRequest>,
) -> ApiResult<impl IntoResponse> {
    if let Err(throttled) = state.auth.login_limiter.check(peer.ip(), &body.email) {
        tracing::warn!(client = %peer.ip(), retry_after = ?throttled.retry_after, "login throttled");
        return Err(ApiError::rate_limited(
            throttled.retry_after,
            "too many login attempts; retry later",
        ));
    }
    let user = users::find_by_email(&state.db, &body.email).await?;
    let stored_hash = user.as_ref().map(|u| u.password_hash.clone());
    // Same work whether or not the account exists: no user enumeration.
    let verified = state
        .auth
        .passwords
        .verify(SecretString::from(body.password), stored_hash)
        .await;
    let Some(user) = user.filter(|_| verified) else {
        return Err(ApiError::unauthorized("email or password is incorrect"));
    };
    let refresh = tokens::issue_refresh(&state.db, user.id, state.auth.tokens.refresh_ttl).await?;
    token_response(&state, jar, &user, refresh)
}

#[derive(Debug, Default, Deserialize, Validate, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefreshRequest {
    #[validate(length(min = 1, max = 256))]
    #[schema(min_length = 1, max_length = 256)]
    refresh_token: Option<String>,
}

/// Body is optional: the refresh token comes from the cookie or the body.
#[utoipa::path(post, path = "/api/auth/refresh", tag = "auth",
    request_body(content = Option<RefreshRequest>, description = "Optional: the refresh token may come from the cookie instead"),
    responses(
        (status = 200, description = "A new pair; the presented refresh token is spent", body = TokenResponse),
        (status = 401, description = "Invalid, expired or reused refresh token (reuse revokes its whole family)", body = crate::http::error::ErrorResponse),
    ))]
pub async fn refresh(
    State(state): State<AppState>,
    jar: CookieJar,
    body: Option<Json<RefreshRequest>>,
) -> ApiResult<impl IntoResponse> {
    let presented = presented_refresh_tokens(&jar, body)
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::unauthorized("no refresh token in the cookie or the body"))?;
    match tokens::rotate_refresh(&state.db, &presented, state.auth.tokens.refresh_ttl).await? {
        Rotation::Rotated { user_id, token } => {
            let user = users::find_by_id(&state.db, user_id)
                .await?
                .ok_or_else(|| ApiError::unauthorized("account no longer exists"))?;
            token_response(&state, jar, &user, token)
        }
        Rotation::Reused => Err(ApiError::unauthorized(
            "refresh token already used; all sessions from that login are revoked",
        )),
        Rotation::Invalid => Err(ApiError::unauthorized("invalid or expired refresh token")),
    }
}

/// The refresh tokens a request carries: the body's first, then the cookie's.
fn presented_refresh_tokens(jar: &CookieJar, body: Option<Json<RefreshRequest>>) -> Vec<String> {
    let from_body = body.and_then(|Json(b)| b.refresh_token);
    let from_cookie = jar
        .get(REFRESH_COOKIE)
        .map(|c| c.value().to_string())
        .filter(|v| !v.is_empty());
    let mut tokens: Vec<String> = from_body.into_iter().chain(from_cookie).collect();
    tokens.dedup();
    tokens
}

/// Ends the session: every refresh token presented (body and cookie) is
/// revoked together with its family, and the cookie is cleared. Always 204,
/// even with an unknown, spent or absent token: the client asked to hold no
/// session and now holds none, and the answer tells nobody whether a token
/// was live.
#[utoipa::path(post, path = "/api/auth/logout", tag = "auth",
    request_body(content = Option<RefreshRequest>, description = "Optional: the refresh token may come from the cookie instead"),
    responses(
        (status = 204, description = "The refresh token (and its family) revoked, the cookie cleared; always 204"),
    ))]
pub async fn logout(
    State(state): State<AppState>,
    jar: CookieJar,
    body: Option<Json<RefreshRequest>>,
) -> ApiResult<impl IntoResponse> {
    for token in presented_refresh_tokens(&jar, body) {
        if let Some(revoked) = tokens::revoke_family(&state.db, &token).await? {
            tracing::info!(user_id = %revoked.user_id, family = %revoked.family_id, "logged out");
        }
    }
    let mut cleared = refresh_cookie(String::new(), state.auth.cookie_secure);
    cleared.make_removal();
    Ok((StatusCode::NO_CONTENT, jar.add(cleared)))
}

/// The caller's own account, as the API shows users (never the hash).
#[utoipa::path(get, path = "/api/auth/me", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = crate::auth::users::UserView),
        (status = 401, description = "Missing or invalid token", body = crate::http::error::ErrorResponse),
    ))]
pub async fn me(
    State(state): State<AppState>,
    user: AuthUser,
) -> ApiResult<JsonResponse<UserView>> {
    users::find_by_id(&state.db, user.id)
        .await?
        .map(|u| JsonResponse(UserView::from(&u)))
        .ok_or_else(|| ApiError::unauthorized("account no longer exists"))
}

/// Every refresh cookie, set or cleared, has the same attributes: a browser
/// only replaces (or removes) a cookie whose name, path and domain match.
fn refresh_cookie(value: String, secure: bool) -> Cookie<'static> {
    Cookie::build((REFRESH_COOKIE, value))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/api/auth")
        .secure(secure)
        .build()
}

fn token_response(
    state: &AppState,
    jar: CookieJar,
    user: &User,
    refresh_token: String,
) -> ApiResult<impl IntoResponse + use<>> {
    let issuer = &state.auth.tokens;
    let access_token = issuer.issue_access(user.id, user.role, &user.email, &user.username)?;
    let mut cookie = refresh_cookie(refresh_token.clone(), state.auth.cookie_secure);
    cookie.set_max_age(time_from_std(issuer.refresh_ttl));
    Ok((
        jar.add(cookie),
        JsonResponse(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: issuer.access_ttl.as_secs(),
            refresh_token,
            user: UserView::from(user),
        }),
    ))
}

fn time_from_std(d: std::time::Duration) -> time::Duration {
    time::Duration::seconds(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
