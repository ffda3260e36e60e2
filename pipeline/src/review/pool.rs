//! The review server's PostgreSQL connections: a bounded pool.
//!
//! The server shares its database with the detectors. A pool that opened a
//! connection whenever none was idle let a burst of requests take every
//! slot of `max_connections`, and then the detectors' reconnects failed.
//! This one holds at most [`PoolOptions::max_size`] connections; a request
//! waits at most [`PoolOptions::acquire_timeout`] for one and is then
//! answered 503 ([`ReviewError::Busy`]).

use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{self, Metrics, PoolError, RecycleError, RecycleResult, Timeouts};
use deadpool::Runtime;
use tokio_postgres::Client;

use super::ReviewError;
use crate::sinks::postgres::{self, DbError};

/// How many connections, and how long to wait.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolOptions {
    /// Connections held at most.
    pub max_size: usize,
    /// How long a request waits for a connection (or for a new one to open).
    pub acquire_timeout: Duration,
    /// PostgreSQL's `statement_timeout` on every connection: a slow query
    /// gives its connection back instead of holding it.
    pub statement_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            max_size: 8,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(15),
        }
    }
}

/// Opens connections with [`postgres::connect`] (TLS and `PGPASSWORD` as
/// everywhere else) and drops the ones that closed.
pub struct Manager {
    url: Arc<str>,
    statement_timeout_ms: u128,
}

impl managed::Manager for Manager {
    type Type = Client;
    type Error = DbError;

    async fn create(&self) -> Result<Client, DbError> {
        let client = postgres::connect(&self.url).await?;
        client
            .batch_execute(&format!(
                "SET statement_timeout = {ms}; SET idle_in_transaction_session_timeout = {ms}",
                ms = self.statement_timeout_ms
            ))
            .await
            .map_err(DbError::query("set the review connection's timeouts"))?;
        Ok(client)
    }

    async fn recycle(&self, client: &mut Client, _: &Metrics) -> RecycleResult<DbError> {
        if client.is_closed() {
            return Err(RecycleError::message("the connection closed"));
        }
        Ok(())
    }
}

/// A connection taken from the [`Pool`]; it goes back when dropped.
/// Dereferences to a [`Client`].
pub type PooledClient = managed::Object<Manager>;

/// Connections to one database (see the module documentation). Cloning
/// shares the pool.
#[derive(Clone)]
pub struct Pool {
    inner: managed::Pool<Manager>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never print it.
        f.debug_struct("Pool")
            .field("max_size", &self.inner.status().max_size)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool for `url` with default [`PoolOptions`]; checks that the
    /// database answers.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        Self::connect_with(url, &PoolOptions::default()).await
    }

    /// A pool for `url`; checks that the database answers (the first
    /// connection's error is returned as is, naming the server).
    pub async fn connect_with(url: &str, options: &PoolOptions) -> Result<Self, DbError> {
        let manager = Manager {
            url: url.into(),
            statement_timeout_ms: options.statement_timeout.as_millis().max(1),
        };
        let timeouts = Timeouts {
            wait: Some(options.acquire_timeout),
            create: Some(options.acquire_timeout),
            recycle: Some(options.acquire_timeout),
        };
        let inner = managed::Pool::builder(manager)
            .max_size(options.max_size.max(1))
            .timeouts(timeouts)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| DbError::InvalidUrl {
                detail: format!("cannot build the connection pool: {e}"),
            })?;
        let pool = Pool { inner };
        match pool.inner.get().await {
            Ok(_first) => Ok(pool),
            Err(PoolError::Backend(e)) => Err(e),
            Err(e) => Err(DbError::InvalidUrl {
                detail: format!("the database did not answer: {e}"),
            }),
        }
    }

    /// A connection: an idle one, a new one while fewer than `max_size`
    /// are open, else the first one given back within the acquire timeout.
    pub async fn get(&self) -> Result<PooledClient, ReviewError> {
        self.inner.get().await.map_err(|e| match e {
            PoolError::Backend(e) => {
                tracing::warn!(error = %e, "Opening a review database connection failed.");
                ReviewError::Db(e)
            }
            PoolError::Timeout(kind) => {
                tracing::warn!(
                    ?kind,
                    "No review database connection within the acquire timeout."
                );
                ReviewError::Busy
            }
            other => {
                tracing::error!(error = %other, "The review connection pool failed.");
                ReviewError::Busy
            }
        })
    }

    /// Connections open now (idle or in use).
    pub fn size(&self) -> usize {
        self.inner.status().size
    }
}
