//! `stockanomaly detect`: the streaming detector, Kafka to PostgreSQL.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::train::load_detectors;
use super::{open_lake, UsageError};
use crate::sinks::postgres::{connect, migrate, register_model, Reconnecting};
use crate::sources::kafka::{KafkaConfig, KafkaOption, KafkaUrl};
use crate::stream::context::{context_tables, ContextError};
use crate::stream::{detect, load_symbols, DetectOptions, Executor, ExecutorConfig, Metrics};

/// `stockanomaly detect`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Consumes ticks (JSON, keyed by symbol) from a Kafka topic in a consumer
group, computes the feature catalog over each symbol's lookback of history
plus the micro-batch (the same query as backfill), scores with the model
and/or the rules, and writes alerts, dead letters and the partitions'
offsets to PostgreSQL in one transaction per batch. A (symbol, ts) group is
emitted once complete: when a later tick of the symbol arrives, or after
--idle-timeout-ms; a tick older than its symbol's newest goes to
dead_letters as `late`, as do undecodable and invalid messages.

On start (and on each new partition) it resumes from the offsets stored in
PostgreSQL, first replaying the history still needed without emitting; alerts
are keyed (model version + tick key), so a replay never writes one twice.
Partitions the group moves to another member are dropped from the state;
while PostgreSQL is unreachable the batch is retried (reconnecting, with
backoff) and no offset moves. With --allowed-lateness-ms, ticks up to that
far behind their symbol's newest are put in order instead of refused.
The lake (--lake) provides the context tables the feature files read
(`symbols`, `profiles`, `betas`; `market` comes from the stream): detect
says at start where each comes from (stored, or made from the lake's ticks
as backfill would) and refuses to start (exit 2) when one can be had
neither way, since those features would be NULL.

With a model, the alerts (the rules' too) are grouped into cases as
`score` groups them, and each batch's changed cases are written to the
`cases` table in the same transaction: opened_ts is set when the model's
case rule opens a case, status becomes closed a gap after its last alert,
and a restarted or rebalanced detector takes its partitions' open cases
back from the table.

Examples:
  stockanomaly detect --model model/artifacts/1a2b3c4d --rules \\
      --source kafka://localhost:9092/ticks --group surveillance
  DATABASE_URL=postgres://detector@db/stockanomaly stockanomaly detect --model DIR --source kafka://k1:9092,k2:9092/ticks \\
      --alerts-topic alerts --metrics-addr 0.0.0.0:9187
  STOCKANOMALY_KAFKA_OPTIONS='security.protocol=SASL_SSL;sasl.mechanism=SCRAM-SHA-512;sasl.username=detector;sasl.password=...' \\
      stockanomaly detect --model DIR --source kafka://broker:9093/ticks")]
pub struct DetectArgs {
    /// Artifact folder written by `stockanomaly train`.
    #[arg(
        long,
        env = "STOCKANOMALY_MODEL",
        value_name = "DIR",
        required_unless_present = "rules"
    )]
    pub model: Option<PathBuf>,

    /// Also run the rule files of <queries>/rules/.
    #[arg(long, env = "STOCKANOMALY_RULES")]
    pub rules: bool,

    /// kafka://BROKER[,BROKER...]/TOPIC
    #[arg(long, env = "STOCKANOMALY_SOURCE", value_name = "URL")]
    pub source: String,

    /// Consumer group; also keys the offsets stored in PostgreSQL.
    #[arg(
        long,
        env = "STOCKANOMALY_GROUP",
        default_value = "stockanomaly-detect"
    )]
    pub group: String,

    /// The database.
    #[command(flatten)]
    pub db: super::shared::DbUrlArgs,

    /// Most ticks per micro-batch. A tick's processing latency (final to
    /// alerts committed) is its batch's step and transaction, so smaller
    /// batches lower it and larger ones catch up with a backlog faster
    /// (README: 1,000 against 10,000 at 100k ticks/s offered).
    #[arg(long, env = "STOCKANOMALY_BATCH_ROWS", default_value_t = 10_000)]
    pub batch_rows: usize,

    /// Longest wait to fill a micro-batch, in milliseconds.
    #[arg(long, env = "STOCKANOMALY_BATCH_MS", default_value_t = 200)]
    pub batch_ms: u64,

    /// A symbol quiet this long has its last (symbol, ts) group emitted, in
    /// milliseconds of time spent reading the topic (the detector's own
    /// processing does not count); a tick arriving later with that timestamp
    /// is late.
    #[arg(long, env = "STOCKANOMALY_IDLE_TIMEOUT_MS", default_value_t = 2_000)]
    pub idle_timeout_ms: u64,

    /// Keep the K largest SHAP contributions of each model alert.
    #[arg(
        long,
        env = "STOCKANOMALY_TOP_SHAP",
        default_value_t = 3,
        value_name = "K"
    )]
    pub top_shap: usize,

    /// Exit once nothing arrived for this many seconds and nothing is
    /// pending (replays and tests); run until SIGINT/SIGTERM otherwise.
    #[arg(long, env = "STOCKANOMALY_EXIT_WHEN_IDLE", value_name = "SECS")]
    pub exit_when_idle: Option<f64>,

    /// Seconds between `detector_stats` rows (one more at exit).
    #[arg(
        long,
        env = "STOCKANOMALY_STATS_EVERY",
        default_value_t = 10.0,
        value_name = "SECS"
    )]
    pub stats_every: f64,

    /// How far behind its symbol's newest tick a tick may arrive and still be
    /// used, in milliseconds: ticks are held in a reorder buffer this long
    /// (in event time) before their group is emitted. 0: any tick older than
    /// its symbol's newest goes to dead_letters as `late`.
    #[arg(long, env = "STOCKANOMALY_ALLOWED_LATENESS_MS", default_value_t = 0)]
    pub allowed_lateness_ms: u64,

    /// Also publish each alert as JSON to this Kafka topic (same brokers),
    /// keyed by the alert key; at least once, before the PostgreSQL commit.
    #[arg(long, env = "STOCKANOMALY_ALERTS_TOPIC", value_name = "TOPIC")]
    pub alerts_topic: Option<String>,

    /// Also write alerts to the lake's `alerts` table
    /// (alerts/model_version=V/date=D/), before the PostgreSQL commit.
    #[arg(long, env = "STOCKANOMALY_ALERTS_TO_LAKE")]
    pub alerts_to_lake: bool,

    /// Read the market context (feature files joining `market`) from this
    /// topic, published by `stockanomaly market-context` over the whole
    /// tick topic. Without it the detector computes the market from the
    /// ticks it reads, which is exact only when it reads every partition.
    #[arg(long, env = "STOCKANOMALY_MARKET_TOPIC", value_name = "TOPIC")]
    pub market_topic: Option<String>,

    /// A librdkafka client property for every Kafka client of the run
    /// (consumer, alert and market topics), e.g. security.protocol=SASL_SSL,
    /// sasl.mechanism=SCRAM-SHA-512, sasl.username=..., sasl.password=...,
    /// ssl.ca.location=FILE; repeatable. Values are never printed or logged.
    /// In the environment: KEY=VALUE pairs separated by `;`.
    #[arg(
        long = "kafka-option",
        env = "STOCKANOMALY_KAFKA_OPTIONS",
        hide_env_values = true,
        value_name = "KEY=VALUE",
        value_delimiter = ';'
    )]
    pub kafka_options: Vec<KafkaOption>,

    #[command(flatten)]
    pub future: super::future::FutureArgs,

    /// Serve Prometheus metrics on this address (GET /metrics), e.g.
    /// 127.0.0.1:9187.
    #[arg(long, env = "STOCKANOMALY_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// The SQL files.
    #[command(flatten)]
    pub sql: super::shared::QueriesArgs,
}

/// `--source kafka://brokers/topic` → (brokers, topic).
pub(super) fn parse_source(url: &str) -> Result<(String, String), UsageError> {
    let KafkaUrl { brokers, topic } =
        KafkaUrl::parse(url).map_err(|e| UsageError(format!("--source {e}")))?;
    Ok((brokers, topic))
}

pub(crate) async fn run(lake: &str, args: DetectArgs) -> anyhow::Result<()> {
    let (brokers, topic) = parse_source(&args.source)?;
    if args.batch_rows == 0 {
        return Err(UsageError("--batch-rows must be at least 1".into()).into());
    }
    let catalog = args.sql.catalog().await?;
    let detectors = load_detectors(
        &catalog,
        args.model.as_deref(),
        args.rules,
        &args.sql.queries,
    )
    .await?;
    let root = open_lake(lake)?;
    // Refuse a lake without the context tables the feature files read: the
    // features would be NULL and the alerts not backfill's.
    let context = context_tables(&catalog, &root, args.market_topic.is_some())
        .await
        .map_err(|e| match e {
            ContextError::Missing { .. } => anyhow::Error::new(UsageError(e.to_string())),
            other => anyhow::Error::new(other),
        })?;
    for c in &context {
        eprintln!(
            "detect: context table `{}` ({}): {}",
            c.table,
            c.files.join(", "),
            c.source
        );
    }
    let symbols = load_symbols(&root).await?;
    let mut db = connect(&args.db.database_url).await?;
    let applied = migrate(&mut db).await?;
    if !applied.is_empty() {
        println!("migrated the database: {}", applied.join(", "));
    }
    for d in &detectors {
        let (kind, manifest) = d.registration()?;
        register_model(&db, &d.version(), kind, &manifest).await?;
    }
    let labels: Vec<String> = detectors.iter().map(|d| d.label()).collect();
    let executor = Executor::new(
        catalog,
        detectors,
        Some(symbols),
        ExecutorConfig {
            idle_timeout: Duration::from_millis(args.idle_timeout_ms),
            top_shap: args.top_shap,
            allowed_lateness: Duration::from_millis(args.allowed_lateness_ms),
        },
    )?
    .with_profiles(root.clone());
    let kafka = KafkaConfig::from_options(&brokers, &args.kafka_options);
    if !args.kafka_options.is_empty() {
        // Keys only: values may be credentials.
        eprintln!(
            "detect: Kafka client options {} (values not shown)",
            kafka.option_keys().join(", ")
        );
    }
    let options = DetectOptions {
        kafka,
        topic: topic.clone(),
        group: args.group.clone(),
        batch_rows: args.batch_rows,
        batch_wait: Duration::from_millis(args.batch_ms),
        exit_when_idle: args.exit_when_idle.map(Duration::from_secs_f64),
        stats_every: Duration::from_secs_f64(args.stats_every.max(0.1)),
        alerts_topic: args.alerts_topic.clone(),
        alerts_lake: args.alerts_to_lake.then(|| root.clone()),
        market_topic: args.market_topic.clone(),
        validator: args.future.validator(),
    };
    let metrics = Metrics::default();
    if let Some(addr) = args.metrics_addr {
        let (bound, _task) = metrics
            .serve(addr)
            .await
            .with_context(|| format!("--metrics-addr {addr}: cannot listen"))?;
        eprintln!("detect: metrics on http://{bound}/metrics");
    }
    eprintln!(
        "detect: {} on {topic} (group {}), alerts to PostgreSQL",
        labels.join(", "),
        args.group
    );
    let delay = executor.catalog().delay();
    if delay > 0 {
        eprintln!(
            "detect: delayed confirmation: a tick is scored once {delay} later ticks of its \
             symbol have arrived (detection latency: {delay} ticks)"
        );
    }
    let started = std::time::Instant::now();
    let db = Reconnecting::new(&args.db.database_url, db);
    let s = detect(executor, db, &options, &metrics).await?;
    // Gaps are rare and each was logged as it was found: named here only
    // when there were some.
    let gaps = if s.gaps > 0 {
        format!(
            "; {} offset gap(s) (records deleted or the topic recreated: see the log)",
            s.gaps
        )
    } else {
        String::new()
    };
    println!(
        "detect: {} messages, {} ticks emitted, {} alerts and {} dead letters written in {} batches, {:.1}s{gaps}",
        s.messages,
        s.emitted,
        s.alerts,
        s.dead_letters,
        s.batches,
        started.elapsed().as_secs_f64()
    );
    if let (Some([p50, p99]), Some([a50, a99])) = (s.processing_ms, s.arrival_ms) {
        println!(
            "  latency over the run: final -> committed p50 {p50:.1} ms, p99 {p99:.1} ms; \
             arrival -> committed p50 {a50:.1} ms, p99 {a99:.1} ms"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_options_come_from_flags_and_the_environment_and_hide_their_values() {
        use clap::{CommandFactory, Parser};
        let cli = crate::cli::Cli::try_parse_from([
            "stockanomaly",
            "detect",
            "--rules",
            "--source",
            "kafka://b:9092/t",
            "--database-url",
            "postgres://h/db",
            "--kafka-option",
            "security.protocol=SASL_SSL",
            "--kafka-option",
            "sasl.password=hunter2",
        ])
        .unwrap();
        let crate::cli::Command::Detect(args) = cli.command else {
            panic!("not detect");
        };
        let keys: Vec<&str> = args.kafka_options.iter().map(|o| o.key()).collect();
        assert_eq!(keys, ["security.protocol", "sasl.password"]);
        assert!(!format!("{args:?}").contains("hunter2"));
        let e = crate::cli::Cli::try_parse_from([
            "stockanomaly",
            "detect",
            "--rules",
            "--source",
            "kafka://b:9092/t",
            "--database-url",
            "postgres://h/db",
            "--kafka-option",
            "group.id=other",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("--group"), "{e}");
        let mut cmd = crate::cli::Cli::command();
        let detect = cmd.find_subcommand_mut("detect").unwrap();
        let arg = detect
            .get_arguments()
            .find(|a| a.get_id() == "kafka_options")
            .unwrap();
        assert_eq!(
            arg.get_env(),
            Some(std::ffi::OsStr::new("STOCKANOMALY_KAFKA_OPTIONS"))
        );
        assert!(arg.is_hide_env_values_set());
    }

    #[test]
    fn sources_are_kafka_urls() {
        assert_eq!(
            parse_source("kafka://a:1,b:2/ticks").unwrap(),
            ("a:1,b:2".to_owned(), "ticks".to_owned())
        );
        assert!(parse_source("kafka://a:1").is_err());
        assert!(parse_source("http://a/ticks").is_err());
    }
}
