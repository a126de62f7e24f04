//! An order's emails (confirmation, cancellation): durable work recorded on
//! the order (`common::orders::email`), rendered from templates (`render`), sent by the
//! `sender` through a `gate` (pace, breaker) over SMTP (`smtp`), each reply
//! classified by one table (`reply`).

pub mod gate;
mod render;
pub mod reply;
pub mod sender;
mod sent;
mod smtp;

pub use render::{RenderedEmail, Shop, Templates};
pub use sender::{Delivered, EmailSender, SendReport, SenderSettings};
pub use smtp::{Mailer, SendError};
