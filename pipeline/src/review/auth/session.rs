//! Server-side sessions: a random token in an `HttpOnly` cookie, its
//! SHA-256 in `review_sessions` with an absolute expiry and an idle limit.
//! A new session (a new token) is made at every sign-in and the old one
//! ended, so a token planted before sign-in is worth nothing after it.

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::csrf::{hex, random_bytes};
use super::{Identity, Role, Via};
use crate::review::ReviewError;

/// How long sessions live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPolicy {
    /// From sign-in to expiry, whatever happens.
    pub ttl: Duration,
    /// Longest time without a request before the session ends.
    pub idle: Duration,
}

/// `last_seen` is written at most this often per session (not on every
/// request), or every half idle limit when that is shorter.
const TOUCH_EVERY_SECS: f64 = 60.0;

/// The session cookie's name and attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCookie {
    secure: bool,
}

impl SessionCookie {
    /// The cookie, `Secure` (and `__Host-` prefixed) when the public address
    /// is https.
    pub fn new(secure: bool) -> Self {
        SessionCookie { secure }
    }

    /// The session cookie's name.
    pub fn name(&self) -> &'static str {
        self.named("sa_session")
    }

    /// `base` with the `__Host-` prefix when secure: such a cookie must be
    /// `Secure`, `Path=/` and host-only, so a sibling subdomain cannot set
    /// one.
    pub fn named(&self, base: &'static str) -> &'static str {
        match (self.secure, base) {
            (true, "sa_session") => "__Host-sa_session",
            (true, "sa_login") => "__Host-sa_login",
            _ => base,
        }
    }

    /// A `Set-Cookie` value for `name=value` lasting `max_age` (zero:
    /// delete), `SameSite` as given.
    pub fn header(
        &self,
        name: &str,
        value: &str,
        max_age: Duration,
        same_site: &str,
    ) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        let v = format!(
            "{name}={value}; Path=/; HttpOnly; SameSite={same_site}; Max-Age={}{secure}",
            max_age.as_secs()
        );
        // Our names and values are ASCII tokens (hex): always valid.
        HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The `Set-Cookie` of a new session token. `SameSite=Lax`: a link to
    /// an alert from elsewhere opens signed in, while posts from other
    /// sites carry no session (and are refused by origin and CSRF checks
    /// anyway).
    pub fn set(&self, token: &str, ttl: Duration) -> HeaderValue {
        self.header(self.name(), token, ttl, "Lax")
    }

    /// The `Set-Cookie` that deletes the session cookie.
    pub fn clear(&self) -> HeaderValue {
        self.header(self.name(), "", Duration::ZERO, "Lax")
    }

    /// The session token the request carries, when it is well formed.
    pub fn read(&self, headers: &HeaderMap) -> Option<String> {
        read_cookie(headers, self.name()).filter(|t| is_token(t))
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn read_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Whether `s` looks like one of our tokens (64 lowercase hex digits).
pub(crate) fn is_token(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A fresh random token (256 bits, hex).
pub(crate) fn new_token() -> String {
    hex(&random_bytes::<32>())
}

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Sessions in PostgreSQL, per a [`SessionPolicy`].
#[derive(Debug, Clone)]
pub struct Sessions {
    /// Lifetimes.
    pub policy: SessionPolicy,
    /// The cookie carrying the token.
    pub cookie: SessionCookie,
}

impl Sessions {
    /// Sessions per `policy` carried by `cookie`.
    pub fn new(policy: SessionPolicy, cookie: SessionCookie) -> Self {
        Sessions { policy, cookie }
    }

    /// Starts a session for user `user_id`; returns its token. Expired
    /// sessions of anyone are removed on the way.
    pub async fn start(&self, client: &Client, user_id: i64) -> Result<String, ReviewError> {
        client
            .execute("DELETE FROM review_sessions WHERE expires_at <= now()", &[])
            .await
            .map_err(ReviewError::query("remove expired sessions"))?;
        let token = new_token();
        client
            .execute(
                "INSERT INTO review_sessions (token_hash, user_id, expires_at) \
                 VALUES ($1, $2, now() + make_interval(secs => $3))",
                &[
                    &token_hash(&token),
                    &user_id,
                    &self.policy.ttl.as_secs_f64(),
                ],
            )
            .await
            .map_err(ReviewError::query("start a session"))?;
        Ok(token)
    }

    /// The identity of a live session: not expired, used within the idle
    /// limit, its account enabled. Touches `last_seen` (at most once a
    /// minute).
    pub async fn find(
        &self,
        client: &Client,
        token: &str,
    ) -> Result<Option<Identity>, ReviewError> {
        let hash = token_hash(token);
        let row = client
            .query_opt(
                "SELECT u.id, u.name, u.role, \
                        s.last_seen < now() - make_interval(secs => $3) \
                 FROM review_sessions s JOIN review_users u ON u.id = s.user_id \
                 WHERE s.token_hash = $1 AND s.expires_at > now() \
                   AND s.last_seen > now() - make_interval(secs => $2) AND NOT u.disabled",
                &[
                    &hash,
                    &self.policy.idle.as_secs_f64(),
                    &TOUCH_EVERY_SECS.min(self.policy.idle.as_secs_f64() / 2.0),
                ],
            )
            .await
            .map_err(ReviewError::query("find a session"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        if row.get::<_, bool>(3) {
            client
                .execute(
                    "UPDATE review_sessions SET last_seen = now() WHERE token_hash = $1",
                    &[&hash],
                )
                .await
                .map_err(ReviewError::query("touch a session"))?;
        }
        Ok(Some(Identity {
            user_id: Some(row.get(0)),
            name: row.get(1),
            role: Role::parse(row.get(2)).unwrap_or(Role::Viewer),
            via: Via::Session(token.to_owned()),
        }))
    }

    /// Ends the session of `token` (signing out, or a new sign-in).
    pub async fn end(&self, client: &Client, token: &str) -> Result<(), ReviewError> {
        client
            .execute(
                "DELETE FROM review_sessions WHERE token_hash = $1",
                &[&token_hash(token)],
            )
            .await
            .map_err(ReviewError::query("end a session"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_http_only_same_site_and_secure_over_https() {
        let plain = SessionCookie::new(false);
        let v = plain.set(&"a".repeat(64), Duration::from_secs(60));
        let v = v.to_str().unwrap();
        assert!(v.starts_with("sa_session="), "{v}");
        assert!(
            v.contains("; HttpOnly") && v.contains("; SameSite=Lax") && v.contains("Max-Age=60")
        );
        assert!(!v.contains("Secure"));
        let tls = SessionCookie::new(true);
        let v = tls.set(&"a".repeat(64), Duration::from_secs(60));
        let v = v.to_str().unwrap();
        assert!(
            v.starts_with("__Host-sa_session=") && v.ends_with("; Secure"),
            "{v}"
        );
        assert!(tls.clear().to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn only_well_formed_tokens_are_read() {
        let c = SessionCookie::new(false);
        let t = new_token();
        assert!(is_token(&t));
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            format!("other=1; sa_session={t}").parse().unwrap(),
        );
        assert_eq!(c.read(&h), Some(t));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "sa_session=' OR 1=1 --".parse().unwrap());
        assert_eq!(c.read(&h), None);
    }
}
