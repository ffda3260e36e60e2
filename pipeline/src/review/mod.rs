//! The analyst's side: `stockanomaly serve` (a queue of cases, each case's
//! page with the evidence over its span and its alerts marked, an alert
//! queue and alert page with its evidence and SHAP contributions, verdicts
//! on cases and alerts stored in PostgreSQL with their history, and a JSON
//! API, all behind accounts or an SSO proxy: [`auth`]) and `stockanomaly
//! labels export` (verdicts become lake labels, so the next `train` learns
//! from them).

mod answer;
pub mod auth;
mod case_pages;
mod case_routes;
mod cases;
mod chart;
mod error;
mod evidence;
mod export;
mod login;
mod pages;
mod pool;
mod query;
mod request;
mod server;

pub use cases::{
    case_dispositions, get_case, list_cases, CaseDetail, CaseDisposition, CasePage, CaseSummary,
    CASE_SORTS, MAX_CASE_ALERTS,
};
pub use chart::{contributions, Contribution, Marker};
pub use error::ReviewError;
pub use evidence::{case_window, window, Evidence, TickStore, MAX_TICKS};
pub use export::{export_labels, ExportSummary, REVIEW_SOURCE};
pub use pool::{Pool, PoolOptions, PooledClient};
pub use query::{
    dispositions, filter_choices, final_verdicts, get_alert, list_alerts, record_disposition,
    record_verdict, AlertDetail, AlertFilter, AlertPage, AlertSummary, Disposition, NewDisposition,
    RawFilter, Recorded, Verdict, VerdictOn, ALERT_SORTS, DEFAULT_CONFIRMED_KIND, MAX_QUEUE_DEPTH,
    MODEL_VERSION_CHOICES_SQL, STATUSES, SYMBOL_CHOICES_SQL,
};
pub use server::{router, serve, API_DOC};

/// What every request handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// PostgreSQL connections (alerts, dispositions, accounts, sessions).
    pub pool: Pool,
    /// Where evidence ticks are read.
    pub ticks: TickStore,
    /// Who may do what, and how they sign in.
    pub auth: std::sync::Arc<auth::Auth>,
}
