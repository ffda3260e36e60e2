//! The market-context stage's bucket closer: which one-minute buckets of
//! the tick stream are complete, so that their `market` rows (the bucket
//! query over every symbol's ticks, see [`crate::features::market`]) can be
//! computed once and for all.
//!
//! **Watermark.** Each source partition's watermark is its newest tick's
//! `ts` minus the allowed lateness: no tick older than that is expected
//! from it. A bucket is closed once every partition's watermark has passed
//! its end. A partition that has sent nothing for the idle timeout (on the
//! caller's clock) does not hold buckets open; when every partition is
//! idle, every bucket with ticks is closed. At the end of a stream all are.
//!
//! A Kafka consumer does not interleave partitions fairly: it may hand out
//! thousands of one partition's messages before the first of another, so
//! silence alone does not mean a partition has nothing more.
//! With [`BucketCloser::idle_needs_end`], a partition is idle only once the
//! consumer has also reached its end ([`BucketCloser::caught_up`], from
//! librdkafka's partition EOF) and nothing came since.
//!
//! **Late ticks.** A tick whose bucket is already closed cannot change its
//! row: it is refused (the caller dead-letters and counts it). The detector
//! refuses the same ticks, because it scores a bucket's ticks of a symbol
//! only up to the count its market row was made from.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::{BooleanArray, Int32Array, RecordBatch};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::SchemaRef;

use std::sync::Arc;

use crate::features::buckets::NativeBuckets;
use crate::features::market::{bucket_of, BUCKET_US};
use crate::features::profiles::ProfileError;
use crate::lake::live::{LiveRows, LiveTable, PreparedQuery};
use crate::lake::{with_partitions, TableSpec};
use crate::tick::{event_times, tick_schema};

/// Tuning of a [`BucketCloser`].
#[derive(Debug, Clone, Copy)]
pub struct CloserConfig {
    /// A partition silent this long no longer holds buckets open.
    pub idle_timeout: Duration,
    /// How far behind its partition's newest tick a tick may arrive and
    /// still count in its bucket.
    pub allowed_lateness: Duration,
}

/// What has been read of a source partition: its event time, when it
/// last sent something (on the caller's clock), whether its end was reached.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PartitionMark {
    pub(crate) newest: i64,
    pub(crate) arrived: Duration,
    /// The consumer has read everything the partition holds.
    pub(crate) caught_up: bool,
}

impl PartitionMark {
    /// `partition` of `marks` reached event time `ts` at `now` (a tick or a
    /// watermark message): no longer at its end.
    pub(crate) fn saw(marks: &mut BTreeMap<i32, Self>, partition: i32, ts: i64, now: Duration) {
        let mark = marks.entry(partition).or_insert(PartitionMark {
            newest: ts,
            arrived: now,
            caught_up: false,
        });
        mark.newest = mark.newest.max(ts);
        mark.arrived = now;
        mark.caught_up = false;
    }
}

/// Ticks of closed buckets, ready for the bucket query.
#[derive(Debug)]
pub struct Closed {
    /// Every held tick of the buckets closed now, in arrival order.
    pub ticks: RecordBatch,
    /// Every bucket starting before this (µs) is closed.
    pub closed_until: i64,
}

/// Holds the ticks of open buckets and closes them by watermark or idle
/// timeout (see the module documentation).
#[derive(Debug)]
pub struct BucketCloser {
    config: CloserConfig,
    schema: SchemaRef,
    /// Ticks of buckets not closed yet.
    open: Vec<RecordBatch>,
    marks: BTreeMap<i32, PartitionMark>,
    closed_until: i64,
    /// Idle also needs the partition's end reached (Kafka).
    needs_end: bool,
}

impl BucketCloser {
    /// A closer of ticks of `schema` (its first column is `ts`).
    pub fn new(schema: SchemaRef, config: CloserConfig) -> Self {
        BucketCloser {
            config,
            schema,
            open: Vec::new(),
            marks: BTreeMap::new(),
            closed_until: i64::MIN,
            needs_end: false,
        }
    }

    /// Counts a partition as idle only once [`caught_up`](Self::caught_up)
    /// said its end was reached (and nothing came since), not on silence
    /// alone: for Kafka consumers (see the module documentation).
    pub fn idle_needs_end(&mut self) {
        self.needs_end = true;
    }

    /// The consumer has reached the end of `partition` (read everything it
    /// holds now), at `now`.
    pub fn caught_up(&mut self, partition: i32, now: Duration) {
        let mark = self.marks.entry(partition).or_insert(PartitionMark {
            newest: i64::MIN,
            arrived: now,
            caught_up: true,
        });
        mark.caught_up = true;
    }

    /// A watermark message of `partition` (see
    /// [`crate::sources::kafka::watermark`]) at `now`: its event time is at
    /// least `ts_us`, as if a tick of that time had arrived.
    pub fn advance(&mut self, partition: i32, ts_us: i64, now: Duration) {
        PartitionMark::saw(&mut self.marks, partition, ts_us, now);
    }

    /// Every bucket starting before this (µs) is closed (`i64::MIN`: none).
    pub fn closed_until(&self) -> i64 {
        self.closed_until
    }

    /// Ticks held in open buckets.
    pub fn open_ticks(&self) -> usize {
        self.open.iter().map(RecordBatch::num_rows).sum()
    }

    /// Adds ticks (from `partitions`, arrived at `now`); returns, per tick,
    /// whether it was refused because its bucket is already closed.
    pub fn admit(
        &mut self,
        ticks: &RecordBatch,
        partitions: &Int32Array,
        now: Duration,
    ) -> Result<Vec<bool>, arrow::error::ArrowError> {
        let ts = event_times(ticks)?;
        let mut late = Vec::with_capacity(ticks.num_rows());
        for (i, t) in ts.values().iter().enumerate() {
            PartitionMark::saw(&mut self.marks, partitions.value(i), *t, now);
            late.push(bucket_of(*t) < self.closed_until);
        }
        let keep: BooleanArray = late.iter().map(|l| Some(!l)).collect();
        let kept = filter_record_batch(ticks, &keep)?;
        if kept.num_rows() > 0 {
            self.open.push(kept);
        }
        Ok(late)
    }

    /// Closes the buckets the watermark (or idleness, or `all`: the end of
    /// the stream) allows; returns their ticks, or `None` when none closed.
    pub fn close(
        &mut self,
        now: Duration,
        all: bool,
    ) -> Result<Option<Closed>, arrow::error::ArrowError> {
        let lateness = i64::try_from(self.config.allowed_lateness.as_micros()).unwrap_or(i64::MAX);
        let watermark = self
            .marks
            .values()
            .filter(|m| {
                let silent = now.saturating_sub(m.arrived) >= self.config.idle_timeout;
                !all && !(silent && (m.caught_up || !self.needs_end))
            })
            .map(|m| m.newest.saturating_sub(lateness))
            .min();
        let newest = self
            .marks
            .values()
            .map(|m| m.newest)
            .filter(|&n| n > i64::MIN)
            .max();
        let until = match (watermark, newest) {
            (Some(w), _) => bucket_of(w),
            // Every partition idle (or the end): close all there is.
            (None, Some(n)) => bucket_of(n).saturating_add(BUCKET_US),
            (None, None) => return Ok(None),
        };
        if tracing::enabled!(tracing::Level::TRACE) {
            // Why buckets stay open: each partition's event time, how long
            // it has been silent, and whether its end was reached (E).
            let time = |us: i64| {
                chrono::DateTime::from_timestamp_micros(us)
                    .map(|t| t.format("%m-%d %H:%M:%S").to_string())
                    .unwrap_or_else(|| "-".into())
            };
            let marks: Vec<String> = self
                .marks
                .iter()
                .map(|(p, m)| {
                    let silent = now.saturating_sub(m.arrived).as_millis();
                    let end = if m.caught_up { " E" } else { "" };
                    format!("{p}: {} ({silent} ms){end}", time(m.newest))
                })
                .collect();
            tracing::trace!(until = %time(until), marks = %marks.join(", "), "closer");
        }
        if until <= self.closed_until {
            return Ok(None);
        }
        self.closed_until = until;
        let all_open = concat_batches(&self.schema, &self.open)?;
        let ts = event_times(&all_open)?;
        let closing: BooleanArray = ts
            .values()
            .iter()
            .map(|t| Some(bucket_of(*t) < until))
            .collect();
        let ticks = filter_record_batch(&all_open, &closing)?;
        let still_open = arrow::compute::not(&closing)?;
        let rest = filter_record_batch(&all_open, &still_open)?;
        self.open = if rest.num_rows() > 0 {
            vec![rest]
        } else {
            Vec::new()
        };
        Ok(Some(Closed {
            ticks,
            closed_until: until,
        }))
    }

    /// Partitions counted idle now by their end having been reached: the
    /// caller checks each against the broker ([`not_caught_up`] when more
    /// arrived there since), as new data does not announce itself.
    ///
    /// [`not_caught_up`]: Self::not_caught_up
    pub fn idle_at_end(&self, now: Duration) -> Vec<i32> {
        self.marks
            .iter()
            .filter(|(_, m)| {
                m.caught_up && now.saturating_sub(m.arrived) >= self.config.idle_timeout
            })
            .map(|(&p, _)| p)
            .collect()
    }

    /// The broker holds messages of `partition` not read yet.
    pub fn not_caught_up(&mut self, partition: i32) {
        if let Some(m) = self.marks.get_mut(&partition) {
            m.caught_up = false;
        }
    }

    /// Partitions the caller reads (its assignment): one that has sent no
    /// tick yet holds every bucket open until it has been silent for the
    /// idle timeout from now, so the first partition to deliver does not
    /// close buckets the others still have ticks for.
    pub fn expect(&mut self, partitions: &[i32], now: Duration) {
        for &p in partitions {
            self.marks.entry(p).or_insert(PartitionMark {
                newest: i64::MIN,
                arrived: now,
                caught_up: false,
            });
        }
    }

    /// Starts from a known state: every bucket before `closed_until` was
    /// closed by an earlier run (its rows published), so their ticks are
    /// late.
    pub fn resume(&mut self, closed_until: i64) {
        self.closed_until = self.closed_until.max(closed_until);
    }

    /// The held ticks of open buckets.
    pub fn open(&self) -> &[RecordBatch] {
        &self.open
    }

    /// Forgets the marks of `partitions` (revoked): they no longer hold
    /// buckets open.
    pub fn forget_partitions(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.marks.remove(p);
        }
    }
}

/// The bucket query (see [`crate::features::market`]) run over each
/// closing's ticks: the in-process executor and the `market-context` stage
/// close buckets every minute of event time (a replay: thousands of times).
/// The shipped query runs natively ([`NativeBuckets`], the same bits);
/// another is planned once and re-run ([`PreparedQuery`]), so parsing and
/// planning are not paid at every closing.
#[derive(Debug)]
pub struct BucketQuery {
    sql: String,
    native: Option<NativeBuckets>,
    prepared: Option<PreparedBuckets>,
}

/// The bucket query planned over live tables.
#[derive(Debug)]
struct PreparedBuckets {
    query: PreparedQuery,
    ticks: LiveRows,
    symbols: LiveRows,
    profiles: LiveRows,
}

impl BucketQuery {
    /// The bucket query `sql`, run natively when it is the shipped one.
    pub fn new(sql: &str) -> Self {
        Self {
            sql: sql.to_owned(),
            native: (sql == crate::features::market::MARKET_SQL).then(NativeBuckets::default),
            prepared: None,
        }
    }

    /// The `market` rows of closed buckets: the query over `ticks` (the
    /// leading [`tick_schema`] columns of a batch holding every tick of
    /// those buckets), with the lake's `symbols` and the `profiles` of the
    /// buckets' days (both with their `date` column).
    pub async fn rows(
        &mut self,
        ticks: &RecordBatch,
        symbols: &RecordBatch,
        profiles: &[RecordBatch],
    ) -> Result<RecordBatch, ProfileError> {
        if let Some(native) = &mut self.native {
            let date = date_of(ticks);
            if let Some(rows) =
                native
                    .rows(ticks, symbols, profiles)
                    .map_err(|e| ProfileError::Query {
                        table: "market",
                        date,
                        source: e.into(),
                    })?
            {
                return Ok(rows);
            }
        }
        let prepared = match &mut self.prepared {
            Some(p) => p,
            None => self.prepared.insert(PreparedBuckets::new(&self.sql).await?),
        };
        prepared.rows(ticks, symbols, profiles).await
    }
}

/// The UTC date of the first tick (for errors).
fn date_of(ticks: &RecordBatch) -> chrono::NaiveDate {
    let first = event_times(ticks)
        .ok()
        .and_then(|ts| ts.values().first().copied())
        .unwrap_or(0);
    chrono::DateTime::from_timestamp_micros(first)
        .map(|t| t.date_naive())
        .unwrap_or_default()
}

impl PreparedBuckets {
    /// Plans the bucket query `sql` over the `ticks`, `symbols` and
    /// `profiles` it will be given.
    async fn new(sql: &str) -> Result<Self, ProfileError> {
        let q = |source| ProfileError::Query {
            table: "market",
            date: chrono::NaiveDate::default(),
            source,
        };
        let ctx = PreparedQuery::session().await.map_err(q)?;
        let (ticks, symbols, profiles) = (
            LiveRows::default(),
            LiveRows::default(),
            LiveRows::default(),
        );
        for (spec, rows) in [
            (TableSpec::ticks(), &ticks),
            (TableSpec::symbols(), &symbols),
            (TableSpec::profiles(), &profiles),
        ] {
            let name = spec.name.as_str();
            ctx.deregister_table(name).map_err(q)?;
            ctx.register_table(
                name,
                Arc::new(LiveTable::new(with_partitions(&spec), rows.clone())),
            )
            .map_err(q)?;
        }
        let view = ctx.sql(sql).await.map_err(q)?.into_view();
        ctx.register_table("market_query", view).map_err(q)?;
        let query = PreparedQuery::new(ctx, "SELECT * FROM market_query ORDER BY symbol, ts")
            .await
            .map_err(q)?;
        Ok(Self {
            query,
            ticks,
            symbols,
            profiles,
        })
    }

    async fn rows(
        &mut self,
        ticks: &RecordBatch,
        symbols: &RecordBatch,
        profiles: &[RecordBatch],
    ) -> Result<RecordBatch, ProfileError> {
        let date = date_of(ticks);
        let q = |source| ProfileError::Query {
            table: "market",
            date,
            source,
        };
        let arrow = |e: arrow::error::ArrowError| q(e.into());
        let n = tick_schema().fields().len();
        let plain =
            RecordBatch::try_new(tick_schema(), ticks.columns()[..n].to_vec()).map_err(arrow)?;
        self.ticks
            .set(vec![crate::lake::with_date(&plain).map_err(arrow)?]);
        let symbols_schema = with_partitions(&TableSpec::symbols());
        self.symbols.set(vec![
            crate::features::conform(symbols, &symbols_schema).map_err(arrow)?
        ]);
        let profiles_schema = with_partitions(&TableSpec::profiles());
        self.profiles.set(
            profiles
                .iter()
                .map(|p| crate::features::conform(p, &profiles_schema))
                .collect::<Result<Vec<_>, _>>()
                .map_err(arrow)?,
        );
        let all = self.query.run().await.map_err(q);
        // Nothing is held between closings.
        for rows in [&self.ticks, &self.symbols, &self.profiles] {
            rows.set(Vec::new());
        }
        crate::features::conform(&all?, &crate::features::market::market_schema()).map_err(arrow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tick::{TickBuilder, TickRecord};

    const T0: i64 = 1_704_205_800_000_000;

    fn ticks(ts: &[i64]) -> RecordBatch {
        let mut b = TickBuilder::new("test");
        for &t in ts {
            b.push(&TickRecord::trade(t, "AAA", 10.0, 1.0)).unwrap();
        }
        b.finish()
    }

    /// Ticks a closing closed (0 for none).
    fn closed_count(c: Option<Closed>) -> usize {
        c.map_or(0, |c| c.ticks.num_rows())
    }

    fn closer(idle: u64) -> BucketCloser {
        BucketCloser::new(
            crate::tick::tick_schema(),
            CloserConfig {
                idle_timeout: Duration::from_secs(idle),
                allowed_lateness: Duration::ZERO,
            },
        )
    }

    #[test]
    fn a_bucket_closes_when_every_partition_has_passed_it() {
        let mut c = closer(3600);
        let now = Duration::ZERO;
        c.admit(&ticks(&[T0, T0 + 1]), &Int32Array::from(vec![0, 0]), now)
            .unwrap();
        c.admit(&ticks(&[T0 + 2]), &Int32Array::from(vec![1]), now)
            .unwrap();
        assert_eq!(closed_count(c.close(now, false).unwrap()), 0);
        // Partition 0 moves to the next minute; 1 still holds the bucket.
        c.admit(&ticks(&[T0 + BUCKET_US]), &Int32Array::from(vec![0]), now)
            .unwrap();
        assert_eq!(closed_count(c.close(now, false).unwrap()), 0);
        c.admit(
            &ticks(&[T0 + BUCKET_US + 5]),
            &Int32Array::from(vec![1]),
            now,
        )
        .unwrap();
        let closed = c.close(now, false).unwrap().unwrap();
        assert_eq!(closed.ticks.num_rows(), 3);
        assert_eq!(closed.closed_until, T0 + BUCKET_US);
        assert_eq!(c.open_ticks(), 2);
        // A tick of the closed bucket is refused.
        let late = c
            .admit(&ticks(&[T0 + 30]), &Int32Array::from(vec![1]), now)
            .unwrap();
        assert_eq!(late, vec![true]);
        assert_eq!(c.open_ticks(), 2);
    }

    #[test]
    fn a_watermark_moves_a_partition_without_ticks_past_buckets() {
        let mut c = closer(3600);
        let now = Duration::ZERO;
        c.expect(&[0, 1], now);
        c.admit(
            &ticks(&[T0, T0 + BUCKET_US + 1]),
            &Int32Array::from(vec![0, 0]),
            now,
        )
        .unwrap();
        // Partition 1 never had a tick: it holds every bucket open.
        assert_eq!(closed_count(c.close(now, false).unwrap()), 0);
        // Its producer says it has passed the first bucket, not the second.
        c.advance(1, T0 + BUCKET_US, now);
        let closed = c.close(now, false).unwrap().unwrap();
        assert_eq!(closed.ticks.num_rows(), 1);
        assert_eq!(closed.closed_until, T0 + BUCKET_US);
        // An older watermark does not move it back.
        c.advance(1, T0, now);
        assert_eq!(closed_count(c.close(now, false).unwrap()), 0);
        // Partition 1 moves on: now partition 0 holds the second bucket.
        c.advance(1, T0 + 2 * BUCKET_US, now);
        assert_eq!(closed_count(c.close(now, false).unwrap()), 0);
        c.admit(
            &ticks(&[T0 + 2 * BUCKET_US]),
            &Int32Array::from(vec![0]),
            now,
        )
        .unwrap();
        assert_eq!(closed_count(c.close(now, false).unwrap()), 1);
    }

    #[test]
    fn idle_partitions_stop_holding_buckets_open() {
        let mut c = closer(2);
        c.admit(&ticks(&[T0]), &Int32Array::from(vec![0]), Duration::ZERO)
            .unwrap();
        c.admit(
            &ticks(&[T0 + 3 * BUCKET_US]),
            &Int32Array::from(vec![1]),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            closed_count(c.close(Duration::from_secs(1), false).unwrap()),
            0
        );
        // Partition 0 idle: partition 1's watermark closes the first bucket.
        let closed = c.close(Duration::from_secs(2), false).unwrap().unwrap();
        assert_eq!(closed.ticks.num_rows(), 1);
        assert_eq!(closed.closed_until, T0 + 3 * BUCKET_US);
        // Both idle: the last bucket closes too.
        let closed = c.close(Duration::from_secs(4), false).unwrap().unwrap();
        assert_eq!(closed.ticks.num_rows(), 1);
        assert_eq!(closed.closed_until, T0 + 4 * BUCKET_US);
        assert_eq!(
            closed_count(c.close(Duration::from_secs(9), true).unwrap()),
            0
        );
    }

    #[test]
    fn kafka_partitions_are_idle_only_at_their_end() {
        let mut c = closer(2);
        c.idle_needs_end();
        c.admit(&ticks(&[T0]), &Int32Array::from(vec![0]), Duration::ZERO)
            .unwrap();
        c.admit(
            &ticks(&[T0 + 3 * BUCKET_US]),
            &Int32Array::from(vec![1]),
            Duration::ZERO,
        )
        .unwrap();
        // Silent, but not known to be at its end: partition 0 may have more.
        assert_eq!(
            closed_count(c.close(Duration::from_secs(5), false).unwrap()),
            0
        );
        c.caught_up(0, Duration::from_secs(5));
        let closed = c.close(Duration::from_secs(5), false).unwrap().unwrap();
        assert_eq!(closed.ticks.num_rows(), 1);
        // A message after the end: not caught up any more.
        c.admit(
            &ticks(&[T0 + 3 * BUCKET_US]),
            &Int32Array::from(vec![0]),
            Duration::from_secs(6),
        )
        .unwrap();
        assert_eq!(
            closed_count(c.close(Duration::from_secs(9), false).unwrap()),
            0
        );
    }

    #[test]
    fn an_expected_partition_holds_buckets_until_it_is_idle() {
        let mut c = closer(2);
        c.expect(&[0, 1], Duration::ZERO);
        c.admit(
            &ticks(&[T0, T0 + 2 * BUCKET_US]),
            &Int32Array::from(vec![0, 0]),
            Duration::from_secs(1),
        )
        .unwrap();
        // Partition 1 has said nothing yet: nothing closes.
        assert_eq!(
            closed_count(c.close(Duration::from_secs(1), false).unwrap()),
            0
        );
        // Silent for the idle timeout: partition 0 alone decides.
        let closed = c.close(Duration::from_secs(2), false).unwrap().unwrap();
        assert_eq!(closed.closed_until, T0 + 2 * BUCKET_US);
        assert_eq!(closed.ticks.num_rows(), 1);
    }

    /// The bucket query planned once and run over one closing after
    /// another equals the query planned afresh over each (no build side,
    /// sort or aggregate state leaks from a run into the next).
    #[tokio::test]
    async fn the_prepared_bucket_query_equals_a_fresh_plan_run_after_run() {
        use crate::features::market::{market_rows, MARKET_SQL};
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let symbols = RecordBatch::new_empty(with_partitions(&TableSpec::symbols()));
        let mut query = PreparedBuckets::new(MARKET_SQL).await.unwrap();
        for run in 0..4 {
            let mut b = TickBuilder::new("test");
            let start = T0 + run * 7 * BUCKET_US;
            for i in 0..(50 + run * 40) {
                let sym = format!("S{}", rng.random_range(0..(3 + run * 2)));
                let t = start + rng.random_range(0..(2 + run) * BUCKET_US);
                let mut r =
                    TickRecord::trade(t, &sym, 100.0 + rng.random::<f64>(), (i % 7 + 1) as f64);
                if rng.random_bool(0.3) {
                    (r.open, r.high, r.low) =
                        (Some(r.price), Some(r.price + 1.0), Some(r.price - 1.0));
                }
                b.push(&r).unwrap();
            }
            let ticks = b.finish();
            let got = query.rows(&ticks, &symbols, &[]).await.unwrap();
            let ctx = crate::lake::schema_session();
            let with_date = crate::lake::with_date(&ticks).unwrap();
            ctx.deregister_table("ticks").unwrap();
            ctx.register_table(
                "ticks",
                Arc::new(
                    datafusion::datasource::MemTable::try_new(
                        with_date.schema(),
                        vec![vec![with_date]],
                    )
                    .unwrap(),
                ),
            )
            .unwrap();
            let want = market_rows(&ctx, MARKET_SQL, chrono::NaiveDate::default())
                .await
                .unwrap();
            assert!(want.num_rows() > 3, "run {run}: {} rows", want.num_rows());
            assert_eq!(got, want, "run {run}");
        }
    }
}
