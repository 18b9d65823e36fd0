//! Blocks, stacks of blocks and whole models as maps on token matrices, with their exact
//! linearisation (derivatives::stack) and the input each scope reads. One home for what a scope
//! means, for every family:
//!
//! - `attention`: the attention sublayer alone, X = its input (after the block's input norm for
//!   the pre-norm families);
//! - `sublayer-residual-norm`: the attention half of the block, norms and residual as the family
//!   places them (BERT: LN(h + Attn(h)), what transformers' `BertAttention` computes; GPT-2:
//!   h + Attn(LN(h)); rotary: h + N_ao(Attn(N_a(h)))), X = the hidden state entering the block;
//! - `block`: the whole block, X = the hidden state entering it;
//! - `model`: every block from the input embeddings (word + position + token type, before the
//!   first norm; Gemma's scaled word vectors) to the final hidden states (after GPT-2's `ln_f`
//!   and the rotary families' `norm`), optionally pooled.

use super::decoder::{GatedFeedForward, RotaryBlock};
use super::model::{FeedForward, Model, ModelLayer, NormPlacement};
use crate::attention::forward::affine;
use crate::attention::norms::{LayerNorm, RmsNorm};
use crate::attention::rms::normalise;
use crate::attention::AttentionLayer;
use crate::attention::StreamingRotaryLinearization;
use crate::attention::{RotaryAttention, RotaryLinearization};
use crate::derivatives::stack::{
    AttentionStep, Chain, FeedForwardStep, GatedStep, LayerNormStep, MeanPool, Normalise, Residual,
    RmsNormStep, StackLinearization, Step,
};
use crate::derivatives::streaming::{StreamingLinearization, DEFAULT_BLOCK};
use crate::derivatives::{AttentionMemory, Linearization};
use crate::error::{Error, Result};
use crate::named_enum;
use faer::{Mat, MatRef};

named_enum! {
    /// Which map of a model is analysed.
    pub enum Scope as "scope" {
        Attention = "attention",
        SublayerResidualNorm = "sublayer-residual-norm",
        Block = "block",
        Model = "model",
    }
}

named_enum! {
    /// What follows the final hidden states of `--scope model`.
    pub enum Pool as "pool" {
        None = "none",
        /// The mean over tokens (sentence-transformers' mean pooling).
        Mean = "mean",
        /// The mean over tokens, then divided by its l2 norm (all-MiniLM-L6-v2's embedding).
        MeanNormalised = "mean-normalised",
    }
}

impl Scope {
    /// Whether the scope is one layer's (and so needs a layer index).
    pub fn has_layer(self) -> bool {
        self != Scope::Model
    }

    /// The layer a request names, checked against the scope: one for every scope but `model`,
    /// none for `model`; `pool` only after `model`.
    pub fn check(self, layer: Option<usize>, pool: Pool) -> Result<Option<usize>> {
        match (self.has_layer(), layer) {
            (true, None) => Err(Error::invalid(format!(
                "scope '{}' is one layer's: give the layer",
                self.name()
            ))),
            (false, Some(l)) => Err(Error::invalid(format!(
                "scope 'model' runs every layer from the input embeddings; layer {l} was given (drop it, or use scope 'block')"
            ))),
            _ if pool != Pool::None && self != Scope::Model => Err(Error::invalid(format!(
                "pool '{}' applies to scope 'model' only (scope '{}')",
                pool.name(),
                self.name()
            ))),
            _ => Ok(layer),
        }
    }

    /// What the scope's input X is, for reports.
    pub fn input_description(self) -> &'static str {
        match self {
            Scope::Attention => "the attention sublayer's input (after the block's input norm in the pre-norm families)",
            Scope::SublayerResidualNorm | Scope::Block => "the hidden state entering the block",
            Scope::Model => "the input embeddings (word + position + token type, before the first norm)",
        }
    }
}

/// The weights of one block of any family.
#[derive(Clone, Debug)]
pub enum BlockWeights {
    Plain(Box<ModelLayer>),
    Rotary(Box<RotaryBlock>),
}

/// The norm after the last block.
#[derive(Clone, Debug)]
pub enum FinalNorm {
    Layer(LayerNorm),
    Rms(RmsNorm),
}

/// Everything one scope computes, loaded.
#[derive(Clone, Debug)]
pub struct StackWeights {
    pub scope: Scope,
    /// Index of the first block.
    pub first_layer: usize,
    /// BERT's embeddings LayerNorm (scope `model` only).
    pub input_norm: Option<LayerNorm>,
    pub blocks: Vec<BlockWeights>,
    /// Scope `sublayer-residual-norm`: only the attention half of the (single) block.
    pub half: bool,
    pub final_norm: Option<FinalNorm>,
    pub pool: Pool,
    /// d of the tokens.
    pub d: usize,
}

impl Model {
    /// The weights of `scope` (with `layer` for the one-layer scopes, checked by
    /// [`Scope::check`]) followed by `pool`.
    pub fn stack(&self, scope: Scope, layer: Option<usize>, pool: Pool) -> Result<StackWeights> {
        let layer = scope.check(layer, pool)?;
        let block = |l: usize| -> Result<BlockWeights> {
            Ok(if self.family().is_rotary() {
                BlockWeights::Rotary(Box::new(self.rotary_layer(l)?))
            } else {
                BlockWeights::Plain(Box::new(self.layer(l)?))
            })
        };
        let (first_layer, blocks) = match layer {
            Some(l) => (l, vec![block(l)?]),
            None => (0, (0..self.num_layers()).map(block).collect::<Result<_>>()?),
        };
        let whole = scope == Scope::Model;
        let final_norm = if !whole {
            None
        } else if self.family().is_rotary() {
            Some(FinalNorm::Rms(self.final_rms_norm()?))
        } else {
            self.final_norm()?.map(FinalNorm::Layer)
        };
        Ok(StackWeights {
            scope,
            first_layer,
            input_norm: if whole { self.embeddings_norm()? } else { None },
            blocks,
            half: scope == Scope::SublayerResidualNorm,
            final_norm,
            pool,
            d: self.hidden_size(),
        })
    }

    /// The scope's input X for the token ids `ids`: what the model computes there.
    pub fn stack_input(&self, w: &StackWeights, ids: &[u32]) -> Result<Mat<f64>> {
        if w.scope == Scope::Model {
            return self.embeddings()?.raw(ids);
        }
        let mut states = self.hidden_states_upto(ids, w.first_layer)?;
        let h = states.pop().expect("hidden states up to the layer");
        match (&w.blocks[0], w.scope) {
            (BlockWeights::Plain(b), Scope::Attention) => b.attention_input(h.as_ref()),
            (BlockWeights::Rotary(b), Scope::Attention) => b.attention_input(h.as_ref()),
            _ => Ok(h),
        }
    }
}

fn rms(norm: &RmsNorm, x: MatRef<'_, f64>) -> Result<(Mat<f64>, RmsNormStep)> {
    if x.ncols() != norm.weight.len() {
        return Err(Error::shape(
            "RMSNorm input width",
            norm.weight.len().to_string(),
            x.ncols().to_string(),
        ));
    }
    let gain = norm.gain();
    let mut out = x.to_owned();
    let state = normalise(&mut out, gain.len(), &gain, norm.eps, "RMSNorm")?;
    Ok((out, RmsNormStep { gain, state }))
}

fn layer_norm(ln: &LayerNorm, x: MatRef<'_, f64>) -> Result<(Mat<f64>, LayerNormStep)> {
    let out = ln.apply(x)?;
    Ok((out, LayerNormStep::at(&ln.gamma, ln.eps, x)))
}

fn feed_forward<'a>(ff: &'a FeedForward, x: MatRef<'_, f64>) -> (Mat<f64>, FeedForwardStep<'a>) {
    let pre = affine(x, ff.w_in.as_ref(), &ff.b_in);
    let slope = Mat::from_fn(pre.nrows(), pre.ncols(), |i, j| {
        ff.activation.derivative(pre[(i, j)])
    });
    let hidden = Mat::from_fn(pre.nrows(), pre.ncols(), |i, j| {
        ff.activation.apply(pre[(i, j)])
    });
    let out = affine(hidden.as_ref(), ff.w_out.as_ref(), &ff.b_out);
    (
        out,
        FeedForwardStep {
            w_in: ff.w_in.as_ref(),
            w_out: ff.w_out.as_ref(),
            slope,
        },
    )
}

fn gated<'a>(ff: &'a GatedFeedForward, x: MatRef<'_, f64>) -> (Mat<f64>, GatedStep<'a>) {
    let g = affine(x, ff.gate.as_ref(), &ff.b_gate);
    let u = affine(x, ff.up.as_ref(), &ff.b_up);
    let (gate_slope, up_slope) = GatedStep::slopes(ff.activation, &g, &u);
    let hidden = Mat::from_fn(g.nrows(), g.ncols(), |i, j| up_slope[(i, j)] * u[(i, j)]);
    let out = affine(hidden.as_ref(), ff.down.as_ref(), &ff.b_down);
    (
        out,
        GatedStep {
            gate: ff.gate.as_ref(),
            up: ff.up.as_ref(),
            down: ff.down.as_ref(),
            gate_slope,
            up_slope,
        },
    )
}

/// What one top-level step of a scope's chain computes, for the ball certificates
/// (bounds::chain_ball), which bound each kind of step on its own.
#[derive(Clone, Copy, Debug)]
pub enum Piece<'a> {
    /// The attention sublayer alone (scope `attention`).
    Attention {
        layer: &'a AttentionLayer<f64>,
        causal: bool,
    },
    /// h + Attn(h) (post-norm) or h + Attn(LN(h)) (pre-norm, `norm` = the block's ln_1).
    AttentionResidual {
        norm: Option<&'a LayerNorm>,
        layer: &'a AttentionLayer<f64>,
        causal: bool,
    },
    /// a + FFN(a) (post-norm) or a + FFN(LN(a)) (pre-norm).
    FeedForwardResidual {
        norm: Option<&'a LayerNorm>,
        ff: &'a FeedForward,
    },
    LayerNorm(&'a LayerNorm),
    MeanPool,
    /// p / |p| on the pooled row.
    Normalise,
    /// Rotary attention alone (scope `attention` of a rotary family).
    RotaryAttention(&'a RotaryAttention),
    /// h + Attn(RMS(h)), or h + N(Attn(RMS(h))) with Gemma 2's `output_norm` N.
    RotaryAttentionResidual {
        norm: &'a RmsNorm,
        layer: &'a RotaryAttention,
        output_norm: Option<&'a RmsNorm>,
    },
    /// a + F(RMS(a)), or a + N(F(RMS(a))), F the gated feed-forward network.
    GatedFeedForwardResidual {
        norm: &'a RmsNorm,
        ff: &'a GatedFeedForward,
        output_norm: Option<&'a RmsNorm>,
    },
    RmsNorm(&'a RmsNorm),
}

/// A scope's chain at X with, for each top-level step, what it is and (when recorded) its
/// input at X.
pub struct Links<'a> {
    pub chain: Chain<'a>,
    pub pieces: Vec<Piece<'a>>,
    /// The input of each step at X; empty unless recorded.
    pub inputs: Vec<Mat<f64>>,
    /// The attention state every attention step holds (resolved: dense or streaming).
    pub attention: AttentionMemory,
    record: bool,
}

/// The plain attention sublayer `layer` at x on the (resolved) state `state`: its output and
/// its step.
fn plain_attention<'a>(
    layer: &'a AttentionLayer<f64>,
    x: MatRef<'_, f64>,
    causal: bool,
    state: AttentionMemory,
) -> Result<(Mat<f64>, Box<dyn Step + 'a>)> {
    Ok(match state {
        AttentionMemory::Streaming => {
            let lin = StreamingLinearization::new(layer, x, None, causal, DEFAULT_BLOCK)?;
            (lin.output().to_owned(), Box::new(AttentionStep(lin)))
        }
        _ => {
            let lin = Linearization::new(layer, x, None, causal)?;
            (lin.output().to_owned(), Box::new(AttentionStep(lin)))
        }
    })
}

/// The rotary attention sublayer `layer` at x (positions 0..n-1) on the (resolved) state
/// `state`: its output and its step.
fn rotary_attention<'a>(
    layer: &'a RotaryAttention,
    x: MatRef<'_, f64>,
    state: AttentionMemory,
) -> Result<(Mat<f64>, Box<dyn Step + 'a>)> {
    Ok(match state {
        AttentionMemory::Streaming => {
            let lin = StreamingRotaryLinearization::new(layer, x, DEFAULT_BLOCK)?;
            (lin.output(), Box::new(AttentionStep(lin)))
        }
        _ => {
            let lin = RotaryLinearization::new(layer, x)?;
            (lin.output(), Box::new(AttentionStep(lin)))
        }
    })
}

impl<'a> Links<'a> {
    fn push(&mut self, input: MatRef<'_, f64>, piece: Piece<'a>, step: impl Step + 'a) {
        self.chain.push(step);
        self.pieces.push(piece);
        if self.record {
            self.inputs.push(input.to_owned());
        }
    }
}

/// The attention half of a BERT/GPT-2 block at h.
fn plain_attention_half<'a>(
    b: &'a ModelLayer,
    h: MatRef<'_, f64>,
    links: &mut Links<'a>,
) -> Result<Mat<f64>> {
    match b.placement {
        NormPlacement::Post => {
            let (o, step) = plain_attention(&b.attention, h, b.causal, links.attention)?;
            let a = h + o;
            let mut branch = Chain::default();
            branch.push(step);
            let piece = Piece::AttentionResidual {
                norm: None,
                layer: &b.attention,
                causal: b.causal,
            };
            links.push(h, piece, Residual(branch));
            let (out, step) = layer_norm(&b.attention_norm, a.as_ref())?;
            links.push(a.as_ref(), Piece::LayerNorm(&b.attention_norm), step);
            Ok(out)
        }
        NormPlacement::Pre => {
            let (x, norm) = layer_norm(&b.attention_norm, h)?;
            let (o, step) = plain_attention(&b.attention, x.as_ref(), b.causal, links.attention)?;
            let out = h + o;
            let mut branch = Chain::default();
            branch.push(norm);
            branch.push(step);
            let piece = Piece::AttentionResidual {
                norm: Some(&b.attention_norm),
                layer: &b.attention,
                causal: b.causal,
            };
            links.push(h, piece, Residual(branch));
            Ok(out)
        }
    }
}

/// The feed-forward half of a BERT/GPT-2 block at a.
fn plain_feed_forward_half<'a>(
    b: &'a ModelLayer,
    a: MatRef<'_, f64>,
    links: &mut Links<'a>,
) -> Result<Mat<f64>> {
    match b.placement {
        NormPlacement::Post => {
            let (f, step) = feed_forward(&b.feed_forward, a);
            let mut branch = Chain::default();
            branch.push(step);
            let piece = Piece::FeedForwardResidual {
                norm: None,
                ff: &b.feed_forward,
            };
            links.push(a, piece, Residual(branch));
            let sum = a + f;
            let (out, norm) = layer_norm(&b.feed_forward_norm, sum.as_ref())?;
            links.push(sum.as_ref(), Piece::LayerNorm(&b.feed_forward_norm), norm);
            Ok(out)
        }
        NormPlacement::Pre => {
            let (x, norm) = layer_norm(&b.feed_forward_norm, a)?;
            let (f, step) = feed_forward(&b.feed_forward, x.as_ref());
            let mut branch = Chain::default();
            branch.push(norm);
            branch.push(step);
            let piece = Piece::FeedForwardResidual {
                norm: Some(&b.feed_forward_norm),
                ff: &b.feed_forward,
            };
            links.push(a, piece, Residual(branch));
            Ok(a + f)
        }
    }
}

fn rotary_attention_half<'a>(
    b: &'a RotaryBlock,
    h: MatRef<'_, f64>,
    links: &mut Links<'a>,
) -> Result<Mat<f64>> {
    let mut branch = Chain::default();
    let (x, norm) = rms(&b.attention_norm, h)?;
    branch.push(norm);
    let (mut a, step) = rotary_attention(&b.attention, x.as_ref(), links.attention)?;
    branch.push(step);
    if let Some(n) = &b.attention_output_norm {
        let (o, step) = rms(n, a.as_ref())?;
        a = o;
        branch.push(step);
    }
    let piece = Piece::RotaryAttentionResidual {
        norm: &b.attention_norm,
        layer: &b.attention,
        output_norm: b.attention_output_norm.as_ref(),
    };
    links.push(h, piece, Residual(branch));
    Ok(h + a)
}

fn rotary_feed_forward_half<'a>(
    b: &'a RotaryBlock,
    a: MatRef<'_, f64>,
    links: &mut Links<'a>,
) -> Result<Mat<f64>> {
    let mut branch = Chain::default();
    let (x, norm) = rms(&b.feed_forward_norm, a)?;
    branch.push(norm);
    let (mut f, step) = gated(&b.feed_forward, x.as_ref());
    branch.push(step);
    if let Some(n) = &b.feed_forward_output_norm {
        let (o, step) = rms(n, f.as_ref())?;
        f = o;
        branch.push(step);
    }
    let piece = Piece::GatedFeedForwardResidual {
        norm: &b.feed_forward_norm,
        ff: &b.feed_forward,
        output_norm: b.feed_forward_output_norm.as_ref(),
    };
    links.push(a, piece, Residual(branch));
    Ok(a + f)
}

impl StackWeights {
    /// Bytes the chain keeps at n tokens with its attention steps on the (resolved) state
    /// `attention`: per block a few n x d and n x ffn matrices, and every attention step's state
    /// (all are held at once: the dense n x n probabilities, or the streaming per-row
    /// statistics, `AttentionMemory::state_bytes`). None: beyond u64.
    pub fn chain_bytes(&self, n: usize, record: bool, attention: AttentionMemory) -> Option<u64> {
        let ffn = self.ffn();
        // Recording keeps up to four more n x d inputs per block.
        let widths = if record { 12 } else { 8 } * self.d + 4 * ffn;
        let per_block = crate::budget::bytes_of(&[n, widths], 8);
        let rest = per_block.and_then(|b| b.checked_mul(self.blocks.len() as u64 + 1));
        let states: Vec<Option<u64>> = self
            .blocks
            .iter()
            .map(|b| match b {
                BlockWeights::Plain(l) => attention.state_bytes(&l.attention, n),
                BlockWeights::Rotary(r) => attention.state_bytes(&r.attention, n),
            })
            .collect();
        crate::budget::total(&[rest, crate::budget::total(&states)])
    }

    fn ffn(&self) -> usize {
        self.blocks
            .iter()
            .map(|b| match b {
                BlockWeights::Plain(l) => l.feed_forward.w_in.nrows(),
                BlockWeights::Rotary(r) => r.feed_forward.gate.nrows(),
            })
            .max()
            .unwrap_or(0)
    }

    /// The budget check of the chain at n tokens on the (resolved) state `attention`
    /// ([`StackWeights::chain_bytes`]) plus `extra` bytes that the caller keeps beside it (the
    /// certificate's Lemma S centres and search), made before anything is allocated.
    pub fn check_chain_budget(
        &self,
        n: usize,
        record: bool,
        attention: AttentionMemory,
        extra: Option<u64>,
    ) -> Result<()> {
        let need = crate::budget::total(&[self.chain_bytes(n, record, attention), extra]);
        crate::budget::check(
            || {
                format!(
                    "linearising scope '{}' ({} blocks, n = {n}, d = {}, ffn = {}) on the {} attention state",
                    self.scope.name(),
                    self.blocks.len(),
                    self.d,
                    self.ffn(),
                    attention.name()
                )
            },
            need,
        )
    }

    /// The attention state the chain's attention steps hold at n tokens, by the rule of
    /// [`AttentionMemory::resolve`] applied to the whole chain: `dense` or `streaming` as asked,
    /// and `auto` dense exactly when the chain's check on the dense state
    /// ([`StackWeights::check_chain_budget`] with `extra(Dense)`) passes, streaming otherwise.
    /// The chosen state is then checked (with `extra` of it) before anything is allocated.
    pub fn resolve_attention(
        &self,
        n: usize,
        asked: AttentionMemory,
        record: bool,
        extra: &dyn Fn(AttentionMemory) -> Option<u64>,
    ) -> Result<AttentionMemory> {
        let state = match asked {
            AttentionMemory::Auto => {
                let dense = AttentionMemory::Dense;
                match self.check_chain_budget(n, record, dense, extra(dense)) {
                    Ok(()) => return Ok(dense),
                    Err(Error::Budget { .. } | Error::OutOfMemory { .. }) => {
                        AttentionMemory::Streaming
                    }
                    Err(e) => return Err(e),
                }
            }
            chosen => chosen,
        };
        self.check_chain_budget(n, record, state, extra(state))?;
        Ok(state)
    }

    /// The scope's output at X (n x d) and its linearisation there, its attention steps on the
    /// state `auto` picks ([`StackWeights::linearize_with`]).
    pub fn linearize(&self, x: MatRef<'_, f64>) -> Result<(Mat<f64>, StackLinearization<'_>)> {
        self.linearize_with(x, AttentionMemory::Auto)
    }

    /// The scope's output at X (n x d) and its linearisation there, its attention steps on the
    /// state `attention` asks for ([`StackWeights::resolve_attention`]; the linearisation's
    /// `attention` says which). Scope `attention` is the sublayer alone (ops::local runs it on
    /// its own linearisations; here for completeness).
    pub fn linearize_with(
        &self,
        x: MatRef<'_, f64>,
        attention: AttentionMemory,
    ) -> Result<(Mat<f64>, StackLinearization<'_>)> {
        let (h, links) = self.links(x, false, attention)?;
        let (n, d) = (x.nrows(), x.ncols());
        let (rows_out, d_out) = (h.nrows(), h.ncols());
        Ok((
            h,
            StackLinearization {
                chain: links.chain,
                attention: links.attention,
                n,
                d_in: d,
                rows_out,
                d_out,
            },
        ))
    }

    /// The scope's output at X and its chain, step by step: what each top-level step is and,
    /// with `record`, its input at X (the ball certificates bound each step on the ball around
    /// its own input). The attention steps hold the state `attention` asks for
    /// ([`StackWeights::resolve_attention`], nothing kept beside the chain).
    pub fn links(
        &self,
        x: MatRef<'_, f64>,
        record: bool,
        attention: AttentionMemory,
    ) -> Result<(Mat<f64>, Links<'_>)> {
        let n = x.nrows();
        if n == 0 {
            return Err(Error::Empty {
                what: "token sequence".into(),
            });
        }
        crate::attention::forward::check_shape("scope input X", x, n, self.d)?;
        let attention = self.resolve_attention(n, attention, record, &|_| Some(0))?;
        let mut links = Links {
            chain: Chain::default(),
            pieces: Vec::new(),
            inputs: Vec::new(),
            attention,
            record,
        };
        let mut h = x.to_owned();
        if let Some(ln) = &self.input_norm {
            let (o, step) = layer_norm(ln, h.as_ref())?;
            links.push(h.as_ref(), Piece::LayerNorm(ln), step);
            h = o;
        }
        for b in &self.blocks {
            h = match (b, self.scope) {
                (BlockWeights::Plain(l), Scope::Attention) => {
                    let (o, step) =
                        plain_attention(&l.attention, h.as_ref(), l.causal, links.attention)?;
                    let piece = Piece::Attention {
                        layer: &l.attention,
                        causal: l.causal,
                    };
                    links.push(h.as_ref(), piece, step);
                    o
                }
                (BlockWeights::Rotary(r), Scope::Attention) => {
                    let (o, step) = rotary_attention(&r.attention, h.as_ref(), links.attention)?;
                    links.push(h.as_ref(), Piece::RotaryAttention(&r.attention), step);
                    o
                }
                (BlockWeights::Plain(l), _) => {
                    let a = plain_attention_half(l, h.as_ref(), &mut links)?;
                    if self.half {
                        a
                    } else {
                        plain_feed_forward_half(l, a.as_ref(), &mut links)?
                    }
                }
                (BlockWeights::Rotary(r), _) => {
                    let a = rotary_attention_half(r, h.as_ref(), &mut links)?;
                    if self.half {
                        a
                    } else {
                        rotary_feed_forward_half(r, a.as_ref(), &mut links)?
                    }
                }
            };
        }
        match &self.final_norm {
            Some(FinalNorm::Layer(ln)) => {
                let (o, step) = layer_norm(ln, h.as_ref())?;
                links.push(h.as_ref(), Piece::LayerNorm(ln), step);
                h = o;
            }
            Some(FinalNorm::Rms(norm)) => {
                let (o, step) = rms(norm, h.as_ref())?;
                links.push(h.as_ref(), Piece::RmsNorm(norm), step);
                h = o;
            }
            None => {}
        }
        let d_out = h.ncols();
        if self.pool != Pool::None {
            let pooled = Mat::from_fn(1, d_out, |_, k| {
                h.col_as_slice(k).iter().sum::<f64>() / n as f64
            });
            links.push(h.as_ref(), Piece::MeanPool, MeanPool { n });
            h = pooled;
        }
        if self.pool == Pool::MeanNormalised {
            let norm = crate::linalg::frobenius(h.as_ref());
            if !(norm > 0.0 && norm.is_finite()) {
                return Err(Error::Numerical(format!(
                    "the mean-pooled embedding has norm {norm}: its normalisation is undefined there"
                )));
            }
            let y: Vec<f64> = (0..d_out).map(|k| h[(0, k)] / norm).collect();
            let out = Mat::from_fn(1, d_out, |_, k| y[k]);
            let step = Normalise {
                y,
                inv_norm: 1.0 / norm,
            };
            links.push(h.as_ref(), Piece::Normalise, step);
            h = out;
        }
        for j in 0..h.ncols() {
            if let Some(v) = h.col_as_slice(j).iter().find(|v| !v.is_finite()) {
                return Err(Error::Numerical(format!(
                    "the output of scope '{}' is {v}: the weights overflow in f64 at this input",
                    self.scope.name()
                )));
            }
        }
        Ok((h, links))
    }
}

impl crate::estimation::adversarial::Linearizable for StackWeights {
    type At<'a> = StackLinearization<'a>;
    fn linearize<'a>(&'a self, x: MatRef<'_, f64>) -> Result<StackLinearization<'a>> {
        Ok(StackWeights::linearize(self, x)?.1)
    }
}

/// A scope with its attention steps on a fixed (resolved) state: what the ball ascent of a block
/// or model certificate linearises at every point it evaluates.
pub struct StackOnState<'w> {
    pub weights: &'w StackWeights,
    pub attention: AttentionMemory,
}

impl crate::estimation::adversarial::Linearizable for StackOnState<'_> {
    type At<'a>
        = StackLinearization<'a>
    where
        Self: 'a;
    fn linearize<'a>(&'a self, x: MatRef<'_, f64>) -> Result<StackLinearization<'a>> {
        Ok(self.weights.linearize_with(x, self.attention)?.1)
    }
}
