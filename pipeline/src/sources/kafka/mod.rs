//! Kafka: ticks as JSON messages keyed by symbol.
//!
//! [`JsonTickDecoder`] turns a message payload into a
//! [`TickRecord`](crate::tick::TickRecord) for a
//! [`TickBuilder`](crate::tick::TickBuilder); [`encode_tick_json`] and
//! [`TickPublisher`] write ticks so that they decode to exactly the lake's
//! values. Keys are symbols, so each symbol's ticks stay in order in one
//! partition and the consumer assigns the same `seq` as the lake has.

mod json;
mod publish;

pub use json::{
    encode_tick_json, FieldMapping, JsonTickDecoder, MappingError, NotTickBatch, TickColumns,
    TickField,
};
pub use publish::{
    ensure_topic, sort_event_time, DeliveryTracker, ProduceError, PublishStats, TickPublisher,
    TopicStatus,
};
