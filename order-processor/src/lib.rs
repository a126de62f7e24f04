//! Consumes order events from SQS and carries each order to `PROCESSED`
//! with exactly one confirmation email. `consumer` receives and acknowledges
//! messages, `fulfilment` moves orders through their states, `email` renders
//! and sends the confirmation.

pub mod cli;
pub mod config;
pub mod consumer;
pub mod dlq;
pub mod email;
pub mod fulfilment;
pub mod health;
pub mod inbox;
pub mod metrics;
pub mod startup;
