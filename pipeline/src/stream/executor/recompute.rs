//! The recompute path: feature files the incremental path cannot run
//! ([`crate::features::incremental::NotIncremental`]) re-run their SQL over
//! the held history and the chunk of each symbol they emit, as the whole
//! executor did before it computed incrementally. Slower, but any file the
//! catalog accepts runs.

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{interleave_record_batch, take};
use datafusion::prelude::SessionContext;

use super::held::Arena;
use super::{Book, ExecutorError};
use crate::features::incremental::{Chunk, NotIncremental};
use crate::features::{compute_features, Catalog};
use crate::lake::with_date;
use crate::tick::tick_schema;

/// The files recomputed, as a catalog of their own.
pub(super) struct Recompute {
    catalog: Catalog,
    /// Position of each of its files in the executor's catalog.
    files: Vec<usize>,
}

impl Recompute {
    /// The recompute path of `catalog`'s files listed in `not`; `None` when
    /// there are none.
    pub fn new(catalog: &Catalog, not: &[NotIncremental]) -> Option<Self> {
        if not.is_empty() {
            return None;
        }
        let mut files: Vec<usize> = not.iter().map(|n| n.file).collect();
        files.sort_unstable();
        files.dedup();
        Some(Self {
            catalog: catalog.subset(&files),
            files,
        })
    }

    /// Per file (its position in the executor's catalog), its features of
    /// the chunk's computed rows, in chunk order. `held` holds the chunk's
    /// rows in the arena's schema; `ctx` has the context tables.
    pub async fn compute(
        &mut self,
        ctx: &SessionContext,
        arena: &Arena,
        books: &[Option<Book>],
        chunk: &Chunk,
        held: &RecordBatch,
    ) -> Result<Vec<(usize, Vec<ArrayRef>)>, ExecutorError> {
        let (mut batches, at) = arena.live();
        let chunk_source = batches.len();
        batches.push(held);
        // Each symbol's history, then its chunk rows: key order, symbols
        // in the chunk's (name) order, as compute_features returns them.
        let mut idx: Vec<(usize, usize)> = Vec::new();
        let mut pick: Vec<u32> = Vec::with_capacity(chunk.live_rows());
        for seg in &chunk.segments {
            let Some(Some(book)) = books.get(seg.sym) else {
                continue;
            };
            for h in book.history.rows() {
                if let Some(r) = h.at {
                    idx.push((arena.index(&at, r.batch), r.row as usize));
                }
            }
            let first = idx.len();
            idx.extend((seg.start..seg.end).map(|i| (chunk_source, i)));
            pick.extend((first..first + (seg.live_end - seg.start)).map(|i| i as u32));
        }
        let rows = interleave_record_batch(&batches, &idx)?;
        let n = tick_schema().fields().len();
        let ticks = RecordBatch::try_new(tick_schema(), rows.columns()[..n].to_vec())?;
        let features = compute_features(ctx, &self.catalog, &with_date(&ticks)?).await?;
        let pick = UInt32Array::from(pick);
        let mut out = Vec::with_capacity(self.files.len());
        for (f, &file) in self.catalog.files().iter().zip(&self.files) {
            let mut columns = Vec::with_capacity(f.features.len());
            for name in &f.features {
                let c = features.column(features.schema().index_of(name)?);
                columns.push(take(c.as_ref(), &pick, None)?);
            }
            out.push((file, columns));
        }
        Ok(out)
    }
}
