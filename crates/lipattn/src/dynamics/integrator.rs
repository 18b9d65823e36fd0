//! The time integrators of the flows (docs/dynamics.md#d5): classical RK4 and Dormand-Prince
//! 5(4), fixed step or adaptive with rtol/atol, stepping any velocity field X -> V(X) on n x d
//! states and recording them at the requested times. The flow of measures (`flow`) and the flow
//! of tokens (`token_flow`) differ only in the field they pass.

use super::flow::{FlowOptions, Integrator, Projection, Trajectory};
use crate::error::{Error, Result};
use crate::fmt::compact;
use faer::{Mat, MatRef};

/// Puts every row on the unit sphere; a zero or non-finite row is an error naming it.
pub(crate) fn normalise_rows(x: &mut Mat<f64>) -> Result<()> {
    for i in 0..x.nrows() {
        let r = (0..x.ncols())
            .map(|k| x[(i, k)].powi(2))
            .sum::<f64>()
            .sqrt();
        if !(r > 0.0 && r.is_finite()) {
            return Err(Error::Numerical(format!(
                "token {i} has norm {} and cannot be put on the sphere",
                compact(r)
            )));
        }
        for k in 0..x.ncols() {
            x[(i, k)] /= r;
        }
    }
    Ok(())
}

/// The velocity `v` of a state X read through `projection`: unchanged, or with each row's
/// component along x_i removed (tangential to the sphere). LayerNorm acts on the field's input
/// and is applied by `velocity_of`.
fn tangential(mut v: Mat<f64>, x: MatRef<'_, f64>) -> Mat<f64> {
    for i in 0..x.nrows() {
        let (mut vx, mut xx) = (0.0, 0.0);
        for k in 0..x.ncols() {
            vx += v[(i, k)] * x[(i, k)];
            xx += x[(i, k)] * x[(i, k)];
        }
        let c = vx / xx;
        for k in 0..x.ncols() {
            v[(i, k)] -= c * x[(i, k)];
        }
    }
    v
}

/// The velocity at X of a map `f` of states read through `projection`: f(X), P f(X) on the
/// sphere (P_i = I - x_i x_i^T / |x_i|^2 row by row), or f(LN(X)) (LN without affine parameters).
pub(crate) fn velocity_of(
    f: impl Fn(MatRef<'_, f64>) -> Result<Mat<f64>>,
    x: MatRef<'_, f64>,
    projection: Projection,
) -> Result<Mat<f64>> {
    match projection {
        Projection::None => f(x),
        Projection::LayerNorm { eps } => {
            let z = crate::attention::norms::standardise_rows(x, eps)?;
            f(z.as_ref())
        }
        Projection::Sphere => Ok(tangential(f(x)?, x)),
    }
}

// Dormand-Prince 5(4) tableau.
const C: [f64; 7] = [0.0, 0.2, 0.3, 0.8, 8.0 / 9.0, 1.0, 1.0];
const A: [[f64; 6]; 7] = [
    [0.0; 6],
    [0.2, 0.0, 0.0, 0.0, 0.0, 0.0],
    [3.0 / 40.0, 9.0 / 40.0, 0.0, 0.0, 0.0, 0.0],
    [44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0, 0.0, 0.0, 0.0],
    [
        19372.0 / 6561.0,
        -25360.0 / 2187.0,
        64448.0 / 6561.0,
        -212.0 / 729.0,
        0.0,
        0.0,
    ],
    [
        9017.0 / 3168.0,
        -355.0 / 33.0,
        46732.0 / 5247.0,
        49.0 / 176.0,
        -5103.0 / 18656.0,
        0.0,
    ],
    [
        35.0 / 384.0,
        0.0,
        500.0 / 1113.0,
        125.0 / 192.0,
        -2187.0 / 6784.0,
        11.0 / 84.0,
    ],
];
/// Fifth-order weights minus fourth-order weights (the embedded error estimate).
const E: [f64; 7] = [
    71.0 / 57600.0,
    0.0,
    -71.0 / 16695.0,
    71.0 / 1920.0,
    -17253.0 / 339200.0,
    22.0 / 525.0,
    -1.0 / 40.0,
];

fn lin_comb(x: &Mat<f64>, h: f64, ks: &[&Mat<f64>], coef: &[f64]) -> Mat<f64> {
    let mut out = x.clone();
    for (k, &c) in ks.iter().zip(coef) {
        if c != 0.0 {
            for j in 0..out.ncols() {
                for i in 0..out.nrows() {
                    out[(i, j)] += h * c * k[(i, j)];
                }
            }
        }
    }
    out
}

struct Stepper<'a> {
    field: &'a dyn Fn(MatRef<'_, f64>) -> Result<Mat<f64>>,
    evals: usize,
}

impl Stepper<'_> {
    fn f(&mut self, x: &Mat<f64>) -> Result<Mat<f64>> {
        self.evals += 1;
        (self.field)(x.as_ref())
    }

    fn rk4(&mut self, x: &Mat<f64>, h: f64) -> Result<Mat<f64>> {
        let k1 = self.f(x)?;
        let k2 = self.f(&lin_comb(x, h, &[&k1], &[0.5]))?;
        let k3 = self.f(&lin_comb(x, h, &[&k2], &[0.5]))?;
        let k4 = self.f(&lin_comb(x, h, &[&k3], &[1.0]))?;
        Ok(lin_comb(
            x,
            h,
            &[&k1, &k2, &k3, &k4],
            &[1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0],
        ))
    }

    /// One Dormand-Prince step: (fifth-order solution, embedded error vector, k1 = f(x),
    /// k7 = f(y_new)).
    #[allow(clippy::type_complexity)]
    fn dopri(
        &mut self,
        x: &Mat<f64>,
        h: f64,
        k1: Option<Mat<f64>>,
    ) -> Result<(Mat<f64>, Mat<f64>, Mat<f64>, Mat<f64>)> {
        let mut ks: Vec<Mat<f64>> = Vec::with_capacity(7);
        ks.push(match k1 {
            Some(k) => k,
            None => self.f(x)?,
        });
        for s in 1..6 {
            let refs: Vec<&Mat<f64>> = ks.iter().collect();
            let xs = lin_comb(x, h, &refs, &A[s][..s]);
            debug_assert!(C[s] > 0.0);
            ks.push(self.f(&xs)?);
        }
        let refs: Vec<&Mat<f64>> = ks.iter().collect();
        let y = lin_comb(x, h, &refs, &A[6][..6]);
        let k7 = self.f(&y)?;
        ks.push(k7.clone());
        let zero = Mat::<f64>::zeros(x.nrows(), x.ncols());
        let refs: Vec<&Mat<f64>> = ks.iter().collect();
        let err = lin_comb(&zero, h, &refs, &E);
        let k1 = ks.swap_remove(0);
        Ok((y, err, k1, k7))
    }
}

fn error_norm(err: &Mat<f64>, x: &Mat<f64>, y: &Mat<f64>, rtol: f64, atol: f64) -> f64 {
    let mut s = 0.0;
    for j in 0..err.ncols() {
        for i in 0..err.nrows() {
            let sc = atol + rtol * x[(i, j)].abs().max(y[(i, j)].abs());
            s += (err[(i, j)] / sc).powi(2);
        }
    }
    (s / (err.nrows() * err.ncols()) as f64).sqrt()
}

/// Integrates dX/dt = field(X) from X(0) = `x0` (rows put on the sphere first, and after every
/// step, when projecting on it). The caller checks the tokens against the map it builds the field
/// from (a flow of measures or of tokens).
pub(crate) fn integrate_field(
    field: &dyn Fn(MatRef<'_, f64>) -> Result<Mat<f64>>,
    x0: MatRef<'_, f64>,
    opts: &FlowOptions,
) -> Result<Trajectory> {
    opts.check()?;
    let mut x = x0.to_owned();
    if opts.projection == Projection::Sphere {
        normalise_rows(&mut x)?;
    }
    let mut st = Stepper { field, evals: 0 };
    // Every record keeps an n x d state: count them in f64 before the marks are built (t / record
    // can exceed any integer, and building the marks alone could exhaust memory).
    let records = (opts.t_end / opts.record_every).ceil() + 1.0;
    let (n, d) = (x0.nrows(), x0.ncols());
    crate::budget::check(
        || {
            format!(
                "recording {} states of {n} x {d} tokens (final time / record interval)",
                compact(records)
            )
        },
        if records < 9.0e15 {
            crate::budget::bytes_of(&[records as usize, n.max(1), d.max(1)], 8)
        } else {
            None
        },
    )?;
    let mut marks: Vec<f64> = vec![];
    let mut k = 1usize;
    while (k as f64) * opts.record_every < opts.t_end * (1.0 - 1e-12) {
        marks.push(k as f64 * opts.record_every);
        k += 1;
    }
    marks.push(opts.t_end);
    let mut traj = Trajectory {
        times: vec![0.0],
        states: vec![x.clone()],
        accepted: 0,
        rejected: 0,
        evaluations: 0,
    };
    let mut t = 0.0;
    let mut h = match opts.integrator {
        Integrator::Rk4 { dt } | Integrator::DoPri5Fixed { dt } => dt,
        Integrator::DoPri5 { h0, .. } => h0,
    };
    let mut fsal: Option<Mat<f64>> = None;
    for &mark in &marks {
        if mark <= 0.0 {
            continue;
        }
        while t < mark {
            crate::cancel::check()?;
            if traj.accepted + traj.rejected >= opts.max_steps {
                return Err(Error::Numerical(format!(
                    "flow: step cap of {} reached at t = {}",
                    opts.max_steps,
                    compact(t)
                )));
            }
            let last = mark - t <= h * (1.0 + 1e-9);
            let step = if last { mark - t } else { h };
            match opts.integrator {
                Integrator::Rk4 { .. } => {
                    x = st.rk4(&x, step)?;
                }
                Integrator::DoPri5Fixed { .. } => {
                    x = st.dopri(&x, step, None)?.0;
                }
                Integrator::DoPri5 { rtol, atol, .. } => {
                    let (y, err, k1, k7) = st.dopri(&x, step, fsal.take())?;
                    let e = error_norm(&err, &x, &y, rtol, atol);
                    if !e.is_finite() {
                        return Err(Error::Numerical(format!(
                            "flow: non-finite error estimate at t = {}",
                            compact(t)
                        )));
                    }
                    let factor = if e == 0.0 {
                        5.0
                    } else {
                        (0.9 * e.powf(-0.2)).clamp(0.2, 5.0)
                    };
                    if e > 1.0 {
                        traj.rejected += 1;
                        // x did not move, so its first stage serves the retry.
                        fsal = Some(k1);
                        h = step * factor.min(1.0);
                        if h < 1e-14 * mark.max(1.0) {
                            return Err(Error::Numerical(format!(
                                "flow: step size underflow at t = {}",
                                compact(t)
                            )));
                        }
                        continue;
                    }
                    x = y;
                    // Renormalising moves x, which invalidates k7 as the next first stage.
                    if opts.projection != Projection::Sphere {
                        fsal = Some(k7);
                    }
                    if !last || factor < 1.0 {
                        h = step * factor;
                    }
                }
            }
            if opts.projection == Projection::Sphere {
                normalise_rows(&mut x)?;
            }
            traj.accepted += 1;
            t = if last { mark } else { t + step };
            if x.as_ref()
                .col_iter()
                .any(|c| c.iter().any(|v| !v.is_finite()))
            {
                return Err(Error::Numerical(format!(
                    "flow: non-finite tokens at t = {}",
                    compact(t)
                )));
            }
        }
        traj.times.push(mark);
        traj.states.push(x.clone());
    }
    traj.evaluations = st.evals;
    Ok(traj)
}
