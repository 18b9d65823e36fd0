//! `analyze` on the streaming attention state (docs/streaming.md#analyze): under a memory budget
//! that refuses the dense n x n probabilities of a sublayer, `auto` measures that sublayer on the
//! streaming state (and passes the text through the blocks on it), gives the unbudgeted dense
//! run's values to 1e-9 relative, and the report says per operator and n which state ran; the
//! estimate made before the run names the dense state's bytes exactly as the budget refusal
//! does. One test in its own binary: it sets the process-wide memory budget.

use lipattn::analysis::{analyze, AnalysisOptions, ModelReport, TextIds};
use lipattn::derivatives::AttentionMemory;
use lipattn::models::{Model, NamedTensor, TensorData};
use lipattn::Error;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const D: usize = 32;
const HEADS: usize = 8;
const FFN: usize = 64;
const LAYERS: usize = 2;
const POSITIONS: usize = 1100;
const VOCAB: usize = 40;
const N: usize = 1024;

/// A random two-layer BERT with 8 heads of width 4 and 1,100 positions: at n = 1,024 its
/// sublayer's dense state is 2 x 8 x 1024^2 f64 = 134 MB, a head's 16.8 MB.
fn model() -> Model {
    let mut rng = StdRng::seed_from_u64(19);
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
    add(
        "embeddings.word_embeddings.weight",
        vec![VOCAB, D],
        1.0,
        0.0,
    );
    add(
        "embeddings.position_embeddings.weight",
        vec![POSITIONS, D],
        0.5,
        0.0,
    );
    add(
        "embeddings.token_type_embeddings.weight",
        vec![2, D],
        0.5,
        0.0,
    );
    add("embeddings.LayerNorm.weight", vec![D], 0.1, 1.0);
    add("embeddings.LayerNorm.bias", vec![D], 0.1, 0.0);
    for l in 0..LAYERS {
        let p = format!("encoder.layer.{l}.");
        for (name, rows, cols) in [
            ("attention.self.query", D, D),
            ("attention.self.key", D, D),
            ("attention.self.value", D, D),
            ("attention.output.dense", D, D),
            ("intermediate.dense", FFN, D),
            ("output.dense", D, FFN),
        ] {
            add(&format!("{p}{name}.weight"), vec![rows, cols], 0.5, 0.0);
            add(&format!("{p}{name}.bias"), vec![rows], 0.1, 0.0);
        }
        for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
            add(&format!("{p}{ln}.weight"), vec![D], 0.1, 1.0);
            add(&format!("{p}{ln}.bias"), vec![D], 0.1, 0.0);
        }
    }
    let config = serde_json::json!({
        "model_type": "bert", "hidden_size": D, "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS, "intermediate_size": FFN,
        "max_position_embeddings": POSITIONS, "vocab_size": VOCAB, "layer_norm_eps": 1e-12,
        "hidden_act": "gelu", "type_vocab_size": 2,
    });
    Model::from_parts("<random bert>", &config.to_string(), t).expect("model")
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

#[test]
fn analyze_streams_under_the_budget_and_equals_dense() {
    let model = model();
    let mut rng = StdRng::seed_from_u64(7);
    let text = TextIds {
        prefix: vec![2],
        body: (0..POSITIONS)
            .map(|_| rng.random_range(5..VOCAB as u32))
            .collect(),
        suffix: vec![3],
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

    // The hidden states pass through the blocks on the streaming state where the dense one is
    // refused, and equal the dense ones.
    let ids: Vec<u32> = text.body[..N].to_vec();
    let dense_states = model.hidden_states_upto(&ids, LAYERS).expect("hidden");
    lipattn::budget::set_max_memory(Some(100 << 20));
    let streamed_states = model.hidden_states_upto(&ids, LAYERS).expect("hidden");
    for (a, b) in streamed_states.iter().zip(&dense_states) {
        let diff = (a - b).norm_l2() / b.norm_l2();
        assert!(diff < 1e-12, "hidden states differ by {diff}");
    }

    // `dense` is refused naming the state and its bytes, the figure the estimate gives.
    let e = run(AttentionMemory::Dense).expect_err("the dense state must be refused");
    assert!(matches!(e, Error::Budget { .. }), "{e}");
    let message = e.to_string();
    assert!(
        message.contains("attention of 1024 queries over 1024 tokens with 8 heads")
            && message.contains("134.218 MB")
            && message.contains("104.858 MB"),
        "{message}"
    );

    let auto = run(AttentionMemory::Auto).expect("auto under the budget");
    lipattn::budget::set_max_memory(None);
    let dense = run(AttentionMemory::Dense).expect("dense without a budget");

    let estimate = auto.estimate.as_ref().expect("an estimate");
    assert_eq!(estimate.kind, "estimate");
    let at_n = estimate
        .per_n
        .iter()
        .find(|p| p.n == N)
        .expect("n in the estimate");
    assert_eq!(at_n.dense_state_bytes, Some(2 * 8 * 1024 * 1024 * 8));
    assert!(message.contains(&lipattn::budget::human(at_n.dense_state_bytes.unwrap())));
    assert_eq!(at_n.attention, AttentionMemory::Streaming);
    assert!(at_n.state_bytes.unwrap() < at_n.dense_state_bytes.unwrap() / 5);
    assert!(estimate.seconds > 0.0 && estimate.peak_bytes > estimate.weights_bytes);
    assert_eq!(
        dense.estimate.as_ref().unwrap().per_n[1].attention,
        AttentionMemory::Dense
    );

    assert_eq!(auto.operators.len(), 1 + HEADS);
    let mut compared = 0;
    for (a, d) in auto.operators.iter().zip(&dense.operators) {
        assert_eq!(a.head, d.head);
        for (pa, pd) in a.points.iter().zip(&d.points) {
            // The sublayer streams at n = 1,024; its heads (16.8 MB each) and n = 16 stay dense.
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
    // Text and both structured inputs at both n, for the sublayer and every head.
    assert!(
        compared >= 2 * 3 * (1 + HEADS) - 2,
        "{compared} values compared"
    );
}
