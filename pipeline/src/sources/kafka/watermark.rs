//! Watermark messages: a producer's word, per partition, that its event
//! time has reached a point.
//!
//! Market buckets close once every partition's event time has passed
//! them (see [`crate::stream::market`]). A partition that carries no tick
//! for a while (its symbols trade on an exchange that is closed, or are
//! quiet) holds every bucket open until it has been silent for the idle
//! timeout, after which a whole stretch of buckets closes at once: a burst
//! of final ticks that the detector then computes in one step. Replaying
//! a lake faster than real time makes that stretch long (two seconds of
//! silence is minutes of event time), and so does a topic shared by
//! exchanges in different time zones.
//!
//! Flink's sources and Dataflow's watermark holds answer this with the
//! producer's own clock: [`TickPublisher`](super::TickPublisher) sends, at
//! most every few milliseconds, one small message to every partition with
//! the newest tick time it has published, marked by the
//! [`WATERMARK_HEADER`] header (payload empty). A consumer reads it as if a
//! tick of that time had arrived on the partition, which is the promise
//! the partition's ticks already make (each partition's ticks arrive in
//! time order, up to the allowed lateness): buckets close as soon as every
//! partition's producer has moved past them, silent or not.
//!
//! A watermark message is not a tick: it is never dead-lettered (unless its
//! header is not a time), never counted as a tick, and positions move past
//! it like past any other message.

use rdkafka::message::{BorrowedMessage, Headers, Message};

/// The header that makes a Kafka message a watermark: its value is the
/// event time announced, in microseconds since the epoch, as decimal text.
pub const WATERMARK_HEADER: &str = "stockanomaly-watermark";

/// The watermark `msg` carries: `None` for a message without the header
/// (a tick), `Some(Err(detail))` for a header that is not a time.
pub fn watermark_of(msg: &BorrowedMessage<'_>) -> Option<Result<i64, String>> {
    let headers = msg.headers()?;
    let header = headers.iter().find(|h| h.key == WATERMARK_HEADER)?;
    Some(parse(header.value))
}

/// Parses a watermark header's value (see [`WATERMARK_HEADER`]).
pub fn parse(value: Option<&[u8]>) -> Result<i64, String> {
    let text = value.ok_or_else(|| format!("{WATERMARK_HEADER} header without a value"))?;
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.trim().parse::<i64>().ok())
        .ok_or_else(|| {
            format!(
                "{WATERMARK_HEADER} header is not microseconds since the epoch: {:?}",
                String::from_utf8_lossy(text)
            )
        })
}

/// The value of a watermark header for `ts_us`.
pub fn encode(ts_us: i64) -> String {
    ts_us.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_garbage_is_named() {
        for ts in [0, 1_704_205_800_000_000, -5, i64::MAX] {
            assert_eq!(parse(Some(encode(ts).as_bytes())), Ok(ts));
        }
        let err = parse(Some(b"soon")).unwrap_err();
        assert!(err.contains("\"soon\""), "{err}");
        assert!(parse(None).unwrap_err().contains("without a value"));
    }
}
