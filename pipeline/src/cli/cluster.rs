//! `stockanomaly cluster`: the scheduler and executors `backfill --cluster`
//! runs on.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Subcommand};
use url::Url;

use super::{open_lake, UsageError};
use crate::cluster::{
    run_executor, run_scheduler, ExecutorOptions, SchedulerOptions, Token, DEFAULT_TTL,
};
use crate::shutdown::shutdown_signal;

/// `stockanomaly cluster`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
A cluster is one scheduler (the list of live executors) and any number of
executors (datafusion-distributed workers with StockAnomaly's functions).
`backfill --cluster df://SCHEDULER:PORT` has the executors make the context
tables and each run of dates' features, a block of dates or symbols per
executor, in a lake root every executor reads and writes (s3://, or a folder
shared at the same path; each executor's --lake must name it).

Examples:
  stockanomaly cluster scheduler --listen 0.0.0.0:7070
  stockanomaly cluster executor --scheduler df://10.0.0.1:7070 \\
      --listen 0.0.0.0:7071 --advertise http://10.0.0.2:7071 --lake s3://lake
  stockanomaly backfill --lake s3://lake --cluster df://10.0.0.1:7070")]
pub struct ClusterArgs {
    /// The part of the cluster to run.
    #[command(subcommand)]
    pub role: Role,

    /// The cluster's shared secret: tasks and announcements without it are
    /// refused. Set the same on every process.
    #[arg(
        long,
        global = true,
        env = "STOCKANOMALY_CLUSTER_TOKEN",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub cluster_token: Option<String>,
}

/// The parts of a cluster.
#[derive(Debug, Subcommand)]
pub enum Role {
    /// Keep the list of live executors (the address backfill --cluster names).
    Scheduler(SchedulerArgs),
    /// Run the tasks of distributed queries, announced to the scheduler.
    Executor(ExecutorArgs),
}

/// `stockanomaly cluster scheduler`.
#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// Address to listen on.
    #[arg(
        long,
        env = "STOCKANOMALY_SCHEDULER_LISTEN",
        default_value = "127.0.0.1:7070",
        value_name = "HOST:PORT"
    )]
    pub listen: SocketAddr,

    /// Seconds an executor stays listed without announcing itself (they
    /// announce every second).
    #[arg(long, env = "STOCKANOMALY_EXECUTOR_TTL", default_value_t = DEFAULT_TTL.as_secs(), value_name = "SECS")]
    pub executor_ttl: u64,

    /// Most executors listed at once.
    #[arg(
        long,
        env = "STOCKANOMALY_MAX_EXECUTORS",
        default_value_t = 256,
        value_name = "N"
    )]
    pub max_executors: usize,
}

/// `stockanomaly cluster executor`.
#[derive(Debug, Args)]
pub struct ExecutorArgs {
    /// The scheduler (df://HOST:PORT).
    #[arg(long, env = "STOCKANOMALY_SCHEDULER", value_name = "df://HOST:PORT")]
    pub scheduler: String,

    /// Address the worker service listens on.
    #[arg(
        long,
        env = "STOCKANOMALY_EXECUTOR_LISTEN",
        default_value = "127.0.0.1:7071",
        value_name = "HOST:PORT"
    )]
    pub listen: SocketAddr,

    /// Address announced to the scheduler, which coordinators dial
    /// (default: http://<listen>, or http://<host name>:<port> when
    /// listening on 0.0.0.0 or [::], as in a container).
    #[arg(
        long,
        env = "STOCKANOMALY_EXECUTOR_ADVERTISE",
        value_name = "http://HOST:PORT"
    )]
    pub advertise: Option<Url>,

    /// Work partitions run at once (default: the cores).
    #[arg(long, env = "STOCKANOMALY_EXECUTOR_CONCURRENCY", value_name = "N")]
    pub concurrency: Option<usize>,
}

/// Runs a part of the cluster; an executor works on `lake` only (an
/// `s3://` root takes its credentials from the `AWS_*` variables).
pub(crate) async fn run(lake: &str, args: ClusterArgs) -> anyhow::Result<()> {
    let token = args.cluster_token.as_deref().and_then(Token::new);
    match args.role {
        Role::Scheduler(a) => {
            if a.executor_ttl == 0 || a.max_executors == 0 {
                return Err(UsageError(
                    "--executor-ttl and --max-executors must be positive".to_owned(),
                )
                .into());
            }
            let options = SchedulerOptions {
                listen: a.listen,
                ttl: Duration::from_secs(a.executor_ttl),
                max_executors: a.max_executors,
                token,
            };
            Ok(run_scheduler(options, shutdown_signal()).await?)
        }
        Role::Executor(a) => {
            let lake = open_lake(lake)?;
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let options = ExecutorOptions {
                listen: a.listen,
                advertise: a.advertise,
                scheduler: a.scheduler,
                concurrency: a.concurrency.unwrap_or(cores).max(1),
                lake,
                token,
            };
            Ok(run_executor(options, shutdown_signal()).await?)
        }
    }
}
