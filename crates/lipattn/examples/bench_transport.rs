//! Times the transport solvers on one instance stored as .npy, for `bench/transport/run.sh`.
//!
//! `bench_transport exact WA.npy WB.npy M.npy REPS` or
//! `bench_transport sinkhorn WA.npy WB.npy M.npy REPS EPS TOL`; prints one JSON object.
//! The cost matrix is read once and not timed, as POT's `ot.emd2(a, b, M)` is given `M`.

use lipattn::transport::{self, CostMatrix, SinkhornOptions};
use std::path::Path;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        return Err(
            "usage: bench_transport exact|sinkhorn WA.npy WB.npy M.npy REPS [EPS TOL]".into(),
        );
    }
    let wa = lipattn::npy::read_vector(Path::new(&args[2]))?;
    let wb = lipattn::npy::read_vector(Path::new(&args[3]))?;
    let m = lipattn::npy::read_matrix(Path::new(&args[4]))?;
    let cost = CostMatrix::from_mat(m.as_ref())?;
    let reps: usize = args[5].parse()?;
    let mut times = Vec::with_capacity(reps);
    let mut out = serde_json::Value::Null;
    for _ in 0..reps {
        let start = Instant::now();
        out = match args[1].as_str() {
            "exact" => {
                let t = transport::exact_with_cost_matrix(&wa, &wb, &cost)?;
                serde_json::json!({"cost": t.cost, "relative_gap": t.relative_gap,
                    "infeasibility": t.infeasibility, "iterations": t.iterations})
            }
            "sinkhorn" => {
                let opts = SinkhornOptions {
                    eps: args[6].parse()?,
                    tol: args[7].parse()?,
                    max_iter: 1_000_000,
                };
                let e = transport::sinkhorn_with_cost(&wa, &wb, &cost, &opts)?;
                serde_json::json!({"cost": e.cost, "marginal_error": e.marginal_error,
                    "iterations": e.iterations, "converged": e.converged})
            }
            other => return Err(format!("unknown solver {other}").into()),
        };
        times.push(start.elapsed().as_secs_f64());
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    out["median"] = sorted[sorted.len() / 2].into();
    out["times"] = times.into();
    println!("{out}");
    Ok(())
}
