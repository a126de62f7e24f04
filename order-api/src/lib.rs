//! The shop's order API. Folders follow the shop, not the layers: `auth`
//! (accounts and tokens), `products` (the catalogue), `orders` (placing and
//! reading orders), `outbox` (publishing order events to SQS); `http` is
//! what every route shares (router, layers, errors, extractors, state).

pub mod auth;
pub mod config;
pub mod health;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod orders;
pub mod outbox;
pub mod products;
pub mod startup;
