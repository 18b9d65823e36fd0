//! The `--model DIR --layer L` pair shared by the commands that analyse one attention layer.

use clap::Args;
use lipattn::{AttentionLayer, LayerSource};
use std::path::PathBuf;

#[derive(Args)]
pub struct LayerArg {
    /// Hugging Face model directory (config.json with model.safetensors or a sharded index;
    /// BERT or GPT-2 family).
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
}
