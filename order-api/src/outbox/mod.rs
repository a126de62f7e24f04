//! The transactional outbox: rows written in the same transaction as the
//! change they announce (`store`), and the relay that publishes them to
//! SQS (`relay`).

pub mod relay;
pub mod store;

pub use relay::{PublishOutcome, Relay};
