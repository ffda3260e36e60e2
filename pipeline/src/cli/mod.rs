//! The `stockanomaly` command line: flags (clap derive, every flag also read
//! from a `STOCKANOMALY_*` variable) and one module per command.
//!
//! The doc comments of the flags are their `--help` text, written for a
//! terminal (`<queries>/rules/`, `user[:password]`), not for rustdoc.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

mod backfill;
mod bench;
mod cluster;
mod db;
mod demo;
mod detect;
mod features;
mod future;
mod ingest;
mod labels;
mod market_context;
mod output;
mod produce;
mod profiles;
mod score;
mod serve;
mod shared;
mod simulate;
mod sql;
mod train;
mod users;

use std::fmt;

use clap::{Parser, Subcommand};

use crate::lake::{LakeError, LakeRoot, DEFAULT_LAKE};

pub use backfill::BackfillArgs;
pub use bench::BenchArgs;
pub use db::{DbArgs, DbCommand};
pub use demo::DemoArgs;
pub use detect::DetectArgs;
pub use features::{FeaturesArgs, FeaturesCommand};
pub use ingest::{IngestArgs, IngestCommand, IngestCsvArgs, IngestHistoryArgs};
pub use produce::ProduceArgs;
pub use score::ScoreArgs;
pub use shared::{DateRangeArgs, DbUrlArgs, IngestTargetArgs, QueriesArgs};
pub use simulate::{RealismArgs, SimulateArgs};
pub use sql::{SqlArgs, SqlFormat};
pub use train::{EvaluateArgs, TrainArgs};

const LONG_ABOUT: &str = "\
StockAnomaly detects anomalous and manipulative trading in market data.

Ticks are stored in a Parquet lake (a folder, s3://bucket/prefix or
memory://name); features are SQL files; every command reads the lake given by
--lake or STOCKANOMALY_LAKE (default: ./parquet).";

const AFTER_LONG_HELP: &str = "\
Examples:
  stockanomaly demo
  stockanomaly simulate --symbols 50 --days 10 --seed 7
  stockanomaly ingest csv data/sample-trades.csv
  stockanomaly sql \"SELECT symbol, count(*) FROM ticks GROUP BY symbol\"

Exit status: 0 on success, 1 when a run fails, 2 on bad usage, configuration
or query.";

/// Command-line arguments of `stockanomaly`.
#[derive(Debug, Parser)]
#[command(name = "stockanomaly", version, about = "Detects anomalous and manipulative trading in market data.", long_about = LONG_ABOUT, after_long_help = AFTER_LONG_HELP)]
pub struct Cli {
    /// Root of the Parquet lake: a folder, file:///path, s3://bucket/prefix
    /// (configured by the usual AWS_* variables, AWS_ENDPOINT_URL for another
    /// server) or memory://name.
    #[arg(long, global = true, env = "STOCKANOMALY_LAKE", default_value = DEFAULT_LAKE, value_name = "ROOT")]
    pub lake: String,

    /// Log filter (error, warn, info, debug, trace, or a tracing filter such as
    /// `stockanomaly=debug`). Logs go to stderr. Default: warn (info for
    /// `cluster`, whose log of each task is part of its job).
    #[arg(long, global = true, env = "STOCKANOMALY_LOG", value_name = "FILTER")]
    pub log: Option<String>,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The log filter: `--log`, else the command's default.
    pub fn log_filter(&self) -> &str {
        match (&self.log, &self.command) {
            (Some(f), _) => f,
            (None, Command::Cluster(_)) => "info",
            (None, _) => "warn",
        }
    }
}

impl Command {
    /// Whether the command is a batch job over the lake that prints what it
    /// made (not a service, not a client of PostgreSQL or Kafka): piped into
    /// `head`, it may simply end when its output is closed, as `cat` does,
    /// instead of failing on its next line.
    pub fn works_offline(&self) -> bool {
        matches!(
            self,
            Command::Simulate(_)
                | Command::Backfill(_)
                | Command::Profiles(_)
                | Command::Features(_)
                | Command::Train(_)
                | Command::Evaluate(_)
                | Command::Score(_)
                | Command::Sql(_)
        )
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load ticks from files into the lake.
    Ingest(IngestArgs),
    /// Generate a synthetic market with labelled manipulation into the lake or a CSV file.
    Simulate(SimulateArgs),
    /// Compute the feature files over the lake's ticks into a feature snapshot.
    Backfill(BackfillArgs),
    /// Store the intraday profiles (per symbol and minute of day) that seasonality features join.
    Profiles(profiles::ProfilesArgs),
    /// List, check and explain the SQL feature files.
    Features(FeaturesArgs),
    /// Train an XGBoost model on the feature snapshot and labels, split by time.
    Train(TrainArgs),
    /// Print a trained model's (or the rules') metrics on a labelled date range.
    Evaluate(EvaluateArgs),
    /// Score the feature snapshot with a model and/or rules into the lake's `scores` table.
    Score(ScoreArgs),
    /// Run SQL over the lake (tables `ticks`, `labels`, `symbols`, `scores`; all UDFs registered).
    Sql(SqlArgs),
    /// Run the whole pipeline on embedded defaults: no servers needed.
    Demo(DemoArgs),
    /// Measure simulation, ingestion, backfill, feed decoding and PostgreSQL load throughput (build with --release).
    Bench(BenchArgs),
    /// Migrate the PostgreSQL schema of alerts and offsets, or list its migrations.
    Db(DbArgs),
    /// Publish ticks (lake, CSV or simulator) to a Kafka topic as JSON keyed by symbol, in event-time order.
    Produce(ProduceArgs),
    /// Score a Kafka tick stream with a model and/or rules; alerts and offsets to PostgreSQL, exactly once.
    Detect(DetectArgs),
    /// Publish each minute's market context (all symbols of the tick topic) for the detectors.
    MarketContext(market_context::MarketContextArgs),
    /// Serve the alert review web app (queue, evidence, verdicts) and its JSON API.
    Serve(serve::ServeArgs),
    /// Turn analysts' verdicts into lake labels for training.
    Labels(labels::LabelsArgs),
    /// Manage the review app's accounts (add, list, disable, enable, passwd).
    Users(users::UsersArgs),
    /// Run a backfill cluster's scheduler or executors (backfill --cluster).
    Cluster(cluster::ClusterArgs),
}

/// A mistake in flags, configuration or a query: exit status 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// An error and its causes on one line, as `{:#}` prints them, without the
/// causes a message already quotes: most of our errors put their source in
/// their message *and* expose it as `source()`, so `{:#}` said everything
/// twice ("backfill of D: E: E").
pub fn error_report(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// The exit status an error deserves: 2 for usage, configuration or query
/// mistakes, 0 for a closed output pipe, 1 for everything else.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.downcast_ref::<UsageError>().is_some() {
            return 2;
        }
        if let Some(LakeError::InvalidRoot { .. }) = cause.downcast_ref::<LakeError>() {
            return 2;
        }
        if let Some(crate::sources::SourceError::Format { .. }) =
            cause.downcast_ref::<crate::sources::SourceError>()
        {
            return 2;
        }
        if let Some(crate::ingest::IngestError::Source(crate::sources::SourceError::Format {
            ..
        })) = cause.downcast_ref::<crate::ingest::IngestError>()
        {
            return 2;
        }
        if let Some(crate::ingest::IngestError::UnknownExchange { .. }) =
            cause.downcast_ref::<crate::ingest::IngestError>()
        {
            return 2;
        }
        // Missing credentials, a bad endpoint, a range the feed cannot
        // give: configuration, not a failed run.
        if let Some(h) = cause.downcast_ref::<crate::sources::history::HistoryError>() {
            if h.is_usage() {
                return 2;
            }
        }
        if let Some(crate::ingest::IngestError::History(h)) =
            cause.downcast_ref::<crate::ingest::IngestError>()
        {
            if h.is_usage() {
                return 2;
            }
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::BrokenPipe {
                return 0;
            }
        }
    }
    1
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ingest(args) => ingest::run(&cli.lake, args).await,
        Command::Simulate(args) => simulate::run(&cli.lake, args).await,
        Command::Sql(args) => sql::run(&cli.lake, args).await,
        Command::Features(args) => features::run(args).await,
        Command::Backfill(args) => backfill::run(&cli.lake, args).await,
        Command::Profiles(args) => profiles::run(&cli.lake, args).await,
        Command::Train(args) => train::run_train(&cli.lake, args).await,
        Command::Evaluate(args) => train::run_evaluate(&cli.lake, args).await,
        Command::Score(args) => score::run(&cli.lake, args).await,
        Command::Demo(args) => demo::run(&cli.lake, args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Db(args) => db::run(args).await,
        Command::Produce(args) => produce::run(&cli.lake, args).await,
        Command::Detect(args) => detect::run(&cli.lake, args).await,
        Command::MarketContext(args) => market_context::run(&cli.lake, args).await,
        Command::Serve(args) => serve::run(&cli.lake, args).await,
        Command::Labels(args) => labels::run(&cli.lake, args).await,
        Command::Users(args) => users::run(args).await,
        Command::Cluster(args) => cluster::run(&cli.lake, args).await,
    }
}

/// Opens a lake root, with the root named in the error.
pub(crate) fn open_lake(root: &str) -> anyhow::Result<LakeRoot> {
    Ok(LakeRoot::parse(root)?)
}

/// A path argument that must exist.
pub(crate) fn existing_file(p: &std::path::Path) -> anyhow::Result<()> {
    if !p.exists() {
        return Err(UsageError(format!("{}: no such file", p.display())).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn error_reports_say_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("backfill of 2024-01-02: {source}")]
        struct Quoting {
            #[source]
            source: std::io::Error,
        }
        let io = std::io::Error::other("disk full");
        let err = anyhow::Error::new(Quoting { source: io }).context("cannot backfill");
        assert_eq!(
            error_report(&err),
            "cannot backfill: backfill of 2024-01-02: disk full"
        );
        // A cause the message does not quote is still said.
        let err = anyhow::Error::new(std::io::Error::other("refused")).context("the scheduler");
        assert_eq!(error_report(&err), "the scheduler: refused");
    }

    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn lake_is_global_and_defaults_to_parquet() {
        let cli = Cli::try_parse_from(["stockanomaly", "sql", "SELECT 1"]).unwrap();
        assert_eq!(cli.lake, "parquet");
        let cli = Cli::try_parse_from(["stockanomaly", "sql", "--lake", "memory://x", "SELECT 1"])
            .unwrap();
        assert_eq!(cli.lake, "memory://x");
    }

    #[test]
    fn usage_errors_exit_2() {
        let e = anyhow::Error::new(UsageError("bad".into()));
        assert_eq!(exit_code(&e), 2);
        let e = anyhow::anyhow!("boom");
        assert_eq!(exit_code(&e), 1);
        let e = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert_eq!(exit_code(&e), 0);
    }
}
