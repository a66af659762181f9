//! Waiting for a child process: the one loop behind every job, the build's
//! namespace and its PID 1, so "exit code, or 128 + signal" is decided once.

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

/// `child`'s exit code from one wait status: its own code, or 128 + the signal
/// that killed it (the shell's convention, which callers of hooks expect).
/// None for any other process or event.
pub(crate) fn code_of(status: &WaitStatus, child: Pid) -> Option<i32> {
    match *status {
        WaitStatus::Exited(pid, code) if pid == child => Some(code),
        WaitStatus::Signaled(pid, sig, _) if pid == child => Some(128 + sig as i32),
        _ => None,
    }
}

/// Whose exits a wait collects.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reap {
    /// Only the child's.
    Child,
    /// Every child's (PID 1 of a namespace inherits orphans), until the child's.
    All,
}

/// Waits until `child` ends and returns [`code_of`] it; 255 when waiting
/// itself fails. `interrupted` runs each time a signal cut the wait short, to
/// forward it or act on it.
pub(crate) fn until_exit(child: Pid, reap: Reap, interrupted: &mut dyn FnMut()) -> i32 {
    let target = match reap {
        Reap::Child => Some(child),
        Reap::All => None,
    };
    loop {
        match waitpid(target, None) {
            Ok(status) => {
                if let Some(code) = code_of(&status, child) {
                    return code;
                }
            }
            Err(nix::errno::Errno::EINTR) => interrupted(),
            Err(_) => return 255,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::unistd::{fork, ForkResult};

    fn child(f: impl FnOnce() -> i32) -> Pid {
        // SAFETY: the child only exits or raises a signal.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => unsafe { libc::_exit(f()) },
            ForkResult::Parent { child } => child,
        }
    }

    #[test]
    fn exit_codes_and_signals_follow_the_shell() {
        let p = child(|| 7);
        assert_eq!(until_exit(p, Reap::Child, &mut || {}), 7);
        let p = child(|| {
            unsafe { libc::raise(libc::SIGKILL) };
            0
        });
        assert_eq!(until_exit(p, Reap::Child, &mut || {}), 128 + 9);
        assert_eq!(
            code_of(&WaitStatus::Exited(Pid::from_raw(1), 3), Pid::from_raw(2)),
            None
        );
    }
}
