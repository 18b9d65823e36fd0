//! One operator's certified upper bounds beside its attained lower bounds on (B_R)^n, and the JSON
//! that `lipattn lipschitz --json` and the Python `AttentionLayer.lipschitz` both return.

use crate::attention::{AttentionLayer, Kernel, RotaryAttention};
use crate::bounds::{certified_summary, CertifiedSummary, Metric};
use crate::domain::Domain;
use crate::error::{check_repeats, check_work, Result};
use crate::estimation::{
    ascent, check_search_memory, layer_pair_seeds, rotary_ascent, search_pairs, AscentOptions,
    AscentResult, PairSearchOptions, PairSearchResult, RotaryAscentResult,
};
use crate::operator::{LayerSource, Operator, RotaryForm};
use serde_json::{json, Value};
use std::time::Instant;

/// The attained searches' budget (the CLI's defaults).
#[derive(Clone, Debug)]
pub struct LipschitzOptions {
    pub radius: f64,
    pub n: usize,
    /// Random starts of the ascent over (B_R)^n.
    pub starts: usize,
    /// Ascent steps per start.
    pub steps: usize,
    /// Atoms per measure in the W1 pair search.
    pub atoms: usize,
    pub seed: u64,
    /// The mask; None: the model's own (`LayerSource::mask`).
    pub causal: Option<bool>,
}

impl LipschitzOptions {
    /// The searches' budget when a frontend is given none (the CLI's and Python's defaults).
    pub const DEFAULT_STARTS: usize = 2;
    pub const DEFAULT_STEPS: usize = 10;
    pub const DEFAULT_ATOMS: usize = 8;
    pub const DEFAULT_SEED: u64 = 0;
}

pub struct LipschitzReport {
    pub kernel: Kernel,
    /// (B_R)^n with the mask the bounds and the ascent both take.
    pub domain: Domain,
    /// What the report certifies.
    pub operator: Operator,
    pub certified: CertifiedSummary,
    /// The Frobenius lower bound and its input.
    pub ascent: AscentResult,
    /// The W1 lower bound and its measure pair; None under a causal mask, which is a sequence
    /// operation with no measure map (and no certified W1 bound) to compare with.
    pub pairs: Option<PairSearchResult>,
    /// Pair-search starts built from the heads' weights (`layer_pair_seeds`).
    pub structured_starts: usize,
    pub seconds: f64,
}

/// certified / attained, when both exist and the attained value is positive.
pub fn ratio(certified: Option<f64>, attained: Option<f64>) -> Option<f64> {
    match (certified, attained) {
        (Some(c), Some(a)) if a > 0.0 => Some(c / a),
        _ => None,
    }
}

/// The headline certified values (frobenius, w1, w2, anchor, anchor_code) as JSON.
pub fn certified_json(cert: &CertifiedSummary) -> Value {
    serde_json::to_value(cert.best).expect("a struct of optional floats serialises")
}

/// Certified bounds, the ascent over (B_R)^n (Frobenius) and the measure-pair search (W1), the
/// latter started from pairs built from the weights of each head involved: random pairs in
/// d = 384 almost never line up with the directions where B2's constant is made. `source` is
/// where `layer` comes from: its mask is the default, its kernel the one an override is named
/// against.
pub fn lipschitz(
    layer: &AttentionLayer<f64>,
    source: &LayerSource,
    opts: &LipschitzOptions,
) -> Result<LipschitzReport> {
    let t0 = Instant::now();
    let domain = Domain::new(opts.radius, opts.n, source.mask(opts.causal))?;
    let operator = Operator::token_map(source, layer.kernel, &domain);
    // Checked here, before the certified bounds are computed, under this function's option names
    // (the ascent and the pair search check again under theirs).
    check_search_memory(layer, opts.n, "`n`")?;
    check_search_memory(layer, opts.atoms, "`atoms`")?;
    check_repeats("`starts`", opts.starts)?;
    check_repeats("`steps`", opts.steps)?;
    check_work(&[("`starts`", opts.starts), ("`steps`", opts.steps)])?;
    let certified = certified_summary(layer, &domain)?;
    let ascent = ascent(
        layer,
        domain.n,
        None,
        &AscentOptions {
            radius: domain.radius,
            random_starts: opts.starts,
            steps: opts.steps,
            seed: opts.seed,
            causal: domain.causal,
            ..AscentOptions::default()
        },
    )?;
    let (pairs, structured_starts) = if domain.causal {
        (None, 0)
    } else {
        let seeds = layer_pair_seeds(layer, domain.radius)?;
        let structured_starts = seeds.len();
        let pairs = search_pairs(
            layer,
            &PairSearchOptions {
                radius: domain.radius,
                atoms: opts.atoms,
                seeds,
                seed: opts.seed,
                ..PairSearchOptions::default()
            },
        )?;
        (Some(pairs), structured_starts)
    };
    Ok(LipschitzReport {
        kernel: layer.kernel,
        domain,
        operator,
        certified,
        ascent,
        pairs,
        structured_starts,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

impl LipschitzReport {
    pub fn attained_frobenius(&self) -> Option<f64> {
        Some(self.ascent.sigma)
    }

    pub fn attained_w1(&self) -> Option<f64> {
        self.pairs.as_ref().map(|p| p.best.ratio)
    }

    /// operator, kernel, domain, certified, attained, ratio, bounds, notes, seconds.
    pub fn to_json(&self) -> Value {
        let (cert, att_f, att_w1) = (
            &self.certified.best,
            self.attained_frobenius(),
            self.attained_w1(),
        );
        let w1_pair = self.pairs.as_ref().map(|p| {
            json!({"w1_in": p.best.w1_in, "w1_out": p.best.w1_out, "phase": p.phase,
                   "structured_starts": self.structured_starts})
        });
        json!({
            "operator": self.operator,
            "kernel": self.kernel,
            "domain": {
                "radius": self.domain.radius,
                "n": self.domain.n,
                "causal": self.domain.causal,
                "dtype": "f64",
                "frobenius": frobenius_domain(self.domain.causal),
                "w1": "F(mu) = (Gamma_mu)_# mu on probability measures supported in B_R, Wasserstein-1",
            },
            "certified": certified_json(&self.certified),
            "attained": {
                "frobenius": att_f,
                "w1": att_w1,
                "frobenius_construction": self.ascent.construction_sigma,
                "w1_pair": w1_pair,
            },
            "ratio": {
                "frobenius": ratio(cert.frobenius, att_f),
                "w1": ratio(cert.w1, att_w1),
                "anchor_frobenius": ratio(cert.anchor, att_f),
            },
            "bounds": self.certified.bounds,
            "notes": self.certified.notes,
            "seconds": self.seconds,
        })
    }
}

/// The `domain.frobenius` sentence of the lipschitz and certified-bounds reports.
pub fn frobenius_domain(causal: bool) -> &'static str {
    if causal {
        "token map X -> f(X) on (B_R)^n, Frobenius norm, uniform weights, causal mask"
    } else {
        "token map X -> f(X) on (B_R)^n, Frobenius norm, uniform weights, no mask"
    }
}

/// Certified bounds alone on (B_R)^n with the mask of `causal` (None: the model's own), as the
/// Python `AttentionLayer.certified_bounds` returns them: operator, kernel, domain, certified,
/// bounds, notes.
pub fn certified_report(
    layer: &AttentionLayer<f64>,
    source: &LayerSource,
    radius: f64,
    n: usize,
    causal: Option<bool>,
) -> Result<Value> {
    let domain = Domain::new(radius, n, source.mask(causal))?;
    let cert = certified_summary(layer, &domain)?;
    Ok(json!({
        "operator": Operator::token_map(source, layer.kernel, &domain),
        "kernel": layer.kernel,
        "domain": {
            "radius": radius,
            "n": n,
            "causal": domain.causal,
            "dtype": "f64",
            "frobenius": frobenius_domain(domain.causal),
            "w1": "F(mu) = (Gamma_mu)_# mu on probability measures supported in B_R, Wasserstein-1",
            "w2": "F(mu) on probability measures supported in B_R, Wasserstein-2",
        },
        "certified": certified_json(&cert),
        "bounds": cert.bounds,
        "notes": cert.notes,
    }))
}

/// [`lipschitz`] for a rotary sublayer (causal, positions 0..n-1): B7 beside the rotary ascent.
pub struct RotaryLipschitzReport {
    pub domain: Domain,
    pub operator: Operator,
    pub certified: CertifiedSummary,
    pub ascent: RotaryAscentResult,
    pub seconds: f64,
}

/// Certified B7 bounds and the rotary ascent over (B_R)^n for `layer`, a sublayer (or one query
/// head, `RotaryAttention::head`) of a `family` checkpoint. The mask is the layer's own (causal,
/// with its window); `opts.causal` must not ask for another, and `opts.atoms` is unused (no
/// measure-pair search exists for maps that depend on positions).
pub fn rotary_lipschitz(
    layer: &RotaryAttention,
    family: &'static str,
    source: &LayerSource,
    opts: &LipschitzOptions,
) -> Result<RotaryLipschitzReport> {
    let t0 = Instant::now();
    if opts.causal == Some(false) {
        return Err(crate::error::Error::invalid(
            "rotary attention is causal: no other mask can be certified for it",
        ));
    }
    let domain = Domain::new(opts.radius, opts.n, true)?;
    check_repeats("`starts`", opts.starts)?;
    check_repeats("`steps`", opts.steps)?;
    check_work(&[("`starts`", opts.starts), ("`steps`", opts.steps)])?;
    let operator = Operator::token_map(source, Kernel::Dot, &domain)
        .with_rotary(RotaryForm::of(family, layer));
    let certified = crate::bounds::rotary::rotary_summary(layer, &domain)?;
    let ascent = rotary_ascent(
        layer,
        domain.n,
        &AscentOptions {
            radius: domain.radius,
            random_starts: opts.starts,
            steps: opts.steps,
            seed: opts.seed,
            causal: true,
            ..AscentOptions::default()
        },
    )?;
    Ok(RotaryLipschitzReport {
        domain,
        operator,
        certified,
        ascent,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

impl RotaryLipschitzReport {
    /// The keys of [`LipschitzReport::to_json`], with `certified.position_w1` added and the
    /// measure-level W1 fields empty.
    pub fn to_json(&self) -> Value {
        let cert = &self.certified.best;
        let position_w1 = crate::bounds::best(&self.certified.bounds, Metric::PositionW1)
            .map(|b| b.value)
            .filter(|v| v.is_finite());
        let att = Some(self.ascent.sigma);
        json!({
            "operator": self.operator,
            "kernel": Kernel::Dot,
            "domain": {
                "radius": self.domain.radius,
                "n": self.domain.n,
                "causal": true,
                "dtype": "f64",
                "frobenius": "token map X -> f(X) on (B_R)^n at positions 0..n-1, Frobenius norm, uniform weights, causal mask (and the layer's window)",
                "position_w1": "W1 over (position, token) measures, cost |x - y| within a position and +inf across: (1/n) sum_i |x_i - y_i| (docs/bounds.md#b7-measure-view)",
            },
            "certified": {
                "frobenius": cert.frobenius,
                "position_w1": position_w1,
                "w1": null,
                "w2": null,
                "anchor": null,
                "anchor_code": null,
            },
            "attained": {
                "frobenius": att,
                "w1": null,
                "frobenius_transition": self.ascent.transition_sigma,
                "ascent": self.ascent,
            },
            "ratio": {
                "frobenius": ratio(cert.frobenius, att),
                "w1": null,
                "anchor_frobenius": null,
            },
            "bounds": self.certified.bounds,
            "notes": self.certified.notes,
            "seconds": self.seconds,
        })
    }
}
