//! The command layer: one module per command of the `lipattn` CLI and the Python package.
//!
//! Each command is a request (serde, `Default`: every default, name, validation rule and seed
//! offset lives here), the inputs it runs on (measures, a layer, tokens: data that frontends read
//! from files or arrays), `run(&request, inputs, on_progress) -> report`, and a report whose
//! serde serialisation is the command's JSON. The CLI turns its flags into a request and renders
//! the report as text, JSON, `.npy` files and plots; the Python package turns keyword arguments
//! into the same request, runs it without the GIL and returns the report as a dict and NumPy
//! arrays. Both frontends therefore print the same keys and values by construction.
//!
//! Option names in the messages of [`crate::Error::Option`] are the request's field names in
//! backticks; each frontend renders them in its own syntax.

pub mod certify;
pub mod fixed_point;
pub mod flow;
pub mod forward;
pub mod invert;
pub mod json;
pub mod local;
pub mod progress;
pub mod robustness;
pub mod scope_local;
pub mod solvers;
pub mod source;
pub mod stack_ball;
pub mod transport;

pub use json::to_json;
pub use progress::{silent, OnProgress, Progress};
