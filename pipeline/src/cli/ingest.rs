//! `stockanomaly ingest csv FILE...`

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::output::{bytes_bar, count, rate, ts};
use super::{existing_file, open_lake};
use crate::ingest::{ingest_csv, IngestOptions, IngestSummary};
use crate::sources::csv::CsvFormat;
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
