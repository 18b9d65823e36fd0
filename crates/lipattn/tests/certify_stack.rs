//! Lemma C end to end on MiniLM (blocks and the whole model from the input embeddings, pooled
//! and not): at the centre and at points of the ball (random, and pushed to the sphere along the
//! top singular vector, where ||J|| and the output move most) the local constant by Lanczos never
//! exceeds the certificate, ||f(Y) - f(X)||_F never exceeds the output-change bound, and the
//! certificate tends to Lemma P's bound at the centre as the ball shrinks.

mod common;

use faer::Mat;
use lipattn::bounds::ball::BallKind;
use lipattn::estimation::{lanczos, LanczosOptions};
use lipattn::linalg::{frobenius, SplitMix};
use lipattn::models::{Model, Pool, Scope};
use lipattn::ops::stack_ball::StackCentre;

fn sigma(w: &lipattn::models::StackWeights, y: &Mat<f64>) -> (f64, Mat<f64>, Mat<f64>) {
    let (out, lin) = w.linearize(y.as_ref()).expect("linearize");
    let opts = LanczosOptions {
        tol: 1e-10,
        max_iter: 300,
        seed: 3,
    };
    let top = lanczos(&lin, &opts, None).expect("lanczos");
    (top.sigma, top.vector, out)
}

#[test]
fn chain_certificate_holds_on_minilm() {
    let Some(dir) = common::minilm("chain_certificate_holds_on_minilm") else {
        return;
    };
    let model = Model::open(&dir).expect("model");
    let ids: Vec<u32> = vec![101, 2023, 2003, 1037, 3231, 1997, 3086, 1012, 102];
    let mut rng = SplitMix::new(7);
    for (scope, layer, pool, eps_list) in [
        (Scope::Block, Some(0), Pool::None, [1e-6, 1e-5, 1e-4]),
        (Scope::Block, Some(4), Pool::None, [1e-6, 1e-5, 1e-4]),
        (
            Scope::SublayerResidualNorm,
            Some(2),
            Pool::None,
            [1e-5, 1e-4, 1e-3],
        ),
        // Up to 1e-8, where the runs across blocks (ops::stack_ball::intervals) decide.
        (Scope::Model, None, Pool::None, [1e-10, 1e-9, 1e-8]),
        (
            Scope::Model,
            None,
            Pool::MeanNormalised,
            [1e-10, 1e-9, 1e-8],
        ),
    ] {
        let w = model.stack(scope, layer, pool).expect("stack");
        let x = model.stack_input(&w, &ids).expect("input");
        let centre = StackCentre::new(
            &w,
            x.as_ref(),
            lipattn::derivatives::AttentionMemory::Auto,
            1e-6,
            100,
            30,
            1,
        )
        .expect("centre");
        let (s0, v0, fx) = sigma(&w, &x);
        assert!(
            s0 <= centre.whole.value,
            "{scope:?}: centre {s0} > {}",
            centre.whole.value
        );
        let mut previous = 0.0f64;
        for eps in eps_list {
            for ball in [BallKind::Frobenius, BallKind::Tokens] {
                let (cert, change) = centre.at(ball, eps).expect("certificate");
                assert!(cert.sup >= centre.whole.value * (1.0 - 1e-12));
                let mut points: Vec<Mat<f64>> = Vec::new();
                for sign in [1.0, -1.0] {
                    let mut y = &x + &v0 * (sign * 2.0 * eps);
                    ball.project(&mut y, x.as_ref(), eps);
                    points.push(y);
                }
                for _ in 0..2 {
                    let dir: Mat<f64> = rng.gauss_mat(x.nrows(), x.ncols());
                    let mut y = &x + &dir * (10.0 * eps);
                    ball.project(&mut y, x.as_ref(), eps);
                    points.push(y);
                }
                for y in &points {
                    let (s, _, fy) = sigma(&w, y);
                    assert!(
                        s <= cert.sup,
                        "{scope:?} {ball:?} eps {eps}: {s} > {}",
                        cert.sup
                    );
                    let moved = frobenius((&fy - &fx).as_ref());
                    assert!(
                        moved <= change,
                        "{scope:?} {ball:?} eps {eps}: {moved} > {change}"
                    );
                }
            }
            let (cert, _) = centre.at(BallKind::Frobenius, eps).expect("certificate");
            // Larger balls, larger certificates (the bounds grow with the radii).
            assert!(
                cert.sup >= previous * (1.0 - 1e-12),
                "{scope:?}: {} < {previous}",
                cert.sup
            );
            previous = cert.sup;
        }
        // The smallest ball: within 2% of Lemma P's bound at the centre.
        let (small, _) = centre
            .at(BallKind::Frobenius, eps_list[0] * 1e-3)
            .expect("certificate");
        assert!(
            small.sup <= centre.whole.value * 1.02,
            "{scope:?}: {} vs {}",
            small.sup,
            centre.whole.value
        );
    }
}
