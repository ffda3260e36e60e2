//! Who may use the review app, and how they prove it.
//!
//! Three modes ([`AuthMode`]): **accounts** (the default; users made with
//! `stockanomaly users`, a login page with server-side sessions in
//! PostgreSQL, HTTP Basic for the JSON API), **trusted-header** (an SSO
//! proxy names the user in a header, believed only from its addresses) and
//! **none** (loopback only, for a laptop). Whatever the mode, [`gate`] runs
//! before every route: it checks `Host` against the public address (DNS
//! rebinding), finds the [`Identity`], refuses state-changing requests that
//! may come from another site, and hands the identity to the handlers,
//! which check the role ([`Role::can_decide`]) and forms' CSRF tokens.

mod csrf;
mod gate;
mod password;
mod session;
mod site;
mod throttle;
mod users;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName};
use ipnet::IpNet;

pub use csrf::{constant_time_eq, CsrfKey, LOGIN_CSRF_COOKIE};
pub(crate) use gate::auth_db;
pub use gate::{gate, GateState};
pub use password::{check_password_rules, hash_password, Hasher, MIN_PASSWORD_CHARS};
pub use session::{read_cookie, SessionCookie, SessionPolicy, Sessions};
pub use throttle::{Clock, LoginLimiter, LoginLimits, ManualClock, SystemClock};

/// A fresh token for the login form's double-submit cookie.
pub(crate) fn new_login_token() -> String {
    session::new_token()
}

pub(crate) use session::is_token;
pub use site::{Site, SiteError};
pub use users::{
    add_user, check_name, find_user, list_users, set_disabled, set_password, AuthError, User,
    UserSummary,
};

/// What a signed-in person may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Role {
    /// Reads the queue, alerts, evidence and verdicts.
    Viewer,
    /// A viewer who also records verdicts.
    Analyst,
    /// An analyst; accounts themselves are managed with `stockanomaly users`.
    Admin,
}

impl Role {
    /// Its name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Analyst => "analyst",
            Role::Admin => "admin",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "analyst" => Some(Role::Analyst),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// Whether this role records verdicts (which become training labels).
    pub fn can_decide(self) -> bool {
        self >= Role::Analyst
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the identity of a request was established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// A session cookie; the token, from which the CSRF token derives.
    Session(String),
    /// HTTP Basic credentials on the JSON API (scripts).
    Basic,
    /// A header set by a trusted SSO proxy.
    Header,
    /// `--auth none`: everyone on loopback.
    Open,
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user's name: what a verdict records as its analyst.
    pub name: String,
    /// What they may do.
    pub role: Role,
    /// Their account, when they have one.
    pub user_id: Option<i64>,
    /// How they proved it.
    pub via: Via,
}

/// The authentication mode of a server.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthMode {
    /// Accounts in PostgreSQL, sessions, HTTP Basic on the API.
    Accounts,
    /// The user named in `header` by a proxy at one of `proxies`.
    TrustedHeader {
        /// The header the proxy sets (`X-Forwarded-User`).
        header: HeaderName,
        /// The proxy's addresses; the header from anyone else is ignored.
        proxies: Vec<IpNet>,
        /// The role of a named user without an account (an account's role,
        /// or its being disabled, wins).
        default_role: Role,
    },
    /// No authentication (loopback only).
    None,
}

impl AuthMode {
    /// The mode's name, as `--auth` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            AuthMode::Accounts => "accounts",
            AuthMode::TrustedHeader { .. } => "trusted-header",
            AuthMode::None => "none",
        }
    }
}

/// Everything the gate and the login pages share.
#[derive(Debug, Clone)]
pub struct Auth {
    /// The mode.
    pub mode: AuthMode,
    /// The public address: allowed `Host`s, the origin posts must come from,
    /// whether cookies are `Secure`.
    pub site: Site,
    /// Session lifetimes and the cookie.
    pub sessions: Sessions,
    /// Key of the CSRF tokens of identities without a session.
    pub csrf: CsrfKey,
    /// Password verification, off the async threads and bounded.
    pub hasher: Hasher,
    /// Failed sign-ins per account name and client address.
    pub limiter: Arc<LoginLimiter>,
    /// Reverse proxies whose `X-Forwarded-For` names the client (the
    /// address the sign-in limit counts); from anyone else it is ignored.
    pub forwarded_by: Vec<IpNet>,
}

/// The client address of a request, as the gate puts it in the request's
/// extensions: what the sign-in limit counts failures under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub Option<IpAddr>);

impl Auth {
    /// The auth of a server in `mode` at `site`, sessions per `policy`,
    /// sign-ins limited by `limiter`, client addresses read from the
    /// `X-Forwarded-For` of the proxies `forwarded_by`.
    pub fn new(
        mode: AuthMode,
        site: Site,
        policy: SessionPolicy,
        limiter: LoginLimiter,
        forwarded_by: Vec<IpNet>,
    ) -> Arc<Self> {
        let cookie = SessionCookie::new(site.secure());
        Arc::new(Auth {
            mode,
            site,
            sessions: Sessions::new(policy, cookie),
            csrf: CsrfKey::random(),
            hasher: Hasher::default(),
            limiter: Arc::new(limiter),
            forwarded_by,
        })
    }

    /// The client behind a request from `peer`: `peer` itself, unless it is
    /// one of the [`forwarded_by`](Self::forwarded_by) proxies, whose last
    /// `X-Forwarded-For` address (the one it saw connect) is taken instead.
    pub fn client_addr(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> ClientAddr {
        let Some(ip) = peer else {
            return ClientAddr(None);
        };
        if !self.forwarded_by.iter().any(|net| net.contains(&ip)) {
            return ClientAddr(Some(ip));
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|a| a.trim().parse::<IpAddr>().ok());
        ClientAddr(Some(forwarded.map_or(ip, |a| a.to_canonical())))
    }

    /// The CSRF token that forms shown to `identity` carry.
    pub fn csrf_token(&self, identity: &Identity) -> String {
        match &identity.via {
            Via::Session(token) => CsrfKey::for_session(token),
            _ => self.csrf.for_name(&identity.name),
        }
    }

    /// Whether `given` is `identity`'s CSRF token.
    pub fn csrf_ok(&self, identity: &Identity, given: &str) -> bool {
        constant_time_eq(self.csrf_token(identity).as_bytes(), given.as_bytes())
    }

    /// The enabled account `name` whose password is `password`, else
    /// `None` (unknown name, wrong password, no password, disabled: all
    /// alike, and as slow). Counted by the sign-in limit under `name` and
    /// `client`; while either is locked out the password is not checked
    /// and the answer is [`TooManySignIns`](super::ReviewError::TooManySignIns).
    pub async fn check_password(
        &self,
        pool: &super::Pool,
        name: &str,
        password: String,
        client: ClientAddr,
    ) -> Result<Option<User>, super::ReviewError> {
        let shown = if check_name(name).is_ok() {
            name
        } else {
            "(not a user name)"
        };
        if let Err(wait) = self.limiter.check(name, client.0) {
            tracing::warn!(user = shown, client = ?client.0, retry_after_s = wait.as_secs(),
                "Refused a sign-in: too many failed ones for this account or address.");
            return Err(super::ReviewError::TooManySignIns { retry_after: wait });
        }
        // The connection goes back before the (slow) hash is checked.
        let user = {
            let client = pool.get().await?;
            find_user(&client, name).await.map_err(auth_db)?
        };
        let hash = user
            .as_ref()
            .filter(|u| !u.disabled)
            .and_then(|u| u.password_hash.clone());
        let ok = self.hasher.verify(hash, password).await;
        if ok {
            self.limiter.succeeded(name, client.0);
            Ok(user)
        } else {
            self.limiter.failed(name, client.0);
            tracing::info!(user = shown, client = ?client.0, "Failed sign-in.");
            Ok(None)
        }
    }
}

/// Default absolute lifetime of a session.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Default time a session survives without a request.
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_analysts_and_admins_decide() {
        assert!(!Role::Viewer.can_decide());
        assert!(Role::Analyst.can_decide());
        assert!(Role::Admin.can_decide());
        for r in [Role::Viewer, Role::Analyst, Role::Admin] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn the_client_is_the_peer_unless_a_trusted_proxy_forwards_it() {
        let site = Site::listening("127.0.0.1:8080".parse().unwrap()).unwrap();
        let policy = SessionPolicy {
            ttl: DEFAULT_SESSION_TTL,
            idle: DEFAULT_SESSION_IDLE,
        };
        let auth = Auth::new(
            AuthMode::Accounts,
            site,
            policy,
            LoginLimiter::default(),
            vec!["10.0.0.5/32".parse().unwrap()],
        );
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.4".parse().unwrap(),
        );
        // From the proxy: the address it saw connect (the last one; what a
        // client writes before it is not believed).
        assert_eq!(
            auth.client_addr(ip("10.0.0.5"), &h),
            ClientAddr(ip("198.51.100.4"))
        );
        // From anyone else the header is ignored.
        assert_eq!(
            auth.client_addr(ip("10.0.0.6"), &h),
            ClientAddr(ip("10.0.0.6"))
        );
        // A proxy that sends none (or garbage) is the client.
        h.insert("x-forwarded-for", "not an address".parse().unwrap());
        assert_eq!(
            auth.client_addr(ip("10.0.0.5"), &h),
            ClientAddr(ip("10.0.0.5"))
        );
        assert_eq!(
            auth.client_addr(ip("10.0.0.5"), &HeaderMap::new()),
            ClientAddr(ip("10.0.0.5"))
        );
        assert_eq!(auth.client_addr(None, &h), ClientAddr(None));
    }
}
