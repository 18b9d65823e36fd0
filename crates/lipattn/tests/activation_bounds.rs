//! The activation constants of the composed block bound (docs/bounds.md#block-composition):
//! `derivative` against central differences of `apply`, and the grid check behind
//! `derivative_bound` for the activations without a closed-form maximum.

use lipattn::models::Activation;

const ALL: [Activation; 5] = [
    Activation::GeluErf,
    Activation::GeluTanh,
    Activation::GeluFast,
    Activation::Relu,
    Activation::Silu,
];

#[test]
fn derivative_matches_central_differences() {
    let h = 1e-6;
    for act in ALL {
        for i in -4000..=4000 {
            let z = i as f64 * 1e-3 + 0.5e-3; // never exactly 0 (ReLU's kink)
            let fd = (act.apply(z + h) - act.apply(z - h)) / (2.0 * h);
            let d = act.derivative(z);
            assert!((fd - d).abs() < 1e-7, "{act:?} at {z}: {d} vs {fd}");
        }
    }
}

#[test]
fn derivative_bound_holds_between_grid_points() {
    // Between grid points act' moves by at most h/2 sup|act''|; sup|act''| <= M2 = 2 is checked
    // on the grid by central differences with a margin of more than 2x (all are below 1; the largest, 0.798, is 2 phi(0)).
    let (h, m2) = (1e-5, 2.0);
    for act in ALL {
        let (mut top, mut second) = (0.0f64, 0.0f64);
        let steps = (80.0 / h) as i64;
        for i in 0..=steps {
            let z = -40.0 + i as f64 * h;
            top = top.max(act.derivative(z).abs());
            if act != Activation::Relu {
                let dd = (act.derivative(z + 1e-5) - act.derivative(z - 1e-5)) / 2e-5;
                second = second.max(dd.abs());
            }
        }
        assert!(second < 1.0, "{act:?}: |act''| reaches {second}");
        // The ball certificates' c2 (Lemma N): between grid points act'' moves by at most
        // h/2 sup|act'''| <= h (|act'''| < 2 for these activations), and the central differences
        // of act' are within 1e-9 of act'' here.
        if let Some(c2) = lipattn::bounds::piece_ball::second_derivative_bound(act) {
            assert!(
                second + h + 1e-9 <= c2,
                "{act:?}: grid max |act''| {second} vs c2 {c2}"
            );
        } else {
            assert_eq!(act, Activation::Relu);
        }
        let bound = act.derivative_bound();
        // ReLU's derivative is exactly 0 or 1, its bound exactly 1.
        let margin = if act == Activation::Relu { 0.0 } else { h * m2 };
        assert!(
            top + margin <= bound,
            "{act:?}: grid max {top} + {margin} > {bound}"
        );
        // The gain bound: |act(z)| <= c_0 |z|.
        for i in 1..=4000 {
            let z = i as f64 * 1e-2;
            for z in [z, -z] {
                assert!(act.apply(z).abs() <= act.gain_bound() * z.abs() * (1.0 + 1e-15));
            }
        }
        println!("{act:?}: grid max |act'| {top:.6}, |act''| {second:.4}, bound {bound}");
    }
}
