//! `stockanomaly produce`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use arrow::array::RecordBatch;
use chrono::NaiveDate;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::output::{count, rate};
use super::shared::deprecated_flag;
use super::{existing_file, open_lake, UsageError};
use crate::sources::csv::{CsvFormat, CsvSource};
use crate::sources::kafka::{
    ensure_topic_with, sort_event_time, KafkaConfig, KafkaOption, KafkaUrl, TickPublisher,
};
use crate::sources::replay::{Pacer, ReplayOptions, ReplaySource};
use crate::sources::simulate::{SimConfig, SimKind, Simulator};
use crate::sources::Source;
use crate::tick::TickView;
use crate::tick::{Reject, Validator};

/// `stockanomaly produce`.
#[derive(Debug, Clone, Args)]
#[command(after_long_help = "\
Publishes ticks to the Kafka topic TARGET (kafka://BROKERS/TOPIC, the form
`detect --source` and `ingest --to` take) as JSON objects keyed by symbol
({\"symbol\":..,\"timestamp\":\"2024-01-02T14:30:00.123456Z\",\"price\":..,\"volume\":..}),
in event-time order, so each symbol's ticks stay in order in one partition.
The ticks come from the lake (default), a CSV file or the simulator. The
topic is created with --partitions partitions if missing.

--topic and --brokers (and STOCKANOMALY_KAFKA_TOPIC, _BROKERS) still work
in this release, with a warning: name the topic as a URL instead.

Examples:
  stockanomaly produce kafka://localhost:9092/ticks
  stockanomaly produce kafka://localhost:9092/ticks --lake parquet --from 2024-01-02 --to 2024-01-05 --speed 60
  stockanomaly produce kafka://localhost:9092/ticks --csv trades.csv --rate 1000
  stockanomaly produce kafka://localhost:9092/ticks --simulate --symbols 5 --days 1")]
pub struct ProduceArgs {
    /// The topic to publish to: kafka://BROKER[,BROKER...]/TOPIC.
    #[arg(env = "STOCKANOMALY_PRODUCE_TO", value_name = "TARGET")]
    pub target: Option<String>,

    /// Deprecated: the topic (name it in TARGET).
    #[arg(long, env = "STOCKANOMALY_KAFKA_TOPIC", conflicts_with = "target")]
    pub topic: Option<String>,

    /// Deprecated: bootstrap servers, host:port[,...] (name them in TARGET;
    /// default localhost:9092).
    #[arg(long, env = "STOCKANOMALY_KAFKA_BROKERS", conflicts_with = "target")]
    pub brokers: Option<String>,

    /// Partitions of the topic when it has to be created.
    #[arg(
        long,
        env = "STOCKANOMALY_KAFKA_PARTITIONS",
        default_value_t = 6,
        value_name = "N"
    )]
    pub partitions: u16,

    /// librdkafka settings for every Kafka client of the command (TLS,
    /// SASL, tuning), as for `detect`: KEY=VALUE, repeatable; in the
    /// environment, pairs separated by `;`. Values are never printed.
    #[arg(
        long = "kafka-option",
        env = "STOCKANOMALY_KAFKA_OPTIONS",
        hide_env_values = true,
        value_name = "KEY=VALUE",
        value_delimiter = ';'
    )]
    pub kafka_options: Vec<KafkaOption>,

    /// The dates.
    #[command(flatten)]
    pub dates: super::shared::DateRangeArgs,

    /// Publish this CSV file (any layout `ingest csv` reads) instead of the
    /// lake. The file is sorted in memory by event time.
    #[arg(
        long,
        env = "STOCKANOMALY_PRODUCE_CSV",
        value_name = "FILE",
        conflicts_with = "simulate"
    )]
    pub csv: Option<PathBuf>,

    /// Publish a simulated market instead of the lake (nothing is written).
    #[arg(long, env = "STOCKANOMALY_PRODUCE_SIMULATE")]
    pub simulate: bool,

    /// Simulated symbols.
    #[arg(long, env = "STOCKANOMALY_SIM_SYMBOLS", default_value_t = 20)]
    pub symbols: usize,

    /// Simulated trading days.
    #[arg(long, env = "STOCKANOMALY_SIM_DAYS", default_value_t = 1)]
    pub days: usize,

    /// Simulation seed.
    #[arg(long, env = "STOCKANOMALY_SIM_SEED", default_value_t = 42)]
    pub seed: u64,

    /// First simulated trading day (YYYY-MM-DD).
    #[arg(long, env = "STOCKANOMALY_SIM_START", default_value = "2024-01-02")]
    pub start: NaiveDate,

    /// Mean simulated trades per symbol per day.
    #[arg(
        long,
        env = "STOCKANOMALY_SIM_TRADES_PER_DAY",
        default_value_t = 20_000.0
    )]
    pub trades_per_day: f64,

    /// Mean injected manipulation events per symbol per day.
    #[arg(long, env = "STOCKANOMALY_SIM_EVENTS", default_value_t = 0.5)]
    pub events_per_symbol_day: f64,

    /// The simulated market's realism (as for `simulate`).
    #[command(flatten)]
    pub realism: super::simulate::RealismArgs,

    /// Every this many milliseconds (when time moved on), send each
    /// partition a watermark message with the newest tick time published, so
    /// that detectors close market buckets without waiting for partitions
    /// that carry no ticks (an exchange closed, a replay faster than real
    /// time) to go silent for their idle timeout. 0: none.
    #[arg(
        long,
        env = "STOCKANOMALY_WATERMARK_EVERY_MS",
        default_value_t = 20,
        value_name = "MS"
    )]
    pub watermark_every_ms: u64,

    /// Publish at most this many messages per second (default: as fast as
    /// possible).
    #[arg(
        long,
        env = "STOCKANOMALY_PRODUCE_RATE",
        value_name = "N",
        conflicts_with = "speed"
    )]
    pub rate: Option<f64>,

    /// Publish at this multiple of real time, following the ticks' event
    /// times (60: an hour of trading in a minute).
    #[arg(long, env = "STOCKANOMALY_PRODUCE_SPEED", value_name = "X")]
    pub speed: Option<f64>,

    /// With --speed, the longest pause (seconds) between two ticks: nights
    /// and weekends are shortened to this.
    #[arg(
        long,
        env = "STOCKANOMALY_PRODUCE_MAX_PAUSE",
        default_value_t = 1.0,
        value_name = "SECONDS"
    )]
    pub max_pause: f64,
}

/// Batches read from the lake per query step.
const LAKE_BATCH_ROWS: usize = 64 * 1024;

/// Progress bar updates every this many messages (an update per message
/// would cost more than the message).
const BAR_STEP: u64 = 4096;

/// The topic to publish to: TARGET, or the deprecated --topic and
/// --brokers.
fn target(args: &ProduceArgs) -> Result<KafkaUrl, UsageError> {
    if let Some(url) = &args.target {
        return KafkaUrl::parse(url).map_err(UsageError);
    }
    let Some(topic) = &args.topic else {
        return Err(UsageError(format!(
            "name the topic to publish to: stockanomaly produce {} (e.g. \
             kafka://localhost:9092/ticks)",
            KafkaUrl::FORM
        )));
    };
    deprecated_flag("--topic/--brokers", "a kafka://BROKERS/TOPIC argument");
    Ok(KafkaUrl {
        brokers: args
            .brokers
            .clone()
            .unwrap_or_else(|| "localhost:9092".to_owned()),
        topic: topic.clone(),
    })
}

pub(crate) async fn run(lake: &str, args: ProduceArgs) -> anyhow::Result<()> {
    check(&args)?;
    let url = target(&args)?;
    let kafka = KafkaConfig::from_options(&url.brokers, &args.kafka_options);
    let started = Instant::now();
    let topic = ensure_topic_with(&kafka, &url.topic, i32::from(args.partitions)).await?;
    if !topic.created && topic.partitions != usize::from(args.partitions) {
        tracing::warn!(
            "topic {} exists with {} partitions (--partitions {} not applied)",
            url.topic,
            topic.partitions,
            args.partitions
        );
    }
    let mut out = Output {
        // Every input below is published in event-time order: the
        // watermarks' promise holds.
        publisher: TickPublisher::new(&kafka, &url.topic)?
            .with_watermarks(Duration::from_millis(args.watermark_every_ms)),
        pace: Pace::new(&args),
        bar: message_bar(),
        since_bar: 0,
        rejects: 0,
    };
    let what = if let Some(path) = &args.csv {
        existing_file(path)?;
        produce_csv(path, &mut out).await?;
        path.display().to_string()
    } else if args.simulate {
        produce_simulated(&args, &mut out).await?;
        format!("simulator ({} symbols x {} days)", args.symbols, args.days)
    } else {
        let root = open_lake(lake)?;
        produce_lake(&root, &args, &mut out).await?;
        root.to_string()
    };
    let Output {
        mut publisher,
        bar,
        rejects,
        ..
    } = out;
    publisher.send_watermarks().await?;
    bar.set_message("waiting for acknowledgements");
    let stats = tokio::task::spawn_blocking(move || publisher.flush(Duration::from_secs(120)))
        .await
        .context("flushing the producer")??;
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    println!(
        "produced {} messages ({:.1} MB of JSON) from {what} to topic {} ({} partitions{}) in {:.2}s, {}",
        count(stats.messages),
        stats.bytes as f64 / 1e6,
        url.topic,
        topic.partitions,
        if topic.created { ", created" } else { "" },
        elapsed.as_secs_f64(),
        rate(stats.messages as f64, elapsed),
    );
    if stats.watermarks > 0 {
        println!(
            "  and {} watermark messages (--watermark-every-ms {})",
            count(stats.watermarks),
            args.watermark_every_ms
        );
    }
    if rejects > 0 {
        println!(
            "  {} input records rejected (not published)",
            count(rejects)
        );
    }
    Ok(())
}

fn check(args: &ProduceArgs) -> anyhow::Result<()> {
    args.dates.check()?;
    if let Some(r) = args.rate {
        if !(r.is_finite() && r > 0.0) {
            return Err(UsageError(format!("--rate {r}: expected a positive number")).into());
        }
    }
    if let Some(s) = args.speed {
        if !(s.is_finite() && s > 0.0) {
            return Err(UsageError(format!("--speed {s}: expected a positive number")).into());
        }
    }
    if !(args.max_pause.is_finite() && args.max_pause >= 0.0) {
        return Err(UsageError(format!("--max-pause {}: expected seconds", args.max_pause)).into());
    }
    if args.partitions == 0 {
        return Err(UsageError("--partitions must be at least 1".into()).into());
    }
    Ok(())
}

/// How messages are spaced in time.
enum Pace {
    Unlimited,
    Rate { per_s: f64, start: Option<Instant> },
    EventTime(Pacer),
}

impl Pace {
    fn new(args: &ProduceArgs) -> Self {
        let max_pause = Duration::from_secs_f64(args.max_pause);
        match (args.rate, args.speed.and_then(|s| Pacer::new(s, max_pause))) {
            (Some(per_s), _) => Self::Rate { per_s, start: None },
            (None, Some(p)) => Self::EventTime(p),
            (None, None) => Self::Unlimited,
        }
    }

    async fn wait(&mut self, sent: u64, ts_us: i64) {
        match self {
            Self::Unlimited => {}
            Self::Rate { per_s, start } => {
                let t0 = *start.get_or_insert_with(Instant::now);
                let due = t0 + Duration::from_secs_f64(sent as f64 / *per_s);
                let now = Instant::now();
                if due > now + Duration::from_millis(1) {
                    tokio::time::sleep(due - now).await;
                }
            }
            Self::EventTime(p) => p.wait(ts_us).await,
        }
    }
}

/// Where ticks go, with the state shared by every input.
struct Output {
    publisher: TickPublisher,
    pace: Pace,
    bar: ProgressBar,
    since_bar: u64,
    rejects: u64,
}

impl Output {
    /// Publishes a batch already in event-time order.
    async fn publish(&mut self, batch: &RecordBatch) -> anyhow::Result<()> {
        let cols = TickView::new(batch)?;
        for row in 0..cols.len() {
            let sent = self.publisher.stats().messages;
            self.pace.wait(sent, cols.ts_us(row)).await;
            self.publisher.publish(&cols, row).await?;
            self.since_bar += 1;
            if self.since_bar == BAR_STEP {
                self.bar.inc(BAR_STEP);
                self.since_bar = 0;
            }
        }
        Ok(())
    }

    fn rejected(&mut self, rejects: &[Reject]) {
        for r in rejects.iter().take(5) {
            tracing::warn!("{r:?}");
        }
        self.rejects += rejects.len() as u64;
    }
}

fn message_bar() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{msg} {human_pos} messages, {per_sec}") {
        bar.set_style(style);
    }
    bar.set_message("produce");
    bar
}

async fn produce_lake(
    root: &crate::lake::LakeRoot,
    args: &ProduceArgs,
    out: &mut Output,
) -> anyhow::Result<()> {
    let mut source = ReplaySource::open(
        root,
        ReplayOptions {
            from: args.dates.from,
            to: args.dates.to,
            batch_rows: LAKE_BATCH_ROWS,
            ..ReplayOptions::default()
        },
    )
    .await?;
    while let Some(batch) = source.next_batch().await? {
        out.publish(&batch.ticks).await?;
    }
    Ok(())
}

async fn produce_simulated(args: &ProduceArgs, out: &mut Output) -> anyhow::Result<()> {
    let sim = Simulator::new(args.realism.apply(SimConfig {
        symbols: args.symbols,
        days: args.days,
        kind: SimKind::Trades,
        seed: args.seed,
        start: args.start,
        trades_per_day: args.trades_per_day,
        events_per_symbol_day: args.events_per_symbol_day,
        ..SimConfig::default()
    }));
    for day in 0..sim.trading_days().len() {
        let sim_day = sim.simulate_day(day);
        out.rejected(&sim_day.rejects);
        // A day comes sorted by symbol; every session of a day lies within
        // its UTC date, so sorting days one by one orders the whole run.
        out.publish(&sort_event_time(&sim_day.ticks)?).await?;
    }
    Ok(())
}

async fn produce_csv(path: &std::path::Path, out: &mut Output) -> anyhow::Result<()> {
    let mut source = CsvSource::open(path, CsvFormat::Auto, Validator::new())?;
    let mut batches = Vec::new();
    while let Some(b) = source.read_batch()? {
        out.rejected(&b.rejects);
        batches.push(b.ticks);
    }
    // seq was assigned in file order; sorting by (ts, seq) keeps it.
    let all = arrow::compute::concat_batches(&crate::tick::tick_schema(), &batches)?;
    out.publish(&sort_event_time(&all)?).await
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    /// `produce` reads `--kafka-option` as `detect` does: the same parser
    /// (values hidden, options the command sets refused).
    #[test]
    fn kafka_options_are_detects() {
        let cli = crate::cli::Cli::try_parse_from([
            "stockanomaly",
            "produce",
            "--topic",
            "t",
            "--kafka-option",
            "security.protocol=SASL_SSL",
            "--kafka-option",
            "sasl.password=hunter2",
        ])
        .unwrap();
        let crate::cli::Command::Produce(args) = cli.command else {
            panic!("not produce");
        };
        let keys: Vec<&str> = args.kafka_options.iter().map(|o| o.key()).collect();
        assert_eq!(keys, ["security.protocol", "sasl.password"]);
        assert!(!format!("{args:?}").contains("hunter2"));
        assert!(crate::cli::Cli::try_parse_from([
            "stockanomaly",
            "produce",
            "--topic",
            "t",
            "--kafka-option",
            "no-equals-sign",
        ])
        .is_err());
    }
}
