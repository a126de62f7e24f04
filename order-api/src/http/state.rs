use std::sync::Arc;

use mongodb::Database;
use tokio::sync::Notify;

use crate::{auth::Authenticator, config::ApiConfig, orders::batch::OrderBatcher};

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: Database,
    pub config: Arc<ApiConfig>,
    pub auth: Arc<Authenticator>,
    /// Woken after a commit writes an outbox row the relay was not handed
    /// (a cancellation's), so the relay claims it at once.
    pub outbox_wake: Arc<Notify>,
    pub readiness: Arc<common::readiness::ReadinessProbe>,
    /// Where orders are placed: queued and committed in batches.
    pub orders: OrderBatcher,
}
