//! `stockanomaly serve`: the alert review web app.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::http::HeaderName;
use clap::{Args, ValueEnum};
use ipnet::IpNet;

use super::{open_lake, UsageError};
use crate::review::auth::{Auth, AuthMode, LoginLimiter, LoginLimits, Role, SessionPolicy, Site};
use crate::review::{serve, AppState, Pool, PoolOptions, TickStore};
use crate::web::Limits;

/// Where the alert page reads its evidence ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TicksFrom {
    /// The lake's `ticks` table (--lake).
    Lake,
    /// PostgreSQL's `ticks` table (the live tick store).
    Postgres,
}

/// The header an SSO proxy names the user in, unless `--auth` says another.
const DEFAULT_USER_HEADER: &str = "X-Forwarded-User";

/// `stockanomaly serve`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Serves the analysts' alert review app: a queue of alerts (filter by symbol,
kind, score, time, model version and status; sorted by score), an alert page
with price and volume around the alert, its features and top SHAP
contributions, and a form recording a verdict (confirmed, dismissed,
escalated, with a note) in PostgreSQL's `dispositions`, history kept, under
the signed-in user's name. `stockanomaly labels export` turns verdicts into
lake labels for the next `train`. The same data is served as JSON under
/api/ (documented at /api). Pages need no internet access.

Who may do what (--auth):
  accounts        (default) users made with `stockanomaly users add`: a login
                  page and a session cookie for browsers, HTTP Basic for the
                  JSON API. Viewers read; analysts and admins give verdicts.
  trusted-header [HEADER]
                  behind an SSO proxy that names the user in HEADER
                  (default X-Forwarded-User); believed only from the
                  --trusted-proxy addresses. A user with an account gets its
                  role, others --trusted-header-role.
  none            no sign-in, everyone may do everything: only on a loopback
                  address, for a laptop.

Unauthenticated requests get 401 (API) or the login page; a role without the
right gets 403; posts whose Origin is not this server (or absent, except for
HTTP Basic scripts) get 403, and forms carry a CSRF token. Only the Host of
--public-url is served (needed when listening on all interfaces; cookies are
Secure when it is https). After --login-max-failures failed sign-ins (login
form or HTTP Basic) within --login-window-minutes, the account (from any
address) and the client's address (for any account) are refused with 429
and Retry-After for --login-lockout-minutes, the right password included; a
success starts the counts over. Behind a reverse proxy, give its address as
--trusted-proxy so the client's address is read from X-Forwarded-For
(otherwise every client counts as the proxy). The server holds at most --db-pool-size database
connections and closes connections that send no request within
--header-timeout-ms.

Examples:
  stockanomaly users add ana --role analyst --database-url postgres://detector@db/stockanomaly
  stockanomaly serve --database-url postgres://review@db/stockanomaly
  stockanomaly serve --listen 0.0.0.0:8080 --public-url https://review.example.com
  stockanomaly serve --auth trusted-header X-Forwarded-User --trusted-proxy 10.0.0.5 \\
      --listen 0.0.0.0:8080 --public-url https://review.example.com")]
pub struct ServeArgs {
    /// The database.
    #[command(flatten)]
    pub db: super::shared::DbUrlArgs,

    /// Address to listen on.
    #[arg(
        long,
        env = "STOCKANOMALY_LISTEN",
        default_value = "127.0.0.1:8080",
        value_name = "HOST:PORT"
    )]
    pub listen: String,

    /// Where alert pages read the ticks around an alert.
    #[arg(long, env = "STOCKANOMALY_TICKS_FROM", value_enum, default_value_t = TicksFrom::Lake)]
    pub ticks_from: TicksFrom,

    /// How people sign in: `accounts`, `trusted-header [HEADER]` or `none`
    /// (see below).
    #[arg(
        long,
        env = "STOCKANOMALY_AUTH",
        num_args = 1..=2,
        value_delimiter = ' ',
        default_value = "accounts",
        value_name = "MODE [HEADER]"
    )]
    pub auth: Vec<String>,

    /// Address (or CIDR range) of the SSO proxy whose user header is
    /// believed (`--auth trusted-header`); with `--auth accounts`, of the
    /// reverse proxy whose X-Forwarded-For names the client (the address
    /// the sign-in limit counts). Repeat or separate with commas.
    #[arg(
        long,
        env = "STOCKANOMALY_TRUSTED_PROXY",
        value_delimiter = ',',
        value_name = "ADDR"
    )]
    pub trusted_proxy: Vec<String>,

    /// Role of a user the proxy names who has no account.
    #[arg(long, env = "STOCKANOMALY_TRUSTED_HEADER_ROLE", value_enum, default_value_t = Role::Viewer)]
    pub trusted_header_role: Role,

    /// The address people open, e.g. https://review.example.com: the only
    /// Host served (against DNS rebinding) and the origin posts must come
    /// from; https makes cookies Secure. Needed when listening on all
    /// interfaces; defaults to the loopback names of --listen.
    #[arg(long, env = "STOCKANOMALY_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,

    /// Hours a session lasts from sign-in, however active.
    #[arg(long, env = "STOCKANOMALY_SESSION_HOURS", default_value_t = 12.0)]
    pub session_hours: f64,

    /// Minutes without a request after which a session ends.
    #[arg(
        long,
        env = "STOCKANOMALY_SESSION_IDLE_MINUTES",
        default_value_t = 60.0
    )]
    pub session_idle_minutes: f64,

    /// Database connections held at most (the detectors share the
    /// server's max_connections).
    #[arg(long, env = "STOCKANOMALY_DB_POOL_SIZE", default_value_t = 8)]
    pub db_pool_size: usize,

    /// How long a request waits for a database connection before a 503.
    #[arg(
        long,
        env = "STOCKANOMALY_DB_ACQUIRE_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub db_acquire_timeout_ms: u64,

    /// PostgreSQL statement_timeout of the server's queries.
    #[arg(
        long,
        env = "STOCKANOMALY_STATEMENT_TIMEOUT_MS",
        default_value_t = 15_000
    )]
    pub statement_timeout_ms: u64,

    /// Client connections held at once (more wait in the listen backlog);
    /// capped below the open-file limit.
    #[arg(long, env = "STOCKANOMALY_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Time a connection has to send a request's headers (each request of
    /// a kept-alive connection too) before it is closed.
    #[arg(long, env = "STOCKANOMALY_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,

    /// Time a request has to be answered (503 after).
    #[arg(
        long,
        env = "STOCKANOMALY_REQUEST_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub request_timeout_ms: u64,

    /// Requests handled at once; more wait (within the request timeout).
    #[arg(long, env = "STOCKANOMALY_MAX_IN_FLIGHT", default_value_t = 64)]
    pub max_in_flight: usize,

    /// Failed sign-ins (login form or HTTP Basic) within
    /// --login-window-minutes after which the account, and apart the client
    /// address, is locked out (429, even with the right password).
    #[arg(long, env = "STOCKANOMALY_LOGIN_MAX_FAILURES", default_value_t = 5)]
    pub login_max_failures: u32,

    /// Minutes over which failed sign-ins are counted.
    #[arg(
        long,
        env = "STOCKANOMALY_LOGIN_WINDOW_MINUTES",
        default_value_t = 15.0
    )]
    pub login_window_minutes: f64,

    /// Minutes a locked-out account or address is refused.
    #[arg(
        long,
        env = "STOCKANOMALY_LOGIN_LOCKOUT_MINUTES",
        default_value_t = 15.0
    )]
    pub login_lockout_minutes: f64,
}

/// Account names (and, apart, client addresses) the sign-in limit
/// remembers at most; the least recently failed are forgotten first.
const LOGIN_LIMIT_ENTRIES: usize = 10_000;

/// The sign-in limit of `args`.
fn login_limits(args: &ServeArgs) -> Result<LoginLimits, UsageError> {
    if args.login_max_failures == 0 {
        return Err(UsageError("--login-max-failures must be at least 1".into()));
    }
    Ok(LoginLimits {
        max_failures: args.login_max_failures,
        window: duration_of("--login-window-minutes", args.login_window_minutes, 60.0)?,
        lockout: duration_of("--login-lockout-minutes", args.login_lockout_minutes, 60.0)?,
        max_entries: LOGIN_LIMIT_ENTRIES,
    })
}

/// `--auth` as a mode.
fn auth_mode(args: &ServeArgs) -> Result<AuthMode, UsageError> {
    let (mode, header) = match args.auth.as_slice() {
        [m] => (m.as_str(), None),
        [m, h] => (m.as_str(), Some(h.as_str())),
        _ => return Err(UsageError("--auth: give a mode".into())),
    };
    let header_only = |m: &str| {
        UsageError(format!(
            "--auth {m} takes no header (only trusted-header names one)"
        ))
    };
    match mode {
        "accounts" => header.map_or(Ok(AuthMode::Accounts), |_| Err(header_only(mode))),
        "none" => header.map_or(Ok(AuthMode::None), |_| Err(header_only(mode))),
        "trusted-header" => {
            let name = header.unwrap_or(DEFAULT_USER_HEADER);
            let header = HeaderName::try_from(name).map_err(|_| {
                UsageError(format!("--auth trusted-header {name:?}: not a header name"))
            })?;
            if args.trusted_proxy.is_empty() {
                return Err(UsageError(
                    "--auth trusted-header needs --trusted-proxy ADDR (the SSO proxy's \
                     address): the header is believed from it only"
                        .into(),
                ));
            }
            let proxies = args
                .trusted_proxy
                .iter()
                .map(|p| parse_proxy(p))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(AuthMode::TrustedHeader {
                header,
                proxies,
                default_role: args.trusted_header_role,
            })
        }
        other => Err(UsageError(format!(
            "--auth {other:?}: expected accounts, trusted-header [HEADER] or none"
        ))),
    }
}

/// An address or a CIDR range.
fn parse_proxy(p: &str) -> Result<IpNet, UsageError> {
    let p = p.trim();
    p.parse::<IpNet>()
        .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| {
            UsageError(format!(
                "--trusted-proxy {p:?}: not an address or CIDR range"
            ))
        })
}

/// The site served: `--public-url`, else the listening address's.
fn site(args: &ServeArgs, bound: SocketAddr) -> Result<Site, UsageError> {
    match &args.public_url {
        Some(url) => Site::public(url).map_err(|e| UsageError(e.to_string())),
        None => Site::listening(bound).map_err(|e| UsageError(e.to_string())),
    }
}

fn duration_of(what: &str, v: f64, unit: f64) -> Result<Duration, UsageError> {
    Duration::try_from_secs_f64(v * unit)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| UsageError(format!("{what} must be a positive number, not {v}")))
}

pub(crate) async fn run(lake: &str, args: ServeArgs) -> anyhow::Result<()> {
    let mode = auth_mode(&args)?;
    let limits = login_limits(&args)?;
    let forwarded_by = args
        .trusted_proxy
        .iter()
        .map(|p| parse_proxy(p))
        .collect::<Result<Vec<_>, _>>()?;
    let policy = SessionPolicy {
        ttl: duration_of("--session-hours", args.session_hours, 3600.0)?,
        idle: duration_of("--session-idle-minutes", args.session_idle_minutes, 60.0)?,
    };
    let ticks = match args.ticks_from {
        TicksFrom::Lake => TickStore::Lake(open_lake(lake)?),
        TicksFrom::Postgres => TickStore::Postgres,
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener
        .local_addr()
        .context("reading the listening address")?;
    if mode == AuthMode::None && !addr.ip().is_loopback() {
        return Err(UsageError(format!(
            "--auth none lets anyone who reaches {addr} give verdicts (training labels): it \
             is only allowed on a loopback address such as 127.0.0.1:8080"
        ))
        .into());
    }
    let site = site(&args, addr)?;
    let pool = Pool::connect_with(
        &args.db.database_url,
        &PoolOptions {
            max_size: args.db_pool_size,
            acquire_timeout: Duration::from_millis(args.db_acquire_timeout_ms.max(1)),
            statement_timeout: Duration::from_millis(args.statement_timeout_ms.max(1)),
        },
    )
    .await?;
    let web_limits = Limits {
        max_connections: args.max_connections,
        header_read_timeout: Duration::from_millis(args.header_timeout_ms.max(1)),
        request_timeout: Duration::from_millis(args.request_timeout_ms.max(1)),
        max_in_flight: args.max_in_flight,
        ..Limits::review()
    };
    let mode_name = mode.name();
    // The first line names the URL (tests and scripts read it).
    eprintln!(
        "review app on http://{addr}/ (API at http://{addr}/api; auth: {mode_name}, public at {})",
        site.origin()
    );
    if mode == AuthMode::None {
        eprintln!(
            "serve: WARNING: --auth none: no sign-in, anyone who can reach {addr} records \
             verdicts as \"anonymous\""
        );
        tracing::warn!(%addr, "Serving without authentication (--auth none).");
    }
    tracing::info!(%addr, auth = mode_name, "Review server listening.");
    let auth = Auth::new(mode, site, policy, LoginLimiter::new(limits), forwarded_by);
    serve(
        listener,
        AppState { pool, ticks, auth },
        &web_limits,
        crate::stream::shutdown_signal(),
    )
    .await
    .context("serving the review app")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> ServeArgs {
        let mut all = vec!["serve", "--database-url", "postgres://x@h/db"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().serve
    }

    #[test]
    fn accounts_is_the_default_and_modes_parse() {
        assert_eq!(auth_mode(&parse(&[])).unwrap(), AuthMode::Accounts);
        assert_eq!(
            auth_mode(&parse(&["--auth", "none"])).unwrap(),
            AuthMode::None
        );
        let m = auth_mode(&parse(&[
            "--auth",
            "trusted-header",
            "X-Auth-User",
            "--trusted-proxy",
            "10.0.0.5,192.168.0.0/24",
        ]))
        .unwrap();
        match m {
            AuthMode::TrustedHeader {
                header, proxies, ..
            } => {
                assert_eq!(header.as_str(), "x-auth-user");
                assert_eq!(proxies.len(), 2);
                assert!(proxies[1].contains(&"192.168.0.7".parse::<std::net::IpAddr>().unwrap()));
            }
            other => panic!("{other:?}"),
        }
        let m = auth_mode(&parse(&[
            "--auth",
            "trusted-header",
            "--trusted-proxy",
            "::1",
        ]));
        assert!(
            matches!(m, Ok(AuthMode::TrustedHeader { header, .. }) if header == "x-forwarded-user")
        );
    }

    #[test]
    fn the_sign_in_limit_defaults_to_five_in_fifteen_minutes_and_is_set_by_flags() {
        let l = login_limits(&parse(&[])).unwrap();
        assert_eq!(l.max_failures, 5);
        assert_eq!(l.window, Duration::from_secs(900));
        assert_eq!(l.lockout, Duration::from_secs(900));
        assert_eq!(l.max_entries, LOGIN_LIMIT_ENTRIES);
        let l = login_limits(&parse(&[
            "--login-max-failures",
            "3",
            "--login-window-minutes",
            "1",
            "--login-lockout-minutes",
            "0.5",
        ]))
        .unwrap();
        assert_eq!(
            (l.max_failures, l.window, l.lockout),
            (3, Duration::from_secs(60), Duration::from_secs(30))
        );
        assert!(login_limits(&parse(&["--login-max-failures", "0"])).is_err());
        assert!(login_limits(&parse(&["--login-lockout-minutes", "0"])).is_err());
    }

    #[test]
    fn unsafe_auth_settings_are_usage_errors() {
        assert!(
            auth_mode(&parse(&["--auth", "trusted-header"])).is_err(),
            "no proxy"
        );
        assert!(auth_mode(&parse(&["--auth", "open"])).is_err());
        assert!(auth_mode(&parse(&["--auth", "accounts", "X-User"])).is_err());
        assert!(auth_mode(&parse(&[
            "--auth",
            "trusted-header",
            "--trusted-proxy",
            "proxy.example"
        ]))
        .is_err());
        let wild: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert!(
            site(&parse(&[]), wild).is_err(),
            "all interfaces need --public-url"
        );
        assert!(site(&parse(&["--public-url", "https://r.example"]), wild).is_ok());
    }
}
