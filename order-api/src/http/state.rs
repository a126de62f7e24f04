use std::sync::Arc;

use mongodb::Database;

use crate::{auth::Authenticator, config::ApiConfig, orders::batch::OrderBatcher, outbox::Handoff};

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: Database,
    pub config: Arc<ApiConfig>,
    pub auth: Arc<Authenticator>,
    /// Where a commit's outbox rows go: this process's relay.
    pub outbox: Handoff,
    pub readiness: Arc<common::readiness::ReadinessProbe>,
    /// Where orders are placed: queued and committed in batches.
    pub orders: OrderBatcher,
}
