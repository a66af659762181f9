//! The test double: records each call with its typed arguments instead of
//! making it, and can make one kind of call fail, so tests see both the exact
//! sequence and that a failure stops it.

use super::Syscall;
use crate::sandbox::caps::{CapsError, CapsHashSet};
use crate::sandbox::seccomp::{Filter, SeccompError};
use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid};
use std::cell::RefCell;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Mount {
        src: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    MakeReadonly(PathBuf),
    MakeNosuidNodev(PathBuf),
    PivotRoot(PathBuf, PathBuf),
    UmountDetach(PathBuf),
    Chdir(PathBuf),
    MkdirP(PathBuf),
    Touch(PathBuf),
    Symlink(String, PathBuf),
    Unshare(CloneFlags),
    Sethostname(String),
    Setgroups(Vec<Gid>),
    Setresgid(Gid),
    Setresuid(Uid),
    ParentDeathSignal(Signal),
    NoNewPrivs,
    Setsid,
    OpenDevNull,
    Dup2(RawFd, RawFd),
    CloseRange(u32),
    Close(RawFd),
    RestrictCapabilities(CapsHashSet),
    LoadSeccomp,
    LoadNotifyFilter,
    SendFd(RawFd, RawFd),
    WriteFile(PathBuf, String),
}

/// What `open_dev_null` and `load_notify_filter` hand out.
pub(crate) const DEV_NULL_FD: RawFd = 40;
pub(crate) const LISTENER_FD: RawFd = 41;

/// Which calls a [`Recorder`] refuses.
type Which = fn(&Call) -> bool;

#[derive(Default)]
pub struct Recorder {
    pub calls: RefCell<Vec<Call>>,
    fail: Option<(Which, Errno)>,
}

impl Recorder {
    /// A recorder whose calls matching `which` fail with `errno` (after being recorded).
    pub fn failing(which: Which, errno: Errno) -> Recorder {
        Recorder {
            calls: RefCell::default(),
            fail: Some((which, errno)),
        }
    }

    fn log(&self, call: Call) -> Result<(), Errno> {
        let failed = match self.fail {
            Some((which, errno)) if which(&call) => Err(errno),
            _ => Ok(()),
        };
        self.calls.borrow_mut().push(call);
        failed
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }
}

impl Syscall for Recorder {
    fn mount(
        &self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        self.log(Call::Mount {
            src: src.map(Path::to_path_buf),
            target: target.to_path_buf(),
            fstype: fstype.map(str::to_string),
            flags,
            data: data.map(str::to_string),
        })
    }
    fn make_readonly(&self, target: &Path) -> Result<(), Errno> {
        self.log(Call::MakeReadonly(target.into()))
    }
    fn make_nosuid_nodev(&self, target: &Path) -> Result<(), Errno> {
        self.log(Call::MakeNosuidNodev(target.into()))
    }
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<(), Errno> {
        self.log(Call::PivotRoot(new_root.into(), put_old.into()))
    }
    fn umount_detach(&self, target: &Path) -> Result<(), Errno> {
        self.log(Call::UmountDetach(target.into()))
    }
    fn chdir(&self, dir: &Path) -> Result<(), Errno> {
        self.log(Call::Chdir(dir.into()))
    }
    fn mkdir_p(&self, dir: &Path) -> Result<(), Errno> {
        self.log(Call::MkdirP(dir.into()))
    }
    fn touch(&self, file: &Path) -> Result<(), Errno> {
        self.log(Call::Touch(file.into()))
    }
    fn symlink(&self, target: &str, link: &Path) -> Result<(), Errno> {
        self.log(Call::Symlink(target.into(), link.into()))
    }
    fn exists(&self, _path: &Path) -> bool {
        true
    }
    fn unshare(&self, flags: CloneFlags) -> Result<(), Errno> {
        self.log(Call::Unshare(flags))
    }
    fn sethostname(&self, name: &str) -> Result<(), Errno> {
        self.log(Call::Sethostname(name.into()))
    }
    fn setgroups(&self, groups: &[Gid]) -> Result<(), Errno> {
        self.log(Call::Setgroups(groups.to_vec()))
    }
    fn setresgid(&self, gid: Gid) -> Result<(), Errno> {
        self.log(Call::Setresgid(gid))
    }
    fn setresuid(&self, uid: Uid) -> Result<(), Errno> {
        self.log(Call::Setresuid(uid))
    }
    fn set_parent_death_signal(&self, sig: Signal) -> Result<(), Errno> {
        self.log(Call::ParentDeathSignal(sig))
    }
    fn set_no_new_privs(&self) -> Result<(), Errno> {
        self.log(Call::NoNewPrivs)
    }
    fn setsid(&self) -> Result<(), Errno> {
        self.log(Call::Setsid)
    }
    fn open_dev_null(&self) -> Result<RawFd, Errno> {
        self.log(Call::OpenDevNull).map(|()| DEV_NULL_FD)
    }
    fn dup2(&self, fd: RawFd, to: RawFd) -> Result<(), Errno> {
        self.log(Call::Dup2(fd, to))
    }
    fn close_range(&self, first: u32) -> Result<(), Errno> {
        self.log(Call::CloseRange(first))
    }
    fn close(&self, fd: RawFd) {
        let _ = self.log(Call::Close(fd));
    }
    fn restrict_capabilities(&self, keep: &CapsHashSet) -> Result<(), CapsError> {
        self.log(Call::RestrictCapabilities(keep.clone()))
            .map_err(|e| CapsError::from(e.desc()))
    }
    fn load_seccomp(&self, _filter: &Filter) -> Result<(), SeccompError> {
        // libseccomp's errors cannot be made from outside it: loading never fails here.
        let _ = self.log(Call::LoadSeccomp);
        Ok(())
    }
    fn load_notify_filter(
        &self,
        _ctx: &libseccomp::ScmpFilterContext,
    ) -> Result<RawFd, libseccomp::error::SeccompError> {
        let _ = self.log(Call::LoadNotifyFilter);
        Ok(LISTENER_FD)
    }
    fn send_fd(&self, sock: RawFd, fd: RawFd) -> Result<(), Errno> {
        self.log(Call::SendFd(sock, fd))
    }
    fn write_file(&self, path: &Path, contents: &str) -> Result<(), Errno> {
        self.log(Call::WriteFile(path.into(), contents.into()))
    }
}
