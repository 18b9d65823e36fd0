//! Random rotary attention layers for the tests: one builder, every option a field.

use lipattn::attention::{QkNorm, Rope, RopeScaling, RotaryAttention};
use lipattn::linalg::SplitMix;
use lipattn::Mat;

/// A random rotary layer's shape, options and weight scales.
#[derive(Clone, Debug)]
pub struct RotarySpec {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rotary_dim: usize,
    pub d: usize,
    pub d_out: usize,
    /// Standard deviations of the entries of W_Q and W_K, of W_V, of W_O, and of every bias.
    pub qk_scale: f64,
    pub v_scale: f64,
    pub o_scale: f64,
    pub bias: f64,
    /// (unit_offset, eps, standard deviation of the gains' weights).
    pub qk_norm: Option<(bool, f64, f64)>,
    pub softcap: Option<f64>,
    pub window: Option<usize>,
    pub theta: f64,
    pub max_position_embeddings: usize,
    pub scaling: RopeScaling,
    pub score_divisor_sq: usize,
}

pub fn gauss(r: &mut SplitMix, rows: usize, cols: usize, scale: f64) -> Mat<f64> {
    Mat::from_fn(rows, cols, |_, _| scale * r.gauss())
}

pub fn gauss_vec(r: &mut SplitMix, len: usize, scale: f64) -> Vec<f64> {
    (0..len).map(|_| scale * r.gauss()).collect()
}

/// The layer of `spec` with weights drawn from `seed`.
pub fn build(spec: &RotarySpec, seed: u64) -> RotaryAttention {
    let s = spec;
    let mut r = SplitMix::new(seed);
    let (hd, kvd) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let wq = gauss(&mut r, hd, s.d, s.qk_scale);
    let wk = gauss(&mut r, kvd, s.d, s.qk_scale);
    let wv = gauss(&mut r, kvd, s.d, s.v_scale);
    let wo = gauss(&mut r, s.d_out, hd, s.o_scale);
    let (bq, bk, bv, bo) = (
        gauss_vec(&mut r, hd, s.bias),
        gauss_vec(&mut r, kvd, s.bias),
        gauss_vec(&mut r, kvd, s.bias),
        gauss_vec(&mut r, s.d_out, s.bias),
    );
    let qk_norm = s.qk_norm.map(|(unit_offset, eps, gain)| QkNorm {
        q_weight: gauss_vec(&mut r, s.head_dim, gain),
        k_weight: gauss_vec(&mut r, s.head_dim, gain),
        eps,
        unit_offset,
    });
    let rope = Rope {
        theta: s.theta,
        rotary_dim: s.rotary_dim,
        max_position_embeddings: s.max_position_embeddings,
        scaling: s.scaling.clone(),
    };
    RotaryAttention::new(
        s.heads,
        s.kv_heads,
        s.head_dim,
        wq,
        bq,
        wk,
        bk,
        wv,
        bv,
        wo,
        bo,
        s.score_divisor_sq,
        rope,
        qk_norm,
        s.softcap,
        s.window,
    )
    .unwrap()
}
