//! The scheduler's state: which executors are alive, and how many tasks each
//! has run.
//!
//! Executors announce themselves every [`super::HEARTBEAT`]; one not heard
//! from within the time to live is dropped, so a killed executor leaves the
//! list within that time and later runs of dates are planned without it.
//! The map is bounded: a scheduler open to a network must not grow without
//! end when something announces random addresses.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use url::Url;

/// An executor's announcement (the body of `POST /v1/executors`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
    /// Where the executor's worker service answers (`http://host:port`).
    #[serde(with = "url_text")]
    pub url: Url,
    /// Tasks it has run since it started.
    pub tasks: u64,
}

/// One live executor as the scheduler lists it (`GET /v1/executors`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Where its worker service answers.
    #[serde(with = "url_text")]
    pub url: Url,
    /// Tasks it has run since it started, as of its last announcement.
    pub tasks: u64,
    /// Milliseconds since its last announcement.
    pub seen_ms_ago: u64,
}

/// URLs as their text on the wire.
mod url_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use url::Url;

    pub fn serialize<S: Serializer>(url: &Url, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(url.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Url, D::Error> {
        let text = String::deserialize(d)?;
        Url::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Why an announcement was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MembersError {
    /// The list holds as many executors as it may.
    #[error("the scheduler already lists {0} executors (its limit); {1} was not added")]
    Full(usize, Url),
    /// Not an address a worker can be reached at.
    #[error("{0}: an executor's address must be http://HOST:PORT")]
    BadUrl(Url),
}

/// The live executors, expired by the clock the caller reads.
#[derive(Debug)]
pub struct Members {
    ttl: Duration,
    cap: usize,
    by_url: HashMap<String, (Url, u64, Instant)>,
}

impl Members {
    /// An empty list whose executors expire `ttl` after their last
    /// announcement, holding at most `cap` of them.
    pub fn new(ttl: Duration, cap: usize) -> Self {
        Members {
            ttl,
            cap,
            by_url: HashMap::new(),
        }
    }

    /// How long an executor stays listed without announcing itself.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Records `a` as heard at `now`. Expired executors are dropped first,
    /// so a full list makes room as executors die.
    pub fn announce(&mut self, a: Announcement, now: Instant) -> Result<(), MembersError> {
        if a.url.scheme() != "http" || a.url.host_str().is_none() || a.url.port().is_none() {
            return Err(MembersError::BadUrl(a.url));
        }
        self.expire(now);
        let key = a.url.as_str().to_owned();
        if !self.by_url.contains_key(&key) && self.by_url.len() >= self.cap {
            return Err(MembersError::Full(self.cap, a.url));
        }
        if !self.by_url.contains_key(&key) {
            tracing::info!(url = %a.url, "Executor joined.");
        }
        self.by_url.insert(key, (a.url, a.tasks, now));
        Ok(())
    }

    /// The executors heard from within the time to live at `now`, by URL.
    pub fn live(&mut self, now: Instant) -> Vec<Member> {
        self.expire(now);
        let mut out: Vec<Member> = self
            .by_url
            .values()
            .map(|(url, tasks, seen)| Member {
                url: url.clone(),
                tasks: *tasks,
                seen_ms_ago: u64::try_from(now.saturating_duration_since(*seen).as_millis())
                    .unwrap_or(u64::MAX),
            })
            .collect();
        out.sort_by(|a, b| a.url.as_str().cmp(b.url.as_str()));
        out
    }

    fn expire(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.by_url.retain(|_, (url, _, seen)| {
            let alive = now.saturating_duration_since(*seen) <= ttl;
            if !alive {
                tracing::warn!(%url, "Executor not heard from; dropped from the cluster.");
            }
            alive
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(port: u16, tasks: u64) -> Announcement {
        Announcement {
            url: Url::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
            tasks,
        }
    }

    #[test]
    fn executors_expire_by_the_clock_and_the_list_is_bounded() {
        let t0 = Instant::now();
        let mut m = Members::new(Duration::from_secs(5), 2);
        m.announce(at(1, 0), t0).unwrap();
        m.announce(at(2, 0), t0 + Duration::from_secs(3)).unwrap();
        assert_eq!(
            m.announce(at(3, 0), t0 + Duration::from_secs(4)),
            Err(MembersError::Full(2, at(3, 0).url))
        );
        // Announcing again refreshes, and counts are the latest.
        m.announce(at(1, 7), t0 + Duration::from_secs(4)).unwrap();
        let live = m.live(t0 + Duration::from_secs(8));
        assert_eq!(live.len(), 2);
        assert_eq!((live[0].tasks, live[0].seen_ms_ago), (7, 4000));
        // Port 2 was last heard at 3 s: gone at 8.5 s, which makes room.
        let live = m.live(t0 + Duration::from_millis(8500));
        assert_eq!(live.len(), 1);
        m.announce(at(3, 0), t0 + Duration::from_millis(8500))
            .unwrap();
        assert!(m.live(t0 + Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn only_worker_addresses_are_listed() {
        let mut m = Members::new(Duration::from_secs(5), 2);
        for bad in ["https://a:1", "http://a", "file:///x"] {
            let a = Announcement {
                url: Url::parse(bad).unwrap(),
                tasks: 0,
            };
            assert!(matches!(
                m.announce(a, Instant::now()),
                Err(MembersError::BadUrl(_))
            ));
        }
    }
}
