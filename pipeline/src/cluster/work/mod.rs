//! Work of ours on the executors, as plan leaves the engine schedules.
//!
//! Two parts of a backfill are not one SQL query the engine could cut into
//! stages: the context tables (per date, our Rust stages with SQL pieces)
//! and a run of dates' features (the feature files lined up by key, then
//! written). Both go to the cluster as a plan leaf of ours, [`WorkExec`]:
//! a list of items (dates, or symbols) and what to do with them; each task
//! gets a block of consecutive items ([`scale_up`]), does the work there
//! with the single-node code, writes its files into the shared lake and
//! answers a few rows. datafusion-distributed ships the leaf like any scan:
//! the coordinator asks for a task per item ([`desired_tasks`]), the engine
//! caps that at the executors listed, and [`WorkCodec`] carries the leaf
//! across (the executors register it too).

pub mod context;
pub mod features;

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
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
use tokio::sync::Semaphore;

use crate::lake::LakeRoot;
use context::ContextWork;
use features::FeatureWork;

/// What a [`WorkExec`] does, as it crosses to an executor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Work {
    /// One context table for dates.
    Context(ContextWork),
    /// A run of dates' features for symbols.
    Features(FeatureWork),
}

impl Work {
    /// The items the work is cut by.
    fn items(&self) -> usize {
        match self {
            Work::Context(w) => w.dates.len(),
            Work::Features(w) => w.symbols.len(),
        }
    }

    /// The same work on the `i`-th of `n` blocks of its items, for one of
    /// `n` tasks.
    fn block(&self, i: usize, n: usize) -> Work {
        match self {
            Work::Context(w) => Work::Context(ContextWork {
                dates: block(&w.dates, i, n),
                ..w.clone()
            }),
            // One run of the features per task: the files' windows use the
            // executor's cores themselves.
            Work::Features(w) => Work::Features(FeatureWork {
                symbols: block(&w.symbols, i, n),
                partitions: 1,
                ..w.clone()
            }),
        }
    }

    /// Output partitions: blocks of the items, worked on side by side. The
    /// coordinator's leaf needs more than one for the engine to send it to
    /// the executors at all (a stage of one task runs in the coordinator).
    fn partitions(&self) -> usize {
        match self {
            Work::Context(w) => w.partitions.max(1),
            Work::Features(w) => w.partitions.max(1),
        }
    }

    fn schema(&self) -> SchemaRef {
        match self {
            Work::Context(_) => context::answer_schema(),
            Work::Features(_) => features::answer_schema(),
        }
    }

    /// The lake root the work names.
    fn root(&self) -> &str {
        match self {
            Work::Context(w) => &w.root,
            Work::Features(w) => &w.root,
        }
    }

    async fn run(self, partition: usize, root: &LakeRoot) -> Result<RecordBatch> {
        match self {
            Work::Context(w) => {
                let dates = block(&w.dates, partition, w.partitions);
                w.make(&dates, root).await
            }
            Work::Features(w) => {
                let symbols = block(&w.symbols, partition, w.partitions);
                w.run(&symbols, root).await
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Work::Context(w) => format!("table={}, dates={}", w.table.name(), w.dates.len()),
            Work::Features(w) => format!(
                "features {}..={}, symbols={}",
                w.first,
                w.last,
                w.symbols.len()
            ),
        }
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

/// What an executor lends the work it runs: its lake (work naming
/// another is refused) and a bound on the work partitions running at once.
#[derive(Clone)]
struct ExecutorSide {
    lake: LakeRoot,
    permits: Arc<Semaphore>,
}

/// The plan leaf doing work of ours (the context tables of dates, or a run
/// of dates' features for symbols) on an executor.
pub struct WorkExec {
    work: Work,
    /// Set when decoded by an executor; `None` in the coordinator (where a
    /// stage of one task may run).
    side: Option<ExecutorSide>,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for WorkExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkExec")
            .field("work", &self.work.describe())
            .finish_non_exhaustive()
    }
}

impl WorkExec {
    fn new(work: Work, side: Option<ExecutorSide>) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(work.schema()),
            Partitioning::UnknownPartitioning(work.partitions()),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        WorkExec {
            work,
            side,
            properties,
        }
    }
}

/// Runs `work`'s partition: on an executor, in its lake and once a permit
/// is free; elsewhere in the lake the work names.
async fn run_partition(
    work: Work,
    side: Option<ExecutorSide>,
    partition: usize,
) -> Result<RecordBatch> {
    let Some(side) = side else {
        let root =
            LakeRoot::parse(work.root()).map_err(|e| DataFusionError::External(Box::new(e)))?;
        return work.run(partition, &root).await;
    };
    if side.lake.url() != work.root() {
        return Err(DataFusionError::Execution(format!(
            "this executor works on the lake {} (its --lake), not {}",
            side.lake.url(),
            work.root()
        )));
    }
    let _permit = side
        .permits
        .acquire()
        .await
        .map_err(|e| DataFusionError::Internal(format!("executor permits: {e}")))?;
    work.run(partition, &side.lake).await
}

impl DisplayAs for WorkExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "WorkExec: {}", self.work.describe())
    }
}

impl ExecutionPlan for WorkExec {
    fn name(&self) -> &str {
        "WorkExec"
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
        let run = run_partition(self.work.clone(), self.side.clone(), partition);
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.work.schema(),
            futures::stream::once(run),
        )))
    }
}

/// A table whose scan is a [`WorkExec`]: how work enters a query (and so
/// the distributed planner).
#[derive(Debug)]
struct WorkTable(Work);

#[async_trait]
impl TableProvider for WorkTable {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
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
        if projection.is_some_and(|p| p.len() != self.0.schema().fields().len()) {
            return Err(DataFusionError::Internal(
                "the answer of work is read whole".into(),
            ));
        }
        Ok(Arc::new(WorkExec::new(self.0.clone(), None)))
    }
}

/// Runs `work` on the session's cluster; its answer's rows.
async fn run_work(ctx: &SessionContext, name: &str, work: Work) -> Result<Vec<RecordBatch>> {
    let columns: Vec<String> = work
        .schema()
        .fields()
        .iter()
        .map(|f| format!("\"{}\"", f.name()))
        .collect();
    ctx.register_table(name, Arc::new(WorkTable(work)))?;
    let answered = async {
        ctx.sql(&format!("SELECT {} FROM {name}", columns.join(", ")))
            .await?
            .collect()
            .await
    }
    .await;
    ctx.deregister_table(name)?;
    answered
}

/// A date as work names it (`YYYY-MM-DD`).
fn date(text: &str) -> Result<chrono::NaiveDate> {
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|e| DataFusionError::Internal(format!("work names no date: {text:?}: {e}")))
}

/// Column `i` of an answer, as `T`.
fn column<T: 'static>(batch: &RecordBatch, i: usize) -> Result<&T> {
    batch
        .column(i)
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| DataFusionError::Internal(format!("answer column {i}: wrong type")))
}

/// The distributed planner's question for our leaf: a task per item wanted
/// (the engine caps it at the executors listed).
pub fn desired_tasks(ev: DesiredTaskCountEvent) -> Option<Result<DesiredTaskCountEventResponse>> {
    let exec = ev.plan.downcast_ref::<WorkExec>()?;
    Some(Ok(DesiredTaskCountEventResponse::desired(
        exec.work.items().max(1),
    )))
}

/// Gives each of the stage's tasks its own block of consecutive items (the
/// engine needs every task's variant to agree on the partitions: they do,
/// the work's kind sets them).
pub fn scale_up(ev: ScaleUpLeafNodeEvent) -> Option<Result<ScaleUpLeafNodeEventResponse>> {
    let exec = ev.plan.downcast_ref::<WorkExec>()?;
    let variants = (0..ev.task_count).map(|t| {
        Arc::new(WorkExec::new(exec.work.block(t, ev.task_count), None)) as Arc<dyn ExecutionPlan>
    });
    Some(
        DistributedLeafExec::try_new(Arc::clone(ev.plan), variants)
            .map(|leaf| ScaleUpLeafNodeEventResponse::new(Arc::new(leaf))),
    )
}

/// Carries [`WorkExec`] between the coordinator and the executors (as JSON).
#[derive(Default, Clone)]
pub struct WorkCodec {
    side: Option<ExecutorSide>,
}

impl fmt::Debug for WorkCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkCodec")
            .field("lake", &self.side.as_ref().map(|s| s.lake.url()))
            .finish()
    }
}

impl WorkCodec {
    /// The codec of an executor working on `lake` only, running at most
    /// `concurrency` work partitions at once.
    pub fn for_executor(lake: LakeRoot, concurrency: usize) -> Self {
        WorkCodec {
            side: Some(ExecutorSide {
                lake,
                permits: Arc::new(Semaphore::new(concurrency.max(1))),
            }),
        }
    }
}

impl PhysicalExtensionCodec for WorkCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        _inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let work: Work = serde_json::from_slice(buf)
            .map_err(|e| DataFusionError::Internal(format!("not a plan of our work: {e}")))?;
        Ok(Arc::new(WorkExec::new(work, self.side.clone())))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let Some(exec) = node.downcast_ref::<WorkExec>() else {
            return Err(DataFusionError::NotImplemented(format!(
                "{} is not ours to encode",
                node.name()
            )));
        };
        serde_json::to_writer(buf, &exec.work)
            .map_err(|e| DataFusionError::Internal(format!("encoding a plan of our work: {e}")))
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

    fn round_trip(work: Work) {
        let exec: Arc<dyn ExecutionPlan> = Arc::new(WorkExec::new(work.clone(), None));
        let mut buf = Vec::new();
        let converter = datafusion_proto::physical_plan::DefaultPhysicalProtoConverter {};
        WorkCodec::default()
            .try_encode(exec, &mut buf, &converter)
            .unwrap();
        let ctx = SessionContext::new();
        let back = WorkCodec::default()
            .try_decode(&buf, &[], &ctx.task_ctx(), &converter)
            .unwrap();
        let back = back.downcast_ref::<WorkExec>().unwrap();
        assert_eq!(back.work, work);
        assert_eq!(
            back.properties().partitioning.partition_count(),
            work.partitions()
        );
    }

    #[tokio::test]
    async fn an_executor_refuses_work_on_another_lake() {
        let work = Work::Context(ContextWork {
            root: "memory://work-b/lake".into(),
            table: context::ContextTable::Profiles,
            market_sql: String::new(),
            dates: vec!["2024-01-02".into()],
            partitions: 1,
        });
        let lake = LakeRoot::parse("memory://work-a/lake").unwrap();
        let codec = WorkCodec::for_executor(lake, 1);
        let e = run_partition(work, codec.side, 0).await.unwrap_err();
        assert!(
            e.to_string().contains(
                "works on the lake memory://work-a/lake (its --lake), not memory://work-b/lake"
            ),
            "{e}"
        );
    }

    #[test]
    fn the_codec_carries_the_work_whole() {
        round_trip(Work::Context(ContextWork {
            root: "s3://bucket/lake".into(),
            table: context::ContextTable::Betas,
            market_sql: "SELECT 1 -- 'quoted'\n".into(),
            dates: vec!["2024-01-02".into(), "2024-01-03".into()],
            partitions: 2,
        }));
        round_trip(Work::Features(FeatureWork {
            root: "file:///lake".into(),
            sources: vec![("queries/features/a.sql".into(), "SELECT \"x\"".into())],
            market_sql: "m".into(),
            hash: "0123".into(),
            first: "2024-01-02".into(),
            last: "2024-01-05".into(),
            symbols: vec!["A".into(), "B'C".into()],
            partitions: 2,
            staging: "_staging/x".into(),
        }));
        let ctx = SessionContext::new();
        let converter = datafusion_proto::physical_plan::DefaultPhysicalProtoConverter {};
        assert!(WorkCodec::default()
            .try_decode(b"{}", &[], &ctx.task_ctx(), &converter)
            .is_err());
    }
}
