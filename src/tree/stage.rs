//! Dereferencing copies out of the tree, for tools that would follow a symlink to
//! the host (`mcopy -s`, `grub-mkimage -d`) and for filesystems without symlinks.

use super::{errno_error, kind_of, relative, show, ImageTree, Kind};
use anyhow::{bail, Context, Result};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::fs::File;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub(super) fn copy_dir(tree: &ImageTree, rel: &Path, dest: &Path) -> Result<u64> {
    let mut count = 0;
    walk(tree, relative(rel), dest, &mut Vec::new(), &mut count)?;
    Ok(count)
}

fn walk(
    tree: &ImageTree,
    rel: &Path,
    dest: &Path,
    ancestors: &mut Vec<(u64, u64)>,
    count: &mut u64,
) -> Result<()> {
    let fd = tree
        .resolve(rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
        .map_err(|e| errno_error(e, &format!("the image's {}", show(rel))))?;
    let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
    let id = (st.st_dev, st.st_ino);
    if ancestors.contains(&id) {
        bail!(
            "the image's {} is a symlink loop (it leads back to a directory above it)",
            show(rel)
        );
    }
    ancestors.push(id);
    match std::fs::create_dir(dest) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dest.is_dir() => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", dest.display())),
    }
    let dir = nix::dir::Dir::from_fd(fd.into_raw_fd())
        .with_context(|| format!("reading the image's {}", show(rel)))?;
    let mut names: Vec<std::ffi::OsString> = Vec::new();
    for e in dir {
        let e = e.with_context(|| format!("reading the image's {}", show(rel)))?;
        let name = std::ffi::OsStr::from_bytes(e.file_name().to_bytes()).to_os_string();
        if super::is_plain_name(&name) {
            names.push(name);
        }
    }
    names.sort();
    for name in names {
        let child = rel.join(&name);
        let target = dest.join(&name);
        let fd = tree
            .resolve(&child, OFlag::O_PATH, Mode::empty())
            .map_err(|e| {
                errno_error(
                    e,
                    &format!(
                        "the image's {} (a symlink whose target is missing?)",
                        show(&child)
                    ),
                )
            })?;
        let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
        match kind_of(&st) {
            Kind::Dir => walk(tree, &child, &target, ancestors, count)?,
            Kind::File => {
                let (mut from, st) = tree.open_file(&child)?;
                let mut to = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .with_context(|| format!("creating {}", target.display()))?;
                std::io::copy(&mut from, &mut to).with_context(|| format!("copying the image's {}", show(&child)))?;
                let mtime = std::time::UNIX_EPOCH + std::time::Duration::new(st.st_mtime.max(0) as u64, st.st_mtime_nsec.clamp(0, 999_999_999) as u32);
                let _ = File::set_modified(&to, mtime);
                *count += 1;
            }
            Kind::Special | Kind::Symlink => bail!(
                "the image's {} is a FIFO, socket or device node; it cannot be copied here (remove it in a hook)",
                show(&child)
            ),
        }
    }
    ancestors.pop();
    Ok(())
}
