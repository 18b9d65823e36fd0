//! `forward`: a checkpoint's attention sublayer applied to one token sequence, as the model
//! computes it (all heads, output projection and bias; no residual, no norm). Plain layers
//! (BERT, GPT-2) take optional token weights, a causal mask and the L2 kernel on request; a
//! rotary sublayer runs on positions 0..n-1 with its own causal or sliding-window mask and its
//! rope, and refuses the options that would make it another map.

use crate::attention::Kernel;
use crate::error::{Error, Result};
use crate::models::SublayerWeights;
use crate::operator::LayerSource;
use faer::{Mat, MatRef};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardRequest {
    /// Mask every layer causally (GPT-2 and the rotary families always are).
    pub causal: bool,
    /// Score kernel of a plain layer: dot (the model's own) or l2 (tied to the query projection).
    pub kernel: Kernel,
}

impl Default for ForwardRequest {
    fn default() -> Self {
        Self {
            causal: false,
            kernel: Kernel::Dot,
        }
    }
}

/// The sublayer's output f(X) (n x d_out) at tokens `x`, with token weights `weights` (plain
/// layers only; uniform otherwise).
pub fn run(
    req: &ForwardRequest,
    sublayer: &SublayerWeights,
    source: &LayerSource,
    x: MatRef<'_, f64>,
    weights: Option<&[f64]>,
) -> Result<Mat<f64>> {
    match sublayer {
        SublayerWeights::Plain(layer) => {
            let layer = (**layer).clone().with_kernel(req.kernel);
            layer.forward(x, weights, source.mask(req.causal.then_some(true)))
        }
        SublayerWeights::Rotary { layer, family } => {
            let refuse = |what: &str| {
                Error::Option(format!(
                    "{what} does not apply to model_type '{family}': its rotary sublayer scores tokens at positions 0..n-1 by rotated dot products under its own causal{} mask; give the tokens only",
                    if layer.window.is_some() { " sliding-window" } else { "" }
                ))
            };
            if weights.is_some() {
                return Err(refuse("`weights` (token weights: a map of measures)"));
            }
            if req.kernel != Kernel::Dot {
                return Err(refuse("`kernel` 'l2'"));
            }
            layer.forward(x)
        }
    }
}
