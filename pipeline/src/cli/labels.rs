//! `stockanomaly labels`: labels from the analysts' verdicts.

use clap::{Args, Subcommand};

use super::open_lake;
use crate::review::{export_labels, final_verdicts, Pool};

/// `stockanomaly labels`.
#[derive(Debug, Args)]
pub struct LabelsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: LabelsCommand,
}

/// The `labels` subcommands.
#[derive(Debug, Subcommand)]
pub enum LabelsCommand {
    /// Write the reviewed alerts' and cases' verdicts into the lake's `labels`.
    Export(LabelsExportArgs),
}

/// `stockanomaly labels export`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Reads every alert and case whose latest verdict (recorded in `stockanomaly
serve`) is confirmed or dismissed and writes it into the lake's `labels`
table with source `review`: a confirmed alert as a label of its kind over its
tick, a confirmed case over its span from first to last alert (each
± --pad-seconds); a dismissed one as `reviewed_negative`, which training
never counts as positive. Escalated ones wait for a final verdict. Each
export replaces the previous one (files labels/date=D/review.parquet), so a
changed verdict changes the label; other labels are untouched. Run `train`
afterwards to learn from them.

Examples:
  stockanomaly labels export --database-url postgres://review@db/stockanomaly --lake parquet
  stockanomaly labels export --pad-seconds 60")]
pub struct LabelsExportArgs {
    /// The database.
    #[command(flatten)]
    pub db: super::shared::DbUrlArgs,

    /// Seconds added before and after each label interval (an alert's tick,
    /// a case's span).
    #[arg(long, env = "STOCKANOMALY_LABEL_PAD_SECONDS", default_value_t = 0)]
    pub pad_seconds: u32,
}

pub(crate) async fn run(lake: &str, args: LabelsArgs) -> anyhow::Result<()> {
    match args.command {
        LabelsCommand::Export(a) => {
            let root = open_lake(lake)?;
            let pool = Pool::connect(&a.db.database_url).await?;
            let client = pool.get().await?;
            let verdicts = final_verdicts(&client).await?;
            let s = export_labels(&root, &verdicts, i64::from(a.pad_seconds) * 1_000_000).await?;
            println!(
                "exported {} confirmed and {} dismissed alerts, {} confirmed and {} dismissed cases \
                 as labels ({} dates written, {} removed)",
                s.confirmed,
                s.dismissed,
                s.cases_confirmed,
                s.cases_dismissed,
                s.dates_written,
                s.dates_removed
            );
        }
    }
    Ok(())
}
