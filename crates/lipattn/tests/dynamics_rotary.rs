//! The token-space dynamics on rotary attention (docs/dynamics.md#branches): invertible blocks,
//! weight-tied fixed points and the token flow (docs/dynamics.md#d6) whose certificates come from
//! B7 on a ball, checked against the truth on random rotary layers with grouped heads, windows,
//! qk-norms, softcaps and biases.

use lipattn::attention::RopeScaling;
use lipattn::dynamics::logdet::{logdet_exact, logdet_series};
use lipattn::dynamics::token_flow::{
    integrate_tokens, token_gronwall_check, token_gronwall_constant,
};
use lipattn::dynamics::{
    frobenius, max_row_norm, AnyBranch, Branch, CertifiedDomain, FlowOptions, Integrator,
    InvertibleBlock, Projection, RotaryBranch, SolveOptions, Solver, TokenFixedPoint, Variant,
};
use lipattn::estimation::{local_norm_of, LanczosOptions, Method, SplitMix};
use lipattn::ops::fixed_point::{self, FixedPointInputs, FixedPointRequest, Space, VariantName};
use lipattn::ops::flow::{self, FlowInputs, FlowMap, FlowRequest, ProjectionName};
use lipattn::{Error, LayerSource, Mat};

mod common;
use common::rotary::{gauss, RotarySpec};

const D: usize = 8;

/// (name, heads, kv heads, window, qk-norm, softcap, bias).
type Case = (
    &'static str,
    usize,
    usize,
    Option<usize>,
    bool,
    Option<f64>,
    f64,
);

const CASES: [Case; 5] = [
    ("mha", 2, 2, None, false, None, 0.0),
    ("gqa+bias", 4, 2, None, false, None, 0.3),
    ("window", 2, 1, Some(3), false, None, 0.2),
    ("qk-norm", 2, 2, None, true, None, 0.0),
    ("softcap+window", 4, 1, Some(2), false, Some(2.0), 0.1),
];

fn layer(c: &Case, seed: u64) -> RotaryBranch {
    let &(_, heads, kv_heads, window, qk_norm, softcap, bias) = c;
    let spec = RotarySpec {
        heads,
        kv_heads,
        head_dim: 4,
        rotary_dim: 4,
        d: D,
        d_out: D,
        qk_scale: 0.6,
        v_scale: 0.4,
        o_scale: 0.4,
        bias,
        qk_norm: qk_norm.then_some((false, 1e-2, 0.5)),
        softcap,
        window,
        theta: 100.0,
        max_position_embeddings: 32,
        scaling: RopeScaling::Default,
        score_divisor_sq: 4,
    };
    RotaryBranch::new(common::rotary::build(&spec, seed), "test")
}

fn tokens(n: usize, seed: u64, scale: f64) -> Mat<f64> {
    gauss(&mut SplitMix::new(seed), n, D, scale)
}

fn opts(atol: f64) -> SolveOptions {
    SolveOptions {
        atol,
        max_evals: 20000,
        ..Default::default()
    }
}

fn attained(b: &RotaryBranch, x: &Mat<f64>) -> f64 {
    let m = Method::Lanczos(LanczosOptions::default());
    local_norm_of(&m, || b.linearize(x.as_ref()))
        .unwrap()
        .top
        .sigma
}

/// y = x + g(x) for random x: every solver's reconstruction is within its certified
/// a-posteriori bound, Picard within its a-priori count, and the attained local constant of g
/// (at x and at the reconstruction) below the certified one.
#[test]
fn rotary_inversion_is_within_its_certified_bound() {
    for (k, c) in CASES.iter().enumerate() {
        for seed in 0..3u64 {
            let b = layer(c, 10 * k as u64 + seed);
            let x = tokens(7, 100 + seed, 0.8);
            let block = InvertibleBlock::for_tokens(&b, x.as_ref(), 0.9, None).unwrap();
            let cert = &block.certificate;
            assert!(cert.constant <= 0.9 && cert.source.contains("b7-rotary"));
            let CertifiedDomain::Ball { radius } = cert.domain else {
                panic!("{}: rotary blocks are certified on a ball", c.0)
            };
            assert!(max_row_norm(x.as_ref()) <= radius);
            let local = attained(&block.g, &x);
            assert!(
                local <= cert.constant,
                "{}: attained {local} above {}",
                c.0,
                cert.constant
            );
            let y = block.forward(x.as_ref()).unwrap();
            for solver in [Solver::Picard, Solver::anderson(), Solver::broyden()] {
                let inv = block.inverse(y.as_ref(), &solver, &opts(1e-12)).unwrap();
                let err = frobenius((&inv.x - &x).as_ref());
                let bound = inv.error_bound.expect("certified");
                assert!(
                    err <= bound,
                    "{} {}: error {err:e} above {bound:e}",
                    c.0,
                    inv.solver
                );
                assert!(err <= 1e-9, "{} {}: error {err:e}", c.0, inv.solver);
                if inv.solver == "picard" {
                    assert!(inv.iterations <= inv.a_priori_iterations.unwrap());
                }
            }
        }
    }
}

/// log|det(I + J_g)| of a rotary block: exact (sign +1, since Lip(g) < 1) against the series
/// estimate within its certified truncation bound plus five estimated standard errors.
#[test]
fn rotary_logdet_series_agrees_with_exact() {
    let b = layer(&CASES[1], 3);
    let x = tokens(5, 7, 0.8);
    let block = InvertibleBlock::for_tokens(&b, x.as_ref(), 0.5, None).unwrap();
    let exact = logdet_exact(&block.g, x.as_ref()).unwrap();
    assert_eq!(exact.sign, 1.0);
    let est = logdet_series(&block.g, x.as_ref(), 0.5, 1e-6, 400, 1).unwrap();
    let gap = (est.estimate - exact.logabsdet).abs();
    assert!(
        gap <= est.truncation_bound + 5.0 * est.std_error,
        "{gap:e} {est:?}"
    );
}

/// X = U + f(X) and X = f(X) with f scaled to certified contraction 0.6 (the `fixed-point`
/// command's library path): the reported residual is the true |T(X) - X|_F of the rotary map,
/// every solver's fixed point is within its certified error of a far-converged reference, and the
/// report states the rotary settings and the causal mask.
#[test]
fn rotary_fixed_point_residual_and_certified_bound() {
    for (k, c) in CASES.iter().enumerate() {
        let b = AnyBranch::Rotary(std::sync::Arc::new(layer(c, 40 + k as u64)));
        let x = tokens(6, 200 + k as u64, 0.7);
        for variant in [VariantName::Plain, VariantName::Injected] {
            let req = FixedPointRequest {
                space: Space::Tokens,
                variant,
                contract: Some(0.6),
                solve: lipattn::ops::solvers::SolverRequest {
                    atol: 1e-13,
                    ..Default::default()
                },
                ..Default::default()
            };
            let origin = LayerSource::new("random rotary layer", true, lipattn::Kernel::Dot);
            let inputs = FixedPointInputs {
                layer: &b,
                x: x.as_ref(),
                input: None,
                weights: None,
                source: None,
                origin: &origin,
            };
            let r = fixed_point::run(&req, inputs, &mut lipattn::ops::silent).unwrap();
            assert_eq!(r.status, "converged", "{}: {:?}", c.0, r.notes);
            let l = r.certified_contraction.unwrap();
            assert!(l <= 0.6);
            assert_eq!(r.operator.rotary.as_ref().unwrap().window, c.3);
            assert!(r.operator.mask.causal());
            let g = b.scaled(r.scale);
            let t = |z: &Mat<f64>| -> Mat<f64> {
                let f = g.forward(z.as_ref()).unwrap();
                match variant {
                    VariantName::Injected => &f + &x,
                    _ => f,
                }
            };
            let mut reference = r.solutions[0].clone();
            for _ in 0..400 {
                reference = t(&reference);
            }
            // After 400 more contractions by l <= 0.6 the reference is exact to rounding.
            let ref_err = 1e-12 * (1.0 + frobenius(reference.as_ref()));
            for (xs, run) in r.solutions.iter().zip(&r.solvers) {
                let v = match run {
                    lipattn::ops::solvers::SolverRun::Converged(v) => v,
                    _ => unreachable!(),
                };
                let residual = frobenius((&t(xs) - xs).as_ref());
                let reported = v["residual"].as_f64().unwrap();
                assert!((residual - reported).abs() <= 1e-12 * (1.0 + reported));
                let bound = v["error_bound"].as_f64().expect("certified");
                let err = frobenius((xs - &reference).as_ref());
                assert!(
                    err <= bound + ref_err,
                    "{}: error {err:e} above {bound:e}",
                    c.0
                );
            }
        }
    }
}

/// The hypotheses are checked, not assumed: no block without a radius, y far outside the ball
/// refused (its preimage is not proven to lie in it), a radius the map does not send into itself
/// leaves the fixed point uncertified, and measure space names why it does not apply.
#[test]
fn rotary_hypothesis_violations_are_refused() {
    let b = layer(&CASES[2], 5);
    let Err(e) = InvertibleBlock::new(&b, 6, 0.9, None) else {
        panic!("a rotary block needs a ball")
    };
    assert!(
        e.to_string()
            .contains("rotary attention is Lipschitz only on a ball"),
        "{e}"
    );
    let block = InvertibleBlock::new(&b, 6, 0.9, Some(2.0)).unwrap();
    let far = tokens(6, 9, 1.0) * faer::Scale(50.0);
    let e = block
        .inverse(far.as_ref(), &Solver::Picard, &opts(1e-8))
        .unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    let x = tokens(6, 11, 3.0);
    let Err(e) = InvertibleBlock::for_tokens(&b, x.as_ref(), 0.9, Some(0.5)) else {
        panic!("tokens outside the radius")
    };
    assert!(e.to_string().contains("choose a larger radius"), "{e}");
    let (m, _) = b.row_bound().unwrap();
    let g = b.scaled(2.0 / m);
    let p = TokenFixedPoint::new(g.clone(), 6, Variant::Plain, Some(1.0)).unwrap();
    assert!(p.contraction.is_none() && p.domain.is_none());
    assert!(
        p.notes.iter().any(|n| n.contains("not mapped into itself")),
        "{:?}",
        p.notes
    );
    let p = TokenFixedPoint::new(g, 6, Variant::Plain, None).unwrap();
    assert!(p.contraction.is_none() && p.domain.is_none());
    assert!(
        p.notes.iter().any(|n| n.contains("no invariant ball")),
        "{:?}",
        p.notes
    );
    let e = b.measure_map().unwrap_err();
    assert!(e.to_string().contains("model_type 'test'"), "{e}");
}

/// Lemma D0 for rotary layers: |f(X)_i| <= m max_j |x_j| + b at random and large inputs.
#[test]
fn rotary_row_bound_holds() {
    for (k, c) in CASES.iter().enumerate() {
        let b = layer(c, 70 + k as u64);
        let (m, bias) = b.row_bound().unwrap();
        for (seed, scale) in [(1, 0.1), (2, 1.0), (3, 30.0)] {
            let x = tokens(9, seed, scale);
            let y = b.forward(x.as_ref()).unwrap();
            assert!(max_row_norm(y.as_ref()) <= m * max_row_norm(x.as_ref()) + bias);
        }
    }
}

fn flow_opts(projection: Projection, t_end: f64, record: f64) -> FlowOptions {
    FlowOptions {
        projection,
        integrator: Integrator::Rk4 { dt: 0.01 },
        t_end,
        record_every: record,
        max_steps: 100_000,
    }
}

/// The largest eigenvalue of the symmetric part of J_f(X) and its eigenvector: the direction in
/// which two flows from X separate fastest at t = 0 (d/dt ln|D| = <D, J D> / |D|^2).
fn fastest_separation(b: &RotaryBranch, x: &Mat<f64>) -> (f64, Mat<f64>) {
    let (n, d) = (x.nrows(), x.ncols());
    let lin = b.linearize(x.as_ref()).unwrap();
    let nd = n * d;
    let mut j = Mat::<f64>::zeros(nd, nd);
    for c in 0..nd {
        let e = Mat::from_fn(n, d, |i, k| f64::from(u8::from(i * d + k == c)));
        let col = lipattn::derivatives::LinearizedMap::jvp(&lin, e.as_ref()).unwrap();
        for i in 0..n {
            for k in 0..d {
                j[(i * d + k, c)] = col[(i, k)];
            }
        }
    }
    let s = Mat::from_fn(nd, nd, |r, c| 0.5 * (j[(r, c)] + j[(c, r)]));
    let evd = s.self_adjoint_eigen(faer::Side::Lower).unwrap();
    let top = nd - 1;
    let lambda = evd.S().column_vector()[top];
    let v = Mat::from_fn(n, d, |i, k| evd.U()[(i * d + k, top)]);
    (lambda, v)
}

/// Theorem D6 on random rotary layers of every kind, free and on the sphere, from random starts
/// and from adversarial ones (large tokens, where attention is sharp, perturbed along the
/// fastest-separating direction): |X(t) - Y(t)|_F never exceeds e^{L t} |X(0) - Y(0)|_F, the
/// measured rate never exceeds L, and along the adversarial direction the first measured rate is
/// the predicted initial one (so the measurement can see a violation).
#[test]
fn rotary_token_flow_gronwall_bound_holds() {
    for (k, c) in CASES.iter().enumerate() {
        for (seed, scale) in [(0u64, 0.8), (1, 3.0)] {
            let b = layer(c, 300 + 10 * k as u64 + seed);
            let x = tokens(6, 400 + seed, scale);
            let (lambda, v) = fastest_separation(&b, &x);
            let mut rng = SplitMix::new(500 + seed);
            for projection in [Projection::None, Projection::Sphere] {
                let opts = flow_opts(projection, 0.5, 0.01);
                let random = gauss(&mut rng, 6, D, 1e-4);
                for (name, dir) in [("random", random), ("adversarial", &v * faer::Scale(1e-6))] {
                    let y = &x + &dir;
                    let g = token_gronwall_check(&b, x.as_ref(), y.as_ref(), &opts).unwrap();
                    assert_eq!((g.space, g.metric), ("tokens", "frobenius"));
                    assert!(
                        g.lipschitz_source.contains("b7-rotary"),
                        "{}",
                        g.lipschitz_source
                    );
                    assert!(!g.violated, "{} {name} {projection:?}: {g:?}", c.0);
                    for (m, bound) in g.measured.iter().zip(&g.bound) {
                        assert!(m <= bound);
                    }
                    assert!(g.measured_rate <= g.lipschitz, "{} {name}: {g:?}", c.0);
                    if name == "adversarial" && projection == Projection::None {
                        // One short step, so that the rate is the initial one.
                        let h = 1e-4;
                        let short = FlowOptions {
                            integrator: Integrator::Rk4 { dt: h },
                            ..flow_opts(projection, h, h)
                        };
                        let g = token_gronwall_check(&b, x.as_ref(), y.as_ref(), &short).unwrap();
                        let first = (g.measured[1] / g.measured[0]).ln() / h;
                        assert!(
                            (first - lambda).abs() <= 0.05 * lambda.abs() + 0.05,
                            "{}: first rate {first} against lambda {lambda}",
                            c.0
                        );
                        assert!(lambda <= g.lipschitz);
                    }
                }
            }
        }
    }
}

/// The token flow is the ODE of the rotary map: RK4 and adaptive Dormand-Prince agree, the rows
/// stay within the ball of Lemma D5a, and with the causal mask token i's path depends on tokens
/// 0..i only (changing the last token moves no earlier one).
#[test]
fn rotary_token_flow_integrates_the_causal_map() {
    for (k, c) in CASES.iter().enumerate() {
        let b = layer(c, 600 + k as u64);
        let x = tokens(5, 700 + k as u64, 1.0);
        let rk4 =
            integrate_tokens(&b, x.as_ref(), &flow_opts(Projection::None, 1.0, 0.25)).unwrap();
        let dopri = integrate_tokens(
            &b,
            x.as_ref(),
            &FlowOptions {
                integrator: Integrator::DoPri5 {
                    rtol: 1e-11,
                    atol: 1e-13,
                    h0: 0.01,
                },
                ..flow_opts(Projection::None, 1.0, 0.25)
            },
        )
        .unwrap();
        assert_eq!(rk4.times, dopri.times);
        for (p, q) in rk4.states.iter().zip(&dopri.states) {
            // RK4 with dt = 0.01 is about 1e-7 off on these layers; Dormand-Prince at 1e-11 is not.
            assert!(frobenius((p - q).as_ref()) <= 1e-5 * (1.0 + frobenius(q.as_ref())));
        }
        let (m, bias) = b.row_bound().unwrap();
        let r0 = max_row_norm(x.as_ref());
        let radius = (r0 + bias / m) * m.exp() - bias / m;
        assert!(max_row_norm(rk4.last().as_ref()) <= radius);
        let mut x2 = x.clone();
        for kk in 0..D {
            x2[(4, kk)] += 0.5;
        }
        let other =
            integrate_tokens(&b, x2.as_ref(), &flow_opts(Projection::None, 1.0, 0.25)).unwrap();
        for (p, q) in rk4.states.iter().zip(&other.states) {
            for i in 0..4 {
                for kk in 0..D {
                    assert_eq!(p[(i, kk)], q[(i, kk)], "{}: token {i} moved", c.0);
                }
            }
        }
    }
}

/// `flow` on a rotary branch through the library op: a token flow whose report states the space,
/// the Frobenius norm, the causal mask and the rotary form; and what belongs to measures (token
/// weights, the mean-field limit) or is unproven (LayerNorm, an overflowing ball) is refused
/// naming it.
#[test]
fn rotary_flow_op_reports_tokens_and_refuses_what_does_not_apply() {
    let b = AnyBranch::Rotary(std::sync::Arc::new(layer(&CASES[2], 9)));
    let x = tokens(5, 10, 1.0);
    let origin = LayerSource::new("random rotary layer", true, lipattn::Kernel::Dot);
    let run = |req: &FlowRequest, weights: Option<Vec<f64>>| {
        flow::run(
            req,
            FlowInputs {
                map: FlowMap::of(&b),
                x: x.as_ref(),
                weights,
                gronwall_tokens: None,
                source: None,
                origin: &origin,
            },
            &mut lipattn::ops::silent,
        )
    };
    let req = FlowRequest {
        t: 0.5,
        projection: ProjectionName::None,
        gronwall: Some(1e-3),
        ..Default::default()
    };
    let r = run(&req, None).unwrap();
    assert_eq!(r.space, "tokens");
    let op = r.operator.as_ref().unwrap();
    assert!(op.mask.causal() && op.metric == "Frobenius norm" && op.n == Some(5));
    assert_eq!(op.rotary.as_ref().unwrap().window, Some(3));
    assert!(
        op.description.contains("dX/dt = f(X)"),
        "{}",
        op.description
    );
    let g = r.gronwall.as_ref().unwrap();
    assert_eq!(op.radius, Some(g.radius));
    assert!(!g.violated && g.space == "tokens");
    let message = |e: Error| e.to_string();
    let e = message(run(&req, Some(vec![0.2; 5])).map(|_| ()).unwrap_err());
    assert!(
        e.contains("model_type 'test'") && e.contains("weights"),
        "{e}"
    );
    let mf = FlowRequest {
        mean_field: Some(vec![4, 8]),
        ..req.clone()
    };
    let e = message(run(&mf, None).map(|_| ()).unwrap_err());
    assert!(
        e.contains("mean_field") && e.contains("no map of measures"),
        "{e}"
    );
    let ln = FlowRequest {
        projection: ProjectionName::LayerNorm,
        ..req.clone()
    };
    let e = message(run(&ln, None).map(|_| ()).unwrap_err());
    assert!(e.contains("LayerNorm"), "{e}");
    assert!(run(
        &FlowRequest {
            gronwall: None,
            ..ln
        },
        None
    )
    .is_ok());
    let AnyBranch::Rotary(rb) = &b else {
        unreachable!()
    };
    let e = message(token_gronwall_constant(&**rb, 5, Projection::None, 1.0, 1e6).unwrap_err());
    assert!(
        e.contains("overflows") && e.contains("shorten the final time"),
        "{e}"
    );
    let short = tokens(4, 1, 1.0);
    let e = token_gronwall_check(
        &**rb,
        x.as_ref(),
        short.as_ref(),
        &flow_opts(Projection::None, 0.1, 0.1),
    )
    .unwrap_err();
    assert!(e.to_string().contains("second initial tokens"), "{e}");
}
