//! Outputs written all at once or not at all (docs/reliability.md#reports-written-atomically).
//!
//! A report directory is staged: [`StagedDir::create`] takes a lock beside the target
//! (`<out>.lock`, holding the pid), creates `<out>.tmp-<pid>` beside it (so an unwritable place
//! fails before any work) and [`StagedDir::commit`] renames it into place, replacing an earlier
//! report whole. A single file is staged the same way as a hidden temporary beside it
//! ([`StagedFile`]). Until the commit, dropping a stage removes what it wrote; a process killed by
//! a signal can call [`remove_staged`] first. A directory that holds files lipattn did not write
//! is never replaced: reports carry a marker file, [`MARKER`], and only an empty directory or one
//! with the marker is taken over.

mod lock;
mod staged;

pub use lock::Lock;
pub use staged::{remove_staged, StagedDir, StagedFile, MARKER};

use crate::error::Error;
use std::path::{Path, PathBuf};

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn refused(path: &Path, kind: std::io::ErrorKind, msg: String) -> Error {
    io_error(path, std::io::Error::new(kind, msg))
}

/// `<target><suffix>` beside the target (same directory, hence same filesystem, so renames are
/// atomic), with an optional leading dot for files.
fn sibling(target: &Path, prefix: &str, suffix: &str) -> Option<PathBuf> {
    let name = target.file_name()?.to_str()?;
    Some(target.with_file_name(format!("{prefix}{name}{suffix}")))
}
