//! Rust side of bench/local: ||J(X)||_2 of a MiniLM attention sublayer by Lanczos, end to end
//! (linearisation included, model loading excluded), on inputs shared with the PyTorch anchor.
//! Prints one JSON line with the median time and the attained sigma.
//!
//! --model DIR --layer L --x X.npy --dtype f64|f32 --tol 1e-6 --repeats K [--out-vector V.npy]
use lipattn::estimation::{local_norm, LanczosOptions, Method};
use lipattn::npy::{read_matrix, write_matrix};
use lipattn::{Mat, Scalar};
use std::collections::HashMap;
use std::path::PathBuf;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run<T: Scalar>(a: &HashMap<String, String>) -> Result<(), Box<dyn std::error::Error>> {
    let get = |k: &str, d: &str| a.get(k).cloned().unwrap_or_else(|| d.to_string());
    let layer_idx: usize = a["layer"].parse()?;
    let repeats: usize = get("repeats", "5").parse()?;
    let tol: f64 = get("tol", "1e-6").parse()?;
    let layer =
        lipattn::models::load_attention_layer(&PathBuf::from(&a["model"]), layer_idx)?.cast::<T>();
    let x64 = read_matrix(&PathBuf::from(&a["x"]))?;
    let x = Mat::from_fn(x64.nrows(), x64.ncols(), |i, k| T::of(x64[(i, k)]));
    let method = Method::Lanczos(LanczosOptions {
        tol,
        max_iter: 300,
        seed: 0,
    });
    // One untimed run: page faults of the first allocations and rayon's pool start-up.
    let mut res = local_norm(&layer, x.as_ref(), None, false, &method)?;
    let mut times = Vec::new();
    for _ in 0..repeats {
        res = local_norm(&layer, x.as_ref(), None, false, &method)?;
        times.push(res.seconds * 1e3);
    }
    if let Some(p) = a.get("out-vector") {
        let v = &res.top.vector;
        let v64 = Mat::from_fn(v.nrows(), v.ncols(), |i, k| v[(i, k)].f64());
        write_matrix(&PathBuf::from(p), v64.as_ref())?;
    }
    let t = &res.top;
    println!(
        "{{\"side\":\"lipattn\",\"dtype\":\"{}\",\"n\":{},\"threads\":{},\"median_ms\":{:.3},\"min_ms\":{:.3},\"sigma\":{:.17e},\"iterations\":{},\"rel_error_estimate\":{:.3e},\"converged\":{},\"tol\":{:e},\"repeats\":{}}}",
        T::NAME,
        x.nrows(),
        rayon::current_num_threads(),
        median(times.clone()),
        times.iter().cloned().fold(f64::INFINITY, f64::min),
        t.sigma,
        t.iterations,
        t.rel_error,
        t.converged,
        tol,
        repeats
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut a = HashMap::new();
    for pair in args.chunks(2) {
        if let [k, v] = pair {
            a.insert(k.trim_start_matches("--").to_string(), v.clone());
        }
    }
    for k in ["model", "layer", "x"] {
        if !a.contains_key(k) {
            eprintln!("bench_local: missing --{k}");
            std::process::exit(2);
        }
    }
    let r = match a.get("dtype").map(String::as_str).unwrap_or("f64") {
        "f32" => run::<f32>(&a),
        _ => run::<f64>(&a),
    };
    if let Err(e) = r {
        eprintln!("bench_local: {e}");
        std::process::exit(2);
    }
}
