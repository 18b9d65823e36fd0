//! The `lipattn` command. Each subcommand lives in its own module; errors go to stderr with a
//! non-zero exit and never as a panic.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lipattn",
    version,
    about = "How smooth is this attention layer, provably?"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {}

fn main() {
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {};
    if let Err(e) = result {
        eprintln!("lipattn: error: {e:#}");
        std::process::exit(2);
    }
}
