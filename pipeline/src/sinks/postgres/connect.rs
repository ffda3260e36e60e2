//! [`connect`]: a client from a `postgres://` URL, TLS as `sslmode` or
//! `PGSSLMODE` asks.

use std::path::PathBuf;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Config, NoTls};

use super::tls::RustlsConnector;
use super::DbError;

/// Connects to the PostgreSQL server at `url` (`postgres://user[:password]@host[:port]/db[?sslmode=...]`
/// or a `key=value` string) and spawns the connection's task on the current
/// Tokio runtime; the task logs its error with `tracing` when the connection
/// breaks (the client's calls then fail with a retryable [`DbError`]).
///
/// `PGPASSWORD` supplies the password when the URL has none. TLS, as in
/// libpq: `sslmode` in the URL, else `PGSSLMODE` — `disable`; `prefer` (the
/// default: TLS when the server offers it); `require`; `verify-full` (only in
/// `PGSSLMODE`; `verify-ca` is taken as `verify-full`). `prefer` and
/// `require` encrypt without checking the certificate unless `PGSSLROOTCERT`
/// names a CA file; with it, or with `verify-full`, the chain and host name
/// are verified (against that file, else the system's roots). Errors name
/// `user@host:port/db`, never the password.
pub async fn connect(url: &str) -> Result<Client, DbError> {
    let mut config: Config =
        url.parse()
            .map_err(|e: tokio_postgres::Error| DbError::InvalidUrl {
                detail: e.to_string(),
            })?;
    // tokio-postgres reads no PG* variables; these are what deployments use
    // to keep the password and the TLS choice out of the URL.
    if config.get_password().is_none() {
        if let Some(pw) = std::env::var_os("PGPASSWORD").filter(|v| !v.is_empty()) {
            config.password(pw.as_encoded_bytes());
        }
    }
    let mut verify = false;
    if !url_sets_sslmode(url) {
        if let Ok(mode) = std::env::var("PGSSLMODE") {
            let (mode, full) = parse_ssl_mode(&mode)?;
            config.ssl_mode(mode);
            verify = full;
        }
    }
    // A server or network that stops answering without closing the
    // connection must not hang a caller for as long as TCP allows: connect
    // within a bound, and probe an idle connection so that a dead peer
    // fails it within about a minute (unless the URL says otherwise).
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if !url_sets(url, "keepalives_idle") {
        config
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_RETRIES);
    }
    if config.get_tcp_user_timeout().is_none() {
        // Unacknowledged data fails the connection after this long.
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    let root_cert = std::env::var_os("PGSSLROOTCERT")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let target = describe_target(&config);
    if config.get_ssl_mode() == SslMode::Disable {
        let (client, connection) =
            config
                .connect(NoTls)
                .await
                .map_err(|source| DbError::Connect {
                    target: target.clone(),
                    source,
                })?;
        spawn_connection(connection, target);
        return Ok(client);
    }
    let tls = if verify || root_cert.is_some() {
        RustlsConnector::verified(root_cert.as_deref())
    } else {
        RustlsConnector::unverified()
    }
    .map_err(|detail| DbError::Tls {
        target: target.clone(),
        detail,
    })?;
    let (client, connection) = config
        .connect(tls)
        .await
        .map_err(|source| DbError::Connect {
            target: target.clone(),
            source,
        })?;
    spawn_connection(connection, target);
    Ok(client)
}

/// `user@host:port/dbname` of a parsed configuration: what errors and logs
/// name, without the password.
pub fn describe_target(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            };
            let port = config
                .get_ports()
                .get(i)
                .or_else(|| config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_owned()
    } else {
        hosts.join(",")
    };
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let db = config.get_dbname().or(config.get_user()).unwrap_or("");
    format!("{user}{hosts}/{db}")
}

fn spawn_connection<S, T>(connection: tokio_postgres::Connection<S, T>, target: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::error!("PostgreSQL connection to {target} failed: {e}");
        }
    });
}

/// Longest wait for a connection (unless the URL's `connect_timeout` says).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Idle time before TCP keepalive probes start.
const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(30);
/// Time between keepalive probes.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// Unanswered probes before the connection is declared dead.
const KEEPALIVE_RETRIES: u32 = 3;
/// Longest time sent data may stay unacknowledged.
const TCP_USER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether the connection string names `sslmode` itself (it then wins over
/// `PGSSLMODE`, as in libpq).
fn url_sets_sslmode(url: &str) -> bool {
    url_sets(url, "sslmode")
}

/// Whether the connection string sets parameter `key`.
fn url_sets(url: &str, key: &str) -> bool {
    url.to_ascii_lowercase().contains(&format!("{key}="))
}

/// `PGSSLMODE` as the driver's mode and whether to verify the certificate.
fn parse_ssl_mode(mode: &str) -> Result<(SslMode, bool), DbError> {
    match mode.trim().to_ascii_lowercase().as_str() {
        "disable" => Ok((SslMode::Disable, false)),
        "prefer" | "" => Ok((SslMode::Prefer, false)),
        "require" => Ok((SslMode::Require, false)),
        "verify-ca" | "verify-full" => Ok((SslMode::Require, true)),
        other => Err(DbError::InvalidUrl {
            detail: format!(
                "PGSSLMODE={other}: expected disable, prefer, require, verify-ca or verify-full"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_never_shows_the_password() {
        let c: Config = "postgres://alice:s3cret@db.example:6543/alerts"
            .parse()
            .unwrap();
        let t = describe_target(&c);
        assert_eq!(t, "alice@db.example:6543/alerts");
        assert!(!t.contains("s3cret"));
    }

    #[test]
    fn ssl_modes_parse() {
        assert_eq!(
            parse_ssl_mode("disable").unwrap(),
            (SslMode::Disable, false)
        );
        assert_eq!(
            parse_ssl_mode("Require").unwrap(),
            (SslMode::Require, false)
        );
        assert_eq!(
            parse_ssl_mode("verify-full").unwrap(),
            (SslMode::Require, true)
        );
        assert!(parse_ssl_mode("allow-ish").is_err());
        assert!(url_sets_sslmode("postgres://h/db?sslmode=disable"));
        assert!(!url_sets_sslmode("postgres://h/db"));
    }

    #[test]
    fn invalid_url_does_not_echo_it() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt
            .block_on(connect("postgres://bob:hunter2@h/db?sslmode=bogus"))
            .unwrap_err();
        assert!(matches!(e, DbError::InvalidUrl { .. }), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
