//! A physical optimizer rule that keeps the sorted ticks on the probe side
//! of hash joins, so a feature file joining a context table (`market`,
//! `betas`) returns its rows in the ticks' order without a sort.
//!
//! A `CollectLeft` hash join builds a table over its left input and streams
//! its right one through it, so its output follows the right input's order.
//! Join selection puts the smaller input on the left; with minute bars, the
//! `market` table (a row per symbol and minute) is as large as the ticks, so
//! the ticks may end up as the build side and their key order is lost: the
//! file then sorts all its rows again (measured: about a second of CPU per
//! 1.5M bars). Swapping such a join back costs at most a larger hash table.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{JoinType, Result};
use datafusion::execution::SessionStateBuilder;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::SessionContext;

/// Swaps `CollectLeft` hash joins (inner or left) whose left input is sorted
/// and right input is not, making the sorted input the probe side.
#[derive(Debug, Default)]
pub struct SortedProbeSide;

impl PhysicalOptimizerRule for SortedProbeSide {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            let swap = *join.partition_mode() == PartitionMode::CollectLeft
                && matches!(join.join_type(), JoinType::Inner | JoinType::Left)
                && join.left().output_ordering().is_some()
                && join.right().output_ordering().is_none();
            if !swap {
                return Ok(Transformed::no(node));
            }
            Ok(Transformed::yes(
                join.swap_inputs(PartitionMode::CollectLeft)?,
            ))
        })
        .data()
    }

    fn name(&self) -> &str {
        "sorted_probe_side"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A session sharing `ctx`'s tables, functions and settings whose planner
/// also runs [`SortedProbeSide`], right after join selection (before the
/// sorts a plan needs are decided).
pub fn with_sorted_probe_side(ctx: &SessionContext) -> SessionContext {
    let state = ctx.state();
    let mut rules = state.physical_optimizers().to_vec();
    let at = rules
        .iter()
        .position(|r| r.name() == "join_selection")
        .map_or(0, |i| i + 1);
    rules.insert(at, Arc::new(SortedProbeSide));
    let state = SessionStateBuilder::new_from_existing(state)
        .with_physical_optimizer_rules(rules)
        .build();
    SessionContext::new_with_state(state)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
    use datafusion::catalog::MemTable;
    use datafusion::logical_expr::col;
    use datafusion::physical_plan::displayable;

    use super::*;

    /// `ticks` (sorted, declared so) left-joined to a larger unsorted table:
    /// join selection builds on the ticks and the key order needs a sort;
    /// with the rule the ticks are probed and the sort goes.
    #[tokio::test]
    async fn a_join_probing_the_sorted_ticks_needs_no_sort() {
        let ctx = SessionContext::new();
        ctx.sql("SET datafusion.execution.target_partitions = 1")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let n = 1000;
        let symbols: Vec<String> = (0..n).map(|i| format!("S{:04}", i / 10)).collect();
        let ticks = RecordBatch::try_from_iter([
            ("symbol", Arc::new(StringArray::from(symbols.clone())) as _),
            (
                "seq",
                Arc::new(Int64Array::from_iter_values(0..n as i64)) as _,
            ),
        ])
        .unwrap();
        let order = vec![vec![
            col("symbol").sort(true, false),
            col("seq").sort(true, false),
        ]];
        let table = MemTable::try_new(ticks.schema(), vec![vec![ticks]])
            .unwrap()
            .with_sort_order(order);
        ctx.register_table("ticks", Arc::new(table)).unwrap();
        // Unsorted and wider: the larger side, so never the build side.
        let other = RecordBatch::try_from_iter([
            (
                "symbol",
                Arc::new(StringArray::from_iter_values(symbols.iter().rev())) as _,
            ),
            (
                "seq",
                Arc::new(Int64Array::from_iter_values((0..n as i64).rev())) as _,
            ),
            ("a", Arc::new(Float64Array::from(vec![1.0; n])) as _),
            ("b", Arc::new(Float64Array::from(vec![2.0; n])) as _),
        ])
        .unwrap();
        let table = MemTable::try_new(other.schema(), vec![vec![other]]).unwrap();
        ctx.register_table("other", Arc::new(table)).unwrap();
        let sql = "SELECT t.symbol, t.seq, o.a + o.b AS f FROM ticks t \
                   LEFT JOIN other o ON o.symbol = t.symbol AND o.seq = t.seq \
                   ORDER BY t.symbol, t.seq";
        let plan_of = |ctx: SessionContext| async move {
            let plan = ctx
                .sql(sql)
                .await
                .unwrap()
                .create_physical_plan()
                .await
                .unwrap();
            let shown = displayable(plan.as_ref()).indent(false).to_string();
            shown
        };
        let plain = plan_of(ctx.clone()).await;
        assert!(plain.contains("SortExec"), "{plain}");
        let probed = plan_of(with_sorted_probe_side(&ctx)).await;
        assert!(!probed.contains("SortExec"), "{probed}");
        assert!(probed.contains("HashJoinExec"), "{probed}");
        let rows = with_sorted_probe_side(&ctx)
            .sql(sql)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(rows.iter().map(RecordBatch::num_rows).sum::<usize>(), n);
    }
}
