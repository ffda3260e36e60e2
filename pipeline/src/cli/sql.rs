//! `stockanomaly sql "SELECT ..."`

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use arrow::array::RecordBatch;
use clap::{Args, ValueEnum};
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use super::{open_lake, UsageError};
use crate::features::{training_session, Catalog};
use crate::lake::session_context;

/// Output formats of `sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SqlFormat {
    /// An aligned text table.
    Table,
    /// CSV with a header.
    Csv,
    /// One JSON object per line.
    Json,
    /// Parquet (needs --output).
    Parquet,
}

/// `stockanomaly sql`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Tables: ticks (ts, symbol, seq, price, volume, open, high, low, bid, ask,
bid_size, ask_size, source, date), labels (symbol, start_ts, end_ts, kind,
source, date), features (the backfilled snapshot of the current feature set:
the tick key and one column per feature) and training (features with
label 0/1 and kind). Filtering on `date` ('YYYY-MM-DD') reads only those partitions.

Examples:
  stockanomaly sql \"SELECT symbol, count(*) AS n FROM ticks GROUP BY symbol ORDER BY n DESC\"
  stockanomaly sql --format csv --output out.csv \"SELECT * FROM labels\"")]
pub struct SqlArgs {
    /// The query.
    #[arg(value_name = "QUERY")]
    pub query: String,

    /// Output format.
    #[arg(long, env = "STOCKANOMALY_SQL_FORMAT", value_enum, default_value_t = SqlFormat::Table)]
    pub format: SqlFormat,

    /// The SQL files.
    #[command(flatten)]
    pub sql: super::shared::QueriesArgs,

    /// Write to this file instead of standard output.
    #[arg(long, short, env = "STOCKANOMALY_SQL_OUTPUT", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub(crate) async fn run(lake: &str, args: SqlArgs) -> anyhow::Result<()> {
    if args.format == SqlFormat::Parquet && args.output.is_none() {
        return Err(UsageError("--format parquet needs --output FILE".into()).into());
    }
    let root = open_lake(lake)?;
    // With a valid feature catalog, `features` (its snapshot) and `training`
    // (features x labels) are there too.
    let ctx = match Catalog::load_or_embedded(&args.sql.queries).await {
        Ok(catalog) => training_session(&root, &catalog).await?,
        Err(e) => {
            tracing::warn!(error = %e, "Feature catalog not loaded; `features` and `training` are not available.");
            session_context(&root).await?
        }
    };
    let out: Box<dyn Write + Send> = match &args.output {
        Some(p) => Box::new(BufWriter::new(
            File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(BufWriter::new(io::stdout())),
    };
    query_to(&ctx, &args.query, args.format, out).await
}

/// Runs `query` and writes its result to `out` in `format`.
pub(crate) async fn query_to(
    ctx: &SessionContext,
    query: &str,
    format: SqlFormat,
    mut out: Box<dyn Write + Send>,
) -> anyhow::Result<()> {
    let df = ctx
        .sql(query)
        .await
        .map_err(|e| UsageError(format!("query failed to plan: {e}")))?;
    let schema = df.schema().as_arrow().clone();
    let mut stream = df.execute_stream().await?;
    match format {
        SqlFormat::Table => {
            // An aligned table needs every row's width first.
            let mut batches: Vec<RecordBatch> = Vec::new();
            while let Some(b) = stream.next().await {
                batches.push(b?);
            }
            if batches.is_empty() {
                batches.push(RecordBatch::new_empty(std::sync::Arc::new(schema)));
            }
            writeln!(
                out,
                "{}",
                arrow::util::pretty::pretty_format_batches(&batches)?
            )?;
        }
        SqlFormat::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            while let Some(b) = stream.next().await {
                w.write(&b?)?;
            }
        }
        SqlFormat::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut out);
            while let Some(b) = stream.next().await {
                w.write(&b?)?;
            }
            w.finish()?;
        }
        SqlFormat::Parquet => {
            let mut w =
                parquet::arrow::ArrowWriter::try_new(&mut out, std::sync::Arc::new(schema), None)?;
            while let Some(b) = stream.next().await {
                w.write(&b?)?;
            }
            w.close()?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The first column of the first row of `sql` as text (`None` for no rows
/// or NULL).
pub(crate) async fn scalar_string(
    ctx: &datafusion::prelude::SessionContext,
    sql: &str,
) -> anyhow::Result<Option<String>> {
    use arrow::array::{Array, AsArray};
    let batches = ctx.sql(sql).await?.collect().await?;
    let Some(b) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(None);
    };
    let c = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8)?;
    let c = c.as_string::<i32>();
    Ok((!c.is_null(0)).then(|| c.value(0).to_owned()))
}

/// The first column of the first row of `sql`, as an integer (0 for no
/// rows or NULL).
pub(crate) async fn scalar_i64(
    ctx: &datafusion::prelude::SessionContext,
    sql: &str,
) -> anyhow::Result<i64> {
    use arrow::array::{Array, AsArray};
    let batches = ctx.sql(sql).await?.collect().await?;
    let Some(b) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(0);
    };
    let c = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Int64)?;
    let c = c.as_primitive::<arrow::datatypes::Int64Type>();
    Ok(if c.is_null(0) { 0 } else { c.value(0) })
}
