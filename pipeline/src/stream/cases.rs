//! Cases in streaming: the executor stage's alerts grouped into cases as
//! batch `score` groups them ([`CaseTracker`], fed the same `scores` rows in
//! the same per-symbol order), each batch's changed cases stored with its
//! alerts and offsets, and the open cases of a partition taken back from
//! the [`CaseStore`] before any of its ticks is fed, so a restart or a
//! rebalance continues every case exactly where the last commit left it.

use std::collections::BTreeSet;

use crate::model::cases::{Case, CaseLabels, CaseTracker};
use crate::model::Detector;
use crate::sinks::{CaseStore, CaseUpdate};

use super::driver::DriverError;
use super::executor::Step;

/// One stage's cases (see the module documentation).
pub struct StreamCases {
    tracker: CaseTracker,
    /// The model's version: the cases' key with their ids.
    version: String,
    /// Per detector of the executor, whether it is the model.
    is_model: Vec<bool>,
    /// The detectors' names and kinds in a case's lists.
    labels: CaseLabels,
    /// The topic (the cases' `source`).
    source: String,
    store: Option<Box<dyn CaseStore>>,
    /// Partitions whose open cases were taken back.
    restored: BTreeSet<i32>,
    /// Cases that ended since the last [`StreamCases::take_updates`].
    closed: Vec<Case>,
    /// Symbols whose open case took an alert since then.
    touched: Vec<String>,
}

impl StreamCases {
    /// Cases of the model among `detectors` (`None` without a model: rules
    /// alone have no case rule), read from `source`, restored from `store`.
    pub fn new(
        detectors: &[Detector],
        source: &str,
        store: Option<Box<dyn CaseStore>>,
    ) -> Option<Self> {
        let model = detectors.iter().find_map(|d| match d {
            Detector::Model(m) => Some(m),
            Detector::Rule(_) => None,
        })?;
        Some(StreamCases {
            tracker: CaseTracker::new(model.manifest.case_rule()),
            version: model.version.clone(),
            is_model: detectors
                .iter()
                .map(|d| matches!(d, Detector::Model(_)))
                .collect(),
            labels: Detector::case_labels(detectors),
            source: source.to_owned(),
            store,
            restored: BTreeSet::new(),
            closed: Vec::new(),
            touched: Vec::new(),
        })
    }

    /// Takes back the open cases of the `partitions` not taken yet.
    pub async fn restore(
        &mut self,
        partitions: impl IntoIterator<Item = i32>,
    ) -> Result<(), DriverError> {
        let new: Vec<i32> = partitions
            .into_iter()
            .filter(|p| !self.restored.contains(p))
            .collect::<BTreeSet<i32>>()
            .into_iter()
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        if let Some(store) = &mut self.store {
            let cases = store.load(&self.version, &self.source, &new).await?;
            if !cases.is_empty() {
                tracing::info!(
                    partitions = ?new,
                    cases = cases.len(),
                    "Open cases taken back."
                );
            }
            for c in cases {
                self.tracker.restore(c);
            }
        }
        self.restored.extend(new);
        Ok(())
    }

    /// Takes one step's scored ticks.
    pub fn feed(&mut self, step: &Step) -> Result<(), DriverError> {
        if step.scores.is_empty() {
            return Ok(());
        }
        self.tracker
            .feed_scores(
                &self.is_model,
                &step.scores,
                Some(&step.sources),
                &mut self.closed,
                &mut self.touched,
            )
            .map_err(|e| DriverError::Executor(e.into()))
    }

    /// The cases changed since the last call, as they stand now: those
    /// that ended, then the open cases that took alerts.
    pub fn take_updates(&mut self) -> Vec<CaseUpdate> {
        let mut symbols = std::mem::take(&mut self.touched);
        symbols.sort();
        symbols.dedup();
        let closed = std::mem::take(&mut self.closed);
        let open = symbols
            .iter()
            .filter_map(|s| self.tracker.open_case(s).cloned());
        closed
            .into_iter()
            .chain(open)
            .map(|case| CaseUpdate {
                version: self.version.clone(),
                source: self.source.clone(),
                detectors: self.labels.detectors(case.detectors),
                likely_kinds: self.labels.likely_kinds(case.detectors),
                case,
            })
            .collect()
    }

    /// Drops the open cases of `partitions` (their next owner takes them
    /// back from the store).
    pub fn forget(&mut self, partitions: &[i32]) {
        self.tracker.forget_partitions(partitions);
        for p in partitions {
            self.restored.remove(p);
        }
    }
}
