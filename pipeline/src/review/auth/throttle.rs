//! The sign-in limit: failed sign-ins (the login form and HTTP Basic on the
//! API alike) are counted per account name and per client address; after
//! [`LoginLimits::max_failures`] failures within [`LoginLimits::window`],
//! that name (from anywhere) and that address (for any name) are locked out
//! for [`LoginLimits::lockout`]: their attempts get 429 with `Retry-After`
//! before the password is even checked, the right password included. A
//! successful sign-in clears its name's and its address's count.
//!
//! Both maps are bounded ([`LoginLimits::max_entries`] each, the entry
//! touched longest ago evicted first), so a stranger spraying names or
//! addresses costs a fixed amount of memory. The clock is injectable
//! ([`Clock`]) so tests can step through windows and lockouts.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the limiter reads the time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> Instant;
}

/// The system's monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// How hard the limit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// Failures within [`window`](Self::window) that lock a name or an
    /// address out.
    pub max_failures: u32,
    /// The span failures are counted over, from the first of a series.
    pub window: Duration,
    /// How long a locked-out name or address is refused.
    pub lockout: Duration,
    /// Names (and, apart, addresses) remembered at most.
    pub max_entries: usize,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            max_failures: 5,
            window: Duration::from_secs(15 * 60),
            lockout: Duration::from_secs(15 * 60),
            max_entries: 10_000,
        }
    }
}

/// Counts failed sign-ins and says who is locked out.
#[derive(Debug)]
pub struct LoginLimiter {
    limits: LoginLimits,
    clock: Arc<dyn Clock>,
    maps: Mutex<(Bounded<String>, Bounded<IpAddr>)>,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        Self::new(LoginLimits::default())
    }
}

impl LoginLimiter {
    /// A limiter on the system clock.
    pub fn new(limits: LoginLimits) -> Self {
        Self::with_clock(limits, Arc::new(SystemClock))
    }

    /// A limiter reading the time from `clock`.
    pub fn with_clock(limits: LoginLimits, clock: Arc<dyn Clock>) -> Self {
        let cap = limits.max_entries.max(1);
        Self {
            limits,
            clock,
            maps: Mutex::new((Bounded::new(cap), Bounded::new(cap))),
        }
    }

    /// Its limits.
    pub fn limits(&self) -> &LoginLimits {
        &self.limits
    }

    /// `Err(wait)` when `name` or `addr` is locked out (for `wait` more);
    /// to be asked before the password is checked.
    pub fn check(&self, name: &str, addr: Option<IpAddr>) -> Result<(), Duration> {
        let now = self.clock.now();
        let mut maps = self.lock();
        let by_name = name_key(name).and_then(|n| maps.0.locked(&n, now));
        let by_addr = addr.and_then(|a| maps.1.locked(&addr_key(a), now));
        match by_name.into_iter().chain(by_addr).max() {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    /// Counts a failed sign-in of `name` from `addr`.
    pub fn failed(&self, name: &str, addr: Option<IpAddr>) {
        let now = self.clock.now();
        let limits = self.limits;
        let mut maps = self.lock();
        if let Some(n) = name_key(name) {
            maps.0.fail(n, now, &limits);
        }
        if let Some(a) = addr {
            maps.1.fail(addr_key(a), now, &limits);
        }
    }

    /// A successful sign-in of `name` from `addr`: both counts start over.
    pub fn succeeded(&self, name: &str, addr: Option<IpAddr>) {
        let mut maps = self.lock();
        if let Some(n) = name_key(name) {
            maps.0.remove(&n);
        }
        if let Some(a) = addr {
            maps.1.remove(&addr_key(a));
        }
    }

    /// Names and addresses remembered (for tests and metrics).
    pub fn entries(&self) -> (usize, usize) {
        let maps = self.lock();
        (maps.0.entries.len(), maps.1.entries.len())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Bounded<String>, Bounded<IpAddr>)> {
        // A panic while holding the lock leaves counts that are still
        // counts: keep using them.
        self.maps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The key of an account name: only names an account can have are counted
/// (anything else fails without touching an account, and is counted by
/// address only).
fn name_key(name: &str) -> Option<String> {
    super::check_name(name).is_ok().then(|| name.to_owned())
}

/// The key of a client address: IPv4 as is, IPv6 by its /64 (one host
/// usually holds a whole /64).
fn addr_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// One name's or address's failures.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// When the current series of failures began.
    first: Instant,
    /// Failures since `first`.
    failures: u32,
    /// Refused until then.
    locked_until: Option<Instant>,
    /// Its place in [`Bounded::order`].
    stamp: u64,
}

/// A map of at most `cap` entries; inserting into a full one evicts the
/// entry touched longest ago.
#[derive(Debug)]
struct Bounded<K> {
    entries: HashMap<K, Entry>,
    /// Keys by when they were last touched (oldest first).
    order: BTreeMap<u64, K>,
    next: u64,
    cap: usize,
}

impl<K: Hash + Eq + Clone> Bounded<K> {
    fn new(cap: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next: 0,
            cap,
        }
    }

    /// How much longer `key` is locked out, if it is (an expired lockout
    /// is forgotten).
    fn locked(&mut self, key: &K, now: Instant) -> Option<Duration> {
        let until = self.entries.get(key)?.locked_until?;
        if now < until {
            Some(until - now)
        } else {
            self.remove(key);
            None
        }
    }

    fn fail(&mut self, key: K, now: Instant, limits: &LoginLimits) {
        let stamp = self.next;
        self.next += 1;
        if let Some(e) = self.entries.get(&key) {
            self.order.remove(&e.stamp);
        } else {
            while self.entries.len() >= self.cap {
                let Some((_, oldest)) = self.order.pop_first() else {
                    break;
                };
                self.entries.remove(&oldest);
            }
        }
        let entry = self.entries.entry(key.clone()).or_insert(Entry {
            first: now,
            failures: 0,
            locked_until: None,
            stamp,
        });
        entry.stamp = stamp;
        let expired = entry.locked_until.is_some_and(|u| now >= u)
            || (entry.locked_until.is_none() && now.duration_since(entry.first) > limits.window);
        if expired {
            *entry = Entry {
                first: now,
                failures: 0,
                locked_until: None,
                stamp,
            };
        }
        entry.failures = entry.failures.saturating_add(1);
        if entry.failures >= limits.max_failures.max(1) && entry.locked_until.is_none() {
            entry.locked_until = Some(now + limits.lockout);
        }
        self.order.insert(stamp, key);
    }

    fn remove(&mut self, key: &K) {
        if let Some(e) = self.entries.remove(key) {
            self.order.remove(&e.stamp);
        }
    }
}

/// A clock that moves only when told: for tests.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    offset: Mutex<Duration>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
        }
    }
}

impl ManualClock {
    /// Moves the clock `by` forward.
    pub fn advance(&self, by: Duration) {
        *self
            .offset
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start
            + *self
                .offset
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn limiter() -> (LoginLimiter, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        let limits = LoginLimits {
            max_failures: 5,
            window: 15 * MIN,
            lockout: 10 * MIN,
            max_entries: 100,
        };
        (LoginLimiter::with_clock(limits, clock.clone()), clock)
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn five_failures_lock_the_account_out_from_anywhere_until_the_lockout_ends() {
        let (l, clock) = limiter();
        for i in 0..4 {
            // From a new address each time: the address limit is not what
            // stops this.
            let from = ip(&format!("10.0.0.{i}"));
            assert_eq!(l.check("ana", from), Ok(()));
            l.failed("ana", from);
        }
        assert_eq!(l.check("ana", ip("10.0.0.9")), Ok(()));
        l.failed("ana", ip("10.0.0.9"));
        // Locked out, whoever asks (the right password is never checked).
        assert_eq!(l.check("ana", ip("10.1.1.1")), Err(10 * MIN));
        assert_eq!(l.check("ana", None), Err(10 * MIN));
        // Other accounts from other addresses are not.
        assert_eq!(l.check("bob", ip("10.1.1.1")), Ok(()));
        clock.advance(4 * MIN);
        assert_eq!(l.check("ana", None), Err(6 * MIN));
        clock.advance(6 * MIN);
        assert_eq!(l.check("ana", None), Ok(()), "the lockout is over");
        // And the count started over.
        l.failed("ana", None);
        assert_eq!(l.check("ana", None), Ok(()));
    }

    #[test]
    fn one_address_spraying_many_accounts_is_locked_out() {
        let (l, clock) = limiter();
        let from = ip("192.0.2.7");
        for name in ["a1", "a2", "a3", "a4", "a5"] {
            assert_eq!(l.check(name, from), Ok(()));
            l.failed(name, from);
        }
        assert_eq!(l.check("a6", from), Err(10 * MIN));
        // The same accounts from elsewhere are not (one failure each).
        assert_eq!(l.check("a1", ip("192.0.2.8")), Ok(()));
        clock.advance(10 * MIN);
        assert_eq!(l.check("a6", from), Ok(()));
    }

    #[test]
    fn failures_spread_wider_than_the_window_do_not_lock() {
        let (l, clock) = limiter();
        for _ in 0..4 {
            l.failed("ana", ip("10.0.0.1"));
        }
        clock.advance(16 * MIN);
        // A new series: one failure.
        l.failed("ana", ip("10.0.0.1"));
        assert_eq!(l.check("ana", ip("10.0.0.1")), Ok(()));
        for _ in 0..3 {
            l.failed("ana", ip("10.0.0.1"));
        }
        assert_eq!(l.check("ana", ip("10.0.0.1")), Ok(()));
        l.failed("ana", ip("10.0.0.1"));
        assert!(l.check("ana", ip("10.0.0.1")).is_err());
    }

    #[test]
    fn a_success_starts_the_counts_over() {
        let (l, _clock) = limiter();
        for _ in 0..4 {
            l.failed("ana", ip("10.0.0.1"));
        }
        l.succeeded("ana", ip("10.0.0.1"));
        for _ in 0..4 {
            l.failed("ana", ip("10.0.0.1"));
        }
        assert_eq!(l.check("ana", ip("10.0.0.1")), Ok(()));
        assert_eq!(l.entries(), (1, 1));
    }

    #[test]
    fn the_maps_are_bounded_and_evict_the_oldest() {
        let (l, _clock) = limiter();
        // Locked out first...
        for _ in 0..5 {
            l.failed("victim", None);
        }
        assert!(l.check("victim", None).is_err());
        // ...then 100 other names and addresses: the cap is 100 each.
        for i in 0..100 {
            l.failed(
                &format!("n{i}"),
                ip(&format!("10.0.{}.{}", i / 200, i % 200)),
            );
        }
        assert_eq!(l.entries(), (100, 100));
        assert_eq!(l.check("victim", None), Ok(()), "the oldest was evicted");
        for i in 0..1000 {
            l.failed(
                &format!("m{i}"),
                ip(&format!("10.1.{}.{}", i / 200, i % 200)),
            );
        }
        assert_eq!(l.entries(), (100, 100));
        // The newest are still counted.
        for _ in 0..4 {
            l.failed("m999", None);
        }
        assert!(l.check("m999", None).is_err());
    }

    #[test]
    fn names_no_account_can_have_count_by_address_only_and_ipv6_by_its_64() {
        let (l, _clock) = limiter();
        let long = "x".repeat(500);
        for i in 0..5 {
            l.failed(&long, ip(&format!("2001:db8::{i}")));
        }
        assert_eq!(l.entries(), (0, 1));
        assert!(l.check("ana", ip("2001:db8::ffff")).is_err());
        assert_eq!(l.check("ana", ip("2001:db8:0:1::1")), Ok(()));
        // An IPv4-mapped address is its IPv4 address.
        for _ in 0..5 {
            l.failed("zz", ip("::ffff:192.0.2.1"));
        }
        assert!(l.check("other", ip("192.0.2.1")).is_err());
    }
}
