//! A small layer standing in for MiniLM in quick runs of figures (c) and (d): this crate's tests
//! and the command's rendering tests run them without the checkpoint.

use lipattn::attention::{AttentionLayer, Kernel};
use lipattn::estimation::SplitMix;

/// A small dot-product layer with biases (d = 6, two heads of width 3), fixed by its seed.
pub fn synthetic_layer() -> AttentionLayer<f64> {
    let mut rng = SplitMix::new(42);
    let (d, heads, dk) = (6, 2, 3);
    let mut m = |r: usize, c: usize, s: f64| rng.gauss_mat::<f64>(r, c) * s;
    let (wq, wk, wv, wo) = (
        m(heads * dk, d, 0.8),
        m(heads * dk, d, 0.8),
        m(heads * dk, d, 0.5),
        m(d, heads * dk, 0.5),
    );
    let b = |k: usize| (0..k).map(|i| 0.1 * i as f64 - 0.2).collect::<Vec<_>>();
    AttentionLayer::new(
        heads,
        Kernel::Dot,
        wq,
        b(heads * dk),
        wk,
        b(heads * dk),
        wv,
        b(heads * dk),
        wo,
        b(d),
    )
    .expect("the synthetic layer's shapes are consistent")
}
