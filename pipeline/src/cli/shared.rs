//! Flags several commands share, declared once and flattened into each
//! (`#[command(flatten)]`), so every `--help` names them alike and every
//! command reads the same environment variable for them; and the old
//! variables they replaced, still read for one release with a warning.

use std::path::PathBuf;

use chrono::NaiveDate;
use clap::Args;

use super::UsageError;
use crate::features::{Catalog, DEFAULT_QUERIES};

/// `--queries DIR`: where the SQL files are.
#[derive(Debug, Clone, Args)]
pub struct QueriesArgs {
    /// Folder of the SQL files: features/*.sql, market/*.sql (the market
    /// context) and rules/*.sql.
    #[arg(long, env = "STOCKANOMALY_QUERIES", default_value = DEFAULT_QUERIES, value_name = "DIR")]
    pub queries: PathBuf,
}

impl QueriesArgs {
    /// The feature catalog of `--queries`: the built-in pack when the
    /// default folder does not exist; a file that does not plan is a usage
    /// error naming it.
    pub async fn catalog(&self) -> Result<Catalog, UsageError> {
        load_catalog(&self.queries).await
    }
}

/// The feature catalog of the folder `dir` (the built-in pack when the
/// default folder does not exist); a file that does not plan is a usage
/// error naming it.
pub async fn load_catalog(dir: &std::path::Path) -> Result<Catalog, UsageError> {
    Catalog::load_or_embedded(dir)
        .await
        .map_err(|e| UsageError(e.to_string()))
}

/// `--from DATE --to DATE`: the dates a command works on.
#[derive(Debug, Clone, Copy, Args)]
pub struct DateRangeArgs {
    /// First date (YYYY-MM-DD; default: the first there is).
    #[arg(long, env = "STOCKANOMALY_FROM", value_name = "DATE")]
    pub from: Option<NaiveDate>,

    /// Last date, inclusive (YYYY-MM-DD; default: the last there is).
    #[arg(long, env = "STOCKANOMALY_TO", value_name = "DATE")]
    pub to: Option<NaiveDate>,
}

impl DateRangeArgs {
    /// Refuses a range whose first date is after its last.
    pub fn check(&self) -> Result<(), UsageError> {
        match (self.from, self.to) {
            (Some(f), Some(t)) if f > t => Err(UsageError(format!("--from {f} is after --to {t}"))),
            _ => Ok(()),
        }
    }
}

/// `--database-url URL`: the PostgreSQL database.
#[derive(Debug, Clone, Args)]
pub struct DbUrlArgs {
    /// PostgreSQL connection URL, postgres://user[:password]@host[:port]/db[?sslmode=...].
    /// Its value is never printed.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: String,
}

/// `--to TARGET --rejects FILE --partitions N`: where `ingest` writes.
#[derive(Debug, Clone, Args)]
pub struct IngestTargetArgs {
    /// Where the ticks go: a lake root (default: --lake),
    /// kafka://BROKERS/TOPIC (JSON ticks keyed by symbol, as `detect`
    /// consumes them), or PostgreSQL's tick store: `postgres` (the database
    /// in DATABASE_URL) or a postgres:// URL (password in PGPASSWORD).
    /// Labels and symbols from files always go to the lake.
    #[arg(long, env = "STOCKANOMALY_INGEST_TO", value_name = "TARGET")]
    pub to: Option<String>,

    /// Write every rejected record here (CSV: origin, line or frame,
    /// reason, detail, record); `ingest csv` writes <FILE>.rejects.csv
    /// without it.
    #[arg(long, env = "STOCKANOMALY_REJECTS", value_name = "FILE")]
    pub rejects: Option<PathBuf>,

    /// Partitions of the Kafka topic when it has to be created.
    #[arg(
        long,
        env = "STOCKANOMALY_KAFKA_PARTITIONS",
        default_value_t = 6,
        value_name = "N"
    )]
    pub partitions: u16,
}

impl IngestTargetArgs {
    /// `--to`, or the command's old variable `old` (read with a warning).
    pub fn to_or_deprecated(&self, old: &str) -> Option<String> {
        self.to
            .clone()
            .or_else(|| deprecated_env(old, "STOCKANOMALY_INGEST_TO"))
    }
}

/// The value of the old variable `old` if set (not empty), with a warning
/// that `new` replaces it: a renamed variable keeps working for one
/// release.
pub fn deprecated_env(old: &str, new: &str) -> Option<String> {
    let value = std::env::var(old).ok().filter(|v| !v.is_empty())?;
    tracing::warn!(
        "{old} is deprecated and will be ignored in the next release: set {new} instead"
    );
    Some(value)
}

/// Warns that `flag` is deprecated in favour of `instead`.
pub fn deprecated_flag(flag: &str, instead: &str) {
    tracing::warn!("{flag} is deprecated and will be removed in the next release: use {instead}");
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::CommandFactory;

    use super::super::Cli;

    /// Per name, the commands using it in each form `K`.
    type Uses<'a, K> = BTreeMap<&'a str, BTreeMap<K, Vec<&'a str>>>;

    /// Every flag of every command: (path, long name, env, value name).
    fn flags() -> Vec<(String, String, Option<String>, Option<String>)> {
        fn walk(
            cmd: &clap::Command,
            path: &str,
            out: &mut Vec<(String, String, Option<String>, Option<String>)>,
        ) {
            for a in cmd.get_arguments() {
                let Some(long) = a.get_long() else { continue };
                let env = a.get_env().map(|e| e.to_string_lossy().into_owned());
                let value = a
                    .get_value_names()
                    .and_then(|v| v.first())
                    .map(|v| v.to_string());
                out.push((path.to_owned(), long.to_owned(), env, value));
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), out);
            }
        }
        let mut out = Vec::new();
        walk(&Cli::command(), "stockanomaly", &mut out);
        out
    }

    /// The shared flags read one variable and name their value alike
    /// wherever they appear, and a variable means one flag: a command
    /// cannot drift from the others unnoticed. (Command-scoped settings,
    /// `--days` of `demo` against `simulate`'s, keep their own variables.)
    #[test]
    fn a_shared_flag_reads_one_variable_wherever_it_appears() {
        let shared = [
            "queries",
            "database-url",
            "from",
            "to",
            "lake",
            "log",
            "kafka-option",
            "partitions",
            "rejects",
            "top-shap",
        ];
        // `ingest history --from/--until` take instants as well as days;
        // `ingest --to` is where ticks go, not a last date.
        let exceptions = [("from", "ingest history"), ("to", "stockanomaly ingest ")];
        let all = flags();
        let mut forms: Uses<(Option<&str>, Option<&str>)> = BTreeMap::new();
        let mut by_env: Uses<(&str, Option<&str>)> = BTreeMap::new();
        for (path, long, env, value) in &all {
            let (env, value) = (env.as_deref(), value.as_deref());
            if let Some(e) = env {
                by_env
                    .entry(e)
                    .or_default()
                    .entry((long, value))
                    .or_default()
                    .push(path);
            }
            let excepted = exceptions
                .iter()
                .any(|(f, p)| f == long && path.contains(p));
            if shared.contains(&long.as_str()) && !excepted {
                forms
                    .entry(long)
                    .or_default()
                    .entry((env, value))
                    .or_default()
                    .push(path);
            }
        }
        let split: Vec<_> = forms.iter().filter(|(_, f)| f.len() > 1).collect();
        assert!(
            split.is_empty(),
            "shared flags declared differently: {split:?}"
        );
        let shared_env: Vec<_> = by_env.iter().filter(|(_, f)| f.len() > 1).collect();
        assert!(
            shared_env.is_empty(),
            "variables read by different flags: {shared_env:?}"
        );
        let uses = |flag: &str| forms[flag].values().map(Vec::len).sum::<usize>();
        for (flag, at_least) in [("queries", 9), ("database-url", 5), ("from", 5)] {
            assert!(
                uses(flag) >= at_least,
                "--{flag} in {} commands",
                uses(flag)
            );
        }
    }
}
