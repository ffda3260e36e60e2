//! Loading and validating the feature files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use arrow::datatypes::DataType;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use sha2::{Digest, Sha256};

use super::error::CatalogErrors;
use super::header::Header;
use super::lookback::{self, Lookback};
use super::CatalogError;
use crate::lake::schema_session;
use crate::tick::col;

/// Environment variable naming the queries folder.
pub const QUERIES_ENV: &str = "STOCKANOMALY_QUERIES";

/// The queries folder used when none is given.
pub const DEFAULT_QUERIES: &str = "queries";

/// The default feature pack, built into the binary so that it runs from any
/// folder. `queries/features/` in the repository holds the same files.
const EMBEDDED: &[(&str, &str)] = &[
    (
        "returns.sql",
        include_str!("../../../queries/features/returns.sql"),
    ),
    (
        "zscores.sql",
        include_str!("../../../queries/features/zscores.sql"),
    ),
    (
        "bar_quote.sql",
        include_str!("../../../queries/features/bar_quote.sql"),
    ),
    (
        "activity.sql",
        include_str!("../../../queries/features/activity.sql"),
    ),
    (
        "manipulation.sql",
        include_str!("../../../queries/features/manipulation.sql"),
    ),
    (
        "session.sql",
        include_str!("../../../queries/features/session.sql"),
    ),
    (
        "seasonality.sql",
        include_str!("../../../queries/features/seasonality.sql"),
    ),
    (
        "confirm.sql",
        include_str!("../../../queries/features/confirm.sql"),
    ),
    (
        "market.sql",
        include_str!("../../../queries/features/market.sql"),
    ),
];

/// One validated feature file.
#[derive(Debug, Clone)]
pub struct FeatureFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// The header's name, or the file stem.
    pub name: String,
    /// The header's description.
    pub description: Option<String>,
    /// The query text.
    pub sql: String,
    /// Feature columns in output order (the key columns excluded).
    pub features: Vec<String>,
    /// History derived from the plan's windows.
    pub derived_lookback: Lookback,
    /// The header's override, if any.
    pub lookback_override: Option<Lookback>,
    /// Later ticks of the symbol the plan reads (`lead`, `ROWS ... k
    /// FOLLOWING`).
    pub derived_ahead: u64,
    /// The header's `-- delay:` in ticks (0 without one): a tick's features
    /// are final once this many later ticks of its symbol have arrived.
    pub delay: u64,
    /// Whether the query reads the `market` table: its ticks are final
    /// only once their market bucket is closed.
    pub reads_market: bool,
    /// The optimized logical plan (standard window aggregates already on
    /// the exact UDFs): what the streaming executor compiles into per-symbol
    /// state (see [`crate::features::incremental`]).
    pub plan: std::sync::Arc<LogicalPlan>,
}

impl FeatureFile {
    /// The lookback in force: the header's override, else the derived one.
    pub fn lookback(&self) -> Lookback {
        self.lookback_override.unwrap_or(self.derived_lookback)
    }
}

/// The validated set of feature files, in file-name order.
#[derive(Debug, Clone)]
pub struct Catalog {
    files: Vec<FeatureFile>,
    /// The bucket query making the `market` table.
    market_sql: String,
    hash: String,
}

impl Catalog {
    /// Loads `<queries>/features/*.sql`. `Err` lists every problem found.
    /// `<queries>/market/buckets.sql`, when present, replaces the built-in
    /// bucket query of the `market` table.
    pub async fn load(queries: &Path) -> Result<Self, CatalogErrors> {
        let dir = queries.join("features");
        let sources = read_sql_folder(&dir, "feature")?;
        if sources.is_empty() {
            return Err(CatalogErrors(vec![CatalogError::new(
                &dir,
                None,
                "no .sql feature files",
            )]));
        }
        let catalog = Self::from_sources(sources).await?;
        let market = queries.join(MARKET_FILE);
        if !market.exists() {
            return Ok(catalog);
        }
        let sql = std::fs::read_to_string(&market).map_err(|e| {
            CatalogErrors(vec![CatalogError::new(
                &market,
                None,
                format!("cannot read: {e}"),
            )])
        })?;
        catalog.with_market_sql(&market, sql).await
    }

    /// Replaces the bucket query of the `market` table with `sql` (read
    /// from `path`), once it plans and returns the `market` columns.
    pub async fn with_market_sql(
        mut self,
        path: &Path,
        sql: String,
    ) -> Result<Self, CatalogErrors> {
        let ctx = schema_session();
        let err = |at, msg: String| CatalogErrors(vec![CatalogError::new(path, at, msg)]);
        let plan = ctx
            .state()
            .create_logical_plan(&sql)
            .await
            .map_err(|e| err(error_location(&e), clean_message(&e)))?;
        let schema = plan.schema();
        for f in crate::features::market::market_schema().fields() {
            match schema.field_with_unqualified_name(f.name()) {
                Ok(have) if have.data_type() == f.data_type() => {}
                Ok(have) => {
                    return Err(err(
                        locate(&sql, f.name()),
                        format!(
                            "column `{}` is {}, the `market` table needs {}",
                            f.name(),
                            have.data_type(),
                            f.data_type()
                        ),
                    ))
                }
                Err(_) => {
                    return Err(err(
                        None,
                        format!("the bucket query returns no `{}` column", f.name()),
                    ))
                }
            }
        }
        self.market_sql = sql;
        self.hash = hash_of(&self.files, &self.market_sql);
        Ok(self)
    }

    /// The default pack built into the binary.
    pub async fn embedded() -> Result<Self, CatalogErrors> {
        let sources = EMBEDDED
            .iter()
            .map(|(name, sql)| (Path::new("queries/features").join(name), (*sql).to_owned()))
            .collect();
        Self::from_sources(sources).await
    }

    /// Loads `queries` when its `features/` folder exists, else the embedded
    /// pack when `queries` is the default (a binary run outside a checkout).
    pub async fn load_or_embedded(queries: &Path) -> Result<Self, CatalogErrors> {
        if !queries.join("features").exists() && queries == Path::new(DEFAULT_QUERIES) {
            tracing::info!("No queries/features folder here; using the built-in feature pack.");
            return Self::embedded().await;
        }
        Self::load(queries).await
    }

    /// Validates feature files given as `(path, sql)`.
    pub async fn from_sources(mut sources: Vec<(PathBuf, String)>) -> Result<Self, CatalogErrors> {
        sources.sort_by(|a, b| a.0.cmp(&b.0));
        let ctx = schema_session();
        let mut files = Vec::new();
        let mut errors = Vec::new();
        for (path, sql) in sources {
            match check_file(&ctx, &path, &sql).await {
                Ok(f) => files.push(f),
                Err(mut e) => errors.append(&mut e),
            }
        }
        let mut owner: HashMap<&str, &Path> = HashMap::new();
        for f in &files {
            for name in &f.features {
                if let Some(first) = owner.insert(name, &f.path) {
                    errors.push(CatalogError::new(
                        &f.path,
                        locate(&f.sql, name),
                        format!(
                            "feature `{name}` is also defined in {}; feature names must be unique",
                            first.display()
                        ),
                    ));
                }
            }
        }
        if !errors.is_empty() {
            return Err(CatalogErrors(errors));
        }
        let market_sql = crate::features::market::MARKET_SQL.to_owned();
        let hash = hash_of(&files, &market_sql);
        Ok(Self {
            files,
            market_sql,
            hash,
        })
    }

    /// The catalog of the files at positions `keep` only (same bucket
    /// query).
    pub fn subset(&self, keep: &[usize]) -> Catalog {
        let files: Vec<FeatureFile> = self
            .files
            .iter()
            .enumerate()
            .filter(|(i, _)| keep.contains(i))
            .map(|(_, f)| f.clone())
            .collect();
        let hash = hash_of(&files, &self.market_sql);
        Catalog {
            files,
            market_sql: self.market_sql.clone(),
            hash,
        }
    }

    /// The bucket query making the `market` table (see
    /// [`crate::features::market`]).
    pub fn market_sql(&self) -> &str {
        &self.market_sql
    }

    /// Whether any file reads the `market` table: streaming then needs the
    /// market context, and ticks wait for their bucket to close.
    pub fn uses_market(&self) -> bool {
        self.files.iter().any(|f| f.reads_market)
    }

    /// The files, in order.
    pub fn files(&self) -> &[FeatureFile] {
        &self.files
    }

    /// Every feature name, in the order a model is trained on.
    pub fn feature_names(&self) -> Vec<&str> {
        self.files
            .iter()
            .flat_map(|f| f.features.iter().map(String::as_str))
            .collect()
    }

    /// Content hash of the feature set (file names and texts): the name of
    /// its snapshot in the lake, and what a model records.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The history every file needs, together.
    pub fn lookback(&self) -> Lookback {
        self.files
            .iter()
            .fold(Lookback::default(), |a, f| a.max(f.lookback()))
    }

    /// The largest `-- delay:` (ticks): how many later ticks of a symbol
    /// must arrive before a tick's features are final and it is scored.
    pub fn delay(&self) -> u64 {
        self.files.iter().map(|f| f.delay).max().unwrap_or(0)
    }
}

/// Where the bucket query lives in a queries folder.
pub const MARKET_FILE: &str = "market/buckets.sql";

/// Content hash of the files (names and texts) and, when a file reads the
/// market, of the bucket query.
fn hash_of(files: &[FeatureFile], market_sql: &str) -> String {
    let mut h = Sha256::new();
    for f in files {
        h.update(
            f.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        h.update([0]);
        h.update(f.sql.as_bytes());
        h.update([0]);
    }
    // Packs without market features keep the hash they always had.
    if files.iter().any(|f| f.reads_market) {
        h.update(b"market\0");
        h.update(market_sql.as_bytes());
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `plan` scans the table `name`.
fn scans(plan: &LogicalPlan, name: &str) -> bool {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut found = false;
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            if scan.table_name.table() == name {
                found = true;
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

async fn check_file(
    ctx: &SessionContext,
    path: &Path,
    sql: &str,
) -> Result<FeatureFile, Vec<CatalogError>> {
    let err = |at, msg: String| vec![CatalogError::new(path, at, msg)];
    let header = Header::parse(sql).map_err(|(line, m)| err(Some((line, 1)), m))?;
    let plan = ctx.state().create_logical_plan(sql).await.map_err(|e| {
        // sqlparser gives no position for a query that ends too early.
        let at = error_location(&e).or_else(|| {
            e.to_string()
                .contains("found: EOF")
                .then(|| (sql.trim_end().lines().count().max(1), 1))
        });
        err(at, clean_message(&e))
    })?;
    let features = check_schema(&plan).map_err(|m| err(None, m))?;
    // Frames are typed (an '5 minutes' string becomes an interval) and
    // standard window aggregates rewritten to the exact UDFs only by the
    // analyzer, so lookback and drift are judged on the analyzed plan.
    let analyzed = ctx
        .state()
        .optimize(&plan)
        .map_err(|e| err(error_location(&e), clean_message(&e)))?;
    let located = |problems: Vec<lookback::Problem>| {
        problems
            .into_iter()
            .map(|p| CatalogError::new(path, locate(sql, &p.needle), p.message))
            .collect::<Vec<_>>()
    };
    let reach = lookback::derive(&analyzed).map_err(located)?;
    let delay = header.delay.unwrap_or(0);
    if reach.ahead > delay {
        let needle = reach.ahead_needle.unwrap_or("lead");
        let message = if delay == 0 {
            format!(
                "{needle} reads {} later ticks; features may only look back unless the file \
                 declares delayed confirmation (`-- delay: {} ticks`: its ticks are scored once \
                 that many later ticks have arrived)",
                reach.ahead, reach.ahead
            )
        } else {
            format!(
                "{needle} reads {} later ticks, beyond the header's `-- delay: {delay} ticks`",
                reach.ahead
            )
        };
        return Err(vec![CatalogError::new(path, locate(sql, needle), message)]);
    }
    let drift = lookback::drifting(&analyzed);
    if !drift.is_empty() {
        return Err(located(drift));
    }
    Ok(FeatureFile {
        path: path.to_owned(),
        name: header.name.unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        }),
        description: header.description,
        sql: sql.to_owned(),
        features,
        derived_lookback: reach.back,
        lookback_override: header.lookback,
        derived_ahead: reach.ahead,
        delay,
        reads_market: scans(&plan, "market"),
        plan: std::sync::Arc::new(analyzed),
    })
}

/// Checks the key columns and that every other column is numeric; returns
/// the feature names.
fn check_schema(plan: &LogicalPlan) -> Result<Vec<String>, String> {
    let schema = plan.schema();
    let fields = schema.fields();
    for key in [col::SYMBOL, col::TS, col::SEQ] {
        if !fields.iter().any(|f| f.name() == key) {
            return Err(format!(
                "the query does not return the key column `{key}`: select symbol, ts and seq beside the features"
            ));
        }
    }
    let mut features = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for f in fields {
        let name = f.name();
        if !seen.insert(name.clone()) {
            return Err(format!("column `{name}` appears twice in the output"));
        }
        if [col::SYMBOL, col::TS, col::SEQ].contains(&name.as_str()) {
            continue;
        }
        if !(f.data_type().is_numeric() || *f.data_type() == DataType::Boolean) {
            return Err(format!(
                "feature `{name}` is {}; features must be numeric (CAST it, or leave it out)",
                f.data_type()
            ));
        }
        features.push(name.clone());
    }
    if features.is_empty() {
        return Err("the query returns no feature column".into());
    }
    Ok(features)
}

/// Line and column of a DataFusion error: from its diagnostic span, else
/// from sqlparser's "Line: X, Column: Y".
fn error_location(e: &DataFusionError) -> Option<(usize, usize)> {
    if let Some(span) = e.diagnostic().and_then(|d| d.span) {
        return Some((span.start.line as usize, span.start.column as usize));
    }
    let text = e.to_string();
    let at = text.rfind("Line: ")?;
    let rest = &text[at + 6..];
    let line: usize = rest.split(',').next()?.trim().parse().ok()?;
    let col_at = rest.find("Column: ")?;
    let col: usize = rest[col_at + 8..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()?;
    Some((line, col))
}

fn clean_message(e: &DataFusionError) -> String {
    e.to_string()
        .replace("Error during planning: ", "")
        .replace("SQL error: ", "")
}

/// The first place `needle` occurs (case-insensitive) outside comments.
pub(crate) fn locate(sql: &str, needle: &str) -> Option<(usize, usize)> {
    let needle = needle.to_ascii_lowercase();
    for (i, line) in sql.lines().enumerate() {
        let code = line.split("--").next().unwrap_or("");
        if let Some(c) = code.to_ascii_lowercase().find(&needle) {
            return Some((i + 1, c + 1));
        }
    }
    None
}

/// Every `*.sql` file of `dir` as `(path, text)`; `what` names the folder's
/// kind in errors ("feature", "rule"). `Err` lists every unreadable file.
pub(crate) fn read_sql_folder(
    dir: &Path,
    what: &str,
) -> Result<Vec<(PathBuf, String)>, CatalogErrors> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        CatalogErrors(vec![CatalogError::new(
            dir,
            None,
            format!("cannot read the {what} folder: {e}"),
        )])
    })?;
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("sql") {
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(sql) => sources.push((path, sql)),
            Err(e) => errors.push(CatalogError::new(&path, None, format!("cannot read: {e}"))),
        }
    }
    if errors.is_empty() {
        Ok(sources)
    } else {
        Err(CatalogErrors(errors))
    }
}
