//! The micro-batch executor: ticks in, per-symbol history kept to the
//! catalog's lookback, features computed over history ∪ batch by the same
//! query as backfill, scored by the same code as `score`.
//!
//! **Emission.** Ticks sharing `(symbol, ts)` are peers in `RANGE` frames:
//! they see each other, so a group is emitted only once complete — when a
//! later tick of the symbol arrives, after the symbol has been idle for
//! [`ExecutorConfig::idle_timeout`], or at the end of the stream. A tick
//! older than its symbol's newest tick, or with the timestamp of a group
//! already emitted, is **late**: it is refused with reason `late` (the
//! caller sends it to the dead letters) and changes nothing.
//!
//! **Market context.** When a feature file reads the `market` table, a
//! tick is emitted only once its one-minute bucket is closed and its row
//! known, made from as many ticks of the symbol as are held. Rows come from
//! an in-process closer over this executor's own ticks (exact when it
//! reads every partition) or from a market-context stage
//! ([`Executor::with_external_market`], [`Executor::push_market`]). A tick
//! of a bucket whose row is complete without it is refused as late.
//!
//! **Positions.** Every tick carries its source partition and offset. After
//! each step the executor reports, per partition, the next offset to resume
//! from (the first tick not yet emitted) and the warm-up offset (the first
//! tick still held as history): replaying the partition from the warm-up
//! offset to the next offset without emitting ([`Executor::warm_up`])
//! restores exactly this state.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, AsArray, BooleanArray, Int32Array, Int64Array, RecordBatch};
use arrow::compute::{concat_batches, filter_record_batch, lexsort_to_indices, take, SortColumn};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimestampMicrosecondType};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use crate::features::market::bucket_of;
use crate::features::{Catalog, Lookback};
use crate::lake::schema_session;
use crate::model::score::score_batch;
use crate::model::{Detector, TrainError};
use crate::stream::market::{bucket_rows, BucketCloser, CloserConfig};
use crate::tick::{col, tick_schema};

/// Column of a held tick's source partition.
const PARTITION: &str = "_partition";
/// Column of a held tick's source offset.
const OFFSET: &str = "_offset";
/// Column of a held tick's arrival (wall clock, µs since the epoch).
const ARRIVED: &str = "_arrived";
/// Columns the executor adds after the tick columns.
const EXTRA: usize = 3;

/// Tuning of an [`Executor`].
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// A symbol idle this long has its last `(symbol, ts)` group emitted.
    pub idle_timeout: Duration,
    /// SHAP contributions kept per model alert.
    pub top_shap: usize,
    /// How far behind its symbol's newest tick a tick may arrive and still
    /// be computed in order (the reorder buffer): a group is emitted once a
    /// tick more than this past it has arrived. Zero: a tick older than its
    /// symbol's newest is late.
    pub allowed_lateness: Duration,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            idle_timeout: Duration::from_secs(2),
            top_shap: 3,
            allowed_lateness: Duration::ZERO,
        }
    }
}

/// Ticks handed to the executor, with where each came from.
#[derive(Debug, Clone)]
pub struct Input {
    /// Validated ticks ([`tick_schema`]), in arrival order.
    pub ticks: RecordBatch,
    /// Source partition of each tick.
    pub partitions: Int32Array,
    /// Source offset of each tick.
    pub offsets: Int64Array,
    /// When each tick arrived (wall clock, µs since the epoch), for the
    /// end-to-end latency; `None`: now.
    pub arrived_us: Option<Int64Array>,
}

/// A tick refused as late.
#[derive(Debug, Clone, PartialEq)]
pub struct LateTick {
    pub symbol: String,
    pub ts_us: i64,
    pub partition: i32,
    pub offset: i64,
    /// Why, in words.
    pub detail: String,
}

/// Where a partition stands after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionPosition {
    /// First offset not fully processed: resume here.
    pub next_offset: i64,
    /// First offset still held as history: warm up from here.
    pub warmup_offset: i64,
}

/// What one step emitted.
#[derive(Debug, Default)]
pub struct Step {
    /// Feature rows of the emitted ticks (the feature snapshot's schema), in
    /// key order.
    pub features: Option<RecordBatch>,
    /// Per detector, the `scores` rows of the emitted ticks.
    pub scores: Vec<RecordBatch>,
    /// Source partition and offset of each emitted tick, aligned with
    /// `features`.
    pub sources: Vec<(i32, i64)>,
    /// Arrival of each emitted tick (µs since the epoch), aligned with
    /// `features`.
    pub arrived_us: Vec<i64>,
    /// Ticks refused as late.
    pub late: Vec<LateTick>,
    /// Positions of every partition seen, after this step.
    pub positions: BTreeMap<i32, PartitionPosition>,
}

impl Step {
    /// Ticks emitted.
    pub fn emitted(&self) -> usize {
        self.features.as_ref().map_or(0, RecordBatch::num_rows)
    }
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("computing features: {0}")]
    Features(#[from] datafusion::error::DataFusionError),
    #[error("scoring: {0}")]
    Score(#[from] TrainError),
    #[error("arranging ticks: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("intraday profiles: {0}")]
    Profiles(#[from] crate::features::profiles::ProfileError),
}

#[derive(Debug, Default, Clone)]
struct Book {
    /// Newest `ts` seen.
    newest: i64,
    /// Newest `ts` emitted.
    emitted: Option<i64>,
    /// When the newest tick arrived, on the executor's clock (see
    /// [`Executor::set_clock`]).
    arrived: Option<Duration>,
    /// The source partition the symbol comes from (keyed topics put a
    /// symbol in one partition).
    partition: i32,
    /// Ticks admitted per market bucket (start, µs), when the catalog reads
    /// the market: a bucket's ticks are final once its market row counts
    /// as many.
    buckets: BTreeMap<i64, i64>,
}

/// What this executor has read of a source partition, for forgetting
/// market rows no tick can need any more.
#[derive(Debug, Clone, Copy)]
struct Mark {
    newest: i64,
    arrived: Duration,
    /// Read to its end (nothing came since).
    caught_up: bool,
}

/// The market context of an executor whose catalog reads `market`.
#[derive(Debug)]
struct MarketContext {
    /// The in-process bucket closer; `None` when rows come from a
    /// market-context stage ([`Executor::push_market`]).
    closer: Option<BucketCloser>,
    /// Market rows (with their `date` column) per bucket.
    rows: BTreeMap<i64, RecordBatch>,
    /// Per symbol and bucket, the ticks its market row was made from.
    counts: HashMap<String, BTreeMap<i64, i64>>,
    /// Every bucket before this (µs) is closed.
    closed_until: i64,
    /// Rows of buckets before this (µs) were forgotten: nothing is known of
    /// them until a market-context stage's rows are read again.
    forgotten_before: i64,
    /// Betas per day (days since the epoch), with their `date` column.
    betas: BTreeMap<i64, RecordBatch>,
    /// Per partition, the newest `ts` and when it arrived: what this
    /// executor can still receive, for forgetting old rows.
    marks: BTreeMap<i32, Mark>,
    /// The stage's topic is being read from its start (at first, or again
    /// for new partitions): nothing is forgotten until its end is reached.
    rereading: bool,
}

/// Microseconds in a day.
const DAY_US: i64 = 86_400_000_000;

/// Per symbol of `held` (sorted by symbol, ts, seq), the newest `ts` whose
/// ticks all have `delay` later ticks held, the `delay`-th of them settled
/// (`settled(symbol, its ts)`); `None` when no tick of the symbol is yet.
/// A `ts` shared by several ticks counts only when its last tick is
/// confirmed: emission cuts by `ts`, never inside a group.
fn confirmed_until<'a>(
    syms: &'a arrow::array::StringArray,
    ts: &arrow::array::TimestampMicrosecondArray,
    delay: usize,
    settled: impl Fn(&str, i64) -> bool,
) -> HashMap<&'a str, Option<i64>> {
    let n = arrow::array::Array::len(syms);
    let mut out = HashMap::new();
    let mut a = 0;
    while a < n {
        let sym = syms.value(a);
        let mut b = a;
        while b < n && syms.value(b) == sym {
            b += 1;
        }
        // The last tick with `delay` followers whose last one is settled;
        // settledness only grows towards older ticks, so scan backwards.
        let mut ready = None;
        if b - a > delay {
            let mut c = b - 1 - delay;
            loop {
                if settled(sym, ts.value(c + delay)) {
                    ready = Some(c);
                    break;
                }
                if c == a {
                    break;
                }
                c -= 1;
            }
        }
        let to = ready.and_then(|r| {
            let t = ts.value(r);
            if r + 1 < b && ts.value(r + 1) == t {
                (a..r).rev().map(|j| ts.value(j)).find(|&x| x < t)
            } else {
                Some(t)
            }
        });
        out.insert(sym, to);
        a = b;
    }
    out
}

/// The streaming executor (see the module documentation).
pub struct Executor {
    catalog: Catalog,
    detectors: Vec<Detector>,
    config: ExecutorConfig,
    lookback: Lookback,
    symbols: RecordBatch,
    held_schema: SchemaRef,
    /// Held ticks (history and pending), sorted by symbol, ts, seq.
    held: RecordBatch,
    books: HashMap<String, Book>,
    /// Last offset seen per partition.
    seen: BTreeMap<i32, i64>,
    /// The clock idleness is measured on: set by the caller, or wall time
    /// since `origin`.
    clock: Option<Duration>,
    origin: Instant,
    /// Where the intraday `profiles` come from, if anywhere.
    profiles_lake: Option<crate::lake::LakeRoot>,
    /// Profiles of the held ticks' dates (days since the epoch), each
    /// loaded when its date's first tick is held.
    profiles: BTreeMap<i64, RecordBatch>,
    /// Market context, when a feature file reads the `market` table.
    market: Option<MarketContext>,
}

impl Executor {
    /// An executor computing `catalog`'s features and scoring them with
    /// `detectors`; `symbols` is the lake's `symbols` table (exchange zones)
    /// with its `date` column, or `None` for none.
    pub fn new(
        catalog: Catalog,
        detectors: Vec<Detector>,
        symbols: Option<RecordBatch>,
        config: ExecutorConfig,
    ) -> Result<Self, ExecutorError> {
        let mut fields: Vec<Field> = tick_schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(PARTITION, DataType::Int32, false));
        fields.push(Field::new(OFFSET, DataType::Int64, false));
        fields.push(Field::new(ARRIVED, DataType::Int64, false));
        let held_schema = Arc::new(Schema::new(fields));
        let symbols = match symbols {
            Some(s) => s,
            None => {
                let mut fields: Vec<Field> = crate::symbols::symbol_schema()
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone())
                    .collect();
                fields.push(Field::new("date", DataType::Utf8, false));
                RecordBatch::new_empty(Arc::new(Schema::new(fields)))
            }
        };
        let market = catalog.uses_market().then(|| MarketContext {
            closer: Some(BucketCloser::new(
                Arc::clone(&held_schema),
                CloserConfig {
                    idle_timeout: config.idle_timeout,
                    allowed_lateness: config.allowed_lateness,
                },
            )),
            rows: BTreeMap::new(),
            counts: HashMap::new(),
            closed_until: i64::MIN,
            forgotten_before: i64::MIN,
            betas: BTreeMap::new(),
            marks: BTreeMap::new(),
            rereading: false,
        });
        Ok(Executor {
            market,
            lookback: catalog.lookback(),
            catalog,
            detectors,
            config,
            symbols,
            held: RecordBatch::new_empty(Arc::clone(&held_schema)),
            held_schema,
            books: HashMap::new(),
            seen: BTreeMap::new(),
            clock: None,
            origin: Instant::now(),
            profiles_lake: None,
            profiles: BTreeMap::new(),
        })
    }

    /// Joins the intraday profiles of `root` (the `profiles` table the
    /// feature files may read): each date's are loaded when its first tick
    /// is held, or made from the lake's earlier ticks when not stored yet
    /// (then logged: a daily `stockanomaly profiles` run stores them).
    pub fn with_profiles(mut self, root: crate::lake::LakeRoot) -> Self {
        self.profiles_lake = Some(root);
        self
    }

    /// Takes the `market` rows from a market-context stage
    /// ([`Executor::push_market`]) instead of closing buckets itself. Only
    /// the stage sees every partition: an executor closing buckets over
    /// some partitions' ticks computes the market of those symbols alone.
    pub fn with_external_market(mut self) -> Self {
        if let Some(m) = &mut self.market {
            m.closer = None;
            m.rereading = true;
        }
        self
    }

    /// The stage's topic is read again from its start (new partitions may
    /// need buckets already forgotten): nothing is forgotten until
    /// [`Executor::market_caught_up`].
    pub fn market_rewound(&mut self) {
        if let Some(m) = &mut self.market {
            m.rereading = true;
        }
    }

    /// Tells the in-process bucket closer which partitions this executor
    /// reads (its assignment): one that has sent nothing yet holds market
    /// buckets open until it has been idle for the idle timeout.
    pub fn expect_partitions(&mut self, partitions: &[i32]) {
        let now = self.now();
        let Some(m) = &mut self.market else {
            return;
        };
        for &p in partitions {
            m.marks.entry(p).or_insert(Mark {
                newest: i64::MIN,
                arrived: now,
                caught_up: false,
            });
        }
        if let Some(c) = &mut m.closer {
            c.expect(partitions, now);
        }
    }

    /// Counts a source partition as idle for market buckets only once
    /// [`Executor::partition_caught_up`] said its end was reached (Kafka,
    /// whose consumers do not interleave partitions fairly).
    pub fn idle_needs_end(mut self) -> Self {
        if let Some(c) = self.market.as_mut().and_then(|m| m.closer.as_mut()) {
            c.idle_needs_end();
        }
        self
    }

    /// The consumer has read everything `partition` holds now.
    pub fn partition_caught_up(&mut self, partition: i32) {
        let now = self.now();
        let Some(m) = &mut self.market else {
            return;
        };
        if let Some(mark) = m.marks.get_mut(&partition) {
            mark.caught_up = true;
        }
        if let Some(c) = &mut m.closer {
            c.caught_up(partition, now);
        }
    }

    /// The market-context stage's topic has been read to its end: every
    /// bucket's rows are known again (after a rewind for new partitions).
    pub fn market_caught_up(&mut self) {
        if let Some(m) = &mut self.market {
            if m.rereading {
                m.rereading = false;
                m.forgotten_before = i64::MIN;
            }
        }
    }

    /// Partitions counted idle for market buckets because their end was
    /// reached: the caller checks them against the broker and calls
    /// [`Executor::partition_behind`] for those that received more since.
    pub fn market_idle_at_end(&self) -> Vec<i32> {
        let now = self.now();
        let Some(m) = &self.market else {
            return Vec::new();
        };
        let mut out: Vec<i32> = m
            .marks
            .iter()
            .filter(|(_, k)| {
                k.caught_up && now.saturating_sub(k.arrived) >= self.config.idle_timeout
            })
            .map(|(&p, _)| p)
            .collect();
        if let Some(c) = &m.closer {
            out.extend(c.idle_at_end(now));
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The broker holds messages of `partition` this executor has not read.
    pub fn partition_behind(&mut self, partition: i32) {
        let Some(m) = &mut self.market else {
            return;
        };
        if let Some(k) = m.marks.get_mut(&partition) {
            k.caught_up = false;
        }
        if let Some(c) = &mut m.closer {
            c.not_caught_up(partition);
        }
    }

    /// Whether the feature set needs the market context.
    pub fn uses_market(&self) -> bool {
        self.market.is_some()
    }

    /// Every bucket before this (µs) has its market rows; `None` without
    /// market context or before the first closed bucket.
    pub fn market_closed_until(&self) -> Option<i64> {
        self.market
            .as_ref()
            .map(|m| m.closed_until)
            .filter(|&c| c > i64::MIN)
    }

    /// Adds `market` rows (the `market` table's schema, without `date`) of
    /// buckets closed by a market-context stage, every bucket before
    /// `closed_until` being closed. Rows of a bucket already known are
    /// ignored (a stage replaying after a restart sends them again).
    pub fn push_market(
        &mut self,
        rows: &RecordBatch,
        closed_until: i64,
    ) -> Result<(), ExecutorError> {
        let Some(m) = &mut self.market else {
            return Ok(());
        };
        m.add_rows(rows, closed_until)
    }

    /// Loads the profiles of the held ticks' dates not loaded yet and
    /// forgets those of dates no longer held.
    async fn ensure_profiles(&mut self) -> Result<(), ExecutorError> {
        let Some(root) = &self.profiles_lake else {
            return Ok(());
        };
        let ts = self
            .held
            .column(0)
            .as_primitive::<TimestampMicrosecondType>();
        let mut days = std::collections::BTreeSet::new();
        // Held ticks are sorted by symbol, then time: each symbol's run
        // spans few days, so consecutive duplicates are skipped cheaply.
        let mut last = None;
        for t in ts.values().iter() {
            let d = t.div_euclid(DAY_US);
            if last != Some(d) {
                days.insert(d);
                last = Some(d);
            }
        }
        self.profiles.retain(|d, _| days.contains(d));
        for d in days {
            if self.profiles.contains_key(&d) {
                continue;
            }
            let Some(date) =
                chrono::DateTime::from_timestamp(d * 86_400, 0).map(|t| t.date_naive())
            else {
                continue;
            };
            let (batch, stored) = crate::features::profiles::profiles_for(root, date).await?;
            if stored {
                tracing::info!(%date, rows = batch.num_rows(), "Intraday profiles loaded.");
            } else {
                tracing::warn!(
                    %date,
                    rows = batch.num_rows(),
                    "No stored intraday profiles for the day: made from the lake's ticks \
                     (run `stockanomaly profiles` after each close to store them)."
                );
            }
            self.profiles.insert(d, batch);
        }
        if let Some(m) = &mut self.market {
            m.betas.retain(|d, _| self.profiles.contains_key(d));
            for &d in self.profiles.keys() {
                if m.betas.contains_key(&d) {
                    continue;
                }
                let Some(date) =
                    chrono::DateTime::from_timestamp(d * 86_400, 0).map(|t| t.date_naive())
                else {
                    continue;
                };
                let (batch, stored) =
                    crate::features::market::betas_for(root, date, self.catalog.market_sql())
                        .await?;
                if !stored {
                    tracing::warn!(
                        %date,
                        rows = batch.num_rows(),
                        "No stored betas for the day: made from the lake \
                         (run `stockanomaly profiles` after each close to store them)."
                    );
                }
                m.betas.insert(d, batch);
            }
        }
        Ok(())
    }

    /// The detectors.
    pub fn detectors(&self) -> &[Detector] {
        &self.detectors
    }

    /// The feature catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Sets the clock the idle timeout is measured on. A consumer passes the
    /// time it has spent **waiting for input**, so that its own processing
    /// (a slow batch, an outage) never makes a symbol look idle and closes a
    /// group whose next tick is already waiting to be read. Without it, the
    /// clock is wall time.
    pub fn set_clock(&mut self, now: Duration) {
        self.clock = Some(now);
    }

    fn now(&self) -> Duration {
        self.clock.unwrap_or_else(|| self.origin.elapsed())
    }

    /// Ticks held (history and pending).
    pub fn held(&self) -> usize {
        self.held.num_rows()
    }

    /// Ticks held and not yet emitted.
    pub fn pending(&self) -> usize {
        let syms = self.held.column(1).as_string::<i32>();
        let ts = self
            .held
            .column(0)
            .as_primitive::<TimestampMicrosecondType>();
        (0..self.held.num_rows())
            .filter(|&i| {
                self.books
                    .get(syms.value(i))
                    .is_none_or(|b| b.emitted.is_none_or(|e| ts.value(i) > e))
            })
            .count()
    }

    /// Adds ticks and emits every group now complete.
    pub async fn step(&mut self, input: Input) -> Result<Step, ExecutorError> {
        let late = self.admit(input, true)?;
        let mut step = self.emit(false).await?;
        step.late = late;
        Ok(step)
    }

    /// Emits the groups of symbols idle for the configured time (or of
    /// every symbol when `all`: the end of a stream).
    pub async fn flush(&mut self, all: bool) -> Result<Step, ExecutorError> {
        self.emit(all).await
    }

    /// Replays already-processed ticks into the state without emitting:
    /// after a restart or a new partition assignment, the ticks from the
    /// warm-up offset to the next offset. They are taken as emitted.
    pub fn warm_up(&mut self, input: Input) -> Result<Vec<LateTick>, ExecutorError> {
        // Only the replayed symbols: others may be live with groups pending
        // (another partition of this consumer), which must still be emitted.
        let replayed: std::collections::HashSet<String> = input
            .ticks
            .column(1)
            .as_string::<i32>()
            .iter()
            .flatten()
            .map(str::to_owned)
            .collect();
        let late = self.admit(input, false)?;
        for s in &replayed {
            if let Some(book) = self.books.get_mut(s) {
                book.emitted = Some(book.newest);
            }
        }
        self.prune()?;
        Ok(late)
    }

    /// Accounts for a message that never became a tick (undecodable or
    /// invalid: the caller dead-letters it), so positions move past it.
    pub fn observe(&mut self, partition: i32, offset: i64) {
        let seen = self.seen.entry(partition).or_insert(offset);
        *seen = (*seen).max(offset);
    }

    /// Drops everything held for `partitions` (revoked from this consumer):
    /// their ticks, their symbols' books and their positions. Returns the
    /// symbols dropped, so the caller can forget their `seq` numbering too.
    /// Whoever takes the partitions over warms up from the stored offsets.
    pub fn forget_partitions(&mut self, partitions: &[i32]) -> Result<Vec<String>, ExecutorError> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let (parts, _, _) = sources_of(&self.held);
        let keep: BooleanArray = parts
            .values()
            .iter()
            .map(|p| Some(!partitions.contains(p)))
            .collect();
        self.held = filter_record_batch(&self.held, &keep)?;
        let dropped: Vec<String> = self
            .books
            .iter()
            .filter(|(_, b)| partitions.contains(&b.partition))
            .map(|(s, _)| s.clone())
            .collect();
        for s in &dropped {
            self.books.remove(s);
        }
        for p in partitions {
            self.seen.remove(p);
        }
        if let Some(m) = &mut self.market {
            for p in partitions {
                m.marks.remove(p);
            }
            if let Some(c) = &mut m.closer {
                c.forget_partitions(partitions);
            }
        }
        Ok(dropped)
    }

    /// Positions of every partition seen.
    pub fn positions(&self) -> BTreeMap<i32, PartitionPosition> {
        let (parts, offs, _) = sources_of(&self.held);
        let syms = self.held.column(1).as_string::<i32>();
        let ts = self
            .held
            .column(0)
            .as_primitive::<TimestampMicrosecondType>();
        let mut out: BTreeMap<i32, PartitionPosition> = self
            .seen
            .iter()
            .map(|(&p, &last)| {
                (
                    p,
                    PartitionPosition {
                        next_offset: last + 1,
                        warmup_offset: last + 1,
                    },
                )
            })
            .collect();
        for i in 0..self.held.num_rows() {
            let Some(pos) = out.get_mut(&parts.value(i)) else {
                continue;
            };
            let o = offs.value(i);
            pos.warmup_offset = pos.warmup_offset.min(o);
            let pending = self
                .books
                .get(syms.value(i))
                .is_none_or(|b| b.emitted.is_none_or(|e| ts.value(i) > e));
            if pending {
                pos.next_offset = pos.next_offset.min(o);
            }
        }
        out
    }

    /// Appends `input`'s in-order ticks to the held ones; returns the late.
    fn admit(&mut self, input: Input, timed: bool) -> Result<Vec<LateTick>, ExecutorError> {
        let n = input.ticks.num_rows();
        let syms = input.ticks.column(1).as_string::<i32>();
        let ts = input
            .ticks
            .column(0)
            .as_primitive::<TimestampMicrosecondType>();
        let now = self.now();
        let lateness = duration_us(self.config.allowed_lateness);
        let mut keep = Vec::with_capacity(n);
        let mut late = Vec::new();
        for i in 0..n {
            let (p, o) = (input.partitions.value(i), input.offsets.value(i));
            let seen = self.seen.entry(p).or_insert(o);
            *seen = (*seen).max(o);
            let sym = syms.value(i);
            let t = ts.value(i);
            let book = match self.books.get_mut(sym) {
                Some(b) => b,
                None => self.books.entry(sym.to_owned()).or_insert(Book {
                    newest: t,
                    emitted: None,
                    arrived: None,
                    partition: p,
                    buckets: BTreeMap::new(),
                }),
            };
            let bucket = bucket_of(t);
            let refused = if t < book.newest.saturating_sub(lateness) {
                Some(if lateness == 0 {
                    format!(
                        "ts {t} is before its symbol's newest tick ({})",
                        book.newest
                    )
                } else {
                    format!(
                        "ts {t} is more than the allowed lateness ({lateness} µs) before its \
                         symbol's newest tick ({})",
                        book.newest
                    )
                })
            } else if book.emitted.is_some_and(|e| t <= e) {
                Some(format!(
                    "ts {t} belongs to a group already emitted (idle timeout)"
                ))
            } else if let Some(m) = &self.market {
                let have = book.buckets.get(&bucket).copied().unwrap_or(0);
                match m.counts.get(sym).and_then(|c| c.get(&bucket)) {
                    Some(&n) if have >= n => Some(format!(
                        "ts {t} arrived after its market bucket closed with {n} ticks of the symbol"
                    )),
                    None if bucket < m.closed_until && m.knows(bucket) => Some(format!(
                        "ts {t} arrived after its market bucket closed without the symbol"
                    )),
                    _ => None,
                }
            } else {
                None
            };
            match refused {
                Some(detail) => {
                    late.push(LateTick {
                        symbol: sym.to_owned(),
                        ts_us: t,
                        partition: p,
                        offset: o,
                        detail,
                    });
                    keep.push(false);
                }
                None => {
                    book.newest = book.newest.max(t);
                    book.partition = p;
                    if timed {
                        book.arrived = Some(now);
                    }
                    if let Some(m) = &mut self.market {
                        *book.buckets.entry(bucket).or_insert(0) += 1;
                        let mark = m.marks.entry(p).or_insert(Mark {
                            newest: t,
                            arrived: now,
                            caught_up: false,
                        });
                        mark.newest = mark.newest.max(t);
                        mark.arrived = now;
                        mark.caught_up = false;
                    }
                    keep.push(true);
                }
            }
        }
        let arrived = match input.arrived_us {
            Some(a) => a,
            None => Int64Array::from_value(crate::stream::now_us(), n),
        };
        let mut columns: Vec<ArrayRef> = input.ticks.columns().to_vec();
        columns.push(Arc::new(input.partitions));
        columns.push(Arc::new(input.offsets));
        columns.push(Arc::new(arrived));
        let batch = RecordBatch::try_new(Arc::clone(&self.held_schema), columns)?;
        let batch = filter_record_batch(&batch, &BooleanArray::from(keep))?;
        if let Some(closer) = self.market.as_mut().and_then(|m| m.closer.as_mut()) {
            // The executor refused the ticks of closed buckets already.
            let parts = batch
                .column(batch.num_columns() - EXTRA)
                .as_primitive::<arrow::datatypes::Int32Type>()
                .clone();
            closer.admit(&batch, &parts, now)?;
        }
        if batch.num_rows() > 0 {
            let all = concat_batches(&self.held_schema, [&self.held, &batch])?;
            self.held = sort_by_key(&all)?;
        }
        Ok(late)
    }

    /// Emits complete groups (all pending groups of idle symbols, or of
    /// every symbol when `all`), then prunes history.
    async fn emit(&mut self, all: bool) -> Result<Step, ExecutorError> {
        self.ensure_profiles().await?;
        self.close_market_buckets(all).await?;
        let now = self.now();
        let lateness = duration_us(self.config.allowed_lateness);
        // Per symbol: emit ticks with emitted < ts <= cutoff.
        let mut cutoffs: HashMap<&str, (Option<i64>, i64)> = HashMap::new();
        let syms = self.held.column(1).as_string::<i32>();
        let ts = self
            .held
            .column(0)
            .as_primitive::<TimestampMicrosecondType>();
        let idle_timeout = self.config.idle_timeout;
        let is_idle = |book: &Book| {
            book.arrived
                .is_none_or(|a| now.saturating_sub(a) >= idle_timeout)
        };
        // Delayed confirmation: a tick is final once `delay` later ticks of
        // its symbol are held and settled (no tick can still arrive before
        // them); at the end of the stream (`all`) what is held is all there
        // is, as at the end of the lake in backfill.
        let delay = usize::try_from(self.catalog.delay()).unwrap_or(usize::MAX);
        let confirmed = if delay > 0 && !all {
            Some(confirmed_until(syms, ts, delay, |sym, t| {
                self.books
                    .get(sym)
                    .is_some_and(|b| is_idle(b) || t < b.newest.saturating_sub(lateness))
            }))
        } else {
            None
        };
        // Market context: a tick is final once its bucket's market row is
        // known and made from every tick of the symbol held in the bucket.
        let market_until: Option<HashMap<&str, i64>> = self.market.as_ref().map(|m| {
            self.books
                .iter()
                .map(|(s, b)| (s.as_str(), m.ready_until(s, b)))
                .collect()
        });
        for i in 0..self.held.num_rows() {
            let sym = syms.value(i);
            let t = ts.value(i);
            let Some(book) = self.books.get(sym) else {
                continue;
            };
            if book.emitted.is_some_and(|e| t <= e) {
                continue;
            }
            if market_until
                .as_ref()
                .and_then(|m| m.get(sym))
                .is_some_and(|&until| t >= until)
            {
                continue;
            }
            if let Some(c) = &confirmed {
                if c.get(sym).copied().flatten().is_none_or(|to| t > to) {
                    continue;
                }
            }
            let idle = is_idle(book);
            // No tick at or before `t` can still arrive.
            let complete = t < book.newest.saturating_sub(lateness) || all || idle;
            if complete {
                let entry = cutoffs.entry(sym).or_insert((book.emitted, t));
                entry.1 = entry.1.max(t);
            }
        }
        let mut step = Step::default();
        if !cutoffs.is_empty() {
            // History ∪ pending of the symbols emitting, through the same
            // feature query as backfill.
            let mask: BooleanArray = (0..self.held.num_rows())
                .map(|i| Some(cutoffs.contains_key(syms.value(i))))
                .collect();
            let input = filter_record_batch(&self.held, &mask)?;
            let features = self.features(&input).await?;
            let fsyms = features.column(1).as_string::<i32>();
            let fts = features
                .column(0)
                .as_primitive::<TimestampMicrosecondType>();
            let emit: BooleanArray = (0..features.num_rows())
                .map(|i| {
                    let (from, to) = cutoffs[fsyms.value(i)];
                    let t = fts.value(i);
                    Some(from.is_none_or(|f| t > f) && t <= to)
                })
                .collect();
            // One feature row per held tick, both in key order: the rows
            // line up, so the same mask picks the emitted ticks' positions.
            if features.num_rows() != input.num_rows() {
                return Err(ExecutorError::Features(
                    datafusion::error::DataFusionError::Execution(format!(
                        "the feature query returned {} rows for {} ticks: a feature file \
                         drops or repeats ticks",
                        features.num_rows(),
                        input.num_rows()
                    )),
                ));
            }
            let features = filter_record_batch(&features, &emit)?;
            let picked = filter_record_batch(&input, &emit)?;
            let (parts, offs, arrived) = sources_of(&picked);
            step.sources = parts
                .values()
                .iter()
                .copied()
                .zip(offs.values().iter().copied())
                .collect();
            step.arrived_us = arrived.values().to_vec();
            let ctx = self.session_over()?;
            ctx.register_table(
                "features",
                Arc::new(MemTable::try_new(
                    features.schema(),
                    vec![vec![features.clone()]],
                )?),
            )?;
            for d in &self.detectors {
                step.scores.push(
                    score_batch(&ctx, &self.catalog, d, &features, self.config.top_shap).await?,
                );
            }
            let done: Vec<(String, i64)> = cutoffs
                .into_iter()
                .map(|(s, (_, to))| (s.to_owned(), to))
                .collect();
            for (s, to) in done {
                if let Some(b) = self.books.get_mut(&s) {
                    b.emitted = Some(to);
                    // Earlier buckets are all emitted.
                    b.buckets = b.buckets.split_off(&bucket_of(to));
                }
            }
            step.features = Some(features);
        }
        self.forget_market_rows(now);
        self.prune()?;
        step.positions = self.positions();
        Ok(step)
    }

    /// Closes the market buckets the in-process closer allows and computes
    /// their rows.
    async fn close_market_buckets(&mut self, all: bool) -> Result<(), ExecutorError> {
        let now = self.now();
        let Some(closer) = self.market.as_mut().and_then(|m| m.closer.as_mut()) else {
            return Ok(());
        };
        let Some(closed) = closer.close(now, all)? else {
            return Ok(());
        };
        let rows = if closed.ticks.num_rows() == 0 {
            RecordBatch::new_empty(crate::features::market::market_schema())
        } else {
            let profiles: Vec<RecordBatch> = self.profiles.values().cloned().collect();
            bucket_rows(
                &closed.ticks,
                &self.symbols,
                &profiles,
                self.catalog.market_sql(),
            )
            .await?
        };
        if let Some(m) = &mut self.market {
            m.add_rows(&rows, closed.closed_until)?;
        }
        Ok(())
    }

    /// Forgets market rows no held or future tick needs: buckets before
    /// both the oldest with ticks still pending and this executor's own
    /// watermark (its partitions' newest ticks, idle ones aside).
    fn forget_market_rows(&mut self, now: Duration) {
        let Some(m) = &mut self.market else {
            return;
        };
        if m.rereading {
            return;
        }
        let lateness = duration_us(self.config.allowed_lateness);
        let pending = self
            .books
            .values()
            .filter(|b| b.emitted.is_none_or(|e| e < b.newest))
            .filter_map(|b| b.buckets.keys().next().copied())
            .min();
        // A partition read to its end and silent sends nothing older; one
        // merely silent may (Kafka serves partitions unevenly).
        let watermark = m
            .marks
            .values()
            .filter(|k| !(k.caught_up && now.saturating_sub(k.arrived) >= self.config.idle_timeout))
            .map(|k| bucket_of(k.newest.saturating_sub(lateness)))
            .min();
        let bound = match (pending, watermark) {
            (Some(p), Some(w)) => p.min(w),
            (Some(p), None) => p,
            (None, Some(w)) => w,
            (None, None) => return,
        };
        m.forgotten_before = m.forgotten_before.max(bound);
        m.rows = m.rows.split_off(&bound);
        m.counts.retain(|_, c| {
            *c = c.split_off(&bound);
            !c.is_empty()
        });
    }

    /// A session with the UDFs, `symbols` and the context tables held
    /// (`ticks` is registered by whoever computes over it).
    fn session_over(&self) -> Result<SessionContext, ExecutorError> {
        let ctx = schema_session();
        ctx.deregister_table("symbols")?;
        ctx.register_table(
            "symbols",
            Arc::new(MemTable::try_new(
                self.symbols.schema(),
                vec![vec![self.symbols.clone()]],
            )?),
        )?;
        if self.profiles_lake.is_some() {
            let spec = crate::lake::TableSpec::profiles();
            let batches: Vec<RecordBatch> = self.profiles.values().cloned().collect();
            ctx.deregister_table(spec.name.as_str())?;
            ctx.register_table(
                spec.name.as_str(),
                Arc::new(MemTable::try_new(
                    crate::lake::with_partitions(&spec),
                    vec![batches],
                )?),
            )?;
        }
        if let Some(m) = &self.market {
            for (spec, batches) in [
                (
                    crate::lake::TableSpec::market(),
                    m.rows.values().cloned().collect::<Vec<_>>(),
                ),
                (
                    crate::lake::TableSpec::betas(),
                    m.betas.values().cloned().collect(),
                ),
            ] {
                ctx.deregister_table(spec.name.as_str())?;
                ctx.register_table(
                    spec.name.as_str(),
                    Arc::new(MemTable::try_new(
                        crate::lake::with_partitions(&spec),
                        vec![batches],
                    )?),
                )?;
            }
        }
        Ok(ctx)
    }

    /// The catalog's features of every tick of `held` (key order).
    async fn features(&self, held: &RecordBatch) -> Result<RecordBatch, ExecutorError> {
        // The lake's `ticks` has a `date` column; feature files may not use
        // it, but the schema must match what they were planned against.
        let ticks = with_date(&project_ticks(held)?)?;
        let ctx = self.session_over()?;
        Ok(crate::features::compute_features(&ctx, &self.catalog, &ticks).await?)
    }

    /// Drops history no future tick needs: per symbol, every tick within
    /// the lookback time of the newest emitted one is kept, and
    /// `lookback.rows` ticks before the oldest of those (or before the
    /// oldest pending tick, if older): a 30-minute window over `lag`'s
    /// output reads the tick before the window too, however many ticks the
    /// window holds.
    fn prune(&mut self) -> Result<(), ExecutorError> {
        let n = self.held.num_rows();
        if n == 0 {
            return Ok(());
        }
        let syms = self.held.column(1).as_string::<i32>();
        let ts = self
            .held
            .column(0)
            .as_primitive::<TimestampMicrosecondType>();
        let span = i64::try_from(self.lookback.time.as_micros()).unwrap_or(i64::MAX / 4);
        let rows = usize::try_from(self.lookback.rows).unwrap_or(usize::MAX);
        let mut keep = vec![true; n];
        let mut start = 0;
        while start < n {
            let sym = syms.value(start);
            let mut end = start;
            while end < n && syms.value(end) == sym {
                end += 1;
            }
            // The first tick a future emission will compute: the first
            // after the emitted groups.
            let emitted = self.books.get(sym).and_then(|b| b.emitted);
            let first_pending = (start..end)
                .find(|&i| emitted.is_none_or(|e| ts.value(i) > e))
                .unwrap_or(end);
            let horizon = emitted.map_or(i64::MIN, |e| e.saturating_sub(span));
            // Ticks are in time order within the symbol.
            let first_in_time = (start..end)
                .find(|&i| ts.value(i) >= horizon)
                .unwrap_or(end);
            // Keep `rows` ticks (one spare) before the oldest tick needed,
            // never half of a (symbol, ts) group (replaying part of one
            // would renumber its `seq`).
            let mut cut = first_pending
                .min(first_in_time)
                .saturating_sub(rows.saturating_add(1))
                .max(start);
            while cut > start && ts.value(cut - 1) == ts.value(cut) {
                cut -= 1;
            }
            keep[start..cut].fill(false);
            start = end;
        }
        if keep.iter().all(|&k| k) {
            return Ok(());
        }
        self.held = filter_record_batch(&self.held, &BooleanArray::from(keep))?;
        Ok(())
    }
}

impl MarketContext {
    /// Adds rows of closed buckets (see [`Executor::push_market`]).
    fn add_rows(&mut self, rows: &RecordBatch, closed_until: i64) -> Result<(), ExecutorError> {
        use crate::features::market::market_col;
        self.closed_until = self.closed_until.max(closed_until);
        if rows.num_rows() == 0 {
            return Ok(());
        }
        let schema = rows.schema();
        let ts = rows
            .column(schema.index_of(market_col::TS)?)
            .as_primitive::<TimestampMicrosecondType>();
        let syms = rows
            .column(schema.index_of(market_col::SYMBOL)?)
            .as_string::<i32>();
        let ticks = rows
            .column(schema.index_of(market_col::TICKS)?)
            .as_primitive::<arrow::datatypes::Int64Type>();
        // One pass: rows in bucket order, each bucket a contiguous slice
        // (a closing can hold a whole day of buckets).
        let order = arrow::compute::sort_to_indices(ts, None, None)?;
        let sorted = arrow::compute::take_record_batch(rows, &order)?;
        let sts = sorted
            .column(schema.index_of(market_col::TS)?)
            .as_primitive::<TimestampMicrosecondType>();
        let mut start = 0;
        while start < sorted.num_rows() {
            let b = sts.value(start);
            let mut end = start;
            while end < sorted.num_rows() && sts.value(end) == b {
                end += 1;
            }
            if !self.rows.contains_key(&b) {
                for &i in &order.values()[start..end] {
                    let i = i as usize;
                    self.counts
                        .entry(syms.value(i).to_owned())
                        .or_default()
                        .insert(b, ticks.value(i));
                }
                self.rows
                    .insert(b, with_date(&sorted.slice(start, end - start))?);
            }
            start = end;
        }
        Ok(())
    }

    /// Whether the absence of a row of `bucket` means something: not a
    /// bucket forgotten while rows come from a market-context stage (an
    /// in-process closer refuses such ticks itself).
    fn knows(&self, bucket: i64) -> bool {
        self.closer.is_some() || bucket >= self.forgotten_before
    }

    /// The first bucket of `book`'s symbol whose ticks are not final yet
    /// (`i64::MAX`: none): its market row unknown, or made from more ticks
    /// than are held (the rest are still on their way). The stage refuses
    /// late ticks by the same rules as the executor, so the counts meet.
    fn ready_until(&self, symbol: &str, book: &Book) -> i64 {
        let counts = self.counts.get(symbol);
        for (&b, &have) in &book.buckets {
            let closed = b < self.closed_until;
            let complete = match counts.and_then(|c| c.get(&b)) {
                // Fewer held: the rest are still on their way (a consumer
                // serves partitions unevenly), however long that takes.
                Some(&n) => have >= n,
                // A forgotten bucket waits for its rows to be read again.
                None => closed && self.knows(b),
            };
            if !complete {
                return b;
            }
        }
        i64::MAX
    }
}

/// The partition, offset and arrival columns of held ticks.
fn sources_of(
    held: &RecordBatch,
) -> (
    &arrow::array::Int32Array,
    &arrow::array::Int64Array,
    &arrow::array::Int64Array,
) {
    let n = held.num_columns() - EXTRA;
    (
        held.column(n).as_primitive::<arrow::datatypes::Int32Type>(),
        held.column(n + 1)
            .as_primitive::<arrow::datatypes::Int64Type>(),
        held.column(n + 2)
            .as_primitive::<arrow::datatypes::Int64Type>(),
    )
}

/// A duration in whole microseconds, saturating.
fn duration_us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 4)
}

/// Held ticks without the position columns.
fn project_ticks(held: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    let n = tick_schema().fields().len();
    RecordBatch::try_new(tick_schema(), held.columns()[..n].to_vec())
}

/// `batch` with a `date` column (the partition column lake sessions carry).
pub(crate) fn with_date(batch: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    let ts = batch.column(0).as_primitive::<TimestampMicrosecondType>();
    let date: arrow::array::StringArray = ts
        .iter()
        .map(|t| {
            t.and_then(chrono::DateTime::from_timestamp_micros)
                .map(|d| d.date_naive().to_string())
        })
        .collect();
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("date", DataType::Utf8, false));
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(date));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// Sorted by the tick key (symbol, ts, seq); arrival order among equal keys.
fn sort_by_key(b: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    let idx = |name: &str| b.schema().index_of(name);
    let cols = [col::SYMBOL, col::TS, col::SEQ]
        .into_iter()
        .map(|c| {
            Ok(SortColumn {
                values: Arc::clone(b.column(idx(c)?)),
                options: None,
            })
        })
        .collect::<Result<Vec<_>, arrow::error::ArrowError>>()?;
    let order = lexsort_to_indices(&cols, None)?;
    let columns = b
        .columns()
        .iter()
        .map(|c| take(c, &order, None))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(b.schema(), columns)
}

/// The lake's `symbols` table (with its `date` column), for
/// [`Executor::new`].
pub async fn load_symbols(
    root: &crate::lake::LakeRoot,
) -> Result<RecordBatch, crate::lake::LakeError> {
    let ctx = crate::lake::session_context(root).await?;
    let df_err = |source| crate::lake::LakeError::DataFusion {
        table: "symbols".into(),
        source,
    };
    let df = ctx.sql("SELECT * FROM symbols").await.map_err(df_err)?;
    let schema = df.schema().inner().clone();
    let batches = df.collect().await.map_err(df_err)?;
    concat_batches(&schema, &batches).map_err(|source| crate::lake::LakeError::Arrow {
        table: "symbols".into(),
        source,
    })
}

/// The lake's ticks of dates `from..=to` in arrival order: by time, each
/// symbol's in (ts, seq) order — how a feed delivers them.
pub async fn ticks_in_arrival_order(
    root: &crate::lake::LakeRoot,
    from: chrono::NaiveDate,
    to: chrono::NaiveDate,
) -> Result<RecordBatch, crate::lake::LakeError> {
    let ctx = crate::lake::session_context(root).await?;
    let names: Vec<String> = tick_schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let df_err = |source| crate::lake::LakeError::DataFusion {
        table: "ticks".into(),
        source,
    };
    let df = ctx
        .sql(&format!(
            "SELECT {} FROM ticks WHERE date >= '{from}' AND date <= '{to}' ORDER BY ts, symbol, seq",
            names.join(", ")
        ))
        .await
        .map_err(df_err)?;
    let schema = df.schema().inner().clone();
    let batches = df.collect().await.map_err(df_err)?;
    let arrow_err = |source| crate::lake::LakeError::Arrow {
        table: "ticks".into(),
        source,
    };
    let all = concat_batches(&schema, &batches).map_err(arrow_err)?;
    RecordBatch::try_new(tick_schema(), all.columns().to_vec()).map_err(arrow_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RuleSet;
    use crate::tick::{TickBuilder, TickRecord};

    const T0: i64 = 1_704_205_800_000_000;

    fn input(ticks: &[(i64, f64)], first_offset: i64, b: &mut TickBuilder) -> Input {
        for &(ts, price) in ticks {
            b.push(&TickRecord::trade(ts, "AAA", price, 10.0)).unwrap();
        }
        let n = ticks.len() as i64;
        Input {
            ticks: b.finish(),
            partitions: Int32Array::from(vec![0; ticks.len()]),
            offsets: Int64Array::from_iter_values(first_offset..first_offset + n),
            arrived_us: None,
        }
    }

    /// The embedded pack's files that `keep` keeps.
    async fn pack_with(keep: impl Fn(&crate::features::FeatureFile) -> bool) -> Catalog {
        let full = Catalog::embedded().await.unwrap();
        let sources = full
            .files()
            .iter()
            .filter(|f| keep(f))
            .map(|f| (f.path.clone(), f.sql.clone()))
            .collect();
        Catalog::from_sources(sources).await.unwrap()
    }

    /// The embedded pack without its delayed-confirmation and market
    /// files: these tests are about groups, lateness and partitions
    /// (delayed confirmation and market buckets have tests of their own).
    async fn pack_without_delay() -> Catalog {
        let catalog = pack_with(|f| f.delay == 0 && !f.reads_market).await;
        assert_eq!(catalog.delay(), 0);
        assert!(!catalog.uses_market());
        catalog
    }

    #[tokio::test]
    async fn market_buckets_hold_ticks_until_closed() {
        let catalog = pack_with(|f| f.delay == 0).await;
        assert!(catalog.uses_market());
        let mut ex = Executor::new(
            catalog,
            Vec::new(),
            None,
            ExecutorConfig {
                idle_timeout: Duration::from_secs(3600),
                top_shap: 0,
                allowed_lateness: Duration::ZERO,
            },
        )
        .unwrap();
        ex.set_clock(Duration::ZERO);
        let mut b = TickBuilder::new("test");
        let mut two = |rows: &[(i64, &str, f64, i32)], first_offset: i64| {
            for &(ts, sym, price, _) in rows {
                b.push(&TickRecord::trade(ts, sym, price, 10.0)).unwrap();
            }
            Input {
                ticks: b.finish(),
                partitions: Int32Array::from(rows.iter().map(|r| r.3).collect::<Vec<_>>()),
                offsets: Int64Array::from_iter_values(
                    first_offset..first_offset + rows.len() as i64,
                ),
                arrived_us: None,
            }
        };
        let minute = 60_000_000;
        // AAA (partition 0) and BBB (partition 1) trade in the first minute.
        let step = ex
            .step(two(
                &[
                    (T0, "AAA", 10.0, 0),
                    (T0 + 1_000_000, "BBB", 20.0, 1),
                    (T0 + 2_000_000, "AAA", 10.5, 0),
                    (T0 + 3_000_000, "BBB", 20.0, 1),
                ],
                0,
            ))
            .await
            .unwrap();
        assert_eq!(step.emitted(), 0, "the bucket is open");
        // AAA moves on; BBB's partition still holds the first minute open.
        let step = ex
            .step(two(&[(T0 + minute, "AAA", 10.6, 0)], 4))
            .await
            .unwrap();
        assert_eq!(step.emitted(), 0);
        assert!(ex.market_closed_until().is_none_or(|c| c <= T0));
        let step = ex
            .step(two(&[(T0 + minute + 5, "BBB", 20.2, 1)], 5))
            .await
            .unwrap();
        assert_eq!(step.emitted(), 4, "both partitions passed the first minute");
        assert_eq!(ex.market_closed_until(), Some(T0 + minute));
        let f = step.features.unwrap();
        let col = |name: &str| {
            f.column(f.schema().index_of(name).unwrap())
                .as_primitive::<arrow::datatypes::Float64Type>()
                .clone()
        };
        // Returns in the minute: AAA ln(10.5/10), BBB 0; median of two.
        let want = (10.5f64 / 10.0).ln() / 2.0;
        assert!(col("mkt_ret_1m").iter().all(|v| v == Some(want)));
        // AAA's move ranks first among the two.
        let rank = col("move_rank_1m");
        let syms = f.column(1).as_string::<i32>();
        for i in 0..f.num_rows() {
            let want = if syms.value(i) == "AAA" { 1.0 } else { 0.0 };
            assert_eq!(rank.value(i), want, "row {i}");
        }
        // A tick of the closed minute is refused as late (a symbol the
        // market row never saw in it).
        let step = ex
            .step(two(&[(T0 + 30_000_000, "CCC", 20.1, 1)], 6))
            .await
            .unwrap();
        assert_eq!(step.late.len(), 1);
        assert!(
            step.late[0].detail.contains("market bucket closed"),
            "{:?}",
            step.late
        );
        // The end of the stream closes the last minute.
        let step = ex.flush(true).await.unwrap();
        assert_eq!(step.emitted(), 2);
    }

    #[tokio::test]
    async fn delayed_confirmation_holds_ticks_until_later_ones_or_the_end() {
        let full = Catalog::embedded().await.unwrap();
        assert_eq!(full.delay(), 5, "the shipped pack confirms over 5 ticks");
        let catalog = pack_with(|f| !f.reads_market).await;
        let mut ex = Executor::new(
            catalog,
            Vec::new(),
            None,
            ExecutorConfig {
                idle_timeout: Duration::from_secs(3600),
                top_shap: 0,
                allowed_lateness: Duration::ZERO,
            },
        )
        .unwrap();
        let mut b = TickBuilder::new("test");
        let ticks: Vec<(i64, f64)> = (0..8)
            .map(|i| (T0 + i * 1_000_000, 10.0 + i as f64 / 10.0))
            .collect();
        let step = ex.step(input(&ticks, 0, &mut b)).await.unwrap();
        // Ticks 0 and 1 have 5 later ones, the 5th settled (older than the
        // newest); the rest wait.
        assert_eq!(step.emitted(), 2);
        assert_eq!(ex.pending(), 6);
        // The end of the stream: what is held is all there is.
        let step = ex.flush(true).await.unwrap();
        assert_eq!(step.emitted(), 6);
    }

    #[tokio::test]
    async fn groups_wait_for_a_later_tick_and_late_ticks_are_refused() {
        let catalog = pack_without_delay().await;
        let rules = RuleSet::load(std::path::Path::new("/nonexistent"), &catalog)
            .await
            .unwrap();
        let detectors = rules.rules().iter().cloned().map(Detector::Rule).collect();
        let mut ex = Executor::new(
            catalog,
            detectors,
            None,
            ExecutorConfig {
                idle_timeout: Duration::from_secs(3600),
                top_shap: 0,
                allowed_lateness: Duration::ZERO,
            },
        )
        .unwrap();
        let mut b = TickBuilder::new("test");
        // Two ticks share T0 + 1 s: nothing after them yet, so only T0 is
        // complete.
        let step = ex
            .step(input(
                &[(T0, 10.0), (T0 + 1_000_000, 10.5), (T0 + 1_000_000, 10.6)],
                0,
                &mut b,
            ))
            .await
            .unwrap();
        assert_eq!(step.emitted(), 1);
        assert_eq!(
            step.positions[&0].next_offset, 1,
            "resume at the open group"
        );
        assert_eq!(ex.pending(), 2);
        // A tick before the newest is late; a later one completes the group.
        let step = ex
            .step(input(
                &[(T0 + 500_000, 9.0), (T0 + 2_000_000, 10.7)],
                3,
                &mut b,
            ))
            .await
            .unwrap();
        assert_eq!(step.late.len(), 1);
        assert_eq!(step.late[0].offset, 3);
        assert_eq!(step.emitted(), 2, "the T0 + 1 s group, both ticks");
        let seqs: Vec<u32> = step
            .features
            .as_ref()
            .unwrap()
            .column(2)
            .as_primitive::<arrow::datatypes::UInt32Type>()
            .values()
            .to_vec();
        assert_eq!(seqs, [0, 1]);
        assert_eq!(step.scores.len(), 1, "one rule");
        let step = ex.flush(true).await.unwrap();
        assert_eq!(step.emitted(), 1);
        assert_eq!(step.positions[&0].next_offset, 5, "everything done");
        assert_eq!(ex.pending(), 0);
        // The emitted group's timestamp is now closed.
        let step = ex
            .step(input(&[(T0 + 2_000_000, 10.8)], 5, &mut b))
            .await
            .unwrap();
        assert_eq!(step.late.len(), 1);
    }

    #[tokio::test]
    async fn allowed_lateness_reorders_and_forgotten_partitions_start_afresh() {
        let catalog = pack_without_delay().await;
        let mut ex = Executor::new(
            catalog,
            Vec::new(),
            None,
            ExecutorConfig {
                idle_timeout: Duration::from_secs(3600),
                top_shap: 0,
                allowed_lateness: Duration::from_secs(2),
            },
        )
        .unwrap();
        let mut b = TickBuilder::new("test");
        // T0 + 3 s arrives before T0 + 2 s and T0 + 1.5 s: within the 2 s of
        // lateness both are taken; only groups more than 2 s behind the
        // newest (T0) are complete.
        let step = ex
            .step(input(
                &[(T0, 10.0), (T0 + 3_000_000, 10.3), (T0 + 2_000_000, 10.2)],
                0,
                &mut b,
            ))
            .await
            .unwrap();
        assert!(step.late.is_empty(), "{:?}", step.late);
        assert_eq!(step.emitted(), 1, "T0 only");
        let step = ex
            .step(input(
                &[(T0 + 1_500_000, 10.1), (T0 + 500_000, 9.9)],
                3,
                &mut b,
            ))
            .await
            .unwrap();
        assert_eq!(
            step.late.len(),
            1,
            "T0 + 0.5 s: before the emitted T0 + ... horizon"
        );
        assert_eq!(step.late[0].offset, 4);
        assert_eq!(step.emitted(), 0);
        let step = ex.flush(true).await.unwrap();
        let ts: Vec<i64> = step
            .features
            .as_ref()
            .unwrap()
            .column(0)
            .as_primitive::<TimestampMicrosecondType>()
            .values()
            .to_vec();
        assert_eq!(
            ts,
            [T0 + 1_500_000, T0 + 2_000_000, T0 + 3_000_000],
            "emitted in event order"
        );
        assert_eq!(step.positions[&0].next_offset, 5);
        // Forgetting the partition drops its symbols and positions.
        assert_eq!(ex.forget_partitions(&[0]).unwrap(), ["AAA".to_owned()]);
        assert_eq!(ex.held(), 0);
        assert!(ex.positions().is_empty());
        // The symbol starts afresh: an old timestamp is no longer late.
        let step = ex
            .step(input(&[(T0, 10.0), (T0 + 10_000_000, 10.0)], 0, &mut b))
            .await
            .unwrap();
        assert!(step.late.is_empty());
        assert_eq!(step.emitted(), 1);
    }

    #[tokio::test]
    async fn warming_up_one_partition_leaves_another_partitions_pending_groups() {
        let catalog = pack_without_delay().await;
        let mut ex = Executor::new(
            catalog,
            Vec::new(),
            None,
            ExecutorConfig {
                idle_timeout: Duration::from_secs(3600),
                ..ExecutorConfig::default()
            },
        )
        .unwrap();
        let mut b = TickBuilder::new("test");
        // AAA (partition 0) has its last group pending...
        let step = ex
            .step(input(&[(T0, 10.0), (T0 + 1_000_000, 10.1)], 0, &mut b))
            .await
            .unwrap();
        assert_eq!(step.emitted(), 1);
        // ...when partition 1 (BBB) is taken over and replayed.
        b.push(&TickRecord::trade(T0, "BBB", 5.0, 1.0)).unwrap();
        ex.warm_up(Input {
            ticks: b.finish(),
            partitions: Int32Array::from(vec![1]),
            offsets: Int64Array::from(vec![0]),
            arrived_us: None,
        })
        .unwrap();
        assert_eq!(ex.pending(), 1, "AAA's group is still pending");
        let step = ex.flush(true).await.unwrap();
        assert_eq!(step.emitted(), 1, "and is emitted");
        assert_eq!(step.sources, [(0, 1)]);
    }

    #[test]
    fn confirmation_waits_for_settled_followers_and_never_splits_a_timestamp() {
        use arrow::array::{StringArray, TimestampMicrosecondArray};
        // AAA: ts 1, 2, 2, 3, 4, 5; BBB: ts 1, 2.
        let syms = StringArray::from(vec!["AAA", "AAA", "AAA", "AAA", "AAA", "AAA", "BBB", "BBB"]);
        let ts = TimestampMicrosecondArray::from(vec![1, 2, 2, 3, 4, 5, 1, 2]);
        let all_settled = confirmed_until(&syms, &ts, 2, |_, _| true);
        // Index 3 (ts 3) has two followers; index 2 (ts 2) too, and its
        // group ends there: up to ts 3.
        assert_eq!(all_settled["AAA"], Some(3));
        assert_eq!(
            all_settled["BBB"], None,
            "two ticks, none with two later ones"
        );
        // The follower at ts 5 is not settled yet: index 3 (ts 3) waits;
        // index 2, the last of ts 2's group, has its second follower at
        // ts 4, settled: up to ts 2.
        let before_5 = confirmed_until(&syms, &ts, 2, |_, t| t < 5);
        assert_eq!(before_5["AAA"], Some(2));
        // With followers settled only before ts 4, index 1 (ts 2) is
        // confirmed (its second follower is ts 3) but index 2, the same
        // ts, is not: the whole group waits, down to ts 1.
        let before_4 = confirmed_until(&syms, &ts, 2, |_, t| t < 4);
        assert_eq!(before_4["AAA"], Some(1));
        let none = confirmed_until(&syms, &ts, 2, |_, _| false);
        assert_eq!(none["AAA"], None);
    }
}
