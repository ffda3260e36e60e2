//! Signing in and out (`--auth accounts`): the login page, its post (a new
//! session each time, the old one ended), and the sign-out post.

use std::time::Duration;

use axum::extract::rejection::FormRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{AppendHeaders, IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::Deserialize;

use super::answer::failure;
use super::auth::{constant_time_eq, Auth, AuthMode, ClientAddr, Identity, Via, LOGIN_CSRF_COOKIE};
use super::pages::{error_page, login_page};
use super::AppState;
use super::ReviewError;

/// How long a shown login form stays valid.
const LOGIN_FORM_TTL: Duration = Duration::from_secs(30 * 60);

/// `?next=` of the login page.
#[derive(Debug, Deserialize)]
pub(crate) struct LoginQuery {
    #[serde(default)]
    next: Option<String>,
}

/// The login form's fields.
#[derive(Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: String,
}

/// A form carrying only its CSRF token.
#[derive(Debug, Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// Where to go after signing in: a path of this site, else the queue (an
/// absolute or protocol-relative URL would make the login page an open
/// redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.starts_with("/login")
                && n.len() <= 2000
                && !n.contains('\\')
                && !n.chars().any(char::is_control) =>
        {
            n.to_owned()
        }
        _ => "/".to_owned(),
    }
}

/// The answer when sign-in is not this server's business.
fn not_accounts(auth: &Auth) -> Option<Response> {
    match auth.mode {
        AuthMode::Accounts => None,
        AuthMode::None => Some(Redirect::to("/").into_response()),
        AuthMode::TrustedHeader { .. } => Some(
            (
                StatusCode::NOT_FOUND,
                error_page("Sign-in is done by the proxy in front of this server."),
            )
                .into_response(),
        ),
    }
}

/// The login page with its double-submit token, also set in a cookie. The
/// token the browser already holds is kept: a second login page (another
/// tab, or a redirected request for an icon) would otherwise replace the
/// cookie under the first page's form.
fn show_login(
    auth: &Auth,
    headers: &HeaderMap,
    status: StatusCode,
    error: Option<&str>,
    next: &str,
) -> Response {
    let token = super::auth::read_cookie(headers, auth.sessions.cookie.named(LOGIN_CSRF_COOKIE))
        .filter(|t| super::auth::is_token(t))
        .unwrap_or_else(super::auth::new_login_token);
    let cookie = auth.sessions.cookie.header(
        auth.sessions.cookie.named(LOGIN_CSRF_COOKIE),
        &token,
        LOGIN_FORM_TTL,
        "Strict",
    );
    (
        status,
        [
            (header::SET_COOKIE, cookie),
            (header::CACHE_CONTROL, "no-store".parse().expect("static")),
        ],
        login_page(error, &token, next),
    )
        .into_response()
}

/// `GET /login`.
pub(crate) async fn login_form(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    if let Some(r) = not_accounts(&st.auth) {
        return r;
    }
    show_login(
        &st.auth,
        &headers,
        StatusCode::OK,
        None,
        &safe_next(q.next.as_deref()),
    )
}

/// `POST /login` (its origin already checked by the gate).
pub(crate) async fn login(
    State(st): State<AppState>,
    Extension(client): Extension<ClientAddr>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    if let Some(r) = not_accounts(&st.auth) {
        return r;
    }
    let auth = &st.auth;
    let Ok(Form(f)) = form else {
        return show_login(
            auth,
            &headers,
            StatusCode::BAD_REQUEST,
            Some("Fill in the form."),
            "/",
        );
    };
    let next = safe_next(Some(&f.next));
    let cookie = super::auth::read_cookie(&headers, auth.sessions.cookie.named(LOGIN_CSRF_COOKIE));
    if !cookie.is_some_and(|c| !c.is_empty() && constant_time_eq(c.as_bytes(), f.csrf.as_bytes())) {
        tracing::warn!("Refused a sign-in without its form's token.");
        return show_login(
            auth,
            &headers,
            StatusCode::FORBIDDEN,
            Some("The sign-in form expired or did not come from this site: try again."),
            &next,
        );
    }
    let user = match auth
        .check_password(&st.pool, f.name.trim(), f.password, client)
        .await
    {
        Ok(Some(u)) => u,
        Ok(None) => {
            return show_login(
                auth,
                &headers,
                StatusCode::UNAUTHORIZED,
                Some("Wrong user name or password."),
                &next,
            )
        }
        Err(e @ ReviewError::TooManySignIns { .. }) => {
            let mut page = show_login(
                auth,
                &headers,
                StatusCode::TOO_MANY_REQUESTS,
                Some(&format!("Sign-in refused: {}.", e.public_message())),
                &next,
            );
            if let Some(secs) = e.retry_after() {
                page.headers_mut().insert(header::RETRY_AFTER, secs.into());
            }
            return page;
        }
        Err(e) => return failure(false, e),
    };
    let started = async {
        let client = st.pool.get().await?;
        // A new token at every sign-in; a session the browser had before
        // (perhaps planted) ends.
        if let Some(old) = auth.sessions.cookie.read(&headers) {
            auth.sessions.end(&client, &old).await?;
        }
        auth.sessions.start(&client, user.id).await
    }
    .await;
    let token = match started {
        Ok(t) => t,
        Err(e) => return failure(false, e),
    };
    tracing::info!(user = %user.name, role = %user.role, "Signed in.");
    let c = &auth.sessions.cookie;
    (
        AppendHeaders([
            (header::SET_COOKIE, c.set(&token, auth.sessions.policy.ttl)),
            (
                header::SET_COOKIE,
                c.header(c.named(LOGIN_CSRF_COOKIE), "", Duration::ZERO, "Strict"),
            ),
        ]),
        Redirect::to(&next),
    )
        .into_response()
}

/// `POST /logout`: ends the session.
pub(crate) async fn logout(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let csrf = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if !st.auth.csrf_ok(&me, &csrf) {
        return failure(false, ReviewError::Csrf);
    }
    if let Via::Session(token) = &me.via {
        let ended = async {
            let client = st.pool.get().await?;
            st.auth.sessions.end(&client, token).await
        }
        .await;
        if let Err(e) = ended {
            return failure(false, e);
        }
        tracing::info!(user = %me.name, "Signed out.");
    }
    (
        [(header::SET_COOKIE, st.auth.sessions.cookie.clear())],
        Redirect::to("/login"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(safe_next(Some("/alerts/3?x=1")), "/alerts/3?x=1");
        for bad in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "/login?next=/",
            "javascript:alert(1)",
            "",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }
}
