//! A PostgreSQL connection that comes back: [`Reconnecting`] hands out the
//! client, and after a connection-class failure drops it, waits with
//! exponential backoff and connects again, so that a detector rides out a
//! database restart or a network cut without crashing.

use std::time::Duration;

use tokio_postgres::Client;

use super::{connect, DbError};
use crate::backoff::Backoff;

/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// First wait after a failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// A PostgreSQL client that reconnects (see the module documentation).
pub struct Reconnecting {
    url: String,
    client: Option<Client>,
    backoff: Backoff,
    failures: u64,
    /// The server-side `statement_timeout` of every session, if any.
    statement_timeout: Option<Duration>,
}

impl Reconnecting {
    /// Wraps an open client; `url` is used to reconnect.
    pub fn new(url: &str, client: Client) -> Self {
        Reconnecting {
            url: url.to_owned(),
            client: Some(client),
            backoff: Backoff::new(FIRST_BACKOFF, MAX_BACKOFF),
            failures: 0,
            statement_timeout: None,
        }
    }

    /// Sets the server's `statement_timeout` on this session and every
    /// reconnected one: a statement stuck on the server (a lock) ends with
    /// an error the caller retries, instead of holding the batch.
    pub async fn with_statement_timeout(mut self, timeout: Duration) -> Result<Self, DbError> {
        self.statement_timeout = Some(timeout);
        if let Some(c) = &self.client {
            set_statement_timeout(c, timeout).await?;
        }
        Ok(self)
    }

    /// The client, connecting first if the last one was lost.
    pub async fn client(&mut self) -> Result<&mut Client, DbError> {
        let client = match self.client.take() {
            Some(c) if !c.is_closed() => c,
            _ => {
                let c = connect(&self.url).await?;
                if let Some(t) = self.statement_timeout {
                    set_statement_timeout(&c, t).await?;
                }
                tracing::info!(
                    after_failures = self.failures,
                    "Connected to PostgreSQL again."
                );
                c
            }
        };
        Ok(self.client.insert(client))
    }

    /// Drops the client (a call on it timed out: the connection may be
    /// stuck), so that the next [`client`](Self::client) connects anew.
    pub fn abandon(&mut self) {
        self.client = None;
    }

    /// Records a success: the next failure waits the shortest time again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Handles `error` from an operation: a connection-class error drops the
    /// client and sleeps the backoff (then the caller retries); any other
    /// error is returned as is.
    pub async fn failed(&mut self, error: DbError) -> Result<(), DbError> {
        if !error.is_retryable() {
            return Err(error);
        }
        let pause = self
            .backoff
            .delay(u32::try_from(self.failures).unwrap_or(u32::MAX));
        self.failures += 1;
        tracing::warn!(
            error = %error,
            retry_in = ?pause,
            failures = self.failures,
            "PostgreSQL unavailable; will reconnect and retry."
        );
        self.client = None;
        tokio::time::sleep(pause).await;
        Ok(())
    }
}

/// `SET statement_timeout` on `client`'s session.
async fn set_statement_timeout(client: &Client, timeout: Duration) -> Result<(), DbError> {
    client
        .batch_execute(&format!(
            "SET statement_timeout = {}",
            timeout.as_millis().max(1)
        ))
        .await
        .map_err(DbError::query("set statement_timeout"))
}
