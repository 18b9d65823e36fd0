use clap::Parser;

#[derive(Parser)]
#[command(name = "lipattn", version, about = "How smooth is this attention layer, provably?")]
struct Cli {}

fn main() {
    let _ = Cli::parse();
}
