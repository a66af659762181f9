//! The base-tree cache (docs/architecture.md §8): the tree after root.d, stored as a zstd tar
//! under the image cache, keyed by a hash of everything that made it.
//!
//! An archive, not a directory: the files inside belong to subordinate ids, and a
//! directory of them could not be removed by the user with `rm -rf ~/.cache`.
//! Entries are written to a temporary name and renamed; a manifest holds the
//! archive's size and SHA-256, checked before every restore.

use super::tools::{self, Tools};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub struct TreeCache {
    dir: PathBuf,
}

pub enum Lookup {
    Hit(PathBuf),
    Miss,
    /// Present but failed verification: discarded, with the reason.
    Corrupt(String),
}

impl TreeCache {
    pub fn new(cache_dir: &Path) -> TreeCache {
        TreeCache {
            dir: cache_dir.join("trees"),
        }
    }

    fn archive(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.tar.zst"))
    }

    fn manifest(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// Held while building an entry so two builds of one key don't both write it.
    pub fn lock(&self, key: &str) -> Result<std::fs::File> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let path = self.dir.join(format!("{key}.lock"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: plain flock on an fd we own.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) } != 0 {
            bail!("locking {}", path.display());
        }
        Ok(f)
    }

    pub fn lookup(&self, key: &str) -> Result<Lookup> {
        let (archive, manifest) = (self.archive(key), self.manifest(key));
        if !manifest.exists() {
            return Ok(Lookup::Miss);
        }
        let verdict = (|| -> Result<Option<String>> {
            let text = std::fs::read_to_string(&manifest)?;
            let m: serde_json::Value =
                serde_json::from_str(&text).context("manifest is not JSON")?;
            let want = m["sha256"]
                .as_str()
                .context("manifest has no sha256")?
                .to_string();
            let size = m["size"].as_u64().context("manifest has no size")?;
            let meta = match std::fs::metadata(&archive) {
                Ok(m) => m,
                Err(_) => return Ok(Some("archive missing".into())),
            };
            if meta.len() != size {
                return Ok(Some(format!(
                    "archive is {} bytes, manifest says {size}",
                    meta.len()
                )));
            }
            let got = sha256_file(&archive)?;
            Ok((got != want).then(|| "archive checksum mismatch".to_string()))
        })();
        match verdict {
            Ok(None) => Ok(Lookup::Hit(archive)),
            Ok(Some(why)) => {
                self.discard(key);
                Ok(Lookup::Corrupt(why))
            }
            Err(e) => {
                self.discard(key);
                Ok(Lookup::Corrupt(format!("{e:#}")))
            }
        }
    }

    pub fn discard(&self, key: &str) {
        let _ = std::fs::remove_file(self.manifest(key));
        let _ = std::fs::remove_file(self.archive(key));
    }

    /// Archives `tree` under `key`. Must run inside the namespace (the tree's
    /// files belong to subordinate ids and tar records them as the image sees them).
    pub fn store(&self, key: &str, tree: &Path, tools: &Tools) -> Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self
            .dir
            .join(format!(".{key}.tar.zst.{}", std::process::id()));
        let result = (|| -> Result<()> {
            let mut cmd = tools.command("tar")?;
            cmd.args([
                "--numeric-owner",
                "--sort=name",
                "--xattrs",
                "--xattrs-include=*",
                "--acls",
                "-I",
            ])
            .arg(format!("{} -T0 -3 -q", tools.path("zstd")?.display()))
            .arg("-cf")
            .arg(&tmp)
            .arg("-C")
            .arg(tree)
            .arg(".");
            tools::run(&mut cmd)?;
            let size = std::fs::metadata(&tmp)?.len();
            let sha = sha256_file(&tmp)?;
            std::fs::rename(&tmp, self.archive(key))?;
            let manifest = serde_json::json!({ "sha256": sha, "size": size, "kiln": env!("CARGO_PKG_VERSION") });
            let mtmp = self.dir.join(format!(".{key}.json.{}", std::process::id()));
            std::fs::write(&mtmp, manifest.to_string())?;
            std::fs::rename(&mtmp, self.manifest(key))?;
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.context("storing the base tree in the cache")
    }

    /// Every entry: (key, archive size, seconds since last use).
    pub fn list(&self) -> Result<Vec<(String, u64, u64)>> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.dir.display())),
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(key) = name
                .strip_suffix(".tar.zst")
                .filter(|k| !k.starts_with('.'))
            else {
                continue;
            };
            let meta = e.metadata()?;
            // Restores touch the manifest: its mtime is the entry's last use.
            let used = std::fs::metadata(self.manifest(key))
                .and_then(|m| m.modified())
                .or_else(|_| meta.modified())?;
            let age = used.elapsed().map(|d| d.as_secs()).unwrap_or(0);
            out.push((key.to_string(), meta.len(), age));
        }
        out.sort();
        Ok(out)
    }

    pub fn restore(&self, archive: &Path, tree: &Path, tools: &Tools) -> Result<()> {
        std::fs::create_dir_all(tree)?;
        let mut cmd = tools.command("tar")?;
        cmd.args([
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--acls",
            "-p",
            "-I",
        ])
        .arg(format!("{} -q", tools.path("zstd")?.display()))
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(tree);
        tools::run(&mut cmd).context("restoring the base tree from the cache")?;
        // Record the use, for --cache-prune.
        if let Some(key) = archive
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".tar.zst"))
        {
            if let Ok(f) = std::fs::File::options()
                .append(true)
                .open(self.manifest(key))
            {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
        }
        Ok(())
    }
}

fn sha256_file(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p).with_context(|| format!("reading {}", p.display()))?;
    super::apt_cache::sha256_hex(&mut f)
}
