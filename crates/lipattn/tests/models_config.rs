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
    let err = parse("act", Family::Gpt2, "activation_function", json!("silu")).unwrap_err();
    assert!(err.contains("silu"), "{err}");
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
        let families = if r.families.len() == 2 {
            "both".to_string()
        } else {
            r.families[0].name().to_string()
        };
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
