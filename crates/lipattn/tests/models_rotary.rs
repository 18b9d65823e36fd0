//! The rotary decoder families read from checkpoints written here with the `safetensors` crate:
//! tensor names with and without `model.`, the RMSNorm and gated feed-forward formulas, Gemma's
//! embedding scale, and the refusals of every accessor that would hand a rotary model to an
//! analysis of BERT/GPT-2 attention. Agreement with transformers itself is
//! tests/python/test_decoder_families.py.

use lipattn::attention::RmsNorm;
use lipattn::models::{load_attention_layer_source, Activation, Family, Model};
use lipattn::Mat;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const D: usize = 8;
const HEADS: usize = 2;
const KV: usize = 1;
const HD: usize = 4;
const FFN: usize = 12;
const VOCAB: usize = 11;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("models_rotary-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

type Tensors = BTreeMap<String, (Vec<usize>, Vec<f64>)>;

fn tiny(family: Family, prefix: &str, layers: usize, seed: u64) -> Tensors {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = Tensors::new();
    let mut add = |name: String, shape: &[usize], center: f64| {
        let n = shape.iter().product();
        let v = (0..n)
            .map(|_| center + 0.4 * rng.random_range(-1.0..1.0))
            .collect();
        t.insert(name, (shape.to_vec(), v));
    };
    add(format!("{prefix}embed_tokens.weight"), &[VOCAB, D], 0.0);
    add(format!("{prefix}norm.weight"), &[D], 1.0);
    for l in 0..layers {
        let s = format!("{prefix}layers.{l}.");
        add(format!("{s}self_attn.q_proj.weight"), &[HEADS * HD, D], 0.0);
        add(format!("{s}self_attn.k_proj.weight"), &[KV * HD, D], 0.0);
        add(format!("{s}self_attn.v_proj.weight"), &[KV * HD, D], 0.0);
        add(format!("{s}self_attn.o_proj.weight"), &[D, HEADS * HD], 0.0);
        add(format!("{s}mlp.gate_proj.weight"), &[FFN, D], 0.0);
        add(format!("{s}mlp.up_proj.weight"), &[FFN, D], 0.0);
        add(format!("{s}mlp.down_proj.weight"), &[D, FFN], 0.0);
        let norms: &[&str] = match family {
            Family::Gemma2 => &[
                "input_layernorm",
                "post_attention_layernorm",
                "pre_feedforward_layernorm",
                "post_feedforward_layernorm",
            ],
            _ => &["input_layernorm", "post_attention_layernorm"],
        };
        for n in norms {
            add(format!("{s}{n}.weight"), &[D], 1.0);
        }
        if family == Family::Qwen2 {
            add(format!("{s}self_attn.q_proj.bias"), &[HEADS * HD], 0.0);
            add(format!("{s}self_attn.k_proj.bias"), &[KV * HD], 0.0);
            add(format!("{s}self_attn.v_proj.bias"), &[KV * HD], 0.0);
        }
        if family == Family::Qwen3 {
            add(format!("{s}self_attn.q_norm.weight"), &[HD], 1.0);
            add(format!("{s}self_attn.k_norm.weight"), &[HD], 1.0);
        }
    }
    t
}

fn write(dir: &Path, family: Family, layers: usize, extra: serde_json::Value, t: &Tensors) {
    let mut config = json!({
        "model_type": family.name(), "hidden_size": D, "num_attention_heads": HEADS,
        "num_key_value_heads": KV, "head_dim": HD, "num_hidden_layers": layers,
        "intermediate_size": FFN, "vocab_size": VOCAB, "max_position_embeddings": 16,
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let bytes: Vec<Vec<u8>> = t
        .values()
        .map(|(_, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView<'_>)> = t
        .iter()
        .zip(&bytes)
        .map(|((n, (shape, _)), b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F64, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

fn open(name: &str, family: Family, prefix: &str, extra: serde_json::Value) -> Model {
    let dir = scratch(name);
    write(&dir, family, 2, extra, &tiny(family, prefix, 2, 7));
    Model::open(&dir).unwrap()
}

const IDS: [u32; 9] = [1, 4, 4, 0, 10, 3, 7, 2, 9];

#[test]
fn every_family_runs_with_and_without_the_model_prefix() {
    for family in Family::ROTARY {
        let a = open(&format!("{}-p", family.name()), family, "model.", json!({}));
        let b = open(&format!("{}-bare", family.name()), family, "", json!({}));
        assert_eq!((a.family(), a.prefix(), b.prefix()), (family, "model.", ""));
        let (sa, sb) = (
            a.hidden_states(&IDS).unwrap(),
            b.hidden_states(&IDS).unwrap(),
        );
        assert_eq!(sa.len(), 3);
        for (x, y) in sa.iter().zip(&sb) {
            assert_eq!(x, y, "{family:?}");
            assert_eq!((x.nrows(), x.ncols()), (IDS.len(), D));
        }
        // The final state is the final norm of the last block's output.
        let last = a.rotary_layer(1).unwrap().forward(sa[1].as_ref()).unwrap();
        let normed = a.final_rms_norm().unwrap().apply(last.as_ref()).unwrap();
        assert_eq!(normed, sa[2]);
    }
}

#[test]
fn rms_norm_gated_feed_forward_and_embedding_scale() {
    let x = Mat::from_fn(2, 3, |i, k| (i as f64 + 1.0) * (k as f64 - 0.5));
    for unit_offset in [false, true] {
        let n = RmsNorm {
            weight: vec![0.5, -1.0, 2.0],
            eps: 0.25,
            unit_offset,
        };
        let y = n.apply(x.as_ref()).unwrap();
        for i in 0..2 {
            let ms: f64 = (0..3).map(|k| x[(i, k)] * x[(i, k)]).sum::<f64>() / 3.0;
            for k in 0..3 {
                let g = n.weight[k] + if unit_offset { 1.0 } else { 0.0 };
                let want = x[(i, k)] / (ms + 0.25).sqrt() * g;
                assert!((y[(i, k)] - want).abs() <= 1e-15 * want.abs().max(1.0));
            }
        }
    }
    assert_eq!(Activation::from_hf_name("silu"), Some(Activation::Silu));
    let s = Activation::Silu;
    assert_eq!(s.apply(0.0), 0.0);
    assert!((s.apply(2.0) - 2.0 / (1.0 + (-2.0f64).exp())).abs() < 1e-16);
    assert_eq!(s.apply(-1000.0), 0.0);

    let m = open("ffn", Family::Llama, "model.", json!({}));
    let block = m.rotary_layer(0).unwrap();
    let h = Mat::from_fn(3, D, |i, k| ((i * D + k) as f64 * 0.37).sin());
    let ff = &block.feed_forward;
    let y = ff.forward(h.as_ref()).unwrap();
    for i in 0..3 {
        let hidden: Vec<f64> = (0..FFN)
            .map(|j| {
                let g: f64 = (0..D).map(|k| ff.gate[(j, k)] * h[(i, k)]).sum();
                let u: f64 = (0..D).map(|k| ff.up[(j, k)] * h[(i, k)]).sum();
                g / (1.0 + (-g).exp()) * u
            })
            .collect();
        for k in 0..D {
            let want: f64 = (0..FFN).map(|j| ff.down[(k, j)] * hidden[j]).sum();
            assert!((y[(i, k)] - want).abs() < 1e-13, "{} {want}", y[(i, k)]);
        }
    }

    let g = open("gemma-embed", Family::Gemma, "model.", json!({}));
    let e = g.embeddings().unwrap();
    assert_eq!(e.scale, Some((D as f64).sqrt()));
    assert_eq!(e.max_positions(), None);
    let x = e.embed(&[3]).unwrap();
    assert_eq!(x[(0, 2)], e.word[(3, 2)] * (D as f64).sqrt());
    // No position table: a sequence longer than max_position_embeddings runs.
    let long: Vec<u32> = (0..40).map(|i| i % VOCAB as u32).collect();
    assert_eq!(g.hidden_states(&long).unwrap()[2].nrows(), 40);
}

#[test]
fn accessors_of_plain_attention_refuse_rotary_models() {
    let m = open("refuse", Family::Llama, "model.", json!({}));
    let errors = [
        m.attention_layer(0).map(drop).unwrap_err(),
        m.layer(0).map(drop).unwrap_err(),
        m.attention_norm(0).map(drop).unwrap_err(),
        m.attention_input_norm(0).map(drop).unwrap_err(),
        m.feed_forward_norm(0).map(drop).unwrap_err(),
        m.feed_forward(0).map(drop).unwrap_err(),
        m.final_norm().map(drop).unwrap_err(),
        load_attention_layer_source(m.dir().unwrap(), 0)
            .map(drop)
            .unwrap_err(),
    ];
    for e in errors {
        let msg = e.to_string();
        assert!(
            msg.contains("model_type 'llama'")
                && msg.contains("rotary position embeddings")
                && msg.contains("lipattn hidden"),
            "{msg}"
        );
    }
    assert!(m.rotary_attention(0).is_ok());
    let err = m.rotary_attention(2).unwrap_err().to_string();
    assert!(err.contains("layer"), "{err}");
}

#[test]
fn configured_tensors_must_exist() {
    // attention_bias says the projections have biases: a checkpoint without them is refused
    // naming the tensor, never run with zeros.
    let m = open(
        "bias",
        Family::Llama,
        "model.",
        json!({"attention_bias": true}),
    );
    let err = m.hidden_states(&IDS).unwrap_err().to_string();
    assert!(
        err.contains("model.layers.0.self_attn.q_proj.bias"),
        "{err}"
    );
    let m = open("mlp-bias", Family::Llama, "", json!({"mlp_bias": true}));
    let err = m.rotary_layer(0).map(drop).unwrap_err().to_string();
    assert!(err.contains("layers.0.mlp.gate_proj.bias"), "{err}");
    // Gemma 2's sandwich norms are required.
    let dir = scratch("gemma2-missing");
    write(
        &dir,
        Family::Gemma2,
        2,
        json!({}),
        &tiny(Family::Gemma, "model.", 2, 7),
    );
    let err = Model::open(&dir)
        .unwrap()
        .rotary_layer(0)
        .map(drop)
        .unwrap_err()
        .to_string();
    assert!(err.contains("pre_feedforward_layernorm"), "{err}");
    // More layers in config.json than in the weights.
    let dir = scratch("layers");
    write(
        &dir,
        Family::Qwen2,
        3,
        json!({}),
        &tiny(Family::Qwen2, "model.", 2, 7),
    );
    let err = Model::open(&dir).map(drop).unwrap_err().to_string();
    assert!(
        err.contains("model.layers.2.self_attn.q_proj.weight"),
        "{err}"
    );
}

/// Malformed or extreme values of the rotary keys give an error or a finite result, never a
/// panic or a non-finite hidden state.
#[test]
fn extreme_config_values_fail_cleanly() {
    let t = tiny(Family::Llama, "model.", 2, 7);
    let rope = |v: serde_json::Value| json!({ "rope_parameters": v });
    let cases = [
        json!({"head_dim": usize::MAX}),
        json!({"head_dim": 1u64 << 40}),
        json!({"num_key_value_heads": 0}),
        json!({"num_attention_heads": 0}),
        json!({"max_position_embeddings": 0}),
        json!({"max_position_embeddings": null, "rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}),
        json!({"rms_norm_eps": -1.0}),
        json!({"rms_norm_eps": 1e308}),
        json!({"rope_theta": 0.0}),
        json!({"rope_theta": 1e308}),
        json!({"rope_theta": "big"}),
        rope(json!("linear")),
        rope(json!({"rope_type": 3})),
        rope(json!({"rope_type": "linear", "factor": 0.0})),
        rope(json!({"rope_type": "linear", "factor": -2.0})),
        rope(json!({"rope_type": "linear", "factor": 1e-300})),
        rope(json!({"rope_type": "dynamic", "factor": 1e300})),
        rope(
            json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0}),
        ),
        rope(json!({"rope_type": "yarn", "original_max_position_embeddings": 0})),
        rope(json!({"rope_type": "yarn", "factor": 2.0, "beta_fast": -1.0, "beta_slow": 1e300})),
        rope(
            json!({"rope_type": "yarn", "factor": 2.0, "mscale": 1e300, "mscale_all_dim": 1e-300}),
        ),
        rope(json!({"rope_type": "yarn", "factor": 2.0, "attention_factor": -1.0})),
        rope(json!({"rope_type": "yarn", "factor": 2.0, "truncate": "no"})),
        json!({"model_type": "mistral", "sliding_window": 0}),
        json!({"model_type": "mistral", "sliding_window": u64::MAX}),
        json!({"model_type": "gemma2", "attn_logit_softcapping": -1.0}),
        json!({"model_type": "gemma2", "attn_logit_softcapping": 1e-300}),
        json!({"model_type": "gemma2", "query_pre_attn_scalar": 1.5}),
        json!({"model_type": "qwen2", "layer_types": "sliding_attention"}),
        json!({"original_max_position_embeddings": -3}),
    ];
    for (i, extra) in cases.iter().enumerate() {
        let dir = scratch(&format!("extreme-{i}"));
        write(&dir, Family::Llama, 2, extra.clone(), &t);
        let run = Model::open(&dir).and_then(|m| m.hidden_states(&IDS));
        if let Ok(states) = run {
            for s in states {
                for j in 0..s.ncols() {
                    assert!(
                        s.col_as_slice(j).iter().all(|v| v.is_finite()),
                        "{extra}: non-finite state"
                    );
                }
            }
        }
    }
}
