//! The package download cache (docs/architecture.md §8, §10.6). It is bound writable over
//! /var/cache/apt/archives for hooks and maintainer scripts, which are untrusted;
//! apt later trusts any file there whose size matches. So a build keeps only what
//! it can prove genuine: a regular `.deb` whose SHA-256 is the one a package list
//! signed by a trusted key gives for that file name. Everything else is deleted.
//!
//! A kiln-owned index beside the bound directory records each proven file's
//! SHA-256 and its (size, inode, ctime), so an unchanged file needs no re-hash: a
//! hook can rewrite a file and restore its mtime, but not its ctime. A file that
//! changed is hashed again and kept only if it still has the proven digest. All
//! of this runs inside kiln's namespace, where the subordinate ids apt leaves
//! behind (`_apt`) are removable.
//!
//! One build uses the shared cache at a time (a lock beside it): a hook of a
//! concurrent build could otherwise swap a file between this build's check and its
//! apt run. A build that finds the lock taken downloads into a private directory.

use super::apt_lists::{drop_lists, hex, trusted_digests, Unverifiable};
use super::progress::Progress;
use super::workdir::WorkDir;
use anyhow::{bail, Context, Result};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The cache root, `apt/` and `trees/` are the user's alone: 0700, created so or
/// tightened. Their owner must be the caller (root of kiln's namespace).
pub fn private_dirs(cache_dir: &Path) -> Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    for d in [
        cache_dir.to_path_buf(),
        cache_dir.join("apt"),
        cache_dir.join("trees"),
    ] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&d)
            .with_context(|| format!("creating {}", d.display()))?;
        let meta = std::fs::metadata(&d).with_context(|| format!("reading {}", d.display()))?;
        if meta.uid() != me {
            bail!("the image cache directory {} belongs to another user: give --image-cache a directory of your own", d.display());
        }
        if meta.mode() & 0o077 != 0 {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("making {} private (0700)", d.display()))?;
        }
    }
    Ok(())
}

/// What the index remembers of a proven file: any change to the file changes its ctime.
#[derive(Clone, Debug, PartialEq)]
struct Proven {
    size: u64,
    ino: u64,
    ctime: i64,
    ctime_nsec: i64,
    sha256: String,
}

impl Proven {
    fn of(meta: &std::fs::Metadata, sha256: String) -> Proven {
        Proven {
            size: meta.size(),
            ino: meta.ino(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
            sha256,
        }
    }

    fn unchanged(&self, meta: &std::fs::Metadata) -> bool {
        (self.size, self.ino, self.ctime, self.ctime_nsec)
            == (meta.size(), meta.ino(), meta.ctime(), meta.ctime_nsec())
    }
}

pub struct AptCache {
    /// The directory bound over /var/cache/apt/archives.
    dir: PathBuf,
    /// None: another build holds the shared cache; this one downloads privately.
    shared: Option<Shared>,
    /// The image root whose lists prove downloads, and kiln's scratch space.
    root: PathBuf,
    scratch: PathBuf,
    keyring: Option<PathBuf>,
    warned: bool,
    settled: bool,
}

struct Shared {
    _lock: File,
    index_path: PathBuf,
    index: BTreeMap<String, Proven>,
}

/// One sweep's outcome, for the progress line.
#[derive(Default)]
struct Tally {
    kept: usize,
    /// Of those kept, the ones hashed this time (new, or changed since proven).
    verified: usize,
    removed: usize,
    /// Why new files could not be verified, if they could not.
    unverifiable: Option<String>,
}

impl AptCache {
    /// Takes the shared cache `dir` (or, if another build has it, a private one in
    /// the build directory) and removes from it whatever is not as the index left it.
    /// Must run before anything binds the cache.
    pub fn open(
        cache_dir: &Path,
        dir: &Path,
        work: &WorkDir,
        keyring: Option<&str>,
        progress: &Progress,
    ) -> Result<AptCache> {
        private_dirs(cache_dir)?;
        let mut cache = AptCache {
            dir: dir.to_path_buf(),
            shared: None,
            root: work.root(),
            scratch: work.path.join("apt-verify"),
            keyring: keyring.map(PathBuf::from),
            warned: false,
            settled: false,
        };
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = dir.parent().unwrap_or(cache_dir);
        let lock_path = parent.join(format!("{name}.lock"));
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        // SAFETY: plain flock on an fd we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            cache.dir = work.path.join("apt-archives");
            make_bind_dir(&cache.dir)?;
            progress.say(&format!("package cache {} is in use by another build: this build downloads into its own, not kept", dir.display()));
            return Ok(cache);
        }
        make_bind_dir(dir)?;
        let index_path = parent.join(format!("{name}.verified.json"));
        let index = load_index(&index_path);
        cache.shared = Some(Shared {
            _lock: lock,
            index_path,
            index,
        });
        let t = Instant::now();
        let tally = cache.sweep(false)?;
        progress.say(&cache.line("checked", &tally, t));
        Ok(cache)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// After root.d: proves the bootstrap's downloads against the lists it left,
    /// then removes those lists: the base tree is cached, and lists are a snapshot of
    /// the archive that is stale by the next build (mmdebstrap's default too).
    pub fn after_bootstrap(&mut self, progress: &Progress) -> Result<()> {
        if self.shared.is_some() {
            let t = Instant::now();
            let tally = self.sweep(true)?;
            progress.say(&self.line("verified", &tally, t));
        }
        drop_lists(&self.root).context("removing the package lists root.d left in the image")
    }

    /// After the last phase that binds the cache: proves what the build added, and
    /// lets the next build have the cache while this one assembles its image.
    pub fn settle(&mut self, progress: &Progress) -> Result<()> {
        self.settled = true;
        if self.shared.is_some() {
            let t = Instant::now();
            let tally = self.sweep(true)?;
            progress.say(&self.line("verified", &tally, t));
        }
        self.shared = None;
        Ok(())
    }

    fn line(&mut self, verb: &str, t: &Tally, start: Instant) -> String {
        let mut s = format!(
            "package cache {verb}: {} packages kept ({} hashed), {} entries removed ({:.2} s)",
            t.kept,
            t.verified,
            t.removed,
            start.elapsed().as_secs_f64()
        );
        if let Some(why) = &t.unverifiable {
            if !self.warned {
                s.push_str(&format!(
                    "\n  warning: new downloads could not be verified and were not kept: {why}"
                ));
                self.warned = true;
            }
        }
        s
    }

    /// Keeps what the index vouches for (hashing only files whose inode or ctime
    /// moved), with `prove` also new `.deb`s whose hash the image's signed lists
    /// give for their name; removes everything else.
    fn sweep(&mut self, prove: bool) -> Result<Tally> {
        let Some(shared) = &mut self.shared else {
            return Ok(Tally::default());
        };
        let dir = &self.dir;
        // The bind's own inode is the hooks' to chmod: put it back (apt's `_apt` must traverse it).
        std::os::unix::fs::lchown(dir, Some(0), Some(0))
            .with_context(|| format!("owning {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        let mut tally = Tally::default();
        let mut index = BTreeMap::new();
        // Known names whose file changed (or was copied): their digest is in the index.
        let mut known: Vec<(String, (String, u64))> = Vec::new();
        let mut unknown = Vec::new();
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        for e in entries {
            let e = e?;
            let path = e.path();
            let meta = e
                .metadata()
                .with_context(|| format!("reading {}", path.display()))?;
            let name = e
                .file_name()
                .into_string()
                .ok()
                .filter(|n| n.ends_with(".deb"));
            match name {
                Some(name) if plain_file(&meta) => match shared.index.get(&name) {
                    Some(p)
                        if p.unchanged(&meta)
                            && meta.uid() == 0
                            && meta.gid() == 0
                            && meta.mode() & 0o7777 == 0o644 =>
                    {
                        index.insert(name, p.clone());
                        tally.kept += 1;
                    }
                    Some(p) => known.push((name, (p.sha256.clone(), p.size))),
                    None if prove => unknown.push(name),
                    None => {
                        remove(&path, &meta)?;
                        tally.removed += 1;
                    }
                },
                _ => {
                    remove(&path, &meta)?;
                    tally.removed += 1;
                }
            }
        }
        let mut digests = HashMap::new();
        if !unknown.is_empty() {
            let wanted: HashSet<&str> = unknown.iter().map(String::as_str).collect();
            let trusted =
                trusted_digests(&self.root, &wanted, self.keyring.as_deref(), &self.scratch);
            let _ = std::fs::remove_dir_all(&self.scratch);
            match trusted {
                Ok(d) => digests = d,
                Err(Unverifiable::Quietly) => {}
                Err(Unverifiable::Because(why)) => tally.unverifiable = Some(why),
            }
        }
        let unknown = unknown.into_iter().map(|n| {
            let want = digests.remove(&n);
            (n, want)
        });
        for (name, want) in known.into_iter().map(|(n, w)| (n, Some(w))).chain(unknown) {
            let path = dir.join(&name);
            match want.map(|w| prove_file(&path, &w)).transpose()? {
                Some(Some(p)) => {
                    index.insert(name, p);
                    tally.verified += 1;
                    tally.kept += 1;
                }
                _ => {
                    std::fs::remove_file(&path)
                        .with_context(|| format!("removing {}", path.display()))?;
                    tally.removed += 1;
                }
            }
        }
        if index != shared.index || !shared.index_path.exists() {
            save_index(&shared.index_path, &index)?;
            shared.index = index;
        }
        Ok(tally)
    }
}

/// A failed or interrupted build still proves (or, interrupted, at least purges)
/// what its hooks left, so the next build need not throw it all away.
impl Drop for AptCache {
    fn drop(&mut self) {
        if self.settled || self.shared.is_none() {
            return;
        }
        let prove = !crate::sandbox::signals::interrupted();
        let t = Instant::now();
        match self.sweep(prove) {
            Ok(tally) => eprintln!(
                "kiln: {}",
                self.line(if prove { "verified" } else { "checked" }, &tally, t)
            ),
            Err(e) => eprintln!(
                "kiln: warning: tidying the package cache {}: {e:#}",
                self.dir.display()
            ),
        }
    }
}

/// The bound directory: 0755, since apt's `_apt` (a subordinate id) must traverse
/// the bind's root to reach `partial/`; its parent `apt/` (0700) keeps others out.
fn make_bind_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    // Whatever the umask.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("setting the mode of {}", dir.display()))
}

/// Regular, not setuid/setgid/sticky, not executable, one link: a `.deb` apt wrote.
fn plain_file(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_file() && meta.mode() & 0o7111 == 0 && meta.nlink() == 1
}

fn remove(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    let r = if meta.file_type().is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    r.with_context(|| format!("removing {} from the package cache", path.display()))
}

/// Hashes the file through one descriptor and, if it is `want`, makes it kiln's
/// (0:0, 0644) and returns what the index keeps.
fn prove_file(path: &Path, want: &(String, u64)) -> Result<Option<Proven>> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: a descriptor we just opened and own.
    let mut f = unsafe { File::from_raw_fd(fd) };
    let meta = f.metadata()?;
    if !plain_file(&meta) || meta.size() != want.1 {
        return Ok(None);
    }
    if sha256_hex(&mut f)? != want.0 {
        return Ok(None);
    }
    nix::unistd::fchown(
        f.as_raw_fd(),
        Some(nix::unistd::Uid::from_raw(0)),
        Some(nix::unistd::Gid::from_raw(0)),
    )
    .with_context(|| format!("owning {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    // After the chown and chmod: those change the ctime the index must match.
    Ok(Some(Proven::of(&f.metadata()?, want.0.clone())))
}

/// SHA-256 of everything `r` yields, in hex: for packages and cached trees alike.
pub(crate) fn sha256_hex(r: &mut impl Read) -> Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn load_index(path: &Path) -> BTreeMap<String, Proven> {
    let mut out = BTreeMap::new();
    // Unreadable or from another kiln: everything is simply proven again.
    let Ok(text) = std::fs::read_to_string(path) else {
        return out;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return out;
    };
    let Some(files) = v.get("files").and_then(|f| f.as_object()) else {
        return out;
    };
    for (name, e) in files {
        let num = |k: &str| e.get(k).and_then(|x| x.as_i64());
        let (Some(size), Some(ino), Some(ctime), Some(ctime_nsec), Some(sha)) = (
            num("size"),
            num("ino"),
            num("ctime"),
            num("ctime_nsec"),
            e.get("sha256").and_then(|x| x.as_str()),
        ) else {
            continue;
        };
        out.insert(
            name.clone(),
            Proven {
                size: size as u64,
                ino: ino as u64,
                ctime,
                ctime_nsec,
                sha256: sha.to_string(),
            },
        );
    }
    out
}

fn save_index(path: &Path, index: &BTreeMap<String, Proven>) -> Result<()> {
    let files: serde_json::Map<String, serde_json::Value> = index
        .iter()
        .map(|(n, p)| {
            let v = serde_json::json!({ "size": p.size, "ino": p.ino, "ctime": p.ctime, "ctime_nsec": p.ctime_nsec, "sha256": p.sha256 });
            (n.clone(), v)
        })
        .collect();
    let text = serde_json::json!({ "kiln": env!("CARGO_PKG_VERSION"), "files": files }).to_string();
    let tmp = path.with_extension(format!("json.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        std::fs::rename(&tmp, path)
    };
    write().with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_single_link_files_count() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.deb");
        std::fs::write(&p, b"x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(plain_file(&std::fs::symlink_metadata(&p).unwrap()));
        for mode in [0o4644, 0o2644, 0o755, 0o1644] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(
                !plain_file(&std::fs::symlink_metadata(&p).unwrap()),
                "{mode:o}"
            );
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::hard_link(&p, d.path().join("b.deb")).unwrap();
        assert!(!plain_file(&std::fs::symlink_metadata(&p).unwrap()));
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("c.deb")).unwrap();
        assert!(!plain_file(
            &std::fs::symlink_metadata(d.path().join("c.deb")).unwrap()
        ));
    }

    #[test]
    fn index_survives_a_round_trip_and_a_changed_file_is_not_unchanged() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("x.deb");
        std::fs::write(&f, b"genuine").unwrap();
        let meta = std::fs::metadata(&f).unwrap();
        let mut index = BTreeMap::new();
        index.insert("x.deb".to_string(), Proven::of(&meta, "ab".into()));
        let path = d.path().join("i.verified.json");
        save_index(&path, &index).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let back = load_index(&path);
        assert_eq!(back, index);
        assert!(back["x.deb"].unchanged(&meta));
        // Same size, and the mtime put back: the ctime still moves.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, b"poison!").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(meta.modified().unwrap())
            .unwrap();
        assert!(!back["x.deb"].unchanged(&std::fs::metadata(&f).unwrap()));
        std::fs::write(&path, "not json").unwrap();
        assert!(load_index(&path).is_empty());
    }
}
