//! `stockanomaly cluster executor`: a datafusion-distributed worker with
//! everything the feature SQL needs, announcing itself to the scheduler.
//!
//! The coordinator (the `backfill --cluster` process) plans in its own
//! session and sends each task a physical plan; the worker decodes it in a
//! session built here, with our functions registered and our codec, which
//! turns our work leaves (the `work` module) back into plans that run in
//! this executor's lake (`--lake`) and no other.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use datafusion::error::DataFusionError;
use datafusion::execution::SessionState;
use datafusion::prelude::SessionContext;
use datafusion_distributed::{DistributedExt, DistributedTaskContext, Worker, WorkerQueryContext};
use url::Url;

use super::{ClusterError, SchedulerClient, Token, WorkCodec, HEARTBEAT};
use crate::lake::LakeRoot;

/// How an executor runs.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// Address the worker service listens on.
    pub listen: SocketAddr,
    /// Address announced to the scheduler (what the coordinator dials):
    /// `http://<listen>` when unset, which only works when `listen` is an
    /// address the coordinator can reach (not `0.0.0.0`).
    pub advertise: Option<Url>,
    /// The scheduler's address (`df://HOST:PORT`).
    pub scheduler: String,
    /// Work partitions run at once (each uses the cores as it can).
    pub concurrency: usize,
    /// The lake this executor works on: work naming another is refused.
    pub lake: LakeRoot,
    /// The shared secret tasks must carry (and the announcements).
    pub token: Option<Token>,
}

/// Builds each task's session: ours, plus the token check and a log line.
#[derive(Clone)]
struct TaskSessions {
    codec: WorkCodec,
    token: Option<Token>,
    tasks: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl datafusion_distributed::WorkerSessionBuilder for TaskSessions {
    async fn build_session_state(
        &self,
        mut ctx: WorkerQueryContext,
    ) -> Result<SessionState, DataFusionError> {
        if let Some(token) = &self.token {
            if !token.matches_header(&ctx.headers) {
                tracing::warn!("Refused a task without the cluster token.");
                return Err(DataFusionError::Execution(super::TOKEN_REFUSED.to_owned()));
            }
        }
        let config = ctx.builder.config().get_or_insert_default();
        let (index, count) = config
            .get_extension::<DistributedTaskContext>()
            .map_or((0, 1), |t| (t.task_index, t.task_count));
        let since_start = self.tasks.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(task = index + 1, of = count, since_start, "Task received.");
        // Our own plan leaves (the context tables) decode with our codec.
        let builder = ctx.builder.with_distributed_user_codec(self.codec.clone());
        let session = SessionContext::new_with_state(builder.build());
        stockanomaly_udfs::register_all(&session);
        Ok(session.state())
    }
}

/// Runs an executor until `shutdown` completes: serves tasks on
/// `options.listen` and announces itself to the scheduler every
/// [`HEARTBEAT`] (a scheduler that does not answer is retried; the worker
/// keeps serving the coordinators that know it).
pub async fn run_executor(
    options: ExecutorOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ClusterError> {
    let scheduler = SchedulerClient::new(&options.scheduler, options.token.clone())?;
    let advertise = match &options.advertise {
        Some(u) => u.clone(),
        None => default_advertise(options.listen)?,
    };
    if options.token.is_none() {
        tracing::warn!(
            "No cluster token (STOCKANOMALY_CLUSTER_TOKEN): anyone who reaches this port can \
             run plans that read and write the lake."
        );
    }
    let tasks = Arc::new(AtomicU64::new(0));
    let sessions = TaskSessions {
        codec: WorkCodec::for_executor(options.lake.clone(), options.concurrency),
        token: options.token.clone(),
        tasks: Arc::clone(&tasks),
    };
    let worker = Worker::from_session_builder(sessions);
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| ClusterError::Listen {
            addr: options.listen.to_string(),
            source,
        })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ClusterError::Listen {
            addr: options.listen.to_string(),
            source,
        })?;
    tracing::info!(listen = %bound, %advertise, scheduler = %options.scheduler, "Executor serving tasks.");
    let announcer = tokio::spawn(announce(scheduler, advertise, tasks));
    let served = tonic::transport::Server::builder()
        .add_service(worker.into_worker_server())
        .serve_with_incoming_shutdown(connections(listener), shutdown)
        .await;
    announcer.abort();
    served.map_err(|e| ClusterError::Serve(e.to_string()))
}

/// `http://<listen>`, or with the host name for a wildcard address (what
/// other containers of a compose network or pods resolve it by).
fn default_advertise(listen: SocketAddr) -> Result<Url, ClusterError> {
    let text = if listen.ip().is_unspecified() {
        let host = host_name().ok_or_else(|| {
            ClusterError::BadAddress(format!(
                "{listen}: no host name to announce; set --advertise http://HOST:PORT"
            ))
        })?;
        format!("http://{host}:{}", listen.port())
    } else {
        format!("http://{listen}")
    };
    Url::parse(&text).map_err(|e| ClusterError::BadAddress(format!("{text}: {e}")))
}

/// This machine's host name: `HOSTNAME` (Docker and Kubernetes set it in
/// every container), else `/etc/hostname`.
fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// The listener's connections as the stream tonic serves.
fn connections(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        loop {
            match l.accept().await {
                Ok((s, _)) => {
                    // Shuffles are many small frames: do not hold them back.
                    let _ = s.set_nodelay(true);
                    return Some((Ok(s), l));
                }
                // Out of descriptors, or a connection reset before it was
                // taken: pause instead of spinning, keep serving.
                Err(e) => {
                    tracing::warn!(error = %e, "Accepting a connection failed; pausing.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

/// Announces the executor every [`HEARTBEAT`], forever; failures are logged
/// once per outage, not once per beat.
async fn announce(scheduler: SchedulerClient, url: Url, tasks: Arc<AtomicU64>) {
    let mut failing = false;
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        beat.tick().await;
        let n = tasks.load(Ordering::Relaxed);
        match scheduler.announce(&url, n).await {
            Ok(()) if failing => {
                tracing::info!(scheduler = %scheduler.base(), "Scheduler reachable again.");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(error = %e, "Cannot announce this executor to the scheduler; retrying.");
                failing = true;
            }
            Err(_) => {}
        }
    }
}
