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

/// A reporter of `total` steps of one `stage`: call it with the number done.
pub fn stages<'a, 'b>(
    on_progress: OnProgress<'b>,
    stage: &'a str,
    total: usize,
) -> impl FnMut(usize) + use<'a, 'b> {
    move |done| on_progress(&Progress { stage, done, total })
}
