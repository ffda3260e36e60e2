//! A small pool of PostgreSQL connections for the review server.

use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_postgres::Client;

use crate::sinks::postgres::{self, DbError};

/// Idle connections kept for reuse: the review app serves a handful of
/// analysts, so a few connections are plenty.
const MAX_IDLE: usize = 8;

/// Connections to one database, opened on demand and reused.
///
/// A request takes a connection ([`Pool::get`]) and gives it back when done
/// ([`Pool::put`]); one whose connection has closed is dropped, so a
/// restarted database costs one failed request, not a restart of the server.
#[derive(Clone)]
pub struct Pool {
    url: Arc<str>,
    idle: Arc<Mutex<Vec<Client>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never print it.
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool for `url`; checks that the database answers.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        let client = postgres::connect(url).await?;
        Ok(Self {
            url: url.into(),
            idle: Arc::new(Mutex::new(vec![client])),
        })
    }

    /// An open connection: an idle one, or a new one.
    pub async fn get(&self) -> Result<Client, DbError> {
        while let Some(client) = self.idle.lock().await.pop() {
            if !client.is_closed() {
                return Ok(client);
            }
        }
        postgres::connect(&self.url).await
    }

    /// Gives a connection back for reuse (dropped if closed or the pool is full).
    pub async fn put(&self, client: Client) {
        if client.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().await;
        if idle.len() < MAX_IDLE {
            idle.push(client);
        }
    }
}
