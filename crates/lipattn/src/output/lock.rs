//! `<out>.lock`: one run at a time per output. Created with `create_new`, so two runs cannot both
//! hold it; it records the holder's pid so that the lock of a run that was killed is recognised
//! as stale (its pid no longer runs) and taken over instead of blocking forever.

use super::{io_error, refused, sibling};
use crate::error::Result;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

pub struct Lock {
    path: PathBuf,
}

impl Lock {
    /// Takes the lock of `target`, or fails naming the lock file and the run that holds it.
    pub fn acquire(target: &Path) -> Result<Lock> {
        let path = sibling(target, "", ".lock").ok_or_else(|| {
            refused(
                target,
                ErrorKind::InvalidInput,
                "not a file or directory name to write".into(),
            )
        })?;
        for _ in 0..3 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    writeln!(f, "{}", std::process::id()).map_err(|e| io_error(&path, e))?;
                    return Ok(Lock { path });
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path).unwrap_or_default();
                    match holder.trim().parse::<u32>() {
                        Ok(pid) if pid == std::process::id() => {
                            return Err(refused(
                                target,
                                ErrorKind::InvalidInput,
                                "named twice as an output of this run".into(),
                            ))
                        }
                        Ok(pid) if !running(pid) => {
                            // The holder died without cleaning up: its lock protects nothing.
                            std::fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
                        }
                        // An empty file is a lock being written this very moment.
                        Err(_) if holder.is_empty() => {
                            std::thread::sleep(std::time::Duration::from_millis(50))
                        }
                        _ => {
                            return Err(refused(
                                &path,
                                ErrorKind::WouldBlock,
                                format!(
                                    "another lipattn run (pid {}) is writing {}; wait for it to finish, or delete this lock file if no such run exists",
                                    holder.trim(),
                                    target.display()
                                ),
                            ))
                        }
                    }
                }
                Err(e) => return Err(io_error(&path, e)),
            }
        }
        Err(refused(
            &path,
            ErrorKind::WouldBlock,
            format!("could not take the lock of {}", target.display()),
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether process `pid` still runs. Where /proc is missing the answer is "yes": a lock is then
/// never broken automatically, and the error tells the user how to break it.
fn running(pid: u32) -> bool {
    if !Path::new("/proc/self").exists() {
        return true;
    }
    Path::new(&format!("/proc/{pid}")).exists()
}
