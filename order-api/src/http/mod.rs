//! The HTTP surface: the router, the layers every request passes, the one
//! error shape (`error`), the extractors that speak it (`extract`), cursor
//! pagination and the handlers' state. The handlers live with their domain
//! (`auth`, `products`, `orders`); `openapi` describes them and is handed in.

pub mod error;
pub mod extract;
pub mod pagination;
pub mod state;

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::{HeaderName, HeaderValue, header},
    middleware,
    routing::get,
};
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    set_header::SetResponseHeaderLayer,
    trace::TraceLayer,
};

use crate::{auth, health, metrics, orders, products};
use error::ApiError;
use state::AppState;

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The request id's header: taken from the client or set, echoed back.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole HTTP surface. Its own function so tests can drive it.
///
/// Login reads the peer address: serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`.
/// `docs`: the OpenAPI document's routes (`openapi::router`), handed in so
/// that nothing here depends on the document that describes it.
pub fn router(state: AppState, docs: Router<AppState>) -> Router {
    let api = Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .nest("/auth", auth::router())
        .nest("/products", products::router())
        .nest("/orders", orders::router());
    let routes = Router::new()
        .nest("/api", api)
        .merge(docs)
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not accept that method",
            )
        })
        .with_state(state);
    with_http_layers(routes)
}

/// The headers every response gets unless its route set its own (OWASP's
/// REST Security Cheat Sheet): no MIME sniffing, never framed, no Referer
/// leaving with a link, and never stored by a cache, since responses carry
/// tokens (RFC 6749 5.1) or a customer's orders. Strict-Transport-Security
/// belongs to the TLS-terminating proxy (README, Security), not plain HTTP.
pub const SECURITY_HEADERS: [(HeaderName, &str); 4] = [
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::CACHE_CONTROL, "no-store"),
];

/// What every request passes through, outermost last: a request id (set,
/// then echoed on the response), a span carrying it and the matched route,
/// `requestId` in 5xx bodies, panics turned into the opaque 500, the body
/// size limit, and [`SECURITY_HEADERS`]. Its own function so tests can wrap
/// a tiny router in exactly these layers.
pub fn with_http_layers(routes: Router) -> Router {
    let routes = SECURITY_HEADERS
        .into_iter()
        .fold(routes, |routes, (name, value)| {
            routes.layer(SetResponseHeaderLayer::if_not_present(
                name,
                HeaderValue::from_static(value),
            ))
        });
    routes
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Inside the request-id middleware, so a panic's 500 gets the id too.
        .layer(CatchPanicLayer::custom(error::panic_response))
        .layer(middleware::from_fn(error::request_id_in_server_errors))
        .layer(middleware::from_fn(metrics::track_http))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let route = request
                    .extensions()
                    .get::<MatchedPath>()
                    .map_or("unmatched", MatchedPath::as_str);
                let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
                let request_id = error::request_id(request).unwrap_or("");
                let span = tracing::info_span!(
                    "request",
                    method = %request.method(),
                    route,
                    request_id,
                    trace_id = tracing::field::Empty,
                    order_id = tracing::field::Empty,
                );
                // A caller's W3C trace context is continued, not replaced.
                // `order_id` is filled in by the orders routes.
                common::telemetry::continue_trace(&span, header(common::telemetry::TRACEPARENT));
                span
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

#[cfg(test)]
mod tests {
    use axum::{
        body::Body,
        http::{Request, StatusCode},
    };
    use serde_json::Value;
    use tower::ServiceExt;

    use super::*;

    /// Status, `x-request-id` header and JSON body of one GET through the
    /// production layers.
    async fn call(
        routes: Router,
        path: &str,
        request_id: Option<&str>,
    ) -> (StatusCode, String, Value) {
        let mut request = Request::get(path);
        if let Some(id) = request_id {
            request = request.header(&REQUEST_ID, id);
        }
        let response = with_http_layers(routes)
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let status = response.status();
        let header = response
            .headers()
            .get(&REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .expect("x-request-id on every response")
            .to_owned();
        let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .expect("body");
        let body = serde_json::from_slice(&bytes).expect("a JSON body");
        (status, header, body)
    }

    async fn fails() -> ApiError {
        ApiError::internal(anyhow::anyhow!("disk on fire at /var/secret"))
    }

    async fn panics() -> &'static str {
        panic!("invariant broken: secret detail")
    }

    #[tokio::test]
    async fn a_500_body_carries_the_request_id_of_its_header_and_nothing_more() {
        let routes = Router::new().route("/fail", get(fails));
        let (status, header, body) = call(routes, "/fail", None).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["code"], "internal");
        assert!(!header.is_empty());
        assert_eq!(body["error"]["requestId"], header.as_str(), "{body}");
        assert!(!body.to_string().contains("disk on fire"), "{body}");
    }

    #[tokio::test]
    async fn a_request_id_the_client_sent_is_the_one_in_the_body() {
        let routes = Router::new().route("/fail", get(fails));
        let (_, header, body) = call(routes, "/fail", Some("client-chosen-id-42")).await;
        assert_eq!(header, "client-chosen-id-42");
        assert_eq!(body["error"]["requestId"], "client-chosen-id-42");
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_the_same_opaque_500() {
        let routes = Router::new().route("/panic", get(panics));
        let (status, header, body) = call(routes, "/panic", None).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["code"], "internal");
        assert_eq!(body["error"]["requestId"], header.as_str(), "{body}");
        assert!(!body.to_string().contains("secret detail"), "{body}");
    }

    #[tokio::test]
    async fn client_errors_keep_the_plain_shape() {
        let routes = Router::new()
            .route("/fail", get(fails))
            .fallback(|| async { ApiError::not_found("route") });
        let (status, _, body) = call(routes, "/nowhere", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "not_found");
        assert!(body["error"].get("requestId").is_none(), "{body}");
    }
}
