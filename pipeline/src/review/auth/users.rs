//! The review accounts in PostgreSQL (`review_users`), as `stockanomaly
//! users` manages them and the server reads them.

use chrono::{DateTime, Utc};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::Role;
use crate::sinks::postgres::DbError;

/// What went wrong managing or reading accounts.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A user name outside the allowed characters or length.
    #[error("user name {0:?}: use 1 to 64 of A-Z a-z 0-9 . _ @ -")]
    BadName(String),
    /// A password that breaks the rules.
    #[error("password: {0}")]
    BadPassword(String),
    /// No such user.
    #[error("no user named {0} (`stockanomaly users list` shows them)")]
    UnknownUser(String),
    /// The name is taken.
    #[error("a user named {0} exists already (see `users passwd`, `users disable`)")]
    UserExists(String),
    /// The schema predates accounts.
    #[error("the database has no review accounts table: run `stockanomaly db migrate` first")]
    NotMigrated,
    /// Hashing failed (a bug or an exhausted system).
    #[error("hashing the password failed: {0}")]
    Hash(String),
    /// PostgreSQL could not be reached.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A statement failed; `what` names it.
    #[error("{what}: {source}")]
    Query {
        /// The statement.
        what: &'static str,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
}

impl AuthError {
    fn query(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| {
            if source.code() == Some(&SqlState::UNDEFINED_TABLE) {
                AuthError::NotMigrated
            } else {
                AuthError::Query { what, source }
            }
        }
    }
}

/// An account, as sign-in needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// Its id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its Argon2id hash; `None` when it cannot sign in with a password.
    pub password_hash: Option<String>,
    /// Whether it is disabled (no sign-in, no session).
    pub disabled: bool,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hash stays out of logs.
        f.debug_struct("User")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("role", &self.role)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

/// An account, as `users list` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct UserSummary {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Whether it is disabled.
    pub disabled: bool,
    /// Whether it has a password.
    pub has_password: bool,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// Its sessions not yet expired.
    pub sessions: i64,
}

/// Checks a user name: 1 to 64 of `A-Z a-z 0-9 . _ @ -` (what verdicts
/// record, and what a proxy header may carry).
pub fn check_name(name: &str) -> Result<(), AuthError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(AuthError::BadName(name.chars().take(80).collect()))
    }
}

fn role_of(stored: &str) -> Role {
    // The table's CHECK admits only the three names; a row that somehow
    // holds another gets the least privilege.
    Role::parse(stored).unwrap_or(Role::Viewer)
}

/// Adds an account; `password_hash` from [`super::hash_password`].
pub async fn add_user(
    client: &Client,
    name: &str,
    role: Role,
    password_hash: Option<&str>,
) -> Result<(), AuthError> {
    check_name(name)?;
    let r = client
        .execute(
            "INSERT INTO review_users (name, role, password_hash, password_changed_at) \
             VALUES ($1, $2, $3, CASE WHEN $3::text IS NULL THEN NULL ELSE now() END)",
            &[&name, &role.as_str(), &password_hash],
        )
        .await;
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            Err(AuthError::UserExists(name.to_owned()))
        }
        Err(e) => Err(AuthError::query("add a review user")(e)),
    }
}

/// Every account, by name.
pub async fn list_users(client: &Client) -> Result<Vec<UserSummary>, AuthError> {
    let rows = client
        .query(
            "SELECT u.name, u.role, u.disabled, u.password_hash IS NOT NULL, u.created_at, \
             (SELECT count(*) FROM review_sessions s \
              WHERE s.user_id = u.id AND s.expires_at > now()) \
             FROM review_users u ORDER BY u.name",
            &[],
        )
        .await
        .map_err(AuthError::query("list review users"))?;
    Ok(rows
        .iter()
        .map(|r| UserSummary {
            name: r.get(0),
            role: role_of(r.get(1)),
            disabled: r.get(2),
            has_password: r.get(3),
            created_at: r.get(4),
            sessions: r.get(5),
        })
        .collect())
}

/// Disables (ending its sessions at once) or enables an account.
pub async fn set_disabled(client: &Client, name: &str, disabled: bool) -> Result<(), AuthError> {
    // One statement: the sessions end in the same transaction.
    let n: i64 = client
        .query_one(
            "WITH u AS (UPDATE review_users SET disabled = $2 WHERE name = $1 RETURNING id), \
             d AS (DELETE FROM review_sessions WHERE $2 AND user_id IN (SELECT id FROM u)) \
             SELECT count(*) FROM u",
            &[&name, &disabled],
        )
        .await
        .map_err(AuthError::query("disable a review user"))?
        .get(0);
    if n == 0 {
        return Err(AuthError::UnknownUser(name.to_owned()));
    }
    Ok(())
}

/// Replaces an account's password hash and ends its sessions (whoever had
/// the old password is signed out).
pub async fn set_password(
    client: &Client,
    name: &str,
    password_hash: &str,
) -> Result<(), AuthError> {
    let n: i64 = client
        .query_one(
            "WITH u AS (UPDATE review_users SET password_hash = $2, password_changed_at = now() \
                        WHERE name = $1 RETURNING id), \
             d AS (DELETE FROM review_sessions WHERE user_id IN (SELECT id FROM u)) \
             SELECT count(*) FROM u",
            &[&name, &password_hash],
        )
        .await
        .map_err(AuthError::query("change a review user's password"))?
        .get(0);
    if n == 0 {
        return Err(AuthError::UnknownUser(name.to_owned()));
    }
    Ok(())
}

/// The account named `name`, if any (`None` for a name that cannot be one).
pub async fn find_user(client: &Client, name: &str) -> Result<Option<User>, AuthError> {
    if check_name(name).is_err() {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT id, name, role, password_hash, disabled FROM review_users WHERE name = $1",
            &[&name],
        )
        .await
        .map_err(AuthError::query("find a review user"))?;
    Ok(row.map(|r| User {
        id: r.get(0),
        name: r.get(1),
        role: role_of(r.get(2)),
        password_hash: r.get(3),
        disabled: r.get(4),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_and_plain() {
        for ok in ["ana", "ana.lyst@example.com", "a-b_c", &"x".repeat(64)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "ana lyst", "ana\n", "<b>", &"x".repeat(65), "ünï"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
