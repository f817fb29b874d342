//! Shared by the tests that signal the command-line tools.

use std::process::Command;

/// `cmd` with SIGHUP, SIGINT and SIGTERM at their default actions and unblocked, as in a
/// terminal session: the tests may run where they are ignored (under `nohup`, or as a
/// background job of a shell without job control), which a child inherits.
pub fn default_signals(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: signal(2), sigemptyset, sigaddset and sigprocmask are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in [libc::SIGHUP, libc::SIGINT, libc::SIGTERM] {
                libc::signal(s, libc::SIG_DFL);
                libc::sigaddset(&mut set, s);
            }
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            Ok(())
        })
    }
}
