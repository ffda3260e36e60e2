//! Kafka: ticks as JSON messages keyed by symbol.
//!
//! [`JsonTickDecoder`] turns a message payload into a
//! [`TickRecord`](crate::tick::TickRecord) for a
//! [`TickBuilder`](crate::tick::TickBuilder); [`encode_tick_json`] and
//! [`TickPublisher`] write ticks so that they decode to exactly the lake's
//! values. Keys are symbols, so each symbol's ticks stay in order in one
//! partition and the consumer assigns the same `seq` as the lake has.
//!
//! [`KafkaSource`] is a consumer group member as a
//! [`Source`](crate::sources::Source) (resume from stored offsets, warm-up,
//! rebalances, dead letters); [`market`] is the market-context topic's codec
//! and reader; [`KafkaConfig`] carries the brokers and the client options
//! every client gets; [`watermark`] messages carry a producer's event time
//! to partitions without ticks.

mod config;
mod consumer;
mod context;
mod json;
pub mod market;
mod publish;
pub mod watermark;

pub use config::{KafkaConfig, KafkaOption, KafkaUrl};
pub use consumer::{KafkaSource, KafkaSourceOptions, OffsetStore, Resume};
pub use context::{log_client_error, QuietEof};
pub use json::{encode_tick_json, FieldMapping, JsonTickDecoder, MappingError, TickField};
pub use publish::{
    ensure_topic, ensure_topic_with, sort_event_time, DeliveryTracker, ProduceError, PublishStats,
    TickPublisher, TopicStatus,
};
pub use watermark::WATERMARK_HEADER;
