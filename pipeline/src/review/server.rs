//! The review server's routes: HTML pages for analysts and the JSON API
//! (documented in `API.md`, served at `/api`), behind [`auth::gate`].

use std::future::Future;

use axum::extract::rejection::{FormRejection, JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{middleware, Extension, Form, Json, Router};
use tokio::net::TcpListener;

use super::answer::{ApiError, HtmlError};
use super::auth::{self, GateState, Identity};
use super::case_routes;
use super::evidence::window;
use super::login;
use super::pages::{alert_page, queue_page};
use super::query::{self, NewDisposition, RawFilter, VerdictOn};
use super::request::{
    choices, filter_of, parse_id_of, record_form_verdict, require_decider, shown_evidence, viewer,
    VerdictForm,
};
use super::{AppState, ReviewError};
use crate::web::{self, Limits};

/// The API's documentation, served at `/api`.
pub const API_DOC: &str = include_str!("API.md");

/// The app's routes over `state`, every one behind [`auth::gate`].
pub fn router(state: AppState) -> Router {
    let gate = GateState {
        auth: state.auth.clone(),
        pool: state.pool.clone(),
    };
    Router::new()
        .route("/", get(case_routes::case_queue))
        .route("/alerts", get(queue))
        .route("/alerts/{id}", get(alert))
        .route("/alerts/{id}/disposition", post(post_disposition_form))
        .route("/login", get(login::login_form).post(login::login))
        .route("/logout", post(login::logout))
        .route("/api", get(api_doc))
        .route("/api/alerts", get(api_alerts))
        .route("/api/alerts/{id}", get(api_alert))
        .route("/api/alerts/{id}/evidence", get(api_evidence))
        .route(
            "/api/alerts/{id}/dispositions",
            get(api_dispositions).post(api_post_disposition),
        )
        .merge(case_routes::routes())
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(gate, auth::gate))
        .with_state(state)
}

/// Serves `router(state)` on `listener` within `limits` until `shutdown`
/// completes.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    web::serve(listener, router(state), limits, shutdown).await
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

fn parse_id(raw: &str) -> Result<i64, ReviewError> {
    parse_id_of("alert", raw)
}

async fn queue(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    q: Result<Query<RawFilter>, QueryRejection>,
) -> Result<Response, HtmlError> {
    let (raw, filter) = filter_of(q, &query::ALERT_SORTS)?;
    let client = st.pool.get().await?;
    let page = query::list_alerts(&client, &filter).await?;
    let choices = choices(&client).await?;
    drop(client);
    Ok(queue_page(&raw, &page, &choices, &viewer(&st.auth, &me)).into_response())
}

async fn render_alert(
    st: &AppState,
    me: &Identity,
    id: i64,
    error: Option<&str>,
) -> Result<maud::Markup, ReviewError> {
    let client = st.pool.get().await?;
    let detail = query::get_alert(&client, id).await?;
    let ts = detail.summary.ts.timestamp_micros();
    let (start, end) = window(ts, detail.evidence_start.map(|t| t.timestamp_micros()));
    let evidence = st
        .ticks
        .evidence(&client, &detail.summary.symbol, start, end)
        .await;
    drop(client);
    let shown = shown_evidence(&evidence, "alert", id);
    Ok(alert_page(&detail, shown, error, &viewer(&st.auth, me)))
}

async fn alert(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
) -> Result<Response, HtmlError> {
    let id = parse_id(&id)?;
    Ok(render_alert(&st, &me, id, None).await?.into_response())
}

async fn post_disposition_form(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
    form: Result<Form<VerdictForm>, FormRejection>,
) -> Result<Response, HtmlError> {
    let id = parse_id(&id)?;
    match record_form_verdict(&st, &me, VerdictOn::Alert(id), form).await? {
        // Post/redirect/get: reloading the page does not post again.
        None => Ok(Redirect::to(&format!("/alerts/{id}")).into_response()),
        Some(msg) => {
            let page = render_alert(&st, &me, id, Some(&msg)).await?;
            Ok((StatusCode::BAD_REQUEST, page).into_response())
        }
    }
}

async fn api_doc() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/markdown; charset=utf-8")],
        API_DOC,
    )
}

async fn api_alerts(
    State(st): State<AppState>,
    q: Result<Query<RawFilter>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (_, filter) = filter_of(q, &query::ALERT_SORTS)?;
    let client = st.pool.get().await?;
    Ok(Json(query::list_alerts(&client, &filter).await?).into_response())
}

async fn api_alert(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let client = st.pool.get().await?;
    Ok(Json(query::get_alert(&client, id).await?).into_response())
}

async fn api_evidence(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let client = st.pool.get().await?;
    let d = query::get_alert(&client, id).await?;
    let ts = d.summary.ts.timestamp_micros();
    let (start, end) = window(ts, d.evidence_start.map(|t| t.timestamp_micros()));
    let ev = st
        .ticks
        .evidence(&client, &d.summary.symbol, start, end)
        .await?;
    Ok(Json(ev).into_response())
}

async fn api_dispositions(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let client = st.pool.get().await?;
    // 404 for an unknown alert rather than an empty list.
    query::get_alert(&client, id).await?;
    Ok(Json(query::dispositions(&client, id).await?).into_response())
}

async fn api_post_disposition(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
    body: Result<Json<NewDisposition>, JsonRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    require_decider(&me)?;
    let Json(new) = body.map_err(|e| ReviewError::BadRequest(e.body_text()))?;
    let client = st.pool.get().await?;
    let stored = query::record_disposition(&client, id, &new, &me).await?;
    Ok((StatusCode::CREATED, Json(stored)).into_response())
}

async fn healthz(State(st): State<AppState>) -> Result<&'static str, ApiError> {
    let client = st.pool.get().await?;
    client
        .simple_query("SELECT 1")
        .await
        .map_err(ReviewError::query("health check"))?;
    Ok("ok\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_be_positive_numbers() {
        assert_eq!(parse_id("42").unwrap(), 42);
        for bad in ["0", "-1", "1; DROP TABLE alerts", "abc", ""] {
            assert!(parse_id(bad).is_err(), "{bad}");
        }
    }
}
