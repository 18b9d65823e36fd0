//! The certified Lipschitz constant of a block, a stack of blocks or a whole model, composed
//! from certified constants of its pieces (docs/bounds.md#block-composition). Frobenius norms on
//! both sides, sequences of n tokens; reported however large it is.
//!
//! Composition rules, each piece's constant valid on the set the previous pieces map into:
//! Lip(g o f) <= Lip(g on f's image) Lip(f); Lip(id + f) <= 1 + Lip(f). The attention sublayers
//! are certified on the ball their input norm maps into (B6 after a LayerNorm, the RMSNorm radius
//! before a rotary sublayer); norms, feed-forwards and pooling get global constants, except the
//! gated feed-forward (quadratic) which is certified on the ball of its input RMSNorm.

use super::layer_norm::{layer_norm_radius, residual, rms_norm_radius};
use super::{certified_summary, rotary::rotary_summary, Domain};
use crate::attention::norms::{LayerNorm, RmsNorm};
use crate::error::Result;
use crate::linalg::rounding::{
    add_up, div_up, inv_sqrt_up, mul_up, norm2_up, spectral_up, sqrt_down,
};
use crate::models::decoder::GatedFeedForward;
use crate::models::stack::{BlockWeights, FinalNorm, Pool, Scope, StackWeights};
use crate::models::{FeedForward, ModelLayer, NormPlacement, RotaryBlock};
use serde::Serialize;

/// One factor of the composed bound.
#[derive(Clone, Debug, Serialize)]
pub struct Factor {
    /// What it bounds ("layer 2 attention sublayer on (B_R)^n", "layer 2 LayerNorm", ...).
    pub piece: String,
    /// Its certified Lipschitz constant (Frobenius norms), +inf where none is finite.
    pub value: f64,
}

/// The composed certified bound of a scope at sequence length n.
#[derive(Clone, Debug, Serialize)]
pub struct ComposedBound {
    /// Certified upper bound of the scope's Lipschitz constant on `domain` (Frobenius to
    /// Frobenius); None where a factor is infinite or the product leaves the f64 range.
    pub value: Option<f64>,
    /// Where it holds.
    pub domain: String,
    pub n: usize,
    /// The factors multiplied, residual branches already folded (1 + branch).
    pub factors: Vec<Factor>,
    pub notes: Vec<String>,
}

/// max |g_k| / sqrt(eps): the global constant of a LayerNorm or RMSNorm with gain g. The
/// Jacobian at x is diag(g) P / s with P an orthogonal projection and s >= sqrt(eps).
fn norm_constant(gain: impl Iterator<Item = f64>, eps: f64) -> f64 {
    let gmax = gain.fold(0.0f64, |m, g| m.max(g.abs()));
    div_up(gmax, sqrt_down(eps))
}

fn layer_norm_constant(ln: &LayerNorm) -> f64 {
    norm_constant(ln.gamma.iter().copied(), ln.eps)
}

fn rms_norm_constant(n: &RmsNorm) -> f64 {
    norm_constant(n.gain().into_iter(), n.eps)
}

/// ||W_out|| sup|act'| ||W_in||, a global constant of x -> W_out act(W_in x + b) + b'.
fn feed_forward_constant(ff: &FeedForward) -> Result<f64> {
    Ok(mul_up(
        mul_up(
            spectral_up(ff.w_out.as_ref())?,
            ff.activation.derivative_bound(),
        ),
        spectral_up(ff.w_in.as_ref())?,
    ))
}

/// The gated feed-forward on the ball B_rho of each token: with g = W_g x + b_g and
/// u = W_u x + b_u, J t = W_d ((act'(g) ⊙ W_g t) ⊙ u + act(g) ⊙ W_u t), |act(g_i)| <= c_0 |g_i|,
/// so ||J|| <= ||W_d|| (c_1 ||W_g|| (||W_u|| rho + |b_u|) + c_0 (||W_g|| rho + |b_g|) ||W_u||).
fn gated_constant(ff: &GatedFeedForward, rho: f64) -> Result<f64> {
    let (g, u, d) = (
        spectral_up(ff.gate.as_ref())?,
        spectral_up(ff.up.as_ref())?,
        spectral_up(ff.down.as_ref())?,
    );
    let u_max = add_up(mul_up(u, rho), norm2_up(ff.b_up.iter().copied()));
    let g_max = add_up(mul_up(g, rho), norm2_up(ff.b_gate.iter().copied()));
    let a = mul_up(mul_up(ff.activation.derivative_bound(), g), u_max);
    let b = mul_up(mul_up(ff.activation.gain_bound(), g_max), u);
    Ok(mul_up(d, add_up(a, b)))
}

struct Builder {
    factors: Vec<Factor>,
    notes: Vec<String>,
    n: usize,
}

impl Builder {
    fn push(&mut self, piece: String, value: f64) {
        self.factors.push(Factor { piece, value });
    }

    fn plain_attention(&mut self, l: &ModelLayer, input_norm: &LayerNorm) -> Result<f64> {
        let r = layer_norm_radius(&input_norm.gamma, &input_norm.beta)?;
        let s = certified_summary(&l.attention, &Domain::new(r, self.n, l.causal)?)?;
        Ok(match s.best.frobenius {
            Some(v) => v,
            None => {
                self.notes.extend(s.notes);
                f64::INFINITY
            }
        })
    }

    fn plain_block(&mut self, l: &ModelLayer, half: bool, attention_only: bool) -> Result<()> {
        let i = l.index;
        let att_norm = match l.placement {
            NormPlacement::Post => &l.attention_input_norm,
            NormPlacement::Pre => &l.attention_norm,
        };
        let att = self.plain_attention(l, att_norm)?;
        let r = layer_norm_radius(&att_norm.gamma, &att_norm.beta)?;
        if attention_only {
            self.push(
                format!("layer {i} attention sublayer on (B_R)^n, R = {r} (B6)"),
                att,
            );
            return Ok(());
        }
        let (ln1, ln2) = (
            layer_norm_constant(&l.attention_norm),
            layer_norm_constant(&l.feed_forward_norm),
        );
        let ff = feed_forward_constant(&l.feed_forward)?;
        match l.placement {
            NormPlacement::Post => {
                self.push(
                    format!("layer {i} id + attention on (B_R)^n, R = {r} (B6)"),
                    residual(att),
                );
                self.push(
                    format!("layer {i} attention LayerNorm (max|gamma| / sqrt(eps))"),
                    ln1,
                );
                if !half {
                    self.push(format!("layer {i} id + feed-forward"), residual(ff));
                    self.push(
                        format!("layer {i} output LayerNorm (max|gamma| / sqrt(eps))"),
                        ln2,
                    );
                }
            }
            NormPlacement::Pre => {
                self.push(
                    format!(
                        "layer {i} id + attention(LayerNorm), attention on (B_R)^n, R = {r} (B6)"
                    ),
                    residual(mul_up(att, ln1)),
                );
                if !half {
                    self.push(
                        format!("layer {i} id + feed-forward(LayerNorm)"),
                        residual(mul_up(ff, ln2)),
                    );
                }
            }
        }
        Ok(())
    }

    fn rotary_block(&mut self, b: &RotaryBlock, half: bool, attention_only: bool) -> Result<()> {
        let i = b.index;
        let rho = rms_norm_radius(&b.attention_norm)?;
        let s = rotary_summary(&b.attention, &Domain::new(rho, self.n, true)?)?;
        let att = s.best.frobenius.unwrap_or_else(|| {
            self.notes.extend(s.notes.clone());
            f64::INFINITY
        });
        let ball = format!("(B_R)^n, R = {rho} (RMSNorm radius)");
        if attention_only {
            self.push(
                format!("layer {i} rotary attention sublayer on {ball} (B7)"),
                att,
            );
            return Ok(());
        }
        let out_norm = b
            .attention_output_norm
            .as_ref()
            .map_or(1.0, rms_norm_constant);
        let branch = mul_up(mul_up(out_norm, att), rms_norm_constant(&b.attention_norm));
        self.push(
            format!("layer {i} id + attention branch (norms max|g| / sqrt(eps), attention B7 on {ball})"),
            residual(branch),
        );
        if half {
            return Ok(());
        }
        let rho_f = rms_norm_radius(&b.feed_forward_norm)?;
        let ff = gated_constant(&b.feed_forward, rho_f)?;
        let out_norm = b
            .feed_forward_output_norm
            .as_ref()
            .map_or(1.0, rms_norm_constant);
        let branch = mul_up(
            mul_up(out_norm, ff),
            rms_norm_constant(&b.feed_forward_norm),
        );
        self.push(
            format!("layer {i} id + gated feed-forward branch (on the RMSNorm ball R = {rho_f})"),
            residual(branch),
        );
        Ok(())
    }
}

/// The composed certified bound of `w` for sequences of n tokens.
pub fn composed_bound(w: &StackWeights, n: usize) -> Result<ComposedBound> {
    let mut b = Builder {
        factors: Vec::new(),
        notes: Vec::new(),
        n,
    };
    if let Some(ln) = &w.input_norm {
        b.push(
            "embeddings LayerNorm (max|gamma| / sqrt(eps))".into(),
            layer_norm_constant(ln),
        );
    }
    let attention_only = w.scope == Scope::Attention;
    for block in &w.blocks {
        match block {
            BlockWeights::Plain(l) => b.plain_block(l, w.half, attention_only)?,
            BlockWeights::Rotary(r) => b.rotary_block(r, w.half, attention_only)?,
        }
    }
    match &w.final_norm {
        Some(FinalNorm::Layer(ln)) => b.push(
            "final LayerNorm (max|gamma| / sqrt(eps))".into(),
            layer_norm_constant(ln),
        ),
        Some(FinalNorm::Rms(r)) => b.push(
            "final RMSNorm (max|g| / sqrt(eps))".into(),
            rms_norm_constant(r),
        ),
        None => {}
    }
    if w.pool != Pool::None {
        b.push("mean over n tokens (1 / sqrt(n))".into(), inv_sqrt_up(n));
    }
    if w.pool == Pool::MeanNormalised {
        b.notes.push(
            "p -> p / |p| has derivative norm 1 / |p|, unbounded near p = 0: the pooled, normalised embedding has no global Lipschitz constant".into(),
        );
        b.push(
            "l2 normalisation (not Lipschitz near 0)".into(),
            f64::INFINITY,
        );
    }
    let value = b.factors.iter().fold(1.0, |p, f| mul_up(p, f.value));
    let domain = match (w.scope, w.blocks.first()) {
        (Scope::Model, _) | (_, Some(BlockWeights::Rotary(_))) => {
            format!("all of R^(n x d), n = {n}, Frobenius norms")
        }
        (_, Some(BlockWeights::Plain(l))) if l.placement == NormPlacement::Pre && w.scope != Scope::Attention => {
            format!("all of R^(n x d), n = {n}, Frobenius norms")
        }
        _ => format!(
            "(B_R)^n, R = the radius of the LayerNorm before the layer (B6), n = {n}, Frobenius norms"
        ),
    };
    let domain = if w.scope == Scope::Attention {
        format!("the ball of the attention factor, n = {n}, Frobenius norms")
    } else {
        domain
    };
    Ok(ComposedBound {
        value: value.is_finite().then_some(value),
        domain,
        n,
        factors: b.factors,
        notes: b.notes,
    })
}
