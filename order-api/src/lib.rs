//! The shop's order API. Folders follow the shop, not the layers: `auth`
//! (accounts and tokens), `products` (the catalogue), `orders` (placing and
//! reading orders), `outbox` (publishing order events to SQS).

pub mod auth;
pub mod config;
pub mod error;
pub mod extract;
pub mod health;
pub mod metrics;
pub mod openapi;
pub mod orders;
pub mod outbox;
pub mod pagination;
pub mod products;
pub mod startup;
pub mod state;
