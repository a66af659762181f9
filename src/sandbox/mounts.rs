//! The mount sequence of one sandboxed process, top to bottom in the order it
//! happens (bubblewrap's shape). Runs in a fresh mount namespace, as PID 1 of a
//! fresh PID namespace, so everything here vanishes when that process exits.

use super::syscall::{join_inside, Linux, Syscall};
use nix::errno::Errno;
use nix::mount::MsFlags;
use std::fmt;
use std::path::{Path, PathBuf};

/// A host path made visible at `inside` (an absolute path in the sandbox's view).
#[derive(Clone, Debug)]
pub struct Bind {
    pub src: PathBuf,
    pub inside: PathBuf,
    pub writable: bool,
}

/// What the process sees as `/`.
#[derive(Clone, Debug)]
pub enum View {
    /// The host's filesystem, through kiln's user namespace (host-side phases).
    Host,
    /// The image root, made `/` by pivot_root (inside phases).
    Image(PathBuf),
}

/// Which mount step failed: set-up errors are typed so callers can tell the user
/// which part of the sandbox the kernel refused.
#[derive(Debug)]
pub struct MountError {
    pub step: String,
    pub errno: Errno,
}

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sandbox set-up failed at `{}`: {}",
            self.step,
            self.errno.desc()
        )
    }
}

impl std::error::Error for MountError {}

trait Step<T> {
    fn step(self, what: impl FnOnce() -> String) -> Result<T, MountError>;
}

impl<T> Step<T> for Result<T, Errno> {
    fn step(self, what: impl FnOnce() -> String) -> Result<T, MountError> {
        self.map_err(|errno| MountError {
            step: what(),
            errno,
        })
    }
}

/// Device nodes a package manager needs; nothing else of the host's /dev.
pub const DEV_NODES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
/// procfs entries that would let a process poke the host kernel.
const PROC_READONLY: [&str; 4] = ["sysrq-trigger", "irq", "bus", "sys"];
/// procfs files that tell about the host, not the hook: the user's key
/// descriptions, other processes' timers and scheduling, kernel memory. Covered
/// by /dev/null, as container runtimes mask them.
const PROC_MASKED: [&str; 6] = [
    "keys",
    "key-users",
    "timer_list",
    "sched_debug",
    "kcore",
    "latency_stats",
];

pub fn set_up(sys: &dyn Syscall, view: &View, binds: &[Bind]) -> Result<(), MountError> {
    // Nothing we mount may propagate back to the host's namespace.
    sys.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )
    .step(|| "make / private".into())?;
    match view {
        View::Host => {
            // A procfs of this PID namespace: `ps` shows only the hook's processes.
            mount_proc(sys, Path::new("/proc"))?;
            for b in binds {
                bind(sys, &b.src, &b.inside, b.writable)?;
            }
            Ok(())
        }
        View::Image(root) => {
            sys.mount(
                Some(root),
                root,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )
            .step(|| format!("bind the image root {} onto itself", root.display()))?;
            // An earlier hook may have made any of these a symlink; kiln's mkdir and
            // mount would follow it to a host path (see crate::tree).
            for dir in ["proc", "sys", "dev"] {
                refuse_symlinks(root, &root.join(dir))?;
            }
            mount_proc(sys, &root.join("proc"))?;
            let sys_dir = root.join("sys");
            sys.mkdir_p(&sys_dir).step(|| "mkdir /sys".into())?;
            // A fresh sysfs needs a network namespace of our own; the host's, read-only, serves.
            sys.mount(
                Some(Path::new("/sys")),
                &sys_dir,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )
            .step(|| "bind /sys".into())?;
            sys.make_readonly(&sys_dir)
                .step(|| "make /sys read-only".into())?;
            mount_dev(sys, &root.join("dev"))?;
            for b in binds {
                let target = join_inside(root, &b.inside);
                refuse_symlinks(root, &target)?;
                bind(sys, &b.src, &target, b.writable)?;
            }
            // pivot_root(".", ".") stacks the old root on the new one; detaching it
            // leaves no path back to the host's tree.
            sys.chdir(root)
                .step(|| format!("chdir {}", root.display()))?;
            sys.pivot_root(Path::new("."), Path::new("."))
                .step(|| "pivot_root".into())?;
            sys.umount_detach(Path::new("."))
                .step(|| "detach the old root".into())?;
            sys.chdir(Path::new("/")).step(|| "chdir /".into())
        }
    }
}

fn mount_proc(sys: &dyn Syscall, dir: &Path) -> Result<(), MountError> {
    sys.mkdir_p(dir)
        .step(|| format!("mkdir {}", dir.display()))?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    sys.mount(Some(Path::new("proc")), dir, Some("proc"), flags, None)
        .step(|| format!("mount proc on {}", dir.display()))?;
    for entry in PROC_READONLY {
        let p = dir.join(entry);
        if !sys.exists(&p) {
            continue;
        }
        sys.mount(Some(&p), &p, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)
            .step(|| format!("bind {}", p.display()))?;
        sys.make_readonly(&p)
            .step(|| format!("make {} read-only", p.display()))?;
    }
    for entry in PROC_MASKED {
        let p = dir.join(entry);
        if !sys.exists(&p) {
            continue;
        }
        sys.mount(
            Some(Path::new("/dev/null")),
            &p,
            None,
            MsFlags::MS_BIND,
            None,
        )
        .step(|| format!("mask {}", p.display()))?;
    }
    Ok(())
}

fn mount_dev(sys: &dyn Syscall, dev: &Path) -> Result<(), MountError> {
    sys.mkdir_p(dev).step(|| "mkdir /dev".into())?;
    sys.mount(
        Some(Path::new("tmpfs")),
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=0755,size=1m"),
    )
    .step(|| "mount tmpfs on /dev".into())?;
    for node in DEV_NODES {
        let target = dev.join(node);
        sys.touch(&target).step(|| format!("create /dev/{node}"))?;
        let host = Path::new("/dev").join(node);
        sys.mount(Some(&host), &target, None, MsFlags::MS_BIND, None)
            .step(|| format!("bind /dev/{node}"))?;
    }
    let pts = dev.join("pts");
    sys.mkdir_p(&pts).step(|| "mkdir /dev/pts".into())?;
    // A private devpts instance: the hook's ptys are not the host's.
    sys.mount(
        Some(Path::new("devpts")),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .step(|| "mount devpts".into())?;
    sys.symlink("pts/ptmx", &dev.join("ptmx"))
        .step(|| "link /dev/ptmx".into())?;
    let shm = dev.join("shm");
    sys.mkdir_p(&shm).step(|| "mkdir /dev/shm".into())?;
    sys.mount(
        Some(Path::new("tmpfs")),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
    .step(|| "mount /dev/shm".into())?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        sys.symlink(target, &dev.join(link))
            .step(|| format!("link /dev/{link}"))?;
    }
    Ok(())
}

/// A tmpfs for the build's tree (diskimage-builder builds in memory too): it
/// lives in the build's mount namespace and vanishes with it.
pub fn tree_tmpfs(dir: &Path) -> Result<(), MountError> {
    Linux
        .mount(
            Some(Path::new("tmpfs")),
            dir,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=0755"),
        )
        .step(|| format!("mount a tmpfs on {}", dir.display()))
}

/// `src` seen at `target` too, in the calling mount namespace only.
pub fn bind_over(src: &Path, target: &Path) -> Result<(), MountError> {
    Linux
        .mount(Some(src), target, None, MsFlags::MS_BIND, None)
        .step(|| format!("bind {} onto {}", src.display(), target.display()))
}

/// Lets go of a mount made by `tree_tmpfs` or `bind_over`, so its directory can
/// be removed. Best effort: the directory may hold no mount (a build on disk),
/// and any mount there dies with the build's namespace anyway.
pub fn release(dir: &Path) {
    let _ = Linux.umount_detach(dir);
}

/// A hook of an earlier phase could plant a symlink where a later mount lands
/// (say /tmp -> /home): the mount would then cover a host path, and the mkdir
/// before it create one. Refuse it. Nothing of the build runs while a sandbox
/// is set up, so the check is not raced.
fn refuse_symlinks(root: &Path, target: &Path) -> Result<(), MountError> {
    let Ok(rel) = target.strip_prefix(root) else {
        return Ok(());
    };
    let mut p = root.to_path_buf();
    for c in rel.components() {
        p.push(c);
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(MountError {
                step: format!(
                    "bind onto {}: it is a symlink inside the image",
                    p.display()
                ),
                errno: Errno::ELOOP,
            });
        }
    }
    Ok(())
}

fn bind(sys: &dyn Syscall, src: &Path, target: &Path, writable: bool) -> Result<(), MountError> {
    if src.is_dir() {
        sys.mkdir_p(target)
            .step(|| format!("mkdir {}", target.display()))?;
    } else {
        if let Some(parent) = target.parent() {
            sys.mkdir_p(parent)
                .step(|| format!("mkdir {}", parent.display()))?;
        }
        sys.touch(target)
            .step(|| format!("create {}", target.display()))?;
    }
    sys.mount(
        Some(src),
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .step(|| format!("bind {} to {}", src.display(), target.display()))?;
    // The package cache outlives the build: a setuid file a hook leaves there must
    // not work for anyone who later finds it through this or any bind.
    sys.make_nosuid_nodev(target)
        .step(|| format!("make {} nosuid,nodev", target.display()))?;
    if !writable {
        sys.make_readonly(target)
            .step(|| format!("make {} read-only", target.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::syscall::{Call, Recorder};

    fn mount_of(c: &Call) -> Option<(Option<&Path>, &Path, Option<&str>, MsFlags)> {
        match c {
            Call::Mount {
                src,
                target,
                fstype,
                flags,
                ..
            } => Some((src.as_deref(), target, fstype.as_deref(), *flags)),
            _ => None,
        }
    }

    #[test]
    fn image_view_pivots_after_every_mount_and_detaches_the_old_root() {
        let rec = Recorder::default();
        let binds = [Bind {
            src: "/nonexistent/hooks".into(),
            inside: "/tmp/in_target.d".into(),
            writable: false,
        }];
        set_up(&rec, &View::Image("/b/root".into()), &binds).unwrap();
        let calls = rec.calls();
        assert_eq!(
            mount_of(&calls[0]),
            Some((
                None,
                Path::new("/"),
                None,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE
            ))
        );
        let pivot = calls
            .iter()
            .position(|c| matches!(c, Call::PivotRoot(..)))
            .unwrap();
        assert_eq!(calls[pivot], Call::PivotRoot(".".into(), ".".into()));
        let before = &calls[..pivot];
        let has = |want: Call| before.contains(&want);
        let mounted = |target: &str| {
            before
                .iter()
                .filter_map(mount_of)
                .any(|(_, t, _, _)| t == Path::new(target))
        };
        assert!(before.iter().filter_map(mount_of).any(|m| m
            == (
                Some(Path::new("proc")),
                Path::new("/b/root/proc"),
                Some("proc"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
            )));
        assert!(has(Call::MakeReadonly("/b/root/sys".into())));
        assert!(has(Call::MakeReadonly("/b/root/proc/sysrq-trigger".into())));
        assert!(before
            .iter()
            .filter_map(mount_of)
            .any(|(src, t, _, _)| src == Some(Path::new("/dev/null"))
                && t == Path::new("/b/root/proc/keys")));
        assert!(mounted("/b/root/tmp/in_target.d"));
        assert!(has(Call::MakeReadonly("/b/root/tmp/in_target.d".into())));
        assert!(has(Call::MakeNosuidNodev("/b/root/tmp/in_target.d".into())));
        assert_eq!(calls[pivot + 1], Call::UmountDetach(".".into()));
        assert_eq!(calls[pivot + 2], Call::Chdir("/".into()));
        let binds_from_dev: Vec<_> = calls
            .iter()
            .filter_map(mount_of)
            .filter_map(|(src, t, _, _)| Some((src?, t)))
            .filter(|(src, t)| src.starts_with("/dev") && !t.starts_with("/b/root/proc"))
            .collect();
        assert_eq!(binds_from_dev.len(), DEV_NODES.len());
        assert!(binds_from_dev
            .iter()
            .all(|(src, _)| DEV_NODES.iter().any(|n| *src == Path::new("/dev").join(n))));
    }

    #[test]
    fn host_view_mounts_a_fresh_proc_and_never_pivots() {
        let rec = Recorder::default();
        set_up(&rec, &View::Host, &[]).unwrap();
        let calls = rec.calls();
        assert!(calls
            .iter()
            .filter_map(mount_of)
            .any(|(src, t, fs, _)| src == Some(Path::new("proc"))
                && t == Path::new("/proc")
                && fs == Some("proc")));
        assert!(!calls.iter().any(|c| matches!(c, Call::PivotRoot(..))));
    }

    #[test]
    fn a_refused_mount_names_its_step_and_stops_the_sequence() {
        let rec = Recorder::failing(|c| matches!(c, Call::MakeReadonly(_)), Errno::EPERM);
        let err = set_up(&rec, &View::Image("/b/root".into()), &[]).unwrap_err();
        assert_eq!(err.errno, Errno::EPERM);
        assert!(err.step.contains("read-only"), "{}", err.step);
        assert!(matches!(rec.calls().last(), Some(Call::MakeReadonly(_))));
        assert!(!rec.calls().iter().any(|c| matches!(c, Call::PivotRoot(..))));
    }
}
