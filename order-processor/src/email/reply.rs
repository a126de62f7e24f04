//! What an SMTP server's answer means for an email: the one table the
//! sender acts on (the README's "Mail server replies" shows the same rows).
//!
//! MailTrap's sandbox is the spec here: it refuses past its per-inbox rate
//! with `550 5.7.0 Requested action not taken: too many emails per second`,
//! a 5xx that is not permanent at all, and a spent monthly quota with
//! `535 5.7.0 Monthly messages limit reached`, which refuses every email,
//! not this one.

use lettre::transport::smtp::Error as SmtpError;

/// How a failed send is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyClass {
    /// 421 and every other 4xx, refused or reset connections, timeouts, TLS
    /// failures: retried on the email's backoff schedule.
    Transient,
    /// A rate limit, whatever its code: every send slows down, the email is
    /// retried, never `FAILED`.
    Throttled,
    /// 530/535 (authentication, spent quota): the provider refuses every
    /// email. The sender pauses and probes; no email is `FAILED` for it.
    ProviderRefuses,
    /// Any other 5xx is about this message or recipient (550 5.1.1 unknown
    /// user, 552, 553): `FAILED` for this email only.
    Permanent,
}

impl ReplyClass {
    /// Its label in `email_replies_total{class}`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyClass::Transient => "transient",
            ReplyClass::Throttled => "throttled",
            ReplyClass::ProviderRefuses => "provider_refuses",
            ReplyClass::Permanent => "permanent",
        }
    }
}

/// Words that mark a rate limit in a reply's text, whatever its code.
const RATE_LIMIT_WORDS: [&str; 6] = [
    "too many emails",
    "too many messages",
    "too many connections",
    "rate limit",
    "rate-limit",
    "throttl",
];

/// Reply codes that refuse the sender, not the message.
const PROVIDER_REFUSES: [u16; 4] = [530, 534, 535, 538];

/// Classifies a reply by its code and text. `None` for the code means no
/// reply at all (a connection, timeout or TLS failure).
pub fn classify(code: Option<u16>, text: &str) -> ReplyClass {
    let text = text.to_ascii_lowercase();
    if RATE_LIMIT_WORDS.iter().any(|w| text.contains(w)) {
        return ReplyClass::Throttled;
    }
    match code {
        None => ReplyClass::Transient,
        Some(code) if PROVIDER_REFUSES.contains(&code) => ReplyClass::ProviderRefuses,
        Some(400..=499) => ReplyClass::Transient,
        Some(500..=599) => ReplyClass::Permanent,
        // Not a negative reply: a protocol surprise, worth another try.
        Some(_) => ReplyClass::Transient,
    }
}

/// [`classify`] for what lettre reports: a negative reply carries its code
/// and text; everything else (network, TLS, timeout) has no code.
pub fn classify_error(error: &SmtpError) -> ReplyClass {
    classify(error.status().map(u16::from), &error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReplyClass::*;

    #[test]
    fn the_table() {
        let rows: [(Option<u16>, &str, ReplyClass); 13] = [
            (
                Some(550),
                "5.7.0 Requested action not taken: too many emails per second",
                Throttled,
            ),
            (Some(451), "4.7.1 Rate limit exceeded, try later", Throttled),
            (
                Some(535),
                "5.7.8 Too many connections per account",
                Throttled,
            ),
            (
                Some(421),
                "4.7.0 Too many messages per connection",
                Throttled,
            ),
            (
                Some(535),
                "5.7.0 Monthly messages limit reached",
                ProviderRefuses,
            ),
            (Some(535), "5.7.8 Authentication failed", ProviderRefuses),
            (Some(530), "5.7.0 Authentication required", ProviderRefuses),
            (Some(421), "4.3.2 Service not available", Transient),
            (Some(450), "4.2.1 Mailbox busy", Transient),
            (None, "Connection refused (os error 111)", Transient),
            (
                Some(550),
                "5.1.1 <x@example.com>: Recipient address rejected",
                Permanent,
            ),
            (
                Some(552),
                "5.3.4 Message size exceeds fixed limit",
                Permanent,
            ),
            (Some(553), "5.1.3 Bad recipient address syntax", Permanent),
        ];
        for (code, text, class) in rows {
            assert_eq!(classify(code, text), class, "{code:?} {text}");
        }
    }
}
