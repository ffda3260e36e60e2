//! `bench --consume`: how fast one consumer reads a tick topic when nothing
//! else happens (the broker's fetches and our JSON decoding into Arrow, no
//! executor, no database), the ceiling the streaming detector's end-to-end
//! figure is read against.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::super::output::{count, rate};
use crate::shutdown::Shutdown;
use crate::sources::kafka::{KafkaConfig, KafkaSource, KafkaSourceOptions, Resume};
use crate::sources::Source;
use crate::tick::Validator;

/// How long the topic may stay silent before the reading is over.
const QUIET: Duration = Duration::from_secs(2);
/// How long the first message may take (group join, topic creation).
const FIRST_WAIT: Duration = Duration::from_secs(60);

/// Reads `url` (`kafka://BROKERS/TOPIC`) from the start with a fresh
/// consumer group, in fills of `batch_rows`, until it has been quiet for
/// two seconds, and prints messages/s (timed from the first message to the
/// last, so joining the group is not counted).
pub(super) async fn run(url: &str, batch_rows: usize) -> anyhow::Result<()> {
    let (brokers, topic) = super::super::detect::parse_source(url)?;
    let group = format!("stockanomaly-bench-consume-{}", std::process::id());
    let mut source = KafkaSource::new(KafkaSourceOptions {
        kafka: KafkaConfig::new(&brokers),
        topic: topic.clone(),
        group,
        batch_rows,
        batch_wait: Duration::from_millis(100),
        resume: Resume::Committed,
        shutdown: Shutdown::on_signals(),
        validator: Validator::new(),
    })
    .with_context(|| format!("consuming {topic} from {brokers}"))?;
    let asked = Instant::now();
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut messages = 0u64;
    let mut ticks = 0u64;
    loop {
        let Some(batch) = source
            .next_batch()
            .await
            .with_context(|| format!("reading {topic}"))?
        else {
            break;
        };
        let n = batch.stream.as_ref().map_or(0, |s| s.messages);
        if n > 0 {
            // The first fill's messages came while the clock was not yet
            // running: it starts at their end.
            if first.is_none() {
                first = Some(Instant::now());
            } else {
                messages += n;
                ticks += batch.ticks.num_rows() as u64;
            }
            last = Instant::now();
        } else if first.is_some() && last.elapsed() >= QUIET {
            break;
        } else if first.is_none() && asked.elapsed() >= FIRST_WAIT {
            anyhow::bail!("{topic}: no message within {}s", FIRST_WAIT.as_secs());
        }
    }
    source.close().await.ok();
    let Some(first) = first else {
        anyhow::bail!("{topic}: no message read");
    };
    let took = last.saturating_duration_since(first);
    println!(
        "broker consumer ceiling: {} messages ({} ticks) in {:.2}s = {} (one consumer, JSON decoded into Arrow, fills of {})",
        count(messages),
        count(ticks),
        took.as_secs_f64(),
        rate(messages as f64, took),
        count(batch_rows as u64)
    );
    Ok(())
}
