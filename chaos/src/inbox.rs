//! The inbox a scenario's processor sends to, counted per order and kind of
//! email by the deterministic Message-ID
//! `order-{id}.{confirmation|cancellation}@{domain}`: the stack's MailDev
//! (`GET /email`), or a scenario's own MailTrap-like server.

use std::collections::{BTreeMap, HashSet};

use anyhow::Context;
use serde::Deserialize;
use test_support::mailtrap::MailtrapLike;

/// Where a scenario's emails arrive.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// The stack's MailDev, read over its web API.
    MailDev {
        http: &'a reqwest::Client,
        api: &'a str,
    },
    /// A MailTrap-like server the scenario started.
    Mailtrap(&'a MailtrapLike),
}

impl Source<'_> {
    /// Mail to any of `recipients`, counted.
    pub async fn count(&self, recipients: &HashSet<String>) -> anyhow::Result<Counts> {
        match self {
            Source::MailDev { http, api } => count(http, api, recipients).await,
            Source::Mailtrap(server) => {
                let messages = server.messages().await;
                Ok(tally(
                    messages.iter().map(|m| {
                        (
                            m.message_id.as_deref(),
                            m.rcpt_tos.iter().map(String::as_str).collect(),
                        )
                    }),
                    recipients,
                ))
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Mail {
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    to: Vec<Address>,
}

#[derive(Debug, Deserialize)]
struct Address {
    address: String,
}

/// Copies received, by (order id, kind).
pub type Counts = BTreeMap<(String, EmailKind), u64>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EmailKind {
    Confirmation,
    Cancellation,
}

/// Mail in MailDev to any of `recipients`, counted.
async fn count(
    http: &reqwest::Client,
    inbox_api: &str,
    recipients: &HashSet<String>,
) -> anyhow::Result<Counts> {
    let mails: Vec<Mail> = http
        .get(format!("{inbox_api}/email"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .context("reading the mail inbox")?
        .json()
        .await
        .context("the inbox answers JSON")?;
    Ok(tally(
        mails.iter().map(|m| {
            (
                m.message_id.as_deref(),
                m.to.iter().map(|to| to.address.as_str()).collect(),
            )
        }),
        recipients,
    ))
}

/// (Message-ID, recipients) of each mail, counted for those to any of
/// `recipients`. A mail whose Message-ID is not an order's counts under the
/// id "?" so it is not silently ignored.
fn tally<'m>(
    mails: impl Iterator<Item = (Option<&'m str>, Vec<&'m str>)>,
    recipients: &HashSet<String>,
) -> Counts {
    let mut counts = Counts::new();
    for (message_id, to) in mails {
        if !to.iter().any(|to| recipients.contains(&to.to_lowercase())) {
            continue;
        }
        let key = message_id
            .and_then(parse_message_id)
            .unwrap_or_else(|| ("?".to_string(), EmailKind::Confirmation));
        *counts.entry(key).or_default() += 1;
    }
    counts
}

/// `order-{id}.{kind}@domain`, with or without angle brackets.
fn parse_message_id(raw: &str) -> Option<(String, EmailKind)> {
    let local = raw.trim_matches(['<', '>']).split('@').next()?;
    let rest = local.strip_prefix("order-")?;
    let (id, kind) = rest.split_once('.')?;
    let kind = match kind {
        "confirmation" => EmailKind::Confirmation,
        "cancellation" => EmailKind::Cancellation,
        _ => return None,
    };
    Some((id.to_string(), kind))
}

/// Adds `more` into `into` (MailDev forgets everything when it restarts).
pub fn merge(into: &mut Counts, more: &Counts) {
    for (key, n) in more {
        *into.entry(key.clone()).or_default() += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_name_the_order_and_kind() {
        assert_eq!(
            parse_message_id("order-65f0a1.confirmation@chaos.test"),
            Some(("65f0a1".into(), EmailKind::Confirmation))
        );
        assert_eq!(
            parse_message_id("<order-65f0a1.cancellation@chaos.test>"),
            Some(("65f0a1".into(), EmailKind::Cancellation))
        );
        assert_eq!(parse_message_id("something@else"), None);
    }
}
