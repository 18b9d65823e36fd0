//! `lipattn local`: the local constant ||J(X)||_2 of one layer's attention sublayer (or of one
//! head's contribution), of a block's attention half, a whole block or the whole model, at a
//! given input (the library's `ops::local` and `ops::scope_local`). An attained value, hence a
//! lower bound on the Lipschitz constant over any domain containing X, never a certificate; the
//! wider scopes print the composed certified global bound beside it.

use crate::names::named;
use crate::progress::Bar;
use anyhow::{Context, Result};
use clap::Args;
use lipattn::fmt::{compact, exact};
use lipattn::models::{Model, Pool, Scope, TextTokenizer};
use lipattn::npy::read_matrix;
use lipattn::ops::local::{self, AttentionMemory, LocalDtype, LocalMethod, LocalRequest};
use lipattn::ops::scope_local::{run_scope, ScopeRequest};
use serde_json::json;
use std::path::PathBuf;

#[derive(Args)]
pub struct LocalArgs {
    /// Hugging Face model directory (config.json with model.safetensors or a sharded index;
    /// every supported family).
    #[arg(long)]
    model: PathBuf,
    /// Layer index (0-based); every scope but `model` needs it.
    #[arg(long)]
    layer: Option<usize>,
    /// Input X, an (n, d) float32 or float64 .npy array in C order: the scope's input (see
    /// --scope; for a rotary model, token i at position i).
    #[arg(long, required_unless_present = "text", conflicts_with = "text")]
    tokens: Option<PathBuf>,
    /// UTF-8 text file: X is what the model computes at the scope's input on this text,
    /// tokenised with the model's tokenizer.json.
    #[arg(long)]
    text: Option<PathBuf>,
    /// With --text: keep at most N tokens, special tokens included.
    #[arg(long, requires = "text")]
    max_tokens: Option<usize>,
    /// attention (the sublayer; X its input), sublayer-residual-norm (the attention half of the
    /// block with its norms and residual, as transformers' BertAttention for BERT; X the hidden
    /// state entering the block), block (X the hidden state entering it) or model (X the input
    /// embeddings before the first norm, output the final hidden states).
    #[arg(long, value_parser = named::<Scope>(), default_value_t = ScopeRequest::default().scope)]
    scope: Scope,
    /// With --scope model: none, mean (over tokens) or mean-normalised (then divided by its
    /// l2 norm, the sentence embedding of all-MiniLM-L6-v2).
    #[arg(long, value_parser = named::<Pool>(), default_value_t = ScopeRequest::default().pool)]
    pool: Pool,
    /// Also a probabilistic upper bound on ||J(X)||_2 failing with at most this probability
    /// (Lemma P of docs/estimation.md: Lanczos from its own random start; any scope, no --head).
    #[arg(long)]
    upper_failure_probability: Option<f64>,
    /// Lanczos steps of that bound.
    #[arg(long, default_value_t = ScopeRequest::default().upper_steps)]
    upper_steps: usize,
    /// Analyse head H's contribution W_O^h Gamma^h alone (no output bias; scope attention).
    #[arg(long)]
    head: Option<usize>,
    /// Lanczos: requested relative accuracy of sigma (an estimate). Power iteration always uses
    /// the anchor's rule instead (Rayleigh quotient change below 1e-4, absolute).
    #[arg(long, default_value_t = LocalRequest::default().tol)]
    tol: f64,
    #[arg(long, value_parser = named::<LocalMethod>(), default_value_t = LocalRequest::default().method)]
    method: LocalMethod,
    /// Iteration cap (default 300 for Lanczos, 100 for power iteration).
    #[arg(long)]
    max_iter: Option<usize>,
    /// Seed of the random start vector.
    #[arg(long, default_value_t = LocalRequest::default().seed)]
    seed: u64,
    /// Arithmetic of the Lanczos iteration: f64, or f32 with the top vector refined in f64 (the
    /// reported sigma and its error estimate are the f64 ones).
    #[arg(long, value_parser = named::<LocalDtype>(), default_value_t = LocalRequest::default().dtype)]
    dtype: LocalDtype,
    /// Attention state of the sublayer, or of every attention step of a block or the model (plain
    /// or rotary): dense probabilities, streaming per-row statistics (O(n d) memory,
    /// docs/streaming.md), or auto (dense when it fits --max-memory).
    #[arg(long, value_parser = named::<AttentionMemory>(), default_value_t = LocalRequest::default().attention)]
    attention: AttentionMemory,
    /// Keep at most K Krylov vectors in Lanczos, restarting from the top Ritz vector when full
    /// (memory K n d instead of one n d vector a step; f64 Lanczos only).
    #[arg(long, value_name = "K")]
    max_basis: Option<usize>,
    /// Write the top right singular vector (n, d) as float64 .npy.
    #[arg(long)]
    save_vector: Option<PathBuf>,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
}

impl From<&LocalArgs> for LocalRequest {
    fn from(a: &LocalArgs) -> Self {
        Self {
            method: a.method,
            tol: a.tol,
            max_iter: a.max_iter,
            seed: a.seed,
            head: a.head,
            dtype: a.dtype,
            attention: a.attention,
            max_basis: a.max_basis,
        }
    }
}

pub fn run(a: LocalArgs) -> Result<()> {
    let save_vector = a
        .save_vector
        .as_deref()
        .map(lipattn::output::StagedFile::create)
        .transpose()?;
    let scope = ScopeRequest {
        scope: a.scope,
        pool: a.pool,
        upper_failure_probability: a.upper_failure_probability,
        upper_steps: a.upper_steps,
    };
    // The attention sublayer alone goes through ops::local unless the upper bound is asked for,
    // which ops::scope_local computes for every scope.
    let wide = a.scope != Scope::Attention || a.upper_failure_probability.is_some();
    let req = LocalRequest::from(&a);
    scope.check_head(req.head)?;
    let layer = a.scope.check(a.layer, a.pool)?;
    let model = Model::open(&a.model)?;
    // The attention scope with --tokens reads the sublayer alone, not the whole block.
    let stack = (wide || a.text.is_some())
        .then(|| model.stack(a.scope, layer, a.pool))
        .transpose()?;
    let x = match (&a.tokens, &a.text, &stack) {
        (Some(t), _, _) => read_matrix(t).context("reading --tokens")?,
        (None, Some(t), Some(w)) => {
            let ids = TextTokenizer::from_dir(&a.model)?
                .encode_file(t, a.max_tokens)
                .context("reading --text")?;
            model.stack_input(w, &ids)?
        }
        _ => unreachable!("clap requires --tokens or --text"),
    };
    let bar = Bar::new(a.json);
    if let (Some(weights), true) = (&stack, wide) {
        let report = run_scope(
            &req,
            &scope,
            weights,
            model.family().name(),
            x.as_ref(),
            &mut |p| bar.update(p),
        )?;
        drop(bar);
        if let Some(f) = save_vector {
            lipattn::npy::write_matrix(f.path(), report.vector.as_ref())
                .context("writing --save-vector")?;
            f.commit()?;
        }
        if a.json {
            let mut out = lipattn::ops::to_json(&report)?;
            out["vector"] = json!(a.save_vector.as_ref().map(|p| p.display().to_string()));
            println!("{out}");
        } else {
            print_attained(&report.description, report.sigma, report.n, report.radius);
            match report.certified.value {
                Some(c) => println!(
                    "certified global bound (composed): {} on {} (ratio {})",
                    exact(c),
                    report.certified.domain,
                    compact(c / report.sigma)
                ),
                None => println!(
                    "certified global bound (composed): none finite ({})",
                    report.certified.notes.join("; ")
                ),
            }
            if let Some(u) = &report.upper {
                println!(
                    "||J(X)||_2 <= {} except with probability {} (probabilistic: {}; eps {}, Krylov dimension {})",
                    exact(u.value),
                    compact(u.failure_probability),
                    u.theorem,
                    compact(u.epsilon),
                    u.krylov_dimension
                );
            }
            print_convergence(
                report.method,
                report.iterations,
                report.converged,
                report.rel_error,
                report.seconds,
            );
        }
        return Ok(());
    }
    let l = layer.expect("scope attention has a layer");
    // The operator the model computes, mask included (GPT-2 and the rotary families: causal).
    let (weights, source) = (model.sublayer(l)?, model.layer_source(l));
    let report = local::run_sublayer(&req, &weights, &source, x.as_ref(), &mut |p| bar.update(p))?;
    drop(bar);
    if let Some(f) = save_vector {
        report
            .result
            .save_vector(f.path())
            .context("writing --save-vector")?;
        f.commit()?;
    }
    if a.json {
        let mut out = lipattn::ops::to_json(&report)?;
        out["layer"] = json!(l);
        out["scope"] = json!(Scope::Attention.name());
        out["vector"] = json!(a.save_vector.as_ref().map(|p| p.display().to_string()));
        println!("{out}");
    } else {
        print_attained(
            &report.operator.description,
            report.sigma,
            report.n,
            report.radius,
        );
        print_convergence(
            report.method,
            report.iterations,
            report.converged,
            report.rel_error,
            report.seconds,
        );
    }
    Ok(())
}

fn print_attained(operator: &str, sigma: f64, n: usize, radius: f64) {
    println!("operator: {operator}");
    println!(
        "||J(X)||_2 >= {} (attained at X, n = {n}, max row norm {}; Frobenius norms)",
        // The answer with every digit; the rest rounded for reading.
        exact(sigma),
        compact(radius)
    );
}

fn print_convergence(
    method: &str,
    iterations: usize,
    converged: bool,
    rel_error: f64,
    seconds: f64,
) {
    println!(
        "{method}: {iterations} iterations, {}, estimated relative error {}, {seconds:.3} s",
        if converged {
            "converged"
        } else {
            "NOT converged (iteration cap)"
        },
        compact(rel_error),
    );
}
