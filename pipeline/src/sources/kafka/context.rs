//! librdkafka client contexts of the consumers: what the callbacks record
//! (rebalances, lag) and how client errors are logged.
//!
//! The callbacks run inside the consumer's polls, so they only note things
//! down for the loop that polls; nothing here blocks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;

/// Logs a librdkafka client error. End-of-partition reports
/// (`enable.partition.eof`) are events the consumer loops act on, not
/// errors: they are logged at debug.
pub fn log_client_error(error: rdkafka::error::KafkaError, reason: &str) {
    if is_partition_eof(&error) {
        tracing::debug!(%error, reason, "Kafka partition end reached.");
    } else {
        tracing::error!(%error, reason, "librdkafka error.");
    }
}

/// Whether `error` reports a partition's end. The error callback gets it
/// as a global error code ("Fetch from broker ... reached end of
/// partition"), the message stream as `PartitionEOF(partition)`.
fn is_partition_eof(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    matches!(
        error,
        KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
    )
}

/// A consumer context that only logs client errors (end-of-partition at
/// debug, see [`log_client_error`]).
pub struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        log_client_error(error, reason);
    }
}

impl ConsumerContext for QuietEof {}

/// What a group consumer's callbacks saw since the polling loop last looked.
#[derive(Debug, Default)]
pub(crate) struct GroupEvents {
    /// Partitions assigned (`true`) and revoked (`false`), in order.
    pub(crate) changes: Vec<(i32, bool)>,
    /// Consumer lag per partition from librdkafka's statistics.
    pub(crate) lag: BTreeMap<i32, i64>,
}

/// The context of a group consumer of one topic: records rebalances and
/// lag (see the module documentation).
pub(crate) struct GroupContext {
    pub(crate) topic: String,
    pub(crate) events: Arc<Mutex<GroupEvents>>,
}

impl GroupContext {
    /// Runs `f` on the recorded events (a poisoned lock still holds them).
    pub(crate) fn with<T>(events: &Mutex<GroupEvents>, f: impl FnOnce(&mut GroupEvents) -> T) -> T {
        let mut g = match events.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }
}

impl ClientContext for GroupContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        log_client_error(error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let lag: BTreeMap<i32, i64> = topic
            .partitions
            .iter()
            // -1 is the internal UA partition; a negative lag is unknown.
            .filter(|(p, part)| **p >= 0 && part.consumer_lag >= 0)
            .map(|(p, part)| (*p, part.consumer_lag))
            .collect();
        GroupContext::with(&self.events, |e| e.lag = lag);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (tpl, assigned) = match rebalance {
            Rebalance::Assign(tpl) => (*tpl, true),
            Rebalance::Revoke(tpl) => (*tpl, false),
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "Rebalance error.");
                return;
            }
        };
        let parts: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        tracing::info!(partitions = ?parts, assigned, "Rebalance.");
        GroupContext::with(&self.events, |e| {
            e.changes.extend(parts.iter().map(|&p| (p, assigned)))
        });
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};

    use super::is_partition_eof;

    #[test]
    fn partition_ends_in_either_form_are_not_errors() {
        assert!(is_partition_eof(&KafkaError::PartitionEOF(3)));
        // The form the soak's detector logged ~300 times at ERROR.
        assert!(is_partition_eof(&KafkaError::Global(
            RDKafkaErrorCode::PartitionEOF
        )));
        assert!(!is_partition_eof(&KafkaError::Global(
            RDKafkaErrorCode::BrokerTransportFailure
        )));
        assert!(!is_partition_eof(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::UnknownTopicOrPartition
        )));
    }
}
