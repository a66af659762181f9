//! Output files appear whole or not at all: each is written under a hidden
//! temporary name in the output directory and renamed only once both are complete.

use super::image::io_reason;
use anyhow::{anyhow, bail, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub fn check_dir(dir: &Path) -> Result<()> {
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("output directory {shown} is not a directory"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("output directory {shown} does not exist"),
        Err(e) => bail!("output directory {shown}: {}", io_reason(&e)),
    }
    use nix::unistd::{access, AccessFlags};
    if access(dir, AccessFlags::W_OK | AccessFlags::X_OK).is_err() {
        bail!("output directory {shown} is not writable");
    }
    Ok(())
}

/// A file under a temporary name, removed when dropped unless committed.
pub struct Pending {
    temp: PathBuf,
    target: PathBuf,
    file: File,
    done: bool,
}

impl Pending {
    pub fn create(dir: &Path, name: &str) -> Result<Pending> {
        let target = dir.join(name);
        for n in 0..100 {
            let temp = dir.join(format!(".{name}.kiln-{}-{n}", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).mode(0o644).open(&temp) {
                Ok(file) => return Ok(Pending { temp, target, file, done: false }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => bail!("cannot create a file in {}: {}", dir.display(), io_reason(&e)),
            }
        }
        bail!("cannot create a temporary file in {}: too many stale ones", dir.display())
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.file.write_all_at(data, offset).map_err(|e| anyhow!("writing {}: {}", self.target.display(), io_reason(&e)))
    }

    /// Sets the final length (a trailing hole was never written) and flushes.
    pub fn finish(&self, len: u64) -> Result<()> {
        let err = |e: std::io::Error| anyhow!("writing {}: {}", self.target.display(), io_reason(&e));
        self.file.set_len(len).map_err(err)?;
        self.file.sync_all().map_err(err)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Renames all, or (if a rename fails) removes the ones already renamed.
pub fn commit(mut files: Vec<Pending>) -> Result<()> {
    for i in 0..files.len() {
        if let Err(e) = std::fs::rename(&files[i].temp, &files[i].target) {
            for f in &files[..i] {
                let _ = std::fs::remove_file(&f.target);
            }
            bail!("cannot create {}: {}", files[i].target.display(), io_reason(&e));
        }
        files[i].done = true;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_left_unless_committed() {
        let d = tempfile::tempdir().unwrap();
        {
            let p = Pending::create(d.path(), "a").unwrap();
            p.write_at(0, b"x").unwrap();
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        let a = Pending::create(d.path(), "a").unwrap();
        let b = Pending::create(d.path(), "b").unwrap();
        a.write_at(3, b"x").unwrap();
        a.finish(8).unwrap();
        b.finish(0).unwrap();
        commit(vec![a, b]).unwrap();
        assert_eq!(std::fs::read(d.path().join("a")).unwrap(), b"\0\0\0x\0\0\0\0");
        let mut names: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn missing_and_file_dirs_are_named() {
        let d = tempfile::tempdir().unwrap();
        let e = check_dir(&d.path().join("nope")).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        std::fs::write(d.path().join("f"), "").unwrap();
        let e = check_dir(&d.path().join("f")).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
    }
}
