//! Entering kiln's user namespace for a whole build.
//!
//!   kiln (host, unprivileged) ─clone(user, mount, pid, uts, ipc)─► init: PID 1 ─fork─► worker
//!
//! kiln writes the id maps for init, then waits. init forwards signals to the
//! worker and reaps orphans; when it exits the kernel kills whatever is left and
//! every mount made inside disappears with the namespace.

use super::idmap::IdMaps;
use super::signals;
use super::wait::{self, Reap};
use anyhow::{bail, Context, Result};
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult, Pid};
use std::os::fd::OwnedFd;

/// Runs `worker` as uid 0 of a fresh user namespace (and mount, PID, UTS and IPC
/// namespaces) and returns its exit code. Must be called while single-threaded.
pub fn enter(maps: &IdMaps, worker: impl FnOnce() -> i32) -> Result<i32> {
    let (go_rd, go_wr) = nix::unistd::pipe().context("pipe")?;
    let mut stack = vec![0u8; 256 * 1024];
    let flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    let mut worker = Some(worker);
    let go_rd_raw = std::os::fd::AsRawFd::as_raw_fd(&go_rd);
    let can_setgroups = maps.helpers || nix::unistd::getuid().is_root();
    // SAFETY: single-threaded; the child runs on its own stack and only uses its
    // copy of this process's memory.
    let child = unsafe {
        nix::sched::clone(
            Box::new(|| {
                let go = OwnedFd::from_raw_fd_checked(go_rd_raw);
                init(go, can_setgroups, worker.take())
            }),
            &mut stack,
            flags,
            Some(libc::SIGCHLD),
        )
    };
    let child = match child {
        Ok(pid) => pid,
        Err(nix::errno::Errno::EPERM) | Err(nix::errno::Errno::ENOSPC) | Err(nix::errno::Errno::EINVAL) => bail!(
            "the kernel refused to create a user namespace: check `sysctl kernel.unprivileged_userns_clone` \
             (Debian: must be 1) and `user.max_user_namespaces` (must be > 0); AppArmor's \
             `kernel.apparmor_restrict_unprivileged_userns=1` blocks it too"
        ),
        Err(e) => return Err(e).context("clone(user namespace)"),
    };
    drop(go_rd);
    if let Err(e) = maps.apply(child.as_raw()) {
        let _ = kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
        return Err(e);
    }
    nix::unistd::write(&go_wr, b"g").context("starting the namespace")?;
    drop(go_wr);
    Ok(wait_forwarding(child, Reap::Child))
}

trait FromRawChecked {
    fn from_raw_fd_checked(fd: i32) -> OwnedFd;
}

impl FromRawChecked for OwnedFd {
    fn from_raw_fd_checked(fd: i32) -> OwnedFd {
        // SAFETY: the fd was a valid pipe end in the parent and clone copied the table.
        unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
    }
}

/// Waits for `child`, passing on SIGINT/SIGTERM/SIGHUP we receive. With
/// `reap` All (PID 1 of the namespace) it also reaps orphans re-parented to us.
fn wait_forwarding(child: Pid, reap: Reap) -> i32 {
    let mut forwarded = 0;
    wait::until_exit(child, reap, &mut || {
        let sig = signals::received();
        if sig != 0 && sig != forwarded {
            if let Ok(s) = Signal::try_from(sig) {
                let _ = kill(child, s);
            }
            forwarded = sig;
        }
    })
}

fn init(go: OwnedFd, can_setgroups: bool, worker: Option<impl FnOnce() -> i32>) -> isize {
    let mut b = [0u8; 1];
    // EOF without a byte means kiln failed to write the maps: give up quietly.
    if !matches!(
        nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&go), &mut b),
        Ok(1)
    ) {
        return 1;
    }
    drop(go);
    if let Err(e) = become_root(can_setgroups) {
        eprintln!("kiln: {e:#}");
        return 125;
    }
    // If kiln itself dies (SIGKILL), still unwind through the worker's cleanup.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) };
    if let Err(e) = private_proc() {
        eprintln!("kiln: {e:#}");
        return 125;
    }
    let _ = nix::unistd::sethostname("kiln");
    signals::install();
    let Some(worker) = worker else { return 125 };
    // SAFETY: single-threaded.
    let worker_pid = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let code = worker();
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            eprintln!("kiln: fork: {e}");
            return 125;
        }
    };
    wait_forwarding(worker_pid, Reap::All) as isize
}

fn become_root(can_setgroups: bool) -> Result<()> {
    let root_g = nix::unistd::Gid::from_raw(0);
    let root_u = nix::unistd::Uid::from_raw(0);
    if can_setgroups {
        // Host supplementary groups would show up as `nogroup` inside.
        nix::unistd::setgroups(&[]).context("setgroups")?;
    }
    nix::unistd::setresgid(root_g, root_g, root_g).context("setresgid(0) in the namespace")?;
    nix::unistd::setresuid(root_u, root_u, root_u).context("setresuid(0) in the namespace")?;
    Ok(())
}

/// The build's own /proc: tools see only the build's processes, and nothing
/// mounted in here propagates to the host.
fn private_proc() -> Result<()> {
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making / private in kiln's mount namespace")?;
    nix::mount::mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .context("mounting kiln's /proc")?;
    Ok(())
}
