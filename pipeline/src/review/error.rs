//! Errors of the review app and label export.

use crate::lake::LakeError;
use crate::sinks::postgres::DbError;

/// What went wrong serving the review app or exporting its verdicts.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// A request's parameter or body is invalid: the message names which and why.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No alert has this id.
    #[error("no alert with id {0}")]
    NotFound(i64),
    /// A form was posted from another site's page.
    #[error("cross-site form post refused (Origin {origin} is not this server)")]
    CrossSite {
        /// The request's `Origin` header.
        origin: String,
    },
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

impl ReviewError {
    /// A closure mapping a driver error to [`ReviewError::Query`] naming `what`.
    pub fn query(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| Self::Query { what, source }
    }
}
