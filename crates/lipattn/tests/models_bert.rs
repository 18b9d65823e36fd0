//! The checkpoint loader (`Model` and the one-layer `load_*` functions) on BERT layouts: tiny
//! checkpoints written here and the real MiniLM.

mod common;

use lipattn::models::{load_attention_layer, load_bert_layer, Model, TensorStore};
use lipattn::{AttentionLayer, Error, Kernel, Mat};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;
use std::path::{Path, PathBuf};

const HIDDEN: usize = 8;
const HEADS: usize = 2;
const LAYERS: usize = 2;

/// A fresh directory per test, so that tests running in parallel never share files.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("models_bert-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Tensor {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    values: Vec<f64>,
}

fn encode(dtype: Dtype, values: &[f64]) -> Vec<u8> {
    let mut out = Vec::new();
    for &v in values {
        match dtype {
            Dtype::F64 => out.extend(v.to_le_bytes()),
            Dtype::F32 => out.extend((v as f32).to_le_bytes()),
            Dtype::F16 => out.extend(half::f16::from_f64(v).to_le_bytes()),
            Dtype::BF16 => out.extend(half::bf16::from_f64(v).to_le_bytes()),
            Dtype::I64 => out.extend((v as i64).to_le_bytes()),
            Dtype::I32 => out.extend((v as i32).to_le_bytes()),
            other => panic!("test helper does not encode {other:?}"),
        }
    }
    out
}

/// What the loader must return for a value stored in `dtype`.
fn rounded(dtype: Dtype, v: f64) -> f64 {
    match dtype {
        Dtype::F64 => v,
        Dtype::F32 => v as f32 as f64,
        Dtype::F16 => half::f16::from_f64(v).to_f64(),
        Dtype::BF16 => half::bf16::from_f64(v).to_f64(),
        other => panic!("no rounding rule for {other:?}"),
    }
}

fn config(hidden: usize, heads: usize, layers: usize) -> serde_json::Value {
    json!({
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "intermediate_size": 4 * hidden,
        "layer_norm_eps": 1e-12,
    })
}

fn write_config(dir: &Path, cfg: &serde_json::Value) {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(cfg).unwrap(),
    )
    .unwrap();
}

fn write_tensors(dir: &Path, tensors: &[Tensor]) {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|t| encode(t.dtype, &t.values)).collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            (
                t.name.clone(),
                TensorView::new(t.dtype, t.shape.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

/// A complete tiny BERT (embeddings, every layer's attention, LayerNorms and FFN, position ids)
/// with seeded random weights, all in `dtype`.
fn tiny_bert(prefix: &str, dtype: Dtype, seed: u64) -> Vec<Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut random = |shape: &[usize]| -> Vec<f64> {
        (0..shape.iter().product::<usize>())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect()
    };
    let mut out = Vec::new();
    let mut push = |name: String, dtype: Dtype, shape: Vec<usize>, values: Vec<f64>| {
        out.push(Tensor {
            name,
            dtype,
            shape,
            values,
        })
    };
    let h = HIDDEN;
    push(
        format!("{prefix}embeddings.word_embeddings.weight"),
        dtype,
        vec![16, h],
        random(&[16, h]),
    );
    push(
        format!("{prefix}embeddings.position_ids"),
        Dtype::I64,
        vec![1, 4],
        vec![0.0, 1.0, 2.0, 3.0],
    );
    push(
        format!("{prefix}embeddings.LayerNorm.weight"),
        dtype,
        vec![h],
        random(&[h]),
    );
    push(
        format!("{prefix}embeddings.LayerNorm.bias"),
        dtype,
        vec![h],
        random(&[h]),
    );
    for l in 0..LAYERS {
        let p = format!("{prefix}encoder.layer.{l}.");
        for m in [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
        ] {
            push(format!("{p}{m}.weight"), dtype, vec![h, h], random(&[h, h]));
            push(format!("{p}{m}.bias"), dtype, vec![h], random(&[h]));
        }
        for m in ["attention.output.LayerNorm", "output.LayerNorm"] {
            push(format!("{p}{m}.weight"), dtype, vec![h], random(&[h]));
            push(format!("{p}{m}.bias"), dtype, vec![h], random(&[h]));
        }
        push(
            format!("{p}intermediate.dense.weight"),
            dtype,
            vec![4 * h, h],
            random(&[4 * h, h]),
        );
        push(
            format!("{p}output.dense.weight"),
            dtype,
            vec![h, 4 * h],
            random(&[h, 4 * h]),
        );
    }
    out
}

fn find<'a>(tensors: &'a [Tensor], name: &str) -> &'a Tensor {
    tensors.iter().find(|t| t.name == name).unwrap()
}

fn assert_mat_eq(what: &str, m: &Mat<f64>, t: &Tensor) {
    assert_eq!(
        (m.nrows(), m.ncols()),
        (t.shape[0], t.shape[1]),
        "{what} shape"
    );
    for i in 0..m.nrows() {
        for j in 0..m.ncols() {
            let want = rounded(t.dtype, t.values[i * m.ncols() + j]);
            assert_eq!(m[(i, j)], want, "{what}[{i},{j}]");
        }
    }
}

fn assert_vec_eq(what: &str, v: &[f64], t: &Tensor) {
    let want: Vec<f64> = t.values.iter().map(|&x| rounded(t.dtype, x)).collect();
    assert_eq!(v, &want[..], "{what}");
}

fn check_layer(layer: &AttentionLayer<f64>, tensors: &[Tensor], prefix: &str, l: usize) {
    assert_eq!(layer.heads, HEADS);
    assert_eq!(layer.dk, HIDDEN / HEADS);
    assert_eq!(layer.dv, HIDDEN / HEADS);
    assert_eq!(layer.kernel, Kernel::Dot);
    let p = format!("{prefix}encoder.layer.{l}.");
    let t = |s: &str| find(tensors, &format!("{p}{s}"));
    assert_mat_eq("W_Q", &layer.wq, t("attention.self.query.weight"));
    assert_vec_eq("b_Q", &layer.bq, t("attention.self.query.bias"));
    assert_mat_eq("W_K", &layer.wk, t("attention.self.key.weight"));
    assert_vec_eq("b_K", &layer.bk, t("attention.self.key.bias"));
    assert_mat_eq("W_V", &layer.wv, t("attention.self.value.weight"));
    assert_vec_eq("b_V", &layer.bv, t("attention.self.value.bias"));
    assert_mat_eq("W_O", &layer.wo, t("attention.output.dense.weight"));
    assert_vec_eq("b_O", &layer.bo, t("attention.output.dense.bias"));
}

fn roundtrip(name: &str, prefix: &str, dtype: Dtype) {
    let dir = scratch(name);
    let tensors = tiny_bert(prefix, dtype, 7);
    write_config(&dir, &config(HIDDEN, HEADS, LAYERS));
    write_tensors(&dir, &tensors);
    let model = Model::open(&dir).unwrap();
    assert_eq!(model.prefix(), prefix);
    assert_eq!(model.num_layers(), LAYERS);
    for l in 0..LAYERS {
        check_layer(&model.attention_layer(l).unwrap(), &tensors, prefix, l);
        check_layer(&load_attention_layer(&dir, l).unwrap(), &tensors, prefix, l);
        let full = load_bert_layer(&dir, l).unwrap();
        assert_eq!(full.layer, l);
        let p = format!("{prefix}encoder.layer.{l}.attention.output.LayerNorm");
        assert_vec_eq(
            "LN gamma",
            &full.attention_layer_norm.gamma,
            find(&tensors, &format!("{p}.weight")),
        );
        assert_vec_eq(
            "LN beta",
            &full.attention_layer_norm.beta,
            find(&tensors, &format!("{p}.bias")),
        );
        assert_eq!(full.attention_layer_norm.eps, 1e-12);
    }
    // A lone file opens as a store of its own, with the tensors the directory's loader sees.
    let store = TensorStore::open_file(&dir.join("model.safetensors")).unwrap();
    assert_eq!(store.num_files(), 1);
    assert_eq!(store.names(), model.tensors().names());
    let emb = model
        .embeddings_norm()
        .unwrap()
        .expect("BERT has an embeddings LayerNorm");
    assert_vec_eq(
        "emb gamma",
        &emb.gamma,
        find(&tensors, &format!("{prefix}embeddings.LayerNorm.weight")),
    );
    assert_vec_eq(
        "emb beta",
        &emb.beta,
        find(&tensors, &format!("{prefix}embeddings.LayerNorm.bias")),
    );
}

#[test]
fn f32_without_prefix() {
    roundtrip("f32-plain", "", Dtype::F32);
}

#[test]
fn f32_with_bert_prefix() {
    roundtrip("f32-bert", "bert.", Dtype::F32);
}

#[test]
fn f16_without_prefix() {
    roundtrip("f16-plain", "", Dtype::F16);
}

#[test]
fn f16_with_bert_prefix() {
    roundtrip("f16-bert", "bert.", Dtype::F16);
}

#[test]
fn bf16_without_prefix() {
    roundtrip("bf16-plain", "", Dtype::BF16);
}

#[test]
fn bf16_with_bert_prefix() {
    roundtrip("bf16-bert", "bert.", Dtype::BF16);
}

#[test]
fn f64_with_bert_prefix() {
    roundtrip("f64-bert", "bert.", Dtype::F64);
}

#[test]
fn mixed_dtypes_in_one_file() {
    let dir = scratch("mixed");
    let mut tensors = tiny_bert("", Dtype::F32, 11);
    let cycle = [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::F64];
    for (i, t) in tensors
        .iter_mut()
        .filter(|t| t.dtype == Dtype::F32)
        .enumerate()
    {
        t.dtype = cycle[i % cycle.len()];
    }
    write_config(&dir, &config(HIDDEN, HEADS, LAYERS));
    write_tensors(&dir, &tensors);
    check_layer(&load_attention_layer(&dir, 1).unwrap(), &tensors, "", 1);
}

/// A valid tiny checkpoint to break one piece of.
fn valid(name: &str) -> (PathBuf, Vec<Tensor>) {
    let dir = scratch(name);
    let tensors = tiny_bert("", Dtype::F32, 3);
    write_config(&dir, &config(HIDDEN, HEADS, LAYERS));
    write_tensors(&dir, &tensors);
    (dir, tensors)
}

/// Errors of the checkpoint loader on a BERT directory.
fn err(dir: &Path, layer: usize) -> (Error, String) {
    let e = Model::open(dir)
        .and_then(|m| m.attention_layer(layer))
        .expect_err("loading should fail");
    let msg = e.to_string();
    (e, msg)
}

#[test]
fn missing_directory_is_named() {
    let dir = scratch("missing-dir").join("does-not-exist");
    let (e, msg) = err(&dir, 0);
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(msg.contains("does-not-exist"), "{msg}");
}

#[test]
fn missing_config_is_named() {
    let (dir, _) = valid("missing-config");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let (e, msg) = err(&dir, 0);
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(msg.contains("config.json"), "{msg}");
}

#[test]
fn missing_safetensors_is_named() {
    let (dir, _) = valid("missing-weights");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let (e, msg) = err(&dir, 0);
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn malformed_config_json() {
    let (dir, _) = valid("bad-json");
    std::fs::write(dir.join("config.json"), "{\"hidden_size\": 8,").unwrap();
    let (e, msg) = err(&dir, 0);
    assert!(matches!(e, Error::Format { .. }), "{e:?}");
    assert!(
        msg.contains("config.json") && msg.contains("invalid JSON"),
        "{msg}"
    );
}

#[test]
fn missing_config_keys_are_named() {
    for key in ["hidden_size", "num_attention_heads", "num_hidden_layers"] {
        let (dir, _) = valid(&format!("missing-key-{key}"));
        let mut cfg = config(HIDDEN, HEADS, LAYERS);
        cfg.as_object_mut().unwrap().remove(key);
        write_config(&dir, &cfg);
        let (e, msg) = err(&dir, 0);
        assert!(matches!(e, Error::Format { .. }), "{e:?}");
        assert!(msg.contains(&format!("missing key '{key}'")), "{msg}");
    }
}

/// Without `model_type` the family is unknown, so the directory is refused as an unsupported
/// architecture, saying the key is absent.
#[test]
fn missing_model_type_is_named() {
    let (dir, _) = valid("missing-key-model_type");
    let mut cfg = config(HIDDEN, HEADS, LAYERS);
    cfg.as_object_mut().unwrap().remove("model_type");
    write_config(&dir, &cfg);
    let (e, msg) = err(&dir, 0);
    assert!(matches!(e, Error::Model(_)), "{e:?}");
    assert!(
        msg.contains("unsupported architecture") && msg.contains("no model_type key"),
        "{msg}"
    );
}

/// `layer_norm_eps` is optional, as in transformers' BertConfig: a missing key means its
/// default, 1e-12, in every LayerNorm.
#[test]
fn missing_layer_norm_eps_takes_transformers_default() {
    let (dir, _) = valid("missing-key-layer_norm_eps");
    let mut cfg = config(HIDDEN, HEADS, LAYERS);
    cfg["layer_norm_eps"] = json!(1e-3);
    write_config(&dir, &cfg);
    assert_eq!(Model::open(&dir).unwrap().config().layer_norm_eps, 1e-3);
    cfg.as_object_mut().unwrap().remove("layer_norm_eps");
    write_config(&dir, &cfg);
    let model = Model::open(&dir).unwrap();
    assert_eq!(model.config().layer_norm_eps, 1e-12);
    assert_eq!(model.attention_norm(0).unwrap().eps, 1e-12);
    assert_eq!(
        load_bert_layer(&dir, 1).unwrap().attention_layer_norm.eps,
        1e-12
    );
}

#[test]
fn wrongly_typed_config_key() {
    let (dir, _) = valid("typed-key");
    let mut cfg = config(HIDDEN, HEADS, LAYERS);
    cfg["hidden_size"] = json!("eight");
    write_config(&dir, &cfg);
    let (_, msg) = err(&dir, 0);
    assert!(
        msg.contains("'hidden_size' must be a non-negative integer"),
        "{msg}"
    );
}

#[test]
fn other_model_type_is_rejected() {
    let (dir, _) = valid("roberta-type");
    let mut cfg = config(HIDDEN, HEADS, LAYERS);
    cfg["model_type"] = json!("roberta");
    write_config(&dir, &cfg);
    let (e, msg) = err(&dir, 0);
    assert!(matches!(e, Error::Model(_)), "{e:?}");
    assert!(
        msg.contains("unsupported architecture: model_type 'roberta'"),
        "{msg}"
    );

    // gpt2 is a supported family, but not over BERT tensors: the loader says which tensor of
    // the declared family it looked for.
    let (dir, _) = valid("gpt2-type");
    cfg["model_type"] = json!("gpt2");
    cfg["n_embd"] = json!(HIDDEN);
    cfg["n_head"] = json!(HEADS);
    cfg["n_layer"] = json!(LAYERS);
    write_config(&dir, &cfg);
    let (e, msg) = err(&dir, 0);
    assert!(matches!(e, Error::Model(_)), "{e:?}");
    assert!(
        msg.contains("model_type 'gpt2' but no tensor named 'h.0.attn.c_attn.weight'"),
        "{msg}"
    );

    // The post-LayerNorm loader refuses a pre-LayerNorm family rather than mislabel `ln_1`.
    let gpt2 = scratch("gpt2-bert-layer");
    // One layer of weights, and a config that says so (more is refused when the model opens);
    // without BERT's num_hidden_layers, which GPT-2 reads as an alias of n_layer.
    cfg["n_layer"] = json!(1);
    cfg.as_object_mut().unwrap().remove("num_hidden_layers");
    write_config(&gpt2, &cfg);
    write_tensors(
        &gpt2,
        &[Tensor {
            name: "h.0.attn.c_attn.weight".into(),
            dtype: Dtype::F32,
            shape: vec![HIDDEN, 3 * HIDDEN],
            values: vec![0.5; 3 * HIDDEN * HIDDEN],
        }],
    );
    let msg = load_bert_layer(&gpt2, 0).unwrap_err().to_string();
    assert!(
        msg.contains("model_type 'gpt2'") && msg.contains("post-LayerNorm"),
        "{msg}"
    );
}

#[test]
fn hidden_size_not_divisible_by_heads() {
    let (dir, _) = valid("indivisible");
    write_config(&dir, &config(HIDDEN, 3, LAYERS));
    let (e, msg) = err(&dir, 0);
    assert!(matches!(e, Error::Format { .. }), "{e:?}");
    assert!(
        msg.contains("config.json")
            && msg.contains("hidden size 8")
            && msg.contains("3 attention heads"),
        "{msg}"
    );
}

#[test]
fn layer_out_of_range_says_how_many() {
    let (dir, _) = valid("out-of-range");
    let (e, msg) = err(&dir, LAYERS);
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    assert!(
        msg.contains("layer 2 out of range") && msg.contains("has 2 layers"),
        "{msg}"
    );
}

#[test]
fn missing_tensor_is_named_with_examples() {
    let dir = scratch("missing-tensor");
    let tensors: Vec<Tensor> = tiny_bert("", Dtype::F32, 5)
        .into_iter()
        .filter(|t| t.name != "encoder.layer.1.attention.self.key.bias")
        .collect();
    write_config(&dir, &config(HIDDEN, HEADS, LAYERS));
    write_tensors(&dir, &tensors);
    assert!(load_attention_layer(&dir, 0).is_ok());
    let (e, msg) = err(&dir, 1);
    assert!(matches!(e, Error::Model(_)), "{e:?}");
    assert!(
        msg.contains("'encoder.layer.1.attention.self.key.bias' not found"),
        "{msg}"
    );
    assert!(
        msg.contains("e.g. ") && msg.contains("encoder.layer.0."),
        "{msg}"
    );
}

#[test]
fn missing_layer_norm_is_named() {
    let dir = scratch("missing-ln");
    let tensors: Vec<Tensor> = tiny_bert("", Dtype::F32, 5)
        .into_iter()
        .filter(|t| t.name != "encoder.layer.0.attention.output.LayerNorm.weight")
        .collect();
    write_config(&dir, &config(HIDDEN, HEADS, LAYERS));
    write_tensors(&dir, &tensors);
    assert!(
        load_attention_layer(&dir, 0).is_ok(),
        "the attention alone needs no LayerNorm"
    );
    let msg = load_bert_layer(&dir, 0).unwrap_err().to_string();
    assert!(
        msg.contains("encoder.layer.0.attention.output.LayerNorm.weight"),
        "{msg}"
    );
}

#[test]
fn wrong_shape_names_tensor_expected_and_found() {
    let dir = scratch("wrong-shape");
    let mut tensors = tiny_bert("", Dtype::F32, 5);
    let t = tensors
        .iter_mut()
        .find(|t| t.name == "encoder.layer.0.attention.self.value.weight")
        .unwrap();
    t.shape = vec![HIDDEN, HIDDEN / 2];
    t.values.truncate(HIDDEN * HIDDEN / 2);
    write_config(&dir, &config(HIDDEN, HEADS, LAYERS));
    write_tensors(&dir, &tensors);
    let (e, msg) = err(&dir, 0);
    assert!(matches!(e, Error::Shape { .. }), "{e:?}");
    assert!(
        msg.contains("encoder.layer.0.attention.self.value.weight"),
        "{msg}"
    );
    assert!(msg.contains("[8, 8]") && msg.contains("[8, 4]"), "{msg}");
}

#[test]
fn non_finite_weight_is_rejected() {
    let dir = scratch("non-finite");
    let mut tensors = tiny_bert("", Dtype::F32, 5);
    let t = tensors
        .iter_mut()
        .find(|t| t.name == "encoder.layer.1.attention.output.dense.weight")
        .unwrap();
    t.values[3] = f64::NAN;
    write_config(&dir, &config(HIDDEN, HEADS, LAYERS));
    write_tensors(&dir, &tensors);
    let (e, msg) = err(&dir, 1);
    assert!(matches!(e, Error::NonFinite { .. }), "{e:?}");
    assert!(msg.contains("W_O") && msg.contains("layer 1"), "{msg}");
}

#[test]
fn unsupported_dtype_names_tensor_and_dtype() {
    let dir = scratch("int-weight");
    let mut tensors = tiny_bert("", Dtype::F32, 5);
    let t = tensors
        .iter_mut()
        .find(|t| t.name == "encoder.layer.0.attention.self.query.bias")
        .unwrap();
    t.dtype = Dtype::I32;
    write_config(&dir, &config(HIDDEN, HEADS, LAYERS));
    write_tensors(&dir, &tensors);
    let (_, msg) = err(&dir, 0);
    assert!(
        msg.contains("encoder.layer.0.attention.self.query.bias") && msg.contains("I32"),
        "{msg}"
    );
}

#[test]
fn malformed_safetensors_header() {
    let (dir, _) = valid("bad-header");
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    // Corrupt the JSON header (it starts right after the 8-byte length).
    bytes[8] = b'[';
    std::fs::write(&path, &bytes).unwrap();
    let (e, msg) = err(&dir, 0);
    assert!(matches!(e, Error::Format { .. }), "{e:?}");
    assert!(
        msg.contains("model.safetensors") && msg.contains("not a valid safetensors file"),
        "{msg}"
    );

    // A file shorter than its declared header.
    std::fs::write(&path, 1000u64.to_le_bytes()).unwrap();
    let (e, _) = err(&dir, 0);
    assert!(matches!(e, Error::Format { .. }), "{e:?}");

    // Truncated data.
    std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
    let (e, _) = err(&dir, 0);
    assert!(matches!(e, Error::Format { .. }), "{e:?}");
}

#[test]
fn unknown_layout_lists_what_was_found() {
    let dir = scratch("gpt2-layout");
    let tensors = vec![
        Tensor {
            name: "h.0.attn.c_attn.weight".into(),
            dtype: Dtype::F32,
            shape: vec![HIDDEN, 3 * HIDDEN],
            values: vec![0.5; 3 * HIDDEN * HIDDEN],
        },
        Tensor {
            name: "wte.weight".into(),
            dtype: Dtype::F32,
            shape: vec![4, HIDDEN],
            values: vec![0.5; 4 * HIDDEN],
        },
    ];
    write_config(&dir, &config(HIDDEN, HEADS, LAYERS));
    write_tensors(&dir, &tensors);
    let (e, msg) = err(&dir, 0);
    assert!(matches!(e, Error::Model(_)), "{e:?}");
    assert!(
        msg.contains(
            "model_type 'bert' but no tensor named 'encoder.layer.0.attention.self.query.weight'"
        ) && msg.contains("'bert.' prefix"),
        "{msg}"
    );
    assert!(
        msg.contains("h.0.attn.c_attn.weight") && msg.contains("wte.weight"),
        "{msg}"
    );
}

#[test]
fn minilm_layer0_spectral_norms() {
    let Some(dir) = common::minilm("minilm_layer0_spectral_norms") else {
        return;
    };
    let model = Model::open(Path::new(&dir)).unwrap();
    assert_eq!(model.prefix(), "");
    assert_eq!(model.num_layers(), 6);
    let layer = model.attention_layer(0).unwrap();
    assert_eq!(
        (layer.heads, layer.dk, layer.dv, layer.d_in(), layer.d_out()),
        (12, 32, 32, 384, 384)
    );
    let norm = |m: &Mat<f64>| m.as_ref().singular_values().unwrap()[0];
    // Sanity values of docs/models.md#minilm-reference-values (f64 spectral norms of the stored
    // f32 weights).
    for (name, m, want) in [
        ("query", &layer.wq, 6.124990),
        ("key", &layer.wk, 6.842367),
        ("value", &layer.wv, 2.504774),
        ("output.dense", &layer.wo, 2.578006),
    ] {
        let got = norm(m);
        assert!(
            (got - want).abs() <= 1e-5,
            "{name}: spectral norm {got}, expected {want}"
        );
    }
    for l in 0..6 {
        let ln = model.attention_norm(l).unwrap();
        assert_eq!(ln.gamma.len(), 384);
        assert_eq!(ln.eps, 1e-12);
    }
    // The one-call loader reads the same LayerNorm; one layer suffices, since each call reopens
    // the 90 MB file.
    let w = load_bert_layer(Path::new(&dir), 5).unwrap();
    let ln = model.attention_norm(5).unwrap();
    assert_eq!(
        (w.attention_layer_norm.gamma, w.attention_layer_norm.beta),
        (ln.gamma, ln.beta)
    );
    assert_eq!(w.attention_layer_norm.eps, 1e-12);
    assert_eq!(model.embeddings_norm().unwrap().unwrap().beta.len(), 384);
}
