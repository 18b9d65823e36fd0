//! The few fields of a Hugging Face `config.json` that fix the shapes of a BERT layer.

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    pub model_type: String,
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub layer_norm_eps: f64,
}

impl BertConfig {
    /// Width of one head; hidden_size is checked to be a multiple of the head count on load.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Reads `path` (a config.json). Every key is required: a default filled in silently
    /// would change the layer that gets analysed.
    pub fn from_file(path: &Path) -> Result<Self> {
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

    fn from_json(json: &Value) -> std::result::Result<Self, String> {
        let obj = json
            .as_object()
            .ok_or("expected a JSON object at the top level")?;
        let get = |key: &str| obj.get(key).ok_or_else(|| format!("missing key '{key}'"));
        let uint = |key: &str| -> std::result::Result<usize, String> {
            let v = get(key)?;
            v.as_u64()
                .and_then(|u| usize::try_from(u).ok())
                .ok_or_else(|| format!("key '{key}' must be a non-negative integer, found {v}"))
        };
        let model_type = get("model_type")?
            .as_str()
            .ok_or("key 'model_type' must be a string")?
            .to_string();
        let hidden_size = uint("hidden_size")?;
        let num_attention_heads = uint("num_attention_heads")?;
        let num_hidden_layers = uint("num_hidden_layers")?;
        let eps_value = get("layer_norm_eps")?;
        let layer_norm_eps = eps_value
            .as_f64()
            .filter(|e| e.is_finite() && *e >= 0.0)
            .ok_or_else(|| {
                format!("key 'layer_norm_eps' must be a non-negative number, found {eps_value}")
            })?;
        if num_attention_heads == 0 {
            return Err("num_attention_heads is 0".into());
        }
        // Written without is_multiple_of, which is newer than the workspace's rust-version.
        let remainder = hidden_size % num_attention_heads;
        if hidden_size == 0 || remainder != 0 {
            return Err(format!(
                "hidden_size {hidden_size} is not a positive multiple of num_attention_heads {num_attention_heads}"
            ));
        }
        Ok(Self {
            model_type,
            hidden_size,
            num_attention_heads,
            num_hidden_layers,
            layer_norm_eps,
        })
    }
}
