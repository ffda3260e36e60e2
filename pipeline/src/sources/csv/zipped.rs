//! Zipped inputs: NSE publishes its daily files as a zip holding one CSV
//! (`BhavCopy_NSE_CM_0_0_0_20250303_F_0000.csv.zip`), so a zip is read as
//! the CSV inside it.
//!
//! The CSV is inflated into an anonymous temporary file rather than memory:
//! the reader then streams it like any file and memory stays flat whatever
//! the archive's size.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use crate::sources::SourceError;

/// Whether `file` starts with a zip local file header (`PK\x03\x04`); the
/// file is left at its start either way.
pub(crate) fn is_zip(file: &mut File) -> io::Result<bool> {
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match file.read(&mut magic[got..])? {
            0 => break,
            n => got += n,
        }
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(got == 4 && magic == *b"PK\x03\x04")
}

/// Inflates the one `.csv` entry of the archive into a temporary file;
/// returns it rewound, with its size.
pub(crate) fn extract_csv(origin: &str, archive: File) -> Result<(File, u64), SourceError> {
    let format = |reason: String| SourceError::Format {
        origin: origin.to_owned(),
        reason,
    };
    let mut zip = zip::ZipArchive::new(archive)
        .map_err(|e| format(format!("not a readable zip archive: {e}")))?;
    let names: Vec<String> = zip
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|e| format(format!("unreadable file name in the zip archive: {e}")))?;
    let csvs: Vec<&String> = names
        .iter()
        .filter(|n| n.to_ascii_lowercase().ends_with(".csv"))
        .collect();
    let name = match csvs.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(format(format!(
                "the zip archive holds no .csv file (it holds {names:?})"
            )))
        }
        many => {
            return Err(format(format!(
                "the zip archive holds {} .csv files ({many:?}); unzip it and ingest them by name",
                many.len()
            )))
        }
    };
    let io = |source: io::Error| SourceError::Io {
        origin: format!("{origin}: {name}"),
        source,
    };
    let mut entry = zip
        .by_name(&name)
        .map_err(|e| format(format!("cannot read {name:?} in the zip archive: {e}")))?;
    let mut out = tempfile::tempfile().map_err(io)?;
    let len = io::copy(&mut entry, &mut out).map_err(io)?;
    out.seek(SeekFrom::Start(0)).map_err(io)?;
    Ok((out, len))
}
