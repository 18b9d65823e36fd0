//! The constants a layer's bounds are computed from, and the certified summary of a layer on a
//! domain.

use super::bound::{best, Bound};
use super::constants::HeadConstants;
use super::joint::JointScores;
use super::metric::Metric;
use super::*;
use crate::attention::{AttentionLayer, Kernel};
use crate::domain::Domain;
use crate::error::{Error, Result};
use serde::Serialize;

/// Everything the dot-product bounds take from the weights. It does not depend on the domain, so
/// a sweep over R or n computes it once.
#[derive(Clone, Debug)]
pub struct LayerConstants {
    pub heads: Vec<HeadConstants>,
    /// An upper bound of ||W_O||_2.
    pub wo: f64,
    /// The heads' score maps taken together (B1-joint); None for one head.
    pub joint: Option<JointScores>,
}

impl LayerConstants {
    pub fn of(layer: &AttentionLayer<f64>) -> Result<Self> {
        let heads = head_constants(layer)?;
        let joint = JointScores::of(layer, &heads)?;
        Ok(Self {
            heads,
            wo: crate::linalg::rounding::spectral_up(layer.wo.as_ref())?,
            joint,
        })
    }
}

/// All head constants of a layer.
pub fn head_constants(layer: &AttentionLayer<f64>) -> Result<Vec<HeadConstants>> {
    (0..layer.heads)
        .map(|h| HeadConstants::of(layer, h))
        .collect()
}

pub(crate) fn require_dot(layer: &AttentionLayer<f64>, what: &str) -> Result<()> {
    match layer.kernel {
        Kernel::Dot => Ok(()),
        Kernel::L2 => Err(Error::invalid(format!(
            "{what} is proven for the dot-product kernel only; for the L2 kernel use B5 (bounds::l2)"
        ))),
    }
}

/// The best certified bound per metric of a layer on a domain (None where no bound is proven for
/// this kernel, or where it overflows), with the anchor's values beside them: the headline that
/// `lipattn lipschitz`, the Python bindings and every point of `lipattn analyze` report.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Certified {
    pub frobenius: Option<f64>,
    pub w1: Option<f64>,
    pub w2: Option<f64>,
    /// Castin et al. as recalled in docs/background.md#castin-et-al (not certified by lipattn).
    pub anchor: Option<f64>,
    /// The per-head form of Castin et al.'s code, docs/background.md#castin-et-al (not certified
    /// by lipattn).
    pub anchor_code: Option<f64>,
}

/// [`Certified`] with every individual bound it was picked from and why a metric has none.
#[derive(Clone, Debug, Serialize)]
pub struct CertifiedSummary {
    #[serde(flatten)]
    pub best: Certified,
    pub bounds: Vec<Bound>,
    /// Why a metric has no bound, if it has none.
    pub notes: Vec<String>,
}

pub fn certified_summary(layer: &AttentionLayer<f64>, domain: &Domain) -> Result<CertifiedSummary> {
    let mut all = certified_summaries(layer, std::slice::from_ref(domain))?;
    Ok(all.pop().expect("one summary per domain"))
}

/// [`certified_summary`] on several domains, taking the weights' constants once.
pub fn certified_summaries(
    layer: &AttentionLayer<f64>,
    domains: &[Domain],
) -> Result<Vec<CertifiedSummary>> {
    let consts = match layer.kernel {
        Kernel::Dot => Some(LayerConstants::of(layer)?),
        Kernel::L2 => None,
    };
    domains
        .iter()
        .map(|d| summary_on(layer, consts.as_ref(), d))
        .collect()
}

fn summary_on(
    layer: &AttentionLayer<f64>,
    consts: Option<&LayerConstants>,
    domain: &Domain,
) -> Result<CertifiedSummary> {
    if layer.kernel == Kernel::L2 {
        let b5 = l2::b5(layer, domain.n, Some(domain.radius), None)?;
        let mut notes = vec![
            "L2 kernel: no measure-level (W1/W2) constant exists over all of P_1(R^d) (docs/background.md#l2-no-w1-constant)"
                .to_string(),
        ];
        let b5 = match b5 {
            Ok(b) if !b.bound.value.is_finite() => {
                notes.push(format!(
                    "frobenius: the certified bound exceeds the f64 range ({})",
                    b.domain_note(domain.n)
                ));
                None
            }
            Ok(b) => {
                notes.push(b.domain_note(domain.n));
                Some(b.bound)
            }
            Err(why) => {
                notes.push(why);
                None
            }
        };
        return Ok(CertifiedSummary {
            best: Certified {
                frobenius: b5.as_ref().map(|b| b.value),
                w1: None,
                w2: None,
                anchor: None,
                anchor_code: None,
            },
            bounds: b5.into_iter().collect(),
            notes,
        });
    }
    let consts = consts.expect("constants are computed for the dot kernel");
    let mut bounds = token_map::token_map_bounds_from(consts, domain);
    bounds.extend(measure_w1::measure_bounds_from(consts, domain.radius));
    let pick = |name: &str| bounds.iter().find(|b| b.name == name).map(|b| b.value);
    let mut notes = vec![];
    if domain.causal {
        notes.push("w1/w2 bounds hold for the measure map F without mask; a causal mask is a sequence operation".into());
    }
    // A bound beyond the f64 range (e^{2 R beta} overflows) is true but useless; it is reported as
    // absent with the reason rather than as infinity, which JSON cannot carry.
    let mut finite = |m: Metric, label: &str| match best(&bounds, m).map(|b| b.value) {
        Some(x) if !x.is_finite() => {
            notes.push(format!(
                "{label}: the certified bound exceeds the f64 range at this radius"
            ));
            None
        }
        other => other,
    };
    let frobenius = finite(Metric::Frobenius, "frobenius");
    let (w1, w2) = if domain.causal {
        (None, None)
    } else {
        (finite(Metric::W1, "w1"), finite(Metric::W2, "w2"))
    };
    Ok(CertifiedSummary {
        best: Certified {
            frobenius,
            w1,
            w2,
            anchor: pick("anchor-castin-mathmd"),
            anchor_code: pick("anchor-castin-code"),
        },
        bounds,
        notes,
    })
}
