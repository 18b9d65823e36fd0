//! Loading real pretrained checkpoints of the supported families through one loader (`Model`),
//! with their tokenizer and forward pass; `load` wraps it for one-layer callers.

pub mod config;
pub mod config_keys;
pub mod decoder;
pub mod decoder_config;
pub mod forward;
pub mod load;
pub mod model;
pub mod source;
pub mod stack;
pub mod tensors;
pub mod tokenize;

pub use crate::attention::norms::LayerNorm as LayerNormParams;
pub use crate::attention::norms::RmsNorm;
pub use config::{Activation, Family, ModelConfig};
pub use config_keys::{KeyRule, Treatment, KEY_RULES};
pub use decoder::{GatedFeedForward, RotaryBlock};
pub use decoder_config::DecoderConfig;
pub use load::{
    load_attention_layer, load_attention_layer_masked, load_bert_layer, BertLayerWeights,
};
pub use model::{Embeddings, FeedForward, Model, ModelLayer, NormPlacement};
pub use source::{load_attention_layer_source, load_sublayer_source, SublayerWeights};
pub use stack::{BlockWeights, FinalNorm, Pool, Scope, StackWeights};
pub use tensors::{NamedTensor, TensorData, TensorStore};
pub use tokenize::TextTokenizer;

/// AttentionLayer::new names weights W_Q..W_O only; add which file and layer they came from.
pub(crate) fn in_layer(path: &std::path::Path, layer: usize, e: crate::Error) -> crate::Error {
    use crate::Error;
    let at = format!("{} layer {layer}", path.display());
    match e {
        Error::NonFinite { what, index, value } => Error::NonFinite {
            what: format!("{at}: {what}"),
            index,
            value,
        },
        Error::Shape {
            what,
            expected,
            found,
        } => Error::Shape {
            what: format!("{at}: {what}"),
            expected,
            found,
        },
        other => other,
    }
}
