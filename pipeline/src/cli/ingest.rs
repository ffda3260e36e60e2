//! `stockanomaly ingest csv FILE...`, `stockanomaly ingest history FEED` and
//! `stockanomaly ingest live FEED`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::output::{bytes_bar, count, open_bar, rate, ts};
use super::{existing_file, open_lake, UsageError};
use crate::ingest::{
    ingest_csv, ingest_history, HistorySummary, IngestOptions, IngestSummary, TickTarget,
};
use crate::live_ingest::{ingest_live, LiveOptions, LiveStatus, Stopped};
use crate::sinks::tick_sink::TickSink;
use crate::sources::csv::CsvFormat;
use crate::sources::feed::connect::{redacted, ConnectOptions};
use crate::sources::history::{
    Bound, HistoryFeed, HistoryFetcher, HistoryRequest, RetryPolicy, Timeframe,
};
use crate::sources::live::{Channel, LiveFeed, LiveRequest, LiveSource};
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
    /// Stream a live feed (Alpaca, Polygon, Finnhub) into the lake, a Kafka topic or PostgreSQL.
    #[command(after_long_help = "\
Examples:
  stockanomaly ingest live alpaca --symbols AAPL,MSFT --to kafka://localhost:9092/ticks
  stockanomaly ingest live alpaca --feed sip --channel bars --symbols AAPL --to postgres
  stockanomaly ingest live finnhub --symbols AAPL,BINANCE:BTCUSDT --max-ticks 10000
  stockanomaly ingest live alpaca --endpoint ws://127.0.0.1:8765/v2/test \\
      --rest-endpoint http://127.0.0.1:8766 --symbols FAKEPACA

Credentials come only from the environment: APCA_API_KEY_ID and
APCA_API_SECRET_KEY (Alpaca), POLYGON_API_KEY, FINNHUB_API_KEY. They are
never printed or logged; a Finnhub URL (token in the query) is logged as
scheme, host and path only.

Runs until SIGINT or SIGTERM (then writes what it holds and exits 0) or
--max-ticks. A status line shows ticks/s per symbol, reconnects, gaps
filled and rejects. Dropped connections are reopened with exponential
backoff and jitter, re-authenticated and re-subscribed; a feed that sends
nothing for --watchdog-secs is reconnected. The ticks missed while
disconnected are fetched from the feed's REST history (Alpaca trades or
bars, Polygon bars) and added once each; Finnhub and Polygon trades have
no such history here, so their gaps are reported as unfilled.

Corrections, cancels and revised bars are recorded in the lake's
amendments table (--lake), whatever --to is. When the sink falls behind by
more than --buffer-ticks, the newest ticks are dropped and counted (the
feed is never left unread: it would drop the connection).")]
    Live(IngestLiveArgs),
}

/// `stockanomaly ingest live`.
#[derive(Debug, Args)]
pub struct IngestLiveArgs {
    /// The feed to stream.
    #[arg(value_enum, value_name = "FEED")]
    pub feed: LiveFeed,

    /// Symbols to subscribe to, comma-separated.
    #[arg(
        long,
        env = "STOCKANOMALY_SYMBOLS",
        value_delimiter = ',',
        required = true,
        value_name = "A,B"
    )]
    pub symbols: Vec<String>,

    /// Trades (with the latest quote stamped on each) or minute bars.
    #[arg(long, env = "STOCKANOMALY_LIVE_CHANNEL", value_enum, default_value_t = Channel::Trades)]
    pub channel: Channel,

    /// Alpaca's data feed: iex, sip, delayed_sip or test (the stream URL's
    /// last segment, and the REST history's `feed`).
    #[arg(long = "feed", env = "STOCKANOMALY_ALPACA_FEED", value_name = "FEED")]
    pub data_feed: Option<String>,

    /// The stream's URL, for a sandbox, a proxy or a test server (env:
    /// STOCKANOMALY_ALPACA_STREAM, STOCKANOMALY_POLYGON_STREAM or
    /// STOCKANOMALY_FINNHUB_STREAM; default: the feed's production stream).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,

    /// Base URL of the feed's REST history, used to fill the gaps of
    /// dropped connections (env: STOCKANOMALY_ALPACA_REST or
    /// STOCKANOMALY_POLYGON_REST; default: the production API).
    #[arg(long, value_name = "URL")]
    pub rest_endpoint: Option<String>,

    /// Do not fetch the gaps of dropped connections (they are still
    /// counted and logged).
    #[arg(long, env = "STOCKANOMALY_NO_GAP_FILL")]
    pub no_gap_fill: bool,

    /// Stop after this many ticks.
    #[arg(long, env = "STOCKANOMALY_MAX_TICKS", value_name = "N")]
    pub max_ticks: Option<u64>,

    /// Ticks held between the feed and a slower sink before new ticks are
    /// dropped (counted in the status line and summary).
    #[arg(
        long,
        env = "STOCKANOMALY_BUFFER_TICKS",
        default_value_t = 1_000_000,
        value_name = "N"
    )]
    pub buffer_ticks: usize,

    /// Seconds between lake flushes (what a crash can lose; Kafka and
    /// PostgreSQL are written per batch).
    #[arg(
        long,
        env = "STOCKANOMALY_FLUSH_SECS",
        default_value_t = 10.0,
        value_name = "SECS"
    )]
    pub flush_secs: f64,

    /// Seconds without data (the feed's own keepalives count) before the
    /// connection is considered stalled and reopened.
    #[arg(
        long,
        env = "STOCKANOMALY_WATCHDOG_SECS",
        default_value_t = 150.0,
        value_name = "SECS"
    )]
    pub watchdog_secs: f64,

    #[command(flatten)]
    pub future: super::future::FutureArgs,

    /// Connection attempts in a row that may fail before giving up.
    #[arg(
        long,
        env = "STOCKANOMALY_MAX_RECONNECTS",
        default_value_t = 20,
        value_name = "N"
    )]
    pub max_reconnects: u32,

    /// Where the ticks and rejects go.
    #[command(flatten)]
    pub target: super::shared::IngestTargetArgs,
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

    /// Where the ticks and rejects go.
    #[command(flatten)]
    pub target: super::shared::IngestTargetArgs,
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

    /// Where the ticks and rejects go.
    #[command(flatten)]
    pub target: super::shared::IngestTargetArgs,
}

pub(crate) async fn run(lake: &str, args: IngestArgs) -> anyhow::Result<()> {
    match args.command {
        IngestCommand::Csv(a) => run_csv(lake, a).await,
        IngestCommand::History(a) => run_history(lake, a).await,
        IngestCommand::Live(a) => run_live(lake, a).await,
    }
}

async fn run_history(lake: &str, args: IngestHistoryArgs) -> anyhow::Result<()> {
    if let Some(0) = args.page_limit {
        return Err(UsageError("--page-limit must be at least 1".into()).into());
    }
    let to = args.target.to_or_deprecated("STOCKANOMALY_HISTORY_TO");
    let target = parse_target(to.as_deref().unwrap_or(lake), args.target.partitions)?;
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
    let summary = ingest_history(&mut fetcher, &target, args.target.rejects.as_deref(), &bar).await;
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

fn secs(flag: &str, v: f64) -> anyhow::Result<Duration> {
    if !(v.is_finite() && v > 0.0) {
        return Err(UsageError(format!("{flag} must be a positive number of seconds")).into());
    }
    Ok(Duration::from_secs_f64(v))
}

async fn run_live(lake: &str, args: IngestLiveArgs) -> anyhow::Result<()> {
    let to = args.target.to_or_deprecated("STOCKANOMALY_LIVE_TO");
    let target = parse_target(to.as_deref().unwrap_or(lake), args.target.partitions)?;
    let amendments_lake = open_lake(lake)?;
    let flush_every = secs("--flush-secs", args.flush_secs)?;
    let watchdog = secs("--watchdog-secs", args.watchdog_secs)?;
    if args.buffer_ticks == 0 {
        return Err(UsageError("--buffer-ticks must be at least 1".into()).into());
    }
    let from_env = |var: &str| std::env::var(var).ok().filter(|v| !v.is_empty());
    let endpoint = args
        .endpoint
        .or_else(|| from_env(args.feed.stream_var()))
        .unwrap_or_else(|| args.feed.default_stream(args.data_feed.as_deref()));
    let rest_endpoint = match (args.no_gap_fill, args.feed.history()) {
        (false, Some(h)) => Some(
            args.rest_endpoint
                .or_else(|| from_env(h.endpoint_var()))
                .unwrap_or_else(|| h.default_endpoint().to_owned()),
        ),
        _ => None,
    };
    let symbols: Vec<String> = args
        .symbols
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let request = LiveRequest {
        feed: args.feed,
        endpoint,
        rest_endpoint,
        symbols,
        channel: args.channel,
        alpaca_feed: args.data_feed,
        connect: ConnectOptions {
            watchdog,
            max_failures: args.max_reconnects,
            ..ConnectOptions::default()
        },
        // The stream is not read while a gap is fetched (its frames wait in
        // the socket): a short budget, so a REST outage costs seconds, not
        // the connection.
        retry: RetryPolicy {
            max_retries: 3,
            backoff_max: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
            timeout: Duration::from_secs(30),
            ..RetryPolicy::default()
        },
        batch_wait: Duration::from_millis(500),
        validator: args.future.validator(),
    };
    let feed = request.feed;
    let shown = redacted(&request.endpoint);
    let source = LiveSource::new(request).with_context(|| format!("ingest live {feed}"))?;
    let sink = TickSink::open(&target, Some(amendments_lake))
        .await
        .with_context(|| format!("ingest live {feed}: opening {target}"))?;
    let options = LiveOptions {
        max_ticks: args.max_ticks,
        buffer_ticks: args.buffer_ticks,
        flush_every,
        status_every: Duration::from_secs(1),
        rejects: args.target.rejects,
    };
    let bar = open_bar("ticks");
    bar.set_message(format!("connecting to {shown}"));
    let result = ingest_live(
        source,
        sink,
        &options,
        crate::stream::shutdown_signal(),
        |st| {
            bar.set_position(st.ticks);
            bar.set_message(status_line(st));
        },
    )
    .await;
    bar.finish_and_clear();
    let st = result.with_context(|| format!("ingest live {feed} from {shown}"))?;
    print_live_summary(feed, &shown, &target, &st);
    Ok(())
}

/// The status line: rates of the busiest symbols, then the counters.
fn status_line(st: &LiveStatus) -> String {
    let mut rates: Vec<String> = st
        .rates
        .iter()
        .take(4)
        .map(|(s, r)| format!("{s} {r:.1}/s"))
        .collect();
    if st.rates.len() > 4 {
        rates.push(format!("+{} more", st.rates.len() - 4));
    }
    if rates.is_empty() {
        rates.push("no ticks in the last second".into());
    }
    format!(
        "{} · reconnects {} · gaps filled {}/{} (+{} ticks) · rejects {} · dropped {}",
        rates.join(", "),
        st.connection.reconnects,
        st.gaps.filled,
        st.gaps.gaps,
        count(st.gaps.ticks_added),
        count(st.rejects.total()),
        count(st.dropped_ticks),
    )
}

fn print_live_summary(feed: LiveFeed, endpoint: &str, target: &TickTarget, st: &LiveStatus) {
    let why = match st.stopped {
        Some(Stopped::MaxTicks) => "--max-ticks reached",
        Some(Stopped::Signal) => "stopped by signal",
        None => "the feed ended",
    };
    println!(
        "{feed} live from {endpoint}: {} ticks {} {target} in {:.1}s ({why}), {} rejected, {} dropped",
        count(st.ticks),
        match target {
            TickTarget::Kafka { .. } => "published to",
            _ => "written to",
        },
        st.elapsed.as_secs_f64(),
        count(st.rejects.total()),
        count(st.dropped_ticks),
    );
    let mut symbols: Vec<(&String, &u64)> = st.per_symbol.iter().collect();
    symbols.sort();
    if !symbols.is_empty() {
        let list: Vec<String> = symbols
            .iter()
            .map(|(s, n)| format!("{s} {}", count(**n)))
            .collect();
        println!("  per symbol: {}", list.join(", "));
    }
    let c = &st.connection;
    println!(
        "  connections {} (reconnects {}, failed attempts {}, stalls {}, pong timeouts {}, feed faults {})",
        c.connects, c.reconnects, c.failed_attempts, c.stalls, c.pong_timeouts, c.faults
    );
    let g = &st.gaps;
    println!(
        "  gaps after reconnects {}: {} filled from the REST history (+{} ticks, {} already received), {} unfilled",
        g.gaps, g.filled, count(g.ticks_added), count(g.ticks_duplicate), g.unfilled
    );
    for w in &g.unfilled_windows {
        println!("    unfilled: {w}");
    }
    let k = &st.counters;
    println!(
        "  messages {}, amendments {}, unknown types {}",
        count(k.messages),
        count(k.amendments),
        k.unknown.total(),
    );
    if st.rejects.total() > 0 {
        println!("  rejects: {}", st.rejects);
    }
    if let Some(p) = &st.rejects_path {
        println!("  rejects written to {}", p.display());
    }
    if st.dropped_rejects > 0 {
        println!(
            "  {} rejects counted but not written (the writer was behind)",
            count(st.dropped_rejects)
        );
    }
    match target {
        TickTarget::Postgres { .. } => println!(
            "  tick store: {} ticks new, {} already there, {} day partitions created",
            count(st.written.stored_new),
            count(st.ticks.saturating_sub(st.written.stored_new)),
            st.written.partitions_created,
        ),
        TickTarget::Lake(_) => println!(
            "  {} files written, {} already present",
            st.written.tick_files.files_written, st.written.tick_files.files_existing
        ),
        TickTarget::Kafka { .. } => println!(
            "  {:.1} MB of JSON acknowledged",
            st.written.published_bytes as f64 / 1e6
        ),
    }
    if st.written.amendments > 0 {
        println!(
            "  {} amendments recorded in the lake's amendments table",
            count(st.written.amendments)
        );
    }
}

/// `--to`: a lake, a Kafka topic or PostgreSQL; a usage error otherwise.
fn parse_target(to: &str, partitions: u16) -> anyhow::Result<TickTarget> {
    if partitions == 0 {
        return Err(UsageError("--partitions must be at least 1".into()).into());
    }
    // A PostgreSQL URL may carry a password: never echo it.
    let shown = if to.starts_with("postgres") {
        "postgres"
    } else {
        to
    };
    Ok(TickTarget::parse(to, partitions).map_err(|e| UsageError(format!("--to {shown}: {e}")))?)
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
    let to = match args.target.to_or_deprecated("STOCKANOMALY_CSV_TO") {
        Some(to) => Some(parse_target(&to, args.target.partitions)?),
        None => None,
    };
    let shown = to
        .as_ref()
        .map_or_else(|| root.to_string(), |t| t.to_string());
    let options = IngestOptions {
        exchange: args.exchange,
        format: args.format,
        rejects: args.target.rejects,
        strict: args.strict,
        validator: Validator::new(),
        to,
    };
    let bar = bytes_bar(total, "ingest");
    let summary = ingest_csv(&root, &args.files, &options, &bar).await;
    bar.finish_and_clear();
    let summary = summary?;
    let pg = matches!(options.to, Some(TickTarget::Postgres { .. }));
    print_summary(&shown, &summary, pg);
    Ok(())
}

fn print_summary(lake: &str, s: &IngestSummary, to_postgres: bool) {
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
    if to_postgres {
        println!(
            "  tick store: {} ticks new, {} already there, {} day partitions created",
            count(s.stored.stored_new),
            count(s.ticks().saturating_sub(s.stored.stored_new)),
            s.stored.partitions_created,
        );
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
        assert_eq!(a.target.to.as_deref(), Some("kafka://localhost:9092/ticks"));
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
        assert_eq!(a.target.to, None);
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
