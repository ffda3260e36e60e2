//! Replays the lake's ticks in event-time order, optionally at a multiple of
//! real time: the streaming stage's in-process source for demos and tests,
//! with no broker in between.

use std::collections::VecDeque;
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::TimestampMicrosecondType;
use chrono::NaiveDate;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use super::{Position, Source, SourceBatch, SourceError};
use crate::lake::{session_context, LakeError, LakeRoot};
use crate::tick::{col, tick_schema};

/// Wall time a paced batch spans at most: short enough that ticks arrive
/// smoothly, long enough that a batch holds more than a handful of ticks.
const PACED_BATCH_SPAN: Duration = Duration::from_millis(100);

/// Releases event times at a multiple of real time.
///
/// The first event time seen is released at once; each later one when the
/// wall clock has advanced `(ts - first) / speed`. A gap that would take
/// longer than `max_pause` (a night, a weekend) is shortened to `max_pause`,
/// so a replay does not sit idle while markets are closed.
#[derive(Debug, Clone)]
pub struct Pacer {
    speed: f64,
    max_pause: Duration,
    origin: Option<(tokio::time::Instant, i64)>,
}

impl Pacer {
    /// A pacer at `speed` × real time; `None` unless `speed` is finite and
    /// positive.
    pub fn new(speed: f64, max_pause: Duration) -> Option<Self> {
        (speed.is_finite() && speed > 0.0).then_some(Self {
            speed,
            max_pause,
            origin: None,
        })
    }

    /// The speed, × real time.
    pub fn speed(&self) -> f64 {
        self.speed
    }

    /// How long to wait before releasing a tick stamped `ts_us` (zero when it
    /// is due or late). Event times are expected in non-decreasing order.
    pub fn delay(&mut self, ts_us: i64) -> Duration {
        let now = tokio::time::Instant::now();
        let (t0, e0) = *self.origin.get_or_insert((now, ts_us));
        let ahead_s = ts_us.saturating_sub(e0).max(0) as f64 / 1e6 / self.speed;
        let due = t0 + Duration::from_secs_f64(ahead_s);
        let wait = due.saturating_duration_since(now);
        if wait > self.max_pause {
            // Move the event-time origin forward by the skipped wall time.
            let skip_us = (wait - self.max_pause).as_secs_f64() * self.speed * 1e6;
            self.origin = Some((t0, e0.saturating_add(skip_us as i64)));
            return self.max_pause;
        }
        wait
    }

    /// Sleeps until `ts_us` is due.
    pub async fn wait(&mut self, ts_us: i64) {
        let d = self.delay(ts_us);
        // Timers are millisecond-grained: shorter waits only add jitter.
        if d >= Duration::from_millis(1) {
            tokio::time::sleep(d).await;
        }
    }
}

/// What to replay and how fast.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// First date (UTC, inclusive); `None` for the lake's first.
    pub from: Option<NaiveDate>,
    /// Last date (UTC, inclusive); `None` for the lake's last.
    pub to: Option<NaiveDate>,
    /// Most ticks per batch.
    pub batch_rows: usize,
    /// Replay at this multiple of real time; `None` for as fast as possible.
    pub speed: Option<f64>,
    /// Longest wait between two paced batches (see [`Pacer`]).
    pub max_pause: Duration,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self {
            from: None,
            to: None,
            batch_rows: super::csv::DEFAULT_BATCH_ROWS,
            speed: None,
            max_pause: Duration::from_secs(1),
        }
    }
}

/// The lake's ticks over a date range, in `(ts, seq, symbol)` order, as
/// batches of at most [`ReplayOptions::batch_rows`] ticks.
///
/// Dates are read one at a time (a date is sorted by DataFusion, which may
/// spill), so memory is bounded by a day of ticks, not the range. Each
/// batch's position is [`Position::Replay`] naming its last tick.
pub struct ReplaySource {
    ctx: SessionContext,
    origin: String,
    dates: VecDeque<String>,
    stream: Option<SendableRecordBatchStream>,
    pending: Option<(RecordBatch, usize)>,
    batch_rows: usize,
    pacer: Option<Pacer>,
    ticks: u64,
}

impl ReplaySource {
    /// Opens a replay of `root`'s `ticks` table.
    pub async fn open(root: &LakeRoot, options: ReplayOptions) -> Result<Self, SourceError> {
        let origin = format!("{root}/ticks");
        let ctx = session_context(root)
            .await
            .map_err(|source| SourceError::Lake {
                origin: origin.clone(),
                source,
            })?;
        let pacer = match options.speed {
            None => None,
            Some(s) => {
                Some(
                    Pacer::new(s, options.max_pause).ok_or_else(|| SourceError::Format {
                        origin: origin.clone(),
                        reason: format!("replay speed {s} is not a positive number"),
                    })?,
                )
            }
        };
        let mut sql = String::from("SELECT DISTINCT date FROM ticks WHERE true");
        if let Some(f) = options.from {
            sql.push_str(&format!(" AND date >= '{f}'"));
        }
        if let Some(t) = options.to {
            sql.push_str(&format!(" AND date <= '{t}'"));
        }
        sql.push_str(" ORDER BY date");
        let mut dates = VecDeque::new();
        for b in query(&ctx, &origin, &sql).await? {
            let c = b.column(0);
            let s = arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8)
                .map_err(|e| lake_err(&origin, e.into()))?;
            for d in s.as_string::<i32>().iter().flatten() {
                dates.push_back(d.to_owned());
            }
        }
        Ok(Self {
            ctx,
            origin,
            dates,
            stream: None,
            pending: None,
            batch_rows: options.batch_rows.max(1),
            pacer,
            ticks: 0,
        })
    }

    /// Dates not yet started.
    pub fn dates_left(&self) -> usize {
        self.dates.len()
    }

    /// Ticks returned so far.
    pub fn ticks_replayed(&self) -> u64 {
        self.ticks
    }

    async fn open_date(&mut self, date: &str) -> Result<(), SourceError> {
        let columns: Vec<String> = tick_schema()
            .fields()
            .iter()
            .map(|f| format!("\"{}\"", f.name()))
            .collect();
        let sql = format!(
            "SELECT {} FROM ticks WHERE date = '{date}' ORDER BY {}, {}, {}",
            columns.join(", "),
            col::TS,
            col::SEQ,
            col::SYMBOL
        );
        let df = self
            .ctx
            .sql(&sql)
            .await
            .map_err(|e| lake_err(&self.origin, e))?;
        self.stream = Some(
            df.execute_stream()
                .await
                .map_err(|e| lake_err(&self.origin, e))?,
        );
        Ok(())
    }

    /// Cuts the next batch out of the pending one, if any is left.
    fn cut(&mut self) -> Option<RecordBatch> {
        let (batch, offset) = self.pending.take()?;
        let left = batch.num_rows().saturating_sub(offset);
        if left == 0 {
            return None;
        }
        let mut len = left.min(self.batch_rows);
        if let (Some(p), Some(ts)) = (&self.pacer, ts_column(&batch)) {
            // Rows are sorted by ts: stop at the first tick past the span.
            let span_us = PACED_BATCH_SPAN.as_secs_f64() * p.speed() * 1e6;
            let limit = ts[offset].saturating_add(span_us as i64);
            len = ts[offset..offset + len]
                .partition_point(|&t| t <= limit)
                .max(1);
        }
        let out = batch.slice(offset, len);
        self.pending = Some((batch, offset + len));
        Some(out)
    }
}

fn ts_column(batch: &RecordBatch) -> Option<&[i64]> {
    let c = batch.column_by_name(col::TS)?;
    Some(c.as_primitive_opt::<TimestampMicrosecondType>()?.values())
}

fn lake_err(origin: &str, source: datafusion::error::DataFusionError) -> SourceError {
    SourceError::Lake {
        origin: origin.to_owned(),
        source: LakeError::DataFusion {
            table: "ticks".into(),
            source,
        },
    }
}

async fn query(
    ctx: &SessionContext,
    origin: &str,
    sql: &str,
) -> Result<Vec<RecordBatch>, SourceError> {
    ctx.sql(sql)
        .await
        .map_err(|e| lake_err(origin, e))?
        .collect()
        .await
        .map_err(|e| lake_err(origin, e))
}

#[async_trait::async_trait]
impl Source for ReplaySource {
    async fn next_batch(&mut self) -> Result<Option<SourceBatch>, SourceError> {
        loop {
            if let Some(ticks) = self.cut() {
                let last = ticks.num_rows() - 1;
                let ts = ts_column(&ticks).map_or(0, |t| t[last]);
                let seq = ticks
                    .column_by_name(col::SEQ)
                    .and_then(|c| c.as_primitive_opt::<arrow::datatypes::UInt32Type>())
                    .map_or(0, |c| c.value(last));
                let symbol = ticks
                    .column_by_name(col::SYMBOL)
                    .and_then(|c| c.as_string_opt::<i32>())
                    .map_or(String::new(), |c| c.value(last).to_owned());
                if let Some(p) = &mut self.pacer {
                    // Release a batch when its last tick has happened.
                    p.wait(ts).await;
                }
                self.ticks += ticks.num_rows() as u64;
                return Ok(Some(SourceBatch {
                    amendments: None,
                    ticks,
                    labels: None,
                    rejects: Vec::new(),
                    stream: None,
                    position: Position::Replay {
                        ts_us: ts,
                        seq,
                        symbol,
                        ticks: self.ticks,
                    },
                }));
            }
            if let Some(stream) = &mut self.stream {
                match stream.next().await {
                    Some(Ok(b)) => {
                        // The lake's columns may come back nullable; give the
                        // batch the tick schema itself.
                        let b = RecordBatch::try_new(tick_schema(), b.columns().to_vec())
                            .map_err(|e| lake_err(&self.origin, e.into()))?;
                        self.pending = Some((b, 0));
                    }
                    Some(Err(e)) => return Err(lake_err(&self.origin, e)),
                    None => self.stream = None,
                }
                continue;
            }
            match self.dates.pop_front() {
                Some(date) => self.open_date(&date).await?,
                None => return Ok(None),
            }
        }
    }
}

/// Ticks already in memory, in arrival order, handed out in batches of at
/// most `batch_rows` as one partition (0) with offsets counting from 0: the
/// in-process replay of the demo and `bench --stream`, which drive the
/// streaming executor without a broker. Optional history comes first, as
/// one warm-up batch (restores state, never emitted). A replay has no idle
/// time: it never waits, so groups and market buckets close by later
/// ticks and at the end, as in backfill.
pub struct BatchReplay {
    history: Option<RecordBatch>,
    ticks: RecordBatch,
    next: usize,
    batch_rows: usize,
    /// Offset of the first tick of `ticks` (after the history).
    base: i64,
    progress: Option<indicatif::ProgressBar>,
}

impl BatchReplay {
    /// A replay of `ticks` ([`tick_schema`]) in batches of `batch_rows`.
    pub fn new(ticks: RecordBatch, batch_rows: usize) -> Self {
        BatchReplay {
            history: None,
            ticks,
            next: 0,
            batch_rows: batch_rows.max(1),
            base: 0,
            progress: None,
        }
    }

    /// Replays `history` first, as warm-up.
    pub fn with_history(mut self, history: RecordBatch) -> Self {
        self.base = history.num_rows() as i64;
        self.history = Some(history);
        self
    }

    /// Advances `bar` by each batch's ticks (not the history's).
    pub fn with_progress(mut self, bar: indicatif::ProgressBar) -> Self {
        self.progress = Some(bar);
        self
    }

    /// Ticks to replay after the history.
    pub fn len(&self) -> usize {
        self.ticks.num_rows()
    }

    /// Whether there is nothing to replay after the history.
    pub fn is_empty(&self) -> bool {
        self.ticks.num_rows() == 0
    }

    fn batch(ticks: RecordBatch, first: i64, warm: bool) -> SourceBatch {
        let n = ticks.num_rows();
        let stream = super::StreamBatch {
            messages: n as u64,
            partitions: vec![0; n],
            offsets: (first..first + n as i64).collect(),
            warm: vec![warm; n],
            ..super::StreamBatch::empty()
        };
        SourceBatch {
            ticks,
            labels: None,
            amendments: None,
            rejects: Vec::new(),
            stream: Some(stream),
            position: Position::Partitions {
                topic: "replay".into(),
                next: std::collections::BTreeMap::from([(0, first + n as i64)]),
            },
        }
    }
}

#[async_trait::async_trait]
impl Source for BatchReplay {
    async fn next_batch(&mut self) -> Result<Option<SourceBatch>, SourceError> {
        if let Some(history) = self.history.take() {
            return Ok(Some(Self::batch(history, 0, true)));
        }
        let total = self.ticks.num_rows();
        if self.next >= total {
            return Ok(None);
        }
        let start = self.next;
        let len = self.batch_rows.min(total - start);
        self.next += len;
        if let Some(bar) = &self.progress {
            bar.inc(len as u64);
        }
        Ok(Some(Self::batch(
            self.ticks.slice(start, len),
            self.base + start as i64,
            false,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticks(n: usize) -> RecordBatch {
        let mut b = crate::tick::TickBuilder::new("test");
        for i in 0..n {
            b.push(&crate::tick::TickRecord::trade(
                1_704_205_800_000_000 + i as i64,
                "A",
                10.0,
                1.0,
            ))
            .unwrap();
        }
        b.finish()
    }

    #[tokio::test]
    async fn history_first_then_batches_with_running_offsets() {
        let mut r = BatchReplay::new(ticks(5), 2).with_history(ticks(3));
        let mut seen = Vec::new();
        while let Some(b) = r.next_batch().await.unwrap() {
            let s = b.stream.unwrap();
            seen.push((s.offsets.clone(), s.warm[0]));
            assert_eq!(s.partitions.len(), b.ticks.num_rows());
        }
        assert_eq!(
            seen,
            vec![
                (vec![0, 1, 2], true),
                (vec![3, 4], false),
                (vec![5, 6], false),
                (vec![7], false)
            ]
        );
    }
}
