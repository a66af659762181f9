//! The real kernel calls behind [`Syscall`].

use super::Syscall;
use crate::sandbox::caps::{self, CapsHashSet};
use crate::sandbox::seccomp::{Filter, SeccompError};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::unistd::{Gid, Uid};
use std::os::fd::RawFd;
use std::path::Path;

pub struct Linux;

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

// mount_setattr (Linux 5.12) changes only the bits asked for, recursively; a
// classic MS_REMOUNT would have to restate every locked flag of the host's mounts.
fn mount_setattr(target: &Path, attr_set: u64) -> Result<(), Errno> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let c =
        std::ffi::CString::new(target.as_os_str().as_encoded_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: the path is NUL-terminated and attr lives across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(rc).map(drop)
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> Result<(), Errno> {
    // SAFETY: both options used here take one integer argument.
    Errno::result(unsafe { libc::prctl(option, arg, 0, 0, 0) }).map(drop)
}

impl Syscall for Linux {
    fn mount(
        &self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        nix::mount::mount(src, target, fstype, flags, data)
    }

    fn make_readonly(&self, target: &Path) -> Result<(), Errno> {
        const MOUNT_ATTR_RDONLY: u64 = 1;
        mount_setattr(target, MOUNT_ATTR_RDONLY)
    }

    fn make_nosuid_nodev(&self, target: &Path) -> Result<(), Errno> {
        const MOUNT_ATTR_NOSUID: u64 = 2;
        const MOUNT_ATTR_NODEV: u64 = 4;
        mount_setattr(target, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<(), Errno> {
        nix::unistd::pivot_root(new_root, put_old)
    }

    fn umount_detach(&self, target: &Path) -> Result<(), Errno> {
        nix::mount::umount2(target, MntFlags::MNT_DETACH)
    }

    fn chdir(&self, dir: &Path) -> Result<(), Errno> {
        nix::unistd::chdir(dir)
    }

    fn mkdir_p(&self, dir: &Path) -> Result<(), Errno> {
        std::fs::create_dir_all(dir).map_err(io_errno)
    }

    fn touch(&self, file: &Path) -> Result<(), Errno> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .map(drop)
            .map_err(io_errno)
    }

    fn symlink(&self, target: &str, link: &Path) -> Result<(), Errno> {
        match std::os::unix::fs::symlink(target, link) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            r => r.map_err(io_errno),
        }
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn unshare(&self, flags: CloneFlags) -> Result<(), Errno> {
        nix::sched::unshare(flags)
    }

    fn sethostname(&self, name: &str) -> Result<(), Errno> {
        nix::unistd::sethostname(name)
    }

    fn setgroups(&self, groups: &[Gid]) -> Result<(), Errno> {
        nix::unistd::setgroups(groups)
    }

    fn setresgid(&self, gid: Gid) -> Result<(), Errno> {
        nix::unistd::setresgid(gid, gid, gid)
    }

    fn setresuid(&self, uid: Uid) -> Result<(), Errno> {
        nix::unistd::setresuid(uid, uid, uid)
    }

    fn set_parent_death_signal(&self, sig: Signal) -> Result<(), Errno> {
        prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong)
    }

    fn set_no_new_privs(&self) -> Result<(), Errno> {
        prctl(libc::PR_SET_NO_NEW_PRIVS, 1)
    }

    fn setsid(&self) -> Result<(), Errno> {
        nix::unistd::setsid().map(drop)
    }

    fn open_dev_null(&self) -> Result<RawFd, Errno> {
        // SAFETY: a constant NUL-terminated path.
        Errno::result(unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) })
    }

    fn dup2(&self, fd: RawFd, to: RawFd) -> Result<(), Errno> {
        // SAFETY: dup2 on descriptor numbers; the callers own both.
        Errno::result(unsafe { libc::dup2(fd, to) }).map(drop)
    }

    fn close_range(&self, first: u32) -> Result<(), Errno> {
        // SAFETY: close_range on this process's own table.
        Errno::result(unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) })
            .map(drop)
    }

    fn close(&self, fd: RawFd) {
        // SAFETY: the caller gives up `fd` here.
        unsafe { libc::close(fd) };
    }

    fn restrict_capabilities(&self, keep: &CapsHashSet) -> Result<(), caps::CapsError> {
        caps::restrict(keep)
    }

    fn load_seccomp(&self, filter: &Filter) -> Result<(), SeccompError> {
        filter.load()
    }

    fn load_notify_filter(
        &self,
        ctx: &libseccomp::ScmpFilterContext,
    ) -> Result<RawFd, libseccomp::error::SeccompError> {
        ctx.load()?;
        ctx.get_notify_fd()
    }

    fn send_fd(&self, sock: RawFd, fd: RawFd) -> Result<(), Errno> {
        let fds = [fd];
        let iov = [std::io::IoSlice::new(b"l")];
        sendmsg::<()>(
            sock,
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .map(drop)
    }

    fn write_file(&self, path: &Path, contents: &str) -> Result<(), Errno> {
        std::fs::write(path, contents).map_err(io_errno)
    }
}
