//! The micro-batch executor: ticks in, per-symbol state kept to the
//! catalog's lookback, features computed incrementally (each emitted tick
//! advances its symbol's window state once, see
//! [`crate::features::incremental`]) with the same bits as backfill, scored
//! by the same code as `score`.
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
//! restores the state of every symbol whose ticks from the next offset on
//! were not emitted yet. A symbol emitted further (another symbol of the
//! partition still held a tick back) emits those ticks again after a
//! restart, with the same features: alert rows are keyed, so they are
//! stored once, and a restored case skips them
//! ([`crate::model::cases::CaseTracker::restore`]). A symbol's ticks are
//! taken to come from one partition (topics are keyed by symbol).
//!
//! **Cost.** A step costs in proportion to the ticks it admits and emits:
//! admitted batches are kept whole and referenced by row (the `held` module), each
//! emitted tick advances its symbol's state once, and only a file the
//! incremental path cannot run ([`Executor::not_incremental`]) re-runs its
//! SQL over the held history of the symbols it emits.

mod buckets;
mod held;
mod recompute;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int32Array, Int64Array, RecordBatch, UInt32Array,
};
use arrow::compute::{concat_batches, filter_record_batch, interleave_record_batch, take};
use arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema, SchemaRef};
use arrow::datatypes::{TimestampMicrosecondType, UInt32Type};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use self::buckets::{Mark, MarketContext};
use self::held::{Arena, HistRow, History, Pending, RowRef, Symbols};
use self::recompute::Recompute;
use crate::features::incremental::{Chunk, ContextTables, Mode, NotIncremental, Program, Segment};
use crate::features::market::bucket_of;
use crate::features::{Catalog, Lookback};
use crate::lake::{schema_session, with_date, with_partitions, TableSpec};
use crate::model::score::score_batch;
use crate::model::{Detector, TrainError};
use crate::stream::market::{BucketCloser, BucketQuery, CloserConfig};
use crate::tick::{col, tick_schema, DAY_US};

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
    /// When each emitted tick became final (µs since the epoch), aligned
    /// with `features`: its arrival, or for a tick that waited (for later
    /// ticks, its group, its market bucket) the first arrival of the input
    /// that completed it, or the step's start for a step without input
    /// (idle timeout, end of stream). Arrival to ready is what the pack's
    /// declared waits cost; ready to committed is processing.
    pub ready_us: Vec<i64>,
    /// Ticks refused as late.
    pub late: Vec<LateTick>,
    /// Positions of every partition seen, after this step.
    pub positions: BTreeMap<i32, PartitionPosition>,
    /// Rows the recompute path computed for files the incremental path
    /// cannot run (each emitted tick once per such file).
    pub recomputed: usize,
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

/// Where an executor's time went, summed over its steps: what the streaming
/// benchmark prints.
#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    /// Admitting ticks (lateness, books, sorting each batch by key).
    pub admit: Duration,
    /// Loading profiles and betas, closing market buckets and computing
    /// their rows.
    pub context: Duration,
    /// Finding what is final, gathering it into a chunk, assembling the
    /// feature rows.
    pub gather: Duration,
    /// The incremental feature programs.
    pub features: Duration,
    /// Files recomputed over the held history.
    pub recompute: Duration,
    /// Scoring (and SHAP for alerts).
    pub score: Duration,
    /// Moving emitted ticks to history, pruning, positions.
    pub bookkeeping: Duration,
}

impl Timings {
    /// The time spent since `earlier` (a copy of these timings).
    pub fn since(&self, earlier: &Timings) -> Timings {
        Timings {
            admit: self.admit.saturating_sub(earlier.admit),
            context: self.context.saturating_sub(earlier.context),
            gather: self.gather.saturating_sub(earlier.gather),
            features: self.features.saturating_sub(earlier.features),
            recompute: self.recompute.saturating_sub(earlier.recompute),
            score: self.score.saturating_sub(earlier.score),
            bookkeeping: self.bookkeeping.saturating_sub(earlier.bookkeeping),
        }
    }
}

impl std::fmt::Display for Timings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts = [
            ("admit", self.admit),
            ("context", self.context),
            ("gather", self.gather),
            ("features", self.features),
            ("recompute", self.recompute),
            ("score", self.score),
            ("bookkeeping", self.bookkeeping),
        ];
        let shown: Vec<String> = parts
            .iter()
            .map(|(n, d)| format!("{n} {:.3}s", d.as_secs_f64()))
            .collect();
        write!(f, "{}", shown.join(", "))
    }
}

/// What the executor knows of one symbol.
#[derive(Debug, Default)]
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
    /// Admitted ticks not emitted yet, in key order.
    pending: Pending,
    /// The pending ticks are a replay's tail, already emitted before the
    /// restart (see [`Executor::warm_up`]): never emitted again.
    replayed_tail: bool,
    /// Emitted ticks a restart must replay to rebuild the state.
    history: History,
}

/// Of a symbol's pending ticks, how many are confirmed for delayed
/// confirmation: each has `delay` later ticks, the `delay`-th settled. `ts`
/// gives the pending ticks' times newest first (`m` of them); `settled`
/// counts the first pending ticks no later tick can join (a prefix). A
/// `ts` shared by several ticks counts only when its last tick is
/// confirmed: emission cuts by `ts`, never inside a group.
fn confirmed_prefix(
    mut newest_first: impl Iterator<Item = i64>,
    m: usize,
    settled: usize,
    delay: usize,
) -> usize {
    if settled <= delay {
        return 0;
    }
    // The last tick with `delay` settled followers: index settled-1-delay.
    let last = settled - 1 - delay;
    // Walk down to it (newest first: index m-1 is first).
    let mut i = m;
    let mut after = None;
    let mut at = None;
    for t in newest_first.by_ref() {
        i -= 1;
        if i == last + 1 {
            after = Some(t);
        }
        if i == last {
            at = Some(t);
            break;
        }
    }
    let Some(t) = at else {
        return 0;
    };
    if after != Some(t) {
        return last + 1;
    }
    // The group of `t` goes on after `last`: cut before the group.
    let mut start = last;
    for u in newest_first {
        if u != t {
            break;
        }
        start -= 1;
    }
    start
}

/// The streaming executor (see the module documentation).
///
/// A feature file as data scientists write it, computed incrementally over
/// micro-batches: each step emits the ticks whose features are final, and
/// the end of the stream emits the rest.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use arrow::array::{AsArray, Int32Array, Int64Array};
/// use arrow::datatypes::Float64Type;
/// use stockanomaly::features::Catalog;
/// use stockanomaly::stream::{Executor, ExecutorConfig, Input};
/// use stockanomaly::tick::{TickBuilder, TickRecord};
///
/// let sql = "SELECT symbol, ts, seq, \
///     price - lag(price) OVER (PARTITION BY symbol ORDER BY ts, seq) AS change \
///     FROM ticks";
/// let catalog = Catalog::from_sources(vec![("features/change.sql".into(), sql.into())]).await?;
/// let mut ex = Executor::new(catalog, Vec::new(), None, ExecutorConfig::default())?;
///
/// let t0 = 1_704_205_800_000_000; // 2024-01-02 14:30 UTC, in µs
/// let mut ticks = TickBuilder::new("example");
/// let mut batch = |prices: &[(i64, f64)], first_offset: i64| -> Result<Input, Box<dyn std::error::Error>> {
///     for &(s, price) in prices {
///         ticks.push(&TickRecord::trade(t0 + s * 1_000_000, "ACME", price, 100.0))?;
///     }
///     let n = prices.len();
///     Ok(Input {
///         ticks: ticks.finish(),
///         partitions: Int32Array::from(vec![0; n]),
///         offsets: Int64Array::from_iter_values(first_offset..first_offset + n as i64),
///         arrived_us: None,
///     })
/// };
/// // A tick's (symbol, ts) group is final once a later tick of the symbol
/// // arrived: the first two are emitted, the third waits.
/// let step = ex.step(batch(&[(0, 10.0), (1, 10.5), (2, 10.25)], 0)?).await?;
/// assert_eq!(step.emitted(), 2);
/// let step = ex.flush(true).await?;
/// let features = step.features.expect("the last tick");
/// let change = features.column_by_name("change").unwrap().as_primitive::<Float64Type>();
/// assert_eq!(change.value(0), -0.25);
/// # Ok(()) }
/// ```
pub struct Executor {
    catalog: Catalog,
    detectors: Vec<Detector>,
    config: ExecutorConfig,
    lookback: Lookback,
    symbols: RecordBatch,
    held_schema: SchemaRef,
    /// The files computed incrementally, with their per-symbol state.
    program: Program,
    /// The files computed by re-running their SQL, if any.
    recompute: Option<Recompute>,
    /// The context tables the files join.
    context: ContextTables,
    /// Admitted batches, referenced by the pending and history rows.
    arena: Arena,
    names: Symbols,
    /// Per symbol number, its book (`None`: a free number).
    books: Vec<Option<Book>>,
    /// Last offset seen per partition.
    seen: BTreeMap<i32, i64>,
    /// Partitions whose symbols hold a replay's tail (see
    /// [`Executor::warm_up`]).
    replay_tails: BTreeSet<i32>,
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
    /// A session for rule detectors (made once).
    rules_ctx: Option<SessionContext>,
    /// The first arrival of the current step's input (`None`: a step
    /// without input), for [`Step::ready_us`].
    trigger_us: Option<i64>,
    timings: Timings,
    /// The bucket query, planned at the first closing.
    bucket_query: Option<BucketQuery>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("symbols", &self.books.iter().flatten().count())
            .field("program", &self.program)
            .finish()
    }
}

impl Executor {
    /// An executor computing `catalog`'s features and scoring them with
    /// `detectors`; `symbols` is the lake's `symbols` table (exchange zones)
    /// with its `date` column, or `None` for none.
    ///
    /// Files the incremental path cannot run are logged here, once, and
    /// computed by the recompute path ([`Executor::not_incremental`]).
    pub fn new(
        catalog: Catalog,
        mut detectors: Vec<Detector>,
        symbols: Option<RecordBatch>,
        config: ExecutorConfig,
    ) -> Result<Self, ExecutorError> {
        // The executor computes on every core between predictions; a
        // multi-threaded XGBoost would leave OpenMP threads spinning
        // against it after every batch (measured: a fifth of the CPU).
        for d in &mut detectors {
            if let Detector::Model(m) = d {
                m.single_threaded().map_err(TrainError::from)?;
            }
        }
        let mut fields: Vec<Field> = tick_schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(PARTITION, DataType::Int32, false));
        fields.push(Field::new(OFFSET, DataType::Int64, false));
        fields.push(Field::new(ARRIVED, DataType::Int64, false));
        let held_schema = Arc::new(Schema::new(fields));
        let symbols_spec = TableSpec::symbols();
        let symbols_schema = with_partitions(&symbols_spec);
        let symbols = match symbols {
            Some(s) => crate::features::conform(&s, &symbols_schema)?,
            None => RecordBatch::new_empty(Arc::clone(&symbols_schema)),
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
            changed: true,
        });
        let program = Program::compile(&catalog);
        for n in program.not_incremental() {
            tracing::warn!(
                file = %n.path.display(),
                reason = %n,
                "Feature file not computed incrementally: it re-runs its SQL over the held history of each symbol it emits (slower)."
            );
        }
        let recompute = Recompute::new(&catalog, program.not_incremental());
        let mut context = ContextTables::default();
        context.set(&symbols_spec.name, symbols_schema, vec![symbols.clone()]);
        for spec in [
            TableSpec::profiles(),
            TableSpec::market(),
            TableSpec::betas(),
        ] {
            context.set(&spec.name, with_partitions(&spec), Vec::new());
        }
        let rules_ctx = detectors
            .iter()
            .any(|d| matches!(d, Detector::Rule(_)))
            .then(schema_session);
        Ok(Executor {
            market,
            lookback: catalog.lookback(),
            catalog,
            detectors,
            config,
            symbols,
            held_schema,
            program,
            recompute,
            context,
            arena: Arena::default(),
            names: Symbols::default(),
            books: Vec::new(),
            seen: BTreeMap::new(),
            replay_tails: BTreeSet::new(),
            clock: None,
            origin: Instant::now(),
            profiles_lake: None,
            profiles: BTreeMap::new(),
            rules_ctx,
            trigger_us: None,
            timings: Timings::default(),
            bucket_query: None,
        })
    }

    /// Where the time of the steps so far went.
    pub fn timings(&self) -> Timings {
        self.timings
    }

    /// The files computed by re-running their SQL over the held history
    /// instead of incrementally, and why.
    pub fn not_incremental(&self) -> &[NotIncremental] {
        self.program.not_incremental()
    }

    /// Symbols held, and the bytes their state takes: the window state of
    /// the incremental files and the history rows (positions), plus the
    /// admitted batches still referenced (pending ticks, and the history of
    /// files recomputed).
    pub fn memory(&self) -> (usize, usize) {
        let mut symbols = 0;
        let mut bytes = 0;
        for (id, b) in self.books.iter().enumerate() {
            let Some(b) = b else { continue };
            symbols += 1;
            bytes += self.program.heap_bytes(id)
                + b.history.len() * std::mem::size_of::<HistRow>()
                + std::mem::size_of::<Book>();
        }
        let (batches, _) = self.arena.live();
        bytes += batches
            .iter()
            .map(|b| b.get_array_memory_size())
            .sum::<usize>();
        (symbols, bytes)
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

    /// A watermark message (see [`crate::sources::kafka::watermark`]):
    /// `partition`'s event time is at least `ts_us`, so it holds no market
    /// bucket before that open, ticks or none; positions move past
    /// `offset`.
    pub fn partition_watermark(&mut self, partition: i32, offset: i64, ts_us: i64) {
        self.observe(partition, offset);
        let now = self.now();
        let Some(m) = &mut self.market else {
            return;
        };
        Mark::saw(&mut m.marks, partition, ts_us, now);
        if let Some(c) = &mut m.closer {
            c.advance(partition, ts_us, now);
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

    /// Loads the profiles (and betas) of the held ticks' dates not loaded
    /// yet and forgets those of dates no longer held.
    async fn ensure_profiles(&mut self) -> Result<(), ExecutorError> {
        let Some(root) = &self.profiles_lake else {
            return Ok(());
        };
        // Held ticks span from each symbol's oldest held tick to its newest.
        let mut span: Option<(i64, i64)> = None;
        for b in self.books.iter().flatten() {
            let first = b
                .history
                .first_ts()
                .or_else(|| b.pending.rows().next().and_then(|r| self.ts_of(r)));
            let Some(first) = first else { continue };
            let (lo, hi) = span.get_or_insert((first, b.newest));
            *lo = (*lo).min(first);
            *hi = (*hi).max(b.newest);
        }
        let days: BTreeSet<i64> = match span {
            Some((lo, hi)) => (lo.div_euclid(DAY_US)..=hi.div_euclid(DAY_US)).collect(),
            None => BTreeSet::new(),
        };
        let before = self.profiles.len();
        self.profiles.retain(|d, _| days.contains(d));
        let mut changed = before != self.profiles.len();
        for &d in &days {
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
            changed = true;
        }
        if changed {
            let spec = TableSpec::profiles();
            self.context.set(
                &spec.name,
                with_partitions(&spec),
                self.profiles.values().cloned().collect(),
            );
        }
        if let Some(m) = &mut self.market {
            let before = m.betas.len();
            m.betas.retain(|d, _| self.profiles.contains_key(d));
            let mut changed = before != m.betas.len();
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
                changed = true;
            }
            if changed {
                let spec = TableSpec::betas();
                self.context.set(
                    &spec.name,
                    with_partitions(&spec),
                    m.betas.values().cloned().collect(),
                );
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

    /// The `ts` of a held row.
    fn ts_of(&self, r: RowRef) -> Option<i64> {
        held::ts_offset(&self.arena, r, tick_schema().fields().len() + 1).map(|(t, _)| t)
    }

    /// Ticks held (history and pending).
    pub fn held(&self) -> usize {
        self.books
            .iter()
            .flatten()
            .map(|b| b.history.len() + b.pending.len())
            .sum()
    }

    /// Ticks held and not yet emitted (a replay's tail aside: it was).
    pub fn pending(&self) -> usize {
        self.books
            .iter()
            .flatten()
            .filter(|b| !b.replayed_tail)
            .map(|b| b.pending.len())
            .sum()
    }

    /// Adds ticks and emits every group now complete.
    pub async fn step(&mut self, input: Input) -> Result<Step, ExecutorError> {
        let first_arrival = input.arrived_us.as_ref().and_then(arrow::compute::min);
        let clock = Instant::now();
        let before = self.timings;
        if !self.replay_tails.is_empty() {
            // A live tick of a partition ends its replay: its tails are
            // whole, and must be history before the tick is judged.
            let done: Vec<i32> = self
                .replay_tails
                .iter()
                .copied()
                .filter(|p| input.partitions.values().contains(p))
                .collect();
            self.settle_replay_tails(&done)?;
        }
        let late = self.admit(input, true)?;
        self.timings.admit += clock.elapsed();
        self.trigger_us = first_arrival;
        let mut step = self.emit(false).await?;
        step.late = late;
        // Which part of a slow step was slow: the tail of the step times is
        // a few steps, and the summed timings hide them.
        if tracing::enabled!(tracing::Level::DEBUG) {
            let spent = self.timings.since(&before);
            tracing::debug!(
                emitted = step.emitted(),
                took_ms = clock.elapsed().as_secs_f64() * 1e3,
                "step: {spent}"
            );
        }
        Ok(step)
    }

    /// Emits the groups of symbols idle for the configured time (or of
    /// every symbol when `all`: the end of a stream).
    pub async fn flush(&mut self, all: bool) -> Result<Step, ExecutorError> {
        self.trigger_us = None;
        if all && !self.replay_tails.is_empty() {
            let tails: Vec<i32> = self.replay_tails.iter().copied().collect();
            self.settle_replay_tails(&tails)?;
        }
        self.emit(all).await
    }

    /// Replays already-processed ticks into the state without emitting:
    /// after a restart or a new partition assignment, the ticks from the
    /// warm-up offset to the next offset. They are taken as emitted: each
    /// advances its symbol's window state as it did when first emitted.
    ///
    /// A replay may come in several calls, cut anywhere: the newest group
    /// of each replayed symbol (with reordering, every tick within the
    /// allowed lateness of its newest) may go on in the next call, so it is
    /// held as the symbol's replayed tail until its partition's first live
    /// tick, or the end of the stream, shows it whole. It is never emitted
    /// again, and positions stay past it.
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
        let mut ids: Vec<usize> = replayed.iter().filter_map(|s| self.names.get(s)).collect();
        ids.sort_unstable();
        let lateness = duration_us(self.config.allowed_lateness);
        let emit: Vec<(usize, usize)> = ids
            .iter()
            .filter_map(|&id| {
                let b = self.books.get(id)?.as_ref()?;
                let bound = b.newest.saturating_sub(lateness);
                let tail = b
                    .pending
                    .rows_rev()
                    .filter_map(|r| self.ts_of(r))
                    .take_while(|&t| t >= bound)
                    .count();
                let whole = b.pending.len() - tail;
                (whole > 0).then_some((id, whole))
            })
            .collect();
        self.replay_into_state(&emit)?;
        for &id in &ids {
            if let Some(Some(book)) = self.books.get_mut(id) {
                book.replayed_tail = !book.pending.is_empty();
                if book.replayed_tail {
                    self.replay_tails.insert(book.partition);
                }
            }
        }
        Ok(late)
    }

    /// Advances the state over the first pending ticks of the symbols of
    /// `emit` (number, ticks) and makes them history, without emitting.
    fn replay_into_state(&mut self, emit: &[(usize, usize)]) -> Result<(), ExecutorError> {
        if emit.is_empty() {
            return Ok(());
        }
        let (chunk, held) = self.chunk(emit, false)?;
        self.program.evaluate(&chunk, Mode::WarmUp)?;
        self.consume(&chunk, &held);
        Ok(())
    }

    /// Makes the replayed tails of `partitions`' symbols history: their
    /// replays are over.
    fn settle_replay_tails(&mut self, partitions: &[i32]) -> Result<(), ExecutorError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let mut emit = Vec::new();
        for (id, book) in self.books.iter_mut().enumerate() {
            let Some(b) = book else { continue };
            if b.replayed_tail && partitions.contains(&b.partition) {
                b.replayed_tail = false;
                if !b.pending.is_empty() {
                    emit.push((id, b.pending.len()));
                }
            }
        }
        for p in partitions {
            self.replay_tails.remove(p);
        }
        self.replay_into_state(&emit)
    }

    /// Accounts for a message that never became a tick (undecodable or
    /// invalid: the caller dead-letters it), so positions move past it.
    pub fn observe(&mut self, partition: i32, offset: i64) {
        let seen = self.seen.entry(partition).or_insert(offset);
        *seen = (*seen).max(offset);
    }

    /// Drops everything held for `partitions` (revoked from this consumer):
    /// their ticks, their symbols' books and state, and their positions.
    /// Returns the symbols dropped, so the caller can forget their `seq`
    /// numbering too. Whoever takes the partitions over warms up from the
    /// stored offsets.
    pub fn forget_partitions(&mut self, partitions: &[i32]) -> Result<Vec<String>, ExecutorError> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let mut dropped = Vec::new();
        for id in 0..self.books.len() {
            let gone = self.books[id]
                .as_ref()
                .is_some_and(|b| partitions.contains(&b.partition));
            if !gone {
                continue;
            }
            if let Some(mut b) = self.books[id].take() {
                let arena = &mut self.arena;
                b.pending.clear(|r| arena.release(r.batch, 1));
                b.history.clear(|h| {
                    if let Some(r) = h.at {
                        arena.release(r.batch, 1);
                    }
                });
            }
            self.program.forget(id);
            dropped.push(self.names.name(id).to_owned());
            self.names.release(id);
        }
        for p in partitions {
            self.seen.remove(p);
            self.replay_tails.remove(p);
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
        let offset_col = tick_schema().fields().len() + 1;
        let reordering = !self.config.allowed_lateness.is_zero();
        for b in self.books.iter().flatten() {
            let Some(pos) = out.get_mut(&b.partition) else {
                continue;
            };
            // Without reordering a symbol's ticks are held in arrival order,
            // so its oldest pending tick has the smallest offset.
            let pending_min = if b.replayed_tail {
                // Emitted before the restart: history to warm up from.
                if let Some(o) = b
                    .pending
                    .rows()
                    .filter_map(|r| held::ts_offset(&self.arena, r, offset_col))
                    .map(|(_, o)| o)
                    .min()
                {
                    pos.warmup_offset = pos.warmup_offset.min(o);
                }
                None
            } else if reordering {
                b.pending
                    .rows()
                    .filter_map(|r| held::ts_offset(&self.arena, r, offset_col))
                    .map(|(_, o)| o)
                    .min()
            } else {
                b.pending
                    .rows()
                    .next()
                    .and_then(|r| held::ts_offset(&self.arena, r, offset_col))
                    .map(|(_, o)| o)
            };
            if let Some(o) = pending_min {
                pos.next_offset = pos.next_offset.min(o);
                pos.warmup_offset = pos.warmup_offset.min(o);
            }
            if let Some(o) = b.history.min_offset() {
                pos.warmup_offset = pos.warmup_offset.min(o);
            }
        }
        out
    }

    /// Appends `input`'s in-order ticks to their symbols' pending ticks;
    /// returns the late.
    fn admit(&mut self, input: Input, timed: bool) -> Result<Vec<LateTick>, ExecutorError> {
        let n = input.ticks.num_rows();
        let syms = input.ticks.column(1).as_string::<i32>();
        let ts = input
            .ticks
            .column(0)
            .as_primitive::<TimestampMicrosecondType>();
        let seqs = input.ticks.column(2).as_primitive::<UInt32Type>();
        let now = self.now();
        let lateness = duration_us(self.config.allowed_lateness);
        let mut keep = Vec::with_capacity(n);
        let mut ids = Vec::with_capacity(n);
        let mut late = Vec::new();
        for i in 0..n {
            let (p, o) = (input.partitions.value(i), input.offsets.value(i));
            let seen = self.seen.entry(p).or_insert(o);
            *seen = (*seen).max(o);
            let sym = syms.value(i);
            let t = ts.value(i);
            let id = self.names.id(sym);
            if self.books.len() <= id {
                self.books.resize_with(id + 1, || None);
            }
            let book = self.books[id].get_or_insert_with(|| Book {
                newest: t,
                partition: p,
                ..Book::default()
            });
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
                    if book.pending.is_empty() && book.history.len() == 0 && book.emitted.is_none()
                    {
                        // A symbol whose only tick was refused keeps nothing.
                        self.books[id] = None;
                        self.program.forget(id);
                        self.names.release(id);
                    }
                }
                None => {
                    book.newest = book.newest.max(t);
                    book.partition = p;
                    if timed {
                        book.arrived = Some(now);
                    }
                    if let Some(m) = &mut self.market {
                        *book.buckets.entry(bucket).or_insert(0) += 1;
                        Mark::saw(&mut m.marks, p, t, now);
                    }
                    keep.push(true);
                    ids.push((id as u32, t, seqs.value(i), i as u32));
                }
            }
        }
        let arrived = match input.arrived_us {
            Some(a) => a,
            None => Int64Array::from_value(crate::tick::now_us(), n),
        };
        let mut columns: Vec<ArrayRef> = input.ticks.columns().to_vec();
        columns.push(Arc::new(input.partitions));
        columns.push(Arc::new(input.offsets));
        columns.push(Arc::new(arrived));
        let batch = RecordBatch::try_new(Arc::clone(&self.held_schema), columns)?;
        if ids.is_empty() {
            return Ok(late);
        }
        let batch = if ids.len() == n {
            batch
        } else {
            filter_record_batch(&batch, &BooleanArray::from(keep))?
        };
        if let Some(closer) = self.market.as_mut().and_then(|m| m.closer.as_mut()) {
            // The executor refused the ticks of closed buckets already.
            let parts = batch
                .column(batch.num_columns() - EXTRA)
                .as_primitive::<Int32Type>()
                .clone();
            closer.admit(&batch, &parts, now)?;
        }
        // Each symbol's ticks as one run, in key order (arrival order among
        // equal keys).
        for (k, e) in ids.iter_mut().enumerate() {
            e.3 = k as u32;
        }
        ids.sort_unstable();
        let order = UInt32Array::from_iter_values(ids.iter().map(|e| e.3));
        let sorted = arrow::compute::take_record_batch(&batch, &order)?;
        let id = self.arena.push(sorted, ids.len());
        let mut a = 0;
        while a < ids.len() {
            let sym = ids[a].0;
            let mut b = a;
            while b < ids.len() && ids[b].0 == sym {
                b += 1;
            }
            let first = (ids[a].1, ids[a].2);
            let book_id = sym as usize;
            let needs_merge = self
                .last_pending_key(book_id)
                .is_some_and(|last| last > first);
            if let Some(Some(book)) = self.books.get_mut(book_id) {
                book.pending.push(id, a as u32, b as u32);
            }
            if needs_merge {
                self.merge_pending(book_id)?;
            }
            a = b;
        }
        Ok(late)
    }

    /// The key `(ts, seq)` of a symbol's last pending tick.
    fn last_pending_key(&self, id: usize) -> Option<(i64, u32)> {
        let b = self.books.get(id)?.as_ref()?;
        let r = b.pending.rows().last()?;
        let batch = self.arena.get(r.batch)?;
        let i = r.row as usize;
        Some((
            batch
                .column(0)
                .as_primitive::<TimestampMicrosecondType>()
                .value(i),
            batch.column(2).as_primitive::<UInt32Type>().value(i),
        ))
    }

    /// Puts a symbol's pending ticks back in key order after a tick arrived
    /// out of order (within the allowed lateness): one new run.
    fn merge_pending(&mut self, id: usize) -> Result<(), ExecutorError> {
        let Some(Some(book)) = self.books.get_mut(id) else {
            return Ok(());
        };
        let rows: Vec<RowRef> = book.pending.rows().collect();
        let (batches, at) = self.arena.live();
        let idx: Vec<(usize, usize)> = rows
            .iter()
            .map(|r| (self.arena.index(&at, r.batch), r.row as usize))
            .collect();
        let gathered = interleave_record_batch(&batches, &idx)?;
        let sorted = crate::lake::sort_by(&gathered, &[col::TS, col::SEQ])?;
        let n = sorted.num_rows();
        let new = self.arena.push(sorted, n);
        let arena = &mut self.arena;
        book.pending.clear(|r| arena.release(r.batch, 1));
        book.pending.push(new, 0, n as u32);
        Ok(())
    }

    /// Emits complete groups (all pending groups of idle symbols, or of
    /// every symbol when `all`), then prunes history.
    async fn emit(&mut self, all: bool) -> Result<Step, ExecutorError> {
        let mut clock = Instant::now();
        let lap = |clock: &mut Instant, spent: &mut Duration| {
            let now = Instant::now();
            *spent += now - *clock;
            *clock = now;
        };
        self.ensure_profiles().await?;
        self.close_market_buckets(all).await?;
        self.sync_market_context();
        self.program.refresh(&self.context).await?;
        lap(&mut clock, &mut self.timings.context);
        let now = self.now();
        let lateness = duration_us(self.config.allowed_lateness);
        let delay = usize::try_from(self.catalog.delay()).unwrap_or(usize::MAX);
        let idle_timeout = self.config.idle_timeout;
        // Per symbol: how many of its pending ticks are final now.
        let mut emit: Vec<(usize, usize)> = Vec::new();
        for (id, book) in self.books.iter().enumerate() {
            let Some(book) = book else { continue };
            let m = book.pending.len();
            if m == 0 || book.replayed_tail {
                continue;
            }
            let idle = book
                .arrived
                .is_none_or(|a| now.saturating_sub(a) >= idle_timeout);
            // No tick at or before a settled one can still arrive; with the
            // symbol idle (or at the end of the stream) all are settled.
            let bound = book.newest.saturating_sub(lateness);
            let settled = if all || idle {
                m
            } else {
                let newest_first = book.pending.rows_rev().filter_map(|r| self.ts_of(r));
                m - newest_first.take_while(|&t| t >= bound).count()
            };
            // Delayed confirmation: `delay` later ticks held, the last
            // settled; at the end of the stream (`all`) what is held is all
            // there is, as at the end of the lake in backfill.
            let mut limit = if delay > 0 && !all {
                let newest_first = book.pending.rows_rev().filter_map(|r| self.ts_of(r));
                confirmed_prefix(newest_first, m, settled, delay)
            } else {
                settled
            };
            // Market context: a tick is final once its bucket's market row
            // is known and made from every tick of the symbol held in it.
            if let Some(mk) = &self.market {
                let until = mk.ready_until(self.names.name(id), book);
                if until < i64::MAX {
                    limit = book
                        .pending
                        .rows()
                        .take(limit)
                        .filter_map(|r| self.ts_of(r))
                        .take_while(|&t| t < until)
                        .count();
                }
            }
            if limit > 0 {
                emit.push((id, limit));
            }
        }
        let mut step = Step::default();
        if !emit.is_empty() {
            let ahead = self.program.reads_ahead() || self.recompute.is_some();
            let (chunk, held) = self.chunk(&emit, ahead)?;
            lap(&mut clock, &mut self.timings.gather);
            let live = chunk.live_indices();
            let whole = live.len() == chunk.ticks.num_rows();
            let pick = |c: &ArrayRef| -> Result<ArrayRef, ExecutorError> {
                Ok(if whole {
                    Arc::clone(c)
                } else {
                    take(c.as_ref(), &live, None)?
                })
            };
            let mut by_file: Vec<Option<Vec<ArrayRef>>> = vec![None; self.catalog.files().len()];
            for (file, columns) in self.program.evaluate(&chunk, Mode::Emit)? {
                by_file[file] = Some(columns);
            }
            lap(&mut clock, &mut self.timings.features);
            if let Some(r) = &mut self.recompute {
                let ctx = context_session(&self.context)?;
                for (file, columns) in r
                    .compute(&ctx, &self.arena, &self.books, &chunk, &held)
                    .await?
                {
                    step.recomputed += columns.first().map_or(0, |c| c.len());
                    by_file[file] = Some(columns);
                }
                lap(&mut clock, &mut self.timings.recompute);
            }
            let spec = crate::features::features_table(&self.catalog);
            let mut columns: Vec<ArrayRef> = Vec::with_capacity(spec.schema.fields().len());
            for name in [col::TS, col::SYMBOL, col::SEQ] {
                columns.push(pick(
                    chunk.ticks.column(chunk.ticks.schema().index_of(name)?),
                )?);
            }
            for (f, c) in self.catalog.files().iter().zip(by_file) {
                let Some(c) = c else {
                    return Err(ExecutorError::Features(
                        datafusion::error::DataFusionError::Internal(format!(
                            "feature file {} computed by no path",
                            f.name
                        )),
                    ));
                };
                columns.extend(c);
            }
            let features = RecordBatch::try_new(spec.schema, columns)?;
            let n = tick_schema().fields().len();
            let parts = pick(held.column(n))?;
            let offs = pick(held.column(n + 1))?;
            let arrived = pick(held.column(n + 2))?;
            step.sources = parts
                .as_primitive::<Int32Type>()
                .values()
                .iter()
                .copied()
                .zip(offs.as_primitive::<Int64Type>().values().iter().copied())
                .collect();
            step.arrived_us = arrived.as_primitive::<Int64Type>().values().to_vec();
            let trigger = self.trigger_us.unwrap_or_else(crate::stream::now_us);
            step.ready_us = step.arrived_us.iter().map(|&a| a.max(trigger)).collect();
            lap(&mut clock, &mut self.timings.gather);
            step.scores = self.score(&features).await?;
            lap(&mut clock, &mut self.timings.score);
            self.consume(&chunk, &held);
            for seg in &chunk.segments {
                if let Some(Some(b)) = self.books.get_mut(seg.sym) {
                    if let Some(to) = b.emitted {
                        // Earlier buckets are all emitted.
                        b.buckets = b.buckets.split_off(&bucket_of(to));
                    }
                }
            }
            step.features = Some(features);
        }
        self.forget_market_rows(now);
        step.positions = self.positions();
        lap(&mut clock, &mut self.timings.bookkeeping);
        Ok(step)
    }

    /// Every detector's `scores` rows of `features`.
    async fn score(&self, features: &RecordBatch) -> Result<Vec<RecordBatch>, ExecutorError> {
        let empty;
        let ctx = match &self.rules_ctx {
            Some(ctx) => {
                ctx.deregister_table("features")?;
                ctx.register_table(
                    "features",
                    Arc::new(MemTable::try_new(
                        features.schema(),
                        vec![vec![features.clone()]],
                    )?),
                )?;
                ctx
            }
            None => {
                empty = SessionContext::new();
                &empty
            }
        };
        let mut out = Vec::with_capacity(self.detectors.len());
        for d in &self.detectors {
            out.push(score_batch(ctx, &self.catalog, d, features, self.config.top_shap).await?);
        }
        Ok(out)
    }

    /// The chunk of the symbols of `emit` (number, ticks to compute), in key
    /// order, with up to the pack's delay of read-ahead ticks after each
    /// symbol's computed ones when `ahead`; and the held columns of its rows
    /// (source positions).
    fn chunk(
        &self,
        emit: &[(usize, usize)],
        ahead: bool,
    ) -> Result<(Chunk, RecordBatch), ExecutorError> {
        let mut order: Vec<&(usize, usize)> = emit.iter().collect();
        order.sort_by(|a, b| self.names.name(a.0).cmp(self.names.name(b.0)));
        let delay = usize::try_from(self.catalog.delay()).unwrap_or(usize::MAX);
        let (batches, at) = self.arena.live();
        let mut idx: Vec<(usize, usize)> = Vec::new();
        let mut segments = Vec::with_capacity(order.len());
        for &&(id, live) in &order {
            let Some(Some(b)) = self.books.get(id) else {
                continue;
            };
            let extra = if ahead {
                (b.pending.len() - live).min(delay)
            } else {
                0
            };
            let start = idx.len();
            idx.extend(
                b.pending
                    .rows()
                    .take(live + extra)
                    .map(|r| (self.arena.index(&at, r.batch), r.row as usize)),
            );
            segments.push(Segment {
                sym: id,
                start,
                live_end: start + live,
                end: idx.len(),
            });
        }
        let held = interleave_record_batch(&batches, &idx)?;
        let n = tick_schema().fields().len();
        let ticks = RecordBatch::try_new(tick_schema(), held.columns()[..n].to_vec())?;
        let ticks = if self.program.reads_date() {
            with_date(&ticks)?
        } else {
            ticks
        };
        let ts = ticks
            .column(0)
            .as_primitive::<TimestampMicrosecondType>()
            .values()
            .to_vec();
        Ok((
            Chunk {
                ticks,
                ts,
                segments,
            },
            held,
        ))
    }

    /// Moves the computed ticks of `chunk` (whose held columns are `held`)
    /// from pending to history, marks them emitted and prunes what no
    /// future tick needs.
    fn consume(&mut self, chunk: &Chunk, held: &RecordBatch) {
        let n = tick_schema().fields().len();
        let offs = held.column(n + 1).as_primitive::<Int64Type>();
        let keep_rows = self.recompute.is_some();
        let span = i64::try_from(self.lookback.time.as_micros()).unwrap_or(i64::MAX / 4);
        let rows = usize::try_from(self.lookback.rows).unwrap_or(usize::MAX);
        for seg in &chunk.segments {
            let Some(Some(book)) = self.books.get_mut(seg.sym) else {
                continue;
            };
            let arena = &mut self.arena;
            let mut i = seg.start;
            book.pending.pop_front(seg.live_end - seg.start, |r| {
                let at = if keep_rows {
                    Some(r)
                } else {
                    arena.release(r.batch, 1);
                    None
                };
                book.history.push(HistRow {
                    ts: chunk.ts[i],
                    offset: offs.value(i),
                    at,
                });
                i += 1;
            });
            if seg.live_end > seg.start {
                book.emitted = Some(chunk.ts[seg.live_end - 1]);
            }
            if let Some(e) = book.emitted {
                book.history.prune(e, span, rows, |h| {
                    if let Some(r) = h.at {
                        arena.release(r.batch, 1);
                    }
                });
            }
        }
    }

    /// Puts the market rows into the context tables when they changed.
    fn sync_market_context(&mut self) {
        if let Some(m) = &mut self.market {
            if m.changed {
                m.changed = false;
                let spec = TableSpec::market();
                self.context.set(
                    &spec.name,
                    with_partitions(&spec),
                    m.rows.values().cloned().collect(),
                );
            }
        }
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
            let query = match &mut self.bucket_query {
                Some(q) => q,
                None => self
                    .bucket_query
                    .insert(BucketQuery::new(self.catalog.market_sql())),
            };
            query.rows(&closed.ticks, &self.symbols, &profiles).await?
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
            .iter()
            .flatten()
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
        if m.rows.first_key_value().is_some_and(|(&b, _)| b < bound) {
            m.rows = m.rows.split_off(&bound);
            m.changed = true;
        }
        m.counts.retain(|_, c| {
            *c = c.split_off(&bound);
            !c.is_empty()
        });
    }
}

/// A session with the UDFs and the context tables (`ticks` is registered
/// by whoever computes over it).
fn context_session(tables: &ContextTables) -> Result<SessionContext, ExecutorError> {
    let ctx = schema_session();
    for (name, schema, batches) in tables.all() {
        ctx.deregister_table(name)?;
        ctx.register_table(name, Arc::new(MemTable::try_new(schema, vec![batches])?))?;
    }
    Ok(ctx)
}

/// A duration in whole microseconds, saturating.
fn duration_us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 4)
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
