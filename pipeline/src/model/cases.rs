//! Alert cases: what an analyst reviews is one symbol's episode of alerts
//! with its evidence, not a tick.
//!
//! A **case** is one symbol's run of alerts (the model's or a rule's) joined
//! while each is at most a gap after the one before and the run spans at
//! most [`EPISODE_SPAN_GAPS`] gaps (the episodes of [`events`](super::events),
//! so the figures agree). A case **opens**, becoming an analyst's work, only
//! when its case score reaches the threshold of the model's [`CaseRule`]: a
//! logistic model over what the case knows after each alert joins
//! ([`CaseStats`]: model alerts, duration, peak and mean score), learnt on
//! the validation split with the threshold chosen for a target case
//! precision. The case score is the highest the case reached so far, so a
//! case once open stays open and the batch and streaming views of the same
//! alerts agree: both feed the alerts of each symbol in time order to a
//! [`CaseTracker`].
//!
//! ```
//! use stockanomaly::model::cases::{AlertIn, CaseRule, CaseTracker};
//!
//! let mut cases = CaseTracker::new(CaseRule::open_all(300_000_000));
//! let s = 1_000_000;
//! let alert = |ts: i64| AlertIn {
//!     ts_us: ts * s, seq: 0, model_score: Some(0.9), detectors: 1, top_shap: None, partition: None,
//! };
//! assert!(cases.alert("ACME", alert(100)).is_none());
//! assert!(cases.alert("ACME", alert(200)).is_none()); // 100 s later: the same case
//! // 20 minutes later: the first case closes, a second starts.
//! let closed = cases.alert("ACME", alert(1_400)).unwrap();
//! assert_eq!((closed.alerts, closed.start_us, closed.end_us), (2, 100 * s, 200 * s));
//! assert!(closed.closed && closed.opened_us.is_some());
//! ```

use std::collections::{BTreeMap, HashMap};

use arrow::array::{Array, RecordBatch};
use arrow::error::ArrowError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::events::{median, ratio, LabelEvent, ScoredRows, EPISODE_SPAN_GAPS};
use super::rules::hex;
use super::scores_table::ScoresView;

/// Names of the case score's inputs, in the order of [`CaseRule::weights`].
pub const CASE_FEATURES: [&str; 4] = [
    "ln_model_alerts",
    "ln_duration_s",
    "peak_score",
    "mean_score",
];

/// What a case knows of its alerts so far: the inputs of its score.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CaseStats {
    /// Model alerts joined.
    pub model_alerts: u32,
    /// First alert's event time, µs UTC.
    pub first_us: i64,
    /// Last alert's event time, µs UTC.
    pub last_us: i64,
    /// Highest model score.
    pub peak: f32,
    /// Sum of the model alerts' scores.
    pub sum: f64,
}

impl CaseStats {
    /// The case score's inputs ([`CASE_FEATURES`]).
    pub fn features(&self) -> [f64; 4] {
        let n = f64::from(self.model_alerts);
        [
            n.ln_1p(),
            ((self.last_us - self.first_us).max(0) as f64 / 1e6).ln_1p(),
            f64::from(self.peak),
            if n > 0.0 { self.sum / n } else { 0.0 },
        ]
    }
}

/// When a case opens: the learnt case score and its threshold, stored in
/// the model's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseRule {
    /// Alerts of a symbol at most this far apart join one case, seconds.
    pub gap_s: f64,
    /// Subtracted from each input before weighing ([`CASE_FEATURES`] order).
    pub center: [f64; 4],
    /// Each input is divided by this before weighing.
    pub scale: [f64; 4],
    /// Weights of the standardised inputs.
    pub weights: [f64; 4],
    /// Intercept.
    pub bias: f64,
    /// A case opens once its score reaches this.
    pub threshold: f64,
    /// The validation case precision the threshold was chosen for (`None`:
    /// the best case F1, event recall against case precision).
    pub target_precision: Option<f64>,
    /// Whether the target was reached on validation (when not, the best
    /// case F1 threshold is used).
    pub target_reached: bool,
    /// Validation cases the rule was learnt from, and how many were true.
    pub learnt_from: (u64, u64),
}

impl CaseRule {
    /// Every case opens at its first model alert (score 0.5 against a
    /// threshold of 0.5): cases are the alert episodes. For rules, and for
    /// models trained before cases existed.
    pub fn open_all(gap_us: i64) -> CaseRule {
        CaseRule {
            gap_s: gap_us as f64 / 1e6,
            center: [0.0; 4],
            scale: [1.0; 4],
            weights: [0.0; 4],
            bias: 0.0,
            threshold: 0.5,
            target_precision: None,
            target_reached: false,
            learnt_from: (0, 0),
        }
    }

    /// The join gap, µs.
    pub fn gap_us(&self) -> i64 {
        (self.gap_s * 1e6).round() as i64
    }

    /// The score of a case knowing `s`: a probability; 0 before any model
    /// alert (a rule's alerts alone never open a learnt case).
    pub fn score(&self, s: &CaseStats) -> f64 {
        if s.model_alerts == 0 {
            return 0.0;
        }
        let z = s
            .features()
            .iter()
            .zip(&self.center)
            .zip(&self.scale)
            .zip(&self.weights)
            .fold(self.bias, |z, (((x, c), s), w)| z + w * (x - c) / s);
        1.0 / (1.0 + (-z).exp())
    }
}

/// One alert as a case takes it.
#[derive(Debug, Clone, Copy)]
pub struct AlertIn<'a> {
    /// Event time, µs UTC.
    pub ts_us: i64,
    /// The tick's sequence number.
    pub seq: u32,
    /// The model's score when the model alerted on this tick.
    pub model_score: Option<f32>,
    /// Bit `i` set: detector `i` of the run alerted.
    pub detectors: u64,
    /// The model's top SHAP contributions (JSON), when explained.
    pub top_shap: Option<&'a str>,
    /// The source partition of the tick (streaming), kept by a case from
    /// its first alert: a restarted detector restores the open cases of
    /// the partitions it is given.
    pub partition: Option<i32>,
}

/// A case, open or done.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// Deterministic from the symbol and its first alert's key ([`case_id`]).
    pub case_id: String,
    /// Its symbol.
    pub symbol: String,
    /// First alert, µs UTC.
    pub start_us: i64,
    /// Last alert, µs UTC.
    pub end_us: i64,
    /// Alerts joined (ticks on which any detector alerted).
    pub alerts: u32,
    /// What its score knows.
    pub stats: CaseStats,
    /// Event time of the peak model alert (`None` without model alerts).
    pub peak_us: Option<i64>,
    /// Highest case score reached.
    pub score: f64,
    /// When it opened: the event time of the alert that took its score to
    /// the threshold (`None`: never worth an analyst's time).
    pub opened_us: Option<i64>,
    /// Bit `i` set: detector `i` of the run fired in it.
    pub detectors: u64,
    /// The top SHAP contributions at the peak model alert.
    pub top_shap: Option<String>,
    /// Whether it is over: a tick or alert of its symbol came more than a
    /// gap after its last alert (or it reached its longest span).
    pub closed: bool,
    /// The source partition of its first alert (streaming).
    pub partition: Option<i32>,
}

impl Case {
    /// `open` or `closed`.
    pub fn status(&self) -> &'static str {
        if self.closed {
            "closed"
        } else {
            "open"
        }
    }
}

/// How a case names the detectors that fired in it and the manipulation
/// kinds they tell: per detector bit `i`, its name and the kinds it
/// declares (a rule's `-- kinds:`; the model, a binary classifier, tells
/// none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaseLabels {
    names: Vec<String>,
    kinds: Vec<Vec<String>>,
}

impl CaseLabels {
    /// Labels of detectors `names[i]` telling `kinds[i]` (missing: none).
    pub fn new(names: Vec<String>, kinds: Vec<Vec<String>>) -> Self {
        Self { names, kinds }
    }

    fn set(bits: u64, i: usize) -> bool {
        i < 64 && bits & (1 << i) != 0
    }

    /// The names of the detectors whose bits are set in `bits`,
    /// comma-separated: how a case lists who fired.
    pub fn detectors(&self, bits: u64) -> String {
        self.names
            .iter()
            .enumerate()
            .filter(|(i, _)| Self::set(bits, *i))
            .map(|(_, n)| n.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The kinds the detectors of `bits` tell, sorted, comma-separated;
    /// `None` when none of them tells one.
    pub fn likely_kinds(&self, bits: u64) -> Option<String> {
        let mut kinds: Vec<&str> = self
            .kinds
            .iter()
            .enumerate()
            .filter(|(i, _)| Self::set(bits, *i))
            .flat_map(|(_, k)| k.iter().map(String::as_str))
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        (!kinds.is_empty()).then(|| kinds.join(","))
    }
}

/// The id of a case of `symbol` whose first alert is the tick `(ts_us,
/// seq)`: 16 hex digits of a SHA-256, the same in batch and streaming.
pub fn case_id(symbol: &str, ts_us: i64, seq: u32) -> String {
    let mut h = Sha256::new();
    h.update(symbol.as_bytes());
    h.update([0]);
    h.update(ts_us.to_le_bytes());
    h.update(seq.to_le_bytes());
    hex(&h.finalize())[..16].to_owned()
}

/// Builds cases from each symbol's alerts and ticks, fed in time order per
/// symbol (symbols may interleave).
#[derive(Debug)]
pub struct CaseTracker {
    rule: CaseRule,
    gap_us: i64,
    max_span_us: i64,
    open: HashMap<String, Case>,
    /// Per symbol whose open case was restored: its last alert then. A
    /// restart resumes at the first tick not yet emitted *in its partition*,
    /// so ticks of a symbol emitted before the crash may come again; their
    /// alerts are in the restored case already.
    restored_until: HashMap<String, i64>,
}

impl CaseTracker {
    /// No case yet; cases open by `rule`.
    pub fn new(rule: CaseRule) -> CaseTracker {
        let gap_us = rule.gap_us();
        CaseTracker {
            rule,
            gap_us,
            max_span_us: gap_us.saturating_mul(EPISODE_SPAN_GAPS),
            open: HashMap::new(),
            restored_until: HashMap::new(),
        }
    }

    /// The rule cases open by.
    pub fn rule(&self) -> &CaseRule {
        &self.rule
    }

    /// A tick of `symbol` at `ts_us` (alerting or not): returns the
    /// symbol's case it closes, if any.
    pub fn tick(&mut self, symbol: &str, ts_us: i64) -> Option<Case> {
        let over = self
            .open
            .get(symbol)
            .is_some_and(|c| ts_us.saturating_sub(c.end_us) > self.gap_us);
        if !over {
            return None;
        }
        let mut c = self.open.remove(symbol)?;
        c.closed = true;
        Some(c)
    }

    /// An alert of `symbol`: joins its case or starts one; returns the case
    /// it closes, if any.
    pub fn alert(&mut self, symbol: &str, a: AlertIn<'_>) -> Option<Case> {
        if let Some(&until) = self.restored_until.get(symbol) {
            // A (symbol, ts) group is emitted, and stored, whole: an alert
            // at or before the restored case's last one was stored with it.
            if a.ts_us <= until {
                return None;
            }
            self.restored_until.remove(symbol);
        }
        let joins = self.open.get(symbol).is_some_and(|c| {
            a.ts_us.saturating_sub(c.end_us) <= self.gap_us
                && a.ts_us.saturating_sub(c.start_us) <= self.max_span_us
        });
        let closed = if joins {
            None
        } else {
            self.open.remove(symbol).map(|mut c| {
                c.closed = true;
                c
            })
        };
        if !self.open.contains_key(symbol) {
            self.open.insert(
                symbol.to_owned(),
                Case {
                    case_id: case_id(symbol, a.ts_us, a.seq),
                    symbol: symbol.to_owned(),
                    start_us: a.ts_us,
                    end_us: a.ts_us,
                    alerts: 0,
                    stats: CaseStats {
                        first_us: a.ts_us,
                        last_us: a.ts_us,
                        ..CaseStats::default()
                    },
                    peak_us: None,
                    score: 0.0,
                    opened_us: None,
                    detectors: 0,
                    top_shap: None,
                    closed: false,
                    partition: a.partition,
                },
            );
        }
        let Some(case) = self.open.get_mut(symbol) else {
            return closed;
        };
        case.end_us = a.ts_us;
        case.alerts += 1;
        case.detectors |= a.detectors;
        case.stats.last_us = a.ts_us;
        if let Some(s) = a.model_score {
            case.stats.model_alerts += 1;
            case.stats.sum += f64::from(s);
            // The first of equal peaks is the peak: its evidence came first.
            if case.peak_us.is_none() || s > case.stats.peak {
                case.stats.peak = s;
                case.peak_us = Some(a.ts_us);
                case.top_shap = a.top_shap.map(str::to_owned);
            }
        }
        let score = self.rule.score(&case.stats);
        if score > case.score {
            case.score = score;
        }
        if case.opened_us.is_none() && case.score >= self.rule.threshold {
            case.opened_us = Some(a.ts_us);
        }
        closed
    }

    /// The cases still open, by symbol (for a snapshot; they stay open).
    pub fn open_cases(&self) -> impl Iterator<Item = &Case> {
        self.open.values()
    }

    /// Takes back a case still open (stored by an earlier run): its
    /// symbol's next alerts join it, and alerts at or before its last one
    /// (emitted again after a restart) are skipped.
    pub fn restore(&mut self, case: Case) {
        self.restored_until.insert(case.symbol.clone(), case.end_us);
        self.open.insert(case.symbol.clone(), case);
    }

    /// Drops the open cases of `partitions` (another member owns them now;
    /// it restores them from where they were stored).
    pub fn forget_partitions(&mut self, partitions: &[i32]) {
        self.open
            .retain(|_, c| !c.partition.is_some_and(|p| partitions.contains(&p)));
        let open = &self.open;
        self.restored_until.retain(|s, _| open.contains_key(s));
    }

    /// The open case of `symbol`.
    pub fn open_case(&self, symbol: &str) -> Option<&Case> {
        self.open.get(symbol)
    }

    /// Takes one stretch of scores: per detector of the run a `scores`
    /// batch (the same ticks in the same order, each symbol's in time
    /// order and after its earlier ones), `is_model[d]` telling the model's;
    /// `sources[i]` is row `i`'s source partition and offset, when known.
    /// Cases that end go to `closed`; symbols whose open case took an
    /// alert go to `touched` (in order; a symbol may repeat when its rows
    /// are not together).
    pub fn feed_scores(
        &mut self,
        is_model: &[bool],
        batches: &[RecordBatch],
        sources: Option<&[(i32, i64)]>,
        closed: &mut Vec<Case>,
        touched: &mut Vec<String>,
    ) -> Result<(), ArrowError> {
        let views = batches
            .iter()
            .map(ScoresView::new)
            .collect::<Result<Vec<_>, _>>()?;
        let Some(first) = views.first().copied() else {
            return Ok(());
        };
        if views.iter().any(|v| v.ts.len() != first.ts.len()) {
            return Err(ArrowError::SchemaError(
                "cases from scores: detectors scored different rows".into(),
            ));
        }
        let (ts, symbol, seq) = (first.ts, first.symbol, first.seq);
        let typed: Vec<(bool, &ScoresView<'_>)> = is_model.iter().copied().zip(&views).collect();
        for i in 0..first.ts.len() {
            let (sym, t) = (symbol.value(i), ts.value(i));
            closed.extend(self.tick(sym, t));
            let mut fired = 0u64;
            let mut model_score = None;
            let mut top_shap = None;
            for (k, (is_model, v)) in typed.iter().enumerate() {
                if !v.alert.value(i) {
                    continue;
                }
                fired |= 1u64 << k.min(63);
                if *is_model && model_score.is_none() {
                    // Model scores are f32 widened: narrowing is exact.
                    model_score = Some(v.score.value(i) as f32);
                    top_shap = v.top_shap.is_valid(i).then(|| v.top_shap.value(i));
                }
            }
            if fired == 0 {
                continue;
            }
            let a = AlertIn {
                ts_us: t,
                seq: seq.value(i),
                model_score,
                detectors: fired,
                top_shap,
                partition: sources.and_then(|s| s.get(i)).map(|&(p, _)| p),
            };
            closed.extend(self.alert(sym, a));
            if touched.last().map(String::as_str) != Some(sym) {
                touched.push(sym.to_owned());
            }
        }
        Ok(())
    }

    /// Ends the run: every case still open, in symbol order, not closed.
    pub fn finish(self) -> Vec<Case> {
        let mut out: Vec<Case> = self.open.into_values().collect();
        out.sort_by(|a, b| a.symbol.cmp(&b.symbol));
        out
    }
}

/// A case of scored rows, with the steps its score took: `(score, row)`
/// each time the case score rose, so the row it opens at is known for any
/// threshold.
struct Formed {
    case: Case,
    steps: Vec<(f64, usize)>,
}

impl Formed {
    /// The row at which the case opens at case threshold `t`.
    fn opened_at(&self, t: f64) -> Option<usize> {
        self.steps
            .iter()
            .find(|(s, _)| *s >= t)
            .map(|&(_, row)| row)
    }
}

/// Every case of `rows` (the model's scores, in `(symbol, ts)` order) at
/// the alert `threshold`, scored by `rule`'s weights.
fn cases_of_rows(rows: ScoredRows<'_>, threshold: f32, rule: &CaseRule) -> Vec<Formed> {
    let mut tracker = CaseTracker::new(rule.clone());
    let mut out: Vec<Formed> = Vec::new();
    let mut steps: Vec<(f64, usize)> = Vec::new();
    let n = rows.ts_us.len();
    let mut i = 0;
    while i < n {
        if rows.symbol.is_null(i) {
            i += 1;
            continue;
        }
        let sym = rows.symbol.value(i);
        let mut j = i;
        while j < n && rows.symbol.is_valid(j) && rows.symbol.value(j) == sym {
            let t = rows.ts_us[j];
            if let Some(case) = tracker.tick(sym, t) {
                out.push(Formed {
                    case,
                    steps: std::mem::take(&mut steps),
                });
            }
            let s = rows.scores[j];
            if s >= threshold {
                let a = AlertIn {
                    ts_us: t,
                    seq: 0,
                    model_score: Some(s),
                    detectors: 1,
                    top_shap: None,
                    partition: None,
                };
                if let Some(case) = tracker.alert(sym, a) {
                    out.push(Formed {
                        case,
                        steps: std::mem::take(&mut steps),
                    });
                }
                if let Some(c) = tracker.open.get(sym) {
                    if steps.last().is_none_or(|&(s, _)| c.score > s) {
                        steps.push((c.score, j));
                    }
                }
            }
            j += 1;
        }
        // Rows are grouped by symbol: its last case ends with its rows.
        if let Some(case) = tracker.open.remove(sym) {
            out.push(Formed {
                case,
                steps: std::mem::take(&mut steps),
            });
        }
        i = j;
    }
    out
}

/// Whether a case overlaps one of `events` (its symbol's), allowing the
/// confirmation delay after an event's end.
fn overlaps(c: &Case, events: &[&LabelEvent], delay_us: i64) -> bool {
    events
        .iter()
        .any(|e| e.start_us <= c.end_us && e.end_us.saturating_add(delay_us) >= c.start_us)
}

/// Event recall of one kind, by cases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct KindCases {
    /// Events of this kind with at least one scored tick.
    pub events: u64,
    /// Of those, overlapped by an opened case.
    pub detected: u64,
    /// detected / events.
    pub recall: f64,
    /// Median time from the event's start to its first case opening,
    /// seconds.
    pub median_time_to_case_s: Option<f64>,
}

/// Case-level metrics: what an analyst sees of a detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseMetrics {
    /// The case rule's threshold.
    pub threshold: f64,
    /// Alert episodes formed (opened or not).
    pub candidates: u64,
    /// Cases opened.
    pub cases: u64,
    /// Opened cases overlapping an event.
    pub true_cases: u64,
    /// true_cases / cases (1 when none opened: nothing was claimed).
    pub precision: f64,
    /// Events with at least one scored tick.
    pub events: u64,
    /// Of those, overlapped by an opened case.
    pub detected: u64,
    /// detected / events.
    pub recall: f64,
    /// Median time from an event's start to its first case opening
    /// (counting the delayed confirmation), seconds.
    pub median_time_to_case_s: Option<f64>,
    /// Per event kind.
    pub by_kind: BTreeMap<String, KindCases>,
}

/// Case metrics of `rows` scored by a detector alerting at `threshold`,
/// cases opening by `rule`.
pub fn case_metrics(
    rows: ScoredRows<'_>,
    events: &[LabelEvent],
    threshold: f32,
    rule: &CaseRule,
    delay_us: i64,
) -> CaseMetrics {
    let cases = cases_of_rows(rows, threshold, rule);
    metrics_of(rows, events, &cases, rule.threshold, delay_us)
}

/// [`case_metrics`] over cases already formed, at case threshold `t`.
fn metrics_of(
    rows: ScoredRows<'_>,
    events: &[LabelEvent],
    cases: &[Formed],
    t: f64,
    delay_us: i64,
) -> CaseMetrics {
    let mut by_symbol: HashMap<&str, Vec<&LabelEvent>> = HashMap::new();
    for e in events {
        by_symbol.entry(e.symbol.as_str()).or_default().push(e);
    }
    let mut ranges: HashMap<&str, (usize, usize)> = HashMap::new();
    for i in 0..rows.symbol.len() {
        if rows.symbol.is_valid(i) {
            ranges
                .entry(rows.symbol.value(i))
                .and_modify(|r| r.1 = i + 1)
                .or_insert((i, i + 1));
        }
    }
    let (mut n_cases, mut true_cases) = (0u64, 0u64);
    // Per symbol, its opened cases and the row each opened at.
    let mut opened: HashMap<&str, Vec<(&Case, usize)>> = HashMap::new();
    for f in cases {
        let Some(row) = f.opened_at(t) else { continue };
        let c = &f.case;
        n_cases += 1;
        let evs = by_symbol
            .get(c.symbol.as_str())
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if overlaps(c, evs, delay_us) {
            true_cases += 1;
        }
        opened.entry(c.symbol.as_str()).or_default().push((c, row));
    }
    let mut kinds: BTreeMap<String, (u64, u64, Vec<f64>)> = BTreeMap::new();
    let (mut n_events, mut detected, mut ttc) = (0u64, 0u64, Vec::new());
    for e in events {
        let Some(&(lo, hi)) = ranges.get(e.symbol.as_str()) else {
            continue;
        };
        let ts = &rows.ts_us[lo..hi];
        if ts.partition_point(|&t| t < e.start_us) >= ts.partition_point(|&t| t <= e.end_us) {
            // No scored tick inside the interval: not an event of these rows.
            continue;
        }
        n_events += 1;
        let k = kinds.entry(e.kind.clone()).or_default();
        k.0 += 1;
        let first = opened
            .get(e.symbol.as_str())
            .into_iter()
            .flatten()
            .filter(|(c, _)| overlaps(c, &[e], delay_us))
            .map(|&(_, row)| row)
            .min();
        if let Some(row) = first {
            detected += 1;
            k.1 += 1;
            // The alert is raised once the delayed confirmation's ticks came.
            let raised = row.saturating_add(rows.delay_ticks).min(hi - 1);
            let secs = (rows.ts_us[raised] - e.start_us).max(0) as f64 / 1e6;
            k.2.push(secs);
            ttc.push(secs);
        }
    }
    CaseMetrics {
        threshold: t,
        candidates: cases.len() as u64,
        cases: n_cases,
        true_cases,
        precision: if n_cases == 0 {
            1.0
        } else {
            true_cases as f64 / n_cases as f64
        },
        events: n_events,
        detected,
        recall: ratio(detected, n_events),
        median_time_to_case_s: median(ttc),
        by_kind: kinds
            .into_iter()
            .map(|(k, (n, d, t))| {
                (
                    k,
                    KindCases {
                        events: n,
                        detected: d,
                        recall: ratio(d, n),
                        median_time_to_case_s: median(t),
                    },
                )
            })
            .collect(),
    }
}

/// Thresholds tried when choosing the case threshold, at most.
const CASE_THRESHOLD_CANDIDATES: usize = 400;

/// Learns when a case opens from the validation rows: a logistic model of
/// "the case overlaps a labelled event" over the final [`CaseStats`] of
/// every alert episode at the alert `threshold`, then the lowest case
/// threshold whose case precision reaches `target` (the best case F1 when
/// `target` is `None` or not reached).
pub fn learn_case_rule(
    rows: ScoredRows<'_>,
    events: &[LabelEvent],
    threshold: f32,
    gap_us: i64,
    delay_us: i64,
    target: Option<f64>,
) -> CaseRule {
    let base = CaseRule::open_all(gap_us);
    let formed = cases_of_rows(rows, threshold, &base);
    let mut by_symbol: HashMap<&str, Vec<&LabelEvent>> = HashMap::new();
    for e in events {
        by_symbol.entry(e.symbol.as_str()).or_default().push(e);
    }
    let xs: Vec<[f64; 4]> = formed.iter().map(|f| f.case.stats.features()).collect();
    let ys: Vec<f64> = formed
        .iter()
        .map(|f| {
            let evs = by_symbol
                .get(f.case.symbol.as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            if overlaps(&f.case, evs, delay_us) {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let positives = ys.iter().filter(|&&y| y > 0.5).count() as u64;
    let mut rule = base;
    rule.learnt_from = (xs.len() as u64, positives);
    rule.target_precision = target;
    if positives == 0 || positives == xs.len() as u64 {
        // Nothing to tell true from false by: every episode opens.
        tracing::warn!(
            cases = xs.len(),
            true_cases = positives,
            "Validation alert episodes are all true or all false: every case opens."
        );
        return rule;
    }
    let (center, scale) = standardise(&xs);
    let z: Vec<[f64; 4]> = xs
        .iter()
        .map(|x| std::array::from_fn(|i| (x[i] - center[i]) / scale[i]))
        .collect();
    let (weights, bias) = logistic(&z, &ys);
    rule.center = center;
    rule.scale = scale;
    rule.weights = weights;
    rule.bias = bias;
    // The scores each case reaches as its alerts join, with the weights.
    let scored = cases_of_rows(rows, threshold, &rule);
    let mut candidates: Vec<f64> = scored.iter().map(|f| f.case.score).collect();
    candidates.sort_by(f64::total_cmp);
    candidates.dedup();
    let step = candidates.len().div_ceil(CASE_THRESHOLD_CANDIDATES).max(1);
    let mut tried: Vec<f64> = candidates.iter().copied().step_by(step).collect();
    if tried.last() != candidates.last() {
        tried.extend(candidates.last());
    }
    let at = |t: f64| metrics_of(rows, events, &scored, t, delay_us);
    // Lowest first: the first that reaches the target keeps the most recall.
    let reached = target.and_then(|p| {
        tried.iter().copied().find(|&t| {
            let m = at(t);
            m.cases > 0 && m.precision >= p
        })
    });
    rule.threshold = match reached {
        Some(t) => {
            rule.target_reached = true;
            t
        }
        None => {
            if let Some(p) = target {
                tracing::warn!(
                    target_case_precision = p,
                    "Target case precision not reached on validation; using the best case F1."
                );
            }
            let mut best = (f64::NEG_INFINITY, tried.first().copied().unwrap_or(0.5));
            for &t in &tried {
                let m = at(t);
                let f1 = if m.precision + m.recall > 0.0 {
                    2.0 * m.precision * m.recall / (m.precision + m.recall)
                } else {
                    0.0
                };
                if f1 > best.0 {
                    best = (f1, t);
                }
            }
            best.1
        }
    };
    rule
}

/// Per input, the mean and standard deviation (1 where it does not vary).
fn standardise(xs: &[[f64; 4]]) -> ([f64; 4], [f64; 4]) {
    let n = xs.len().max(1) as f64;
    let mut center = [0.0; 4];
    let mut scale = [1.0; 4];
    for i in 0..4 {
        center[i] = xs.iter().map(|x| x[i]).sum::<f64>() / n;
        let var = xs.iter().map(|x| (x[i] - center[i]).powi(2)).sum::<f64>() / n;
        if var.sqrt() > 1e-12 {
            scale[i] = var.sqrt();
        }
    }
    (center, scale)
}

/// L2-regularised logistic regression by Newton's method: weights and
/// intercept. Deterministic; a few hundred cases converge in a few steps.
fn logistic(xs: &[[f64; 4]], ys: &[f64]) -> ([f64; 4], f64) {
    const LAMBDA: f64 = 1e-2;
    // Parameters: 4 weights, then the intercept.
    let mut beta = [0.0f64; 5];
    for _ in 0..50 {
        let mut grad = [0.0f64; 5];
        let mut hess = [[0.0f64; 5]; 5];
        for (x, &y) in xs.iter().zip(ys) {
            let v = [x[0], x[1], x[2], x[3], 1.0];
            let z: f64 = (0..5).map(|i| beta[i] * v[i]).sum();
            let p = 1.0 / (1.0 + (-z).exp());
            let w = (p * (1.0 - p)).max(1e-12);
            for i in 0..5 {
                grad[i] += (p - y) * v[i];
                for j in 0..5 {
                    hess[i][j] += w * v[i] * v[j];
                }
            }
        }
        for i in 0..4 {
            grad[i] += LAMBDA * beta[i];
            hess[i][i] += LAMBDA;
        }
        let Some(step) = solve(hess, grad) else { break };
        let mut moved = 0.0f64;
        for i in 0..5 {
            beta[i] -= step[i];
            moved = moved.max(step[i].abs());
        }
        if moved < 1e-10 {
            break;
        }
    }
    ([beta[0], beta[1], beta[2], beta[3]], beta[4])
}

/// `a x = b` by Gaussian elimination with partial pivoting; `None` when
/// singular.
fn solve(mut a: [[f64; 5]; 5], mut b: [f64; 5]) -> Option<[f64; 5]> {
    for col in 0..5 {
        let pivot = (col..5).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-300 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let pivot_row = a[col];
        for row in col + 1..5 {
            let f = a[row][col] / pivot_row[col];
            for (v, p) in a[row].iter_mut().zip(&pivot_row).skip(col) {
                *v -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = [0.0; 5];
    for row in (0..5).rev() {
        let s: f64 = (row + 1..5).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;

    const S: i64 = 1_000_000;

    fn alert(ts: i64, score: f32) -> AlertIn<'static> {
        AlertIn {
            ts_us: ts * S,
            seq: 0,
            model_score: Some(score),
            detectors: 1,
            top_shap: None,
            partition: None,
        }
    }

    #[test]
    fn alerts_join_while_within_the_gap_and_the_span() {
        let mut t = CaseTracker::new(CaseRule::open_all(60 * S));
        assert!(t.alert("A", alert(0, 0.6)).is_none());
        // 60 s later: joins (at most a gap apart).
        assert!(t.alert("A", alert(60, 0.9)).is_none());
        // A tick 50 s after the last alert does not close it; 61 s does.
        assert!(t.tick("A", 110 * S).is_none());
        let c = t.tick("A", 121 * S).unwrap();
        assert_eq!(
            (c.alerts, c.start_us, c.end_us, c.closed),
            (2, 0, 60 * S, true)
        );
        assert_eq!((c.stats.peak, c.peak_us), (0.9, Some(60 * S)));
        assert_eq!(c.case_id, case_id("A", 0, 0));
        assert_ne!(c.case_id, case_id("A", 0, 1));
        assert_ne!(c.case_id, case_id("B", 0, 0));
        // Alerts every 50 s for 10 minutes: cut at six gaps (360 s).
        let mut closed = Vec::new();
        for k in 0..12 {
            closed.extend(t.alert("B", alert(1000 + 50 * k, 0.7)));
        }
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].start_us, closed[0].end_us), (1000 * S, 1350 * S));
        let left = t.finish();
        assert_eq!(left.len(), 1);
        assert_eq!((left[0].start_us, left[0].closed), (1400 * S, false));
        assert_eq!(left[0].status(), "open");
    }

    #[test]
    fn alerts_replayed_after_a_restart_are_not_counted_twice() {
        // The second tick of a timestamp (a peer).
        let peer = |ts, score| AlertIn {
            seq: 1,
            ..alert(ts, score)
        };
        let mut first = CaseTracker::new(CaseRule::open_all(60 * S));
        // Peers both join, in a run as in batch.
        for a in [
            alert(0, 0.8),
            alert(10, 0.8),
            alert(20, 0.8),
            alert(30, 0.8),
            peer(30, 0.8),
        ] {
            first.alert("A", a);
        }
        let stored = first.finish().remove(0);
        assert_eq!(stored.alerts, 5);
        // A restart takes the case back, and the ticks from 20 s on come
        // again (an earlier tick of another symbol held the partition's
        // position back): only the alerts after 30 s join.
        let mut again = CaseTracker::new(CaseRule::open_all(60 * S));
        again.restore(stored);
        for a in [alert(20, 0.8), alert(30, 0.8), peer(30, 0.8)] {
            assert!(again.alert("A", a).is_none());
        }
        for a in [alert(40, 0.9), peer(40, 0.9)] {
            again.alert("A", a);
        }
        let c = again.finish().remove(0);
        assert_eq!((c.alerts, c.stats.model_alerts, c.end_us), (7, 7, 40 * S));
    }

    #[test]
    fn a_case_opens_once_its_score_reaches_the_threshold_and_stays_open() {
        // A rule that grows with the number of model alerts only.
        let mut rule = CaseRule::open_all(300 * S);
        rule.weights = [4.0, 0.0, 0.0, 0.0];
        rule.bias = -4.0;
        rule.threshold = 0.35;
        let one = rule.score(&CaseStats {
            model_alerts: 1,
            ..Default::default()
        });
        assert!(one < 0.35, "{one}");
        let mut t = CaseTracker::new(rule);
        t.alert("A", alert(0, 0.9));
        assert_eq!(t.open_cases().next().unwrap().opened_us, None);
        t.alert("A", alert(10, 0.95));
        t.alert("A", alert(20, 0.8));
        let c = t.finish().remove(0);
        assert_eq!(c.opened_us, Some(10 * S));
        // The third alert raised the score further; it never falls.
        assert!(c.score > 0.8, "{}", c.score);
        // Rule alerts alone never open a learnt case.
        let mut open_at_all = CaseRule::open_all(300 * S);
        open_at_all.threshold = 0.1;
        let mut t = CaseTracker::new(open_at_all);
        t.alert(
            "B",
            AlertIn {
                model_score: None,
                detectors: 2,
                ..alert(0, 0.0)
            },
        );
        let b = t.finish().remove(0);
        assert_eq!(
            (b.opened_us, b.detectors, b.stats.model_alerts),
            (None, 2, 0)
        );
    }

    /// Symbol A: a true event with a long run of high alerts; symbol B..:
    /// single weak alerts far from any event (false cases).
    fn learning_rows() -> (StringArray, Vec<i64>, Vec<f32>, Vec<LabelEvent>) {
        let (mut sym, mut ts, mut sc, mut events) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (n, s) in ["A", "B", "C", "D", "E", "F"].iter().enumerate() {
            for k in 0..4000i64 {
                let t = k * 10;
                sym.push(*s);
                ts.push(t * S);
                // Every symbol: a lone weak alert every ~2000 s (false).
                let lone = k % 200 == 17;
                // True events: a burst of 12 strong alerts.
                let burst = (k % 1000) >= 500 && (k % 1000) < 512 && n % 2 == 0;
                sc.push(if burst {
                    0.95
                } else if lone {
                    0.55
                } else {
                    0.1
                });
            }
            if n % 2 == 0 {
                for e in 0..4 {
                    events.push(LabelEvent {
                        symbol: (*s).to_owned(),
                        start_us: (e * 10_000 + 5000) * S,
                        end_us: (e * 10_000 + 5110) * S,
                        kind: "spoofing".into(),
                    });
                }
            }
        }
        (StringArray::from(sym), ts, sc, events)
    }

    #[test]
    fn the_learnt_rule_opens_the_true_cases_and_not_the_lone_alerts() {
        let (symbol, ts, scores, events) = learning_rows();
        let rows = ScoredRows {
            symbol: &symbol,
            ts_us: &ts,
            scores: &scores,
            delay_ticks: 0,
        };
        let every = case_metrics(rows, &events, 0.5, &CaseRule::open_all(300 * S), 0);
        assert_eq!(every.cases, every.candidates);
        assert_eq!((every.events, every.detected), (12, 12));
        assert!(every.precision < 0.2, "{every:?}");
        let rule = learn_case_rule(rows, &events, 0.5, 300 * S, 0, Some(0.9));
        assert!(rule.target_reached, "{rule:?}");
        assert_eq!(rule.learnt_from, (every.candidates, every.true_cases));
        let m = case_metrics(rows, &events, 0.5, &rule, 0);
        assert_eq!((m.events, m.detected), (12, 12), "{m:?}");
        assert_eq!((m.cases, m.true_cases), (12, 12), "{m:?}");
        assert_eq!(m.by_kind["spoofing"].detected, 12);
        // It opens within the burst: a few alerts after the event's start.
        let ttc = m.median_time_to_case_s.unwrap();
        assert!((0.0..=110.0).contains(&ttc), "{ttc}");
        // The rule round-trips through the manifest's JSON.
        let back: CaseRule = serde_json::from_str(&serde_json::to_string(&rule).unwrap()).unwrap();
        assert_eq!(back, rule);
    }

    #[test]
    fn all_false_validation_opens_every_case() {
        let (symbol, ts, scores, _) = learning_rows();
        let rows = ScoredRows {
            symbol: &symbol,
            ts_us: &ts,
            scores: &scores,
            delay_ticks: 0,
        };
        let rule = learn_case_rule(rows, &[], 0.5, 300 * S, 0, Some(0.9));
        assert!(!rule.target_reached);
        let m = case_metrics(rows, &[], 0.5, &rule, 0);
        assert_eq!(m.cases, m.candidates);
        assert_eq!(m.recall, 0.0);
    }

    #[test]
    fn newton_solves_a_separable_logistic_fit() {
        let xs: Vec<[f64; 4]> = (0..100)
            .map(|i| [f64::from(i) / 50.0 - 1.0, 0.0, 0.0, 0.0])
            .collect();
        let ys: Vec<f64> = (0..100).map(|i| if i >= 50 { 1.0 } else { 0.0 }).collect();
        let (w, _b) = logistic(&xs, &ys);
        assert!(w[0] > 5.0, "{w:?}");
        assert_eq!(w[1], 0.0);
    }
}
