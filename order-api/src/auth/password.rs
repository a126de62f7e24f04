//! argon2id password hashing, off the async runtime and bounded, so a burst
//! of logins cannot starve other requests of worker threads.

use std::sync::Arc;

use anyhow::Context;
use argon2::{
    Algorithm, Argon2, Params, Version,
    password_hash::{
        PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString, rand_core::OsRng,
    },
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

#[derive(Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    /// Verified against when the account does not exist, so a login for an
    /// unknown email costs as much time as one for a known email.
    decoy_hash: Arc<String>,
}

/// OWASP's recommended argon2id parameters: 19 MiB, 2 iterations, 1 lane.
fn argon2() -> Argon2<'static> {
    // The constants are within argon2's documented ranges.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

impl PasswordHasher {
    pub fn new(max_concurrent: usize) -> anyhow::Result<Self> {
        let decoy = hash_blocking(&SecretString::from("decoy password, never valid"))?;
        Ok(PasswordHasher {
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            decoy_hash: Arc::new(decoy),
        })
    }

    pub async fn hash(&self, password: SecretString) -> anyhow::Result<String> {
        let _permit = self.permits.acquire().await.context("hasher closed")?;
        tokio::task::spawn_blocking(move || hash_blocking(&password))
            .await
            .context("hashing task panicked")?
    }

    /// Whether `password` matches `stored`; with `None` it checks the decoy
    /// and returns false, taking the same time.
    pub async fn verify(&self, password: SecretString, stored: Option<String>) -> bool {
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.decoy_hash.as_ref().clone());
        let matched = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|parsed| {
                argon2()
                    .verify_password(password.expose_secret().as_bytes(), &parsed)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        known && matched
    }
}

fn hash_blocking(password: &SecretString) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(password.expose_secret().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_only_its_own_password() {
        let hasher = PasswordHasher::new(2).expect("builds");
        let hash = hasher
            .hash(SecretString::from("correct horse"))
            .await
            .expect("hashes");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(
            hasher
                .verify(SecretString::from("correct horse"), Some(hash.clone()))
                .await
        );
        assert!(
            !hasher
                .verify(SecretString::from("wrong horse"), Some(hash))
                .await
        );
    }

    #[tokio::test]
    async fn an_unknown_account_never_verifies() {
        let hasher = PasswordHasher::new(1).expect("builds");
        assert!(
            !hasher
                .verify(SecretString::from("decoy password, never valid"), None)
                .await
        );
    }
}
