//! What a container runtime's defaults block, found before the build starts by
//! trying it in throwaway namespaces (nothing is written anywhere; every mount
//! made dies with the probe's namespace), so the one setting and its fix are
//! named instead of a failed hook. Complements `userns_check`, which reads the
//! kernel's switches: here the switches allow it and something else refuses.

use super::idmap::IdMaps;
use super::syscall::{Linux, Syscall};
use super::wait::{self, Reap};
use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::unistd::Pid;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// The probe's exit codes.
const OK: i32 = 0;
const UNSHARE_REFUSED: i32 = 2;
const UNSHARE_FAILED: i32 = 3;
const PROC_REFUSED: i32 = 4;
const PROC_FAILED: i32 = 5;
const FORK_FAILED: i32 = 6;

/// Why kiln's namespaces cannot be set up here, with the runtime option that
/// unblocks it; None when a user namespace with its own /proc can be made.
pub fn blocker() -> Option<String> {
    match probe_namespaces() {
        OK | FORK_FAILED => None,
        UNSHARE_REFUSED | UNSHARE_FAILED if seccomp_filtered() => Some(
            "a seccomp filter on this process refuses to create a user namespace \
             (Seccomp: 2 in /proc/self/status; the kernel's own settings allow it). In a container \
             this is the runtime's seccomp profile: podman's default profile allows \
             unshare(CLONE_NEWUSER), docker's allows it only with CAP_SYS_ADMIN. Fix: run the \
             container with a profile that allows it, e.g. podman's: \
             --security-opt seccomp=/usr/share/containers/seccomp.json"
                .into(),
        ),
        UNSHARE_REFUSED | UNSHARE_FAILED => Some(
            "creating a user namespace is refused here although the kernel's settings allow it \
             (a security module or the container runtime). Fix: allow unshare(CLONE_NEWUSER) for \
             kiln"
                .into(),
        ),
        PROC_REFUSED => Some(proc_message(&covered_proc_paths())),
        code => Some(format!(
            "kiln could not mount a fresh /proc in a user namespace (probe exit {code})"
        )),
    }
}

fn proc_message(covered: &[String]) -> String {
    let shown = if covered.is_empty() {
        "paths of /proc are mounted over".to_string()
    } else {
        format!("mounted over: {}", covered.join(" "))
    };
    format!(
        "the kernel refuses kiln a fresh /proc: this /proc has paths covered by the container \
         runtime ({shown}), and a user namespace may mount procfs only where a procfs is \
         already fully visible. kiln does not hand its hooks this outer /proc instead: it shows \
         the container's processes, whose environment the hooks could read. Fix: run the \
         container with --security-opt unmask=/proc/* (podman), --security-opt \
         systempaths=unconfined (docker), or securityContext.procMount: Unmasked with \
         hostUsers: false (Kubernetes). kiln covers the same paths in every hook's /proc \
         itself (src/sandbox/mounts.rs)"
    )
}

/// Mount points below /proc in this mount namespace (the runtime's masked and
/// read-only paths).
fn covered_proc_paths() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    covered_in(&text)
}

fn covered_in(mountinfo: &str) -> Vec<String> {
    let mut v: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with("/proc/"))
        .map(str::to_string)
        .collect();
    v.sort();
    v.dedup();
    v
}

fn seccomp_filtered() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Seccomp:", "2"])
}

/// Forks a child that does what `namespace::enter` does first: a new user,
/// mount and PID namespace, and in it a fresh /proc. Returns its exit code.
fn probe_namespaces() -> i32 {
    // SAFETY: the child only makes raw system calls and exits with _exit.
    match unsafe { libc::fork() } {
        -1 => FORK_FAILED,
        0 => unsafe { libc::_exit(probe_child(&Linux)) },
        pid => wait_code(pid),
    }
}

/// The probe's own exit code; a signal or a failed wait counts as not knowing.
fn wait_code(pid: libc::pid_t) -> i32 {
    match wait::until_exit(Pid::from_raw(pid), Reap::Child, &mut || {}) {
        code @ 0..=127 => code,
        _ => FORK_FAILED,
    }
}

fn probe_child(sys: &dyn Syscall) -> i32 {
    let flags = CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID;
    match sys.unshare(flags) {
        Ok(()) => {}
        Err(Errno::EPERM | Errno::EACCES) => return UNSHARE_REFUSED,
        Err(_) => return UNSHARE_FAILED,
    }
    // procfs belongs to a PID namespace: mount it from its first process.
    // SAFETY: the child only makes system calls and exits with _exit.
    match unsafe { libc::fork() } {
        -1 => FORK_FAILED,
        0 => unsafe { libc::_exit(mount_fresh_proc(sys)) },
        pid => wait_code(pid),
    }
}

/// What `namespace::private_proc` does, with the refusal told apart.
fn mount_fresh_proc(sys: &dyn Syscall) -> i32 {
    let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
    if sys
        .mount(None, Path::new("/"), None, private, None)
        .is_err()
    {
        return PROC_FAILED;
    }
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc_ = Some(Path::new("proc"));
    match sys.mount(proc_, Path::new("/proc"), Some("proc"), flags, None) {
        Ok(()) => OK,
        Err(Errno::EPERM) => PROC_REFUSED,
        Err(_) => PROC_FAILED,
    }
}

/// When the caller has a subordinate range but newuidmap/newgidmap cannot map
/// it here, why, with the fix; kiln then builds with a single mapping.
pub fn subid_refusal(maps: &IdMaps) -> Option<String> {
    if !maps.helpers {
        return None;
    }
    let err = try_maps(maps).err()?;
    Some(format!(
        "your subordinate range cannot be mapped here, so kiln builds with a single mapping \
         and records owners instead of making them real: {err:#}.\n  In a container this is a setuid-root newuidmap \
         (Debian 12's): it opens the map as root, which then needs CAP_SYS_ADMIN over the new \
         namespace, and container runtimes withhold it. Fix (in the image, as root; \
         contrib/container/build-image does it): chmod u-s /usr/bin/newuidmap \
         /usr/bin/newgidmap && setcap cap_setuid=ep /usr/bin/newuidmap && setcap cap_setgid=ep \
         /usr/bin/newgidmap: they then run as you, the namespace's owner, with only \
         CAP_SETUID/CAP_SETGID, which runtimes grant by default"
    ))
}

/// Applies `maps` to a child that has made a user namespace and waits for it.
fn try_maps(maps: &IdMaps) -> anyhow::Result<()> {
    let (ready_rd, ready_wr) = nix::unistd::pipe()?;
    let (done_rd, done_wr) = nix::unistd::pipe()?;
    // SAFETY: the child only makes raw system calls and exits with _exit.
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        anyhow::bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        drop(ready_rd);
        drop(done_wr);
        unsafe { libc::_exit(hold_namespace(&Linux, &ready_wr, &done_rd)) }
    }
    drop(ready_wr);
    drop(done_rd);
    let mut b = [0u8; 1];
    let result = match nix::unistd::read(ready_rd.as_raw_fd(), &mut b) {
        Ok(1) => maps.apply(pid),
        _ => Err(anyhow::anyhow!(
            "the probe could not create a user namespace"
        )),
    };
    drop(done_wr);
    wait_code(pid);
    result
}

fn hold_namespace(sys: &dyn Syscall, ready: &OwnedFd, done: &OwnedFd) -> i32 {
    if sys.unshare(CloneFlags::CLONE_NEWUSER).is_err() {
        return 1;
    }
    let mut b = [0u8; 1];
    // SAFETY: plain reads and writes on this process's pipe ends.
    unsafe {
        libc::write(ready.as_raw_fd(), b"r".as_ptr().cast(), 1);
        // Until the parent has written the maps (EOF when it drops its end).
        libc::read(done.as_raw_fd(), b.as_mut_ptr().cast(), 1);
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::syscall::{Call, Recorder};

    #[test]
    fn covered_proc_paths_come_from_mountinfo() {
        let mi = "77 76 0:43 / /proc rw,nosuid - proc proc rw\n\
                  54 77 0:43 /sys /proc/sys ro,nosuid - proc proc rw\n\
                  56 77 0:44 /null /proc/keys rw,nosuid - tmpfs tmpfs rw\n\
                  79 76 0:22 / /sys ro - sysfs sysfs rw\n";
        assert_eq!(covered_in(mi), ["/proc/keys", "/proc/sys"]);
        let m = proc_message(&covered_in(mi));
        assert!(m.contains("/proc/keys /proc/sys"), "{m}");
        for fix in [
            "unmask=/proc/*",
            "systempaths=unconfined",
            "procMount: Unmasked",
        ] {
            assert!(m.contains(fix), "{m}");
        }
    }

    #[test]
    fn the_probe_mounts_the_proc_the_build_mounts_and_tells_refusal_apart() {
        let probe = Recorder::default();
        assert_eq!(mount_fresh_proc(&probe), OK);
        let build = Recorder::default();
        super::super::namespace::private_proc(&build).unwrap();
        assert_eq!(probe.calls(), build.calls());

        let is_proc = |c: &Call| matches!(c, Call::Mount { fstype: Some(f), .. } if f == "proc");
        let refused = Recorder::failing(is_proc, Errno::EPERM);
        assert_eq!(mount_fresh_proc(&refused), PROC_REFUSED);
        let failed = Recorder::failing(is_proc, Errno::ENODEV);
        assert_eq!(mount_fresh_proc(&failed), PROC_FAILED);
        let not_private = Recorder::failing(
            |c| matches!(c, Call::Mount { fstype: None, .. }),
            Errno::EPERM,
        );
        assert_eq!(mount_fresh_proc(&not_private), PROC_FAILED);
        assert_eq!(not_private.calls().len(), 1);
    }

    #[test]
    fn this_host_lets_kiln_make_its_namespaces() {
        // The development and CI host runs kiln unconfined: the probe must pass there,
        // or it would refuse every build.
        assert_eq!(probe_namespaces(), OK);
        assert_eq!(blocker(), None);
    }
}
