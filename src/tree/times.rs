//! Clamping the tree's times to SOURCE_DATE_EPOCH, for reproducible outputs:
//! files a build writes carry the wall clock, and every output format (tar,
//! ext4, FAT, squashfs, cpio) records the times it finds.

use super::ImageTree;
use anyhow::{Context, Result};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

impl ImageTree {
    /// Sets every entry's modification time to the earlier of its own and
    /// `epoch`, and its access time to the same (reads during the build moved
    /// it). Symlinks get their own times set, never their target's;
    /// directories are entered only as directories (`O_NOFOLLOW`), so nothing
    /// outside the tree is touched. Returns how many entries were clamped.
    pub fn clamp_times(&self, epoch: i64) -> Result<u64> {
        let root = self
            .resolve(
                std::path::Path::new(""),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                Mode::empty(),
            )
            .context("opening the image tree to clamp its times")?;
        let mut clamped = 0;
        let st = nix::sys::stat::fstat(root.as_raw_fd())?;
        let t = clamp(st.st_mtime, st.st_mtime_nsec, epoch, &mut clamped);
        walk(&root, epoch, &mut clamped, std::path::Path::new("/"))?;
        nix::sys::stat::futimens(root.as_raw_fd(), &t, &t)
            .context("setting the times of the image's /")?;
        Ok(clamped)
    }
}

fn clamp(sec: i64, nsec: i64, epoch: i64, clamped: &mut u64) -> TimeSpec {
    if sec >= epoch && !(sec == epoch && nsec == 0) {
        *clamped += 1;
        TimeSpec::new(epoch, 0)
    } else {
        TimeSpec::new(sec, nsec)
    }
}

fn walk(dir: &OwnedFd, epoch: i64, clamped: &mut u64, shown: &std::path::Path) -> Result<()> {
    let listing = nix::dir::Dir::from_fd(nix::unistd::dup(dir.as_raw_fd())?)
        .with_context(|| format!("reading the image's {}", shown.display()))?;
    let mut names = Vec::new();
    for e in listing {
        let e = e.with_context(|| format!("reading the image's {}", shown.display()))?;
        let name = OsStr::from_bytes(e.file_name().to_bytes()).to_os_string();
        if super::is_plain_name(&name) {
            names.push(name);
        }
    }
    for name in names {
        let path = shown.join(&name);
        let st = nix::sys::stat::fstatat(
            Some(dir.as_raw_fd()),
            name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .with_context(|| format!("stat of the image's {}", path.display()))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
            let fd = nix::fcntl::openat(
                Some(dir.as_raw_fd()),
                name.as_os_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .with_context(|| format!("opening the image's {}", path.display()))?;
            // SAFETY: a fresh descriptor that nothing else owns.
            let child = unsafe { OwnedFd::from_raw_fd(fd) };
            walk(&child, epoch, clamped, &path)?;
        }
        let t = clamp(st.st_mtime, st.st_mtime_nsec, epoch, clamped);
        nix::sys::stat::utimensat(
            Some(dir.as_raw_fd()),
            name.as_os_str(),
            &t,
            &t,
            UtimensatFlags::NoFollowSymlink,
        )
        .with_context(|| format!("setting the times of the image's {}", path.display()))?;
    }
    Ok(())
}
