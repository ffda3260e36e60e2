//! Alerts to the lake's `alerts` table (`alerts/model_version=V/date=D/`):
//! the alerting `scores` rows, in the layout `score` writes.
//!
//! Files are content-addressed ([`Appender`]): writing the same rows again
//! adds nothing.

use std::collections::BTreeMap;

use crate::lake::{Appender, AppenderOptions, LakeRoot, TableSpec};
use crate::sinks::{AlertBatch, AlertSink, SinkError, Written};

/// When the lake sink writes its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LakeWrites {
    /// Each batch's alerts as soon as it is written (a streaming detector:
    /// stored before the batch is committed).
    PerBatch,
    /// Everything at [`AlertSink::close`] (a replay: fewer, larger files).
    AtClose,
}

/// Writes alerts to the lake (see the module documentation).
pub struct LakeAlertSink {
    root: LakeRoot,
    writes: LakeWrites,
    /// Open appenders per model version (only with [`LakeWrites::AtClose`]).
    open: BTreeMap<String, Appender>,
}

impl LakeAlertSink {
    /// A sink into `root`'s `alerts` table.
    pub fn new(root: LakeRoot, writes: LakeWrites) -> Self {
        LakeAlertSink {
            root,
            writes,
            open: BTreeMap::new(),
        }
    }

    fn appender(&self, version: &str) -> Appender {
        Appender::new(
            self.root.clone(),
            TableSpec::alerts().sub_table(version),
            AppenderOptions::default(),
        )
    }
}

#[async_trait::async_trait]
impl AlertSink for LakeAlertSink {
    fn name(&self) -> String {
        format!("lake {}/alerts", self.root)
    }

    async fn write(&mut self, batch: &AlertBatch) -> Result<Written, SinkError> {
        let mut rows = 0;
        for (version, scores) in &batch.scores {
            if scores.num_rows() == 0 {
                continue;
            }
            rows += scores.num_rows() as u64;
            match self.writes {
                LakeWrites::PerBatch => {
                    let mut a = self.appender(version);
                    a.append(scores.clone()).await?;
                    a.finish().await?;
                }
                LakeWrites::AtClose => {
                    if !self.open.contains_key(version) {
                        let a = self.appender(version);
                        self.open.insert(version.clone(), a);
                    }
                    if let Some(a) = self.open.get_mut(version) {
                        a.append(scores.clone()).await?;
                    }
                }
            }
        }
        Ok(Written {
            alerts: rows,
            dead_letters: 0,
        })
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        for (_, a) in std::mem::take(&mut self.open) {
            a.finish().await?;
        }
        Ok(())
    }
}
