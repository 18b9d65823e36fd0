//! The streaming rotary linearisation (docs/streaming.md#rotary-sublayers) against the dense one
//! (`RotaryLinearization`): output, JVP, VJP, the fused normal step and the Lanczos sigma, in f64
//! to 1e-12 and in f32 to 1e-5, over grouped heads, windows smaller and larger than the block,
//! softcap, qk-norm (both gains) and blocks that do not divide n. The sum of the heads' own
//! streaming outputs is checked too, which reads the kv-head mapping independently of the dense
//! code. One binary: the budget test sets the process-wide memory budget.

use lipattn::attention::StreamingRotaryLinearization as S;
use lipattn::attention::{RopeScaling, RotaryAttention, RotaryLinearization};
use lipattn::derivatives::LinearizedMap;
use lipattn::estimation::{local_norm_of, LanczosOptions, Method};
use lipattn::linalg::SplitMix;
use lipattn::scalar::Scalar;
use lipattn::Mat;

mod common;
use common::rotary::RotarySpec;

#[derive(Clone, Debug)]
struct Case {
    heads: usize,
    kv_heads: usize,
    window: Option<usize>,
    softcap: Option<f64>,
    /// None, Some(false) (gain w), Some(true) (gain 1 + w).
    qk_norm: Option<bool>,
    n: usize,
    block: usize,
}

fn build(c: &Case, seed: u64) -> RotaryAttention {
    let (head_dim, d) = (8, 12);
    common::rotary::build(
        &RotarySpec {
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim,
            rotary_dim: 6,
            d,
            d_out: 7,
            // Large enough score weights that the probabilities are far from uniform, so that a
            // wrong mask or head mapping shows.
            qk_scale: 2.0 / (d as f64).sqrt(),
            v_scale: 1.0 / (d as f64).sqrt(),
            o_scale: 1.0 / ((c.heads * head_dim) as f64).sqrt(),
            bias: 0.3,
            qk_norm: c.qk_norm.map(|unit_offset| (unit_offset, 1e-6, 0.5)),
            softcap: c.softcap,
            window: c.window,
            theta: 10000.0,
            max_position_embeddings: 64,
            scaling: RopeScaling::Default,
            score_divisor_sq: head_dim,
        },
        seed,
    )
}

fn cases() -> Vec<Case> {
    let c = |heads, kv_heads, window, softcap, qk_norm, n, block| Case {
        heads,
        kv_heads,
        window,
        softcap,
        qk_norm,
        n,
        block,
    };
    vec![
        // n = 1, n = 2, n below, equal to and above the block.
        c(2, 2, None, None, None, 1, 4),
        c(2, 1, None, Some(5.0), Some(true), 2, 4),
        c(4, 2, None, None, None, 3, 4),
        c(4, 2, None, None, None, 8, 4),
        // Blocks that do not divide n, grouped heads, every option.
        c(4, 2, None, None, None, 23, 5),
        c(4, 1, Some(3), None, None, 23, 5),
        c(4, 2, Some(9), Some(2.0), Some(false), 37, 4),
        c(6, 3, Some(2), Some(1.5), Some(true), 30, 7),
        c(3, 3, Some(40), Some(3.0), Some(true), 31, 6),
        c(2, 2, Some(1), None, Some(false), 11, 3),
        c(4, 4, None, Some(1.0), None, 50, 16),
        c(8, 2, Some(13), None, Some(true), 64, 10),
    ]
}

fn rel<T: Scalar>(a: &Mat<T>, b: &Mat<T>) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            let (x, y) = (a[(i, j)].f64(), b[(i, j)].f64());
            num += (x - y) * (x - y);
            den += y * y;
        }
    }
    num.sqrt() / den.sqrt().max(f64::MIN_POSITIVE)
}

fn cast<T: Scalar>(m: &Mat<f64>) -> Mat<T> {
    Mat::from_fn(m.nrows(), m.ncols(), |i, j| T::of(m[(i, j)]))
}

/// The largest relative difference of output, JVP, VJP and both halves of the normal step.
fn worst_difference<T: Scalar>(layer: &RotaryAttention<T>, c: &Case, seed: u64) -> f64 {
    let mut rng = SplitMix::new(seed);
    let x: Mat<T> = cast(&rng.gauss_mat::<f64>(c.n, layer.d_in()));
    let t: Mat<T> = cast(&rng.gauss_mat::<f64>(c.n, layer.d_in()));
    let y: Mat<T> = cast(&rng.gauss_mat::<f64>(c.n, layer.d_out()));
    let dense = RotaryLinearization::new(layer, x.as_ref()).expect("dense");
    let stream = S::new(layer, x.as_ref(), c.block).expect("streaming");
    let gram_d = dense.normal_data();
    let gram_s = stream.normal_data();
    let (img_d, w_d) = dense.normal_step(&gram_d, t.as_ref()).unwrap();
    let (img_s, w_s) = stream.normal_step(&gram_s, t.as_ref()).unwrap();
    [
        rel(&stream.output(), &dense.output()),
        rel(
            &stream.jvp(t.as_ref()).unwrap(),
            &dense.jvp(t.as_ref()).unwrap(),
        ),
        rel(
            &stream.vjp(y.as_ref()).unwrap(),
            &dense.vjp(y.as_ref()).unwrap(),
        ),
        rel(&img_s, &img_d),
        rel(&w_s, &w_d),
        rel(
            &stream.image_output(img_s.as_ref()),
            &dense.image_output(img_d.as_ref()),
        ),
    ]
    .into_iter()
    .fold(0.0, f64::max)
}

#[test]
fn streaming_equals_dense_in_f64_and_f32() {
    for (i, c) in cases().iter().enumerate() {
        let layer = build(c, 100 + i as u64);
        let e64 = worst_difference(&layer, c, 7 + i as u64);
        assert!(e64 <= 1e-12, "{c:?}: f64 relative difference {e64:e}");
        let e32 = worst_difference(&layer.cast::<f32>(), c, 7 + i as u64);
        assert!(e32 <= 1e-5, "{c:?}: f32 relative difference {e32:e}");
        eprintln!("{c:?}: f64 {e64:.1e}, f32 {e32:.1e}");
    }
}

#[test]
fn lanczos_sigma_and_start_rows_equal_dense() {
    for (i, c) in cases().iter().enumerate().filter(|(_, c)| c.n >= 8) {
        let layer = build(c, 200 + i as u64);
        let x = SplitMix::new(30 + i as u64).gauss_mat::<f64>(c.n, layer.d_in());
        let method = Method::Lanczos(LanczosOptions {
            tol: 1e-13,
            ..Default::default()
        });
        let dense =
            local_norm_of(&method, || RotaryLinearization::new(&layer, x.as_ref())).unwrap();
        let stream = local_norm_of(&method, || S::new(&layer, x.as_ref(), c.block)).unwrap();
        let (a, b) = (dense.top.sigma, stream.top.sigma);
        assert!((a - b).abs() <= 1e-12 * a, "{c:?}: sigma {a} vs {b}");
        eprintln!("{c:?}: sigma {a} vs {b}, {:.1e}", (a - b).abs() / a);
        let d = RotaryLinearization::new(&layer, x.as_ref()).unwrap();
        let s = S::new(&layer, x.as_ref(), c.block).unwrap();
        assert_eq!(d.start_rows(5), s.start_rows(5), "{c:?}");
    }
}

/// Sum over query heads of each head alone (its query rows, its kv head's rows, its columns of
/// W_O; `RotaryAttention::head`) plus b_O is the layer: the grouped mapping h -> h / group read
/// through the public head split, independently of the dense state. Windows and grouping are
/// chosen so that both matter: the windowed output differs from the unwindowed one, and a
/// kv heads differ, so that reading the wrong one would break the sum.
#[test]
fn heads_sum_to_the_layer_and_the_mask_and_mapping_matter() {
    let c = Case {
        heads: 6,
        kv_heads: 2,
        window: Some(4),
        softcap: Some(2.0),
        qk_norm: Some(true),
        n: 29,
        block: 5,
    };
    let layer = build(&c, 11);
    let x = SplitMix::new(12).gauss_mat::<f64>(c.n, layer.d_in());
    let out = |l: &RotaryAttention| S::new(l, x.as_ref(), c.block).unwrap().output();
    let full = out(&layer);
    let mut sum = Mat::from_fn(c.n, layer.d_out(), |_, j| layer.bo[j]);
    for h in 0..layer.heads {
        sum += out(&layer.head(h).unwrap());
    }
    assert!(rel(&sum, &full) <= 1e-13, "{}", rel(&sum, &full));
    let mut unwindowed = layer.clone();
    unwindowed.window = None;
    assert!(
        rel(&out(&unwindowed), &full) > 1e-3,
        "the window must matter"
    );
    // The kv heads differ, so that reading the wrong one (h % kv_heads instead of h / group,
    // say) would break the sum above: swapping kv heads 0 and 1 changes the layer.
    let mut swapped = layer.clone();
    let hd = layer.head_dim;
    for r in 0..hd {
        for k in 0..layer.d_in() {
            swapped.wk[(r, k)] = layer.wk[(hd + r, k)];
            swapped.wk[(hd + r, k)] = layer.wk[(r, k)];
            swapped.wv[(r, k)] = layer.wv[(hd + r, k)];
            swapped.wv[(hd + r, k)] = layer.wv[(r, k)];
        }
        swapped.bk.swap(r, hd + r);
        swapped.bv.swap(r, hd + r);
    }
    assert!(
        rel(&out(&swapped), &full) > 1e-3,
        "the kv heads must matter"
    );
}

/// The memory estimate is linear in n, far below the dense state at large n, and checked before
/// anything is allocated: under a budget that refuses the dense state, the streaming one runs.
#[test]
fn budget_refuses_dense_and_streaming_runs() {
    let c = Case {
        heads: 4,
        kv_heads: 2,
        window: None,
        softcap: Some(3.0),
        qk_norm: Some(false),
        n: 1500,
        block: 128,
    };
    let layer = build(&c, 21);
    let est = |n| lipattn::attention::rotary::streaming_memory_estimate(&layer, n, 128).unwrap();
    // Linear: equal increments beyond the tiles.
    assert_eq!(est(40_000) - est(20_000), est(60_000) - est(40_000));
    let dense_bytes = layer.state_bytes(100_000, true).unwrap();
    assert!(
        est(100_000) * 100 < dense_bytes,
        "{} vs {dense_bytes}",
        est(100_000)
    );
    let x = SplitMix::new(22).gauss_mat::<f64>(c.n, layer.d_in());
    let budget = 16 << 20;
    assert!(layer.state_bytes(c.n, true).unwrap() > budget);
    assert!(est(c.n) < budget);
    lipattn::budget::set_max_memory(Some(budget));
    let dense = RotaryLinearization::new(&layer, x.as_ref());
    let stream = S::new(&layer, x.as_ref(), c.block);
    let huge = S::new(
        &layer,
        SplitMix::new(1)
            .gauss_mat::<f64>(200_000, layer.d_in())
            .as_ref(),
        c.block,
    );
    lipattn::budget::set_max_memory(None);
    assert!(
        matches!(dense, Err(lipattn::Error::Budget { .. })),
        "the dense state must be refused"
    );
    match huge {
        Err(lipattn::Error::Budget { what, .. }) => {
            assert!(what.contains("200000 tokens"), "{what}")
        }
        other => panic!("expected a budget error, got {:?}", other.err()),
    }
    let stream = stream.expect("streaming fits the budget");
    let dense = RotaryLinearization::new(&layer, x.as_ref()).unwrap();
    assert!(rel(&stream.output(), &dense.output()) <= 1e-12);
}

#[test]
fn bad_input_is_an_error() {
    let c = &cases()[4];
    let layer = build(c, 1);
    let x = SplitMix::new(2).gauss_mat::<f64>(c.n, layer.d_in());
    assert!(S::new(&layer, x.as_ref(), 0).is_err(), "block 0");
    let narrow = SplitMix::new(2).gauss_mat::<f64>(c.n, layer.d_in() + 1);
    assert!(S::new(&layer, narrow.as_ref(), 4).is_err(), "width");
    let empty = Mat::<f64>::zeros(0, layer.d_in());
    assert!(S::new(&layer, empty.as_ref(), 4).is_err(), "no tokens");
    let s = S::new(&layer, x.as_ref(), 4).unwrap();
    let wrong = Mat::<f64>::zeros(c.n + 1, layer.d_in());
    assert!(s.jvp(wrong.as_ref()).is_err());
    assert!(s.vjp(wrong.as_ref()).is_err());
    assert!(s.normal_step(&s.normal_data(), wrong.as_ref()).is_err());
    let mut big = x.clone();
    big[(3, 0)] = 1e300;
    assert!(
        S::new(&layer, big.as_ref(), 4).is_err(),
        "overflowing scores"
    );
}
