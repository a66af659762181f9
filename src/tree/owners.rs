//! Owners recorded for a build without subordinate ids (docs/architecture.md §4).
//!
//! With a single id mapping every file really belongs to root of kiln's
//! namespace, and chown to any other id fails. The job supervisor
//! (`sandbox::owners`) answers a hook's chown instead: it records the owner the
//! hook asked for in an extended attribute of the inode itself, and answers
//! `stat` with it. Output writers then give each file its recorded owner.
//!
//! An attribute on the inode, not a table on the side, because it follows the
//! inode through renames and hard links, disappears with it (no stale entry for a
//! reused inode number), and survives kiln's tree cache (tar `--xattrs`).
//! `user.` attributes exist only on regular files and directories: a symlink or
//! special file keeps root as its owner (the supervisor says so when asked for
//! another).

use super::ImageTree;
use anyhow::{Context, Result};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use std::collections::BTreeMap;
use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// The attribute's name. Never copied into an output: writers exclude it.
pub const XATTR: &CStr = c"user.kiln.owner";

/// A uid and gid as the image sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    pub const ROOT: Owner = Owner { uid: 0, gid: 0 };

    /// `UID:GID` in decimal, the attribute's whole value.
    pub fn encode(self) -> String {
        format!("{}:{}", self.uid, self.gid)
    }

    /// The strict inverse of [`encode`](Owner::encode): anything else (a hook
    /// may write the attribute itself) is refused, not guessed at. `u32::MAX`
    /// is chown's "unchanged", never an owner.
    pub fn parse(value: &[u8]) -> Option<Owner> {
        let text = std::str::from_utf8(value).ok()?;
        let (u, g) = text.split_once(':')?;
        let id = |s: &str| -> Option<u32> {
            if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse::<u32>().ok().filter(|&v| v != u32::MAX)
        };
        Some(Owner {
            uid: id(u)?,
            gid: id(g)?,
        })
    }
}

/// The owner recorded on an open regular file or directory: `None` when there
/// is none (the file belongs to root), an `InvalidData` error when the value is
/// not one kiln wrote.
pub fn recorded(fd: BorrowedFd) -> io::Result<Option<Owner>> {
    let mut buf = [0u8; 32];
    // SAFETY: the buffer outlives the call and its length is passed.
    let n = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            XATTR.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(None),
            Some(libc::ERANGE) => Err(invalid(&buf)),
            _ => Err(e),
        };
    }
    let value = &buf[..n as usize];
    Owner::parse(value).map(Some).ok_or_else(|| invalid(value))
}

fn invalid(value: &[u8]) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{} is {:?}, not UID:GID",
            XATTR.to_string_lossy(),
            String::from_utf8_lossy(value)
        ),
    )
}

/// Records `owner` on an open regular file or directory; root is recorded by
/// removing the attribute, so an image built without a range carries no
/// attribute where a range build would have a root-owned file.
pub fn record(fd: BorrowedFd, owner: Owner) -> io::Result<()> {
    // SAFETY: plain xattr calls with valid pointers and lengths.
    let r = if owner == Owner::ROOT {
        let r = unsafe { libc::fremovexattr(fd.as_raw_fd(), XATTR.as_ptr()) };
        if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENODATA) {
            0
        } else {
            r
        }
    } else {
        let value = owner.encode();
        unsafe {
            libc::fsetxattr(
                fd.as_raw_fd(),
                XATTR.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        }
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the filesystem of `dir` (a directory kiln made, not one in an image
/// tree) takes the attribute: tmpfs does only from Linux 6.6. Leaves none behind.
pub fn can_record_in(dir: &std::path::Path) -> io::Result<()> {
    let f = std::fs::File::open(dir)?;
    record(f.as_fd(), Owner { uid: 0, gid: 42 })?;
    record(f.as_fd(), Owner::ROOT)
}

/// A file's recorded owner, with the permission bits writers that set owner
/// and mode together (mksquashfs pseudo definitions) need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordedFile {
    pub owner: Owner,
    /// Permission bits only (`0o7777`).
    pub perm: u32,
}

/// Every owner recorded in a tree, by tree-relative path (no leading `/`; the
/// tree's own root is the empty path). A file with several names (hard links)
/// appears under each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    files: BTreeMap<PathBuf, RecordedFile>,
}

impl Recorded {
    /// Reads the attribute from every regular file and directory of `tree`,
    /// never leaving it: directories are entered with `O_NOFOLLOW`, and symlinks
    /// and special files are skipped (they cannot carry `user.` attributes).
    pub fn read(tree: &ImageTree) -> Result<Recorded> {
        let mut files = BTreeMap::new();
        visit(tree, &mut |rel, fd, perm| {
            let found = recorded(fd).with_context(|| {
                format!(
                    "the owner recorded on the image's /{}: kiln writes this attribute itself, and a hook that writes it must write UID:GID",
                    rel.display()
                )
            })?;
            if let Some(owner) = found {
                files.insert(rel.to_path_buf(), RecordedFile { owner, perm });
            }
            Ok(())
        })?;
        Ok(Recorded { files })
    }

    /// A map made directly, for writers' tests.
    pub fn from_files(files: impl IntoIterator<Item = (PathBuf, RecordedFile)>) -> Recorded {
        Recorded {
            files: files.into_iter().map(|(p, f)| (key(&p), f)).collect(),
        }
    }

    /// The owner recorded for `rel` (`etc/shadow`, `/etc/shadow`, `./etc/` all
    /// name the same file); `None` means root.
    pub fn get(&self, rel: &Path) -> Option<Owner> {
        self.files.get(&key(rel)).map(|f| f.owner)
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Sorted by path.
    pub fn iter(&self) -> impl Iterator<Item = (&Path, &RecordedFile)> {
        self.files.iter().map(|(p, f)| (p.as_path(), f))
    }

    /// The entries below `dir`, relative to it (for a writer that archives a
    /// subtree, as the ramdisk's cpio does).
    pub fn under(&self, dir: &Path) -> Recorded {
        let dir = key(dir);
        Recorded {
            files: self
                .files
                .iter()
                .filter_map(|(p, f)| Some((p.strip_prefix(&dir).ok()?.to_path_buf(), *f)))
                .collect(),
        }
    }
}

/// The map's key: the normal components only.
fn key(rel: &Path) -> PathBuf {
    rel.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

/// Removes the attribute from every regular file and directory of `tree`,
/// whatever its value; returns how many carried it. Run once the owners were
/// read (or when they mean nothing: a build with a subordinate range, where a
/// hook may still have set one), so that no output can copy it: mksquashfs
/// before 4.6 cannot exclude one attribute, and mke2fs -d copies them all.
pub fn strip(tree: &ImageTree) -> Result<u64> {
    let mut removed = 0;
    visit(tree, &mut |rel, fd, _| {
        // SAFETY: a valid descriptor and a NUL-terminated name.
        if unsafe { libc::fremovexattr(fd.as_raw_fd(), XATTR.as_ptr()) } == 0 {
            removed += 1;
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(()),
            _ => Err(e).with_context(|| {
                format!(
                    "removing {} from the image's /{}",
                    XATTR.to_string_lossy(),
                    rel.display()
                )
            }),
        }
    })?;
    Ok(removed)
}

/// Calls `f` with every regular file and directory of the tree (the root
/// first, as the empty path), open read-only, and its permission bits.
fn visit(tree: &ImageTree, f: &mut dyn FnMut(&Path, BorrowedFd, u32) -> Result<()>) -> Result<()> {
    let root = tree
        .resolve(
            Path::new(""),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .context("opening the image tree to read its recorded owners")?;
    let st = nix::sys::stat::fstat(root.as_raw_fd()).context("stat of the image's /")?;
    f(Path::new(""), root.as_fd(), st.st_mode & 0o7777)?;
    let mut rel = PathBuf::new();
    walk(&root, &mut rel, f)
}

fn walk(
    dir: &OwnedFd,
    rel: &mut PathBuf,
    f: &mut dyn FnMut(&Path, BorrowedFd, u32) -> Result<()>,
) -> Result<()> {
    let shown = || format!("the image's /{}", rel.display());
    let listing = nix::dir::Dir::from_fd(nix::unistd::dup(dir.as_raw_fd())?)
        .with_context(|| format!("reading {}", shown()))?;
    let mut names = Vec::new();
    for e in listing {
        let e = e.with_context(|| format!("reading {}", shown()))?;
        let name = OsStr::from_bytes(e.file_name().to_bytes()).to_os_string();
        if super::is_plain_name(&name) {
            names.push(name);
        }
    }
    for name in names {
        rel.push(&name);
        let st = nix::sys::stat::fstatat(
            Some(dir.as_raw_fd()),
            name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .with_context(|| format!("stat of the image's /{}", rel.display()))?;
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        let flags = if kind == SFlag::S_IFDIR {
            OFlag::O_RDONLY | OFlag::O_DIRECTORY
        } else if kind == SFlag::S_IFREG {
            // Non-blocking: were it swapped for a FIFO, the open does not wait.
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY
        } else {
            rel.pop();
            continue;
        };
        let fd = nix::fcntl::openat(
            Some(dir.as_raw_fd()),
            name.as_os_str(),
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening the image's /{}", rel.display()))?;
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        f(rel, fd.as_fd(), st.st_mode & 0o7777)?;
        if kind == SFlag::S_IFDIR {
            walk(&fd, rel, f)?;
        }
        rel.pop();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn parse_is_the_strict_inverse_of_encode() {
        for o in [
            Owner::ROOT,
            Owner { uid: 0, gid: 42 },
            Owner {
                uid: 65534,
                gid: 65534,
            },
            Owner {
                uid: 4_000_000_000,
                gid: 1,
            },
        ] {
            assert_eq!(Owner::parse(o.encode().as_bytes()), Some(o));
        }
        for bad in [
            "",
            ":",
            "1:",
            ":1",
            "1:2:3",
            "-1:0",
            "+1:0",
            " 1:0",
            "1:0\n",
            "4294967295:0",
            "99999999999:0",
            "a:b",
            "0x1:0",
        ] {
            assert_eq!(Owner::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn record_then_read_back_and_root_removes_the_attribute() {
        // The crate's own directory: tmpfs (a common /tmp) has no user.* attributes
        // before Linux 6.6.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let f = std::fs::File::open(&path).unwrap();
        assert_eq!(recorded(f.as_fd()).unwrap(), None);
        let shadow = Owner { uid: 0, gid: 42 };
        record(f.as_fd(), shadow).unwrap();
        assert_eq!(recorded(f.as_fd()).unwrap(), Some(shadow));
        record(f.as_fd(), Owner::ROOT).unwrap();
        assert_eq!(recorded(f.as_fd()).unwrap(), None);
        // Removing an absent attribute is not an error: chown to root twice.
        record(f.as_fd(), Owner::ROOT).unwrap();
    }

    #[test]
    fn the_probe_leaves_no_attribute_behind() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        can_record_in(dir.path()).unwrap();
        let f = std::fs::File::open(dir.path()).unwrap();
        assert_eq!(recorded(f.as_fd()).unwrap(), None);
        assert!(can_record_in(&dir.path().join("absent")).is_err());
    }

    #[test]
    fn a_value_kiln_did_not_write_is_an_error_not_root() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let bogus = b"root:shadow";
        // SAFETY: valid pointers and lengths.
        let r = unsafe {
            libc::fsetxattr(
                f.as_raw_fd(),
                XATTR.as_ptr(),
                bogus.as_ptr().cast(),
                bogus.len(),
                0,
            )
        };
        assert_eq!(r, 0);
        let e = recorded(f.as_fd()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("root:shadow"), "{e}");
    }
}
