//! `analyze` on a rotary checkpoint (a random two-layer Llama with grouped-query heads) under a
//! memory budget that refuses the sublayer's dense band of probabilities: `auto` measures the
//! sublayer on the streaming rotary state (docs/streaming.md#rotary-sublayers), passes the text
//! through the blocks on it, and gives the unbudgeted dense run's values to 1e-9 relative; the
//! report says per operator and n which state ran, and `dense` is refused naming the budget.
//! One test in its own binary: it sets the process-wide memory budget.

use lipattn::analysis::{analyze, AnalysisOptions, ModelReport, TextIds};
use lipattn::derivatives::AttentionMemory;
use lipattn::models::{Model, NamedTensor, TensorData};
use lipattn::Error;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const D: usize = 32;
const HEADS: usize = 8;
const KV: usize = 2;
const FFN: usize = 48;
const LAYERS: usize = 2;
const VOCAB: usize = 40;
const N: usize = 1024;

/// At n = 1,024 the sublayer's dense state (8 heads' probabilities on the causal band, 64-query
/// blocks) is 35.7 MB, a head's 4.5 MB; the streaming state about a tenth of it.
fn model() -> Model {
    let mut rng = StdRng::seed_from_u64(23);
    let mut t = vec![];
    let mut add = |name: &str, shape: Vec<usize>, scale: f64, shift: f64| {
        let len = shape.iter().product();
        let v = (0..len)
            .map(|_| shift + scale * (rng.random::<f64>() * 2.0 - 1.0))
            .collect();
        t.push(NamedTensor {
            name: name.into(),
            shape,
            data: TensorData::F64(v),
        });
    };
    let hd = D / HEADS;
    add("model.embed_tokens.weight", vec![VOCAB, D], 1.0, 0.0);
    add("model.norm.weight", vec![D], 0.1, 1.0);
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}.");
        for (name, rows, cols) in [
            ("self_attn.q_proj", HEADS * hd, D),
            ("self_attn.k_proj", KV * hd, D),
            ("self_attn.v_proj", KV * hd, D),
            ("self_attn.o_proj", D, HEADS * hd),
            ("mlp.gate_proj", FFN, D),
            ("mlp.up_proj", FFN, D),
            ("mlp.down_proj", D, FFN),
        ] {
            add(&format!("{p}{name}.weight"), vec![rows, cols], 0.6, 0.0);
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            add(&format!("{p}{norm}.weight"), vec![D], 0.1, 1.0);
        }
    }
    let config = serde_json::json!({
        "model_type": "llama", "hidden_size": D, "num_attention_heads": HEADS,
        "num_key_value_heads": KV, "num_hidden_layers": LAYERS, "intermediate_size": FFN,
        "max_position_embeddings": 2048, "vocab_size": VOCAB, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "hidden_act": "silu",
    });
    Model::from_parts("<random llama>", &config.to_string(), t).expect("model")
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

#[test]
fn analyze_streams_rotary_sublayers_under_the_budget_and_equals_dense() {
    let model = model();
    let mut rng = StdRng::seed_from_u64(8);
    let text = TextIds {
        prefix: vec![1],
        body: (0..N + 100)
            .map(|_| rng.random_range(5..VOCAB as u32))
            .collect(),
        suffix: vec![],
        source: "random ids".into(),
    };
    let opts = |attention| AnalysisOptions {
        ns: vec![16, N],
        windows: 1,
        layers: Some(vec![1]),
        lanczos: lipattn::estimation::LanczosOptions {
            tol: 1e-10,
            max_iter: 150,
            seed: 3,
        },
        attention,
        ..AnalysisOptions::default()
    };
    let run = |attention| -> lipattn::Result<ModelReport> {
        analyze(&model, Some(&text), &opts(attention), &mut |_| {})
    };

    lipattn::budget::set_max_memory(Some(20 << 20));
    let e = run(AttentionMemory::Dense).expect_err("the dense state must be refused");
    assert!(matches!(e, Error::Budget { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("rotary attention of 1024 tokens with 8 heads"),
        "{e}"
    );
    let auto = run(AttentionMemory::Auto).expect("auto under the budget");
    lipattn::budget::set_max_memory(None);
    let dense = run(AttentionMemory::Dense).expect("dense without a budget");

    let at_n = auto
        .estimate
        .as_ref()
        .expect("an estimate")
        .per_n
        .iter()
        .find(|p| p.n == N)
        .expect("n in the estimate")
        .clone();
    assert_eq!(at_n.attention, AttentionMemory::Streaming);
    let (s, d) = (at_n.state_bytes.unwrap(), at_n.dense_state_bytes.unwrap());
    eprintln!("n = {N}: streaming state {s} bytes, dense {d} bytes");
    assert!(s * 5 < d, "{s} vs {d}");

    assert_eq!(auto.operators.len(), 1 + HEADS);
    let mut compared = 0;
    for (a, d) in auto.operators.iter().zip(&dense.operators) {
        assert_eq!(a.head, d.head);
        for (pa, pd) in a.points.iter().zip(&d.points) {
            // The sublayer streams at n = 1,024; its heads (4.5 MB each) and n = 16 stay dense.
            let expect = if a.head.is_none() && pa.n == N {
                AttentionMemory::Streaming
            } else {
                AttentionMemory::Dense
            };
            assert_eq!(pa.attention, expect, "head {:?} n {}", a.head, pa.n);
            assert_eq!(pd.attention, AttentionMemory::Dense);
            assert_eq!(pa.text.len(), pd.text.len());
            let pairs = pa
                .text
                .iter()
                .zip(&pd.text)
                .map(|(x, y)| (Some(*x), Some(*y)))
                .chain([
                    (pa.adversarial, pd.adversarial),
                    (pa.transition, pd.transition),
                ]);
            for (x, y) in pairs {
                assert_eq!(x.is_some(), y.is_some());
                if let (Some(x), Some(y)) = (x, y) {
                    assert!(
                        rel(x, y) <= 1e-9,
                        "head {:?} n {}: auto {x} dense {y}",
                        a.head,
                        pa.n
                    );
                    compared += 1;
                }
            }
        }
    }
    assert!(compared >= 2 * (1 + HEADS), "{compared} values compared");
}
