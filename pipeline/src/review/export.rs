//! `labels export`: analysts' verdicts on alerts and cases become lake
//! labels that `train` learns from.

use crate::labels::{LabelBuilder, REVIEWED_NEGATIVE};
use crate::lake::{replace_named, LakeRoot, TableSpec};

use super::query::{Verdict, VerdictOn};
use super::ReviewError;

/// `source` of the labels written from verdicts, and the name of their
/// files (`labels/date=D/review.parquet`).
pub const REVIEW_SOURCE: &str = "review";

/// What an export wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExportSummary {
    /// Confirmed alerts written as positive labels.
    pub confirmed: usize,
    /// Dismissed alerts written as reviewed negatives.
    pub dismissed: usize,
    /// Confirmed cases written as positive labels over their span.
    pub cases_confirmed: usize,
    /// Dismissed cases written as reviewed negatives over their span.
    pub cases_dismissed: usize,
    /// Dates whose review file was written.
    pub dates_written: usize,
    /// Dates whose review file was removed (no verdict left there).
    pub dates_removed: usize,
}

/// Writes the verdicts as the lake's review labels, replacing the previous
/// export. A confirmed alert is the interval `[ts − pad, ts + pad]` of its
/// symbol labelled with the verdict's kind, a confirmed case the interval
/// `[first alert − pad, last alert + pad]`; a dismissed one is the same
/// interval labelled [`REVIEWED_NEGATIVE`] (never a positive for `train`).
/// The labels of other sources (the simulator's, CSV files) are untouched.
pub async fn export_labels(
    root: &LakeRoot,
    verdicts: &[Verdict],
    pad_us: i64,
) -> Result<ExportSummary, ReviewError> {
    let mut builder = LabelBuilder::new(REVIEW_SOURCE);
    let mut summary = ExportSummary::default();
    for v in verdicts {
        let (start, end) = (
            v.start_us.saturating_sub(pad_us),
            v.end_us.saturating_add(pad_us),
        );
        let case = matches!(v.on, VerdictOn::Case(_));
        match v.status.as_str() {
            "confirmed" => {
                let kind = v
                    .kind
                    .as_deref()
                    .unwrap_or(super::query::DEFAULT_CONFIRMED_KIND);
                builder.push(&v.symbol, start, end, kind);
                *if case {
                    &mut summary.cases_confirmed
                } else {
                    &mut summary.confirmed
                } += 1;
            }
            "dismissed" => {
                builder.push(&v.symbol, start, end, REVIEWED_NEGATIVE);
                *if case {
                    &mut summary.cases_dismissed
                } else {
                    &mut summary.dismissed
                } += 1;
            }
            // Escalated (or a status a newer schema added): not settled yet.
            _ => {}
        }
    }
    let batch = builder.finish();
    let stats = replace_named(root, &TableSpec::labels(), REVIEW_SOURCE, &batch).await?;
    summary.dates_written = stats.written;
    summary.dates_removed = stats.removed;
    Ok(summary)
}
