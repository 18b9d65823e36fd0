//! Small line/scatter charts (several series, legend, axis labels, title) written as SVG and PNG
//! with `plotters`. Log axes are drawn by plotting log10 of the data on linear coordinates and
//! labelling the ticks with the original values, which keeps one code path for lin-log and
//! log-log charts. Text in PNGs uses the embedded DejaVu Sans (assets/, see assets/README.md).

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

fn register() {
    REGISTER.call_once(|| {
        // The font is valid (it is compiled in); a failure would only lose text in the PNGs.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)] // the full set of styles; the current figures use two of them
pub enum Style {
    Line,
    Points,
    LinePoints,
    /// A thin dashed-looking reference line (drawn thinner, in grey tones by palette).
    Reference,
}

#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub style: Style,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>, style: Style) -> Self {
        Self {
            name: name.into(),
            points,
            style,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    pub series: Vec<Series>,
    /// Vertical marks at x (data units) with a legend label.
    pub vlines: Vec<(f64, String)>,
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

fn tr(v: f64, log: bool) -> Option<f64> {
    if log {
        (v > 0.0 && v.is_finite()).then(|| v.log10())
    } else {
        v.is_finite().then_some(v)
    }
}

fn tick_label(v: f64, log: bool) -> String {
    let x = if log { 10f64.powf(v) } else { v };
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{x:.1e}")
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else {
        // Three significant digits: log-axis ticks fall between round values (10^1.2 = 15.85).
        let decimals = (2 - a.log10().floor() as i32).max(0) as usize;
        let s = format!("{x:.decimals$}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    }
}

impl Chart {
    /// Writes `stem.svg` and `stem.png`.
    pub fn write(&self, stem: &Path) -> Result<()> {
        register();
        let svg = stem.with_extension("svg");
        let png = stem.with_extension("png");
        {
            let root = SVGBackend::new(&svg, (800, 560)).into_drawing_area();
            self.draw(&root)?;
            root.present()
                .map_err(|e| anyhow!("writing {}: {e}", svg.display()))?;
        }
        {
            let root = BitMapBackend::new(&png, (800, 560)).into_drawing_area();
            self.draw(&root)?;
            root.present()
                .map_err(|e| anyhow!("writing {}: {e}", png.display()))?;
        }
        Ok(())
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plotting: {e:?}");
        root.fill(&WHITE).map_err(err)?;
        let pts: Vec<Vec<(f64, f64)>> = self
            .series
            .iter()
            .map(|s| {
                s.points
                    .iter()
                    .filter_map(|&(x, y)| Some((tr(x, self.log_x)?, tr(y, self.log_y)?)))
                    .collect()
            })
            .collect();
        let all = pts.iter().flatten();
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in all {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        let pad = |a: f64, b: f64| {
            let w = (b - a).abs().max(1e-9);
            (a - 0.04 * w, b + 0.04 * w)
        };
        let (x0, x1) = pad(x0, x1);
        let (y0, y1) = pad(y0, y1);
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err)?;
        let (lx, ly) = (self.log_x, self.log_y);
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .x_label_formatter(&|v| tick_label(*v, lx))
            .y_label_formatter(&|v| tick_label(*v, ly))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(err)?;
        for (i, (s, p)) in self.series.iter().zip(&pts).enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let width = if s.style == Style::Reference { 1 } else { 2 };
            let line_style = color.stroke_width(width);
            let mut drew = false;
            if matches!(s.style, Style::Line | Style::LinePoints | Style::Reference) {
                chart
                    .draw_series(LineSeries::new(p.iter().copied(), line_style))
                    .map_err(err)?
                    .label(&s.name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
                    });
                drew = true;
            }
            if matches!(s.style, Style::Points | Style::LinePoints) {
                let anno = chart
                    .draw_series(
                        p.iter()
                            .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
                    )
                    .map_err(err)?;
                if !drew {
                    anno.label(&s.name)
                        .legend(move |(x, y)| Circle::new((x + 10, y), 3, color.filled()));
                }
            }
        }
        for (j, (x, name)) in self.vlines.iter().enumerate() {
            let Some(xv) = tr(*x, self.log_x) else {
                continue;
            };
            if xv < x0 || xv > x1 {
                continue;
            }
            let color = RGBColor(90, 90, 90).mix(0.5 + 0.5 / (j + 1) as f64);
            chart
                .draw_series(LineSeries::new(
                    vec![(xv, y0), (xv, y1)],
                    color.stroke_width(1),
                ))
                .map_err(err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        Ok(())
    }
}

/// One line per solver of its positive residuals against the iteration (log axes skip zeros).
pub fn residual_series(traces: &[(String, Vec<f64>)]) -> Vec<Series> {
    traces
        .iter()
        .map(|(name, t)| {
            Series::new(
                name.clone(),
                t.iter()
                    .enumerate()
                    .filter(|(_, r)| **r > 0.0)
                    .map(|(k, r)| (k as f64, *r))
                    .collect(),
                Style::LinePoints,
            )
        })
        .collect()
}

/// Least-squares slope and intercept of log y against log x.
pub fn loglog_fit(points: &[(f64, f64)]) -> (f64, f64) {
    let p: Vec<(f64, f64)> = points
        .iter()
        .filter(|(x, y)| *x > 0.0 && *y > 0.0)
        .map(|(x, y)| (x.ln(), y.ln()))
        .collect();
    let n = p.len() as f64;
    let mx = p.iter().map(|q| q.0).sum::<f64>() / n;
    let my = p.iter().map(|q| q.1).sum::<f64>() / n;
    let sxy: f64 = p.iter().map(|q| (q.0 - mx) * (q.1 - my)).sum();
    let sxx: f64 = p.iter().map(|q| (q.0 - mx).powi(2)).sum();
    let slope = sxy / sxx;
    (slope, (my - slope * mx).exp())
}
