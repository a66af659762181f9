//! True ownership without subordinate ids (docs/architecture.md §4).
//!
//! With a single mapping only root exists in kiln's namespace: `chown _apt`
//! fails, and a tree built that way would hold only root's files. fakeroot's
//! model, done with seccomp user notification instead of `LD_PRELOAD` (so it
//! holds for static binaries and needs nothing inside the image):
//!
//! - chown, lchown, fchown, fchownat are answered by the job's PID 1. It
//!   performs the real call with root, the owner that exists, so the kernel
//!   clears setuid/setgid bits and file capabilities exactly as it would for
//!   the owner asked for, then records that owner on the inode
//!   (`tree::owners`);
//! - stat, lstat, fstat, newfstatat and statx of a file with a recorded owner
//!   are performed by PID 1 and answered with that owner: `stat` after `chown`
//!   shows the new owner;
//! - the setuid and getuid families work on credentials PID 1 keeps for each
//!   process (`ids`): apt's `_apt` sandbox, `su` and `runuser` change "user"
//!   and verify it, and carry on as real root.
//!
//! Every path is resolved as the job would resolve it: PID 1 takes the
//! caller's root and working directory (`/proc/PID/root`, `/proc/PID/cwd`,
//! `/proc/PID/fd/N`) for the one lookup, then returns to its own root. PID 1 is
//! root of the same namespace as the job, so this reaches nothing the job could
//! not reach itself.

mod ids;

use super::notify::{read_mem, read_path, write_mem, Answer};
use crate::sandbox::idmap::WANTED;
use crate::tree::owners::{self, Owner};
use ids::{Creds, Set};
use libseccomp::{ScmpAction, ScmpFilterContext, ScmpNotifReq, ScmpSyscall};
use nix::errno::Errno;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

const CHOWN: [&str; 4] = ["chown", "lchown", "fchown", "fchownat"];
const STAT: [&str; 5] = ["stat", "lstat", "fstat", "newfstatat", "statx"];
const IDS: [&str; 16] = [
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "setfsuid",
    "setfsgid",
    "setgroups",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "getresuid",
    "getresgid",
    "getgroups",
];

/// chown's "leave this id alone".
const UNCHANGED: u32 = u32::MAX;

pub fn add_rules(ctx: &mut ScmpFilterContext) -> Result<(), libseccomp::error::SeccompError> {
    for name in CHOWN.iter().chain(&STAT).chain(&IDS) {
        ctx.add_rule(ScmpAction::Notify, ScmpSyscall::from_name(name)?)?;
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Chown,
    Lchown,
    Fchown,
    Fchownat,
    Stat,
    Lstat,
    Fstat,
    Newfstatat,
    Statx,
    SetOne(Set),
    SetRe(Set),
    SetRes(Set),
    SetFs(Set),
    Setgroups,
    /// 0 real, 1 effective.
    Get(Set, usize),
    GetRes(Set),
    Getgroups,
}

/// PID 1's recording state for one job.
pub struct Recorder {
    own_root: OwnedFd,
    calls: Vec<(i32, Call)>,
    /// Owners that could not be recorded (symlinks, special files), said once each.
    unrecorded: usize,
    creds: ids::Table,
}

impl Recorder {
    pub fn new() -> Result<Recorder, Errno> {
        let own_root = open(c"/", libc::O_PATH | libc::O_DIRECTORY)?;
        let table = [
            ("chown", Call::Chown),
            ("lchown", Call::Lchown),
            ("fchown", Call::Fchown),
            ("fchownat", Call::Fchownat),
            ("stat", Call::Stat),
            ("lstat", Call::Lstat),
            ("fstat", Call::Fstat),
            ("newfstatat", Call::Newfstatat),
            ("statx", Call::Statx),
            ("setuid", Call::SetOne(Set::Uid)),
            ("setgid", Call::SetOne(Set::Gid)),
            ("setfsuid", Call::SetFs(Set::Uid)),
            ("setfsgid", Call::SetFs(Set::Gid)),
            ("setreuid", Call::SetRe(Set::Uid)),
            ("setregid", Call::SetRe(Set::Gid)),
            ("setresuid", Call::SetRes(Set::Uid)),
            ("setresgid", Call::SetRes(Set::Gid)),
            ("setgroups", Call::Setgroups),
            ("getuid", Call::Get(Set::Uid, 0)),
            ("geteuid", Call::Get(Set::Uid, 1)),
            ("getgid", Call::Get(Set::Gid, 0)),
            ("getegid", Call::Get(Set::Gid, 1)),
            ("getresuid", Call::GetRes(Set::Uid)),
            ("getresgid", Call::GetRes(Set::Gid)),
            ("getgroups", Call::Getgroups),
        ];
        let calls = table
            .iter()
            .filter_map(|&(n, c)| Some((i32::from(ScmpSyscall::from_name(n).ok()?), c)))
            .collect();
        Ok(Recorder {
            own_root,
            calls,
            unrecorded: 0,
            creds: ids::Table::default(),
        })
    }

    /// `None` when the call is not one of ours.
    pub fn decide(&mut self, req: &ScmpNotifReq, say: &dyn Fn(&str)) -> Option<Answer> {
        let nr = i32::from(req.data.syscall);
        let call = self.calls.iter().find(|(n, _)| *n == nr)?.1;
        let a = req.data.args;
        let pid = req.pid;
        let at = libc::AT_FDCWD as u64;
        let nofollow = libc::AT_SYMLINK_NOFOLLOW as u64;
        Some(match call {
            Call::Chown => self.chown(pid, Named::Path(at, a[0], 0), a[1], a[2], say),
            Call::Lchown => self.chown(pid, Named::Path(at, a[0], nofollow), a[1], a[2], say),
            Call::Fchown => self.chown(pid, Named::Fd(a[0]), a[1], a[2], say),
            Call::Fchownat => self.chown(pid, Named::Path(a[0], a[1], a[4]), a[2], a[3], say),
            Call::Stat => self.stat(pid, Named::Path(at, a[0], 0), Reply::Stat(a[1])),
            Call::Lstat => self.stat(pid, Named::Path(at, a[0], nofollow), Reply::Stat(a[1])),
            Call::Fstat => self.stat(pid, Named::Fd(a[0]), Reply::Stat(a[1])),
            Call::Newfstatat => self.stat(pid, Named::Path(a[0], a[1], a[3]), Reply::Stat(a[2])),
            Call::Statx => self.stat(
                pid,
                Named::Path(a[0], a[1], a[2]),
                Reply::Statx {
                    flags: a[2],
                    mask: a[3],
                    buf: a[4],
                },
            ),
            _ => self.ids(pid, call, a),
        })
    }

    /// The setuid and getuid families, on the caller's believed credentials.
    fn ids(&mut self, pid: u32, call: Call, a: [u64; 6]) -> Answer {
        let Some((tgid, mut c)) = self.creds.get(pid) else {
            return Answer::Error(Errno::ESRCH);
        };
        let id = |i: usize| a[i] as u32;
        let changed = match call {
            Call::SetOne(w) => ids::set_one(&mut c, w, id(0)),
            Call::SetRe(w) => ids::set_re(&mut c, w, id(0), id(1)),
            Call::SetRes(w) => ids::set_res(&mut c, w, [id(0), id(1), id(2)]),
            Call::SetFs(w) => {
                let old = ids::set_fs(&mut c, w, id(0));
                self.creds.put(tgid, c);
                return Answer::Value(i64::from(old));
            }
            Call::Setgroups => match read_groups(pid, a[0], a[1]) {
                Ok(g) => ids::set_groups(&mut c, g),
                Err(e) => Err(e),
            },
            Call::Get(w, i) => {
                let v = match w {
                    Set::Uid => c.uid[i],
                    Set::Gid => c.gid[i],
                };
                return Answer::Value(i64::from(v));
            }
            Call::GetRes(w) => {
                let v = match w {
                    Set::Uid => c.uid,
                    Set::Gid => c.gid,
                };
                for (k, addr) in a[..3].iter().enumerate() {
                    if let Err(e) = write_mem(pid, *addr, &v[k].to_ne_bytes()) {
                        return Answer::Error(e);
                    }
                }
                return Answer::Value(0);
            }
            Call::Getgroups => return getgroups(pid, &c, a[0], a[1]),
            _ => return Answer::Continue,
        };
        match changed {
            Ok(()) => {
                self.creds.put(tgid, c);
                Answer::Value(0)
            }
            Err(e) => Answer::Error(e),
        }
    }

    fn chown(&mut self, pid: u32, what: Named, uid: u64, gid: u64, say: &dyn Fn(&str)) -> Answer {
        let (uid, gid) = (uid as u32, gid as u32);
        if [uid, gid].iter().any(|&id| id != UNCHANGED && id >= WANTED) {
            // A range build could not map it either.
            return Answer::Error(Errno::EINVAL);
        }
        let fd = match self.resolve(pid, &what) {
            Ok(fd) => fd,
            Err(e) => return Answer::Error(e),
        };
        let st = match nix::sys::stat::fstat(fd.as_raw_fd()) {
            Ok(st) => st,
            Err(e) => return Answer::Error(e),
        };
        let holds = can_hold(st.st_mode);
        let current = if holds {
            match reopen(&fd).and_then(|f| owners::recorded(f.as_fd()).map_err(io_errno)) {
                Ok(o) => o.unwrap_or(Owner::ROOT),
                Err(e) => return Answer::Error(e),
            }
        } else {
            Owner::ROOT
        };
        let wanted = Owner {
            uid: if uid == UNCHANGED { current.uid } else { uid },
            gid: if gid == UNCHANGED { current.gid } else { gid },
        };
        // The real call, to the owner that exists: the kernel's side effects
        // (setuid/setgid bits, security.capability, ctime) are those of the
        // chown asked for.
        let real = |id: u32| if id == UNCHANGED { UNCHANGED } else { 0 };
        // SAFETY: fchownat on a descriptor we own, with an empty path.
        let r = unsafe {
            libc::fchownat(
                fd.as_raw_fd(),
                c"".as_ptr(),
                real(uid),
                real(gid),
                libc::AT_EMPTY_PATH,
            )
        };
        if r != 0 {
            return Answer::Error(Errno::last());
        }
        if holds {
            if let Err(e) =
                reopen(&fd).and_then(|f| owners::record(f.as_fd(), wanted).map_err(io_errno))
            {
                return Answer::Error(e);
            }
        } else if wanted != Owner::ROOT {
            self.unrecorded += 1;
            say(&format!(
                "kiln: {} stays owned by root: without subordinate ids only files and \
                 directories can record another owner ({} asked)",
                what.describe(pid),
                wanted.encode()
            ));
        }
        Answer::Value(0)
    }

    fn stat(&mut self, pid: u32, what: Named, reply: Reply) -> Answer {
        // Whatever goes wrong here, the kernel's own answer is the right one.
        let Ok(fd) = self.resolve(pid, &what) else {
            return Answer::Continue;
        };
        let Ok(mut st) = nix::sys::stat::fstat(fd.as_raw_fd()) else {
            return Answer::Continue;
        };
        if !can_hold(st.st_mode) {
            return Answer::Continue;
        }
        let owner = match reopen(&fd).map(|f| owners::recorded(f.as_fd())) {
            Ok(Ok(Some(o))) => o,
            _ => return Answer::Continue,
        };
        let written = match reply {
            Reply::Stat(buf) => {
                st.st_uid = owner.uid;
                st.st_gid = owner.gid;
                write_mem(pid, buf, as_bytes(&st))
            }
            Reply::Statx { flags, mask, buf } => {
                // SAFETY: statx fills the zeroed struct; an all-zero statx is valid.
                let mut sx: libc::statx = unsafe { std::mem::zeroed() };
                let sync = flags as i32 & libc::AT_STATX_SYNC_TYPE;
                // SAFETY: valid descriptor, empty path with AT_EMPTY_PATH, owned buffer.
                let r = unsafe {
                    libc::statx(
                        fd.as_raw_fd(),
                        c"".as_ptr(),
                        libc::AT_EMPTY_PATH | sync,
                        mask as u32,
                        &mut sx,
                    )
                };
                if r != 0 {
                    return Answer::Continue;
                }
                sx.stx_uid = owner.uid;
                sx.stx_gid = owner.gid;
                write_mem(pid, buf, as_bytes(&sx))
            }
        };
        match written {
            Ok(()) => Answer::Value(0),
            Err(e) => Answer::Error(e),
        }
    }

    /// An `O_PATH` descriptor of what the job named, looked up from the job's
    /// own root and working directory.
    fn resolve(&self, pid: u32, what: &Named) -> Result<OwnedFd, Errno> {
        let (dirfd, addr, flags) = match *what {
            Named::Fd(fd) => return proc_fd(pid, fd as i32),
            Named::Path(dirfd, addr, flags) => (dirfd as i32, addr, flags as i32),
        };
        let path = read_path(pid, addr).ok_or(Errno::EFAULT)?;
        if path.is_empty() {
            if flags & libc::AT_EMPTY_PATH == 0 {
                return Err(Errno::ENOENT);
            }
            return if dirfd == libc::AT_FDCWD {
                open_proc(pid, "cwd")
            } else {
                proc_fd(pid, dirfd)
            };
        }
        let path = CString::new(path).map_err(|_| Errno::EINVAL)?;
        let root = open_proc(pid, "root")?;
        let base = if path.as_bytes()[0] == b'/' {
            None
        } else if dirfd == libc::AT_FDCWD {
            Some(open_proc(pid, "cwd")?)
        } else {
            Some(proc_fd(pid, dirfd)?)
        };
        let nofollow = if flags & libc::AT_SYMLINK_NOFOLLOW != 0 {
            libc::O_NOFOLLOW
        } else {
            0
        };
        enter_root(&root)?;
        // SAFETY: plain openat with a NUL-terminated path.
        let fd = unsafe {
            libc::openat(
                base.as_ref().map_or(libc::AT_FDCWD, |b| b.as_raw_fd()),
                path.as_ptr(),
                libc::O_PATH | libc::O_CLOEXEC | nofollow,
            )
        };
        let err = Errno::last();
        if let Err(e) = enter_root(&self.own_root) {
            // Left in the job's root, PID 1 would resolve every later path wrongly.
            eprintln!("kiln: cannot return to the job's own root: {e}");
            std::process::abort();
        }
        if fd < 0 {
            return Err(err);
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// What a call names: a descriptor, or (dirfd, path address, AT_* flags).
enum Named {
    Fd(u64),
    Path(u64, u64, u64),
}

impl Named {
    fn describe(&self, pid: u32) -> String {
        match *self {
            Named::Fd(fd) => std::fs::read_link(format!("/proc/{pid}/fd/{}", fd as i32))
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| format!("descriptor {}", fd as i32)),
            Named::Path(_, addr, _) => read_path(pid, addr)
                .map(|p| String::from_utf8_lossy(&p).into_owned())
                .unwrap_or_else(|| "a file".into()),
        }
    }
}

enum Reply {
    /// struct stat at this address.
    Stat(u64),
    Statx {
        flags: u64,
        mask: u64,
        buf: u64,
    },
}

/// Only regular files and directories take `user.` attributes.
fn can_hold(mode: u32) -> bool {
    matches!(mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFDIR)
}

fn as_bytes<T>(v: &T) -> &[u8] {
    // SAFETY: plain-old-data kernel structs, read as bytes for the copy out.
    unsafe { std::slice::from_raw_parts((v as *const T).cast(), std::mem::size_of::<T>()) }
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn open(path: &std::ffi::CStr, flags: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: plain open of a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_proc(pid: u32, what: &str) -> Result<OwnedFd, Errno> {
    let p = CString::new(format!("/proc/{pid}/{what}")).map_err(|_| Errno::EINVAL)?;
    open(&p, libc::O_PATH)
}

fn proc_fd(pid: u32, fd: i32) -> Result<OwnedFd, Errno> {
    if fd < 0 {
        return Err(Errno::EBADF);
    }
    open_proc(pid, &format!("fd/{fd}")).map_err(
        |e| {
            if e == Errno::ENOENT {
                Errno::EBADF
            } else {
                e
            }
        },
    )
}

/// A readable descriptor of a regular file or directory held as `O_PATH`,
/// for its attributes (the *xattr calls refuse `O_PATH`).
fn reopen(fd: &OwnedFd) -> Result<OwnedFd, Errno> {
    let p = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|_| Errno::EINVAL)?;
    open(&p, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY)
}

fn enter_root(dir: &OwnedFd) -> Result<(), Errno> {
    nix::unistd::fchdir(dir.as_raw_fd())?;
    nix::unistd::chroot(".")
}

fn read_groups(pid: u32, count: u64, addr: u64) -> Result<Vec<u32>, Errno> {
    const NGROUPS_MAX: u64 = 65536;
    if count > NGROUPS_MAX {
        return Err(Errno::EINVAL);
    }
    let mut buf = vec![0u8; count as usize * 4];
    if count > 0 && read_mem(pid, addr, &mut buf) != Some(buf.len()) {
        return Err(Errno::EFAULT);
    }
    Ok(buf
        .chunks_exact(4)
        .map(|g| u32::from_ne_bytes([g[0], g[1], g[2], g[3]]))
        .collect())
}

/// getgroups(2): the count alone for size 0, EINVAL when the list does not fit.
fn getgroups(pid: u32, c: &Creds, size: u64, addr: u64) -> Answer {
    let n = c.groups.len();
    if size as i32 == 0 {
        return Answer::Value(n as i64);
    }
    if (size as i32) < 0 || (size as usize) < n {
        return Answer::Error(Errno::EINVAL);
    }
    let bytes: Vec<u8> = c.groups.iter().flat_map(|g| g.to_ne_bytes()).collect();
    match write_mem(pid, addr, &bytes) {
        Ok(()) => Answer::Value(n as i64),
        Err(e) => Answer::Error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_and_directories_hold_owners() {
        assert!(can_hold(libc::S_IFREG | 0o644));
        assert!(can_hold(libc::S_IFDIR | 0o755));
        assert!(!can_hold(libc::S_IFLNK | 0o777));
        assert!(!can_hold(libc::S_IFIFO | 0o644));
    }
}
