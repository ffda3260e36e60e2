//! Throughput of `rolling_std` through SQL: 1M rows, 10 symbols, in memory.
//!
//! ```text
//! cargo run --release -p stockanomaly-udfs --example rolling
//! ```
//!
//! Prints rows per second for the whole query (scan, repartition, sort and
//! the window pass); a figure to compare, not a test.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float64Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::error::Result;
use datafusion::prelude::SessionContext;

const ROWS: usize = 1_000_000;
const SYMBOLS: usize = 10;
const BATCH: usize = 65_536;

#[tokio::main]
async fn main() -> Result<()> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("x", DataType::Float64, true),
    ]));
    // One tick per symbol per second, a deterministic random walk near 1000.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut prices = [1000.0f64; SYMBOLS];
    let mut batches = Vec::new();
    let mut row = 0;
    while row < ROWS {
        let len = BATCH.min(ROWS - row);
        let mut symbols = Vec::with_capacity(len);
        let mut ts = Vec::with_capacity(len);
        let mut xs = Vec::with_capacity(len);
        for r in row..row + len {
            let s = r % SYMBOLS;
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            prices[s] += ((state >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 0.01;
            symbols.push(format!("S{s}"));
            ts.push(1_700_000_000_000_000 + (r / SYMBOLS) as i64 * 1_000_000);
            xs.push(prices[s]);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(symbols)),
            Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
            Arc::new(Float64Array::from(xs)),
        ];
        batches.push(RecordBatch::try_new(schema.clone(), columns)?);
        row += len;
    }
    let ctx = SessionContext::new();
    stockanomaly_udfs::register_all(&ctx);
    ctx.register_table("ticks", Arc::new(MemTable::try_new(schema, vec![batches])?))?;

    let sql = "SELECT symbol, ts, rolling_std(x, ts, INTERVAL '5 minutes') \
               OVER (PARTITION BY symbol ORDER BY ts) AS vol_5m FROM ticks";
    for run in 1..=3 {
        let start = Instant::now();
        let out = ctx.sql(sql).await?.collect().await?;
        let secs = start.elapsed().as_secs_f64();
        let rows: usize = out.iter().map(RecordBatch::num_rows).sum();
        println!(
            "run {run}: {rows} rows in {secs:.3} s: {:.2} M rows/s",
            rows as f64 / secs / 1e6
        );
    }
    Ok(())
}
