//! `ops::certify` end to end on random dot-product layers: the certificate on the ball (Lemma P
//! at the centre, Lemma S for the growth) is never below the largest ||J(Y)||_2 the ascent finds
//! in the ball, the output change bound holds at the points found, and bad requests are refused.

use faer::Mat;
use lipattn::attention::Kernel;
use lipattn::bounds::ball::BallKind;
use lipattn::dynamics::synthetic::random_layer;
use lipattn::linalg::SplitMix;
use lipattn::models::{Pool, Scope, SublayerWeights};
use lipattn::operator::LayerSource;
use lipattn::ops::certify::{run, CertifyRequest};
use lipattn::ops::silent;

fn request(eps: f64, ball: BallKind, seed: u64) -> CertifyRequest {
    CertifyRequest {
        epsilon: eps,
        ball,
        seed,
        upper_steps: 60,
        attack_starts: 3,
        attack_steps: 15,
        ..Default::default()
    }
}

#[test]
fn certificate_is_above_what_ascent_finds_in_the_ball() {
    let mut ratios = Vec::new();
    for case in 0..16u64 {
        let causal = case % 2 == 1;
        let layer = random_layer(8, 2, Kernel::Dot, 0.2, 40 + case).expect("layer");
        let weights = SublayerWeights::Plain(Box::new(layer.clone()));
        let source = LayerSource::new("random layer", causal, Kernel::Dot);
        let n = 5 + (case % 3) as usize;
        let scale = [0.5, 2.0, 6.0][(case % 3) as usize];
        let x: Mat<f64> = SplitMix::new(case).gauss_mat::<f64>(n, 8) * scale;
        let eps = [1e-3, 0.03, 0.3, 1.0][(case / 4) as usize];
        let ball = if case % 4 == 3 {
            BallKind::Tokens
        } else {
            BallKind::Frobenius
        };
        let r = run(
            &request(eps, ball, case),
            &weights,
            &source,
            "random",
            0,
            x.as_ref(),
            &mut silent,
        )
        .expect("certificate");
        assert!(r.attained <= r.certified, "case {case}");
        assert!(r.centre_attained <= r.centre.value, "case {case}");
        assert!(r.attained >= r.centre_attained, "case {case}");
        assert_eq!(r.certified_kind, "probabilistic");
        // The output change bound at the point the ascent found.
        let fx = layer.forward(x.as_ref(), None, causal).expect("f(X)");
        let fy = layer
            .forward(r.attained_input.as_ref(), None, causal)
            .expect("f(Y)");
        let moved = (&fy - &fx).norm_l2();
        assert!(
            moved <= r.output_change,
            "case {case}: {moved} > {}",
            r.output_change
        );
        let dist = (&r.attained_input - &x).norm_l2();
        assert!(dist <= r.frobenius_radius * (1.0 + 1e-12), "case {case}");
        ratios.push(r.ratio);
    }
    assert!(ratios.iter().all(|&q| q >= 1.0));
}

#[test]
fn bad_requests_are_refused() {
    let layer = random_layer(4, 1, Kernel::Dot, 0.0, 1).expect("layer");
    let weights = SublayerWeights::Plain(Box::new(layer));
    let source = LayerSource::new("random layer", false, Kernel::Dot);
    let x = Mat::<f64>::from_fn(3, 4, |i, k| (i + k) as f64 * 0.1);
    let go = |req: CertifyRequest| {
        run(
            &req,
            &weights,
            &source,
            "random",
            0,
            x.as_ref(),
            &mut silent,
        )
        .err()
        .map(|e| e.to_string())
    };
    for eps in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(go(request(eps, BallKind::Frobenius, 0)).is_some(), "{eps}");
    }
    for p in [0.0, 1.0, 2.0] {
        let mut r = request(0.1, BallKind::Frobenius, 0);
        r.failure_probability = p;
        assert!(go(r).is_some());
    }
    let mut r = request(0.1, BallKind::Frobenius, 0);
    r.scope = Scope::Block;
    let msg = go(r).expect("refused");
    assert!(msg.contains("scope 'block'"), "{msg}");
    let mut r = request(0.1, BallKind::Frobenius, 0);
    r.pool = Pool::Mean;
    assert!(go(r).is_some());
    let wrong = Mat::<f64>::zeros(3, 5);
    assert!(run(
        &request(0.1, BallKind::Frobenius, 0),
        &weights,
        &source,
        "random",
        0,
        wrong.as_ref(),
        &mut silent
    )
    .is_err());
}
