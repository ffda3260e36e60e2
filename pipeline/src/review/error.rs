//! Errors of the review app and label export, and how a request that failed
//! with one is answered.

use axum::http::StatusCode;

use crate::lake::LakeError;
use crate::sinks::postgres::DbError;

/// What went wrong serving the review app or exporting its verdicts.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// A request's parameter or body is invalid: the message names which and why.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No alert (or case: `what`) has this id.
    #[error("no {what} with id {id}")]
    NotFound {
        /// `alert` or `case`.
        what: &'static str,
        /// The id asked for.
        id: i64,
    },
    /// The request names a `Host` this server does not answer for (a DNS
    /// rebinding attempt, or `--public-url` not set to the address in use).
    #[error("this server does not answer for Host {host:?}: see --public-url")]
    UnknownHost {
        /// The request's `Host` header.
        host: String,
    },
    /// No valid session, credentials or proxy-asserted user.
    #[error("sign in first: {0}")]
    Unauthenticated(String),
    /// Signed in, but the role does not allow it.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A state-changing request that may come from another site's page.
    #[error("cross-site request refused: {reason}")]
    CrossSite {
        /// Why it counts as cross-site (the `Origin` seen, or none).
        reason: String,
    },
    /// A form's CSRF token is missing or does not belong to the session.
    #[error("the form's security token is missing or stale (reload the page and try again)")]
    Csrf,
    /// Too many failed sign-ins for the account or from the client's
    /// address: refused, the right password included, for `retry_after`.
    #[error(
        "too many failed sign-ins for this account or from this address: try again in {} s",
        retry_after_secs(*.retry_after)
    )]
    TooManySignIns {
        /// How long the lockout still lasts.
        retry_after: std::time::Duration,
    },
    /// Every database connection is busy (or the database does not answer
    /// within the acquire timeout).
    #[error("the server is busy: try again in a moment")]
    Busy,
    /// PostgreSQL failed or could not be reached.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A query failed; `what` names it.
    #[error("{what}: {source}")]
    Query {
        /// The query that failed.
        what: &'static str,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// Reading or writing the lake failed.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// DataFusion failed reading the evidence window.
    #[error("reading ticks from the lake: {0}")]
    Evidence(#[from] datafusion::error::DataFusionError),
}

/// Whole seconds of a `Retry-After`, rounded up (at least 1).
pub(crate) fn retry_after_secs(wait: std::time::Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

impl ReviewError {
    /// A closure mapping a driver error to [`ReviewError::Query`] naming `what`.
    pub fn query(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| Self::Query { what, source }
    }

    /// The HTTP status a request failing with this error gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ReviewError::BadRequest(_) | ReviewError::UnknownHost { .. } => StatusCode::BAD_REQUEST,
            ReviewError::NotFound { .. } => StatusCode::NOT_FOUND,
            ReviewError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ReviewError::Forbidden(_) | ReviewError::CrossSite { .. } | ReviewError::Csrf => {
                StatusCode::FORBIDDEN
            }
            ReviewError::TooManySignIns { .. } => StatusCode::TOO_MANY_REQUESTS,
            ReviewError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            ReviewError::Db(e) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `Retry-After` seconds a response to this error carries.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ReviewError::TooManySignIns { retry_after } => Some(retry_after_secs(*retry_after)),
            _ => None,
        }
    }

    /// What the client is told: the message for its own mistakes, a
    /// generic sentence for ours (database and lake errors name tables,
    /// hosts and SQL; they go to the server's log only).
    pub fn public_message(&self) -> String {
        let status = self.status();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            "the server is busy or its database unavailable: try again in a moment".to_owned()
        } else if status.is_server_error() {
            "internal error: the server's log has the details".to_owned()
        } else {
            self.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_tell_the_client_nothing_internal() {
        let e = ReviewError::Lake(LakeError::InvalidRoot {
            root: "s3://secret-bucket/x".into(),
            reason: "no such bucket".into(),
        });
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.public_message().contains("secret-bucket"));
        let e = ReviewError::BadRequest("per_page must be ...".into());
        assert!(e.public_message().contains("per_page"));
        assert_eq!(ReviewError::Busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        let e = ReviewError::TooManySignIns {
            retry_after: std::time::Duration::from_millis(90_500),
        };
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after(), Some(91));
        assert!(
            e.public_message().contains("91 s"),
            "{}",
            e.public_message()
        );
    }
}
