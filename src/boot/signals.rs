//! SIGINT, SIGTERM and SIGHUP become a flag the boot loop polls, so every way
//! out runs the same cleanup: QEMU's process group stopped, temporary files removed.

use anyhow::{Context, Result};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use std::sync::atomic::{AtomicI32, Ordering};

static CAUGHT: AtomicI32 = AtomicI32::new(0);

extern "C" fn note(sig: libc::c_int) {
    CAUGHT.store(sig, Ordering::SeqCst);
}

pub struct Watch(());

impl Watch {
    pub fn install() -> Result<Watch> {
        let act = SigAction::new(SigHandler::Handler(note), SaFlags::empty(), SigSet::empty());
        for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            // SAFETY: the handler only stores to an atomic.
            unsafe { sigaction(sig, &act) }.with_context(|| format!("cannot handle {sig}"))?;
        }
        Ok(Watch(()))
    }

    /// The signal that arrived, if any.
    pub fn caught(&self) -> Option<i32> {
        match CAUGHT.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }
}
