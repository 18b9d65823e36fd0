//! B5 (tied L2 attention): the Lambert W values behind Kim et al.'s table
//! (docs/background.md#kim-et-al), the two moment lemmas, and a soundness battery on all of
//! R^{n x d}, including spread-out and adversarially placed tokens.

mod common;
use common::*;
use lipattn::bounds::l2::{
    first_moment_bound, kim_bounds, l2_bounds, lambert_w0, second_moment_bound,
};
use lipattn::{AttentionLayer, Kernel, Linearization, Mat};
use rand::rngs::StdRng;
use rand::Rng;

#[test]
fn lambert_w0_values() {
    assert!((lambert_w0(1.0) - 0.567_143_290_409_783_8).abs() < 1e-15);
    assert!((lambert_w0(std::f64::consts::E) - 1.0).abs() < 1e-15);
    assert_eq!(lambert_w0(0.0), 0.0);
    for &x in &[1e-12, 1e-3, 0.3, 2.0, 10.0, 1e3, 1e8, 1e300] {
        let w = lambert_w0(x);
        assert!(((w * w.exp() - x) / x).abs() < 1e-13, "W0({x}) = {w}");
    }
}

/// docs/background.md#kim-et-al: Kim et al.'s bounds for D = H = 1 and unit weights.
#[test]
fn kim_table() {
    let table = [
        (2usize, 2.114, 2.99),
        (8, 4.893, 13.84),
        (16, 6.534, 26.14),
        (64, 10.23, 81.83),
        (256, 14.35, 229.5),
        (1024, 18.76, 600.3),
    ];
    for (n, inf, two) in table {
        let (li, l2) = kim_bounds(n, 1.0, 1.0, 1.0);
        assert!((li - inf).abs() / inf < 1e-3, "N={n}: {li} vs {inf}");
        assert!((l2 - two).abs() / two < 1e-3, "N={n}: {l2} vs {two}");
    }
}

/// Lemma K1 and K2: sum_j P_ij t_j and sum_j P_ij t_j^2 over random configurations never exceed
/// the bounds, and K1 is attained by t_j = 1 + W for all j != i.
#[test]
fn moment_lemmas() {
    let mut r = rng(3);
    for _ in 0..3000 {
        let n = r.random_range(2..80);
        let w: Vec<f64> = if r.random_bool(0.5) {
            vec![1.0 / n as f64; n]
        } else {
            random_weights(&mut r, n)
        };
        let i = r.random_range(0..n);
        let scale = 10f64.powf(r.random_range(-2.0..1.5));
        let t: Vec<f64> = (0..n)
            .map(|j| {
                if j == i {
                    0.0
                } else {
                    scale * r.random_range(0.0..3.0f64)
                }
            })
            .collect();
        let z: f64 = (0..n).map(|j| w[j] * (-t[j]).exp()).sum();
        let m1: f64 = (0..n).map(|j| w[j] * (-t[j]).exp() * t[j]).sum::<f64>() / z;
        let m2: f64 = (0..n)
            .map(|j| w[j] * (-t[j]).exp() * t[j] * t[j])
            .sum::<f64>()
            / z;
        let rho = (1.0 - w[i]) / w[i];
        assert!(
            m1 <= first_moment_bound(rho) * (1.0 + 1e-12),
            "K1: {m1} > {}",
            first_moment_bound(rho)
        );
        assert!(
            m2 <= second_moment_bound(rho) * (1.0 + 1e-12),
            "K2: {m2} > {}",
            second_moment_bound(rho)
        );
    }
    for n in [2usize, 10, 1000] {
        let wb = first_moment_bound((n - 1) as f64);
        let t = 1.0 + wb;
        let m1 = (n - 1) as f64 * t * (-t).exp() / (1.0 + (n - 1) as f64 * (-t).exp());
        assert!((m1 - wb).abs() < 1e-12 * wb, "K1 is tight: {m1} vs {wb}");
    }
}

/// A tied L2 layer in Kim et al.'s parametrisation: W_V^h = U_h W_Q^h.
fn kim_layer(
    r: &mut StdRng,
    d: usize,
    heads: usize,
    dk: usize,
    dv: usize,
    scale: f64,
) -> AttentionLayer<f64> {
    let wq = gauss_mat(r, heads * dk, d, scale / (d as f64).sqrt());
    let mut wv = Mat::<f64>::zeros(heads * dv, d);
    for h in 0..heads {
        let u = gauss_mat(r, dv, dk, 1.0 / (dk as f64).sqrt());
        let block = &u * wq.as_ref().subrows(h * dk, dk);
        wv.as_mut().subrows_mut(h * dv, dv).copy_from(&block);
    }
    let wo = gauss_mat(r, d, heads * dv, 1.0 / ((heads * dv) as f64).sqrt());
    AttentionLayer::new(
        heads,
        Kernel::L2,
        wq,
        gauss_vec(r, heads * dk, 0.3),
        gauss_mat(r, heads * dk, d, 1.0),
        vec![0.0; heads * dk],
        wv,
        gauss_vec(r, heads * dv, 0.3),
        wo,
        gauss_vec(r, d, 0.3),
    )
    .unwrap()
}

fn local_constant(layer: &AttentionLayer<f64>, x: &Mat<f64>, causal: bool, r: &mut StdRng) -> f64 {
    let lin = Linearization::new(layer, x.as_ref(), None, causal).unwrap();
    let mut v = gauss_mat(r, x.nrows(), x.ncols(), 1.0);
    let mut best: f64 = 0.0;
    for _ in 0..40 {
        v *= 1.0 / v.norm_l2();
        let jv = lin.jvp(v.as_ref()).unwrap();
        best = best.max(jv.norm_l2());
        v = lin.vjp(jv.as_ref()).unwrap();
    }
    best
}

#[test]
fn b5_is_never_exceeded() {
    let mut r = rng(99);
    let mut worst: f64 = 0.0;
    for seed in 0..800u64 {
        let mut lr = rng(seed);
        let d = r.random_range(1..=6);
        let heads = r.random_range(1..=3);
        let dk = r.random_range(1..=d);
        let dv = r.random_range(1..=3);
        let n = r.random_range(2..=40);
        let causal = r.random_bool(0.25);
        let layer = kim_layer(
            &mut lr,
            d,
            heads,
            dk,
            dv,
            10f64.powf(r.random_range(-0.5..0.8)),
        );
        let (bound, note) = l2_bounds(&layer, n).unwrap();
        let bound = bound
            .unwrap_or_else(|| panic!("B5 should apply: {note:?}"))
            .value;
        // Inputs at many scales (no radius: B5 holds on all of R^{n x d}), and a configuration that
        // places every other token at the distance maximising Lemma K1 from token 0 (in z-space,
        // along the top right singular vector of head 0's W_Q).
        let mut inputs = vec![];
        for _ in 0..3 {
            let sc = 10f64.powf(lr.random_range(-2.0..2.5));
            inputs.push(gauss_mat(&mut lr, n, d, sc));
        }
        let wq0 = layer.wq.as_ref().subrows(0, layer.dk).to_owned();
        let svd = wq0.svd().unwrap();
        let sig = svd.S().column_vector()[0];
        let v0 = svd.V().col(0).to_owned();
        let t = 1.0 + first_moment_bound((n - 1) as f64);
        let dist = t.sqrt() * (layer.dk as f64).powf(0.25) / sig;
        inputs.push(Mat::from_fn(
            n,
            d,
            |i, k| if i == 0 { 0.0 } else { dist * v0[k] },
        ));
        for x in &inputs {
            let a = local_constant(&layer, x, causal, &mut lr);
            assert!(a <= bound, "VIOLATION of B5: attained {a} > {bound}; seed {seed}, n {n}, d {d}, heads {heads}, causal {causal}\nX = {x:?}");
            worst = worst.max(a / bound);
        }
    }
    eprintln!("B5: largest attained/certified = {worst:.4}");
}

#[test]
fn b5_refuses_free_value_maps() {
    let mut r = rng(4);
    let layer = random_layer(&mut r, 5, 2, 2, 2, 5, Kernel::L2, 1.0, 0.0);
    let (bound, note) = l2_bounds(&layer, 8).unwrap();
    assert!(bound.is_none());
    assert!(note.unwrap().contains("row space"));
    let dot = random_layer(&mut r, 5, 2, 2, 2, 5, Kernel::Dot, 1.0, 0.0);
    assert!(l2_bounds(&dot, 8).is_err());
}
