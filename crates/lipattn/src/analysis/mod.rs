//! The whole-model analysis behind `lipattn analyze`: for every layer of a real checkpoint, its
//! attention sublayer and each head's contribution, on the domain fixed by the LayerNorm before
//! it (B6): certified bounds at each n, attained local constants on windows of real text over a
//! grid of n, the adversarial construction of Castin et al., the gaps, and power-law fits of
//! each curve against n. The rotary families (Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma 2) run
//! the same stages on their rotary sublayer: the RMSNorm radius in place of B6, B7 in place of
//! B1-B5 (`sublayer`, docs/analysis.md#rotary-families). Attained values are lower
//! bounds on the Lipschitz constant of the token map on (B_R)^n; only the `certified` fields are
//! proven upper bounds.
//!
//! [`analyze`] runs in stages, one file each: `plan` (validate the options, pick the layers,
//! their radii, operators and adversarial directions, cut the text into windows), the real-text
//! pass (`text_pass`: every window through the model, each selected layer's operators measured
//! on the way), the adversarial pass (`adversarial_pass`), `certify` (the B6 radius check,
//! then the certified bounds at every n) and `report` (points, gaps and fits). `tasks` cuts the
//! same analysis into independent (layer, n) tasks and merges their results into the same report.

pub mod fit;
pub mod lipschitz;

mod adversarial_pass;
mod certify;
mod memory;
mod pipeline;
mod plan;
mod report;
mod request;
mod sigma;
mod sublayer;
mod tasks;
mod text;
mod text_pass;

pub use crate::bounds::Certified;
pub use fit::{fit_power_law, PowerFit};
pub use lipschitz::{lipschitz, LipschitzOptions, LipschitzReport};
pub use memory::{Calibration, EstimateAtN, RunEstimate, LANCZOS_STEPS_ASSUMED};
pub use pipeline::analyze;
pub use report::{LayerDomain, ModelReport, OperatorReport, Point, RotaryAnalysis, SMALL_N_MAX};
pub use request::{AnalysisOptions, Progress};
pub use tasks::{
    analysis_tasks, fingerprint, merge, run_task, run_tasks, AnalysisTask, TaskCertified,
    TaskResult, TaskValues,
};
pub use text::{Corpus, TextIds, DEFAULT_TEXT, DEFAULT_TEXT_SOURCE, LICENCES_TEXT};
