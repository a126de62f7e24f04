//! order-api against the real local stack. One binary, many modules: faster
//! to link, and every test still gets its own database and queues.

mod auth;
mod batch;
mod cancel;
mod docs_page;
mod expiry;
mod headers;
mod helpers;
mod idempotency;
mod listing;
mod openapi;
mod orders;
mod outage;
mod products;
mod rate_limit;
mod real_server;
mod relay;
mod seed;
mod startup;
mod tokens;
