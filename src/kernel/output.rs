//! Output files appear whole or not at all. Each is written as an unnamed file
//! in the output directory (O_TMPFILE) and given its name only once both are
//! complete, so a Ctrl-C (which kills: no handler delays it) leaves nothing
//! behind. On a filesystem without O_TMPFILE a hidden temporary name stands in.
//! Every name is made relative to one descriptor of the directory, and never
//! through a symbolic link planted in it.

use super::image::io_reason;
use anyhow::{anyhow, bail, Result};
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{linkat, unlinkat, UnlinkatFlags};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The output directory, opened once: a path swapped for another directory (or
/// a link to one) half-way through cannot split the files between two places.
pub struct OutDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl OutDir {
    pub fn open(dir: &Path) -> Result<OutDir> {
        check_dir(dir)?;
        let fd = openat(
            None,
            dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| anyhow!("output directory {}: {}", dir.display(), e.desc()))?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        Ok(OutDir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: dir.to_path_buf(),
        })
    }

    fn raw(&self) -> Option<std::os::fd::RawFd> {
        Some(self.fd.as_raw_fd())
    }
}

fn check_dir(dir: &Path) -> Result<()> {
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("output directory {shown} is not a directory"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("output directory {shown} does not exist")
        }
        Err(e) => bail!("output directory {shown}: {}", io_reason(&e)),
    }
    use nix::unistd::{access, AccessFlags};
    if access(dir, AccessFlags::W_OK | AccessFlags::X_OK).is_err() {
        bail!("output directory {shown} is not writable");
    }
    Ok(())
}

/// A file being written: unnamed (`temp` None) or under a temporary name;
/// removed when dropped unless committed.
pub struct Pending<'d> {
    dir: &'d OutDir,
    name: String,
    temp: Option<String>,
    file: File,
    done: bool,
}

impl<'d> Pending<'d> {
    pub fn create(dir: &'d OutDir, name: &str) -> Result<Pending<'d>> {
        let flags = OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
        match openat(dir.raw(), ".", flags, Mode::from_bits_truncate(0o644)) {
            Ok(fd) => {
                // SAFETY: openat returned a new descriptor that nothing else owns.
                let file = unsafe { File::from_raw_fd(fd) };
                // Naming it later goes through /proc; without /proc, use a name now.
                if Path::new(&format!("/proc/self/fd/{fd}")).exists() {
                    return Ok(Pending {
                        dir,
                        name: name.to_string(),
                        temp: None,
                        file,
                        done: false,
                    });
                }
            }
            // The filesystem (or kernel) has no O_TMPFILE.
            Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL) => {}
            Err(e) => bail!(
                "cannot create a file in {}: {}",
                dir.path.display(),
                e.desc()
            ),
        }
        Pending::create_named(dir, name)
    }

    /// O_EXCL: a name someone planted (a symbolic link included) is never opened.
    fn create_named(dir: &'d OutDir, name: &str) -> Result<Pending<'d>> {
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let (temp, fd) = unique_name(dir, name, |temp| {
            openat(dir.raw(), temp, flags, Mode::from_bits_truncate(0o644))
        })?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        Ok(Pending {
            dir,
            name: name.to_string(),
            temp: Some(temp),
            file: unsafe { File::from_raw_fd(fd) },
            done: false,
        })
    }

    pub fn target(&self) -> PathBuf {
        self.dir.path.join(&self.name)
    }

    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.file
            .write_all_at(data, offset)
            .map_err(|e| anyhow!("writing {}: {}", self.target().display(), io_reason(&e)))
    }

    /// Sets the final length (a trailing hole was never written) and flushes.
    pub fn finish(&self, len: u64) -> Result<()> {
        let err =
            |e: std::io::Error| anyhow!("writing {}: {}", self.target().display(), io_reason(&e));
        self.file.set_len(len).map_err(err)?;
        self.file.sync_all().map_err(err)
    }

    /// Gives an unnamed file its temporary name, the step before the rename.
    fn name_it(&mut self) -> Result<()> {
        if self.temp.is_some() {
            return Ok(());
        }
        let proc = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        let link = |temp: &str| {
            linkat(
                None,
                proc.as_str(),
                self.dir.raw(),
                temp,
                AtFlags::AT_SYMLINK_FOLLOW,
            )
            .map(|_| ())
        };
        let (temp, ()) = unique_name(self.dir, &self.name, link)?;
        self.temp = Some(temp);
        Ok(())
    }
}

/// `make` tried with hidden names beside `name` until one is not taken.
fn unique_name<T>(
    dir: &OutDir,
    name: &str,
    mut make: impl FnMut(&str) -> nix::Result<T>,
) -> Result<(String, T)> {
    for n in 0..100 {
        let temp = format!(".{name}.kiln-{}-{n}", std::process::id());
        match make(&temp) {
            Ok(made) => return Ok((temp, made)),
            Err(Errno::EEXIST) => continue,
            Err(e) => bail!(
                "cannot create a file in {}: {}",
                dir.path.display(),
                e.desc()
            ),
        }
    }
    bail!(
        "cannot create a temporary file in {}: too many stale ones",
        dir.path.display()
    )
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let (false, Some(temp)) = (self.done, &self.temp) {
            let _ = unlinkat(self.dir.raw(), temp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// Names all, or (if one cannot be named) removes the ones already named.
pub fn commit(mut files: Vec<Pending>) -> Result<()> {
    for f in files.iter_mut() {
        f.name_it()
            .map_err(|e| anyhow!("cannot create {}: {e:#}", f.target().display()))?;
    }
    for i in 0..files.len() {
        let f = &files[i];
        let temp = f.temp.as_deref().unwrap_or_default();
        // rename(2) replaces whatever has the name, a symbolic link included; it never follows one.
        if let Err(e) = renameat(f.dir.raw(), temp, f.dir.raw(), f.name.as_str()) {
            for done in &files[..i] {
                let _ = unlinkat(
                    done.dir.raw(),
                    done.name.as_str(),
                    UnlinkatFlags::NoRemoveDir,
                );
            }
            bail!("cannot create {}: {}", f.target().display(), e.desc());
        }
        files[i].done = true;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn nothing_is_left_unless_committed() {
        let d = tempfile::tempdir().unwrap();
        let out = OutDir::open(d.path()).unwrap();
        {
            let p = Pending::create(&out, "a").unwrap();
            p.write_at(0, b"x").unwrap();
            // Unnamed while written: a process killed now leaves nothing.
            assert!(names(d.path()).is_empty(), "{:?}", names(d.path()));
        }
        assert!(names(d.path()).is_empty());
        let a = Pending::create(&out, "a").unwrap();
        let b = Pending::create(&out, "b").unwrap();
        a.write_at(3, b"x").unwrap();
        a.finish(8).unwrap();
        b.finish(0).unwrap();
        commit(vec![a, b]).unwrap();
        assert_eq!(
            std::fs::read(d.path().join("a")).unwrap(),
            b"\0\0\0x\0\0\0\0"
        );
        assert_eq!(names(d.path()), ["a", "b"]);
    }

    #[test]
    fn the_named_stand_in_is_removed_unless_committed() {
        let d = tempfile::tempdir().unwrap();
        let out = OutDir::open(d.path()).unwrap();
        // A link planted at the first temporary name is skipped, not followed.
        let planted = format!(".a.kiln-{}-0", std::process::id());
        std::os::unix::fs::symlink(d.path().join("elsewhere"), d.path().join(&planted)).unwrap();
        {
            let p = Pending::create_named(&out, "a").unwrap();
            p.write_at(0, b"x").unwrap();
            assert_eq!(names(d.path()).len(), 2);
        }
        assert_eq!(names(d.path()), std::slice::from_ref(&planted));
        let a = Pending::create_named(&out, "a").unwrap();
        a.write_at(0, b"xy").unwrap();
        a.finish(2).unwrap();
        commit(vec![a]).unwrap();
        assert_eq!(names(d.path()), [planted, "a".to_string()]);
        assert!(!d.path().join("elsewhere").exists());
    }

    #[test]
    fn a_planted_symlink_is_replaced_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let out_path = d.path().join("out");
        std::fs::create_dir(&out_path).unwrap();
        std::os::unix::fs::symlink(&victim, out_path.join("k")).unwrap();
        let out = OutDir::open(&out_path).unwrap();
        let k = Pending::create(&out, "k").unwrap();
        k.write_at(0, b"new").unwrap();
        k.finish(3).unwrap();
        commit(vec![k]).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert!(!std::fs::symlink_metadata(out_path.join("k"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(out_path.join("k")).unwrap(), b"new");
    }

    #[test]
    fn missing_and_file_dirs_are_named() {
        let d = tempfile::tempdir().unwrap();
        let e = OutDir::open(&d.path().join("nope"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        std::fs::write(d.path().join("f"), "").unwrap();
        let e = OutDir::open(&d.path().join("f")).err().unwrap().to_string();
        assert!(e.contains("not a directory"), "{e}");
    }
}
