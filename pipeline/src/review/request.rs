//! What the routes read from a request, for the alert and the case routes
//! alike: who is looking, whether they may decide, ids, queue filters, the
//! filter menus, and the verdict form.

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::Query;
use axum::Form;
use serde::Deserialize;

use super::auth::{Auth, Identity, Via};
use super::evidence::Evidence;
use super::pages::{Choices, Viewer};
use super::query::{self, record_verdict, AlertFilter, NewDisposition, RawFilter, VerdictOn};
use super::{AppState, ReviewError};

/// The evidence as a page shows it: the ticks, or a message saying it
/// failed (what failed, paths and SQL, goes to the log, naming `what`).
pub(super) fn shown_evidence<'e>(
    evidence: &'e Result<Evidence, ReviewError>,
    what: &str,
    id: i64,
) -> Result<&'e Evidence, &'static str> {
    evidence.as_ref().map_err(|e| {
        tracing::error!(%what, id, error = %e, "Reading the evidence failed.");
        "the server's log has the details"
    })
}

/// Records the verdict `form` posts on `on` for `me`: `Ok(None)` when
/// stored, `Ok(Some(message))` when the verdict itself is refused (the
/// page shows it again with the message), `Err` for anything else.
pub(super) async fn record_form_verdict(
    st: &AppState,
    me: &Identity,
    on: VerdictOn,
    form: Result<Form<VerdictForm>, FormRejection>,
) -> Result<Option<String>, ReviewError> {
    let new = VerdictForm::checked(form, st, me)?;
    let client = st.pool.get().await?;
    match record_verdict(&client, on, &new, me).await {
        Ok(_) => Ok(None),
        Err(ReviewError::BadRequest(msg)) => Ok(Some(msg)),
        Err(e) => Err(e),
    }
}

/// The page header's view of `me`.
pub(super) fn viewer(auth: &Auth, me: &Identity) -> Viewer {
    Viewer {
        name: me.name.clone(),
        role: me.role,
        csrf: auth.csrf_token(me),
        can_sign_out: matches!(me.via, Via::Session(_)),
    }
}

/// Refuses `me` unless their role records verdicts.
pub(super) fn require_decider(me: &Identity) -> Result<(), ReviewError> {
    if me.role.can_decide() {
        Ok(())
    } else {
        Err(ReviewError::Forbidden(format!(
            "{} is a {}: recording verdicts needs the analyst role",
            me.name, me.role
        )))
    }
}

/// The id of an alert or a case (`what`) from a path.
pub(super) fn parse_id_of(what: &str, raw: &str) -> Result<i64, ReviewError> {
    match raw.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ReviewError::BadRequest(format!(
            "{what} id must be a positive whole number, not {raw:?}"
        ))),
    }
}

/// A queue's filters from the query string, for a queue sorted one of
/// `sorts` ways.
pub(super) fn filter_of(
    q: Result<Query<RawFilter>, QueryRejection>,
    sorts: &[&'static str],
) -> Result<(RawFilter, AlertFilter), ReviewError> {
    let Query(raw) = q.map_err(|e| ReviewError::BadRequest(e.body_text()))?;
    let filter = AlertFilter::parse_sorted(&raw, sorts)?;
    Ok((raw, filter))
}

/// The filter menus' choices.
pub(super) async fn choices(client: &tokio_postgres::Client) -> Result<Choices, ReviewError> {
    let (symbols, model_versions) = query::filter_choices(client).await?;
    Ok(Choices {
        symbols,
        model_versions,
    })
}

/// The verdict form's fields.
#[derive(Debug, Deserialize)]
pub(super) struct VerdictForm {
    status: String,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    note: Option<String>,
    /// The form's CSRF token.
    #[serde(default)]
    csrf: String,
}

impl VerdictForm {
    /// The verdict posted by `me`, once the form's CSRF token checks out.
    pub(super) fn checked(
        form: Result<Form<VerdictForm>, FormRejection>,
        st: &AppState,
        me: &Identity,
    ) -> Result<NewDisposition, ReviewError> {
        require_decider(me)?;
        let Form(f) = form.map_err(|e| ReviewError::BadRequest(e.body_text()))?;
        if !st.auth.csrf_ok(me, &f.csrf) {
            return Err(ReviewError::Csrf);
        }
        Ok(NewDisposition {
            status: f.status,
            kind: f.kind,
            note: f.note,
            analyst: None,
        })
    }
}
