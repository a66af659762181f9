//! Entering kiln's user namespace for a whole build.
//!
//!   kiln (host, unprivileged) ─clone(user, mount, pid, uts, ipc)─► PID 1 ─fork─► worker
//!
//! kiln writes the id maps for PID 1 (`build_namespace_init`), then waits. PID 1
//! settles in (`settle_in`: root, private /proc), forwards signals to the worker
//! and reaps orphans; when it exits the kernel kills whatever is left and every
//! mount made inside disappears with the namespace.

use super::idmap::IdMaps;
use super::signals;
use super::syscall::{Linux, Syscall};
use super::wait::{self, Reap};
use anyhow::{bail, Context, Result};
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{fork, ForkResult, Gid, Pid, Uid};
use std::os::fd::OwnedFd;
use std::path::Path;

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
                build_namespace_init(go, can_setgroups, worker.take())
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
        // Only reaped: the maps' error is what the caller needs to see.
        wait::until_exit(child, Reap::Child, &mut || {});
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

/// PID 1 of the build's namespace: waits for its id maps, settles in, starts the
/// worker and reaps until the worker exits.
fn build_namespace_init(
    go: OwnedFd,
    can_setgroups: bool,
    worker: Option<impl FnOnce() -> i32>,
) -> isize {
    let mut b = [0u8; 1];
    // EOF without a byte means kiln failed to write the maps: give up quietly.
    if !matches!(
        nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&go), &mut b),
        Ok(1)
    ) {
        return 1;
    }
    drop(go);
    if let Err(e) = settle_in(&Linux, can_setgroups) {
        eprintln!("kiln: {e:#}");
        return 125;
    }
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

/// PID 1's set-up once its id maps are written: root's ids, death with kiln, a
/// /proc of its own; all before the worker is forked, which inherits the ids and
/// the mounts.
fn settle_in(sys: &dyn Syscall, can_setgroups: bool) -> Result<()> {
    become_root(sys, can_setgroups)?;
    // If kiln itself dies (SIGKILL), still unwind through the worker's cleanup.
    sys.set_parent_death_signal(Signal::SIGTERM)
        .context("prctl(PR_SET_PDEATHSIG) in the namespace")?;
    private_proc(sys)?;
    // Only what `hostname` prints inside: a build is not refused over it.
    let _ = sys.sethostname("kiln");
    Ok(())
}

/// Groups, then gid, then uid: the order in which each step keeps the rights it
/// needs (a uid change can take CAP_SETGID away), as every runtime does it.
fn become_root(sys: &dyn Syscall, can_setgroups: bool) -> Result<()> {
    if can_setgroups {
        // Host supplementary groups would show up as `nogroup` inside.
        sys.setgroups(&[]).context("setgroups")?;
    }
    sys.setresgid(Gid::from_raw(0))
        .context("setresgid(0) in the namespace")?;
    sys.setresuid(Uid::from_raw(0))
        .context("setresuid(0) in the namespace")?;
    Ok(())
}

/// The build's own /proc: tools see only the build's processes, and nothing
/// mounted in here propagates to the host.
pub(super) fn private_proc(sys: &dyn Syscall) -> Result<()> {
    sys.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )
    .context("making / private in kiln's mount namespace")?;
    sys.mount(
        Some(Path::new("proc")),
        Path::new("/proc"),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )
    .context("mounting kiln's /proc")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::syscall::{Call, Recorder};
    use nix::errno::Errno;

    fn proc_mounts() -> [Call; 2] {
        [
            Call::Mount {
                src: None,
                target: "/".into(),
                fstype: None,
                flags: MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                data: None,
            },
            Call::Mount {
                src: Some("proc".into()),
                target: "/proc".into(),
                fstype: Some("proc".into()),
                flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                data: None,
            },
        ]
    }

    #[test]
    fn pid_1_becomes_root_then_dies_with_kiln_then_mounts_its_proc() {
        let rec = Recorder::default();
        settle_in(&rec, true).unwrap();
        let [private, proc] = proc_mounts();
        assert_eq!(
            rec.calls(),
            [
                Call::Setgroups(vec![]),
                Call::Setresgid(Gid::from_raw(0)),
                Call::Setresuid(Uid::from_raw(0)),
                Call::ParentDeathSignal(Signal::SIGTERM),
                private,
                proc,
                Call::Sethostname("kiln".into()),
            ]
        );
    }

    #[test]
    fn without_setgroups_rights_the_groups_are_left_alone() {
        let rec = Recorder::default();
        settle_in(&rec, false).unwrap();
        let calls = rec.calls();
        assert!(!calls.iter().any(|c| matches!(c, Call::Setgroups(_))));
        assert_eq!(calls[0], Call::Setresgid(Gid::from_raw(0)));
        assert_eq!(calls[1], Call::Setresuid(Uid::from_raw(0)));
    }

    #[test]
    fn a_refused_id_change_is_reported_and_nothing_runs_after_it() {
        let rec = Recorder::failing(|c| matches!(c, Call::Setresgid(_)), Errno::EPERM);
        let err = settle_in(&rec, true).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!("setresgid(0) in the namespace: {}", Errno::EPERM)
        );
        assert_eq!(
            rec.calls(),
            [Call::Setgroups(vec![]), Call::Setresgid(Gid::from_raw(0))]
        );
    }

    #[test]
    fn a_refused_proc_is_reported_and_the_hostname_is_not_set() {
        let rec = Recorder::failing(
            |c| matches!(c, Call::Mount { fstype: Some(f), .. } if f == "proc"),
            Errno::EPERM,
        );
        let err = settle_in(&rec, true).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("mounting kiln's /proc: "),
            "{err:#}"
        );
        assert!(!rec
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Sethostname(_))));
    }

    #[test]
    fn a_refused_hostname_does_not_stop_the_build() {
        let rec = Recorder::failing(|c| matches!(c, Call::Sethostname(_)), Errno::EPERM);
        settle_in(&rec, true).unwrap();
    }
}
