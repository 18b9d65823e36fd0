//! The `lipattn` command. Each subcommand lives in its own module; errors go to stderr with a
//! non-zero exit and never as a panic.

use clap::{Parser, Subcommand};

mod transport;

#[derive(Parser)]
#[command(name = "lipattn", version, about = "How smooth is this attention layer, provably?")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Exact (certified), sorted 1-D or entropic optimal transport between two .npy point clouds.
    Transport(transport::TransportArgs),
}

fn main() {
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        Command::Transport(args) => transport::run(args),
    };
    if let Err(e) = result {
        eprintln!("lipattn: error: {e:#}");
        std::process::exit(2);
    }
}
