//! The fixed-point solvers a dynamics command runs (`invert`, `fixed-point`), their options, and
//! how a solver that fails is reported beside the others: never as a result.

use super::json::to_json as to_value;
use crate::dynamics::{SolveOptions, Solver};
use crate::error::{Error, Result};
use crate::named_enum;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

named_enum! {
    /// Which solvers to run.
    pub enum SolverChoice as "solver" {
        Picard = "picard" | "fixed-point",
        Anderson = "anderson",
        Broyden = "broyden",
        /// Picard, Anderson and Broyden, in that order, on the same problem.
        All = "all",
    }
}

/// The solvers and stopping rule of a dynamics command. `max_iter` counts steps after the
/// start: a solver evaluates the map at most `max_iter + 1` times; its default is the
/// command's (so that a request giving only some of these fields keeps it).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SolverRequest {
    pub solver: SolverChoice,
    /// Stop at residual <= atol...
    pub atol: f64,
    /// ...or at residual <= rtol * size(T x) (0: off).
    pub rtol: f64,
    /// None: the command's default.
    pub max_iter: Option<usize>,
    pub anderson_memory: usize,
    pub anderson_reg: f64,
    pub anderson_mixing: f64,
    /// Broyden: secant updates stored before a restart.
    pub broyden_memory: usize,
}

impl Default for SolverRequest {
    fn default() -> Self {
        let (
            Solver::Anderson {
                memory,
                regularisation,
                mixing,
            },
            Solver::Broyden {
                memory: broyden_memory,
            },
        ) = (Solver::anderson(), Solver::broyden())
        else {
            unreachable!("Solver::anderson and Solver::broyden build their own variants")
        };
        let solve = SolveOptions::default();
        Self {
            solver: SolverChoice::All,
            atol: solve.atol,
            rtol: solve.rtol,
            max_iter: None,
            anderson_memory: memory,
            anderson_reg: regularisation,
            anderson_mixing: mixing,
            broyden_memory,
        }
    }
}

impl SolverRequest {
    /// The solvers to run, in order.
    pub fn solvers(&self) -> Vec<Solver> {
        let anderson = Solver::Anderson {
            memory: self.anderson_memory,
            regularisation: self.anderson_reg,
            mixing: self.anderson_mixing,
        };
        let broyden = Solver::Broyden {
            memory: self.broyden_memory,
        };
        match self.solver {
            SolverChoice::Picard => vec![Solver::Picard],
            SolverChoice::Anderson => vec![anderson],
            SolverChoice::Broyden => vec![broyden],
            SolverChoice::All => vec![Solver::Picard, anderson, broyden],
        }
    }

    /// The one solver of a request that names one (the Python functions return one solver's
    /// result).
    pub fn single(&self) -> Result<Solver> {
        match self.solvers().as_slice() {
            [one] => Ok(one.clone()),
            _ => Err(Error::Option(format!(
                "`solver` '{}' runs several solvers; this call returns one solver's result: name one of 'picard', 'anderson' or 'broyden'",
                self.solver
            ))),
        }
    }

    /// The stopping rule, checked, with `default_max_iter` unless the request sets one.
    pub fn options(&self, default_max_iter: usize) -> Result<SolveOptions> {
        let opts = SolveOptions {
            atol: self.atol,
            rtol: self.rtol,
            max_evals: self.max_iter.unwrap_or(default_max_iter).saturating_add(1),
            ..Default::default()
        };
        opts.check()?;
        Ok(opts)
    }
}

/// One solver's outcome: its result's JSON with `status` "converged", or its failure.
pub enum SolverRun {
    Converged(Value),
    /// Only a solver that did not converge is reported here; any other error ends the command.
    Failed {
        solver: &'static str,
        error: Error,
    },
}

impl SolverRun {
    /// `Converged(value)` with `status` set; a non-convergence becomes `Failed`, any other error
    /// is returned.
    pub fn of<S: Serialize>(solver: &Solver, res: Result<S>) -> Result<Self> {
        match res {
            Ok(s) => {
                let mut v = to_value(&s)?;
                v["status"] = json!("converged");
                Ok(SolverRun::Converged(v))
            }
            Err(error @ Error::NoConvergence { .. }) => Ok(SolverRun::Failed {
                solver: solver.name(),
                error,
            }),
            Err(e) => Err(e),
        }
    }

    pub fn converged(&self) -> bool {
        matches!(self, SolverRun::Converged(_))
    }
}

impl Serialize for SolverRun {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            SolverRun::Converged(v) => v.serialize(s),
            SolverRun::Failed { solver, error } => failure_json(solver, error).serialize(s),
        }
    }
}

fn failure_json(solver: &str, e: &Error) -> Value {
    match e {
        Error::NoConvergence {
            reason,
            steps,
            best_residual,
            best_step,
            residuals,
            ..
        } => json!({
            "solver": solver,
            "status": "no_convergence",
            "reason": reason,
            "steps": steps,
            "lowest_residual": best_residual,
            "lowest_residual_step": best_step,
            "abs_trace": residuals,
        }),
        other => json!({"solver": solver, "status": "error", "reason": other.to_string()}),
    }
}
