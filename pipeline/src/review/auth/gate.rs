//! [`gate`]: the middleware in front of every route but `/healthz`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;

use super::{find_user, Auth, AuthMode, ClientAddr, Identity, Role, Via};
use crate::review::answer::{failure, is_api};
use crate::review::{Pool, ReviewError};

/// What the gate needs.
#[derive(Debug, Clone)]
pub struct GateState {
    /// The server's auth.
    pub auth: Arc<Auth>,
    /// Database connections (sessions, accounts).
    pub pool: Pool,
}

/// Runs before every route but `/healthz` (and `/favicon.ico`, a 404): refuses a foreign `Host`; lets
/// `/login` through; finds the request's [`Identity`] (401 for the API,
/// a redirect to `/login` for pages when there is none; 429 while HTTP
/// Basic credentials' account or address is locked out by the sign-in
/// limit); refuses state-changing requests from other sites (403); and
/// puts the identity and the [`ClientAddr`] in the request's extensions
/// for the handlers.
pub async fn gate(State(st): State<GateState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    // The health check, and the icon browsers ask for on every page (sent
    // to the login page it would be answered with a login form).
    if path == "/healthz" || path == "/favicon.ico" {
        return next.run(req).await;
    }
    let api = is_api(path);
    if let Err(e) = st.auth.site.host_allowed(req.headers()) {
        return failure(api, e);
    }
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD);
    let login = path == "/login";
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_canonical());
    let client = st.auth.client_addr(peer, req.headers());
    req.extensions_mut().insert(client);
    if login {
        if writes {
            if let Err(e) = st.auth.site.check_origin(req.headers(), false) {
                return failure(false, e);
            }
        }
        return next.run(req).await;
    }
    // The request's body is not `Sync`: only its headers cross the awaits.
    let identity = match identify(&st, req.headers(), peer, client, api).await {
        Ok(Some(identity)) => identity,
        Ok(None) => return unauthenticated(&st.auth, api, &req),
        Err(e) => return failure(api, e),
    };
    if writes {
        if let Err(e) = st
            .auth
            .site
            .check_origin(req.headers(), identity.via == Via::Basic)
        {
            return failure(api, e);
        }
    }
    req.extensions_mut().insert(identity);
    next.run(req).await
}

/// The identity behind `req` under the server's mode; `None` when it has
/// none (or wrong credentials).
async fn identify(
    st: &GateState,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    client: ClientAddr,
    api: bool,
) -> Result<Option<Identity>, ReviewError> {
    match &st.auth.mode {
        AuthMode::None => Ok(Some(Identity {
            name: "anonymous".into(),
            role: Role::Admin,
            user_id: None,
            via: Via::Open,
        })),
        AuthMode::TrustedHeader {
            header,
            proxies,
            default_role,
        } => {
            let Some(value) = headers.get(header) else {
                return Ok(None);
            };
            if !peer.is_some_and(|ip| proxies.iter().any(|net| net.contains(&ip))) {
                tracing::warn!(?peer, header = %header,
                    "Ignored a user header from an address that is not a trusted proxy.");
                return Ok(None);
            }
            let name = value.to_str().unwrap_or("").trim();
            if super::check_name(name).is_err() {
                return Err(ReviewError::Unauthenticated(format!(
                    "the proxy's {header} is not a valid user name"
                )));
            }
            let client = st.pool.get().await?;
            match find_user(&client, name).await.map_err(auth_db)? {
                Some(u) if u.disabled => Err(ReviewError::Forbidden(format!(
                    "the account {name} is disabled"
                ))),
                Some(u) => Ok(Some(Identity {
                    name: u.name,
                    role: u.role,
                    user_id: Some(u.id),
                    via: Via::Header,
                })),
                None => Ok(Some(Identity {
                    name: name.to_owned(),
                    role: *default_role,
                    user_id: None,
                    via: Via::Header,
                })),
            }
        }
        AuthMode::Accounts => {
            if let Some(token) = st.auth.sessions.cookie.read(headers) {
                let client = st.pool.get().await?;
                if let Some(identity) = st.auth.sessions.find(&client, &token).await? {
                    return Ok(Some(identity));
                }
            }
            if !api {
                return Ok(None);
            }
            let Some((name, password)) = basic_credentials(headers) else {
                return Ok(None);
            };
            Ok(st
                .auth
                .check_password(&st.pool, &name, password, client)
                .await?
                .map(|u| Identity {
                    name: u.name,
                    role: u.role,
                    user_id: Some(u.id),
                    via: Via::Basic,
                }))
        }
    }
}

/// An account store error as a review error (the details stay in the log).
pub(crate) fn auth_db(e: super::AuthError) -> ReviewError {
    match e {
        super::AuthError::Db(e) => ReviewError::Db(e),
        other => {
            tracing::error!(error = %other, "Reading review accounts failed.");
            ReviewError::Busy
        }
    }
}

/// `user:password` of an `Authorization: Basic` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") || b64.len() > 4096 {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// The answer to a request without an identity: 401 for the API (with a
/// Basic challenge under accounts), the login page for pages under
/// accounts, 401 otherwise.
fn unauthenticated(auth: &Auth, api: bool, req: &Request) -> Response {
    let accounts = auth.mode == AuthMode::Accounts;
    if !api && accounts {
        let next = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let mut to = String::from("/login");
        if *req.method() == Method::GET && next != "/" {
            to.push_str("?next=");
            to.push_str(&url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>());
        }
        return Redirect::to(&to).into_response();
    }
    let why = match &auth.mode {
        AuthMode::Accounts => "use a session (sign in at /login) or HTTP Basic credentials",
        AuthMode::TrustedHeader { .. } => "come through the sign-in proxy",
        AuthMode::None => "no authentication needed",
    };
    let mut resp = failure(api, ReviewError::Unauthenticated(why.into()));
    if api && accounts {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"StockAnomaly review\", charset=\"UTF-8\""),
        );
    }
    debug_assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_decoded() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            "Basic YW5hOnMzY3I6ZXQ=".parse().unwrap(),
        );
        assert_eq!(
            basic_credentials(&h),
            Some(("ana".into(), "s3cr:et".into()))
        );
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(basic_credentials(&h), None);
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(basic_credentials(&h), None);
    }
}
