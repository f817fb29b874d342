//! Termination signals (Ctrl-C, SIGTERM, SIGHUP) for the layer tools that write: `unpack`,
//! `diff` and the store's writers. Their default action would end the process where it
//! stands, leaving an unpack's staging directory or a half-written tar beside their targets.
//! Instead a thread takes the signal and records it; the tools look at it between entries
//! ([`check`]) and unwind, removing what they staged, and the process exits with 128 + the
//! signal's number. A second signal ends the process at once, for a tool blocked on input
//! that never comes (standard input from a terminal).

use std::sync::atomic::{AtomicI32, Ordering};

use super::error::{Error, Result};

static STOPPED: AtomicI32 = AtomicI32::new(0);

/// Takes the termination signals on a thread of their own from now on.
pub fn take_signals() {
    crate::sys::block_term_signals();
    let spawned = std::thread::Builder::new().name("signals".into()).spawn(|| {
        loop {
            let sig = crate::sys::wait_term_signal();
            if sig == libc::SIGUSR1 {
                continue;
            }
            if STOPPED.swap(sig, Ordering::SeqCst) != 0 {
                std::process::exit(128 + sig);
            }
        }
    });
    if spawned.is_err() {
        crate::sys::unblock_term_signals();
    }
}

/// The signal taken, if one was.
pub fn stopped() -> Option<i32> {
    Some(STOPPED.load(Ordering::SeqCst)).filter(|&s| s != 0)
}

/// An error once a signal was taken: the caller unwinds from there.
pub fn check() -> Result<()> {
    match stopped() {
        None => Ok(()),
        Some(sig) => Err(Error::new(format!("interrupted by signal {sig}"))),
    }
}
