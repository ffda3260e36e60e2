//! The PostgreSQL tick store: Arrow batches of the tick schema into `ticks`
//! (partitioned by UTC day), by binary COPY into a staging table and one
//! `INSERT ... ON CONFLICT DO NOTHING`, so that writing a batch again (a
//! replay, a gap backfill overlapping live data) stores each tick once.

use std::collections::BTreeSet;

use arrow::array::{Array, AsArray, Float64Array, RecordBatch};
use arrow::datatypes::{Float64Type, TimestampMicrosecondType, UInt32Type};
use chrono::{DateTime, NaiveDate, Utc};
use futures::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use super::DbError;
use crate::tick::{col, DAY_US};

/// Float columns of the tick schema, in the order of [`COPY_COLUMNS`].
const FLOATS: [&str; 9] = [
    col::PRICE,
    col::VOLUME,
    col::OPEN,
    col::HIGH,
    col::LOW,
    col::BID,
    col::ASK,
    col::BID_SIZE,
    col::ASK_SIZE,
];

/// The staging table's columns, as COPY sends them (and as
/// [`TickRow::params`] orders its values).
pub(crate) const COPY_COLUMNS: &str =
    "symbol, ts, seq, price, volume, open, high, low, bid, ask, bid_size, ask_size, source";

/// The columns of a tick batch, typed, for writing rows to `ticks`.
pub(crate) struct TickColumns<'a> {
    pub ts: &'a arrow::array::TimestampMicrosecondArray,
    symbol: &'a arrow::array::StringArray,
    seq: &'a arrow::array::UInt32Array,
    source: &'a arrow::array::StringArray,
    floats: Vec<&'a Float64Array>,
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

impl<'a> TickColumns<'a> {
    /// The tick schema's columns of `batch`; an error names what is missing
    /// or mistyped.
    pub(crate) fn of(batch: &'a RecordBatch) -> Result<Self, DbError> {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| invalid(format!("the batch has no column {name}")))
        };
        Ok(Self {
            ts: column(col::TS)?
                .as_primitive_opt::<TimestampMicrosecondType>()
                .ok_or_else(|| invalid("ts is not a µs timestamp".into()))?,
            symbol: column(col::SYMBOL)?
                .as_string_opt::<i32>()
                .ok_or_else(|| invalid("symbol is not text".into()))?,
            source: column(col::SOURCE)?
                .as_string_opt::<i32>()
                .ok_or_else(|| invalid("source is not text".into()))?,
            seq: column(col::SEQ)?
                .as_primitive_opt::<UInt32Type>()
                .ok_or_else(|| invalid("seq is not a u32".into()))?,
            floats: FLOATS
                .iter()
                .map(|name| {
                    column(name)?
                        .as_primitive_opt::<Float64Type>()
                        .ok_or_else(|| invalid(format!("{name} is not a float")))
                })
                .collect::<Result<_, _>>()?,
        })
    }

    /// Row `i`'s values; an error for a timestamp or `seq` PostgreSQL
    /// cannot hold.
    pub(crate) fn row(&self, i: usize) -> Result<TickRow<'a>, DbError> {
        let t = self.ts.value(i);
        let seq = self.seq.value(i);
        Ok(TickRow {
            symbol: self.symbol.value(i),
            at: DateTime::<Utc>::from_timestamp_micros(t)
                .ok_or_else(|| invalid(format!("ts {t} is out of range")))?,
            seq: i32::try_from(seq)
                .map_err(|_| invalid(format!("seq {seq} exceeds a PostgreSQL integer")))?,
            floats: std::array::from_fn(|k| {
                let c = self.floats[k];
                (!c.is_null(i)).then(|| c.value(i))
            }),
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
    let cols = TickColumns::of(batch)?;
    let ts = cols.ts;
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
