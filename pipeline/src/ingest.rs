//! Ingestion: CSV files → validated ticks (and labels) → the lake, with
//! rejects written beside and a summary of what happened; and a feed's REST
//! history → ticks → the lake or a Kafka topic ([`ingest_history`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::TimestampMicrosecondType;
use indicatif::ProgressBar;

use crate::lake::{AppendStats, Appender, AppenderOptions, LakeError, LakeRoot, TableSpec};
pub use crate::sinks::tick_sink::TickTarget;
use crate::sinks::tick_sink::{SinkStats, TickSink, TickSinkError};
use crate::sources::csv::{CsvFormat, CsvSource};
use crate::sources::SourceError;
use crate::tick::{col, Reject, RejectCounts, RejectWriter, Validator};

/// How to ingest.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Layout of the files (`Auto` recognises each file's own).
    pub format: CsvFormat,
    /// One rejects file for every input; `None` writes `<input>.rejects.csv`
    /// beside each input that has rejects.
    pub rejects: Option<PathBuf>,
    /// Stop at the first rejected record instead of writing it aside.
    pub strict: bool,
    /// Market identifier code of the listing venue of every ingested
    /// symbol (`XNYS`, `XNSE`, ... see [`crate::symbols::EXCHANGES`]),
    /// recorded in the `symbols` table; NSE files default to `XNSE`.
    pub exchange: Option<String>,
    /// Validation rules (the clock they judge "future" by).
    pub validator: Validator,
    /// Where the ticks go; the lake's `ticks` table if `None`. Labels and
    /// the `symbols` table always go to the lake.
    pub to: Option<TickTarget>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            format: CsvFormat::Auto,
            rejects: None,
            strict: false,
            exchange: None,
            validator: Validator::new(),
            to: None,
        }
    }
}

/// What one file gave.
#[derive(Debug, Clone)]
pub struct FileSummary {
    /// The input.
    pub path: PathBuf,
    /// Its layout.
    pub format: CsvFormat,
    /// Data records read.
    pub rows: u64,
    /// Ticks accepted.
    pub ticks: u64,
    /// Label intervals it carried.
    pub labels: u64,
    /// Rejected records by reason.
    pub rejects: RejectCounts,
    /// Where its rejects were written, if it had any.
    pub rejects_path: Option<PathBuf>,
}

/// What an ingestion did, over all files.
#[derive(Debug, Clone, Default)]
pub struct IngestSummary {
    /// Per input file.
    pub files: Vec<FileSummary>,
    /// Distinct symbols among accepted ticks.
    pub symbols: usize,
    /// Earliest and latest accepted tick, µs since the epoch.
    pub time_range: Option<(i64, i64)>,
    /// Ticks written to the lake.
    pub tick_files: AppendStats,
    /// What the tick target stored (new vs already there in PostgreSQL).
    pub stored: SinkStats,
    /// Labels written to the lake.
    pub label_files: AppendStats,
    /// Wall time.
    pub elapsed: Duration,
}

impl IngestSummary {
    /// Records read over all files.
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }

    /// Ticks accepted over all files.
    pub fn ticks(&self) -> u64 {
        self.files.iter().map(|f| f.ticks).sum()
    }

    /// Labels over all files.
    pub fn labels(&self) -> u64 {
        self.files.iter().map(|f| f.labels).sum()
    }

    /// Rejects over all files, by reason.
    pub fn rejects(&self) -> RejectCounts {
        let mut all = RejectCounts::default();
        for f in &self.files {
            all.merge(&f.rejects);
        }
        all
    }

    /// Records per second.
    pub fn rows_per_sec(&self) -> f64 {
        self.rows() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Why an ingestion stopped.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// An input could not be read or is not CSV of a known layout.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Writing the lake failed.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// The rejects file could not be written.
    #[error("rejects file {path}: {source}")]
    Rejects {
        /// The rejects file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `--strict` and a record was rejected.
    #[error("{0}\n  (stopped by --strict; without it the row goes to the rejects file and ingestion continues)")]
    Strict(Box<Reject>),
    /// Fetching REST history failed.
    #[error(transparent)]
    History(#[from] crate::sources::history::HistoryError),
    /// Publishing to Kafka failed.
    #[error(transparent)]
    Kafka(#[from] crate::sources::kafka::ProduceError),
    /// Writing to PostgreSQL's tick store failed.
    #[error(transparent)]
    Db(#[from] crate::sinks::postgres::DbError),
    /// The ticks' destination failed.
    #[error(transparent)]
    Sink(#[from] TickSinkError),
    /// `--exchange` names a venue the project does not know.
    #[error("unknown exchange {mic:?}: expected a market identifier code among {known}")]
    UnknownExchange {
        /// The code given.
        mic: String,
        /// The codes known.
        known: String,
    },
}

/// Ingests CSV files into the lake's `ticks` (and `labels`) tables.
///
/// Files are streamed in batches; memory stays bounded by the appender's
/// buffers whatever the file size. `progress` advances by bytes read (its
/// length should be the inputs' total size).
pub async fn ingest_csv(
    root: &LakeRoot,
    files: &[PathBuf],
    options: &IngestOptions,
    progress: &ProgressBar,
) -> Result<IngestSummary, IngestError> {
    let started = Instant::now();
    let lake_target = TickTarget::Lake(root.clone());
    let mut ticks = TickSink::open(options.to.as_ref().unwrap_or(&lake_target), None).await?;
    let mut labels = Appender::new(
        root.clone(),
        TableSpec::labels(),
        AppenderOptions::default(),
    );
    if let Some(mic) = &options.exchange {
        if crate::symbols::listing("", mic).is_none() {
            let known: Vec<&str> = crate::symbols::EXCHANGES.iter().map(|e| e.0).collect();
            return Err(IngestError::UnknownExchange {
                mic: mic.clone(),
                known: known.join(", "),
            });
        }
    }
    // Symbol -> the venue it is listed on, for the `symbols` table.
    let mut listings: std::collections::BTreeMap<String, String> = Default::default();
    let mut shared_rejects = options.rejects.as_ref().map(RejectWriter::new);
    let mut seen = SymbolTracker::default();
    let mut summary = IngestSummary::default();
    for path in files {
        let mut source = CsvSource::open(path, options.format, options.validator.clone())?;
        let mut own_rejects = RejectWriter::new(default_rejects_path(path));
        let mut file = FileSummary {
            path: path.clone(),
            format: source.format(),
            rows: 0,
            ticks: 0,
            labels: 0,
            rejects: RejectCounts::default(),
            rejects_path: None,
        };
        let mut last_bytes = 0;
        while let Some(batch) = source.read_batch()? {
            let writer = shared_rejects.as_mut().unwrap_or(&mut own_rejects);
            for r in &batch.rejects {
                if options.strict {
                    return Err(IngestError::Strict(Box::new(r.clone())));
                }
                writer.write(r).map_err(|source| IngestError::Rejects {
                    path: writer.path().to_owned(),
                    source,
                })?;
                file.rejects.add(r.reason);
                file.rejects_path = Some(writer.path().to_owned());
            }
            file.ticks += batch.ticks.num_rows() as u64;
            seen.observe(&batch.ticks);
            let mic = options
                .exchange
                .clone()
                .or_else(|| source.format().is_nse().then(|| "XNSE".to_owned()));
            if let Some(mic) = mic {
                if let Ok(i) = batch.ticks.schema().index_of(col::SYMBOL) {
                    for sym in batch.ticks.column(i).as_string::<i32>().iter().flatten() {
                        if !listings.contains_key(sym) {
                            listings.insert(sym.to_owned(), mic.clone());
                        }
                    }
                }
            }
            ticks.write(batch.ticks).await?;
            if let Some(l) = batch.labels {
                file.labels += l.num_rows() as u64;
                labels.append(l).await?;
            }
            let bytes = source.bytes_read();
            progress.inc(bytes.saturating_sub(last_bytes));
            last_bytes = bytes;
        }
        file.rows = source.rows_read();
        own_rejects.flush().map_err(|source| IngestError::Rejects {
            path: own_rejects.path().to_owned(),
            source,
        })?;
        tracing::info!(
            file = %path.display(),
            format = %file.format,
            rows = file.rows,
            ticks = file.ticks,
            rejects = file.rejects.total(),
            "CSV file ingested."
        );
        summary.files.push(file);
    }
    if let Some(w) = shared_rejects.as_mut() {
        w.flush().map_err(|source| IngestError::Rejects {
            path: w.path().to_owned(),
            source,
        })?;
    }
    summary.stored = ticks.finish().await?;
    summary.tick_files = summary.stored.tick_files;
    summary.label_files = labels.finish().await?;
    if !listings.is_empty() {
        let rows: Vec<crate::symbols::SymbolInfo<'_>> = listings
            .iter()
            .filter_map(|(sym, mic)| crate::symbols::listing(sym, mic))
            .collect();
        // Valid from the day of the earliest tick ingested.
        let listed = seen
            .range
            .map_or(0, |(lo, _)| lo - lo.rem_euclid(86_400_000_000));
        let mut symbols = Appender::new(
            root.clone(),
            TableSpec::symbols(),
            AppenderOptions::default(),
        );
        symbols
            .append(crate::symbols::symbols_batch(listed, &rows))
            .await?;
        symbols.finish().await?;
    }
    summary.symbols = seen.symbols.len();
    summary.time_range = seen.range;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// `<input>.rejects.csv`, beside the input.
pub fn default_rejects_path(input: &Path) -> PathBuf {
    let mut name = input.file_name().unwrap_or_default().to_os_string();
    name.push(".rejects.csv");
    input.with_file_name(name)
}

/// Distinct symbols and the time range of accepted ticks.
#[derive(Debug, Default)]
pub struct SymbolTracker {
    /// Symbols seen.
    pub symbols: HashSet<String>,
    /// Earliest and latest `ts`.
    pub range: Option<(i64, i64)>,
}

impl SymbolTracker {
    /// Accounts for a batch of ticks.
    pub fn observe(&mut self, ticks: &RecordBatch) {
        let Ok(i) = ticks.schema().index_of(col::SYMBOL) else {
            return;
        };
        for s in ticks.column(i).as_string::<i32>().iter().flatten() {
            if !self.symbols.contains(s) {
                self.symbols.insert(s.to_owned());
            }
        }
        let Ok(t) = ticks.schema().index_of(col::TS) else {
            return;
        };
        let ts = ticks.column(t).as_primitive::<TimestampMicrosecondType>();
        if let (Some(lo), Some(hi)) = (arrow::compute::min(ts), arrow::compute::max(ts)) {
            self.range = Some(match self.range {
                Some((a, b)) => (a.min(lo), b.max(hi)),
                None => (lo, hi),
            });
        }
    }
}

/// What a history ingestion did.
#[derive(Debug, Clone, Default)]
pub struct HistorySummary {
    /// Requests, retries and pages.
    pub fetch: crate::sources::history::HistoryStats,
    /// Records in the pages.
    pub records: u64,
    /// Ticks written (lake) or published (Kafka).
    pub ticks: u64,
    /// Rejected records by reason.
    pub rejects: RejectCounts,
    /// Where the rejects were written, if asked and any.
    pub rejects_path: Option<PathBuf>,
    /// Distinct symbols among the ticks.
    pub symbols: usize,
    /// Earliest and latest tick, µs since the epoch.
    pub time_range: Option<(i64, i64)>,
    /// Lake files (lake target only).
    pub tick_files: AppendStats,
    /// Bytes of JSON published (Kafka target only).
    pub published_bytes: u64,
    /// Ticks new to PostgreSQL's tick store (Postgres target only; the
    /// others were stored already).
    pub stored_new: u64,
    /// Day partitions created in the tick store.
    pub partitions_created: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Fetches every page of `fetcher`'s request and writes the ticks to
/// `target`.
///
/// Pages are written as they arrive (memory stays bounded by the lake
/// appender's buffers or the producer's queue); rejects are counted by
/// reason, logged per page, and written to `rejects` when given. `progress`
/// counts pages; its message shows ticks so far.
pub async fn ingest_history(
    fetcher: &mut crate::sources::history::HistoryFetcher,
    target: &TickTarget,
    rejects: Option<&Path>,
    progress: &ProgressBar,
) -> Result<HistorySummary, IngestError> {
    let started = Instant::now();
    let mut summary = HistorySummary::default();
    let mut writer = rejects.map(RejectWriter::new);
    let mut seen = SymbolTracker::default();
    let mut sink = TickSink::open(target, None).await?;
    while let Some(batch) = fetcher.next_page().await? {
        if let Some(first) = batch.rejects.first() {
            tracing::warn!(
                feed = %fetcher.request().feed.feed(),
                rejects = batch.rejects.len(),
                first = %first,
                "History records rejected."
            );
        }
        for r in &batch.rejects {
            summary.rejects.add(r.reason);
            if let Some(w) = writer.as_mut() {
                w.write(r).map_err(|source| IngestError::Rejects {
                    path: w.path().to_owned(),
                    source,
                })?;
                summary.rejects_path = Some(w.path().to_owned());
            }
        }
        summary.ticks += batch.ticks.num_rows() as u64;
        seen.observe(&batch.ticks);
        sink.write(batch.ticks).await?;
        progress.inc(1);
        progress.set_message(format!("{} ticks", summary.ticks));
    }
    if let Some(w) = writer.as_mut() {
        w.flush().map_err(|source| IngestError::Rejects {
            path: w.path().to_owned(),
            source,
        })?;
    }
    if matches!(target, TickTarget::Kafka { .. }) {
        progress.set_message("waiting for acknowledgements");
    }
    let stored = sink.finish().await?;
    summary.tick_files = stored.tick_files;
    summary.published_bytes = stored.published_bytes;
    summary.stored_new = stored.stored_new;
    summary.partitions_created = stored.partitions_created;
    summary.fetch = fetcher.stats();
    summary.records = fetcher.counters().messages;
    summary.symbols = seen.symbols.len();
    summary.time_range = seen.range;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

#[cfg(test)]
mod history_tests {
    use super::TickTarget;

    #[test]
    fn targets_are_lakes_or_kafka_topics() {
        match TickTarget::parse("kafka://h1:9092,h2:9092/ticks", 6).unwrap() {
            TickTarget::Kafka { brokers, topic, .. } => {
                assert_eq!(brokers, "h1:9092,h2:9092");
                assert_eq!(topic, "ticks");
            }
            other => panic!("{other:?}"),
        }
        assert!(TickTarget::parse("kafka://h:9092", 6).is_err());
        assert!(TickTarget::parse("kafka:///t", 6).is_err());
        assert!(matches!(
            TickTarget::parse("postgres://u@h/db", 6).unwrap(),
            TickTarget::Postgres { .. }
        ));
        // The URL is never shown: it may carry a password.
        let pg = TickTarget::parse("postgres://u:secret@h/db", 6).unwrap();
        assert!(!pg.to_string().contains("secret"));
        assert!(matches!(
            TickTarget::parse("memory://x", 6).unwrap(),
            TickTarget::Lake(_)
        ));
    }
}
