//! `stockanomaly ingest csv FILE...` and `stockanomaly ingest history FEED`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::output::{bytes_bar, count, open_bar, rate, ts};
use super::{existing_file, open_lake, UsageError};
use crate::ingest::{
    ingest_csv, ingest_history, HistorySummary, IngestOptions, IngestSummary, TickTarget,
};
use crate::sources::csv::CsvFormat;
use crate::sources::history::{
    Bound, HistoryFeed, HistoryFetcher, HistoryRequest, RetryPolicy, Timeframe,
};
use crate::tick::Validator;

/// `stockanomaly ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// What to ingest.
    #[command(subcommand)]
    pub command: IngestCommand,
}

/// Ingestion inputs.
#[derive(Debug, Subcommand)]
pub enum IngestCommand {
    /// Load CSV files (streamed: any size) into the lake's `ticks` and `labels`.
    #[command(after_long_help = "\
Examples:
  stockanomaly ingest csv trades.csv
  stockanomaly ingest csv --format nse-bhavcopy cm01JAN2024bhav.csv
  stockanomaly ingest csv BhavCopy_NSE_CM_0_0_0_20250303_F_0000.csv.zip
  stockanomaly ingest csv --lake s3://bucket/lake --rejects bad.csv day1.csv day2.csv

Bad rows never stop the run (unless --strict): each is written with its line
number and reason to <FILE>.rejects.csv (or --rejects), and counted in the
summary. A zip archive holding one CSV file (as NSE publishes its
bhavcopies) is read as that file.")]
    Csv(IngestCsvArgs),
    /// Fetch a feed's REST history (minute bars or trades) into the lake or a Kafka topic.
    #[command(after_long_help = "\
Examples:
  stockanomaly ingest history alpaca --symbols AAPL,MSFT --from 2024-01-03 --until 2024-01-05
  stockanomaly ingest history alpaca --symbols AAPL --from 2024-01-03T14:30:00Z \\
      --until 2024-01-03T15:30:00Z --timeframe trades --feed iex
  stockanomaly ingest history polygon --symbols MSFT --from 2024-01-03 --until 2024-01-03 \\
      --to kafka://localhost:9092/ticks

Credentials come only from the environment: APCA_API_KEY_ID and
APCA_API_SECRET_KEY for Alpaca, POLYGON_API_KEY for Polygon. They are sent
in request headers and never printed or logged.

Every page of the range is fetched (Alpaca's next_page_token, Polygon's
next_url) and written as it arrives. A 429 waits for Retry-After (or backs
off); a 5xx or a broken connection is retried with exponential backoff and
jitter, --max-retries times; 401/403 and other 4xx stop at once with the
API's message. Invalid records are counted by reason in the summary (and
written to --rejects FILE when given), never stored.

The lake's files are per UTC day and named by their content: fetching the
same range again, or overlapping ranges of whole days, adds nothing. Ranges
that end mid-day (RFC 3339 instants) and overlap store the overlap twice.")]
    History(IngestHistoryArgs),
}

/// `stockanomaly ingest history`.
#[derive(Debug, Args)]
pub struct IngestHistoryArgs {
    /// The feed whose REST history to fetch.
    #[arg(value_enum, value_name = "FEED")]
    pub feed: HistoryFeed,

    /// Symbols to fetch, comma-separated.
    #[arg(
        long,
        env = "STOCKANOMALY_SYMBOLS",
        value_delimiter = ',',
        required = true,
        value_name = "A,B"
    )]
    pub symbols: Vec<String>,

    /// First day (UTC, YYYY-MM-DD) or instant (RFC 3339) to fetch.
    #[arg(long, env = "STOCKANOMALY_HISTORY_FROM", value_name = "DATE")]
    pub from: Bound,

    /// Last day or instant to fetch, inclusive (a day: up to its last
    /// instant). Named --until because --to names the target.
    #[arg(long, env = "STOCKANOMALY_HISTORY_UNTIL", value_name = "DATE")]
    pub until: Bound,

    /// Minute bars (1Min) or every trade (trades; Alpaca only).
    #[arg(long, env = "STOCKANOMALY_HISTORY_TIMEFRAME", value_enum, default_value_t = Timeframe::Minute)]
    pub timeframe: Timeframe,

    /// Base URL of the feed's REST API, to use a sandbox, a proxy or a test
    /// server (env: STOCKANOMALY_ALPACA_REST or STOCKANOMALY_POLYGON_REST;
    /// default: `https://data.alpaca.markets` or `https://api.polygon.io`).
    #[arg(long, value_name = "URL")]
    pub rest_endpoint: Option<String>,

    /// Where the ticks go: a lake root (default: --lake),
    /// kafka://BROKERS/TOPIC (JSON ticks keyed by symbol, as `detect`
    /// consumes them), or PostgreSQL's tick store: `postgres` (the database
    /// in DATABASE_URL) or a postgres:// URL (password in PGPASSWORD).
    #[arg(long, env = "STOCKANOMALY_HISTORY_TO", value_name = "TARGET")]
    pub to: Option<String>,

    /// Alpaca's data feed (iex, sip, ...); the plan's default if absent.
    #[arg(long = "feed", env = "STOCKANOMALY_ALPACA_FEED", value_name = "FEED")]
    pub data_feed: Option<String>,

    /// Records per page (the API's maximum by default: Alpaca 10000,
    /// Polygon 50000).
    #[arg(long, env = "STOCKANOMALY_HISTORY_PAGE_LIMIT", value_name = "N")]
    pub page_limit: Option<u32>,

    /// Retries of one request (429, 5xx, broken connections) before giving up.
    #[arg(
        long,
        env = "STOCKANOMALY_HISTORY_MAX_RETRIES",
        default_value_t = 8,
        value_name = "N"
    )]
    pub max_retries: u32,

    /// Write every rejected record here (CSV: origin, record number, reason,
    /// detail, record).
    #[arg(long, env = "STOCKANOMALY_REJECTS", value_name = "FILE")]
    pub rejects: Option<PathBuf>,

    /// Partitions of the Kafka topic when it has to be created.
    #[arg(long, env = "STOCKANOMALY_KAFKA_PARTITIONS", default_value_t = 6)]
    pub partitions: u16,
}

/// `stockanomaly ingest csv`.
#[derive(Debug, Args)]
pub struct IngestCsvArgs {
    /// CSV files to load (or zip archives holding one CSV file each).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// Layout of the files; `auto` recognises each file from its first line.
    #[arg(long, env = "STOCKANOMALY_CSV_FORMAT", value_enum, default_value_t = CsvFormat::Auto)]
    pub format: CsvFormat,

    /// Write every rejected row here instead of `<FILE>.rejects.csv`.
    #[arg(long, env = "STOCKANOMALY_REJECTS", value_name = "FILE")]
    pub rejects: Option<PathBuf>,

    /// Stop at the first bad row (exit 1) instead of setting it aside.
    #[arg(long, env = "STOCKANOMALY_STRICT")]
    pub strict: bool,

    /// Market identifier code of the venue the symbols are listed on (XNYS,
    /// XNAS, XNSE, XBOM, XLON, XETR, XPAR, XTKS, XHKG, XASX, XTSE, ARCX,
    /// BATS, IEXG), recorded in the `symbols` table so that time-of-day
    /// features use its clock. NSE files default to XNSE; otherwise symbols
    /// without a listing are taken as New York.
    #[arg(long, env = "STOCKANOMALY_EXCHANGE", value_name = "MIC")]
    pub exchange: Option<String>,
}

pub(crate) async fn run(lake: &str, args: IngestArgs) -> anyhow::Result<()> {
    match args.command {
        IngestCommand::Csv(a) => run_csv(lake, a).await,
        IngestCommand::History(a) => run_history(lake, a).await,
    }
}

async fn run_history(lake: &str, args: IngestHistoryArgs) -> anyhow::Result<()> {
    if let Some(0) = args.page_limit {
        return Err(UsageError("--page-limit must be at least 1".into()).into());
    }
    if args.partitions == 0 {
        return Err(UsageError("--partitions must be at least 1".into()).into());
    }
    let to = args.to.as_deref().unwrap_or(lake);
    // A PostgreSQL URL may carry a password: never echo it.
    let shown = if to.starts_with("postgres") {
        "postgres"
    } else {
        to
    };
    let target = TickTarget::parse(to, args.partitions)
        .map_err(|e| UsageError(format!("--to {shown}: {e}")))?;
    let endpoint = args
        .rest_endpoint
        .or_else(|| {
            std::env::var(args.feed.endpoint_var())
                .ok()
                .filter(|v| !v.is_empty())
        })
        .unwrap_or_else(|| args.feed.default_endpoint().to_owned());
    let symbols: Vec<String> = args
        .symbols
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let request = HistoryRequest {
        feed: args.feed,
        endpoint,
        symbols,
        from: args.from,
        until: args.until,
        timeframe: args.timeframe,
        alpaca_feed: args.data_feed,
        page_limit: args.page_limit,
        retry: RetryPolicy {
            max_retries: args.max_retries,
            ..RetryPolicy::default()
        },
        validator: Validator::new(),
    };
    let mut fetcher = HistoryFetcher::new(request)?;
    let bar = open_bar("pages");
    bar.set_message("0 ticks".to_owned());
    let summary = ingest_history(&mut fetcher, &target, args.rejects.as_deref(), &bar).await;
    bar.finish_and_clear();
    let summary = summary.with_context(|| {
        format!(
            "ingest history {} from {}",
            fetcher.request().feed.feed(),
            fetcher.endpoint()
        )
    })?;
    print_history_summary(&fetcher, &target, &summary);
    Ok(())
}

fn print_history_summary(fetcher: &HistoryFetcher, target: &TickTarget, s: &HistorySummary) {
    let r = fetcher.request();
    let f = &s.fetch;
    println!(
        "{} {} history of {} symbols, {} .. {}: {} pages, {} records, {} ticks {} {target}, {} rejected",
        r.feed.feed(),
        r.timeframe,
        r.symbols.len(),
        r.from,
        r.until,
        count(f.pages),
        count(s.records),
        count(s.ticks),
        match target {
            TickTarget::Lake(_) | TickTarget::Postgres { .. } => "written to",
            TickTarget::Kafka { .. } => "published to",
        },
        count(s.rejects.total()),
    );
    if s.rejects.total() > 0 {
        println!("  rejects: {}", s.rejects);
    }
    if let Some(p) = &s.rejects_path {
        println!("  rejects written to {}", p.display());
    }
    println!(
        "  {} requests, {} retries (429: {}, 5xx: {}, connection: {})",
        count(f.requests),
        count(f.retries),
        count(f.rate_limited),
        count(f.server_errors),
        count(f.connection_errors),
    );
    if let Some((a, b)) = s.time_range {
        println!("  {} symbols, time range {} .. {}", s.symbols, ts(a), ts(b));
    }
    match target {
        TickTarget::Lake(_) => println!(
            "  {} files written, {} already present; {:.2}s, {}",
            s.tick_files.files_written,
            s.tick_files.files_existing,
            s.elapsed.as_secs_f64(),
            rate(s.ticks as f64, s.elapsed),
        ),
        TickTarget::Kafka { .. } => println!(
            "  {:.1} MB of JSON acknowledged; {:.2}s, {}",
            s.published_bytes as f64 / 1e6,
            s.elapsed.as_secs_f64(),
            rate(s.ticks as f64, s.elapsed),
        ),
        TickTarget::Postgres { .. } => println!(
            "  {} ticks new to the tick store ({} already there), {} day partitions created; {:.2}s, {}",
            count(s.stored_new),
            count(s.ticks.saturating_sub(s.stored_new)),
            s.partitions_created,
            s.elapsed.as_secs_f64(),
            rate(s.ticks as f64, s.elapsed),
        ),
    }
}

async fn run_csv(lake: &str, args: IngestCsvArgs) -> anyhow::Result<()> {
    let root = open_lake(lake)?;
    let mut total = 0;
    for f in &args.files {
        existing_file(f)?;
        total += std::fs::metadata(f)
            .with_context(|| format!("{}", f.display()))?
            .len();
    }
    let options = IngestOptions {
        exchange: args.exchange,
        format: args.format,
        rejects: args.rejects,
        strict: args.strict,
        validator: Validator::new(),
    };
    let bar = bytes_bar(total, "ingest");
    let summary = ingest_csv(&root, &args.files, &options, &bar).await;
    bar.finish_and_clear();
    let summary = summary?;
    print_summary(&root.to_string(), &summary);
    Ok(())
}

fn print_summary(lake: &str, s: &IngestSummary) {
    for f in &s.files {
        println!(
            "{}: {} ({}): {} rows, {} ticks, {} labels, {} rejected",
            f.path.display(),
            f.format,
            f.path.extension().and_then(|e| e.to_str()).unwrap_or("csv"),
            count(f.rows),
            count(f.ticks),
            count(f.labels),
            count(f.rejects.total()),
        );
        if let Some(p) = &f.rejects_path {
            println!("  rejects ({}) written to {}", f.rejects, p.display());
        }
    }
    println!(
        "ingested {} rows into {lake}: {} ticks, {} labels, {} rejected, {} symbols",
        count(s.rows()),
        count(s.ticks()),
        count(s.labels()),
        count(s.rejects().total()),
        count(s.symbols as u64),
    );
    if let Some((a, b)) = s.time_range {
        println!("  time range {} .. {}", ts(a), ts(b));
    }
    println!(
        "  {} files written, {} already present; {:.2}s, {}",
        s.tick_files.files_written + s.label_files.files_written,
        s.tick_files.files_existing + s.label_files.files_existing,
        s.elapsed.as_secs_f64(),
        rate(s.rows() as f64, s.elapsed),
    );
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn history(args: &[&str]) -> IngestHistoryArgs {
        let cli = Cli::try_parse_from(
            ["stockanomaly", "ingest", "history"]
                .iter()
                .chain(args)
                .copied(),
        )
        .unwrap();
        match cli.command {
            Command::Ingest(IngestArgs {
                command: IngestCommand::History(a),
            }) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_history_flags() {
        let a = history(&[
            "alpaca",
            "--symbols",
            "AAPL,MSFT",
            "--from",
            "2024-01-03",
            "--until",
            "2024-01-04T10:00:00Z",
            "--timeframe",
            "trades",
            "--to",
            "kafka://localhost:9092/ticks",
        ]);
        assert_eq!(a.feed, HistoryFeed::Alpaca);
        assert_eq!(a.symbols, ["AAPL", "MSFT"]);
        assert!(matches!(a.from, Bound::Day(_)));
        assert!(matches!(a.until, Bound::At(_)));
        assert_eq!(a.timeframe, Timeframe::Trades);
        assert_eq!(a.to.as_deref(), Some("kafka://localhost:9092/ticks"));
        assert_eq!(a.max_retries, 8);
        let a = history(&[
            "polygon",
            "--symbols",
            "MSFT",
            "--from",
            "2024-01-03",
            "--until",
            "2024-01-03",
            "--timeframe",
            "1min",
        ]);
        assert_eq!(a.timeframe, Timeframe::Minute);
        assert_eq!(a.to, None);
    }

    #[test]
    fn history_refuses_bad_dates_and_feeds() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(
                ["stockanomaly", "ingest", "history"]
                    .iter()
                    .chain(args)
                    .copied(),
            )
        };
        let base = ["--symbols", "A", "--from", "2024-01-03"];
        assert!(parse(&[&["finnhub"][..], &base, &["--until", "2024-01-03"]].concat()).is_err());
        let e = parse(&[&["alpaca"][..], &base, &["--until", "03/01/2024"]].concat()).unwrap_err();
        assert!(e.to_string().contains("expected a date"), "{e}");
    }
}
