//! [`LakeUnits`]: rows for one lake table, kept until they are in files.
//!
//! A live ingestion hands rows over as they come and makes them files every
//! few seconds. The rows handed over between two flushes form a **unit**,
//! written by one [`Appender`]. A unit whose write fails is kept whole and
//! written again, as is, before anything newer: the same rows cut the same
//! content-addressed files, so a file that did get written the first time
//! is found on the retry, not doubled. (An appender's buffers, once given to
//! a failing write, were lost with it.)

use std::collections::VecDeque;

use arrow::array::RecordBatch;

use crate::lake::{AppendStats, Appender, AppenderOptions, LakeError, LakeRoot, TableSpec};

/// Rows of one table not yet in files (see the module documentation).
pub struct LakeUnits {
    root: LakeRoot,
    spec: TableSpec,
    /// Rows handed over since the last flush.
    current: Vec<RecordBatch>,
    /// Units whose write failed, oldest first.
    failed: VecDeque<Vec<RecordBatch>>,
    /// Rows in `current` and `failed`.
    rows: usize,
}

impl LakeUnits {
    /// Rows for `spec`'s table under `root`.
    pub fn new(root: LakeRoot, spec: TableSpec) -> Self {
        Self {
            root,
            spec,
            current: Vec::new(),
            failed: VecDeque::new(),
            rows: 0,
        }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.spec.name
    }

    /// Takes rows; they are written by the next [`flush`](Self::flush).
    pub fn push(&mut self, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.rows += batch.num_rows();
            self.current.push(batch);
        }
    }

    /// Rows not yet in files.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Writes the units held, oldest first; stops at the first failure,
    /// keeping that unit and the later ones for the next call.
    pub async fn flush(&mut self) -> Result<AppendStats, LakeError> {
        if !self.current.is_empty() {
            self.failed.push_back(std::mem::take(&mut self.current));
        }
        let mut total = AppendStats::default();
        while let Some(unit) = self.failed.front() {
            let rows: usize = unit.iter().map(RecordBatch::num_rows).sum();
            let mut a = Appender::new(
                self.root.clone(),
                self.spec.clone(),
                AppenderOptions::default(),
            );
            for b in unit {
                a.append(b.clone()).await?;
            }
            add(&mut total, a.finish().await?);
            self.failed.pop_front();
            self.rows -= rows;
        }
        Ok(total)
    }
}

/// Adds `more` to `total`.
pub(crate) fn add(total: &mut AppendStats, more: AppendStats) {
    total.rows += more.rows;
    total.files_written += more.files_written;
    total.files_existing += more.files_existing;
    total.bytes_written += more.bytes_written;
}
