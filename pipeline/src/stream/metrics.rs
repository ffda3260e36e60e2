//! The detector's Prometheus metrics and the `/metrics` endpoint.
//!
//! The detector updates its metrics once per micro-batch, so one mutex is
//! cheap; the exposition is the Prometheus text format (version 0.0.4),
//! served by a minimal HTTP/1.1 responder on `--metrics-addr` so that no web
//! framework sits in the binary for one route.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Upper bounds (seconds) of the latency histograms' buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A cumulative histogram in Prometheus' sense.
#[derive(Debug, Clone)]
struct Histogram {
    counts: [u64; LATENCY_BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: [0; LATENCY_BUCKETS.len()],
            sum: 0.0,
            count: 0,
        }
    }
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if !seconds.is_finite() {
            return;
        }
        // Buckets are cumulative: an observation counts in every bucket at
        // or above it, which `render` sums; here only its own bucket.
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| seconds <= b) {
            self.counts[i] += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in LATENCY_BUCKETS.iter().zip(self.counts) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

#[derive(Debug, Default)]
struct State {
    messages: u64,
    emitted: u64,
    alerts: u64,
    dead_letters: BTreeMap<String, u64>,
    batches: u64,
    held: u64,
    lag: BTreeMap<i32, i64>,
    batch_seconds: Histogram,
    arrival_to_commit: Histogram,
    event_to_commit: Histogram,
}

/// The detector's metrics (see the module documentation). Cloning shares
/// them.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    state: Arc<Mutex<State>>,
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
    /// Commit time minus each emitted tick's event time, seconds.
    pub event_to_commit: &'a [f64],
    /// Ticks held in state after the batch.
    pub held: u64,
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A panic while holding the lock cannot leave counters half-written
        // in a way that matters: take the data either way.
        let mut guard = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Adds a batch.
    pub fn record(&self, b: &BatchMetrics<'_>) {
        self.with(|s| {
            s.messages += b.messages;
            s.emitted += b.emitted;
            s.alerts += b.alerts;
            for r in b.dead_letters {
                *s.dead_letters.entry((*r).to_owned()).or_default() += 1;
            }
            if let Some(t) = b.batch_seconds {
                s.batches += 1;
                s.batch_seconds.observe(t);
            }
            for &t in b.arrival_to_commit {
                s.arrival_to_commit.observe(t);
            }
            for &t in b.event_to_commit {
                s.event_to_commit.observe(t);
            }
            s.held = b.held;
        });
    }

    /// Replaces the consumer lag of every partition (messages behind the
    /// high watermark).
    pub fn set_lag(&self, lag: &BTreeMap<i32, i64>) {
        self.with(|s| s.lag = lag.clone());
    }

    /// Total consumer lag over the partitions, when known.
    pub fn total_lag(&self) -> Option<i64> {
        self.with(|s| (!s.lag.is_empty()).then(|| s.lag.values().sum()))
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.with(|s| {
            let mut out = String::new();
            let counter = |out: &mut String, name: &str, help: &str, v: u64| {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} counter");
                let _ = writeln!(out, "{name} {v}");
            };
            counter(
                &mut out,
                "stockanomaly_messages_total",
                "Kafka messages read (warm-up replays included).",
                s.messages,
            );
            counter(
                &mut out,
                "stockanomaly_ticks_emitted_total",
                "Ticks whose features were computed and scored.",
                s.emitted,
            );
            counter(
                &mut out,
                "stockanomaly_alerts_total",
                "Alerts committed to PostgreSQL.",
                s.alerts,
            );
            counter(
                &mut out,
                "stockanomaly_batches_total",
                "Micro-batches processed.",
                s.batches,
            );
            let _ = writeln!(
                out,
                "# HELP stockanomaly_dead_letters_total Dead letters written, by reason."
            );
            let _ = writeln!(out, "# TYPE stockanomaly_dead_letters_total counter");
            for (reason, n) in &s.dead_letters {
                let _ = writeln!(
                    out,
                    "stockanomaly_dead_letters_total{{reason=\"{reason}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "# HELP stockanomaly_held_ticks Ticks held as history or pending."
            );
            let _ = writeln!(out, "# TYPE stockanomaly_held_ticks gauge");
            let _ = writeln!(out, "stockanomaly_held_ticks {}", s.held);
            let _ = writeln!(
                out,
                "# HELP stockanomaly_consumer_lag Messages behind the partition's high watermark."
            );
            let _ = writeln!(out, "# TYPE stockanomaly_consumer_lag gauge");
            for (p, lag) in &s.lag {
                let _ = writeln!(out, "stockanomaly_consumer_lag{{partition=\"{p}\"}} {lag}");
            }
            s.batch_seconds.render(
                &mut out,
                "stockanomaly_batch_seconds",
                "Wall time of a micro-batch, read to commit.",
            );
            s.arrival_to_commit.render(
                &mut out,
                "stockanomaly_arrival_to_commit_seconds",
                "From a tick's arrival to its alerts committed.",
            );
            s.event_to_commit.render(
                &mut out,
                "stockanomaly_event_to_commit_seconds",
                "From a tick's event time to its alerts committed.",
            );
            out
        })
    }

    /// Serves `GET /metrics` on `addr` until the task is dropped; returns
    /// the bound address (port 0 picks one).
    pub async fn serve(
        &self,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let metrics = self.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    continue;
                };
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    // A scrape's request fits in one read; anything else
                    // gets a 404 or a 400.
                    let mut buf = [0u8; 2048];
                    let n = match conn.read(&mut buf).await {
                        Ok(n) => n,
                        Err(_) => return,
                    };
                    let request = String::from_utf8_lossy(&buf[..n]);
                    let line = request.lines().next().unwrap_or_default();
                    let mut parts = line.split_whitespace();
                    let (status, body) = match (parts.next(), parts.next()) {
                        (Some("GET"), Some(path)) if path.split('?').next() == Some("/metrics") => {
                            ("200 OK", metrics.render())
                        }
                        (Some(_), Some(_)) => ("404 Not Found", "not found: try /metrics\n".into()),
                        _ => ("400 Bad Request", "bad request\n".into()),
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(head.as_bytes()).await;
                    let _ = conn.write_all(body.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Ok((bound, task))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            event_to_commit: &[f64::NAN],
            held: 5,
        });
        let text = m.render();
        assert!(text.contains("stockanomaly_messages_total 10\n"), "{text}");
        assert!(text.contains("stockanomaly_dead_letters_total{reason=\"late\"} 2\n"));
        assert!(text.contains("stockanomaly_arrival_to_commit_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("stockanomaly_arrival_to_commit_seconds_bucket{le=\"0.25\"} 3\n"));
        assert!(text.contains("stockanomaly_arrival_to_commit_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("stockanomaly_event_to_commit_seconds_count 0\n"));
        m.set_lag(&BTreeMap::from([(0, 3), (1, 4)]));
        assert_eq!(m.total_lag(), Some(7));
        assert!(m
            .render()
            .contains("stockanomaly_consumer_lag{partition=\"1\"} 4\n"));
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
        let get = |path: &'static str| async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
            c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .expect("write");
            let mut out = String::new();
            c.read_to_string(&mut out).await.expect("read");
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.contains("stockanomaly_messages_total 3\n"), "{ok}");
        assert!(get("/").await.starts_with("HTTP/1.1 404"));
        task.abort();
    }
}
