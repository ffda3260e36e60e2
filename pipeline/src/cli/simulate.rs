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
use crate::sources::simulate::{
    Realism, SimConfig, SimKind, Simulator, DEFAULT_EVENT_SIGMAS, DEFAULT_MARKET_VOL,
};

/// `stockanomaly simulate`.
#[derive(Debug, Clone, Args)]
#[command(after_long_help = "\
The same flags and seed always give the same ticks, labels, decoys and lake files.

The realistic market (the default) hides manipulation among normal events that
look like it: company news, market-wide shocks, index-rebalance closes (the
`decoys` table, never `labels`), a daily closing auction and volatility regimes;
manipulation is sized from barely visible to obvious in units of volatility.

Examples:
  stockanomaly simulate --symbols 50 --days 10
  stockanomaly simulate --kind bars --days 60 --lake s3://bucket/sim
  stockanomaly simulate --decoys-per-symbol-day 1.5 --event-sigmas 3:10
  stockanomaly simulate --realism basic --symbols 3 --days 1 --csv sample.csv
  stockanomaly sql \"SELECT kind, count(*) FROM decoys GROUP BY kind\"")]
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

    /// The realistic market's knobs.
    #[command(flatten)]
    pub realism: RealismArgs,

    /// Write ticks to this CSV file (canonical layout) instead of the lake;
    /// labels go to FILE with `.labels.csv` appended, decoys with
    /// `.decoys.csv`.
    #[arg(long, env = "STOCKANOMALY_SIM_CSV", value_name = "FILE")]
    pub csv: Option<PathBuf>,
}

impl SimulateArgs {
    /// The simulator configuration these flags describe.
    pub fn config(&self) -> SimConfig {
        self.realism.apply(SimConfig {
            symbols: self.symbols,
            days: self.days,
            kind: self.kind,
            seed: self.seed,
            start: self.start,
            trades_per_day: self.trades_per_day,
            events_per_symbol_day: self.events_per_symbol_day,
            ..SimConfig::default()
        })
    }
}

/// How realistic a market to simulate: shared by `simulate`, `produce
/// --simulate` and `demo`.
#[derive(Debug, Clone, Args)]
pub struct RealismArgs {
    /// `market`: a market factor with betas in [0.5, 1.5], persistent
    /// volatility regimes, a daily closing auction, unlabelled decoys and
    /// manipulation sized in units of volatility; `basic`: fixed-size
    /// manipulation in a plainer market, no decoys (earlier versions'
    /// output, byte for byte).
    #[arg(long, env = "STOCKANOMALY_SIM_REALISM", value_enum, default_value_t = Realism::Market)]
    pub realism: Realism,

    /// Mean unlabelled decoys per symbol per day (market realism), a
    /// quarter each of company news, market-wide shocks (every symbol of the
    /// venue moves by its beta), index-rebalance closes and market swings (a
    /// market-wide run-up that reverts: a pump and dump in every symbol);
    /// written to the `decoys` table, never to `labels`.
    #[arg(
        long,
        env = "STOCKANOMALY_SIM_DECOYS",
        default_value_t = 0.5,
        value_parser = non_negative
    )]
    pub decoys_per_symbol_day: f64,

    /// Annualised volatility of the market factor that every symbol follows
    /// by its beta (at most 2).
    #[arg(
        long,
        env = "STOCKANOMALY_SIM_MARKET_VOL",
        default_value_t = DEFAULT_MARKET_VOL,
        value_parser = non_negative
    )]
    pub market_vol: f64,

    /// Manipulation sizes in units of the symbol's current volatility over
    /// the event's horizon, LOW:HIGH, drawn log-uniformly (market realism;
    /// price-moving kinds): 1 is barely visible, 10 obvious.
    #[arg(
        long,
        env = "STOCKANOMALY_SIM_EVENT_SIGMAS",
        value_name = "LOW:HIGH",
        default_value = "1:10",
        value_parser = sigma_range
    )]
    pub event_sigmas: (f64, f64),
}

impl Default for RealismArgs {
    fn default() -> Self {
        Self {
            realism: Realism::Market,
            decoys_per_symbol_day: 0.5,
            market_vol: DEFAULT_MARKET_VOL,
            event_sigmas: DEFAULT_EVENT_SIGMAS,
        }
    }
}

impl RealismArgs {
    /// `config` with these knobs set.
    pub fn apply(&self, config: SimConfig) -> SimConfig {
        SimConfig {
            realism: self.realism,
            decoys_per_symbol_day: self.decoys_per_symbol_day,
            market_vol: self.market_vol,
            event_sigmas: self.event_sigmas,
            ..config
        }
    }
}

/// A finite number, zero or more.
fn non_negative(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("expected a number >= 0, found {s:?}")),
    }
}

/// `LOW:HIGH`, both positive and finite, LOW <= HIGH.
fn sigma_range(s: &str) -> Result<(f64, f64), String> {
    let bad = || format!("expected LOW:HIGH with 0 < LOW <= HIGH, e.g. 1:10, found {s:?}");
    let (lo, hi) = s.split_once(':').ok_or_else(bad)?;
    let num = |x: &str| {
        x.trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v > 0.0)
    };
    match (num(lo), num(hi)) {
        (Some(lo), Some(hi)) if lo <= hi => Ok((lo, hi)),
        _ => Err(bad()),
    }
}

/// What a simulation wrote.
#[derive(Debug, Default)]
pub(crate) struct SimSummary {
    pub ticks: u64,
    pub labels_by_kind: BTreeMap<String, u64>,
    pub decoys_by_kind: BTreeMap<String, u64>,
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
    if !s.decoys_by_kind.is_empty() {
        let decoys: u64 = s.decoys_by_kind.values().sum();
        println!(
            "  and {} unlabelled decoys (table `decoys`, not for training):",
            count(decoys)
        );
        for (kind, n) in &s.decoys_by_kind {
            println!("  {kind:<16} {}", count(*n));
        }
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

/// Simulates every day into the lake's `ticks`, `labels` and `decoys`, and
/// the universe into `symbols`.
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
    let mut decoys = Appender::new(
        root.clone(),
        TableSpec::decoys(),
        AppenderOptions::default(),
    );
    let mut summary = SimSummary::default();
    for day in 0..days {
        let out = sim.simulate_day(day);
        summary.ticks += out.ticks.num_rows() as u64;
        count_kinds(&out.labels, &mut summary.labels_by_kind);
        count_kinds(&out.decoys, &mut summary.decoys_by_kind);
        ticks.append(out.ticks).await?;
        labels.append(out.labels).await?;
        decoys.append(out.decoys).await?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let mut symbols = Appender::new(
        root.clone(),
        TableSpec::symbols(),
        AppenderOptions::default(),
    );
    symbols.append(sim.symbols_table()).await?;
    let all = [
        ticks.finish().await?,
        labels.finish().await?,
        decoys.finish().await?,
        symbols.finish().await?,
    ];
    for a in all {
        summary.files.rows += a.rows;
        summary.files.files_written += a.files_written;
        summary.files.files_existing += a.files_existing;
        summary.files.bytes_written += a.bytes_written;
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Simulates every day into a canonical CSV (timestamps as RFC 3339).
pub(crate) fn simulate_to_csv(sim: &Simulator, path: &Path) -> anyhow::Result<SimSummary> {
    let started = Instant::now();
    let beside = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
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
        .build(open(&beside(".labels.csv"))?);
    let mut decoys_w = arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(open(&beside(".decoys.csv"))?);
    let mut summary = SimSummary::default();
    let days = sim.trading_days().len();
    let bar = count_bar(days as u64, "simulate days");
    for day in 0..days {
        let out = sim.simulate_day(day);
        summary.ticks += out.ticks.num_rows() as u64;
        count_kinds(&out.labels, &mut summary.labels_by_kind);
        count_kinds(&out.decoys, &mut summary.decoys_by_kind);
        ticks_w.write(&out.ticks)?;
        labels_w.write(&out.labels)?;
        decoys_w.write(&out.decoys)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        realism: RealismArgs,
    }

    #[test]
    fn realism_flags_parse_and_refuse_nonsense() {
        let d = Cli::try_parse_from(["x"]).unwrap().realism;
        let want = RealismArgs::default();
        assert_eq!(d.realism, want.realism);
        assert_eq!(d.event_sigmas, want.event_sigmas);
        assert_eq!(d.decoys_per_symbol_day, want.decoys_per_symbol_day);
        let c = d.apply(SimConfig::default());
        assert_eq!(c.realism, SimConfig::default().realism);
        assert_eq!(c.market_vol, SimConfig::default().market_vol);

        let r = Cli::try_parse_from([
            "x",
            "--realism",
            "basic",
            "--decoys-per-symbol-day",
            "1.5",
            "--market-vol",
            "0.3",
            "--event-sigmas",
            "2:8",
        ])
        .unwrap()
        .realism;
        assert_eq!(r.realism, Realism::Basic);
        assert_eq!(
            (r.decoys_per_symbol_day, r.market_vol, r.event_sigmas),
            (1.5, 0.3, (2.0, 8.0))
        );
        for bad in [
            ["--event-sigmas", "8:2"],
            ["--event-sigmas", "0:2"],
            ["--event-sigmas", "3"],
            ["--decoys-per-symbol-day", "-1"],
            ["--market-vol", "NaN"],
            ["--realism", "fancy"],
        ] {
            let mut args = vec!["x"];
            args.extend(bad);
            assert!(Cli::try_parse_from(&args).is_err(), "{bad:?} accepted");
        }
    }
}
