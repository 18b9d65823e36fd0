//! One-call loaders of a single layer from a checkpoint directory, for commands that analyse one
//! layer and need no `Model` afterwards. Each opens the directory anew, so loading several
//! layers should go through one `Model` instead.

use super::model::{Model, NormPlacement};
use super::LayerNormParams;
use crate::attention::AttentionLayer;
use crate::error::{Error, Result};
use std::path::Path;

/// One encoder layer's attention sublayer and the LayerNorm that follows its residual add
/// (BERT is post-LayerNorm: h = LN(x + Attn(x))).
#[derive(Clone, Debug)]
pub struct BertLayerWeights {
    pub layer: usize,
    pub attention: AttentionLayer<f64>,
    pub attention_layer_norm: LayerNormParams,
}

/// The attention sublayer of layer `layer` of the checkpoint in `dir`: any family `Model` reads
/// (BERT, GPT-2), single file or sharded.
pub fn load_attention_layer(dir: &Path, layer: usize) -> Result<AttentionLayer<f64>> {
    Ok(load_attention_layer_masked(dir, layer)?.0)
}

/// The attention sublayer of layer `layer` and whether the model applies a causal mask there
/// (GPT-2 family), so that commands analyse the operator the model actually computes.
pub fn load_attention_layer_masked(
    dir: &Path,
    layer: usize,
) -> Result<(AttentionLayer<f64>, bool)> {
    let model = Model::open(dir)?;
    Ok((model.attention_layer(layer)?, model.is_causal()))
}

/// Attention sublayer and its post-residual LayerNorm for encoder layer `layer`.
///
/// Post-LayerNorm checkpoints only: in a pre-LayerNorm model (GPT-2) the LayerNorm beside the
/// attention precedes it, so calling it "post-residual" would be wrong; `Model::layer` gives
/// such models' LayerNorms with their placement.
pub fn load_bert_layer(dir: &Path, layer: usize) -> Result<BertLayerWeights> {
    let model = Model::open(dir)?;
    if model.norm_placement() != NormPlacement::Post {
        return Err(Error::Model(format!(
            "{}: model_type '{}' applies its LayerNorms before each sublayer; load_bert_layer reads post-LayerNorm encoders (model_type 'bert'), use Model::layer",
            dir.display(),
            model.config().model_type
        )));
    }
    Ok(BertLayerWeights {
        layer,
        attention: model.attention_layer(layer)?,
        attention_layer_norm: model.attention_norm(layer)?,
    })
}
