//! `stockanomaly serve`: the alert review web app.

use anyhow::Context;
use clap::{Args, ValueEnum};

use super::open_lake;
use crate::review::{serve, AppState, Pool, TickStore};

/// Where the alert page reads its evidence ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TicksFrom {
    /// The lake's `ticks` table (--lake).
    Lake,
    /// PostgreSQL's `ticks` table (the live tick store).
    Postgres,
}

/// `stockanomaly serve`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Serves the analysts' alert review app: a queue of alerts (filter by symbol,
kind, score, time, model version and status; sorted by score), an alert page
with price and volume around the alert, its features and top SHAP
contributions, and a form recording a verdict (confirmed, dismissed,
escalated, with a note and the analyst's name) in PostgreSQL's
`dispositions`, history kept. `stockanomaly labels export` turns verdicts
into lake labels for the next `train`. The same data is served as JSON under
/api/ (documented at /api). Pages need no internet access.

The server has no login: keep it on loopback (the default) or behind an
authenticating proxy. Forms posted from other sites are refused.

Examples:
  stockanomaly serve --database-url postgres://review@localhost/stockanomaly
  STOCKANOMALY_LISTEN=0.0.0.0:8080 stockanomaly serve --lake s3://lake/prod")]
pub struct ServeArgs {
    /// PostgreSQL connection URL (the detector's database, migrated). Its
    /// value is never printed.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: String,

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
}

pub(crate) async fn run(lake: &str, args: ServeArgs) -> anyhow::Result<()> {
    let ticks = match args.ticks_from {
        TicksFrom::Lake => TickStore::Lake(open_lake(lake)?),
        TicksFrom::Postgres => TickStore::Postgres,
    };
    let pool = Pool::connect(&args.database_url).await?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener
        .local_addr()
        .context("reading the listening address")?;
    eprintln!("review app on http://{addr}/ (API at http://{addr}/api)");
    tracing::info!(%addr, "Review server listening.");
    serve(
        listener,
        AppState { pool, ticks },
        crate::stream::shutdown_signal(),
    )
    .await
    .context("serving the review app")?;
    Ok(())
}
