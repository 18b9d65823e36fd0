//! Local constants of rotary sublayers: the cached linearisation against the from-scratch
//! derivatives of `RotaryAttention`, Lanczos and power iteration against the top singular value
//! of the dense Jacobian, the per-head contribution against the sublayer, and the `local`
//! command's report.

use lipattn::attention::{RopeScaling, RotaryAttention, RotaryLinearization};
use lipattn::derivatives::dense::dense_jacobian;
use lipattn::derivatives::LinearizedMap;
use lipattn::estimation::{lanczos, power_iteration, LanczosOptions, PowerOptions};
use lipattn::linalg::SplitMix;
use lipattn::ops::local::{run_rotary, LocalDtype, LocalMethod, LocalRequest, RotaryInputs};
use lipattn::{Error, LayerSource, Mat};

mod common;
use common::rotary::{gauss, RotarySpec};

/// One layer of the sweep: (heads, kv_heads), head_dim, bias, qk-norm (gain 1 + w when true),
/// softcap, window.
struct Case {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    bias: bool,
    qk_norm: Option<bool>,
    softcap: Option<f64>,
    window: Option<usize>,
    scaling: RopeScaling,
}

fn cases() -> Vec<Case> {
    let c = |heads, kv_heads, head_dim, bias, qk_norm, softcap, window, scaling| Case {
        heads,
        kv_heads,
        head_dim,
        bias,
        qk_norm,
        softcap,
        window,
        scaling,
    };
    vec![
        // Llama: GQA, no extras.
        c(4, 2, 4, false, None, None, None, RopeScaling::Default),
        // Qwen2: biases, multi-query.
        c(
            3,
            1,
            6,
            true,
            None,
            None,
            None,
            RopeScaling::Linear { factor: 2.5 },
        ),
        // Qwen3: qk-norm, window.
        c(
            4,
            4,
            4,
            false,
            Some(false),
            None,
            Some(3),
            RopeScaling::Default,
        ),
        // Gemma 2: softcap, window, (1 + w) norm.
        c(
            2,
            1,
            6,
            true,
            Some(true),
            Some(1.5),
            Some(2),
            RopeScaling::Default,
        ),
        // Mistral: window below n, llama3 frequencies.
        c(
            4,
            2,
            4,
            true,
            None,
            Some(4.0),
            Some(4),
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 4,
            },
        ),
    ]
}

const D: usize = 6;
const D_OUT: usize = 5;

/// Weights large enough that attention is far from uniform.
fn build(c: &Case, seed: u64) -> RotaryAttention {
    common::rotary::build(
        &RotarySpec {
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
            rotary_dim: c.head_dim,
            d: D,
            d_out: D_OUT,
            qk_scale: 0.8,
            v_scale: 0.5,
            o_scale: 0.5,
            bias: if c.bias { 0.4 } else { 0.0 },
            qk_norm: c.qk_norm.map(|unit_offset| (unit_offset, 1e-6, 0.6)),
            softcap: c.softcap,
            window: c.window,
            theta: 100.0,
            max_position_embeddings: 16,
            scaling: c.scaling.clone(),
            score_divisor_sq: c.head_dim,
        },
        seed,
    )
}

fn rel_err(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    (a - b).norm_l2() / b.norm_l2()
}

/// Every case and each of its query heads' contributions, with a name for the messages.
fn layers() -> Vec<(String, RotaryAttention)> {
    let mut out = vec![];
    for (i, c) in cases().iter().enumerate() {
        let layer = build(c, 11 + i as u64);
        for h in [0, c.heads - 1] {
            out.push((format!("case {i}, head {h}"), layer.head(h).unwrap()));
        }
        out.push((format!("case {i}"), layer));
    }
    out
}

#[test]
fn cached_derivatives_equal_the_from_scratch_ones() {
    let n = 7;
    for (name, layer) in layers() {
        let mut r = SplitMix::new(3);
        let x = gauss(&mut r, n, D, 1.0);
        let lin = RotaryLinearization::new(&layer, x.as_ref()).unwrap();
        assert_eq!(lin.output(), layer.forward(x.as_ref()).unwrap(), "{name}");
        for _ in 0..3 {
            let (dx, dy) = (gauss(&mut r, n, D, 1.0), gauss(&mut r, n, D_OUT, 1.0));
            let (_, want) = layer.jvp(x.as_ref(), dx.as_ref()).unwrap();
            assert!(
                rel_err(&lin.jvp(dx.as_ref()).unwrap(), &want) <= 1e-12,
                "{name}"
            );
            let want = layer.vjp(x.as_ref(), dy.as_ref()).unwrap();
            assert!(
                rel_err(&lin.vjp(dy.as_ref()).unwrap(), &want) <= 1e-12,
                "{name}"
            );
        }
        // The fused normal step is J^T J u, its image gives J u.
        let u = gauss(&mut r, n, D, 1.0);
        let normal = lin.normal_data();
        let (image, w) = lin.normal_step(&normal, u.as_ref()).unwrap();
        let ju = lin.jvp(u.as_ref()).unwrap();
        assert!(
            rel_err(&lin.image_output(image.as_ref()), &ju) <= 1e-12,
            "{name}"
        );
        assert!(
            rel_err(&w, &lin.vjp(ju.as_ref()).unwrap()) <= 1e-12,
            "{name}"
        );
    }
}

#[test]
fn lanczos_finds_the_top_singular_value_of_the_dense_jacobian() {
    for n in [1, 6] {
        for (name, layer) in layers() {
            let x = gauss(&mut SplitMix::new(5 + n as u64), n, D, 1.0);
            let lin = RotaryLinearization::new(&layer, x.as_ref()).unwrap();
            let exact = dense_jacobian(&lin).unwrap().singular_values().unwrap()[0];
            let opts = LanczosOptions {
                tol: 1e-12,
                max_iter: n * D,
                seed: 1,
            };
            let top = lanczos(&lin, &opts, None).unwrap();
            let rel = (top.sigma - exact).abs() / exact;
            assert!(rel <= 1e-9, "{name}, n = {n}: {} vs {exact}", top.sigma);
            // Attained by the returned vector, recomputed from scratch.
            let (_, jv) = layer.jvp(x.as_ref(), top.vector.as_ref()).unwrap();
            assert!((jv.norm_l2() - top.sigma).abs() <= 1e-12 * exact, "{name}");
            let power = PowerOptions {
                abs_tol: 1e-14,
                max_iter: 2000,
                seed: 2,
            };
            let p = power_iteration(&lin, &power, None).unwrap();
            assert!(p.sigma <= exact * (1.0 + 1e-12), "{name}");
        }
    }
}

/// The query heads' contributions and the output bias add up to the sublayer.
#[test]
fn head_contributions_sum_to_the_sublayer() {
    for (i, c) in cases().iter().enumerate() {
        let layer = build(c, 11 + i as u64);
        let x = gauss(&mut SplitMix::new(9), 8, D, 1.0);
        let mut sum = Mat::from_fn(8, D_OUT, |_, j| layer.bo[j]);
        for h in 0..c.heads {
            sum += layer.head(h).unwrap().forward(x.as_ref()).unwrap();
        }
        assert!(
            rel_err(&sum, &layer.forward(x.as_ref()).unwrap()) <= 1e-13,
            "case {i}"
        );
        let e = layer.head(c.heads).unwrap_err();
        assert!(
            matches!(e, Error::Invalid(_)) && e.to_string().contains("head"),
            "{e}"
        );
    }
}

#[test]
fn the_report_names_the_rotary_form() {
    let c = &cases()[3];
    let layer = build(c, 14);
    let x = gauss(&mut SplitMix::new(2), 6, D, 1.0);
    let source = LayerSource::new(
        "Gemma 2 layer 0 self-attention of test",
        true,
        lipattn::Kernel::Dot,
    );
    for head in [None, Some(1)] {
        let req = LocalRequest {
            head,
            tol: 1e-10,
            ..Default::default()
        };
        let inputs = RotaryInputs {
            layer: &layer,
            x: x.as_ref(),
            source: &source,
            family: "gemma2",
        };
        let r = run_rotary(&req, inputs, &mut lipattn::ops::silent).unwrap();
        let target = match head {
            Some(h) => layer.head(h).unwrap(),
            None => layer.clone(),
        };
        let lin = RotaryLinearization::new(&target, x.as_ref()).unwrap();
        let exact = dense_jacobian(&lin).unwrap().singular_values().unwrap()[0];
        assert!((r.sigma - exact).abs() <= 1e-9 * exact, "{head:?}");
        let json = lipattn::ops::to_json(&r).unwrap();
        let rot = &json["operator"]["rotary"];
        assert_eq!(rot["family"], "gemma2");
        assert_eq!(rot["rope_type"], "default");
        assert_eq!(rot["rope_theta"], 100.0);
        assert_eq!(rot["heads"], 2);
        assert_eq!(rot["kv_heads"], 1);
        assert_eq!(rot["window"], 2);
        assert_eq!(rot["qk_norm"], true);
        assert_eq!(rot["softcap"], 1.5);
        assert_eq!(rot["positions"], "0..n-1");
        assert_eq!(json["kind"], "attained_lower_bound");
        assert_eq!(json["causal"], true);
        assert_eq!(json["head"], serde_json::json!(head));
        let desc = json["operator"]["description"].as_str().unwrap();
        for word in [
            "gemma2 rotary attention",
            "sliding window 2",
            "qk-norm",
            "softcap 1.5",
        ] {
            assert!(desc.contains(word), "{desc}");
        }
    }
    // Bad tokens are errors naming them, not panics.
    let bad = gauss(&mut SplitMix::new(2), 6, D + 1, 1.0);
    let r = run_rotary(
        &LocalRequest::default(),
        RotaryInputs {
            layer: &layer,
            x: bad.as_ref(),
            source: &source,
            family: "gemma2",
        },
        &mut lipattn::ops::silent,
    );
    assert!(r.is_err());
}

fn to_f32(m: &Mat<f64>) -> Mat<f32> {
    Mat::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)] as f32)
}

fn to_f64(m: &Mat<f32>) -> Mat<f64> {
    Mat::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)] as f64)
}

fn dot(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    (0..a.ncols())
        .flat_map(|j| (0..a.nrows()).map(move |i| (i, j)))
        .map(|(i, j)| a[(i, j)] * b[(i, j)])
        .sum()
}

/// The f32 layer (weights rounded once) runs the same map: its forward pass, JVP, VJP and fused
/// normal step agree with the f64 ones to f32 accuracy (the relative errors seen are 1e-7 to
/// 1e-6; the bound leaves room for the softcap's and the qk-norm's conditioning), and its JVP
/// and VJP are adjoint in f32.
#[test]
fn f32_derivatives_agree_with_f64() {
    let n = 9;
    for (name, layer) in layers() {
        let l32: RotaryAttention<f32> = layer.cast();
        let mut r = SplitMix::new(31);
        let x = gauss(&mut r, n, D, 1.0);
        let lin = RotaryLinearization::new(&layer, x.as_ref()).unwrap();
        let lin32 = RotaryLinearization::new(&l32, to_f32(&x).as_ref()).unwrap();
        let tol = 2e-5;
        assert!(
            rel_err(&to_f64(&lin32.output()), &lin.output()) <= tol,
            "{name}"
        );
        let normal = lin.normal_data();
        let normal32 = lin32.normal_data();
        for _ in 0..3 {
            let (u, v) = (gauss(&mut r, n, D, 1.0), gauss(&mut r, n, D_OUT, 1.0));
            let (u32_, v32) = (to_f32(&u), to_f32(&v));
            let ju = to_f64(&lin32.jvp(u32_.as_ref()).unwrap());
            let jtv = to_f64(&lin32.vjp(v32.as_ref()).unwrap());
            assert!(rel_err(&ju, &lin.jvp(u.as_ref()).unwrap()) <= tol, "{name}");
            assert!(
                rel_err(&jtv, &lin.vjp(v.as_ref()).unwrap()) <= tol,
                "{name}"
            );
            // <J u, v> = <u, J^T v>, both sides from f32 products (the inputs are exact in f32).
            let (u, v) = (to_f64(&u32_), to_f64(&v32));
            let (a, b) = (dot(&ju, &v), dot(&u, &jtv));
            let scale = ju.norm_l2() * v.norm_l2();
            assert!((a - b).abs() <= 1e-5 * scale, "{name}: {a} vs {b}");
            let (image, w) = lin32.normal_step(&normal32, u32_.as_ref()).unwrap();
            let (_, w64) = lin.normal_step(&normal, u.as_ref()).unwrap();
            assert!(rel_err(&to_f64(&w), &w64) <= tol, "{name}");
            assert!(
                rel_err(&to_f64(&lin32.image_output(image.as_ref())), &ju) <= tol,
                "{name}"
            );
        }
    }
}

/// `local` with dtype f32: f32 Lanczos, then the vector refined in f64. The reported sigma is
/// within the requested 1e-6 of the dense Jacobian's top singular value (the f64 truth), as is
/// the f64 run's, and the two runs agree; the report says f32. On layers wider than the
/// sweep's, so that Lanczos stops on its rule rather than at the dimension.
#[test]
fn f32_local_is_refined_to_the_f64_value() {
    let source = LayerSource::new("test layer", true, lipattn::Kernel::Dot);
    for (seed, window, softcap) in [(3, None, None), (4, Some(5), Some(3.0))] {
        let layer = common::rotary::build(
            &RotarySpec {
                heads: 4,
                kv_heads: 2,
                head_dim: 8,
                rotary_dim: 8,
                d: 16,
                d_out: 12,
                qk_scale: 0.6,
                v_scale: 0.5,
                o_scale: 0.4,
                bias: 0.1,
                qk_norm: None,
                softcap,
                window,
                theta: 1000.0,
                max_position_embeddings: 64,
                scaling: RopeScaling::Default,
                score_divisor_sq: 8,
            },
            seed,
        );
        let n = 12;
        let x = gauss(&mut SplitMix::new(seed + 40), n, 16, 1.0);
        let lin = RotaryLinearization::new(&layer, x.as_ref()).unwrap();
        let exact = dense_jacobian(&lin).unwrap().singular_values().unwrap()[0];
        let run = |dtype| {
            let req = LocalRequest {
                dtype,
                ..Default::default()
            };
            let inputs = RotaryInputs {
                layer: &layer,
                x: x.as_ref(),
                source: &source,
                family: "llama",
            };
            run_rotary(&req, inputs, &mut lipattn::ops::silent).unwrap()
        };
        let (r32, r64) = (run(LocalDtype::F32), run(LocalDtype::F64));
        assert_eq!((r32.dtype, r64.dtype), ("f32", "f64"));
        assert!(r32.converged && r32.rel_error <= 1e-6, "{}", r32.rel_error);
        assert!(r32.iterations < n * 16, "stopped on its rule");
        for r in [&r32, &r64] {
            let rel = (r.sigma - exact).abs() / exact;
            assert!(rel <= 1e-6, "{} {}: {rel}", r.dtype, r.sigma);
        }
        // Attained in f64 by the returned vector.
        let (_, jv) = layer
            .jvp(x.as_ref(), r32.result.top.vector.as_ref())
            .unwrap();
        assert!((jv.norm_l2() - r32.sigma).abs() <= 1e-12 * exact);
        assert_eq!(lipattn::ops::to_json(&r32).unwrap()["dtype"], "f32");
    }
    // f32 is a Lanczos option; power iteration asks for f64 by name.
    let layer = build(&cases()[0], 11);
    let x = gauss(&mut SplitMix::new(2), 4, D, 1.0);
    let req = LocalRequest {
        dtype: LocalDtype::F32,
        method: LocalMethod::Power,
        ..Default::default()
    };
    let inputs = RotaryInputs {
        layer: &layer,
        x: x.as_ref(),
        source: &source,
        family: "llama",
    };
    let Err(e) = run_rotary(&req, inputs, &mut lipattn::ops::silent) else {
        panic!("f32 power iteration was accepted");
    };
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    assert!(
        e.to_string()
            .contains("`dtype` 'f32' needs `method` 'lanczos'"),
        "{e}"
    );
    let parsed: LocalRequest = serde_json::from_str(r#"{"dtype": "f32"}"#).unwrap();
    assert_eq!(parsed.dtype, LocalDtype::F32);
    assert_eq!(LocalRequest::default().dtype, LocalDtype::F64);
    let bad = serde_json::from_str::<LocalRequest>(r#"{"dtype": "f16"}"#).unwrap_err();
    assert!(bad.to_string().contains("f16"), "{bad}");
}

/// The restricted normal step (`normal_step_rows`, the restricted start of `local --dtype f32`)
/// equals the full step on the tangent embedded at the rows, gathered back at them: the image
/// (dO) and the rows of J^T J u, for every case (windows, softcap, qk-norm, grouped heads), row
/// sets that are a prefix, scattered, a single token or every token, and in f32 too.
#[test]
fn restricted_normal_step_equals_the_embedded_full_step() {
    let n = 11;
    let row_sets: [&[usize]; 4] = [&[0, 1, 2], &[1, 4, 5, 9], &[10], &[0, 3, 7, 8, 10]];
    for (name, layer) in layers() {
        let mut r = SplitMix::new(9);
        let x = gauss(&mut r, n, D, 1.0);
        let lin = RotaryLinearization::new(&layer, x.as_ref()).unwrap();
        let normal = lin.normal_data();
        let all: Vec<usize> = (0..n).collect();
        for rows in row_sets.iter().copied().chain([all.as_slice()]) {
            let u = gauss(&mut r, rows.len(), D, 1.0);
            let mut full = Mat::<f64>::zeros(n, D);
            for (k, &i) in rows.iter().enumerate() {
                full.as_mut().row_mut(i).copy_from(u.row(k));
            }
            let (want_image, want_w) = lin.normal_step(&normal, full.as_ref()).unwrap();
            let want_w = Mat::from_fn(rows.len(), D, |k, j| want_w[(rows[k], j)]);
            let (image, w) = lin.normal_step_rows(&normal, rows, u.as_ref()).unwrap();
            let close =
                |a: &Mat<f64>, b: &Mat<f64>| (a - b).norm_l2() <= 1e-12 * b.norm_l2().max(1.0);
            assert!(close(&image, &want_image), "{name}, rows {rows:?}: image");
            assert!(close(&w, &want_w), "{name}, rows {rows:?}: J^T J u");
        }
        // f32 against the f32 full step, to f32's rounding.
        let l32 = layer.cast::<f32>();
        let x32 = to_f32(&x);
        let lin = RotaryLinearization::new(&l32, x32.as_ref()).unwrap();
        let normal = lin.normal_data();
        let rows = [0, 2, 3];
        let u = to_f32(&gauss(&mut r, rows.len(), D, 1.0));
        let mut full = Mat::<f32>::zeros(n, D);
        for (k, &i) in rows.iter().enumerate() {
            full.as_mut().row_mut(i).copy_from(u.row(k));
        }
        let (_, want) = lin.normal_step(&normal, full.as_ref()).unwrap();
        let want = to_f64(&Mat::from_fn(rows.len(), D, |k, j| want[(rows[k], j)]));
        let (_, w) = lin.normal_step_rows(&normal, &rows, u.as_ref()).unwrap();
        assert!(rel_err(&to_f64(&w), &want) <= 1e-5, "{name}: f32");
    }
}

/// On a sequence long enough for the restricted start (n >= 4 x its 32 tokens), `local
/// --dtype f32` starts its f32 Lanczos from the top vector of J^T J restricted to the tokens
/// that receive the most attention, and still meets the requested accuracy against the dense
/// Jacobian's top singular value, with an error estimate no smaller than its actual error; the
/// seed moves the start (another Gaussian on the tokens), not the answer beyond the tolerance.
#[test]
fn f32_local_restricted_start_meets_the_tolerance() {
    let source = LayerSource::new("test layer", true, lipattn::Kernel::Dot);
    for (seed, window, softcap) in [(5, None, None), (6, Some(40), Some(3.0))] {
        let layer = common::rotary::build(
            &RotarySpec {
                heads: 4,
                kv_heads: 2,
                head_dim: 4,
                rotary_dim: 4,
                d: 6,
                d_out: 5,
                qk_scale: 1.5,
                v_scale: 0.5,
                o_scale: 0.4,
                bias: 0.1,
                qk_norm: None,
                softcap,
                window,
                theta: 1000.0,
                max_position_embeddings: 256,
                scaling: RopeScaling::Default,
                score_divisor_sq: 4,
            },
            seed,
        );
        let n = 160;
        let x = gauss(&mut SplitMix::new(seed + 50), n, 6, 1.0);
        let lin = RotaryLinearization::new(&layer, x.as_ref()).unwrap();
        let exact = dense_jacobian(&lin).unwrap().singular_values().unwrap()[0];
        let mut sigmas = vec![];
        for start_seed in [0, 7] {
            let req = LocalRequest {
                dtype: LocalDtype::F32,
                seed: start_seed,
                ..Default::default()
            };
            let inputs = RotaryInputs {
                layer: &layer,
                x: x.as_ref(),
                source: &source,
                family: "llama",
            };
            let r = run_rotary(&req, inputs, &mut lipattn::ops::silent).unwrap();
            assert!(r.start_steps > 0, "seed {seed}: the restricted start ran");
            assert!(r.converged && r.rel_error <= 1e-6, "{}", r.rel_error);
            let rel = (exact - r.sigma) / exact;
            assert!(rel >= -1e-12, "attained: {} vs {exact}", r.sigma);
            assert!(
                rel <= r.rel_error.max(1e-12),
                "{rel} above the estimate {}",
                r.rel_error
            );
            let json = lipattn::ops::to_json(&r).unwrap();
            assert_eq!(json["start_steps"], r.start_steps);
            sigmas.push(r.sigma);
        }
        assert!((sigmas[0] - sigmas[1]).abs() <= 2e-6 * exact, "{sigmas:?}");
    }
}
