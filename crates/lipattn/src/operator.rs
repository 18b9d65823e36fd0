//! Which operator a result is about. A layer from a checkpoint is computed by its model with one
//! mask and one kernel (GPT-2 family: causal; BERT: none; both dot-product); [`LayerSource`]
//! carries them with the weights' origin, so that every request defaults to the operator the
//! model computes, decided here once, and a frontend only passes on what the user explicitly
//! asked for. [`Operator`] is the `operator` key of every certifying report: the layer, head,
//! kernel, mask, domain, metric and precision, with a sentence saying so, and a note wherever a
//! request departs from the model's own mask or kernel. The dynamics (`invert`, `fixed-point`,
//! `flow`) certify the layer's map without a mask, on the domain of their certificate
//! ([`Operator::certified`]).

use crate::attention::{Kernel, RotaryAttention};
use crate::domain::{CertifiedDomain, Domain};
use crate::fmt::compact;
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
    /// Multiplies the layer's output (W_O and b_O): the dynamics scale a layer to a certified
    /// constant (`invert`'s branch g = s f, `fixed-point --contract`); 1 elsewhere.
    pub scale: f64,
    /// "uniform" (every certified bound), "given" (a local constant at weighted tokens) or "any"
    /// (a map of measures, whatever their weights).
    pub weights: &'static str,
    /// Tokens lie in B_R with this R; None: all of R^d, or one given input.
    pub radius: Option<f64>,
    /// Where the certified value holds: all of R^{n x d} or the ball of `radius` (every atom's,
    /// for measures); None for a value at one given input, or where nothing is certified.
    pub domain: Option<CertifiedDomain>,
    /// Sequence length; None where the report covers several (each of its points names its n)
    /// or where the map acts on measures.
    pub n: Option<usize>,
    pub metric: &'static str,
    pub precision: &'static str,
    /// Where the request departs from the operator the model computes.
    pub overrides: Vec<String>,
    /// All of the above in one sentence.
    pub description: String,
    /// The rotary sublayer's structure (rotary families only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotary: Option<RotaryForm>,
}

/// What distinguishes one rotary sublayer's map from another's besides its weights: positions,
/// rope, head grouping, window, qk-norm and softcap (docs/rotary.md).
#[derive(Clone, Debug, Serialize)]
pub struct RotaryForm {
    /// The model_type of the checkpoint (llama, mistral, qwen2, qwen3, gemma, gemma2).
    pub family: &'static str,
    /// Token i sits at position i: the map is the sublayer on positions 0..n-1.
    pub positions: &'static str,
    pub rope_type: &'static str,
    pub rope_theta: f64,
    /// Coordinates of each head that rotate (head_dim, or less with a partial rotary factor).
    pub rotary_dim: usize,
    pub head_dim: usize,
    /// Query heads of the sublayer (also when the report is about one of them).
    pub heads: usize,
    pub kv_heads: usize,
    /// Query i sees keys i - window < j <= i; None: j <= i.
    pub window: Option<usize>,
    pub qk_norm: bool,
    /// Logits s become cap tanh(s / cap).
    pub softcap: Option<f64>,
}

impl RotaryForm {
    /// The form of `layer`, a sublayer of a `family` checkpoint.
    pub fn of(family: &'static str, layer: &RotaryAttention) -> Self {
        Self {
            family,
            positions: "0..n-1",
            rope_type: layer.rope.scaling.name(),
            rope_theta: layer.rope.theta,
            rotary_dim: layer.rope.rotary_dim,
            head_dim: layer.head_dim,
            heads: layer.heads,
            kv_heads: layer.kv_heads,
            window: layer.window,
            qk_norm: layer.qk_norm.is_some(),
            softcap: layer.softcap,
        }
    }

    /// The form in words, for an operator's description.
    fn words(&self) -> String {
        let mut w = format!(
            "{} rotary attention at positions {} ({} rope, theta {}, {} of {} coordinates per head rotated), {} query heads on {} kv heads, ",
            self.family,
            self.positions,
            self.rope_type,
            compact(self.rope_theta),
            self.rotary_dim,
            self.head_dim,
            self.heads,
            self.kv_heads,
        );
        match self.window {
            Some(win) => w.push_str(&format!("sliding window {win}")),
            None => w.push_str("no sliding window"),
        }
        w.push_str(if self.qk_norm {
            ", qk-norm"
        } else {
            ", no qk-norm"
        });
        match self.softcap {
            Some(cap) => w.push_str(&format!(", logit softcap {}", compact(cap))),
            None => w.push_str(", no softcap"),
        }
        w
    }
}

const TOKEN_MAP: &str = "token map X -> f(X)";
const MEASURE_MAP: &str = "measure map mu -> F(mu)";
const FLOW_MAP: &str = "flow mu_0 -> mu_t of dx/dt = Gamma_mu(x), 0 <= t <= T";
const TOKEN_FLOW_MAP: &str = "flow X_0 -> X_t of dX/dt = f(X), 0 <= t <= T";
const UNIFORM: &str = "uniform token weights";
const GIVEN: &str = "given token weights";
const ANY_WEIGHTS: &str = "measures of any weights";
const FROBENIUS: &str = "Frobenius norm";
const W1: &str = "W1 distance";
const PRECISION: &str = "f64 weights as stored";

/// The map, its weights and its metric, as the fields and as the words of the description.
struct Form {
    map: &'static str,
    weights: (&'static str, &'static str),
    metric: &'static str,
}

const TOKENS: Form = Form {
    map: TOKEN_MAP,
    weights: ("uniform", UNIFORM),
    metric: FROBENIUS,
};

const MEASURES: Form = Form {
    map: MEASURE_MAP,
    weights: ("any", ANY_WEIGHTS),
    metric: W1,
};

const FLOW: Form = Form {
    map: FLOW_MAP,
    weights: ("any", ANY_WEIGHTS),
    metric: W1,
};

const TOKEN_FLOW: Form = Form {
    map: TOKEN_FLOW_MAP,
    weights: ("uniform", UNIFORM),
    metric: FROBENIUS,
};

/// What a certifying report is about besides the layer: how many tokens, where they lie, and the
/// factor on the layer's output.
struct Scope {
    n: Option<usize>,
    domain: Option<CertifiedDomain>,
    scale: f64,
    /// The domain in words.
    on: String,
}

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
        let on = format!("n tokens (n per point) in B_R (R = {})", compact(radius));
        let domain = Some(CertifiedDomain::Ball { radius });
        Self::build(source, kernel, causal, TOKENS, scope(None, domain, on))
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
        let domain = match radius {
            Some(radius) => CertifiedDomain::Ball { radius },
            None => CertifiedDomain::All,
        };
        let on = format!("n = {n} tokens in {}", domain_words(Some(domain)));
        Self::build(
            source,
            kernel,
            causal,
            TOKENS,
            scope(Some(n), Some(domain), on),
        )
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
        let mut op = Self::build(source, kernel, causal, TOKENS, scope(Some(n), None, on));
        if weighted {
            op.weights = "given";
            op.description = op.description.replacen(UNIFORM, GIVEN, 1);
        }
        op
    }

    /// What the dynamics certify: the layer's map without a mask, its output scaled by `scale`,
    /// on tokens (n of them, Frobenius norm) or on measures (`n` None, W1), on `domain`, the
    /// domain of their certificate (None where nothing is certified).
    pub fn certified(
        source: &LayerSource,
        kernel: Kernel,
        scale: f64,
        n: Option<usize>,
        domain: Option<CertifiedDomain>,
    ) -> Self {
        Self::certified_masked(source, kernel, false, scale, n, domain)
    }

    /// [`Operator::certified`] for a map that applies its model's causal mask itself (a rotary
    /// sublayer: causal, windowed where the model windows, certified by B7 with that mask).
    pub fn certified_masked(
        source: &LayerSource,
        kernel: Kernel,
        causal: bool,
        scale: f64,
        n: Option<usize>,
        domain: Option<CertifiedDomain>,
    ) -> Self {
        let (form, on) = match n {
            Some(n) => (
                TOKENS,
                format!("n = {n} tokens in {}", domain_words(domain)),
            ),
            None => (
                MEASURES,
                format!("measures on {}", measure_domain_words(domain)),
            ),
        };
        let mut op = Self::build(source, kernel, causal, form, scope(n, domain, on));
        op.scale = scale;
        if scale != 1.0 {
            // The scale qualifies the map it multiplies: "token map X -> f(X) scaled by s".
            let scaled = format!("{} scaled by s = {}", op.map, compact(scale));
            op.description = op.description.replacen(op.map, &scaled, 1);
        }
        op
    }

    /// What `flow`'s Gronwall bound certifies: the time-t flow of measures whose atoms stay in
    /// the ball of `radius` on [0, T] (W1(mu_t, nu_t) <= e^{L t} W1(mu_0, nu_0)).
    pub fn flow(source: &LayerSource, kernel: Kernel, radius: f64) -> Self {
        let domain = Some(CertifiedDomain::Ball { radius });
        let on = format!("measures on {}", measure_domain_words(domain));
        Self::build(source, kernel, false, FLOW, scope(None, domain, on))
    }

    /// What the token flow's Gronwall bound certifies: the time-t flow of n x d token matrices
    /// (token i at position i, the layer's own mask) whose rows stay in the ball of `radius` on
    /// [0, T] (|X_t - Y_t|_F <= e^{L t} |X_0 - Y_0|_F).
    pub fn token_flow(
        source: &LayerSource,
        kernel: Kernel,
        causal: bool,
        radius: f64,
        n: usize,
    ) -> Self {
        let domain = Some(CertifiedDomain::Ball { radius });
        let on = format!("n = {n} tokens in {}", domain_words(domain));
        Self::build(
            source,
            kernel,
            causal,
            TOKEN_FLOW,
            scope(Some(n), domain, on),
        )
    }

    fn build(source: &LayerSource, kernel: Kernel, causal: bool, form: Form, scope: Scope) -> Self {
        let Scope {
            n,
            domain,
            scale,
            on,
        } = scope;
        let radius = match domain {
            Some(CertifiedDomain::Ball { radius }) => Some(radius),
            _ => None,
        };
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
            "{}: {} self-attention, {} mask, {} on {on}, {}, {}, {PRECISION}",
            source.name,
            kernel.name(),
            if causal { "causal" } else { "no" },
            form.map,
            form.weights.1,
            form.metric,
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
            map: form.map,
            scale,
            weights: form.weights.0,
            radius,
            domain,
            n,
            metric: form.metric,
            precision: PRECISION,
            overrides,
            description,
            rotary: None,
        }
    }

    /// This operator, computed by a rotary sublayer of form `form`.
    pub fn with_rotary(mut self, form: RotaryForm) -> Self {
        self.description = format!("{}; {}", self.description, form.words());
        self.rotary = Some(form);
        self
    }

    /// This operator, computed by a rotary sublayer of form `form` when there is one.
    pub fn with_rotary_form(self, form: Option<RotaryForm>) -> Self {
        match form {
            Some(f) => self.with_rotary(f),
            None => self,
        }
    }
}

fn scope(n: Option<usize>, domain: Option<CertifiedDomain>, on: String) -> Scope {
    Scope {
        n,
        domain,
        scale: 1.0,
        on,
    }
}

fn domain_words(domain: Option<CertifiedDomain>) -> String {
    match domain {
        Some(CertifiedDomain::All) => "all of R^d".into(),
        Some(CertifiedDomain::Ball { radius }) => format!("B_R (R = {})", compact(radius)),
        None => "no certified domain".into(),
    }
}

fn measure_domain_words(domain: Option<CertifiedDomain>) -> String {
    match domain {
        Some(CertifiedDomain::Ball { radius }) => format!("P(B_R) (R = {})", compact(radius)),
        // No W1 constant exists over P_1(R^d) (docs/bounds.md#b5-tied-l2-attention).
        Some(CertifiedDomain::All) => "P_1(R^d)".into(),
        None => "no certified domain".into(),
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

    #[test]
    fn the_dynamics_name_their_domain_scale_and_metric() {
        let s = LayerSource::new("random layer", false, Kernel::L2);
        let all = Operator::certified(&s, Kernel::L2, 0.5, Some(4), Some(CertifiedDomain::All));
        assert_eq!(
            (all.mask, all.n, all.metric),
            (Mask::None, Some(4), FROBENIUS)
        );
        assert_eq!(
            (all.domain, all.radius, all.scale),
            (Some(CertifiedDomain::All), None, 0.5)
        );
        assert!(
            all.description
                .contains("token map X -> f(X) scaled by s = 0.5 on n = 4 tokens in all of R^d"),
            "{}",
            all.description
        );
        let ball = CertifiedDomain::Ball { radius: 3.0 };
        let m = Operator::certified(&s, Kernel::Dot, 1.0, None, Some(ball));
        assert_eq!(
            (m.map, m.metric, m.weights, m.radius),
            (MEASURE_MAP, W1, "any", Some(3.0))
        );
        assert!(
            m.description.contains("on measures on P(B_R) (R = 3)"),
            "{}",
            m.description
        );
        assert!(!m.description.contains("scaled"), "{}", m.description);
        // A dot-product map of an L2 source is an override, named as for every other report.
        assert_eq!(m.overrides.len(), 1);
        let none = Operator::certified(&s, Kernel::L2, 1.0, Some(4), None);
        assert!(
            none.description.contains("no certified domain"),
            "{}",
            none.description
        );
    }
}
