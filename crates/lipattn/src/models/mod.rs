//! Loading attention layers from real pretrained checkpoints.

pub mod bert;
pub mod config;
pub mod safetensors_io;

pub use bert::{
    load_attention_layer, load_bert_layer, BertCheckpoint, BertLayerWeights, LayerNormParams,
};
pub use config::BertConfig;
pub use safetensors_io::TensorFile;
