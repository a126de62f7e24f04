//! The mail catcher's inbox (MailDev's `GET /email`), counted per order and
//! kind of email by the deterministic Message-ID
//! `order-{id}.{confirmation|cancellation}@{domain}`.

use std::collections::{BTreeMap, HashSet};

use anyhow::Context;
use serde::Deserialize;

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

/// Mail to any of `recipients`, counted. A mail whose Message-ID is not an
/// order's counts under the id "?" so it is not silently ignored.
pub async fn count(
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
    let mut counts = Counts::new();
    for mail in mails {
        if !mail
            .to
            .iter()
            .any(|to| recipients.contains(&to.address.to_lowercase()))
        {
            continue;
        }
        let key = mail
            .message_id
            .as_deref()
            .and_then(parse_message_id)
            .unwrap_or_else(|| ("?".to_string(), EmailKind::Confirmation));
        *counts.entry(key).or_default() += 1;
    }
    Ok(counts)
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
