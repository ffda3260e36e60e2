//! Inline SVG charts for the alert page: price and volume around the alert,
//! and the SHAP contributions as bars. Drawn on the server, so the page
//! needs no script and no network.

use maud::{html, Markup};

use super::evidence::Evidence;

const WIDTH: f64 = 900.0;
const PRICE_TOP: f64 = 10.0;
const PRICE_HEIGHT: f64 = 220.0;
const VOLUME_TOP: f64 = 245.0;
const VOLUME_HEIGHT: f64 = 70.0;
const HEIGHT: f64 = 340.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 10.0;

/// Most markers drawn as lines across the chart; more (a long case's
/// alerts) are short ticks in the band between price and volume, which
/// keep the price line readable.
const MAX_MARKER_LINES: usize = 40;

/// Most x positions drawn: ticks are binned to at most this many columns
/// (last price and summed volume per column).
const MAX_COLUMNS: usize = 600;

fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

/// A time marked on the evidence chart by a vertical line: an alert's tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    /// Event time, µs UTC.
    pub ts_us: i64,
    /// `model` or `rule`: the line's class beside `alert-marker`.
    pub detector: String,
    /// Text above the line, if any.
    pub label: Option<&'static str>,
}

/// Price (line) and volume (bars) over the evidence window, with each
/// marker's time marked by a vertical line (one alert, or a case's alerts).
pub fn evidence_chart(ev: &Evidence, markers: &[Marker]) -> Markup {
    let plot_w = WIDTH - LEFT - RIGHT;
    let span = (ev.end_us - ev.start_us).max(1) as f64;
    let x_of = |us: i64| LEFT + (us - ev.start_us) as f64 / span * plot_w;
    let columns = bins(ev);
    let (lo, hi) = columns
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), c| {
            (lo.min(c.price), hi.max(c.price))
        });
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo, hi)
    } else if lo.is_finite() {
        (lo - 0.5, lo + 0.5)
    } else {
        (0.0, 1.0)
    };
    let y_price = |p: f64| PRICE_TOP + (hi - p) / (hi - lo) * PRICE_HEIGHT;
    let vmax = columns.iter().map(|c| c.volume).fold(0.0_f64, f64::max);
    let bar_w = (plot_w / columns.len().max(1) as f64).clamp(1.0, 8.0);
    let points: Vec<String> = columns
        .iter()
        .map(|c| format!("{},{}", fmt(x_of(c.ts_us)), fmt(y_price(c.price))))
        .collect();
    let label = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .map(|t| t.format("%H:%M:%S").to_string())
            .unwrap_or_default()
    };
    html! {
        svg #evidence-chart .chart xmlns="http://www.w3.org/2000/svg"
            viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img"
            aria-label=(format!("{} price and volume around the alert", ev.symbol))
            data-ticks=(ev.ts_us.len()) {
            rect x=(LEFT) y=(PRICE_TOP) width=(plot_w) height=(PRICE_HEIGHT) class="frame" {}
            text x=(LEFT - 5.0) y=(PRICE_TOP + 10.0) text-anchor="end" class="axis" { (format!("{hi:.2}")) }
            text x=(LEFT - 5.0) y=(PRICE_TOP + PRICE_HEIGHT) text-anchor="end" class="axis" { (format!("{lo:.2}")) }
            text x=(LEFT) y=(HEIGHT - 5.0) class="axis" { (label(ev.start_us)) }
            text x=(WIDTH - RIGHT) y=(HEIGHT - 5.0) text-anchor="end" class="axis" { (label(ev.end_us)) " UTC" }
            @for c in &columns {
                @let h = if vmax > 0.0 { c.volume / vmax * VOLUME_HEIGHT } else { 0.0 };
                rect .volume x=(fmt(x_of(c.ts_us) - bar_w / 2.0)) y=(fmt(VOLUME_TOP + VOLUME_HEIGHT - h))
                    width=(fmt(bar_w)) height=(fmt(h)) {}
            }
            polyline .price points=(points.join(" ")) fill="none" {}
            @let (y1, y2) = if markers.len() > MAX_MARKER_LINES {
                (PRICE_TOP + PRICE_HEIGHT + 2.0, VOLUME_TOP - 2.0)
            } else {
                (PRICE_TOP, VOLUME_TOP + VOLUME_HEIGHT)
            };
            @for m in markers {
                @let x = fmt(x_of(m.ts_us));
                line class=(format!("alert-marker {}", m.detector)) x1=(x) x2=(x) y1=(y1)
                    y2=(y2) data-ts=(m.ts_us) {}
                @if let Some(label) = m.label {
                    text x=(x) y=(PRICE_TOP - 1.0) text-anchor="middle" class="marker-label" { (label) }
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Column {
    ts_us: i64,
    price: f64,
    volume: f64,
}

/// The ticks binned to at most [`MAX_COLUMNS`] columns over the window.
fn bins(ev: &Evidence) -> Vec<Column> {
    let n = ev.ts_us.len();
    if n <= MAX_COLUMNS {
        return (0..n)
            .map(|i| Column {
                ts_us: ev.ts_us[i],
                price: ev.price[i],
                volume: ev.volume[i],
            })
            .collect();
    }
    let span = (ev.end_us - ev.start_us).max(1) as f64;
    let mut out: Vec<Column> = Vec::with_capacity(MAX_COLUMNS);
    let mut last_bin = usize::MAX;
    for i in 0..n {
        let bin = (((ev.ts_us[i] - ev.start_us) as f64 / span) * MAX_COLUMNS as f64) as usize;
        match out.last_mut() {
            Some(c) if bin == last_bin => {
                c.ts_us = ev.ts_us[i];
                c.price = ev.price[i];
                c.volume += ev.volume[i];
            }
            _ => out.push(Column {
                ts_us: ev.ts_us[i],
                price: ev.price[i],
                volume: ev.volume[i],
            }),
        }
        last_bin = bin;
    }
    out
}

/// One bar of the contributions chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    /// Feature name.
    pub feature: String,
    /// The feature's value at the alert (None: missing).
    pub value: Option<f64>,
    /// Its SHAP contribution to the score (log-odds).
    pub contribution: f64,
}

/// Reads an alert's `top_features` JSON (`[{feature, value, contribution}]`);
/// entries without a numeric contribution are skipped.
pub fn contributions(top: Option<&serde_json::Value>) -> Vec<Contribution> {
    let Some(items) = top.and_then(|v| v.as_array()) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            Some(Contribution {
                feature: item.get("feature")?.as_str()?.to_owned(),
                value: item.get("value").and_then(serde_json::Value::as_f64),
                contribution: item.get("contribution")?.as_f64()?,
            })
        })
        .collect()
}

/// Horizontal bars, one per contribution, growing right (raises the score)
/// or left (lowers it) from a zero line.
pub fn contributions_chart(items: &[Contribution]) -> Markup {
    let row_h = 26.0;
    let label_w = 200.0;
    let width = 700.0;
    let height = row_h * items.len() as f64 + 10.0;
    let max = items
        .iter()
        .map(|c| c.contribution.abs())
        .fold(0.0_f64, f64::max)
        .max(1e-12);
    let half = (width - label_w - 80.0) / 2.0;
    let zero = label_w + half;
    html! {
        svg #contributions-chart .chart xmlns="http://www.w3.org/2000/svg"
            viewBox=(format!("0 0 {width} {height}")) role="img" aria-label="SHAP contributions" {
            line .zero x1=(zero) x2=(zero) y1="0" y2=(height) {}
            @for (i, c) in items.iter().enumerate() {
                @let y = 5.0 + i as f64 * row_h;
                @let w = c.contribution.abs() / max * half;
                @let x = if c.contribution >= 0.0 { zero } else { zero - w };
                text x=(label_w - 8.0) y=(fmt(y + 16.0)) text-anchor="end" class="label" { (c.feature) }
                rect .contribution .(if c.contribution >= 0.0 { "up" } else { "down" })
                    x=(fmt(x)) y=(fmt(y + 3.0)) width=(fmt(w.max(1.0))) height=(fmt(row_h - 8.0))
                    data-feature=(c.feature) {}
                text x=(fmt(if c.contribution >= 0.0 { zero + w + 4.0 } else { zero - w - 4.0 }))
                    y=(fmt(y + 16.0)) text-anchor=(if c.contribution >= 0.0 { "start" } else { "end" })
                    class="value" { (format!("{:+.3}", c.contribution)) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_ticks_are_binned_and_volume_kept() {
        let n = 5_000;
        let ev = Evidence {
            symbol: "A".into(),
            start_us: 0,
            end_us: n as i64,
            ts_us: (0..n as i64).collect(),
            price: (0..n).map(|i| i as f64).collect(),
            volume: vec![1.0; n],
            truncated: false,
        };
        let cols = bins(&ev);
        assert!(cols.len() <= MAX_COLUMNS + 1, "{}", cols.len());
        let total: f64 = cols.iter().map(|c| c.volume).sum();
        assert_eq!(total, n as f64);
        assert_eq!(cols.last().unwrap().price, (n - 1) as f64);
    }

    #[test]
    fn feature_names_are_escaped_in_the_svg() {
        let items = contributions(Some(&serde_json::json!([
            {"feature": "<b>x</b>", "value": 1.0, "contribution": 0.5},
            {"feature": "y", "value": null, "contribution": -0.25},
            {"feature": "broken"}
        ])));
        assert_eq!(items.len(), 2);
        let svg = contributions_chart(&items).into_string();
        assert!(svg.contains("&lt;b&gt;x&lt;/b&gt;"), "{svg}");
        assert!(!svg.contains("<b>"), "{svg}");
        assert_eq!(svg.matches("class=\"contribution").count(), 2, "{svg}");
    }
}
