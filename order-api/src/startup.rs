//! Building and running the service: its connections, state and workers,
//! and the HTTP surface (`http`) with the OpenAPI document on it.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{self, Authenticator},
    config::ApiConfig,
    http::{self, state::AppState},
    metrics, openapi, orders, outbox, products,
};

/// How often login-limiter keys whose allowance has refilled are dropped.
const FORGET_IDLE_LOGIN_KEYS_EVERY: Duration = Duration::from_secs(60);

pub struct Application {
    listener: TcpListener,
    port: u16,
    /// `GET /metrics`, apart from the public port.
    metrics_listener: TcpListener,
    metrics_port: u16,
    state: AppState,
    relay: outbox::Relay,
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
        let metrics_listener = TcpListener::bind(config.metrics_addr)
            .await
            .with_context(|| format!("binding API_METRICS_ADDR {}", config.metrics_addr))?;
        let metrics_port = metrics_listener.local_addr()?.port();
        let readiness = Arc::new(common::readiness::ReadinessProbe::new(
            db.clone(),
            sqs.clone(),
            queue_url.clone(),
        ));
        let relay = outbox::Relay::new(db.clone(), sqs, queue_url, &config.outbox);
        let orders = orders::batch::OrderBatcher::start(
            db.clone(),
            orders::place::ShopSettings {
                currency: config.shop.currency.clone(),
                tax_rate: config.shop.tax_rate,
                deadline: config.shop.order_deadline,
                relay: relay.waker(),
                writes: common::mongo::bulk::Writes::as_decided(),
            },
        );
        let state = AppState {
            db,
            config: Arc::new(config),
            auth,
            relay: relay.waker(),
            readiness,
            orders,
        };
        Ok(Application {
            listener,
            port,
            metrics_listener,
            metrics_port,
            state,
            relay,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves requests and runs the relay until `shutdown` is cancelled,
    /// then drains in-flight requests and stops the relay.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let sweep =
            outbox::relay::start_sweep(&self.state.config.outbox.sweep_schedule, &self.relay)
                .await?;
        let relay = tokio::spawn(outbox::relay::run(self.relay, shutdown.clone()));
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

        let metrics_shutdown = shutdown.clone();
        let scrapes = tokio::spawn(
            axum::serve(self.metrics_listener, metrics::router(self.state.clone()))
                .with_graceful_shutdown(async move { metrics_shutdown.cancelled().await })
                .into_future(),
        );

        let server_shutdown = shutdown.clone();
        // The peer address is what login throttling keys clients by.
        let app = http::router(self.state, openapi::router())
            .into_make_service_with_connect_info::<SocketAddr>();
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
        match scrapes.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "serving /metrics"),
            Err(e) => tracing::warn!(error = %e, "the /metrics listener's task failed"),
            Ok(Ok(())) => {}
        }
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
    common::orders::create_indexes(db).await?;
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
