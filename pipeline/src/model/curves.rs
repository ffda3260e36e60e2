//! Points of the curves the report draws: precision-recall, ROC and score
//! histograms per class.

use serde::{Deserialize, Serialize};

/// Most points kept per curve: enough for a smooth line, small enough for
/// an HTML page over millions of rows.
pub const MAX_POINTS: usize = 400;

/// Histogram bins of the score distributions.
pub const BINS: usize = 40;

/// The curves of one scored split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Curves {
    /// `(recall, precision)`, recall rising.
    pub pr: Vec<(f64, f64)>,
    /// `(false positive rate, true positive rate)`, both rising.
    pub roc: Vec<(f64, f64)>,
    /// Lower edge of the first bin and the bin width.
    pub bins: (f64, f64),
    /// Rows per bin among positives.
    pub hist_pos: Vec<u64>,
    /// Rows per bin among negatives.
    pub hist_neg: Vec<u64>,
}

impl Curves {
    /// The curves of `scores` against `labels` (1.0 positive). NaN scores
    /// rank lowest and are left out of the histograms.
    pub fn compute(scores: &[f32], labels: &[f32]) -> Curves {
        let mut idx: Vec<usize> = (0..scores.len()).collect();
        idx.sort_by(|&a, &b| {
            let (x, y) = (scores[a], scores[b]);
            y.partial_cmp(&x)
                .unwrap_or_else(|| x.is_nan().cmp(&y.is_nan()))
        });
        let total_pos = labels.iter().filter(|&&l| l > 0.5).count() as f64;
        let total_neg = scores.len() as f64 - total_pos;
        let (mut tp, mut fp) = (0.0f64, 0.0f64);
        let mut pr = Vec::new();
        let mut roc = vec![(0.0, 0.0)];
        let mut i = 0;
        while i < idx.len() {
            // One point per group of tied scores.
            let s = scores[idx[i]];
            while i < idx.len() && (scores[idx[i]] == s || (s.is_nan() && scores[idx[i]].is_nan()))
            {
                if labels[idx[i]] > 0.5 {
                    tp += 1.0;
                } else {
                    fp += 1.0;
                }
                i += 1;
            }
            if total_pos > 0.0 {
                pr.push((tp / total_pos, tp / (tp + fp)));
            }
            if total_pos > 0.0 && total_neg > 0.0 {
                roc.push((fp / total_neg, tp / total_pos));
            }
        }
        let finite = || scores.iter().copied().filter(|s| s.is_finite());
        let lo = finite().fold(f32::INFINITY, f32::min);
        let hi = finite().fold(f32::NEG_INFINITY, f32::max);
        let (lo, hi) = if lo.is_finite() {
            (f64::from(lo), f64::from(hi))
        } else {
            (0.0, 1.0)
        };
        // Probabilities get the unit interval, other scores their range.
        let (lo, hi) = if lo >= 0.0 && hi <= 1.0 {
            (0.0, 1.0)
        } else {
            (lo, if hi > lo { hi } else { lo + 1.0 })
        };
        let width = (hi - lo) / BINS as f64;
        let mut hist_pos = vec![0u64; BINS];
        let mut hist_neg = vec![0u64; BINS];
        for (&s, &l) in scores.iter().zip(labels) {
            if !s.is_finite() {
                continue;
            }
            let b = (((f64::from(s) - lo) / width) as usize).min(BINS - 1);
            if l > 0.5 {
                hist_pos[b] += 1;
            } else {
                hist_neg[b] += 1;
            }
        }
        Curves {
            pr: thin(pr),
            roc: thin(roc),
            bins: (lo, width),
            hist_pos,
            hist_neg,
        }
    }
}

/// At most [`MAX_POINTS`] points, evenly spaced along the curve, keeping
/// the first and last.
fn thin(points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    if points.len() <= MAX_POINTS {
        return points;
    }
    let last = points.len() - 1;
    (0..MAX_POINTS)
        .map(|i| points[i * last / (MAX_POINTS - 1)])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_perfect_scorer_hugs_the_corners() {
        let scores = [0.96, 0.8, 0.2, 0.1];
        let labels = [1.0, 1.0, 0.0, 0.0];
        let c = Curves::compute(&scores, &labels);
        assert_eq!(c.pr[0], (0.5, 1.0));
        assert_eq!(c.pr[1], (1.0, 1.0));
        assert_eq!(
            c.roc,
            vec![(0.0, 0.0), (0.0, 0.5), (0.0, 1.0), (0.5, 1.0), (1.0, 1.0)]
        );
        assert_eq!(c.bins, (0.0, 1.0 / BINS as f64));
        assert_eq!(c.hist_pos.iter().sum::<u64>(), 2);
        assert_eq!(c.hist_neg[BINS * 2 / 10], 1, "0.2 falls in bin 8");
        assert_eq!(c.hist_pos[BINS - 2], 1, "0.96 falls in bin 38");
    }

    #[test]
    fn ties_make_one_point_and_long_curves_thin() {
        let c = Curves::compute(&[0.5, 0.5, 0.5], &[1.0, 0.0, 0.0]);
        assert_eq!(c.pr, vec![(1.0, 1.0 / 3.0)]);
        let scores: Vec<f32> = (0..10_000).map(|i| i as f32).collect();
        let labels: Vec<f32> = (0..10_000).map(|i| (i % 7 == 0) as u8 as f32).collect();
        let c = Curves::compute(&scores, &labels);
        assert_eq!(c.pr.len(), MAX_POINTS);
        assert_eq!(c.roc.last(), Some(&(1.0, 1.0)));
        assert_eq!(c.bins.0, 0.0, "scores beyond 1 use their range");
        assert!((c.bins.1 - 9999.0 / BINS as f64).abs() < 1e-9);
    }
}
