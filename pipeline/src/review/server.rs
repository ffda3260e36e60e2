//! The review server's routes: HTML pages for analysts and the JSON API
//! (documented in `API.md`, served at `/api`).

use std::future::Future;

use axum::extract::rejection::{FormRejection, JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Json, Router};
use tokio::net::TcpListener;

use super::evidence::{window, TickStore};
use super::pages::{alert_page, error_page, queue_page, Choices};
use super::pool::Pool;
use super::query::{self, AlertFilter, NewDisposition, RawFilter};
use super::ReviewError;

/// The API's documentation, served at `/api`.
pub const API_DOC: &str = include_str!("API.md");

/// What every request handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// PostgreSQL connections (alerts, dispositions).
    pub pool: Pool,
    /// Where evidence ticks are read.
    pub ticks: TickStore,
}

/// The app's routes over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(queue))
        .route("/alerts/{id}", get(alert))
        .route(
            "/alerts/{id}/disposition",
            axum::routing::post(post_disposition_form),
        )
        .route("/api", get(api_doc))
        .route("/api/alerts", get(api_alerts))
        .route("/api/alerts/{id}", get(api_alert))
        .route("/api/alerts/{id}/evidence", get(api_evidence))
        .route(
            "/api/alerts/{id}/dispositions",
            get(api_dispositions).post(api_post_disposition),
        )
        .route("/healthz", get(healthz))
        .with_state(state)
}

/// Serves `router(state)` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

fn status_of(e: &ReviewError) -> StatusCode {
    match e {
        ReviewError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ReviewError::NotFound(_) => StatusCode::NOT_FOUND,
        ReviewError::CrossSite { .. } => StatusCode::FORBIDDEN,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// How a failed request is answered: an HTML page or a JSON body.
trait Answer {
    /// What the log line says failed.
    const WHAT: &'static str;
    /// The response body for `message`.
    fn body(message: String) -> Response;
}

/// Answered with the error page.
struct Page;

impl Answer for Page {
    const WHAT: &'static str = "Review page failed.";
    fn body(message: String) -> Response {
        error_page(&message).into_response()
    }
}

/// Answered with `{"error": "..."}`.
struct Api;

impl Answer for Api {
    const WHAT: &'static str = "Review API request failed.";
    fn body(message: String) -> Response {
        Json(serde_json::json!({ "error": message })).into_response()
    }
}

/// A request's error, with the status its kind deserves, answered as `A`.
struct Failure<A>(ReviewError, std::marker::PhantomData<A>);

impl<A> From<ReviewError> for Failure<A> {
    fn from(e: ReviewError) -> Self {
        Self(e, std::marker::PhantomData)
    }
}

impl<A: Answer> IntoResponse for Failure<A> {
    fn into_response(self) -> Response {
        let status = status_of(&self.0);
        if status.is_server_error() {
            tracing::error!(error = %self.0, "{}", A::WHAT);
        }
        (status, A::body(self.0.to_string())).into_response()
    }
}

type HtmlError = Failure<Page>;
type ApiError = Failure<Api>;

fn parse_id(raw: &str) -> Result<i64, ReviewError> {
    match raw.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ReviewError::BadRequest(format!(
            "alert id must be a positive whole number, not {raw:?}"
        ))),
    }
}

fn filter_of(
    q: Result<Query<RawFilter>, QueryRejection>,
) -> Result<(RawFilter, AlertFilter), ReviewError> {
    let Query(raw) = q.map_err(|e| ReviewError::BadRequest(e.body_text()))?;
    let filter = AlertFilter::parse(&raw)?;
    Ok((raw, filter))
}

/// Refuses a form posted from another origin (a page elsewhere making the
/// analyst's browser post a verdict): the `Origin` header, when the browser
/// sends one, must name this server's `Host`.
fn same_origin(headers: &HeaderMap) -> Result<(), ReviewError> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split("://").nth(1).unwrap_or("");
    if origin_host.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err(ReviewError::CrossSite {
            origin: origin.to_owned(),
        })
    }
}

async fn queue(
    State(st): State<AppState>,
    q: Result<Query<RawFilter>, QueryRejection>,
) -> Result<Response, HtmlError> {
    let (raw, filter) = filter_of(q)?;
    let client = st.pool.get().await.map_err(ReviewError::from)?;
    let page = query::list_alerts(&client, &filter).await;
    let choices = async {
        Ok::<_, ReviewError>(Choices {
            symbols: query::distinct_values(&client, "symbol").await?,
            model_versions: query::distinct_values(&client, "model_version").await?,
        })
    }
    .await;
    st.pool.put(client).await;
    Ok(queue_page(&raw, &page?, &choices?).into_response())
}

async fn render_alert(
    st: &AppState,
    id: i64,
    error: Option<&str>,
) -> Result<maud::Markup, ReviewError> {
    let client = st.pool.get().await?;
    let detail = query::get_alert(&client, id).await;
    let detail = match detail {
        Ok(d) => d,
        Err(e) => {
            st.pool.put(client).await;
            return Err(e);
        }
    };
    let ts = detail.summary.ts.timestamp_micros();
    let (start, end) = window(ts, detail.evidence_start.map(|t| t.timestamp_micros()));
    let evidence = st
        .ticks
        .evidence(&client, &detail.summary.symbol, start, end)
        .await;
    st.pool.put(client).await;
    let evidence_err = evidence.as_ref().err().map(ToString::to_string);
    let shown = match (&evidence, &evidence_err) {
        (Ok(ev), _) => Ok(ev),
        (Err(_), Some(msg)) => Err(msg.as_str()),
        (Err(_), None) => Err("unknown error"),
    };
    Ok(alert_page(&detail, shown, error))
}

async fn alert(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response, HtmlError> {
    let id = parse_id(&id)?;
    Ok(render_alert(&st, id, None).await?.into_response())
}

async fn post_disposition_form(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    form: Result<Form<NewDisposition>, FormRejection>,
) -> Result<Response, HtmlError> {
    let id = parse_id(&id)?;
    same_origin(&headers)?;
    let result = match form {
        Ok(Form(new)) => {
            let client = st.pool.get().await.map_err(ReviewError::from)?;
            let r = query::record_disposition(&client, id, &new).await;
            st.pool.put(client).await;
            r
        }
        Err(e) => Err(ReviewError::BadRequest(e.body_text())),
    };
    match result {
        // Post/redirect/get: reloading the page does not post again.
        Ok(_) => Ok(Redirect::to(&format!("/alerts/{id}")).into_response()),
        Err(ReviewError::BadRequest(msg)) => {
            let page = render_alert(&st, id, Some(&msg)).await?;
            Ok((StatusCode::BAD_REQUEST, page).into_response())
        }
        Err(e) => Err(e.into()),
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
    let (_, filter) = filter_of(q)?;
    let client = st.pool.get().await.map_err(ReviewError::from)?;
    let page = query::list_alerts(&client, &filter).await;
    st.pool.put(client).await;
    Ok(Json(page?).into_response())
}

async fn api_alert(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let client = st.pool.get().await.map_err(ReviewError::from)?;
    let detail = query::get_alert(&client, id).await;
    st.pool.put(client).await;
    Ok(Json(detail?).into_response())
}

async fn api_evidence(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let client = st.pool.get().await.map_err(ReviewError::from)?;
    let result = async {
        let d = query::get_alert(&client, id).await?;
        let ts = d.summary.ts.timestamp_micros();
        let (start, end) = window(ts, d.evidence_start.map(|t| t.timestamp_micros()));
        st.ticks
            .evidence(&client, &d.summary.symbol, start, end)
            .await
    }
    .await;
    st.pool.put(client).await;
    Ok(Json(result?).into_response())
}

async fn api_dispositions(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let client = st.pool.get().await.map_err(ReviewError::from)?;
    let result = async {
        // 404 for an unknown alert rather than an empty list.
        query::get_alert(&client, id).await?;
        query::dispositions(&client, id).await
    }
    .await;
    st.pool.put(client).await;
    Ok(Json(result?).into_response())
}

async fn api_post_disposition(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<NewDisposition>, JsonRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    same_origin(&headers)?;
    let Json(new) = body.map_err(|e| ReviewError::BadRequest(e.body_text()))?;
    let client = st.pool.get().await.map_err(ReviewError::from)?;
    let result = query::record_disposition(&client, id, &new).await;
    st.pool.put(client).await;
    Ok((StatusCode::CREATED, Json(result?)).into_response())
}

async fn healthz(State(st): State<AppState>) -> Result<&'static str, ApiError> {
    let client = st.pool.get().await.map_err(ReviewError::from)?;
    let r = client
        .simple_query("SELECT 1")
        .await
        .map_err(ReviewError::query("health check"));
    st.pool.put(client).await;
    r?;
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

    #[test]
    fn foreign_origins_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:8080".parse().unwrap());
        assert!(same_origin(&h).is_ok(), "no Origin: not a browser form");
        h.insert(header::ORIGIN, "http://127.0.0.1:8080".parse().unwrap());
        assert!(same_origin(&h).is_ok());
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(matches!(
            same_origin(&h),
            Err(ReviewError::CrossSite { .. })
        ));
    }
}
