//! `stockanomaly simulate`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use arrow::array::{AsArray, RecordBatch};
use chrono::NaiveDate;
use clap::Args;

use super::open_lake;
use super::output::{count, count_bar, rate};
use crate::labels;
use crate::lake::{AppendStats, Appender, AppenderOptions, LakeRoot, TableSpec};
use crate::sources::simulate::{SimConfig, SimKind, Simulator};

/// `stockanomaly simulate`.
#[derive(Debug, Clone, Args)]
#[command(after_long_help = "\
The same flags and seed always give the same ticks, labels and lake files.

Examples:
  stockanomaly simulate --symbols 50 --days 10
  stockanomaly simulate --kind bars --days 60 --lake s3://bucket/sim
  stockanomaly simulate --symbols 3 --days 1 --csv sample.csv")]
pub struct SimulateArgs {
    /// Number of symbols.
    #[arg(long, env = "STOCKANOMALY_SIM_SYMBOLS", default_value_t = 20)]
    pub symbols: usize,

    /// Trading days (weekdays) to generate.
    #[arg(long, env = "STOCKANOMALY_SIM_DAYS", default_value_t = 5)]
    pub days: usize,

    /// Trades with quotes, or one-minute bars.
    #[arg(long, env = "STOCKANOMALY_SIM_KIND", value_enum, default_value_t = SimKind::Trades)]
    pub kind: SimKind,

    /// Random seed: same seed, same market.
    #[arg(long, env = "STOCKANOMALY_SIM_SEED", default_value_t = 42)]
    pub seed: u64,

    /// First trading day (YYYY-MM-DD).
    #[arg(long, env = "STOCKANOMALY_SIM_START", default_value = "2024-01-02")]
    pub start: NaiveDate,

    /// Mean trades per symbol per day (trades kind).
    #[arg(
        long,
        env = "STOCKANOMALY_SIM_TRADES_PER_DAY",
        default_value_t = 20_000.0
    )]
    pub trades_per_day: f64,

    /// Mean injected manipulation events per symbol per day.
    #[arg(long, env = "STOCKANOMALY_SIM_EVENTS", default_value_t = 0.5)]
    pub events_per_symbol_day: f64,

    /// Write ticks to this CSV file (canonical layout) instead of the lake;
    /// labels go to FILE with `.labels.csv` appended.
    #[arg(long, env = "STOCKANOMALY_SIM_CSV", value_name = "FILE")]
    pub csv: Option<PathBuf>,
}

impl SimulateArgs {
    /// The simulator configuration these flags describe.
    pub fn config(&self) -> SimConfig {
        SimConfig {
            symbols: self.symbols,
            days: self.days,
            kind: self.kind,
            seed: self.seed,
            start: self.start,
            trades_per_day: self.trades_per_day,
            events_per_symbol_day: self.events_per_symbol_day,
        }
    }
}

/// What a simulation wrote.
#[derive(Debug, Default)]
pub(crate) struct SimSummary {
    pub ticks: u64,
    pub labels_by_kind: BTreeMap<String, u64>,
    pub files: AppendStats,
    pub seconds: f64,
}

pub(crate) async fn run(lake: &str, args: SimulateArgs) -> anyhow::Result<()> {
    let sim = Simulator::new(args.config());
    let (summary, dest) = match &args.csv {
        Some(path) => (simulate_to_csv(&sim, path)?, path.display().to_string()),
        None => {
            let root = open_lake(lake)?;
            (simulate_to_lake(&sim, &root).await?, root.to_string())
        }
    };
    print_summary(&args, &summary, &dest);
    Ok(())
}

pub(crate) fn print_summary(args: &SimulateArgs, s: &SimSummary, dest: &str) {
    let labels: u64 = s.labels_by_kind.values().sum();
    println!(
        "simulated {} symbols x {} days ({:?}, seed {}): {} ticks, {} labelled events -> {dest}",
        args.symbols,
        args.days,
        args.kind,
        args.seed,
        count(s.ticks),
        count(labels)
    );
    for (kind, n) in &s.labels_by_kind {
        println!("  {kind:<16} {}", count(*n));
    }
    println!(
        "  {} files written, {} already present; {:.2}s, {}",
        s.files.files_written,
        s.files.files_existing,
        s.seconds,
        rate(
            s.ticks as f64,
            std::time::Duration::from_secs_f64(s.seconds)
        ),
    );
}

fn count_kinds(labels: &RecordBatch, into: &mut BTreeMap<String, u64>) {
    if let Ok(i) = labels.schema().index_of(labels::col::KIND) {
        for k in labels.column(i).as_string::<i32>().iter().flatten() {
            *into.entry(k.to_owned()).or_default() += 1;
        }
    }
}

/// Simulates every day into the lake's `ticks` and `labels`, and the
/// universe into `symbols`.
pub(crate) async fn simulate_to_lake(
    sim: &Simulator,
    root: &LakeRoot,
) -> anyhow::Result<SimSummary> {
    let started = Instant::now();
    let days = sim.trading_days().len();
    let bar = count_bar(days as u64, "simulate days");
    let mut ticks = Appender::new(root.clone(), TableSpec::ticks(), AppenderOptions::default());
    let mut labels = Appender::new(
        root.clone(),
        TableSpec::labels(),
        AppenderOptions::default(),
    );
    let mut summary = SimSummary::default();
    for day in 0..days {
        let out = sim.simulate_day(day);
        summary.ticks += out.ticks.num_rows() as u64;
        count_kinds(&out.labels, &mut summary.labels_by_kind);
        ticks.append(out.ticks).await?;
        labels.append(out.labels).await?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let mut symbols = Appender::new(
        root.clone(),
        TableSpec::symbols(),
        AppenderOptions::default(),
    );
    symbols.append(sim.symbols_table()).await?;
    let t = ticks.finish().await?;
    let l = labels.finish().await?;
    let s = symbols.finish().await?;
    summary.files = AppendStats {
        rows: t.rows + l.rows + s.rows,
        files_written: t.files_written + l.files_written + s.files_written,
        files_existing: t.files_existing + l.files_existing + s.files_existing,
        bytes_written: t.bytes_written + l.bytes_written + s.bytes_written,
    };
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Simulates every day into a canonical CSV (timestamps as RFC 3339).
pub(crate) fn simulate_to_csv(sim: &Simulator, path: &Path) -> anyhow::Result<SimSummary> {
    let started = Instant::now();
    let mut labels_path = path.as_os_str().to_owned();
    labels_path.push(".labels.csv");
    let open = |p: &Path| -> anyhow::Result<std::io::BufWriter<std::fs::File>> {
        Ok(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        ))
    };
    let mut ticks_w = arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(open(path)?);
    let mut labels_w = arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(open(Path::new(&labels_path))?);
    let mut summary = SimSummary::default();
    let days = sim.trading_days().len();
    let bar = count_bar(days as u64, "simulate days");
    for day in 0..days {
        let out = sim.simulate_day(day);
        summary.ticks += out.ticks.num_rows() as u64;
        count_kinds(&out.labels, &mut summary.labels_by_kind);
        ticks_w.write(&out.ticks)?;
        labels_w.write(&out.labels)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}
