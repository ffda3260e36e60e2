//! The case routes: the case queue (the start page), one case, its verdict
//! form, and the JSON API's `/api/cases` (documented in `API.md`).

use axum::extract::rejection::{FormRejection, JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Json, Router};

use super::answer::{ApiError, HtmlError};
use super::auth::Identity;
use super::case_pages::{case_page, case_queue_page};
use super::cases::{self, CaseDetail, CaseDisposition, CASE_SORTS};
use super::evidence::{case_window, Evidence};
use super::query::{record_verdict, NewDisposition, RawFilter, VerdictOn};
use super::request::{
    choices, filter_of, parse_id_of, record_form_verdict, require_decider, shown_evidence, viewer,
    VerdictForm,
};
use super::{AppState, ReviewError};

/// The case routes but the queue (which is `/`, routed with the others).
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/cases/{id}", get(case))
        .route("/cases/{id}/disposition", post(post_case_disposition_form))
        .route("/api/cases", get(api_cases))
        .route("/api/cases/{id}", get(api_case))
        .route("/api/cases/{id}/evidence", get(api_case_evidence))
        .route(
            "/api/cases/{id}/dispositions",
            get(api_case_dispositions).post(api_post_case_disposition),
        )
}

fn parse_id(raw: &str) -> Result<i64, ReviewError> {
    parse_id_of("case", raw)
}

/// `/`: the opened cases, highest case score first unless sorted otherwise.
pub(super) async fn case_queue(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    q: Result<Query<RawFilter>, QueryRejection>,
) -> Result<Response, HtmlError> {
    let (raw, filter) = filter_of(q, &CASE_SORTS)?;
    let client = st.pool.get().await?;
    let page = cases::list_cases(&client, &filter).await?;
    let choices = choices(&client).await?;
    drop(client);
    Ok(case_queue_page(&raw, &page, &choices, &viewer(&st.auth, &me)).into_response())
}

/// A case and the ticks over its window.
async fn case_with_evidence(
    st: &AppState,
    id: i64,
) -> Result<(CaseDetail, Result<Evidence, ReviewError>), ReviewError> {
    let client = st.pool.get().await?;
    let detail = cases::get_case(&client, id).await?;
    let (start, end) = case_window(
        detail.summary.start_ts.timestamp_micros(),
        detail.summary.end_ts.timestamp_micros(),
    );
    let evidence = st
        .ticks
        .evidence(&client, &detail.summary.symbol, start, end)
        .await;
    Ok((detail, evidence))
}

async fn render_case(
    st: &AppState,
    me: &Identity,
    id: i64,
    error: Option<&str>,
) -> Result<maud::Markup, ReviewError> {
    let (detail, evidence) = case_with_evidence(st, id).await?;
    let shown = shown_evidence(&evidence, "case", id);
    Ok(case_page(&detail, shown, error, &viewer(&st.auth, me)))
}

async fn case(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
) -> Result<Response, HtmlError> {
    let id = parse_id(&id)?;
    Ok(render_case(&st, &me, id, None).await?.into_response())
}

async fn post_case_disposition_form(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
    form: Result<Form<VerdictForm>, FormRejection>,
) -> Result<Response, HtmlError> {
    let id = parse_id(&id)?;
    match record_form_verdict(&st, &me, VerdictOn::Case(id), form).await? {
        // Post/redirect/get: reloading the page does not post again.
        None => Ok(Redirect::to(&format!("/cases/{id}")).into_response()),
        Some(msg) => {
            let page = render_case(&st, &me, id, Some(&msg)).await?;
            Ok((StatusCode::BAD_REQUEST, page).into_response())
        }
    }
}

async fn api_cases(
    State(st): State<AppState>,
    q: Result<Query<RawFilter>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (_, filter) = filter_of(q, &CASE_SORTS)?;
    let client = st.pool.get().await?;
    Ok(Json(cases::list_cases(&client, &filter).await?).into_response())
}

async fn api_case(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let client = st.pool.get().await?;
    Ok(Json(cases::get_case(&client, id).await?).into_response())
}

async fn api_case_evidence(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let (_, evidence) = case_with_evidence(&st, id).await?;
    Ok(Json(evidence?).into_response())
}

async fn api_case_dispositions(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let client = st.pool.get().await?;
    // 404 for an unknown (or unopened) case rather than an empty list.
    cases::get_case(&client, id).await?;
    Ok(Json(cases::case_dispositions(&client, id).await?).into_response())
}

async fn api_post_case_disposition(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
    body: Result<Json<NewDisposition>, JsonRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    require_decider(&me)?;
    let Json(new) = body.map_err(|e| ReviewError::BadRequest(e.body_text()))?;
    let client = st.pool.get().await?;
    let (did, verdict) = record_verdict(&client, VerdictOn::Case(id), &new, &me).await?;
    let stored = CaseDisposition {
        id: did,
        case: id,
        verdict,
    };
    Ok((StatusCode::CREATED, Json(stored)).into_response())
}
