//! Where the detector's results go outside the lake: alerts, dead letters,
//! offsets and statistics in PostgreSQL ([`postgres`]), and alerts to a
//! Kafka topic ([`alert_topic`]); and ingested ticks to the lake, Kafka or
//! the tick store ([`tick_sink`]).

pub mod alert_topic;
pub mod postgres;
pub mod tick_sink;
