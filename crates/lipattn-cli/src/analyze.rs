//! `lipattn analyze`: the main job. Every layer and head of a real checkpoint on real text:
//! certified bounds beside attained local constants over a grid of n, with gaps, fitted
//! exponents, a terminal table, JSON and CSV files, and log-log plots.

use crate::plot::{Chart, Series, Style};
use anyhow::{bail, Context, Result};
use clap::Args;
use lipattn::analysis::{
    analyze, merge, AnalysisOptions, Corpus, ModelReport, OperatorReport, PowerFit, TaskResult,
    TextIds,
};
use lipattn::derivatives::AttentionMemory;
use lipattn::estimation::LanczosOptions;
use lipattn::models::{Model, TextTokenizer};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Args)]
// A repeated option takes its last value, so scripts/main.sh can set defaults callers override.
#[command(args_override_self = true)]
pub struct AnalyzeArgs {
    /// Hugging Face model directory: config.json, model.safetensors (or a sharded index) and
    /// tokenizer.json. BERT, GPT-2, Llama, Mistral, Qwen2, Qwen3, Gemma and Gemma 2 families.
    model: PathBuf,
    /// UTF-8 text file for the real-text windows (default: the embedded --corpus).
    #[arg(long)]
    text: Option<PathBuf>,
    /// Embedded real text when no --text is given: gpl-3 (the GPL-3 licence, 6,840 MiniLM
    /// tokens) or licences (eight licence documents, 33,015 tokens: windows up to 32,768).
    #[arg(long, value_parser = crate::names::named::<Corpus>(), default_value_t = Corpus::default(), conflicts_with = "text")]
    corpus: Corpus,
    /// Directory for report.json, operators.csv, points.csv and the plots (SVG and PNG).
    #[arg(long, default_value = "lipattn-report")]
    out: PathBuf,
    /// Print the whole report as one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Sequence lengths n (special tokens included), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8,16,32,64,128,256,512")]
    ns: Vec<usize>,
    /// Real-text windows per n, evenly spaced over the text.
    #[arg(long, default_value_t = 2)]
    windows: usize,
    /// Layers to analyse, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    layers: Option<Vec<usize>>,
    /// Analyse the whole attention sublayers only, not each head.
    #[arg(long)]
    no_heads: bool,
    /// Skip the structured inputs: the adversarial construction and the transition starts.
    #[arg(long)]
    no_adversarial: bool,
    /// Relative accuracy requested from Lanczos for each local constant (every value reported is
    /// attained whatever the accuracy; the tolerance only decides how close to ||J(X)||_2).
    #[arg(long, default_value_t = 1e-4)]
    tol: f64,
    /// Attention state of the local constants: dense (n x n probabilities per head), streaming
    /// (per-row statistics, O(n d) memory, docs/streaming.md) or auto (dense where it fits
    /// --max-memory, per operator and n; report.json says which ran at each point).
    #[arg(long, value_parser = crate::names::named::<AttentionMemory>(), default_value_t = AnalysisOptions::default().attention)]
    attention: AttentionMemory,
    /// No progress bar (the estimate of time and memory is still printed).
    #[arg(long)]
    quiet: bool,
    /// Compute nothing: merge the task results (one JSON file per (layer, n) task, as
    /// lipattn.cluster checkpoints them) in this directory into the report of the same options,
    /// then write it as usual (docs/cluster.md).
    #[arg(long, value_name = "DIR")]
    from_tasks: Option<PathBuf>,
}

/// Every `*.json` file of `dir`, parsed as a task result.
fn task_results(dir: &Path) -> Result<Vec<TaskResult>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading --from-tasks {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    paths.retain(|p| p.extension().is_some_and(|e| e == "json"));
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let body =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str(&body)
                .with_context(|| format!("{} is not an analysis task result", p.display()))
        })
        .collect()
}

fn text_ids(a: &AnalyzeArgs) -> Result<TextIds> {
    let tokenizer = TextTokenizer::from_dir(&a.model)?;
    let text = match &a.text {
        Some(p) => Some((
            std::fs::read_to_string(p)
                .with_context(|| format!("reading --text {}", p.display()))?,
            p.display().to_string(),
        )),
        None => None,
    };
    let text = text.as_ref().map(|(t, s)| (t.as_str(), s.as_str()));
    Ok(TextIds::from_text_or_corpus(&tokenizer, text, a.corpus)?)
}

fn opt(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| lipattn::fmt::compact(v).to_string())
}

/// A certified upper bound, shown rounded up so that the table never understates it.
fn bound(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| lipattn::fmt::upper(v).to_string())
}

fn exp(f: &Option<PowerFit>) -> String {
    f.as_ref()
        .map_or("-".into(), |f| format!("{:.3}", f.exponent))
}

fn who(o: &OperatorReport) -> String {
    o.head.map_or("all".into(), |h| h.to_string())
}

fn table(r: &ModelReport) -> String {
    let n = *r.ns.last().expect("ns non-empty");
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} ({}, {} layers, {} heads of {}), {}; text: {} ({} tokens)",
        r.model, r.family, r.num_layers, r.heads, r.head_dim, r.dtype, r.text_source, r.text_tokens
    );
    match &r.rotary {
        None => {
            let _ = writeln!(
                s,
                "token map on (B_R)^n, Frobenius; R from the preceding LayerNorm (B6); values at n = {n}; alpha = fitted exponent of sigma ~ c n^alpha over n = {:?}",
                r.ns
            );
        }
        Some(rot) => {
            let _ = writeln!(
                s,
                "token map on (B_R)^n at positions 0..n-1, Frobenius; {} query heads on {} kv heads; values at n = {n}; alpha = fitted exponent of sigma ~ c n^alpha over n = {:?}",
                r.heads, rot.kv_heads, r.ns
            );
            for (what, line) in [
                ("R", rot.radius),
                ("certified", rot.certified),
                ("text", rot.text),
                ("adversarial", rot.adversarial),
                ("transition", rot.transition),
                ("n", rot.positions),
            ] {
                let _ = writeln!(s, "{what}: {line}");
            }
        }
    }
    for o in r.operators.iter().filter(|o| o.head.is_none()) {
        let _ = writeln!(s, "operator: {}", o.operator.description);
    }
    let _ = writeln!(
        s,
        "{:>5} {:>4} {:>8} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>7} {:>7}",
        "layer",
        "head",
        "R",
        "certified",
        "text max",
        "adversar.",
        "transition",
        "gap",
        "W1 cert.",
        "a_text",
        "a_adv"
    );
    for o in &r.operators {
        let p = o.points.last().expect("points for every n");
        let _ = writeln!(
            s,
            "{:>5} {:>4} {:>8.3} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>7} {:>7}",
            o.layer,
            who(o),
            o.radius,
            bound(p.certified.frobenius),
            opt(p.text_max),
            opt(p.adversarial),
            opt(p.transition),
            opt(p.gap),
            bound(p.certified.w1),
            exp(&o.fit_text),
            exp(&o.fit_adversarial)
        );
    }
    for note in &r.notes {
        let _ = writeln!(s, "note: {note}");
    }
    let _ = writeln!(
        s,
        "attained values are lower bounds (local constants at concrete inputs); certified values are proven upper bounds (docs/bounds.md); {:.1} s",
        r.seconds
    );
    s
}

fn fit_cells(f: &Option<PowerFit>) -> String {
    match f {
        Some(f) => format!("{},{},{}", f.exponent, f.coefficient, f.r2),
        None => ",,".into(),
    }
}

fn csv_opt(x: Option<f64>) -> String {
    x.map_or(String::new(), |v| v.to_string())
}

/// The rotary form of an operator as CSV cells (rotary reports only: BERT and GPT-2 files keep
/// their columns).
const ROTARY_COLUMNS: &str =
    ",family,rope_type,rope_theta,rotary_dim,heads,kv_heads,window,qk_norm,softcap,certified_bound";

fn rotary_cells(o: &OperatorReport) -> String {
    o.operator.rotary.as_ref().map_or(String::new(), |f| {
        format!(
            ",{},{},{},{},{},{},{},{},{},B7",
            f.family,
            f.rope_type,
            f.rope_theta,
            f.rotary_dim,
            f.heads,
            f.kv_heads,
            f.window.map_or(String::new(), |w| w.to_string()),
            f.qk_norm,
            csv_opt(f.softcap),
        )
    })
}

fn write_csvs(r: &ModelReport, out: &Path) -> Result<()> {
    let mut ops = String::from(
        "layer,head,radius,n,certified_frobenius,certified_w1,certified_w2,anchor,text_median,text_max,adversarial,transition,gap,text_exponent,text_coefficient,text_r2,adversarial_exponent,adversarial_coefficient,adversarial_r2,text_exponent_small,adversarial_exponent_small,adversarial_sqrt_coefficient_small,certified_exponent",
    );
    if r.rotary.is_some() {
        ops.push_str(ROTARY_COLUMNS);
    }
    ops.push('\n');
    let mut pts = String::from("layer,head,radius,n,kind,window,value\n");
    for o in &r.operators {
        let head = o.head.map_or("all".to_string(), |h| h.to_string());
        let p = o.points.last().expect("points for every n");
        let _ = writeln!(
            ops,
            "{},{head},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}{}",
            o.layer,
            o.radius,
            p.n,
            csv_opt(p.certified.frobenius),
            csv_opt(p.certified.w1),
            csv_opt(p.certified.w2),
            csv_opt(p.certified.anchor),
            csv_opt(p.text_median),
            csv_opt(p.text_max),
            csv_opt(p.adversarial),
            csv_opt(p.transition),
            csv_opt(p.gap),
            fit_cells(&o.fit_text),
            fit_cells(&o.fit_adversarial),
            csv_opt(o.fit_text_small.as_ref().map(|f| f.exponent)),
            csv_opt(o.fit_adversarial_small.as_ref().map(|f| f.exponent)),
            csv_opt(o.fit_adversarial_small.as_ref().map(|f| f.sqrt_coefficient)),
            csv_opt(o.fit_certified.as_ref().map(|f| f.exponent)),
            rotary_cells(o),
        );
        for p in &o.points {
            let mut row = |kind: &str, w: String, v: Option<f64>| {
                if let Some(v) = v {
                    let _ = writeln!(
                        pts,
                        "{},{head},{},{},{kind},{w},{v}",
                        o.layer, o.radius, p.n
                    );
                }
            };
            for (w, v) in p.text.iter().enumerate() {
                row("text", w.to_string(), Some(*v));
            }
            row("adversarial", String::new(), p.adversarial);
            row("transition", String::new(), p.transition);
            row("certified_frobenius", String::new(), p.certified.frobenius);
            row("certified_w1", String::new(), p.certified.w1);
            row("anchor", String::new(), p.certified.anchor);
        }
    }
    let write = |name: &str, body: &str| {
        std::fs::write(out.join(name), body)
            .with_context(|| format!("writing {}", out.join(name).display()))
    };
    write("operators.csv", &ops)?;
    write("points.csv", &pts)
}

fn fit_label(name: &str, f: &Option<PowerFit>) -> String {
    match f {
        Some(f) => format!("{name}: {:.3} n^{:.3}", f.coefficient, f.exponent),
        None => name.to_string(),
    }
}

fn fit_line(f: &Option<PowerFit>) -> Vec<(f64, f64)> {
    f.as_ref().map_or(vec![], |f| {
        [f.n_min, f.n_max]
            .iter()
            .map(|&n| (n as f64, f.coefficient * (n as f64).powf(f.exponent)))
            .collect()
    })
}

fn plot_layer(r: &ModelReport, o: &OperatorReport, out: &Path) -> Result<()> {
    let pick = |f: &dyn Fn(&lipattn::analysis::Point) -> Option<f64>| -> Vec<(f64, f64)> {
        o.points
            .iter()
            .filter_map(|p| f(p).map(|v| (p.n as f64, v)))
            .collect()
    };
    let windows: Vec<(f64, f64)> = o
        .points
        .iter()
        .flat_map(|p| p.text.iter().map(move |&v| (p.n as f64, v)))
        .collect();
    let mut series = vec![
        Series::new(
            fit_label("real text, median (attained)", &o.fit_text),
            pick(&|p| p.text_median),
            Style::LinePoints,
        ),
        Series::new("real text, each window", windows, Style::Points),
        Series::new(
            fit_label("adversarial (attained)", &o.fit_adversarial),
            pick(&|p| p.adversarial),
            Style::LinePoints,
        ),
        Series::new(
            "transition start (attained)",
            pick(&|p| p.transition),
            Style::LinePoints,
        ),
        Series::new(
            fit_label("certified (Frobenius)", &o.fit_certified),
            pick(&|p| p.certified.frobenius),
            Style::LinePoints,
        ),
    ];
    for (name, f) in [
        ("fit, text", &o.fit_text),
        ("fit, adversarial", &o.fit_adversarial),
    ] {
        let line = fit_line(f);
        if !line.is_empty() {
            series.push(Series::new(name, line, Style::Reference));
        }
    }
    let form = o.operator.rotary.as_ref().map_or(String::new(), |f| {
        format!(
            ", {} rope theta {}, {}/{} heads, window {}{}{}, B7",
            f.rope_type,
            lipattn::fmt::compact(f.rope_theta),
            f.heads,
            f.kv_heads,
            f.window.map_or("none".into(), |w| w.to_string()),
            if f.qk_norm { ", qk-norm" } else { "" },
            f.softcap.map_or(String::new(), |c| format!(
                ", softcap {}",
                lipattn::fmt::compact(c)
            )),
        )
    });
    Chart {
        title: format!(
            "{} layer {} attention sublayer, R = {:.2}, {}{form}",
            r.family, o.layer, o.radius, r.dtype
        ),
        x_label: "n (tokens)".into(),
        y_label: "Lipschitz constant (token map, Frobenius)".into(),
        log_x: true,
        log_y: true,
        series,
        vlines: vec![],
    }
    .write(&out.join(format!("layer{}", o.layer)))
}

fn plot_exponents(r: &ModelReport, out: &Path) -> Result<()> {
    let heads: Vec<&OperatorReport> = r.operators.iter().filter(|o| o.head.is_some()).collect();
    if heads.is_empty() {
        return Ok(());
    }
    let x = |o: &OperatorReport| (o.layer * r.heads + o.head.unwrap_or(0)) as f64;
    let pts = |f: &dyn Fn(&OperatorReport) -> Option<f64>| -> Vec<(f64, f64)> {
        heads
            .iter()
            .filter_map(|o| f(o).map(|v| (x(o), v)))
            .collect()
    };
    let span = (r.num_layers * r.heads) as f64;
    Chart {
        title: format!(
            "{}: fitted exponent alpha of sigma ~ c n^alpha per head",
            r.family
        ),
        x_label: format!("layer * {} + head", r.heads),
        y_label: "alpha".into(),
        log_x: false,
        log_y: false,
        series: vec![
            Series::new(
                "real text",
                pts(&|o| o.fit_text.as_ref().map(|f| f.exponent)),
                Style::Points,
            ),
            Series::new(
                "adversarial",
                pts(&|o| o.fit_adversarial.as_ref().map(|f| f.exponent)),
                Style::Points,
            ),
            Series::new("1/4", vec![(0.0, 0.25), (span, 0.25)], Style::Reference),
            Series::new("1/2", vec![(0.0, 0.5), (span, 0.5)], Style::Reference),
        ],
        vlines: vec![],
    }
    .write(&out.join("exponents"))
}

pub fn run(a: AnalyzeArgs) -> Result<()> {
    // Before any work: an unwritable --out or a run already writing it stops here.
    let stage = lipattn::output::StagedDir::create(&a.out)?;
    let out = stage.path();
    let model = Model::open(&a.model)?;
    let text = text_ids(&a)?;
    if a.ns.is_empty() {
        bail!("--ns needs at least one sequence length");
    }
    let opts = AnalysisOptions {
        ns: a.ns.clone(),
        windows: a.windows,
        layers: a.layers.clone(),
        heads: !a.no_heads,
        adversarial: !a.no_adversarial,
        lanczos: LanczosOptions {
            tol: a.tol,
            ..AnalysisOptions::default().lanczos
        },
        attention: a.attention,
    };
    let report = match &a.from_tasks {
        Some(dir) => merge(&model, Some(&text), &opts, &task_results(dir)?)?,
        None => {
            let bar = crate::progress::Bar::new(a.quiet);
            let report = analyze(&model, Some(&text), &opts, &mut |p| {
                if let Some(e) = &p.estimate {
                    bar.note(&e.summary());
                }
                bar.update(&lipattn::ops::Progress {
                    stage: &p.stage,
                    done: p.done,
                    total: p.total,
                })
            })?;
            drop(bar);
            report
        }
    };
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(out.join("report.json"), &json)
        .with_context(|| format!("writing {}", out.join("report.json").display()))?;
    write_csvs(&report, out)?;
    for o in report.operators.iter().filter(|o| o.head.is_none()) {
        plot_layer(&report, o, out)?;
    }
    plot_exponents(&report, out)?;
    stage.commit()?;
    if a.json {
        println!("{json}");
    } else {
        print!("{}", table(&report));
        println!(
            "wrote report.json, operators.csv, points.csv and plots (layerL.svg/.png, exponents.svg/.png) to {}",
            a.out.display()
        );
    }
    Ok(())
}
