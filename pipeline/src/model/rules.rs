//! Rules: SQL files in `queries/rules/` that score feature rows without a
//! model, beside it and as a baseline to beat.
//!
//! A rule file is one query over the view `features` (the current feature
//! set's snapshot) returning the tick key (`symbol`, `ts`, `seq`), a numeric
//! `score` and a text `reason`. Its header gives the alert threshold:
//!
//! ```sql
//! -- name: zscore_4
//! -- description: |z| of price or volume over 4.
//! -- threshold: 4
//! -- kinds: momentum_ignition
//! SELECT symbol, ts, seq, greatest(abs(price_z_30m), abs(volume_z_30m)) AS score,
//!        'large |z|' AS reason
//! FROM features
//! ```
//!
//! `-- kinds:` (optional) names the manipulation kinds the rule detects: a
//! case it fires in lists them as its likely kinds.
//!
//! A tick the rule does not return, or returns with a NULL score, scores
//! lowest and never alerts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::datasource::MemTable;
use sha2::{Digest, Sha256};

use crate::features::{features_table, Catalog, CatalogError, CatalogErrors, Header};
use crate::lake::schema_session;
use crate::tick::col;

/// The rules built into the binary; `queries/rules/` holds the same files.
const EMBEDDED: &[(&str, &str)] = &[(
    "zscore.sql",
    include_str!("../../../queries/rules/zscore.sql"),
)];

/// Column a rule returns its score in.
pub const SCORE: &str = "score";
/// Column a rule returns its reason in.
pub const REASON: &str = "reason";

/// One rule file.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Where it was read from.
    pub path: PathBuf,
    /// The header's name, or the file stem.
    pub name: String,
    /// The header's description.
    pub description: Option<String>,
    /// The manipulation kinds the header says it detects (`-- kinds:`),
    /// sorted; empty when it does not say.
    pub kinds: Vec<String>,
    /// The query text.
    pub sql: String,
    /// A tick alerts when its score is at least this.
    pub threshold: f64,
    /// SHA-256 of the query text, hex.
    pub hash: String,
}

impl Rule {
    /// The detector version recorded with the rule's scores and alerts:
    /// `rule-<name>-<first 8 hex of the SQL's hash>`, safe as a folder name.
    pub fn version(&self) -> String {
        let name: String = self
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("rule-{name}-{}", &self.hash[..8])
    }
}

/// The validated rule files, in file-name order.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<Rule>,
}

impl RuleSet {
    /// Loads `<queries>/rules/*.sql`, or the built-in rules when `queries`
    /// has no `rules/` folder (a binary run outside a checkout); validates
    /// each against the catalog's feature columns. `Err` lists every
    /// problem found.
    pub async fn load(queries: &Path, catalog: &Catalog) -> Result<Self, CatalogErrors> {
        let dir = queries.join("rules");
        let sources = if dir.is_dir() {
            crate::features::read_sql_folder(&dir, "rule")?
        } else {
            tracing::info!(folder = %dir.display(), "No rules folder; using the built-in rules.");
            EMBEDDED
                .iter()
                .map(|(name, sql)| (Path::new("queries/rules").join(name), (*sql).to_owned()))
                .collect()
        };
        Self::from_sources(sources, catalog).await
    }

    /// Validates rule files given as `(path, sql)`.
    pub async fn from_sources(
        mut sources: Vec<(PathBuf, String)>,
        catalog: &Catalog,
    ) -> Result<Self, CatalogErrors> {
        sources.sort_by(|a, b| a.0.cmp(&b.0));
        let ctx = schema_session();
        let spec = features_table(catalog);
        // Planning only needs the columns: an empty table of the snapshot's
        // schema stands in for the `features` view.
        let empty = MemTable::try_new(Arc::clone(&spec.schema), vec![vec![]])
            .and_then(|t| ctx.register_table("features", Arc::new(t)));
        if let Err(e) = empty {
            return Err(CatalogErrors(vec![CatalogError::new(
                "queries/rules",
                None,
                format!("cannot set up rule validation: {e}"),
            )]));
        }
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        for (path, sql) in sources {
            match check_rule(&ctx, &path, &sql).await {
                Ok(rule) => {
                    if rules.iter().any(|r: &Rule| r.name == rule.name) {
                        errors.push(CatalogError::new(
                            &path,
                            None,
                            format!("a rule named {:?} is already defined", rule.name),
                        ));
                    } else {
                        rules.push(rule);
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(CatalogErrors(errors));
        }
        if rules.is_empty() {
            return Err(CatalogErrors(vec![CatalogError::new(
                "queries/rules",
                None,
                "no .sql rule files",
            )]));
        }
        Ok(RuleSet { rules })
    }

    /// The rules, in file-name order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

async fn check_rule(
    ctx: &datafusion::prelude::SessionContext,
    path: &Path,
    sql: &str,
) -> Result<Rule, CatalogError> {
    let header =
        Header::parse(sql).map_err(|(line, msg)| CatalogError::new(path, Some((line, 1)), msg))?;
    let threshold = header.threshold.ok_or_else(|| {
        CatalogError::new(
            path,
            None,
            "no `-- threshold:` header: say at which score a tick alerts",
        )
    })?;
    let df = ctx
        .sql(sql)
        .await
        .map_err(|e| CatalogError::new(path, None, format!("does not plan: {e}")))?;
    let schema = df.schema();
    let missing: Vec<&str> = [col::SYMBOL, col::TS, col::SEQ, SCORE, REASON]
        .into_iter()
        .filter(|c| schema.field_with_unqualified_name(c).is_err())
        .collect();
    if !missing.is_empty() {
        return Err(CatalogError::new(
            path,
            None,
            format!(
                "a rule returns symbol, ts, seq, score and reason; missing: {}",
                missing.join(", ")
            ),
        ));
    }
    let score_type = schema
        .field_with_unqualified_name(SCORE)
        .map(|f| f.data_type().clone())
        .unwrap_or(DataType::Null);
    if !score_type.is_numeric() {
        return Err(CatalogError::new(
            path,
            None,
            format!("`score` must be numeric, it is {score_type}"),
        ));
    }
    let name = header.name.unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "rule".to_owned())
    });
    let hash = hex(&Sha256::digest(sql.as_bytes()));
    Ok(Rule {
        path: path.to_owned(),
        name,
        description: header.description,
        kinds: header.kinds,
        sql: sql.to_owned(),
        threshold,
        hash,
    })
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn catalog() -> Catalog {
        Catalog::embedded().await.unwrap()
    }

    #[tokio::test]
    async fn the_shipped_rule_validates() {
        let c = catalog().await;
        let set = RuleSet::load(Path::new("/nonexistent"), &c).await.unwrap();
        let r = &set.rules()[0];
        assert_eq!(r.name, "zscore_4");
        assert_eq!(r.threshold, 4.0);
        assert!(r.version().starts_with("rule-zscore_4-"), "{}", r.version());
    }

    #[tokio::test]
    async fn broken_rules_are_named() {
        let c = catalog().await;
        let bad = |name: &str, sql: &str| (PathBuf::from(format!("rules/{name}.sql")), sql.into());
        let err = RuleSet::from_sources(
            vec![
                bad("nothreshold", "SELECT symbol, ts, seq, 1.0 AS score, 'x' AS reason FROM features"),
                bad("noreason", "-- threshold: 1\nSELECT symbol, ts, seq, 1.0 AS score FROM features"),
                bad("textscore", "-- threshold: 1\nSELECT symbol, ts, seq, 'a' AS score, 'x' AS reason FROM features"),
                bad("badcol", "-- threshold: 1\nSELECT symbol, ts, seq, nosuch AS score, 'x' AS reason FROM features"),
                bad("badthreshold", "-- threshold: high\nSELECT 1"),
            ],
            &c,
        )
        .await
        .unwrap_err()
        .to_string();
        for needle in [
            "badcol.sql: does not plan",
            "badthreshold.sql: line 1, column 1: threshold \"high\"",
            "noreason.sql: a rule returns symbol, ts, seq, score and reason; missing: reason",
            "nothreshold.sql: no `-- threshold:` header",
            "textscore.sql: `score` must be numeric",
        ] {
            assert!(err.contains(needle), "{needle:?} not in:\n{err}");
        }
    }
}
