//! [`Limits`]: how much one server lets its clients take.

use std::time::Duration;

/// Descriptors kept back for everything that is not a client connection
/// (the listener, PostgreSQL and Kafka sockets, files, the runtime).
const RESERVED_DESCRIPTORS: u64 = 64;

/// The limits [`super::serve`] enforces.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Client connections held at once; more wait in the listen backlog
    /// until one closes. Capped by [`descriptor_budget`].
    pub max_connections: usize,
    /// Time a connection has to send a complete request head, for its first
    /// request and for each next one on a kept-alive connection; then it is
    /// closed.
    pub header_read_timeout: Duration,
    /// Time a request has from its head to its response (waiting for a
    /// slot included); then it is answered 503.
    pub request_timeout: Duration,
    /// Requests handled at once over all connections; more wait (within
    /// their `request_timeout`).
    pub max_in_flight: usize,
    /// Largest request body accepted, bytes (413 beyond).
    pub max_body_bytes: usize,
}

impl Limits {
    /// Limits for the review app: a handful of analysts and their scripts.
    pub fn review() -> Self {
        Limits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_in_flight: 64,
            max_body_bytes: 64 * 1024,
        }
    }

    /// Limits for a metrics endpoint: one scraper, no bodies.
    pub fn metrics() -> Self {
        Limits {
            max_connections: 32,
            header_read_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_in_flight: 4,
            max_body_bytes: 0,
        }
    }

    /// `max_connections` lowered to what the descriptor limit allows (at
    /// least one).
    pub fn effective_max_connections(&self) -> usize {
        let budget = descriptor_budget().unwrap_or(u64::MAX);
        let cap = usize::try_from(budget).unwrap_or(usize::MAX);
        self.max_connections.min(cap).max(1)
    }
}

/// Client connections the process can hold: its open-file limit
/// (`RLIMIT_NOFILE`, soft) minus a reserve for everything else; `None` when
/// unlimited or unknown.
pub fn descriptor_budget() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one `rlimit` through the pointer, which
        // points at a live, properly aligned local.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        if rc != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
            return None;
        }
        #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not everywhere.
        let soft = lim.rlim_cur as u64;
        Some(soft.saturating_sub(RESERVED_DESCRIPTORS).max(1))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_stay_below_the_descriptor_limit() {
        let mut l = Limits::review();
        l.max_connections = usize::MAX;
        let eff = l.effective_max_connections();
        if let Some(budget) = descriptor_budget() {
            assert_eq!(eff as u64, budget);
        }
        l.max_connections = 3;
        assert_eq!(l.effective_max_connections(), 3);
        l.max_connections = 0;
        assert_eq!(l.effective_max_connections(), 1);
    }
}
