//! `stockanomaly cluster scheduler`: the list of live executors, over HTTP.
//!
//! `POST /v1/executors` (an [`Announcement`], with `Authorization: Bearer
//! <token>` when the cluster has one) records an executor as alive;
//! `GET /v1/executors` lists those heard from within the time to live, with
//! their task counts (and the time to live, in milliseconds, in the header
//! `x-stockanomaly-executor-ttl-ms`). The coordinator plans each query on that list.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::{Announcement, ClusterError, Members, Token};
use crate::web::{serve, Limits};

/// How a scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// How long an executor stays listed without announcing itself.
    pub ttl: Duration,
    /// Most executors listed at once.
    pub max_executors: usize,
    /// The shared secret announcements must carry.
    pub token: Option<Token>,
}

#[derive(Clone)]
struct Shared {
    members: Arc<Mutex<Members>>,
    token: Option<Token>,
}

/// The scheduler's routes over `members` (its clock is the real one; the
/// expiry itself is tested on [`Members`] with an injected one).
fn router(members: Members, token: Option<Token>) -> Router {
    let shared = Shared {
        members: Arc::new(Mutex::new(members)),
        token,
    };
    Router::new()
        .route("/v1/executors", get(list).post(announce))
        .with_state(shared)
}

async fn list(State(s): State<Shared>) -> Response {
    match s.members.lock() {
        Ok(mut m) => {
            // How long a dead executor stays listed: how long a coordinator
            // waits before it retries work on the executors then listed.
            let ttl = m.ttl().as_millis().to_string();
            ([(super::TTL_HEADER, ttl)], Json(m.live(Instant::now()))).into_response()
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn announce(
    State(s): State<Shared>,
    headers: HeaderMap,
    Json(a): Json<Announcement>,
) -> Response {
    if let Some(token) = &s.token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        if !token.matches(presented) {
            return (StatusCode::UNAUTHORIZED, "the cluster token is required\n").into_response();
        }
    }
    let Ok(mut m) = s.members.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match m.announce(a, Instant::now()) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")).into_response(),
    }
}

/// Limits for the scheduler's port: a few executors and coordinators,
/// small bodies.
fn limits() -> Limits {
    Limits {
        max_connections: 256,
        header_read_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        max_in_flight: 64,
        max_body_bytes: 4096,
    }
}

/// Runs the scheduler until `shutdown` completes.
pub async fn run_scheduler(
    options: SchedulerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ClusterError> {
    if options.token.is_none() {
        tracing::warn!(
            "No cluster token (STOCKANOMALY_CLUSTER_TOKEN): anyone who reaches this port can \
             add executors to the cluster."
        );
    }
    let listen_err = |source| ClusterError::Listen {
        addr: options.listen.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(listen_err)?;
    let bound = listener.local_addr().map_err(listen_err)?;
    tracing::info!(listen = %bound, ttl_s = options.ttl.as_secs_f64(), "Scheduler listening.");
    let members = Members::new(options.ttl, options.max_executors);
    serve(
        listener,
        router(members, options.token),
        &limits(),
        shutdown,
    )
    .await
    .map_err(|e| ClusterError::Serve(e.to_string()))
}
