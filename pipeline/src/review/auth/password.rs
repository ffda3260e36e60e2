//! Passwords: Argon2id hashes (PHC strings, the crate's default parameters:
//! 19 MiB, two passes, one lane, as OWASP recommends) and their
//! verification on the blocking pool, a few at a time, so that a flood of
//! sign-in attempts costs bounded CPU and never stalls the async threads.

use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use tokio::sync::Semaphore;

use super::csrf::{hex, random_bytes};
use super::AuthError;

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 10;

/// Longest password accepted, bytes (longer input is refused before hashing).
const MAX_PASSWORD_BYTES: usize = 1024;

/// Checks a new password: long enough, not absurdly long, no control
/// characters (a pasted newline is a mistake, not entropy).
pub fn check_password_rules(password: &str) -> Result<(), AuthError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AuthError::BadPassword(format!(
            "use at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(AuthError::BadPassword(format!(
            "use at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    if password.chars().any(char::is_control) {
        return Err(AuthError::BadPassword(
            "control characters (a newline?) are not allowed".into(),
        ));
    }
    Ok(())
}

/// The Argon2id hash of `password` (checked by [`check_password_rules`])
/// with a fresh random salt, as a PHC string.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    check_password_rules(password)?;
    let salt = SaltString::encode_b64(&random_bytes::<16>())
        .map_err(|e| AuthError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC string `hash` (false for a hash
/// that does not parse).
fn verify(hash: &str, password: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    match PasswordHash::new(hash) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash of a random password, verified against when the user does not
/// exist, so that an unknown name takes as long as a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| hash_password(&hex(&random_bytes::<16>())).unwrap_or_default())
}

/// Verifies passwords off the async threads, as many at once as there are
/// cores; further attempts wait their turn (within the request timeout).
#[derive(Debug, Clone)]
pub struct Hasher {
    slots: Arc<Semaphore>,
}

impl Default for Hasher {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Hasher {
            slots: Arc::new(Semaphore::new(cores)),
        }
    }
}

impl Hasher {
    /// Whether `password` matches `hash`; with no hash (no such user, or an
    /// account without a password) a decoy is verified and the answer is no.
    pub async fn verify(&self, hash: Option<String>, password: String) -> bool {
        let Ok(_slot) = self.slots.acquire().await else {
            return false;
        };
        let checked = tokio::task::spawn_blocking(move || match hash {
            Some(h) => verify(&h, &password),
            None => {
                let _ = verify(decoy_hash(), &password);
                false
            }
        })
        .await;
        checked.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_salted_and_verify() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert_ne!(h, hash_password("correct horse battery").unwrap(), "salted");
        let hasher = Hasher::default();
        assert!(
            hasher
                .verify(Some(h.clone()), "correct horse battery".into())
                .await
        );
        assert!(
            !hasher
                .verify(Some(h), "correct horse battery!".into())
                .await
        );
        assert!(!hasher.verify(None, "anything at all".into()).await);
        assert!(!hasher.verify(Some("not a hash".into()), "x".into()).await);
    }

    #[test]
    fn weak_or_odd_passwords_are_refused() {
        assert!(hash_password("short").is_err());
        assert!(hash_password("ten chars\n").is_err());
        assert!(hash_password(&"x".repeat(2000)).is_err());
        assert!(check_password_rules("long enough pass").is_ok());
    }
}
