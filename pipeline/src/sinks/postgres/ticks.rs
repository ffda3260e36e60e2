//! The PostgreSQL tick store: Arrow batches of the tick schema into `ticks`
//! (partitioned by UTC day), by binary COPY into a staging table and one
//! `INSERT ... ON CONFLICT DO NOTHING`, so that writing a batch again (a
//! replay, a gap backfill overlapping live data) stores each tick once.

use std::collections::BTreeSet;

use arrow::array::{Array, Float64Array, RecordBatch, StringArray, UInt32Array};
use chrono::{DateTime, NaiveDate, Utc};
use futures::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use super::DbError;
use crate::tick::{col, TickView, DAY_US};

/// The staging table's columns, as COPY sends them (and as
/// [`TickRow::params`] orders its values).
pub(crate) const COPY_COLUMNS: &str =
    "symbol, ts, seq, price, volume, open, high, low, bid, ask, bid_size, ask_size, source";

/// The tick columns of a batch with the `seq` and `source` the store keys
/// and keeps, for writing rows to `ticks`.
pub(crate) struct StoreColumns<'a> {
    view: TickView<'a>,
    seq: &'a UInt32Array,
    source: &'a StringArray,
}

/// One tick's values, in [`COPY_COLUMNS`] order.
pub(crate) struct TickRow<'a> {
    symbol: &'a str,
    at: DateTime<Utc>,
    seq: i32,
    floats: [Option<f64>; 9],
    source: &'a str,
}

impl TickRow<'_> {
    /// The values as statement or COPY parameters.
    pub(crate) fn params(&self) -> [&(dyn ToSql + Sync); 13] {
        let f = &self.floats;
        [
            &self.symbol,
            &self.at,
            &self.seq,
            &f[0],
            &f[1],
            &f[2],
            &f[3],
            &f[4],
            &f[5],
            &f[6],
            &f[7],
            &f[8],
            &self.source,
        ]
    }
}

impl<'a> StoreColumns<'a> {
    /// The tick schema's columns of `batch`; an error names what is missing
    /// or mistyped.
    pub(crate) fn of(batch: &'a RecordBatch) -> Result<Self, DbError> {
        let view = TickView::new(batch).map_err(|e| invalid(e.to_string()))?;
        let missing = |name: &str| invalid(format!("the batch has no column {name}"));
        Ok(Self {
            seq: view.seq.ok_or_else(|| missing(col::SEQ))?,
            source: view.source.ok_or_else(|| missing(col::SOURCE))?,
            view,
        })
    }

    /// Event times, µs.
    pub(crate) fn ts(&self) -> &'a arrow::array::TimestampMicrosecondArray {
        self.view.ts
    }

    /// Row `i`'s values; an error for a timestamp or `seq` PostgreSQL
    /// cannot hold.
    pub(crate) fn row(&self, i: usize) -> Result<TickRow<'a>, DbError> {
        let v = &self.view;
        let t = v.ts.value(i);
        let seq = self.seq.value(i);
        let float = |c: &Float64Array| (!c.is_null(i)).then(|| c.value(i));
        let mut floats = [None; 9];
        floats[0] = float(v.price);
        floats[1] = float(v.volume);
        for (slot, (_, c)) in floats[2..].iter_mut().zip(v.optional) {
            *slot = float(c);
        }
        Ok(TickRow {
            symbol: v.symbol.value(i),
            at: DateTime::<Utc>::from_timestamp_micros(t)
                .ok_or_else(|| invalid(format!("ts {t} is out of range")))?,
            seq: i32::try_from(seq)
                .map_err(|_| invalid(format!("seq {seq} exceeds a PostgreSQL integer")))?,
            floats,
            source: self.source.value(i),
        })
    }
}

/// What [`write_ticks`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TickWriteStats {
    /// Ticks in the batch.
    pub rows: u64,
    /// Ticks new to the store (the others were there already).
    pub inserted: u64,
    /// Day partitions created.
    pub partitions_created: u64,
}

fn invalid(detail: String) -> DbError {
    DbError::InvalidRow {
        table: "ticks",
        detail,
    }
}

/// Writes a batch of the tick schema into `ticks` in one transaction:
/// creates the day partitions it needs, COPYs the rows into a staging table
/// and inserts those not stored yet (key `symbol, ts, seq`).
pub async fn write_ticks(
    client: &mut Client,
    batch: &RecordBatch,
) -> Result<TickWriteStats, DbError> {
    let cols = StoreColumns::of(batch)?;
    let ts = cols.ts();
    let mut stats = TickWriteStats {
        rows: batch.num_rows() as u64,
        ..TickWriteStats::default()
    };
    if batch.num_rows() == 0 {
        return Ok(stats);
    }

    let tx = client
        .transaction()
        .await
        .map_err(DbError::query("ticks: begin"))?;
    let days: BTreeSet<i64> = ts.values().iter().map(|t| t.div_euclid(DAY_US)).collect();
    for day in days {
        let date = DateTime::<Utc>::from_timestamp(day * 86_400, 0)
            .map(|t| t.date_naive())
            .unwrap_or(NaiveDate::MIN);
        let created: bool = tx
            .query_one("SELECT stockanomaly_ensure_tick_partition($1)", &[&date])
            .await
            .map_err(DbError::query("ticks: create the day's partition"))?
            .get(0);
        stats.partitions_created += u64::from(created);
    }
    tx.batch_execute(
        "CREATE TEMP TABLE ticks_staging (LIKE ticks INCLUDING DEFAULTS) ON COMMIT DROP",
    )
    .await
    .map_err(DbError::query("ticks: create the staging table"))?;
    let sink = tx
        .copy_in(&format!(
            "COPY ticks_staging ({COPY_COLUMNS}) FROM STDIN BINARY"
        ))
        .await
        .map_err(DbError::query("ticks: COPY into the staging table"))?;
    let mut types = vec![Type::TEXT, Type::TIMESTAMPTZ, Type::INT4];
    types.extend([Type::FLOAT8; 9]);
    types.push(Type::TEXT);
    let writer = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(writer);
    for i in 0..batch.num_rows() {
        let row = cols.row(i)?;
        writer
            .as_mut()
            .write(&row.params())
            .await
            .map_err(DbError::query("ticks: COPY a row"))?;
    }
    writer
        .finish()
        .await
        .map_err(DbError::query("ticks: finish the COPY"))?;
    stats.inserted = tx
        .execute(
            &format!(
                "INSERT INTO ticks ({COPY_COLUMNS}) SELECT {COPY_COLUMNS} FROM ticks_staging \
                 ON CONFLICT (symbol, ts, seq) DO NOTHING"
            ),
            &[],
        )
        .await
        .map_err(DbError::query("ticks: insert from the staging table"))?;
    tx.commit().await.map_err(DbError::query("ticks: commit"))?;
    Ok(stats)
}
