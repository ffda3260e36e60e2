//! CSV files in, tick batches out: streaming, so a multi-GB file needs no
//! more memory than one batch.
//!
//! Layouts are in [`CsvFormat`]. Every record becomes a tick or a [`Reject`]
//! naming its line and reason; annotated layouts also yield label intervals.
//! A zip archive holding one CSV file (as NSE publishes its bhavcopies) is
//! read like the file inside it.

pub(crate) mod format;
pub(crate) mod parse;
mod zipped;

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use csv::ByteRecord;

pub use format::CsvFormat;
use format::{column_map, ColumnMap};

use super::{Position, Source, SourceBatch, SourceError};
use crate::labels::LabelBuilder;
use crate::tick::{Reject, Rejection, TickBuilder, TickRecord, Validator};

/// Rows per batch: large enough to amortise per-batch work, small enough to
/// keep memory flat.
pub const DEFAULT_BATCH_ROWS: usize = 64 * 1024;

/// Label kind given to rows flagged by an annotated file's `anomaly` column.
pub const ANNOTATED_KIND: &str = "annotated";

/// Reads one CSV file as tick batches.
pub struct CsvSource {
    origin: String,
    path: PathBuf,
    format: CsvFormat,
    map: ColumnMap,
    reader: csv::Reader<Box<dyn Read + Send>>,
    record: ByteRecord,
    /// The first record, when it is data (layouts without a header).
    pending_first: Option<ByteRecord>,
    ticks: TickBuilder,
    labels: LabelBuilder,
    batch_rows: usize,
    rows_read: u64,
    done: bool,
    /// `(archive bytes, CSV bytes)` of a zipped input, so progress counts
    /// in the archive's bytes like the total it is measured against.
    zip_sizes: Option<(u64, u64)>,
}

impl CsvSource {
    /// Opens `path` in `format` (`Auto` recognises it from the first line).
    pub fn open(path: &Path, format: CsvFormat, validator: Validator) -> Result<Self, SourceError> {
        let origin = path.display().to_string();
        let io = |source| SourceError::Io {
            origin: origin.clone(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        let mut zip_sizes = None;
        if zipped::is_zip(&mut file).map_err(io)? {
            let archive_len = file.metadata().map_err(io)?.len();
            let (csv, csv_len) = zipped::extract_csv(&origin, file)?;
            file = csv;
            zip_sizes = Some((archive_len, csv_len.max(1)));
        }
        let input: Box<dyn Read + Send> = Box::new(BufReader::with_capacity(1 << 20, file));
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(1 << 20)
            .from_reader(input);
        let mut first = ByteRecord::new();
        let got = reader
            .read_byte_record(&mut first)
            .map_err(|e| SourceError::Format {
                origin: origin.clone(),
                reason: format!("cannot read the first line: {e}"),
            })?;
        if !got {
            return Err(SourceError::Format {
                origin,
                reason: "the file is empty".into(),
            });
        }
        let cells: Vec<&str> = first
            .iter()
            .map(|b| std::str::from_utf8(b).unwrap_or(""))
            .collect();
        let resolved = match format {
            CsvFormat::Auto => format::detect(&origin, &cells)?,
            f => f,
        };
        let map = column_map(&origin, resolved, &cells)?;
        let pending_first = (!map.has_header).then_some(first);
        Ok(Self {
            origin,
            path: path.to_owned(),
            format: resolved,
            map,
            reader,
            record: ByteRecord::new(),
            pending_first,
            ticks: TickBuilder::with_validator("csv", validator),
            labels: LabelBuilder::new("csv"),
            batch_rows: DEFAULT_BATCH_ROWS,
            rows_read: 0,
            done: false,
            zip_sizes,
        })
    }

    /// Sets the rows per batch.
    pub fn with_batch_rows(mut self, rows: usize) -> Self {
        self.batch_rows = rows.max(1);
        self
    }

    /// The layout being read (resolved when opened with `Auto`).
    pub fn format(&self) -> CsvFormat {
        self.format
    }

    /// Bytes of the input file consumed so far (for progress bars; for a
    /// zip archive, the share of the archive's size read).
    pub fn bytes_read(&self) -> u64 {
        let csv = self.reader.position().byte();
        match self.zip_sizes {
            Some((archive, csv_len)) => {
                (u128::from(csv) * u128::from(archive) / u128::from(csv_len)) as u64
            }
            None => csv,
        }
    }

    /// Data records read so far, good and bad.
    pub fn rows_read(&self) -> u64 {
        self.rows_read
    }

    /// Reads the next batch synchronously (the [`Source`] impl wraps this).
    pub fn read_batch(&mut self) -> Result<Option<SourceBatch>, SourceError> {
        if self.done {
            return Ok(None);
        }
        let mut rejects = Vec::new();
        let mut n = 0;
        while n < self.batch_rows {
            let line;
            if let Some(first) = self.pending_first.take() {
                line = first.position().map_or(1, |p| p.line());
                self.record = first;
            } else {
                match self.reader.read_byte_record(&mut self.record) {
                    Ok(true) => line = self.record.position().map_or(0, |p| p.line()),
                    Ok(false) => {
                        self.done = true;
                        break;
                    }
                    Err(e) => {
                        // The csv crate only fails on I/O or invalid UTF-8 in
                        // a header; a broken row is still a row.
                        let line = e.position().map_or(0, |p| p.line());
                        if let csv::ErrorKind::Io(_) = e.kind() {
                            return Err(SourceError::Io {
                                origin: self.origin.clone(),
                                source: std::io::Error::other(e.to_string()),
                            });
                        }
                        rejects.push(Reject::new(
                            &self.origin,
                            line,
                            Rejection::malformed(e.to_string()),
                            String::new(),
                        ));
                        continue;
                    }
                }
            }
            n += 1;
            self.rows_read += 1;
            if is_blank(&self.record) {
                rejects.push(Reject::new(
                    &self.origin,
                    line,
                    Rejection::malformed("empty line"),
                    String::new(),
                ));
                continue;
            }
            if let Err(rej) = decode(&self.map, &self.record, &mut self.ticks, &mut self.labels) {
                rejects.push(Reject::new(
                    &self.origin,
                    line,
                    rej,
                    raw_record(&self.record),
                ));
            }
        }
        if n == 0 && rejects.is_empty() {
            return Ok(None);
        }
        let labels = (!self.labels.is_empty()).then(|| self.labels.finish());
        Ok(Some(SourceBatch {
            amendments: None,
            ticks: self.ticks.finish(),
            labels,
            rejects,
            stream: None,
            position: Position::File {
                path: self.path.display().to_string(),
                line: self.record.position().map_or(0, |p| p.line()),
                byte: self.bytes_read(),
            },
        }))
    }
}

#[async_trait::async_trait]
impl Source for CsvSource {
    async fn next_batch(&mut self) -> Result<Option<SourceBatch>, SourceError> {
        self.read_batch()
    }
}

fn is_blank(r: &ByteRecord) -> bool {
    r.iter().all(|f| f.iter().all(u8::is_ascii_whitespace))
}

fn raw_record(r: &ByteRecord) -> String {
    let parts: Vec<String> = r
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    parts.join(",")
}

fn field<'r>(r: &'r ByteRecord, i: usize, name: &str) -> Result<&'r str, Rejection> {
    let bytes = r.get(i).ok_or_else(|| {
        Rejection::malformed(format!("column `{name}` (field {}) is missing", i + 1))
    })?;
    std::str::from_utf8(bytes)
        .map_err(|_| Rejection::malformed(format!("column `{name}` is not UTF-8")))
}

fn opt_field(r: &ByteRecord, i: Option<usize>, name: &str) -> Result<Option<f64>, Rejection> {
    match i {
        None => Ok(None),
        Some(i) => parse::opt_number(name, field(r, i, name)?).map_err(Rejection::malformed),
    }
}

/// Decodes one record into the builders. The tick is validated by the
/// builder; a label is added only for a tick that was accepted.
fn decode(
    m: &ColumnMap,
    r: &ByteRecord,
    ticks: &mut TickBuilder,
    labels: &mut LabelBuilder,
) -> Result<(), Rejection> {
    if r.len() < m.min_fields {
        return Err(Rejection::new(
            crate::tick::RejectReason::WrongSchema,
            format!(
                "expected at least {} fields, found {}",
                m.min_fields,
                r.len()
            ),
        ));
    }
    let raw_symbol = field(r, m.symbol, "symbol")?.trim();
    let series_symbol;
    let symbol = match m.series {
        Some(i) => {
            let series = field(r, i, "series")?.trim();
            if series.is_empty() || series.eq_ignore_ascii_case("EQ") {
                raw_symbol
            } else {
                series_symbol = format!("{raw_symbol}.{series}");
                series_symbol.as_str()
            }
        }
        None => raw_symbol,
    };
    let ts_us =
        parse::timestamp("ts", field(r, m.ts, "ts")?, m.ts_format).map_err(Rejection::malformed)?;
    let rec = TickRecord {
        ts_us,
        symbol,
        price: parse::number("price", field(r, m.price, "price")?).map_err(Rejection::malformed)?,
        volume: parse::number("volume", field(r, m.volume, "volume")?)
            .map_err(Rejection::malformed)?,
        open: opt_field(r, m.open, "open")?,
        high: opt_field(r, m.high, "high")?,
        low: opt_field(r, m.low, "low")?,
        bid: opt_field(r, m.bid, "bid")?,
        ask: opt_field(r, m.ask, "ask")?,
        bid_size: opt_field(r, m.bid_size, "bid_size")?,
        ask_size: opt_field(r, m.ask_size, "ask_size")?,
    };
    let anomalous = match m.anomaly {
        Some(i) => anomaly_flag(field(r, i, "anomaly")?)?,
        None => false,
    };
    ticks.push(&rec)?;
    if anomalous {
        labels.push(rec.symbol, rec.ts_us, rec.ts_us, ANNOTATED_KIND);
    }
    Ok(())
}

fn anomaly_flag(s: &str) -> Result<bool, Rejection> {
    match s.trim() {
        "1" | "1.0" | "true" | "True" | "TRUE" => Ok(true),
        "0" | "0.0" | "" | "false" | "False" | "FALSE" => Ok(false),
        other => Err(Rejection::malformed(format!(
            "column `anomaly`: expected 0 or 1, found {other:?}"
        ))),
    }
}

/// Reads the first line of a file, for messages and format sniffing.
pub fn first_line(path: &Path) -> std::io::Result<String> {
    let mut line = String::new();
    BufReader::new(File::open(path)?).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}
