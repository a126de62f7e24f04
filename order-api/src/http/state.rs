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
    /// This process's relay, woken once a commit wrote outbox rows.
    pub relay: Arc<Notify>,
    pub readiness: Arc<common::readiness::ReadinessProbe>,
    /// Where orders are placed: queued and committed in batches.
    pub orders: OrderBatcher,
}
