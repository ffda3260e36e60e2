//! The detectors of a run (`score`, `detect`, the benchmarks): a trained
//! model's artifact folder and/or the rule files, loaded and checked
//! against the feature catalog, and what the `models` table records of
//! each.

use std::path::{Path, PathBuf};

use super::error::TrainError;
use super::manifest::MANIFEST_FILE;
use super::rules::RuleSet;
use super::score::{Detector, ModelDetector};
use crate::features::{Catalog, CatalogErrors};

/// Why the detectors could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The folder is not a model artifact.
    #[error("{}: no {MANIFEST_FILE} (is this a folder written by `stockanomaly train`?)", .0.display())]
    NotAnArtifact(PathBuf),
    /// The model could not be loaded, or does not fit the catalog.
    #[error(transparent)]
    Model(#[from] TrainError),
    /// A rule file is broken.
    #[error(transparent)]
    Rules(#[from] CatalogErrors),
}

impl LoadError {
    /// A mistake in what the user gave (a folder, a rule file), not a
    /// failure of the run.
    pub fn is_usage(&self) -> bool {
        match self {
            LoadError::NotAnArtifact(_) | LoadError::Rules(_) => true,
            LoadError::Model(e) => e.is_usage(),
        }
    }
}

/// Refuses a folder without a manifest, before reading anything.
pub fn check_artifact(dir: &Path) -> Result<(), LoadError> {
    if dir.join(MANIFEST_FILE).exists() {
        Ok(())
    } else {
        Err(LoadError::NotAnArtifact(dir.to_owned()))
    }
}

/// The model in `model` (if any), then the rules of `queries/rules/` when
/// `rules` is set (the built-in ones without that folder).
pub async fn load_detectors(
    catalog: &Catalog,
    model: Option<&Path>,
    rules: bool,
    queries: &Path,
) -> Result<Vec<Detector>, LoadError> {
    let mut out = Vec::new();
    if let Some(dir) = model {
        check_artifact(dir)?;
        out.push(Detector::Model(Box::new(ModelDetector::load(
            dir, catalog,
        )?)));
    }
    if rules {
        let set = RuleSet::load(queries, catalog).await?;
        out.extend(set.rules().iter().cloned().map(Detector::Rule));
    }
    Ok(out)
}

impl Detector {
    /// What the `models` table records of this detector: its kind and its
    /// manifest (a rule's name, SQL, threshold and file).
    pub fn registration(&self) -> Result<(&'static str, serde_json::Value), serde_json::Error> {
        Ok(match self {
            Detector::Model(m) => ("model", serde_json::to_value(&m.manifest)?),
            Detector::Rule(r) => (
                "rule",
                serde_json::json!({
                    "name": r.name,
                    "sql": r.sql,
                    "threshold": r.threshold,
                    "path": r.path,
                }),
            ),
        })
    }
}
