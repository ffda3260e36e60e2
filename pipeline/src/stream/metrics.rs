//! The detector's Prometheus metrics and the `/metrics` endpoint.
//!
//! Kept with `prometheus-client`, the Prometheus project's Rust client, and
//! exposed in its text format (OpenMetrics 1.0, which Prometheus scrapes) by
//! an axum route on [`crate::web::serve`]: the same header-read and request
//! timeouts, connection cap and accept back-off as the review app, so an
//! idle or hostile client cannot tie the endpoint up. The detector updates
//! the metrics once per micro-batch.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::web::{self, Limits};

/// Upper bounds (seconds) of the latency histograms' buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The media type of the exposition.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A dead letter's reason code (bounded: the validator's codes).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

/// A secondary sink (bounded: the alert topic and the lake).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Sink {
    sink: String,
}

/// A Kafka partition.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Partition {
    partition: i32,
}

/// The metrics and the registry that renders them.
struct Inner {
    registry: Registry,
    messages: Counter,
    emitted: Counter,
    alerts: Counter,
    batches: Counter,
    dead_letters: Family<Reason, Counter>,
    offset_gaps: Counter,
    secondary_failures: Family<Sink, Counter>,
    secondary_retries: Family<Sink, Counter>,
    secondary_dropped: Family<Sink, Counter>,
    held: Gauge,
    lag: Family<Partition, Gauge>,
    /// The last lag per partition, for [`Metrics::total_lag`] (a family
    /// cannot be iterated).
    lag_values: Mutex<BTreeMap<i32, i64>>,
    batch_seconds: Histogram,
    arrival_to_commit: Histogram,
    ready_to_commit: Histogram,
    event_to_commit: Histogram,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Default for Inner {
    fn default() -> Self {
        let mut inner = Inner {
            registry: Registry::default(),
            messages: Counter::default(),
            emitted: Counter::default(),
            alerts: Counter::default(),
            batches: Counter::default(),
            dead_letters: Family::default(),
            offset_gaps: Counter::default(),
            secondary_failures: Family::default(),
            secondary_retries: Family::default(),
            secondary_dropped: Family::default(),
            held: Gauge::default(),
            lag: Family::default(),
            lag_values: Mutex::new(BTreeMap::new()),
            batch_seconds: latency_histogram(),
            arrival_to_commit: latency_histogram(),
            ready_to_commit: latency_histogram(),
            event_to_commit: latency_histogram(),
        };
        // Counters are registered without `_total`: the client appends it,
        // so the exposed names are the ones dashboards and alerts use.
        let r = &mut inner.registry;
        r.register(
            "stockanomaly_messages",
            "Kafka messages read (warm-up replays included)",
            inner.messages.clone(),
        );
        r.register(
            "stockanomaly_ticks_emitted",
            "Ticks whose features were computed and scored",
            inner.emitted.clone(),
        );
        r.register(
            "stockanomaly_alerts",
            "Alerts committed to PostgreSQL",
            inner.alerts.clone(),
        );
        r.register(
            "stockanomaly_batches",
            "Micro-batches processed",
            inner.batches.clone(),
        );
        r.register(
            "stockanomaly_dead_letters",
            "Dead letters written, by reason",
            inner.dead_letters.clone(),
        );
        r.register(
            "stockanomaly_offset_gaps",
            "Offset gaps found in a partition (records deleted, topic recreated), each logged",
            inner.offset_gaps.clone(),
        );
        r.register(
            "stockanomaly_secondary_sink_failures",
            "Failed writes to a secondary sink (alert topic, lake), each retried",
            inner.secondary_failures.clone(),
        );
        r.register(
            "stockanomaly_secondary_sink_retries",
            "Retries of failed secondary sink writes",
            inner.secondary_retries.clone(),
        );
        r.register(
            "stockanomaly_secondary_sink_dropped_alerts",
            "Alerts a secondary sink dropped from a full backlog (PostgreSQL has them)",
            inner.secondary_dropped.clone(),
        );
        r.register(
            "stockanomaly_held_ticks",
            "Ticks held as history or pending",
            inner.held.clone(),
        );
        r.register(
            "stockanomaly_consumer_lag",
            "Messages behind the partition's high watermark",
            inner.lag.clone(),
        );
        r.register(
            "stockanomaly_batch_seconds",
            "Wall time of a micro-batch, read to commit",
            inner.batch_seconds.clone(),
        );
        r.register(
            "stockanomaly_arrival_to_commit_seconds",
            "From a tick's arrival to its alerts committed",
            inner.arrival_to_commit.clone(),
        );
        r.register(
            "stockanomaly_ready_to_commit_seconds",
            "From a tick becoming final (the pack's declared waits over) to its alerts committed: processing",
            inner.ready_to_commit.clone(),
        );
        r.register(
            "stockanomaly_event_to_commit_seconds",
            "From a tick's event time to its alerts committed",
            inner.event_to_commit.clone(),
        );
        inner
    }
}

/// The detector's metrics (see the module documentation). Cloning shares
/// them.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// What one committed micro-batch adds to the metrics.
#[derive(Debug, Default)]
pub struct BatchMetrics<'a> {
    /// Messages read.
    pub messages: u64,
    /// Ticks emitted.
    pub emitted: u64,
    /// Alerts inserted.
    pub alerts: u64,
    /// Dead letters written, by reason code.
    pub dead_letters: &'a [&'a str],
    /// Wall time of the batch, seconds.
    pub batch_seconds: Option<f64>,
    /// Commit time minus each emitted tick's arrival, seconds.
    pub arrival_to_commit: &'a [f64],
    /// Commit time minus the time each emitted tick became final, seconds.
    pub ready_to_commit: &'a [f64],
    /// Commit time minus each emitted tick's event time, seconds.
    pub event_to_commit: &'a [f64],
    /// Ticks held in state after the batch.
    pub held: u64,
}

/// Adds finite observations (a clock step can make one NaN or infinite;
/// it would poison the sum).
fn observe(h: &Histogram, seconds: f64) {
    if seconds.is_finite() {
        h.observe(seconds);
    }
}

impl Metrics {
    /// Adds a batch.
    pub fn record(&self, b: &BatchMetrics<'_>) {
        let m = &self.inner;
        m.messages.inc_by(b.messages);
        m.emitted.inc_by(b.emitted);
        m.alerts.inc_by(b.alerts);
        for r in b.dead_letters {
            m.dead_letters
                .get_or_create(&Reason {
                    reason: (*r).to_owned(),
                })
                .inc();
        }
        if let Some(t) = b.batch_seconds {
            m.batches.inc();
            observe(&m.batch_seconds, t);
        }
        for &t in b.arrival_to_commit {
            observe(&m.arrival_to_commit, t);
        }
        for &t in b.ready_to_commit {
            observe(&m.ready_to_commit, t);
        }
        for &t in b.event_to_commit {
            observe(&m.event_to_commit, t);
        }
        m.held.set(i64::try_from(b.held).unwrap_or(i64::MAX));
    }

    /// Counts offset gaps found (each was logged with its offsets).
    pub fn record_gaps(&self, gaps: u64) {
        self.inner.offset_gaps.inc_by(gaps);
    }

    /// The counters of the secondary sink labelled `sink` (`alert_topic`,
    /// `lake`), shared with the exposition.
    pub fn secondary(&self, sink: &str) -> crate::sinks::secondary::SecondaryCounters {
        let label = Sink {
            sink: sink.to_owned(),
        };
        let m = &self.inner;
        crate::sinks::secondary::SecondaryCounters {
            failures: m.secondary_failures.get_or_create(&label).clone(),
            retries: m.secondary_retries.get_or_create(&label).clone(),
            dropped: m.secondary_dropped.get_or_create(&label).clone(),
        }
    }

    /// Replaces the consumer lag of every partition (messages behind the
    /// high watermark).
    pub fn set_lag(&self, lag: &BTreeMap<i32, i64>) {
        let m = &self.inner;
        // Partitions moved to another member disappear from the exposition.
        m.lag.clear();
        for (&partition, &v) in lag {
            m.lag.get_or_create(&Partition { partition }).set(v);
        }
        let mut values = match m.lag_values.lock() {
            Ok(g) => g,
            // A panic elsewhere while holding the lock leaves a whole map.
            Err(poisoned) => poisoned.into_inner(),
        };
        values.clone_from(lag);
    }

    /// Total consumer lag over the partitions, when known.
    pub fn total_lag(&self) -> Option<i64> {
        let values = match self.inner.lag_values.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        (!values.is_empty()).then(|| values.values().sum())
    }

    /// The exposition, in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.inner.registry) {
            // Writing into a String cannot fail; an encoder bug would
            // show here rather than as a half page.
            tracing::error!(error = %e, "Encoding the metrics failed.");
        }
        out
    }

    /// The `/metrics` route (anything else is a 404).
    pub fn router(&self) -> Router {
        let metrics = self.clone();
        Router::new()
            .fallback(|| async {
                (
                    axum::http::StatusCode::NOT_FOUND,
                    [(header::CONNECTION, "close")],
                    "not found: try /metrics\n",
                )
            })
            .route(
                "/metrics",
                get(move || {
                    let metrics = metrics.clone();
                    // One scrape per connection, as before: a scraper (or a
                    // script reading to the end) is not left waiting for the
                    // keep-alive timeout.
                    async move {
                        (
                            [
                                (header::CONTENT_TYPE, CONTENT_TYPE),
                                (header::CONNECTION, "close"),
                            ],
                            metrics.render(),
                        )
                            .into_response()
                    }
                }),
            )
    }

    /// Serves `GET /metrics` on `addr` with [`Limits::metrics`] until the
    /// task is dropped; returns the bound address (port 0 picks one).
    pub async fn serve(
        &self,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        self.serve_with(addr, Limits::metrics()).await
    }

    /// [`Metrics::serve`] with other limits.
    pub async fn serve_with(
        &self,
        addr: SocketAddr,
        limits: Limits,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let router = self.router();
        let task = tokio::spawn(async move {
            if let Err(e) = web::serve(listener, router, &limits, std::future::pending()).await {
                tracing::error!(error = %e, "The metrics endpoint stopped.");
            }
        });
        Ok((bound, task))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn histograms_are_cumulative_and_quantiles_come_from_buckets() {
        let m = Metrics::default();
        m.record(&BatchMetrics {
            messages: 10,
            emitted: 8,
            alerts: 2,
            dead_letters: &["late", "late", "json"],
            batch_seconds: Some(0.02),
            arrival_to_commit: &[0.004, 0.004, 0.2, 3.0],
            ready_to_commit: &[0.003, 0.2],
            event_to_commit: &[f64::NAN],
            held: 5,
        });
        let text = m.render();
        assert!(text.contains("stockanomaly_messages_total 10\n"), "{text}");
        assert!(
            text.contains("stockanomaly_ticks_emitted_total 8\n"),
            "{text}"
        );
        assert!(text.contains("stockanomaly_alerts_total 2\n"), "{text}");
        assert!(text.contains("stockanomaly_batches_total 1\n"), "{text}");
        assert!(text.contains("stockanomaly_held_ticks 5\n"), "{text}");
        assert!(text.contains("stockanomaly_dead_letters_total{reason=\"late\"} 2\n"));
        assert!(text.contains("stockanomaly_arrival_to_commit_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("stockanomaly_arrival_to_commit_seconds_bucket{le=\"0.25\"} 3\n"));
        assert!(text.contains("stockanomaly_arrival_to_commit_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("stockanomaly_event_to_commit_seconds_count 0\n"));
        assert!(text.contains("stockanomaly_ready_to_commit_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("stockanomaly_ready_to_commit_seconds_count 2\n"));
        m.set_lag(&BTreeMap::from([(0, 3), (1, 4)]));
        assert_eq!(m.total_lag(), Some(7));
        assert!(m
            .render()
            .contains("stockanomaly_consumer_lag{partition=\"1\"} 4\n"));
        m.record_gaps(2);
        m.secondary("lake").failures.inc();
        let text = m.render();
        assert!(
            text.contains("stockanomaly_offset_gaps_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("stockanomaly_secondary_sink_failures_total{sink=\"lake\"} 1\n"),
            "{text}"
        );
        m.set_lag(&BTreeMap::from([(0, 1)]));
        assert!(
            !m.render().contains("partition=\"1\""),
            "a revoked partition is dropped"
        );
        assert_eq!(m.total_lag(), Some(1));
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        // No `Connection: close`: the endpoint closes after its answer.
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut out = String::new();
        c.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn metrics_are_served_over_http() {
        let m = Metrics::default();
        m.record(&BatchMetrics {
            messages: 3,
            ..BatchMetrics::default()
        });
        let (addr, task) = m
            .serve("127.0.0.1:0".parse().expect("literal address"))
            .await
            .expect("bind loopback");
        let ok = get(addr, "/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.contains("application/openmetrics-text"), "{ok}");
        assert!(ok.contains("stockanomaly_messages_total 3\n"), "{ok}");
        assert!(get(addr, "/").await.starts_with("HTTP/1.1 404"));
        task.abort();
    }

    /// The hand-written responder this replaced read without a timeout: a
    /// client that connected and sent nothing held its task (and socket)
    /// for good.
    #[tokio::test]
    async fn a_silent_scraper_is_disconnected() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(300),
            ..Limits::metrics()
        };
        let (addr, task) = Metrics::default()
            .serve_with("127.0.0.1:0".parse().expect("literal address"), limits)
            .await
            .expect("bind loopback");
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf)).await;
        assert!(closed.is_ok(), "the endpoint kept a silent connection open");
        task.abort();
    }
}
