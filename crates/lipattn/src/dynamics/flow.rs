//! Continuous depth: tokens as interacting particles, dx_i/dt = Gamma_{mu_t}(x_i) with mu_t the
//! (weighted) empirical measure of the tokens, optionally projected on the unit sphere
//! (Geshkovski et al.: velocity projected on the tangent space, tokens renormalised after each
//! step) or read through a LayerNorm. Integrators: classical RK4 and Dormand-Prince 5(4), fixed
//! step or adaptive with rtol/atol. Checks: the Gronwall stability bound (docs/dynamics.md#d5),
//! mean-field consistency and clustering.

use super::certify;
use crate::attention::{AttentionLayer, Kernel};
use crate::error::{check_at_least, check_nonnegative, check_positive, check_repeats};
use crate::error::{Error, Result};
use crate::estimation::SplitMix;
use crate::fmt::{compact, exact};
use crate::linalg::rounding::{add_up, div_up, down, exp_up, max_row_norm_up, mul_up};
use crate::measure::Measure;
use faer::{Mat, MatRef};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Projection {
    None,
    /// Tokens on the unit sphere: tangential velocity, renormalisation after each step.
    Sphere,
    /// Velocity Gamma_{LN#mu}(LN(x)), LN without affine parameters.
    LayerNorm {
        eps: f64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Integrator {
    Rk4 {
        dt: f64,
    },
    /// Dormand-Prince's fifth-order solution with a fixed step (for order measurements).
    DoPri5Fixed {
        dt: f64,
    },
    /// Adaptive Dormand-Prince 5(4), error per component against atol + rtol |y|.
    DoPri5 {
        rtol: f64,
        atol: f64,
        h0: f64,
    },
}

#[derive(Clone, Debug, Serialize)]
pub struct FlowOptions {
    pub projection: Projection,
    pub integrator: Integrator,
    pub t_end: f64,
    /// States are recorded at 0, every `record_every`, and t_end (steps are shortened to land on
    /// these times).
    pub record_every: f64,
    /// Step cap (accepted plus rejected).
    pub max_steps: usize,
}

impl FlowOptions {
    fn check(&self) -> Result<()> {
        check_nonnegative("final time", self.t_end)?;
        check_positive("record interval", self.record_every)?;
        match self.integrator {
            Integrator::Rk4 { dt } | Integrator::DoPri5Fixed { dt } => {
                check_positive("time step dt", dt)?;
            }
            Integrator::DoPri5 { rtol, atol, h0 } => {
                check_positive("rtol", rtol)?;
                check_positive("atol", atol)?;
                check_positive("initial step h0", h0)?;
            }
        }
        if let Projection::LayerNorm { eps } = self.projection {
            check_nonnegative("LayerNorm eps", eps)?;
        }
        check_at_least("max_steps", self.max_steps, 1)?;
        // A fixed step plans t / dt steps: more than max_steps is known before the first one.
        if let Integrator::Rk4 { dt } | Integrator::DoPri5Fixed { dt } = self.integrator {
            let planned = (self.t_end / dt).ceil();
            if planned > self.max_steps as f64 {
                return Err(Error::invalid(format!(
                    "final time {} / time step {} = {} steps, above max_steps = {}; raise the time step or max_steps",
                    exact(self.t_end),
                    exact(dt),
                    compact(planned),
                    self.max_steps
                )));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Trajectory {
    pub times: Vec<f64>,
    #[serde(skip)]
    pub states: Vec<Mat<f64>>,
    pub accepted: usize,
    pub rejected: usize,
    pub evaluations: usize,
}

impl Trajectory {
    pub fn last(&self) -> &Mat<f64> {
        self.states
            .last()
            .expect("a trajectory holds its initial state")
    }
}

/// Geshkovski et al.'s layer: Q = K = V = I on R^d with inverse temperature beta, i.e. scores
/// beta <x, y> (dot kernel, one head, no biases).
pub fn identity_layer(d: usize, beta: f64) -> Result<AttentionLayer<f64>> {
    check_at_least("d", d, 1)?;
    check_nonnegative("beta", beta)?;
    crate::budget::check(
        || format!("the identity layer of width d = {d} (its four d x d weight matrices)"),
        crate::budget::bytes_of(&[4, d, d], 8),
    )?;
    let q = (beta * (d as f64).sqrt()).sqrt();
    let eye = |s: f64| Mat::<f64>::from_fn(d, d, |i, j| if i == j { s } else { 0.0 });
    AttentionLayer::new(
        1,
        Kernel::Dot,
        eye(q),
        vec![0.0; d],
        eye(q),
        vec![0.0; d],
        eye(1.0),
        vec![0.0; d],
        eye(1.0),
        vec![0.0; d],
    )
}

fn normalise_rows(x: &mut Mat<f64>) -> Result<()> {
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

/// The velocity field at the tokens X.
pub fn velocity(
    layer: &AttentionLayer<f64>,
    x: MatRef<'_, f64>,
    weights: Option<&[f64]>,
    projection: Projection,
) -> Result<Mat<f64>> {
    match projection {
        Projection::None => layer.forward(x, weights, false),
        Projection::LayerNorm { eps } => {
            let z = crate::attention::norms::standardise_rows(x, eps)?;
            layer.forward(z.as_ref(), weights, false)
        }
        Projection::Sphere => {
            let mut v = layer.forward(x, weights, false)?;
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
            Ok(v)
        }
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
    layer: &'a AttentionLayer<f64>,
    weights: Option<&'a [f64]>,
    projection: Projection,
    evals: usize,
}

impl Stepper<'_> {
    fn f(&mut self, x: &Mat<f64>) -> Result<Mat<f64>> {
        self.evals += 1;
        velocity(self.layer, x.as_ref(), self.weights, self.projection)
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

/// Integrates the particle system from X(0) = `x0` (rows put on the sphere first when
/// projecting on it).
pub fn integrate(
    layer: &AttentionLayer<f64>,
    x0: MatRef<'_, f64>,
    weights: Option<&[f64]>,
    opts: &FlowOptions,
) -> Result<Trajectory> {
    opts.check()?;
    certify::check_square(layer)?;
    crate::attention::forward::check_tokens("initial tokens", x0, layer.d_in())?;
    let mut x = x0.to_owned();
    if opts.projection == Projection::Sphere {
        normalise_rows(&mut x)?;
    }
    let mut st = Stepper {
        layer,
        weights,
        projection: opts.projection,
        evals: 0,
    };
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

/// The Gronwall stability bound of docs/dynamics.md#d5 against measured W1 distances.
#[derive(Clone, Debug, Serialize)]
pub struct GronwallCheck {
    /// Certified L = L_x + L_mu (Theorem D5): W1(mu_t, nu_t) <= e^{L t} W1(mu_0, nu_0).
    pub lipschitz: f64,
    /// The ball every token stays in on [0, T] (Lemma D5a), where L holds.
    pub radius: f64,
    pub times: Vec<f64>,
    /// Exact W1(mu_t, nu_t) between the computed flows.
    pub measured: Vec<f64>,
    pub bound: Vec<f64>,
    /// Whether a measured value exceeded its bound.
    pub violated: bool,
    /// max over t > 0 of ln(W1_t / W1_0) / t: the growth rate actually seen (measured).
    pub measured_rate: f64,
}

/// (L, R): the certified rate and the radius on [0, t_end], or None where Theorem D5 does not
/// apply (LayerNorm, tied L2 kernel).
pub fn gronwall_constant(
    layer: &AttentionLayer<f64>,
    projection: Projection,
    r0: f64,
    t_end: f64,
) -> Result<Option<(f64, f64)>> {
    let (m, b) = certify::row_bound(layer)?;
    match projection {
        Projection::LayerNorm { .. } => Ok(None),
        Projection::Sphere => {
            // Rounded upward (docs/bounds.md#floating-point).
            Ok(certify::velocity_lipschitz(layer, 1.0)?
                .map(|(lx, lmu)| (add_up(add_up(lx, add_up(m, b)), lmu), 1.0)))
        }
        Projection::None => {
            // R(t) = (r0 + b/m) e^{m t} - b/m = r0 e^{m t} + (b/m)(e^{m t} - 1), increasing in
            // r0, b/m, m t: an upper bound with b/m rounded up where it is added and down where
            // it is subtracted.
            let r = if m > 0.0 {
                let grown = mul_up(add_up(r0, div_up(b, m)), exp_up(mul_up(m, t_end)));
                add_up(grown, -down(b / m).max(0.0))
            } else {
                add_up(r0, mul_up(b, t_end))
            };
            if !r.is_finite() {
                return Ok(None);
            }
            Ok(
                certify::velocity_lipschitz(layer, r.max(f64::MIN_POSITIVE))?
                    .map(|(lx, lmu)| (lx + lmu, r)),
            )
        }
    }
}

/// Flows mu_0 and nu_0 with the same integrator and compares exact W1(mu_t, nu_t) with
/// e^{L t} W1(mu_0, nu_0).
pub fn gronwall_check(
    layer: &AttentionLayer<f64>,
    mu0: &Measure,
    nu0: &Measure,
    opts: &FlowOptions,
) -> Result<GronwallCheck> {
    let mut mu_pts = mu0.points().to_owned();
    let mut nu_pts = nu0.points().to_owned();
    if opts.projection == Projection::Sphere {
        normalise_rows(&mut mu_pts)?;
        normalise_rows(&mut nu_pts)?;
    }
    let r0 = max_row_norm_up(mu_pts.as_ref()).max(max_row_norm_up(nu_pts.as_ref()));
    let Some((l, radius)) = gronwall_constant(layer, opts.projection, r0, opts.t_end)? else {
        return Err(Error::invalid("no certified Gronwall constant for this setting (LayerNorm or L2 kernel, or an overflowing radius)"));
    };
    let a = integrate(layer, mu_pts.as_ref(), Some(mu0.weights()), opts)?;
    let b = integrate(layer, nu_pts.as_ref(), Some(nu0.weights()), opts)?;
    let mut measured = vec![];
    let mut bound = vec![];
    let w0 = crate::transport::exact(
        &Measure::new(a.states[0].clone(), mu0.weights().to_vec())?,
        &Measure::new(b.states[0].clone(), nu0.weights().to_vec())?,
        1,
    )?
    .distance;
    for (i, &t) in a.times.iter().enumerate() {
        let w = crate::transport::exact(
            &Measure::new(a.states[i].clone(), mu0.weights().to_vec())?,
            &Measure::new(b.states[i].clone(), nu0.weights().to_vec())?,
            1,
        )?
        .distance;
        measured.push(w);
        bound.push(mul_up(exp_up(mul_up(l, t)), w0));
    }
    let violated = measured.iter().zip(&bound).any(|(m, b)| m > b);
    let measured_rate = a
        .times
        .iter()
        .zip(&measured)
        .filter(|(t, _)| **t > 0.0)
        .map(|(t, w)| (w / w0).ln() / t)
        .fold(f64::NEG_INFINITY, f64::max);
    Ok(GronwallCheck {
        measured_rate,
        lipschitz: l,
        radius,
        times: a.times,
        measured,
        bound,
        violated,
    })
}

/// n points uniform on the unit sphere S^{d-1}.
pub fn sphere_sample(n: usize, d: usize, rng: &mut SplitMix) -> Mat<f64> {
    let mut x: Mat<f64> = rng.gauss_mat(n, d);
    // A Gaussian row is zero with probability 0.
    let _ = normalise_rows(&mut x);
    x
}

#[derive(Clone, Debug, Serialize)]
pub struct MeanField {
    pub ns: Vec<usize>,
    pub reference_n: usize,
    /// Independent samples per n; the W1 values are their means.
    pub replicates: usize,
    /// Exact W1 between the empirical flow of n samples and the reference flow at t_end.
    pub w1_final: Vec<f64>,
    /// The same at t = 0 (sampling error alone).
    pub w1_initial: Vec<f64>,
    /// Fitted slope of log W1 against log n at t_end and at 0 (measured rates).
    pub rate_final: f64,
    pub rate_initial: f64,
}

/// Least-squares slope of log y against log x (NaN without two distinct positive x).
pub fn loglog_slope(x: &[f64], y: &[f64]) -> f64 {
    crate::linalg::loglog(x.iter().copied().zip(y.iter().copied())).map_or(f64::NAN, |f| f.slope)
}

/// Mean-field consistency: `replicates` independent samples of n points uniform on S^{d-1}
/// flowed to t_end, compared in exact W1 with a reference flow of `reference_n` samples.
pub fn mean_field(
    layer: &AttentionLayer<f64>,
    ns: &[usize],
    reference_n: usize,
    replicates: usize,
    opts: &FlowOptions,
    seed: u64,
) -> Result<MeanField> {
    check_at_least("mean field: replicates", replicates, 1)?;
    check_repeats("mean field: replicates", replicates)?;
    if ns.len() < 2 || ns.iter().any(|&n| n == 0 || n >= reference_n) {
        return Err(Error::invalid("mean field: give at least two sample sizes, each positive and below the reference size"));
    }
    let d = layer.d_in();
    // The reference sample is drawn before the flow checks its own sizes.
    crate::budget::check(
        || format!("the mean-field reference of {reference_n} tokens of width {d}"),
        crate::budget::bytes_of(&[reference_n, d], 8),
    )?;
    let mut rng = SplitMix::new(seed);
    let r0 = sphere_sample(reference_n, d, &mut rng);
    let rt = integrate(layer, r0.as_ref(), None, opts)?;
    let reference0 = Measure::uniform(rt.states[0].clone())?;
    let reference = Measure::uniform(rt.last().clone())?;
    let (mut w1_final, mut w1_initial) = (vec![], vec![]);
    for &n in ns {
        let (mut a, mut b) = (0.0, 0.0);
        for _ in 0..replicates {
            let x0 = sphere_sample(n, d, &mut rng);
            let tr = integrate(layer, x0.as_ref(), None, opts)?;
            let m0 = Measure::uniform(tr.states[0].clone())?;
            let mt = Measure::uniform(tr.last().clone())?;
            a += crate::transport::exact(&m0, &reference0, 1)?.distance;
            b += crate::transport::exact(&mt, &reference, 1)?.distance;
        }
        w1_initial.push(a / replicates as f64);
        w1_final.push(b / replicates as f64);
    }
    let nf: Vec<f64> = ns.iter().map(|&n| n as f64).collect();
    Ok(MeanField {
        ns: ns.to_vec(),
        reference_n,
        replicates,
        rate_final: loglog_slope(&nf, &w1_final),
        rate_initial: loglog_slope(&nf, &w1_initial),
        w1_final,
        w1_initial,
    })
}

/// How clustered a set of tokens is.
#[derive(Clone, Debug, Serialize)]
pub struct Clustering {
    /// (1/n^2) sum_{i,j} cos(x_i, x_j): 1 exactly when all tokens point the same way.
    pub mean_cosine: f64,
    /// Connected components of the graph joining tokens with cos >= 1 - `threshold`.
    pub clusters: usize,
    pub threshold: f64,
}

pub fn clustering(x: MatRef<'_, f64>, threshold: f64) -> Clustering {
    let n = x.nrows();
    let unit: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            let r = (0..x.ncols())
                .map(|k| x[(i, k)].powi(2))
                .sum::<f64>()
                .sqrt()
                .max(f64::MIN_POSITIVE);
            (0..x.ncols()).map(|k| x[(i, k)] / r).collect()
        })
        .collect();
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(p: &mut [usize], mut i: usize) -> usize {
        while p[i] != i {
            p[i] = p[p[i]];
            i = p[i];
        }
        i
    }
    let mut total = 0.0;
    for i in 0..n {
        for j in 0..n {
            let c: f64 = unit[i].iter().zip(&unit[j]).map(|(a, b)| a * b).sum();
            total += c;
            if j > i && c >= 1.0 - threshold {
                let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                parent[a] = b;
            }
        }
    }
    let clusters = (0..n).filter(|&i| find(&mut parent, i) == i).count();
    Clustering {
        mean_cosine: total / (n * n).max(1) as f64,
        clusters,
        threshold,
    }
}
