//! The whole pipeline on the real stack: order-api and order-processor share
//! a fresh database and fresh queues; mail lands in the real MailDev inbox.

mod consumer;
mod delivery;
mod end_to_end;
mod expiry;
mod helpers;
mod mailtrap;
mod observability;
mod real_server;
mod shutdown;
