//! Attained lower bounds (docs/background.md#attained-lower-bounds): values of the local constant
//! ||J(X)||_2 or of the W1 ratio that some concrete input actually reaches. Each one is a lower
//! bound on the Lipschitz constant over any domain containing its input, never a certificate; every
//! result carries the input that attains it so that it can be checked independently.

pub mod adversarial;
pub mod ball_ascent;
pub mod centre_upper;
pub mod cross_pairs;
pub mod lanczos;
pub mod measure_pairs;
pub mod power;
pub mod rotary_ascent;
pub mod structured_seeds;
pub mod transition;

pub(crate) use crate::linalg::krylov as vecops;
pub use crate::linalg::SplitMix;
pub use adversarial::{
    adversarial_direction, adversarial_from_direction, adversarial_input, ascent, AscentOptions,
    AscentResult,
};
pub use cross_pairs::{
    cross_ratio, search_cross_pairs, CrossArgument, CrossPair, CrossSearchOptions,
    CrossSearchResult,
};
pub use lanczos::{
    lanczos, lanczos_restarted, local_norm, local_norm_of, local_norm_refined, LanczosOptions,
    LocalNorm, Method,
};
pub use measure_pairs::{search_pairs, MeasurePair, PairSearchOptions, PairSearchResult};
pub use power::{power_iteration, PowerOptions};
pub use rotary_ascent::{rotary_ascent, RotaryAscentResult};
pub use structured_seeds::{layer_pair_seeds, structured_seeds, StructuredSeeds};
pub use transition::{transition_start, TransitionGeometry};

use crate::attention::AttentionLayer;
use crate::error::Result;

/// The memory a search over `count` tokens (or atoms) of `layer`'s width needs, checked against
/// the budget before anything is allocated: a handful of count x d matrices (iterate, gradient,
/// trial, Lanczos vectors) beside the attention state (4 x heads x count^2). `what` names the
/// option that sets the count (`n`, `atoms`), in backticks.
pub fn check_search_memory(layer: &AttentionLayer<f64>, count: usize, what: &str) -> Result<()> {
    search_memory(layer.d_in().max(layer.d_out()), layer.heads, count, what)
}

/// [`check_search_memory`] on the streaming attention state: the same count x d matrices beside
/// the streaming linearisation's own estimate (linear in count) in place of the n x n state.
pub fn check_streaming_search_memory(
    layer: &AttentionLayer<f64>,
    count: usize,
    what: &str,
) -> Result<()> {
    let state = crate::derivatives::streaming::memory_estimate(
        layer,
        count,
        crate::derivatives::streaming::DEFAULT_BLOCK,
    );
    streaming_search_memory(layer.d_in().max(layer.d_out()), count, what, "", state)
}

/// The count x d matrices of a search beside a streaming state of `state` bytes.
fn streaming_search_memory(
    d: usize,
    count: usize,
    what: &str,
    kind: &str,
    state: Option<u64>,
) -> Result<()> {
    crate::budget::check(
        || {
            format!(
                "the search over {count} tokens of width {d} ({what}) on the streaming {kind}attention state"
            )
        },
        crate::budget::total(&[crate::budget::bytes_of(&[16, count, d], 8), state]),
    )
}

/// [`check_search_memory`] for a rotary sublayer (one attention state per query head).
pub fn check_rotary_search_memory(
    layer: &crate::attention::RotaryAttention,
    count: usize,
    what: &str,
) -> Result<()> {
    search_memory(layer.d_in().max(layer.d_out()), layer.heads, count, what)
}

/// [`check_rotary_search_memory`] on the streaming attention state: the count x d matrices
/// beside the streaming rotary linearisation's own estimate in place of the dense state.
pub fn check_rotary_streaming_search_memory(
    layer: &crate::attention::RotaryAttention,
    count: usize,
    what: &str,
) -> Result<()> {
    let state = crate::attention::rotary::streaming_memory_estimate(
        layer,
        count,
        crate::derivatives::streaming::DEFAULT_BLOCK,
    );
    streaming_search_memory(
        layer.d_in().max(layer.d_out()),
        count,
        what,
        "rotary ",
        state,
    )
}

fn search_memory(d: usize, h: usize, count: usize, what: &str) -> Result<()> {
    crate::budget::check(
        || format!("the search over {count} tokens of width {d} ({what})"),
        crate::budget::total(&[
            crate::budget::bytes_of(&[16, count, d], 8),
            crate::budget::bytes_of(&[4, h, count, count], 8),
        ]),
    )
}
