//! The transactional outbox: rows written in the order's transaction, and
//! the relay that publishes them to SQS (an order's row handed to it
//! straight from the transaction that wrote it).

pub mod handoff;
pub mod relay;
pub mod store;

pub use handoff::Handoff;
pub use relay::{PublishOutcome, Relay};
