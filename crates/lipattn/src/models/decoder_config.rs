//! The config.json keys of the rotary decoder families (Llama, Mistral, Qwen2, Qwen3, Gemma,
//! Gemma 2), with each family's defaults as transformers 5.25's configuration classes give them,
//! so that a config.json transformers accepts means the same model here.

use super::config::{Activation, Family};
use crate::attention::{Rope, RopeScaling};
use serde_json::{Map, Value};

type Obj = Map<String, Value>;
type Res<T> = std::result::Result<T, String>;

/// Everything of a rotary decoder's config that changes its computation, beyond the sizes
/// `ModelConfig` holds for every family.
#[derive(Clone, Debug)]
pub struct DecoderConfig {
    /// Key/value heads (`num_key_value_heads`): heads share them in groups of
    /// `num_attention_heads / num_key_value_heads`.
    pub kv_heads: usize,
    /// `head_dim`, which need not be hidden_size / num_attention_heads.
    pub head_dim: usize,
    pub rope: Rope,
    /// Per layer, the sliding window (query i sees keys j <= i with i - j < w), None: all keys
    /// j <= i.
    pub windows: Vec<Option<usize>>,
    /// Biases on the query, key and value projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Biases on the gate, up and down projections.
    pub mlp_bias: bool,
    /// Qwen3's RMSNorm on each head's queries and keys, before the rotation.
    pub qk_norm: bool,
    /// Gemma's RMSNorms multiply by (1 + w).
    pub unit_offset_norm: bool,
    /// Gemma's embeddings are multiplied by sqrt(hidden_size).
    pub scale_embeddings: bool,
    /// Gemma 2's norms after the attention and after the feed-forward, before each residual add.
    pub sandwich_norms: bool,
    /// Gemma 2's `attn_logit_softcapping`: scores s become c tanh(s / c).
    pub softcap: Option<f64>,
    /// The scores are divided by sqrt of this: head_dim, or Gemma 2's `query_pre_attn_scalar`.
    pub score_divisor_sq: usize,
}

/// The keys read by every rotary family, with their defaults per family.
struct Defaults {
    kv_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: usize,
    activation_key: &'static str,
}

fn defaults(family: Family) -> Defaults {
    let (kv_heads, head_dim, max_position_embeddings, activation_key) = match family {
        Family::Llama => (None, None, 2048, "hidden_act"),
        Family::Mistral => (Some(8), None, 4096 * 32, "hidden_act"),
        Family::Qwen2 => (Some(32), None, 32768, "hidden_act"),
        Family::Qwen3 => (Some(32), Some(128), 32768, "hidden_act"),
        Family::Gemma => (Some(16), Some(256), 8192, "hidden_act"),
        Family::Gemma2 => (Some(4), Some(256), 8192, "hidden_activation"),
        Family::Bert | Family::Gpt2 => unreachable!("not a rotary family"),
    };
    Defaults {
        kv_heads,
        head_dim,
        max_position_embeddings,
        activation_key,
    }
}

fn uint(key: &str, v: &Value) -> Res<usize> {
    v.as_u64()
        .and_then(|u| usize::try_from(u).ok())
        .ok_or_else(|| format!("key '{key}' must be a non-negative integer, found {v}"))
}

/// A key that may be absent or null (both give `default`).
fn opt_uint(obj: &Obj, key: &str, default: Option<usize>) -> Res<Option<usize>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => uint(key, v).map(Some),
    }
}

fn number(key: &str, v: &Value) -> Res<f64> {
    v.as_f64()
        .filter(|x| x.is_finite())
        .ok_or_else(|| format!("key '{key}' must be a finite number, found {v}"))
}

fn flag(obj: &Obj, key: &str, default: bool) -> Res<bool> {
    match obj.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| format!("key '{key}' must be true or false, found {v}")),
    }
}

/// The shared part of `ModelConfig` for a rotary family: (hidden_size, heads, layers,
/// rms_norm_eps, activation) and the decoder's own fields.
pub(crate) fn parse(
    family: Family,
    obj: &Obj,
) -> Res<(usize, usize, usize, f64, Activation, DecoderConfig)> {
    let d = defaults(family);
    let required = |key: &str| -> Res<usize> {
        uint(
            key,
            obj.get(key).ok_or_else(|| format!("missing key '{key}'"))?,
        )
    };
    let hidden_size = required("hidden_size")?;
    let heads = required("num_attention_heads")?;
    let layers = required("num_hidden_layers")?;
    if heads == 0 || hidden_size == 0 {
        return Err("hidden_size and num_attention_heads must be positive".into());
    }
    let eps = match obj.get("rms_norm_eps") {
        None => 1e-6,
        Some(v) => number("rms_norm_eps", v).and_then(|e| {
            (e >= 0.0)
                .then_some(e)
                .ok_or_else(|| format!("key 'rms_norm_eps' must be non-negative, found {v}"))
        })?,
    };
    let activation = {
        let key = d.activation_key;
        let default = if matches!(family, Family::Gemma | Family::Gemma2) {
            "gelu_pytorch_tanh"
        } else {
            "silu"
        };
        let name = match obj.get(key) {
            None => default,
            Some(v) => v
                .as_str()
                .ok_or_else(|| format!("key '{key}' must be a string, found {v}"))?,
        };
        // GemmaConfig replaces the legacy "gelu" of the official releases by the tanh
        // approximation they were trained with.
        let name = if family == Family::Gemma && name == "gelu" {
            "gelu_pytorch_tanh"
        } else {
            name
        };
        Activation::from_hf_name(name).ok_or_else(|| {
            format!("{key} '{name}' is not supported (silu, gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu)")
        })?
    };
    let kv_heads = opt_uint(obj, "num_key_value_heads", d.kv_heads)?.unwrap_or(heads);
    if kv_heads == 0 || heads % kv_heads != 0 {
        return Err(format!(
            "key 'num_key_value_heads' is {kv_heads}: it must divide num_attention_heads ({heads})"
        ));
    }
    let head_dim = match obj.get("head_dim") {
        // Mistral and Llama read `head_dim or hidden_size // heads`: null and 0 fall back.
        None | Some(Value::Null) => d.head_dim.unwrap_or(hidden_size / heads),
        Some(v) => match uint("head_dim", v)? {
            0 if matches!(family, Family::Llama | Family::Mistral) => hidden_size / heads,
            0 => return Err("key 'head_dim' is 0".into()),
            h => h,
        },
    };
    if head_dim == 0 {
        return Err(format!(
            "hidden_size {hidden_size} is smaller than num_attention_heads {heads}, so head_dim is 0"
        ));
    }
    // The projections are heads * head_dim wide; a size past usize is no checkpoint.
    if heads.checked_mul(head_dim).is_none() {
        return Err(format!(
            "key 'head_dim' is {head_dim}: {heads} heads of it overflow the address space"
        ));
    }
    let max_pos = opt_uint(
        obj,
        "max_position_embeddings",
        Some(d.max_position_embeddings),
    )?
    .unwrap_or(0);
    let rope = rope(obj, head_dim, max_pos)?;
    let windows = windows(family, obj, layers)?;
    let attention_bias = match family {
        Family::Llama | Family::Qwen3 | Family::Gemma | Family::Gemma2 => {
            flag(obj, "attention_bias", false)?
        }
        _ => false,
    };
    let (qkv_bias, o_bias) = match family {
        Family::Qwen2 => (true, false),
        _ => (attention_bias, attention_bias),
    };
    let mlp_bias = family == Family::Llama && flag(obj, "mlp_bias", false)?;
    let (softcap, score_divisor_sq) = match family {
        Family::Gemma2 => {
            let softcap = match obj.get("attn_logit_softcapping") {
                None => Some(50.0),
                Some(Value::Null) => None,
                Some(v) => {
                    let c = number("attn_logit_softcapping", v)?;
                    if c <= 0.0 {
                        return Err(format!(
                            "key 'attn_logit_softcapping' must be positive or null, found {v}"
                        ));
                    }
                    Some(c)
                }
            };
            let scalar = match obj.get("query_pre_attn_scalar") {
                None => 256,
                Some(v) => uint("query_pre_attn_scalar", v)?,
            };
            if scalar == 0 {
                return Err("key 'query_pre_attn_scalar' is 0".into());
            }
            (softcap, scalar)
        }
        _ => (None, head_dim),
    };
    let gemma = matches!(family, Family::Gemma | Family::Gemma2);
    Ok((
        hidden_size,
        heads,
        layers,
        eps,
        activation,
        DecoderConfig {
            kv_heads,
            head_dim,
            rope,
            windows,
            qkv_bias,
            o_bias,
            mlp_bias,
            qk_norm: family == Family::Qwen3,
            unit_offset_norm: gemma,
            scale_embeddings: gemma,
            sandwich_norms: family == Family::Gemma2,
            softcap,
            score_divisor_sq,
        },
    ))
}

/// `rope_parameters` (transformers 5) or the legacy `rope_scaling` with the top-level
/// `rope_theta`, read as transformers' `convert_rope_params_to_dict` and
/// `standardize_rope_params` do: `rope_scaling` wins when both are given, `rope_type` (or its
/// old name `type`) defaults to "default", `rope_theta` to the top-level key, then 10000.
fn rope(obj: &Obj, head_dim: usize, max_pos: usize) -> Res<Rope> {
    let (key, params) = match (obj.get("rope_scaling"), obj.get("rope_parameters")) {
        (Some(v), _) if !is_empty(v) => ("rope_scaling", v),
        (_, Some(v)) => ("rope_parameters", v),
        (Some(v), None) => ("rope_scaling", v),
        (None, None) => ("rope_parameters", &Value::Null),
    };
    let empty = Map::new();
    let params = match params {
        Value::Null => &empty,
        Value::Object(m) => m,
        v => return Err(format!("key '{key}' must be an object or null, found {v}")),
    };
    let field = |name: &str| params.get(name).filter(|v| !v.is_null());
    let num = |name: &str| -> Res<Option<f64>> {
        field(name)
            .map(|v| number(&format!("{key}.{name}"), v))
            .transpose()
    };
    let need = |name: &str, rope_type: &str| -> Res<f64> {
        num(name)?.ok_or_else(|| format!("key '{key}' of rope_type '{rope_type}' lacks '{name}'"))
    };
    let theta = match field("rope_theta") {
        Some(v) => number(&format!("{key}.rope_theta"), v)?,
        None => match obj.get("rope_theta").filter(|v| !v.is_null()) {
            Some(v) => number("rope_theta", v)?,
            None => 10_000.0,
        },
    };
    if theta <= 0.0 {
        return Err(format!("rope_theta must be positive, found {theta}"));
    }
    // Llama's rotation covers the whole head (`rotate_half` of all head_dim features); a
    // partial factor sizes transformers' frequencies for part of it, which its
    // apply_rotary_pos_emb cannot broadcast.
    // (The top-level key is refused by the key table.)
    if let Some(v) = field("partial_rotary_factor") {
        if v.as_f64() != Some(1.0) {
            return Err(format!(
                "config key '{key}.partial_rotary_factor' is {v}: a rotation of part of each head, which these families do not compute (supported: 1.0 or absent)"
            ));
        }
    }
    let rope_type = match field("rope_type").or_else(|| field("type")) {
        None => "default",
        Some(Value::String(s)) => s.as_str(),
        Some(v) => return Err(format!("key '{key}.rope_type' must be a string, found {v}")),
    };
    // A top-level original_max_position_embeddings replaces the one in the rope parameters
    // (standardize_rope_params, for Phi-3's configs).
    let original = |rope_type: &str| -> Res<usize> {
        if let Some(v) = obj.get("original_max_position_embeddings") {
            return uint("original_max_position_embeddings", v);
        }
        match field("original_max_position_embeddings") {
            Some(v) => uint(&format!("{key}.original_max_position_embeddings"), v),
            None if max_pos > 0 => Ok(max_pos),
            None => Err(format!(
                "key '{key}' of rope_type '{rope_type}' needs original_max_position_embeddings or max_position_embeddings"
            )),
        }
    };
    let scaling = match rope_type {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear {
            factor: need("factor", rope_type)?,
        },
        // transformers' dynamic NTK scaling grows the base once the sequence passes
        // max_position_embeddings (not original_max_position_embeddings, which it never reads).
        "dynamic" => RopeScaling::Dynamic {
            factor: need("factor", rope_type)?,
            original_max_position_embeddings: max_pos,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor", rope_type)?,
            low_freq_factor: need("low_freq_factor", rope_type)?,
            high_freq_factor: need("high_freq_factor", rope_type)?,
            original_max_position_embeddings: original(rope_type)?,
        },
        "yarn" => {
            let orig = original(rope_type)?;
            // A missing factor is max_position_embeddings / original (DeepSeek's convention);
            // beta_fast and beta_slow are read with `or`, so 0 means the default too.
            let factor = match num("factor")? {
                Some(f) => f,
                None => max_pos as f64 / orig as f64,
            };
            let or = |name: &str, default: f64| -> Res<f64> {
                Ok(num(name)?.filter(|&b| b != 0.0).unwrap_or(default))
            };
            // transformers tests `rope_parameters.get("truncate", True)` for truth: null is
            // false, absent true.
            let truncate = match params.get("truncate") {
                None => true,
                Some(Value::Null) => false,
                Some(v) => v.as_bool().ok_or_else(|| {
                    format!("key '{key}.truncate' must be true or false, found {v}")
                })?,
            };
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: orig,
                beta_fast: or("beta_fast", 32.0)?,
                beta_slow: or("beta_slow", 1.0)?,
                mscale: num("mscale")?,
                mscale_all_dim: num("mscale_all_dim")?,
                attention_factor: num("attention_factor")?,
                truncate,
            }
        }
        other => {
            return Err(format!(
                "config key '{key}' has rope_type '{other}', which lipattn does not compute (supported: default, linear, dynamic, llama3, yarn)"
            ))
        }
    };
    Ok(Rope {
        theta,
        rotary_dim: head_dim,
        max_position_embeddings: max_pos,
        scaling,
    })
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

/// The window of each layer, as each family's configuration class and modeling code choose it:
/// Llama and Gemma never window; Mistral windows every layer by `sliding_window`; Qwen2 and
/// Qwen3 only with `use_sliding_window`, on the layers `layer_types` marks (by default those
/// from `max_window_layers` on); Gemma 2 on the layers `layer_types` marks (by default the
/// even ones).
fn windows(family: Family, obj: &Obj, layers: usize) -> Res<Vec<Option<usize>>> {
    let sliding_window = |default: Option<usize>| -> Res<Option<usize>> {
        // null is no window, absent the family's default.
        let w = match obj.get("sliding_window") {
            None => default,
            Some(Value::Null) => None,
            Some(v) => Some(uint("sliding_window", v)?),
        };
        match w {
            Some(0) => Err("key 'sliding_window' is 0: no key would be visible".into()),
            w => Ok(w),
        }
    };
    let from_types = |window: Option<usize>,
                      default: &dyn Fn(usize) -> bool|
     -> Res<Vec<Option<usize>>> {
        let sliding: Vec<bool> = match obj.get("layer_types") {
            None | Some(Value::Null) => (0..layers).map(default).collect(),
            Some(Value::Array(types)) => {
                if types.len() != layers {
                    return Err(format!(
                        "key 'layer_types' lists {} layers, num_hidden_layers is {layers}",
                        types.len()
                    ));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        Some("full_attention") => Ok(false),
                        Some("sliding_attention") => Ok(true),
                        _ => Err(format!(
                            "key 'layer_types' holds {t}, which lipattn does not compute (supported: \"full_attention\", \"sliding_attention\")"
                        )),
                    })
                    .collect::<Res<_>>()?
            }
            Some(v) => return Err(format!("key 'layer_types' must be a list, found {v}")),
        };
        sliding
            .into_iter()
            .enumerate()
            .map(|(l, s)| match (s, window) {
                (false, _) => Ok(None),
                (true, Some(w)) => Ok(Some(w)),
                (true, None) => Err(format!(
                    "key 'layer_types' marks layer {l} 'sliding_attention' but the config has no sliding_window (null, or use_sliding_window false)"
                )),
            })
            .collect()
    };
    match family {
        Family::Llama | Family::Gemma => Ok(vec![None; layers]),
        Family::Mistral => Ok(vec![sliding_window(Some(4096))?; layers]),
        Family::Qwen2 | Family::Qwen3 => {
            let window = if flag(obj, "use_sliding_window", false)? {
                sliding_window(Some(4096))?
            } else {
                None
            };
            let first = match obj.get("max_window_layers") {
                None => 28,
                Some(v) => uint("max_window_layers", v)?,
            };
            from_types(window, &|l| window.is_some() && l >= first)
        }
        Family::Gemma2 => from_types(sliding_window(Some(4096))?, &|l| l % 2 == 0),
        Family::Bert | Family::Gpt2 => unreachable!("not a rotary family"),
    }
}
