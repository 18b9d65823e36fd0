//! Library errors as Python exceptions, and the two ways a computation leaves the GIL.
//!
//! Messages are the library's own `Display` text, so Python users read what the CLI prints after
//! `lipattn: error:` (without the CLI's argument-naming context such as "reading --tokens").

use pyo3::create_exception;
use pyo3::exceptions::{
    PyFileNotFoundError, PyOSError, PyPermissionError, PyRuntimeError, PyValueError,
};
use pyo3::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

create_exception!(
    lipattn,
    NumericalError,
    PyRuntimeError,
    "A computation failed numerically (non-finite iterate, eigensolver failure, overflow)."
);
create_exception!(
    lipattn,
    ModelError,
    PyValueError,
    "A checkpoint is readable but not usable (unsupported architecture, missing tensor)."
);
create_exception!(
    lipattn,
    FormatError,
    PyValueError,
    "A file exists but is malformed (config.json, safetensors, tokenizer.json, .npy)."
);
create_exception!(
    lipattn,
    NoConvergenceError,
    PyRuntimeError,
    "An iterative solver diverged or ran out of steps; never a result. Attributes: solver, reason, steps, best_residual, best_step, residuals."
);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("NumericalError", py.get_type::<NumericalError>())?;
    m.add("ModelError", py.get_type::<ModelError>())?;
    m.add("FormatError", py.get_type::<FormatError>())?;
    m.add("NoConvergenceError", py.get_type::<NoConvergenceError>())?;
    Ok(())
}

/// Bad input is a ValueError, a missing file a FileNotFoundError, a failed computation a
/// RuntimeError (NumericalError); the subclasses let callers catch one kind precisely.
pub fn to_py(e: lipattn::Error) -> PyErr {
    use lipattn::Error as E;
    // Option names are the keyword arguments' names; the backticks are the library's markup.
    let msg = e.to_string().replace('`', "");
    match &e {
        E::NonFinite { .. }
        | E::Shape { .. }
        | E::Empty { .. }
        | E::NegativeWeight { .. }
        | E::NotNormalised { .. }
        | E::Invalid(_) => PyValueError::new_err(msg),
        E::Option(_) => PyValueError::new_err(msg),
        E::Numerical(_) => NumericalError::new_err(msg),
        E::Budget { .. } | E::OutOfMemory { .. } => pyo3::exceptions::PyMemoryError::new_err(msg),
        E::Model(_) => ModelError::new_err(msg),
        E::Format { .. } => FormatError::new_err(msg),
        E::NoConvergence {
            solver,
            reason,
            steps,
            best_residual,
            best_step,
            residuals,
        } => Python::attach(|py| {
            let err = NoConvergenceError::new_err(msg);
            // The diagnosis travels as attributes so callers can plot the failed trace; a
            // failure to set one must not hide the error itself.
            let v = err.value(py);
            let _ = v.setattr("solver", solver);
            let _ = v.setattr("reason", reason);
            let _ = v.setattr("steps", *steps);
            let _ = v.setattr("best_residual", *best_residual);
            let _ = v.setattr("best_step", *best_step);
            let _ = v.setattr("residuals", residuals.clone());
            err
        }),
        // Only an interrupted call raises the flag, and that call has already raised
        // KeyboardInterrupt; this is what a cancelled computation reports if seen at all.
        E::Cancelled => pyo3::exceptions::PyKeyboardInterrupt::new_err(msg),
        E::Io { source, .. } => match source.kind() {
            std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
            std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(msg),
            _ => PyOSError::new_err(msg),
        },
    }
}

pub trait IntoPyResult<T> {
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for lipattn::Result<T> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> PyErr {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".into());
    PyRuntimeError::new_err(format!(
        "internal error in lipattn (a bug: please report it with the input): {what}"
    ))
}

/// Runs a short computation without the GIL. A panic becomes a RuntimeError here rather than
/// pyo3's PanicException, which derives from BaseException and escapes `except Exception`.
pub fn detached<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce() -> lipattn::Result<T> + Send,
{
    py.detach(|| catch_unwind(AssertUnwindSafe(f)))
        .map_err(panic_message)?
        .py_err()
}

/// How often the waiting main thread looks for Ctrl-C.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

type Job = Box<dyn FnOnce() + Send>;

/// Workers waiting for a job. A worker returns here after each job, so calls reuse warm threads
/// (no thread creation, and thread-local scratch of the linear algebra stays allocated); a
/// worker still finishing an abandoned (interrupted) job is simply not here, and a new one is
/// started if none is idle.
static IDLE: Mutex<Vec<mpsc::Sender<Job>>> = Mutex::new(Vec::new());

fn submit(job: Job) -> PyResult<()> {
    let mut job = job;
    loop {
        let idle = IDLE.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            // A send fails only if that worker has exited; try the next one.
            Some(tx) => match tx.send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::SendError(back)) => job = back,
            },
            None => break,
        }
    }
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("lipattn-worker".into())
        .spawn(move || {
            job();
            loop {
                IDLE.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(tx.clone());
                match rx.recv() {
                    Ok(next) => next(),
                    Err(_) => break,
                }
            }
        })
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start a worker thread: {e}")))?;
    Ok(())
}

/// Runs a long computation on a worker thread while the calling thread, without the GIL, polls
/// Python's signal handlers. Ctrl-C raises KeyboardInterrupt at once and raises the
/// computation's cancellation flag (`lipattn::cancel`): the abandoned work stops at its next
/// check, between iterations of its outer loop (Lanczos, power iteration, ascent and its starts,
/// pair search, analysis windows, fixed-point solvers, flow steps, log-determinant probes,
/// Sinkhorn sweeps, network-simplex pivots), and its result is dropped. Work inside one
/// iteration, or in rayon tasks, runs to the end of that iteration first.
pub fn interruptible<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> lipattn::Result<T> + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    let cancel = Arc::new(AtomicBool::new(false));
    let token = cancel.clone();
    submit(Box::new(move || {
        let done = lipattn::cancel::with_token(token, || catch_unwind(AssertUnwindSafe(f)));
        let _ = tx.send(done);
    }))?;
    // Receiver is not Sync, and detach needs a Send closure, hence the (uncontended) lock.
    let rx = Mutex::new(rx);
    loop {
        let waited = py.detach(|| {
            rx.lock()
                .unwrap_or_else(|p| p.into_inner())
                .recv_timeout(SIGNAL_POLL)
        });
        match waited {
            Ok(done) => return done.map_err(panic_message)?.py_err(),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(interrupt) = py.check_signals() {
                    // The worker stops at its next cancellation check (between iterations).
                    cancel.store(true, Ordering::Relaxed);
                    return Err(interrupt);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(PyRuntimeError::new_err(
                    "lipattn worker thread ended without a result",
                ))
            }
        }
    }
}
