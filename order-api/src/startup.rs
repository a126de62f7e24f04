//! Building and running the service: the router, its state, and the relay.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::HeaderName,
    middleware,
    routing::get,
};
use tokio::{net::TcpListener, sync::Notify};
use tokio_util::sync::CancellationToken;
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

use crate::{
    auth::{self, Authenticator},
    config::ApiConfig,
    error::{self, ApiError},
    health, metrics, orders, outbox, products,
    state::AppState,
};

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How often login-limiter keys whose allowance has refilled are dropped.
const FORGET_IDLE_LOGIN_KEYS_EVERY: Duration = Duration::from_secs(60);

pub struct Application {
    listener: TcpListener,
    port: u16,
    state: AppState,
    relay: outbox::Relay,
    /// Rows the order writer hands to the relay.
    handed: tokio::sync::mpsc::Receiver<Vec<outbox::store::OutboxMessage>>,
}

impl Application {
    /// Connects to MongoDB and SQS, prepares indexes and the admin account,
    /// and binds the listener (port 0 picks a free one).
    pub async fn build(config: ApiConfig) -> anyhow::Result<Self> {
        metrics::describe();
        let within = config.startup_timeout;
        let db = common::startup::wait_for("MongoDB", within, || {
            common::mongo::connect(&config.mongo, "order-api")
        })
        .await?;
        create_indexes(&db).await.context("creating indexes")?;
        let sqs = common::sqs::client(&config.sqs).await;
        let queue_url = common::startup::wait_for("SQS", within, || {
            common::sqs::queue_url(&sqs, &config.sqs.queue_name)
        })
        .await?;
        let auth = Authenticator::new(&config.auth)?;
        if let Some(seed) = &config.admin {
            auth::users::ensure_admin(&db, seed, &auth.passwords)
                .await
                .context("creating the admin account")?;
        }
        let listener = TcpListener::bind((config.host.as_str(), config.port))
            .await
            .with_context(|| format!("binding {}:{}", config.host, config.port))?;
        let port = listener.local_addr()?.port();
        let readiness = Arc::new(common::readiness::ReadinessProbe::new(
            db.clone(),
            sqs.clone(),
            queue_url.clone(),
        ));
        let relay = outbox::Relay::new(db.clone(), sqs, queue_url, &config.outbox);
        let outbox_wake = Arc::new(Notify::new());
        let (handoff, handed) = relay.handoff(outbox_wake.clone());
        let orders = orders::batch::OrderBatcher::start(
            db.clone(),
            orders::place::ShopSettings {
                currency: config.shop.currency.clone(),
                tax_rate: config.shop.tax_rate,
                deadline: config.shop.order_deadline,
                handoff: Some(handoff),
                bulk_write_refused: Default::default(),
            },
        );
        let state = AppState {
            db,
            config: Arc::new(config),
            auth,
            outbox_wake,
            readiness,
            orders,
        };
        Ok(Application {
            listener,
            port,
            state,
            relay,
            handed,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves requests and runs the relay until `shutdown` is cancelled,
    /// then drains in-flight requests and stops the relay.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let wake = self.state.outbox_wake.clone();
        let sweep =
            outbox::relay::start_sweep(&self.state.config.outbox.sweep_schedule, wake.clone())
                .await?;
        let relay = tokio::spawn(outbox::relay::run(
            self.relay,
            self.handed,
            wake,
            shutdown.clone(),
        ));
        let expiry = common::expiry::start_sweep(
            &self.state.config.expiry_schedule,
            expiring(&self.state.db),
        )
        .await?;
        let limiter_housekeeping = tokio::spawn(auth::rate_limit::forget_idle_until_stopped(
            self.state.auth.clone(),
            FORGET_IDLE_LOGIN_KEYS_EVERY,
            shutdown.clone(),
        ));

        let server_shutdown = shutdown.clone();
        // The peer address is what login throttling keys clients by.
        let app = router(self.state).into_make_service_with_connect_info::<SocketAddr>();
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { server_shutdown.cancelled().await })
            .await
            .context("serving HTTP");

        shutdown.cancel();
        if tokio::time::timeout(Duration::from_secs(10), relay)
            .await
            .is_err()
        {
            tracing::warn!("outbox relay did not stop within 10 s");
        }
        let _ = limiter_housekeeping.await;
        common::schedule::stop(sweep, "OUTBOX_SWEEP_SCHEDULE").await;
        common::schedule::stop(expiry, common::expiry::SETTING).await;
        tracing::info!("order-api stopped");
        served
    }
}

async fn create_indexes(db: &mongodb::Database) -> mongodb::error::Result<()> {
    auth::users::create_indexes(db).await?;
    auth::tokens::create_indexes(db).await?;
    products::store::create_indexes(db).await?;
    orders::store::create_indexes(db).await?;
    orders::idempotency::create_indexes(db).await?;
    outbox::store::create_indexes(db).await?;
    Ok(())
}

/// The collections whose documents the expiry sweep deletes in time.
fn expiring(db: &mongodb::Database) -> Vec<common::expiry::Expiring> {
    vec![
        outbox::store::expiring(db),
        auth::tokens::expiring(db),
        orders::idempotency::expiring(db),
    ]
}

/// The whole HTTP surface. Its own function so tests can drive it.
///
/// Login reads the peer address: serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .nest("/auth", auth::router())
        .nest("/products", products::router())
        .nest("/orders", orders::router());
    let routes = Router::new()
        .nest("/api", api)
        .route("/metrics", get(metrics::scrape))
        .merge(crate::openapi::router())
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

/// What every request passes through, outermost last: a request id (set,
/// then echoed on the response), a span carrying it and the matched route,
/// `requestId` in 5xx bodies, panics turned into the opaque 500, and the
/// body size limit. Its own function so tests can wrap a tiny router in
/// exactly these layers.
pub fn with_http_layers(routes: Router) -> Router {
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
                let request_id = header(REQUEST_ID.as_str()).unwrap_or("");
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
