//! Whole-model loading and the full forward pass, on tiny BERT- and GPT-2-layout checkpoints
//! written here, against a naive forward pass written here with plain loops over the raw
//! stored arrays (so a transposition or Q/K/V split error in the loader cannot cancel out).

mod common;

use lipattn::models::{Family, Model, NamedTensor, NormPlacement, TensorData, TextTokenizer};
use lipattn::{Error, Mat};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const D: usize = 8;
const HEADS: usize = 2;
const FFN: usize = 16;
const LAYERS: usize = 2;
const VOCAB: usize = 13;
const POSITIONS: usize = 10;
const IDS: [u32; 7] = [3, 0, 12, 5, 5, 9, 1];

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("models_full-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// name -> (dtype, shape, values); values are already representable in the dtype.
type Tensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<f64>)>;

fn encode(dtype: Dtype, values: &[f64]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| match dtype {
            Dtype::F64 => v.to_le_bytes().to_vec(),
            Dtype::F32 => (v as f32).to_le_bytes().to_vec(),
            Dtype::I64 => (v as i64).to_le_bytes().to_vec(),
            other => panic!("test helper does not encode {other:?}"),
        })
        .collect()
}

fn write_safetensors(path: &Path, tensors: &Tensors, names: &[&String]) {
    let bytes: Vec<Vec<u8>> = names
        .iter()
        .map(|n| encode(tensors[*n].0, &tensors[*n].2))
        .collect();
    let views: Vec<(String, TensorView<'_>)> = names
        .iter()
        .zip(&bytes)
        .map(|(n, b)| {
            let (dtype, shape, _) = &tensors[*n];
            (
                n.to_string(),
                TensorView::new(*dtype, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn write_model(dir: &Path, config: &serde_json::Value, tensors: &Tensors) {
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let names: Vec<&String> = tensors.keys().collect();
    write_safetensors(&dir.join("model.safetensors"), tensors, &names);
}

struct Gen {
    rng: StdRng,
    dtype: Dtype,
    out: Tensors,
}

impl Gen {
    fn new(seed: u64, dtype: Dtype) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            dtype,
            out: Tensors::new(),
        }
    }

    /// Uniform on [center - scale, center + scale], rounded to the storage dtype.
    fn add(&mut self, name: String, shape: &[usize], center: f64, scale: f64) {
        let n: usize = shape.iter().product();
        let dtype = self.dtype;
        let values = (0..n)
            .map(|_| {
                let v = center + scale * self.rng.random_range(-1.0..1.0);
                if dtype == Dtype::F32 {
                    v as f32 as f64
                } else {
                    v
                }
            })
            .collect();
        self.out.insert(name, (dtype, shape.to_vec(), values));
    }

    fn layer_norm(&mut self, stem: String) {
        self.add(format!("{stem}.weight"), &[D], 1.0, 0.3);
        self.add(format!("{stem}.bias"), &[D], 0.0, 0.3);
    }
}

// Weight scales keep every feed-forward pre-activation inside |x| < 3, where the series for erf
// below is accurate to ~1e-14 (asserted in `erf`).
const W: f64 = 0.3;

fn tiny_gpt2(prefix: &str, seed: u64) -> Tensors {
    let mut g = Gen::new(seed, Dtype::F64);
    g.add(format!("{prefix}wte.weight"), &[VOCAB, D], 0.0, 1.0);
    g.add(format!("{prefix}wpe.weight"), &[POSITIONS, D], 0.0, 0.5);
    for l in 0..LAYERS {
        let p = format!("{prefix}h.{l}.");
        g.layer_norm(format!("{p}ln_1"));
        g.layer_norm(format!("{p}ln_2"));
        g.add(format!("{p}attn.c_attn.weight"), &[D, 3 * D], 0.0, W);
        g.add(format!("{p}attn.c_attn.bias"), &[3 * D], 0.0, W);
        g.add(format!("{p}attn.c_proj.weight"), &[D, D], 0.0, W);
        g.add(format!("{p}attn.c_proj.bias"), &[D], 0.0, W);
        g.add(format!("{p}mlp.c_fc.weight"), &[D, FFN], 0.0, W);
        g.add(format!("{p}mlp.c_fc.bias"), &[FFN], 0.0, W);
        g.add(format!("{p}mlp.c_proj.weight"), &[FFN, D], 0.0, W);
        g.add(format!("{p}mlp.c_proj.bias"), &[D], 0.0, W);
        // Older exports keep the causal mask as a buffer; the loader must ignore it.
        g.add(
            format!("{p}attn.bias"),
            &[1, 1, POSITIONS, POSITIONS],
            0.0,
            1.0,
        );
    }
    g.layer_norm(format!("{prefix}ln_f"));
    if !prefix.is_empty() {
        g.add("lm_head.weight".into(), &[VOCAB, D], 0.0, 1.0);
    }
    g.out
}

fn gpt2_config() -> serde_json::Value {
    json!({
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "n_embd": D, "n_head": HEADS, "n_layer": LAYERS, "n_positions": POSITIONS,
        "vocab_size": VOCAB, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
    })
}

fn tiny_bert(prefix: &str, dtype: Dtype, seed: u64) -> Tensors {
    let mut g = Gen::new(seed, dtype);
    let e = format!("{prefix}embeddings.");
    g.add(format!("{e}word_embeddings.weight"), &[VOCAB, D], 0.0, 1.0);
    g.add(
        format!("{e}position_embeddings.weight"),
        &[POSITIONS, D],
        0.0,
        0.5,
    );
    g.add(
        format!("{e}token_type_embeddings.weight"),
        &[2, D],
        0.0,
        0.5,
    );
    g.layer_norm(format!("{e}LayerNorm"));
    g.out.insert(
        format!("{e}position_ids"),
        (
            Dtype::I64,
            vec![1, POSITIONS],
            (0..POSITIONS).map(|i| i as f64).collect(),
        ),
    );
    for l in 0..LAYERS {
        let p = format!("{prefix}encoder.layer.{l}.");
        for m in ["query", "key", "value"] {
            g.add(format!("{p}attention.self.{m}.weight"), &[D, D], 0.0, W);
            g.add(format!("{p}attention.self.{m}.bias"), &[D], 0.0, W);
        }
        g.add(format!("{p}attention.output.dense.weight"), &[D, D], 0.0, W);
        g.add(format!("{p}attention.output.dense.bias"), &[D], 0.0, W);
        g.layer_norm(format!("{p}attention.output.LayerNorm"));
        g.add(format!("{p}intermediate.dense.weight"), &[FFN, D], 0.0, W);
        g.add(format!("{p}intermediate.dense.bias"), &[FFN], 0.0, W);
        g.add(format!("{p}output.dense.weight"), &[D, FFN], 0.0, W);
        g.add(format!("{p}output.dense.bias"), &[D], 0.0, W);
        g.layer_norm(format!("{p}output.LayerNorm"));
    }
    g.out
}

fn bert_config() -> serde_json::Value {
    json!({
        "model_type": "bert", "architectures": ["BertModel"],
        "hidden_size": D, "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
        "intermediate_size": FFN, "max_position_embeddings": POSITIONS, "vocab_size": VOCAB,
        "layer_norm_eps": 1e-12, "hidden_act": "gelu", "type_vocab_size": 2,
    })
}

// ---------- the naive reference: Vec<Vec<f64>> and index arithmetic on the stored arrays ----------

type Rows = Vec<Vec<f64>>;

fn t<'a>(tensors: &'a Tensors, name: &str) -> &'a [f64] {
    &tensors
        .get(name)
        .unwrap_or_else(|| panic!("test checkpoint lacks {name}"))
        .2
}

/// y_o = sum_i x_i W[o][i] + b_o (a Linear weight stored [out, in]).
fn linear(x: &Rows, w: &[f64], b: &[f64], out: usize) -> Rows {
    let inp = x[0].len();
    x.iter()
        .map(|r| {
            (0..out)
                .map(|o| b[o] + (0..inp).map(|i| r[i] * w[o * inp + i]).sum::<f64>())
                .collect()
        })
        .collect()
}

/// y_o = sum_i x_i W[i][o] + b_o (a Conv1D weight stored [in, out]).
fn conv1d(x: &Rows, w: &[f64], b: &[f64], out: usize) -> Rows {
    let inp = x[0].len();
    x.iter()
        .map(|r| {
            (0..out)
                .map(|o| b[o] + (0..inp).map(|i| r[i] * w[i * out + o]).sum::<f64>())
                .collect()
        })
        .collect()
}

fn layer_norm(x: &Rows, g: &[f64], b: &[f64], eps: f64) -> Rows {
    x.iter()
        .map(|r| {
            let n = r.len() as f64;
            let mean = r.iter().sum::<f64>() / n;
            let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            r.iter()
                .enumerate()
                .map(|(k, v)| g[k] * (v - mean) / (var + eps).sqrt() + b[k])
                .collect()
        })
        .collect()
}

fn add(a: &Rows, b: &Rows) -> Rows {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).map(|(u, v)| u + v).collect())
        .collect()
}

/// Multi-head softmax(q k^T / sqrt(dk)) v, heads side by side in the feature axis.
fn attention(q: &Rows, k: &Rows, v: &Rows, causal: bool) -> Rows {
    attention_scaled(q, k, v, causal, 1.0 / ((D / HEADS) as f64).sqrt())
}

/// Multi-head softmax(scale q k^T) v.
fn attention_scaled(q: &Rows, k: &Rows, v: &Rows, causal: bool, scale: f64) -> Rows {
    let n = q.len();
    let dk = D / HEADS;
    let mut out = vec![vec![0.0; D]; n];
    for h in 0..HEADS {
        let cols = h * dk..(h + 1) * dk;
        for i in 0..n {
            let seen = if causal { i + 1 } else { n };
            let s: Vec<f64> = (0..seen)
                .map(|j| cols.clone().map(|c| q[i][c] * k[j][c]).sum::<f64>() * scale)
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for c in cols.clone() {
                out[i][c] = (0..seen).map(|j| e[j] / z * v[j][c]).sum();
            }
        }
    }
    out
}

/// Maclaurin series, independent of the library's libm erf; accurate to ~1e-14 for |x| < 3.
fn erf(x: f64) -> f64 {
    assert!(
        x.abs() < 3.0,
        "test model too large for the series erf: {x}"
    );
    let (mut term, mut sum) = (x, x);
    for n in 1..80 {
        term *= -x * x / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

fn map(x: &Rows, f: impl Fn(f64) -> f64) -> Rows {
    x.iter()
        .map(|r| r.iter().map(|&v| f(v)).collect())
        .collect()
}

fn naive_gpt2(ts: &Tensors, prefix: &str, ids: &[u32]) -> Vec<Rows> {
    let dk = (D / HEADS) as f64;
    naive_gpt2_scaled(ts, prefix, ids, &|_| 1.0 / dk.sqrt())
}

/// GPT-2 with the scores of block l multiplied by `score_scale(l)`.
fn naive_gpt2_scaled(
    ts: &Tensors,
    prefix: &str,
    ids: &[u32],
    score_scale: &dyn Fn(usize) -> f64,
) -> Vec<Rows> {
    let g = |n: &str| t(ts, &format!("{prefix}{n}"));
    let gelu = |x: f64| {
        0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
    };
    let mut h: Rows = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            (0..D)
                .map(|k| g("wte.weight")[id as usize * D + k] + g("wpe.weight")[i * D + k])
                .collect()
        })
        .collect();
    let mut states = vec![h.clone()];
    for l in 0..LAYERS {
        let p = |n: &str| g(&format!("h.{l}.{n}"));
        let x = layer_norm(&h, p("ln_1.weight"), p("ln_1.bias"), 1e-5);
        let qkv = conv1d(&x, p("attn.c_attn.weight"), p("attn.c_attn.bias"), 3 * D);
        let part =
            |s: usize| -> Rows { qkv.iter().map(|r| r[s * D..(s + 1) * D].to_vec()).collect() };
        let a = attention_scaled(&part(0), &part(1), &part(2), true, score_scale(l));
        h = add(
            &h,
            &conv1d(&a, p("attn.c_proj.weight"), p("attn.c_proj.bias"), D),
        );
        let x = layer_norm(&h, p("ln_2.weight"), p("ln_2.bias"), 1e-5);
        let f = map(
            &conv1d(&x, p("mlp.c_fc.weight"), p("mlp.c_fc.bias"), FFN),
            gelu,
        );
        h = add(
            &h,
            &conv1d(&f, p("mlp.c_proj.weight"), p("mlp.c_proj.bias"), D),
        );
        states.push(h.clone());
    }
    let last = states.pop().unwrap();
    states.push(layer_norm(&last, g("ln_f.weight"), g("ln_f.bias"), 1e-5));
    states
}

fn naive_bert(ts: &Tensors, prefix: &str, ids: &[u32]) -> Vec<Rows> {
    let g = |n: &str| t(ts, &format!("{prefix}{n}"));
    let gelu = |x: f64| 0.5 * x * (1.0 + erf(x / 2f64.sqrt()));
    let emb: Rows = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            (0..D)
                .map(|k| {
                    g("embeddings.word_embeddings.weight")[id as usize * D + k]
                        + g("embeddings.position_embeddings.weight")[i * D + k]
                        + g("embeddings.token_type_embeddings.weight")[k]
                })
                .collect()
        })
        .collect();
    let mut h = layer_norm(
        &emb,
        g("embeddings.LayerNorm.weight"),
        g("embeddings.LayerNorm.bias"),
        1e-12,
    );
    let mut states = vec![h.clone()];
    for l in 0..LAYERS {
        let p = |n: &str| g(&format!("encoder.layer.{l}.{n}"));
        let lin = |x: &Rows, m: &str, out: usize| {
            linear(x, p(&format!("{m}.weight")), p(&format!("{m}.bias")), out)
        };
        let a = attention(
            &lin(&h, "attention.self.query", D),
            &lin(&h, "attention.self.key", D),
            &lin(&h, "attention.self.value", D),
            false,
        );
        let a = add(&h, &lin(&a, "attention.output.dense", D));
        let a = layer_norm(
            &a,
            p("attention.output.LayerNorm.weight"),
            p("attention.output.LayerNorm.bias"),
            1e-12,
        );
        let f = lin(
            &map(&lin(&a, "intermediate.dense", FFN), gelu),
            "output.dense",
            D,
        );
        h = layer_norm(
            &add(&a, &f),
            p("output.LayerNorm.weight"),
            p("output.LayerNorm.bias"),
            1e-12,
        );
        states.push(h.clone());
    }
    states
}

fn rel_err(got: &Mat<f64>, want: &Rows) -> f64 {
    assert_eq!((got.nrows(), got.ncols()), (want.len(), want[0].len()));
    let (mut diff, mut scale) = (0.0f64, 0.0f64);
    for (i, r) in want.iter().enumerate() {
        for (k, &w) in r.iter().enumerate() {
            diff = diff.max((got[(i, k)] - w).abs());
            scale = scale.max(w.abs());
        }
    }
    diff / scale
}

fn check_states(model: &Model, want: &[Rows]) {
    let got = model.hidden_states(&IDS).unwrap();
    assert_eq!(got.len(), LAYERS + 1);
    for (l, (g, w)) in got.iter().zip(want).enumerate() {
        let e = rel_err(g, w);
        assert!(e < 1e-12, "hidden state {l}: relative error {e:e}");
    }
    // Stopping early gives the same prefix of states.
    let upto = model.hidden_states_upto(&IDS, 1).unwrap();
    assert_eq!(upto.len(), 2);
    assert_eq!(upto[1], got[1]);
}

#[test]
fn gpt2_layout_matches_naive_forward() {
    for prefix in ["", "transformer."] {
        let dir = scratch(&format!("gpt2{prefix}"));
        let ts = tiny_gpt2(prefix, 11);
        write_model(&dir, &gpt2_config(), &ts);
        let model = Model::open(&dir).unwrap();
        assert_eq!(model.family(), Family::Gpt2);
        assert_eq!(model.prefix(), prefix);
        assert!(model.is_causal());
        assert_eq!(model.norm_placement(), NormPlacement::Pre);
        let want = naive_gpt2(&ts, prefix, &IDS);
        check_states(&model, &want);
        // The single-layer entry point every command uses reads GPT-2 checkpoints too.
        let one = lipattn::models::load_attention_layer(&dir, 1).unwrap();
        let from_model = model.attention_layer(1).unwrap();
        assert_eq!(
            (one.wq, one.wv, one.wo),
            (from_model.wq, from_model.wv, from_model.wo)
        );

        // Per-layer pieces: the attention input is ln_1 of the hidden state, and the attention
        // sublayer alone (causal) matches the naive one on it.
        let states = model.hidden_states(&IDS).unwrap();
        let layer = model.layer(1).unwrap();
        assert!(layer.causal);
        let ln1 = model.attention_input_norm(1).unwrap();
        assert_eq!(ln1.gamma, t(&ts, &format!("{prefix}h.1.ln_1.weight")));
        let x = layer.attention_input(states[1].as_ref()).unwrap();
        assert_eq!(x, ln1.apply(states[1].as_ref()).unwrap());
        let rows: Rows = (0..x.nrows())
            .map(|i| (0..D).map(|k| x[(i, k)]).collect())
            .collect();
        let p = |n: &str| t(&ts, &format!("{prefix}h.1.{n}"));
        let qkv = conv1d(&rows, p("attn.c_attn.weight"), p("attn.c_attn.bias"), 3 * D);
        let part =
            |s: usize| -> Rows { qkv.iter().map(|r| r[s * D..(s + 1) * D].to_vec()).collect() };
        let a = conv1d(
            &attention(&part(0), &part(1), &part(2), true),
            p("attn.c_proj.weight"),
            p("attn.c_proj.bias"),
            D,
        );
        let got = layer.attention.forward(x.as_ref(), None, true).unwrap();
        assert!(rel_err(&got, &a) < 1e-12);
    }
}

/// GPT-2's score-scale keys (docs/models.md#config-keys) change the forward pass and the layer
/// the bounds read: each combination against the naive forward with the scale written out.
#[test]
fn gpt2_score_scale_keys_are_honoured() {
    let dk = D / HEADS;
    let ts = tiny_gpt2("", 11);
    let default = naive_gpt2(&ts, "", &IDS);
    for (weights, inverse) in [(false, false), (true, true), (false, true), (true, false)] {
        let dir = scratch(&format!("gpt2-scale-{weights}-{inverse}"));
        let mut config = gpt2_config();
        config["scale_attn_weights"] = json!(weights);
        config["scale_attn_by_inverse_layer_idx"] = json!(inverse);
        write_model(&dir, &config, &ts);
        let model = Model::open(&dir).unwrap();
        let divisor = |l: usize| {
            let base = if weights { dk } else { 1 };
            if inverse {
                base * (l + 1) * (l + 1)
            } else {
                base
            }
        };
        let want = naive_gpt2_scaled(&ts, "", &IDS, &|l| 1.0 / (divisor(l) as f64).sqrt());
        check_states(&model, &want);
        for l in 0..LAYERS {
            let layer = model.attention_layer(l).unwrap();
            assert_eq!(layer.score_divisor_sq, divisor(l), "layer {l}");
            assert_eq!(
                model.layer(l).unwrap().attention.score_divisor_sq,
                divisor(l)
            );
        }
        // The one-layer loader the commands use sees the same scale.
        let one = lipattn::models::load_attention_layer(&dir, 1).unwrap();
        assert_eq!(one.score_divisor_sq, divisor(1));
        let last = rel_err(
            &model.hidden_states(&IDS).unwrap()[LAYERS],
            &default[LAYERS],
        );
        // The keys are not ignored: each non-default combination is a different model.
        assert_eq!(
            last > 1e-6,
            !weights || inverse,
            "scale_attn_weights {weights}, by_inverse_layer {inverse}: difference from the default model {last:e}"
        );
    }
}

#[test]
fn bert_layout_matches_naive_forward() {
    for (prefix, dtype) in [("", Dtype::F64), ("bert.", Dtype::F32)] {
        let dir = scratch(&format!("bert{prefix}"));
        let ts = tiny_bert(prefix, dtype, 5);
        write_model(&dir, &bert_config(), &ts);
        let model = Model::open(&dir).unwrap();
        assert_eq!(model.family(), Family::Bert);
        assert_eq!(model.prefix(), prefix);
        assert!(!model.is_causal());
        assert_eq!(model.norm_placement(), NormPlacement::Post);
        check_states(&model, &naive_bert(&ts, prefix, &IDS));
        // The attention input of block l is the hidden state itself, normalised by the
        // embeddings LayerNorm (l = 0) or the previous block's output LayerNorm.
        let n0 = model.attention_input_norm(0).unwrap();
        assert_eq!(
            n0.gamma,
            t(&ts, &format!("{prefix}embeddings.LayerNorm.weight"))
        );
        let n1 = model.attention_input_norm(1).unwrap();
        assert_eq!(
            n1.beta,
            t(
                &ts,
                &format!("{prefix}encoder.layer.0.output.LayerNorm.bias")
            )
        );
        let states = model.hidden_states(&IDS).unwrap();
        let layer = model.layer(1).unwrap();
        assert_eq!(
            layer.attention_input(states[1].as_ref()).unwrap(),
            states[1]
        );
        assert_eq!(layer.feed_forward.w_in.nrows(), FFN);
    }
}

#[test]
fn sharded_index_matches_single_file() {
    let ts = tiny_gpt2("transformer.", 3);
    let single = scratch("shard-single");
    write_model(&single, &gpt2_config(), &ts);
    let want = Model::open(&single).unwrap().hidden_states(&IDS).unwrap();

    let dir = scratch("shard-index");
    std::fs::write(dir.join("config.json"), gpt2_config().to_string()).unwrap();
    let names: Vec<&String> = ts.keys().collect();
    let (a, b) = names.split_at(names.len() / 2);
    let files = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    write_safetensors(&dir.join(files[0]), &ts, a);
    write_safetensors(&dir.join(files[1]), &ts, b);
    let mut map = serde_json::Map::new();
    for (part, file) in [(a, files[0]), (b, files[1])] {
        for n in part {
            map.insert(n.to_string(), json!(file));
        }
    }
    let index = json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let model = Model::open(&dir).unwrap();
    assert_eq!(model.tensors().num_files(), 2);
    assert_eq!(model.tensors().names().len(), ts.len());
    assert_eq!(model.hidden_states(&IDS).unwrap(), want);

    // An index that points a tensor at the wrong shard is refused, naming both.
    let moved = a[0].to_string();
    map.insert(moved.clone(), json!(files[1]));
    let index = json!({"weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let e = Model::open(&dir).err().unwrap().to_string();
    assert!(e.contains(&moved) && e.contains(files[1]), "{e}");
}

#[test]
fn unknown_architecture_lists_what_was_found() {
    let dir = scratch("unknown");
    let mut g = Gen::new(1, Dtype::F32);
    g.add(
        "model.layers.0.self_attn.q_proj.weight".into(),
        &[D, D],
        0.0,
        1.0,
    );
    g.add("model.embed_tokens.weight".into(), &[VOCAB, D], 0.0, 1.0);
    write_model(
        &dir,
        &json!({"model_type": "falcon", "hidden_size": D}),
        &g.out,
    );
    let e = Model::open(&dir).err().unwrap();
    assert!(matches!(e, Error::Model(_)), "{e:?}");
    let e = e.to_string();
    for needle in [
        "falcon",
        "model.layers.0.self_attn.q_proj.weight",
        "bert, gpt2, llama, mistral, qwen2, qwen3, gemma, gemma2",
    ] {
        assert!(e.contains(needle), "{needle} not in: {e}");
    }

    // A known model_type whose tensors belong to another family names the tensor it wanted.
    write_model(&dir, &bert_config(), &tiny_gpt2("", 1));
    let e = Model::open(&dir).err().unwrap().to_string();
    assert!(
        e.contains("encoder.layer.0.attention.self.query.weight") && e.contains("h.0.attn"),
        "{e}"
    );

    // Out-of-range layers and token ids are errors, not panics.
    write_model(&dir, &gpt2_config(), &tiny_gpt2("", 1));
    let model = Model::open(&dir).unwrap();
    assert!(model
        .layer(LAYERS)
        .err()
        .unwrap()
        .to_string()
        .contains("out of range"));
    assert!(model.hidden_states_upto(&IDS, LAYERS + 1).is_err());
    assert!(model.hidden_states(&[VOCAB as u32]).is_err());
    assert!(model.hidden_states(&[0; POSITIONS + 1]).is_err());
    assert!(model.hidden_states(&[]).is_err());
}

/// A tokenizer.json written here: word-level, whitespace split, saved with padding to 12 and
/// truncation to 3, both of which `TextTokenizer` must override.
#[test]
fn tokenizer_overrides_saved_padding_and_truncation() {
    let dir = scratch("tokenizer");
    let e = TextTokenizer::from_dir(&dir).err().unwrap().to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
    let tok = json!({
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": 3, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": 12}, "direction": "Right", "pad_to_multiple_of": null,
                    "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
        "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"[PAD]": 0, "[UNK]": 1, "a": 2, "b": 3, "c": 4},
                  "unk_token": "[UNK]"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    let tok = TextTokenizer::from_dir(&dir).unwrap();
    assert_eq!(tok.encode("a b c z a", None).unwrap(), vec![2, 3, 4, 1, 2]);
    assert_eq!(tok.encode("a b c z a", Some(2)).unwrap(), vec![2, 3]);
    assert!(tok.encode(" \n\t", None).is_err());
    assert!(tok.encode("a", Some(0)).is_err());
}

/// GPT-2's tokenizer is byte-level BPE, whose pre-tokenizer is a regex: this checks that the
/// crate's regex backend (fancy-regex, not Oniguruma) handles it and that no special tokens are
/// added.
#[test]
fn byte_level_bpe_tokenizer() {
    let dir = scratch("bpe");
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                          "use_regex": true},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false,
                           "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "",
                  "fuse_unk": false, "byte_fallback": false,
                  "vocab": {"a": 0, "b": 1, "\u{120}": 2, "ab": 3, "\u{120}a": 4, "'s": 5, "'": 6, "s": 7},
                  "merges": ["a b", "\u{120} a", "' s"]}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    let tok = TextTokenizer::from_dir(&dir).unwrap();
    assert_eq!(tok.encode("ab a's", None).unwrap(), vec![3, 4, 5]);
}

/// Greedy longest-match-first WordPiece on lower-cased, punctuation-split ASCII text.
fn wordpiece(text: &str, vocab: &[String]) -> Vec<u32> {
    let id = |s: &str| vocab.iter().position(|v| v == s).map(|i| i as u32);
    let mut words: Vec<String> = Vec::new();
    for w in text.to_lowercase().split_whitespace() {
        let mut cur = String::new();
        for c in w.chars() {
            if c.is_ascii_punctuation() {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
                words.push(c.to_string());
            } else {
                cur.push(c);
            }
        }
        if !cur.is_empty() {
            words.push(cur);
        }
    }
    let mut ids = vec![id("[CLS]").unwrap()];
    for w in words {
        let chars: Vec<char> = w.chars().collect();
        let mut start = 0;
        let mut pieces = Vec::new();
        while start < chars.len() {
            let found = (start + 1..=chars.len()).rev().find_map(|end| {
                let s: String = chars[start..end].iter().collect();
                let s = if start > 0 { format!("##{s}") } else { s };
                id(&s).map(|i| (i, end))
            });
            match found {
                Some((i, end)) => {
                    pieces.push(i);
                    start = end;
                }
                None => {
                    pieces = vec![id("[UNK]").unwrap()];
                    break;
                }
            }
        }
        ids.extend(pieces);
    }
    ids.push(id("[SEP]").unwrap());
    ids
}

#[test]
fn minilm_tokenizer_gives_vocab_ids() {
    let Some(dir) = common::minilm("minilm_tokenizer_gives_vocab_ids") else {
        return;
    };
    let vocab: Vec<String> = std::fs::read_to_string(dir.join("vocab.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let text = "The Unaffable licensee, in 2007, shall NOT modify it!";
    let tok = TextTokenizer::from_dir(&dir).unwrap();
    let ids = tok.encode(text, None).unwrap();
    let want = wordpiece(text, &vocab);
    assert_eq!(ids, want);
    // The word is split into several pieces, so continuation pieces are exercised.
    assert!(ids.len() > text.split_whitespace().count() + 6, "{ids:?}");
    let short = tok.encode(text, Some(5)).unwrap();
    assert_eq!(short.len(), 5);
    assert_eq!(&short[..4], &want[..4]);
    assert_eq!(short[4], *want.last().unwrap());

    // The loader's attention weights are the stored tensors themselves on the real weights
    // (BERT's Linear layout needs no transposition), read here by name from a second store.
    let model = Model::open(&dir).unwrap();
    let a = model.attention_layer(2).unwrap();
    let store = lipattn::models::TensorStore::open_dir(&dir).unwrap();
    let b = |s: &str| {
        store
            .matrix(&format!("encoder.layer.2.attention.{s}.weight"), 384, 384)
            .unwrap()
    };
    assert_eq!(
        (a.wq, a.wk, a.wv, a.wo),
        (
            b("self.query"),
            b("self.key"),
            b("self.value"),
            b("output.dense")
        )
    );

    // Windows of real text keep [CLS] and [SEP] around a slice of the body.
    let (pre, body, suf) = tok.encode_parts(text).unwrap();
    assert_eq!(
        (pre.as_slice(), suf.as_slice()),
        (&want[..1], &want[want.len() - 1..])
    );
    assert_eq!(body, want[1..want.len() - 1]);
    let w = tok.windows(text, 5, 2).unwrap();
    assert_eq!(w[0], short);
    assert_eq!(w[1].len(), 5);
    assert_eq!(&w[1][1..4], &body[body.len() - 3..]);
}

#[test]
fn windows_are_evenly_spaced_slices_with_specials() {
    use lipattn::models::tokenize::windows_of;
    let body: Vec<u32> = (10..30).collect();
    let w = windows_of(&[1], &body, &[2], 6, 3);
    assert_eq!(
        w,
        vec![
            vec![1, 10, 11, 12, 13, 2],
            vec![1, 18, 19, 20, 21, 2],
            vec![1, 26, 27, 28, 29, 2]
        ]
    );
    // Only as many distinct windows as the text allows; none when it is too short.
    assert_eq!(windows_of(&[], &body, &[], 20, 5), vec![body.clone()]);
    assert!(windows_of(&[1], &body, &[2], 23, 1).is_empty());
    assert!(windows_of(&[1], &body, &[2], 2, 1).is_empty());
    assert!(windows_of(&[], &body, &[], 4, 0).is_empty());
}

/// The whole-model analysis on tiny checkpoints of both families: every attained value (real
/// text and adversarial) stays below the certified bound at its n, each text value is the local
/// constant at the hidden state the model computes for that window, and the radius is B6's.
#[test]
fn analysis_of_tiny_models_is_sound_and_matches_direct_computation() {
    use lipattn::analysis::{analyze, AnalysisOptions, TextIds};
    use lipattn::estimation::{local_norm, LanczosOptions, Method};
    let mut rng = StdRng::seed_from_u64(5);
    let body: Vec<u32> = (0..40).map(|_| rng.random_range(0..VOCAB as u32)).collect();
    for (family, ts, config) in [
        ("bert", tiny_bert("", Dtype::F32, 21), bert_config()),
        ("gpt2", tiny_gpt2("", 22), gpt2_config()),
    ] {
        let dir = scratch(&format!("analysis-{family}"));
        write_model(&dir, &config, &ts);
        let model = Model::open(&dir).unwrap();
        let text = TextIds {
            prefix: vec![3],
            body: body.clone(),
            suffix: vec![4],
            source: "random ids".into(),
        };
        let opts = AnalysisOptions {
            ns: vec![3, 4, 6, 8, POSITIONS],
            windows: 3,
            ..AnalysisOptions::default()
        };
        let mut calls = 0;
        let r = analyze(&model, Some(&text), &opts, &mut |p| {
            calls += 1;
            assert!(p.done <= p.total);
        })
        .unwrap();
        assert!(calls >= 5 * 3 + 5, "{calls}");
        assert_eq!(r.operators.len(), LAYERS * (HEADS + 1));
        assert_eq!(r.causal, family == "gpt2");
        for o in &r.operators {
            let ln = model.attention_input_norm(o.layer).unwrap();
            let want = lipattn::bounds::layer_norm::layer_norm_radius(&ln.gamma, &ln.beta).unwrap();
            assert_eq!(o.radius, want);
            assert_eq!(o.points.len(), 5);
            for p in &o.points {
                assert_eq!(p.text.len(), 3);
                let cert = p.certified.frobenius.expect("finite at this radius");
                for a in p.text.iter().chain(p.adversarial.iter()) {
                    assert!(
                        *a <= cert,
                        "{family} layer {} head {:?} n {}: attained {a} > certified {cert}",
                        o.layer,
                        o.head,
                        p.n
                    );
                }
            }
            assert!(o.fit_text.is_some() && o.fit_adversarial.is_some());
        }
        for d in &r.domains {
            assert!(d.observed_max_norm > 0.0 && d.observed_max_norm <= d.radius);
        }
        // The last text window at n = 8, recomputed from scratch for layer 1's sublayer.
        let wins = lipattn::models::tokenize::windows_of(&[3], &body, &[4], 8, 3);
        let states = model.hidden_states(&wins[2]).unwrap();
        let block = model.layer(1).unwrap();
        let x = block.attention_input(states[1].as_ref()).unwrap();
        let direct = local_norm(
            &block.attention,
            x.as_ref(),
            None,
            block.causal,
            &Method::Lanczos(LanczosOptions {
                tol: 1e-12,
                ..Default::default()
            }),
        )
        .unwrap()
        .top
        .sigma;
        let o = r
            .operators
            .iter()
            .find(|o| o.layer == 1 && o.head.is_none())
            .unwrap();
        let got = o.points[3].text[2];
        assert_eq!(o.points[3].n, 8);
        assert!(
            got <= direct * (1.0 + 1e-9) && got >= direct * (1.0 - 1e-3),
            "{got} vs {direct}"
        );

        // Bad requests are named, not panics.
        let bad = |ns: Vec<usize>, layers: Option<Vec<usize>>| {
            let o = AnalysisOptions {
                ns,
                layers,
                ..AnalysisOptions::default()
            };
            analyze(&model, Some(&text), &o, &mut |_| {})
                .unwrap_err()
                .to_string()
        };
        assert!(bad(vec![POSITIONS + 1], None).contains("position table"));
        assert!(bad(vec![], None).contains("sequence lengths"));
        assert!(bad(vec![4], Some(vec![LAYERS])).contains("out of range"));
    }
}

/// The tensors of `ts` as a program holding the model in memory hands them over: f32 for every
/// stored precision below f64 (whose values f32 holds exactly), f64 for f64.
fn in_memory(ts: &Tensors) -> Vec<NamedTensor> {
    ts.iter()
        .map(|(name, (dtype, shape, v))| NamedTensor {
            name: name.clone(),
            shape: shape.clone(),
            data: match dtype {
                Dtype::F64 => TensorData::F64(v.clone()),
                _ => TensorData::F32(v.iter().map(|&x| x as f32).collect()),
            },
        })
        .collect()
}

#[test]
fn from_parts_is_the_model_of_the_saved_directory() {
    let label = "<in memory>";
    for (name, config, ts) in [
        ("bert", bert_config(), tiny_bert("bert.", Dtype::F32, 5)),
        ("bert64", bert_config(), tiny_bert("", Dtype::F64, 6)),
        ("gpt2", gpt2_config(), tiny_gpt2("transformer.", 7)),
    ] {
        let dir = scratch(&format!("parts-{name}"));
        write_model(&dir, &config, &ts);
        let saved = Model::open(&dir).unwrap();
        let mem = Model::from_parts(label, &config.to_string(), in_memory(&ts)).unwrap();
        assert_eq!((mem.dir(), mem.origin()), (None, label));
        assert_eq!(saved.dir(), Some(dir.as_path()));
        assert_eq!(mem.prefix(), saved.prefix());
        assert_eq!(mem.tensors().num_files(), 0);
        assert_eq!(
            mem.hidden_states(&IDS).unwrap(),
            saved.hidden_states(&IDS).unwrap()
        );
        for l in 0..LAYERS {
            let (a, b) = (mem.layer(l).unwrap(), saved.layer(l).unwrap());
            assert_eq!(a.attention.wq, b.attention.wq);
            assert_eq!(a.feed_forward.w_in, b.feed_forward.w_in);
        }
    }
}

#[test]
fn from_parts_refuses_what_open_refuses_naming_the_origin() {
    let label = "<in memory>";
    let ts = tiny_gpt2("", 1);
    let err = |config: &serde_json::Value, tensors: Vec<NamedTensor>| {
        Model::from_parts(label, &config.to_string(), tensors)
            .err()
            .unwrap()
    };
    let e = err(&json!({"model_type": "falcon"}), in_memory(&ts));
    assert!(matches!(e, Error::Model(_)), "{e:?}");
    assert!(
        e.to_string().contains(&format!(
            "{label}: unsupported architecture: model_type 'falcon'"
        )),
        "{e}"
    );
    let mut more = gpt2_config();
    more["n_layer"] = json!(LAYERS + 1);
    let e = err(&more, in_memory(&ts)).to_string();
    assert!(e.contains("config.json gives 3 layers"), "{e}");
    let mut bad = gpt2_config();
    bad["n_head"] = json!("two");
    let e = err(&bad, in_memory(&ts));
    assert!(matches!(e, Error::Format { .. }), "{e:?}");
    assert!(e.to_string().contains("n_head"), "{e}");
    assert!(matches!(
        Model::from_parts(label, "{", in_memory(&ts)).err().unwrap(),
        Error::Format { .. }
    ));

    let mut twice = in_memory(&ts);
    twice.push(twice[0].clone());
    let e = err(&gpt2_config(), twice).to_string();
    assert!(e.contains("given twice"), "{e}");
    let mut short = in_memory(&ts);
    short[0].shape[0] += 1;
    let e = err(&gpt2_config(), short).to_string();
    assert!(
        e.contains(&format!("tensor '{}'", ts.keys().next().unwrap())) && e.contains("values"),
        "{e}"
    );
    let mut huge = in_memory(&ts);
    huge[0].shape = vec![usize::MAX, 2];
    assert!(err(&gpt2_config(), huge).to_string().contains("values"));

    // A tensor of the wrong shape is refused when read, naming the tensor and the origin.
    let mut wrong = in_memory(&ts);
    let i = wrong
        .iter()
        .position(|t| t.name == "h.0.ln_1.weight")
        .unwrap();
    wrong[i] = NamedTensor {
        name: "h.0.ln_1.weight".into(),
        shape: vec![D + 1],
        data: TensorData::F64(vec![1.0; D + 1]),
    };
    let model = Model::from_parts(label, &gpt2_config().to_string(), wrong).unwrap();
    let e = model.layer(0).err().unwrap().to_string();
    assert!(e.contains(label) && e.contains("h.0.ln_1.weight"), "{e}");
}
