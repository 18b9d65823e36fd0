//! JVP, VJP and the query Jacobian against central differences and forward-mode dual numbers.

mod common;
use common::*;
use lipattn::{query_jacobian, Kernel, Linearization, Mat, Measure};
use num_dual::Dual64;
use proptest::prelude::*;

/// J(X) G by forward-mode dual numbers through the textbook implementation.
fn dual_jvp(
    layer: &lipattn::AttentionLayer<f64>,
    x: &Mat<f64>,
    g: &Mat<f64>,
    w: Option<&[f64]>,
    causal: bool,
) -> Mat<f64> {
    let xd: Vec<Vec<Dual64>> = (0..x.nrows())
        .map(|i| {
            (0..x.ncols())
                .map(|k| Dual64::new(x[(i, k)], g[(i, k)]))
                .collect()
        })
        .collect();
    let y = textbook(layer, &xd, &xd, w, causal);
    Mat::from_fn(y.len(), y[0].len(), |i, k| y[i][k].eps)
}

/// J(X) G by central differences of the library's forward pass (step h, error O(h^2)).
fn fd_jvp(
    layer: &lipattn::AttentionLayer<f64>,
    x: &Mat<f64>,
    g: &Mat<f64>,
    w: Option<&[f64]>,
    causal: bool,
) -> Mat<f64> {
    let h = 1e-5;
    let xp = x + g * h;
    let xm = x - g * h;
    let yp = layer.forward(xp.as_ref(), w, causal).unwrap();
    let ym = layer.forward(xm.as_ref(), w, causal).unwrap();
    (yp - ym) * (0.5 / h)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn jvp_vjp_against_duals_and_differences(
        seed in 0u64..1_000_000, n in 1usize..10, d in 1usize..7, heads in 1usize..4,
        dk in 1usize..5, dv in 1usize..5, d_out in 1usize..6, kern in 0u8..2,
        bias in prop::sample::select(vec![0.0, 0.4]), weighted in any::<bool>(), causal in any::<bool>(),
    ) {
        let mut r = rng(seed);
        let layer = random_layer(&mut r, d, heads, dk, dv, d_out, kernel_of(kern), 1.2, bias);
        let x = gauss_mat(&mut r, n, d, 1.0);
        let w = if weighted { Some(random_weights(&mut r, n)) } else { None };
        let lin = Linearization::new(&layer, x.as_ref(), w.as_deref(), causal).unwrap();
        prop_assert!(rel_err(&lin.output().to_owned(), &layer.forward(x.as_ref(), w.as_deref(), causal).unwrap()) == 0.0);
        for _ in 0..3 {
            let g = gauss_mat(&mut r, n, d, 1.0);
            let jv = lin.jvp(g.as_ref()).unwrap();
            let dual = dual_jvp(&layer, &x, &g, w.as_deref(), causal);
            prop_assert!(rel_err(&jv, &dual) <= 1e-7, "JVP vs dual: {}", rel_err(&jv, &dual));
            let fd = fd_jvp(&layer, &x, &g, w.as_deref(), causal);
            prop_assert!(rel_err(&jv, &fd) <= 1e-7, "JVP vs central differences: {}", rel_err(&jv, &fd));
            // VJP: <u, J^T v> = <J u, v> with J u from dual numbers, for a random cotangent v;
            // and the adjoint identity to 1e-12 between the library's own JVP and VJP.
            let v = gauss_mat(&mut r, n, d_out, 1.0);
            let jtv = lin.vjp(v.as_ref()).unwrap();
            let lhs = inner(&g, &jtv);
            let rhs = inner(&dual, &v);
            prop_assert!((lhs - rhs).abs() <= 1e-7 * (lhs.abs() + rhs.abs()).max(1e-3), "VJP vs dual: {lhs} {rhs}");
            let own = inner(&jv, &v);
            prop_assert!((lhs - own).abs() <= 1e-12 * lhs.abs().max(own.abs()).max(1.0), "adjoint: {lhs} {own}");
        }
    }
}

/// The VJP equals the full gradient of <v, f(X)> computed coordinate by coordinate with dual numbers.
#[test]
fn vjp_equals_dual_gradient() {
    let mut r = rng(17);
    for kernel in [Kernel::Dot, Kernel::L2] {
        for causal in [false, true] {
            let (n, d) = (6, 4);
            let layer = random_layer(&mut r, d, 2, 3, 2, 5, kernel, 1.5, 0.3);
            let x = gauss_mat(&mut r, n, d, 1.0);
            let v = gauss_mat(&mut r, n, 5, 1.0);
            let lin = Linearization::new(&layer, x.as_ref(), None, causal).unwrap();
            let gx = lin.vjp(v.as_ref()).unwrap();
            let grad = Mat::from_fn(n, d, |i, k| {
                let e = Mat::from_fn(n, d, |a, b| if (a, b) == (i, k) { 1.0 } else { 0.0 });
                inner(&dual_jvp(&layer, &x, &e, None, causal), &v)
            });
            assert!(
                rel_err(&gx, &grad) <= 1e-7,
                "{kernel:?} causal={causal}: {}",
                rel_err(&gx, &grad)
            );
        }
    }
}

/// Long sequences: the JVP and VJP work through the queries in blocks (128 at a time), so n = 300
/// spans full blocks and a partial one; under a causal mask each block sees a different number
/// of keys. Checked against dual numbers for both kernels, with and without weights and mask.
#[test]
fn jvp_vjp_across_query_blocks() {
    let mut r = rng(29);
    let (n, d) = (300, 5);
    for kernel in [Kernel::Dot, Kernel::L2] {
        for (causal, weighted) in [(false, false), (true, false), (false, true)] {
            let layer = random_layer(&mut r, d, 2, 3, 4, 6, kernel, 1.3, 0.3);
            let x = gauss_mat(&mut r, n, d, 1.0);
            let w = weighted.then(|| random_weights(&mut r, n));
            let lin = Linearization::new(&layer, x.as_ref(), w.as_deref(), causal).unwrap();
            for _ in 0..2 {
                let g = gauss_mat(&mut r, n, d, 1.0);
                let jv = lin.jvp(g.as_ref()).unwrap();
                let dual = dual_jvp(&layer, &x, &g, w.as_deref(), causal);
                let e = rel_err(&jv, &dual);
                assert!(
                    e <= 1e-9,
                    "{kernel:?} causal={causal} weighted={weighted}: JVP {e}"
                );
                let v = gauss_mat(&mut r, n, 6, 1.0);
                let (lhs, rhs) = (inner(&g, &lin.vjp(v.as_ref()).unwrap()), inner(&dual, &v));
                assert!(
                    (lhs - rhs).abs() <= 1e-9 * lhs.abs().max(rhs.abs()),
                    "{kernel:?} causal={causal} weighted={weighted}: VJP {lhs} vs {rhs}"
                );
            }
        }
    }
}

/// JVP and VJP reject tangents of the wrong shape or with NaN.
#[test]
fn derivative_inputs_are_checked() {
    let mut r = rng(2);
    let layer = random_layer(&mut r, 3, 1, 2, 2, 3, Kernel::Dot, 1.0, 0.0);
    let x = gauss_mat(&mut r, 4, 3, 1.0);
    let lin = Linearization::new(&layer, x.as_ref(), None, false).unwrap();
    assert!(lin
        .jvp(gauss_mat(&mut r, 3, 3, 1.0).as_ref())
        .unwrap_err()
        .to_string()
        .contains("4x3"));
    assert!(lin
        .vjp(gauss_mat(&mut r, 4, 2, 1.0).as_ref())
        .unwrap_err()
        .to_string()
        .contains("4x3"));
    let mut g = gauss_mat(&mut r, 4, 3, 1.0);
    g[(0, 0)] = f64::INFINITY;
    assert!(lin.jvp(g.as_ref()).is_err());
}

/// The `_into` forms write every entry of a caller's buffer (one full of NaN comes back finite and
/// equal to `jvp`/`vjp`), reject outputs of the wrong shape, and give the same results when
/// several threads share one linearisation (the internal buffers are reused, or taken fresh by a
/// concurrent caller).
#[test]
fn into_forms_overwrite_their_outputs_and_tolerate_concurrent_callers() {
    let mut r = rng(5);
    for (kernel, causal) in [(Kernel::Dot, false), (Kernel::L2, true)] {
        let layer = random_layer(&mut r, 12, 3, 4, 4, 10, kernel, 1.0, 0.3);
        let x = gauss_mat(&mut r, 37, 12, 1.0);
        let lin = Linearization::new(&layer, x.as_ref(), None, causal).unwrap();
        let gs: Vec<Mat<f64>> = (0..4).map(|_| gauss_mat(&mut r, 37, 12, 1.0)).collect();
        let ys: Vec<Mat<f64>> = (0..4).map(|_| gauss_mat(&mut r, 37, 10, 1.0)).collect();
        let jvps: Vec<Mat<f64>> = gs.iter().map(|g| lin.jvp(g.as_ref()).unwrap()).collect();
        let vjps: Vec<Mat<f64>> = ys.iter().map(|y| lin.vjp(y.as_ref()).unwrap()).collect();
        let mut out = Mat::<f64>::from_fn(37, 10, |_, _| f64::NAN);
        lin.jvp_into(gs[0].as_ref(), out.as_mut()).unwrap();
        assert_eq!(out, jvps[0]);
        let mut back = Mat::<f64>::from_fn(37, 12, |_, _| f64::NAN);
        lin.vjp_into(ys[0].as_ref(), back.as_mut()).unwrap();
        assert_eq!(back, vjps[0]);
        let err = lin
            .jvp_into(gs[0].as_ref(), Mat::<f64>::zeros(37, 12).as_mut())
            .unwrap_err()
            .to_string();
        assert!(err.contains("JVP output") && err.contains("37x10"), "{err}");
        let err = lin
            .vjp_into(ys[0].as_ref(), Mat::<f64>::zeros(36, 12).as_mut())
            .unwrap_err()
            .to_string();
        assert!(err.contains("VJP output") && err.contains("37x12"), "{err}");
        std::thread::scope(|s| {
            for t in 0..4 {
                let (lin, gs, ys, jvps, vjps) = (&lin, &gs, &ys, &jvps, &vjps);
                s.spawn(move || {
                    for k in 0..20 {
                        let i = (t + k) % 4;
                        assert_eq!(lin.jvp(gs[i].as_ref()).unwrap(), jvps[i]);
                        assert_eq!(lin.vjp(ys[i].as_ref()).unwrap(), vjps[i]);
                    }
                });
            }
        });
    }
}

/// The Jacobian in the query alone against dual numbers and central differences of Gamma.
#[test]
fn query_jacobian_matches() {
    let mut r = rng(4);
    for kernel in [Kernel::Dot, Kernel::L2] {
        for _ in 0..20 {
            let (n, d) = (7, 4);
            let layer = random_layer(&mut r, d, 3, 2, 3, 5, kernel, 1.5, 0.4);
            let mu = Measure::new(gauss_mat(&mut r, n, d, 1.0), random_weights(&mut r, n)).unwrap();
            let x = gauss_vec(&mut r, d, 1.0);
            let jac = query_jacobian(&layer, &x, &mu).unwrap();
            let ctx: Vec<Vec<Dual64>> = (0..n)
                .map(|i| (0..d).map(|k| Dual64::from(mu.points()[(i, k)])).collect())
                .collect();
            let dual = Mat::from_fn(5, d, |a, b| {
                let q: Vec<Dual64> = (0..d)
                    .map(|k| Dual64::new(x[k], if k == b { 1.0 } else { 0.0 }))
                    .collect();
                textbook(&layer, &[q], &ctx, Some(mu.weights()), false)[0][a].eps
            });
            assert!(
                rel_err(&jac, &dual) <= 1e-10,
                "{kernel:?}: {}",
                rel_err(&jac, &dual)
            );
            let h = 1e-5;
            let fd = Mat::from_fn(5, d, |a, b| {
                let mut xp = x.clone();
                let mut xm = x.clone();
                xp[b] += h;
                xm[b] -= h;
                let gp = layer
                    .gamma_measure(Mat::from_fn(1, d, |_, k| xp[k]).as_ref(), &mu)
                    .unwrap();
                let gm = layer
                    .gamma_measure(Mat::from_fn(1, d, |_, k| xm[k]).as_ref(), &mu)
                    .unwrap();
                (gp[(0, a)] - gm[(0, a)]) / (2.0 * h)
            });
            assert!(rel_err(&jac, &fd) <= 1e-7);
        }
    }
}

/// The f32 JVP/VJP stay within f32 rounding of f64 at a realistic size.
#[test]
fn f32_derivatives_close_to_f64() {
    let mut r = rng(8);
    let layer = random_layer(&mut r, 48, 4, 12, 12, 48, Kernel::Dot, 1.0, 0.1);
    let x = gauss_mat(&mut r, 40, 48, 1.0);
    let g = gauss_mat(&mut r, 40, 48, 1.0);
    let lin = Linearization::new(&layer, x.as_ref(), None, false).unwrap();
    let l32 = layer.cast::<f32>();
    let c32 = |m: &Mat<f64>| Mat::from_fn(m.nrows(), m.ncols(), |i, k| m[(i, k)] as f32);
    let c64 = |m: &Mat<f32>| Mat::from_fn(m.nrows(), m.ncols(), |i, k| m[(i, k)] as f64);
    let x32 = c32(&x);
    let lin32 = Linearization::new(&l32, x32.as_ref(), None, false).unwrap();
    let j64 = lin.jvp(g.as_ref()).unwrap();
    let j32 = c64(&lin32.jvp(c32(&g).as_ref()).unwrap());
    assert!(rel_err(&j32, &j64) < 1e-4, "{}", rel_err(&j32, &j64));
    let v64 = lin.vjp(j64.as_ref()).unwrap();
    let v32 = c64(&lin32.vjp(c32(&j64).as_ref()).unwrap());
    assert!(rel_err(&v32, &v64) < 1e-4, "{}", rel_err(&v32, &v64));
}
