//! The `market` topic: the market-context stage's closed buckets, read in
//! full by every detector.
//!
//! **Messages.** One per closing: an Arrow IPC stream of the closed
//! buckets' rows (the `market` table's schema, possibly no rows) whose
//! schema metadata `closed_until` (µs) says every earlier bucket is closed.
//! The topic has one partition, so the last message is the stage's state.
//! [`encode_market`] and [`decode_market`] are the codec (the stage writes,
//! detectors read); [`MarketReader`] reads the topic from its start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Schema};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::context::QuietEof;
use super::KafkaConfig;
use crate::features::market::market_schema;
use crate::sources::SourceError;

/// Schema metadata key of a market message: every bucket before this (µs
/// since the epoch) is closed.
pub const CLOSED_UNTIL: &str = "closed_until";

/// Encodes a market message (see the module documentation).
pub fn encode_market(
    rows: &RecordBatch,
    closed_until: i64,
) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let schema = Arc::new(Schema::new_with_metadata(
        rows.schema().fields().clone(),
        HashMap::from([(CLOSED_UNTIL.to_owned(), closed_until.to_string())]),
    ));
    let rows = RecordBatch::try_new(Arc::clone(&schema), rows.columns().to_vec())?;
    let mut out = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema)?;
        w.write(&rows)?;
        w.finish()?;
    }
    Ok(out)
}

/// Why a market message could not be decoded. The callers add the topic
/// and offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarketDecodeError {
    /// The payload is not an Arrow IPC stream, or declares lengths that do
    /// not fit in it.
    #[error("not an Arrow IPC stream: {reason}")]
    NotIpc {
        /// Which message of the stream, and what is wrong with it.
        reason: String,
    },
    /// The schema carries no `closed_until` (or one that is not a number).
    #[error("no `{CLOSED_UNTIL}` in the schema metadata")]
    NoClosedUntil,
    /// The columns are not the `market` table's.
    #[error("not the market table's schema: {reason}")]
    WrongSchema {
        /// The first difference.
        reason: String,
    },
    /// A batch of rows could not be read.
    #[error("unreadable rows: {reason}")]
    Rows {
        /// Arrow's reason.
        reason: String,
    },
}

/// Decodes a market message: its rows (the `market` schema) and
/// `closed_until`.
pub fn decode_market(payload: &[u8]) -> Result<(RecordBatch, i64), MarketDecodeError> {
    let not_ipc = |reason: String| MarketDecodeError::NotIpc { reason };
    check_framing(payload)?;
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(payload), None)
        .map_err(|e| not_ipc(e.to_string()))?;
    let schema = reader.schema();
    let closed_until = schema
        .metadata()
        .get(CLOSED_UNTIL)
        .and_then(|v| v.parse::<i64>().ok())
        .ok_or(MarketDecodeError::NoClosedUntil)?;
    let want = market_schema();
    let mut batches = Vec::new();
    for b in reader {
        let b = b.map_err(|e| MarketDecodeError::Rows {
            reason: e.to_string(),
        })?;
        let b = RecordBatch::try_new(Arc::clone(&want), b.columns().to_vec()).map_err(|e| {
            MarketDecodeError::WrongSchema {
                reason: e.to_string(),
            }
        })?;
        batches.push(b);
    }
    let rows =
        arrow::compute::concat_batches(&want, &batches).map_err(|e| MarketDecodeError::Rows {
            reason: e.to_string(),
        })?;
    Ok((rows, closed_until))
}

/// Checks an IPC stream before arrow reads it: that every length it
/// declares fits in `payload`, and that its schema has the market table's
/// column types. Arrow's stream reader trusts both: it allocates a
/// message's metadata and body at their declared sizes before reading them
/// (eight bytes could ask for gigabytes), panics on a buffer that reaches
/// past its message's body, and panics converting many malformed schemas
/// (a missing field list, a type without its parameters). The stage never
/// compresses, so a compressed batch (whose declared inflated sizes arrow
/// would allocate) is refused too.
fn check_framing(payload: &[u8]) -> Result<(), MarketDecodeError> {
    let word = |at: usize| -> Option<i32> {
        let bytes = payload.get(at..at.checked_add(4)?)?;
        Some(i32::from_le_bytes(bytes.try_into().ok()?))
    };
    let mut pos = 0;
    for index in 0usize.. {
        let bad = |reason: &str| MarketDecodeError::NotIpc {
            reason: format!("message {index} (byte {pos}): {reason}"),
        };
        // The end of the data, or of a truncated prefix, ends the stream
        // for arrow too (or is its error to report): nothing to allocate.
        let Some(mut meta_len) = word(pos) else {
            return Ok(());
        };
        let mut at = pos + 4;
        if meta_len == -1 {
            // The continuation marker of the current format.
            let Some(len) = word(at) else {
                return Ok(());
            };
            meta_len = len;
            at += 4;
        }
        if meta_len == 0 {
            return Ok(());
        }
        let meta_end = usize::try_from(meta_len)
            .ok()
            .and_then(|n| at.checked_add(n))
            .filter(|&end| end <= payload.len())
            .ok_or_else(|| bad(&format!("metadata of {meta_len} bytes past the end")))?;
        let message = arrow::ipc::root_as_message(&payload[at..meta_end])
            .map_err(|e| bad(&format!("unreadable metadata: {e}")))?;
        if let Some(schema) = message.header_as_schema() {
            check_schema(schema)?;
        }
        let body_len = usize::try_from(message.bodyLength())
            .ok()
            .filter(|&n| n <= payload.len() - meta_end)
            .ok_or_else(|| {
                bad(&format!(
                    "a body of {} bytes past the end",
                    message.bodyLength()
                ))
            })?;
        let batch = message
            .header_as_record_batch()
            .or_else(|| message.header_as_dictionary_batch().and_then(|d| d.data()));
        if let Some(batch) = batch {
            if batch.compression().is_some() {
                return Err(bad("compressed buffers"));
            }
            check_sizes(batch).map_err(|reason| bad(&reason))?;
            for b in batch.buffers().into_iter().flatten() {
                let fits = usize::try_from(b.offset())
                    .ok()
                    .zip(usize::try_from(b.length()).ok())
                    .and_then(|(o, l)| o.checked_add(l))
                    .is_some_and(|end| end <= body_len);
                if !fits {
                    return Err(bad(&format!(
                        "a buffer ({} bytes at {}) past the body's {body_len} bytes",
                        b.length(),
                        b.offset()
                    )));
                }
            }
        }
        pos = meta_end + body_len;
    }
    Ok(())
}

/// Checks that a batch's columns hold what its row count needs, column by
/// column of the market table: arrow builds validity bitmaps from them
/// before validating, and panics when one is too short.
fn check_sizes(batch: arrow::ipc::RecordBatch<'_>) -> Result<(), String> {
    let want = market_schema();
    let rows = usize::try_from(batch.length())
        .map_err(|_| format!("a row count of {}", batch.length()))?;
    let nodes = batch.nodes().ok_or("no column list")?;
    let buffers = batch.buffers().ok_or("no buffer list")?;
    if nodes.len() != want.fields().len() {
        return Err(format!(
            "{} columns, expected {}",
            nodes.len(),
            want.fields().len()
        ));
    }
    let mut next = 0;
    for (node, field) in nodes.iter().zip(want.fields()) {
        if node.length() != batch.length() || !(0..=node.length()).contains(&node.null_count()) {
            return Err(format!(
                "column `{}`: {} rows and {} nulls in a batch of {rows} rows",
                field.name(),
                node.length(),
                node.null_count()
            ));
        }
        // What each buffer needs, `(bytes, element size)`: the validity
        // bitmap (read only when the column has nulls), then the 8-byte
        // values, or the i32 offsets and the string bytes (which arrow
        // checks against the offsets). Arrow views a buffer as its element
        // type and panics unless it starts 8-aligned (as the format
        // requires) and holds whole elements.
        let validity = if node.null_count() > 0 {
            rows.div_ceil(8)
        } else {
            0
        };
        let needs = match field.data_type() {
            DataType::Utf8 => vec![
                (Some(validity), 1),
                (rows.checked_add(1).and_then(|n| n.checked_mul(4)), 4),
                (Some(0), 1),
            ],
            _ => vec![(Some(validity), 1), (rows.checked_mul(8), 8)],
        };
        for (need, size) in needs {
            let got = (next < buffers.len()).then(|| buffers.get(next));
            next += 1;
            let fits = need.zip(got).is_some_and(|(need, got)| {
                let len = usize::try_from(got.length()).unwrap_or(0);
                len >= need && len % size == 0 && got.offset() % 8 == 0
            });
            if !fits {
                return Err(format!(
                    "column `{}`: buffer {next} ({} bytes at {}) does not hold the {} bytes its {rows} rows need, {size}-byte elements, 8-aligned",
                    field.name(),
                    got.map_or(0, |g| g.length()),
                    got.map_or(0, |g| g.offset()),
                    need.map_or("too many".into(), |n| n.to_string()),
                ));
            }
        }
    }
    Ok(())
}

/// Checks that a schema message has exactly the market table's column
/// types, reading the flatbuffer with no conversion arrow could panic in.
fn check_schema(schema: arrow::ipc::Schema<'_>) -> Result<(), MarketDecodeError> {
    use arrow::datatypes::TimeUnit;
    use arrow::ipc::{Precision, TimeUnit as IpcUnit, Type};
    let want = market_schema();
    let wrong = |reason: String| MarketDecodeError::WrongSchema { reason };
    let fields = schema
        .fields()
        .ok_or_else(|| wrong("no column list".into()))?;
    if fields.len() != want.fields().len() {
        return Err(wrong(format!(
            "{} columns, expected {}",
            fields.len(),
            want.fields().len()
        )));
    }
    for (i, (field, expected)) in fields.iter().zip(want.fields()).enumerate() {
        let name = field.name().unwrap_or_default();
        let got = match field.type_type() {
            _ if field.dictionary().is_some() => None,
            Type::Utf8 => Some(DataType::Utf8),
            Type::Int => field
                .type_as_int()
                .filter(|t| t.bitWidth() == 64 && t.is_signed())
                .map(|_| DataType::Int64),
            Type::FloatingPoint => field
                .type_as_floating_point()
                .filter(|t| t.precision() == Precision::DOUBLE)
                .map(|_| DataType::Float64),
            Type::Timestamp => field
                .type_as_timestamp()
                .filter(|t| t.unit() == IpcUnit::MICROSECOND)
                .map(|t| DataType::Timestamp(TimeUnit::Microsecond, t.timezone().map(Into::into))),
            _ => None,
        };
        if got.as_ref() != Some(expected.data_type()) {
            return Err(wrong(format!(
                "column {} ({name:?}) is not {} (`{}`)",
                i + 1,
                expected.data_type(),
                expected.name()
            )));
        }
    }
    Ok(())
}

/// Why the last market message could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum LastMarketError {
    /// Kafka failed.
    #[error("Kafka ({context}): {source}")]
    Kafka {
        /// What was being done.
        context: String,
        /// rdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The message is not one the stage writes (or could not be read).
    #[error("market topic {topic}, offset {offset}: {reason}")]
    BadMessage {
        /// The market topic.
        topic: String,
        /// The message's offset.
        offset: i64,
        /// What is wrong.
        reason: String,
    },
}

/// The `closed_until` of the market topic's last message (`None`: empty or
/// missing topic), so a restarted stage does not publish a bucket twice.
pub fn last_closed_until(kafka: &KafkaConfig, topic: &str) -> Result<Option<i64>, LastMarketError> {
    let err = |context: &str| {
        let context = context.to_owned();
        move |source| LastMarketError::Kafka { context, source }
    };
    let mut config = kafka.client();
    config
        .set("group.id", "stockanomaly-market-resume")
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = kafka
        .finish(&mut config)
        .create()
        .map_err(|e| err("creating the resume reader")(kafka.redact(e)))?;
    let (low, high) = match consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)) {
        Ok(w) => w,
        Err(_) => return Ok(None),
    };
    if high <= low {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(high - 1))
        .map_err(err("positioning the resume reader"))?;
    consumer
        .assign(&tpl)
        .map_err(err("assigning the resume reader"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let (_, closed) =
                    decode_market(m.payload().unwrap_or_default()).map_err(|reason| {
                        LastMarketError::BadMessage {
                            topic: topic.to_owned(),
                            offset: m.offset(),
                            reason: reason.to_string(),
                        }
                    })?;
                return Ok(Some(closed));
            }
            Some(Err(e)) => return Err(err("reading the last market message")(e)),
            None => continue,
        }
    }
    Err(LastMarketError::BadMessage {
        topic: topic.to_owned(),
        offset: high - 1,
        reason: "the last message could not be read within 30 s".into(),
    })
}

/// What [`MarketReader::drain`] found.
#[derive(Debug, Default)]
pub struct MarketNews {
    /// Each message's rows and `closed_until`, in order.
    pub closings: Vec<(RecordBatch, i64)>,
    /// The topic's end was reached: every bucket's rows are known again.
    pub caught_up: bool,
}

/// Reads the `market` topic in full, from its start (see the module
/// documentation).
pub struct MarketReader {
    consumer: BaseConsumer<QuietEof>,
    topic: String,
}

impl MarketReader {
    /// A reader of `topic`, positioned on its start; `group` names the
    /// detector's group (the reader's own group id is derived from it and
    /// never committed).
    pub fn new(kafka: &KafkaConfig, group: &str, topic: &str) -> Result<Self, SourceError> {
        let mut config = kafka.client();
        config
            // Never committed: every detector reads the whole topic.
            .set("group.id", format!("{group}-market"))
            .set("enable.auto.commit", "false")
            // Its end says every bucket's rows are known again.
            .set("enable.partition.eof", "true");
        let consumer: BaseConsumer<QuietEof> = kafka
            .finish(&mut config)
            .create_with_context(QuietEof)
            .map_err(|e| SourceError::Kafka {
                context: format!("creating the reader of {topic}"),
                source: kafka.redact(e),
            })?;
        let reader = MarketReader {
            consumer,
            topic: topic.to_owned(),
        };
        reader.rewind()?;
        Ok(reader)
    }

    /// Reads the topic again from its beginning.
    pub fn rewind(&self) -> Result<(), SourceError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, 0, Offset::Beginning)
            .map_err(|source| SourceError::Kafka {
                context: format!("positioning on {}", self.topic),
                source,
            })?;
        self.consumer
            .assign(&tpl)
            .map_err(|source| SourceError::Kafka {
                context: format!("assigning {}", self.topic),
                source,
            })
    }

    /// Every market message that has arrived since the last call (a
    /// message that is not one logs an error and is skipped).
    pub fn drain(&self) -> MarketNews {
        let mut news = MarketNews::default();
        while let Some(m) = self.consumer.poll(Duration::ZERO) {
            let m = match m {
                Ok(m) => m,
                Err(rdkafka::error::KafkaError::PartitionEOF(_)) => {
                    news.caught_up = true;
                    break;
                }
                // Not created yet by the stage, or a leader moving.
                Err(e) => {
                    tracing::debug!(error = %e, topic = %self.topic, "Market topic not readable yet.");
                    break;
                }
            };
            match decode_market(m.payload().unwrap_or_default()) {
                Ok(closing) => news.closings.push(closing),
                Err(reason) => tracing::error!(
                    topic = %self.topic,
                    offset = m.offset(),
                    %reason,
                    "Not a market message; skipped."
                ),
            }
        }
        news
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn market_messages_round_trip() {
        let rows = RecordBatch::new_empty(market_schema());
        let body = encode_market(&rows, 42).unwrap();
        let (back, closed) = decode_market(&body).unwrap();
        assert_eq!(closed, 42);
        assert_eq!(back.num_rows(), 0);
        assert!(decode_market(b"{\"not\": \"arrow\"}").is_err());
    }

    /// A market message of two rows, and where its record batch's metadata
    /// starts (after the schema message).
    fn two_rows() -> Vec<u8> {
        use arrow::array::TimestampMicrosecondArray;
        use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
        let f = || Arc::new(Float64Array::from(vec![Some(1.0), None])) as ArrayRef;
        let i = || Arc::new(Int64Array::from(vec![3, 4])) as ArrayRef;
        let ts = TimestampMicrosecondArray::from(vec![60_000_000, 60_000_000]).with_timezone("UTC");
        let columns = vec![
            Arc::new(ts) as ArrayRef,
            Arc::new(StringArray::from(vec!["A", "B"])) as ArrayRef,
            i(),
            f(),
            f(),
            f(),
            f(),
            f(),
            i(),
            f(),
            f(),
            f(),
            f(),
        ];
        let rows = RecordBatch::try_new(market_schema(), columns).unwrap();
        encode_market(&rows, 42).unwrap()
    }

    /// The messages of a stream: `(metadata start, metadata end)`.
    fn messages(payload: &[u8]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos + 8 <= payload.len() {
            let len = i32::from_le_bytes(payload[pos + 4..pos + 8].try_into().unwrap());
            if len <= 0 {
                break;
            }
            let (start, end) = (pos + 8, pos + 8 + len as usize);
            let m = arrow::ipc::root_as_message(&payload[start..end]).unwrap();
            out.push((start, end));
            pos = end + m.bodyLength() as usize;
        }
        out
    }

    /// Found by fuzzing (fuzz/fuzz_targets/market_ipc.rs): a buffer whose
    /// declared length reaches past the message body made arrow's reader
    /// panic (`Buffer::slice_with_length`) inside `decode_market`.
    #[test]
    fn market_message_with_a_buffer_past_its_body_is_refused() {
        let mut payload = two_rows();
        let (start, end) = messages(&payload)[1];
        let m = arrow::ipc::root_as_message(&payload[start..end]).unwrap();
        let buffers = m.header_as_record_batch().unwrap().buffers().unwrap();
        // The length (the second i64) of the last buffer, in the payload.
        let at = buffers.bytes().as_ptr() as usize - payload.as_ptr() as usize
            + (buffers.len() - 1) * 16
            + 8;
        payload[at..at + 8].copy_from_slice(&186_654_983_716_880i64.to_le_bytes());
        let err = decode_market(&payload).unwrap_err();
        assert!(
            matches!(&err, MarketDecodeError::NotIpc { reason } if reason.contains("past the body")),
            "{err}"
        );
    }

    /// Found by fuzzing: a schema message without its column list (valid
    /// flatbuffers: the field is optional) made arrow's schema conversion
    /// panic (`fb.fields().unwrap()`) inside `decode_market`.
    #[test]
    fn market_message_whose_schema_lists_no_columns_is_refused() {
        let mut payload = two_rows();
        let (start, end) = messages(&payload)[0];
        let m = arrow::ipc::root_as_message(&payload[start..end]).unwrap();
        // Drop `fields` from the schema table's vtable.
        let table = start + m.header_as_schema().unwrap()._tab.loc();
        let to_vtable = i32::from_le_bytes(payload[table..table + 4].try_into().unwrap());
        let vtable = (table as i64 - i64::from(to_vtable)) as usize;
        let slot = vtable + usize::from(arrow::ipc::Schema::VT_FIELDS);
        payload[slot..slot + 2].copy_from_slice(&[0, 0]);
        let err = decode_market(&payload).unwrap_err();
        assert_eq!(
            err,
            MarketDecodeError::WrongSchema {
                reason: "no column list".into()
            }
        );
    }

    /// Found by fuzzing (the input is kept as it was found): a column with
    /// nulls whose validity buffer is empty made arrow panic building the
    /// bitmap (`BooleanBuffer::new`: buffer not large enough) inside
    /// `decode_market`.
    #[test]
    fn market_message_with_a_validity_buffer_too_short_is_refused() {
        let payload = include_bytes!("testdata/market-validity-too-short.arrow");
        let err = decode_market(payload).unwrap_err();
        assert!(
            matches!(&err, MarketDecodeError::NotIpc { reason } if reason.contains("column `")),
            "{err}"
        );
    }

    /// Found by fuzzing: a string column's offsets buffer that does not
    /// hold whole i32s made arrow's validation panic (`typed_data`:
    /// misaligned) inside `decode_market`.
    #[test]
    fn market_message_with_a_ragged_offsets_buffer_is_refused() {
        let mut payload = two_rows();
        let (start, end) = messages(&payload)[1];
        let m = arrow::ipc::root_as_message(&payload[start..end]).unwrap();
        let buffers = m.header_as_record_batch().unwrap().buffers().unwrap();
        // Buffer 3 is `symbol`'s offsets (after `ts`'s two and its
        // validity): 12 bytes for two rows, made 13.
        assert_eq!(buffers.get(3).length(), 12);
        let at = buffers.bytes().as_ptr() as usize - payload.as_ptr() as usize + 3 * 16 + 8;
        payload[at..at + 8].copy_from_slice(&13i64.to_le_bytes());
        let err = decode_market(&payload).unwrap_err();
        assert!(
            err.to_string().contains("column `symbol`: buffer 4"),
            "{err}"
        );
    }

    /// Arrow's reader allocates a message's declared metadata and body
    /// sizes before reading them: eight bytes could make it ask for
    /// gigabytes. Such lengths are refused before arrow sees them.
    #[test]
    fn market_message_declaring_more_than_it_holds_is_refused_unread() {
        let huge_meta = b"\xff\xff\xff\xff\xff\xff\xff\x7f".to_vec();
        let err = decode_market(&huge_meta).unwrap_err();
        assert!(
            err.to_string().contains("metadata of 2147483647 bytes"),
            "{err}"
        );

        let mut payload = two_rows();
        let (start, end) = messages(&payload)[1];
        let body = arrow::ipc::root_as_message(&payload[start..end])
            .unwrap()
            .bodyLength();
        let needle = body.to_le_bytes();
        let hits: Vec<usize> = (start..end - 8)
            .filter(|&i| payload[i..i + 8] == needle)
            .collect();
        assert_eq!(
            hits.len(),
            1,
            "the body length is not unique in the metadata"
        );
        payload[hits[0]..hits[0] + 8].copy_from_slice(&(1i64 << 40).to_le_bytes());
        let err = decode_market(&payload).unwrap_err();
        assert!(
            err.to_string().contains("a body of 1099511627776 bytes"),
            "{err}"
        );
    }

    #[test]
    fn market_message_of_other_columns_is_refused_before_its_rows() {
        let schema = Arc::new(Schema::new_with_metadata(
            vec![arrow::datatypes::Field::new("x", DataType::Utf8, true)],
            HashMap::from([(CLOSED_UNTIL.to_owned(), "1".to_owned())]),
        ));
        let rows = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(arrow::array::StringArray::from(vec!["a"])) as _],
        )
        .unwrap();
        let mut payload = Vec::new();
        {
            let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut payload, &schema).unwrap();
            w.write(&rows).unwrap();
            w.finish().unwrap();
        }
        let err = decode_market(&payload).unwrap_err();
        assert!(
            matches!(err, MarketDecodeError::WrongSchema { .. }),
            "{err}"
        );
        let (rows, closed) = decode_market(&two_rows()).unwrap();
        assert_eq!((rows.num_rows(), closed), (2, 42));
    }
}
