//! `stockanomaly market-context`: the market rows of every one-minute
//! bucket of the tick topic, to the `market` topic the detectors read.

use std::time::Duration;

use clap::Args;

use super::{open_lake, UsageError};
use crate::stream::load_symbols;
use crate::stream::market::CloserConfig;
use crate::stream::market_context::{market_context, MarketContextOptions};

/// `stockanomaly market-context`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Examples:
  stockanomaly market-context --source kafka://localhost:9092/ticks
  stockanomaly detect --source kafka://localhost:9092/ticks --market-topic market ...

Detectors split the tick topic's partitions between them, so none sees
every symbol; the market features (queries/features/market.sql) need the
cross-section of all symbols at each minute. This stage reads the whole
topic, closes each one-minute bucket once every partition has moved past it
(or has been idle for --idle-timeout-ms), computes the bucket's rows with
queries/market/buckets.sql (as backfill does per date) and publishes them.
Each detector reads the market topic in full and scores a bucket's ticks
once their row is known. Run one instance; a restart resumes after the last
published bucket.")]
pub struct MarketContextArgs {
    /// The tick topic: kafka://BROKER[,BROKER...]/TOPIC.
    #[arg(long, env = "STOCKANOMALY_SOURCE", value_name = "URL")]
    pub source: String,

    /// Topic the market rows are published to (same brokers; created with
    /// one partition if missing).
    #[arg(
        long,
        env = "STOCKANOMALY_MARKET_TOPIC",
        default_value = "market",
        value_name = "TOPIC"
    )]
    pub market_topic: String,

    /// Consumer group of the stage on the tick topic.
    #[arg(
        long,
        env = "STOCKANOMALY_MARKET_GROUP",
        default_value = "stockanomaly-market"
    )]
    pub group: String,

    /// A partition silent this long stops holding buckets open (ms).
    #[arg(long, env = "STOCKANOMALY_IDLE_TIMEOUT_MS", default_value_t = 2_000)]
    pub idle_timeout_ms: u64,

    /// How far behind its partition's newest tick a tick may arrive and
    /// still count in its bucket (ms); use the detectors' value.
    #[arg(long, env = "STOCKANOMALY_ALLOWED_LATENESS_MS", default_value_t = 0)]
    pub allowed_lateness_ms: u64,

    /// Most ticks read between closings.
    #[arg(long, env = "STOCKANOMALY_BATCH_ROWS", default_value_t = 10_000)]
    pub batch_rows: usize,

    /// Longest wait to fill a batch (ms).
    #[arg(long, env = "STOCKANOMALY_BATCH_MS", default_value_t = 200)]
    pub batch_ms: u64,

    /// Close every bucket and exit after this many seconds without a tick
    /// (replays and tests); run until SIGINT/SIGTERM otherwise.
    #[arg(long, env = "STOCKANOMALY_EXIT_WHEN_IDLE", value_name = "SECS")]
    pub exit_when_idle: Option<f64>,

    /// A librdkafka client property for every Kafka client of the stage
    /// (TLS, SASL; see `detect --help`); repeatable. Values are never
    /// printed or logged. In the environment: KEY=VALUE pairs separated by
    /// `;`.
    #[arg(
        long = "kafka-option",
        env = "STOCKANOMALY_KAFKA_OPTIONS",
        hide_env_values = true,
        value_name = "KEY=VALUE",
        value_delimiter = ';'
    )]
    pub kafka_options: Vec<crate::sources::kafka::KafkaOption>,

    #[command(flatten)]
    pub future: super::future::FutureArgs,

    /// The SQL files.
    #[command(flatten)]
    pub sql: super::shared::QueriesArgs,
}

pub(crate) async fn run(lake: &str, args: MarketContextArgs) -> anyhow::Result<()> {
    let (brokers, topic) = super::detect::parse_source(&args.source)?;
    if args.batch_rows == 0 {
        return Err(UsageError("--batch-rows must be at least 1".into()).into());
    }
    let catalog = args.sql.catalog().await?;
    let root = open_lake(lake)?;
    let symbols = load_symbols(&root).await?;
    let options = MarketContextOptions {
        kafka: crate::sources::kafka::KafkaConfig::from_options(&brokers, &args.kafka_options),
        topic: topic.clone(),
        market_topic: args.market_topic.clone(),
        group: args.group,
        batch_rows: args.batch_rows,
        batch_wait: Duration::from_millis(args.batch_ms),
        closer: CloserConfig {
            idle_timeout: Duration::from_millis(args.idle_timeout_ms),
            allowed_lateness: Duration::from_millis(args.allowed_lateness_ms),
        },
        exit_when_idle: args.exit_when_idle.map(Duration::from_secs_f64),
        validator: args.future.validator(),
    };
    eprintln!(
        "market-context: buckets of {topic} to {}",
        args.market_topic
    );
    if !args.kafka_options.is_empty() {
        // Keys only: values may be credentials.
        eprintln!(
            "market-context: Kafka client options {} (values not shown)",
            options.kafka.option_keys().join(", ")
        );
    }
    let started = std::time::Instant::now();
    let s = market_context(catalog.market_sql(), &symbols, Some(&root), &options).await?;
    println!(
        "market-context: {} messages, {} ticks in buckets, {} not ticks, {} watermarks, {} late; {} rows in {} messages, {:.1}s",
        s.messages,
        s.ticks,
        s.rejected,
        s.watermarks,
        s.late,
        s.rows,
        s.published,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
