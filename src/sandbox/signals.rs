//! SIGINT/SIGTERM become a flag the build checks between steps; blocking waits
//! return EINTR (no SA_RESTART) so the flag is seen promptly.

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use std::sync::atomic::{AtomicI32, Ordering};

static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn note(sig: libc::c_int) {
    RECEIVED.store(sig, Ordering::SeqCst);
}

pub fn install() {
    let act = SigAction::new(SigHandler::Handler(note), SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        let _ = unsafe { sigaction(sig, &act) };
    }
}

/// The signal received, if any (0 = none).
pub fn received() -> i32 {
    RECEIVED.load(Ordering::SeqCst)
}

pub fn interrupted() -> bool {
    received() != 0
}

/// A forked child must not inherit the parent's handlers' meaning.
pub fn reset_defaults() {
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGPIPE,
    ] {
        // SAFETY: restoring default dispositions.
        let _ = unsafe { sigaction(sig, &dfl) };
    }
}

/// For a process that must outlive a Ctrl-C to clean up after the build.
pub fn ignore_interrupts() {
    let ign = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: ignoring is always safe.
        let _ = unsafe { sigaction(sig, &ign) };
    }
}
