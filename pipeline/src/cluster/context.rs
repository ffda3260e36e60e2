//! A backfill's context tables made on the executors.
//!
//! The context tables (minute statistics, intraday profiles, market
//! buckets, betas) are made per date by our own Rust stages, with SQL
//! pieces, not by one SQL query the engine could cut into stages. They go
//! to the cluster as a plan leaf of our own, [`ContextExec`]: "make table
//! T for these dates", one partition per block of dates, each partition
//! writing its dates' files into the shared lake and answering one row per
//! date. datafusion-distributed ships it like any leaf: the coordinator asks
//! for one task per date ([`desired_tasks`]), the engine caps that at the
//! executors listed, and [`scale_up`] gives each task its own block of
//! dates; [`ContextCodec`] carries the leaf across (the executors register
//! it too). Only the small answer comes back.
//!
//! Each table needs only what earlier tables made for the same or earlier
//! dates, so a backfill makes them one table at a time, every date of a
//! table before the next table starts ([`make_context`]): the executors
//! never wait on each other within a table. The code that makes a date's
//! table is the single-node backfill's, so the files are the same bits.

use std::fmt;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use chrono::NaiveDate;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::prelude::SessionContext;
use datafusion_distributed::{
    DesiredTaskCountEvent, DesiredTaskCountEventResponse, DistributedLeafExec,
    ScaleUpLeafNodeEvent, ScaleUpLeafNodeEventResponse,
};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use serde::{Deserialize, Serialize};

use crate::features::market::{
    betas_done, market_done, write_betas_cached, write_market, BetaCache,
};
use crate::features::profiles::{
    minute_stats_done, profiles_done, write_minute_stats, write_profiles_cached, MinuteStatsCache,
    ProfileError,
};
use crate::lake::LakeRoot;

/// One of the context tables, in the order a backfill makes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContextTable {
    /// `minute_stats`: per symbol and minute of a date, from its ticks.
    MinuteStats,
    /// `profiles`: from the trailing dates' minute statistics.
    Profiles,
    /// `market`: the date's buckets over every symbol, with its profiles.
    Market,
    /// `betas`: from the trailing dates' market buckets.
    Betas,
}

impl ContextTable {
    /// The lake table's name.
    pub fn name(self) -> &'static str {
        match self {
            ContextTable::MinuteStats => "minute_stats",
            ContextTable::Profiles => "profiles",
            ContextTable::Market => "market",
            ContextTable::Betas => "betas",
        }
    }

    /// Whether `date`'s rows of this table are stored (its marker).
    pub async fn done(self, root: &LakeRoot, date: NaiveDate) -> bool {
        match self {
            ContextTable::MinuteStats => minute_stats_done(root, date).await,
            ContextTable::Profiles => profiles_done(root, date).await,
            ContextTable::Market => market_done(root, date).await,
            ContextTable::Betas => betas_done(root, date).await,
        }
    }
}

/// What a [`ContextExec`] does, as it crosses to an executor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Work {
    /// The lake's root as a URL every process resolves alike
    /// ([`LakeRoot::url`]).
    root: String,
    table: ContextTable,
    /// `queries/market/buckets.sql` (the market buckets and the betas).
    market_sql: String,
    /// The dates to make, sorted.
    dates: Vec<String>,
    /// Output partitions: blocks of consecutive dates, made side by side.
    partitions: usize,
}

/// The schema of what a [`ContextExec`] answers: a row per date made.
pub fn answer_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("table", DataType::Utf8, false),
        Field::new("date", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
    ]))
}

/// The plan leaf that makes one context table for a list of dates and
/// writes it into the lake; partition `p` makes the `p`-th block of
/// consecutive dates (consecutive, so that the trailing dates one date
/// reads are mostly in the partition's cache already).
pub struct ContextExec {
    work: Work,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for ContextExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextExec")
            .field("table", &self.work.table)
            .field("dates", &self.work.dates.len())
            .finish_non_exhaustive()
    }
}

impl ContextExec {
    fn new(work: Work) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(answer_schema()),
            Partitioning::UnknownPartitioning(work.partitions.max(1)),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        ContextExec { work, properties }
    }

    /// The same work restricted to `dates`, with the same partitions (the
    /// engine needs every task's variant of a leaf to agree on them).
    fn with_dates(&self, dates: Vec<String>) -> Self {
        ContextExec::new(Work {
            dates,
            ..self.work.clone()
        })
    }
}

/// The `i`-th of `n` blocks of consecutive items (sizes differ by at most
/// one; blocks past the items are empty).
fn block<T: Clone>(items: &[T], i: usize, n: usize) -> Vec<T> {
    let n = n.max(1);
    let (size, extra) = (items.len() / n, items.len() % n);
    let start = i * size + i.min(extra);
    let len = size + usize::from(i < extra);
    items
        .get(start.min(items.len())..(start + len).min(items.len()))
        .map(<[T]>::to_vec)
        .unwrap_or_default()
}

impl DisplayAs for ContextExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ContextExec: table={}, dates={}",
            self.work.table.name(),
            self.work.dates.len()
        )
    }
}

impl ExecutionPlan for ContextExec {
    fn name(&self) -> &str {
        "ContextExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let work = self.work.clone();
        let dates = block(&work.dates, partition, work.partitions);
        let made = async move { make_dates(&work, &dates).await };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            answer_schema(),
            futures::stream::once(made),
        )))
    }
}

/// Makes `work.table` for `dates` in order, one after the other (a
/// partition's share), and answers a row per date.
async fn make_dates(work: &Work, dates: &[String]) -> Result<RecordBatch> {
    let root = LakeRoot::parse(&work.root).map_err(|e| DataFusionError::External(Box::new(e)))?;
    let mut stats = MinuteStatsCache::default();
    let mut betas = BetaCache::default();
    let mut rows = Vec::with_capacity(dates.len());
    for text in dates {
        let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|e| {
            DataFusionError::Internal(format!("context work names no date: {text:?}: {e}"))
        })?;
        let clock = std::time::Instant::now();
        let made = match work.table {
            ContextTable::MinuteStats => write_minute_stats(&root, date).await.map(|()| 0),
            ContextTable::Profiles => write_profiles_cached(&root, date, &mut stats)
                .await
                .map(|b| b.num_rows() as u64),
            ContextTable::Market => write_market(&root, date, &work.market_sql, None).await,
            ContextTable::Betas => {
                write_betas_cached(&root, date, &work.market_sql, &mut betas).await
            }
        };
        let n = made.map_err(|e: ProfileError| DataFusionError::External(Box::new(e)))?;
        tracing::info!(table = work.table.name(), %date, rows = n,
            secs = clock.elapsed().as_secs_f64(), "Context table made.");
        rows.push(n);
    }
    let table: ArrayRef = Arc::new(StringArray::from(vec![work.table.name(); dates.len()]));
    let date: ArrayRef = Arc::new(StringArray::from_iter_values(dates));
    let count: ArrayRef = Arc::new(UInt64Array::from(rows));
    Ok(RecordBatch::try_new(
        answer_schema(),
        vec![table, date, count],
    )?)
}

/// A table whose scan is a [`ContextExec`]: how the work enters a query
/// (and so the distributed planner).
#[derive(Debug)]
struct ContextWorkTable(Work);

#[async_trait]
impl TableProvider for ContextWorkTable {
    fn schema(&self) -> SchemaRef {
        answer_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if projection.is_some_and(|p| p.len() != answer_schema().fields().len()) {
            return Err(DataFusionError::Internal(
                "the context work is read whole".into(),
            ));
        }
        Ok(Arc::new(ContextExec::new(self.0.clone())))
    }
}

/// Makes `table` for `dates` on the session's cluster (each date's files
/// written by an executor into the lake at `root`) and returns the rows
/// made per date, in the order of `dates`. Partitions per task: the
/// session's `target_partitions`, as for every other stage of ours.
pub async fn make_context(
    ctx: &SessionContext,
    root: &LakeRoot,
    table: ContextTable,
    market_sql: &str,
    dates: &[NaiveDate],
) -> Result<Vec<(NaiveDate, u64)>> {
    if dates.is_empty() {
        return Ok(Vec::new());
    }
    let partitions = ctx
        .state()
        .config()
        .target_partitions()
        .clamp(1, dates.len());
    let work = Work {
        root: root.url(),
        table,
        market_sql: market_sql.to_owned(),
        dates: dates
            .iter()
            .map(|d| d.format("%Y-%m-%d").to_string())
            .collect(),
        partitions,
    };
    let name = format!("context_work_{}", table.name());
    ctx.register_table(&name, Arc::new(ContextWorkTable(work)))?;
    let answered = async {
        ctx.sql(&format!("SELECT \"table\", date, rows FROM {name}"))
            .await?
            .collect()
            .await
    }
    .await;
    ctx.deregister_table(&name)?;
    let mut made = Vec::with_capacity(dates.len());
    for batch in answered? {
        let date = column::<StringArray>(&batch, 1)?;
        let rows = column::<UInt64Array>(&batch, 2)?;
        for i in 0..batch.num_rows() {
            let d = NaiveDate::parse_from_str(date.value(i), "%Y-%m-%d")
                .map_err(|e| DataFusionError::Internal(format!("an executor answered {e}")))?;
            made.push((d, rows.value(i)));
        }
    }
    made.sort_unstable();
    let asked: Vec<NaiveDate> = dates.to_vec();
    let answered: Vec<NaiveDate> = made.iter().map(|(d, _)| *d).collect();
    if answered != asked {
        return Err(DataFusionError::Execution(format!(
            "{}: the executors answered for {} of {} dates",
            table.name(),
            answered.len(),
            asked.len()
        )));
    }
    Ok(made)
}

fn column<T: 'static>(batch: &RecordBatch, i: usize) -> Result<&T> {
    batch
        .column(i)
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| DataFusionError::Internal(format!("context answer column {i}: wrong type")))
}

/// The distributed planner's question for our leaf: one task per date
/// wanted (the engine caps it at the executors listed).
pub fn desired_tasks(ev: DesiredTaskCountEvent) -> Option<Result<DesiredTaskCountEventResponse>> {
    let exec = ev.plan.downcast_ref::<ContextExec>()?;
    Some(Ok(DesiredTaskCountEventResponse::desired(
        exec.work.dates.len().max(1),
    )))
}

/// Gives each of the stage's tasks its own block of consecutive dates.
pub fn scale_up(ev: ScaleUpLeafNodeEvent) -> Option<Result<ScaleUpLeafNodeEventResponse>> {
    let exec = ev.plan.downcast_ref::<ContextExec>()?;
    let variants = (0..ev.task_count).map(|t| {
        Arc::new(exec.with_dates(block(&exec.work.dates, t, ev.task_count)))
            as Arc<dyn ExecutionPlan>
    });
    Some(
        DistributedLeafExec::try_new(Arc::clone(ev.plan), variants)
            .map(|leaf| ScaleUpLeafNodeEventResponse::new(Arc::new(leaf))),
    )
}

/// Carries [`ContextExec`] between the coordinator and the executors (as
/// JSON: a root, a table, the market SQL and dates).
#[derive(Debug, Default, Clone, Copy)]
pub struct ContextCodec;

impl PhysicalExtensionCodec for ContextCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        _inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let work: Work = serde_json::from_slice(buf)
            .map_err(|e| DataFusionError::Internal(format!("not a context plan: {e}")))?;
        Ok(Arc::new(ContextExec::new(work)))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let Some(exec) = node.downcast_ref::<ContextExec>() else {
            return Err(DataFusionError::NotImplemented(format!(
                "{} is not ours to encode",
                node.name()
            )));
        };
        serde_json::to_writer(buf, &exec.work)
            .map_err(|e| DataFusionError::Internal(format!("encoding a context plan: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_every_item_once_in_order() {
        for len in 0..20 {
            let items: Vec<usize> = (0..len).collect();
            for n in 1..6 {
                let all: Vec<usize> = (0..n).flat_map(|i| block(&items, i, n)).collect();
                assert_eq!(all, items, "{len} items in {n} blocks");
                let sizes: Vec<usize> = (0..n).map(|i| block(&items, i, n).len()).collect();
                let (lo, hi) = (sizes.iter().min(), sizes.iter().max());
                assert!(hi.zip(lo).is_some_and(|(h, l)| h - l <= 1), "{sizes:?}");
            }
        }
    }

    #[test]
    fn the_codec_carries_the_work_whole() {
        let work = Work {
            root: "s3://bucket/lake".into(),
            table: ContextTable::Betas,
            market_sql: "SELECT 1 -- 'quoted'\n".into(),
            dates: vec!["2024-01-02".into(), "2024-01-03".into()],
            partitions: 2,
        };
        let exec: Arc<dyn ExecutionPlan> = Arc::new(ContextExec::new(work.clone()));
        let mut buf = Vec::new();
        let converter = datafusion_proto::physical_plan::DefaultPhysicalProtoConverter {};
        ContextCodec.try_encode(exec, &mut buf, &converter).unwrap();
        let ctx = SessionContext::new();
        let back = ContextCodec
            .try_decode(&buf, &[], &ctx.task_ctx(), &converter)
            .unwrap();
        let back = back.downcast_ref::<ContextExec>().unwrap();
        assert_eq!(back.work, work);
        assert_eq!(back.properties().partitioning.partition_count(), 2);
        assert!(ContextCodec
            .try_decode(b"{}", &[], &ctx.task_ctx(), &converter)
            .is_err());
    }
}
