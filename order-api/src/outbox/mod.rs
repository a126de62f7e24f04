//! The transactional outbox: rows written in the order's transaction, and
//! the relay that publishes them to SQS.

pub mod follow;
pub mod relay;
pub mod store;

pub use relay::{PublishOutcome, Relay};
