//! `stockanomaly backfill`

use clap::Args;

use super::open_lake;
use super::output::{count, count_bar, human_bytes, peak_memory, rate};
use crate::features::{backfill, BackfillOptions, CHUNK_TICKS};

/// `stockanomaly backfill`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Computes every feature file over the lake's ticks, consecutive dates
together up to --chunk-ticks ticks, with the feature set's lookback of
history before them, and writes
features/<feature-set hash>/date=YYYY-MM-DD/. Finished dates are skipped, so
an interrupted backfill resumes where it stopped; --force recomputes them.

Examples:
  stockanomaly backfill
  stockanomaly backfill --from 2024-01-02 --to 2024-01-31 --symbols AAPL,MSFT")]
pub struct BackfillArgs {
    /// The dates.
    #[command(flatten)]
    pub dates: super::shared::DateRangeArgs,

    /// Only these symbols (comma-separated).
    #[arg(
        long,
        env = "STOCKANOMALY_SYMBOLS",
        value_delimiter = ',',
        value_name = "A,B"
    )]
    pub symbols: Vec<String>,

    /// Recompute dates that are already done.
    #[arg(long, env = "STOCKANOMALY_FORCE")]
    pub force: bool,

    /// Most ticks computed in one pass: consecutive dates are computed
    /// together up to this many ticks (a date is never split), which reads
    /// each pass's lookback once. Bounds memory: the peak is about 2 KB per
    /// tick of the largest pass (4.6 GB for 2.5M-tick dates of trades).
    #[arg(long, env = "STOCKANOMALY_CHUNK_TICKS", default_value_t = CHUNK_TICKS, value_name = "N")]
    pub chunk_ticks: u64,

    /// The SQL files.
    #[command(flatten)]
    pub sql: super::shared::QueriesArgs,
}

pub(crate) async fn run(lake: &str, args: BackfillArgs) -> anyhow::Result<()> {
    args.dates.check()?;
    let catalog = args.sql.catalog().await?;
    let root = open_lake(lake)?;
    let options = BackfillOptions {
        from: args.dates.from,
        to: args.dates.to,
        symbols: args.symbols,
        force: args.force,
        chunk_ticks: args.chunk_ticks,
    };
    let bar = count_bar(0, "backfill dates");
    let s = backfill(&root, &catalog, &options, &bar).await;
    bar.finish_and_clear();
    let s = s?;
    println!(
        "backfilled feature set {} ({} features, lookback {}) into {root}/features/{}",
        catalog.hash(),
        catalog.feature_names().len(),
        catalog.lookback(),
        catalog.hash()
    );
    println!(
        "  {} dates computed, {} already done; {} rows in {:.2}s, {}",
        s.dates_done.len(),
        s.dates_skipped.len(),
        count(s.rows),
        s.elapsed.as_secs_f64(),
        rate(s.rows as f64, s.elapsed)
    );
    if let Some(peak) = peak_memory() {
        println!("  peak memory {} (resident)", human_bytes(peak));
    }
    Ok(())
}
