//! Invertible attention, infinite depth and continuous depth (docs/dynamics.md): every
//! certificate checked against the truth on many random settings.

use lipattn::dynamics::certify::{self, CertifiedDomain};
use lipattn::dynamics::flow::{
    clustering, gronwall_check, identity_layer, integrate, loglog_slope, mean_field, sphere_sample,
};
use lipattn::dynamics::logdet::{dense_jacobian, logdet_exact, logdet_series, truncation_bound};
use lipattn::dynamics::synthetic::{random_layer, random_tokens};
use lipattn::dynamics::{
    frobenius, max_row_norm, solve, FixedPointMap, FlowOptions, Integrator, InvertibleBlock,
    MeasureFixedPoint, Projection, SolveOptions, Solver, TokenFixedPoint, Variant,
};
use lipattn::estimation::{local_norm, LanczosOptions, Method, SplitMix};
use lipattn::{Error, Kernel, Mat, Measure};

fn diff(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    frobenius((a - b).as_ref())
}

fn opts(atol: f64) -> SolveOptions {
    SolveOptions {
        atol,
        max_evals: 5000,
        ..Default::default()
    }
}

/// A block with a certified constant of 0.9 on n tokens and its exact preimage.
fn l2_block(seed: u64, n: usize, d: usize, heads: usize, c: f64) -> (InvertibleBlock, Mat<f64>) {
    let layer = random_layer(d, heads, Kernel::L2, 0.3, seed).unwrap();
    let block = InvertibleBlock::new(&layer, n, c, None).unwrap();
    (block, random_tokens(n, d, 1.5, seed + 1000))
}

fn dot_block(seed: u64, n: usize, d: usize, heads: usize, c: f64) -> (InvertibleBlock, Mat<f64>) {
    let layer = random_layer(d, heads, Kernel::Dot, 0.3, seed).unwrap();
    let x = random_tokens(n, d, 0.6, seed + 1000);
    let radius = 3.0 * max_row_norm(x.as_ref()) + 1.0;
    (InvertibleBlock::new(&layer, n, c, Some(radius)).unwrap(), x)
}

#[test]
fn inversion_reconstructs_to_1e_10() {
    for seed in 0..6 {
        for (block, x) in [
            l2_block(seed, 12, 8, 2, 0.9),
            dot_block(seed, 10, 6, 2, 0.9),
        ] {
            let y = block.forward(x.as_ref()).unwrap();
            for solver in [Solver::Picard, Solver::anderson(), Solver::broyden()] {
                let inv = block.inverse(y.as_ref(), &solver, &opts(1e-12)).unwrap();
                let err = diff(&inv.x, &x);
                assert!(
                    err <= 1e-10,
                    "seed {seed} {}: reconstruction {err:e}",
                    inv.solver
                );
                assert!(inv.residual <= 1e-12);
                let bound = inv.error_bound.expect("certified");
                assert!(
                    err <= bound,
                    "seed {seed}: error {err:e} above bound {bound:e}"
                );
                assert!(block.certificate.constant <= 0.9);
            }
        }
    }
}

#[test]
fn a_posteriori_bound_covers_true_error_and_a_priori_count_covers_steps() {
    for seed in 0..10 {
        let c = [0.5, 0.9, 0.99][seed as usize % 3];
        for (block, x) in [l2_block(seed, 10, 6, 2, c), dot_block(seed, 8, 4, 1, c)] {
            let y = block.forward(x.as_ref()).unwrap();
            // The reference solve is two orders of magnitude below the tightest tolerance.
            let truth = block
                .inverse(y.as_ref(), &Solver::anderson(), &opts(1e-14))
                .unwrap()
                .x;
            for tol in [1e-2, 1e-4, 1e-7, 1e-10] {
                for solver in [Solver::Picard, Solver::anderson(), Solver::broyden()] {
                    let inv = block.inverse(y.as_ref(), &solver, &opts(tol)).unwrap();
                    let err = diff(&inv.x, &truth);
                    let bound = inv.error_bound.unwrap();
                    assert!(
                        err <= bound,
                        "seed {seed} c {c} tol {tol:e} {}: true error {err:e} > bound {bound:e}",
                        inv.solver
                    );
                    if matches!(solver, Solver::Picard) {
                        let k = inv.a_priori_iterations.unwrap();
                        assert!(
                            inv.iterations <= k,
                            "picard took {} > a priori {k}",
                            inv.iterations
                        );
                    }
                }
                // The a-priori count for the error: that many Picard steps are within tol of x*.
                let inv = block
                    .inverse(y.as_ref(), &Solver::Picard, &opts(tol))
                    .unwrap();
                let k = inv.a_priori_iterations_error.unwrap();
                let p = block.inverse_problem(y.as_ref()).unwrap();
                let mut xk = y.clone();
                for _ in 0..k {
                    xk = p.apply_mat(xk.as_ref()).unwrap();
                }
                let err = diff(&xk, &truth);
                assert!(
                    err <= tol * (1.0 + 1e-6) + 1e-13,
                    "{k} steps: error {err:e} > {tol:e}"
                );
            }
        }
    }
}

#[test]
fn certified_constant_covers_attained_local_constant() {
    let mut rng = SplitMix::new(7);
    for seed in 0..12 {
        let (n, d, heads) = (
            4 + seed as usize % 5,
            3 + seed as usize % 4,
            1 + seed as usize % 2,
        );
        let kernel = if seed % 2 == 0 {
            Kernel::L2
        } else {
            Kernel::Dot
        };
        let layer = random_layer(d, heads, kernel, 0.5, seed).unwrap();
        let radius = 2.0;
        let block = match kernel {
            Kernel::L2 => InvertibleBlock::new(&layer, n, 0.9, None).unwrap(),
            Kernel::Dot => InvertibleBlock::new(&layer, n, 0.9, Some(radius)).unwrap(),
        };
        assert!(block.certificate.constant <= 0.9);
        for trial in 0..4 {
            let mut x: Mat<f64> = rng.gauss_mat(n, d);
            let s = if kernel == Kernel::Dot {
                radius / max_row_norm(x.as_ref())
            } else {
                [0.3, 1.0, 3.0, 10.0][trial]
            };
            x *= faer::Scale(s);
            let local = local_norm(
                &block.g,
                x.as_ref(),
                None,
                false,
                &Method::Lanczos(LanczosOptions::default()),
            )
            .unwrap();
            assert!(
                local.top.sigma <= block.certificate.constant,
                "seed {seed} {kernel:?}: attained {} > certified {}",
                local.top.sigma,
                block.certificate.constant
            );
        }
    }
}

#[test]
fn logdet_series_agrees_with_exact_within_stated_error() {
    for seed in 0..5 {
        let (block, x) = l2_block(seed, 6, 4, 2, 0.9);
        let exact = logdet_exact(&block.g, x.as_ref()).unwrap();
        assert_eq!(exact.sign, 1.0, "Lip(g) < 1 makes det(I + J) positive");
        let est = logdet_series(
            &block.g,
            x.as_ref(),
            block.certificate.constant,
            1e-3,
            64,
            seed,
        )
        .unwrap();
        let err = (est.estimate - exact.logabsdet).abs();
        assert!(
            err <= est.truncation_bound + 4.0 * est.std_error,
            "seed {seed}: |{} - {}| = {err:e} > {:e} + 4 x {:e}",
            est.estimate,
            exact.logabsdet,
            est.truncation_bound,
            est.std_error
        );
        // The truncation bound alone, with exact traces: the deterministic half of the claim.
        let j = dense_jacobian(&block.g, x.as_ref()).unwrap();
        let dim = j.nrows();
        for terms in [1usize, 2, 4, 8, 16] {
            let mut p = Mat::<f64>::identity(dim, dim);
            let mut partial = 0.0;
            for k in 1..=terms {
                p = &p * &j;
                let tr: f64 = (0..dim).map(|i| p[(i, i)]).sum();
                partial += if k % 2 == 1 { tr } else { -tr } / k as f64;
            }
            let bound = truncation_bound(dim, block.certificate.constant, terms);
            assert!((partial - exact.logabsdet).abs() <= bound, "K = {terms}");
        }
    }
}

#[test]
fn anderson_and_broyden_agree_with_picard() {
    for seed in 0..6 {
        let layer = random_layer(6, 2, Kernel::L2, 0.4, seed).unwrap();
        let n = 8;
        let base = certify::token_lipschitz(&layer, n, None).unwrap().unwrap();
        let f = certify::scaled(&layer, 0.8 / base.constant);
        let u = random_tokens(n, 6, 1.0, seed + 5);
        for variant in [
            Variant::Plain,
            Variant::Damped { beta: 0.5 },
            Variant::Injected { input: u.clone() },
        ] {
            let p = TokenFixedPoint::new(f.clone(), n, variant, None).unwrap();
            assert!(p.contraction.unwrap() < 1.0);
            let x0 = random_tokens(n, 6, 2.0, seed + 9);
            let (xp, sp) = p.solve(x0.as_ref(), &Solver::Picard, &opts(1e-12)).unwrap();
            for solver in [Solver::anderson(), Solver::broyden()] {
                let (xs, ss) = p.solve(x0.as_ref(), &solver, &opts(1e-12)).unwrap();
                let e = diff(&xs, &xp);
                assert!(
                    e <= sp.error_bound.unwrap() + ss.error_bound.unwrap(),
                    "{} vs picard: {e:e}",
                    ss.solver
                );
                assert!(e <= 1e-10);
            }
        }
    }
}

#[test]
fn measure_fixed_point_in_w1() {
    for seed in 0..4 {
        let layer = random_layer(3, 1, Kernel::Dot, 0.8, seed).unwrap();
        let n = 10;
        let mut rng = SplitMix::new(seed);
        let w: Vec<f64> = (0..n).map(|_| 0.2 + rng.uniform()).collect();
        let s: f64 = w.iter().sum();
        let w: Vec<f64> = w.iter().map(|x| x / s).collect();
        // A small output scale makes B2 < 1 on the invariant ball.
        let f = certify::scaled(&layer, 0.02);
        let p = MeasureFixedPoint::new(f, w.clone(), None).unwrap();
        let l = p.contraction.expect("B2 below 1");
        let r = p.radius.unwrap();
        let x0 = Mat::from_fn(n, 3, |i, k| r * ((i * 3 + k) as f64).sin() / 2.0);
        let (truth, _) = p
            .solve(x0.as_ref(), &Solver::anderson(), &opts(1e-14))
            .unwrap();
        for solver in [Solver::Picard, Solver::anderson(), Solver::broyden()] {
            let (mu, sol) = p.solve(x0.as_ref(), &solver, &opts(1e-6)).unwrap();
            let err = lipattn::transport::exact(&mu, &truth, 1).unwrap().distance;
            assert!(err <= sol.error_bound.unwrap(), "{}: {err:e}", sol.solver);
            assert!(sol.contraction == Some(l));
            if matches!(solver, Solver::Picard) {
                assert!(sol.step <= sol.a_priori_steps.unwrap());
            }
        }
    }
}

/// T(x) = 2 x + 1 on R^4: fixed point -1, every Picard iterate flees it.
struct Expanding;
impl FixedPointMap for Expanding {
    fn dim(&self) -> usize {
        4
    }
    fn apply(&self, x: &[f64]) -> lipattn::Result<Vec<f64>> {
        Ok(x.iter().map(|v| 2.0 * v + 1.0).collect())
    }
    fn contraction(&self) -> Option<f64> {
        None
    }
    fn in_domain(&self, _: &[f64]) -> bool {
        false
    }
}

#[test]
fn divergence_is_an_error_never_a_result() {
    let e = solve(&Expanding, &[0.0; 4], &Solver::Picard, &opts(1e-10)).unwrap_err();
    match e {
        Error::NoConvergence {
            reason, residuals, ..
        } => {
            assert!(reason.contains("diverging"), "{reason}");
            assert!(residuals.len() > 5);
        }
        other => panic!("expected NoConvergence, got {other:?}"),
    }
    // An attention map that expands: values 3 x the tokens' weighted mean.
    let mut layer = random_layer(4, 1, Kernel::L2, 0.0, 3).unwrap();
    for i in 0..4 {
        for k in 0..4 {
            let v = if i == k { 1.0 } else { 0.0 };
            layer.wv[(i, k)] = v;
            layer.wq[(i, k)] = v;
            layer.wo[(i, k)] = 3.0 * v;
        }
    }
    let p = TokenFixedPoint::new(layer, 6, Variant::Plain, None).unwrap();
    assert!(p.contraction.is_none());
    let x0 = random_tokens(6, 4, 1.0, 1);
    let x0 = Mat::from_fn(6, 4, |i, k| x0[(i, k)] + 1.0);
    let e = p
        .solve(x0.as_ref(), &Solver::Picard, &opts(1e-10))
        .unwrap_err();
    assert!(matches!(e, Error::NoConvergence { .. }), "{e:?}");
    // The iteration limit is a failure as well.
    let e = solve(
        &Expanding,
        &[0.0; 4],
        &Solver::Picard,
        &SolveOptions {
            max_evals: 3,
            ..opts(1e-10)
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::NoConvergence { .. }));
}

#[test]
fn bad_input_is_an_error() {
    let layer = random_layer(4, 1, Kernel::L2, 0.1, 0).unwrap();
    for c in [1.0, 1.5, 0.0, -0.1, f64::NAN] {
        assert!(matches!(
            InvertibleBlock::new(&layer, 5, c, None),
            Err(Error::Invalid(_))
        ));
    }
    assert!(InvertibleBlock::new(&layer, 5, 0.9, Some(1.0)).is_err());
    let dot = random_layer(4, 1, Kernel::Dot, 0.1, 0).unwrap();
    assert!(InvertibleBlock::new(&dot, 5, 0.9, None).is_err());
    let block = InvertibleBlock::new(&layer, 5, 0.9, None).unwrap();
    let mut y = random_tokens(5, 4, 1.0, 0);
    for atol in [0.0, -1.0, f64::NAN] {
        assert!(block
            .inverse(
                y.as_ref(),
                &Solver::Picard,
                &SolveOptions {
                    atol,
                    ..Default::default()
                }
            )
            .is_err());
    }
    assert!(block
        .inverse(
            random_tokens(5, 3, 1.0, 0).as_ref(),
            &Solver::Picard,
            &opts(1e-8)
        )
        .is_err());
    assert!(block
        .inverse(
            random_tokens(4, 4, 1.0, 0).as_ref(),
            &Solver::Picard,
            &opts(1e-8)
        )
        .is_err());
    y[(2, 1)] = f64::NAN;
    assert!(block
        .inverse(y.as_ref(), &Solver::Picard, &opts(1e-8))
        .is_err());
    let bad_anderson = Solver::Anderson {
        memory: 0,
        regularisation: 1e-4,
        mixing: 1.0,
    };
    assert!(block
        .inverse(
            random_tokens(5, 4, 1.0, 0).as_ref(),
            &bad_anderson,
            &opts(1e-8)
        )
        .is_err());
    let x = random_tokens(5, 4, 1.0, 0);
    assert!(logdet_series(&block.g, x.as_ref(), 1.0, 1e-3, 8, 0).is_err());
    assert!(logdet_series(&block.g, x.as_ref(), 0.9, 0.0, 8, 0).is_err());
    let fo = |integrator| FlowOptions {
        projection: Projection::None,
        integrator,
        t_end: 1.0,
        record_every: 0.5,
        max_steps: 1000,
    };
    for integ in [
        Integrator::Rk4 { dt: 0.0 },
        Integrator::Rk4 { dt: f64::NAN },
        Integrator::DoPri5 {
            rtol: -1.0,
            atol: 1e-8,
            h0: 0.1,
        },
    ] {
        assert!(integrate(&layer, x.as_ref(), None, &fo(integ)).is_err());
    }
    let mut xn = x.clone();
    xn[(0, 0)] = f64::INFINITY;
    assert!(integrate(&layer, xn.as_ref(), None, &fo(Integrator::Rk4 { dt: 0.1 })).is_err());
    assert!(TokenFixedPoint::new(layer.clone(), 5, Variant::Damped { beta: 1.5 }, None).is_err());
    assert!(TokenFixedPoint::new(
        layer.clone(),
        5,
        Variant::Injected {
            input: random_tokens(4, 4, 1.0, 0)
        },
        None
    )
    .is_err());
    assert!(MeasureFixedPoint::new(dot.clone(), vec![0.5, 0.6], None).is_err());
}

fn flow_opts(integrator: Integrator, t_end: f64, projection: Projection) -> FlowOptions {
    FlowOptions {
        projection,
        integrator,
        t_end,
        record_every: t_end,
        max_steps: 1_000_000,
    }
}

#[test]
fn rk4_and_dormand_prince_convergence_orders() {
    let layer = certify::scaled(&random_layer(4, 2, Kernel::Dot, 0.3, 11).unwrap(), 1.5);
    let x0 = random_tokens(6, 4, 1.0, 12);
    for projection in [Projection::None, Projection::Sphere] {
        let reference = integrate(
            &layer,
            x0.as_ref(),
            None,
            &flow_opts(Integrator::DoPri5Fixed { dt: 1e-3 }, 2.0, projection),
        )
        .unwrap();
        let dts = [0.2, 0.1, 0.05, 0.025];
        for (name, lo, hi) in [("rk4", 3.6, 4.5), ("dopri5", 4.5, 5.8)] {
            let errs: Vec<f64> = dts
                .iter()
                .map(|&dt| {
                    let integ = if name == "rk4" {
                        Integrator::Rk4 { dt }
                    } else {
                        Integrator::DoPri5Fixed { dt }
                    };
                    let t = integrate(
                        &layer,
                        x0.as_ref(),
                        None,
                        &flow_opts(integ, 2.0, projection),
                    )
                    .unwrap();
                    diff(t.last(), reference.last())
                })
                .collect();
            let slope = loglog_slope(&dts, &errs);
            assert!(
                (lo..=hi).contains(&slope),
                "{name} {projection:?}: measured order {slope:.3} (errors {errs:?})"
            );
        }
        // Adaptive: the global error tracks the tolerance.
        let mut last = f64::INFINITY;
        for rtol in [1e-4, 1e-7, 1e-10] {
            let t = integrate(
                &layer,
                x0.as_ref(),
                None,
                &flow_opts(
                    Integrator::DoPri5 {
                        rtol,
                        atol: rtol,
                        h0: 0.01,
                    },
                    2.0,
                    projection,
                ),
            )
            .unwrap();
            let e = diff(t.last(), reference.last());
            assert!(e <= 1e3 * rtol, "rtol {rtol:e}: error {e:e}");
            assert!(e < last);
            last = e;
        }
    }
}

#[test]
fn gronwall_bound_is_never_violated() {
    let mut rng = SplitMix::new(3);
    for seed in 0..6 {
        let layer = random_layer(3, 1 + seed as usize % 2, Kernel::Dot, 0.2, seed).unwrap();
        // Off the sphere the radius grows with t and the constant with e^{2 R beta}: a smaller
        // layer and horizon keep the certified bound inside the f64 range.
        for (projection, scale, t_end) in [
            (Projection::Sphere, 1.0, 2.0),
            (Projection::None, 0.25, 1.0),
        ] {
            let layer = certify::scaled(&layer, scale);
            let mu = Measure::uniform(sphere_sample(8, 3, &mut rng)).unwrap();
            let mut nu_pts = mu.points().to_owned();
            for i in 0..8 {
                for k in 0..3 {
                    nu_pts[(i, k)] += 0.05 * rng.gauss();
                }
            }
            let nu = Measure::uniform(nu_pts).unwrap();
            let mut o = flow_opts(Integrator::Rk4 { dt: 0.05 }, t_end, projection);
            o.record_every = t_end / 8.0;
            let g = gronwall_check(&layer, &mu, &nu, &o).unwrap();
            assert!(
                !g.violated,
                "seed {seed} {projection:?}: {:?} vs {:?}",
                g.measured, g.bound
            );
            assert!(g.measured.iter().all(|w| *w > 0.0));
            assert!(g.measured_rate <= g.lipschitz);
            assert_eq!(g.times.len(), 9);
        }
    }
    // No certificate through a LayerNorm: an error, not a number.
    let layer = random_layer(3, 1, Kernel::Dot, 0.2, 0).unwrap();
    let mu = Measure::uniform(random_tokens(4, 3, 1.0, 0)).unwrap();
    let o = flow_opts(
        Integrator::Rk4 { dt: 0.1 },
        1.0,
        Projection::LayerNorm { eps: 1e-5 },
    );
    assert!(gronwall_check(&layer, &mu, &mu, &o).is_err());
}

#[test]
fn tokens_cluster_on_the_sphere() {
    let layer = identity_layer(3, 1.0).unwrap();
    let mut rng = SplitMix::new(0);
    let x0 = sphere_sample(64, 3, &mut rng);
    let mut o = flow_opts(Integrator::Rk4 { dt: 0.1 }, 15.0, Projection::Sphere);
    o.record_every = 1.0;
    let t = integrate(&layer, x0.as_ref(), None, &o).unwrap();
    let c: Vec<f64> = t
        .states
        .iter()
        .map(|x| clustering(x.as_ref(), 1e-2).mean_cosine)
        .collect();
    assert!(c[0] < 0.2, "uniform start: mean cosine {}", c[0]);
    assert!(*c.last().unwrap() > 0.99, "clustered at T = 15: {c:?}");
    for w in c.windows(2) {
        assert!(w[1] >= w[0] - 1e-9, "{c:?}");
    }
    let k0 = clustering(t.states[0].as_ref(), 1e-2).clusters;
    let kt = clustering(t.last().as_ref(), 1e-2).clusters;
    assert!(kt < k0 && kt <= 2, "clusters {k0} -> {kt}");
    for x in &t.states {
        for i in 0..64 {
            let r: f64 = (0..3).map(|k| x[(i, k)].powi(2)).sum::<f64>().sqrt();
            assert!((r - 1.0).abs() < 1e-12);
        }
    }
}

#[test]
fn mean_field_empirical_flows_converge() {
    let layer = identity_layer(2, 1.0).unwrap();
    let o = flow_opts(Integrator::Rk4 { dt: 0.1 }, 1.0, Projection::Sphere);
    let mf = mean_field(&layer, &[16, 32, 64, 128], 1024, 3, &o, 5).unwrap();
    assert!(mf.rate_final < -0.3, "{mf:?}");
    assert!(mf.rate_initial < -0.3, "{mf:?}");
    assert!(mf.w1_final[3] < mf.w1_final[0]);
}

#[test]
fn dot_block_refuses_outputs_outside_its_ball() {
    let (block, _) = dot_block(1, 6, 4, 1, 0.9);
    let CertifiedDomain::Ball { radius } = block.certificate.domain else {
        panic!("dot blocks are certified on a ball")
    };
    let far = random_tokens(6, 4, 1.0, 3) * faer::Scale(10.0 * radius);
    let e = block
        .inverse(far.as_ref(), &Solver::Picard, &opts(1e-8))
        .unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
}

/// A tied L2 layer whose W_V = U W_Q is off by a remainder (docs/bounds.md#b5-on-a-ball) is
/// certified on a ball only: the global block is refused, the block for given tokens finds a
/// ball, inverts to 1e-10 within its certified error, and the weight-tied fixed point is
/// certified on an invariant ball, not on all of R^{n x d}.
#[test]
fn near_factorised_l2_is_certified_on_a_ball_only() {
    let mut layer = random_layer(6, 2, Kernel::L2, 0.3, 4).unwrap();
    layer.wv[(0, 5)] += 1e-9;
    let n = 8;
    assert!(certify::needs_ball(&layer, n).unwrap());
    assert!(certify::token_lipschitz(&layer, n, None).unwrap().is_none());
    let Err(e) = InvertibleBlock::new(&layer, n, 0.9, None) else {
        panic!("a near-factorised L2 layer must not be certified on all of R^(n x d)")
    };
    assert!(e.to_string().contains("give a radius"), "{e}");
    let x = random_tokens(n, 6, 1.0, 9);
    let block = InvertibleBlock::for_tokens(&layer, x.as_ref(), 0.9, None).unwrap();
    assert!(matches!(
        block.certificate.domain,
        CertifiedDomain::Ball { .. }
    ));
    let y = block.forward(x.as_ref()).unwrap();
    let inv = block
        .inverse(y.as_ref(), &Solver::anderson(), &opts(1e-12))
        .unwrap();
    let err = diff(&inv.x, &x);
    assert!(err <= 1e-10 && err <= inv.error_bound.unwrap(), "{err:e}");

    let exact = random_layer(6, 2, Kernel::L2, 0.3, 4).unwrap();
    assert!(!certify::needs_ball(&exact, n).unwrap());
    let c = certify::token_lipschitz(&exact, n, None).unwrap().unwrap();
    let f = certify::scaled(&layer, 0.5 / c.constant);
    let p = TokenFixedPoint::new(f, n, Variant::Plain, None).unwrap();
    assert!(
        matches!(p.domain, Some(CertifiedDomain::Ball { .. })),
        "{:?}",
        p.notes
    );
    assert!(p.notes.iter().any(|s| s.contains("invariant ball")));
    assert!(p.contraction.is_some());
}

/// What the fuzzers found in the dynamics (tests/python_bindings/test_fuzz_py.py): 2^64 - 1
/// probes or replicates ran until killed, and random tokens of scale 1e308 came back infinite.
#[test]
fn huge_repetition_counts_and_overflowing_scales_are_errors() {
    use lipattn::dynamics::synthetic::random_tokens_checked;
    use lipattn::error::MAX_REPEATS;
    let (block, x) = l2_block(3, 3, 4, 2, 0.9);
    let t0 = std::time::Instant::now();
    for huge in [MAX_REPEATS + 1, usize::MAX] {
        let e = logdet_series(&block.g, x.as_ref(), 0.9, 1e-3, huge, 0).unwrap_err();
        assert!(
            e.to_string().contains("`probes` must be at most 1000000"),
            "{e}"
        );
        let o = FlowOptions {
            projection: Projection::Sphere,
            integrator: Integrator::Rk4 { dt: 0.1 },
            t_end: 0.5,
            record_every: 0.5,
            max_steps: 100,
        };
        let e = mean_field(&block.g, &[4, 8], 16, huge, &o, 0).unwrap_err();
        assert!(e.to_string().contains("replicates must be at most"), "{e}");
    }
    assert!(t0.elapsed().as_secs_f64() < 5.0, "{:?}", t0.elapsed());
    let e = random_tokens_checked(3, 4, 1e308, 0, "scale").unwrap_err();
    assert!(e.to_string().contains("overflow"), "{e}");
    let x = random_tokens_checked(3, 4, 2.0, 0, "scale").unwrap();
    assert_eq!(x, random_tokens(3, 4, 2.0, 0));
    assert!(random_tokens_checked(3, 4, f64::NAN, 0, "scale").is_err());
}
