//! Layers and solver settings shared by several experiments.

use anyhow::Result;
use faer::Mat;
use lipattn::attention::{AttentionLayer, Kernel};
use lipattn::estimation::{AscentOptions, LanczosOptions, Method};

/// Tight enough that the attained values of figures (a) and (b) are stable to the digits quoted
/// in docs/reproductions.md.
pub(crate) fn lanczos() -> Method {
    Method::Lanczos(LanczosOptions {
        tol: 1e-8,
        max_iter: 300,
        seed: 0,
    })
}

fn eye(d: usize, s: f64) -> Mat<f64> {
    Mat::from_fn(d, d, |i, j| if i == j { s } else { 0.0 })
}

/// One head in R^d with W_Q = W_K = q I, W_V = W_O = I, no biases.
pub(crate) fn identity_head(d: usize, q: f64, kernel: Kernel) -> Result<AttentionLayer<f64>> {
    Ok(AttentionLayer::new(
        1,
        kernel,
        eye(d, q),
        vec![0.0; d],
        eye(d, q),
        vec![0.0; d],
        eye(d, 1.0),
        vec![0.0; d],
        eye(d, 1.0),
        vec![0.0; d],
    )?)
}

/// Projected multi-start ascent (`estimation::ascent`) on the token map: the construction, a few
/// random starts and `start`, each climbed.
pub(crate) fn ascent_opts(r: f64, seed: u64, quick: bool) -> AscentOptions {
    AscentOptions {
        radius: r,
        random_starts: if quick { 1 } else { 2 },
        steps: if quick { 3 } else { 8 },
        lanczos: LanczosOptions {
            tol: 1e-6,
            max_iter: 200,
            seed: 0,
        },
        seed,
        ..AscentOptions::default()
    }
}

/// Tokens per input in figures (c) and (d) outside quick runs.
pub(crate) const N_TOKENS: usize = 32;
