//! One error shape for every response: `{"error": {"code", "message", "details"?}}`.
//! 5xx bodies are opaque; their cause goes to the log, inside the request's span,
//! and the body carries `requestId` (added by [`request_id_in_server_errors`]) so
//! a client's report leads to that log line.

use std::time::Duration;

use axum::{
    Json,
    body::Body,
    extract::{
        Request,
        rejection::{JsonRejection, PathRejection},
    },
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use serde::Serialize;
use tower_http::request_id::RequestId;
use utoipa::ToSchema;

/// Boxed: handlers return `Result<_, ApiError>` everywhere, and the error
/// path should not make every `Ok` bigger.
#[derive(Debug)]
pub struct ApiError(Box<ErrorBody>);

#[derive(Debug)]
struct ErrorBody {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Option<Value>,
    /// Whole seconds for the `Retry-After` header.
    retry_after: Option<u64>,
    /// Logged, never sent.
    source: Option<anyhow::Error>,
}

/// Set on 5xx responses built from an [`ApiError`]: the JSON body, kept so
/// the request-id middleware can add `requestId` without re-parsing bytes.
#[derive(Debug, Clone)]
struct ServerErrorBody(Value);

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError(Box::new(ErrorBody {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after: None,
            source: None,
        }))
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.0.details = Some(details);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    pub fn code(&self) -> &'static str {
        self.0.code
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "your account may not do this",
        )
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut error = Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
        error.0.retry_after = Some(2);
        error
    }

    /// 429 with `Retry-After` rounded up to whole seconds (at least 1, so a
    /// client that honours it does not come straight back).
    pub fn rate_limited(retry_after: Duration, message: impl Into<String>) -> Self {
        let seconds = retry_after
            .as_secs()
            .saturating_add(u64::from(retry_after.subsec_nanos() > 0))
            .max(1);
        let mut error = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
            .with_details(json!({ "retryAfterSeconds": seconds }));
        error.0.retry_after = Some(seconds);
        error
    }

    pub fn internal(source: anyhow::Error) -> Self {
        let mut error = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "something went wrong on our side; it has been logged",
        );
        error.0.source = Some(source);
        error
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.0.status, self.0.code, self.0.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = *self.0;
        if let Some(source) = &error.source {
            tracing::error!(error = ?source, status = %error.status, "request failed");
        } else if error.status.is_server_error() {
            tracing::warn!(status = %error.status, message = %error.message, "request refused");
        }
        let mut body = json!({ "code": error.code, "message": error.message });
        if let Some(details) = error.details {
            body["details"] = details;
        }
        let body = json!({ "error": body });
        let mut response = (error.status, Json(&body)).into_response();
        if let Some(seconds) = error.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if error.status.is_server_error() {
            response.extensions_mut().insert(ServerErrorBody(body));
        }
        response
    }
}

/// Middleware: a 5xx body built from an [`ApiError`] gets `error.requestId`,
/// the same id as the `x-request-id` header and the log line's span, so a
/// client quoting it leads straight to the cause. Must run inside the layer
/// that assigns the request id.
pub async fn request_id_in_server_errors(request: Request, next: Next) -> Response {
    let request_id = request_id(&request).map(str::to_owned);
    let mut response = next.run(request).await;
    let (Some(request_id), Some(ServerErrorBody(mut body))) = (
        request_id,
        response.extensions_mut().remove::<ServerErrorBody>(),
    ) else {
        return response;
    };
    body["error"]["requestId"] = Value::String(request_id);
    // The length changed; hyper recomputes it from the new body.
    response.headers_mut().remove(header::CONTENT_LENGTH);
    *response.body_mut() = Body::from(body.to_string());
    response
}

/// The id tower-http's `SetRequestIdLayer` gave the request (the client's
/// `x-request-id`, or a new UUID).
pub fn request_id(request: &Request) -> Option<&str> {
    request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
}

/// For tower-http's `CatchPanicLayer`: a panicking handler answers the same
/// opaque 500 as any other failure, and the panic message goes to the log.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned());
    ApiError::internal(anyhow::anyhow!("handler panicked: {message}")).into_response()
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::internal(e)
    }
}

impl From<mongodb::error::Error> for ApiError {
    /// The API's column of `common::mongo::errors`' table.
    fn from(e: mongodb::error::Error) -> Self {
        use common::mongo::Failure;
        match common::mongo::classify(&e) {
            // Before "unavailable": a commit cut off by a network error is
            // also unavailable, but its write may have landed, and a 503
            // would tell the client it did not.
            Failure::OutcomeUnknown => {
                tracing::error!(error = %e, "a commit's outcome is unknown");
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "outcome_unknown",
                    "the database did not confirm whether this change was made; retrying with the same Idempotency-Key is safe, otherwise check before retrying",
                )
            }
            Failure::Unavailable
                if e.get_custom::<common::mongo::DeadlineBeforeCommit>()
                    .is_some() =>
            {
                tracing::warn!(operation_limit = ?common::mongo::REQUEST_WRITE_DEADLINE, "a write gave up before its commit");
                ApiError::unavailable(
                    "the database is too busy to make this change now; nothing was written; retry shortly",
                )
            }
            Failure::Unavailable => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::unavailable("the database is unavailable; retry shortly")
            }
            Failure::FormRefused | Failure::Other => ApiError::internal(e.into()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "validation_failed",
            _ => "malformed_json",
        };
        ApiError::new(status, code, rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::bad_request("invalid_path", rejection.body_text())
    }
}

impl From<validator::ValidationErrors> for ApiError {
    fn from(errors: validator::ValidationErrors) -> Self {
        let details: serde_json::Map<String, Value> = errors
            .field_errors()
            .into_iter()
            .map(|(field, errs)| {
                let messages: Vec<Value> = errs
                    .iter()
                    .map(|e| {
                        Value::String(
                            e.message
                                .as_ref()
                                .map_or_else(|| e.code.to_string(), ToString::to_string),
                        )
                    })
                    .collect();
                (field.to_string(), Value::Array(messages))
            })
            .collect();
        ApiError::unprocessable("validation_failed", "some fields are invalid")
            .with_details(Value::Object(details))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The one error shape every 4xx/5xx response has.
#[derive(Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail {
    /// Stable, machine-readable: `insufficient_stock`, `validation_failed`, ...
    pub code: String,
    /// For humans.
    pub message: String,
    /// Per-field messages (422) or the facts behind the refusal (409).
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
    /// On 5xx: the id also logged with the cause, and sent as `x-request-id`.
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}
