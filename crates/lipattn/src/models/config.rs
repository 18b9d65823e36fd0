//! The few fields of a Hugging Face `config.json` that fix a supported model's shapes.

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// The model families this crate can run end to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// BERT-style encoders (BERT, MiniLM, ...): bidirectional, post-LayerNorm.
    Bert,
    /// GPT-2-style decoders: causal, pre-LayerNorm, Conv1D weights stored [in, out].
    Gpt2,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::Gpt2 => "gpt2",
        }
    }
}

/// Non-linearity of the feed-forward block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// x Phi(x) with the exact normal CDF (BERT's `gelu`).
    GeluErf,
    /// The tanh approximation (GPT-2's `gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    Relu,
}

impl Activation {
    /// Hugging Face's names for the activations (`hidden_act`, `activation_function`).
    pub fn from_hf_name(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Activation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Activation::GeluTanh),
            "relu" => Some(Activation::Relu),
            _ => None,
        }
    }

    pub fn apply(self, x: f64) -> f64 {
        match self {
            Activation::GeluErf => 0.5 * x * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2)),
            Activation::GeluTanh => {
                // sqrt(2 / pi), as in transformers' NewGELUActivation.
                const C: f64 = 0.797_884_560_802_865_4;
                0.5 * x * (1.0 + (C * (x + 0.044715 * x * x * x)).tanh())
            }
            Activation::Relu => x.max(0.0),
        }
    }
}

/// The shape-defining fields of a supported model's config.json, in family-neutral names.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub family: Family,
    /// As written in config.json.
    pub model_type: String,
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub layer_norm_eps: f64,
    pub activation: Activation,
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Reads config.json. `model_type` must name a supported family; `Ok(Err(model_type))`
    /// reports an unsupported one so that the caller can list the checkpoint's tensors too.
    pub fn from_file(path: &Path) -> Result<std::result::Result<Self, String>> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let json: Value = serde_json::from_str(&text).map_err(|e| Error::Format {
            path: path.to_path_buf(),
            msg: format!("invalid JSON: {e}"),
        })?;
        Self::from_json(&json).map_err(|msg| Error::Format {
            path: path.to_path_buf(),
            msg,
        })
    }

    fn from_json(json: &Value) -> std::result::Result<std::result::Result<Self, String>, String> {
        let obj = json
            .as_object()
            .ok_or("expected a JSON object at the top level")?;
        let model_type = match obj.get("model_type") {
            Some(Value::String(s)) => s.clone(),
            Some(v) => return Err(format!("key 'model_type' must be a string, found {v}")),
            None => "(no model_type key)".to_string(),
        };
        let family = match model_type.as_str() {
            "bert" => Family::Bert,
            "gpt2" => Family::Gpt2,
            _ => return Ok(Err(model_type)),
        };
        let get = |key: &str| obj.get(key).ok_or_else(|| format!("missing key '{key}'"));
        let uint = |key: &str| -> std::result::Result<usize, String> {
            let v = get(key)?;
            v.as_u64()
                .and_then(|u| usize::try_from(u).ok())
                .ok_or_else(|| format!("key '{key}' must be a non-negative integer, found {v}"))
        };
        // Keys that transformers' own config classes default are defaulted the same way, so
        // that a config.json transformers accepts means the same model here.
        let eps = |key: &str, default: f64| -> std::result::Result<f64, String> {
            match obj.get(key) {
                None => Ok(default),
                Some(v) => v
                    .as_f64()
                    .filter(|e| e.is_finite() && *e >= 0.0)
                    .ok_or_else(|| format!("key '{key}' must be a non-negative number, found {v}")),
            }
        };
        let act = |key: &str, default: &str| -> std::result::Result<Activation, String> {
            let name = match obj.get(key) {
                None => default,
                Some(v) => v
                    .as_str()
                    .ok_or_else(|| format!("key '{key}' must be a string, found {v}"))?,
            };
            Activation::from_hf_name(name).ok_or_else(|| {
                format!("{key} '{name}' is not supported (gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu)")
            })
        };
        let (hidden_size, heads, layers, layer_norm_eps, activation) = match family {
            Family::Bert => {
                if let Some(p) = obj.get("position_embedding_type") {
                    if p.as_str() != Some("absolute") {
                        return Err(format!(
                            "position_embedding_type {p} is not supported (only \"absolute\")"
                        ));
                    }
                }
                (
                    uint("hidden_size")?,
                    uint("num_attention_heads")?,
                    uint("num_hidden_layers")?,
                    eps("layer_norm_eps", 1e-12)?,
                    act("hidden_act", "gelu")?,
                )
            }
            Family::Gpt2 => (
                uint("n_embd")?,
                uint("n_head")?,
                uint("n_layer")?,
                eps("layer_norm_epsilon", 1e-5)?,
                act("activation_function", "gelu_new")?,
            ),
        };
        if heads == 0 {
            return Err("the number of attention heads is 0".into());
        }
        let remainder = hidden_size % heads;
        if hidden_size == 0 || remainder != 0 {
            return Err(format!(
                "hidden size {hidden_size} is not a positive multiple of the {heads} attention heads"
            ));
        }
        Ok(Ok(Self {
            family,
            model_type,
            hidden_size,
            num_attention_heads: heads,
            num_hidden_layers: layers,
            layer_norm_eps,
            activation,
        }))
    }
}
