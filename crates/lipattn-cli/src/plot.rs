//! Small line/scatter charts (several series, legend, axis labels, title) written as SVG and PNG
//! with `plotters`. Log axes are drawn by plotting log10 of the data on linear coordinates and
//! labelling the ticks with the original values, which keeps one code path for lin-log and
//! log-log charts. Text in PNGs uses the embedded DejaVu Sans (assets/, see assets/README.md).

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::ops::Range;
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
        // 1e5 rather than 1.0e5 for the round values log axes put their ticks at.
        format!("{x:.1e}").replacen(".0e", "e", 1)
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

/// A linear axis with tick marks where `ticks` puts them. plotters' own key-point wrapper drops
/// the f64 axis' value formatter, which the mesh needs even with our label formatters.
struct Ticked {
    inner: RangedCoordf64,
    ticks: Vec<f64>,
}

impl Ticked {
    fn new(range: Range<f64>, ticks: Vec<f64>) -> Self {
        Self {
            inner: range.into(),
            ticks,
        }
    }
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        self.ticks.clone()
    }

    fn range(&self) -> Range<f64> {
        self.inner.range()
    }
}

/// Tick positions (in plotted coordinates) for an axis spanning `lo..hi` of plotted values. Log
/// axes get round values: decades, then 2 and 5 times them, then every integer multiple, as the
/// span needs, so that 4 to 12 ticks fall inside where possible; linear axes get 1-2-5 steps.
fn ticks(lo: f64, hi: f64, log: bool) -> Vec<f64> {
    if log {
        let (d0, d1) = (lo.floor() as i32, hi.ceil() as i32);
        let inside = |v: &f64| (lo..=hi).contains(v);
        for mults in [
            &[1.0][..],
            &[1.0, 2.0, 5.0],
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        ] {
            let t: Vec<f64> = (d0..=d1)
                .flat_map(|d| mults.iter().map(move |m| (m * 10f64.powi(d)).log10()))
                .filter(inside)
                .collect();
            if mults.len() == 1 && t.len() > 12 {
                // Many decades: every k-th, k a round number, at multiples of k (f64 spans at
                // most about 630 decades).
                let k: i64 = [2, 5, 10, 20, 25, 50, 100]
                    .into_iter()
                    .find(|&k| t.len() / k < 12)
                    .unwrap_or(100) as i64;
                return t
                    .into_iter()
                    .filter(|v| (v.round() as i64).rem_euclid(k) == 0)
                    .collect();
            }
            if t.len() >= 4 || (mults.len() == 9 && t.len() >= 2) {
                return t;
            }
        }
        // Less than a factor of about 1.5: linear round values, placed in log coordinates.
        let (a, b) = (10f64.powf(lo), 10f64.powf(hi));
        return ticks(a, b, false).into_iter().map(f64::log10).collect();
    }
    let span = hi - lo;
    if span.is_nan() || span <= 0.0 || span.is_infinite() {
        return vec![lo];
    }
    let raw = span / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|st| span / st < 10.0)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    if last.saturating_sub(first) > 100 {
        // A span at the edge of the floating-point range (step lost to rounding): the ends.
        return vec![lo, hi];
    }
    (first..=last).map(|i| i as f64 * step).collect()
}

/// Where the legend box (`w` x `h`, as fractions of the plotting area) covers the fewest of
/// `marks` (points in the unit square, 0 = left or bottom): a corner, else the middle of a side
/// (earlier positions in that order win ties).
fn legend_corner(marks: &[(f64, f64)], w: f64, h: f64) -> SeriesLabelPosition {
    use SeriesLabelPosition as P;
    let (mx, my) = ((1.0 - w) / 2.0, (1.0 - h) / 2.0);
    let places = [
        (P::UpperLeft, 0.0, 1.0 - h),
        (P::UpperRight, 1.0 - w, 1.0 - h),
        (P::LowerRight, 1.0 - w, 0.0),
        (P::LowerLeft, 0.0, 0.0),
        (P::MiddleLeft, 0.0, my),
        (P::MiddleRight, 1.0 - w, my),
        (P::UpperMiddle, mx, 1.0 - h),
        (P::LowerMiddle, mx, 0.0),
    ];
    let covered = |x0: f64, y0: f64| {
        marks
            .iter()
            .filter(|&&(x, y)| x >= x0 && x <= x0 + w && y >= y0 && y <= y0 + h)
            .count()
    };
    let mut best = (P::UpperLeft, usize::MAX);
    for (pos, x0, y0) in places {
        let c = covered(x0, y0);
        if c < best.1 {
            best = (pos, c);
        }
    }
    best.0
}

/// Points along each polyline (its vertices and 16 steps between each pair), for
/// `legend_corner`.
fn sample_lines(lines: &[Vec<(f64, f64)>]) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for l in lines {
        out.extend(l.iter().copied());
        for w in l.windows(2) {
            let ((xa, ya), (xb, yb)) = (w[0], w[1]);
            out.extend((1..16).map(|k| {
                let t = k as f64 / 16.0;
                (xa + t * (xb - xa), ya + t * (yb - ya))
            }));
        }
    }
    out
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
            .build_cartesian_2d(
                Ticked::new(x0..x1, ticks(x0, x1, self.log_x)),
                Ticked::new(y0..y1, ticks(y0, y1, self.log_y)),
            )
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
        // Legend where it hides the least data: its size from the label lengths and line count
        // (13 px text), every series and vertical mark sampled in the unit square.
        let (pw, ph) = chart.plotting_area().dim_in_pixel();
        let labels = self
            .series
            .iter()
            .map(|s| &s.name)
            .chain(self.vlines.iter().map(|v| &v.1));
        let (count, longest) = labels.fold((0, 0), |(c, m), l| (c + 1, m.max(l.chars().count())));
        let box_w = (longest as f64 * 7.0 + 50.0) / pw.max(1) as f64;
        let box_h = (count as f64 * 17.0 + 14.0) / ph.max(1) as f64;
        let unit = |(x, y): (f64, f64)| ((x - x0) / (x1 - x0), (y - y0) / (y1 - y0));
        let mut lines: Vec<Vec<(f64, f64)>> = pts
            .iter()
            .map(|p| p.iter().map(|&q| unit(q)).collect())
            .collect();
        lines.extend(self.vlines.iter().filter_map(|(x, _)| {
            let u = unit((tr(*x, self.log_x)?, y0)).0;
            Some(vec![(u, 0.0), (u, 1.0)])
        }));
        let corner = legend_corner(&sample_lines(&lines), box_w + 0.02, box_h + 0.02);
        chart
            .configure_series_labels()
            .position(corner)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &[f64]) -> Vec<f64> {
        t.iter()
            .map(|v| (10f64.powf(*v) * 1e6).round() / 1e6)
            .collect()
    }

    #[test]
    fn log_ticks_are_round_values() {
        // Four decades: decades only.
        assert_eq!(values(&ticks(-0.2, 3.6, true)), [1.0, 10.0, 100.0, 1000.0]);
        // 0.6 to 400: 1-2-5 steps.
        assert_eq!(
            values(&ticks(-0.2, 2.6, true)),
            [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0]
        );
        // 0.25 to 4: every integer multiple.
        assert_eq!(
            values(&ticks(-0.6, 0.6, true)),
            [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.0, 3.0]
        );
        // 1 to 4 (0.6 decades): every integer.
        assert_eq!(values(&ticks(0.0, 0.6021, true)), [1.0, 2.0, 3.0, 4.0]);
        // Twenty decades: every other decade, at even powers.
        let t = ticks(-10.0, 10.0, true);
        assert_eq!(t.len(), 11, "{t:?}");
        assert!(t
            .iter()
            .all(|v| (v - v.round()).abs() < 1e-12 && v.round() as i64 % 2 == 0));
        // 165 decades: every 20th.
        let t = ticks(-8.2, 157.3, true);
        assert_eq!(t.first().map(|v| v.round()), Some(0.0), "{t:?}");
        assert!(t.len() <= 12 && t.len() >= 4, "{t:?}");
        // A narrow span (1.1 to 1.3) falls back to linear round values.
        let t = values(&ticks(1.1f64.log10(), 1.3f64.log10(), true));
        assert!(t.len() >= 2, "{t:?}");
        assert!(
            t.iter()
                .all(|v| (v * 100.0 - (v * 100.0).round()).abs() < 1e-6),
            "{t:?}"
        );
    }

    #[test]
    fn linear_ticks_step_by_one_two_or_five() {
        assert_eq!(ticks(0.0, 10.0, false), [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(
            ticks(-0.6, 15.6, false),
            [0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0]
        );
        let t = ticks(-0.03, 0.47, false);
        assert_eq!(t.len(), 5, "{t:?}");
        assert!((t[1] - t[0] - 0.1).abs() < 1e-12, "{t:?}");
        assert_eq!(ticks(3.0, 3.0, false), [3.0]);
        // Degenerate spans never hang or explode.
        for (lo, hi) in [
            (1e300, 1.0000001e300),
            (-1e-320, 1e-320),
            (1.0, 1.0 + 1e-15),
        ] {
            let t = ticks(lo, hi, false);
            assert!(!t.is_empty() && t.len() <= 101, "{lo} {hi}: {t:?}");
        }
        let t = ticks(-320.0, -319.99999, true);
        assert!(!t.is_empty() && t.len() <= 101, "{t:?}");
    }

    #[test]
    fn legend_goes_to_the_emptiest_corner() {
        // A line rising from the lower left to the upper right leaves the other two corners free.
        let rising = sample_lines(&[vec![(0.0, 0.0), (1.0, 1.0)]]);
        assert!(matches!(
            legend_corner(&rising, 0.4, 0.3),
            SeriesLabelPosition::UpperLeft
        ));
        // Lines along the top and the bottom: the middle of the left side.
        let bands = sample_lines(&[vec![(0.0, 0.9), (1.0, 0.95)], vec![(0.0, 0.05), (1.0, 0.1)]]);
        assert!(matches!(
            legend_corner(&bands, 0.4, 0.3),
            SeriesLabelPosition::MiddleLeft
        ));
        // Data high on the left and low on the right: upper right.
        let falling = sample_lines(&[
            vec![(0.0, 1.0), (0.3, 0.9), (1.0, 0.0)],
            vec![(0.0, 0.8), (0.5, 0.75)],
        ]);
        assert!(matches!(
            legend_corner(&falling, 0.4, 0.3),
            SeriesLabelPosition::UpperRight
        ));
    }
}
