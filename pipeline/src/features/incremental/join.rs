//! The right side of a feature file's `LEFT JOIN` to a context table
//! (`symbols`, `profiles`, `market`, `betas`): computed once per version of
//! the tables it reads, indexed by its join key, and probed per tick.

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::{provider_as_source, MemTable};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::PhysicalExpr;
use hashbrown::hash_table::Entry;
use hashbrown::{DefaultHashBuilder, HashTable};

/// The context tables a program's joins read, each with a version that
/// changes whenever its rows do.
#[derive(Debug, Default, Clone)]
pub struct ContextTables {
    tables: HashMap<String, ContextTable>,
    next_version: u64,
}

#[derive(Debug, Clone)]
struct ContextTable {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    version: u64,
}

impl ContextTables {
    /// Replaces the rows of table `name` (batches of `schema`, the lake
    /// table's schema with its partition columns).
    pub fn set(&mut self, name: &str, schema: SchemaRef, batches: Vec<RecordBatch>) {
        self.next_version += 1;
        self.tables.insert(
            name.to_owned(),
            ContextTable {
                schema,
                batches,
                version: self.next_version,
            },
        );
    }

    /// Every table: name, schema and rows.
    pub fn all(&self) -> impl Iterator<Item = (&str, SchemaRef, Vec<RecordBatch>)> {
        self.tables
            .iter()
            .map(|(n, t)| (n.as_str(), Arc::clone(&t.schema), t.batches.clone()))
    }

    fn version(&self, name: &str) -> u64 {
        self.tables.get(name).map_or(0, |t| t.version)
    }
}

/// A join's right input and its index.
pub(super) struct RightSide {
    /// The plan of the right input (it scans context tables only).
    pub plan: LogicalPlan,
    /// Tables the plan scans.
    pub tables: Vec<String>,
    /// When the plan is a bare scan: the table and the columns it keeps.
    pub direct: Option<(String, Vec<usize>)>,
    /// Join key expressions over the right input's rows.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// The right input's schema (every field nullable).
    pub schema: SchemaRef,
    /// What the feature file is called, for errors.
    pub file: String,
    pub cache: Option<Index>,
}

/// The right input's rows for one version of its tables, by key.
///
/// The keys stay in one [`Rows`] buffer and the table holds row numbers:
/// the market table changes with every closed bucket, and an index of boxed
/// keys (an allocation per row, SipHash) cost a fifth of a wide universe's
/// streaming CPU in rebuilds.
pub(super) struct Index {
    versions: Vec<u64>,
    batch: RecordBatch,
    converter: RowConverter,
    keys: Rows,
    rows: HashTable<u32>,
    hasher: DefaultHashBuilder,
    /// A key held by two rows: the join would repeat ticks.
    repeated: Option<String>,
}

impl Index {
    /// The row whose key is `key`.
    fn find(&self, key: &[u8]) -> Option<u32> {
        let keys = &self.keys;
        self.rows
            .find(self.hasher.hash_one(key), |&j| {
                keys.row(j as usize).as_ref() == key
            })
            .copied()
    }
}

impl RightSide {
    /// Recomputes the rows and the index when a table it reads changed.
    pub async fn refresh(&mut self, tables: &ContextTables) -> Result<()> {
        let versions: Vec<u64> = self.tables.iter().map(|t| tables.version(t)).collect();
        if self.cache.as_ref().is_some_and(|c| c.versions == versions) {
            return Ok(());
        }
        let batch = match &self.direct {
            Some((table, columns)) => {
                let t = tables.tables.get(table);
                let all = match t {
                    Some(t) => concat_batches(&t.schema, &t.batches)?,
                    None => return Err(missing(table)),
                };
                let projected = all.project(columns)?;
                RecordBatch::try_new(Arc::clone(&self.schema), projected.columns().to_vec())?
            }
            None => {
                let ctx = crate::lake::schema_session();
                let plan = self
                    .plan
                    .clone()
                    .transform_up(|node| match node {
                        LogicalPlan::TableScan(mut scan) => {
                            let name = scan.table_name.table().to_owned();
                            let t = tables.tables.get(&name).ok_or_else(|| missing(&name))?;
                            let mem =
                                MemTable::try_new(Arc::clone(&t.schema), vec![t.batches.clone()])?;
                            scan.source = provider_as_source(Arc::new(mem));
                            Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
                        }
                        other => Ok(Transformed::no(other)),
                    })?
                    .data;
                let batches = ctx.execute_logical_plan(plan).await?.collect().await?;
                let all =
                    concat_batches(&Arc::new(self.plan.schema().as_arrow().clone()), &batches)?;
                RecordBatch::try_new(Arc::clone(&self.schema), all.columns().to_vec())?
            }
        };
        let keys = evaluate(&self.keys, &batch)?;
        let converter = RowConverter::new(
            keys.iter()
                .map(|k| SortField::new(k.data_type().clone()))
                .collect(),
        )?;
        let converted = converter.convert_columns(&keys)?;
        let hasher = DefaultHashBuilder::default();
        let mut rows: HashTable<u32> = HashTable::with_capacity(batch.num_rows());
        let mut repeated = None;
        for i in 0..batch.num_rows() {
            if keys.iter().any(|k| k.is_null(i)) {
                continue; // a NULL key matches nothing
            }
            let key = converted.row(i);
            let key = key.as_ref();
            let same = |&j: &u32| converted.row(j as usize).as_ref() == key;
            let rehash = |&j: &u32| hasher.hash_one(converted.row(j as usize).as_ref());
            match rows.entry(hasher.hash_one(key), same, rehash) {
                // The later row wins, as a map insert would; the join
                // refuses to run on a repeated key anyway.
                Entry::Occupied(mut o) => {
                    *o.get_mut() = i as u32;
                    if repeated.is_none() {
                        repeated = Some(format!("row {i}"));
                    }
                }
                Entry::Vacant(v) => {
                    v.insert(i as u32);
                }
            }
        }
        self.cache = Some(Index {
            versions,
            batch,
            converter,
            keys: converted,
            rows,
            hasher,
            repeated,
        });
        Ok(())
    }

    /// The right columns for each left row whose key is `left_keys` (NULL
    /// where none matches); `None` for no lookups at all (all NULL).
    pub fn probe(&self, left_keys: Option<&[ArrayRef]>, rows: usize) -> Result<Vec<ArrayRef>> {
        let Some(left_keys) = left_keys else {
            return Ok(self
                .schema
                .fields()
                .iter()
                .map(|f| arrow::array::new_null_array(f.data_type(), rows))
                .collect());
        };
        let Some(index) = &self.cache else {
            return Err(DataFusionError::Internal(format!(
                "{}: the join's right side was not loaded",
                self.file
            )));
        };
        if let Some(at) = &index.repeated {
            return Err(DataFusionError::Execution(format!(
                "{}: a joined table ({}) holds a key more than once ({at}): the join would \
                 repeat ticks; join on a unique key",
                self.file,
                self.tables.join(", ")
            )));
        }
        let converted = index.converter.convert_columns(left_keys)?;
        let picked: UInt32Array = (0..rows)
            .map(|i| {
                if left_keys.iter().any(|k| k.is_null(i)) {
                    None
                } else {
                    index.find(converted.row(i).as_ref())
                }
            })
            .collect();
        index
            .batch
            .columns()
            .iter()
            .map(|c| Ok(take(c.as_ref(), &picked, None)?))
            .collect()
    }
}

/// Expressions evaluated over `batch`, as arrays.
pub(super) fn evaluate(
    exprs: &[Arc<dyn PhysicalExpr>],
    batch: &RecordBatch,
) -> Result<Vec<ArrayRef>> {
    exprs
        .iter()
        .map(|e| e.evaluate(batch)?.into_array(batch.num_rows()))
        .collect()
}

fn missing(table: &str) -> DataFusionError {
    DataFusionError::Plan(format!(
        "the context table `{table}` is not loaded in the streaming executor"
    ))
}
