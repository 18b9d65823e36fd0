//! Lemma J's weightings (docs/bounds.md#b1-joint): every weighting B1-joint may use must bound
//! sum_h w_h |A_h^T x + c_h|^2 by (a_w R + c_w)^2 on B_R, the numerically chosen one included,
//! and the chosen one must shrink the softmax factor where the heads differ.

mod common;
use common::*;
use lipattn::bounds::LayerConstants;
use lipattn::{AttentionLayer, Kernel, Mat};
use rand::Rng;

/// beta_h(x) = A_h^T x + c_h = s W_K^h^T (W_Q^h x + b_Q^h), s = 1 / sqrt(score divisor).
fn scores(layer: &AttentionLayer<f64>, h: usize, x: &[f64]) -> Vec<f64> {
    let (d, dk) = (layer.d_in(), layer.dk);
    let s = 1.0 / (layer.score_divisor_sq as f64).sqrt();
    let q: Vec<f64> = (0..dk)
        .map(|i| {
            layer.bq[h * dk + i]
                + (0..d)
                    .map(|k| layer.wq[(h * dk + i, k)] * x[k])
                    .sum::<f64>()
        })
        .collect();
    (0..d)
        .map(|k| {
            s * (0..dk)
                .map(|i| layer.wk[(h * dk + i, k)] * q[i])
                .sum::<f64>()
        })
        .collect()
}

/// The top eigenvector of sum_h w_h A_h A_h^T, formed densely (an independent route to the
/// direction where Lemma J is tightest).
fn top_direction(layer: &AttentionLayer<f64>, w: &[f64]) -> Vec<f64> {
    let d = layer.d_in();
    let mut g = Mat::<f64>::zeros(d, d);
    for (h, &wh) in w.iter().enumerate() {
        let cols: Vec<Vec<f64>> = (0..d)
            .map(|k| {
                let mut e = vec![0.0; d];
                e[k] = 1.0;
                let mut b = scores(layer, h, &e);
                let b0 = scores(layer, h, &vec![0.0; d]);
                b.iter_mut().zip(&b0).for_each(|(x, y)| *x -= y);
                b
            })
            .collect();
        // cols[k] = A_h^T e_k, so (A_h A_h^T)_{ij} = sum_k (A_h^T e_i)_k (A_h^T e_j)_k.
        for i in 0..d {
            for j in 0..d {
                g[(i, j)] += wh
                    * cols[i]
                        .iter()
                        .zip(&cols[j])
                        .map(|(a, b)| a * b)
                        .sum::<f64>();
            }
        }
    }
    let evd = g.self_adjoint_eigen(faer::Side::Lower).unwrap();
    let top = (0..d)
        .max_by(|&a, &b| {
            evd.S().column_vector()[a]
                .partial_cmp(&evd.S().column_vector()[b])
                .unwrap()
        })
        .unwrap();
    (0..d).map(|i| evd.U()[(i, top)]).collect()
}

#[test]
fn every_weighting_bounds_the_joint_scores_and_the_search_gains() {
    let (mut optimised, mut gained, mut worst) = (0usize, 0usize, 0.0f64);
    for seed in 0..40u64 {
        let mut r = rng(70_000 + seed);
        let (d, heads, dk) = (
            r.random_range(4..=16),
            r.random_range(2..=6),
            r.random_range(1..=4),
        );
        let bias = if seed % 3 == 0 { 0.0 } else { 0.5 };
        let mut layer = random_layer(&mut r, d, heads, dk, 2, d, Kernel::Dot, 1.0, bias);
        // Heads of different scales and value norms, so that the weights matter.
        for h in 0..heads {
            let (sq, sv) = (r.random_range(0.2..3.0), r.random_range(0.2..3.0));
            for i in 0..dk {
                for k in 0..d {
                    layer.wq[(h * dk + i, k)] *= sq;
                }
            }
            for i in 0..2 {
                for k in 0..d {
                    layer.wv[(h * 2 + i, k)] *= sv;
                }
            }
        }
        let c = LayerConstants::of(&layer).unwrap();
        let joint = c
            .joint
            .as_ref()
            .expect("several dot-product heads have a joint form");
        let radius = r.random_range(0.5..4.0);
        for jw in &joint.weightings {
            let bound = (jw.a * radius + jw.c).powi(2);
            let mut xs: Vec<Vec<f64>> = (0..50).map(|_| gauss_vec(&mut r, d, 1.0)).collect();
            let top = top_direction(&layer, &jw.weights);
            xs.push(top.iter().map(|x| -x).collect());
            xs.push(top);
            for x in xs {
                let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
                let x: Vec<f64> = x.iter().map(|v| v * radius / norm).collect();
                let lhs: f64 = (0..heads)
                    .map(|h| {
                        jw.weights[h] * scores(&layer, h, &x).iter().map(|v| v * v).sum::<f64>()
                    })
                    .sum();
                // The bound is rounded upward; the test's own sums round too (1e-12 covers them).
                assert!(
                    lhs <= bound * (1.0 + 1e-12),
                    "Lemma J fails: {lhs} > {bound}; seed {seed}, weights {:?}",
                    jw.weights
                );
                worst = worst.max(lhs / bound);
            }
        }
        // The softmax factor a_w^2 sum_h m_h^2 / w_h the search minimises.
        let factor = |jw: &lipattn::bounds::joint::JointWeights| {
            jw.a * jw.a
                * c.heads
                    .iter()
                    .zip(&jw.weights)
                    .map(|(k, w)| k.m * k.m / w)
                    .sum::<f64>()
        };
        if let [base, opt] = joint.weightings.as_slice() {
            optimised += 1;
            assert!(
                factor(opt) <= factor(base),
                "seed {seed}: the search made it worse"
            );
            gained += usize::from(factor(opt) < 0.95 * factor(base));
        }
    }
    eprintln!("Lemma J: largest lhs / bound {worst:.6}; optimised {optimised} of 40, gained >5% on {gained}");
    assert!(
        worst > 0.5,
        "the top direction should come near the bound ({worst})"
    );
    assert!(
        gained >= 10,
        "the weight search should pay on heads of different scales ({gained})"
    );
}
