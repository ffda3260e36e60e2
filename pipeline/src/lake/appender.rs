//! Atomic, content-addressed appends of Arrow batches to a lake table.

use std::collections::BTreeMap;

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::TimestampMicrosecondType;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};

use super::{sort_by, LakeError, LakeRoot, TableSpec};
use crate::tick::DAY_US;

/// Tuning of an [`Appender`].
#[derive(Debug, Clone, Copy)]
pub struct AppenderOptions {
    /// A date's buffer is written as a file once it holds this many rows;
    /// when finishing, a date with more is written as several files of
    /// about equal size.
    pub max_rows_per_file: usize,
    /// When all buffers together hold more rows, the largest is written:
    /// this bounds memory whatever the input's date order.
    pub max_buffered_rows: usize,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// Dictionary-encode `Float64` columns. Worth it for prices on a tick
    /// grid; for computed values (features, scores), nearly all distinct, the
    /// writer hashes every value only to give the dictionary up.
    pub float_dictionary: bool,
}

impl Default for AppenderOptions {
    fn default() -> Self {
        Self {
            max_rows_per_file: 1_000_000,
            max_buffered_rows: 4_000_000,
            // 128k rows: large enough for zstd and statistics to pay off,
            // small enough that a symbol/time filter skips most of a file.
            row_group_rows: 128 * 1024,
            float_dictionary: true,
        }
    }
}

/// What an [`Appender`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AppendStats {
    /// Rows handed to the appender.
    pub rows: u64,
    /// Files written.
    pub files_written: u64,
    /// Files not written because the same content was already there.
    pub files_existing: u64,
    /// Bytes written.
    pub bytes_written: u64,
}

/// Buffers batches per date and writes each date's rows as sorted, zstd
/// Parquet files.
///
/// Every file is encoded in memory and put in one request: on a local folder
/// `object_store` writes a staging file and renames it, on S3 a put is atomic,
/// so a crash never leaves a half file under a visible name (a staging file
/// does not end in `.parquet` and is never read). The file name is the hash
/// of its content, so an append never rewrites an existing file and repeating
/// an append adds nothing.
pub struct Appender {
    root: LakeRoot,
    spec: TableSpec,
    options: AppenderOptions,
    props: WriterProperties,
    buffers: BTreeMap<i32, (Vec<RecordBatch>, usize)>,
    buffered: usize,
    stats: AppendStats,
    /// Every file stored (written, or found with the same content).
    files: Vec<Path>,
}

impl Appender {
    /// An appender to `spec`'s table under `root`.
    pub fn new(root: LakeRoot, spec: TableSpec, options: AppenderOptions) -> Self {
        let sorting: Vec<SortingColumn> = spec
            .sort_by
            .iter()
            .filter_map(|c| spec.schema.index_of(c).ok())
            .map(|i| SortingColumn {
                column_idx: i as i32,
                descending: false,
                nulls_first: false,
            })
            .collect();
        let mut props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_row_count(Some(options.row_group_rows))
            .set_sorting_columns(Some(sorting));
        if !options.float_dictionary {
            for f in spec.schema.fields() {
                if f.data_type() == &arrow::datatypes::DataType::Float64 {
                    props = props.set_column_dictionary_enabled(
                        parquet::schema::types::ColumnPath::from(f.name().as_str()),
                        false,
                    );
                }
            }
        }
        let props = props.build();
        Self {
            root,
            spec,
            options,
            props,
            buffers: BTreeMap::new(),
            buffered: 0,
            stats: AppendStats::default(),
            files: Vec::new(),
        }
    }

    /// The table appended to.
    pub fn spec(&self) -> &TableSpec {
        &self.spec
    }

    /// Adds a batch; writes files when buffers are full.
    pub async fn append(&mut self, batch: RecordBatch) -> Result<(), LakeError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if batch.schema().fields() != self.spec.schema.fields() {
            return Err(LakeError::Arrow {
                table: self.spec.name.clone(),
                source: arrow::error::ArrowError::SchemaError(format!(
                    "batch schema {:?} does not match the table's {:?}",
                    batch.schema(),
                    self.spec.schema
                )),
            });
        }
        self.stats.rows += batch.num_rows() as u64;
        for (day, part) in
            split_by_day(&batch, self.spec.partition_ts).map_err(|source| LakeError::Arrow {
                table: self.spec.name.clone(),
                source,
            })?
        {
            let rows = part.num_rows();
            let entry = self.buffers.entry(day).or_default();
            entry.0.push(part);
            entry.1 += rows;
            self.buffered += rows;
            if entry.1 >= self.options.max_rows_per_file {
                self.flush_day(day).await?;
            }
        }
        while self.buffered > self.options.max_buffered_rows {
            let Some(largest) = self
                .buffers
                .iter()
                .max_by_key(|(_, (_, n))| *n)
                .map(|(d, _)| *d)
            else {
                break;
            };
            self.flush_day(largest).await?;
        }
        Ok(())
    }

    /// Writes everything still buffered and returns what was done.
    pub async fn finish(self) -> Result<AppendStats, LakeError> {
        self.finish_files().await.map(|(stats, _)| stats)
    }

    /// [`finish`](Self::finish), also naming every file of the rows
    /// appended (written now, or already there with the same content): what
    /// a replacement keeps.
    pub async fn finish_files(mut self) -> Result<(AppendStats, Vec<Path>), LakeError> {
        let days: Vec<i32> = self.buffers.keys().copied().collect();
        self.write_days(&days).await?;
        Ok((self.stats, self.files))
    }

    async fn flush_day(&mut self, day: i32) -> Result<(), LakeError> {
        self.write_days(&[day]).await
    }

    /// Writes the buffered rows of `days`: each file is encoded on a blocking
    /// thread and stored as soon as it is encoded, one file per core in
    /// flight. A date with more than `max_rows_per_file` rows goes in several
    /// files of consecutive rows (each sorted); how it is cut depends only on
    /// its row count, so the same rows always make the same files.
    async fn write_days(&mut self, days: &[i32]) -> Result<(), LakeError> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut parts = Vec::new();
        for &day in days {
            let Some(batch) = self.take_day(day)? else {
                continue;
            };
            let rows = batch.num_rows();
            let files = rows.div_ceil(self.options.max_rows_per_file.max(1)).max(1);
            let per_file = rows.div_ceil(files).max(1);
            for start in (0..rows).step_by(per_file) {
                parts.push((day, batch.slice(start, per_file.min(rows - start))));
            }
        }
        let (root, table, props) = (&self.root, self.spec.name.as_str(), &self.props);
        let mut stored = futures::stream::iter(parts)
            .map(|(day, part)| store_part(root, table, day, part, props.clone()))
            .buffered(cores);
        while let Some(outcome) = stored.next().await {
            match outcome? {
                Stored::Written { bytes, path } => {
                    self.stats.files_written += 1;
                    self.stats.bytes_written += bytes;
                    self.files.push(path);
                }
                Stored::Existing { path } => {
                    self.stats.files_existing += 1;
                    self.files.push(path);
                }
            }
        }
        Ok(())
    }

    /// A date's buffered rows as one batch sorted by the table's key, taken
    /// out of the buffers.
    fn take_day(&mut self, day: i32) -> Result<Option<RecordBatch>, LakeError> {
        let Some((batches, rows)) = self.buffers.remove(&day) else {
            return Ok(None);
        };
        self.buffered -= rows;
        let arrow_err = |source| LakeError::Arrow {
            table: self.spec.name.clone(),
            source,
        };
        let batch = match <[RecordBatch; 1]>::try_from(batches) {
            Ok([one]) => one,
            Err(batches) => concat_batches(&self.spec.schema, &batches).map_err(arrow_err)?,
        };
        Ok(Some(
            sort_by(&batch, &self.spec.sort_by).map_err(arrow_err)?,
        ))
    }
}

/// What [`store_part`] did.
enum Stored {
    Written { bytes: u64, path: Path },
    Existing { path: Path },
}

/// Encodes a date's rows (on a blocking thread) and puts the file under its
/// content's name, unless a file of that content is there already.
async fn store_part(
    root: &LakeRoot,
    table: &str,
    day: i32,
    part: RecordBatch,
    props: WriterProperties,
) -> Result<Stored, LakeError> {
    let date = date_string(day);
    let rows = part.num_rows();
    let encoded = tokio::task::spawn_blocking(move || {
        encode_parquet(&part, &props).map(|bytes| {
            let hash = Sha256::digest(&bytes);
            (bytes, hash)
        })
    })
    .await;
    let (bytes, hash) = encoded
        .unwrap_or_else(|e| {
            Err(parquet::errors::ParquetError::General(format!(
                "the encoding task failed: {e}"
            )))
        })
        .map_err(|source| LakeError::Parquet {
            path: format!("{table}/date={date}"),
            source,
        })?;
    let name: String = hash[..12].iter().map(|b| format!("{b:02x}")).collect();
    let path = root.path(&format!("{table}/date={date}/part-{name}.parquet"));
    let store = root.store();
    let store_err = |source| LakeError::Store {
        path: path.to_string(),
        source,
    };
    match store.head(&path).await {
        Ok(_) => {
            tracing::debug!(path = %path, "Lake file already present, not rewritten.");
            return Ok(Stored::Existing { path });
        }
        Err(object_store::Error::NotFound { .. }) => {}
        Err(source) => return Err(store_err(source)),
    }
    let len = bytes.len() as u64;
    store
        .put(&path, PutPayload::from(bytes))
        .await
        .map_err(store_err)?;
    tracing::debug!(path = %path, rows, "Lake file written.");
    Ok(Stored::Written { bytes: len, path })
}

/// `YYYY-MM-DD` of a day number since the epoch.
pub fn date_string(day: i32) -> String {
    chrono::DateTime::from_timestamp(i64::from(day) * 86_400, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| format!("day{day}"))
}

/// Splits a batch into one batch per UTC day of its `ts_col`.
fn split_by_day(
    batch: &RecordBatch,
    ts_col: &str,
) -> Result<Vec<(i32, RecordBatch)>, arrow::error::ArrowError> {
    let idx = batch.schema().index_of(ts_col)?;
    let ts = batch
        .column(idx)
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| {
            arrow::error::ArrowError::SchemaError(format!("{ts_col} is not a µs timestamp"))
        })?;
    let days: Vec<i32> = ts
        .values()
        .iter()
        .map(|&t| t.div_euclid(DAY_US) as i32)
        .collect();
    let first = days.first().copied().unwrap_or(0);
    if days.iter().all(|&d| d == first) {
        return Ok(vec![(first, batch.clone())]);
    }
    let mut distinct = days.clone();
    distinct.sort_unstable();
    distinct.dedup();
    // One gather with the rows grouped by day (in their order within a
    // day), then a slice per day: one pass over the columns, not one per day.
    let mut starts = vec![0usize; distinct.len() + 1];
    let slot = |d: i32| distinct.binary_search(&d).unwrap_or(0);
    for &d in &days {
        starts[slot(d) + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let mut next = starts.clone();
    let mut order = vec![0u32; days.len()];
    for (row, &d) in days.iter().enumerate() {
        let s = slot(d);
        order[next[s]] = row as u32;
        next[s] += 1;
    }
    let grouped = take_record_batch(batch, &arrow::array::UInt32Array::from(order))?;
    Ok(distinct
        .iter()
        .enumerate()
        .map(|(i, &day)| (day, grouped.slice(starts[i], starts[i + 1] - starts[i])))
        .collect())
}

fn encode_parquet(
    batch: &RecordBatch,
    props: &WriterProperties,
) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let mut buf = Vec::with_capacity(batch.get_array_memory_size() / 4);
    let mut writer = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props.clone()))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(buf)
}

/// Replaces the files of `spec`'s table for `date` with `batch` (rows of
/// that date): the new files are written first and only then are the old
/// ones removed, as [`replace_named`] does, so a write that fails leaves the
/// date's old files whole. Readers may see both for a moment, never
/// neither. Files of the same content are kept, not rewritten.
pub async fn replace_date(
    root: &LakeRoot,
    spec: &TableSpec,
    date: &str,
    batch: RecordBatch,
    options: AppenderOptions,
) -> Result<ReplaceStats, LakeError> {
    use futures::TryStreamExt;

    let mut appender = Appender::new(root.clone(), spec.clone(), options);
    appender.append(batch).await?;
    let (stats, kept) = appender.finish_files().await?;
    let prefix = root.path(&format!("{}/date={date}", spec.name));
    let store = root.store();
    let listed: Vec<object_store::ObjectMeta> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|source| LakeError::Store {
            path: prefix.to_string(),
            source,
        })?;
    let mut removed = 0;
    for meta in listed {
        if !kept.contains(&meta.location) {
            store
                .delete(&meta.location)
                .await
                .map_err(|source| LakeError::Store {
                    path: meta.location.to_string(),
                    source,
                })?;
            removed += 1;
        }
    }
    Ok(ReplaceStats {
        written: usize::try_from(stats.files_written).unwrap_or(usize::MAX),
        removed,
    })
}

/// What [`replace_named`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplaceStats {
    /// Dates whose file was written.
    pub written: usize,
    /// Dates whose file was removed because `batch` has no rows there.
    pub removed: usize,
}

/// Makes `batch` the content of the files named `<name>.parquet` in `spec`'s
/// table: one sorted file per date of its rows
/// (`<table>/date=D/<name>.parquet`, each put atomically, replacing the one
/// there), and removes the files of that name under dates `batch` no longer
/// has. For a table section that is rewritten whole each time (the labels
/// exported from reviews), beside the append-only, content-addressed files
/// of [`Appender`].
pub async fn replace_named(
    root: &LakeRoot,
    spec: &TableSpec,
    name: &str,
    batch: &RecordBatch,
) -> Result<ReplaceStats, LakeError> {
    use futures::TryStreamExt;

    let arrow_err = |source| LakeError::Arrow {
        table: spec.name.clone(),
        source,
    };
    let file = format!("{name}.parquet");
    let store = root.store();
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut stats = ReplaceStats::default();
    let mut kept = std::collections::BTreeSet::new();
    if batch.num_rows() > 0 {
        for (day, part) in split_by_day(batch, spec.partition_ts).map_err(arrow_err)? {
            let part = sort_by(&part, &spec.sort_by).map_err(arrow_err)?;
            let date = date_string(day);
            let path = root.path(&format!("{}/date={date}/{file}", spec.name));
            let bytes = encode_parquet(&part, &props).map_err(|source| LakeError::Parquet {
                path: path.to_string(),
                source,
            })?;
            store
                .put(&path, PutPayload::from(bytes))
                .await
                .map_err(|source| LakeError::Store {
                    path: path.to_string(),
                    source,
                })?;
            kept.insert(path.to_string());
            stats.written += 1;
        }
    }
    let prefix = root.path(&spec.name);
    let listed: Vec<object_store::ObjectMeta> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|source| LakeError::Store {
            path: prefix.to_string(),
            source,
        })?;
    for meta in listed {
        let path = meta.location;
        if path.filename() == Some(file.as_str()) && !kept.contains(path.as_ref()) {
            store
                .delete(&path)
                .await
                .map_err(|source| LakeError::Store {
                    path: path.to_string(),
                    source,
                })?;
            stats.removed += 1;
        }
    }
    Ok(stats)
}
