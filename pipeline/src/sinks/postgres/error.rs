//! [`DbError`]: what went wrong talking to PostgreSQL, with the table or
//! server named and never a password.

/// An error of the PostgreSQL sink.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database URL does not parse. The URL itself is not repeated since
    /// it may hold a password.
    #[error("invalid database URL: {detail}")]
    InvalidUrl {
        /// What is wrong with it.
        detail: String,
    },
    /// A TLS setting (`PGSSLMODE`, `PGSSLROOTCERT`) is wrong or unusable.
    #[error("TLS for PostgreSQL at {target}: {detail}")]
    Tls {
        /// `user@host:port/dbname`.
        target: String,
        /// What is wrong.
        detail: String,
    },
    /// The server could not be reached or refused the login.
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect {
        /// `user@host:port/dbname`.
        target: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A statement failed; `context` says which (and on which table).
    #[error("{context}: {source}")]
    Query {
        /// What was being done, naming the table.
        context: String,
        /// The driver's error (carries the SQLSTATE when the server answered).
        #[source]
        source: tokio_postgres::Error,
    },
    /// A migration applied earlier differs from the one in this binary: the
    /// schema in the database is not what this binary expects.
    #[error(
        "migration {version} ({name}) changed after it was applied: checksum {applied} in \
         schema_migrations, {embedded} in this binary; restore the original file and add a new migration"
    )]
    ChecksumMismatch {
        /// The migration's version.
        version: i32,
        /// Its name.
        name: String,
        /// The checksum recorded when it was applied.
        applied: String,
        /// The checksum of the embedded file.
        embedded: String,
    },
    /// A model version was registered before with another kind or manifest.
    #[error("model {version} is already registered with another kind or manifest")]
    ModelConflict {
        /// The version.
        version: String,
    },
    /// The server did not answer in time: a network that drops packets
    /// without closing the connection, or a stalled server. The connection
    /// is dropped and the operation retried.
    #[error("{context}: PostgreSQL did not answer within {after:?}")]
    Timeout {
        /// What was being done, naming the table.
        context: String,
        /// How long was waited.
        after: std::time::Duration,
    },
    /// A row cannot be stored as given (e.g. a value out of the column's range).
    #[error("{table}: {detail}")]
    InvalidRow {
        /// The table it was meant for.
        table: &'static str,
        /// What is wrong.
        detail: String,
    },
}

impl DbError {
    /// True when the failure is the connection's (lost, refused, server
    /// shutting down, too many clients) or a transient conflict
    /// (serialization failure, deadlock): reconnect if needed and retry the
    /// same batch, which is idempotent. False for schema, constraint or data
    /// errors, which a retry repeats.
    pub fn is_retryable(&self) -> bool {
        match self {
            DbError::Connect { .. } | DbError::Timeout { .. } => true,
            DbError::Query { source, .. } => driver_error_is_transient(source),
            _ => false,
        }
    }

    pub(crate) fn query(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let context = context.into();
        move |source| DbError::Query { context, source }
    }
}

/// Connection-class failures: no SQLSTATE (I/O, closed connection) or one
/// of the classes a reconnect or a retry cures.
fn driver_error_is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // No SQLSTATE: the server did not answer (I/O error, timeout).
        None => std::error::Error::source(e)
            .map(|s| s.is::<std::io::Error>())
            .unwrap_or(true),
        Some(code) => {
            let c = code.code();
            // 08: connection exception; 40001 serialization failure; 40P01
            // deadlock; 53300 too many connections; 57P01..57P03 shutdown,
            // crash, cannot connect now.
            c.starts_with("08")
                || matches!(c, "40001" | "40P01" | "53300" | "57P01" | "57P02" | "57P03")
        }
    }
}
