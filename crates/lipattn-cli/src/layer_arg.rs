//! The `--model DIR --layer L` pair shared by the commands that analyse one attention layer.

use clap::Args;
use lipattn::models::SublayerWeights;
use lipattn::{AttentionLayer, LayerSource};
use std::path::PathBuf;

#[derive(Args)]
pub struct LayerArg {
    /// Hugging Face model directory (config.json with model.safetensors or a sharded index;
    /// BERT or GPT-2 family; `local` also takes the rotary families).
    #[arg(long)]
    pub model: PathBuf,
    /// Layer index (0-based).
    #[arg(long)]
    pub layer: usize,
}

impl LayerArg {
    /// The layer's attention sublayer and its source (the mask and kernel the model computes it
    /// with).
    pub fn load(&self) -> lipattn::Result<(AttentionLayer<f64>, LayerSource)> {
        lipattn::models::load_attention_layer_source(&self.model, self.layer)
    }

    /// The layer's attention sublayer of any family (rotary ones included), with its source.
    pub fn load_sublayer(&self) -> lipattn::Result<(SublayerWeights, LayerSource)> {
        lipattn::models::load_sublayer_source(&self.model, self.layer)
    }
}
