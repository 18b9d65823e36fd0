//! The `lipattn` command. Each subcommand lives in its own module; errors go to stderr with a
//! non-zero exit and never as a panic.

mod analyze;
mod certificate_args;
mod certify;
mod dyn_source;
mod fixed_point;
mod flow;
mod forward;
mod hidden;
mod interrupt;
mod invert;
mod layer_arg;
mod lipschitz;
mod local;
mod names;
mod plot;
mod progress;
mod reproduce;
mod robustness;
mod scope_input;
mod solver_output;
mod transport;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lipattn",
    version,
    about = "How smooth is this attention layer, provably?"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Memory budget for one run (bytes, or with K/M/G/T: 512M, 8G); a request estimated beyond
    /// it stops before allocating. Default: LIPATTN_MAX_MEMORY, else half the available memory.
    #[arg(long, global = true, value_parser = lipattn::budget::parse_bytes)]
    max_memory: Option<u64>,
}

#[derive(Subcommand)]
enum Command {
    /// The main job: every layer and head of a checkpoint on real text, certified beside attained,
    /// over a grid of n, with fitted exponents (table, JSON, CSV, plots).
    Analyze(analyze::AnalyzeArgs),
    /// Attention sublayer output of one layer for a token sequence (.npy in, .npy out).
    Forward(forward::ForwardArgs),
    /// Hidden states of a whole model (BERT, GPT-2) on a text file, entering a chosen layer.
    Hidden(hidden::HiddenArgs),
    /// Exact (certified), sorted 1-D or entropic optimal transport between two .npy point clouds.
    Transport(transport::TransportArgs),
    /// Local Lipschitz constant ||J(X)||_2 at a token sequence (an attained lower bound).
    Local(local::LocalArgs),
    /// Certified Lipschitz upper bounds beside attained lower bounds for a layer or head.
    Lipschitz(lipschitz::LipschitzArgs),
    /// A local certificate on a ball around an input: sup ||J|| and the output change, proven,
    /// beside the largest ||J|| an attack finds in the ball.
    Certify(certify::CertifyArgs),
    /// The certified robustness radius of an input (the largest ball whose outputs provably stay
    /// within a tolerance) beside the radius at which an attack leaves it.
    Robustness(robustness::RobustnessArgs),
    /// Reproduce the figures of docs/reproductions.md (CSV, SVG, PNG and a JSON summary).
    Reproduce(reproduce::ReproduceArgs),
    /// Invert a residual attention block y = x + g(x) with certified Lip(g) <= c < 1.
    Invert(invert::InvertArgs),
    /// Fixed points of weight-tied attention (infinite depth) in token or measure space.
    FixedPoint(fixed_point::FixedPointArgs),
    /// Continuous-depth attention flow: clustering, Gronwall bound, mean-field consistency.
    Flow(flow::FlowArgs),
}

fn main() {
    interrupt::install();
    // A negative number is a value, not a flag, so that the library's range checks give the
    // real message (clap would suggest `-- -1`).
    let matches = Cli::command()
        .mut_subcommands(|s| s.allow_negative_numbers(true))
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    lipattn::budget::set_max_memory(cli.max_memory);
    let result = match cli.command {
        Command::Analyze(a) => analyze::run(a),
        Command::Forward(a) => forward::run(a),
        Command::Hidden(a) => hidden::run(a),
        Command::Transport(a) => transport::run(a),
        Command::Local(a) => local::run(a),
        Command::Lipschitz(a) => lipschitz::run(a),
        Command::Certify(a) => certify::run(a),
        Command::Robustness(a) => robustness::run(a),
        Command::Reproduce(a) => reproduce::run(a),
        Command::Invert(a) => invert::run(a),
        Command::FixedPoint(a) => fixed_point::run(a),
        Command::Flow(a) => flow::run(a),
    };
    if let Err(e) = result {
        eprintln!("lipattn: error: {}", message(&e));
        std::process::exit(2);
    }
}

/// The error and its causes, skipping a cause whose text the message already carries (library
/// errors such as a missing file print their I/O cause themselves).
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = match cause.downcast_ref::<lipattn::Error>() {
            // Library messages write option names in backticks; here they are flags.
            Some(lipattn::Error::Option(m)) => names::flags_in(m),
            Some(e) => names::flags_in(&e.to_string()),
            _ => cause.to_string(),
        };
        if out.is_empty() {
            out = text;
        } else if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
    }
    out
}
