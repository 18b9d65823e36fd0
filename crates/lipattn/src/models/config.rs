//! The fields of a Hugging Face `config.json` that fix a supported model's computation; which
//! keys are read, refused or without effect is `config_keys`.

use super::decoder_config::DecoderConfig;
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
    /// Llama: rotary positions, grouped-query attention, RMSNorm, SwiGLU feed-forward.
    Llama,
    /// Mistral: Llama with a sliding attention window.
    Mistral,
    /// Qwen2: Llama with biases on the query, key and value projections, optional windows.
    Qwen2,
    /// Qwen3: Llama with RMSNorm on each head's queries and keys, optional windows.
    Qwen3,
    /// Gemma: (1 + w) RMSNorm, embeddings scaled by sqrt(hidden_size), GeGLU feed-forward.
    Gemma,
    /// Gemma 2: Gemma with sandwich norms, score soft-capping, alternating sliding windows and
    /// a configured score scale.
    Gemma2,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::Gpt2 => "gpt2",
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Gemma => "gemma",
            Family::Gemma2 => "gemma2",
        }
    }

    /// Every family, in the order errors list them.
    pub const ALL: [Family; 8] = [
        Family::Bert,
        Family::Gpt2,
        Family::Llama,
        Family::Mistral,
        Family::Qwen2,
        Family::Qwen3,
        Family::Gemma,
        Family::Gemma2,
    ];

    /// The families whose attention is `RotaryAttention` (`is_rotary`).
    pub const ROTARY: [Family; 6] = [
        Family::Llama,
        Family::Mistral,
        Family::Qwen2,
        Family::Qwen3,
        Family::Gemma,
        Family::Gemma2,
    ];

    /// The family of a config.json `model_type`.
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == model_type)
    }

    /// Whether the family positions tokens by rotating queries and keys (`RotaryAttention`)
    /// instead of adding a position embedding.
    pub fn is_rotary(self) -> bool {
        !matches!(self, Family::Bert | Family::Gpt2)
    }
}

/// Non-linearity of the feed-forward block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// x Phi(x) with the exact normal CDF (BERT's `gelu`).
    GeluErf,
    /// The tanh approximation (GPT-2's `gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// transformers' `gelu_fast`: the tanh approximation with sqrt(2 / pi) cut to 0.7978845608,
    /// a different function by about 4e-11 relative in the tanh argument.
    GeluFast,
    Relu,
    /// x sigmoid(x) (`silu`, `swish`; the gate of Llama's SwiGLU).
    Silu,
}

impl Activation {
    /// Hugging Face's names for the activations (`hidden_act`, `activation_function`).
    pub fn from_hf_name(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Activation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" => Some(Activation::GeluTanh),
            "gelu_fast" => Some(Activation::GeluFast),
            "relu" => Some(Activation::Relu),
            "silu" | "swish" => Some(Activation::Silu),
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
            Activation::GeluFast => {
                0.5 * x * (1.0 + (x * 0.797_884_560_8 * (1.0 + 0.044715 * x * x)).tanh())
            }
            Activation::Relu => x.max(0.0),
            // x / (1 + e^-x) as torch's silu; for x below about -745 e^-x overflows and the
            // quotient is -0, the limit.
            Activation::Silu => x / (1.0 + (-x).exp()),
        }
    }

    /// The derivative of `apply` at x (ReLU: 0 at 0, as torch's autograd takes it).
    pub fn derivative(self, x: f64) -> f64 {
        let tanh_gelu = |c: f64| {
            let t = (c * (x + 0.044715 * x * x * x)).tanh();
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x)
        };
        match self {
            Activation::GeluErf => {
                let phi = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
                0.5 * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2)) + x * phi
            }
            Activation::GeluTanh => tanh_gelu(0.797_884_560_802_865_4),
            Activation::GeluFast => tanh_gelu(0.797_884_560_8),
            Activation::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::Silu => {
                let s = 1.0 / (1.0 + (-x).exp());
                s * (1.0 + x * (1.0 - s))
            }
        }
    }

    /// A proven upper bound of sup_x |derivative(x)|, its global Lipschitz constant
    /// (docs/bounds.md#block-composition: exact for GELU-erf, a checked grid for the others).
    pub fn derivative_bound(self) -> f64 {
        match self {
            Activation::GeluErf | Activation::GeluTanh | Activation::GeluFast => 1.13,
            Activation::Relu => 1.0,
            Activation::Silu => 1.1,
        }
    }

    /// A proven upper bound of sup_{x != 0} |apply(x) / x|: every activation here is x times a
    /// gate in [0, 1] (Phi, a sigmoid-shaped tanh or a step), so 1.
    pub fn gain_bound(self) -> f64 {
        1.0
    }
}

/// The shape-defining fields of a supported model's config.json, in family-neutral names.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub family: Family,
    /// As written in config.json.
    pub model_type: String,
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub layer_norm_eps: f64,
    pub activation: Activation,
    /// Whether scores are divided by sqrt(dk) (GPT-2's `scale_attn_weights`; always for BERT).
    pub scale_by_head_dim: bool,
    /// Whether the scores of block l are divided by l + 1 as well (GPT-2's
    /// `scale_attn_by_inverse_layer_idx`).
    pub scale_by_inverse_layer: bool,
    /// The rotary families' own fields (None for BERT and GPT-2). `layer_norm_eps` holds their
    /// `rms_norm_eps`, `activation` the gate's activation.
    pub decoder: Option<DecoderConfig>,
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        match &self.decoder {
            Some(d) => d.head_dim,
            None => self.hidden_size / self.num_attention_heads,
        }
    }

    /// The integer t whose 1/sqrt(t) scales the scores of block `layer`: dk, 1 without
    /// `scale_by_head_dim`, times (layer + 1)^2 with `scale_by_inverse_layer` (transformers
    /// divides by sqrt(dk) and by layer + 1, and sqrt(dk) (l + 1) = sqrt(dk (l + 1)^2)).
    pub fn score_divisor_sq(&self, layer: usize) -> Result<usize> {
        let base = if self.scale_by_head_dim {
            self.head_dim()
        } else {
            1
        };
        if !self.scale_by_inverse_layer {
            return Ok(base);
        }
        (layer + 1)
            .checked_mul(layer + 1)
            .and_then(|l2| l2.checked_mul(base))
            .filter(|&t| t as u64 <= 1u64 << 53)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "layer {layer}: the score divisor dk (l + 1)^2 is too large to be exact in f64"
                ))
            })
    }

    /// Reads config.json. `model_type` must name a supported family; `Ok(Err(model_type))`
    /// reports an unsupported one so that the caller can list the checkpoint's tensors too.
    pub fn from_file(path: &Path) -> Result<std::result::Result<Self, String>> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_text(path, &text)
    }

    /// config.json's text, read as `from_file` reads the file; `origin` names it in errors.
    pub fn from_json_text(origin: &Path, text: &str) -> Result<std::result::Result<Self, String>> {
        let json: Value = serde_json::from_str(text).map_err(|e| Error::Format {
            path: origin.to_path_buf(),
            msg: format!("invalid JSON: {e}"),
        })?;
        Self::from_json(&json).map_err(|msg| Error::Format {
            path: origin.to_path_buf(),
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
        let Some(family) = Family::from_model_type(&model_type) else {
            return Ok(Err(model_type));
        };
        super::config_keys::check(family, obj)?;
        if family.is_rotary() {
            let (hidden_size, heads, layers, eps, activation, decoder) =
                super::decoder_config::parse(family, obj)?;
            return Ok(Ok(Self {
                family,
                model_type,
                hidden_size,
                num_attention_heads: heads,
                num_hidden_layers: layers,
                layer_norm_eps: eps,
                activation,
                scale_by_head_dim: true,
                scale_by_inverse_layer: false,
                decoder: Some(decoder),
            }));
        }
        let get = |key: &str| obj.get(key).ok_or_else(|| format!("missing key '{key}'"));
        let uint_value = |key: &str, v: &Value| -> std::result::Result<usize, String> {
            v.as_u64()
                .and_then(|u| usize::try_from(u).ok())
                .ok_or_else(|| format!("key '{key}' must be a non-negative integer, found {v}"))
        };
        let uint = |key: &str| uint_value(key, get(key)?);
        // GPT2Config's attribute_map lets `hidden_size` stand for `n_embd` (and so on); which of
        // two differing values transformers keeps depends on its version, so both are refused.
        let aliased = |key: &str, alias: &str| -> std::result::Result<usize, String> {
            match (obj.get(key), obj.get(alias)) {
                (Some(a), Some(b)) if a != b => Err(format!(
                    "keys '{key}' ({a}) and its alias '{alias}' ({b}) disagree"
                )),
                (_, Some(b)) => uint_value(alias, b),
                _ => uint(key),
            }
        };
        let flag = |key: &str, default: bool| -> std::result::Result<bool, String> {
            match obj.get(key) {
                None => Ok(default),
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| format!("key '{key}' must be true or false, found {v}")),
            }
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
                format!("{key} '{name}' is not supported (gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu, silu)")
            })
        };
        let (hidden_size, heads, layers, layer_norm_eps, activation) = match family {
            Family::Bert => (
                uint("hidden_size")?,
                uint("num_attention_heads")?,
                uint("num_hidden_layers")?,
                eps("layer_norm_eps", 1e-12)?,
                act("hidden_act", "gelu")?,
            ),
            Family::Gpt2 => (
                aliased("n_embd", "hidden_size")?,
                aliased("n_head", "num_attention_heads")?,
                aliased("n_layer", "num_hidden_layers")?,
                eps("layer_norm_epsilon", 1e-5)?,
                act("activation_function", "gelu_new")?,
            ),
            _ => unreachable!("rotary families are read above"),
        };
        let (scale_by_head_dim, scale_by_inverse_layer) = match family {
            Family::Bert => (true, false),
            Family::Gpt2 => (
                flag("scale_attn_weights", true)?,
                flag("scale_attn_by_inverse_layer_idx", false)?,
            ),
            _ => unreachable!("rotary families are read above"),
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
            scale_by_head_dim,
            scale_by_inverse_layer,
            decoder: None,
        }))
    }
}
