//! Backfill across machines on datafusion-distributed: the scheduler, the
//! executors and the coordinator's session.
//!
//! # Why datafusion-distributed, not Ballista
//!
//! Both run DataFusion 55 plans across processes over Arrow Flight. What
//! decided it is where the plan is made. datafusion-distributed plans in the
//! *coordinator's own* `SessionState` (analyzer, optimizer and physical
//! rules included) and only then cuts the physical plan into stages, so our
//! analyzer rule that puts standard window aggregates on the exact UDFs and
//! our physical rules apply exactly as in a single-node backfill; the
//! workers receive physical plans and need only our functions registered
//! (by name) to decode them. Ballista's scheduler plans again on its side
//! with its own fixed list of physical rules (its adaptive planner, on by
//! default) and may swap join sides back; keeping our rules there means a
//! custom scheduler build and fighting its planner.
//!
//! # What runs on the executors
//!
//! Not the engine's stages over our SQL: the first version ran the feature
//! files joined on the tick key as stages (scans, shuffles by symbol and by
//! key, joins), with the rows coming back to the coordinator to be sorted
//! and written; the executors spent 2.4x the CPU of one process and the
//! coordinator's write bounded the scale-out. Now the work is ours, as plan
//! leaves the engine schedules (the `work` module): the context tables by
//! block of dates, each run of dates' features by block of symbols, each
//! block done by the single-node code and written by the executor. The
//! engine's part is the one it does well here: plans, a task per executor,
//! our codec and leaves, the token on every task.
//!
//! What datafusion-distributed does not have, we add here: it has no
//! scheduler (the coordinator is the client's process and needs a list of
//! workers), so [`run_scheduler`] keeps that list (executors announce
//! themselves every [`HEARTBEAT`] and expire after a time to live); it does
//! not retry a task whose worker died (the query fails), so `backfill
//! --cluster` retries the run of dates on the executors then alive, and the
//! runs already written stay done (markers, as in a resumed backfill); it
//! logs nothing per task, so executors log each task they receive.
//!
//! # Security
//!
//! A worker runs any plan it is sent, and plans read and write the lake.
//! With `STOCKANOMALY_CLUSTER_TOKEN` set on every process, the coordinator
//! sends the token with every task (a gRPC header), executors refuse tasks
//! without it, and the scheduler refuses announcements without it.

mod executor;
mod members;
mod scheduler;
mod work;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::HeaderMap;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_distributed::{DistributedExt, SessionStateBuilderExt, WorkerResolver};
use url::Url;

pub use executor::{run_executor, ExecutorOptions};
pub use members::{Announcement, Member, Members, MembersError};
pub use scheduler::{run_scheduler, SchedulerOptions};
pub use work::context::{make_context, ContextTable};
pub use work::features::features_on_cluster;
use work::WorkCodec;

/// How often executors announce themselves, and the coordinator refreshes
/// its list of them.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long the scheduler lists an executor it has not heard from.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);

/// What an executor answers a task without the token. It crosses the
/// network as text, which is how a coordinator tells it from a failure
/// worth retrying ([`is_refusal`]).
pub const TOKEN_REFUSED: &str =
    "this executor requires the cluster token (STOCKANOMALY_CLUSTER_TOKEN)";

/// Whether an error (as text, which is all that crosses from a worker) is
/// an executor refusing the token: trying again cannot help.
pub fn is_refusal(error: &str) -> bool {
    error.contains(TOKEN_REFUSED)
}

/// The header carrying the cluster token on tasks.
const TOKEN_HEADER: &str = "x-stockanomaly-cluster-token";

/// The header of the scheduler's listing carrying its time to live (ms).
const TTL_HEADER: &str = "x-stockanomaly-executor-ttl-ms";

/// Why the cluster could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A `--cluster` or `--scheduler` value that is not `df://HOST:PORT`.
    #[error("{0}: a cluster is named df://HOST:PORT (the scheduler's address)")]
    BadTarget(String),
    /// An address that does not make a URL.
    #[error("not an address: {0}")]
    BadAddress(String),
    /// The scheduler did not answer, or answered an error.
    #[error("the scheduler at {url}: {reason}")]
    Scheduler {
        /// The scheduler's address.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The scheduler lists no executor.
    #[error("the scheduler at {0} lists no executor: start `stockanomaly cluster executor --scheduler {0}`")]
    NoExecutors(String),
    /// A port could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server stopped with an error.
    #[error("serving failed: {0}")]
    Serve(String),
    /// DataFusion refused the distributed settings.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
}

/// The shared secret of a cluster (see the module documentation).
#[derive(Clone)]
pub struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A token; `None` for an empty one (no token).
    pub fn new(secret: &str) -> Option<Token> {
        (!secret.is_empty()).then(|| Token(Arc::from(secret)))
    }

    /// Whether `presented` is this token (in constant time).
    fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(presented).into()
    }

    /// Whether the task's headers carry this token.
    fn matches_header(&self, headers: &HeaderMap) -> bool {
        headers
            .get(TOKEN_HEADER)
            .is_some_and(|v| self.matches(v.as_bytes()))
    }
}

/// The scheduler's address from `df://HOST:PORT`, as an HTTP base URL.
pub fn scheduler_url(target: &str) -> Result<Url, ClusterError> {
    let rest = target
        .strip_prefix("df://")
        .ok_or_else(|| ClusterError::BadTarget(target.to_owned()))?;
    let url = Url::parse(&format!("http://{}", rest.trim_end_matches('/')))
        .map_err(|_| ClusterError::BadTarget(target.to_owned()))?;
    if url.host_str().is_none() || url.port().is_none() || url.path() != "/" {
        return Err(ClusterError::BadTarget(target.to_owned()));
    }
    Ok(url)
}

/// Talks to the scheduler's HTTP API.
#[derive(Debug, Clone)]
pub struct SchedulerClient {
    base: Url,
    http: reqwest::Client,
    token: Option<Token>,
}

impl SchedulerClient {
    /// A client of the scheduler at `df://HOST:PORT`.
    pub fn new(target: &str, token: Option<Token>) -> Result<Self, ClusterError> {
        let base = scheduler_url(target)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ClusterError::Scheduler {
                url: base.to_string(),
                reason: e.to_string(),
            })?;
        Ok(SchedulerClient { base, http, token })
    }

    /// The scheduler's base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    fn err(&self, reason: impl ToString) -> ClusterError {
        ClusterError::Scheduler {
            url: self.base.to_string(),
            reason: reason.to_string(),
        }
    }

    fn executors_url(&self) -> Result<Url, ClusterError> {
        self.base.join("v1/executors").map_err(|e| self.err(e))
    }

    /// Announces the executor at `url` with its task count.
    pub async fn announce(&self, url: &Url, tasks: u64) -> Result<(), ClusterError> {
        let body = serde_json::to_vec(&Announcement {
            url: url.clone(),
            tasks,
        })
        .map_err(|e| self.err(e))?;
        let mut req = self
            .http
            .post(self.executors_url()?)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(&*t.0);
        }
        let resp = req.send().await.map_err(|e| self.err(e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(self.err(format!("{status}: {body}")));
        }
        Ok(())
    }

    /// The live executors.
    pub async fn members(&self) -> Result<Vec<Member>, ClusterError> {
        Ok(self.listing().await?.0)
    }

    /// The live executors, and how long the scheduler lists an executor it
    /// no longer hears from (when it says).
    pub async fn listing(&self) -> Result<(Vec<Member>, Option<Duration>), ClusterError> {
        let resp = self
            .http
            .get(self.executors_url()?)
            .send()
            .await
            .map_err(|e| self.err(e))?;
        if !resp.status().is_success() {
            return Err(self.err(resp.status()));
        }
        let ttl = resp
            .headers()
            .get(TTL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis);
        let body = resp.bytes().await.map_err(|e| self.err(e))?;
        let members = serde_json::from_slice(&body).map_err(|e| self.err(e))?;
        Ok((members, ttl))
    }
}

/// The executors the coordinator plans on: refreshed from the scheduler in
/// the background (datafusion-distributed asks for them synchronously).
#[derive(Clone, Default)]
struct ExecutorList(Arc<RwLock<Vec<Url>>>);

impl WorkerResolver for ExecutorList {
    fn get_urls(&self) -> Result<Vec<Url>, DataFusionError> {
        let urls = self
            .0
            .read()
            .map_err(|_| DataFusionError::Execution("executor list poisoned".to_owned()))?
            .clone();
        if urls.is_empty() {
            return Err(DataFusionError::Execution(
                "the scheduler lists no executor".to_owned(),
            ));
        }
        Ok(urls)
    }
}

/// A connection to a cluster, for `backfill --cluster`: sessions whose
/// queries run on the executors the scheduler lists.
pub struct Cluster {
    client: SchedulerClient,
    executors: ExecutorList,
    token: Option<Token>,
    /// The scheduler's time to live (ms), as it last said.
    ttl_ms: Arc<std::sync::atomic::AtomicU64>,
    refresh: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("scheduler", &self.client.base.as_str())
            .finish_non_exhaustive()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.refresh.abort();
    }
}

impl Cluster {
    /// Connects to the scheduler at `df://HOST:PORT`; fails when it does not
    /// answer or lists no executor.
    pub async fn connect(target: &str, token: Option<Token>) -> Result<Cluster, ClusterError> {
        let client = SchedulerClient::new(target, token.clone())?;
        let executors = ExecutorList::default();
        let ttl_ms = Arc::new(std::sync::atomic::AtomicU64::new(millis(DEFAULT_TTL)));
        let first = client.listing().await?;
        if first.0.is_empty() {
            return Err(ClusterError::NoExecutors(target.to_owned()));
        }
        set_urls(&executors, &ttl_ms, &first);
        let refresh = tokio::spawn({
            let (client, executors, ttl_ms) = (client.clone(), executors.clone(), ttl_ms.clone());
            async move {
                let mut beat = tokio::time::interval(HEARTBEAT);
                beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    beat.tick().await;
                    match client.listing().await {
                        Ok(m) => set_urls(&executors, &ttl_ms, &m),
                        // The list known stays: the executors may well be
                        // alive while the scheduler is not.
                        Err(e) => tracing::debug!(error = %e, "Executor list not refreshed."),
                    }
                }
            }
        });
        Ok(Cluster {
            client,
            executors,
            token,
            ttl_ms,
            refresh,
        })
    }

    /// The scheduler's client.
    pub fn scheduler(&self) -> &SchedulerClient {
        &self.client
    }

    /// Refreshes the executor list now; the number listed.
    pub async fn refresh(&self) -> Result<usize, ClusterError> {
        let m = self.client.listing().await?;
        set_urls(&self.executors, &self.ttl_ms, &m);
        Ok(m.0.len())
    }

    /// How long to wait after work failed before trying it again: until
    /// the scheduler has dropped an executor that died (its time to live,
    /// as it says, and one announcement more).
    pub fn retry_pause(&self) -> Duration {
        let ttl = self.ttl_ms.load(std::sync::atomic::Ordering::Relaxed);
        Duration::from_millis(ttl) + HEARTBEAT
    }

    /// A session whose work of ours ([`make_context`],
    /// [`features_on_cluster`]) runs on the executors listed, a task per
    /// executor at most; the head stage runs here.
    pub fn session(&self) -> Result<SessionContext, ClusterError> {
        let config = SessionConfig::new().with_information_schema(true);
        let mut builder = SessionStateBuilder::new()
            .with_default_features()
            .with_config(config)
            .with_distributed_worker_resolver(self.executors.clone())
            .with_distributed_planner()
            .with_distributed_user_codec(WorkCodec::default())
            .with_distributed_desired_task_count_handler(work::desired_tasks)
            .with_distributed_scale_up_leaf_node_handler(work::scale_up);
        if let Some(t) = &self.token {
            let mut headers = HeaderMap::new();
            let value = t.0.parse().map_err(|_| {
                ClusterError::BadAddress("the cluster token is not a valid header value".into())
            })?;
            headers.insert(TOKEN_HEADER, value);
            builder = builder.with_distributed_passthrough_headers(headers)?;
        }
        Ok(SessionContext::new_with_state(builder.build()))
    }
}

fn set_urls(
    list: &ExecutorList,
    ttl_ms: &std::sync::atomic::AtomicU64,
    (members, ttl): &(Vec<Member>, Option<Duration>),
) {
    if let Ok(mut urls) = list.0.write() {
        *urls = members.iter().map(|m| m.url.clone()).collect();
    }
    if let Some(ttl) = ttl {
        ttl_ms.store(millis(*ttl), std::sync::atomic::Ordering::Relaxed);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_targets_are_df_host_port() {
        assert_eq!(
            scheduler_url("df://10.0.0.1:7070").unwrap().as_str(),
            "http://10.0.0.1:7070/"
        );
        for bad in ["http://a:1", "df://a", "df://a:1/x", "df://"] {
            assert!(
                matches!(scheduler_url(bad), Err(ClusterError::BadTarget(_))),
                "{bad}"
            );
        }
    }

    /// A coordinator waits out the scheduler's own time to live before it
    /// retries work: the scheduler says it with its listing.
    #[tokio::test]
    async fn the_retry_pause_follows_the_schedulers_ttl() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = listener.local_addr().unwrap();
        drop(listener);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let options = SchedulerOptions {
            listen,
            ttl: Duration::from_millis(7_500),
            max_executors: 4,
            token: None,
        };
        let server = tokio::spawn(run_scheduler(options, async {
            let _ = stopped.await;
        }));
        let target = format!("df://{listen}");
        let client = SchedulerClient::new(&target, None).unwrap();
        let url = Url::parse("http://127.0.0.1:9/").unwrap();
        let mut announced = false;
        for _ in 0..100 {
            if client.announce(&url, 0).await.is_ok() {
                announced = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(announced, "the scheduler never answered");
        let (members, ttl) = client.listing().await.unwrap();
        assert_eq!(members.len(), 1);
        assert_eq!(ttl, Some(Duration::from_millis(7_500)));
        let cluster = Cluster::connect(&target, None).await.unwrap();
        assert_eq!(
            cluster.retry_pause(),
            Duration::from_millis(7_500) + HEARTBEAT
        );
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }

    #[test]
    fn tokens_compare_whole() {
        let t = Token::new("s3cret").unwrap();
        assert!(t.matches(b"s3cret"));
        assert!(!t.matches(b"s3cre"));
        assert!(!t.matches(b"s3cretx"));
        assert!(Token::new("").is_none());
    }
}
