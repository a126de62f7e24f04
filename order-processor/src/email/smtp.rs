//! Sending over SMTP with lettre. One binary speaks to MailDev/Mailpit
//! (plain, no auth) and MailTrap (STARTTLS on 2525 with credentials).
//!
//! Connections: at most `SMTP_MAX_CONNECTIONS` at once (MailTrap allows 10
//! per account), each carrying at most `SMTP_MAX_MESSAGES_PER_CONNECTION`
//! (MailTrap: 100). lettre's pool bounds the idle connections it keeps but
//! neither of these, so each connection slot is a transport with a pool of
//! one, used by one send at a time and replaced when its quota is spent
//! (dropping a transport closes its connection).

use std::sync::{Arc, Mutex};

use anyhow::Context;
use common::domain::EmailAddress;
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, MultiPart},
    transport::smtp::{
        PoolConfig,
        authentication::Credentials,
        client::{Certificate, Tls, TlsParameters},
    },
};
use secrecy::ExposeSecret;
use tokio::sync::Semaphore;

use super::{
    RenderedEmail,
    reply::{self, ReplyClass},
};
use crate::config::{SmtpConfig, SmtpTls};

type Transport = AsyncSmtpTransport<Tokio1Executor>;

#[derive(Clone)]
pub struct Mailer {
    inner: Arc<Inner>,
}

struct Inner {
    config: SmtpConfig,
    tls: Option<TlsParameters>,
    from: Mailbox,
    /// A permit per connection slot.
    permits: Semaphore,
    /// Idle slots; a permit guarantees one is here.
    slots: Mutex<Vec<Slot>>,
}

struct Slot {
    transport: Transport,
    sent: u32,
}

/// Why a send did not go through, classified (see [`reply`]).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct SendError {
    pub class: ReplyClass,
    pub reason: String,
}

impl Mailer {
    pub fn new(config: &SmtpConfig) -> anyhow::Result<Self> {
        let tls = match config.tls {
            SmtpTls::None => None,
            SmtpTls::StartTls | SmtpTls::Tls => Some(tls_parameters(config)?),
        };
        let connections = config.max_connections.max(1);
        let inner = Inner {
            config: config.clone(),
            tls,
            from: config.from.clone(),
            permits: Semaphore::new(connections),
            slots: Mutex::new(Vec::with_capacity(connections)),
        };
        {
            let mut slots = inner.lock();
            for _ in 0..connections {
                slots.push(inner.slot()?);
            }
        }
        Ok(Mailer {
            inner: Arc::new(inner),
        })
    }

    /// Sends one email on a free connection slot, waiting for one.
    pub async fn send(
        &self,
        to: &EmailAddress,
        message_id: &str,
        email: RenderedEmail,
    ) -> Result<(), SendError> {
        let permanent = |reason: String| SendError {
            class: ReplyClass::Permanent,
            reason,
        };
        // Parsed at registration by the same rules; an address an older
        // version stored that they refuse fails here, for good.
        let to: Mailbox = to
            .as_str()
            .parse()
            .map_err(|e| permanent(format!("recipient {to:?}: {e}")))?;
        let message = Message::builder()
            .from(self.inner.from.clone())
            .to(to)
            .subject(email.subject)
            .message_id(Some(message_id.to_string()))
            .multipart(MultiPart::alternative_plain_html(email.text, email.html))
            .map_err(|e| permanent(format!("building the message: {e}")))?;

        let _permit = self.inner.permits.acquire().await.map_err(|_| SendError {
            class: ReplyClass::Transient,
            reason: "the mailer is shutting down".into(),
        })?;
        let mut slot = self.inner.lock().pop().ok_or_else(|| SendError {
            class: ReplyClass::Transient,
            reason: "no SMTP connection slot free".into(),
        })?;
        let sent = slot.transport.send(message).await;
        slot.sent += 1;
        if slot.sent >= self.inner.config.max_messages_per_connection.max(1) {
            match self.inner.slot() {
                Ok(fresh) => slot = fresh,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "could not renew an SMTP connection slot; reusing it")
                }
            }
        }
        self.inner.lock().push(slot);
        sent.map(|_| ()).map_err(|e| SendError {
            class: reply::classify_error(&e),
            reason: e.to_string(),
        })
    }

    /// `smtp://host:port`, `smtp+starttls://…` or `smtps://…`: the provider
    /// as logs and readiness name it.
    pub fn provider(config: &SmtpConfig) -> String {
        let scheme = match config.tls {
            SmtpTls::None => "smtp",
            SmtpTls::StartTls => "smtp+starttls",
            SmtpTls::Tls => "smtps",
        };
        format!("{scheme}://{}:{}", config.host, config.port)
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn slot(&self) -> anyhow::Result<Slot> {
        let config = &self.config;
        let mut builder = Transport::builder_dangerous(&config.host)
            .port(config.port)
            .timeout(Some(config.timeout))
            .pool_config(PoolConfig::new().max_size(1).min_idle(0));
        builder = match (&self.tls, config.tls) {
            (Some(tls), SmtpTls::StartTls) => builder.tls(Tls::Required(tls.clone())),
            (Some(tls), SmtpTls::Tls) => builder.tls(Tls::Wrapper(tls.clone())),
            _ => builder,
        };
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose_secret().to_string(),
            ));
        }
        Ok(Slot {
            transport: builder.build(),
            sent: 0,
        })
    }
}

/// TLS for the server's name, trusting the system's roots plus, when
/// `SMTP_TLS_CA_FILE` is set, that CA (a private or test CA). Invalid
/// certificates are never accepted.
fn tls_parameters(config: &SmtpConfig) -> anyhow::Result<TlsParameters> {
    let mut builder = TlsParameters::builder(config.host.clone());
    if let Some(path) = &config.tls_ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading SMTP_TLS_CA_FILE {}", path.display()))?;
        let ca = Certificate::from_pem(&pem).with_context(|| {
            format!(
                "SMTP_TLS_CA_FILE {} is not a PEM certificate",
                path.display()
            )
        })?;
        builder = builder.add_root_certificate(ca);
    }
    builder.build().context("setting up TLS for SMTP")
}
