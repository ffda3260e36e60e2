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
use arrow::datatypes::Schema;
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

/// Decodes a market message: its rows (the `market` schema) and
/// `closed_until`.
pub fn decode_market(payload: &[u8]) -> Result<(RecordBatch, i64), String> {
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(payload), None)
        .map_err(|e| format!("not an Arrow IPC stream: {e}"))?;
    let schema = reader.schema();
    let closed_until = schema
        .metadata()
        .get(CLOSED_UNTIL)
        .and_then(|v| v.parse::<i64>().ok())
        .ok_or_else(|| format!("no `{CLOSED_UNTIL}` in the schema metadata"))?;
    let want = market_schema();
    let mut batches = Vec::new();
    for b in reader {
        let b = b.map_err(|e| format!("unreadable rows: {e}"))?;
        let b = RecordBatch::try_new(Arc::clone(&want), b.columns().to_vec())
            .map_err(|e| format!("not the market table's schema: {e}"))?;
        batches.push(b);
    }
    let rows = arrow::compute::concat_batches(&want, &batches).map_err(|e| e.to_string())?;
    Ok((rows, closed_until))
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
                            reason,
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
}
