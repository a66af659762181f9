//! The private directory outputs are written in before they take their final
//! names (docs/architecture.md §10.7).
//!
//! The output directory may be shared (/tmp, a group's image directory): any
//! name kiln could predict there, another user could prepare first as a link
//! to a file of the caller's. So kiln makes one directory with an
//! unpredictable name, `.NAME.kiln-XXXXXX` (mkdtemp: mode 0700, and mkdir
//! never follows a link), beside the outputs — the same filesystem, so each
//! final rename is atomic — and writes every output inside it under its final
//! base name, which is also what the checksum files name. Nobody else can
//! enter it; renaming out of it replaces whatever sits at a final name and
//! never follows it.
//!
//! It is removed when the build ends however it ends — except after SIGKILL of
//! kiln's whole process group, when nothing of kiln runs. For that, `owner`
//! inside names the process that made it, and the next build of the same NAME
//! in that directory removes the directories whose process is gone.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct Staging {
    dir: PathBuf,
}

const OWNER: &str = "owner";

/// mkdtemp's six random characters.
const SUFFIX_LEN: usize = 6;

/// A directory without `owner` is younger than this, or belongs to a build
/// killed between mkdtemp and writing `owner` (microseconds apart).
const UNOWNED_GRACE: Duration = Duration::from_secs(60);

impl Staging {
    /// Makes `DIR/.NAME.kiln-XXXXXX`, first removing those that builds killed
    /// outright left behind.
    pub fn create(dir: &Path, name: &str) -> Result<Staging> {
        for stale in stale_dirs(dir, name) {
            match std::fs::remove_dir_all(&stale) {
                Ok(()) => eprintln!(
                    "kiln: removed {}, left by a build that was killed",
                    stale.display()
                ),
                Err(e) => eprintln!(
                    "kiln: warning: could not remove {}, left by a build that was killed: {e}",
                    stale.display()
                ),
            }
        }
        let template = dir.join(format!(".{name}.kiln-XXXXXX"));
        let path = nix::unistd::mkdtemp(&template).with_context(|| {
            format!(
                "creating a private directory for the outputs in {}",
                dir.display()
            )
        })?;
        let staging = Staging { dir: path };
        let me = std::process::id();
        let started = start_time(me).with_context(|| format!("reading /proc/{me}/stat"))?;
        let mut f = crate::disk::create_output(&staging.dir.join(OWNER), 0o600)?;
        f.write_all(format!("{me} {started}\n").as_bytes())
            .with_context(|| format!("writing {}", staging.dir.join(OWNER).display()))?;
        Ok(staging)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Where the output that ends up at `final_path` is written meanwhile.
    pub fn file_for(&self, final_path: &Path) -> PathBuf {
        self.dir.join(final_path.file_name().unwrap_or_default())
    }

    /// Removes the directory and whatever was not renamed out of it.
    pub fn discard(&self) {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("kiln: removing {}: {e}", self.dir.display()),
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        self.discard();
    }
}

/// `.NAME.kiln-XXXXXX` directories in `dir` that are the caller's and whose
/// build is gone. Anything else with such a name is left alone: another user's
/// entry, a link, a live build's directory.
fn stale_dirs(dir: &Path, name: &str) -> Vec<PathBuf> {
    let prefix = format!(".{name}.kiln-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .is_some_and(|s| s.len() == SUFFIX_LEN)
        })
        .map(|e| e.path())
        .filter(|p| is_stale(p))
        .collect()
}

fn is_stale(path: &Path) -> bool {
    // O_NOFOLLOW: a link named like ours is never followed, nor removed.
    let Ok(d) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
    else {
        return false;
    };
    let Ok(meta) = d.metadata() else { return false };
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return false;
    }
    let owner = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path.join(OWNER));
    match owner {
        Ok(mut f) => {
            let mut text = String::new();
            if f.read_to_string(&mut text).is_err() {
                return false;
            }
            let mut words = text.split_whitespace().map(str::parse::<u64>);
            match (words.next(), words.next()) {
                (Some(Ok(pid)), Some(Ok(started))) => !alive(pid, started),
                _ => false,
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age > UNOWNED_GRACE),
        Err(_) => false,
    }
}

/// The process is the one that wrote `owner` (same pid, same start time: pids
/// are reused). Unsure counts as alive.
fn alive(pid: u64, started: u64) -> bool {
    let Ok(pid) = u32::try_from(pid) else {
        return false;
    };
    match start_time(pid) {
        Ok(t) => t == started,
        Err(e) => e
            .downcast_ref::<std::io::Error>()
            .is_none_or(|e| e.kind() != std::io::ErrorKind::NotFound),
    }
}

/// Field 22 of /proc/PID/stat: clock ticks after boot.
fn start_time(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    match after.split_whitespace().nth(19).map(str::parse::<u64>) {
        Some(Ok(t)) => Ok(t),
        _ => bail!("/proc/{pid}/stat has no start time"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::unix::fs::PermissionsExt;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn two_builds_of_one_name_get_different_private_directories() {
        let out = tempfile::tempdir().unwrap();
        let a = Staging::create(out.path(), "img").unwrap();
        let b = Staging::create(out.path(), "img").unwrap();
        assert_ne!(a.path(), b.path());
        for s in [&a, &b] {
            let name = s.path().file_name().unwrap().to_str().unwrap();
            let suffix = name.strip_prefix(".img.kiln-").unwrap();
            assert_eq!(suffix.len(), SUFFIX_LEN, "{name}");
            assert_ne!(suffix, "XXXXXX");
            let meta = std::fs::symlink_metadata(s.path()).unwrap();
            assert!(meta.is_dir());
            assert_eq!(meta.permissions().mode() & 0o7777, 0o700);
            assert_eq!(
                s.file_for(&out.path().join("img.tar")),
                s.path().join("img.tar")
            );
        }
        // A live build's directory survives the next build's sweep.
        assert_eq!(entries(out.path()).len(), 2);
        drop(a);
        drop(b);
        assert!(entries(out.path()).is_empty());
    }

    #[test]
    fn only_the_callers_directories_of_dead_builds_are_swept() {
        let out = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let me = std::process::id();
        let now = start_time(me).unwrap();
        let make = |suffix: &str, owner: Option<String>| {
            let d = out.path().join(format!(".img.kiln-{suffix}"));
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("img.tar"), b"partial").unwrap();
            if let Some(o) = owner {
                std::fs::write(d.join(OWNER), o).unwrap();
            }
            d
        };
        make("dead01", Some(format!("{dead} 1\n")));
        make("reuse1", Some(format!("{me} {}\n", now + 1)));
        make("alive1", Some(format!("{me} {now}\n")));
        make("young1", None);
        let old = make("old001", None);
        let long_ago = std::time::SystemTime::now() - 2 * UNOWNED_GRACE;
        File::open(&old)
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_modified(long_ago))
            .unwrap();
        make("junk01", Some("not a pid".into()));
        make("toolong1", Some(format!("{dead} 1\n")));
        let victim = tempfile::tempdir().unwrap();
        std::fs::write(victim.path().join(OWNER), format!("{dead} 1\n")).unwrap();
        std::os::unix::fs::symlink(victim.path(), out.path().join(".img.kiln-link01")).unwrap();
        let fresh = Staging::create(out.path(), "img").unwrap();
        let fresh_name = fresh
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        // Gone: dead01 (its process ended), reuse1 (its pid now names another
        // process), old001 (killed before it had an owner).
        let mut want: Vec<String> = [
            ".img.kiln-alive1",
            ".img.kiln-junk01",
            ".img.kiln-link01",
            ".img.kiln-toolong1",
            ".img.kiln-young1",
        ]
        .map(String::from)
        .to_vec();
        want.push(fresh_name);
        want.sort();
        assert_eq!(entries(out.path()), want);
        assert_eq!(entries(victim.path()), vec![OWNER.to_string()]);
    }
}
