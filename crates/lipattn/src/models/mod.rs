//! Loading real pretrained checkpoints: single attention layers (`bert`) and whole models of
//! the supported families (`model`), with their tokenizer and forward pass.

pub mod bert;
pub mod config;
pub mod forward;
pub mod model;
pub mod safetensors_io;
pub mod sharded;
pub mod tokenize;

pub use bert::{
    load_attention_layer, load_attention_layer_masked, load_bert_layer, BertCheckpoint,
    BertLayerWeights, LayerNormParams,
};
pub use config::{Activation, BertConfig, Family, ModelConfig};
pub use model::{Embeddings, FeedForward, Model, ModelLayer, NormPlacement};
pub use safetensors_io::TensorFile;
pub use sharded::TensorStore;
pub use tokenize::TextTokenizer;
