//! Continuous depth: tokens as interacting particles, dx_i/dt = Gamma_{mu_t}(x_i) with mu_t the
//! (weighted) empirical measure of the tokens, optionally projected on the unit sphere
//! (Geshkovski et al.: velocity projected on the tangent space, tokens renormalised after each
//! step) or read through a LayerNorm. Integrators: classical RK4 and Dormand-Prince 5(4), fixed
//! step or adaptive with rtol/atol. Checks: the Gronwall stability bound (docs/dynamics.md#d5),
//! mean-field consistency and clustering.

use super::certify;
use super::integrator::{integrate_field, normalise_rows, velocity_of};
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
    pub(crate) fn check(&self) -> Result<()> {
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

/// The velocity field at the tokens X of the flow of measures: Gamma_mu(x_i) with mu the
/// (weighted) empirical measure of the rows, read through `projection`.
pub fn velocity(
    layer: &AttentionLayer<f64>,
    x: MatRef<'_, f64>,
    weights: Option<&[f64]>,
    projection: Projection,
) -> Result<Mat<f64>> {
    velocity_of(|z| layer.forward(z, weights, false), x, projection)
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
    integrate_field(&|x| velocity(layer, x, weights, opts.projection), x0, opts)
}

/// A Gronwall stability bound against the distances measured between two computed flows: W1
/// between measures (docs/dynamics.md#d5) or the Frobenius norm between token matrices
/// (docs/dynamics.md#d6).
#[derive(Clone, Debug, Serialize)]
pub struct GronwallCheck {
    /// "measures" or "tokens": what flows.
    pub space: &'static str,
    /// "w1" (between measures) or "frobenius" (between token matrices).
    pub metric: &'static str,
    /// Certified L: distance_t <= e^{L t} distance_0 for t in [0, T].
    pub lipschitz: f64,
    /// Where L is proven.
    pub lipschitz_source: String,
    /// The ball every token stays in on [0, T] (Lemma D5a), where L holds.
    pub radius: f64,
    pub times: Vec<f64>,
    /// Exact W1(mu_t, nu_t), or |X(t) - Y(t)|_F, between the computed flows.
    pub measured: Vec<f64>,
    pub bound: Vec<f64>,
    /// Whether a measured value exceeded its bound.
    pub violated: bool,
    /// max over t > 0 of ln(D_t / D_0) / t: the growth rate actually seen (measured).
    pub measured_rate: f64,
}

impl GronwallCheck {
    /// The check of the certified rate `lipschitz` against the distances `measured` at `times`
    /// (the first at t = 0): bounds e^{L t} D_0 rounded upward, the violation flag and the
    /// measured rate, the same for both spaces.
    pub(crate) fn of_distances(
        space: &'static str,
        metric: &'static str,
        (lipschitz, radius): (f64, f64),
        lipschitz_source: String,
        times: Vec<f64>,
        measured: Vec<f64>,
    ) -> Self {
        let d0 = measured[0];
        let bound: Vec<f64> = times
            .iter()
            .map(|&t| mul_up(exp_up(mul_up(lipschitz, t)), d0))
            .collect();
        let violated = measured.iter().zip(&bound).any(|(m, b)| m > b);
        let measured_rate = times
            .iter()
            .zip(&measured)
            .filter(|(t, _)| **t > 0.0)
            .map(|(t, w)| (w / d0).ln() / t)
            .fold(f64::NEG_INFINITY, f64::max);
        Self {
            space,
            metric,
            lipschitz,
            lipschitz_source,
            radius,
            times,
            measured,
            bound,
            violated,
            measured_rate,
        }
    }
}

/// An upper bound on max_i |x_i(t)| for t in [0, t_end] when every |x_i(0)| <= r0 and every
/// velocity row obeys |v_i| <= m max_j |x_j| + b (Lemma D5a): (r0 + b/m) e^{m t} - b/m, or
/// r0 + b t when m = 0; rounded upward, infinite when it overflows.
pub(crate) fn radius_at(m: f64, b: f64, r0: f64, t_end: f64) -> f64 {
    // R(t) = r0 e^{m t} + (b/m)(e^{m t} - 1) is increasing in r0, b/m and m t: an upper bound
    // with b/m rounded up where it is added and down where it is subtracted.
    if m > 0.0 {
        let grown = mul_up(add_up(r0, div_up(b, m)), exp_up(mul_up(m, t_end)));
        add_up(grown, -down(b / m).max(0.0))
    } else {
        add_up(r0, mul_up(b, t_end))
    }
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
            let r = radius_at(m, b, r0, t_end);
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
    for i in 0..a.times.len() {
        let w = crate::transport::exact(
            &Measure::new(a.states[i].clone(), mu0.weights().to_vec())?,
            &Measure::new(b.states[i].clone(), nu0.weights().to_vec())?,
            1,
        )?
        .distance;
        measured.push(w);
    }
    Ok(GronwallCheck::of_distances(
        "measures",
        "w1",
        (l, radius),
        "Theorem D5: L_x + L_mu of Lemma D5b at the radius of Lemma D5a (docs/dynamics.md#d5)"
            .into(),
        a.times,
        measured,
    ))
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
