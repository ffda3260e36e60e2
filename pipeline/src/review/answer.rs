//! How a failed request is answered: the error page for pages, `{"error":
//! "..."}` for the API, with the status the error deserves and, for our own
//! failures, a generic message (the details go to the log).

use axum::response::{IntoResponse, Response};
use axum::Json;

use super::pages::error_page;
use super::ReviewError;

/// How a failure is rendered.
pub(crate) trait Answer {
    /// What the log line says failed.
    const WHAT: &'static str;
    /// The response body for `message`.
    fn body(message: String) -> Response;
}

/// Answered with the error page.
pub(crate) struct Page;

impl Answer for Page {
    const WHAT: &'static str = "Review page failed.";
    fn body(message: String) -> Response {
        error_page(&message).into_response()
    }
}

/// Answered with `{"error": "..."}`.
pub(crate) struct Api;

impl Answer for Api {
    const WHAT: &'static str = "Review API request failed.";
    fn body(message: String) -> Response {
        Json(serde_json::json!({ "error": message })).into_response()
    }
}

/// A request's error, answered as `A`.
pub(crate) struct Failure<A>(ReviewError, std::marker::PhantomData<A>);

impl<A> From<ReviewError> for Failure<A> {
    fn from(e: ReviewError) -> Self {
        Self(e, std::marker::PhantomData)
    }
}

impl<A: Answer> IntoResponse for Failure<A> {
    fn into_response(self) -> Response {
        let status = self.0.status();
        if status.is_server_error() {
            tracing::error!(error = %self.0, "{}", A::WHAT);
        } else if matches!(
            self.0,
            ReviewError::CrossSite { .. } | ReviewError::Csrf | ReviewError::UnknownHost { .. }
        ) {
            tracing::warn!(error = %self.0, "Refused a request.");
        }
        let mut resp = (status, A::body(self.0.public_message())).into_response();
        if let Some(secs) = self.0.retry_after() {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

/// A failure answered as a page.
pub(crate) type HtmlError = Failure<Page>;
/// A failure answered as JSON.
pub(crate) type ApiError = Failure<Api>;

/// `e` answered as JSON (`api`) or as a page.
pub(crate) fn failure(api: bool, e: ReviewError) -> Response {
    if api {
        ApiError::from(e).into_response()
    } else {
        HtmlError::from(e).into_response()
    }
}

/// Whether `path` belongs to the JSON API.
pub(crate) fn is_api(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/")
}
