//! The image tree, as kiln's own host-side code may touch it.
//!
//! # The rule
//!
//! Hooks and packages' maintainer scripts write the tree, so **everything in it is
//! untrusted**: any path may be a symlink to the user's home, a FIFO, a device node
//! or a hard link. kiln's host-side code — which runs with the user's authority over
//! the host — opens, reads, writes, copies and removes paths inside the tree only
//! through [`ImageTree`]:
//!
//! - every path is resolved by `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`
//!   relative to a descriptor of the tree's root: an absolute symlink means the
//!   image's own `/`, and `..` stops at the root, exactly as the booted image will
//!   see it. Nothing resolves to a host path.
//! - writes replace (a new file renamed over the old name): a planted symlink or a
//!   hard link to a host file is replaced, never written through.
//! - removals and renames work on the last component itself (`unlinkat`,
//!   `renameat` in the resolved parent): a symlink is removed, not its target.
//! - reads accept regular files only, opened non-blocking (a FIFO cannot hang kiln);
//!   files copied out singly (kernel, initrd) must have one link.
//! - external tools are handed a tree path only when they do not follow symlinks
//!   (`tar` without `-h`, `mke2fs -d`, `mksquashfs`), and only a directory that
//!   [`ImageTree::host_dir`] resolved inside the tree. Tools that do follow links
//!   (`mcopy -s`, `grub-mkimage -d`) get a copy made by [`ImageTree::stage`].
//!
//! No process of the build runs while kiln's host side works on the tree (each
//! hook's PID namespace dies with it), so a check is not raced by a hook.
//!
//! A plain `std::fs` call on `root.join(..)` after the first hook ran is a bug.

pub mod owners;
mod stage;
mod times;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// The image tree rooted at a directory kiln created.
pub struct ImageTree {
    root: OwnedFd,
    path: PathBuf,
}

/// What a name in the tree is, without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// FIFO, socket or device node.
    Special,
}

impl ImageTree {
    /// `path` is kiln's own directory (the build's `root`), never a path from the image.
    pub fn open(path: &Path) -> Result<ImageTree> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening the image tree {}", path.display()))?;
        // SAFETY: a fresh descriptor that nothing else owns.
        let root = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = fd_path(&root)
            .with_context(|| format!("resolving the image tree {}", path.display()))?;
        Ok(ImageTree { root, path })
    }

    /// The tree's own directory, for tools that never follow symlinks.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// openat2 inside the tree: symlinks followed as the image would follow them.
    fn resolve(&self, rel: &Path, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .mode(mode)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let rel = relative(rel);
        let fd = nix::fcntl::openat2(
            self.root.as_raw_fd(),
            if rel.as_os_str().is_empty() {
                Path::new(".")
            } else {
                rel
            },
            how,
        )?;
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// The directory holding `rel`'s last component (resolved inside the tree), and
    /// that component, which is never followed.
    fn parent(&self, rel: &Path) -> Result<(OwnedFd, OsString)> {
        let rel = relative(rel);
        let name = match rel.components().next_back() {
            Some(Component::Normal(n)) => n.to_os_string(),
            _ => bail!("{}: not a name inside the image", show(rel)),
        };
        let parent = rel.parent().unwrap_or(Path::new(""));
        let fd = self
            .resolve(parent, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())
            .map_err(|e| errno_error(e, &format!("the image's {}", show(parent))))?;
        Ok((fd, name))
    }

    /// What `rel` is, its last component not followed; `None` when absent.
    pub fn kind(&self, rel: &Path) -> Option<Kind> {
        let (dir, name) = self.parent(rel).ok()?;
        let st = nix::sys::stat::fstatat(
            Some(dir.as_raw_fd()),
            name.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .ok()?;
        Some(kind_of(&st))
    }

    /// Whether `rel` resolves (inside the tree) to a directory.
    pub fn is_dir(&self, rel: &Path) -> bool {
        self.resolve(rel, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())
            .is_ok()
    }

    /// Whether `rel` resolves (inside the tree) to a regular file.
    pub fn is_file(&self, rel: &Path) -> bool {
        self.resolve(rel, OFlag::O_PATH, Mode::empty())
            .ok()
            .and_then(|fd| nix::sys::stat::fstat(fd.as_raw_fd()).ok())
            .is_some_and(|st| kind_of(&st) == Kind::File)
    }

    /// Whether directory `rel` (resolved inside the tree) has no entries.
    pub fn is_empty_dir(&self, rel: &Path) -> Result<bool> {
        let fd = self
            .resolve(rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
            .map_err(|e| errno_error(e, &format!("the image's {}", show(rel))))?;
        let dir = nix::dir::Dir::from_fd(std::os::fd::IntoRawFd::into_raw_fd(fd))?;
        for e in dir {
            let e = e?;
            if !matches!(e.file_name().to_bytes(), b"." | b"..") {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The names in directory `rel` (resolved inside the tree), sorted; not `.`, `..`.
    pub fn list(&self, rel: &Path) -> Result<Vec<OsString>> {
        let fd = self
            .resolve(rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
            .map_err(|e| errno_error(e, &format!("the image's {}", show(rel))))?;
        let dir = nix::dir::Dir::from_fd(std::os::fd::IntoRawFd::into_raw_fd(fd))?;
        let mut names = Vec::new();
        for e in dir {
            let name = OsStr::from_bytes(e?.file_name().to_bytes()).to_os_string();
            if is_plain_name(&name) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Opens a regular file for reading, following links inside the tree only.
    /// Non-blocking open: a FIFO is refused, not waited on.
    pub fn open_file(&self, rel: &Path) -> Result<(File, FileStat)> {
        let fd = self
            .resolve(
                rel,
                OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
                Mode::empty(),
            )
            .map_err(|e| errno_error(e, &format!("the image's {}", show(rel))))?;
        let st = nix::sys::stat::fstat(fd.as_raw_fd())
            .with_context(|| format!("stat of the image's {}", show(rel)))?;
        if kind_of(&st) != Kind::File {
            bail!("the image's {} is not a regular file ({}); kiln reads only regular files from the image", show(rel), describe(&st));
        }
        nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()),
        )?;
        Ok((File::from(fd), st))
    }

    pub fn read(&self, rel: &Path) -> Result<Vec<u8>> {
        self.read_at_most(rel, u64::MAX)
    }

    /// A regular file's bytes, refused when it holds more than `limit`: a hook
    /// can make any file as large as the disk allows.
    pub fn read_at_most(&self, rel: &Path, limit: u64) -> Result<Vec<u8>> {
        let (f, st) = self.open_file(rel)?;
        if st.st_size as u64 > limit {
            bail!(
                "the image's {} is {} bytes, more than kiln reads from it ({limit})",
                show(rel),
                st.st_size
            );
        }
        let mut buf = Vec::with_capacity(st.st_size.max(0) as usize);
        f.take(limit.saturating_add(1))
            .read_to_end(&mut buf)
            .with_context(|| format!("reading the image's {}", show(rel)))?;
        if buf.len() as u64 > limit {
            bail!(
                "the image's {} grew past {limit} bytes while kiln read it",
                show(rel)
            );
        }
        Ok(buf)
    }

    /// Copies one file out of the image (a kernel, an initrd) to a file kiln created.
    /// A file with more than one link is refused: its other name may be outside the tree.
    pub fn copy_out(&self, rel: &Path, to: &mut File) -> Result<u64> {
        let (mut f, st) = self.open_file(rel)?;
        if st.st_nlink > 1 {
            bail!(
                "the image's {} has {} hard links; kiln copies a file out of the image only when it has one (another name may be outside the image)",
                show(rel),
                st.st_nlink
            );
        }
        std::io::copy(&mut f, to).with_context(|| format!("copying the image's {}", show(rel)))
    }

    /// Writes `content` as `rel`, replacing whatever was there (a symlink or a hard
    /// link is replaced, not written through). Owner root, `mode`.
    pub fn replace(&self, rel: &Path, content: &[u8], mode: u32) -> Result<()> {
        let (dir, name) = self.parent(rel)?;
        let mut tmp_name = OsString::from(".kiln-new.");
        tmp_name.push(&name);
        let _ = nix::unistd::unlinkat(
            Some(dir.as_raw_fd()),
            tmp_name.as_os_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        let fd = nix::fcntl::openat(
            Some(dir.as_raw_fd()),
            tmp_name.as_os_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| errno_error(e, &format!("creating the image's {}", show(rel))))?;
        // SAFETY: a fresh descriptor that nothing else owns.
        let mut f = unsafe { File::from_raw_fd(fd) };
        let written = (|| -> std::io::Result<()> {
            std::io::Write::write_all(&mut f, content)?;
            nix::sys::stat::fchmod(f.as_raw_fd(), Mode::from_bits_truncate(mode))?;
            Ok(())
        })();
        let renamed = written.map_err(anyhow::Error::from).and_then(|()| {
            nix::fcntl::renameat(
                Some(dir.as_raw_fd()),
                tmp_name.as_os_str(),
                Some(dir.as_raw_fd()),
                name.as_os_str(),
            )
            .map_err(|e| errno_error(e, &format!("replacing the image's {}", show(rel))))
        });
        if renamed.is_err() {
            let _ = nix::unistd::unlinkat(
                Some(dir.as_raw_fd()),
                tmp_name.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
        renamed.with_context(|| format!("writing the image's {}", show(rel)))
    }

    /// Removes a non-directory (a symlink itself, never its target). `Ok(false)` when absent.
    pub fn remove_file(&self, rel: &Path) -> Result<bool> {
        let Ok((dir, name)) = self.parent(rel) else {
            return Ok(false);
        };
        match nix::unistd::unlinkat(
            Some(dir.as_raw_fd()),
            name.as_os_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(errno_error(
                e,
                &format!("removing the image's {}", show(rel)),
            )),
        }
    }

    /// Removes `rel` if it is an empty directory; leaves anything else alone.
    pub fn remove_empty_dir(&self, rel: &Path) -> bool {
        let Ok((dir, name)) = self.parent(rel) else {
            return false;
        };
        nix::unistd::unlinkat(
            Some(dir.as_raw_fd()),
            name.as_os_str(),
            nix::unistd::UnlinkatFlags::RemoveDir,
        )
        .is_ok()
    }

    /// Renames within the tree; both last components are taken as they are.
    pub fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        let (fdir, fname) = self.parent(from)?;
        let (tdir, tname) = self.parent(to)?;
        nix::fcntl::renameat(
            Some(fdir.as_raw_fd()),
            fname.as_os_str(),
            Some(tdir.as_raw_fd()),
            tname.as_os_str(),
        )
        .map_err(|e| {
            errno_error(
                e,
                &format!("renaming the image's {} to {}", show(from), show(to)),
            )
        })
    }

    /// Creates `rel` and its missing parents (mode `mode`, owner root), each step
    /// resolved inside the tree. Fails when a component exists and is not a directory.
    pub fn create_dir_all(&self, rel: &Path, mode: u32) -> Result<()> {
        let mut done = PathBuf::new();
        for c in relative(rel).components() {
            let Component::Normal(name) = c else {
                bail!("{}: not a clean path inside the image", show(rel))
            };
            let dir = self
                .resolve(&done, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())
                .map_err(|e| errno_error(e, &format!("the image's {}", show(&done))))?;
            match nix::sys::stat::mkdirat(
                Some(dir.as_raw_fd()),
                name,
                Mode::from_bits_truncate(mode),
            ) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => {
                    return Err(errno_error(
                        e,
                        &format!("creating the image's {}", show(&done.join(name))),
                    ))
                }
            }
            done.push(name);
        }
        if !self.is_dir(&done) {
            bail!("the image's {} is not a directory", show(&done));
        }
        Ok(())
    }

    /// The host path of directory `rel` as resolved inside the tree (every symlink on
    /// the way taken as the image would): for tools that walk a directory without
    /// following symlinks in it.
    pub fn host_dir(&self, rel: &Path) -> Result<PathBuf> {
        let fd = self
            .resolve(rel, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())
            .map_err(|e| errno_error(e, &format!("the image's {}", show(rel))))?;
        let p = fd_path(&fd)?;
        if !p.starts_with(&self.path) {
            bail!(
                "the image's {} resolved to {} outside the tree",
                show(rel),
                p.display()
            );
        }
        Ok(p)
    }

    /// Copies directory `rel` into `dest` (a directory kiln created), dereferencing
    /// symlinks inside the tree: for tools that follow links and for filesystems that
    /// have none (FAT). Returns the number of files copied.
    pub fn stage(&self, rel: &Path, dest: &Path) -> Result<u64> {
        stage::copy_dir(self, rel, dest)
    }
}

/// `rel` without its leading `/`: every path is taken inside the tree.
fn relative(rel: &Path) -> &Path {
    rel.strip_prefix("/").unwrap_or(rel)
}

/// `/etc/machine-id`, as the image sees it: for messages.
fn show(rel: &Path) -> String {
    format!("/{}", relative(rel).display())
}

fn kind_of(st: &FileStat) -> Kind {
    match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => Kind::File,
        SFlag::S_IFDIR => Kind::Dir,
        SFlag::S_IFLNK => Kind::Symlink,
        _ => Kind::Special,
    }
}

fn describe(st: &FileStat) -> &'static str {
    match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFLNK => "a symbolic link",
        _ => "not a regular file",
    }
}

fn errno_error(e: Errno, what: &str) -> anyhow::Error {
    match e {
        Errno::ENOENT => anyhow::anyhow!("{what} does not exist"),
        Errno::ENOTDIR => anyhow::anyhow!("{what}: a component of the path is not a directory"),
        Errno::ELOOP => {
            anyhow::anyhow!("{what}: too many levels of symbolic links inside the image")
        }
        Errno::EXDEV => anyhow::anyhow!("{what}: the path leaves the image"),
        e => anyhow::anyhow!("{what}: {}", e.desc()),
    }
}

/// The path of a descriptor, as the kernel names it.
fn fd_path(fd: &OwnedFd) -> Result<PathBuf> {
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let p = std::fs::read_link(&link).with_context(|| format!("reading {link}"))?;
    if p.as_os_str().as_bytes().ends_with(b" (deleted)") || !p.is_absolute() {
        bail!("{} is not a reachable directory", p.display());
    }
    Ok(p)
}

/// `name` as a single path component, for joins that must not climb.
pub(crate) fn is_plain_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    !b.is_empty() && b != b"." && b != b".." && !b.contains(&b'/')
}

#[cfg(test)]
mod tests;
