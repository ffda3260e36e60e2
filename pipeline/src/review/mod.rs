//! The analyst's side: `stockanomaly serve` (an alert queue, an alert page
//! with its evidence and SHAP contributions, verdicts stored in PostgreSQL
//! with their history, and a JSON API, all behind accounts or an SSO proxy:
//! [`auth`]) and `stockanomaly labels export` (verdicts become lake labels,
//! so the next `train` learns from them).

mod answer;
pub mod auth;
mod chart;
mod error;
mod evidence;
mod export;
mod login;
mod pages;
mod pool;
mod query;
mod server;

pub use chart::{contributions, Contribution};
pub use error::ReviewError;
pub use evidence::{window, Evidence, TickStore, MAX_TICKS};
pub use export::{export_labels, ExportSummary, REVIEW_SOURCE};
pub use pool::{Pool, PoolOptions, PooledClient};
pub use query::{
    dispositions, filter_choices, final_verdicts, get_alert, list_alerts, record_disposition,
    AlertDetail, AlertFilter, AlertPage, AlertSummary, Disposition, NewDisposition, RawFilter,
    Verdict, DEFAULT_CONFIRMED_KIND, MAX_QUEUE_DEPTH, MODEL_VERSION_CHOICES_SQL, STATUSES,
    SYMBOL_CHOICES_SQL,
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
