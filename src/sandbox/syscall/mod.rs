//! The thin layer every kernel call of the sandbox goes through (mounts, the
//! namespace's set-up, a job's stages up to `exec`), so each sequence can be
//! unit-tested, recorded with typed arguments, without privileges, as youki does.
//!
//! Three calls stay direct and are not here: `fork` and `clone` return twice (a
//! double could only play one side), and `execve` replaces the process (a double
//! that returns would have to invent what runs next). The sequences around them
//! are functions taking `&dyn Syscall`.

mod linux;
#[cfg(test)]
mod recording;

pub use linux::Linux;
#[cfg(test)]
pub use recording::{Call, Recorder};

use super::caps::{CapsError, CapsHashSet};
use super::seccomp::{Filter, SeccompError};
use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

pub trait Syscall {
    fn mount(
        &self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno>;
    /// Make a mount (and everything below it) read-only without touching its other,
    /// possibly locked, flags.
    fn make_readonly(&self, target: &Path) -> Result<(), Errno>;
    /// Likewise add nosuid and nodev: what a hook leaves in a bound host directory
    /// must not run setuid or open a device for whoever finds it there.
    fn make_nosuid_nodev(&self, target: &Path) -> Result<(), Errno>;
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<(), Errno>;
    fn umount_detach(&self, target: &Path) -> Result<(), Errno>;
    fn chdir(&self, dir: &Path) -> Result<(), Errno>;
    fn mkdir_p(&self, dir: &Path) -> Result<(), Errno>;
    /// An empty regular file to bind a device node onto.
    fn touch(&self, file: &Path) -> Result<(), Errno>;
    fn symlink(&self, target: &str, link: &Path) -> Result<(), Errno>;
    /// Kernels built without some procfs entries (no CONFIG_MAGIC_SYSRQ) lack them.
    fn exists(&self, path: &Path) -> bool;

    fn unshare(&self, flags: CloneFlags) -> Result<(), Errno>;
    fn sethostname(&self, name: &str) -> Result<(), Errno>;
    fn setgroups(&self, groups: &[Gid]) -> Result<(), Errno>;
    /// Real, effective and saved group id at once.
    fn setresgid(&self, gid: Gid) -> Result<(), Errno>;
    /// Real, effective and saved user id at once.
    fn setresuid(&self, uid: Uid) -> Result<(), Errno>;
    /// PR_SET_PDEATHSIG: `sig` arrives when the parent exits.
    fn set_parent_death_signal(&self, sig: Signal) -> Result<(), Errno>;
    /// PR_SET_NO_NEW_PRIVS: execve grants nothing (setuid bits, file capabilities).
    fn set_no_new_privs(&self) -> Result<(), Errno>;
    fn setsid(&self) -> Result<(), Errno>;
    /// /dev/null opened read-write, for a job's standard input.
    fn open_dev_null(&self) -> Result<RawFd, Errno>;
    fn dup2(&self, fd: RawFd, to: RawFd) -> Result<(), Errno>;
    /// Closes every descriptor from `first` up.
    fn close_range(&self, first: u32) -> Result<(), Errno>;
    /// Releases a descriptor; the descriptor is gone whatever close reports, so
    /// there is nothing to check.
    fn close(&self, fd: RawFd);
    /// Cuts the capability sets down to `keep` (see `caps::restrict`).
    fn restrict_capabilities(&self, keep: &CapsHashSet) -> Result<(), CapsError>;
    fn load_seccomp(&self, filter: &Filter) -> Result<(), SeccompError>;
    /// Loads a user-notification filter and returns its listener descriptor.
    fn load_notify_filter(
        &self,
        ctx: &libseccomp::ScmpFilterContext,
    ) -> Result<RawFd, libseccomp::error::SeccompError>;
    /// Sends descriptor `fd` over the unix socket `sock` (SCM_RIGHTS).
    fn send_fd(&self, sock: RawFd, fd: RawFd) -> Result<(), Errno>;
    /// Writes a kernel interface file at once (a child's uid_map, gid_map, setgroups).
    fn write_file(&self, path: &Path, contents: &str) -> Result<(), Errno>;
}

pub fn join_inside(root: &Path, inside: &Path) -> PathBuf {
    root.join(inside.strip_prefix("/").unwrap_or(inside))
}
