//! BERT encoder checkpoints in the Hugging Face layout (`config.json` + `model.safetensors`).
//!
//! Tensor names (with or without the `bert.` prefix that `BertForPreTraining`-style exports add):
//! `encoder.layer.L.attention.self.{query,key,value}.{weight,bias}`,
//! `encoder.layer.L.attention.output.dense.{weight,bias}` (W_O),
//! `encoder.layer.L.attention.output.LayerNorm.{weight,bias}`, `embeddings.LayerNorm.{weight,bias}`.
//! Linear weights are stored [out, in], which is already the `AttentionLayer` convention, and
//! head h owns rows h*dk..(h+1)*dk, which is how BERT's `transpose_for_scores` splits them.

use super::config::BertConfig;
use super::safetensors_io::TensorFile;
use crate::attention::{AttentionLayer, Kernel};
use crate::error::{check_finite, check_index, Error, Result};
use std::path::{Path, PathBuf};

pub use crate::attention::norms::LayerNorm as LayerNormParams;

/// One encoder layer's attention sublayer and the LayerNorm that follows its residual add
/// (BERT is post-LayerNorm: h = LN(x + Attn(x))).
#[derive(Clone, Debug)]
pub struct BertLayerWeights {
    pub layer: usize,
    pub attention: AttentionLayer<f64>,
    pub attention_layer_norm: LayerNormParams,
}

/// An opened checkpoint: config, tensors and the detected naming prefix. Opening reads the
/// whole safetensors file once, so loading several layers should go through one of these.
pub struct BertCheckpoint {
    dir: PathBuf,
    config: BertConfig,
    tensors: TensorFile,
    prefix: &'static str,
}

/// Prefixes tried in order; the first whose layer-0 query weight, or failing that any
/// encoder layer, is present wins.
const PREFIXES: [&str; 2] = ["bert.", ""];

impl BertCheckpoint {
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "model directory not found",
                ),
            });
        }
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        if config.model_type != "bert" {
            return Err(Error::Model(format!(
                "{}: model_type '{}' is not supported (this loader reads BERT encoders, model_type 'bert')",
                dir.join("config.json").display(),
                config.model_type
            )));
        }
        let tensors = TensorFile::open(&dir.join("model.safetensors"))?;
        let prefix = detect_prefix(&tensors)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            tensors,
            prefix,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// "bert." or "" depending on how the checkpoint names its tensors.
    pub fn prefix(&self) -> &str {
        self.prefix
    }

    pub fn tensors(&self) -> &TensorFile {
        &self.tensors
    }

    pub fn num_layers(&self) -> usize {
        self.config.num_hidden_layers
    }

    fn check_layer(&self, layer: usize) -> Result<()> {
        check_index("layer", layer, self.config.num_hidden_layers, || {
            format!("the model in {}", self.dir.display())
        })
        .map(|_| ())
    }

    fn name(&self, layer: usize, suffix: &str) -> String {
        format!("{}encoder.layer.{layer}.{suffix}", self.prefix)
    }

    /// The attention sublayer of encoder layer `layer` (dot-product kernel), without residual
    /// or LayerNorm.
    pub fn attention_layer(&self, layer: usize) -> Result<AttentionLayer<f64>> {
        self.check_layer(layer)?;
        let d = self.config.hidden_size;
        let t = &self.tensors;
        let w = |s: &str| t.matrix(&self.name(layer, s), d, d);
        let b = |s: &str| t.vector(&self.name(layer, s), d);
        AttentionLayer::new(
            self.config.num_attention_heads,
            Kernel::Dot,
            w("attention.self.query.weight")?,
            b("attention.self.query.bias")?,
            w("attention.self.key.weight")?,
            b("attention.self.key.bias")?,
            w("attention.self.value.weight")?,
            b("attention.self.value.bias")?,
            w("attention.output.dense.weight")?,
            b("attention.output.dense.bias")?,
        )
        .map_err(|e| super::in_layer(self.tensors.path(), layer, e))
    }

    /// Attention sublayer plus the LayerNorm applied after its residual connection.
    pub fn layer(&self, layer: usize) -> Result<BertLayerWeights> {
        let attention = self.attention_layer(layer)?;
        let attention_layer_norm =
            self.layer_norm(&self.name(layer, "attention.output.LayerNorm"))?;
        Ok(BertLayerWeights {
            layer,
            attention,
            attention_layer_norm,
        })
    }

    /// The LayerNorm after the embedding sum, which fixes the scale of layer 0's inputs.
    pub fn embeddings_layer_norm(&self) -> Result<LayerNormParams> {
        self.layer_norm(&format!("{}embeddings.LayerNorm", self.prefix))
    }

    fn layer_norm(&self, stem: &str) -> Result<LayerNormParams> {
        let d = self.config.hidden_size;
        let gamma = self.tensors.vector(&format!("{stem}.weight"), d)?;
        let beta = self.tensors.vector(&format!("{stem}.bias"), d)?;
        check_finite(&format!("{stem}.weight"), gamma.iter().copied())?;
        check_finite(&format!("{stem}.bias"), beta.iter().copied())?;
        Ok(LayerNormParams {
            gamma,
            beta,
            eps: self.config.layer_norm_eps,
        })
    }
}

fn detect_prefix(tensors: &TensorFile) -> Result<&'static str> {
    let probe = "encoder.layer.0.attention.self.query.weight";
    if let Some(p) = PREFIXES
        .iter()
        .find(|p| tensors.contains(&format!("{p}{probe}")))
    {
        return Ok(p);
    }
    // Layer 0 may be absent from a truncated export while others exist; the missing-tensor
    // error then names exactly what is missing.
    if let Some(p) = PREFIXES.iter().find(|p| {
        tensors
            .names()
            .iter()
            .any(|n| n.starts_with(&format!("{p}encoder.layer.")))
    }) {
        return Ok(p);
    }
    Err(Error::Model(format!(
        "{}: not a BERT-style checkpoint: no tensor named like '{probe}' (with or without the 'bert.' prefix); found {}",
        tensors.path().display(),
        tensors.sample_names()
    )))
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
    let model = super::Model::open(dir)?;
    Ok((model.attention_layer(layer)?, model.is_causal()))
}

/// Attention sublayer and its post-residual LayerNorm for encoder layer `layer`.
pub fn load_bert_layer(dir: &Path, layer: usize) -> Result<BertLayerWeights> {
    BertCheckpoint::open(dir)?.layer(layer)
}
