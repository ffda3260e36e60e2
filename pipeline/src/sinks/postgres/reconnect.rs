//! A PostgreSQL connection that comes back: [`Reconnecting`] hands out the
//! client, and after a connection-class failure drops it, waits with
//! exponential backoff and connects again, so that a detector rides out a
//! database restart or a network cut without crashing.

use std::time::Duration;

use tokio_postgres::Client;

use super::{connect, DbError};

/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// First wait after a failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// A PostgreSQL client that reconnects (see the module documentation).
pub struct Reconnecting {
    url: String,
    client: Option<Client>,
    backoff: Duration,
    failures: u64,
}

impl Reconnecting {
    /// Wraps an open client; `url` is used to reconnect.
    pub fn new(url: &str, client: Client) -> Self {
        Reconnecting {
            url: url.to_owned(),
            client: Some(client),
            backoff: FIRST_BACKOFF,
            failures: 0,
        }
    }

    /// The client, connecting first if the last one was lost.
    pub async fn client(&mut self) -> Result<&mut Client, DbError> {
        let client = match self.client.take() {
            Some(c) if !c.is_closed() => c,
            _ => {
                let c = connect(&self.url).await?;
                tracing::info!(
                    after_failures = self.failures,
                    "Connected to PostgreSQL again."
                );
                c
            }
        };
        Ok(self.client.insert(client))
    }

    /// Records a success: the next failure waits the shortest time again.
    pub fn succeeded(&mut self) {
        self.backoff = FIRST_BACKOFF;
        self.failures = 0;
    }

    /// Handles `error` from an operation: a connection-class error drops the
    /// client and sleeps the backoff (then the caller retries); any other
    /// error is returned as is.
    pub async fn failed(&mut self, error: DbError) -> Result<(), DbError> {
        if !error.is_retryable() {
            return Err(error);
        }
        self.failures += 1;
        tracing::warn!(
            error = %error,
            retry_in = ?self.backoff,
            failures = self.failures,
            "PostgreSQL unavailable; will reconnect and retry."
        );
        self.client = None;
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Ok(())
    }
}
