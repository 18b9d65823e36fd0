//! Progress of a command, reported between its stages. Frontends render it (the CLI as a bar on
//! a terminal) or ignore it; a command never depends on what the callback does.

/// `done` of `total` units of `stage` are finished.
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    pub stage: &'a str,
    pub done: usize,
    pub total: usize,
}

/// The callback every command takes.
pub type OnProgress<'a> = &'a mut dyn FnMut(&Progress);

/// A callback that ignores progress.
pub fn silent(_: &Progress) {}
