//! What `order-api` and `order-processor` mean by an order, and how both reach
//! the outside world: domain types, the queue event, configuration, MongoDB and
//! SQS clients, telemetry and the shutdown signal.

pub mod backoff;
pub mod batching;
pub mod config;
pub mod domain;
pub mod event;
pub mod expiry;
pub mod metrics;
pub mod mongo;
pub mod orders;
pub mod readiness;
pub mod schedule;
pub mod shutdown;
pub mod sqs;
pub mod startup;
pub mod telemetry;
