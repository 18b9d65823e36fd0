//! Rotary attention: the attention sublayer of the Llama lineage (Llama, Mistral, Qwen, Gemma),
//! with exact forward pass, JVP and VJP. The formulas, their sources and the derivation of the
//! derivatives are in docs/rotary.md.
//!
//! For a token sequence X (n x d) at positions 0..n, query head h (of H) and its kv head
//! g = h / (H / kv_heads) (grouped-query attention, Ainslie et al. 2023; K and V are indexed,
//! never repeated):
//!
//! ```text
//! q_i = N_q(W_Q^h x_i + b_Q^h),  k_j = N_k(W_K^g x_j + b_K^g),  v_j = W_V^g x_j + b_V^g
//! qr_i = R_i q_i,  kr_j = R_j k_j                    (rotate-half pairing c <-> c + r/2)
//! s_ij = <qr_i, kr_j> / sqrt(score_divisor_sq),  l_ij = cap tanh(s_ij / cap) (softcap only)
//! P_ij = softmax over visible j (j <= i, i - j < window) of l_ij
//! y_i = W_O [P^1 V^{g(1)}; ...; P^H V^{g(H)}]_i + b_O
//! ```
//!
//! N is the optional per-head RMS norm (`QkNorm`), R_i = a [[cos, -sin], [sin, cos]] at angles
//! i inv_freq_c on each pair, a the attention factor of the scaling type (`Rope::frequencies`).
//!
//! Precision: the angles, cos and sin are computed in f64, so the values are the exact-real
//! function rounded to f64; transformers computes inv_freq, the angles and cos/sin in float32
//! even for a float64 model (and its qk RMS norm casts to float32), so its values differ from
//! ours by about 1e-7 relative.

mod derivatives;
mod forward;
mod layer;
mod linearization;
mod rope;
mod streaming;

pub use layer::{QkNorm, RotaryAttention};
pub use linearization::RotaryLinearization;
pub(crate) use rope::RopeTable;
pub use rope::{Rope, RopeScaling};
pub use streaming::{memory_estimate as streaming_memory_estimate, StreamingRotaryLinearization};
