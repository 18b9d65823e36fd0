//! Proven floating-point error bounds for the certified constants (docs/bounds.md#floating-point).
//!
//! Every certified value is an upper bound of the exact real expression of docs/bounds.md evaluated
//! on the exact weights (which are f64 numbers, hence exact rationals). Three tools make it so:
//!
//! - scalar arithmetic rounded upward (`add_up`, `mul_up`, ...): IEEE 754 +, *, / and sqrt are
//!   correctly rounded to nearest, so the exact result never exceeds the next float above the
//!   computed one; `exp_up` adds a stated allowance for the platform's `exp`, which IEEE 754 does
//!   not require to be correctly rounded;
//! - forward error bounds for matrix products, |fl(A B) - A B| <= gamma_k |A| |B| entrywise
//!   (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., eq. (3.13)), which hold
//!   for every order of summation and with or without fused multiply-add;
//! - an a-posteriori bound on the largest eigenvalue of a symmetric f64 matrix from its computed
//!   eigendecomposition (`lambda_max_up`), by Weyl's inequality and a bound on the departure of
//!   the computed eigenvectors from orthonormality.

use crate::error::{Error, Result};
use faer::{Mat, MatRef, Side};

/// The unit roundoff of f64, u = 2^-53.
pub const UNIT_ROUNDOFF: f64 = f64::EPSILON / 2.0;

/// The smallest positive subnormal, 2^-1074: an underflowing product is off by at most half of it.
pub const ETA: f64 = f64::from_bits(1);

/// Allowance for the platform's `exp`: the value returned is taken to be within a relative
/// 2^-44 (about 2^8 = 256 units in the last place) of e^x. Correctly rounded implementations
/// and the usual libm ones (documented errors below 1 ulp) are far inside it.
pub const EXP_RELATIVE_ERROR: f64 = 1.0 / 17_592_186_044_416.0; // 2^-44

/// Allowance for the platform's `sin` and `cos` (rotary tables): each value returned is taken to
/// be within 2^-44 absolutely of the exact sine or cosine of its (f64) argument. The usual libm
/// implementations are within 1 ulp (at most 2^-53 here) for every finite argument.
pub const SIN_COS_ABS_ERROR: f64 = 1.0 / 17_592_186_044_416.0; // 2^-44

/// The next f64 above x (x itself for +inf, NaN for NaN).
pub fn up(x: f64) -> f64 {
    x.next_up()
}

/// The next f64 below x.
pub fn down(x: f64) -> f64 {
    x.next_down()
}

/// An upper bound of a + b.
pub fn add_up(a: f64, b: f64) -> f64 {
    up(a + b)
}

/// An upper bound of a * b.
///
/// A zero factor gives 0 whatever the other one, +inf included: every operand here stands for an
/// exact real number (+inf for one beyond the f64 range, never for an infinite quantity), so a
/// factor bounded by 0 makes the exact product 0. This is what a head whose value map is zero
/// needs when its score bound overflows (0 * e^{2 R beta} with e^{2 R beta} = +inf): it contributes
/// 0, not NaN. NaN still propagates.
pub fn mul_up(a: f64, b: f64) -> f64 {
    if (a == 0.0 && !b.is_nan()) || (b == 0.0 && !a.is_nan()) {
        return 0.0;
    }
    up(a * b)
}

/// An upper bound of a / b.
pub fn div_up(a: f64, b: f64) -> f64 {
    up(a / b)
}

/// An upper bound of sqrt(x), x >= 0.
pub fn sqrt_up(x: f64) -> f64 {
    up(x.sqrt())
}

/// A lower bound of sqrt(x), x >= 0.
pub fn sqrt_down(x: f64) -> f64 {
    down(x.sqrt()).max(0.0)
}

/// An upper bound of e^x (see [`EXP_RELATIVE_ERROR`]).
pub fn exp_up(x: f64) -> f64 {
    mul_up(x.exp(), 1.0 + EXP_RELATIVE_ERROR)
}

/// An upper bound of ln(x) for x >= 1, taking the platform's `ln` within the same relative
/// allowance as `exp` (the usual libm implementations are within 1 ulp).
pub fn ln_up(x: f64) -> f64 {
    mul_up(up(x.ln()), 1.0 + EXP_RELATIVE_ERROR)
}

/// A lower bound of e^x (see [`EXP_RELATIVE_ERROR`]).
pub fn exp_down(x: f64) -> f64 {
    down(x.exp() * (1.0 - EXP_RELATIVE_ERROR)).max(0.0)
}

/// An upper bound of the sum of the (upper bounds) `xs`, each addition rounded upward.
pub fn sum_up(xs: impl IntoIterator<Item = f64>) -> f64 {
    xs.into_iter().fold(0.0, add_up)
}

/// An upper bound of sqrt(sum x_i^2) over upper bounds x_i >= 0, rounded upward throughout.
pub fn hypot_up(xs: impl IntoIterator<Item = f64>) -> f64 {
    sqrt_up(sum_up(xs.into_iter().map(|x| mul_up(x, x))))
}

/// An upper bound of gamma_k = k u / (1 - k u) (+inf when k u >= 1/2).
pub fn gamma(k: usize) -> f64 {
    let ku = k as f64 * UNIT_ROUNDOFF; // exact for k < 2^53
    if ku >= 0.5 {
        return f64::INFINITY;
    }
    div_up(ku, down(1.0 - ku))
}

/// An upper bound of 1 / (1 - gamma_k), by 1 + 2 gamma_k where gamma_k <= 1/2 (+inf beyond).
fn inv_one_minus_gamma_up(k: usize) -> f64 {
    let g = gamma(k);
    if g <= 0.5 {
        add_up(1.0, mul_up(2.0, g))
    } else {
        f64::INFINITY
    }
}

/// An upper bound of sqrt(sum x^2) over the given f64 numbers (n of them).
pub fn norm2_up(xs: impl IntoIterator<Item = f64>) -> f64 {
    // Each fl(x^2) = x^2 (1 + d) + e with |d| <= u, |e| <= ETA / 2, and the recursive sum of n
    // nonnegative terms is within gamma_{n-1} of theirs, so the computed s satisfies
    // sum x^2 <= (s + n ETA) / (1 - gamma_n) <= (s + n ETA) (1 + 2 gamma_n) (gamma_n <= 1/2).
    let (mut s, mut n) = (0.0f64, 0usize);
    for x in xs {
        s += x * x;
        n += 1;
    }
    let slack = mul_up(n as f64, ETA);
    sqrt_up(mul_up(add_up(s, slack), inv_one_minus_gamma_up(n)))
}

/// An upper bound of max_i |x_i|, the largest row norm of an f64 matrix X (the radius of the
/// smallest centred ball that provably holds every row).
pub fn max_row_norm_up(x: MatRef<'_, f64>) -> f64 {
    (0..x.nrows())
        .map(|i| norm2_up((0..x.ncols()).map(|k| x[(i, k)])))
        .fold(0.0, f64::max)
}

/// An upper bound of ||X||_F for an f64 matrix X.
pub fn frob_up(x: MatRef<'_, f64>) -> f64 {
    norm2_up((0..x.ncols()).flat_map(|j| (0..x.nrows()).map(move |i| x[(i, j)])))
}

fn abs(x: MatRef<'_, f64>) -> Mat<f64> {
    Mat::from_fn(x.nrows(), x.ncols(), |i, j| x[(i, j)].abs())
}

/// The largest absolute row sum ||X||_inf, rounded upward.
fn inf_norm_up(x: MatRef<'_, f64>) -> f64 {
    (0..x.nrows())
        .map(|i| sum_up((0..x.ncols()).map(|j| x[(i, j)].abs())))
        .fold(0.0, f64::max)
}

/// The product A_1 (A_2 (... A_r)) in f64, right to left (how every chain in this crate is
/// formed), and an upper bound of ||fl(product) - exact product||_F.
///
/// With inner dimensions k_1, ..., k_{r-1} and K = sum k_i, the computed product satisfies
/// |fl - exact| <= gamma_K |A_1| ... |A_r| + t entrywise (Higham (3.13) applied r - 1 times and
/// gamma_a + gamma_b + gamma_a gamma_b <= gamma_{a+b}, his Lemma 3.3), where t bounds what
/// underflow adds: each product of two numbers may lose ETA / 2 absolutely, so a level adds
/// k ETA / 2 per entry and the levels to its left multiply it by at most ||A_i||_inf (1 + gamma);
/// t = K ETA prod_i (1 + ||A_i||_inf) covers this generously. The nonnegative chain
/// |A_1| ... |A_r| =: Q is itself formed in f64 with the same bound, |fl(Q) - Q| <= gamma_K Q + t,
/// so Q <= (fl(Q) + t) / (1 - gamma_K) entrywise and, where gamma_K <= 1/2,
/// ||Q||_F <= (||fl(Q)||_F + t sqrt(entries)) (1 + 2 gamma_K).
pub fn product_with_error(factors: &[MatRef<'_, f64>]) -> (Mat<f64>, f64) {
    assert!(!factors.is_empty());
    let last = factors.len() - 1;
    let mut p = factors[last].to_owned();
    let mut q = abs(factors[last]);
    let mut k_total = 0usize;
    for f in factors[..last].iter().rev() {
        k_total += f.ncols();
        p = *f * &p;
        q = abs(*f) * &q;
    }
    let g = gamma(k_total);
    let mut t = mul_up(k_total as f64, ETA);
    for f in factors {
        t = mul_up(t, add_up(1.0, inf_norm_up(*f)));
    }
    let entries = (p.nrows() * p.ncols()) as f64;
    let t_frob = mul_up(t, sqrt_up(entries));
    let abs_chain = mul_up(
        add_up(frob_up(q.as_ref()), t_frob),
        inv_one_minus_gamma_up(k_total),
    );
    let err = add_up(mul_up(g, abs_chain), t_frob);
    (p, err)
}

/// An upper bound of lambda_max(G) for the symmetric matrix G whose lower triangle is stored in
/// `g` (the upper triangle is ignored).
///
/// With the computed eigendecomposition G ~ V L V^T (V not exactly orthonormal, L diagonal with
/// largest entry l_max), Weyl's inequality gives
/// lambda_max(G) <= lambda_max(V L V^T) + ||G - V L V^T||_2, and since L <= max(l_max, 0) I,
/// lambda_max(V L V^T) <= max(l_max, 0) ||V||_2^2 <= max(l_max, 0) (1 + ||V^T V - I||_2). Both
/// norms are bounded by Frobenius norms of residuals formed in f64, with the products' rounding
/// bounded as in [`product_with_error`].
pub fn lambda_max_up(g: MatRef<'_, f64>) -> Result<f64> {
    let n = g.nrows();
    if n == 0 {
        return Ok(0.0);
    }
    let gs = Mat::from_fn(n, n, |i, j| if i >= j { g[(i, j)] } else { g[(j, i)] });
    let evd = gs
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| Error::Numerical(format!("eigendecomposition did not converge: {e:?}")))?;
    let v = evd.U();
    let l: Vec<f64> = (0..n).map(|i| evd.S().column_vector()[i]).collect();
    let l_max = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let l_abs = l.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    if !(l_max.is_finite() && l_abs.is_finite()) {
        return Ok(f64::INFINITY);
    }
    // ||V^T V - I||_2 <= ||fl(fl(V^T V) - I)||_F (1 + 2u) + (error of fl(V^T V)).
    let (vtv, e_vtv) = product_with_error(&[v.transpose(), v]);
    let d1 = Mat::from_fn(n, n, |i, j| vtv[(i, j)] - if i == j { 1.0 } else { 0.0 });
    let u2 = 1.0 + 2.0 * UNIT_ROUNDOFF;
    let eta = add_up(mul_up(frob_up(d1.as_ref()), u2), e_vtv);
    // ||G - V L V^T||_2 <= ||fl(G - fl(fl(V L) V^T))||_F (1 + 2u) + (error of the product).
    // fl(V L) scales each column by one rounding, |fl(V L) - V L| <= u |V| |L| + ETA, and
    // |V| |L| |V^T| <= l_abs |V| |V^T| entrywise.
    let vl = Mat::from_fn(n, n, |i, j| v[(i, j)] * l[j]);
    let (r, e_r) = product_with_error(&[vl.as_ref(), v.transpose()]);
    let vv_abs = frob_up(v);
    let vv_abs = mul_up(vv_abs, vv_abs); // || |V| |V|^T ||_F <= ||V||_F^2
    let scale_err = add_up(
        mul_up(mul_up(UNIT_ROUNDOFF, l_abs), vv_abs),
        mul_up(mul_up(ETA, n as f64), add_up(1.0, vv_abs)),
    );
    let d2 = Mat::from_fn(n, n, |i, j| gs[(i, j)] - r[(i, j)]);
    let resid = add_up(add_up(mul_up(frob_up(d2.as_ref()), u2), e_r), scale_err);
    Ok(add_up(mul_up(l_max.max(0.0), add_up(1.0, eta)), resid))
}

/// An upper bound of ||X||_2 for an f64 matrix X: sqrt of a bound on lambda_max of the Gram
/// matrix on the smaller side, formed in f64 with error at most gamma_r ||X||_F^2 in the
/// Frobenius norm (r the inner dimension) plus underflow.
pub fn spectral_up(x: MatRef<'_, f64>) -> Result<f64> {
    if x.nrows() == 0 || x.ncols() == 0 {
        return Ok(0.0);
    }
    let (g, err) = if x.nrows() >= x.ncols() {
        product_with_error(&[x.transpose(), x])
    } else {
        product_with_error(&[x, x.transpose()])
    };
    Ok(sqrt_up(add_up(lambda_max_up(g.as_ref())?, err)))
}

/// An upper bound of ||A_1 ... A_r||_2 for the exact product of f64 matrices.
pub fn product_norm_up(factors: &[MatRef<'_, f64>]) -> Result<f64> {
    let (p, err) = product_with_error(factors);
    Ok(add_up(spectral_up(p.as_ref())?, err))
}

/// An upper bound of |A_1 ... A_r|_F for the exact product (for example a matrix times a vector).
pub fn product_frob_up(factors: &[MatRef<'_, f64>]) -> f64 {
    let (p, err) = product_with_error(factors);
    add_up(frob_up(p.as_ref()), err)
}

/// An upper bound of 1 / sqrt(k).
pub fn inv_sqrt_up(k: usize) -> f64 {
    div_up(1.0, down((k as f64).sqrt()))
}
