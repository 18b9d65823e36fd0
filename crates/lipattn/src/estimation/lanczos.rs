//! The local constant ||J(X)||_2 (Frobenius to Frobenius) of the token map X -> f(X): Lanczos on
//! J^T J with full reorthogonalisation. One matvec is one JVP then one VJP at the cached
//! linearisation point.

use super::power::{power_iteration, PowerOptions};
use super::vecops::{axpy, dot, norm, orthogonalize, scale};
use crate::attention::AttentionLayer;
use crate::derivatives::{Linearization, LinearizedMap};
use crate::error::{check_at_least, check_positive, Error, Result};
use crate::linalg::SplitMix;
use crate::scalar::Scalar;
use faer::{Mat, MatRef, Side};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct LanczosOptions {
    /// Requested relative accuracy of sigma (an estimate, see [`TopSingular::rel_error`]).
    pub tol: f64,
    /// At most this many matvecs with J^T J (also capped by n d, the dimension).
    pub max_iter: usize,
    /// Seed of the Gaussian start vector.
    pub seed: u64,
}

impl Default for LanczosOptions {
    fn default() -> Self {
        Self {
            tol: 1e-6,
            max_iter: 300,
            seed: 0,
        }
    }
}

impl LanczosOptions {
    pub(crate) fn check(&self) -> Result<()> {
        check_positive("tolerance", self.tol)?;
        check_at_least("max_iter", self.max_iter, 1)?;
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub enum Method {
    Lanczos(LanczosOptions),
    Power(PowerOptions),
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::Lanczos(_) => "lanczos",
            Method::Power(_) => "power",
        }
    }
}

/// The top singular triple found by an iterative method. `sigma` is attained: it is ||J v||_F
/// for the returned unit vector v, so it is a lower bound on ||J(X)||_2 up to rounding.
#[derive(Clone, Debug)]
pub struct TopSingular<T: Scalar> {
    /// ||J v||_F with ||v||_F = 1 (for Lanczos, the square root of the top Ritz value,
    /// recomputed from the stored J q_i so that it belongs to `vector` exactly).
    pub sigma: f64,
    /// Estimated relative error of sigma against ||J(X)||_2. An estimate, not a bound.
    pub rel_error: f64,
    /// Matvecs with J^T J (each one JVP and one VJP).
    pub iterations: usize,
    /// Matvecs with J^T J restricted to a few tokens that built the start vector (the restricted
    /// start of [`local_norm_refined`]; 0 otherwise), not counted in `iterations`: each projects
    /// only those tokens, about a third of a full matvec at the Llama shape.
    pub start_steps: usize,
    /// Whether the stopping rule was met before the iteration cap.
    pub converged: bool,
    /// The value after each iteration (sqrt of the top Ritz value / Rayleigh quotient); each is
    /// attained by some unit vector, hence a lower bound too.
    pub history: Vec<f64>,
    /// Top right singular vector, an n x d tangent of unit Frobenius norm.
    pub vector: Mat<T>,
    /// J v / sigma, the top left singular vector (n x d_out); zero when sigma is 0.
    pub left: Mat<T>,
}

/// A local constant at a concrete input X (the caller's: the result keeps no copy of it, so a
/// large input is held once).
#[derive(Clone, Debug)]
pub struct LocalNorm<T: Scalar> {
    pub top: TopSingular<T>,
    /// Wall time end to end, linearisation included.
    pub seconds: f64,
    pub method: &'static str,
}

impl<T: Scalar> LocalNorm<T> {
    /// Writes the top right singular vector as an (n, d) float64 .npy file.
    pub fn save_vector(&self, path: &std::path::Path) -> Result<()> {
        let v = &self.top.vector;
        let f = Mat::from_fn(v.nrows(), v.ncols(), |i, j| v[(i, j)].f64());
        crate::npy::write_matrix(path, f.as_ref())
    }
}

/// Linearises the attention layer at `x` and estimates ||J(X)||_2; `seconds` covers the whole call.
pub fn local_norm<T: Scalar>(
    layer: &AttentionLayer<T>,
    x: MatRef<'_, T>,
    weights: Option<&[f64]>,
    causal: bool,
    method: &Method,
) -> Result<LocalNorm<T>> {
    local_norm_of(method, || Linearization::new(layer, x, weights, causal))
}

/// Estimates ||J(X)||_2 of the map `linearize` linearises at `x`; `seconds` covers the whole
/// call, linearisation included.
pub fn local_norm_of<T: Scalar, L: LinearizedMap<T>>(
    method: &Method,
    linearize: impl FnOnce() -> Result<L>,
) -> Result<LocalNorm<T>> {
    let start = Instant::now();
    let lin = linearize()?;
    let top = match method {
        Method::Lanczos(o) => lanczos(&lin, o, None)?,
        Method::Power(o) => power_iteration(&lin, o, None)?,
    };
    Ok(LocalNorm {
        top,
        seconds: start.elapsed().as_secs_f64(),
        method: method.name(),
    })
}

/// The basis grows by one vector per step; a large iteration cap on a large input would
/// otherwise grow it until the allocator aborts. Checked against the budget before each step, so
/// a run that fits is unchanged and one that does not stops with an error.
fn check_basis_budget<T: Scalar, L: LinearizedMap<T>>(lin: &L, steps: usize) -> Result<()> {
    let (n, d) = (lin.n(), lin.d_in());
    let need = crate::budget::bytes_of(&[steps, n, d], std::mem::size_of::<T>() as u64);
    crate::budget::check(
        || format!("the Lanczos basis after {steps} steps on {n} x {d} tangents"),
        need,
    )
}

pub(crate) fn start_vector<T: Scalar, L: LinearizedMap<T>>(
    lin: &L,
    seed: u64,
    start: Option<MatRef<'_, T>>,
) -> Result<Mat<T>> {
    let (n, d) = (lin.n(), lin.d_in());
    let mut q = match start {
        Some(s) => {
            if s.nrows() != n || s.ncols() != d {
                return Err(Error::shape(
                    "start vector",
                    format!("{n}x{d}"),
                    format!("{}x{}", s.nrows(), s.ncols()),
                ));
            }
            s.to_owned()
        }
        None => SplitMix::new(seed).gauss_mat(n, d),
    };
    let nq = norm(&q);
    if !(nq.is_finite() && nq > 0.0) {
        return Err(Error::invalid(format!(
            "start vector must be finite and nonzero (norm {})",
            crate::fmt::compact(nq)
        )));
    }
    scale(&mut q, 1.0 / nq);
    Ok(q)
}

/// Lanczos on J^T J from `start` (a random Gaussian tangent when None).
///
/// Stopping rule: after step k with top Ritz pair (theta, s) of the tridiagonal T_k, the Ritz
/// residual is r = beta_k |s_k| and the eigenvalue error is estimated by min(r, r^2 / gap)
/// (gap to the second Ritz value); sigma = sqrt(theta) moves by half that, relatively. The
/// estimate is combined (max) with the relative change of sigma over the last step, because
/// the residual estimate alone can be optimistic while the top eigenvalue is still unresolved.
/// Stops when the estimate is <= tol, on breakdown (an invariant subspace: exact), at the
/// dimension n d, or at `max_iter`.
pub fn lanczos<T: Scalar, L: LinearizedMap<T>>(
    lin: &L,
    opts: &LanczosOptions,
    start: Option<MatRef<'_, T>>,
) -> Result<TopSingular<T>> {
    Ok(lanczos_with_second(lin, opts, start)?.0)
}

/// `lanczos`, also returning the second largest Ritz value of the last tridiagonal (None after
/// one step): the gap the refinement's error estimate needs.
fn lanczos_with_second<T: Scalar, L: LinearizedMap<T>>(
    lin: &L,
    opts: &LanczosOptions,
    start: Option<MatRef<'_, T>>,
) -> Result<(TopSingular<T>, Option<f64>)> {
    lanczos_on(lin, &lin.normal_data(), opts, start, true)
}

/// `lanczos_with_second` with the normal data (`lin.normal_data()`) given. With `left`, one
/// closing JVP gives sigma = ||J v|| and the left vector; without it only the vector is formed,
/// `sigma` is the square root of the top Ritz value and `left` is empty (the restricted start and
/// the f32 stage of `local_norm_refined` read only the vector).
fn lanczos_on<T: Scalar, L: LinearizedMap<T>>(
    lin: &L,
    normal: &L::NormalData,
    opts: &LanczosOptions,
    start: Option<MatRef<'_, T>>,
    left: bool,
) -> Result<(TopSingular<T>, Option<f64>)> {
    opts.check()?;
    let mut second = None;
    let dim = lin.n() * lin.d_in();
    let cap = opts.max_iter.min(dim);
    let mut basis: Vec<Mat<T>> = vec![start_vector(lin, opts.seed, start)?];
    let (mut alpha, mut beta): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    let mut history = Vec::new();
    let mut converged = false;
    let mut rel_error = f64::INFINITY;
    let mut ritz = Mat::<f64>::zeros(0, 0);
    let mut top_col = 0;
    for k in 0..cap {
        crate::cancel::check()?;
        check_basis_budget(lin, k + 1)?;
        let (_, mut w) = lin.normal_step(normal, basis[k].as_ref())?;
        let a = dot(&basis[k], &w);
        alpha.push(a);
        // Full reorthogonalisation against the whole basis: the three-term recurrence alone loses
        // orthogonality as soon as the top Ritz value converges.
        orthogonalize(&mut w, &basis);
        let b = norm(&w);
        let m = k + 1;
        let tri = Mat::<f64>::from_fn(m, m, |i, j| {
            if i == j {
                alpha[i]
            } else if i == j + 1 || j == i + 1 {
                beta[i.min(j)]
            } else {
                0.0
            }
        });
        let evd = tri
            .self_adjoint_eigen(Side::Lower)
            .map_err(|e| Error::Numerical(format!("tridiagonal eigensolver: {e:?}")))?;
        let theta = evd.S().column_vector()[m - 1];
        if !theta.is_finite() || !b.is_finite() {
            return Err(Error::Numerical(format!(
                "Lanczos produced a non-finite value at step {m} (theta {}, beta {})",
                crate::fmt::compact(theta),
                crate::fmt::compact(b)
            )));
        }
        ritz = evd.U().to_owned();
        top_col = m - 1;
        second = (m >= 2).then(|| evd.S().column_vector()[m - 2]);
        let sigma = theta.max(0.0).sqrt();
        let prev = history.last().copied();
        history.push(sigma);
        let scale_ref = alpha.iter().fold(0.0f64, |s, x| s.max(x.abs())).max(theta);
        // Breakdown: the Krylov space is invariant, its top Ritz value is an eigenvalue.
        let breakdown = b <= 1e-13 * scale_ref || scale_ref == 0.0;
        if theta <= 0.0 {
            rel_error = if breakdown { 0.0 } else { f64::INFINITY };
        } else {
            let r = b * ritz[(m - 1, top_col)].abs();
            let gap = if m >= 2 {
                theta - evd.S().column_vector()[m - 2]
            } else {
                0.0
            };
            let lam_err = if gap > 0.0 { r.min(r * r / gap) } else { r };
            let resid = lam_err / (2.0 * theta);
            let change = prev.map_or(f64::INFINITY, |p| (sigma - p).abs() / sigma);
            rel_error = if breakdown { resid } else { resid.max(change) };
        }
        if breakdown || rel_error <= opts.tol {
            converged = true;
            break;
        }
        if m == cap {
            break;
        }
        scale(&mut w, 1.0 / b);
        beta.push(b);
        basis.push(w);
    }
    let m = history.len();
    let s: Vec<f64> = (0..m).map(|i| ritz[(i, top_col)]).collect();
    let (n, d) = (lin.n(), lin.d_in());
    let mut v = Mat::<T>::zeros(n, d);
    for i in 0..m {
        axpy(&mut v, s[i], &basis[i]);
    }
    let nv = norm(&v);
    scale(&mut v, 1.0 / nv);
    drop(basis);
    let (sigma, jv) = if left {
        // One more JVP instead of keeping every step's image beside the basis: the images were
        // as large as the basis (a third of the peak memory of a streaming run at n = 32,768)
        // for the cost of half a step.
        let mut jv = lin.jvp(v.as_ref())?;
        let sigma = norm(&jv);
        if sigma > 0.0 {
            scale(&mut jv, 1.0 / sigma);
        }
        (sigma, jv)
    } else {
        (history[m - 1], Mat::zeros(0, 0))
    };
    Ok((
        TopSingular {
            sigma,
            rel_error,
            iterations: m,
            start_steps: 0,
            converged,
            history,
            vector: v,
            left: jv,
        },
        second,
    ))
}

/// Lanczos with at most `max_basis` stored vectors (and images): explicitly restarted. Each
/// cycle runs [`lanczos`] for up to `max_basis` steps from the previous cycle's top Ritz vector
/// (the first from the seeded Gaussian), until a cycle meets the stopping rule of `lanczos` or
/// `opts.max_iter` steps have run in all; the Krylov storage is then `max_basis` (n d + image)
/// values instead of one n d vector a step. Restarting from the top Ritz vector keeps the
/// iteration on the same top singular pair (the Rayleigh quotient never decreases from cycle to
/// cycle), at the price of more steps than the uncapped run. `iterations` and `history` cover
/// every cycle; `sigma`, the vectors and `rel_error` are the last cycle's.
pub fn lanczos_restarted<T: Scalar, L: LinearizedMap<T>>(
    lin: &L,
    opts: &LanczosOptions,
    max_basis: usize,
    start: Option<MatRef<'_, T>>,
) -> Result<TopSingular<T>> {
    opts.check()?;
    // One step cannot estimate its own error (the rule needs the change over a step).
    check_at_least("max_basis", max_basis, 2)?;
    let normal = lin.normal_data();
    let mut history = vec![];
    let mut done = 0;
    let mut v: Option<Mat<T>> = start.map(|s| s.to_owned());
    loop {
        let cycle = LanczosOptions {
            max_iter: max_basis.min(opts.max_iter - done),
            // Later cycles start from the Ritz vector, not from a seed.
            ..opts.clone()
        };
        let (top, _) = lanczos_on(lin, &normal, &cycle, v.as_ref().map(|m| m.as_ref()), true)?;
        done += top.iterations;
        history.extend_from_slice(&top.history);
        // A cycle that stopped before its cap met the rule (or broke down: exact).
        let last = top.converged || done >= opts.max_iter || top.iterations < cycle.max_iter;
        if last {
            return Ok(TopSingular {
                iterations: done,
                history,
                ..top
            });
        }
        v = Some(top.vector);
    }
}

/// Lanczos in f32, then the f32 top vector refined in f64: the f64 value is what is reported.
///
/// The f32 stage finds the top singular vector v at half the bytes and twice the SIMD width; its
/// Ritz value carries f32 rounding of the operator (about 1e-7 relative), too close to a 1e-6
/// target to report. One f64 JVP and VJP of v at the f64 linearisation then give the attained
/// value sigma = ||J v|| (v unit) and the residual r = J^T J v - sigma^2 v, whence the same
/// estimate Lanczos uses, min(|r|, |r|^2 / gap) / (2 sigma^2), with the gap to the f32 stage's
/// second Ritz value. The reported estimate is the larger of that and the f32 stage's own (which
/// includes its last relative change, the guard against an unresolved top eigenvalue). When it
/// is above `tol`, f64 Lanczos continues from v, so the answer meets the same rule as an f64 run.
/// `iterations` counts the f32 steps, the refinement step and any f64 steps. The f64
/// linearisation is formed after the f32 one is dropped: only one is held at a time.
///
/// Restricted start: when the f32 map offers a cheap step restricted to a few tokens
/// (`LinearizedMap::start_rows`, the rotary sublayer: the 32 tokens that receive the most
/// attention, on n >= 128 tokens), the f32 Lanczos starts from the top Ritz vector of J^T J
/// restricted to the tangents supported on those tokens (plus a small seeded Gaussian on all of
/// them) instead of a Gaussian: under a causal mask the top vector lives almost entirely on the
/// first tokens, which every query sees. The restricted steps (`start_steps`, not in
/// `iterations`) project only those tokens; the full steps and the stopping rule are unchanged.
/// At the Llama shape of bench/rotary_local: 16 restricted steps (about a third of a full one
/// each) and 3 full ones instead of 16 full ones.
pub fn local_norm_refined<L32: LinearizedMap<f32>, L64: LinearizedMap<f64>>(
    opts: &LanczosOptions,
    linearize32: impl FnOnce() -> Result<L32>,
    linearize64: impl FnOnce() -> Result<L64>,
) -> Result<LocalNorm<f64>> {
    opts.check()?;
    let start = Instant::now();
    let (low, second) = {
        let lin = linearize32()?;
        let normal = lin.normal_data();
        let start = restricted_start(&lin, &normal, opts)?;
        // Only the f32 vector is read below: no closing f32 JVP for a left vector.
        let (mut low, second) = lanczos_on(
            &lin,
            &normal,
            opts,
            start.as_ref().map(|(v, _)| v.as_ref()),
            false,
        )?;
        low.start_steps = start.map_or(0, |(_, steps)| steps);
        (low, second)
    };
    let lin = linearize64()?;
    crate::cancel::check()?;
    let mut v = Mat::from_fn(low.vector.nrows(), low.vector.ncols(), |i, j| {
        low.vector[(i, j)] as f64
    });
    let nv = norm(&v);
    if !(nv.is_finite() && nv > 0.0) {
        return Err(Error::Numerical(format!(
            "the f32 Lanczos vector has norm {}",
            crate::fmt::compact(nv)
        )));
    }
    scale(&mut v, 1.0 / nv);
    let mut jv = lin.jvp(v.as_ref())?;
    let rho = dot(&jv, &jv);
    let mut r = lin.vjp(jv.as_ref())?;
    axpy(&mut r, -rho, &v);
    let rn = norm(&r);
    if !(rho.is_finite() && rn.is_finite()) {
        return Err(Error::Numerical(format!(
            "the f64 refinement produced a non-finite value (sigma^2 {}, residual {})",
            crate::fmt::compact(rho),
            crate::fmt::compact(rn)
        )));
    }
    let resid = if rho > 0.0 {
        let gap = second.map_or(0.0, |t| rho - t);
        let lam_err = if gap > 0.0 { rn.min(rn * rn / gap) } else { rn };
        lam_err / (2.0 * rho)
    } else if rn == 0.0 {
        0.0
    } else {
        f64::INFINITY
    };
    let rel_error = resid.max(low.rel_error);
    let iterations = low.iterations + 1;
    let top = if rel_error <= opts.tol || iterations >= opts.max_iter {
        let sigma = rho.sqrt();
        if sigma > 0.0 {
            scale(&mut jv, 1.0 / sigma);
        }
        let mut history = low.history;
        history.push(sigma);
        TopSingular {
            sigma,
            rel_error,
            iterations,
            start_steps: low.start_steps,
            converged: low.converged && rel_error <= opts.tol,
            history,
            vector: v,
            left: jv,
        }
    } else {
        let more = LanczosOptions {
            max_iter: opts.max_iter - iterations,
            ..opts.clone()
        };
        let mut top = lanczos(&lin, &more, Some(v.as_ref()))?;
        let mut history = low.history;
        history.append(&mut top.history);
        top.history = history;
        top.iterations += iterations;
        top.start_steps = low.start_steps;
        top
    };
    Ok(LocalNorm {
        top,
        seconds: start.elapsed().as_secs_f64(),
        method: "lanczos",
    })
}

/// Tokens of the restricted start (at most). At the Llama shape of bench/rotary_local (n = 512)
/// the top right singular vector has 99.99% of its energy on the 32 tokens `start_rows` picks.
const START_ROWS: usize = 32;
/// The restricted start runs only when n is at least this many times its tokens: on shorter
/// sequences a restricted step saves little against a full one.
const START_ROWS_FRACTION: usize = 4;
/// At most this many restricted steps, stopping earlier at this estimated accuracy (or the
/// request's, when looser): converging the restricted problem is cheap, and what the full
/// iteration then has to remove is mostly the part of the top vector outside the tokens, which
/// it does in a few steps (3 at the Llama shape, against the 16 from a Gaussian start).
const START_STEPS: usize = 20;
const START_TOL: f64 = 1e-6;
/// Norm of the seeded Gaussian on all n tokens added to the restricted Ritz vector (unit norm):
/// the start keeps a component along every direction, as a Gaussian start has, so that a top
/// vector living outside the tokens is not missed; 1e-2 costs no steps at the Llama shape.
const START_MIX: f64 = 1e-2;

/// The start vector of the f32 stage of [`local_norm_refined`] when the map offers a cheap
/// restricted step (`LinearizedMap::start_rows`): Lanczos on J^T J restricted to the tangents
/// supported on those tokens, from the seeded Gaussian on them, its top Ritz vector embedded in
/// the n tokens plus `START_MIX` times a seeded Gaussian on all of them. Returns it with the
/// restricted steps taken, or None (the plain Gaussian start) when the map has no restricted
/// step or the sequence is short. Any start is valid for the attained value and its estimate:
/// only the number of full steps depends on it. (The probabilistic upper bound, Lemma P, needs
/// a Gaussian start and has its own, `centre_upper`.)
fn restricted_start<T: Scalar, L: LinearizedMap<T>>(
    lin: &L,
    normal: &L::NormalData,
    opts: &LanczosOptions,
) -> Result<Option<(Mat<T>, usize)>> {
    if START_ROWS * START_ROWS_FRACTION > lin.n() {
        return Ok(None);
    }
    let Some(rows) = lin.start_rows(START_ROWS) else {
        return Ok(None);
    };
    let restricted = Rows {
        lin,
        normal,
        rows: &rows,
    };
    let o = LanczosOptions {
        tol: START_TOL.max(opts.tol),
        max_iter: START_STEPS.min(opts.max_iter),
        seed: opts.seed,
    };
    let (top, _) = lanczos_on(&restricted, &(), &o, None, false)?;
    let mut v = SplitMix::new(opts.seed ^ START_MIX_SEED).gauss_mat(lin.n(), lin.d_in());
    let g = norm(&v);
    scale(&mut v, START_MIX / g);
    for (r, &i) in rows.iter().enumerate() {
        let mut row = v.as_mut().row_mut(i);
        row += top.vector.as_ref().row(r);
    }
    Ok(Some((v, top.iterations)))
}

/// Mixed into the seed of the Gaussian of `START_MIX` (another stream than the restricted
/// Lanczos's own start, which uses the seed itself).
const START_MIX_SEED: u64 = 0x5eed_5eed;

/// J^T J restricted to the tangents supported on the tokens `rows` (`normal_step_rows`).
struct Rows<'a, T: Scalar, L: LinearizedMap<T>> {
    lin: &'a L,
    normal: &'a L::NormalData,
    rows: &'a [usize],
}

impl<T: Scalar, L: LinearizedMap<T>> LinearizedMap<T> for Rows<'_, T, L> {
    type NormalData = ();

    fn n(&self) -> usize {
        self.rows.len()
    }

    fn d_in(&self) -> usize {
        self.lin.d_in()
    }

    fn d_out(&self) -> usize {
        self.lin.d_out()
    }

    /// J E t (n x d_out, all the tokens): the restriction's image has the parent's n rows.
    fn jvp(&self, t: MatRef<'_, T>) -> Result<Mat<T>> {
        let mut full = Mat::<T>::zeros(self.lin.n(), self.d_in());
        for (r, &i) in self.rows.iter().enumerate() {
            full.as_mut().row_mut(i).copy_from(t.row(r));
        }
        self.lin.jvp(full.as_ref())
    }

    fn vjp(&self, y: MatRef<'_, T>) -> Result<Mat<T>> {
        let w = self.lin.vjp(y)?;
        Ok(Mat::from_fn(self.rows.len(), w.ncols(), |r, j| {
            w[(self.rows[r], j)]
        }))
    }

    fn normal_data(&self) {}

    fn normal_step(&self, _: &(), u: MatRef<'_, T>) -> Result<(Mat<T>, Mat<T>)> {
        self.lin.normal_step_rows(self.normal, self.rows, u)
    }

    fn image_output(&self, image: MatRef<'_, T>) -> Mat<T> {
        self.lin.image_output(image)
    }
}
