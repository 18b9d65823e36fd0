//! Stage 1: everything decided before any measurement. The options are checked against the
//! model, the selected layers get their B6 radius, their operators (the sublayer, then each
//! head) and, for the adversarial pass, one direction per head; the text is cut into windows.

use super::request::{check_options, AnalysisOptions};
use super::text::TextIds;
use crate::attention::AttentionLayer;
use crate::bounds::layer_norm::layer_norm_radius;
use crate::domain::Domain;
use crate::error::Result;
use crate::estimation::{adversarial_direction, TransitionGeometry};
use crate::models::{Embeddings, Model, ModelLayer};
use rayon::prelude::*;

/// One selected layer.
pub(super) struct LayerWork {
    pub index: usize,
    pub block: ModelLayer,
    /// Per n of the plan's grid, in its order: B6's ball for this layer and the model's mask.
    pub domains: Vec<Domain>,
    /// The sublayer first, then the heads.
    pub ops: Vec<AttentionLayer<f64>>,
    /// Per head, the direction of the adversarial construction.
    pub directions: Vec<Vec<f64>>,
    /// Per head, the transition start's geometry on this layer's ball (None: the head has
    /// none); each n takes its start from it.
    pub transitions: Vec<Option<TransitionGeometry>>,
}

pub(super) struct Plan {
    pub embeddings: Embeddings,
    /// The grid of n, sorted, without repeats.
    pub ns: Vec<usize>,
    pub causal: bool,
    /// Every block up to the deepest selected one: the hidden states pass through them all.
    pub blocks: Vec<ModelLayer>,
    /// The selected layers, in increasing order.
    pub work: Vec<LayerWork>,
    /// Per n, the real-text windows of that length (none without text or when it is too short).
    pub windows: Vec<(usize, Vec<Vec<u32>>)>,
    /// Units of work for progress: one per window, one per n of the adversarial pass.
    pub total: usize,
    pub notes: Vec<String>,
}

impl LayerWork {
    /// R of B6, the same at every n.
    pub fn radius(&self) -> f64 {
        self.domains[0].radius
    }
}

impl Plan {
    /// Operators per layer: the same for every selected layer.
    pub fn n_ops(&self) -> usize {
        self.work[0].ops.len()
    }
}

pub(super) fn plan(model: &Model, text: Option<&TextIds>, opts: &AnalysisOptions) -> Result<Plan> {
    model.plain_only("lipattn analyze")?;
    let embeddings = model.embeddings()?;
    let num_layers = model.num_layers();
    let max_positions = embeddings.max_positions().unwrap_or(usize::MAX);
    check_options(opts, max_positions, num_layers)?;
    let mut ns = opts.ns.clone();
    ns.sort_unstable();
    ns.dedup();
    let mut selected: Vec<usize> = opts.layers.clone().unwrap_or((0..num_layers).collect());
    selected.sort_unstable();
    selected.dedup();
    let causal = model.is_causal();
    let mut notes = vec![];

    let last = *selected.last().expect("checked non-empty");
    let blocks: Vec<ModelLayer> = (0..=last).map(|l| model.layer(l)).collect::<Result<_>>()?;
    let mut work: Vec<LayerWork> = vec![];
    for &l in &selected {
        let block = blocks[l].clone();
        let ln = &block.attention_input_norm;
        let radius = layer_norm_radius(&ln.gamma, &ln.beta)?;
        let domains = ns
            .iter()
            .map(|&n| Domain::new(radius, n, causal))
            .collect::<Result<_>>()?;
        let mut ops = vec![block.attention.clone()];
        if opts.heads {
            for h in 0..block.attention.heads {
                ops.push(block.attention.head(h, false)?);
            }
        }
        let directions = if opts.adversarial {
            (0..block.attention.heads)
                .into_par_iter()
                .map(|h| adversarial_direction(&block.attention, h))
                .collect::<Result<_>>()?
        } else {
            vec![]
        };
        let transitions = if opts.adversarial {
            (0..block.attention.heads)
                .into_par_iter()
                .map(|h| TransitionGeometry::new(&block.attention, h, radius))
                .collect::<Result<_>>()?
        } else {
            vec![]
        };
        work.push(LayerWork {
            index: l,
            block,
            domains,
            ops,
            directions,
            transitions,
        });
    }

    let windows: Vec<(usize, Vec<Vec<u32>>)> = ns
        .iter()
        .map(|&n| {
            let w = text.map_or(vec![], |t| {
                crate::models::tokenize::windows_of(&t.prefix, &t.body, &t.suffix, n, opts.windows)
            });
            (n, w)
        })
        .collect();
    if let Some(t) = text {
        let specials = t.prefix.len() + t.suffix.len();
        let (no_room, short): (Vec<usize>, Vec<usize>) = windows
            .iter()
            .filter(|(_, w)| w.is_empty())
            .map(|(n, _)| *n)
            .partition(|&n| n <= specials);
        if !no_room.is_empty() {
            notes.push(format!(
                "n = {no_room:?} holds no more than the model's {specials} special tokens, so no text fits: no real-text values there"
            ));
        }
        if !short.is_empty() {
            notes.push(format!(
                "the text ({} tokens) is too short for n = {short:?}: no real-text values there",
                t.body.len() + t.prefix.len() + t.suffix.len()
            ));
        }
    }
    let total = windows.iter().map(|(_, w)| w.len()).sum::<usize>()
        + if opts.adversarial { ns.len() } else { 0 };
    Ok(Plan {
        embeddings,
        ns,
        causal,
        blocks,
        work,
        windows,
        total,
        notes,
    })
}
