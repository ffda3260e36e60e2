//! `stockanomaly bench`: throughput figures for simulation and CSV ingestion,
//! and, as modes of their own, XGBoost, the streaming executor and, in
//! [`feeds`], feed decoding and the PostgreSQL tick load. A report, not a
//! pass/fail test: run it on a release build (`make bench`).

mod consume;
mod feeds;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use clap::Args;
use indicatif::ProgressBar;

use super::output::{count, rate};
use super::simulate::simulate_to_lake;
use crate::features::{backfill, BackfillOptions, Catalog};
use crate::ingest::{ingest_csv, IngestOptions};
use crate::lake::LakeRoot;
use crate::sources::simulate::{SimConfig, SimKind, Simulator};
use crate::tick::col;

/// `stockanomaly bench`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Without a mode flag: simulation, simulation into a lake, feature backfill and
CSV ingestion of --rows ticks in a scratch folder.

--feeds times, on one thread, decoding --ticks trades of each feed's WebSocket
JSON (Alpaca, Polygon, Finnhub; frames generated in memory beforehand, 100
messages each, quotes between the trades for Alpaca and Polygon) into Arrow
tick batches, and prints ticks/s and MB/s beside the target of 2M Alpaca
trades/s per core. With a database URL it then loads the decoded Alpaca ticks
into PostgreSQL's `ticks` table (migrated first) by COPY (write_ticks, all
--ticks) and by one INSERT per row in one transaction (the prototype's way,
the first --insert-rows), and prints rows/s of both and their ratio. Its rows
are stamped 2000-01-03 with source `stockanomaly-bench`; it refuses a
database holding other ticks of that day, and deletes its rows (and the day's
partition, if it created it) afterwards. Without a URL that part is skipped.

Figures from a debug build say nothing; build with --release.

Examples:
  stockanomaly bench
  stockanomaly bench --feeds
  DATABASE_URL=postgres://postgres@localhost/scratch stockanomaly bench --feeds --ticks 200000
  stockanomaly bench --stream lake --batch-rows 5000
  stockanomaly bench --consume kafka://localhost:9092/ticks")]
pub struct BenchArgs {
    /// Ticks to simulate and rows to ingest.
    #[arg(long, env = "STOCKANOMALY_BENCH_ROWS", default_value_t = 10_000_000)]
    pub rows: u64,

    /// Scratch folder (a temporary one by default; removed afterwards).
    #[arg(long, env = "STOCKANOMALY_BENCH_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Instead: time XGBoost training and scoring on this lake's training
    /// view (backfilled, with labels), for scripts/bench-xgboost.py to
    /// compare with Python's xgboost on the same matrix.
    #[arg(long, env = "STOCKANOMALY_BENCH_XGBOOST", value_name = "ROOT")]
    pub xgboost: Option<String>,

    /// Boosting rounds of the XGBoost benchmark (no early stopping).
    #[arg(long, env = "STOCKANOMALY_BENCH_ROUNDS", default_value_t = 50)]
    pub rounds: u32,

    /// Instead: time the streaming executor in process on this lake's ticks
    /// (every date, in arrival order, in micro-batches of --batch-rows),
    /// scoring with the rules, or with --model.
    #[arg(long, env = "STOCKANOMALY_BENCH_STREAM", value_name = "ROOT")]
    pub stream: Option<String>,

    /// Instead: read this tick topic (`kafka://BROKERS/TOPIC`) from the
    /// start with one consumer and nothing else, and print messages/s: the
    /// ceiling the streaming detector's end-to-end figure is read against.
    #[arg(long, env = "STOCKANOMALY_BENCH_CONSUME", value_name = "URL")]
    pub consume: Option<String>,

    /// Model for the streaming benchmark (artifact folder of `train`).
    #[arg(long, env = "STOCKANOMALY_BENCH_MODEL", value_name = "DIR")]
    pub model: Option<PathBuf>,

    /// Micro-batch size of the streaming benchmark.
    #[arg(long, env = "STOCKANOMALY_BENCH_BATCH_ROWS", default_value_t = 10_000)]
    pub batch_rows: usize,

    /// With --stream: also build each alert's row as `detect` hands it to
    /// PostgreSQL (the tick's features and the explanation as JSON), so the
    /// figure holds the per-alert work a detector does before its database.
    #[arg(long, env = "STOCKANOMALY_BENCH_ALERT_ROWS")]
    pub alert_rows: bool,

    /// Write the XGBoost benchmark's matrix (feature columns and `label`)
    /// to this Parquet file, with the parameters beside it as FILE.params.json.
    #[arg(long, env = "STOCKANOMALY_BENCH_EXPORT", value_name = "FILE")]
    pub export: Option<PathBuf>,

    /// Instead: time decoding each feed's JSON frames into Arrow batches and,
    /// with --database-url, loading the ticks into PostgreSQL by COPY and by
    /// row-by-row INSERT.
    #[arg(long, env = "STOCKANOMALY_BENCH_FEEDS")]
    pub feeds: bool,

    /// Trades decoded per feed by --feeds, also the rows loaded by COPY.
    #[arg(long, env = "STOCKANOMALY_BENCH_TICKS", default_value_t = 1_000_000)]
    pub ticks: u64,

    /// Rows loaded by row-by-row INSERT in --feeds (a sample: one round trip
    /// per row is slow).
    #[arg(long, env = "STOCKANOMALY_BENCH_INSERT_ROWS", default_value_t = 20_000)]
    pub insert_rows: u64,

    /// PostgreSQL for the load part of --feeds (skipped without one). Its
    /// value is never printed.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: Option<String>,
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; figures are meaningful only with --release");
    }
    if args.feeds {
        return feeds::run(feeds::FeedsOptions {
            ticks: args.ticks,
            insert_rows: args.insert_rows,
            database_url: args.database_url,
        })
        .await;
    }
    if let Some(lake) = &args.xgboost {
        return run_xgboost(lake, args.rounds, args.export.as_deref()).await;
    }
    if let Some(url) = &args.consume {
        return consume::run(url, args.batch_rows.max(1)).await;
    }
    if let Some(lake) = &args.stream {
        return run_stream(
            lake,
            args.model.as_deref(),
            args.batch_rows.max(1),
            args.alert_rows,
        )
        .await;
    }
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().context("cannot create a scratch folder")?;
            tmp.path().to_owned()
        }
    };
    let symbols = 100;
    let days = 5;
    let config = SimConfig {
        symbols,
        days,
        kind: SimKind::Trades,
        seed: 1,
        trades_per_day: args.rows as f64 / (symbols * days) as f64,
        ..SimConfig::default()
    };
    let sim = Simulator::new(config);
    println!(
        "benchmark: {} target rows, scratch {}",
        count(args.rows),
        dir.display()
    );

    // 1. Simulation alone: generation into Arrow batches.
    let started = Instant::now();
    let mut n = 0u64;
    for day in 0..sim.trading_days().len() {
        n += sim.simulate_day(day).ticks.num_rows() as u64;
    }
    let gen = started.elapsed();
    println!(
        "simulate (generate)       {:>12} ticks  {:>7.2}s  {:>10}",
        count(n),
        gen.as_secs_f64(),
        rate(n as f64, gen)
    );

    // 2. Simulation into a lake: generation, sort check, zstd Parquet, put.
    let lake = LakeRoot::parse(dir.join("sim-lake").to_str().unwrap_or("sim-lake"))?;
    let s = simulate_to_lake(&sim, &lake).await?;
    let took = std::time::Duration::from_secs_f64(s.seconds);
    println!(
        "simulate -> lake          {:>12} ticks  {:>7.2}s  {:>10}",
        count(s.ticks),
        s.seconds,
        rate(s.ticks as f64, took)
    );

    // 3. Feature backfill of the default pack over the simulated lake.
    let catalog = Catalog::embedded()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let b = backfill(
        &lake,
        &catalog,
        &BackfillOptions::default(),
        &ProgressBar::hidden(),
    )
    .await?;
    println!(
        "backfill ({} features)     {:>12} rows   {:>7.2}s  {:>10}",
        catalog.feature_names().len(),
        count(b.rows),
        b.elapsed.as_secs_f64(),
        rate(b.rows as f64, b.elapsed)
    );

    // 4. CSV ingestion of the same ticks (canonical layout, epoch-µs times).
    let csv_path = dir.join("ticks.csv");
    write_csv(&sim, &csv_path)?;
    let size = std::fs::metadata(&csv_path)?.len();
    let ingest_lake = LakeRoot::parse(dir.join("csv-lake").to_str().unwrap_or("csv-lake"))?;
    let summary = ingest_csv(
        &ingest_lake,
        &[csv_path],
        &IngestOptions::default(),
        &ProgressBar::hidden(),
    )
    .await?;
    println!(
        "ingest csv -> lake        {:>12} rows   {:>7.2}s  {:>10}  ({:.0} MB/s)",
        count(summary.rows()),
        summary.elapsed.as_secs_f64(),
        rate(summary.rows() as f64, summary.elapsed),
        size as f64 / 1e6 / summary.elapsed.as_secs_f64().max(1e-9),
    );
    Ok(())
}

/// Writes the simulator's ticks as a canonical CSV with integer µs times
/// (what a fast exporter would produce).
fn write_csv(sim: &Simulator, path: &std::path::Path) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(std::io::BufWriter::new(file));
    for day in 0..sim.trading_days().len() {
        let ticks = sim.simulate_day(day).ticks;
        w.write(&for_csv(&ticks)?)?;
    }
    Ok(())
}

fn for_csv(ticks: &RecordBatch) -> anyhow::Result<RecordBatch> {
    let keep = [
        col::TS,
        col::SYMBOL,
        col::PRICE,
        col::VOLUME,
        col::BID,
        col::ASK,
        col::BID_SIZE,
        col::ASK_SIZE,
    ];
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for name in keep {
        let i = ticks.schema().index_of(name)?;
        let mut c = ticks.column(i).clone();
        if name == col::TS {
            c = arrow::compute::cast(&c, &DataType::Int64)?;
        }
        fields.push(Field::new(name, c.data_type().clone(), true));
        columns.push(c);
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// The streaming executor's own throughput, no broker or database: the
/// lake's ticks in arrival order through [`Executor`](crate::stream::Executor)
/// in micro-batches, then a final flush; with `alert_rows`, each alert's
/// row built as `detect` builds it.
async fn run_stream(
    lake: &str,
    model: Option<&std::path::Path>,
    batch_rows: usize,
    alert_rows: bool,
) -> anyhow::Result<()> {
    use crate::sources::replay::BatchReplay;
    use crate::stream::{
        driver, load_symbols, ticks_in_arrival_order, DriverOptions, Executor, ExecutorConfig,
        ExecutorStage,
    };

    let root = LakeRoot::parse(lake)?;
    let catalog = Catalog::embedded()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let queries = std::path::Path::new(crate::features::DEFAULT_QUERIES);
    let detectors = super::train::load_detectors(&catalog, model, model.is_none(), queries).await?;
    let labels: Vec<String> = detectors.iter().map(|d| d.label()).collect();
    let ex = Executor::new(
        catalog,
        detectors,
        Some(load_symbols(&root).await?),
        ExecutorConfig::default(),
    )?
    .with_profiles(root.clone());
    let ctx = crate::lake::session_context(&root).await?;
    let first = super::sql::scalar_string(&ctx, "SELECT min(date) FROM ticks").await?;
    let last = super::sql::scalar_string(&ctx, "SELECT max(date) FROM ticks").await?;
    let (Some(first), Some(last)) = (first, last) else {
        anyhow::bail!("{lake}: the lake has no ticks");
    };
    let parse = |d: &str| {
        chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
            .with_context(|| format!("{lake}: bad date partition {d:?}"))
    };
    let ticks = ticks_in_arrival_order(&root, parse(&first)?, parse(&last)?).await?;
    let total = ticks.num_rows();
    println!(
        "streaming benchmark: {} ticks of {first}..{last}, micro-batches of {}, {}{}",
        count(total as u64),
        count(batch_rows as u64),
        labels.join(", "),
        if alert_rows { ", alert rows built" } else { "" }
    );
    let bar = super::output::count_bar(total as u64, "stream ticks");
    let started = Instant::now();
    // The streaming driver over an in-process replay: a replay has no idle
    // time, so groups close by later ticks and at the end (see the demo).
    let mut source = BatchReplay::new(ticks, batch_rows).with_progress(bar.clone());
    let mut stage = ExecutorStage::replay(ex).with_alert_rows(alert_rows);
    let run = driver::run(
        &mut source,
        &mut stage,
        &mut Vec::new(),
        &DriverOptions {
            exit_when_idle: None,
            stats_every: None,
            shutdown: crate::shutdown::Shutdown::never(),
            metrics: None,
            overlap_writes: false,
        },
    )
    .await?;
    bar.finish_and_clear();
    let mut step_ms: Vec<f64> = run.step_seconds.iter().map(|s| s * 1e3).collect();
    let (emitted, alerts) = (run.emitted, run.raised);
    let took = started.elapsed();
    step_ms.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        step_ms
            .get(((step_ms.len().max(1) - 1) as f64 * q) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "streaming executor: {} ticks in {:.2}s = {}; {} emitted, {} alerts; step p50 {:.1} ms, p99 {:.1} ms",
        count(total as u64),
        took.as_secs_f64(),
        rate(total as f64, took),
        count(emitted),
        count(alerts),
        pct(0.5),
        pct(0.99)
    );
    let ex = stage.executor();
    println!("streaming executor time: {}", ex.timings());
    // After the end of the stream every symbol still holds its lookback:
    // the steady state of a long run.
    let (symbols, bytes) = ex.memory();
    println!(
        "streaming executor memory: {} symbols held, {:.1} MB of state, {:.0} KB per symbol (lookback {})",
        count(symbols as u64),
        bytes as f64 / 1e6,
        bytes as f64 / 1e3 / symbols.max(1) as f64,
        ex.catalog().lookback()
    );
    Ok(())
}

/// XGBoost training and prediction on a lake's whole training view, timed;
/// prints `XGB_RUST_*=` lines for scripts/bench-xgboost.py's comparison.
async fn run_xgboost(
    lake: &str,
    rounds: u32,
    export: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use crate::model::train::{date_spans, default_params, read_rows};
    use crate::model::{Booster, DMatrix};

    let root = LakeRoot::parse(lake)?;
    let catalog = Catalog::embedded()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let ctx = crate::features::training_session(&root, &catalog).await?;
    let dates = date_spans(&ctx).await?;
    let (Some(first), Some(last)) = (dates.first(), dates.last()) else {
        anyhow::bail!("{lake}: no feature snapshot; run `stockanomaly backfill` first");
    };
    let started = Instant::now();
    let set = read_rows(&ctx, &catalog, first.date, last.date, None).await?;
    let read = started.elapsed();
    let names = catalog.feature_names();
    let mut params = default_params(1);
    params.remove("eval_metric");
    let pos = set.positives().max(1);
    params.insert(
        "scale_pos_weight".into(),
        format!("{}", (set.rows() as u64 - pos) as f64 / pos as f64),
    );
    println!(
        "xgboost benchmark: {} rows x {} features ({} positives) read in {:.2}s; {rounds} rounds",
        count(set.rows() as u64),
        names.len(),
        count(set.positives()),
        read.as_secs_f64()
    );
    if let Some(path) = export {
        export_matrix(&set, &names, path)?;
        let params_path = path.with_extension("params.json");
        std::fs::write(&params_path, serde_json::to_vec_pretty(&params)?)
            .with_context(|| format!("cannot write {}", params_path.display()))?;
    }

    let started = Instant::now();
    let dtrain = set.matrix(&names)?;
    let build = started.elapsed();
    let started = Instant::now();
    let mut booster = Booster::new(&[&dtrain])?;
    for (k, v) in &params {
        booster.set_param(k, v)?;
    }
    for round in 0..rounds {
        booster.update(round, &dtrain)?;
    }
    let train = started.elapsed();
    let refs: Vec<&arrow::array::Float64Array> = set.columns.iter().collect();
    let started = Instant::now();
    let m = DMatrix::from_columns(&refs, None, None)?;
    let scores = booster.predict(&m)?;
    let predict = started.elapsed();
    let mean = scores.iter().map(|&s| f64::from(s)).sum::<f64>() / scores.len().max(1) as f64;
    println!("XGB_RUST_DMATRIX_SECS={:.4}", build.as_secs_f64());
    println!("XGB_RUST_TRAIN_SECS={:.4}", train.as_secs_f64());
    println!(
        "XGB_RUST_PREDICT_ROWS_PER_SEC={:.1}",
        scores.len() as f64 / predict.as_secs_f64().max(1e-9)
    );
    println!("XGB_RUST_MEAN_SCORE={mean:.9}");
    Ok(())
}

/// The feature columns (catalog order) and `label` as a Parquet file.
fn export_matrix(
    set: &crate::model::train::Dataset,
    names: &[&str],
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let mut fields: Vec<Field> = names
        .iter()
        .map(|n| Field::new(*n, DataType::Float64, true))
        .collect();
    fields.push(Field::new("label", DataType::Float32, false));
    let mut columns: Vec<ArrayRef> = set
        .columns
        .iter()
        .map(|c| Arc::new(c.clone()) as ArrayRef)
        .collect();
    columns.push(Arc::new(arrow::array::Float32Array::from(
        set.label.clone(),
    )));
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None)?;
    w.write(&batch)?;
    w.close()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    fn bench(args: &[&str]) -> super::BenchArgs {
        let cli = Cli::try_parse_from(["stockanomaly", "bench"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Bench(b) => b,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn feeds_flags_parse_with_their_defaults() {
        let b = bench(&["--feeds"]);
        assert!(b.feeds);
        assert_eq!((b.ticks, b.insert_rows), (1_000_000, 20_000));
        let b = bench(&[
            "--feeds",
            "--ticks",
            "5000",
            "--insert-rows",
            "100",
            "--database-url",
            "postgres://u@h/db",
        ]);
        assert_eq!((b.ticks, b.insert_rows), (5_000, 100));
        assert_eq!(b.database_url.as_deref(), Some("postgres://u@h/db"));
        assert!(!bench(&[]).feeds);
    }
}
