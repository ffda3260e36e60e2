//! Alerts to a Kafka topic: one JSON message per alert, keyed by the alert
//! key (model version, symbol, ts, seq) so that consumers can de-duplicate
//! the repeats an at-least-once delivery allows.
//!
//! The detector publishes a batch's alerts and waits for the broker's
//! acknowledgements **before** committing the batch to PostgreSQL: a crash in
//! between replays the batch and publishes its alerts again (same keys),
//! never fewer.

use std::time::Duration;

use futures::future::join_all;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::sinks::postgres::AlertRow;

/// Why alerts could not be published.
#[derive(Debug, thiserror::Error)]
pub enum AlertTopicError {
    /// The producer could not be created.
    #[error("kafka {brokers}: cannot create the alert producer: {source}")]
    Client {
        /// Bootstrap servers.
        brokers: String,
        /// rdkafka's error.
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    /// The topic is missing and could not be created.
    #[error(transparent)]
    Topic(#[from] crate::sources::kafka::ProduceError),
    /// The broker did not take an alert (after the producer's retries).
    #[error("kafka topic {topic}: alert {key} not delivered: {source}")]
    Delivery {
        /// The alert topic.
        topic: String,
        /// The alert's key.
        key: String,
        /// rdkafka's error.
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
}

/// Publishes alerts to a topic (see the module documentation).
pub struct AlertTopic {
    producer: FutureProducer,
    topic: String,
}

/// The key of an alert: unique per (model version, tick).
pub fn alert_key(a: &AlertRow) -> String {
    format!("{}|{}|{}|{}", a.model_version, a.symbol, a.ts_us, a.seq)
}

/// The JSON message of an alert.
pub fn alert_json(a: &AlertRow) -> serde_json::Value {
    let iso = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    };
    serde_json::json!({
        "key": alert_key(a),
        "model_version": a.model_version,
        "detector": a.detector,
        "symbol": a.symbol,
        "ts": iso(a.ts_us),
        "ts_us": a.ts_us,
        "seq": a.seq,
        "score": a.score,
        "threshold": a.threshold,
        "reason": a.reason,
        "top_features": a.top_features,
        "features": a.features,
        "evidence_start": a.evidence_start_us.and_then(iso),
        "evidence_end": a.evidence_end_us.and_then(iso),
        "source": a.source,
        "source_partition": a.source_partition,
        "source_offset": a.source_offset,
    })
}

impl AlertTopic {
    /// A publisher to `topic` on the brokers of `kafka` (idempotent
    /// producer, all acks, the deployment's client options), creating the
    /// topic with one partition if it does not exist (one partition keeps
    /// the alerts in commit order for readers).
    pub async fn new(
        kafka: &crate::sources::kafka::KafkaConfig,
        topic: &str,
    ) -> Result<Self, AlertTopicError> {
        crate::sources::kafka::ensure_topic_with(kafka, topic, 1).await?;
        let mut config = kafka.client();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000");
        let producer = kafka
            .finish(&mut config)
            .create()
            .map_err(|e| AlertTopicError::Client {
                brokers: kafka.brokers().to_owned(),
                source: Box::new(kafka.redact(e)),
            })?;
        Ok(AlertTopic {
            producer,
            topic: topic.to_owned(),
        })
    }

    /// Publishes `alerts` and waits until the broker has them all.
    pub async fn publish(&self, alerts: &[AlertRow]) -> Result<(), AlertTopicError> {
        let messages: Vec<(String, String)> = alerts
            .iter()
            .map(|a| (alert_key(a), alert_json(a).to_string()))
            .collect();
        let sends = messages.iter().map(|(key, body)| async move {
            self.producer
                .send(
                    FutureRecord::to(&self.topic).key(key).payload(body),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| AlertTopicError::Delivery {
                    topic: self.topic.clone(),
                    key: key.clone(),
                    source: Box::new(e),
                })
        });
        for r in join_all(sends).await {
            r?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl crate::sinks::AlertSink for AlertTopic {
    fn name(&self) -> String {
        format!("Kafka topic {}", self.topic)
    }

    async fn write(
        &mut self,
        batch: &crate::sinks::AlertBatch,
    ) -> Result<crate::sinks::Written, crate::sinks::SinkError> {
        if !batch.alerts.is_empty() {
            self.publish(&batch.alerts).await?;
        }
        Ok(crate::sinks::Written {
            alerts: batch.alerts.len() as u64,
            dead_letters: 0,
        })
    }
}
