//! `stockanomaly backfill`

use clap::Args;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::output::{count, count_bar, human_bytes, peak_memory, rate};
use super::{open_lake, UsageError};
use crate::cluster::{Cluster, Member, Token, HEARTBEAT};
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
  stockanomaly backfill --from 2024-01-02 --to 2024-01-31 --symbols AAPL,MSFT
  stockanomaly backfill --lake s3://lake --cluster df://scheduler:7070")]
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

    /// Make the context tables and the features on a cluster: the
    /// scheduler of `stockanomaly cluster` (df://HOST:PORT). The lake root
    /// must be one every executor reads and writes (s3://, or a folder
    /// shared at the same path), named by each executor's --lake.
    #[arg(long, env = "STOCKANOMALY_CLUSTER", value_name = "df://HOST:PORT")]
    pub cluster: Option<String>,

    /// The cluster's shared secret (sent with every task).
    #[arg(
        long,
        env = "STOCKANOMALY_CLUSTER_TOKEN",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub cluster_token: Option<String>,
}

pub(crate) async fn run(lake: &str, args: BackfillArgs) -> anyhow::Result<()> {
    args.dates.check()?;
    let catalog = args.sql.catalog().await?;
    let root = open_lake(lake)?;
    let cluster = match &args.cluster {
        Some(target) => {
            if root.local_path().is_none() && root.store_url().scheme() == "memory" {
                return Err(UsageError(format!(
                    "{root}: executors cannot reach an in-memory lake; use s3:// or a shared folder"
                ))
                .into());
            }
            let token = args.cluster_token.as_deref().and_then(Token::new);
            let c = Cluster::connect(target, token)
                .await
                .with_context(|| format!("cannot use the cluster {target}"))?;
            Some(Arc::new(c))
        }
        None => None,
    };
    let before = match &cluster {
        Some(c) => c.scheduler().members().await?,
        None => Vec::new(),
    };
    let options = BackfillOptions {
        from: args.dates.from,
        to: args.dates.to,
        symbols: args.symbols,
        force: args.force,
        chunk_ticks: args.chunk_ticks,
        cluster: cluster.clone(),
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
    if let Some(c) = &cluster {
        // The features are written: a scheduler gone by now costs the
        // counts, not the run.
        let tasks = match tasks_per_executor(c, &before).await {
            Ok(t) => t,
            Err(e) => {
                println!("  tasks per executor unknown: {e}");
                Vec::new()
            }
        };
        for (url, n) in &tasks {
            println!("  executor {url}: {n} tasks");
        }
        if !s.dates_done.is_empty() && !tasks.is_empty() && tasks.iter().all(|(_, n)| *n == 0) {
            tracing::warn!(
                "No executor ran a task: work of a single date or symbol runs as one task, \
                 here. Backfill more dates or symbols at once to use the cluster."
            );
        }
    }
    Ok(())
}

/// Tasks each executor ran since `before` was listed, once every executor
/// has announced itself after the run (counts ride on announcements).
async fn tasks_per_executor(
    cluster: &Cluster,
    before: &[Member],
) -> anyhow::Result<Vec<(String, u64)>> {
    let ended = Instant::now();
    let mut members = cluster.scheduler().members().await?;
    while ended.elapsed() < HEARTBEAT * 3
        && members
            .iter()
            .any(|m| Duration::from_millis(m.seen_ms_ago) >= ended.elapsed())
    {
        tokio::time::sleep(HEARTBEAT / 4).await;
        members = cluster.scheduler().members().await?;
    }
    Ok(members
        .into_iter()
        .map(|m| {
            let earlier = before
                .iter()
                .find(|b| b.url == m.url)
                .map_or(0, |b| b.tasks);
            (m.url.to_string(), m.tasks.saturating_sub(earlier))
        })
        .collect())
}
