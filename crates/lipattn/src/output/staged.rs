//! The staging of one output directory or file; see the module documentation.

use super::{io_error, refused, sibling, Lock};
use crate::error::Result;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The file that marks a directory as a lipattn report, which a later run may replace whole.
pub const MARKER: &str = ".lipattn-output";

/// Temporaries and locks of this process not yet committed or released.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static SERIAL: AtomicUsize = AtomicUsize::new(0);

fn live() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

fn register(p: &Path) {
    live().push(p.to_path_buf());
}

fn unregister(p: &Path) {
    live().retain(|q| q != p);
}

/// Removes every temporary and lock of this process: for a process about to die of a signal,
/// where no destructor will run.
pub fn remove_staged() {
    for p in live().drain(..) {
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
}

/// A report directory written in full under a temporary name, then renamed into place.
pub struct StagedDir {
    target: PathBuf,
    tmp: PathBuf,
    lock: Lock,
    committed: bool,
}

impl StagedDir {
    /// Locks `target`, checks that it may be replaced, and creates the empty temporary beside it
    /// (parents are created as needed).
    pub fn create(target: &Path) -> Result<Self> {
        check_replaceable(target)?;
        if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
        }
        let lock = Lock::acquire(target)?;
        register(lock.path());
        remove_stale(target);
        let tmp = sibling(target, "", &format!(".tmp-{}", std::process::id()))
            .expect("Lock::acquire checked the name");
        std::fs::create_dir(&tmp).map_err(|e| io_error(&tmp, e))?;
        let staged = StagedDir {
            target: target.to_path_buf(),
            tmp,
            lock,
            committed: false,
        };
        register(&staged.tmp);
        let marker = staged.tmp.join(MARKER);
        std::fs::write(
            &marker,
            "written by lipattn; a later run may replace this directory whole\n",
        )
        .map_err(|e| io_error(&marker, e))?;
        Ok(staged)
    }

    /// Where to write the report's files.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Puts the report in place of `target` (an earlier report is removed).
    pub fn commit(mut self) -> Result<()> {
        check_replaceable(&self.target)?;
        let had = std::fs::symlink_metadata(&self.target).is_ok();
        let old = sibling(&self.target, "", &format!(".old-{}", std::process::id()))
            .expect("Lock::acquire checked the name");
        if had {
            std::fs::rename(&self.target, &old).map_err(|e| io_error(&self.target, e))?;
        }
        if let Err(e) = std::fs::rename(&self.tmp, &self.target) {
            if had {
                let _ = std::fs::rename(&old, &self.target);
            }
            return Err(io_error(&self.target, e));
        }
        self.committed = true;
        if had {
            // The new report is in place; an old one that cannot be removed is only litter, and
            // the next run into this target removes it (`remove_stale`).
            let _ = std::fs::remove_dir_all(&old);
        }
        Ok(())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
        unregister(&self.tmp);
        unregister(self.lock.path());
    }
}

/// Only a missing directory, an empty one or an earlier report may be replaced: never a file,
/// a link, or a directory of the user's own files.
fn check_replaceable(target: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(target) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(target, e)),
        Ok(m) => m,
    };
    let refuse = |msg: &str| Err(refused(target, ErrorKind::AlreadyExists, msg.into()));
    if meta.file_type().is_symlink() {
        return refuse("is a symbolic link; name the report directory itself");
    }
    if !meta.is_dir() {
        return refuse("exists and is not a directory");
    }
    let mut entries = std::fs::read_dir(target).map_err(|e| io_error(target, e))?;
    let empty = entries.next().is_none();
    if empty || target.join(MARKER).is_file() {
        Ok(())
    } else {
        refuse(&format!(
            "exists and holds files lipattn did not write (no {MARKER}); the report replaces its directory whole, so name a new or empty directory"
        ))
    }
}

/// Temporaries and replaced reports of runs into `target` that died before cleaning up. Called
/// with the lock held, so no live run owns them.
fn remove_stale(target: &Path) {
    let (Some(name), Some(dir)) = (target.file_name().and_then(|n| n.to_str()), target.parent())
    else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(name)) else {
            continue;
        };
        let pid = rest
            .strip_prefix(".tmp-")
            .or_else(|| rest.strip_prefix(".old-"));
        if pid.is_some_and(|p| p.parse::<u32>().is_ok()) && entry.path().is_dir() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// One output file written under a hidden temporary name beside it, then renamed into place.
pub struct StagedFile {
    target: PathBuf,
    tmp: PathBuf,
    committed: bool,
}

impl StagedFile {
    /// Creates the empty temporary, so an unwritable place fails before any work.
    pub fn create(target: &Path) -> Result<Self> {
        if target.is_dir() {
            return Err(refused(
                target,
                ErrorKind::AlreadyExists,
                "is a directory; name a file to write".into(),
            ));
        }
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        let tmp = sibling(
            target,
            ".",
            &format!(".tmp-{}-{serial}", std::process::id()),
        )
        .ok_or_else(|| {
            refused(
                target,
                ErrorKind::InvalidInput,
                "not a file name to write".into(),
            )
        })?;
        std::fs::File::create(&tmp).map_err(|e| io_error(target, e))?;
        register(&tmp);
        Ok(StagedFile {
            target: target.to_path_buf(),
            tmp,
            committed: false,
        })
    }

    /// Where to write the file's content.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.target).map_err(|e| io_error(&self.target, e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
        unregister(&self.tmp);
    }
}
