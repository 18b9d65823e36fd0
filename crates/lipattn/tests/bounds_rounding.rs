//! The floating-point section of docs/bounds.md (#floating-point): certified constants are upper
//! bounds of the exact values even when the products they are made of cancel, which the former
//! flat relative margin of 1e-9 did not guarantee.
//!
//! The weights are drawn on the dyadic grid 2^-50 Z (|w| <= 8), so every exact product W_O W_V or
//! W_Q^T W_K is an integer matrix times 2^-100 held exactly in i128. A rigorous lower bound of its
//! spectral norm is |X v| / |v| for an integer vector v (the top right singular vector of the f64
//! approximation, scaled and rounded), with |X v| evaluated exactly in i128 and converted to f64
//! rounding toward zero. None of this uses `linalg::rounding`.

mod common;
use common::*;
use lipattn::bounds::cross_attention::cross_bounds;
use lipattn::bounds::measure_w1::measure_bounds;
use lipattn::bounds::token_map::{b1_head, token_map_bounds};
use lipattn::bounds::{best, Domain, HeadConstants, Metric};
use lipattn::dynamics::certify::{row_bound, velocity_lipschitz};
use lipattn::{AttentionLayer, Kernel, Mat};
use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::StandardNormal;

const GRID: f64 = 1.0 / 1_125_899_906_842_624.0; // 2^-50 (with |w| <= 8, w / GRID < 2^53 is exact)

fn snap(x: f64) -> f64 {
    (x.clamp(-8.0, 8.0) / GRID).round() * GRID
}

fn grid_mat(r: &mut StdRng, n: usize, d: usize, scale: f64) -> Mat<f64> {
    Mat::from_fn(n, d, |_, _| {
        snap(scale * r.sample::<f64, _>(StandardNormal))
    })
}

fn to_int(x: &Mat<f64>) -> Vec<Vec<i128>> {
    (0..x.nrows())
        .map(|i| {
            (0..x.ncols())
                .map(|j| {
                    let v = x[(i, j)] / GRID;
                    assert_eq!(v, v.round(), "weight off the grid");
                    v as i128
                })
                .collect()
        })
        .collect()
}

/// The exact product of two grid matrices, as integers times 2^-100.
fn exact_product(a: &Mat<f64>, b: &Mat<f64>) -> Vec<Vec<i128>> {
    let (ai, bi) = (to_int(a), to_int(b));
    (0..a.nrows())
        .map(|i| {
            (0..b.ncols())
                .map(|j| {
                    (0..a.ncols()).fold(0i128, |s, k| {
                        s.checked_add(ai[i][k].checked_mul(bi[k][j]).unwrap())
                            .unwrap()
                    })
                })
                .collect()
        })
        .collect()
}

const V_SCALE: f64 = 65536.0; // 2^16
const SCALE_100: f64 = f64::from_bits((1023 - 100) << 52); // 2^-100

/// An integer direction close to the top right singular vector of X = p 2^-100.
fn top_direction(p: &[Vec<i128>]) -> Vec<i128> {
    let x = Mat::from_fn(p.len(), p[0].len(), |i, j| p[i][j] as f64 * SCALE_100);
    let svd = x.svd().unwrap();
    let v = svd.V().col(0);
    (0..v.nrows())
        .map(|j| (v[j] * V_SCALE).round() as i128)
        .collect()
}

/// A lower bound of |X v| / 2^-100 (exactly: |p v|) for integer p, v.
fn lower_abs(p: &[Vec<i128>], v: &[i128]) -> f64 {
    let mut s = 0.0f64;
    for row in p {
        let w = row.iter().zip(v).fold(0i128, |s, (a, b)| {
            s.checked_add(a.checked_mul(*b).unwrap()).unwrap()
        });
        let mut f = (w.unsigned_abs() as f64).abs();
        if f as u128 > w.unsigned_abs() {
            f = f.next_down();
        }
        s = (s + (f * f).next_down()).next_down();
    }
    s.sqrt().next_down().max(0.0)
}

/// An upper bound of |v| for an integer v.
fn upper_abs(v: &[i128]) -> f64 {
    let n2: i128 = v.iter().map(|x| x * x).sum();
    let mut f = n2 as f64;
    if (f as i128) < n2 {
        f = f.next_up();
    }
    f.sqrt().next_up()
}

/// A rigorous lower bound of ||X||_2 for X = p 2^-100: |X v| / |v| (scaling by 2^-100 is exact).
fn lower_norm(p: &[Vec<i128>], v: &[i128]) -> f64 {
    (lower_abs(p, v) / upper_abs(v)).next_down() * SCALE_100
}

/// One head whose value map cancels: W_V = C D + E (rank-3 part plus a 1e-12 perturbation), and
/// W_O's rows orthogonal to the columns of C, so |W_O W_V| is about 1e-12 |W_O| |W_V|.
fn cancelling_layer(r: &mut StdRng, d: usize, dk: usize, dv: usize) -> AttentionLayer<f64> {
    let rank = 3;
    let c = gauss_mat(r, dv, rank, 1.0);
    let dm = gauss_mat(r, rank, d, 1.0 / (d as f64).sqrt());
    let e = gauss_mat(r, dv, d, 1e-12);
    let wv = Mat::from_fn(dv, d, |i, j| {
        let cd: f64 = (0..rank).map(|k| c[(i, k)] * dm[(k, j)]).sum();
        snap(0.3 * cd + e[(i, j)])
    });
    let q = c.qr().compute_thin_Q();
    let proj = Mat::<f64>::identity(dv, dv) - &q * q.transpose();
    let g = gauss_mat(r, d, dv, 0.3);
    let wo0 = &g * &proj;
    let wo = Mat::from_fn(d, dv, |i, j| snap(wo0[(i, j)]));
    let wq = grid_mat(r, dk, d, 0.3);
    let wk = grid_mat(r, dk, d, 0.3);
    let bq: Vec<f64> = (0..dk)
        .map(|_| snap(0.1 * r.random_range(-1.0..1.0)))
        .collect();
    AttentionLayer::new(
        1,
        Kernel::Dot,
        wq,
        bq,
        wk,
        vec![0.0; dk],
        wv,
        vec![0.0; dv],
        wo,
        vec![0.0; d],
    )
    .unwrap()
}

/// B1-tight for one head computed as lipattn did before this floating-point section: constants
/// from f64 eigenvalues in the basis of span(W_K, W_V), formula in f64, times (1 + 1e-9).
/// (sup |M u||A u| is replaced by m a, which is never smaller, so this value is at least the
/// former one.)
fn former_b1_tight(layer: &AttentionLayer<f64>, domain: &Domain) -> f64 {
    let (dk, dv, d) = (layer.dk, layer.dv, layer.d_in());
    let s = 1.0 / (dk as f64).sqrt();
    let (wq, wk, wv, wo) = (&layer.wq, &layer.wk, &layer.wv, &layer.wo);
    let stacked = Mat::from_fn(d, dk + dv, |i, j| {
        if j < dk {
            wk[(j, i)]
        } else {
            wv[(j - dk, i)]
        }
    });
    let basis = stacked.qr().compute_thin_Q();
    let lmax = |x: Mat<f64>| {
        let g = x.transpose() * &x;
        let e = g.self_adjoint_eigenvalues(faer::Side::Lower).unwrap();
        e.last().copied().unwrap().max(0.0).sqrt()
    };
    let a = lmax(wq.transpose() * (wk * &basis) * s);
    let m = lmax(wo * (wv * &basis));
    let c = {
        let y = wk.transpose() * Mat::from_fn(dk, 1, |i, _| layer.bq[i]);
        s * y.norm_l2()
    };
    let r = domain.radius;
    let beta = a * r + c;
    let colsum = (domain.n as f64).min((2.0 * r * beta).exp());
    (m * a * r * r + colsum.sqrt() * m * (1.0 + r * beta)) * (1.0 + 1e-9)
}

/// The certified value map constants and every bound that reduces to |W_O W_V| at a tiny radius
/// stay above a rigorous lower bound of the exact |W_O W_V| on cancelling weights, in every
/// trial; the former flat margin falls below it in some of the same trials.
#[test]
fn cancellation_is_certified() {
    let mut r = rng(2121);
    let (d, dk, dv, n) = (16, 4, 8, 8);
    let trials = 40;
    let mut former_fails = 0;
    let mut worst_former: f64 = 0.0;
    let mut min_margin = f64::INFINITY;
    for t in 0..trials {
        let layer = cancelling_layer(&mut r, d, dk, dv);
        let pm = exact_product(&layer.wo, &layer.wv);
        let vm = top_direction(&pm);
        let m_low = lower_norm(&pm, &vm);
        // A = W_Q^T W_K / 2 exactly (dk = 4).
        let pa = exact_product(&layer.wq.transpose().to_owned(), &layer.wk);
        let va = top_direction(&pa);
        let a_low = lower_norm(&pa, &va) / 2.0;
        let wo_norm = layer.wo.norm_l2();
        let wv_norm = layer.wv.norm_l2();
        assert!(
            m_low < 1e-9 * wo_norm * wv_norm && m_low > 0.0,
            "trial {t}: the construction should cancel ({m_low} vs {wo_norm} {wv_norm})"
        );

        let k = HeadConstants::of(&layer, 0).unwrap();
        assert!(k.m >= m_low, "trial {t}: m {} < exact lower {m_low}", k.m);
        assert!(k.a >= a_low, "trial {t}: a {} < exact lower {a_low}", k.a);
        // sup |M u||A u| >= |M v||A v| / |v|^2 for the top direction of M.
        let ma_low = ((lower_abs(&pm, &vm) * SCALE_100 / upper_abs(&vm)).next_down()
            * (lower_abs(&pa, &vm) * SCALE_100 / 2.0 / upper_abs(&vm)).next_down())
        .next_down();
        assert!(k.ma >= ma_low, "trial {t}: ma {} < {ma_low}", k.ma);

        let radius = 1e-9;
        let domain = Domain::new(radius, n, false).unwrap();
        let bounds = token_map_bounds(&layer, &domain).unwrap();
        let tight = bounds
            .iter()
            .find(|b| b.name == "B1-tight-sum")
            .unwrap()
            .value;
        let frob = best(&bounds, Metric::Frobenius).unwrap().value;
        // At X = 0 the Jacobian is (1/n) 1 1^T (x) M, of norm |M|: every certified Lipschitz
        // constant of the token map is at least |M|.
        assert!(
            frob >= m_low && tight >= m_low,
            "trial {t}: B1-tight {tight} < {m_low}"
        );
        let w1 = best(&measure_bounds(&layer, radius).unwrap(), Metric::W1)
            .unwrap()
            .value;
        assert!(w1 >= m_low, "trial {t}: B2 {w1} < {m_low}");
        let cross = cross_bounds(&layer, radius).unwrap();
        assert!(cross.in_context >= m_low, "trial {t}: B3 {cross:?}");
        let (row_m, _) = row_bound(&layer).unwrap();
        assert!(row_m >= m_low, "trial {t}: D0 m {row_m} < {m_low}");
        let (_, l_mu) = velocity_lipschitz(&layer, radius).unwrap().unwrap();
        assert!(l_mu >= m_low, "trial {t}: L_mu {l_mu} < {m_low}");
        min_margin = min_margin.min(tight / m_low - 1.0);

        let former = former_b1_tight(&layer, &domain);
        if former < m_low {
            former_fails += 1;
            worst_former = worst_former.max(1.0 - former / m_low);
        }
    }
    eprintln!(
        "{trials} cancelling trials: certified B1-tight above the exact lower bound in all (smallest relative excess {min_margin:.3e}); the former flat margin fell below it in {former_fails} (by up to {worst_former:.3e} relative)"
    );
    assert!(
        former_fails >= 1,
        "the former flat margin should fail on these weights, else this test shows nothing"
    );
}

/// On ordinary weights the proven bounds stay within 1e-10 (relative) of the plain f64 values
/// and below the former ones (plain value times 1 + 1e-9).
#[test]
fn ordinary_weights_barely_move() {
    let mut r = rng(77);
    let mut worst: f64 = 0.0;
    for _ in 0..10 {
        let layer = random_layer(&mut r, 48, 4, 12, 12, 48, Kernel::Dot, 1.0, 0.3);
        let domain = Domain::new(1.5, 32, false).unwrap();
        let mut plain_heads = vec![];
        for h in 0..layer.heads {
            let k = HeadConstants::of(&layer, h).unwrap();
            let hl = layer.head(h, false).unwrap();
            let sv = |x: Mat<f64>| x.singular_values().unwrap()[0];
            let s = 1.0 / (hl.dk as f64).sqrt();
            let a = sv(hl.wq.transpose() * &hl.wk * s);
            let m = sv(&hl.wo * &hl.wv);
            let v = sv(hl.wv.clone());
            let o = sv(hl.wo.clone());
            let c = (hl.wk.transpose() * Mat::from_fn(hl.dk, 1, |i, _| hl.bq[i])).norm_l2() * s;
            for (got, want) in [(k.a, a), (k.m, m), (k.v, v), (k.o, o), (k.c, c)] {
                let rel = got / want - 1.0;
                assert!(
                    rel.abs() <= 1e-10 && got >= want * (1.0 - 1e-13),
                    "{got} vs {want}"
                );
                worst = worst.max(rel.abs());
            }
            plain_heads.push(HeadConstants {
                a,
                c,
                m,
                v,
                o,
                ma: k.ma,
                va: k.va,
            });
        }
        let plain: f64 = plain_heads
            .iter()
            .map(|k| k.o * b1_head(k, k.v, &domain))
            .sum();
        let bounds = token_map_bounds(&layer, &domain).unwrap();
        let got = bounds.iter().find(|b| b.name == "B1+B4-sum").unwrap().value;
        let rel = got / plain - 1.0;
        assert!(
            rel.abs() <= 1e-10 && got <= plain * (1.0 + 1e-9),
            "B1+B4-sum {got} vs plain {plain}"
        );
        worst = worst.max(rel.abs());
    }
    eprintln!("ordinary weights: largest relative change against plain f64 values {worst:.3e}");
}

// Lemma D0's invariant radius (docs/bounds.md#floating-point), checked exactly: u + m R + b - R
// is a sum of f64 numbers once m R is split into fl(m R) + its error (TwoProd with a fused
// multiply-add, exact when the product does not underflow), and the sign of a sum of f64
// numbers is decided exactly by Shewchuk's expansion arithmetic (TwoSum, exact without overflow).

/// a + b = s + e exactly (Knuth's TwoSum).
fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    let e = (a - (s - bb)) + (b - bb);
    (s, e)
}

/// a b = p + e exactly when a b does not underflow (TwoProd by fused multiply-add).
fn two_prod(a: f64, b: f64) -> (f64, f64) {
    let p = a * b;
    assert!(
        p == 0.0 || p.abs() > 1e-290,
        "the product {a} * {b} is too small for TwoProd"
    );
    (p, a.mul_add(b, -p))
}

/// The exact sign of sum(xs) (Shewchuk's Grow-Expansion: a nonoverlapping expansion whose
/// largest nonzero component carries the sign of the exact sum).
fn exact_sign(xs: &[f64]) -> std::cmp::Ordering {
    let mut e: Vec<f64> = vec![];
    for &x in xs {
        assert!(x.is_finite());
        let mut q = x;
        let mut next = vec![];
        for &c in &e {
            let (s, h) = two_sum(q, c);
            if h != 0.0 {
                next.push(h);
            }
            q = s;
        }
        assert!(q.is_finite());
        next.push(q);
        e = next;
    }
    e.iter()
        .rev()
        .find(|c| **c != 0.0)
        .map_or(std::cmp::Ordering::Equal, |c| c.total_cmp(&0.0))
}

/// Whether u + m R + b <= R holds for the exact reals.
fn exactly_invariant(m: f64, b: f64, u: f64, r: f64) -> bool {
    let (p, e) = two_prod(m, r);
    exact_sign(&[u, p, e, b, -r]) != std::cmp::Ordering::Greater
}

#[test]
fn exact_sign_agrees_with_integers() {
    let mut r = rng(11);
    for _ in 0..2000 {
        // Dyadic numbers k 2^-60 with |k| < 2^62: the exact sum is an i128 times 2^-60.
        let xs: Vec<f64> = (0..5)
            .map(|_| {
                (r.random_range(-(1i64 << 52)..(1i64 << 52)) as f64)
                    * 2f64.powi(r.random_range(-60..=0))
            })
            .collect();
        let exact: i128 = xs.iter().map(|x| (x * 2f64.powi(60)) as i128).sum();
        assert_eq!(exact_sign(&xs), exact.cmp(&0), "{xs:?}");
    }
    assert_eq!(exact_sign(&[1.0, 1e-30, -1.0]), std::cmp::Ordering::Greater);
    assert_eq!(exact_sign(&[1.0, -1e-30, -1.0]), std::cmp::Ordering::Less);
}

#[test]
fn invariant_radius_reviewer_counterexample() {
    use lipattn::dynamics::certify::{ball_is_invariant, invariant_radius};
    let (m, b, u) = (0.7144815916454049, 1.1744816251989845, 0.0);
    // Rounded to nearest, as the code did: the exact inequality fails.
    let naive = (u + b) / (1.0 - m);
    assert_eq!(naive, 4.113505787480979);
    assert!(!exactly_invariant(m, b, u, naive));
    let r = invariant_radius(m, b, u).unwrap();
    assert!(exactly_invariant(m, b, u, r), "R = {r}");
    assert!(ball_is_invariant(m, b, u, r));
    assert!(r <= naive * (1.0 + 1e-14), "R = {r}, naive {naive}");
    // The rounded-up test rejects the naive radius.
    assert!(!ball_is_invariant(m, b, u, naive));
}

#[test]
fn invariant_radius_is_exactly_invariant() {
    use lipattn::dynamics::certify::{ball_is_invariant, invariant_radius};
    let mut rg = rng(12);
    let mut naive_fails = 0;
    for i in 0..2000 {
        let m: f64 = match i % 4 {
            0 => rg.random_range(0.0..1.0),
            1 => 1.0 - rg.random_range(1e-9..1e-3),
            2 => rg.random_range(0.0..1e-3),
            _ => rg.random_range(0.5..0.99),
        };
        let b: f64 = rg.random_range(0.0..10.0) * 2f64.powi(rg.random_range(-20..20));
        let u: f64 = if i % 3 == 0 {
            0.0
        } else {
            rg.random_range(0.0..10.0) * 2f64.powi(rg.random_range(-20..20))
        };
        let naive = (u + b) / (1.0 - m);
        if !exactly_invariant(m, b, u, naive) {
            naive_fails += 1;
        }
        let r = invariant_radius(m, b, u).unwrap();
        assert!(
            exactly_invariant(m, b, u, r),
            "m = {m}, b = {b}, u = {u}, R = {r}"
        );
        assert!(ball_is_invariant(m, b, u, r));
        // Barely larger than the exact smallest radius.
        assert!(
            r <= naive * (1.0 + 1e-9),
            "m = {m}, b = {b}, u = {u}: {r} vs {naive}"
        );
        // The rounded-up test is sound at any radius.
        let s = naive * rg.random_range(0.999_999_999_999..1.000_000_000_001);
        if ball_is_invariant(m, b, u, s) {
            assert!(
                exactly_invariant(m, b, u, s),
                "m = {m}, b = {b}, u = {u}, R = {s}"
            );
        }
    }
    // Rounding to nearest is not enough, which is what this test is about.
    assert!(naive_fails > 0);
    assert_eq!(invariant_radius(1.0, 1.0, 0.0), None);
    assert_eq!(invariant_radius(f64::NAN, 1.0, 0.0), None);
    let m = 1.0f64.next_down();
    // 1 - m = 2^-53: the rounded-up test cannot accept any radius (its own rounding exceeds the
    // margin (1 - m) R), so there is none; whatever is returned must be invariant.
    if let Some(r) = invariant_radius(m, 1.0, 0.0) {
        assert!(exactly_invariant(m, 1.0, 0.0, r));
    }
}

// NaN-safe combinations: a head whose value map is zero contributes 0 even when its score bound
// overflows (0 * e^{2 R beta} with e^{2 R beta} = +inf), and `best` never picks a NaN.

use lipattn::bounds::measure_w1::measure_bounds_from;
use lipattn::bounds::token_map::token_map_bounds_from;
use lipattn::bounds::{Bound, LayerConstants};
use lipattn::estimation::{local_norm, LanczosOptions, Method};

/// Two heads on d = 4 (dk = dv = 2): head 0 has scores of size `q_scale` (e^{2 R beta}
/// overflows for q_scale = 1e3) and value map `v0_scale` times a random one; head 1 is ordinary.
fn two_head_layer(seed: u64, q_scale: f64, v0_scale: f64, v1_scale: f64) -> AttentionLayer<f64> {
    let mut r = rng(seed);
    let (d, dk, dv, heads) = (4, 2, 2, 2);
    let mut wq = gauss_mat(&mut r, heads * dk, d, 0.5);
    let mut wk = gauss_mat(&mut r, heads * dk, d, 0.5);
    let mut wv = gauss_mat(&mut r, heads * dv, d, 0.5);
    for j in 0..d {
        for i in 0..dk {
            wq[(i, j)] *= q_scale;
            wk[(i, j)] *= q_scale;
        }
        for i in 0..dv {
            wv[(i, j)] *= v0_scale;
            wv[(dv + i, j)] *= v1_scale;
        }
    }
    let wo = gauss_mat(&mut r, d, heads * dv, 0.5);
    AttentionLayer::new(
        heads,
        Kernel::Dot,
        wq,
        vec![0.0; heads * dk],
        wk,
        vec![0.0; heads * dk],
        wv,
        vec![0.0; heads * dv],
        wo,
        vec![0.0; d],
    )
    .unwrap()
}

fn bound(value: f64) -> Bound {
    Bound {
        name: "test".into(),
        metric: Metric::W1,
        value,
        certified: true,
        source: "test".into(),
    }
}

#[test]
fn best_ignores_nan() {
    let neg_nan = -f64::NAN;
    assert!(neg_nan.is_sign_negative() && neg_nan.is_nan());
    let v = |bs: &[Bound]| best(bs, Metric::W1).map(|b| b.value);
    assert_eq!(
        v(&[bound(neg_nan), bound(3.0), bound(f64::INFINITY)]),
        Some(3.0)
    );
    assert_eq!(v(&[bound(f64::NAN), bound(2.0), bound(neg_nan)]), Some(2.0));
    assert_eq!(
        v(&[bound(f64::INFINITY), bound(neg_nan)]),
        Some(f64::INFINITY)
    );
    assert_eq!(v(&[bound(f64::INFINITY), bound(5.0)]), Some(5.0));
    assert_eq!(v(&[bound(neg_nan), bound(f64::NAN)]), None);
    assert_eq!(v(&[]), None);
}

#[test]
fn zero_value_head_with_overflowing_scores_contributes_zero() {
    let radius = 1.0;
    let n = 6;
    for seed in 0..3 {
        let layer = two_head_layer(40 + seed, 1e3, 0.0, 1.0);
        let consts = LayerConstants::of(&layer).unwrap();
        let k0 = &consts.heads[0];
        assert_eq!((k0.v, k0.m), (0.0, 0.0), "head 0 has W_V = 0");
        // e^{2 R beta} overflows for head 0.
        assert!(
            (2.0 * radius * (k0.a * radius + k0.c)).exp().is_infinite(),
            "a = {}",
            k0.a
        );
        let domain = Domain::new(radius, n, false).unwrap();
        let tok = token_map_bounds_from(&consts, &domain);
        let meas = measure_bounds_from(&consts, radius);
        for b in tok.iter().chain(&meas) {
            assert!(!b.value.is_nan(), "{} is NaN", b.name);
        }
        let fro = best(&tok, Metric::Frobenius).unwrap().value;
        let w1 = best(&meas, Metric::W1).unwrap().value;
        assert!(
            fro.is_finite() && w1.is_finite(),
            "frobenius {fro}, w1 {w1}"
        );
        // The layer is head 1 plus a constant: its bounds are those of head 1's layer, up to
        // the concatenated forms' ||W_O||.
        let only1 = LayerConstants::of(&two_head_layer(40 + seed, 0.0, 0.0, 1.0)).unwrap();
        let w1_only = best(&measure_bounds_from(&only1, radius), Metric::W1)
            .unwrap()
            .value;
        assert!(w1 <= w1_only * (1.0 + 1e-9), "{w1} vs {w1_only}");
        // At least what the Jacobian attains at points of the ball.
        let mut r = rng(90 + seed);
        for _ in 0..3 {
            let mut x = gauss_mat(&mut r, n, 4, 1.0);
            for i in 0..n {
                let norm = (0..4).map(|k| x[(i, k)] * x[(i, k)]).sum::<f64>().sqrt();
                for k in 0..4 {
                    x[(i, k)] *= 0.99 * radius / norm;
                }
            }
            let local = local_norm(
                &layer,
                x.as_ref(),
                None,
                false,
                &Method::Lanczos(LanczosOptions::default()),
            )
            .unwrap();
            assert!(
                local.top.sigma <= fro,
                "attained {} above the bound {fro}",
                local.top.sigma
            );
        }
    }
}

#[test]
fn all_zero_value_heads_give_zero_bounds() {
    let radius = 1.0;
    let layer = two_head_layer(50, 1e3, 0.0, 0.0);
    let consts = LayerConstants::of(&layer).unwrap();
    let domain = Domain::new(radius, 5, false).unwrap();
    let tok = token_map_bounds_from(&consts, &domain);
    let meas = measure_bounds_from(&consts, radius);
    for b in tok.iter().chain(&meas) {
        assert!(!b.value.is_nan(), "{} is NaN", b.name);
    }
    let fro = best(&tok, Metric::Frobenius).unwrap().value;
    let w1 = best(&meas, Metric::W1).unwrap().value;
    assert!(fro <= 1e-300 && w1 <= 1e-300, "frobenius {fro}, w1 {w1}");
}

#[test]
fn infinite_heads_make_the_best_infinite_only_when_every_candidate_is() {
    let radius = 1.0;
    // Head 0 has a nonzero value map and overflowing scores: B2 is +inf in both forms.
    let layer = two_head_layer(60, 1e3, 1.0, 1.0);
    let consts = LayerConstants::of(&layer).unwrap();
    let meas = measure_bounds_from(&consts, radius);
    let w1 = best(&meas, Metric::W1).unwrap().value;
    assert!(w1.is_infinite(), "{w1}");
    // The token-map bounds cap the column sum by n, so B1-tight stays finite and is chosen.
    let domain = Domain::new(radius, 5, false).unwrap();
    let tok = token_map_bounds_from(&consts, &domain);
    for b in &tok {
        assert!(!b.value.is_nan(), "{} is NaN", b.name);
    }
    let fro = best(&tok, Metric::Frobenius).unwrap().value;
    assert!(fro.is_finite(), "{fro}");
    assert!(tok
        .iter()
        .filter(|b| b.certified && b.metric == Metric::Frobenius)
        .all(|b| fro <= b.value));
}
