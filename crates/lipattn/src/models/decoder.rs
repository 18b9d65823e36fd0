//! The blocks of the rotary decoder families (Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma 2) and
//! their tensor names: `[model.]layers.{l}.self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`,
//! the block's RMSNorms, `[model.]embed_tokens` and `[model.]norm`. Every weight is a Linear
//! stored [out, in], so nothing is transposed.

use super::config::{Activation, Family};
use super::decoder_config::DecoderConfig;
use super::model::Model;
use crate::attention::forward::affine;
use crate::attention::{QkNorm, RmsNorm, RotaryAttention};
use crate::derivatives::memory::{rotary_attention_output, AttentionMemory};
use crate::error::{check_finite, Error, Result};
use faer::{Mat, MatRef};

/// x -> down(act(gate(x)) * up(x)) on each token: SwiGLU with SiLU (Llama), GeGLU with the tanh
/// GELU (Gemma). Biases are zero when the checkpoint has none.
#[derive(Clone, Debug)]
pub struct GatedFeedForward {
    /// (ffn x d)
    pub gate: Mat<f64>,
    pub b_gate: Vec<f64>,
    /// (ffn x d)
    pub up: Mat<f64>,
    pub b_up: Vec<f64>,
    /// (d x ffn)
    pub down: Mat<f64>,
    pub b_down: Vec<f64>,
    pub activation: Activation,
}

impl GatedFeedForward {
    pub fn forward(&self, x: MatRef<'_, f64>) -> Result<Mat<f64>> {
        if x.ncols() != self.gate.ncols() {
            return Err(Error::shape(
                "gated feed-forward input width",
                self.gate.ncols().to_string(),
                x.ncols().to_string(),
            ));
        }
        let g = affine(x, self.gate.as_ref(), &self.b_gate);
        let u = affine(x, self.up.as_ref(), &self.b_up);
        let hidden = Mat::from_fn(g.nrows(), g.ncols(), |i, j| {
            self.activation.apply(g[(i, j)]) * u[(i, j)]
        });
        Ok(affine(hidden.as_ref(), self.down.as_ref(), &self.b_down))
    }
}

/// One block of a rotary decoder, pre-norm:
/// h -> h + N_ao(Attn(N_a(h))) -> h' + N_fo(FFN(N_f(h'))), where the output norms N_ao and
/// N_fo exist in Gemma 2 only (its "sandwich" norms) and are the identity otherwise.
#[derive(Clone, Debug)]
pub struct RotaryBlock {
    pub index: usize,
    /// `input_layernorm`: applied to the attention input.
    pub attention_norm: RmsNorm,
    pub attention: RotaryAttention,
    /// Gemma 2's `post_attention_layernorm`: applied to the attention output before the add.
    pub attention_output_norm: Option<RmsNorm>,
    /// Applied to the feed-forward input: `post_attention_layernorm` (Llama, Mistral, Qwen,
    /// Gemma), `pre_feedforward_layernorm` (Gemma 2).
    pub feed_forward_norm: RmsNorm,
    pub feed_forward: GatedFeedForward,
    /// Gemma 2's `post_feedforward_layernorm`.
    pub feed_forward_output_norm: Option<RmsNorm>,
}

impl RotaryBlock {
    /// The attention sublayer's input for the hidden state `h` entering this block.
    pub fn attention_input(&self, h: MatRef<'_, f64>) -> Result<Mat<f64>> {
        self.attention_norm.apply(h)
    }

    /// The hidden state leaving the block for the hidden state `h` (tokens at positions
    /// 0..n) entering it.
    pub fn forward(&self, h: MatRef<'_, f64>) -> Result<Mat<f64>> {
        let x = self.attention_norm.apply(h)?;
        // Dense when its band of probabilities fits the budget, streaming otherwise, so that
        // long sequences pass through the model in memory linear in n.
        let (mut a, _) =
            rotary_attention_output(&self.attention, x.as_ref(), AttentionMemory::Auto)?;
        if let Some(n) = &self.attention_output_norm {
            a = n.apply(a.as_ref())?;
        }
        let h = h + a;
        let x = self.feed_forward_norm.apply(h.as_ref())?;
        let mut f = self.feed_forward.forward(x.as_ref())?;
        if let Some(n) = &self.feed_forward_output_norm {
            f = n.apply(f.as_ref())?;
        }
        Ok(&h + f)
    }
}

impl Model {
    pub(crate) fn decoder_config(&self) -> Result<&DecoderConfig> {
        self.config().decoder.as_ref().ok_or_else(|| {
            Error::Model(format!(
                "{}: model_type '{}' has no rotary attention (BERT and GPT-2 add position embeddings); use Model::attention_layer",
                self.origin(),
                self.config().model_type
            ))
        })
    }

    fn rms_norm(&self, name: &str, width: usize) -> Result<RmsNorm> {
        let weight = self.tensors().vector(name, width)?;
        check_finite(name, weight.iter().copied())?;
        Ok(RmsNorm {
            weight,
            eps: self.config().layer_norm_eps,
            unit_offset: self.decoder_config()?.unit_offset_norm,
        })
    }

    /// A Linear's bias, or zeros when the config says the layer has none.
    fn bias(&self, name: &str, len: usize, present: bool) -> Result<Vec<f64>> {
        if present {
            let b = self.tensors().vector(name, len)?;
            check_finite(name, b.iter().copied())?;
            Ok(b)
        } else {
            Ok(vec![0.0; len])
        }
    }

    fn linear(&self, name: &str, out: usize, inp: usize) -> Result<Mat<f64>> {
        let m = self.tensors().matrix(name, out, inp)?;
        for j in 0..m.ncols() {
            check_finite(name, m.col_as_slice(j).iter().copied())?;
        }
        Ok(m)
    }

    /// The rotary attention sublayer of block `layer` (rotary families only), without its
    /// norms or residual.
    pub fn rotary_attention(&self, layer: usize) -> Result<RotaryAttention> {
        self.check_layer(layer)?;
        let c = self.decoder_config()?;
        let d = self.hidden_size();
        let heads = self.config().num_attention_heads;
        let (q_out, kv_out) = (heads * c.head_dim, c.kv_heads * c.head_dim);
        let stem = self.layer_stem(layer);
        let p = |s: &str| format!("{stem}self_attn.{s}");
        let qk_norm = if c.qk_norm {
            Some(QkNorm {
                q_weight: self.tensors().vector(&p("q_norm.weight"), c.head_dim)?,
                k_weight: self.tensors().vector(&p("k_norm.weight"), c.head_dim)?,
                eps: self.config().layer_norm_eps,
                unit_offset: c.unit_offset_norm,
            })
        } else {
            None
        };
        RotaryAttention::new(
            heads,
            c.kv_heads,
            c.head_dim,
            self.linear(&p("q_proj.weight"), q_out, d)?,
            self.bias(&p("q_proj.bias"), q_out, c.qkv_bias)?,
            self.linear(&p("k_proj.weight"), kv_out, d)?,
            self.bias(&p("k_proj.bias"), kv_out, c.qkv_bias)?,
            self.linear(&p("v_proj.weight"), kv_out, d)?,
            self.bias(&p("v_proj.bias"), kv_out, c.qkv_bias)?,
            self.linear(&p("o_proj.weight"), d, q_out)?,
            self.bias(&p("o_proj.bias"), d, c.o_bias)?,
            c.score_divisor_sq,
            c.rope.clone(),
            qk_norm,
            c.softcap,
            c.windows[layer],
        )
        .map_err(|e| super::in_layer(self.tensors().path(), layer, e))
    }

    fn gated_feed_forward(&self, layer: usize) -> Result<GatedFeedForward> {
        let c = self.decoder_config()?;
        let d = self.hidden_size();
        let p = |s: &str| format!("{}mlp.{s}", self.layer_stem(layer));
        let gate_name = p("gate_proj.weight");
        let f = match self.tensors().shape(&gate_name)?.as_slice() {
            [f, k] if *k == d && *f > 0 => *f,
            s => {
                return Err(Error::shape(
                    format!("{}: tensor '{gate_name}'", self.tensors().path().display()),
                    format!("[intermediate_size, {d}]"),
                    format!("{s:?}"),
                ))
            }
        };
        Ok(GatedFeedForward {
            gate: self.linear(&gate_name, f, d)?,
            b_gate: self.bias(&p("gate_proj.bias"), f, c.mlp_bias)?,
            up: self.linear(&p("up_proj.weight"), f, d)?,
            b_up: self.bias(&p("up_proj.bias"), f, c.mlp_bias)?,
            down: self.linear(&p("down_proj.weight"), d, f)?,
            b_down: self.bias(&p("down_proj.bias"), d, c.mlp_bias)?,
            activation: self.config().activation,
        })
    }

    /// Every weight of block `layer` of a rotary family.
    pub fn rotary_layer(&self, layer: usize) -> Result<RotaryBlock> {
        let attention = self.rotary_attention(layer)?;
        let c = self.decoder_config()?;
        let d = self.hidden_size();
        let stem = self.layer_stem(layer);
        let norm = |s: &str| self.rms_norm(&format!("{stem}{s}.weight"), d);
        let (attention_output_norm, feed_forward_norm, feed_forward_output_norm) =
            if c.sandwich_norms {
                (
                    Some(norm("post_attention_layernorm")?),
                    norm("pre_feedforward_layernorm")?,
                    Some(norm("post_feedforward_layernorm")?),
                )
            } else {
                (None, norm("post_attention_layernorm")?, None)
            };
        Ok(RotaryBlock {
            index: layer,
            attention_norm: norm("input_layernorm")?,
            attention,
            attention_output_norm,
            feed_forward_norm,
            feed_forward: self.gated_feed_forward(layer)?,
            feed_forward_output_norm,
        })
    }

    /// The RMSNorm `[model.]norm` after the last block of a rotary family.
    pub fn final_rms_norm(&self) -> Result<RmsNorm> {
        self.rms_norm(&self.name("norm.weight"), self.hidden_size())
    }

    /// The error of an accessor that reads BERT/GPT-2's attention sublayer, for a rotary
    /// family: the analyses built on `AttentionLayer` must not run on a different operator.
    pub(crate) fn plain_only(&self, what: &str) -> Result<()> {
        if !self.family().is_rotary() {
            return Ok(());
        }
        Err(Error::Model(format!(
            "{}: model_type '{}': rotary position embeddings (rope_theta), grouped-query attention (num_key_value_heads) and RMSNorm: {what} reads the plain attention layer of the BERT and GPT-2 families, which this model does not have; on this model run the hidden states (lipattn hidden, Python's Model.hidden_states), the sublayer's output (lipattn forward --model), the local constant (lipattn local --model, Python's Model.local_constant), the certified bounds with the attained search (lipattn lipschitz --model, Python's Model.lipschitz), the whole-model analysis (lipattn analyze, Python's Model.analyze) the token-space dynamics (lipattn invert, lipattn fixed-point and lipattn flow with --model DIR --layer L) and the rotary sublayer itself (Python's Model.attention_layer, a RotaryLayer); fixed-point --space measure is stated for maps of measures, which rotary attention is not (docs/bounds.md#b7-measure-view)",
            self.origin(),
            self.config().model_type
        )))
    }
}

impl Family {
    /// The rotary families' tensor names have `model.` (a `*ForCausalLM` save) or no prefix (a
    /// bare `*Model` save).
    pub(crate) const ROTARY_PREFIXES: &'static [&'static str] = &["model.", ""];
}
