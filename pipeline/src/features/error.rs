//! Catalog errors, each naming the file and, where known, the line.

use std::fmt;
use std::path::PathBuf;

/// A problem with one feature file, or with the set of files.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogError {
    /// The file at fault (the folder for set-level problems).
    pub path: PathBuf,
    /// 1-based line and column, when known.
    pub at: Option<(usize, usize)>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl CatalogError {
    pub(crate) fn new(
        path: impl Into<PathBuf>,
        at: Option<(usize, usize)>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            path: path.into(),
            at,
            message: message.into(),
        }
    }
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, col)) => write!(
                f,
                "{}: line {line}, column {col}: {}",
                self.path.display(),
                self.message
            ),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for CatalogError {}

/// Every problem found in a catalog, so that one `features check` run lists
/// them all.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogErrors(pub Vec<CatalogError>);

impl fmt::Display for CatalogErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CatalogErrors {}
