//! A whole transformer checkpoint, whatever its family: per layer the attention sublayer, its
//! masking, the LayerNorms in their placement and the feed-forward block, with the tensor
//! layouts of each family turned into the PyTorch Linear convention (y = x W^T + b).
//!
//! BERT (`model_type: bert`, optional `bert.` prefix): Linear weights are [out, in] already.
//! GPT-2 (`model_type: gpt2`, optional `transformer.` prefix): Conv1D weights are [in, out] and
//! `c_attn` holds Q, K and V side by side along its output axis; both are transposed and split
//! on load, so every caller sees the same `AttentionLayer` convention.

use super::config::{Activation, Family, ModelConfig};
use super::tensors::{NamedTensor, TensorStore};
use super::LayerNormParams;
use crate::attention::forward::affine;
use crate::attention::{AttentionLayer, Kernel};
use crate::derivatives::memory::{attention_output, AttentionMemory};
use crate::error::{check_finite, check_index, Error, Result};
use faer::{Mat, MatRef};
use std::path::{Path, PathBuf};

/// Where a block's LayerNorms sit relative to its residual connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NormPlacement {
    /// BERT: h -> LN(h + f(h)) for each sublayer f.
    Post,
    /// GPT-2: h -> h + f(LN(h)) for each sublayer f, and a final LayerNorm after the last block.
    Pre,
}

impl Family {
    pub fn norm_placement(self) -> NormPlacement {
        match self {
            Family::Bert => NormPlacement::Post,
            _ => NormPlacement::Pre,
        }
    }

    /// Whether token i attends to tokens 0..=i only.
    pub fn causal(self) -> bool {
        !matches!(self, Family::Bert)
    }

    fn prefixes(self) -> &'static [&'static str] {
        match self {
            Family::Bert => &["bert.", ""],
            Family::Gpt2 => &["transformer.", ""],
            _ => Family::ROTARY_PREFIXES,
        }
    }

    /// A tensor every checkpoint of the family has, without prefix.
    fn probe(self) -> &'static str {
        match self {
            Family::Bert => "encoder.layer.0.attention.self.query.weight",
            Family::Gpt2 => "h.0.attn.c_attn.weight",
            _ => "layers.0.self_attn.q_proj.weight",
        }
    }

    /// The attention input weight of layer `l`, without prefix: present in every layer.
    fn layer_probe(self, l: usize) -> String {
        match self {
            Family::Bert => format!("encoder.layer.{l}.attention.self.query.weight"),
            Family::Gpt2 => format!("h.{l}.attn.c_attn.weight"),
            _ => format!("layers.{l}.self_attn.q_proj.weight"),
        }
    }
}

/// x -> act(x W_in^T + b_in) W_out^T + b_out on each token.
#[derive(Clone, Debug)]
pub struct FeedForward {
    /// (ffn x d)
    pub w_in: Mat<f64>,
    pub b_in: Vec<f64>,
    /// (d x ffn)
    pub w_out: Mat<f64>,
    pub b_out: Vec<f64>,
    pub activation: Activation,
}

impl FeedForward {
    pub fn forward(&self, x: MatRef<'_, f64>) -> Result<Mat<f64>> {
        if x.ncols() != self.w_in.ncols() {
            return Err(Error::shape(
                "feed-forward input width",
                self.w_in.ncols().to_string(),
                x.ncols().to_string(),
            ));
        }
        let mut hidden = affine(x, self.w_in.as_ref(), &self.b_in);
        for j in 0..hidden.ncols() {
            for v in hidden.col_as_slice_mut(j) {
                *v = self.activation.apply(*v);
            }
        }
        Ok(affine(hidden.as_ref(), self.w_out.as_ref(), &self.b_out))
    }
}

/// Everything one transformer block computes, with its family's conventions made explicit.
#[derive(Clone, Debug)]
pub struct ModelLayer {
    pub index: usize,
    pub placement: NormPlacement,
    pub attention: AttentionLayer<f64>,
    pub causal: bool,
    /// The LayerNorm whose output the attention reads. Post: the previous block's
    /// `feed_forward_norm` (or the embeddings LayerNorm for block 0), already applied to the
    /// hidden state entering the block. Pre: this block's `attention_norm`.
    pub attention_input_norm: LayerNormParams,
    /// Post: applied after the attention residual (BERT `attention.output.LayerNorm`).
    /// Pre: applied to the attention input (GPT-2 `ln_1`).
    pub attention_norm: LayerNormParams,
    /// Post: applied after the feed-forward residual (BERT `output.LayerNorm`).
    /// Pre: applied to the feed-forward input (GPT-2 `ln_2`).
    pub feed_forward_norm: LayerNormParams,
    pub feed_forward: FeedForward,
}

impl ModelLayer {
    /// The attention sublayer's input for hidden state `h` entering this block.
    pub fn attention_input(&self, h: MatRef<'_, f64>) -> Result<Mat<f64>> {
        match self.placement {
            NormPlacement::Post => Ok(h.to_owned()),
            NormPlacement::Pre => self.attention_norm.apply(h),
        }
    }

    /// The attention sublayer's output at its input `x`, on the dense state when it fits the
    /// memory budget and on the streaming one otherwise (`derivatives::AttentionMemory::Auto`),
    /// so that long sequences pass through the model in memory linear in n.
    fn attend(&self, x: MatRef<'_, f64>) -> Result<Mat<f64>> {
        let (y, _) =
            attention_output(&self.attention, x, None, self.causal, AttentionMemory::Auto)?;
        Ok(y)
    }

    /// The hidden state leaving the block for the hidden state `h` entering it.
    pub fn forward(&self, h: MatRef<'_, f64>) -> Result<Mat<f64>> {
        match self.placement {
            NormPlacement::Post => {
                let a = h + self.attend(h)?;
                let a = self.attention_norm.apply(a.as_ref())?;
                let f = &a + self.feed_forward.forward(a.as_ref())?;
                self.feed_forward_norm.apply(f.as_ref())
            }
            NormPlacement::Pre => {
                let x = self.attention_norm.apply(h)?;
                let a = h + self.attend(x.as_ref())?;
                let x = self.feed_forward_norm.apply(a.as_ref())?;
                Ok(&a + self.feed_forward.forward(x.as_ref())?)
            }
        }
    }
}

/// Token embeddings: word + absolute position (+ token type 0), then the LayerNorm if the
/// family has one there (BERT); the rotary families have no position table (their positions
/// enter the attention) and Gemma multiplies the word vectors by sqrt(hidden_size).
#[derive(Clone, Debug)]
pub struct Embeddings {
    /// (vocab x d)
    pub word: Mat<f64>,
    /// (max positions x d); None for the rotary families.
    pub position: Option<Mat<f64>>,
    /// Gemma's normaliser sqrt(hidden_size), multiplying each word vector.
    pub scale: Option<f64>,
    /// Row 0 of the token-type table: every token of a single segment gets it.
    pub token_type: Option<Vec<f64>>,
    pub norm: Option<LayerNormParams>,
}

impl Embeddings {
    pub fn vocab_size(&self) -> usize {
        self.word.nrows()
    }

    /// The longest sequence the position table covers; None when positions are rotary, which
    /// set no length limit.
    pub fn max_positions(&self) -> Option<usize> {
        self.position.as_ref().map(|p| p.nrows())
    }

    /// The hidden state entering block 0 for the token ids `ids` at positions 0..n.
    pub fn embed(&self, ids: &[u32]) -> Result<Mat<f64>> {
        let x = self.raw(ids)?;
        match &self.norm {
            Some(ln) => ln.apply(x.as_ref()),
            None => Ok(x),
        }
    }

    /// The input embeddings before any norm: word + position + token type (BERT, GPT-2), or
    /// the (scaled) word vectors of the rotary families.
    pub fn raw(&self, ids: &[u32]) -> Result<Mat<f64>> {
        if ids.is_empty() {
            return Err(Error::Empty {
                what: "token sequence".into(),
            });
        }
        if let Some(max) = self.max_positions().filter(|&m| ids.len() > m) {
            return Err(Error::invalid(format!(
                "{} tokens but the model has position embeddings for {max} only (truncate the input)",
                ids.len(),
            )));
        }
        if let Some((i, id)) = ids
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= self.vocab_size())
        {
            return Err(Error::invalid(format!(
                "token {i} has id {id}, outside the vocabulary of {} entries",
                self.vocab_size()
            )));
        }
        let d = self.word.ncols();
        let x = Mat::from_fn(ids.len(), d, |i, k| {
            let w = self.word[(ids[i] as usize, k)];
            match (&self.position, self.scale) {
                (Some(p), _) => w + p[(i, k)] + self.token_type.as_ref().map_or(0.0, |t| t[k]),
                (None, Some(s)) => w * s,
                (None, None) => w,
            }
        });
        Ok(x)
    }
}

/// An opened checkpoint: a directory, or the parts of a model handed over in memory. Opening
/// reads every tensor once; layers are converted to f64 matrices on request.
pub struct Model {
    /// The checkpoint directory; None for a model made from parts in memory.
    dir: Option<PathBuf>,
    /// The directory as displayed, or the label of the parts: how error messages name the model.
    origin: String,
    config: ModelConfig,
    store: TensorStore,
    prefix: &'static str,
}

impl Model {
    /// Reads `dir/config.json` and `dir/model.safetensors` (or the shards of
    /// `dir/model.safetensors.index.json`), and recognises the family.
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
        let parsed = ModelConfig::from_file(&dir.join("config.json"))?;
        let store = TensorStore::open_dir(dir)?;
        Self::assemble(Some(dir), dir.display().to_string(), parsed, store)
    }

    /// A model from the text of its config.json and its tensors under their checkpoint names,
    /// checked and resolved exactly as `open` checks and resolves a directory holding them;
    /// `origin` names the model in error messages (a label such as
    /// "<from_transformers LlamaForCausalLM>").
    pub fn from_parts(origin: &str, config_json: &str, tensors: Vec<NamedTensor>) -> Result<Self> {
        let parsed = ModelConfig::from_json_text(Path::new(origin), config_json)?;
        let store = TensorStore::from_tensors(origin, tensors)?;
        Self::assemble(None, origin.to_string(), parsed, store)
    }

    /// The family's checks of a parsed config against its tensors, shared by every source.
    fn assemble(
        dir: Option<&Path>,
        origin: String,
        parsed: std::result::Result<ModelConfig, String>,
        store: TensorStore,
    ) -> Result<Self> {
        let config = parsed.map_err(|model_type| {
            Error::Model(format!(
                "{origin}: unsupported architecture: model_type '{model_type}' (supported: {}); the checkpoint holds {}",
                Family::ALL.map(Family::name).join(", "),
                store.sample_names()
            ))
        })?;
        let family = config.family;
        let prefix = family
            .prefixes()
            .iter()
            .copied()
            .find(|p| store.contains(&format!("{p}{}", family.probe())))
            .ok_or_else(|| {
                Error::Model(format!(
                    "{origin}: model_type '{}' but no tensor named '{}' (with or without the '{}' prefix); the checkpoint holds {}",
                    config.model_type,
                    family.probe(),
                    family.prefixes()[0],
                    store.sample_names()
                ))
            })?;
        // The layer count sizes every per-layer list of a run: a config.json that claims more
        // layers than the weights hold is refused here, before anything is sized by it.
        let layers = config.num_hidden_layers;
        if layers > 0 && !store.contains(&format!("{prefix}{}", family.layer_probe(layers - 1))) {
            let present = (0..layers)
                .take_while(|&l| store.contains(&format!("{prefix}{}", family.layer_probe(l))))
                .count();
            return Err(Error::Model(format!(
                "{origin}: config.json gives {layers} layers, but the checkpoint has no '{prefix}{}' (it holds layers 0..{present})",
                family.layer_probe(layers - 1)
            )));
        }
        Ok(Self {
            dir: dir.map(Path::to_path_buf),
            origin,
            config,
            store,
            prefix,
        })
    }

    /// The checkpoint directory; None for a model made by `from_parts`.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// How messages and reports name the model: its directory, or the label of its parts.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn family(&self) -> Family {
        self.config.family
    }

    pub fn tensors(&self) -> &TensorStore {
        &self.store
    }

    /// The detected naming prefix ("bert.", "transformer." or "").
    pub fn prefix(&self) -> &str {
        self.prefix
    }

    pub fn num_layers(&self) -> usize {
        self.config.num_hidden_layers
    }

    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    pub fn is_causal(&self) -> bool {
        self.family().causal()
    }

    pub fn norm_placement(&self) -> NormPlacement {
        self.family().norm_placement()
    }

    pub(crate) fn check_layer(&self, layer: usize) -> Result<()> {
        check_index("layer", layer, self.num_layers(), || {
            format!("the model in {}", self.origin)
        })
        .map(|_| ())
    }

    pub(crate) fn name(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    pub(crate) fn layer_stem(&self, layer: usize) -> String {
        match self.family() {
            Family::Bert => self.name(&format!("encoder.layer.{layer}.")),
            Family::Gpt2 => self.name(&format!("h.{layer}.")),
            _ => self.name(&format!("layers.{layer}.")),
        }
    }

    /// A Linear/Conv1D weight as (out x in) in the Linear convention, whatever the storage.
    fn weight(&self, name: &str, out: usize, inp: usize) -> Result<Mat<f64>> {
        match self.family() {
            Family::Gpt2 => self.store.matrix_transposed(name, out, inp),
            _ => self.store.matrix(name, out, inp),
        }
    }

    /// The width of a feed-forward block, from its first weight's shape.
    fn ffn_width(&self, name: &str) -> Result<usize> {
        let shape = self.store.shape(name)?;
        let d = self.hidden_size();
        let width = match (self.family(), shape.as_slice()) {
            (Family::Gpt2, [k, f]) if *k == d => Some(*f),
            (_, [f, k]) if *k == d => Some(*f),
            _ => None,
        };
        width.filter(|&f| f > 0).ok_or_else(|| {
            let expected = match self.family() {
                Family::Gpt2 => format!("[{d}, ffn]"),
                _ => format!("[ffn, {d}]"),
            };
            Error::shape(
                format!("{}: tensor '{name}'", self.store.path().display()),
                expected,
                format!("{shape:?}"),
            )
        })
    }

    /// The attention sublayer of block `layer` (dot-product kernel), without residual or
    /// LayerNorm. Whether it is causal is `is_causal()`.
    pub fn attention_layer(&self, layer: usize) -> Result<AttentionLayer<f64>> {
        self.plain_only("Model::attention_layer")?;
        self.check_layer(layer)?;
        let d = self.hidden_size();
        let stem = self.layer_stem(layer);
        let heads = self.config.num_attention_heads;
        let built = match self.family() {
            Family::Bert => {
                let w = |s: &str| self.store.matrix(&format!("{stem}{s}"), d, d);
                let b = |s: &str| self.store.vector(&format!("{stem}{s}"), d);
                AttentionLayer::new(
                    heads,
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
            }
            Family::Gpt2 => {
                let qkv =
                    self.store
                        .matrix_transposed(&format!("{stem}attn.c_attn.weight"), 3 * d, d)?;
                let bias = self
                    .store
                    .vector(&format!("{stem}attn.c_attn.bias"), 3 * d)?;
                // Output features 0..d are Q, d..2d K, 2d..3d V (GPT-2 splits c_attn's output
                // in that order); within each, head h owns h*dk..(h+1)*dk as in BERT.
                let part = |p: usize| Mat::from_fn(d, d, |i, k| qkv[(p * d + i, k)]);
                let bpart = |p: usize| bias[p * d..(p + 1) * d].to_vec();
                AttentionLayer::new(
                    heads,
                    Kernel::Dot,
                    part(0),
                    bpart(0),
                    part(1),
                    bpart(1),
                    part(2),
                    bpart(2),
                    self.store
                        .matrix_transposed(&format!("{stem}attn.c_proj.weight"), d, d)?,
                    self.store.vector(&format!("{stem}attn.c_proj.bias"), d)?,
                )
            }
            _ => unreachable!("refused by plain_only"),
        };
        built
            .and_then(|a| a.with_score_divisor_sq(self.config.score_divisor_sq(layer)?))
            .map_err(|e| super::in_layer(self.store.path(), layer, e))
    }

    fn layer_norm(&self, stem: &str) -> Result<LayerNormParams> {
        let d = self.hidden_size();
        let gamma = self.store.vector(&format!("{stem}.weight"), d)?;
        let beta = self.store.vector(&format!("{stem}.bias"), d)?;
        check_finite(&format!("{stem}.weight"), gamma.iter().copied())?;
        check_finite(&format!("{stem}.bias"), beta.iter().copied())?;
        Ok(LayerNormParams {
            gamma,
            beta,
            eps: self.config.layer_norm_eps,
        })
    }

    /// The LayerNorm applied around block `layer`'s attention sublayer: BERT's
    /// `attention.output.LayerNorm` after the residual add, GPT-2's `ln_1` before the attention
    /// (see `ModelLayer::attention_norm`).
    pub fn attention_norm(&self, layer: usize) -> Result<LayerNormParams> {
        self.plain_only("Model::attention_norm")?;
        self.check_layer(layer)?;
        let stem = self.layer_stem(layer);
        match self.family() {
            Family::Bert => self.layer_norm(&format!("{stem}attention.output.LayerNorm")),
            _ => self.layer_norm(&format!("{stem}ln_1")),
        }
    }

    /// The LayerNorm applied around block `layer`'s feed-forward block: BERT's
    /// `output.LayerNorm` after the residual add, GPT-2's `ln_2` before the feed-forward.
    pub fn feed_forward_norm(&self, layer: usize) -> Result<LayerNormParams> {
        self.plain_only("Model::feed_forward_norm")?;
        self.check_layer(layer)?;
        let stem = self.layer_stem(layer);
        match self.family() {
            Family::Bert => self.layer_norm(&format!("{stem}output.LayerNorm")),
            _ => self.layer_norm(&format!("{stem}ln_2")),
        }
    }

    /// The LayerNorm whose output is block `layer`'s attention input.
    pub fn attention_input_norm(&self, layer: usize) -> Result<LayerNormParams> {
        self.plain_only("Model::attention_input_norm")?;
        self.check_layer(layer)?;
        match self.norm_placement() {
            NormPlacement::Post if layer == 0 => {
                self.layer_norm(&self.name("embeddings.LayerNorm"))
            }
            NormPlacement::Post => self.feed_forward_norm(layer - 1),
            NormPlacement::Pre => self.attention_norm(layer),
        }
    }

    pub fn feed_forward(&self, layer: usize) -> Result<FeedForward> {
        self.plain_only("Model::feed_forward")?;
        self.check_layer(layer)?;
        let d = self.hidden_size();
        let stem = self.layer_stem(layer);
        let (fc_in, fc_out) = match self.family() {
            Family::Bert => ("intermediate.dense", "output.dense"),
            _ => ("mlp.c_fc", "mlp.c_proj"),
        };
        let w_in_name = format!("{stem}{fc_in}.weight");
        let f = self.ffn_width(&w_in_name)?;
        let ff = FeedForward {
            w_in: self.weight(&w_in_name, f, d)?,
            b_in: self.store.vector(&format!("{stem}{fc_in}.bias"), f)?,
            w_out: self.weight(&format!("{stem}{fc_out}.weight"), d, f)?,
            b_out: self.store.vector(&format!("{stem}{fc_out}.bias"), d)?,
            activation: self.config.activation,
        };
        let at = |what: &str| format!("{} layer {layer}: {what}", self.store.path().display());
        for (what, m) in [
            ("feed-forward W_in", &ff.w_in),
            ("feed-forward W_out", &ff.w_out),
        ] {
            for j in 0..m.ncols() {
                check_finite(&at(what), m.col_as_slice(j).iter().copied())?;
            }
        }
        check_finite(&at("feed-forward b_in"), ff.b_in.iter().copied())?;
        check_finite(&at("feed-forward b_out"), ff.b_out.iter().copied())?;
        Ok(ff)
    }

    /// Every weight of block `layer` (BERT and GPT-2; `rotary_layer` for the rotary families).
    pub fn layer(&self, layer: usize) -> Result<ModelLayer> {
        self.plain_only("Model::layer")?;
        Ok(ModelLayer {
            index: layer,
            placement: self.norm_placement(),
            attention: self.attention_layer(layer)?,
            causal: self.is_causal(),
            attention_input_norm: self.attention_input_norm(layer)?,
            attention_norm: self.attention_norm(layer)?,
            feed_forward_norm: self.feed_forward_norm(layer)?,
            feed_forward: self.feed_forward(layer)?,
        })
    }

    pub fn embeddings(&self) -> Result<Embeddings> {
        let d = self.hidden_size();
        let table = |name: String| -> Result<Mat<f64>> {
            let rows = match self.store.shape(&name)?.as_slice() {
                [r, c] if *c == d && *r > 0 => *r,
                s => {
                    return Err(Error::shape(
                        format!("{}: tensor '{name}'", self.store.path().display()),
                        format!("[rows, {d}]"),
                        format!("{s:?}"),
                    ))
                }
            };
            let m = self.store.matrix(&name, rows, d)?;
            for j in 0..d {
                check_finite(&name, m.col_as_slice(j).iter().copied())?;
            }
            Ok(m)
        };
        match self.family() {
            Family::Bert => {
                let types = table(self.name("embeddings.token_type_embeddings.weight"))?;
                Ok(Embeddings {
                    word: table(self.name("embeddings.word_embeddings.weight"))?,
                    position: Some(table(self.name("embeddings.position_embeddings.weight"))?),
                    scale: None,
                    token_type: Some((0..d).map(|k| types[(0, k)]).collect()),
                    norm: self.embeddings_norm()?,
                })
            }
            Family::Gpt2 => Ok(Embeddings {
                word: table(self.name("wte.weight"))?,
                position: Some(table(self.name("wpe.weight"))?),
                scale: None,
                token_type: None,
                norm: None,
            }),
            _ => Ok(Embeddings {
                word: table(self.name("embed_tokens.weight"))?,
                position: None,
                // transformers keeps sqrt(hidden_size) as a tensor of the model's dtype, so a
                // float64 model multiplies by the f64 square root.
                scale: self
                    .decoder_config()?
                    .scale_embeddings
                    .then(|| (d as f64).sqrt()),
                token_type: None,
                norm: None,
            }),
        }
    }

    /// BERT's `embeddings.LayerNorm`, which fixes the scale of block 0's input; GPT-2 has
    /// none. Read without the embedding tables, which single-layer analyses never need.
    pub fn embeddings_norm(&self) -> Result<Option<LayerNormParams>> {
        match self.family() {
            Family::Bert => Ok(Some(self.layer_norm(&self.name("embeddings.LayerNorm"))?)),
            _ => Ok(None),
        }
    }

    /// GPT-2's `ln_f`, applied after the last block; BERT has none (the rotary families'
    /// final RMSNorm is `final_rms_norm`).
    pub fn final_norm(&self) -> Result<Option<LayerNormParams>> {
        self.plain_only("Model::final_norm")?;
        match self.family() {
            Family::Bert => Ok(None),
            _ => Ok(Some(self.layer_norm(&self.name("ln_f"))?)),
        }
    }
}
