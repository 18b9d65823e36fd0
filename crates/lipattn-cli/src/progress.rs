//! The library's progress events as a bar on stderr; indicatif draws nothing when stderr is not
//! a terminal, so scripted runs and `--json` output are unaffected.

use indicatif::{ProgressBar, ProgressStyle};
use lipattn::ops::Progress;

pub struct Bar(ProgressBar);

impl Bar {
    pub fn new(quiet: bool) -> Self {
        if quiet {
            return Bar(ProgressBar::hidden());
        }
        let b = ProgressBar::new(1);
        b.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        Bar(b)
    }

    /// A line on stderr above the bar (printed whether or not the bar is drawn).
    pub fn note(&self, line: &str) {
        self.0.suspend(|| eprintln!("{line}"));
    }

    pub fn update(&self, p: &Progress) {
        self.0.set_length(p.total as u64);
        self.0.set_position(p.done as u64);
        self.0.set_message(p.stage.to_string());
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
