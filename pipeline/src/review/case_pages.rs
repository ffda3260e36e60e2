//! The case pages: the queue of opened cases (the analyst's start page,
//! sortable and filterable) and one case, with the evidence over its whole
//! span, its alerts marked, and a verdict on the case.

use maud::{html, Markup};

use super::cases::{CaseDetail, CasePage};
use super::chart::{contributions, evidence_chart, Marker};
use super::evidence::Evidence;
use super::pages::{
    contributions_section, layout, query_string, select, verdicts_section, when, Choices, Viewer,
};
use super::query::{RawFilter, DETECTORS, QUEUE_STATUSES};

/// The columns of the queue a click sorts by, with their sort.
const SORTABLE: [(&str, &str); 5] = [
    ("Case score", "case_score"),
    ("Peak score", "peak_score"),
    ("Alerts", "alerts"),
    ("First alert", "start"),
    ("Opened", "opened"),
];

fn score(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.4}")).unwrap_or_default()
}

/// Minutes and seconds of a span, as `12m 05s`.
fn span(c: &super::cases::CaseSummary) -> String {
    let secs = (c.end_ts - c.start_ts).num_seconds().max(0);
    format!("{}m {:02}s", secs / 60, secs % 60)
}

/// The case queue: filters, sortable headers, the page of cases, paging.
pub fn case_queue_page(
    raw: &RawFilter,
    page: &CasePage,
    choices: &Choices,
    viewer: &Viewer,
) -> Markup {
    let get = |v: &Option<String>| v.clone().unwrap_or_default();
    let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let pages = ((page.total + page.per_page - 1) / page.per_page).max(1);
    let link = |page_no: i64, sort: &str| {
        let mut r = raw.clone();
        r.page = Some(page_no.to_string());
        r.sort = Some(sort.to_owned());
        format!("/?{}", query_string(&r))
    };
    let body = html! {
        h1 { "Case queue" }
        form .filters #filters method="get" action="/" {
            (select("symbol", "Symbol", raw.symbol.as_deref(), &choices.symbols))
            (select("kind", "With alerts of", raw.kind.as_deref(), &owned(&DETECTORS)))
            label { "Min case score" input type="number" step="any" name="min_score" value=(get(&raw.min_score)) size="6"; }
            label { "From" input type="date" name="from" value=(get(&raw.from)); }
            label { "To" input type="date" name="to" value=(get(&raw.to)); }
            (select("model_version", "Model version", raw.model_version.as_deref(), &choices.model_versions))
            (select("status", "Status", raw.status.as_deref(), &owned(&QUEUE_STATUSES)))
            input type="hidden" name="per_page" value=(page.per_page);
            input type="hidden" name="sort" value=(page.sort);
            button type="submit" #apply { "Filter" }
            a href="/" { "Clear" }
        }
        p #summary { (page.total) @if !page.total_exact { "+" } " cases · page " (page.page) " of " (pages)
            " · sorted by " (SORTABLE.iter().find(|(_, k)| *k == page.sort).map_or("case score", |(t, _)| *t).to_lowercase()) }
        table #cases {
            thead { tr {
                @for (title, key) in SORTABLE.iter().take(3) {
                    th { a .sort .current[page.sort == *key] href=(link(1, key)) data-sort=(key) { (title) } }
                }
                th { "Symbol" }
                @for (title, key) in SORTABLE.iter().skip(3) {
                    th { a .sort .current[page.sort == *key] href=(link(1, key)) data-sort=(key) { (title) } }
                }
                th { "Span" } th { "Detectors" } th { "Likely kinds" } th { "Case" } th { "Status" }
            } }
            tbody {
                @for c in &page.cases {
                    tr .case-row data-id=(c.id) {
                        td .num .case-score { a href=(format!("/cases/{}", c.id)) { (format!("{:.4}", c.case_score)) } }
                        td .num .peak-score { (score(c.peak_score)) }
                        td .num .alerts { (c.alerts) }
                        td .symbol { (c.symbol) }
                        td .start data-us=(c.start_ts.timestamp_micros()) { (when(&c.start_ts)) }
                        td .opened data-us=(c.opened_ts.timestamp_micros()) { (when(&c.opened_ts)) }
                        td { (span(c)) }
                        td .detectors { (c.detectors) }
                        td .kinds { (c.likely_kinds.as_deref().unwrap_or("")) }
                        td .state { (c.state) }
                        td { span .status .(format!("status-{}", c.status)) { (c.status) } }
                    }
                }
            }
        }
        nav .paging {
            @if page.page > 1 { a #prev href=(link(page.page - 1, &page.sort)) { "← previous" } " " }
            @if page.page < pages { a #next href=(link(page.page + 1, &page.sort)) { "next →" } }
        }
    };
    layout("Case queue", Some(viewer), body)
}

/// One case: its facts, the evidence over its span with every alert
/// marked, the contributions at its peak, its alerts, and its verdicts with
/// a form for a new one. `evidence` is `Err(message)` when the ticks could
/// not be read.
pub fn case_page(
    c: &CaseDetail,
    evidence: Result<&Evidence, &str>,
    error: Option<&str>,
    viewer: &Viewer,
) -> Markup {
    let s = &c.summary;
    let contribs = contributions(c.top_shap.as_ref());
    let mut markers: Vec<Marker> = c
        .case_alerts
        .iter()
        .map(|a| Marker {
            ts_us: a.ts.timestamp_micros(),
            detector: a.kind.clone(),
            label: None,
        })
        .collect();
    // A tick alerting for the model and a rule is one line.
    markers.dedup_by_key(|m| m.ts_us);
    let body = html! {
        p { a href="/" { "← cases" } }
        h1 { "Case " (s.id) ": " (s.symbol) " from " (when(&s.start_ts)) }
        @if let Some(e) = error { p .error role="alert" { (e) } }
        table #case-facts {
            tr { th { "Case score" } td #case-score { (format!("{:.6}", s.case_score)) " (model " (s.model_version) ")" } }
            tr { th { "Span" } td { (when(&s.start_ts)) " – " (when(&s.end_ts)) " (" (span(s)) ")" } }
            tr { th { "Alerts" } td #case-alerts { (s.alerts) " (" (s.model_alerts) " of the model)" } }
            tr { th { "Peak score" } td { (score(s.peak_score))
                @if let Some(t) = &c.peak_ts { " at " (when(t)) } } }
            tr { th { "Opened" } td { "at the alert of " (when(&s.opened_ts))
                @if let Some(t) = &c.opened_at { ", stored " (when(t)) } } }
            tr { th { "Detectors" } td #detectors { (s.detectors) } }
            tr { th { "Likely kinds" } td #likely-kinds {
                (s.likely_kinds.as_deref().unwrap_or("none told (the model does not tell kinds; a rule does with `-- kinds:`)")) } }
            tr { th { "Case id" } td { code { (s.case_id) } " · " (c.source)
                @if let Some(p) = c.source_partition { " partition " (p) } } }
            tr { th { "State" } td #state { (s.state) } }
            tr { th { "Status" } td { span #status .status .(format!("status-{}", s.status)) { (s.status) } } }
        }
        section #evidence {
            h2 { "Price and volume over the case" }
            @match evidence {
                Ok(ev) if !ev.ts_us.is_empty() => {
                    (evidence_chart(ev, &markers))
                    p { (ev.ts_us.len()) " ticks, " (markers.len()) " alerting ticks marked"
                        @if ev.truncated { " (window cut: too many ticks)" } }
                }
                Ok(_) => p .error { "No ticks of " (s.symbol) " in the evidence window." }
                Err(e) => p .error { "The evidence could not be read: " (e) }
            }
        }
        div .grid {
            (contributions_section(&contribs))
            section #alerts {
                h2 { "Alerts of the case" }
                div .scroll {
                table #case-alert-list {
                    tr { th { "Time (event)" } th { "Kind" } th { "Score" } th { "Reason" } th { "Status" } }
                    @for a in &c.case_alerts { tr .case-alert data-id=(a.id) {
                        td { a href=(format!("/alerts/{}", a.id)) { (when(&a.ts)) } }
                        td { (a.kind) }
                        td .num { (format!("{:.4}", a.score)) }
                        td { (a.reason.as_deref().unwrap_or("")) }
                        td { span .status .(format!("status-{}", a.status)) { (a.status) } }
                    } }
                }
                }
            }
        }
        (verdicts_section(
            c.dispositions.iter().map(|d| &d.verdict),
            &format!("/cases/{}/disposition", s.id),
            "case",
            viewer,
        ))
    };
    layout(&format!("Case {}", s.id), Some(viewer), body)
}

#[cfg(test)]
mod tests {
    use super::super::cases::CASE_SORTS;
    use super::*;

    #[test]
    fn every_case_sort_has_a_column() {
        let mut keys: Vec<&str> = SORTABLE.iter().map(|(_, k)| *k).collect();
        keys.sort_unstable();
        let mut sorts = CASE_SORTS.to_vec();
        sorts.sort_unstable();
        assert_eq!(keys, sorts);
    }
}
