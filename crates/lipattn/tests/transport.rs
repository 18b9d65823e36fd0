//! Exact transport against independent oracles: brute force over permutations, an assignment
//! solver (lsap), the sorted 1-D solver, symmetry, and degenerate instances.

use lipattn::transport::{self, CostMatrix, SinkhornOptions, Transport};
use lipattn::{Error, Mat, Measure};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn gaussian_points(rng: &mut StdRng, n: usize, d: usize) -> Mat<f64> {
    let normal = rand_distr::StandardNormal;
    Mat::from_fn(n, d, |_, _| rng.sample::<f64, _>(normal))
}

fn random_weights(rng: &mut StdRng, n: usize) -> Vec<f64> {
    let w: Vec<f64> = (0..n).map(|_| rng.random_range(0.01..1.0)).collect();
    let s: f64 = w.iter().sum();
    w.into_iter().map(|x| x / s).collect()
}

/// The certificate must prove optimality to near machine precision.
fn assert_certified(t: &Transport, what: &str) {
    let scale = t.cost.abs().max(1e-300);
    assert!(
        t.relative_gap <= 1e-12 || t.gap.abs() <= 1e-15,
        "{what}: gap {} (relative {})",
        t.gap,
        t.relative_gap
    );
    assert!(
        t.infeasibility <= 1e-13 * scale.max(1.0),
        "{what}: infeasibility {}",
        t.infeasibility
    );
    assert!(
        t.marginal_error <= 1e-13,
        "{what}: marginal error {}",
        t.marginal_error
    );
    assert!(
        t.plan.iter().all(|&(_, _, f)| f > 0.0),
        "{what}: nonpositive plan entry"
    );
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for k in 0..=p.len() {
            let mut q = p.clone();
            q.insert(k, n - 1);
            out.push(q);
        }
    }
    out
}

#[test]
fn brute_force_over_permutations() {
    let mut rng = StdRng::seed_from_u64(1);
    for n in 1..=7 {
        let perms = permutations(n);
        for &(d, p) in &[(1, 1), (2, 1), (2, 2), (5, 2), (3, 1)] {
            let a = Measure::uniform(gaussian_points(&mut rng, n, d)).unwrap();
            let b = Measure::uniform(gaussian_points(&mut rng, n, d)).unwrap();
            let t = transport::exact(&a, &b, p).unwrap();
            let c = transport::ground_cost(&a, &b, p).unwrap();
            let best = perms
                .iter()
                .map(|s| s.iter().enumerate().map(|(i, &j)| c.get(i, j)).sum::<f64>() / n as f64)
                .fold(f64::INFINITY, f64::min);
            assert!(
                (t.cost - best).abs() <= 1e-13 * best.max(1.0),
                "n={n} d={d} p={p}: {} vs {best}",
                t.cost
            );
            assert_certified(&t, "brute force");
        }
    }
}

#[test]
fn assignment_oracle_up_to_500() {
    let mut rng = StdRng::seed_from_u64(2);
    for &(n, d, p) in &[
        (10, 2, 1),
        (50, 3, 2),
        (200, 16, 1),
        (300, 1, 2),
        (500, 2, 1),
        (500, 384, 2),
    ] {
        let a = Measure::uniform(gaussian_points(&mut rng, n, d)).unwrap();
        let b = Measure::uniform(gaussian_points(&mut rng, n, d)).unwrap();
        let t = transport::exact(&a, &b, p).unwrap();
        let c = transport::ground_cost(&a, &b, p).unwrap();
        let oracle =
            lsap::get_assigned_cost(n, n, &c.as_slice().to_vec(), false).unwrap() / n as f64;
        let rel = (t.cost - oracle).abs() / oracle;
        assert!(
            rel <= 1e-12,
            "n={n} d={d} p={p}: {} vs lsap {oracle} (rel {rel:e})",
            t.cost
        );
        let expected_distance = if p == 1 { oracle } else { oracle.sqrt() };
        assert!((t.distance - expected_distance).abs() <= 1e-12 * expected_distance);
        assert_certified(&t, "lsap");
    }
}

#[test]
fn sorted_matches_general_solver_in_1d() {
    let mut rng = StdRng::seed_from_u64(3);
    for &(n, m) in &[(1, 1), (1, 9), (13, 7), (100, 150), (400, 333)] {
        let a = Measure::new(gaussian_points(&mut rng, n, 1), random_weights(&mut rng, n)).unwrap();
        let b = Measure::new(gaussian_points(&mut rng, m, 1), random_weights(&mut rng, m)).unwrap();
        for p in [1u32, 2] {
            let s = transport::sorted_1d(&a, &b, p as f64).unwrap();
            let t = transport::exact(&a, &b, p).unwrap();
            assert!(
                (s.cost - t.cost).abs() <= 1e-12 * t.cost.max(1e-300),
                "n={n} m={m} p={p}: sorted {} vs simplex {}",
                s.cost,
                t.cost
            );
            assert_certified(&s, "sorted");
            assert_certified(&t, "simplex 1d");
        }
        // A non-integer exponent through the user-cost entry point.
        let q = 1.5;
        let s = transport::sorted_1d(&a, &b, q).unwrap();
        let c = Mat::from_fn(n, m, |i, j| {
            (a.points()[(i, 0)] - b.points()[(j, 0)]).abs().powf(q)
        });
        let t = transport::exact_with_cost(a.weights(), b.weights(), c.as_ref()).unwrap();
        assert!(
            (s.cost - t.cost).abs() <= 1e-12 * t.cost,
            "p=1.5: {} vs {}",
            s.cost,
            t.cost
        );
        assert!((s.distance - t.cost.powf(1.0 / q)).abs() <= 1e-12);
    }
}

#[test]
fn sorted_handles_ties_and_duplicates() {
    // Equal CDF levels (ties) and repeated coordinates.
    let a = Measure::uniform(Mat::from_fn(4, 1, |i, _| [0.0, 0.0, 1.0, 3.0][i])).unwrap();
    let b = Measure::uniform(Mat::from_fn(2, 1, |i, _| [1.0, 1.0][i])).unwrap();
    let s = transport::sorted_1d(&a, &b, 1.0).unwrap();
    let t = transport::exact(&a, &b, 1).unwrap();
    assert!(
        (s.cost - 1.0).abs() < 1e-15 && (t.cost - 1.0).abs() < 1e-15,
        "{} {}",
        s.cost,
        t.cost
    );
    assert_certified(&s, "sorted ties");
    assert!(matches!(
        transport::sorted_1d(&a, &b, 0.5),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn unequal_sizes_weights_and_symmetry() {
    let mut rng = StdRng::seed_from_u64(4);
    for &(n, m, d) in &[
        (1, 40, 3),
        (40, 1, 3),
        (30, 70, 2),
        (257, 111, 16),
        (600, 400, 8),
    ] {
        let a = Measure::new(gaussian_points(&mut rng, n, d), random_weights(&mut rng, n)).unwrap();
        let b = Measure::new(gaussian_points(&mut rng, m, d), random_weights(&mut rng, m)).unwrap();
        for p in [1, 2] {
            let ab = transport::exact(&a, &b, p).unwrap();
            let ba = transport::exact(&b, &a, p).unwrap();
            assert!((ab.cost - ba.cost).abs() <= 1e-13 * ab.cost);
            assert_certified(&ab, "ab");
            assert_certified(&ba, "ba");
            // A basic solution has at most n + m - 1 nonzeros.
            assert!(ab.plan.len() < n + m);
        }
    }
}

#[test]
fn degenerate_instances() {
    let mut rng = StdRng::seed_from_u64(5);
    // Identical measures: zero cost, plan on the diagonal mass-wise.
    let x = gaussian_points(&mut rng, 50, 4);
    let w = random_weights(&mut rng, 50);
    let a = Measure::new(x.clone(), w.clone()).unwrap();
    let t = transport::exact(&a, &a, 2).unwrap();
    assert_eq!(t.cost, 0.0);
    assert_certified(&t, "identical");

    // All atoms at one point: every cost is zero.
    let z = Measure::new(Mat::zeros(7, 3), random_weights(&mut rng, 7)).unwrap();
    let z2 = Measure::uniform(Mat::zeros(4, 3)).unwrap();
    let t = transport::exact(&z, &z2, 1).unwrap();
    assert_eq!(t.cost, 0.0);
    assert_certified(&t, "all zero");

    // Duplicate points on a small integer grid: many ties in cost and in cumulative masses.
    let g = |rng: &mut StdRng, n| Mat::from_fn(n, 2, |_, _| rng.random_range(0..3) as f64);
    let a = Measure::uniform(g(&mut rng, 60)).unwrap();
    let b = Measure::uniform(g(&mut rng, 60)).unwrap();
    for p in [1, 2] {
        let t = transport::exact(&a, &b, p).unwrap();
        let c = transport::ground_cost(&a, &b, p).unwrap();
        let oracle = lsap::get_assigned_cost(60, 60, &c.as_slice().to_vec(), false).unwrap() / 60.0;
        assert!((t.cost - oracle).abs() <= 1e-13, "{} vs {oracle}", t.cost);
        assert_certified(&t, "grid");
    }

    // Highly unequal weights.
    let mut w = vec![1e-12; 30];
    w[0] = 1.0 - 29e-12;
    let a = Measure::new(gaussian_points(&mut rng, 30, 2), w).unwrap();
    let b = Measure::new(
        gaussian_points(&mut rng, 45, 2),
        random_weights(&mut rng, 45),
    )
    .unwrap();
    let t = transport::exact(&a, &b, 1).unwrap();
    assert_certified(&t, "unequal weights");

    // Single atoms on both sides.
    let a = Measure::uniform(Mat::from_fn(1, 2, |_, k| k as f64)).unwrap();
    let b = Measure::uniform(Mat::from_fn(1, 2, |_, k| 3.0 + k as f64)).unwrap();
    let t = transport::exact(&a, &b, 2).unwrap();
    assert!((t.cost - 18.0).abs() < 1e-14 && (t.distance - 18f64.sqrt()).abs() < 1e-14);
    assert_eq!(t.plan, vec![(0, 0, 1.0)]);
}

#[test]
fn user_cost_matrix_with_negative_entries_and_zero_weights() {
    let mut rng = StdRng::seed_from_u64(6);
    let (n, m) = (40, 40);
    let c = Mat::from_fn(n, m, |_, _| rng.random_range(-5.0..5.0));
    let w = vec![1.0 / n as f64; n];
    let t = transport::exact_with_cost(&w, &w, c.as_ref()).unwrap();
    let flat: Vec<f64> = (0..n)
        .flat_map(|i| (0..m).map(move |j| (i, j)))
        .map(|(i, j)| c[(i, j)])
        .collect();
    let oracle = lsap::get_assigned_cost(n, m, &flat, false).unwrap() / n as f64;
    assert!((t.cost - oracle).abs() <= 1e-13, "{} vs {oracle}", t.cost);
    assert_certified(&t, "negative costs");
    // Unnormalised masses (counts) and empty atoms are accepted.
    let wa = [2.0, 0.0, 1.0];
    let wb = [1.0, 1.0, 1.0, 0.0];
    let c = Mat::from_fn(3, 4, |i, j| ((i + 2 * j) % 5) as f64);
    let t = transport::exact_with_cost(&wa, &wb, c.as_ref()).unwrap();
    assert_certified(&t, "counts");
}

#[test]
fn bad_input_is_an_error() {
    let a = Measure::uniform(Mat::from_fn(3, 2, |i, k| (i * k) as f64)).unwrap();
    let b3 = Measure::uniform(Mat::from_fn(3, 3, |i, k| (i + k) as f64)).unwrap();
    assert!(matches!(
        transport::exact(&a, &b3, 1),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        transport::exact(&a, &a, 3),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        transport::exact(&a, &a, 0),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        transport::sorted_1d(&a, &a, 1.0),
        Err(Error::Shape { .. })
    ));
    let c = Mat::from_fn(3, 3, |i, j| if i == 1 && j == 2 { f64::NAN } else { 1.0 });
    let w = [1.0 / 3.0; 3];
    assert!(matches!(
        transport::exact_with_cost(&w, &w, c.as_ref()),
        Err(Error::NonFinite { .. })
    ));
    let c = Mat::<f64>::zeros(3, 3);
    assert!(matches!(
        transport::exact_with_cost(&w, &[0.5, 0.5], c.as_ref()),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        transport::exact_with_cost(&[0.5, 0.6, -0.1], &w, c.as_ref()),
        Err(Error::NegativeWeight { .. })
    ));
    assert!(matches!(
        transport::exact_with_cost(&[0.5, 0.5, 0.5], &w, c.as_ref()),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        transport::exact_with_cost(&[0.0; 3], &[0.0; 3], c.as_ref()),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        CostMatrix::from_row_major(0, 3, vec![]),
        Err(Error::Empty { .. })
    ));
    let e = transport::exact_with_cost(&w, &w, Mat::<f64>::zeros(3, 0).as_ref()).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    let opts = SinkhornOptions {
        eps: 0.0,
        ..Default::default()
    };
    assert!(matches!(
        transport::sinkhorn(&a, &a, 1, &opts),
        Err(Error::Invalid(_))
    ));
    let opts = SinkhornOptions {
        eps: f64::NAN,
        ..Default::default()
    };
    assert!(matches!(
        transport::sinkhorn(&a, &a, 1, &opts),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn sinkhorn_approaches_exact_and_reports_marginals() {
    let mut rng = StdRng::seed_from_u64(7);
    let a = Measure::new(
        gaussian_points(&mut rng, 80, 2),
        random_weights(&mut rng, 80),
    )
    .unwrap();
    let b = Measure::new(
        gaussian_points(&mut rng, 60, 2),
        random_weights(&mut rng, 60),
    )
    .unwrap();
    let exact = transport::exact(&a, &b, 2).unwrap();
    let mut last = f64::INFINITY;
    for eps in [1.0, 0.3, 0.1, 0.03] {
        let opts = SinkhornOptions {
            eps,
            tol: 1e-10,
            max_iter: 100_000,
        };
        let e = transport::sinkhorn(&a, &b, 2, &opts).unwrap();
        assert!(
            e.converged && e.marginal_error <= 1e-10,
            "eps={eps}: err {}",
            e.marginal_error
        );
        // A coupling costs at least the optimum, and less regularisation gets closer to it.
        assert!(
            e.cost >= exact.cost - 1e-9 && e.cost <= last + 1e-12,
            "eps={eps}: {} (exact {})",
            e.cost,
            exact.cost
        );
        last = e.cost;
    }
    assert!(
        (last - exact.cost) / exact.cost < 0.1,
        "{last} vs {}",
        exact.cost
    );
    let opts = SinkhornOptions {
        eps: 1e-3,
        tol: 1e-14,
        max_iter: 3,
    };
    let e = transport::sinkhorn(&a, &b, 2, &opts).unwrap();
    assert!(!e.converged && e.iterations == 3 && e.marginal_error > 1e-14);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random small instances with heavy duplication (coordinates from {0, 1, 2}) and random
    /// weights: certified, symmetric, and equal to the lsap optimum when uniform and square.
    #[test]
    fn random_degenerate_instances(
        n in 1usize..12, m in 1usize..12, d in 1usize..3, p in 1u32..3,
        seed in any::<u64>(), uniform in any::<bool>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let m = if uniform { n } else { m };
        let pts = |rng: &mut StdRng, k| Mat::from_fn(k, d, |_, _| rng.random_range(0..3) as f64);
        let (x, y) = (pts(&mut rng, n), pts(&mut rng, m));
        let (a, b) = if uniform {
            (Measure::uniform(x).unwrap(), Measure::uniform(y).unwrap())
        } else {
            let (wa, wb) = (random_weights(&mut rng, n), random_weights(&mut rng, m));
            (Measure::new(x, wa).unwrap(), Measure::new(y, wb).unwrap())
        };
        let t = transport::exact(&a, &b, p).unwrap();
        assert_certified(&t, "proptest");
        let r = transport::exact(&b, &a, p).unwrap();
        prop_assert!((t.cost - r.cost).abs() <= 1e-13 * t.cost.max(1.0));
        if uniform {
            let c = transport::ground_cost(&a, &b, p).unwrap();
            let oracle = lsap::get_assigned_cost(n, n, &c.as_slice().to_vec(), false).unwrap() / n as f64;
            prop_assert!((t.cost - oracle).abs() <= 1e-13 * oracle.max(1.0));
        }
        if d == 1 {
            let s = transport::sorted_1d(&a, &b, p as f64).unwrap();
            prop_assert!((t.cost - s.cost).abs() <= 1e-13 * t.cost.max(1.0));
            assert_certified(&s, "proptest sorted");
        }
    }
}
