//! A finished figure as data: the CSV text and what to draw. The frontend writes `NAME.csv` and
//! renders the plot as `NAME.svg` and `NAME.png`.

use std::fmt::Write as _;

#[derive(Clone, Debug)]
pub struct Figure {
    /// File stem of the figure's outputs (`saturation` -> saturation.csv, .svg, .png).
    pub name: &'static str,
    /// The complete contents of `NAME.csv`.
    pub csv: String,
    pub plot: Plot,
}

#[derive(Clone, Debug)]
pub struct Plot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    pub curves: Vec<Curve>,
    /// Vertical marks at x (data units) with a legend label.
    pub vlines: Vec<(f64, String)>,
}

/// Measured data is drawn as lines through points; references (fits, guides) as thin lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CurveKind {
    Measured,
    Reference,
}

#[derive(Clone, Debug)]
pub struct Curve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub kind: CurveKind,
}

impl Curve {
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>, kind: CurveKind) -> Self {
        Self {
            label: label.into(),
            points,
            kind,
        }
    }
}

/// A header line and numeric rows with ten significant decimals: enough to replay every number
/// of the summary from the CSV alone.
pub(crate) fn numeric_csv(header: &str, rows: &[Vec<f64>]) -> String {
    let mut s = String::from(header);
    s.push('\n');
    for r in rows {
        let line: Vec<String> = r.iter().map(|v| format!("{v:.10e}")).collect();
        // Writing to a String cannot fail.
        let _ = writeln!(s, "{}", line.join(","));
    }
    s
}
