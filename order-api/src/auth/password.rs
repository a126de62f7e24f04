//! argon2id password hashing on threads of its own, bounded and at a lower
//! scheduling priority than everything else, so a burst of logins takes
//! the CPU the order path leaves idle rather than the CPU it needs, and
//! never starves other requests of the runtime's worker threads.

use std::sync::{Arc, Mutex};

use anyhow::Context;
use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::{Output, ParamsString, PasswordHash, SaltString, rand_core::OsRng},
};
use secrecy::{ExposeSecret, SecretString};

#[derive(Clone)]
pub struct PasswordHasher {
    /// The only threads argon2 runs on: as many as hashes may run at once
    /// (`MAX_CONCURRENT_HASHES`), each at niceness 10 (see
    /// [`lower_priority`]); further hashes wait their turn in its queue.
    threads: Arc<rayon::ThreadPool>,
    /// argon2's working memory (19 MiB a hash), allocated once per thread
    /// and reused. Allocated afresh for every hash on whichever blocking
    /// thread ran it, glibc kept hundreds of MiB of it across its
    /// per-thread arenas after a burst of logins.
    memory: Arc<Mutex<Vec<Vec<Block>>>>,
    /// Verified against when the account does not exist, so a login for an
    /// unknown email costs as much time as one for a known email.
    decoy_hash: Arc<String>,
}

/// OWASP's recommended argon2id parameters: 19 MiB, 2 iterations, 1 lane.
fn params() -> Params {
    // The constants are within argon2's documented ranges.
    Params::new(19 * 1024, 2, 1, None).unwrap_or_default()
}

impl PasswordHasher {
    pub fn new(max_concurrent: usize) -> anyhow::Result<Self> {
        let memory = Arc::new(Mutex::new(Vec::new()));
        let decoy = with_memory(&memory, |blocks| {
            hash_blocking(blocks, &SecretString::from("decoy password, never valid"))
        })?;
        let threads = rayon::ThreadPoolBuilder::new()
            .num_threads(max_concurrent.max(1))
            .thread_name(|n| format!("argon2-{n}"))
            .start_handler(|_| lower_priority())
            // A panicking hash drops its answer (an error for its caller)
            // instead of aborting the process, rayon's default.
            .panic_handler(|_| tracing::error!("a password hash panicked"))
            .build()
            .context("starting the password hashing threads")?;
        Ok(PasswordHasher {
            threads: Arc::new(threads),
            memory,
            decoy_hash: Arc::new(decoy),
        })
    }

    pub async fn hash(&self, password: SecretString) -> anyhow::Result<String> {
        let memory = self.memory.clone();
        self.run(move || with_memory(&memory, |blocks| hash_blocking(blocks, &password)))
            .await
            .context("the hashing thread dropped the hash")?
    }

    /// Whether `password` matches `stored`; with `None` it checks the decoy
    /// and returns false, taking the same time.
    pub async fn verify(&self, password: SecretString, stored: Option<String>) -> bool {
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.decoy_hash.as_ref().clone());
        let memory = self.memory.clone();
        let matched = self
            .run(move || with_memory(&memory, |blocks| verify_blocking(blocks, &password, &hash)))
            .await
            .unwrap_or(false);
        known && matched
    }

    /// Runs `work` on the hashing threads and waits for it without holding
    /// a runtime thread.
    async fn run<R: Send + 'static>(
        &self,
        work: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, tokio::sync::oneshot::error::RecvError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.threads.spawn(move || {
            let _ = answer.send(work());
        });
        answered.await
    }
}

/// Niceness 10 for the calling thread (Linux keeps one per thread): when
/// the cores are busy, the scheduler gives a hashing thread about a tenth
/// of the share of a thread at the default 0, so orders go first and
/// logins take what is left; when they are idle, hashing runs at full
/// speed. (thread-priority maps its 0-99 scale onto niceness 19..-20;
/// 22 is 10.) Failing leaves the thread as it was, which is only slower
/// for orders under a login burst.
fn lower_priority() {
    use thread_priority::{ThreadPriority, ThreadPriorityValue};
    let lowered = ThreadPriorityValue::try_from(22_u8)
        .map_err(|e| e.to_string())
        .and_then(|value| {
            thread_priority::set_current_thread_priority(ThreadPriority::Crossplatform(value))
                .map_err(|e| e.to_string())
        });
    if let Err(e) = lowered {
        tracing::warn!(error = %e, "could not lower the password hashing thread's priority");
    }
}

/// Runs `work` with a reused block of argon2 memory. The hashing threads
/// bound how many run at once, so the pool never holds more blocks than
/// threads.
fn with_memory<R>(pool: &Mutex<Vec<Vec<Block>>>, work: impl FnOnce(&mut [Block]) -> R) -> R {
    let mut blocks = pool
        .lock()
        .ok()
        .and_then(|mut free| free.pop())
        .unwrap_or_else(|| vec![Block::default(); params().block_count()]);
    let result = work(&mut blocks);
    if let Ok(mut free) = pool.lock() {
        free.push(blocks);
    }
    result
}

fn hash_blocking(memory: &mut [Block], password: &SecretString) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let raw_salt = salt
        .as_salt()
        .decode_b64(&mut salt_bytes)
        .map_err(|e| anyhow::anyhow!("decoding a fresh salt: {e}"))?;
    let params = params();
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    argon2
        .hash_password_into_with_memory(
            password.expose_secret().as_bytes(),
            raw_salt,
            &mut out,
            memory,
        )
        .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params)
            .map_err(|e| anyhow::anyhow!("encoding argon2 parameters: {e}"))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| anyhow::anyhow!("encoding a hash: {e}"))?),
    };
    Ok(hash.to_string())
}

/// Recomputes `stored`'s hash with its own parameters and compares in
/// constant time (`Output`'s equality).
fn verify_blocking(memory: &mut [Block], password: &SecretString, stored: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    let (Some(expected), Some(salt)) = (parsed.hash, parsed.salt) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        Algorithm::try_from(parsed.algorithm),
        Params::try_from(&parsed),
    ) else {
        return false;
    };
    let Ok(version) = parsed.version.map_or(Ok(Version::V0x13), Version::try_from) else {
        return false;
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(raw_salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    // A hash made with more memory than ours (older settings) gets its own.
    let mut larger = Vec::new();
    let memory = if memory.len() >= params.block_count() {
        memory
    } else {
        larger.resize(params.block_count(), Block::default());
        &mut larger[..]
    };
    let argon2 = Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.len()];
    argon2
        .hash_password_into_with_memory(
            password.expose_secret().as_bytes(),
            raw_salt,
            &mut out,
            memory,
        )
        .is_ok()
        && Output::new(&out).is_ok_and(|computed| computed == expected)
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
    async fn hashes_made_by_the_argon2_crate_itself_still_verify() {
        use argon2::PasswordHasher as _;
        let hasher = PasswordHasher::new(1).expect("builds");
        let salt = SaltString::generate(&mut OsRng);
        let older = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(32 * 1024, 3, 1, None).expect("params"),
        )
        .hash_password(b"correct horse", &salt)
        .expect("hashes")
        .to_string();
        assert!(
            hasher
                .verify(SecretString::from("correct horse"), Some(older.clone()))
                .await
        );
        assert!(
            !hasher
                .verify(SecretString::from("wrong horse"), Some(older))
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
