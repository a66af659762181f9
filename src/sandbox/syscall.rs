//! The thin layer every mount-related kernel call goes through, so the mount
//! sequence can be unit-tested (recorded) without privileges, as youki does.

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use std::cell::RefCell;
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
}

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
}

/// Records calls instead of making them: what the unit tests observe.
#[derive(Default)]
pub struct Recorder {
    pub calls: RefCell<Vec<String>>,
}

impl Recorder {
    fn log(&self, s: String) -> Result<(), Errno> {
        self.calls.borrow_mut().push(s);
        Ok(())
    }
}

fn p(path: &Path) -> String {
    path.display().to_string()
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
        let src = src.map(p).unwrap_or_default();
        self.log(format!(
            "mount {src} {} {} {:?} {}",
            p(target),
            fstype.unwrap_or("-"),
            flags,
            data.unwrap_or("")
        ))
    }
    fn make_readonly(&self, target: &Path) -> Result<(), Errno> {
        self.log(format!("readonly {}", p(target)))
    }
    fn make_nosuid_nodev(&self, target: &Path) -> Result<(), Errno> {
        self.log(format!("nosuid,nodev {}", p(target)))
    }
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<(), Errno> {
        self.log(format!("pivot_root {} {}", p(new_root), p(put_old)))
    }
    fn umount_detach(&self, target: &Path) -> Result<(), Errno> {
        self.log(format!("umount {}", p(target)))
    }
    fn chdir(&self, dir: &Path) -> Result<(), Errno> {
        self.log(format!("chdir {}", p(dir)))
    }
    fn mkdir_p(&self, dir: &Path) -> Result<(), Errno> {
        self.log(format!("mkdir {}", p(dir)))
    }
    fn touch(&self, file: &Path) -> Result<(), Errno> {
        self.log(format!("touch {}", p(file)))
    }
    fn symlink(&self, target: &str, link: &Path) -> Result<(), Errno> {
        self.log(format!("symlink {target} {}", p(link)))
    }
    fn exists(&self, _path: &Path) -> bool {
        true
    }
}

pub fn join_inside(root: &Path, inside: &Path) -> PathBuf {
    root.join(inside.strip_prefix("/").unwrap_or(inside))
}
