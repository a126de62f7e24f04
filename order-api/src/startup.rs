//! Building and running the service: the router, its state, and the relay.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::HeaderName,
    routing::get,
};
use tokio::{net::TcpListener, sync::Notify};
use tokio_util::sync::CancellationToken;
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

use crate::{
    auth::{self, Authenticator},
    config::ApiConfig,
    error::ApiError,
    health, orders, outbox, products,
    state::AppState,
};

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub struct Application {
    listener: TcpListener,
    port: u16,
    state: AppState,
    relay: outbox::Relay,
}

impl Application {
    /// Connects to MongoDB and SQS, prepares indexes and the admin account,
    /// and binds the listener (port 0 picks a free one).
    pub async fn build(config: ApiConfig) -> anyhow::Result<Self> {
        let db = common::mongo::connect(&config.mongo, "order-api").await?;
        create_indexes(&db).await.context("creating indexes")?;
        let sqs = common::sqs::client(&config.sqs).await;
        let queue_url = common::sqs::queue_url(&sqs, &config.sqs.queue_name).await?;
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
        let relay = outbox::Relay::new(db.clone(), sqs, queue_url, config.outbox.batch_size);
        let state = AppState {
            db,
            config: Arc::new(config),
            auth,
            outbox_wake: Arc::new(Notify::new()),
        };
        Ok(Application {
            listener,
            port,
            state,
            relay,
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
        let mut sweep =
            outbox::relay::start_sweep(&self.state.config.outbox.sweep_schedule, wake.clone())
                .await?;
        // Rows left pending before this start are published at once.
        wake.notify_one();
        let relay = tokio::spawn(outbox::relay::run(self.relay, wake, shutdown.clone()));

        let server_shutdown = shutdown.clone();
        let served = axum::serve(self.listener, router(self.state))
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
        if let Err(e) = sweep.shutdown().await {
            tracing::warn!(error = %e, "stopping the sweep scheduler");
        }
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

/// The whole HTTP surface. Its own function so tests can drive it.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/health", get(health::health))
        .nest("/auth", auth::router())
        .nest("/products", products::router())
        .nest("/orders", orders::router());
    Router::new()
        .nest("/api", api)
        .merge(crate::openapi::router())
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not accept that method",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let route = request
                    .extensions()
                    .get::<MatchedPath>()
                    .map_or("unmatched", MatchedPath::as_str);
                let request_id = request
                    .headers()
                    .get(&REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                tracing::info_span!("request", method = %request.method(), route, request_id)
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}
