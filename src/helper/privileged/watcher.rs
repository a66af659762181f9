//! What makes an attachment end with its caller. The caller holds read-write
//! descriptors of the loop device, and with write access LOOP_SET_STATUS64 may
//! clear LO_FLAGS_AUTOCLEAR: closing them would then leave the image attached,
//! its partitions open to the host, after the build. Nothing the helper hands
//! over can prevent that (the build writes the partition table through that
//! descriptor), so it is undone: attach leaves a watcher behind, one per
//! attachment, that detaches the device when the caller's process ends.
//!
//! Why this shape:
//! - It holds a pidfd of the caller, not the device: autoclear counts openers,
//!   and one held by the watcher would keep every device until its caller
//!   exits. The device is opened (read-only) only once the caller is gone, and
//!   touched only if it still has the binding attach recorded (its disk
//!   sequence number; while the watcher holds it open the binding cannot change).
//! - LOOP_CLR_FD with other openers left (a child of the caller still holding a
//!   descriptor) sets autoclear again: the device goes when they close it.
//! - It needs no capability: the device node and the registry are root's, and
//!   LOOP_CLR_FD asks for none. All ids root (the caller cannot signal it), its
//!   own session (a Ctrl-C or kill of the caller's process group misses it),
//!   no descriptor of the caller's but the pidfd (standard streams on /dev/null,
//!   so the caller's wait for the helper's output ends), cwd /.
//! - It is bounded: it ends when the caller does, or within CHECK_EVERY of the
//!   binding ending otherwise (autoclear, detach), so a caller that lives on
//!   does not collect one per attachment it ever made; live attachments are
//!   limited per user by the registry.
//! - The caller's CPU time limit, which it cannot lift (that takes
//!   CAP_SYS_RESOURCE), does not end it: past half of it the watch goes on in
//!   a fresh process, whose count starts at zero.
//! - What it does goes to the authentication log, as the helper's own lines do.

use super::caller::Caller;
use super::hardening::Unprivileged;
use super::registry::{self, Registry};
use super::{log, loopdev};
use anyhow::{bail, Result};
use nix::errno::Errno;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, RawFd};
use std::time::Duration;

/// How often a watcher whose caller lives on looks whether the binding ended.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Where the pidfd is kept once every other descriptor is closed.
const PIDFD: RawFd = 3;

/// Forks the watcher of `name` (bound as `diskseq`) for `caller`. Called once
/// every capability is gone, before the reply: no device reaches a caller
/// without its watcher.
pub fn spawn(u: &Unprivileged, caller: Caller, name: &str, diskseq: u64) -> Result<()> {
    // SAFETY: the helper is single-threaded; the child never returns.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => Ok(()),
        Ok(nix::unistd::ForkResult::Child) => watch(caller, name, diskseq, u.caller()),
        Err(e) => bail!(
            "cannot start the process that detaches {name} when you are done: {}",
            e.desc()
        ),
    }
}

/// The watcher's whole life. It never returns: the stack below it belongs to
/// the helper's attach, whose destructors must not run twice.
fn watch(caller: Caller, name: &str, diskseq: u64, uid: u32) -> ! {
    // First, out of reach of a signal to the caller's process group.
    let _ = nix::unistd::setsid();
    // glibc's syslog descriptor is about to be closed behind its back.
    // SAFETY: closelog takes no argument.
    unsafe { libc::closelog() };
    isolate(caller.pidfd.into_raw_fd());
    log::open();
    let _ = nix::unistd::chdir("/");
    if let Ok(comm) = std::ffi::CString::new(format!("watch {name}")) {
        // SAFETY: PR_SET_NAME copies at most 16 bytes of a C string.
        unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr()) };
    }
    let cpu_limit = cpu_limit();
    // SAFETY: isolate() put the pidfd at PIDFD, and nothing closes it.
    let pidfd = unsafe { BorrowedFd::borrow_raw(PIDFD) };
    let code = match wait(pidfd, name, diskseq, cpu_limit) {
        Ok(true) => finish(name, diskseq, uid, caller.pid),
        Ok(false) => forget(name, diskseq),
        Err(e) => {
            log::warning(&format!(
                "stopped watching {name} (uid {uid}, caller process {}): {}",
                caller.pid,
                e.desc()
            ));
            1
        }
    };
    // SAFETY: leave without running anything of the helper's.
    unsafe { libc::_exit(code) }
}

/// Only the pidfd, at PIDFD, and /dev/null as the standard streams.
fn isolate(pidfd: RawFd) {
    // SAFETY: plain descriptor calls. 0-2 are open (Start::capture), so the
    // pidfd is at 3 or above and dup2 onto 3 replaces nothing it needs.
    unsafe {
        if pidfd != PIDFD && libc::dup2(pidfd, PIDFD) != PIDFD {
            libc::_exit(1);
        }
        let first = (PIDFD + 1) as libc::c_uint;
        if libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) != 0 {
            // Kernels before 5.9: one by one, up to the descriptor limit.
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            let top = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                lim.rlim_cur.min(1 << 20) as RawFd
            } else {
                1024
            };
            for fd in PIDFD + 1..top {
                libc::close(fd);
            }
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null < 0 {
            libc::_exit(1);
        }
        for fd in 0..3 {
            libc::dup2(null, fd);
        }
        libc::close(null);
    }
}

/// The hard RLIMIT_CPU, if any; the soft one is raised to it and SIGXCPU
/// (sent from the soft one on) ignored, so only the hard one counts.
fn cpu_limit() -> Option<Duration> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit on a struct owned here; signal() with a constant.
    unsafe {
        libc::signal(libc::SIGXCPU, libc::SIG_IGN);
        if libc::getrlimit(libc::RLIMIT_CPU, &mut lim) != 0 || lim.rlim_max == libc::RLIM_INFINITY {
            return None;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_CPU, &lim);
    }
    Some(Duration::from_secs(lim.rlim_max))
}

/// Past half of `limit`, carries on in a fresh child (CPU time is counted per
/// process) and ends this process.
fn renew(limit: Option<Duration>) {
    let Some(limit) = limit else { return };
    let mut used = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills one struct owned here.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut used) } != 0
        || Duration::new(used.tv_sec as u64, used.tv_nsec as u32) < limit / 2
    {
        return;
    }
    // SAFETY: single-threaded; the parent leaves at once.
    if let Ok(nix::unistd::ForkResult::Parent { .. }) = unsafe { nix::unistd::fork() } {
        // SAFETY: leave without running anything.
        unsafe { libc::_exit(0) }
    }
}

/// True once the caller has ended; false if the binding ended first.
fn wait(
    pidfd: BorrowedFd,
    name: &str,
    diskseq: u64,
    cpu_limit: Option<Duration>,
) -> nix::Result<bool> {
    loop {
        renew(cpu_limit);
        let mut fds = [libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one pollfd, owned here.
        match unsafe { libc::poll(fds.as_mut_ptr(), 1, CHECK_EVERY.as_millis() as libc::c_int) } {
            n if n > 0 => return Ok(true),
            0 if registry::bound_diskseq(name) != Some(diskseq) => return Ok(false),
            0 => {}
            _ => match Errno::last() {
                Errno::EINTR => {}
                e => return Err(e),
            },
        }
    }
}

/// The caller has ended: its binding, if still there, is detached.
fn finish(name: &str, diskseq: u64, uid: u32, pid: i32) -> i32 {
    let who = format!("uid {uid}'s caller (process {pid})");
    let dev = match loopdev::open_node_to_inspect(name) {
        Ok(d) => d,
        Err(e) => {
            log::warning(&format!(
                "{who} ended; {name} cannot be opened to check it: {e:#}"
            ));
            return 1;
        }
    };
    // Another binding, or none: what attach made is gone already.
    if loopdev::diskseq(dev.as_fd()).ok() != Some(diskseq) {
        return forget(name, diskseq);
    }
    let flags = match loopdev::flags(dev.as_fd()) {
        Ok(f) => f,
        Err(Errno::ENXIO) => return forget(name, diskseq),
        Err(e) => {
            log::warning(&format!(
                "{who} ended; the status of {name} cannot be read: {}",
                e.desc()
            ));
            return 1;
        }
    };
    if let Err(e) = loopdev::clear(dev.as_fd()) {
        log::warning(&format!(
            "{who} ended with {name} still attached, and it could not be detached: {e:#}"
        ));
        return 1;
    }
    // The last close detaches: this one, unless someone else still holds it.
    drop(dev);
    let why = if loopdev::autoclear(flags) {
        ""
    } else {
        " with autoclear cleared"
    };
    let now = if registry::bound_diskseq(name) == Some(diskseq) {
        "it detaches when the last descriptor of it closes"
    } else {
        "detached it"
    };
    log::info(&format!(
        "{who} ended with {name} still attached{why}: {now}"
    ));
    forget(name, diskseq)
}

fn forget(name: &str, diskseq: u64) -> i32 {
    match Registry::lock().and_then(|r| r.forget(name, diskseq)) {
        Ok(()) => 0,
        Err(e) => {
            log::warning(&format!(
                "the registry entry of {name} could not be removed: {e:#}"
            ));
            1
        }
    }
}
