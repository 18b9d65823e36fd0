//! config.json keys (docs/models.md#config-keys): every key that makes a model lipattn does not
//! compute is refused naming the key, its value and the file; the table the loader follows is
//! the one docs/models.md shows.

use lipattn::models::{Family, Model, ModelConfig, Treatment, KEY_RULES};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("models_config-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn base(family: Family) -> Value {
    match family {
        Family::Bert => json!({
            "model_type": "bert", "hidden_size": 8, "num_attention_heads": 2,
            "num_hidden_layers": 2,
        }),
        Family::Gpt2 => json!({"model_type": "gpt2", "n_embd": 8, "n_head": 2, "n_layer": 2}),
        rotary => json!({
            "model_type": rotary.name(), "hidden_size": 64, "num_attention_heads": 32,
            "num_hidden_layers": 4,
        }),
    }
}

/// The config with `key` set to `value`, parsed as `Model::open` parses it.
fn parse(name: &str, family: Family, key: &str, value: Value) -> Result<ModelConfig, String> {
    let dir = scratch(name);
    let mut config = base(family);
    config[key] = value;
    let path = dir.join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    match ModelConfig::from_file(&path) {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(t)) => panic!("model_type {t} not recognised"),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn keys_that_change_the_model_are_refused_naming_key_value_and_file() {
    let cases: &[(Family, &str, Value)] = &[
        (Family::Gpt2, "add_cross_attention", json!(true)),
        (Family::Gpt2, "is_causal", json!(false)),
        (Family::Gpt2, "tie_last_hidden_states", json!(false)),
        (Family::Gpt2, "pruned_heads", json!({"0": [1]})),
        (
            Family::Gpt2,
            "quantization_config",
            json!({"quant_method": "bitsandbytes"}),
        ),
        (
            Family::Gpt2,
            "per_layer_config",
            json!({"1": {"n_inner": 4}}),
        ),
        (
            Family::Bert,
            "position_embedding_type",
            json!("relative_key"),
        ),
        (
            Family::Bert,
            "position_embedding_type",
            json!("relative_key_query"),
        ),
        (Family::Bert, "is_decoder", json!(true)),
        (Family::Bert, "add_cross_attention", json!(true)),
        (Family::Bert, "pruned_heads", json!({"1": [0]})),
    ];
    for (i, (family, key, value)) in cases.iter().enumerate() {
        let name = format!("refuse-{i}");
        let err = parse(&name, *family, key, value.clone())
            .expect_err(&format!("{key} = {value} must be refused"));
        for part in [
            format!("'{key}'"),
            value.to_string(),
            format!("models_config-{name}"),
        ] {
            assert!(err.contains(&part), "{key}: {err:?} does not name {part}");
        }
        // Model::open refuses it the same way (the CLI and Python go through it).
        let dir = scratch(&name);
        let mut config = base(*family);
        config[*key] = value.clone();
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let err = Model::open(&dir).err().expect("refused").to_string();
        assert!(err.contains(&format!("'{key}'")), "{err}");
    }
}

#[test]
fn default_values_of_refused_keys_are_accepted() {
    let cases: &[(Family, &str, Value)] = &[
        (Family::Gpt2, "add_cross_attention", json!(false)),
        (Family::Gpt2, "is_causal", json!(true)),
        (Family::Gpt2, "tie_last_hidden_states", json!(null)),
        (Family::Gpt2, "pruned_heads", json!({})),
        (Family::Gpt2, "quantization_config", json!(null)),
        (Family::Gpt2, "per_layer_config", json!({})),
        (Family::Gpt2, "reorder_and_upcast_attn", json!(true)),
        (Family::Gpt2, "is_decoder", json!(true)),
        (Family::Bert, "position_embedding_type", json!("absolute")),
        (Family::Bert, "is_decoder", json!(false)),
        (Family::Bert, "is_causal", json!(true)),
        (Family::Bert, "chunk_size_feed_forward", json!(3)),
    ];
    for (i, (family, key, value)) in cases.iter().enumerate() {
        parse(&format!("accept-{i}"), *family, key, value.clone())
            .unwrap_or_else(|e| panic!("{key} = {value}: {e}"));
    }
}

#[test]
fn honoured_keys_are_read_and_checked() {
    let c = parse("scale", Family::Gpt2, "scale_attn_weights", json!(false)).unwrap();
    assert!(!c.scale_by_head_dim && !c.scale_by_inverse_layer);
    assert_eq!(c.score_divisor_sq(0).unwrap(), 1);
    let c = parse(
        "inverse",
        Family::Gpt2,
        "scale_attn_by_inverse_layer_idx",
        json!(true),
    )
    .unwrap();
    assert_eq!(
        (0..3)
            .map(|l| c.score_divisor_sq(l).unwrap())
            .collect::<Vec<_>>(),
        [4, 16, 36]
    );
    let c = parse("bert", Family::Bert, "scale_attn_weights", json!(false)).unwrap();
    assert!(c.scale_by_head_dim, "BERT does not read GPT-2's key");
    let c = parse(
        "fast",
        Family::Gpt2,
        "activation_function",
        json!("gelu_fast"),
    )
    .unwrap();
    assert_eq!(c.activation, lipattn::models::Activation::GeluFast);
    for (key, value) in [
        ("scale_attn_weights", json!(0)),
        ("scale_attn_by_inverse_layer_idx", json!("yes")),
    ] {
        let err = parse("type", Family::Gpt2, key, value).unwrap_err();
        assert!(err.contains(key) && err.contains("true or false"), "{err}");
    }
    let err = parse(
        "act",
        Family::Gpt2,
        "activation_function",
        json!("quick_gelu"),
    )
    .unwrap_err();
    assert!(err.contains("quick_gelu"), "{err}");
    // GPT-2's attribute_map aliases: one alone is read, two that disagree are refused.
    let c = parse("alias", Family::Gpt2, "hidden_size", json!(8)).unwrap();
    assert_eq!(c.hidden_size, 8);
    let err = parse("alias-clash", Family::Gpt2, "num_hidden_layers", json!(3)).unwrap_err();
    assert!(
        err.contains("'n_layer'") && err.contains("num_hidden_layers"),
        "{err}"
    );
}

/// docs/models.md#config-keys lists exactly the library's table: each row is
/// `| key | family | treatment | ... |`.
#[test]
fn docs_table_is_the_library_table() {
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/models.md"))
            .unwrap();
    let section = docs
        .split("## Config keys")
        .nth(1)
        .expect("docs/models.md has a '## Config keys' section");
    let section = section.split("\n## ").next().unwrap();
    let mut documented = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        documented.push((
            cells[1].trim_matches('`').to_string(),
            cells[2].to_string(),
            cells[3].to_string(),
        ));
    }
    let mut library = Vec::new();
    for r in KEY_RULES {
        let families = r.families_label();
        let treatment = match r.treatment {
            Treatment::Only(values) => format!("only {}", values.join(", ")),
            t => t.name().to_string(),
        };
        library.push((r.key.to_string(), families, treatment));
    }
    let strip = |v: &Vec<(String, String, String)>| {
        let mut v = v.clone();
        v.sort();
        v
    };
    let (d, l) = (strip(&documented), strip(&library));
    for row in &l {
        assert!(d.contains(row), "docs/models.md lacks the row {row:?}");
    }
    for row in &d {
        assert!(
            l.contains(row),
            "docs/models.md has {row:?}, the library does not"
        );
    }
}

fn decoder(c: &ModelConfig) -> &lipattn::models::DecoderConfig {
    c.decoder.as_ref().expect("a rotary family")
}

/// Each rotary family's defaults are its transformers configuration class's.
#[test]
fn rotary_family_defaults() {
    use lipattn::attention::RopeScaling;
    let rotary = [
        // family, kv heads, head_dim, max positions, activation
        (Family::Llama, 32, 2, 2048, "silu"),
        (Family::Mistral, 8, 2, 131072, "silu"),
        (Family::Qwen2, 32, 2, 32768, "silu"),
        (Family::Qwen3, 32, 128, 32768, "silu"),
        (Family::Gemma, 16, 256, 8192, "gelu_pytorch_tanh"),
        (Family::Gemma2, 4, 256, 8192, "gelu_pytorch_tanh"),
    ];
    for (family, kv, head_dim, max_pos, act) in rotary {
        let c = parse(family.name(), family, "model_type", json!(family.name())).unwrap();
        let d = decoder(&c);
        assert_eq!(
            (d.kv_heads, d.head_dim, d.rope.max_position_embeddings),
            (kv, head_dim, max_pos),
            "{family:?}"
        );
        assert_eq!(
            c.activation,
            lipattn::models::Activation::from_hf_name(act).unwrap()
        );
        assert_eq!(d.rope.theta, 10_000.0);
        assert_eq!(d.rope.scaling, RopeScaling::Default);
        assert_eq!(c.layer_norm_eps, 1e-6);
        let windows: Vec<Option<usize>> = match family {
            Family::Mistral => vec![Some(4096); 4],
            Family::Gemma2 => vec![Some(4096), None, Some(4096), None],
            _ => vec![None; 4],
        };
        assert_eq!(d.windows, windows, "{family:?}");
        assert_eq!(
            d.unit_offset_norm,
            matches!(family, Family::Gemma | Family::Gemma2)
        );
        assert_eq!(d.qkv_bias, family == Family::Qwen2);
        assert!(!d.o_bias);
        assert_eq!(d.qk_norm, family == Family::Qwen3);
        let (softcap, divisor) = match family {
            Family::Gemma2 => (Some(50.0), 256),
            _ => (None, head_dim),
        };
        assert_eq!((d.softcap, d.score_divisor_sq), (softcap, divisor));
    }
}

#[test]
fn rotary_keys_are_read() {
    use lipattn::attention::RopeScaling;
    let c = parse("l-kv", Family::Llama, "num_key_value_heads", json!(1)).unwrap();
    assert_eq!(decoder(&c).kv_heads, 1);
    let c = parse("l-hd", Family::Llama, "head_dim", json!(6)).unwrap();
    assert_eq!(decoder(&c).head_dim, 6);
    assert_eq!(decoder(&c).score_divisor_sq, 6);
    let c = parse("m-hd", Family::Mistral, "head_dim", json!(null)).unwrap();
    assert_eq!(decoder(&c).head_dim, 2);
    let c = parse("l-gelu", Family::Gemma, "hidden_act", json!("gelu")).unwrap();
    assert_eq!(c.activation, lipattn::models::Activation::GeluTanh);
    let c = parse("l-bias", Family::Llama, "attention_bias", json!(true)).unwrap();
    assert!(decoder(&c).qkv_bias && decoder(&c).o_bias && !decoder(&c).mlp_bias);
    let c = parse("m-bias", Family::Mistral, "attention_bias", json!(true)).unwrap();
    assert!(!decoder(&c).qkv_bias, "Mistral has no attention_bias");
    let c = parse("l-mlp", Family::Llama, "mlp_bias", json!(true)).unwrap();
    assert!(decoder(&c).mlp_bias);
    let c = parse("q-mlp", Family::Qwen2, "mlp_bias", json!(true)).unwrap();
    assert!(!decoder(&c).mlp_bias, "only Llama reads mlp_bias");
    let c = parse(
        "g2-scalar",
        Family::Gemma2,
        "query_pre_attn_scalar",
        json!(24),
    )
    .unwrap();
    assert_eq!(decoder(&c).score_divisor_sq, 24);
    let c = parse(
        "g2-cap",
        Family::Gemma2,
        "attn_logit_softcapping",
        json!(null),
    )
    .unwrap();
    assert_eq!(decoder(&c).softcap, None);
    let c = parse(
        "g2-types",
        Family::Gemma2,
        "layer_types",
        json!([
            "full_attention",
            "sliding_attention",
            "full_attention",
            "full_attention"
        ]),
    )
    .unwrap();
    assert_eq!(decoder(&c).windows, [None, Some(4096), None, None]);
    // Qwen: windows only with use_sliding_window, from max_window_layers on.
    let dir = scratch("qwen-windows");
    let path = dir.join("config.json");
    let mut cfg = base(Family::Qwen2);
    cfg["use_sliding_window"] = json!(true);
    cfg["sliding_window"] = json!(3);
    cfg["max_window_layers"] = json!(2);
    std::fs::write(&path, cfg.to_string()).unwrap();
    let c = ModelConfig::from_file(&path).unwrap().unwrap();
    assert_eq!(decoder(&c).windows, [None, None, Some(3), Some(3)]);
    let c = parse("q-nowin", Family::Qwen3, "sliding_window", json!(3)).unwrap();
    assert_eq!(decoder(&c).windows, [None; 4]);
    let c = parse("m-win", Family::Mistral, "sliding_window", json!(null)).unwrap();
    assert_eq!(decoder(&c).windows, [None; 4]);
    // rope_parameters, and the legacy rope_scaling + rope_theta.
    let c = parse(
        "r-lin",
        Family::Llama,
        "rope_parameters",
        json!({"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}),
    )
    .unwrap();
    assert_eq!(
        decoder(&c).rope.scaling,
        RopeScaling::Linear { factor: 2.0 }
    );
    assert_eq!(decoder(&c).rope.theta, 500.0);
    let c = parse(
        "r-old",
        Family::Llama,
        "rope_scaling",
        json!({"type": "dynamic", "factor": 3.0}),
    )
    .unwrap();
    assert_eq!(
        decoder(&c).rope.scaling,
        RopeScaling::Dynamic {
            factor: 3.0,
            original_max_position_embeddings: 2048
        }
    );
    let c = parse("r-theta", Family::Qwen2, "rope_theta", json!(1e6)).unwrap();
    assert_eq!(decoder(&c).rope.theta, 1e6);
    let c = parse("r-l3", Family::Llama, "rope_parameters", json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0})).unwrap();
    assert_eq!(
        decoder(&c).rope.scaling,
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 2048
        }
    );
    let c = parse("r-yarn", Family::Llama, "rope_parameters", json!({"rope_type": "yarn", "factor": 4.0, "beta_fast": 0, "original_max_position_embeddings": 64})).unwrap();
    assert_eq!(
        decoder(&c).rope.scaling,
        RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: 64,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: None,
            mscale_all_dim: None,
            attention_factor: None,
            truncate: true
        }
    );
    // transformers reads `truncate` for truth: null is false.
    for (value, want) in [
        (json!(false), false),
        (json!(null), false),
        (json!(true), true),
    ] {
        let c = parse(
            "r-trunc",
            Family::Llama,
            "rope_parameters",
            json!({"rope_type": "yarn", "factor": 4.0, "truncate": value}),
        )
        .unwrap();
        let RopeScaling::Yarn { truncate, .. } = decoder(&c).rope.scaling else {
            panic!("yarn")
        };
        assert_eq!(truncate, want);
    }
}

/// Values that make a model lipattn does not compute are refused naming the key.
#[test]
fn rotary_refusals_name_the_key() {
    let cases = [
        (
            Family::Llama,
            "rope_parameters",
            json!({"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}),
            "rope_parameters",
        ),
        (
            Family::Llama,
            "rope_scaling",
            json!({"type": "su", "factor": 2.0}),
            "rope_scaling",
        ),
        (
            Family::Llama,
            "rope_parameters",
            json!({"rope_type": "linear"}),
            "factor",
        ),
        (
            Family::Llama,
            "partial_rotary_factor",
            json!(0.5),
            "partial_rotary_factor",
        ),
        (
            Family::Llama,
            "rope_parameters",
            json!({"rope_type": "default", "partial_rotary_factor": 0.5}),
            "partial_rotary_factor",
        ),
        (Family::Llama, "is_causal", json!(false), "is_causal"),
        (
            Family::Gemma,
            "use_bidirectional_attention",
            json!(true),
            "use_bidirectional_attention",
        ),
        (
            Family::Gemma2,
            "layer_types",
            json!(["full_attention"]),
            "layer_types",
        ),
        (
            Family::Gemma2,
            "layer_types",
            json!([
                "chunked_attention",
                "full_attention",
                "full_attention",
                "full_attention"
            ]),
            "layer_types",
        ),
        (
            Family::Gemma2,
            "sliding_window",
            json!(null),
            "sliding_window",
        ),
        (
            Family::Llama,
            "num_key_value_heads",
            json!(3),
            "num_key_value_heads",
        ),
        (
            Family::Llama,
            "hidden_act",
            json!("quick_gelu"),
            "hidden_act",
        ),
        (
            Family::Gemma2,
            "hidden_activation",
            json!("mish"),
            "hidden_activation",
        ),
        (
            Family::Llama,
            "attention_bias",
            json!("yes"),
            "attention_bias",
        ),
        (
            Family::Gemma2,
            "query_pre_attn_scalar",
            json!(0),
            "query_pre_attn_scalar",
        ),
        (
            Family::Llama,
            "quantization_config",
            json!({"quant_method": "gptq"}),
            "quantization_config",
        ),
    ];
    for (i, (family, key, value, named)) in cases.iter().enumerate() {
        let err = parse(&format!("rotary-refuse-{i}"), *family, key, value.clone())
            .map(|_| ())
            .expect_err(&format!("{key} = {value} accepted"));
        assert!(err.contains(named), "{key} = {value}: {err}");
    }
}
