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
