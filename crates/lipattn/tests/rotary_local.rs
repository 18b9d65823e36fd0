//! Local constants of rotary sublayers: the cached linearisation against the from-scratch
//! derivatives of `RotaryAttention`, Lanczos and power iteration against the top singular value
//! of the dense Jacobian, the per-head contribution against the sublayer, and the `local`
//! command's report.

use lipattn::attention::{RopeScaling, RotaryAttention, RotaryLinearization};
use lipattn::derivatives::dense::dense_jacobian;
use lipattn::derivatives::LinearizedMap;
use lipattn::estimation::{lanczos, power_iteration, LanczosOptions, PowerOptions};
use lipattn::linalg::SplitMix;
use lipattn::ops::local::{run_rotary, LocalRequest, RotaryInputs};
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
