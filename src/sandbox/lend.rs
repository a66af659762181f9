//! A real block device lent to a `block-device.d` hook (docs/architecture.md §6).
//!
//! The hook runs as root of kiln's user namespace, which does not own the host's
//! /dev/loopN nodes (host root's, mode 0600): its open(2) of them would fail, and
//! kiln never chowns a node (a node given to a user outlives the build). Instead,
//! a seccomp user-notification filter sends the hook's opens to its PID 1, which
//! answers an open of the lent disk or one of its partitions with a descriptor
//! kiln holds (SECCOMP_IOCTL_NOTIF_ADDFD) and lets every other open proceed
//! untouched. A partition-table re-read (BLKRRPART, BLKPG) on the disk becomes a
//! `kiln-helper rescan`. Nothing here grants more than the caller already holds:
//! the descriptors are the caller's own, and they die with the hook.

use super::notify::{read_path, read_u64, Answer};
use libseccomp::{
    ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpNotifReq, ScmpSyscall,
};
use nix::errno::Errno;
use nix::sys::stat::{fstat, SFlag};
use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

/// `_IO(0x12, 95)` and `_IO(0x12, 105)`.
const BLKRRPART: u64 = 0x125f;
const BLKPG: u64 = 0x1269;
/// The loop ioctls that rebind or reconfigure a device (linux/loop.h 0x4C00–0x4C0A,
/// minus the status reads): with a writable descriptor a hook could switch off
/// autoclear and keep the device after the build.
const LOOP_CHANGES: [u64; 9] = [
    0x4C00, 0x4C01, 0x4C02, 0x4C04, 0x4C06, 0x4C07, 0x4C08, 0x4C09, 0x4C0A,
];

/// What a hook borrows.
pub struct Lend<'a> {
    /// The whole disk, as kiln holds it.
    pub disk: BorrowedFd<'a>,
    /// Makes the kernel's partitions match the table on the disk and returns a
    /// fresh descriptor of each (number, fd); an error is a message for the hook.
    pub partitions: &'a dyn Fn() -> Result<Vec<(u32, OwnedFd)>, String>,
}

/// Diverts opens and partition-table ioctls to the supervisor; refuses the
/// loop reconfiguration ioctls outright.
pub fn add_rules(ctx: &mut ScmpFilterContext) -> Result<(), libseccomp::error::SeccompError> {
    for name in ["open", "openat", "openat2"] {
        ctx.add_rule(ScmpAction::Notify, ScmpSyscall::from_name(name)?)?;
    }
    let ioctl = ScmpSyscall::from_name("ioctl")?;
    for request in [BLKRRPART, BLKPG] {
        ctx.add_rule_conditional(
            ScmpAction::Notify,
            ioctl,
            &[ScmpArgCompare::new(
                1,
                ScmpCompareOp::MaskedEqual(0xffff_ffff),
                request,
            )],
        )?;
    }
    for request in LOOP_CHANGES {
        ctx.add_rule_conditional(
            ScmpAction::Errno(libc::EPERM),
            ioctl,
            &[ScmpArgCompare::new(
                1,
                ScmpCompareOp::MaskedEqual(0xffff_ffff),
                request,
            )],
        )?;
    }
    Ok(())
}

struct Calls {
    open: i32,
    openat: i32,
    openat2: i32,
    ioctl: i32,
}

/// The supervisor's lending state for one job.
pub struct Lending<'a> {
    lend: &'a Lend<'a>,
    calls: Calls,
    disk_rdev: u64,
}

impl<'a> Lending<'a> {
    pub fn new(lend: &'a Lend<'a>) -> Lending<'a> {
        let nr = |n: &str| ScmpSyscall::from_name(n).map(i32::from).unwrap_or(-1);
        Lending {
            lend,
            calls: Calls {
                open: nr("open"),
                openat: nr("openat"),
                openat2: nr("openat2"),
                ioctl: nr("ioctl"),
            },
            disk_rdev: fstat(lend.disk.as_raw_fd()).map(|s| s.st_rdev).unwrap_or(0),
        }
    }

    pub fn decide(&mut self, req: &ScmpNotifReq, say: &dyn Fn(&str)) -> Answer {
        decide(req, &self.calls, self.disk_rdev, self.lend, say)
    }
}

fn decide(
    req: &ScmpNotifReq,
    calls: &Calls,
    disk_rdev: u64,
    lend: &Lend,
    say: &dyn Fn(&str),
) -> Answer {
    let nr = i32::from(req.data.syscall);
    let a = req.data.args;
    let pid = req.pid;
    if nr == calls.ioctl {
        return table_reread(pid, a[0] as i32, disk_rdev, lend, say);
    }
    let (dirfd, path, flags) = if nr == calls.open {
        (libc::AT_FDCWD, a[0], a[1])
    } else if nr == calls.openat {
        (a[0] as i32, a[1], a[2])
    } else if nr == calls.openat2 {
        match read_u64(pid, a[2]) {
            Some(f) => (a[0] as i32, a[1], f),
            None => return Answer::Continue,
        }
    } else {
        return Answer::Continue;
    };
    let Some(path) = read_path(pid, path) else {
        return Answer::Continue;
    };
    let cloexec = flags & libc::O_CLOEXEC as u64 != 0;
    match target_of(
        pid,
        dirfd,
        &path,
        flags & libc::O_NOFOLLOW as u64 != 0,
        disk_rdev,
    ) {
        Target::Disk => match dup_at_start(lend.disk) {
            Ok(fd) => Answer::Fd { fd, cloexec },
            Err(e) => Answer::Error(e),
        },
        Target::Partition(want) => {
            let parts = match (lend.partitions)() {
                Ok(p) => p,
                Err(msg) => {
                    say(&format!("kiln: partitions of the lent device: {msg}"));
                    return Answer::Error(Errno::EIO);
                }
            };
            match parts.into_iter().find(|(number, _)| *number == want) {
                Some((_, fd)) => Answer::Fd { fd, cloexec },
                None => Answer::Continue,
            }
        }
        Target::Other => Answer::Continue,
    }
}

/// BLKRRPART/BLKPG on the lent disk: the kernel would refuse (no CAP_SYS_ADMIN
/// in the host's namespace), kiln-helper does it for the caller.
fn table_reread(pid: u32, fd: i32, disk_rdev: u64, lend: &Lend, say: &dyn Fn(&str)) -> Answer {
    let Ok(st) = nix::sys::stat::stat(format!("/proc/{pid}/fd/{fd}").as_str()) else {
        return Answer::Continue;
    };
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFBLK
        || st.st_rdev != disk_rdev
    {
        return Answer::Continue;
    }
    match (lend.partitions)() {
        Ok(_) => Answer::Value(0),
        Err(msg) => {
            say(&format!(
                "kiln: re-reading the partition table of the lent device: {msg}"
            ));
            Answer::Error(if msg.contains("in use") {
                Errno::EBUSY
            } else {
                Errno::EIO
            })
        }
    }
}

enum Target {
    Disk,
    /// By number: a rescan may give an unchanged partition a new minor.
    Partition(u32),
    Other,
}

/// What the hook's path names, resolved from the hook's own root and cwd.
fn target_of(pid: u32, dirfd: i32, path: &[u8], nofollow: bool, disk_rdev: u64) -> Target {
    let base = if path.first() == Some(&b'/') {
        format!("/proc/{pid}/root")
    } else if dirfd == libc::AT_FDCWD {
        format!("/proc/{pid}/cwd/")
    } else {
        format!("/proc/{pid}/fd/{dirfd}/")
    };
    let mut full = base.into_bytes();
    full.extend_from_slice(path);
    let Ok(c) = CString::new(full) else {
        return Target::Other;
    };
    let flags = libc::O_PATH | libc::O_CLOEXEC | if nofollow { libc::O_NOFOLLOW } else { 0 };
    // SAFETY: plain open of a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        // A partition a rescan has yet to create: name it like the kernel would.
        return match Errno::last() {
            Errno::ENOENT => partition_by_name(path, disk_rdev),
            _ => Target::Other,
        };
    }
    // SAFETY: fd was just opened and is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let Ok(st) = fstat(fd.as_raw_fd()) else {
        return Target::Other;
    };
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFBLK {
        return Target::Other;
    }
    if st.st_rdev == disk_rdev {
        return Target::Disk;
    }
    match partition_number(st.st_rdev, disk_rdev) {
        Some(k) => Target::Partition(k),
        None => Target::Other,
    }
}

/// sysfs puts a partition's directory inside its disk's, with its number.
fn partition_number(rdev: u64, disk_rdev: u64) -> Option<u32> {
    let dev = |r: u64| format!("/sys/dev/block/{}:{}", libc::major(r), libc::minor(r));
    let part = std::fs::canonicalize(dev(rdev)).ok()?;
    let disk = std::fs::canonicalize(dev(disk_rdev)).ok()?;
    if part.parent() != Some(disk.as_path()) {
        return None;
    }
    std::fs::read_to_string(part.join("partition"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `/dev/loopNpK` that does not exist yet.
fn partition_by_name(path: &[u8], disk_rdev: u64) -> Target {
    let Ok(disk) = std::fs::canonicalize(format!(
        "/sys/dev/block/{}:{}",
        libc::major(disk_rdev),
        libc::minor(disk_rdev)
    )) else {
        return Target::Other;
    };
    let Some(name) = disk.file_name() else {
        return Target::Other;
    };
    let mut prefix = b"/dev/".to_vec();
    prefix.extend_from_slice(name.as_bytes());
    prefix.push(b'p');
    match path
        .strip_prefix(prefix.as_slice())
        .and_then(|n| std::str::from_utf8(n).ok())
        .and_then(|n| n.parse::<u32>().ok())
    {
        Some(k) if k > 0 => Target::Partition(k),
        _ => Target::Other,
    }
}

/// Every open of the disk starts at offset 0, as a fresh open would (the
/// descriptors share one file position).
fn dup_at_start(disk: BorrowedFd) -> Result<OwnedFd, Errno> {
    let fd = disk
        .try_clone_to_owned()
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    nix::unistd::lseek(fd.as_raw_fd(), 0, nix::unistd::Whence::SeekSet)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_diverts_opens_and_table_rereads_only() {
        let d = super::super::notify::Duties {
            lend: None,
            owners: false,
        };
        let mut ctx = super::super::notify::filter(&d).unwrap();
        add_rules(&mut ctx).unwrap();
        let pfc = super::super::notify::tests::export_pfc(&ctx);
        // SECCOMP_RET_USER_NOTIF
        assert!(pfc.contains("action 0x7fc00000"), "{pfc}");
        for name in ["\"openat\"", "\"openat2\"", "\"open\"", "\"ioctl\""] {
            assert!(pfc.contains(name), "{name} missing:\n{pfc}");
        }
        for request in [BLKRRPART, BLKPG, 0x4C04] {
            assert!(
                pfc.contains(&format!("== {request}")),
                "ioctl {request:#x} missing:\n{pfc}"
            );
        }
        assert!(pfc.contains("action ERRNO(1)"), "{pfc}");
        assert!(
            pfc.contains("action ALLOW;\n# invalid architecture action\naction ALLOW;"),
            "{pfc}"
        );
    }

    #[test]
    fn only_the_disks_own_partition_names_count() {
        // /dev/null's rdev has no loop disk in sysfs: nothing matches.
        let null = nix::sys::stat::stat("/dev/null").unwrap().st_rdev;
        assert!(matches!(
            partition_by_name(b"/dev/loop0p1", null),
            Target::Other
        ));
    }
}
