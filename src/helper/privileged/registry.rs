//! Which loop devices the helper attached, and for whom: /run/kiln-helper/loopN,
//! one file per device in a directory only root can use. An entry names the
//! binding (disk sequence number and boot), not just the device number, so a
//! device detached and bound again by someone else is never mistaken for it.

use super::loopdev;
use crate::helper::protocol::is_loop_name;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};

const DIR: &str = "/run/kiln-helper";
/// Attachments one user may hold at once: each is a kernel device.
pub const MAX_PER_USER: usize = 64;

#[derive(Debug, PartialEq)]
struct Entry {
    uid: u32,
    diskseq: u64,
    boot: String,
}

/// The registry, locked against other helpers until dropped.
pub struct Registry {
    _dir: File,
    boot: String,
}

impl Registry {
    pub fn lock() -> Result<Registry> {
        match std::fs::DirBuilder::new().mode(0o700).create(DIR) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(e).with_context(|| format!("creating {DIR}"))
            }
            _ => {}
        }
        let dir = File::options()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(DIR)
            .with_context(|| format!("opening {DIR}"))?;
        let st = dir
            .metadata()
            .with_context(|| format!("inspecting {DIR}"))?;
        if st.uid() != 0 || st.mode() & 0o077 != 0 {
            bail!(
                "{DIR} is not a directory only root can use (owner uid {}, mode {:o}): remove it",
                st.uid(),
                st.mode() & 0o7777
            );
        }
        loopdev::lock(dir.as_fd(), DIR)?;
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .context("reading the boot id")?
            .trim()
            .to_string();
        Ok(Registry { _dir: dir, boot })
    }

    /// Forgets bindings that are gone: detached, re-bound, or from another boot.
    pub fn prune(&self) -> Result<()> {
        for entry in std::fs::read_dir(DIR).with_context(|| format!("listing {DIR}"))? {
            let name = entry
                .with_context(|| format!("listing {DIR}"))?
                .file_name()
                .to_string_lossy()
                .into_owned();
            if !self
                .read(&name)
                .is_some_and(|e| e.boot == self.boot && bound_diskseq(&name) == Some(e.diskseq))
            {
                self.remove(&name)?;
            }
        }
        Ok(())
    }

    pub fn count(&self, uid: u32) -> usize {
        let names = std::fs::read_dir(DIR)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned());
        names
            .filter(|n| self.read(n).is_some_and(|e| e.uid == uid))
            .count()
    }

    pub fn record(&self, name: &str, uid: u32, diskseq: u64) -> Result<()> {
        let path = path(name)?;
        let mut f = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .with_context(|| format!("creating {path}"))?;
        writeln!(f, "uid {uid}\ndiskseq {diskseq}\nboot {}", self.boot)
            .with_context(|| format!("writing {path}"))?;
        Ok(())
    }

    /// Passes only if this binding of `name` was attached by the helper for `uid`.
    pub fn check(&self, name: &str, uid: u32, diskseq: u64) -> Result<()> {
        match self.read(name) {
            Some(e) if e.boot == self.boot && e.diskseq == diskseq => {
                if e.uid != uid {
                    bail!("{name} was attached by kiln-helper for another user, not for you (uid {uid})");
                }
                Ok(())
            }
            _ => bail!("{name} was not attached by kiln-helper (not this binding of it): kiln-helper only touches devices it attached"),
        }
    }

    /// Removes the entry of this binding of `name`, once the binding has ended.
    pub fn forget(&self, name: &str, diskseq: u64) -> Result<()> {
        if self.read(name).is_some_and(|e| e.diskseq == diskseq)
            && bound_diskseq(name) != Some(diskseq)
        {
            self.remove(name)?;
        }
        Ok(())
    }

    pub fn remove(&self, name: &str) -> Result<()> {
        let path = format!("{DIR}/{name}");
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {path}"))
            }
            _ => Ok(()),
        }
    }

    fn read(&self, name: &str) -> Option<Entry> {
        let text = std::fs::read_to_string(path(name).ok()?).ok()?;
        parse(&text)
    }
}

fn path(name: &str) -> Result<String> {
    if !is_loop_name(name) {
        bail!("{name:?} is not a loop device name");
    }
    Ok(format!("{DIR}/{name}"))
}

fn parse(text: &str) -> Option<Entry> {
    let mut lines = text.lines();
    let mut field = |key: &str| {
        lines
            .next()?
            .strip_prefix(key)?
            .strip_prefix(' ')
            .map(str::to_string)
    };
    let entry = Entry {
        uid: field("uid")?.parse().ok()?,
        diskseq: field("diskseq")?.parse().ok()?,
        boot: field("boot")?,
    };
    lines.next().is_none().then_some(entry)
}

/// The disk sequence number of the binding `name` has now; None when unbound.
pub fn bound_diskseq(name: &str) -> Option<u64> {
    std::fs::metadata(format!("/sys/block/{name}/loop")).ok()?;
    std::fs::read_to_string(format!("/sys/block/{name}/diskseq"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_strictly() {
        let e = parse("uid 1001\ndiskseq 42\nboot 0a-b\n").unwrap();
        assert_eq!(
            e,
            Entry {
                uid: 1001,
                diskseq: 42,
                boot: "0a-b".into()
            }
        );
        for bad in [
            "",
            "uid 1001\n",
            "uid x\ndiskseq 1\nboot b\n",
            "diskseq 1\nuid 1\nboot b\n",
            "uid 1\ndiskseq 1\nboot b\nmore\n",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }
}
