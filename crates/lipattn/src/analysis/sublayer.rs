//! The two kinds of attention the analysis walks through: BERT/GPT-2's plain sublayer, and the
//! rotary sublayer of the decoder families (Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma 2). The
//! stages are written once against [`Op`] and [`Block`]; each kind brings its own local constant,
//! certified bounds, radius and structured-input geometry, so a BERT or GPT-2 report is computed
//! exactly as before the rotary path existed.

use super::sigma::{local_sigma, rotary_local_sigma};
use crate::attention::{AttentionLayer, RotaryAttention};
use crate::bounds::layer_norm::{layer_norm_radius, rms_norm_radius};
use crate::bounds::rotary::rotary_summary;
use crate::bounds::{certified_summaries, CertifiedSummary};
use crate::derivatives::AttentionMemory;
use crate::domain::Domain;
use crate::error::Result;
use crate::estimation::{adversarial_direction, LanczosOptions, TransitionGeometry};
use crate::models::decoder::RotaryBlock;
use crate::models::{Model, ModelLayer};
use faer::{Mat, MatRef};

/// One operator measured and certified: a sublayer or one head's contribution.
#[derive(Clone, Debug)]
pub(super) enum Op {
    Plain(AttentionLayer<f64>),
    /// Always causal at positions 0..n-1, with the layer's window.
    Rotary(RotaryAttention),
}

impl Op {
    pub fn heads(&self) -> usize {
        match self {
            Op::Plain(l) => l.heads,
            Op::Rotary(l) => l.heads,
        }
    }

    /// Head h's contribution (plain: W_O^h Gamma^h; rotary: query head h with its kv head and
    /// its columns of W_O), without the output bias.
    pub fn head(&self, h: usize) -> Result<Op> {
        Ok(match self {
            Op::Plain(l) => Op::Plain(l.head(h, false)?),
            Op::Rotary(l) => Op::Rotary(l.head(h)?),
        })
    }

    /// ||J(X)||_2 by Lanczos at the input `x` of `domain`, on the attention state `attention`
    /// (resolved by [`Op::attention_at`]): an attained value, a lower bound.
    pub fn local_sigma(
        &self,
        x: MatRef<'_, f64>,
        domain: &Domain,
        opts: &LanczosOptions,
        attention: AttentionMemory,
    ) -> Result<f64> {
        match self {
            Op::Plain(l) => local_sigma(l, x, domain, opts, attention),
            Op::Rotary(l) => {
                debug_assert!(domain.causal && x.nrows() == domain.n);
                rotary_local_sigma(l, x, opts, attention)
            }
        }
    }

    /// The attention state this operator holds at n tokens when the options ask for `asked`:
    /// the rule of `AttentionMemory::resolve`, for plain and rotary operators alike.
    pub fn attention_at(&self, n: usize, asked: AttentionMemory) -> Result<AttentionMemory> {
        match self {
            Op::Plain(l) => asked.resolve(l, n),
            Op::Rotary(l) => asked.resolve(l, n),
        }
    }

    /// Bytes of this operator's attention state at n tokens on `attention` (resolved): the
    /// estimates its budget checks use.
    pub fn state_bytes(&self, n: usize, attention: AttentionMemory) -> Option<u64> {
        match self {
            Op::Plain(l) => attention.state_bytes(l, n),
            Op::Rotary(l) => attention.state_bytes(l, n),
        }
    }

    /// (heads, dk + dv, d_in, d_out, width of the projected tangent per head): the sizes the
    /// estimate's cost model reads.
    pub fn shape(&self) -> (usize, usize, usize, usize, usize) {
        match self {
            Op::Plain(l) => (
                l.heads,
                l.dk + l.dv,
                l.d_in(),
                l.d_out(),
                if l.kernel == crate::attention::Kernel::Dot {
                    2 * l.dk + l.dv
                } else {
                    l.dk + l.dv
                },
            ),
            Op::Rotary(l) => (l.heads, 2 * l.head_dim, l.d_in(), l.d_out(), 3 * l.head_dim),
        }
    }

    /// The best certified bounds at each domain: B1-B5 for a plain operator, B7 for a rotary one
    /// (every domain of a rotary layer is causal).
    pub fn certified(&self, domains: &[Domain]) -> Result<Vec<CertifiedSummary>> {
        match self {
            Op::Plain(l) => certified_summaries(l, domains),
            Op::Rotary(l) => domains.iter().map(|d| rotary_summary(l, d)).collect(),
        }
    }

    /// The plain head whose weights fix the structured inputs of head h: the head itself for a
    /// plain layer; for a rotary one, query head h read without rotation, qk-norm or softcap
    /// (`RotaryAttention::unrotated_head`, as the rotary ascent's transition starts read it).
    /// Returns the layer and the head index within it.
    fn structure_of(&self, h: usize) -> Result<(std::borrow::Cow<'_, AttentionLayer<f64>>, usize)> {
        Ok(match self {
            Op::Plain(l) => (std::borrow::Cow::Borrowed(l), h),
            Op::Rotary(l) => (std::borrow::Cow::Owned(l.unrotated_head(h)?), 0),
        })
    }

    /// Castin et al.'s adversarial direction for head h (see `structure_of`).
    pub fn adversarial_direction(&self, h: usize) -> Result<Vec<f64>> {
        let (layer, head) = self.structure_of(h)?;
        adversarial_direction(&layer, head)
    }

    /// The transition-start geometry of head h on B_R (see `structure_of`).
    pub fn transition(&self, h: usize, radius: f64) -> Result<Option<TransitionGeometry>> {
        let (layer, head) = self.structure_of(h)?;
        TransitionGeometry::new(&layer, head, radius)
    }
}

/// One block of the model, as the real-text pass runs it (boxed: the two differ in size by
/// hundreds of bytes).
#[derive(Clone, Debug)]
pub(super) enum Block {
    Plain(Box<ModelLayer>),
    Rotary(Box<RotaryBlock>),
}

impl Block {
    pub fn load(model: &Model, l: usize) -> Result<Block> {
        Ok(if model.family().is_rotary() {
            Block::Rotary(Box::new(model.rotary_layer(l)?))
        } else {
            Block::Plain(Box::new(model.layer(l)?))
        })
    }

    /// The attention sublayer as an operator.
    pub fn attention(&self) -> Op {
        match self {
            Block::Plain(b) => Op::Plain(b.attention.clone()),
            Block::Rotary(b) => Op::Rotary(b.attention.clone()),
        }
    }

    /// R of the ball holding every attention input: B6 on the LayerNorm before a plain
    /// sublayer, the RMSNorm radius sqrt(d) max|g| (docs/bounds.md#b7-rms-radius) before a
    /// rotary one.
    pub fn radius(&self) -> Result<f64> {
        match self {
            Block::Plain(b) => {
                let ln = &b.attention_input_norm;
                layer_norm_radius(&ln.gamma, &ln.beta)
            }
            Block::Rotary(b) => rms_norm_radius(&b.attention_norm),
        }
    }

    /// What the attention sublayer reads for the hidden state `h` entering the block.
    pub fn attention_input(&self, h: MatRef<'_, f64>) -> Result<Mat<f64>> {
        match self {
            Block::Plain(b) => b.attention_input(h),
            Block::Rotary(b) => b.attention_input(h),
        }
    }

    pub fn forward(&self, h: MatRef<'_, f64>) -> Result<Mat<f64>> {
        match self {
            Block::Plain(b) => b.forward(h),
            Block::Rotary(b) => b.forward(h),
        }
    }
}
