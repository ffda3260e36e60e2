//! Alerts to the lake's `alerts` table (`alerts/model_version=V/date=D/`):
//! the alerting `scores` rows, in the layout `score` writes.
//!
//! **Replays add nothing.** A streaming detector that crashes between this
//! sink and its PostgreSQL commit reads the batch again, cut differently,
//! so content-addressed files of each batch would hold the same alerts
//! twice. [`LakeWrites::Keyed`] names files by where their ticks came from
//! instead: one file per source partition and block of
//! [`OFFSET_BLOCK`] offsets (`part-p{partition}-o{first offset}.parquet`),
//! rewritten whole (read, merged on the alert key, put atomically) when a
//! batch brings alerts of its block. A replayed alert lands in the file it
//! was in, under its key, once.

use std::collections::{BTreeMap, HashSet};

use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::error::ArrowError;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;

use crate::lake::{replace_named, Appender, AppenderOptions, LakeError, LakeRoot, TableSpec};
use crate::sinks::{AlertBatch, AlertSink, SinkError, Written};
use crate::tick::{event_times, seqs, symbols};

/// Offsets of a source partition whose alerts share one lake file.
pub const OFFSET_BLOCK: i64 = 100_000;

/// When and how the lake sink writes its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LakeWrites {
    /// Each batch as soon as it is written, in files named by source
    /// partition and offset block, merged on the alert key (a streaming
    /// detector: a replay adds nothing; see the module documentation).
    Keyed,
    /// Everything at [`AlertSink::close`], content-addressed (a replay run
    /// once: fewer, larger files).
    AtClose,
}

/// Writes alerts to the lake (see the module documentation).
pub struct LakeAlertSink {
    root: LakeRoot,
    writes: LakeWrites,
    /// Open appenders per model version (only with [`LakeWrites::AtClose`]).
    open: BTreeMap<String, Appender>,
}

impl LakeAlertSink {
    /// A sink into `root`'s `alerts` table.
    pub fn new(root: LakeRoot, writes: LakeWrites) -> Self {
        LakeAlertSink {
            root,
            writes,
            open: BTreeMap::new(),
        }
    }

    fn spec(version: &str) -> TableSpec {
        TableSpec::alerts().sub_table(version)
    }

    /// Merges `rows` (of one offset block) into the file named `name` of
    /// `spec`'s table: the rows already there win, a key is kept once.
    async fn merge(
        &self,
        spec: &TableSpec,
        name: &str,
        rows: RecordBatch,
    ) -> Result<(), SinkError> {
        let mut batches = self.read_named(spec, name).await?;
        batches.push(rows);
        let schema = batches[0].schema();
        let all = concat_batches(&schema, &batches)?;
        let columns = event_times(&all).and_then(|ts| Ok((ts, symbols(&all)?, seqs(&all)?)));
        let (ts, sym, seq) = columns.map_err(ArrowError::from)?;
        let mut seen: HashSet<(&str, i64, u32)> = HashSet::with_capacity(all.num_rows());
        let keep: BooleanArray = (0..all.num_rows())
            .map(|i| Some(seen.insert((sym.value(i), ts.value(i), seq.value(i)))))
            .collect();
        let merged = filter_record_batch(&all, &keep)?;
        replace_named(&self.root, spec, name, &merged).await?;
        Ok(())
    }

    /// The rows of every file named `name` (under any date) of `spec`.
    async fn read_named(
        &self,
        spec: &TableSpec,
        name: &str,
    ) -> Result<Vec<RecordBatch>, SinkError> {
        let file = format!("{name}.parquet");
        let store = self.root.store();
        let prefix = self.root.path(&spec.name);
        let store_err = |path: String| move |source| LakeError::Store { path, source };
        let listed: Vec<object_store::ObjectMeta> = store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(store_err(prefix.to_string()))?;
        let mut out = Vec::new();
        for meta in listed {
            if meta.location.filename() != Some(file.as_str()) {
                continue;
            }
            let path = meta.location.to_string();
            let bytes = store
                .get(&meta.location)
                .await
                .map_err(store_err(path.clone()))?
                .bytes()
                .await
                .map_err(store_err(path.clone()))?;
            let parquet_err = |source| LakeError::Parquet {
                path: path.clone(),
                source,
            };
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .map_err(parquet_err)?
                    .build()
                    .map_err(parquet_err)?;
            for b in reader {
                let b = b?;
                // The file's columns are the table's, nullability aside.
                out.push(RecordBatch::try_new(
                    spec.schema.clone(),
                    b.columns().to_vec(),
                )?);
            }
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl AlertSink for LakeAlertSink {
    fn name(&self) -> String {
        format!("lake {}/alerts", self.root)
    }

    async fn write(&mut self, batch: &AlertBatch) -> Result<Written, SinkError> {
        let mut rows = 0;
        for scored in &batch.scores {
            let n = scored.rows.num_rows();
            if n == 0 {
                continue;
            }
            rows += n as u64;
            match self.writes {
                LakeWrites::Keyed => {
                    // Rows per (partition, offset block), in their order.
                    let mut blocks: BTreeMap<(i32, i64), Vec<bool>> = BTreeMap::new();
                    for i in 0..n {
                        // Rows come with their sources; one without would
                        // go to a block of its own rather than be lost.
                        let (p, o) = scored.sources.get(i).copied().unwrap_or((-1, 0));
                        blocks
                            .entry((p, o.div_euclid(OFFSET_BLOCK) * OFFSET_BLOCK))
                            .or_insert_with(|| vec![false; n])[i] = true;
                    }
                    let spec = Self::spec(&scored.version);
                    for ((p, first), mask) in blocks {
                        let picked = filter_record_batch(&scored.rows, &BooleanArray::from(mask))?;
                        self.merge(&spec, &format!("part-p{p}-o{first}"), picked)
                            .await?;
                    }
                }
                LakeWrites::AtClose => {
                    if !self.open.contains_key(&scored.version) {
                        let a = Appender::new(
                            self.root.clone(),
                            Self::spec(&scored.version),
                            AppenderOptions::default(),
                        );
                        self.open.insert(scored.version.clone(), a);
                    }
                    if let Some(a) = self.open.get_mut(&scored.version) {
                        a.append(scored.rows.clone()).await?;
                    }
                }
            }
        }
        Ok(Written {
            alerts: rows,
            dead_letters: 0,
        })
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        for (_, a) in std::mem::take(&mut self.open) {
            a.finish().await?;
        }
        Ok(())
    }
}
