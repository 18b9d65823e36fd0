//! The streaming linearisation against the dense one: the same forward output, JVP, VJP and
//! Lanczos sigma to rounding, on tile sizes that do not divide n, exceed it, or are 1; and a
//! long sequence that the dense linearisation could not hold in a test's memory.

use lipattn::derivatives::streaming::{memory_estimate, StreamingLinearization, DEFAULT_BLOCK};
use lipattn::derivatives::LinearizedMap;
use lipattn::dynamics::synthetic::random_layer;
use lipattn::estimation::{lanczos, local_norm_of, LanczosOptions, Method};
use lipattn::linalg::SplitMix;
use lipattn::{Kernel, Linearization, Mat};

fn rel(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    (a - b).norm_l2() / b.norm_l2()
}

fn frob_dot(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    let mut s = 0.0;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            s += a[(i, j)] * b[(i, j)];
        }
    }
    s
}

/// Every combination of kernel, bias, mask, head count and tile shape (n a multiple of the
/// block or not, n below the block, block 1), plus non-uniform context weights and another
/// score scale: the three maps agree with the dense linearisation to 1e-12 relative. n = 600
/// spans several of the dense VJP's query blocks and key chunks, the last ones partial (and,
/// causal, blocks that see one, two or three chunks).
#[test]
fn streaming_equals_dense() {
    let mut worst = [0.0f64; 3];
    let mut cases = 0;
    for kernel in [Kernel::Dot, Kernel::L2] {
        for bias in [0.0, 0.3] {
            for heads in [1, 3] {
                for causal in [false, true] {
                    for (n, block) in [(37, 8), (5, 16), (19, 1), (48, 16), (30, 128), (600, 64)] {
                        for weighted in [false, true] {
                            let d = 12;
                            let seed = (n * 31 + block * 7 + heads) as u64;
                            let mut layer = random_layer(d, heads, kernel, bias, seed).unwrap();
                            if weighted {
                                layer = layer.with_score_divisor_sq(3).unwrap();
                            }
                            let mut rng = SplitMix::new(seed + 1);
                            let x: Mat<f64> = rng.gauss_mat(n, d);
                            let t: Mat<f64> = rng.gauss_mat(n, d);
                            let y: Mat<f64> = rng.gauss_mat(n, layer.d_out());
                            let w: Vec<f64> = (0..n).map(|_| 0.2 + rng.uniform()).collect();
                            let total: f64 = w.iter().sum();
                            let w: Vec<f64> = w.iter().map(|v| v / total).collect();
                            let weights = weighted.then_some(w.as_slice());
                            let dense =
                                Linearization::new(&layer, x.as_ref(), weights, causal).unwrap();
                            let stream = StreamingLinearization::new(
                                &layer,
                                x.as_ref(),
                                weights,
                                causal,
                                block,
                            )
                            .unwrap();
                            let errs = [
                                rel(&stream.output().to_owned(), &dense.output().to_owned()),
                                rel(
                                    &stream.jvp(t.as_ref()).unwrap(),
                                    &dense.jvp(t.as_ref()).unwrap(),
                                ),
                                rel(
                                    &stream.vjp(y.as_ref()).unwrap(),
                                    &dense.vjp(y.as_ref()).unwrap(),
                                ),
                            ];
                            for (k, e) in errs.iter().enumerate() {
                                assert!(
                                    *e < 1e-12,
                                    "{kernel:?} bias {bias} heads {heads} causal {causal} n {n} \
                                     block {block} weighted {weighted}: {} differs by {e:e}",
                                    ["output", "JVP", "VJP"][k]
                                );
                                worst[k] = worst[k].max(*e);
                            }
                            cases += 1;
                        }
                    }
                }
            }
        }
    }
    eprintln!(
        "{cases} cases; max relative difference: output {:.2e}, JVP {:.2e}, VJP {:.2e}",
        worst[0], worst[1], worst[2]
    );
}

/// The fused J^T J step and the image Lanczos keeps agree with the dense map's, and Lanczos
/// (and `local_norm_of`) run on the streaming map unchanged, giving the same sigma.
#[test]
fn lanczos_on_streaming_equals_dense() {
    let mut worst: f64 = 0.0;
    for (kernel, causal, heads) in [
        (Kernel::Dot, false, 2),
        (Kernel::Dot, true, 3),
        (Kernel::L2, false, 3),
        (Kernel::L2, true, 1),
    ] {
        let (n, d) = (23, 12);
        let layer = random_layer(d, heads, kernel, 0.2, 11).unwrap();
        let x: Mat<f64> = SplitMix::new(5).gauss_mat(n, d);
        let dense = Linearization::new(&layer, x.as_ref(), None, causal).unwrap();
        let stream = StreamingLinearization::new(&layer, x.as_ref(), None, causal, 6).unwrap();
        let u: Mat<f64> = SplitMix::new(9).gauss_mat(n, d);
        let (gd, gs) = (dense.normal_data(), stream.normal_data());
        let (id, wd) = dense.normal_step(&gd, u.as_ref()).unwrap();
        let (is, ws) = stream.normal_step(&gs, u.as_ref()).unwrap();
        assert!(rel(&ws, &wd) < 1e-12, "normal step");
        assert!(
            rel(
                &stream.image_output(is.as_ref()),
                &dense.image_output(id.as_ref())
            ) < 1e-12,
            "image"
        );
        let opts = LanczosOptions {
            tol: 1e-12,
            max_iter: 300,
            seed: 4,
        };
        let sd = lanczos(&dense, &opts, None).unwrap().sigma;
        let ss = lanczos(&stream, &opts, None).unwrap().sigma;
        let e = (ss - sd).abs() / sd;
        assert!(e < 1e-10, "{kernel:?} causal {causal}: sigma {ss} vs {sd}");
        worst = worst.max(e);
        let local = local_norm_of(&Method::Lanczos(opts.clone()), || {
            StreamingLinearization::new(&layer, x.as_ref(), None, causal, 6)
        })
        .unwrap();
        assert!((local.top.sigma - sd).abs() / sd < 1e-10);
    }
    eprintln!("max relative difference of Lanczos sigma: {worst:.2e}");
}

/// n = 8192: the dense probabilities alone would take 2 heads x n^2 x 8 B = 1.07 GB (and as much
/// again while formed); the streaming linearisation's estimate is linear in n and small. The
/// output is checked row by row against `gamma` on a few queries (an nq x n computation), and the
/// JVP and VJP against each other (<J t, y> = <t, J^T y>).
#[test]
fn long_sequence_in_linear_memory() {
    let (n, d, heads) = (8192, 32, 2);
    let layer = random_layer(d, heads, Kernel::Dot, 0.1, 3).unwrap();
    let need = memory_estimate(&layer, n, DEFAULT_BLOCK).unwrap();
    let dense_scores = (heads * n * n * 8) as u64;
    assert!(
        need * 20 < dense_scores,
        "estimate {need} B against {dense_scores} B of scores"
    );
    let grow = memory_estimate(&layer, 2 * n, DEFAULT_BLOCK).unwrap();
    assert!(grow < 2 * need, "the estimate grows linearly in n");
    let mut rng = SplitMix::new(8);
    let x: Mat<f64> = rng.gauss_mat(n, d);
    let start = std::time::Instant::now();
    let stream =
        StreamingLinearization::new(&layer, x.as_ref(), None, false, DEFAULT_BLOCK).unwrap();
    let rows = [0, 1, 4095, n - 1];
    let queries = Mat::from_fn(rows.len(), d, |r, k| x[(rows[r], k)]);
    let want = layer
        .gamma(queries.as_ref(), x.as_ref(), None, false)
        .unwrap();
    let got = Mat::from_fn(rows.len(), layer.d_out(), |r, k| {
        stream.output()[(rows[r], k)]
    });
    assert!(rel(&got, &want) < 1e-12, "output rows");
    let t: Mat<f64> = rng.gauss_mat(n, d);
    let y: Mat<f64> = rng.gauss_mat(n, layer.d_out());
    let jt = stream.jvp(t.as_ref()).unwrap();
    let jty = stream.vjp(y.as_ref()).unwrap();
    let (a, b) = (frob_dot(&jt, &y), frob_dot(&t, &jty));
    assert!((a - b).abs() <= 1e-10 * a.abs().max(b.abs()), "{a} vs {b}");
    eprintln!(
        "n = {n}: estimate {need} B, linearise + JVP + VJP {:.2} s",
        start.elapsed().as_secs_f64()
    );
}

/// Timing at MiniLM's shape (d = 384, 12 heads), n = 2048: one JVP + VJP, dense against
/// streaming. Not a check; run with `--ignored --nocapture`.
#[test]
#[ignore]
fn timing_minilm_shape() {
    let (n, d, heads) = (2048, 384, 12);
    let layer = random_layer(d, heads, Kernel::Dot, 0.1, 1).unwrap();
    let mut rng = SplitMix::new(2);
    let x: Mat<f64> = rng.gauss_mat(n, d);
    let t: Mat<f64> = rng.gauss_mat(n, d);
    let y: Mat<f64> = rng.gauss_mat(n, d);
    let time = |f: &dyn Fn()| {
        f();
        let reps = 3;
        let s = std::time::Instant::now();
        for _ in 0..reps {
            f();
        }
        s.elapsed().as_secs_f64() / reps as f64
    };
    let s = std::time::Instant::now();
    let dense = Linearization::new(&layer, x.as_ref(), None, false).unwrap();
    let dense_lin = s.elapsed().as_secs_f64();
    let dense_step = time(&|| {
        dense.jvp(t.as_ref()).unwrap();
        dense.vjp(y.as_ref()).unwrap();
    });
    drop(dense);
    for block in [64, 128, 256] {
        let s = std::time::Instant::now();
        let stream = StreamingLinearization::new(&layer, x.as_ref(), None, false, block).unwrap();
        let stream_lin = s.elapsed().as_secs_f64();
        let stream_step = time(&|| {
            stream.jvp(t.as_ref()).unwrap();
            stream.vjp(y.as_ref()).unwrap();
        });
        eprintln!(
            "n = {n}, d = {d}, {heads} heads, {} threads: linearise dense {dense_lin:.3} s, \
             streaming (block {block}) {stream_lin:.3} s; JVP+VJP dense {dense_step:.3} s, \
             streaming {stream_step:.3} s",
            rayon::current_num_threads()
        );
    }
}

/// A block of 0 and tangents of the wrong shape are errors, not panics; and the generic code
/// runs in f32, agreeing with the dense f32 linearisation to f32 rounding.
#[test]
fn bad_inputs_and_f32() {
    let layer = random_layer(8, 2, Kernel::Dot, 0.1, 2).unwrap();
    let x: Mat<f64> = SplitMix::new(1).gauss_mat(10, 8);
    assert!(StreamingLinearization::new(&layer, x.as_ref(), None, false, 0).is_err());
    let lin = StreamingLinearization::new(&layer, x.as_ref(), None, false, 4).unwrap();
    assert!(lin.jvp(Mat::<f64>::zeros(9, 8).as_ref()).is_err());
    assert!(lin.vjp(Mat::<f64>::zeros(10, 7).as_ref()).is_err());
    for kernel in [Kernel::Dot, Kernel::L2] {
        let layer = random_layer(12, 3, kernel, 0.2, 6).unwrap().cast::<f32>();
        let mut rng = SplitMix::new(3);
        let x: Mat<f32> = rng.gauss_mat(21, 12);
        let t: Mat<f32> = rng.gauss_mat(21, 12);
        let dense = Linearization::new(&layer, x.as_ref(), None, true).unwrap();
        let stream = StreamingLinearization::new(&layer, x.as_ref(), None, true, 5).unwrap();
        let (a, b) = (
            stream.jvp(t.as_ref()).unwrap(),
            dense.jvp(t.as_ref()).unwrap(),
        );
        let e = (&a - &b).norm_l2() / b.norm_l2();
        assert!(e < 1e-5, "{kernel:?}: f32 JVP differs by {e:e}");
        let (a, b) = (
            stream.vjp(t.as_ref()).unwrap(),
            dense.vjp(t.as_ref()).unwrap(),
        );
        let e = (&a - &b).norm_l2() / b.norm_l2();
        assert!(e < 1e-5, "{kernel:?}: f32 VJP differs by {e:e}");
    }
}
