//! The review app's HTML pages, rendered on the server by `maud` (every
//! interpolated value is escaped): the alert queue, one alert, sign-in, and
//! the pieces the case pages ([`case_pages`](super::case_pages)) share.
//! Every form that changes something carries the viewer's CSRF token.

use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::auth::Role;
use super::chart::{contributions, contributions_chart, evidence_chart, Contribution, Marker};
use super::evidence::Evidence;
use super::query::{
    AlertDetail, AlertPage, RawFilter, Recorded, DETECTORS, QUEUE_STATUSES, STATUSES,
};

const STYLE: &str = r#"
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f6f7f9; }
header { background: #1d2330; color: #fff; padding: 10px 20px; }
header a { color: #fff; text-decoration: none; font-weight: 600; }
main { padding: 16px 20px; }
table { border-collapse: collapse; background: #fff; width: 100%; }
th, td { padding: 5px 8px; border-bottom: 1px solid #e3e6eb; text-align: left; }
th { background: #eef0f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
form.filters { display: flex; flex-wrap: wrap; gap: 8px; align-items: end; margin-bottom: 12px; }
form.filters label { display: flex; flex-direction: column; font-size: 12px; color: #555; }
.status { padding: 1px 6px; border-radius: 8px; font-size: 12px; background: #e3e6eb; }
.status-confirmed { background: #f8d2d2; } .status-dismissed { background: #d8ecd8; }
.status-escalated { background: #fbe7c0; }
.error { background: #fde2e2; border: 1px solid #e9a0a0; padding: 8px 12px; }
.chart { background: #fff; border: 1px solid #e3e6eb; max-width: 100%; height: auto; }
.chart .frame { fill: none; stroke: #e3e6eb; }
.chart .price { stroke: #1f5fbf; stroke-width: 1.5; }
.chart .volume { fill: #9fb3cf; }
.chart .alert-marker { stroke: #d23c3c; stroke-width: 2; stroke-dasharray: 4 3; }
.chart .marker-label { fill: #d23c3c; font-size: 11px; }
.chart .axis, .chart .label, .chart .value { font-size: 11px; fill: #444; }
.chart .contribution.up { fill: #d25f5f; } .chart .contribution.down { fill: #5f8fd2; }
.chart .zero { stroke: #888; }
#contributions-chart text { font-size: 15px; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
section { margin-bottom: 20px; }
pre.note { white-space: pre-wrap; margin: 0; }
header { display: flex; justify-content: space-between; align-items: center; }
header form { display: inline; margin: 0; }
header nav a { margin-left: 16px; font-weight: 400; }
th a.sort { color: inherit; } th a.sort.current { text-decoration: none; }
.chart .alert-marker.rule { stroke: #b07a16; }
div.scroll { max-height: 420px; overflow-y: auto; }
header .who { font-size: 13px; }
header button { margin-left: 8px; }
form.login { background: #fff; border: 1px solid #e3e6eb; padding: 16px 20px; max-width: 320px; }
form.login label { display: block; margin-bottom: 10px; }
form.login input { display: block; width: 100%; box-sizing: border-box; }
"#;

/// Who is looking at a page: their name and role, the CSRF token the
/// page's forms carry, and whether they can sign out (sessions only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    /// The user's name.
    pub name: String,
    /// Their role.
    pub role: Role,
    /// The CSRF token of their forms.
    pub csrf: String,
    /// Whether a sign-out button is shown.
    pub can_sign_out: bool,
}

pub(super) fn layout(title: &str, viewer: Option<&Viewer>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · StockAnomaly review" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    span {
                        a href="/" { "StockAnomaly · review" }
                        @if viewer.is_some() {
                            nav { a #nav-cases href="/" { "Cases" } a #nav-alerts href="/alerts" { "Alerts" } }
                        }
                    }
                    @if let Some(v) = viewer {
                        span .who #who {
                            (v.name) " (" (v.role) ")"
                            @if v.can_sign_out {
                                form method="post" action="/logout" {
                                    input type="hidden" name="csrf" value=(v.csrf);
                                    button type="submit" #sign-out { "Sign out" }
                                }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// An error page: the message (escaped) and a way back.
pub fn error_page(message: &str) -> Markup {
    layout(
        "Error",
        None,
        html! {
            p .error role="alert" { (message) }
            p { a href="/" { "Back to the queue" } }
        },
    )
}

pub(super) fn when(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()
}

pub(super) fn select(name: &str, label: &str, current: Option<&str>, options: &[String]) -> Markup {
    html! {
        label { (label)
            select name=(name) {
                option value="" { "any" }
                @for o in options {
                    option value=(o) selected[current == Some(o.as_str())] { (o) }
                }
            }
        }
    }
}

/// Filter menus' choices.
#[derive(Debug, Default, Clone)]
pub struct Choices {
    /// Symbols with alerts.
    pub symbols: Vec<String>,
    /// Model versions with alerts.
    pub model_versions: Vec<String>,
}

/// The queue: filters, the page of alerts, and paging links.
pub fn queue_page(raw: &RawFilter, page: &AlertPage, choices: &Choices, viewer: &Viewer) -> Markup {
    let get = |v: &Option<String>| v.clone().unwrap_or_default();
    let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let pages = ((page.total + page.per_page - 1) / page.per_page).max(1);
    let link = |p: i64| {
        let mut r = raw.clone();
        r.page = Some(p.to_string());
        format!("/alerts?{}", query_string(&r))
    };
    let body = html! {
        h1 { "Alert queue" }
        form .filters #filters method="get" action="/alerts" {
            (select("symbol", "Symbol", raw.symbol.as_deref(), &choices.symbols))
            (select("kind", "Kind", raw.kind.as_deref(), &owned(&DETECTORS)))
            label { "Min score" input type="number" step="any" name="min_score" value=(get(&raw.min_score)) size="6"; }
            label { "From" input type="date" name="from" value=(get(&raw.from)); }
            label { "To" input type="date" name="to" value=(get(&raw.to)); }
            (select("model_version", "Model version", raw.model_version.as_deref(), &choices.model_versions))
            (select("status", "Status", raw.status.as_deref(), &owned(&QUEUE_STATUSES)))
            input type="hidden" name="per_page" value=(page.per_page);
            button type="submit" #apply { "Filter" }
            a href="/alerts" { "Clear" }
        }
        p #summary { (page.total) @if !page.total_exact { "+" } " alerts · page " (page.page) " of " (pages) }
        table #queue {
            thead { tr {
                th { "Score" } th { "Symbol" } th { "Time (event)" } th { "Kind" }
                th { "Model version" } th { "Reason" } th { "Status" }
            } }
            tbody {
                @for a in &page.alerts {
                    tr .alert-row data-id=(a.id) {
                        td .num { a href=(format!("/alerts/{}", a.id)) { (format!("{:.4}", a.score)) } }
                        td .symbol { (a.symbol) }
                        td { (when(&a.ts)) }
                        td .kind { (a.kind) }
                        td { (a.model_version) }
                        td { (a.reason.as_deref().unwrap_or("")) }
                        td { span .status .(format!("status-{}", a.status)) { (a.status) } }
                    }
                }
            }
        }
        nav .paging {
            @if page.page > 1 { a #prev href=(link(page.page - 1)) { "← previous" } " " }
            @if page.page < pages { a #next href=(link(page.page + 1)) { "next →" } }
        }
    };
    layout("Alert queue", Some(viewer), body)
}

/// The query string of a filter (only the fields that are set).
pub fn query_string(raw: &RawFilter) -> String {
    let fields = [
        ("symbol", &raw.symbol),
        ("kind", &raw.kind),
        ("min_score", &raw.min_score),
        ("from", &raw.from),
        ("to", &raw.to),
        ("model_version", &raw.model_version),
        ("status", &raw.status),
        ("page", &raw.page),
        ("per_page", &raw.per_page),
        ("sort", &raw.sort),
    ];
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            out.append_pair(k, v);
        }
    }
    out.finish()
}

/// One alert: what fired, the evidence chart, contributions, features, and
/// the verdicts with a form for a new one. `evidence` is `Err(message)`
/// when the ticks could not be read.
pub fn alert_page(
    a: &AlertDetail,
    evidence: Result<&Evidence, &str>,
    error: Option<&str>,
    viewer: &Viewer,
) -> Markup {
    let s = &a.summary;
    let contribs = contributions(a.top_features.as_ref());
    let features: Vec<(String, String)> = a
        .features
        .as_ref()
        .and_then(|f| f.as_object())
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let shown = v.as_f64().map(|x| format!("{x:.6}")).unwrap_or_else(|| {
                        if v.is_null() {
                            "NULL".into()
                        } else {
                            v.to_string()
                        }
                    });
                    (k.clone(), shown)
                })
                .collect()
        })
        .unwrap_or_default();
    let body = html! {
        p { a href="/" { "← queue" } }
        h1 { "Alert " (s.id) ": " (s.symbol) " at " (when(&s.ts)) }
        @if let Some(e) = error { p .error role="alert" { (e) } }
        table #alert-facts {
            tr { th { "Score" } td #score { (format!("{:.6}", s.score)) " (threshold " (format!("{:.6}", s.threshold)) ")" } }
            tr { th { "Fired by" } td #fired-by { (s.kind) " " (s.model_version) @if let Some(r) = &s.reason { " — " (r) } } }
            tr { th { "Tick" } td { (s.symbol) " " (when(&s.ts)) " seq " (s.seq) } }
            tr { th { "Detected at" } td { (when(&s.detected_at))
                @if a.delay_ticks > 0 { " (after " (a.delay_ticks) " later ticks confirmed it)" } } }
            tr { th { "Source" } td { (a.source)
                @if let (Some(p), Some(o)) = (a.source_partition, a.source_offset) { " partition " (p) " offset " (o) } } }
            tr { th { "Status" } td { span #status .status .(format!("status-{}", s.status)) { (s.status) } } }
        }
        section #evidence {
            h2 { "Price and volume around the alert" }
            @match evidence {
                Ok(ev) if !ev.ts_us.is_empty() => {
                    (evidence_chart(ev, &[Marker {
                        ts_us: s.ts.timestamp_micros(),
                        detector: s.kind.clone(),
                        label: Some("alert"),
                    }]))
                    p { (ev.ts_us.len()) " ticks"
                        @if ev.truncated { " (window cut: too many ticks)" } }
                }
                Ok(_) => p .error { "No ticks of " (s.symbol) " in the evidence window." }
                Err(e) => p .error { "The evidence could not be read: " (e) }
            }
        }
        div .grid {
            (contributions_section(&contribs))
            section #features {
                h2 { "Feature values" }
                table { @for (k, v) in &features { tr { td { (k) } td .num { (v) } } } }
            }
        }
        (verdicts_section(
            a.dispositions.iter().map(|d| &d.verdict),
            &format!("/alerts/{}/disposition", s.id),
            "alert",
            viewer,
        ))
    };
    layout(&format!("Alert {}", s.id), Some(viewer), body)
}

/// The SHAP contributions: a bar chart and a table.
pub(super) fn contributions_section(contribs: &[Contribution]) -> Markup {
    html! {
        section #contributions {
            h2 { "Top contributions (SHAP)" }
            @if contribs.is_empty() {
                p { "None recorded (a rule alert, or a model run without contributions)." }
            } @else {
                (contributions_chart(contribs))
                table { tr { th { "Feature" } th { "Value" } th { "Contribution" } }
                    @for c in contribs { tr {
                        td { (c.feature) }
                        td .num { (c.value.map(|v| format!("{v:.6}")).unwrap_or_else(|| "NULL".into())) }
                        td .num { (format!("{:+.4}", c.contribution)) }
                    } }
                }
            }
        }
    }
}

/// The verdict history (oldest first) of an alert or a case (`what`), and
/// for an analyst a form posting a new one to `action`.
pub(super) fn verdicts_section<'a>(
    history: impl ExactSizeIterator<Item = &'a Recorded>,
    action: &str,
    what: &str,
    viewer: &Viewer,
) -> Markup {
    html! {
        section #dispositions {
            h2 { "Verdicts" }
            @if history.len() == 0 { p #no-verdicts { "No verdict yet." } }
            @else {
                table #history {
                    tr { th { "When" } th { "Verdict" } th { "Kind" } th { "Analyst" } th { "Note" } }
                    @for d in history { tr .verdict {
                        td { (when(&d.at)) } td { (d.status) } td { (d.kind.as_deref().unwrap_or("")) }
                        td { (d.analyst) } td { pre .note { (d.note) } }
                    } }
                }
            }
            @if !viewer.role.can_decide() {
                p #viewer-only { "You can read this " (what) "; recording verdicts needs the analyst role." }
            } @else {
            form #verdict method="post" action=(action) {
                input type="hidden" name="csrf" value=(viewer.csrf);
                fieldset {
                    legend { "Record a verdict on this " (what) " as " (viewer.name) }
                    @for st in STATUSES {
                        label { input type="radio" name="status" value=(st) required; " " (st) } " "
                    }
                    br;
                    label { "Kind (for a confirmation) "
                        input type="text" name="kind" placeholder="e.g. spoofing" pattern="[a-z0-9_]{1,40}"; }
                    br;
                    label { "Note" br; textarea name="note" rows="3" cols="60" maxlength="4000" {} }
                    br;
                    button type="submit" #record { "Record" }
                }
            }
            }
        }
    }
}

/// The sign-in page: name, password, the login form's CSRF token and where
/// to go afterwards; `error` says why the last attempt failed.
pub fn login_page(error: Option<&str>, csrf: &str, next: &str) -> Markup {
    let body = html! {
        h1 { "Sign in" }
        @if let Some(e) = error { p .error role="alert" { (e) } }
        form .login #login method="post" action="/login" {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="next" value=(next);
            label { "User name" input type="text" name="name" required maxlength="64" autocomplete="username" autofocus; }
            label { "Password" input type="password" name="password" required autocomplete="current-password"; }
            button type="submit" #sign-in { "Sign in" }
        }
        p { "Accounts are made with " code { "stockanomaly users add" } "." }
    };
    layout("Sign in", None, body)
}
