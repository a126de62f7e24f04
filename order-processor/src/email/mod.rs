//! An order's emails (confirmation, cancellation): durable work recorded on
//! the order (`common::orders::email`), rendered from templates (`render`),
//! sent by the `worker` over SMTP (`smtp`) as its `policy` allows, each
//! reply classified by one table (`reply`).

mod policy;
mod render;
pub mod reply;
mod smtp;
mod worker;

pub use policy::{Answer, BreakerState, Policy, PolicySettings, Report};
pub use render::{RenderedEmail, Shop, Templates};
pub use smtp::{Mailer, SendError};
pub use worker::{Delivered, EmailWorker, SendReport, WorkerSettings};
