//! Which operator a result is about. A layer from a checkpoint is computed by its model with one
//! mask and one kernel (GPT-2 family: causal; BERT: none; both dot-product); [`LayerSource`]
//! carries them with the weights' origin, so that every request defaults to the operator the
//! model computes, decided here once, and a frontend only passes on what the user explicitly
//! asked for. [`Operator`] is the `operator` key of every certifying report: the layer, head,
//! kernel, mask, domain, metric and precision, with a sentence saying so, and a note wherever a
//! request departs from the model's own mask or kernel.

use crate::attention::Kernel;
use crate::domain::Domain;
use serde::Serialize;

/// Where a layer's weights come from and how its model computes it.
#[derive(Clone, Debug, Serialize)]
pub struct LayerSource {
    /// Human-readable origin, e.g. "GPT-2 layer 3 self-attention of ./gpt2".
    pub name: String,
    /// The mask the model applies (as declared, for weights given without a model).
    pub causal: bool,
    /// The model's own score kernel.
    pub kernel: Kernel,
}

impl LayerSource {
    pub fn new(name: impl Into<String>, causal: bool, kernel: Kernel) -> Self {
        Self {
            name: name.into(),
            causal,
            kernel,
        }
    }

    /// The mask a request runs with: the model's own unless the request names one.
    pub fn mask(&self, requested: Option<bool>) -> bool {
        requested.unwrap_or(self.causal)
    }

    /// The source of head `h`'s contribution W_O^h Gamma^h (no output bias).
    pub fn head(&self, h: usize) -> Self {
        Self::new(
            format!("{}, head {h} (W_O^h Gamma^h, no output bias)", self.name),
            self.causal,
            self.kernel,
        )
    }
}

crate::named_enum! {
    /// A mask a request may ask for instead of the model's own.
    pub enum Mask as "mask" {
        /// Query i sees tokens 0..=i (GPT-2 family).
        Causal = "causal",
        /// Every query sees every token (BERT).
        None = "none",
    }
}

impl Mask {
    pub fn of(causal: bool) -> Self {
        if causal {
            Mask::Causal
        } else {
            Mask::None
        }
    }

    pub fn causal(self) -> bool {
        self == Mask::Causal
    }
}

/// The operator a report certifies (or, for attained values, measures).
#[derive(Clone, Debug, Serialize)]
pub struct Operator {
    /// The layer (and head) the weights come from.
    pub layer: String,
    pub kernel: Kernel,
    /// The mask of the operator reported on.
    pub mask: Mask,
    /// The mask the model itself applies.
    pub model_mask: Mask,
    pub map: &'static str,
    /// "uniform" (every certified bound) or "given" (a local constant at weighted tokens).
    pub weights: &'static str,
    /// Tokens lie in B_R with this R; None: all of R^d, or one given input.
    pub radius: Option<f64>,
    /// Sequence length; None where the report covers several (each of its points names its n)
    /// or where the map acts on measures.
    pub n: Option<usize>,
    pub metric: &'static str,
    pub precision: &'static str,
    /// Where the request departs from the operator the model computes.
    pub overrides: Vec<String>,
    /// All of the above in one sentence.
    pub description: String,
}

const TOKEN_MAP: &str = "token map X -> f(X)";
const UNIFORM: &str = "uniform token weights";
const GIVEN: &str = "given token weights";
const FROBENIUS: &str = "Frobenius norm";
const PRECISION: &str = "f64 weights as stored";

impl Operator {
    /// The token map of `source`'s layer (or of one head, when `source` is a head's) with
    /// `kernel` on `domain`, whose mask is the one reported on.
    pub fn token_map(source: &LayerSource, kernel: Kernel, domain: &Domain) -> Self {
        Self::token_map_on(source, kernel, domain.causal, Some(domain.radius), domain.n)
    }

    /// The token map on (B_R)^n for every n of a sweep (each point of the report names its n).
    pub fn token_map_sweep(
        source: &LayerSource,
        kernel: Kernel,
        radius: f64,
        causal: bool,
    ) -> Self {
        // The description is for reading; the `radius` key carries every digit.
        let on = format!(
            "n tokens (n per point) in B_R (R = {})",
            crate::fmt::compact(radius)
        );
        Self::build(source, kernel, causal, Some(radius), None, on)
    }

    /// The token map on (B_R)^n, or on all of R^{n x d} without a radius (a kernel certified
    /// without a ball).
    pub fn token_map_on(
        source: &LayerSource,
        kernel: Kernel,
        causal: bool,
        radius: Option<f64>,
        n: usize,
    ) -> Self {
        let on = match radius {
            Some(r) => format!("n = {n} tokens in B_R (R = {})", crate::fmt::compact(r)),
            None => format!("n = {n} tokens in all of R^d"),
        };
        Self::build(source, kernel, causal, radius, Some(n), on)
    }

    /// The token map near one input X of n tokens, with uniform or given token weights (a local
    /// constant: attained there, not a bound over a domain).
    pub fn token_map_at(
        source: &LayerSource,
        kernel: Kernel,
        causal: bool,
        n: usize,
        weighted: bool,
    ) -> Self {
        let on = format!("n = {n} tokens, at the given X");
        let mut op = Self::build(source, kernel, causal, None, Some(n), on);
        if weighted {
            op.weights = "given";
            op.description = op.description.replacen(UNIFORM, GIVEN, 1);
        }
        op
    }

    fn build(
        source: &LayerSource,
        kernel: Kernel,
        causal: bool,
        radius: Option<f64>,
        n: Option<usize>,
        on: String,
    ) -> Self {
        let mut overrides = vec![];
        if causal != source.causal {
            overrides.push(format!(
                "for the {} operator, not the model's {} one (mask explicitly overridden)",
                if causal { "causal" } else { "unmasked" },
                if source.causal { "causal" } else { "unmasked" },
            ));
        }
        if kernel != source.kernel {
            overrides.push(format!(
                "for the {} kernel, not the model's {} kernel (kernel explicitly overridden)",
                kernel.name(),
                source.kernel.name()
            ));
        }
        let mut description = format!(
            "{}: {} self-attention, {} mask, {TOKEN_MAP} on {on}, {UNIFORM}, {FROBENIUS}, {PRECISION}",
            source.name,
            kernel.name(),
            if causal { "causal" } else { "no" },
        );
        for o in &overrides {
            description.push_str("; ");
            description.push_str(o);
        }
        Self {
            layer: source.name.clone(),
            kernel,
            mask: Mask::of(causal),
            model_mask: Mask::of(source.causal),
            map: TOKEN_MAP,
            weights: "uniform",
            radius,
            n,
            metric: FROBENIUS,
            precision: PRECISION,
            overrides,
            description,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_override_is_named() {
        let s = LayerSource::new("GPT-2 layer 0", true, Kernel::Dot);
        assert!(s.mask(None));
        assert!(!s.mask(Some(false)));
        let own = Operator::token_map(&s, Kernel::Dot, &Domain::new(2.0, 8, true).unwrap());
        assert!(own.overrides.is_empty());
        assert!(
            own.description.contains("causal mask"),
            "{}",
            own.description
        );
        assert!(own.description.contains("n = 8"), "{}", own.description);
        let other = Operator::token_map(&s, Kernel::L2, &Domain::new(2.0, 8, false).unwrap());
        assert_eq!((other.mask, other.model_mask), (Mask::None, Mask::Causal));
        assert_eq!(other.overrides.len(), 2);
        assert!(
            other
                .description
                .contains("unmasked operator, not the model's causal one"),
            "{}",
            other.description
        );
    }
}
