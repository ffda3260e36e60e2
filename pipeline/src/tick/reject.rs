//! Rejected records: what they were, where they came from, why, and the file
//! they are written to.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use super::{RejectReason, Rejection};

/// A record that did not become a tick, with everything a user needs to find
/// and fix it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    /// Where the record came from: a file name, a topic and partition, a feed.
    pub origin: String,
    /// Line (files) or offset (streams) of the record, 1-based for lines.
    pub line: u64,
    /// Why it was refused.
    pub reason: RejectReason,
    /// What exactly was wrong.
    pub detail: String,
    /// The raw record as read.
    pub record: String,
}

impl Reject {
    /// A reject from a failed validation.
    pub fn new(origin: &str, line: u64, rejection: Rejection, record: String) -> Self {
        Self {
            origin: origin.to_owned(),
            line,
            reason: rejection.reason,
            detail: rejection.detail,
            record,
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: line {}: {}: {} (record: {})",
            self.origin, self.line, self.reason, self.detail, self.record
        )
    }
}

/// Rejects counted by reason.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RejectCounts(BTreeMap<RejectReason, u64>);

impl RejectCounts {
    /// Counts one reject.
    pub fn add(&mut self, reason: RejectReason) {
        *self.0.entry(reason).or_default() += 1;
    }

    /// Adds another set of counts.
    pub fn merge(&mut self, other: &RejectCounts) {
        for (r, n) in &other.0 {
            *self.0.entry(*r).or_default() += n;
        }
    }

    /// All rejects.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Rejects of one reason.
    pub fn get(&self, reason: RejectReason) -> u64 {
        self.0.get(&reason).copied().unwrap_or(0)
    }

    /// `(reason, count)` for every reason seen, in a fixed order.
    pub fn iter(&self) -> impl Iterator<Item = (RejectReason, u64)> + '_ {
        self.0.iter().map(|(r, n)| (*r, *n))
    }
}

impl fmt::Display for RejectCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let parts: Vec<String> = self.iter().map(|(r, n)| format!("{r} {n}")).collect();
        f.write_str(&parts.join(", "))
    }
}

/// Writes rejects as CSV (`origin,line,reason,detail,record`). The file is
/// created on the first reject, so a clean run leaves no empty file behind.
#[derive(Debug)]
pub struct RejectWriter {
    path: PathBuf,
    out: Option<csv::Writer<BufWriter<File>>>,
    counts: RejectCounts,
}

impl RejectWriter {
    /// A writer for `path` (not created until the first reject).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            out: None,
            counts: RejectCounts::default(),
        }
    }

    /// Where rejects go.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rejects written so far, by reason.
    pub fn counts(&self) -> &RejectCounts {
        &self.counts
    }

    /// Appends a reject.
    pub fn write(&mut self, r: &Reject) -> io::Result<()> {
        if self.out.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut w = csv::Writer::from_writer(BufWriter::new(File::create(&self.path)?));
            w.write_record(["origin", "line", "reason", "detail", "record"])?;
            self.out = Some(w);
        }
        if let Some(w) = self.out.as_mut() {
            let line = r.line.to_string();
            w.write_record([
                r.origin.as_str(),
                line.as_str(),
                r.reason.code(),
                r.detail.as_str(),
                r.record.as_str(),
            ])?;
        }
        self.counts.add(r.reason);
        Ok(())
    }

    /// Flushes the file, if any was written.
    pub fn flush(&mut self) -> io::Result<()> {
        match self.out.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}
