//! `stockanomaly demo`: the pipeline end to end on embedded defaults (files
//! and the Parquet lake; no servers).

use clap::Args;

use super::open_lake;
use super::simulate::{print_summary, simulate_to_lake, SimulateArgs};
use super::sql::{query_to, SqlFormat};
use crate::lake::session_context;
use crate::sources::simulate::{SimKind, Simulator};

/// `stockanomaly demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Symbols to simulate.
    #[arg(long, env = "STOCKANOMALY_DEMO_SYMBOLS", default_value_t = 12)]
    pub symbols: usize,

    /// Trading days to simulate.
    #[arg(long, env = "STOCKANOMALY_DEMO_DAYS", default_value_t = 5)]
    pub days: usize,

    /// Mean trades per symbol per day.
    #[arg(
        long,
        env = "STOCKANOMALY_DEMO_TRADES_PER_DAY",
        default_value_t = 5_000.0
    )]
    pub trades_per_day: f64,

    /// Random seed.
    #[arg(long, env = "STOCKANOMALY_DEMO_SEED", default_value_t = 42)]
    pub seed: u64,
}

pub(crate) async fn run(lake: &str, args: DemoArgs) -> anyhow::Result<()> {
    let root = open_lake(lake)?;
    println!("== 1. simulate a market with labelled manipulation into {root}");
    let sim_args = SimulateArgs {
        symbols: args.symbols,
        days: args.days,
        kind: SimKind::Trades,
        seed: args.seed,
        start: chrono::NaiveDate::from_ymd_opt(2024, 1, 2).unwrap_or_default(),
        trades_per_day: args.trades_per_day,
        events_per_symbol_day: 0.5,
        csv: None,
    };
    let sim = Simulator::new(sim_args.config());
    let summary = simulate_to_lake(&sim, &root).await?;
    print_summary(&sim_args, &summary, &root.to_string());

    println!("\n== 2. what the lake holds");
    let ctx = session_context(&root).await?;
    let stdout = || -> Box<dyn std::io::Write + Send> { Box::new(std::io::stdout()) };
    query_to(
        &ctx,
        "SELECT date, count(*) AS ticks, count(DISTINCT symbol) AS symbols, \
         min(ts) AS first_tick, max(ts) AS last_tick FROM ticks GROUP BY date ORDER BY date",
        SqlFormat::Table,
        stdout(),
    )
    .await?;
    query_to(
        &ctx,
        "SELECT kind, count(*) AS events, count(DISTINCT symbol) AS symbols, \
         min(end_ts - start_ts) AS shortest, max(end_ts - start_ts) AS longest \
         FROM labels GROUP BY kind ORDER BY kind",
        SqlFormat::Table,
        stdout(),
    )
    .await?;
    println!("\nNext: stockanomaly sql --lake {root} \"SELECT * FROM ticks LIMIT 10\"");
    Ok(())
}
