//! Rust side of bench/jvp_vjp: one JVP plus one VJP of a MiniLM attention sublayer at a fixed X,
//! on inputs shared with the PyTorch anchor. Prints one JSON line with the median time.
//!
//! --model DIR --layer L --x X.npy --u U.npy --v V.npy --dtype f64|f32 --repeats K
//! --out-jvp J.npy --out-vjp G.npy [--serve 1]
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
    let mut steps = |k: usize,
                     both: &mut Vec<f64>,
                     tj: &mut Vec<f64>,
                     tv: &mut Vec<f64>|
     -> Result<(), Box<dyn std::error::Error>> {
        for _ in 0..k {
            let t0 = Instant::now();
            lin.jvp_into(u.as_ref(), jv.as_mut())?;
            let t1 = Instant::now();
            lin.vjp_into(v.as_ref(), g.as_mut())?;
            let t2 = Instant::now();
            tj.push((t1 - t0).as_secs_f64() * 1e3);
            tv.push((t2 - t1).as_secs_f64() * 1e3);
            both.push((t2 - t0).as_secs_f64() * 1e3);
        }
        Ok(())
    };
    if a.contains_key("serve") {
        // Batches on request (bench/jvp_vjp/interleave.py alternates them with torch's): a line
        // "W K" runs W + K steps and answers the last K's times; "end" finishes with the summary.
        println!("ready");
        for line in std::io::stdin().lines() {
            let line = line?;
            if line.trim() == "end" {
                break;
            }
            // "W K": W untimed steps (the caches and threads warm up again after the other
            // side's batch), then K timed ones.
            let nums: Vec<usize> = line
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()?;
            let [warm, k] = nums[..] else {
                return Err(format!("serve: expected 'W K', got {line:?}").into());
            };
            let (mut b, mut j, mut w) = (Vec::new(), Vec::new(), Vec::new());
            steps(warm, &mut b, &mut j, &mut w)?;
            let (mut b, mut j, mut w) = (Vec::new(), Vec::new(), Vec::new());
            steps(k, &mut b, &mut j, &mut w)?;
            let list = |v: &[f64]| {
                v.iter()
                    .map(|t| format!("{t:.4}"))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            println!(
                "{{\"steps\":[{}],\"jvp\":[{}],\"vjp\":[{}]}}",
                list(&b),
                list(&j),
                list(&w)
            );
            both.extend(b);
            tj.extend(j);
            tv.extend(w);
        }
    } else {
        steps(repeats, &mut both, &mut tj, &mut tv)?;
    }
    let repeats = both.len();
    write_matrix(&path("out-jvp"), back(&jv).as_ref())?;
    write_matrix(&path("out-vjp"), back(&g).as_ref())?;
    let min_ms = both.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "{{\"dtype\":\"{}\",\"n\":{},\"threads\":{},\"median_ms\":{:.4},\"min_ms\":{:.4},\"jvp_ms\":{:.4},\"vjp_ms\":{:.4},\"linearize_ms\":{:.4},\"repeats\":{}}}",
        T::NAME,
        x.nrows(),
        rayon::current_num_threads(),
        median(both),
        min_ms,
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
