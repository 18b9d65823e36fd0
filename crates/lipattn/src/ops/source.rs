//! The layer and tokens the dynamics commands (invert, fixed-point, flow) run on when they are
//! not given directly: a model layer, a seeded synthetic layer or Geshkovski et al.'s identity
//! layer, and tokens from a `.npy` file, seeded Gaussian tokens or seeded points on the sphere.
//! The seed offsets of every random part of these commands live here.

use crate::attention::{AttentionLayer, Kernel};
use crate::dynamics::flow::{identity_layer, sphere_sample};
use crate::dynamics::synthetic::{random_layer, random_tokens_checked};
use crate::dynamics::{AnyBranch, Branch, RotaryBranch};
use crate::error::{as_option, check_at_least, Error, Result};
use crate::estimation::SplitMix;
use crate::models::SublayerWeights;
use crate::npy::read_matrix;
use crate::operator::LayerSource;
use faer::Mat;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;

/// Inverse temperature of Geshkovski et al.'s identity layer unless given.
pub const IDENTITY_BETA: f64 = 1.0;

/// The seed of random tokens drawn for a command run with `seed` (the layer takes `seed`).
pub const fn token_seed(seed: u64) -> u64 {
    seed.wrapping_add(1)
}

/// The seed of the Gronwall check's perturbation in `flow`.
pub const fn gronwall_seed(seed: u64) -> u64 {
    seed.wrapping_add(7)
}

/// The seed of the mean-field samples in `flow`.
pub const fn mean_field_seed(seed: u64) -> u64 {
    seed.wrapping_add(11)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceRequest {
    /// Hugging Face model directory (with `layer`); without it a synthetic layer is used.
    pub model: Option<PathBuf>,
    /// Layer index (0-based) of `model`.
    pub layer: Option<usize>,
    /// Synthetic layer: token width d.
    pub d: usize,
    /// Synthetic layer: number of heads.
    pub heads: usize,
    /// Synthetic layer: l2 (tied, W_V = U W_Q: certified on all of R^{n x d}) or dot (certified
    /// on a ball only).
    pub kernel: Kernel,
    /// Synthetic layer: standard deviation of the biases.
    pub bias: f64,
    /// Seed of the synthetic layer and, offset, of random tokens and the command's own draws.
    pub seed: u64,
    /// Tokens X, an (n, d) .npy array; random otherwise.
    pub tokens: Option<PathBuf>,
    /// Number of random tokens.
    pub n: usize,
    /// Standard deviation of random Gaussian tokens.
    pub token_scale: f64,
}

impl Default for SourceRequest {
    fn default() -> Self {
        Self {
            model: None,
            layer: None,
            d: 16,
            heads: 2,
            kernel: Kernel::L2,
            bias: 0.1,
            seed: 0,
            tokens: None,
            n: 16,
            token_scale: 1.0,
        }
    }
}

/// The origin of the seeded random layer of these parameters (`random_layer`), in every frontend.
pub fn synthetic_origin(
    d: usize,
    heads: usize,
    kernel: Kernel,
    bias: f64,
    seed: u64,
) -> LayerSource {
    let name = format!(
        "random layer (d {d}, {heads} heads, {}, bias {}, seed {seed})",
        kernel.name(),
        crate::fmt::exact(bias)
    );
    LayerSource::new(name, false, kernel)
}

/// The origin of Geshkovski et al.'s identity layer on R^d with inverse temperature `beta`.
pub fn identity_origin(d: usize, beta: f64) -> LayerSource {
    let name = format!(
        "identity layer Q = K = V = I (d {d}, beta {})",
        crate::fmt::exact(beta)
    );
    LayerSource::new(name, false, Kernel::Dot)
}

/// A layer with where it came from: as JSON (a report's `layer` key) and as the origin its
/// `operator` names.
pub struct Sourced<B = AttentionLayer<f64>> {
    pub layer: B,
    pub description: Value,
    pub origin: LayerSource,
}

impl SourceRequest {
    /// The branch of the dynamics (invert, fixed-point, flow) and where it came from: a model
    /// layer of any family (rotary ones on positions 0..n-1 with their own mask) or the synthetic
    /// layer.
    pub fn branch(&self) -> Result<Sourced<AnyBranch>> {
        match (&self.model, self.layer) {
            (Some(dir), Some(l)) => {
                let (weights, origin) = crate::models::load_sublayer_source(dir, l)?;
                let model = dir.display().to_string();
                let (layer, description) = match weights {
                    SublayerWeights::Plain(layer) => {
                        if origin.causal {
                            return Err(Error::Option(format!("{model} layer {l} is causal (GPT-2 family): the dynamics certify the unmasked dot-product layer, an operator on measures, which a causal mask is not; the rotary families' causal sublayers are certified by B7 and run")));
                        }
                        let description = json!({"source": "model", "model": model, "layer": l, "kernel": layer.kernel, "heads": layer.heads, "d": layer.d_in()});
                        (AnyBranch::Plain(layer.into()), description)
                    }
                    SublayerWeights::Rotary { layer, family } => {
                        let branch = RotaryBranch::new(*layer, family);
                        let description = json!({"source": "model", "model": model, "layer": l, "family": family, "kernel": "dot", "heads": branch.layer.heads, "kv_heads": branch.layer.kv_heads, "d": branch.layer.d_in(), "rotary": branch.rotary_form()});
                        (AnyBranch::Rotary(branch.into()), description)
                    }
                };
                Ok(Sourced {
                    layer,
                    description,
                    origin,
                })
            }
            (Some(_), None) | (None, Some(_)) => Err(Error::Option(
                "`model` and `layer` go together: give both or neither".into(),
            )),
            (None, None) => {
                let layer = random_layer(self.d, self.heads, self.kernel, self.bias, self.seed)?;
                let description = json!({"source": "synthetic", "kernel": self.kernel, "heads": self.heads, "d": self.d, "bias": self.bias, "seed": self.seed});
                let origin =
                    synthetic_origin(self.d, self.heads, self.kernel, self.bias, self.seed);
                Ok(Sourced {
                    layer: AnyBranch::Plain(layer.into()),
                    description,
                    origin,
                })
            }
        }
    }

    /// Geshkovski et al.'s layer Q = K = V = I on R^d (d of this request) with scores
    /// beta <x, y>, and its description.
    pub fn identity_layer(&self, beta: f64) -> Result<Sourced<AnyBranch>> {
        let layer = AnyBranch::Plain(identity_layer(self.d, beta)?.into());
        let description = json!({"source": "identity", "d": self.d, "beta": beta, "kernel": "dot"});
        let origin = identity_origin(self.d, beta);
        Ok(Sourced {
            layer,
            description,
            origin,
        })
    }

    /// The tokens for a layer of width d: the file, or seeded Gaussian tokens.
    pub fn tokens(&self, d: usize) -> Result<Mat<f64>> {
        match &self.tokens {
            Some(p) => {
                let x = read_matrix(p)?;
                if x.ncols() != d {
                    return Err(Error::Option(format!(
                        "`tokens` has width {}, the layer expects {d}",
                        x.ncols()
                    )));
                }
                Ok(x)
            }
            None => {
                self.check_random_count(d)?;
                as_option(random_tokens_checked(
                    self.n,
                    d,
                    self.token_scale,
                    token_seed(self.seed),
                    "`token_scale`",
                ))
            }
        }
    }

    /// The tokens for the identity layer: the file, or seeded points uniform on the sphere.
    pub fn sphere_tokens(&self, d: usize) -> Result<Mat<f64>> {
        if self.tokens.is_some() {
            return self.tokens(d);
        }
        self.check_random_count(d)?;
        Ok(sphere_sample(
            self.n,
            d,
            &mut SplitMix::new(token_seed(self.seed)),
        ))
    }

    fn check_random_count(&self, d: usize) -> Result<()> {
        as_option(check_at_least("`n`", self.n, 1))?;
        crate::budget::check(
            || format!("{} random tokens of width {d} (`n`)", self.n),
            crate::budget::bytes_of(&[self.n, d], 8),
        )
    }
}
