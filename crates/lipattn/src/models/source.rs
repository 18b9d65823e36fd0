//! A checkpoint layer's [`LayerSource`]: its origin and the mask and kernel its model computes it
//! with, the default operator of every command run on it.

use super::config::Family;
use super::model::Model;
use crate::attention::{AttentionLayer, Kernel, RotaryAttention};
use crate::error::Result;
use crate::operator::LayerSource;
use std::path::Path;

impl Family {
    /// The family as the operator descriptions name it.
    pub fn display_name(self) -> &'static str {
        match self {
            Family::Bert => "BERT",
            Family::Gpt2 => "GPT-2",
            Family::Llama => "Llama",
            Family::Mistral => "Mistral",
            Family::Qwen2 => "Qwen2",
            Family::Qwen3 => "Qwen3",
            Family::Gemma => "Gemma",
            Family::Gemma2 => "Gemma 2",
        }
    }
}

impl Model {
    /// The source of layer `layer`'s attention sublayer (unchecked index: the caller loads it).
    pub fn layer_source(&self, layer: usize) -> LayerSource {
        LayerSource::new(
            format!(
                "{} layer {layer} self-attention of {}",
                self.family().display_name(),
                self.origin()
            ),
            self.is_causal(),
            Kernel::Dot,
        )
    }
}

/// The attention sublayer of layer `layer` of the checkpoint in `dir`, with its source.
pub fn load_attention_layer_source(
    dir: &Path,
    layer: usize,
) -> Result<(AttentionLayer<f64>, LayerSource)> {
    let model = Model::open(dir)?;
    Ok((model.attention_layer(layer)?, model.layer_source(layer)))
}

/// A checkpoint's attention sublayer, whichever kind its family has (boxed: the two differ in
/// size by hundreds of bytes).
pub enum SublayerWeights {
    /// BERT and GPT-2.
    Plain(Box<AttentionLayer<f64>>),
    /// The rotary families, with the `model_type` their reports name.
    Rotary {
        layer: Box<RotaryAttention>,
        family: &'static str,
    },
}

/// The attention sublayer of layer `layer` of the checkpoint in `dir`, of any family, with its
/// source.
pub fn load_sublayer_source(dir: &Path, layer: usize) -> Result<(SublayerWeights, LayerSource)> {
    let model = Model::open(dir)?;
    Ok((model.sublayer(layer)?, model.layer_source(layer)))
}

impl SublayerWeights {
    /// Query head h's contribution alone (no output bias), of either kind.
    pub fn head(&self, h: usize) -> Result<Self> {
        Ok(match self {
            SublayerWeights::Plain(layer) => {
                SublayerWeights::Plain(Box::new(layer.head(h, false)?))
            }
            SublayerWeights::Rotary { layer, family } => SublayerWeights::Rotary {
                layer: Box::new(layer.head(h)?),
                family,
            },
        })
    }
}

impl Model {
    /// The attention sublayer of block `layer`, of any family.
    pub fn sublayer(&self, layer: usize) -> Result<SublayerWeights> {
        Ok(if self.family().is_rotary() {
            SublayerWeights::Rotary {
                layer: Box::new(self.rotary_attention(layer)?),
                family: self.family().name(),
            }
        } else {
            SublayerWeights::Plain(Box::new(self.attention_layer(layer)?))
        })
    }
}
