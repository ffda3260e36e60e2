//! Tables whose rows are read when a plan **executes**, not when it is
//! planned: a query planned once ([`PreparedQuery`]) runs again and again
//! over new rows, paying parsing, analysis, optimisation and physical
//! planning once instead of at every run.
//!
//! A DataFusion `MemTable` copies its batches into the physical plan when
//! it is planned; a [`LiveTable`]'s scan holds a handle instead and reads
//! whatever the handle holds when the plan executes. Between runs the plan's
//! operator state is reset ([`reset_plan_states`]); dynamic filters (which a
//! reset does not clear) are off in the session such a plan is made in.

use std::fmt;
use std::sync::{Arc, RwLock};

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{
    collect, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::prelude::SessionContext;

/// The rows a [`LiveTable`] holds now.
#[derive(Debug, Clone, Default)]
pub struct LiveRows(Arc<RwLock<Vec<RecordBatch>>>);

impl LiveRows {
    /// Replaces the rows (batches of the table's schema).
    pub fn set(&self, batches: Vec<RecordBatch>) {
        // A poisoned lock only means a panic elsewhere mid-write: the
        // batches are replaced whole, so take the lock anyway.
        let mut rows = self.0.write().unwrap_or_else(|e| e.into_inner());
        *rows = batches;
    }

    fn get(&self) -> Vec<RecordBatch> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A table of `schema` whose rows are those of its [`LiveRows`] at the
/// time a plan scanning it executes.
#[derive(Debug)]
pub struct LiveTable {
    schema: SchemaRef,
    rows: LiveRows,
}

impl LiveTable {
    /// A table of `schema` reading `rows`.
    pub fn new(schema: SchemaRef, rows: LiveRows) -> Self {
        Self { schema, rows }
    }
}

#[async_trait]
impl TableProvider for LiveTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
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
        let columns: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let schema = Arc::new(self.schema.project(&columns)?);
        Ok(Arc::new(LiveScan {
            properties: Arc::new(PlanProperties::new(
                EquivalenceProperties::new(Arc::clone(&schema)),
                Partitioning::UnknownPartitioning(1),
                EmissionType::Incremental,
                Boundedness::Bounded,
            )),
            schema,
            columns,
            rows: self.rows.clone(),
        }))
    }
}

/// The scan of a [`LiveTable`]: one partition, the rows of the moment.
#[derive(Debug)]
struct LiveScan {
    schema: SchemaRef,
    columns: Vec<usize>,
    rows: LiveRows,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for LiveScan {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "LiveScan: columns={:?}", self.columns)
    }
}

impl ExecutionPlan for LiveScan {
    fn name(&self) -> &str {
        "LiveScan"
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
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "LiveScan has one partition, asked for {partition}"
            )));
        }
        let batches = self
            .rows
            .get()
            .iter()
            .map(|b| {
                let projected = b.project(&self.columns)?;
                RecordBatch::try_new(Arc::clone(&self.schema), projected.columns().to_vec())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Box::pin(MemoryStream::try_new(
            batches,
            Arc::clone(&self.schema),
            None,
        )?))
    }
}

/// A query planned once over [`LiveTable`]s, run again over their rows of
/// the moment.
pub struct PreparedQuery {
    ctx: SessionContext,
    plan: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
}

impl fmt::Debug for PreparedQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedQuery")
            .field("schema", &self.schema)
            .finish()
    }
}

impl PreparedQuery {
    /// A session for planning prepared queries: one partition per operator
    /// (inputs are small and the plan runs often), no dynamic filters (a
    /// plan's reset between runs does not clear them).
    pub async fn session() -> Result<SessionContext> {
        let ctx = super::schema_session();
        for set in [
            "SET datafusion.execution.target_partitions = 1",
            "SET datafusion.optimizer.enable_dynamic_filter_pushdown = false",
        ] {
            ctx.sql(set).await?.collect().await?;
        }
        Ok(ctx)
    }

    /// Plans `sql` in `ctx` (a [`PreparedQuery::session`] whose tables the
    /// query reads are [`LiveTable`]s).
    pub async fn new(ctx: SessionContext, sql: &str) -> Result<Self> {
        let df = ctx.sql(sql).await?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let plan = df.create_physical_plan().await?;
        Ok(Self { ctx, plan, schema })
    }

    /// Runs the query over the live tables' rows of now, as one batch.
    pub async fn run(&mut self) -> Result<RecordBatch> {
        self.plan = reset_plan_states(Arc::clone(&self.plan))?;
        let batches = collect(Arc::clone(&self.plan), self.ctx.task_ctx()).await?;
        Ok(concat_batches(&self.schema, &batches)?)
    }
}
