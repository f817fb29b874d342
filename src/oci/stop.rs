//! Termination signals (Ctrl-C, SIGTERM, SIGHUP) for the layer tools that write: `unpack`,
//! `diff` and the store's writers. Their default action would end the process where it
//! stands, leaving an unpack's staging directory or a half-written tar beside their targets.
//! Instead a thread takes the signal and records it; the tools look at it between entries
//! ([`check`]) and unwind, removing what they staged, and the process exits with 128 + the
//! signal's number. A tool that does not come to a check within [`GRACE`] (blocked on input
//! that does not come, as a stalled download piped in) is ended then, as a second signal ends
//! it at once; the signal thread first removes what the tool registered as staged
//! ([`stage`]). A staged object is put in place only through [`commit`], under the same lock,
//! so a removal never meets a rename.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

use super::error::{Error, Result};

/// What a tool staged (a directory beside an unpack's target, a tar beside `diff`'s output):
/// the directory it is in and its name there.
struct Staged {
    id: u64,
    dir: OwnedFd,
    name: Vec<u8>,
}

/// Whether the process is ending without its tools' own clean-up, and what is staged.
static STAGED: Mutex<(bool, Vec<Staged>)> = Mutex::new((false, Vec::new()));
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Registers `name` in `dir` as staged until [`commit`] or [`unstage`]; returns its id (0 when
/// the directory could not be held: it is then left alone).
pub fn stage(dir: BorrowedFd<'_>, name: &[u8]) -> u64 {
    let Ok(dir) = dir.try_clone_to_owned() else { return 0 };
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    STAGED.lock().unwrap_or_else(|e| e.into_inner()).1.push(Staged { id, dir, name: name.to_vec() });
    id
}

/// Forgets a staged object (the tool removed it itself).
pub fn unstage(id: u64) {
    STAGED.lock().unwrap_or_else(|e| e.into_inner()).1.retain(|s| s.id != id);
}

/// Puts a staged object in place with `rename`, unless the process is already ending, and
/// forgets it.
pub fn commit(id: u64, rename: impl FnOnce() -> Result<()>) -> Result<()> {
    let mut st = STAGED.lock().unwrap_or_else(|e| e.into_inner());
    if st.0 {
        return Err(Error::new("interrupted"));
    }
    let r = rename();
    if r.is_ok() {
        st.1.retain(|s| s.id != id);
    }
    r
}

/// Removes everything staged, for good: later commits fail.
fn remove_staged() {
    let mut st = STAGED.lock().unwrap_or_else(|e| e.into_inner());
    st.0 = true;
    for s in st.1.drain(..) {
        if let Err(e) = super::unpack::remove_all(s.dir.as_fd(), &s.name) {
            eprintln!("layerfs: cannot remove {}: {e}", String::from_utf8_lossy(&s.name));
        }
    }
}

static STOPPED: AtomicI32 = AtomicI32::new(0);
/// Set once a tool saw the signal at a check and began to unwind.
static UNWINDING: AtomicBool = AtomicBool::new(false);

/// How long a tool has to come to a check after a signal.
pub const GRACE: Duration = Duration::from_secs(5);

/// Takes the termination signals on a thread of their own from now on, those not ignored
/// (`nohup`, a background job of a shell without job control: they stay ignored).
pub fn take_signals() {
    crate::sys::take_term_signals(|sig| {
        STOPPED.store(sig, Ordering::SeqCst);
        let end = match crate::sys::wait_term_signal_for(GRACE) {
            Some(again) if again != libc::SIGUSR1 => again,
            _ if UNWINDING.load(Ordering::SeqCst) => return,
            _ => {
                eprintln!("layerfs: signal {sig} not seen within {} s; ending now", GRACE.as_secs());
                remove_staged();
                sig
            }
        };
        std::process::exit(128 + end);
    });
}

/// The signal taken, if one was.
pub fn stopped() -> Option<i32> {
    Some(STOPPED.load(Ordering::SeqCst)).filter(|&s| s != 0)
}

/// An error once a signal was taken: the caller unwinds from there.
pub fn check() -> Result<()> {
    match stopped() {
        None => Ok(()),
        Some(sig) => {
            UNWINDING.store(true, Ordering::SeqCst);
            Err(Error::new(format!("interrupted by signal {sig}")))
        }
    }
}
