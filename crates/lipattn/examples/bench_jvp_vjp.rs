//! Rust side of bench/jvp_vjp: one JVP plus one VJP of a MiniLM attention sublayer at a fixed X,
//! on inputs shared with the PyTorch anchor. Prints one JSON line with the median time.
//!
//! --model DIR --layer L --x X.npy --u U.npy --v V.npy --dtype f64|f32 --repeats K
//! --out-jvp J.npy --out-vjp G.npy
use lipattn::npy::{read_matrix, write_matrix};
use lipattn::{Linearization, Mat, Scalar};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

fn cast<T: Scalar>(m: &Mat<f64>) -> Mat<T> {
    Mat::from_fn(m.nrows(), m.ncols(), |i, k| T::of(m[(i, k)]))
}

fn back<T: Scalar>(m: &Mat<T>) -> Mat<f64> {
    Mat::from_fn(m.nrows(), m.ncols(), |i, k| m[(i, k)].f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run<T: Scalar>(a: &HashMap<String, String>) -> Result<(), Box<dyn std::error::Error>> {
    let path = |k: &str| PathBuf::from(&a[k]);
    let layer_idx: usize = a["layer"].parse()?;
    let repeats: usize = a
        .get("repeats")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20);
    let layer = lipattn::models::load_attention_layer(&path("model"), layer_idx)?.cast::<T>();
    let x = cast::<T>(&read_matrix(&path("x"))?);
    let u = cast::<T>(&read_matrix(&path("u"))?);
    let v = cast::<T>(&read_matrix(&path("v"))?);
    let t0 = Instant::now();
    let lin = Linearization::new(&layer, x.as_ref(), None, false)?;
    let linearize_ms = t0.elapsed().as_secs_f64() * 1e3;
    let (mut both, mut tj, mut tv) = (Vec::new(), Vec::new(), Vec::new());
    let (mut jv, mut g) = (lin.jvp(u.as_ref())?, lin.vjp(v.as_ref())?);
    for _ in 0..repeats {
        let t0 = Instant::now();
        jv = lin.jvp(u.as_ref())?;
        let t1 = Instant::now();
        g = lin.vjp(v.as_ref())?;
        let t2 = Instant::now();
        tj.push((t1 - t0).as_secs_f64() * 1e3);
        tv.push((t2 - t1).as_secs_f64() * 1e3);
        both.push((t2 - t0).as_secs_f64() * 1e3);
    }
    write_matrix(&path("out-jvp"), back(&jv).as_ref())?;
    write_matrix(&path("out-vjp"), back(&g).as_ref())?;
    println!(
        "{{\"dtype\":\"{}\",\"n\":{},\"threads\":{},\"median_ms\":{:.4},\"jvp_ms\":{:.4},\"vjp_ms\":{:.4},\"linearize_ms\":{:.4},\"repeats\":{}}}",
        T::NAME,
        x.nrows(),
        rayon::current_num_threads(),
        median(both),
        median(tj),
        median(tv),
        linearize_ms,
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
    for k in ["model", "layer", "x", "u", "v", "out-jvp", "out-vjp"] {
        if !a.contains_key(k) {
            eprintln!("bench_jvp_vjp: missing --{k}");
            std::process::exit(2);
        }
    }
    let r = match a.get("dtype").map(String::as_str).unwrap_or("f64") {
        "f32" => run::<f32>(&a),
        _ => run::<f64>(&a),
    };
    if let Err(e) = r {
        eprintln!("bench_jvp_vjp: {e}");
        std::process::exit(2);
    }
}
