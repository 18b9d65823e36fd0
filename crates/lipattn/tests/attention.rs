//! The attention operator against an independent textbook implementation, and the identities of
//! docs/background.md#identities.

mod common;
use common::*;
use lipattn::{AttentionLayer, Error, Kernel, Mat, Measure};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// The library's forward pass equals textbook attention to 1e-12 relative, over shapes, heads,
    /// kernels, biases, weights and masks.
    #[test]
    fn forward_matches_textbook(
        seed in 0u64..1_000_000, n in 1usize..12, d in 1usize..9, heads in 1usize..4,
        dk in 1usize..6, dv in 1usize..6, d_out in 1usize..7, kern in 0u8..2,
        bias in prop::sample::select(vec![0.0, 0.5]), weighted in any::<bool>(), causal in any::<bool>(),
        scale in prop::sample::select(vec![0.3, 1.0, 3.0]),
    ) {
        let mut r = rng(seed);
        let layer = random_layer(&mut r, d, heads, dk, dv, d_out, kernel_of(kern), scale, bias);
        let x = gauss_mat(&mut r, n, d, 1.0);
        let w = if weighted { Some(random_weights(&mut r, n)) } else { None };
        let y = layer.forward(x.as_ref(), w.as_deref(), causal).unwrap();
        let xr = rows(&x);
        let t = to_mat(&textbook::<f64>(&layer, &xr, &xr, w.as_deref(), causal));
        prop_assert!(rel_err(&y, &t) <= 1e-12, "rel err {}", rel_err(&y, &t));
    }

    /// Cross-attention and Gamma at arbitrary query points equal the textbook formula.
    #[test]
    fn cross_attention_matches_textbook(
        seed in 0u64..1_000_000, nq in 1usize..8, nc in 1usize..10, d in 1usize..6, heads in 1usize..3,
        kern in 0u8..2,
    ) {
        let mut r = rng(seed);
        let layer = random_layer(&mut r, d, heads, 3, 2, d, kernel_of(kern), 1.0, 0.3);
        let mu = Measure::normalised(gauss_mat(&mut r, nq, d, 1.0), random_weights(&mut r, nq)).unwrap();
        let nu = Measure::new(gauss_mat(&mut r, nc, d, 1.0), random_weights(&mut r, nc)).unwrap();
        let c = layer.cross_attention(&mu, &nu).unwrap();
        let t = to_mat(&textbook::<f64>(&layer, &rows(&mu.points().to_owned()), &rows(&nu.points().to_owned()), Some(nu.weights()), false));
        prop_assert!(rel_err(&c.points().to_owned(), &t) <= 1e-12);
        prop_assert_eq!(c.weights(), mu.weights());
    }

    /// F is permutation equivariant: permuting the atoms (with their weights) permutes the output.
    #[test]
    fn permutation_equivariance(seed in 0u64..1_000_000, n in 2usize..16, d in 1usize..6, kern in 0u8..2) {
        let mut r = rng(seed);
        let layer = random_layer(&mut r, d, 2, 3, 3, d, kernel_of(kern), 1.5, 0.2);
        let x = gauss_mat(&mut r, n, d, 1.0);
        let w = random_weights(&mut r, n);
        let perm: Vec<usize> = (0..n).rev().collect();
        let xp = Mat::from_fn(n, d, |i, k| x[(perm[i], k)]);
        let wp: Vec<f64> = perm.iter().map(|&i| w[i]).collect();
        let y = layer.forward(x.as_ref(), Some(&w), false).unwrap();
        let yp = layer.forward(xp.as_ref(), Some(&wp), false).unwrap();
        let y_perm = Mat::from_fn(n, d, |i, k| y[(perm[i], k)]);
        prop_assert!(rel_err(&yp, &y_perm) <= 1e-12);
    }
}

/// Repeating a token k times is the same as giving it k times the weight.
#[test]
fn duplication_invariance() {
    let mut r = rng(7);
    for kernel in [Kernel::Dot, Kernel::L2] {
        let layer = random_layer(&mut r, 4, 3, 2, 3, 4, kernel, 1.5, 0.3);
        let base = gauss_mat(&mut r, 3, 4, 1.0);
        // Sequence: a, b, a, c, a, b  -> measure {a: 1/2, b: 1/3, c: 1/6}.
        let order = [0usize, 1, 0, 2, 0, 1];
        let seq = Mat::from_fn(6, 4, |i, k| base[(order[i], k)]);
        let y_seq = layer.forward(seq.as_ref(), None, false).unwrap();
        let merged = Measure::uniform(seq.clone()).unwrap().merge_duplicates();
        assert_eq!(merged.len(), 3);
        assert!((merged.weights()[0] - 0.5).abs() < 1e-15);
        let fm = layer.self_attention(&merged).unwrap();
        for (i, &a) in order.iter().enumerate() {
            for k in 0..4 {
                let (u, v) = (y_seq[(i, k)], fm.points()[(a, k)]);
                assert!(
                    (u - v).abs() <= 1e-12 * (1.0 + v.abs()),
                    "{kernel:?} token {i}: {u} vs {v}"
                );
            }
        }
    }
}

/// The causal mask breaks both identities: it is a sequence operation, not a measure operation.
#[test]
fn causal_mask_breaks_equivariance_and_duplication() {
    let mut r = rng(11);
    let layer = random_layer(&mut r, 3, 1, 3, 3, 3, Kernel::Dot, 2.0, 0.0);
    let x = gauss_mat(&mut r, 5, 3, 1.0);
    let perm: Vec<usize> = (0..5).rev().collect();
    let xp = Mat::from_fn(5, 3, |i, k| x[(perm[i], k)]);
    let y = layer.forward(x.as_ref(), None, true).unwrap();
    let yp = layer.forward(xp.as_ref(), None, true).unwrap();
    let y_perm = Mat::from_fn(5, 3, |i, k| y[(perm[i], k)]);
    assert!(
        rel_err(&yp, &y_perm) > 1e-3,
        "causal attention should not be permutation equivariant"
    );
    // Without the mask the same inputs are equivariant (so the difference is the mask's doing).
    let y = layer.forward(x.as_ref(), None, false).unwrap();
    let yp = layer.forward(xp.as_ref(), None, false).unwrap();
    let y_perm = Mat::from_fn(5, 3, |i, k| y[(perm[i], k)]);
    assert!(rel_err(&yp, &y_perm) <= 1e-12);
    // Duplication: [a, b, a] vs the merged measure {a: 2/3, b: 1/3}: the first a sees only itself.
    let a_b_a = Mat::from_fn(3, 3, |i, k| x[(if i == 1 { 1 } else { 0 }, k)]);
    let yc = layer.forward(a_b_a.as_ref(), None, true).unwrap();
    assert!(
        (0..3).any(|k| (yc[(0, k)] - yc[(2, k)]).abs() > 1e-3),
        "causal: two copies of a differ"
    );
    let yn = layer.forward(a_b_a.as_ref(), None, false).unwrap();
    assert!((0..3).all(|k| (yn[(0, k)] - yn[(2, k)]).abs() <= 1e-14));
}

/// Gibbs principle: P_i maximises sum_j p_j s_ij - KL(p || w) with maximum log sum_j w_j e^{s_ij}.
#[test]
fn gibbs_identity() {
    let mut r = rng(3);
    for kernel in [Kernel::Dot, Kernel::L2] {
        let layer = random_layer(&mut r, 5, 2, 4, 2, 5, kernel, 2.0, 0.5);
        let n = 9;
        let x = gauss_mat(&mut r, n, 5, 1.0);
        let w = random_weights(&mut r, n);
        for h in 0..2 {
            let p = layer
                .probabilities(h, x.as_ref(), x.as_ref(), Some(&w), false)
                .unwrap();
            let s = layer.scores(h, x.as_ref(), x.as_ref()).unwrap();
            let objective = |i: usize, q: &[f64]| -> f64 {
                (0..n)
                    .map(|j| {
                        q[j] * s[(i, j)]
                            - if q[j] > 0.0 {
                                q[j] * (q[j] / w[j]).ln()
                            } else {
                                0.0
                            }
                    })
                    .sum()
            };
            for i in 0..n {
                let pi: Vec<f64> = (0..n).map(|j| p[(i, j)]).collect();
                assert!((pi.iter().sum::<f64>() - 1.0).abs() < 1e-14);
                let m = (0..n).map(|j| s[(i, j)]).fold(f64::NEG_INFINITY, f64::max);
                let lse = m
                    + (0..n)
                        .map(|j| w[j] * (s[(i, j)] - m).exp())
                        .sum::<f64>()
                        .ln();
                let at_p = objective(i, &pi);
                assert!(
                    (at_p - lse).abs() <= 1e-12 * (1.0 + lse.abs()),
                    "{at_p} vs {lse}"
                );
                for _ in 0..50 {
                    let noise = random_weights(&mut r, n);
                    let t: f64 = r.random_range(0.0..1.0);
                    let qv: Vec<f64> = pi
                        .iter()
                        .zip(&noise)
                        .map(|(a, b)| (1.0 - t) * a + t * b)
                        .collect();
                    assert!(objective(i, &qv) <= lse + 1e-12);
                }
            }
        }
    }
}
use rand::Rng;

/// Gaussian context: Gamma_mu(x) = W_O (W_V (m + S A^T x) + b_V) + b_O for mu = N(m, S) and the
/// score x^T A y; the empirical context of n samples converges at rate n^{-1/2}.
#[test]
fn gaussian_closed_form_and_rate() {
    let d = 2;
    let mut r = rng(5);
    let mut layer = random_layer(&mut r, d, 1, 2, 2, 2, Kernel::Dot, 0.8, 0.0);
    layer.bv = vec![0.1, -0.2];
    layer.bo = vec![0.3, 0.05];
    let m = [0.5, -0.25];
    let l = [[0.8, 0.0], [0.3, 0.5]]; // S = L L^T
    let s_mat = Mat::from_fn(2, 2, |i, j| (0..2).map(|k| l[i][k] * l[j][k]).sum::<f64>());
    let a = layer.wq.transpose() * &layer.wk * (1.0 / (layer.dk as f64).sqrt());
    let x = [0.7, -0.4];
    let xv = Mat::from_fn(2, 1, |i, _| x[i]);
    let mv = Mat::from_fn(2, 1, |i, _| m[i]);
    let mean = &mv + &s_mat * a.transpose() * &xv;
    let bv = Mat::from_fn(2, 1, |i, _| layer.bv[i]);
    let bo = Mat::from_fn(2, 1, |i, _| layer.bo[i]);
    let exact = &layer.wo * (&layer.wv * &mean + &bv) + &bo;
    let query = Mat::from_fn(1, 2, |_, k| x[k]);
    let ns = [250usize, 1000, 4000, 16000];
    let reps = 24;
    let mut log_n = Vec::new();
    let mut log_e = Vec::new();
    for &n in &ns {
        let mut mse = 0.0;
        for _ in 0..reps {
            let z = gauss_mat(&mut r, n, 2, 1.0);
            let pts = Mat::from_fn(n, 2, |i, k| {
                m[k] + l[k][0] * z[(i, 0)] + l[k][1] * z[(i, 1)]
            });
            let mu = Measure::uniform(pts).unwrap();
            let g = layer.gamma_measure(query.as_ref(), &mu).unwrap();
            mse += (0..2)
                .map(|k| (g[(0, k)] - exact[(k, 0)]).powi(2))
                .sum::<f64>()
                / reps as f64;
        }
        log_n.push((n as f64).ln());
        log_e.push(mse.sqrt().ln());
    }
    let k = log_n.len() as f64;
    let (mx, my) = (log_n.iter().sum::<f64>() / k, log_e.iter().sum::<f64>() / k);
    let slope = log_n
        .iter()
        .zip(&log_e)
        .map(|(a, b)| (a - mx) * (b - my))
        .sum::<f64>()
        / log_n.iter().map(|a| (a - mx).powi(2)).sum::<f64>();
    assert!(
        (-0.62..=-0.38).contains(&slope),
        "fitted slope {slope}, expected about -1/2"
    );
    // At the largest n the empirical value is already close.
    assert!(log_e.last().unwrap().exp() < 0.05);
}

/// Logits of size 1e6 give finite results (hard attention); overflowing scores are an error.
#[test]
fn huge_logits_are_finite() {
    let mut r = rng(9);
    for kernel in [Kernel::Dot, Kernel::L2] {
        let layer = random_layer(&mut r, 3, 2, 2, 2, 3, kernel, 1.0, 0.1);
        let x = gauss_mat(&mut r, 6, 3, 1.0);
        // Scale tokens so that the scores reach about 1e6.
        let base = layer.scores(0, x.as_ref(), x.as_ref()).unwrap();
        let mx = (0..6)
            .flat_map(|i| (0..6).map(move |j| (i, j)))
            .map(|(i, j)| base[(i, j)].abs())
            .fold(0.0, f64::max);
        let t = (1e6 / mx).sqrt();
        let xs = Mat::from_fn(6, 3, |i, k| t * x[(i, k)]);
        let big = layer.scores(0, xs.as_ref(), xs.as_ref()).unwrap();
        let bmx = (0..6)
            .flat_map(|i| (0..6).map(move |j| (i, j)))
            .map(|(i, j)| big[(i, j)].abs())
            .fold(0.0, f64::max);
        assert!(bmx > 5e5, "scores reach {bmx}");
        let y = layer.forward(xs.as_ref(), None, false).unwrap();
        assert!((0..6).all(|i| (0..3).all(|k| y[(i, k)].is_finite())));
        let p = layer
            .probabilities(0, xs.as_ref(), xs.as_ref(), None, false)
            .unwrap();
        for i in 0..6 {
            let row_sum: f64 = (0..6).map(|j| p[(i, j)]).sum();
            assert!((row_sum - 1.0).abs() < 1e-12);
        }
        let huge = Mat::from_fn(6, 3, |i, k| 1e200 * x[(i, k)]);
        match layer.forward(huge.as_ref(), None, false) {
            Err(Error::Numerical(msg)) => assert!(msg.contains("overflowed"), "{msg}"),
            other => panic!("expected an overflow error, got {other:?}"),
        }
    }
}

#[test]
fn bad_inputs_get_clear_errors() {
    let mut r = rng(1);
    let layer = random_layer(&mut r, 4, 2, 2, 2, 4, Kernel::Dot, 1.0, 0.1);
    let mut x = gauss_mat(&mut r, 5, 4, 1.0);
    let wide = gauss_mat(&mut r, 5, 3, 1.0);
    let e = layer
        .forward(wide.as_ref(), None, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("width") && e.contains('4') && e.contains('3'),
        "{e}"
    );
    let e = layer
        .forward(Mat::<f64>::zeros(0, 4).as_ref(), None, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty"), "{e}");
    let e = layer
        .forward(x.as_ref(), Some(&[0.2; 5][..4]), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("weights"), "{e}");
    let e = layer
        .forward(x.as_ref(), Some(&[0.3; 5]), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("sum"), "{e}");
    let e = layer
        .forward(x.as_ref(), Some(&[0.5, 0.5, 0.2, -0.2, 0.0]), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("positive"), "{e}");
    let q = gauss_mat(&mut r, 2, 4, 1.0);
    let e = layer
        .gamma(q.as_ref(), x.as_ref(), None, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("causal"), "{e}");
    x[(2, 1)] = f64::NAN;
    let e = layer
        .forward(x.as_ref(), None, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("row 2, column 1") && e.contains("NaN"), "{e}");
    // Layer construction rejects inconsistent shapes and non-finite weights.
    let bad = AttentionLayer::new(
        2,
        Kernel::Dot,
        gauss_mat(&mut r, 4, 4, 1.0),
        vec![0.0; 4],
        gauss_mat(&mut r, 3, 4, 1.0),
        vec![0.0; 4],
        gauss_mat(&mut r, 4, 4, 1.0),
        vec![0.0; 4],
        gauss_mat(&mut r, 4, 4, 1.0),
        vec![0.0; 4],
    );
    assert!(bad.unwrap_err().to_string().contains("W_K"));
    let mut wq = gauss_mat(&mut r, 4, 4, 1.0);
    wq[(1, 1)] = f64::INFINITY;
    let bad = AttentionLayer::new(
        2,
        Kernel::Dot,
        wq,
        vec![0.0; 4],
        gauss_mat(&mut r, 4, 4, 1.0),
        vec![0.0; 4],
        gauss_mat(&mut r, 4, 4, 1.0),
        vec![0.0; 4],
        gauss_mat(&mut r, 4, 4, 1.0),
        vec![0.0; 4],
    );
    assert!(bad
        .unwrap_err()
        .to_string()
        .contains("W_Q (row 1, column 1)"));
}

/// The f32 engine stays within f32 rounding of the f64 result.
#[test]
fn f32_forward_close_to_f64() {
    let mut r = rng(21);
    for kernel in [Kernel::Dot, Kernel::L2] {
        let layer = random_layer(&mut r, 16, 4, 4, 4, 16, kernel, 1.0, 0.2);
        let x = gauss_mat(&mut r, 32, 16, 1.0);
        let y = layer.forward(x.as_ref(), None, false).unwrap();
        let l32 = layer.cast::<f32>();
        let x32 = Mat::from_fn(32, 16, |i, k| x[(i, k)] as f32);
        let y32 = l32.forward(x32.as_ref(), None, false).unwrap();
        let y32 = Mat::from_fn(32, 16, |i, k| y32[(i, k)] as f64);
        assert!(rel_err(&y32, &y) < 1e-5, "{}", rel_err(&y32, &y));
    }
}

/// The vectorised exp of the softmax against libm, over its whole domain [EXP_UNDERFLOW, 0]:
/// within 2 ulp (relative 2.4e-7 in f32, 4.5e-16 in f64), exactly 1 at 0, and 0 below the
/// underflow threshold.
#[test]
fn fast_exp_matches_libm() {
    use lipattn::fastexp::{exp_nonpositive_f32, exp_nonpositive_f64};
    let m = 200_000;
    let xs64: Vec<f64> = (0..=m).map(|k| -708.0 * k as f64 / m as f64).collect();
    let mut y64 = xs64.clone();
    exp_nonpositive_f64(&mut y64, -708.0);
    for (&x, &y) in xs64.iter().zip(&y64) {
        let e = x.exp();
        assert!(
            (y - e).abs() <= 2.0 * f64::EPSILON * e,
            "f64 exp({x}) = {y}, libm {e}"
        );
    }
    let xs32: Vec<f32> = (0..=m).map(|k| -87.0 * k as f32 / m as f32).collect();
    let mut y32 = xs32.clone();
    exp_nonpositive_f32(&mut y32, -87.0);
    for (&x, &y) in xs32.iter().zip(&y32) {
        let e = (x as f64).exp();
        assert!(
            (y as f64 - e).abs() <= 2.0 * f32::EPSILON as f64 * e,
            "f32 exp({x}) = {y}, exact {e}"
        );
    }
    let (mut a, mut b) = ([0.0f64, -708.5, -1e300], [0.0f32, -87.5, -1e30]);
    exp_nonpositive_f64(&mut a, -708.0);
    exp_nonpositive_f32(&mut b, -87.0);
    assert_eq!(a, [1.0, 0.0, 0.0]);
    assert_eq!(b, [1.0, 0.0, 0.0]);
}
