//! Seeded random layers for experiments, benchmarks and the CLI's synthetic mode.

use crate::attention::{AttentionLayer, Kernel};
use crate::error::{check_at_least, check_nonnegative, check_positive, Error, Result};
use crate::estimation::SplitMix;
use faer::Mat;

/// A random layer on R^d with `heads` heads of width dk = dv = max(1, d / heads), weights
/// N(0, 1/d) (W_O: N(0, 1/(H dv))), biases N(0, bias^2). For the tied L2 kernel the value map
/// is W_V^h = U_h W_Q^h with U_h Gaussian, the form B5 certifies on all of R^{n x d}; W_Q and U_h
/// are rounded to multiples of 2^-16 so that the product is exact in f64 (for dk < 2^13), which
/// B5 needs and verifies (docs/bounds.md#exact-factorisation).
pub fn random_layer(
    d: usize,
    heads: usize,
    kernel: Kernel,
    bias: f64,
    seed: u64,
) -> Result<AttentionLayer<f64>> {
    check_at_least("d", d, 1)?;
    check_at_least("heads", heads, 1)?;
    check_nonnegative("bias scale", bias)?;
    let dk = (d / heads).max(1);
    crate::budget::check(
        || format!("a random layer of width d = {d} with {heads} heads (its four weight matrices)"),
        crate::budget::bytes_of(&[4, heads, dk, d], 8),
    )?;
    let mut rng = SplitMix::new(seed);
    let s = 1.0 / (d as f64).sqrt();
    let mut g =
        |r: usize, c: usize, sc: f64| -> Mat<f64> { Mat::from_fn(r, c, |_, _| sc * rng.gauss()) };
    let mut wq = g(heads * dk, d, s);
    if kernel == Kernel::L2 {
        wq = on_grid(wq);
    }
    let wk = g(heads * dk, d, s);
    let wv = match kernel {
        Kernel::Dot => g(heads * dk, d, s),
        Kernel::L2 => {
            let mut wv = Mat::<f64>::zeros(heads * dk, d);
            for h in 0..heads {
                let u = on_grid(g(dk, dk, 1.0 / (dk as f64).sqrt()));
                let wq_h = wq.as_ref().subrows(h * dk, dk);
                wv.as_mut().subrows_mut(h * dk, dk).copy_from(&u * wq_h);
            }
            wv
        }
    };
    let wo = g(d, heads * dk, 1.0 / ((heads * dk) as f64).sqrt());
    let mut b = |len: usize| -> Vec<f64> { (0..len).map(|_| bias * rng.gauss()).collect() };
    let (bq, bk, bv, bo) = (b(heads * dk), b(heads * dk), b(heads * dk), b(d));
    AttentionLayer::new(heads, kernel, wq, bq, wk, bk, wv, bv, wo, bo)
}

/// Entries rounded to multiples of 2^-16: two such matrices with entries below 2^4 have a
/// product whose every partial sum is a multiple of 2^-32 below 2^53 2^-32 for inner dimensions
/// under 2^13, so every rounding in forming it is exact.
fn on_grid(m: Mat<f64>) -> Mat<f64> {
    const GRID: f64 = 65_536.0;
    Mat::from_fn(m.nrows(), m.ncols(), |i, j| {
        (m[(i, j)] * GRID).round() / GRID
    })
}

/// n Gaussian tokens in R^d with standard deviation `scale`.
pub fn random_tokens(n: usize, d: usize, scale: f64, seed: u64) -> Mat<f64> {
    let mut rng = SplitMix::new(seed);
    Mat::from_fn(n, d, |_, _| scale * rng.gauss())
}

/// [`random_tokens`] for a scale given by a user: positive, and small enough that no token
/// overflows (a draw of 8.6 standard deviations times a scale near 1e308 is infinite, and such
/// tokens were returned as they were).
pub fn random_tokens_checked(
    n: usize,
    d: usize,
    scale: f64,
    seed: u64,
    what: &str,
) -> Result<Mat<f64>> {
    check_positive(what, scale)?;
    let x = random_tokens(n, d, scale, seed);
    if (0..d).any(|j| x.col_as_slice(j).iter().any(|v| !v.is_finite())) {
        return Err(Error::invalid(format!(
            "{what} = {scale:e} makes the random tokens overflow to infinity"
        )));
    }
    Ok(x)
}
