//! Binary-classification metrics over scores and 0/1 labels: ROC-AUC,
//! PR-AUC (average precision), precision@k, the confusion matrix at a
//! threshold, recall per label kind, and the threshold choices training
//! offers (best F1, lowest threshold reaching a target precision).
//!
//! A row is predicted positive when its score is `>=` the threshold. Ties
//! are handled as scikit-learn does: tied scores form one step of a curve,
//! and ROC-AUC averages the ranks of tied scores.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Counts at a threshold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    /// Positives scored at or above the threshold.
    pub tp: u64,
    /// Negatives scored at or above the threshold.
    pub fp: u64,
    /// Negatives scored below the threshold.
    pub tn: u64,
    /// Positives scored below the threshold.
    #[serde(rename = "fn")]
    pub fn_: u64,
}

impl Confusion {
    /// The counts of `scores` against `labels` at `threshold`.
    pub fn at(scores: &[f32], labels: &[f32], threshold: f32) -> Confusion {
        let mut c = Confusion::default();
        for (&s, &l) in scores.iter().zip(labels) {
            match (s >= threshold, l > 0.5) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, false) => c.tn += 1,
                (false, true) => c.fn_ += 1,
            }
        }
        c
    }

    /// tp / (tp + fp); 0 when nothing is predicted positive.
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    /// tp / (tp + fn); 0 when there are no positives.
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// Harmonic mean of precision and recall; 0 when both are 0.
    pub fn f1(&self) -> f64 {
        f1(self.tp, self.fp, self.fn_)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

fn f1(tp: u64, fp: u64, fn_: u64) -> f64 {
    ratio(2 * tp, 2 * tp + fp + fn_)
}

/// Recall of the positives of one label kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct KindRecall {
    /// Rows labelled with this kind.
    pub positives: u64,
    /// Of those, rows at or above the threshold.
    pub detected: u64,
    /// detected / positives.
    pub recall: f64,
}

/// Every metric of one split (or one evaluated range).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Rows scored.
    pub rows: u64,
    /// Rows labelled positive.
    pub positives: u64,
    /// Area under the ROC curve; `None` when only one class is present.
    pub roc_auc: Option<f64>,
    /// Average precision (area under the precision-recall step curve);
    /// `None` without positives.
    pub pr_auc: Option<f64>,
    /// Precision among the `positives` highest scores.
    pub precision_at_positives: f64,
    /// Precision among the 100 highest scores (or all rows when fewer).
    pub precision_at_100: f64,
    /// The threshold the counts below are taken at.
    pub threshold: f32,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub confusion: Confusion,
    /// Recall per label kind, by kind name.
    pub recall_by_kind: BTreeMap<String, KindRecall>,
    /// Event-level metrics (per label interval and alert episode) at the
    /// same threshold, when the rows' keys and labels were at hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<super::events::EventMetrics>,
    /// Case-level metrics (cases opened by the model's case rule; every
    /// alert episode for rules) at the same alert threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cases: Option<super::cases::CaseMetrics>,
}

impl Metrics {
    /// The metrics of `scores` against `labels` (1.0 positive) at
    /// `threshold`; `kinds[i]` names row i's label kind (positives only).
    pub fn compute(
        scores: &[f32],
        labels: &[f32],
        kinds: &[Option<&str>],
        threshold: f32,
    ) -> Metrics {
        let positives = labels.iter().filter(|&&l| l > 0.5).count() as u64;
        let confusion = Confusion::at(scores, labels, threshold);
        let mut recall_by_kind: BTreeMap<String, KindRecall> = BTreeMap::new();
        for ((&s, &l), kind) in scores.iter().zip(labels).zip(kinds) {
            if let (true, Some(kind)) = (l > 0.5, kind) {
                let k = match recall_by_kind.get_mut(*kind) {
                    Some(k) => k,
                    None => recall_by_kind.entry((*kind).to_owned()).or_default(),
                };
                k.positives += 1;
                k.detected += u64::from(s >= threshold);
            }
        }
        for k in recall_by_kind.values_mut() {
            k.recall = ratio(k.detected, k.positives);
        }
        Metrics {
            rows: scores.len() as u64,
            positives,
            roc_auc: roc_auc(scores, labels),
            pr_auc: average_precision(scores, labels),
            precision_at_positives: precision_at_k(scores, labels, positives as usize),
            precision_at_100: precision_at_k(scores, labels, 100),
            threshold,
            precision: confusion.precision(),
            recall: confusion.recall(),
            f1: confusion.f1(),
            confusion,
            recall_by_kind,
            events: None,
            cases: None,
        }
    }

    /// positives / rows: the PR-AUC of a random scorer.
    pub fn positive_rate(&self) -> f64 {
        ratio(self.positives, self.rows)
    }
}

/// Row indices by score, highest first; ties keep row order (so the
/// result is deterministic). NaN scores sort last.
fn order_desc(scores: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| {
        let (x, y) = (scores[a], scores[b]);
        y.partial_cmp(&x)
            .unwrap_or_else(|| x.is_nan().cmp(&y.is_nan()))
    });
    idx
}

/// Groups of tied scores in `order` (highest first): for each group, the
/// positives and negatives it holds and its score.
fn steps(scores: &[f32], labels: &[f32], order: &[usize]) -> Vec<(f32, u64, u64)> {
    let mut out: Vec<(f32, u64, u64)> = Vec::new();
    for &i in order {
        let pos = u64::from(labels[i] > 0.5);
        match out.last_mut() {
            Some(last) if last.0 == scores[i] => {
                last.1 += pos;
                last.2 += 1 - pos;
            }
            _ => out.push((scores[i], pos, 1 - pos)),
        }
    }
    out
}

/// Area under the ROC curve: the probability that a random positive scores
/// above a random negative, ties counting half. `None` unless both classes
/// are present.
pub fn roc_auc(scores: &[f32], labels: &[f32]) -> Option<f64> {
    let order = order_desc(scores);
    let (mut pos_seen, mut pairs) = (0u64, 0.0f64);
    let mut negatives = 0u64;
    for (_, p, n) in steps(scores, labels, &order) {
        // Each negative of this group is beaten by every positive above it
        // and ties with half of the positives beside it.
        pairs += n as f64 * (pos_seen as f64 + 0.5 * p as f64);
        pos_seen += p;
        negatives += n;
    }
    (pos_seen > 0 && negatives > 0).then(|| pairs / (pos_seen as f64 * negatives as f64))
}

/// Average precision: sum over thresholds of (recall gained) × precision,
/// as scikit-learn's `average_precision_score`. `None` without positives.
pub fn average_precision(scores: &[f32], labels: &[f32]) -> Option<f64> {
    let order = order_desc(scores);
    let total_pos = labels.iter().filter(|&&l| l > 0.5).count() as u64;
    if total_pos == 0 {
        return None;
    }
    let (mut tp, mut fp, mut ap) = (0u64, 0u64, 0.0f64);
    for (_, p, n) in steps(scores, labels, &order) {
        tp += p;
        fp += n;
        if p > 0 {
            ap += (p as f64 / total_pos as f64) * ratio(tp, tp + fp);
        }
    }
    Some(ap)
}

/// Precision among the `k` highest-scored rows (all rows when fewer; 0 when
/// `k` is 0 or there are no rows). Ties at the cut are broken by row order.
pub fn precision_at_k(scores: &[f32], labels: &[f32], k: usize) -> f64 {
    let k = k.min(scores.len());
    if k == 0 {
        return 0.0;
    }
    let order = order_desc(scores);
    let hits = order[..k].iter().filter(|&&i| labels[i] > 0.5).count();
    hits as f64 / k as f64
}

/// The threshold (one of the scores) with the best F1, and that F1; the
/// highest such threshold on ties. `None` without positives.
pub fn best_f1_threshold(scores: &[f32], labels: &[f32]) -> Option<(f32, f64)> {
    let order = order_desc(scores);
    let total_pos = labels.iter().filter(|&&l| l > 0.5).count() as u64;
    if total_pos == 0 {
        return None;
    }
    let (mut tp, mut fp) = (0u64, 0u64);
    let mut best: Option<(f32, f64)> = None;
    for (score, p, n) in steps(scores, labels, &order) {
        tp += p;
        fp += n;
        let f = f1(tp, fp, total_pos - tp);
        if best.is_none_or(|(_, b)| f > b) {
            best = Some((score, f));
        }
    }
    best
}

/// The lowest threshold (one of the scores) whose precision is at least
/// `target`, with that precision; `None` when no threshold reaches it.
pub fn threshold_for_precision(scores: &[f32], labels: &[f32], target: f64) -> Option<(f32, f64)> {
    let order = order_desc(scores);
    let (mut tp, mut fp) = (0u64, 0u64);
    let mut found = None;
    for (score, p, n) in steps(scores, labels, &order) {
        tp += p;
        fp += n;
        let precision = ratio(tp, tp + fp);
        if tp > 0 && precision >= target {
            found = Some((score, precision));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    // Scores 0.9 0.8 0.7 0.6 0.5 0.4 with labels 1 0 1 1 0 0.
    const S: [f32; 6] = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4];
    const L: [f32; 6] = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0];

    #[test]
    fn roc_auc_by_hand() {
        // Pairs (pos, neg) with pos above: 0.9 beats 3, 0.7 beats 2, 0.6
        // beats 2: 7 of 9.
        close(roc_auc(&S, &L).unwrap(), 7.0 / 9.0);
        // Perfect and reversed.
        close(roc_auc(&[0.9, 0.1], &[1.0, 0.0]).unwrap(), 1.0);
        close(roc_auc(&[0.1, 0.9], &[1.0, 0.0]).unwrap(), 0.0);
        // All tied: a half.
        close(roc_auc(&[0.5; 4], &[1.0, 0.0, 1.0, 0.0]).unwrap(), 0.5);
        // One tie between a positive and a negative: (1 + 0.5) / 2.
        close(roc_auc(&[0.9, 0.5, 0.5], &[1.0, 1.0, 0.0]).unwrap(), 0.75);
        assert_eq!(roc_auc(&[0.3, 0.4], &[1.0, 1.0]), None);
        assert_eq!(roc_auc(&[], &[]), None);
    }

    #[test]
    fn average_precision_by_hand() {
        // Positives found at ranks 1, 3, 4: (1/1 + 2/3 + 3/4) / 3.
        close(
            average_precision(&S, &L).unwrap(),
            (1.0 + 2.0 / 3.0 + 0.75) / 3.0,
        );
        // A tie of one positive and one negative at the top: one step with
        // precision 1/2, then the other positive at 2/3.
        close(
            average_precision(&[0.9, 0.9, 0.5], &[1.0, 0.0, 1.0]).unwrap(),
            0.5 * 0.5 + 0.5 * (2.0 / 3.0),
        );
        assert_eq!(average_precision(&[0.1], &[0.0]), None);
    }

    #[test]
    fn precision_at_k_by_hand() {
        close(precision_at_k(&S, &L, 3), 2.0 / 3.0);
        close(precision_at_k(&S, &L, 1), 1.0);
        close(precision_at_k(&S, &L, 100), 0.5);
        close(precision_at_k(&S, &L, 0), 0.0);
    }

    #[test]
    fn confusion_and_f1_by_hand() {
        let c = Confusion::at(&S, &L, 0.6);
        assert_eq!(
            c,
            Confusion {
                tp: 3,
                fp: 1,
                tn: 2,
                fn_: 0
            }
        );
        close(c.precision(), 0.75);
        close(c.recall(), 1.0);
        close(c.f1(), 6.0 / 7.0);
        let none = Confusion::at(&S, &L, 1.0);
        assert_eq!(
            (none.precision(), none.recall(), none.f1()),
            (0.0, 0.0, 0.0)
        );
    }

    #[test]
    fn thresholds_by_hand() {
        // F1 at 0.9: 2/4; 0.8: 2/5; 0.7: 4/6; 0.6: 6/7; 0.5: 6/8; 0.4: 6/9.
        let (t, f) = best_f1_threshold(&S, &L).unwrap();
        assert_eq!(t, 0.6);
        close(f, 6.0 / 7.0);
        // Precision at 0.9: 1; 0.8: 1/2; 0.7: 2/3; 0.6: 3/4; 0.5: 3/5.
        assert_eq!(threshold_for_precision(&S, &L, 0.7), Some((0.6, 0.75)));
        assert_eq!(threshold_for_precision(&S, &L, 1.0), Some((0.9, 1.0)));
        assert_eq!(threshold_for_precision(&S, &L, 0.5), Some((0.4, 0.5)));
        assert_eq!(threshold_for_precision(&[0.9], &[0.0], 0.1), None);
        assert_eq!(best_f1_threshold(&[0.2], &[0.0]), None);
    }

    #[test]
    fn metrics_per_kind() {
        let kinds = [
            Some("spoofing"),
            None,
            Some("wash"),
            Some("spoofing"),
            None,
            None,
        ];
        let m = Metrics::compute(&S, &L, &kinds, 0.65);
        assert_eq!((m.rows, m.positives), (6, 3));
        assert_eq!(m.confusion.tp, 2);
        close(m.precision_at_positives, 2.0 / 3.0);
        close(m.positive_rate(), 0.5);
        let spoof = m.recall_by_kind["spoofing"];
        assert_eq!((spoof.positives, spoof.detected), (2, 1));
        close(spoof.recall, 0.5);
        close(m.recall_by_kind["wash"].recall, 1.0);
        // Serializes (no NaN anywhere) and reads back.
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Metrics>(&json).unwrap(), m);
    }
}
