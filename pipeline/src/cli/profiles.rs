//! `stockanomaly profiles`: stores the intraday profiles of given days.

use anyhow::Context;
use chrono::NaiveDate;
use clap::Args;

use super::open_lake;
use crate::features::market::write_betas;
use crate::features::profiles::{write_profiles, PROFILE_DAYS};

/// `stockanomaly profiles`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Examples:
  stockanomaly profiles                      # the day after the lake's last tick
  stockanomaly profiles --date 2024-01-08,2024-01-09

A day's profile (per symbol and minute of the exchange's day: median
volume, tick count and |return| of that minute) is made from the lake's 20
latest dates with ticks before it, so it can be stored before the day
starts. `backfill` stores the profiles of the dates it computes; the
streaming detector loads the day's profiles when its first tick arrives
(and makes them from the lake itself, with a warning, when they are not
stored). When the feature files read the market, it also stores the day's
betas (each symbol's slope on the market over the same 20 dates) and the
earlier dates' market buckets they need. Run this after each close so that
the next day's are ready.")]
pub struct ProfilesArgs {
    /// Days to profile (UTC dates, comma-separated); default: the day after
    /// the lake's last tick.
    #[arg(
        long,
        env = "STOCKANOMALY_PROFILE_DATES",
        value_delimiter = ',',
        value_name = "DATE"
    )]
    pub date: Vec<NaiveDate>,

    /// The SQL files.
    #[command(flatten)]
    pub sql: super::shared::QueriesArgs,
}

pub(crate) async fn run(lake: &str, args: ProfilesArgs) -> anyhow::Result<()> {
    let root = open_lake(lake)?;
    let catalog = args.sql.catalog().await?;
    let dates = if args.date.is_empty() {
        let ctx = crate::lake::session_context(&root).await?;
        let last = super::sql::scalar_string(&ctx, "SELECT max(date) FROM ticks").await?;
        let Some(last) = last.and_then(|d| NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok()) else {
            anyhow::bail!("{root}: the lake has no ticks to make profiles from");
        };
        vec![last + chrono::Duration::days(1)]
    } else {
        args.date
    };
    for date in dates {
        let rows = write_profiles(&root, date)
            .await
            .with_context(|| format!("profiles of {date} in {root}"))?;
        println!(
            "profiles of {date}: {rows} (symbol, minute) rows from up to {PROFILE_DAYS} earlier dates, stored in {root}/profiles/date={date}/"
        );
        if catalog.uses_market() {
            let rows = write_betas(&root, date, catalog.market_sql())
                .await
                .with_context(|| format!("betas of {date} in {root}"))?;
            println!("betas of {date}: {rows} symbols, stored in {root}/betas/date={date}/");
        }
    }
    Ok(())
}
