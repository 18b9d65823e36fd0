//! Soundness battery for B7 (docs/bounds.md#b7-rotary): on random rotary layers covering every
//! option (GQA and multi-query, partial rotation, every scaling, biases, qk-norm with w or 1 + w
//! gains and eps from 1e-6 to 1, softcap, windows), no attained value may exceed the certified
//! bound. Attained values: the exact top singular value of the dense Jacobian (built from JVPs)
//! at random inputs in (B_R)^n, at inputs that collapse queries and keys to zero (where a
//! qk-norm's derivative peaks), and at the best input a random-search ascent finds; for W1 over
//! (position, token) measures, the (2,1)-norm of the dense Jacobian on single-token tangents;
//! secant quotients of the forward map in both norms.

use lipattn::attention::{RmsNorm, RopeScaling, RotaryAttention};
use lipattn::bounds::layer_norm::rms_norm_radius;
use lipattn::bounds::rotary::{head_terms, rotary_bounds, RotaryConstants};
use lipattn::bounds::{best, Domain, Metric};
use lipattn::estimation::{rotary_ascent, AscentOptions};
use lipattn::linalg::SplitMix;
use lipattn::Mat;

mod common;
use common::rotary::{gauss, gauss_vec, RotarySpec};

struct Case {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    rotary_dim: usize,
    d: usize,
    d_out: usize,
    bias: f64,
    qk_norm: Option<(bool, f64)>,
    softcap: Option<f64>,
    window: Option<usize>,
    scaling: RopeScaling,
    score_divisor_sq: usize,
    weight_scale: f64,
}

fn scalings() -> Vec<RopeScaling> {
    vec![
        RopeScaling::Default,
        RopeScaling::Linear { factor: 2.5 },
        RopeScaling::Dynamic {
            factor: 3.0,
            original_max_position_embeddings: 4,
        },
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8,
        },
        // An attention factor above 1 (0.1 ln 40 + 1 = 1.37) scales every rotation.
        RopeScaling::Yarn {
            factor: 40.0,
            original_max_position_embeddings: 12,
            beta_fast: 16.0,
            beta_slow: 2.0,
            mscale: None,
            mscale_all_dim: None,
            attention_factor: None,
            truncate: false,
        },
    ]
}

fn case(i: usize) -> Case {
    let groupings = [(1, 1), (2, 1), (2, 2), (3, 1), (4, 2)];
    let (heads, kv_heads) = groupings[i % groupings.len()];
    let head_dim = [2, 4, 6][i % 3];
    let rotary_dim = if i % 4 == 3 && head_dim > 2 {
        head_dim - 2
    } else {
        head_dim
    };
    let mut scaling = scalings()[i % 5].clone();
    // Dynamic's base exponent r / (r - 2) needs r != 2.
    if matches!(scaling, RopeScaling::Dynamic { .. }) && rotary_dim == 2 {
        scaling = RopeScaling::Default;
    }
    let qk = [
        None,
        Some((false, 1e-6)),
        Some((true, 1e-2)),
        Some((false, 1.0)),
    ];
    Case {
        heads,
        kv_heads,
        head_dim,
        rotary_dim,
        d: 2 + i % 4,
        d_out: 1 + i % 3,
        bias: [0.0, 0.4, 2.0][i % 7 % 3],
        qk_norm: qk[i % 11 % 4],
        softcap: [None, Some(0.7), Some(5.0)][i % 13 % 3],
        window: [None, Some(1), Some(2), Some(4)][i % 17 % 4],
        scaling,
        score_divisor_sq: if i.is_multiple_of(19) { 3 } else { head_dim },
        weight_scale: [0.3, 1.0, 3.0][i % 23 % 3],
    }
}

fn build(c: &Case, seed: u64) -> RotaryAttention {
    common::rotary::build(
        &RotarySpec {
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
            rotary_dim: c.rotary_dim,
            d: c.d,
            d_out: c.d_out,
            qk_scale: c.weight_scale / (c.d as f64).sqrt(),
            v_scale: 1.0 / (c.d as f64).sqrt(),
            o_scale: 1.0 / ((c.heads * c.head_dim) as f64).sqrt(),
            bias: c.bias,
            qk_norm: c.qk_norm.map(|(unit_offset, eps)| (unit_offset, eps, 0.7)),
            softcap: c.softcap,
            window: c.window,
            theta: 10000.0,
            max_position_embeddings: 4,
            scaling: c.scaling.clone(),
            score_divisor_sq: c.score_divisor_sq,
        },
        seed,
    )
}

/// The dense Jacobian (n d_out x n d; row i d_out + a, column j d + b) at x, from n d JVPs.
fn jacobian(layer: &RotaryAttention, x: &Mat<f64>) -> Mat<f64> {
    let (n, d, e) = (x.nrows(), x.ncols(), layer.d_out());
    let mut jac = Mat::<f64>::zeros(n * e, n * d);
    for j in 0..n {
        for b in 0..d {
            let dx = Mat::from_fn(n, d, |r, c| if r == j && c == b { 1.0 } else { 0.0 });
            let (_, dy) = layer.jvp(x.as_ref(), dx.as_ref()).unwrap();
            for i in 0..n {
                for a in 0..e {
                    jac[(i * e + a, j * d + b)] = dy[(i, a)];
                }
            }
        }
    }
    jac
}

fn spectral(m: &Mat<f64>) -> f64 {
    m.singular_values().unwrap()[0]
}

/// A lower bound of the (2,1)-norm sup sum_i |J_ij u| / |u| over single-token tangents u at
/// position j: candidates are the coordinate directions and the top right singular vector of the
/// block column J_{:, j}.
fn mixed_norm(jac: &Mat<f64>, n: usize, d: usize, e: usize) -> f64 {
    let mut best = 0.0f64;
    for j in 0..n {
        let block = Mat::from_fn(n * e, d, |r, c| jac[(r, j * d + c)]);
        let svd = block.thin_svd().unwrap();
        let mut cands: Vec<Vec<f64>> = (0..d)
            .map(|b| (0..d).map(|c| if c == b { 1.0 } else { 0.0 }).collect())
            .collect();
        cands.push((0..d).map(|c| svd.V()[(c, 0)]).collect());
        for u in cands {
            let total: f64 = (0..n)
                .map(|i| {
                    (0..e)
                        .map(|a| {
                            let v: f64 = (0..d).map(|c| block[(i * e + a, c)] * u[c]).sum();
                            v * v
                        })
                        .sum::<f64>()
                        .sqrt()
                })
                .sum();
            best = best.max(total);
        }
    }
    best
}

/// Rows scaled to norm at most r.
fn project(x: &mut Mat<f64>, r: f64) {
    for i in 0..x.nrows() {
        let nrm = (0..x.ncols())
            .map(|c| x[(i, c)].powi(2))
            .sum::<f64>()
            .sqrt();
        if nrm > r {
            for c in 0..x.ncols() {
                x[(i, c)] *= r / nrm;
            }
        }
    }
}

fn on_sphere(rng: &mut SplitMix, n: usize, d: usize, r: f64) -> Mat<f64> {
    let mut x = gauss(rng, n, d, 1e3);
    project(&mut x, r);
    x
}

struct Worst {
    frob: f64,
    w1: f64,
    /// Over n >= 2 only (n = 1 is a linear map, where B7 is tight as R -> 0).
    frob_seq: f64,
    w1_seq: f64,
    /// Over cases where the terms through the scores make up at least 90% of the bound.
    frob_scores: f64,
    ratios: Vec<f64>,
}

impl Worst {
    fn record(&mut self, n: usize, frob: f64, w1: f64, bound_f: f64, bound_w1: f64, what: &str) {
        assert!(
            frob <= bound_f && w1 <= bound_w1,
            "{what}: attained frobenius {frob:e} (bound {bound_f:e}), w1 {w1:e} (bound {bound_w1:e})"
        );
        self.frob = self.frob.max(frob / bound_f);
        self.w1 = self.w1.max(w1 / bound_w1);
        if n >= 2 {
            self.frob_seq = self.frob_seq.max(frob / bound_f);
            self.w1_seq = self.w1_seq.max(w1 / bound_w1);
        }
        self.ratios.push(bound_f / frob.max(1e-300));
    }
}

#[test]
fn b7_holds_against_attained_values() {
    let mut worst = Worst {
        frob: 0.0,
        w1: 0.0,
        frob_seq: 0.0,
        w1_seq: 0.0,
        frob_scores: 0.0,
        ratios: vec![],
    };
    let radii = [0.05, 0.6, 2.0, 7.0];
    for i in 0..400 {
        let c = case(i);
        let layer = build(&c, 1000 + i as u64);
        let consts = RotaryConstants::of(&layer).unwrap();
        let n = [1, 2, 3, 5][i % 4];
        let r = radii[i % 29 % 4];
        let domain = Domain::new(r, n, true).unwrap();
        let bounds = rotary_bounds(&layer, &consts, &domain).unwrap();
        let bf = best(&bounds, Metric::Frobenius).unwrap().value;
        let bw = best(&bounds, Metric::PositionW1).unwrap().value;
        // The part of the sum bound that does not go through the scores: sum_h m_h sqrt(colsum_h).
        let terms = head_terms(&layer, &consts, &domain).unwrap();
        let value_only: f64 = terms
            .iter()
            .zip(&consts.heads)
            .map(|(t, k)| k.m * t.colsum.sqrt())
            .sum();
        let scores_dominate = value_only < 0.1 * bf;
        let (d, e) = (c.d, c.d_out);
        let mut rng = SplitMix::new(7 + i as u64);
        let eval = |x: &Mat<f64>| {
            let jac = jacobian(&layer, x);
            (spectral(&jac), mixed_norm(&jac, n, d, e))
        };
        let what = |s: &str| format!("case {i} ({s}), n {n}, R {r}");
        // Random inputs on the sphere and inside the ball.
        let mut start = on_sphere(&mut rng, n, d, r);
        let (mut best_f, _) = eval(&start);
        for k in 0..4 {
            let mut x = gauss(&mut rng, n, d, r / (d as f64).sqrt());
            if k % 2 == 0 {
                x = on_sphere(&mut rng, n, d, r);
            }
            project(&mut x, r);
            let (f, w) = eval(&x);
            worst.record(n, f, w, bf, bw, &what("random"));
            if f > best_f {
                best_f = f;
                start = x;
            }
        }
        // Collapsed queries and keys: tokens at 0 (q = b_Q, k = b_K) and tiny ones.
        for scale in [0.0, 1e-7] {
            let mut x = gauss(&mut rng, n, d, scale);
            if n > 1 {
                let far = on_sphere(&mut rng, 1, d, r);
                for col in 0..d {
                    x[(n - 1, col)] = far[(0, col)];
                }
            }
            let (f, w) = eval(&x);
            worst.record(n, f, w, bf, bw, &what("collapsed"));
        }
        // Random-search ascent on the Frobenius local constant from the best start.
        let mut step = r * 0.3;
        for _ in 0..25 {
            let mut x = start.clone();
            for row in 0..n {
                for col in 0..d {
                    x[(row, col)] += step * rng.gauss();
                }
            }
            project(&mut x, r);
            let (f, w) = eval(&x);
            worst.record(n, f, w, bf, bw, &what("ascent"));
            if f > best_f {
                best_f = f;
                start = x;
            } else {
                step *= 0.85;
            }
        }
        // The rotary ascent of `lipattn lipschitz` (transition starts of the unrotated heads,
        // climbed with gradients), on every fourth case.
        if i % 4 == 3 {
            let opts = AscentOptions {
                radius: r,
                random_starts: 1,
                steps: 6,
                ..AscentOptions::default()
            };
            let res = rotary_ascent(&layer, n, &opts).unwrap();
            best_f = best_f.max(res.sigma);
            worst.record(n, res.sigma, 0.0, bf, f64::INFINITY, &what("rotary ascent"));
        }
        if scores_dominate {
            worst.frob_scores = worst.frob_scores.max(best_f / bf);
        }
        // Secant quotients.
        for _ in 0..5 {
            let x = on_sphere(&mut rng, n, d, r);
            let mut y = x.clone();
            let h = r * [1e-3, 0.1, 1.0][(rng.next_u64() % 3) as usize];
            for row in 0..n {
                for col in 0..d {
                    y[(row, col)] += h * rng.gauss();
                }
            }
            project(&mut y, r);
            let (fx, fy) = (
                layer.forward(x.as_ref()).unwrap(),
                layer.forward(y.as_ref()).unwrap(),
            );
            let row_norm = |m: &Mat<f64>, i: usize| {
                (0..m.ncols())
                    .map(|c| m[(i, c)].powi(2))
                    .sum::<f64>()
                    .sqrt()
            };
            let df = &fy - &fx;
            let dx = &y - &x;
            let frob = df.norm_l2() / dx.norm_l2();
            let w1 = (0..n).map(|i| row_norm(&df, i)).sum::<f64>()
                / (0..n).map(|i| row_norm(&dx, i)).sum::<f64>();
            if dx.norm_l2() > 0.0 {
                worst.record(n, frob, w1, bf, bw, &what("secant"));
            }
        }
    }
    let mut ratios = worst.ratios;
    ratios.sort_by(f64::total_cmp);
    eprintln!(
        "B7: worst attained/certified {:.3} (frobenius), {:.3} (position W1); for n >= 2 {:.3}, {:.3}; where the scores make up 90% of the bound {:.3}; median certified/attained {:.2}",
        worst.frob,
        worst.w1,
        worst.frob_seq,
        worst.w1_seq,
        worst.frob_scores,
        ratios[ratios.len() / 2]
    );
    // The battery must come near the bound somewhere, or it tests nothing.
    assert!(
        worst.frob > 0.2,
        "attained values never came near B7: {}",
        worst.frob
    );
}

#[test]
fn qk_norm_bounds_scores_whatever_the_radius_and_softcap_caps_them() {
    let mut c = case(1);
    c.qk_norm = Some((false, 1e-6));
    c.softcap = None;
    let layer = build(&c, 5);
    let consts = RotaryConstants::of(&layer).unwrap();
    let small = head_terms(&layer, &consts, &Domain::new(1.0, 8, true).unwrap()).unwrap();
    let large = head_terms(&layer, &consts, &Domain::new(1e6, 8, true).unwrap()).unwrap();
    for (a, b) in small.iter().zip(&large) {
        assert_eq!(a.score, b.score);
        assert_eq!(a.colsum, b.colsum);
    }
    c.qk_norm = None;
    c.softcap = Some(0.5);
    let layer = build(&c, 5);
    let consts = RotaryConstants::of(&layer).unwrap();
    let t = head_terms(&layer, &consts, &Domain::new(1e3, 8, true).unwrap()).unwrap();
    assert!(t.iter().all(|t| t.score <= 0.5));
}

#[test]
fn b7_needs_a_causal_domain() {
    let layer = build(&case(0), 1);
    let consts = RotaryConstants::of(&layer).unwrap();
    let err = rotary_bounds(&layer, &consts, &Domain::new(1.0, 4, false).unwrap()).unwrap_err();
    assert!(err.to_string().contains("causal"), "{err}");
}

#[test]
fn rms_norm_outputs_lie_in_the_certified_ball() {
    let mut rng = SplitMix::new(3);
    for k in 0..200 {
        let d = 1 + k % 9;
        let norm = RmsNorm {
            weight: gauss_vec(&mut rng, d, [0.1, 1.0, 30.0][k % 3]),
            eps: [0.0, 1e-6, 1.0][k % 3],
            unit_offset: k % 2 == 1,
        };
        let radius = rms_norm_radius(&norm).unwrap();
        let scale = [1e-150, 1e-8, 1.0, 1e8, 1e150][k % 5];
        let x = gauss(&mut rng, 6, d, scale);
        let y = norm.apply(x.as_ref()).unwrap();
        for i in 0..6 {
            let r = (0..d).map(|c| y[(i, c)].powi(2)).sum::<f64>().sqrt();
            assert!(r <= radius, "row {i}: |y| = {r:e} > {radius:e}");
        }
    }
}
