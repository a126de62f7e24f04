//! The confirmation email: rendering it and handing it to an SMTP server.

mod render;
mod smtp;

pub use render::{RenderedEmail, cancellation, confirmation};
pub use smtp::{Mailer, SendError};
