//! CSRF tokens: every form that changes something carries one, and the
//! server refuses the post unless it is the one it would give this user.
//!
//! A session's token is a keyed BLAKE2b of a fixed text under the session's
//! own secret token, so it needs no storage, survives restarts and dies
//! with the session. Identities without a session (a proxy-named user,
//! `--auth none`) get one keyed by a random key of this process. The login
//! form, before any session, uses a double-submit cookie
//! ([`LOGIN_CSRF_COOKIE`]).

use blake2::digest::consts::U32;
use blake2::digest::{KeyInit, Mac};
use blake2::Blake2bMac;
use subtle::ConstantTimeEq;

type Mac256 = Blake2bMac<U32>;

/// The login form's double-submit cookie (with the `__Host-` prefix when
/// cookies are `Secure`).
pub const LOGIN_CSRF_COOKIE: &str = "sa_login";

/// What a session's CSRF token authenticates.
const SESSION_TEXT: &[u8] = b"stockanomaly review csrf v1";

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Random bytes from the thread's CSPRNG (ChaCha, seeded by the OS).
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    use rand::RngCore as _;
    let mut out = [0u8; N];
    rand::rng().fill_bytes(&mut out);
    out
}

fn mac(key: &[u8], parts: &[&[u8]]) -> String {
    // BLAKE2b takes keys of 1 to 64 bytes; ours are 32 or 64.
    let mut m = match <Mac256 as KeyInit>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    for p in parts {
        m.update(p);
    }
    hex(&m.finalize().into_bytes())
}

/// A per-process key for CSRF tokens of identities without a session.
#[derive(Clone)]
pub struct CsrfKey([u8; 32]);

impl std::fmt::Debug for CsrfKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CsrfKey(..)")
    }
}

impl CsrfKey {
    /// A fresh random key.
    pub fn random() -> Self {
        CsrfKey(random_bytes())
    }

    /// The token of the session whose secret token is `session_token`.
    pub fn for_session(session_token: &str) -> String {
        mac(session_token.as_bytes(), &[SESSION_TEXT])
    }

    /// The token of the user `name` (no session).
    pub fn for_name(&self, name: &str) -> String {
        mac(&self.0, &[b"name\0", name.as_bytes()])
    }
}

/// Compares secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bound_to_their_session_or_name() {
        let a = CsrfKey::for_session("aaaa");
        assert_eq!(a.len(), 64);
        assert_eq!(a, CsrfKey::for_session("aaaa"), "stable for a session");
        assert_ne!(a, CsrfKey::for_session("aaab"));
        let k = CsrfKey::random();
        assert_ne!(k.for_name("ana"), k.for_name("bob"));
        assert_ne!(k.for_name("ana"), CsrfKey::random().for_name("ana"));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
