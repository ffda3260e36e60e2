//! `report.html`: a training run's metrics and plots on one self-contained
//! page (inline SVG, no scripts, no network), well-formed XML so that tools
//! can parse it.
//!
//! Plots, each an `<svg>` whose `data-plot` names it: `pr-curve`,
//! `roc-curve`, `score-distribution`, `importance-gain` and
//! `importance-shap`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::curves::Curves;
use super::manifest::Manifest;
use super::metrics::Metrics;

/// The report's file name in an artifact folder.
pub const REPORT_FILE: &str = "report.html";

/// Names of the plots, as their `data-plot` attributes.
pub const PLOTS: [&str; 5] = [
    "pr-curve",
    "roc-curve",
    "score-distribution",
    "importance-gain",
    "importance-shap",
];

/// What the report shows.
#[derive(Debug, Clone)]
pub struct ReportInput<'a> {
    /// The trained model's manifest (splits, parameters, metrics).
    pub manifest: &'a Manifest,
    /// The model version.
    pub version: &'a str,
    /// Curves per scored split, in display order (validation, test).
    pub curves: Vec<(String, Curves)>,
    /// Average gain per feature, largest first.
    pub gain: Vec<(String, f64)>,
    /// Mean |SHAP| per feature on the test split, largest first.
    pub shap: Vec<(String, f64)>,
    /// Rules evaluated on the test split, for comparison.
    pub baselines: Vec<(String, Metrics)>,
}

/// Writes `dir/report.html`.
pub fn write(dir: &Path, input: &ReportInput<'_>) -> std::io::Result<PathBuf> {
    let path = dir.join(REPORT_FILE);
    std::fs::write(&path, render(input))?;
    Ok(path)
}

const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
const W: f64 = 420.0;
const H: f64 = 320.0;
const PAD: f64 = 48.0;

/// The page.
pub fn render(input: &ReportInput<'_>) -> String {
    let m = input.manifest;
    let mut out = String::new();
    out.push_str(
        "<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\">\n<head>\n\
         <meta charset=\"utf-8\"/>\n",
    );
    let _ = writeln!(
        out,
        "<title>StockAnomaly model {}</title>",
        esc(input.version)
    );
    out.push_str(
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}\
         table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;\
         text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}\
         figure{display:inline-block;margin:0 1em 1em 0}svg text{font-size:11px}</style>\n\
         </head>\n<body>\n",
    );
    let _ = writeln!(
        out,
        "<h1>Model {}</h1>\n<p>Feature set <code>{}</code>, {} features; XGBoost {}; best \
         iteration {} of {} rounds trained; threshold {} ({}); trained {}.</p>",
        esc(input.version),
        esc(&m.feature_set),
        m.features.len(),
        esc(&m.xgboost_version),
        m.best_iteration,
        m.rounds_trained,
        m.threshold,
        esc(&format!("{:?}", m.threshold_rule)),
        esc(&m.created),
    );
    out.push_str("<h2>Splits</h2>\n<table><tr><th>split</th><th>dates</th><th>rows</th><th>embargoed</th></tr>\n");
    for s in &m.splits {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{} .. {}</td><td>{}</td><td>{}</td></tr>",
            esc(&s.name),
            s.from,
            s.to,
            s.rows,
            s.embargoed_rows
        );
    }
    out.push_str("</table>\n");
    out.push_str(&metrics_table(m, &input.baselines));

    out.push_str("<h2>Curves</h2>\n");
    let series = |f: fn(&Curves) -> &Vec<(f64, f64)>| -> Vec<(String, Vec<(f64, f64)>)> {
        input
            .curves
            .iter()
            .map(|(name, c)| (name.clone(), f(c).clone()))
            .collect()
    };
    out.push_str(&line_plot(
        "pr-curve",
        "Precision-recall",
        "recall",
        "precision",
        &series(|c| &c.pr),
        false,
    ));
    out.push_str(&line_plot(
        "roc-curve",
        "ROC",
        "false positive rate",
        "true positive rate",
        &series(|c| &c.roc),
        true,
    ));
    if let Some((name, c)) = input.curves.last() {
        out.push_str(&histogram(name, c));
    }
    out.push_str("<h2>Feature importance</h2>\n");
    out.push_str(&bar_chart(
        "importance-gain",
        "Average gain per split",
        &input.gain,
    ));
    out.push_str(&bar_chart(
        "importance-shap",
        "Mean |SHAP| on the test split",
        &input.shap,
    ));
    out.push_str("</body>\n</html>\n");
    out
}

fn metrics_table(m: &Manifest, baselines: &[(String, Metrics)]) -> String {
    let mut out = String::from(
        "<h2>Metrics</h2>\n<table><tr><th>split</th><th>rows</th><th>positives</th>\
         <th>ROC-AUC</th><th>PR-AUC</th><th>P@100</th><th>precision</th><th>recall</th>\
         <th>F1</th><th>TP</th><th>FP</th><th>FN</th></tr>\n",
    );
    let order = ["train", "valid", "test"];
    let rows = order
        .iter()
        .filter_map(|s| m.metrics.get(*s).map(|x| ((*s).to_owned(), x)))
        .chain(
            baselines
                .iter()
                .map(|(n, x)| (format!("test, rule {n}"), x)),
        );
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.4}"));
    for (name, x) in rows {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td>\
             <td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&name),
            x.rows,
            x.positives,
            opt(x.roc_auc),
            opt(x.pr_auc),
            x.precision_at_100,
            x.precision,
            x.recall,
            x.f1,
            x.confusion.tp,
            x.confusion.fp,
            x.confusion.fn_
        );
    }
    out.push_str("</table>\n");
    if let Some(test) = m.metrics.get("test") {
        out.push_str("<h3>Recall per label kind (test)</h3>\n<table><tr><th>kind</th><th>positives</th><th>detected</th><th>recall</th></tr>\n");
        for (kind, k) in &test.recall_by_kind {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td></tr>",
                esc(kind),
                k.positives,
                k.detected,
                k.recall
            );
        }
        out.push_str("</table>\n");
        if let Some(e) = &test.events {
            let secs = |s: Option<f64>| s.map_or_else(|| "-".to_owned(), |s| format!("{s:.0}"));
            let _ = writeln!(
                out,
                "<h3>Events (test): label intervals and alert episodes</h3>\n<p>{} of {} \
                 events detected (recall {:.3}); {} alert episodes (alerts of a symbol less \
                 than {:.0} s apart), {} overlapping an event (precision {:.3}); median time \
                 to detect {} s.</p>",
                e.detected,
                e.events,
                e.recall,
                e.episodes,
                e.episode_gap_s,
                e.true_episodes,
                e.precision,
                secs(e.median_time_to_detect_s)
            );
            out.push_str("<table><tr><th>kind</th><th>events</th><th>detected</th><th>recall</th><th>median time to detect (s)</th></tr>\n");
            for (kind, k) in &e.by_kind {
                let _ = writeln!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{}</td></tr>",
                    esc(kind),
                    k.events,
                    k.detected,
                    k.recall,
                    secs(k.median_time_to_detect_s)
                );
            }
            out.push_str("</table>\n");
        }
    }
    out
}

/// XML-escaped text.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn svg_open(out: &mut String, id: &str, title: &str, width: f64, height: f64) {
    let _ = writeln!(
        out,
        "<figure><svg xmlns=\"http://www.w3.org/2000/svg\" data-plot=\"{id}\" width=\"{width}\" \
         height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\">\n<title>{}</title>\n\
         <text x=\"{}\" y=\"16\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>",
        esc(title),
        width / 2.0,
        esc(title)
    );
}

/// Axes of a unit square plot with ticks at every 0.2.
fn unit_axes(out: &mut String, x_label: &str, y_label: &str) {
    let (x0, y0, x1, y1) = (PAD, H - PAD, W - 16.0, 28.0);
    let _ = writeln!(
        out,
        "<rect x=\"{x0}\" y=\"{y1}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#888\"/>",
        x1 - x0,
        y0 - y1
    );
    for i in 0..=5 {
        let v = f64::from(i) / 5.0;
        let (x, y) = (sx(v), sy(v));
        let _ = writeln!(
            out,
            "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{v:.1}</text>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.1}</text>",
            y0 + 14.0,
            x0 - 4.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
         <text x=\"12\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 12 {:.1})\">{}</text>",
        (x0 + x1) / 2.0,
        H - 8.0,
        esc(x_label),
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0,
        esc(y_label)
    );
}

fn sx(v: f64) -> f64 {
    PAD + v.clamp(0.0, 1.0) * (W - 16.0 - PAD)
}

fn sy(v: f64) -> f64 {
    (H - PAD) - v.clamp(0.0, 1.0) * (H - PAD - 28.0)
}

fn legend(out: &mut String, names: &[&str], x: f64) {
    for (i, name) in names.iter().enumerate() {
        let y = 40.0 + 14.0 * i as f64;
        let _ = writeln!(
            out,
            "<rect x=\"{x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            y - 9.0,
            COLORS[i % COLORS.len()],
            x + 14.0,
            y,
            esc(name)
        );
    }
}

fn line_plot(
    id: &str,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    diagonal: bool,
) -> String {
    let mut out = String::new();
    svg_open(&mut out, id, title, W, H);
    unit_axes(&mut out, x_label, y_label);
    if diagonal {
        let _ = writeln!(
            out,
            "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#bbb\" \
             stroke-dasharray=\"4 3\"/>",
            sx(0.0),
            sy(0.0),
            sx(1.0),
            sy(1.0)
        );
    }
    for (i, (_, points)) in series.iter().enumerate() {
        let mut d = String::new();
        for (j, (x, y)) in points.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1}",
                if j == 0 { "M" } else { " L" },
                sx(*x),
                sy(*y)
            );
        }
        if !d.is_empty() {
            let _ = writeln!(
                out,
                "<path d=\"{d}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\"/>",
                COLORS[i % COLORS.len()]
            );
        }
    }
    let names: Vec<&str> = series.iter().map(|(n, _)| n.as_str()).collect();
    legend(&mut out, &names, W - 110.0);
    out.push_str("</svg></figure>\n");
    out
}

/// Score distributions of one split, each class as a share of its rows.
fn histogram(split: &str, c: &Curves) -> String {
    let mut out = String::new();
    let title = format!("Score distribution by class ({split})");
    svg_open(&mut out, "score-distribution", &title, W, H);
    let (lo, width) = c.bins;
    let hi = lo + width * c.hist_pos.len() as f64;
    let x_label = format!("score ({lo:.2} to {hi:.2})");
    unit_axes(&mut out, &x_label, "share of the class's rows");
    let bins = c.hist_pos.len().max(1) as f64;
    for (i, hist) in [&c.hist_neg, &c.hist_pos].into_iter().enumerate() {
        let total: u64 = hist.iter().sum();
        let mut d = String::new();
        for (b, &n) in hist.iter().enumerate() {
            let share = if total == 0 {
                0.0
            } else {
                n as f64 / total as f64
            };
            let (xa, xb) = (b as f64 / bins, (b + 1) as f64 / bins);
            let _ = write!(
                d,
                "{}{:.1},{:.1} L{:.1},{:.1} L{:.1},{:.1}",
                if b == 0 { "M" } else { " L" },
                sx(xa),
                sy(0.0),
                sx(xa),
                sy(share),
                sx(xb),
                sy(share)
            );
        }
        let _ = write!(d, " L{:.1},{:.1} Z", sx(1.0), sy(0.0));
        let _ = writeln!(
            out,
            "<path d=\"{d}\" fill=\"{}\" fill-opacity=\"0.35\" stroke=\"{}\"/>",
            COLORS[i], COLORS[i]
        );
    }
    legend(&mut out, &["negatives", "positives"], W - 110.0);
    out.push_str("</svg></figure>\n");
    out
}

/// Horizontal bars, largest first.
fn bar_chart(id: &str, title: &str, values: &[(String, f64)]) -> String {
    let mut out = String::new();
    let row = 16.0;
    let label_w = 150.0;
    let width = 520.0;
    let height = 40.0 + row * values.len().max(1) as f64;
    svg_open(&mut out, id, title, width, height);
    let max = values.iter().map(|(_, v)| *v).fold(0.0f64, f64::max);
    if values.is_empty() {
        let _ = writeln!(
            out,
            "<text x=\"10\" y=\"40\">(no splits in the model)</text>"
        );
    }
    for (i, (name, v)) in values.iter().enumerate() {
        let y = 28.0 + row * i as f64;
        let len = if max > 0.0 {
            v / max * (width - label_w - 70.0)
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <rect x=\"{label_w}\" y=\"{y:.1}\" width=\"{len:.1}\" height=\"{:.1}\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            label_w - 4.0,
            y + row * 0.7,
            esc(name),
            row - 3.0,
            COLORS[0],
            label_w + len + 4.0,
            y + row * 0.7,
            fmt_value(*v)
        );
    }
    out.push_str("</svg></figure>\n");
    out
}

fn fmt_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::manifest::ThresholdRule;
    use std::collections::BTreeMap;

    fn manifest() -> Manifest {
        Manifest {
            features: vec!["a<b".into(), "c".into()],
            feature_set: "abc".into(),
            lake: "parquet".into(),
            splits: Vec::new(),
            embargo_secs: 0.0,
            delay_ticks: 0,
            balance_events: false,
            case_rule: None,
            params: BTreeMap::new(),
            max_rounds: 10,
            patience: 3,
            rounds_trained: 5,
            best_iteration: 2,
            best_valid_aucpr: 0.5,
            threshold: 0.5,
            threshold_rule: ThresholdRule::BestF1,
            metrics: BTreeMap::new(),
            created: "now".into(),
            xgboost_version: "3.4.1".into(),
            version: "xgb-1".into(),
            importance: Vec::new(),
            baselines: BTreeMap::new(),
        }
    }

    #[test]
    fn every_plot_is_drawn_and_names_are_escaped() {
        let m = manifest();
        let curves = Curves::compute(&[0.9, 0.2, 0.7, 0.1], &[1.0, 0.0, 1.0, 0.0]);
        let html = render(&ReportInput {
            manifest: &m,
            version: "xgb-1",
            curves: vec![("valid".into(), curves.clone()), ("test".into(), curves)],
            gain: vec![("a<b".into(), 3.0), ("c".into(), 1.0)],
            shap: vec![("c".into(), 0.2)],
            baselines: Vec::new(),
        });
        for plot in PLOTS {
            assert!(html.contains(&format!("data-plot=\"{plot}\"")), "{plot}");
        }
        assert!(html.contains("a&lt;b") && !html.contains("a<b"));
        assert_eq!(html.matches("<svg").count(), html.matches("</svg>").count());
    }
}
