//! Consumes order events from SQS and carries each order to `PROCESSED`
//! with exactly one confirmation email. `consumer` receives and acknowledges
//! messages and moves orders on (through `common::orders`, which owns the
//! collection and its transitions), `email` renders and sends the emails.

pub mod cli;
pub mod config;
pub mod consumer;
pub mod dlq;
pub mod email;
pub mod health;
pub mod inbox;
pub mod metrics;
pub mod startup;
