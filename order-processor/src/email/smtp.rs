//! Sending over SMTP with lettre. One binary speaks to MailDev/Mailpit
//! (plain, no auth) and MailTrap (STARTTLS on 2525 with credentials).

use anyhow::Context;
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, MultiPart},
    transport::smtp::authentication::Credentials,
};
use secrecy::ExposeSecret;

use super::RenderedEmail;
use crate::config::{SmtpConfig, SmtpTls};

#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The server refused for good (5xx) or the message cannot be built.
    #[error("permanent: {0}")]
    Permanent(String),
    /// Worth retrying: connection trouble, timeouts, 4xx.
    #[error("transient: {0}")]
    Transient(String),
}

impl Mailer {
    pub fn new(config: &SmtpConfig) -> anyhow::Result<Self> {
        let builder = match config.tls {
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host),
            SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&config.host)
                .context("setting up STARTTLS")?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&config.host)
                .context("setting up TLS")?,
        };
        let mut builder = builder.port(config.port).timeout(Some(config.timeout));
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose_secret().to_string(),
            ));
        }
        Ok(Mailer {
            transport: builder.build(),
            from: config.from.clone(),
        })
    }

    pub async fn send(
        &self,
        to: &str,
        message_id: &str,
        email: RenderedEmail,
    ) -> Result<(), SendError> {
        let to: Mailbox = to
            .parse()
            .map_err(|e| SendError::Permanent(format!("recipient {to:?}: {e}")))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(email.subject)
            .message_id(Some(message_id.to_string()))
            .multipart(MultiPart::alternative_plain_html(email.text, email.html))
            .map_err(|e| SendError::Permanent(format!("building the message: {e}")))?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(SendError::Permanent(e.to_string())),
            Err(e) => Err(SendError::Transient(e.to_string())),
        }
    }
}
