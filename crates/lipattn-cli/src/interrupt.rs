//! Ctrl-C, SIGTERM and SIGHUP remove the outputs being staged before the process ends, so an
//! interrupted run leaves neither a half-written report nor a lock behind
//! (docs/reliability.md#reports-written-atomically). The signals are blocked in every thread
//! and taken by one thread with `sigwait`, where the clean-up may allocate and touch files
//! freely, which a signal handler could not.

#[cfg(unix)]
pub fn install() {
    // SAFETY: plain libc calls on a locally owned signal set, made before any other thread
    // exists, so every thread spawned later (rayon's included) inherits the blocked mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        let waiter = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut sig: libc::c_int = 0;
                if libc::sigwait(&set, &mut sig) == 0 {
                    lipattn::output::remove_staged();
                    eprintln!("lipattn: interrupted; unfinished outputs were removed");
                    std::process::exit(128 + sig);
                }
            });
        if waiter.is_err() {
            // Without the waiting thread a blocked Ctrl-C would be ignored: restore the default.
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
    }
}

#[cfg(not(unix))]
pub fn install() {}
