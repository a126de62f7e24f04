use serde::{Deserialize, Serialize};

/// An address an email can be sent to: parsed once, at registration, by the
/// same rules the SMTP client applies at send time (lettre's), so an account
/// can never hold an address its confirmations would be refused for.
/// Stored lowercase, as accounts are looked up by it.
///
/// Deserializing trusts the stored value (every one was parsed when it was
/// written); an address an older version stored that these rules refuse
/// is still refused at send time, as a permanent failure of that email.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EmailAddress(String);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EmailAddressError {
    #[error("must be a valid email address")]
    Invalid,
    #[error("must be at most {} characters", EmailAddress::MAX_LEN)]
    TooLong,
}

impl EmailAddress {
    /// RFC 5321's limit on a forward path (256) less its angle brackets.
    pub const MAX_LEN: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, EmailAddressError> {
        if raw.len() > Self::MAX_LEN {
            return Err(EmailAddressError::TooLong);
        }
        let lower = raw.to_lowercase();
        lower
            .parse::<lettre::Address>()
            .map_err(|_| EmailAddressError::Invalid)?;
        Ok(EmailAddress(lower))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for EmailAddress {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_kept_lowercase() {
        let address = EmailAddress::parse("Asha@Shop.Test").expect("valid");
        assert_eq!(address.as_str(), "asha@shop.test");
    }

    #[test]
    fn what_smtp_would_refuse_is_refused_here() {
        for raw in [
            "",
            "not-an-email",
            "a..b@shop.test",
            ".a@shop.test",
            "a.@shop.test",
            "a b@shop.test",
            "a@",
            "@shop.test",
            "a@shop..test",
        ] {
            assert_eq!(
                EmailAddress::parse(raw),
                Err(EmailAddressError::Invalid),
                "{raw:?}"
            );
        }
        // 313 characters in labels of 60: past SMTP's 254, within the old check.
        let long = format!(
            "{}@{}.test",
            "a".repeat(64),
            vec!["b".repeat(60); 4].join(".")
        );
        assert_eq!(EmailAddress::parse(&long), Err(EmailAddressError::TooLong));
    }

    #[test]
    fn ordinary_addresses_pass() {
        for raw in [
            "a@shop.test",
            "first.last+tag@example.co.in",
            "o'brien@example.com",
            "user@[127.0.0.1]",
        ] {
            assert!(EmailAddress::parse(raw).is_ok(), "{raw:?}");
        }
    }
}
