//! ||J(X)||_2 of a Llama-shaped rotary attention sublayer with random weights, end to end
//! (linearisation included), in f64: `local` on a rotary layer at a realistic size.
//! Prints one JSON line: seconds, iterations, sigma, seconds per Lanczos step.
//!
//! --d 4096 --heads 32 --kv-heads 8 --head-dim 128 --n 512 --tol 1e-6 --max-iter 300
use lipattn::attention::{Rope, RopeScaling, RotaryAttention, RotaryLinearization};
use lipattn::estimation::{local_norm_of, LanczosOptions, Method};
use lipattn::linalg::SplitMix;
use lipattn::Mat;
use std::collections::HashMap;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: HashMap<String, String> = args
        .chunks(2)
        .map(|p| (p[0].trim_start_matches("--").to_string(), p[1].clone()))
        .collect();
    let get = |k: &str, d: &str| -> Result<usize, std::num::ParseIntError> {
        a.get(k).map_or(d, |s| s.as_str()).parse()
    };
    let (d, heads, kv_heads, hd, n) = (
        get("d", "4096")?,
        get("heads", "32")?,
        get("kv-heads", "8")?,
        get("head-dim", "128")?,
        get("n", "512")?,
    );
    let tol: f64 = a.get("tol").map_or("1e-6", |s| s.as_str()).parse()?;
    let max_iter = get("max-iter", "300")?;
    let mut r = SplitMix::new(0);
    let mut gauss =
        |rows: usize, cols: usize, s: f64| Mat::from_fn(rows, cols, |_, _| s * r.gauss());
    let w = 1.0 / (d as f64).sqrt();
    let layer = RotaryAttention::new(
        heads,
        kv_heads,
        hd,
        gauss(heads * hd, d, w),
        vec![0.0; heads * hd],
        gauss(kv_heads * hd, d, w),
        vec![0.0; kv_heads * hd],
        gauss(kv_heads * hd, d, w),
        vec![0.0; kv_heads * hd],
        gauss(d, heads * hd, 1.0 / ((heads * hd) as f64).sqrt()),
        vec![0.0; d],
        hd,
        Rope {
            theta: 500000.0,
            rotary_dim: hd,
            max_position_embeddings: 8192,
            scaling: RopeScaling::Default,
        },
        None,
        None,
        None,
    )?;
    let x = gauss(n, d, 1.0);
    let method = Method::Lanczos(LanczosOptions {
        tol,
        max_iter,
        seed: 0,
    });
    let res = local_norm_of(&method, || RotaryLinearization::new(&layer, x.as_ref()))?;
    let t = &res.top;
    println!(
        "{{\"d\":{d},\"heads\":{heads},\"kv_heads\":{kv_heads},\"head_dim\":{hd},\"n\":{n},\"threads\":{},\"seconds\":{:.3},\"iterations\":{},\"seconds_per_iteration\":{:.3},\"sigma\":{:.12e},\"rel_error_estimate\":{:.2e},\"converged\":{}}}",
        rayon::current_num_threads(),
        res.seconds,
        t.iterations,
        res.seconds / t.iterations as f64,
        t.sigma,
        t.rel_error,
        t.converged
    );
    Ok(())
}
