//! Soundness battery for Lemma S on rotary attention (docs/bounds.md#lemma-s-rotary): the slope
//! H that `rotary_ball_slope` certifies must bound the second derivative of the layer measured by
//! central differences of dense Jacobians, at points of the ball and in random, top-singular,
//! pairwise and adversarially refined directions; on random rotary layers with grouped and
//! multi-query heads, biases, sliding windows, partial rotation, every rope scaling (YaRN's
//! attention factor included), token scales from flat to one-hot softmax and centres that the
//! rotary ascent drives to softmax transitions. Query/key norms and soft-capping are refused.

use lipattn::attention::{RopeScaling, RotaryAttention, RotaryLinearization};
use lipattn::bounds::ball::{rotary_ball_slope, BallKind};
use lipattn::derivatives::dense::dense_jacobian;
use lipattn::estimation::{lanczos, rotary_ascent, AscentOptions, LanczosOptions, SplitMix};
use lipattn::Mat;

mod common;
use common::rotary::{build, gauss, RotarySpec};

const D: usize = 6;

fn scaling(k: u64) -> RopeScaling {
    match k % 3 {
        0 => RopeScaling::Default,
        1 => RopeScaling::Linear { factor: 2.5 },
        _ => RopeScaling::Yarn {
            factor: 40.0,
            original_max_position_embeddings: 12,
            beta_fast: 16.0,
            beta_slow: 2.0,
            mscale: None,
            mscale_all_dim: None,
            attention_factor: None,
            truncate: false,
        },
    }
}

fn layer(case: u64) -> RotaryAttention {
    let (heads, kv_heads) = [(2, 2), (4, 2), (2, 1)][(case % 3) as usize];
    let spec = RotarySpec {
        heads,
        kv_heads,
        head_dim: 4,
        rotary_dim: if case % 4 == 3 { 2 } else { 4 },
        d: D,
        d_out: D,
        qk_scale: 0.6,
        v_scale: 0.5,
        o_scale: 0.5,
        bias: [0.0, 0.3][(case / 3 % 2) as usize],
        qk_norm: None,
        softcap: None,
        window: [None, Some(2), Some(3)][(case / 2 % 3) as usize],
        theta: 100.0,
        max_position_embeddings: 32,
        scaling: scaling(case / 5),
        score_divisor_sq: 4,
    };
    build(&spec, 500 + case)
}

fn jac(layer: &RotaryAttention, y: &Mat<f64>) -> Mat<f64> {
    let lin = RotaryLinearization::new(layer, y.as_ref()).expect("linearize");
    dense_jacobian(&lin).expect("dense")
}

fn spectral(m: &Mat<f64>) -> f64 {
    m.singular_values()
        .expect("svd")
        .into_iter()
        .fold(0.0f64, f64::max)
}

fn in_ball(rng: &mut SplitMix, x: &Mat<f64>, kind: BallKind, eps: f64) -> Mat<f64> {
    let dir = gauss(rng, x.nrows(), x.ncols(), 1.0);
    let mut y = x + &dir * 1e3;
    kind.project(&mut y, x.as_ref(), eps);
    let t = rng.uniform();
    Mat::from_fn(x.nrows(), x.ncols(), |i, k| {
        x[(i, k)] + (y[(i, k)] - x[(i, k)]) * t
    })
}

#[test]
fn rotary_slope_bounds_measured_second_derivatives() {
    let (mut worst, mut count) = (0.0f64, 0);
    for case in 0..30u64 {
        let layer = layer(case);
        let n = 4 + (case % 3) as usize;
        let scale = [0.3, 1.0, 3.0, 8.0][(case / 3 % 4) as usize];
        let mut rng = SplitMix::new(900 + case);
        let x = if case % 5 == 4 {
            // A centre where the rotary ascent drove some query to a softmax transition.
            let opts = AscentOptions {
                radius: scale,
                random_starts: 1,
                steps: 10,
                ..AscentOptions::default()
            };
            rotary_ascent(&layer, n, &opts).expect("ascent").x
        } else {
            gauss(&mut rng, n, D, scale)
        };
        let eps = [1e-3, 0.05, 0.3, 1.0][(case % 4) as usize];
        let kind = if case % 6 == 0 {
            BallKind::Tokens
        } else {
            BallKind::Frobenius
        };
        let slope = rotary_ball_slope(&layer, x.as_ref(), eps)
            .expect("slope")
            .value;
        assert!(slope.is_finite() && slope > 0.0, "case {case}");
        for _ in 0..3 {
            let y = in_ball(&mut rng, &x, kind, eps);
            let y2 = in_ball(&mut rng, &x, kind, eps);
            let lin = RotaryLinearization::new(&layer, y.as_ref()).expect("lin");
            let top = lanczos(&lin, &LanczosOptions::default(), None).expect("lanczos");
            let mut dirs = vec![top.vector.clone(), gauss(&mut rng, n, D, 1.0), &y2 - &y];
            for w in dirs.iter_mut() {
                let nrm = w.norm_l2();
                *w = &*w * (1.0 / nrm);
            }
            let h = 1e-5 * (1.0 + scale);
            let second = |w: &Mat<f64>| {
                (jac(&layer, &(&y + w * h)) - jac(&layer, &(&y - w * h))) * (0.5 / h)
            };
            // D^2 f[W, U] is symmetric: the top right singular vector of U -> D^2 f[W, U] is the
            // next, worse W.
            let mut w_adv = top.vector.clone();
            for _ in 0..3 {
                let svd = second(&w_adv).thin_svd().expect("svd");
                let u = svd.V().col(0);
                w_adv = Mat::from_fn(n, D, |i, k| u[i * D + k]);
                dirs.push(w_adv.clone());
            }
            for w in &dirs {
                let measured = spectral(&second(w));
                assert!(
                    measured <= slope * (1.0 + 1e-6),
                    "case {case}: second derivative {measured} above the bound {slope}"
                );
                worst = worst.max(measured / slope);
                count += 1;
            }
            let gap = spectral(&(jac(&layer, &y) - jac(&layer, &y2)));
            assert!(
                gap <= slope * (&y - &y2).norm_l2() * (1.0 + 1e-9),
                "case {case}"
            );
        }
    }
    assert!(count >= 500);
    println!("largest measured/bound over {count} directions: {worst}");
    assert!(worst > 0.0);
}

#[test]
fn qk_norm_and_softcap_are_refused_naming_them() {
    let x = Mat::<f64>::from_fn(3, D, |i, k| (i + 2 * k) as f64 * 0.1);
    let mut l = layer(1);
    l.softcap = Some(30.0);
    let e = rotary_ball_slope(&l, x.as_ref(), 0.1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("attn_logit_softcapping"), "{e}");
    let spec = RotarySpec {
        heads: 2,
        kv_heads: 2,
        head_dim: 4,
        rotary_dim: 4,
        d: D,
        d_out: D,
        qk_scale: 0.6,
        v_scale: 0.5,
        o_scale: 0.5,
        bias: 0.0,
        qk_norm: Some((false, 1e-6, 0.3)),
        softcap: None,
        window: None,
        theta: 100.0,
        max_position_embeddings: 32,
        scaling: RopeScaling::Default,
        score_divisor_sq: 4,
    };
    let e = rotary_ball_slope(&build(&spec, 1), x.as_ref(), 0.1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("q_norm"), "{e}");
    assert!(rotary_ball_slope(&layer(0), x.as_ref(), f64::NAN).is_err());
    assert!(rotary_ball_slope(&layer(0), Mat::<f64>::zeros(3, 5).as_ref(), 0.1).is_err());
}
