//! The package download cache (DESIGN §8, §10.6). It is bound writable over
//! /var/cache/apt/archives for hooks and maintainer scripts, which are untrusted;
//! apt later trusts any file there whose size matches. So a build keeps only what
//! it can prove genuine: a regular `.deb` whose SHA-256 is the one a package list
//! signed by a trusted key gives for that file name. Everything else is deleted.
//!
//! A kiln-owned index beside the bound directory records each proven file's
//! SHA-256 and its (size, inode, ctime), so an unchanged file needs no re-hash: a
//! hook can rewrite a file and restore its mtime, but not its ctime. A file that
//! changed is hashed again and kept only if it still has the proven digest. All of this runs inside kiln's
//! namespace, where the subordinate ids apt leaves behind (`_apt`) are removable.
//!
//! One build uses the shared cache at a time (a lock beside it): a hook of a
//! concurrent build could otherwise swap a file between this build's check and its
//! apt run. A build that finds the lock taken downloads into a private directory.

use super::progress::Progress;
use super::workdir::WorkDir;
use anyhow::{bail, Context, Result};
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where apt keeps its lists inside the image.
const LISTS: &str = "var/lib/apt/lists";
/// Keyrings apt itself trusts on a Debian host, when DIB_APT_KEYRING is not set.
const HOST_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const HOST_TRUSTED_PARTS: &str = "/etc/apt/trusted.gpg.d";
/// Far above any real InRelease (Debian's is ~150 KiB) or Packages (~50 MiB).
const MAX_RELEASE: u64 = 16 << 20;
const MAX_PACKAGES: u64 = 1 << 30;

/// The cache root, `apt/` and `trees/` are the user's alone: 0700, created so or
/// tightened. Their owner must be the caller (root of kiln's namespace).
pub fn private_dirs(cache_dir: &Path) -> Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    for d in [cache_dir.to_path_buf(), cache_dir.join("apt"), cache_dir.join("trees")] {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&d).with_context(|| format!("creating {}", d.display()))?;
        let meta = std::fs::metadata(&d).with_context(|| format!("reading {}", d.display()))?;
        if meta.uid() != me {
            bail!("the image cache directory {} belongs to another user: give --image-cache a directory of your own", d.display());
        }
        if meta.mode() & 0o077 != 0 {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).with_context(|| format!("making {} private (0700)", d.display()))?;
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
        Proven { size: meta.size(), ino: meta.ino(), ctime: meta.ctime(), ctime_nsec: meta.ctime_nsec(), sha256 }
    }

    fn unchanged(&self, meta: &std::fs::Metadata) -> bool {
        (self.size, self.ino, self.ctime, self.ctime_nsec) == (meta.size(), meta.ino(), meta.ctime(), meta.ctime_nsec())
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
    pub fn open(cache_dir: &Path, dir: &Path, work: &WorkDir, keyring: Option<&str>, progress: &Progress) -> Result<AptCache> {
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
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
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
        cache.shared = Some(Shared { _lock: lock, index_path, index });
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
                s.push_str(&format!("\n  warning: new downloads could not be verified and were not kept: {why}"));
                self.warned = true;
            }
        }
        s
    }

    /// Keeps what the index vouches for (hashing only files whose inode or ctime
    /// moved), with `prove` also new `.deb`s whose hash the image's signed lists
    /// give for their name; removes everything else.
    fn sweep(&mut self, prove: bool) -> Result<Tally> {
        let Some(shared) = &mut self.shared else { return Ok(Tally::default()) };
        let dir = &self.dir;
        // The bind's own inode is the hooks' to chmod: put it back (apt's `_apt` must traverse it).
        std::os::unix::fs::lchown(dir, Some(0), Some(0)).with_context(|| format!("owning {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        let mut tally = Tally::default();
        let mut index = BTreeMap::new();
        // Known names whose file changed (or was copied): their digest is in the index.
        let mut known: Vec<(String, (String, u64))> = Vec::new();
        let mut unknown = Vec::new();
        let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        for e in entries {
            let e = e?;
            let path = e.path();
            let meta = e.metadata().with_context(|| format!("reading {}", path.display()))?;
            let name = e.file_name().into_string().ok().filter(|n| n.ends_with(".deb"));
            match name {
                Some(name) if plain_file(&meta) => match shared.index.get(&name) {
                    Some(p) if p.unchanged(&meta) && meta.uid() == 0 && meta.gid() == 0 && meta.mode() & 0o7777 == 0o644 => {
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
            let trusted = trusted_digests(&self.root, &wanted, self.keyring.as_deref(), &self.scratch);
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
                    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
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
            Ok(tally) => eprintln!("kiln: {}", self.line(if prove { "verified" } else { "checked" }, &tally, t)),
            Err(e) => eprintln!("kiln: warning: tidying the package cache {}: {e:#}", self.dir.display()),
        }
    }
}

/// The bound directory: 0755, since apt's `_apt` (a subordinate id) must traverse
/// the bind's root to reach `partial/`; its parent `apt/` (0700) keeps others out.
fn make_bind_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Whatever the umask.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).with_context(|| format!("setting the mode of {}", dir.display()))
}

/// Regular, not setuid/setgid/sticky, not executable, one link: a `.deb` apt wrote.
fn plain_file(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_file() && meta.mode() & 0o7111 == 0 && meta.nlink() == 1
}

fn remove(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    let r = if meta.file_type().is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
    r.with_context(|| format!("removing {} from the package cache", path.display()))
}

/// Hashes the file through one descriptor and, if it is `want`, makes it kiln's
/// (0:0, 0644) and returns what the index keeps.
fn prove_file(path: &Path, want: &(String, u64)) -> Result<Option<Proven>> {
    let fd = nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC, Mode::empty())
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
    nix::unistd::fchown(f.as_raw_fd(), Some(nix::unistd::Uid::from_raw(0)), Some(nix::unistd::Gid::from_raw(0)))
        .with_context(|| format!("owning {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    // After the chown and chmod: those change the ctime the index must match.
    Ok(Some(Proven::of(&f.metadata()?, want.0.clone())))
}

fn sha256_hex(r: &mut impl Read) -> Result<String> {
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn load_index(path: &Path) -> BTreeMap<String, Proven> {
    let mut out = BTreeMap::new();
    // Unreadable or from another kiln: everything is simply proven again.
    let Ok(text) = std::fs::read_to_string(path) else { return out };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return out };
    let Some(files) = v.get("files").and_then(|f| f.as_object()) else { return out };
    for (name, e) in files {
        let num = |k: &str| e.get(k).and_then(|x| x.as_i64());
        let (Some(size), Some(ino), Some(ctime), Some(ctime_nsec), Some(sha)) =
            (num("size"), num("ino"), num("ctime"), num("ctime_nsec"), e.get("sha256").and_then(|x| x.as_str()))
        else {
            continue;
        };
        out.insert(name.clone(), Proven { size: size as u64, ino: ino as u64, ctime, ctime_nsec, sha256: sha.to_string() });
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
        let mut f = std::fs::OpenOptions::new().create_new(true).write(true).mode(0o600).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        std::fs::rename(&tmp, path)
    };
    write().with_context(|| format!("writing {}", path.display()))
}

enum Unverifiable {
    /// Nothing to verify against (the image has no lists): not worth a warning.
    Quietly,
    Because(String),
}

impl From<anyhow::Error> for Unverifiable {
    fn from(e: anyhow::Error) -> Unverifiable {
        Unverifiable::Because(format!("{e:#}"))
    }
}

/// For each `wanted` archive file name, the SHA-256 and size that a package list of
/// the image gives, counting only lists whose hash an InRelease signed by a trusted
/// key vouches for.
fn trusted_digests(root: &Path, wanted: &HashSet<&str>, keyring: Option<&Path>, scratch: &Path) -> Result<HashMap<String, (String, u64)>, Unverifiable> {
    let tree = Tree::open(root).map_err(|_| Unverifiable::Quietly)?;
    let names = match tree.list(LISTS) {
        Ok(n) => n,
        Err(_) => return Err(Unverifiable::Quietly),
    };
    let releases: Vec<&String> = names.iter().filter(|n| n.ends_with("_InRelease")).collect();
    let packages: Vec<&String> = names.iter().filter(|n| n.ends_with("_Packages")).collect();
    if releases.is_empty() || packages.is_empty() {
        return Err(Unverifiable::Quietly);
    }
    let gpgv = which::which("gpgv").map_err(|_| Unverifiable::Because("gpgv is not installed (apt-get install gpgv)".into()))?;
    let keyrings = keyrings(keyring)?;
    std::fs::DirBuilder::new().mode(0o700).create(scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let mut vouched: HashSet<(String, u64)> = HashSet::new();
    for (i, name) in releases.iter().enumerate() {
        // A list the image planted as something else proves nothing; the others still may.
        let Ok(bytes) = tree.read(&format!("{LISTS}/{name}"), MAX_RELEASE) else { continue };
        if let Some(text) = signed_text(&gpgv, &keyrings, scratch, i, &bytes)? {
            for (sha, size, path) in release_sha256(&text) {
                if path.ends_with("/Packages") {
                    vouched.insert((sha, size));
                }
            }
        }
    }
    if vouched.is_empty() {
        return Err(Unverifiable::Because(format!(
            "no package list in the image is signed by a trusted key ({})",
            keyrings.iter().map(|k| k.display().to_string()).collect::<Vec<_>>().join(", ")
        )));
    }
    let mut out = HashMap::new();
    for name in packages {
        let Ok(bytes) = tree.read(&format!("{LISTS}/{name}"), MAX_PACKAGES) else { continue };
        let sha = hex(&Sha256::digest(&bytes));
        if !vouched.contains(&(sha, bytes.len() as u64)) {
            continue;
        }
        let Ok(text) = std::str::from_utf8(&bytes) else { continue };
        out.extend(packages_digests(text, wanted));
    }
    Ok(out)
}

/// DIB_APT_KEYRING (a keyring file, or a directory of them) replaces the host's
/// Debian keyrings, as it does for the bootstrap.
fn keyrings(configured: Option<&Path>) -> Result<Vec<PathBuf>, Unverifiable> {
    let mut out = Vec::new();
    let gpg_files = |dir: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "gpg") && p.is_file()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    match configured {
        Some(k) if k.is_dir() => out.extend(gpg_files(k)),
        Some(k) if k.is_file() => out.push(k.to_path_buf()),
        Some(k) => return Err(Unverifiable::Because(format!("DIB_APT_KEYRING {} does not exist", k.display()))),
        None => {
            let host = Path::new(HOST_KEYRING);
            if host.is_file() {
                out.push(host.to_path_buf());
            }
            out.extend(gpg_files(Path::new(HOST_TRUSTED_PARTS)));
        }
    }
    if out.is_empty() {
        return Err(Unverifiable::Because(match configured {
            Some(k) => format!("DIB_APT_KEYRING {} holds no *.gpg keyring", k.display()),
            None => format!("no trusted keyring: {HOST_KEYRING} is missing (apt-get install debian-archive-keyring)"),
        }));
    }
    Ok(out)
}

/// The text an InRelease signs, if a trusted key signed it and no signature is bad
/// (as apt: signatures by unknown keys are ignored). Only gpgv's output is used,
/// never the file's unsigned parts.
fn signed_text(gpgv: &Path, keyrings: &[PathBuf], scratch: &Path, n: usize, bytes: &[u8]) -> Result<Option<String>> {
    let input = scratch.join(format!("InRelease.{n}"));
    let output = scratch.join(format!("signed.{n}"));
    std::fs::write(&input, bytes).with_context(|| format!("writing {}", input.display()))?;
    let mut cmd = std::process::Command::new(gpgv);
    cmd.arg("--homedir").arg(scratch).args(["--status-fd", "1", "--output"]).arg(&output);
    for k in keyrings {
        cmd.arg("--keyring").arg(k);
    }
    let out = cmd.arg(&input).stdin(std::process::Stdio::null()).output().with_context(|| format!("running {}", gpgv.display()))?;
    let status = String::from_utf8_lossy(&out.stdout);
    let has = |word: &str| status.lines().any(|l| l.split_whitespace().nth(1) == Some(word));
    if !has("GOODSIG") || has("BADSIG") {
        return Ok(None);
    }
    let text = std::fs::read(&output).with_context(|| format!("reading {}", output.display()))?;
    Ok(String::from_utf8(text).ok())
}

/// The SHA256 section of a Release file: (hex digest, size, path).
pub fn release_sha256(text: &str) -> Vec<(String, u64, String)> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if !line.starts_with([' ', '\t']) {
            inside = line.trim_end() == "SHA256:";
            continue;
        }
        if !inside {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [sha, size, path] = f[..] {
            if let Ok(size) = size.parse() {
                if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                    out.push((sha.to_ascii_lowercase(), size, path.to_string()));
                }
            }
        }
    }
    out
}

/// From a Packages list: archive file name → (SHA-256, size), for names in `wanted`.
pub fn packages_digests(text: &str, wanted: &HashSet<&str>) -> HashMap<String, (String, u64)> {
    let mut out = HashMap::new();
    for stanza in text.split("\n\n") {
        let (mut pkg, mut ver, mut arch, mut file, mut size, mut sha) = (None, None, None, None, None, None);
        for line in stanza.lines() {
            let Some((k, v)) = line.split_once(':') else { continue };
            if line.starts_with([' ', '\t']) {
                continue;
            }
            let v = v.trim();
            match k {
                "Package" => pkg = Some(v),
                "Version" => ver = Some(v),
                "Architecture" => arch = Some(v),
                "Filename" => file = Some(v),
                "Size" => size = v.parse::<u64>().ok(),
                "SHA256" => sha = Some(v),
                _ => {}
            }
        }
        if let (Some(p), Some(v), Some(a), Some(f), Some(s), Some(h)) = (pkg, ver, arch, file, size, sha) {
            let name = archive_name(p, v, a, f);
            if wanted.contains(name.as_str()) {
                out.insert(name, (h.to_ascii_lowercase(), s));
            }
        }
    }
    out
}

/// The name apt stores a downloaded package under: `PKG_VERSION_ARCH.EXT`, each
/// part escaped as apt's QuoteString does (`:` in an epoch becomes `%3a`).
pub fn archive_name(package: &str, version: &str, arch: &str, filename: &str) -> String {
    let ext = filename.rsplit_once('.').map(|(_, e)| e).unwrap_or(filename);
    format!("{}_{}_{}.{ext}", quote(package, "_:"), quote(version, "_:"), quote(arch, "_:."))
}

fn quote(s: &str, bad: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if bad.as_bytes().contains(&b) || b == b'%' || b <= 0x20 || b >= 0x7f {
            out.push_str(&format!("%{b:02x}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

/// The image root, opened once: every path below is resolved inside it by the
/// kernel (openat2 RESOLVE_IN_ROOT), so a symlink in the image cannot lead out.
struct Tree {
    fd: OwnedFd,
}

impl Tree {
    fn open(root: &Path) -> Result<Tree> {
        let fd = nix::fcntl::open(root, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .with_context(|| format!("opening {}", root.display()))?;
        // SAFETY: a descriptor we just opened and own.
        Ok(Tree { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    fn open_in(&self, rel: &str, flags: OFlag) -> Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = nix::fcntl::openat2(self.fd.as_raw_fd(), rel, how).with_context(|| format!("opening /{rel} in the image"))?;
        // SAFETY: a descriptor we just opened and own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn list(&self, rel: &str) -> Result<Vec<String>> {
        let fd = self.open_in(rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let mut dir = nix::dir::Dir::from_fd(fd_into_raw(fd))?;
        let mut names: Vec<String> = dir.iter().flatten().filter_map(|e| e.file_name().to_str().ok().map(str::to_string)).collect();
        names.sort();
        Ok(names)
    }

    /// A regular file's bytes, at most `limit` of them.
    fn read(&self, rel: &str, limit: u64) -> Result<Vec<u8>> {
        let fd = self.open_in(rel, OFlag::O_RDONLY)?;
        let f = File::from(fd);
        let meta = f.metadata()?;
        if !meta.file_type().is_file() {
            bail!("/{rel} in the image is not a regular file");
        }
        if meta.len() > limit {
            bail!("/{rel} in the image is {} bytes, more than a package list can be", meta.len());
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        f.take(limit + 1).read_to_end(&mut bytes)?;
        Ok(bytes)
    }
}

fn fd_into_raw(fd: OwnedFd) -> std::os::fd::RawFd {
    std::os::fd::IntoRawFd::into_raw_fd(fd)
}

/// Unlinks the files in the image's lists directory (not `lock`, not the
/// directories), through a descriptor of it: nothing outside the image is touched.
fn drop_lists(root: &Path) -> Result<()> {
    let tree = Tree::open(root)?;
    let Ok(names) = tree.list(LISTS) else { return Ok(()) };
    let dir = tree.open_in(LISTS, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
    for name in names.iter().filter(|n| !matches!(n.as_str(), "." | ".." | "lock")) {
        match nix::unistd::unlinkat(Some(dir.as_raw_fd()), name.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(nix::errno::Errno::EISDIR) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => bail!("unlinking /{LISTS}/{name}: {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELEASE: &str = "Origin: Debian\nCodename: bookworm\nMD5Sum:\n 0ed6d4c8891eb86358b94bb35d9e4da4  1484322 contrib/Contents-all\n\
SHA256:\n 515e692f2c4121c6fcec444ef100cc18f79a991910615f3a88c8b7becfc94d2f 50060337 main/binary-amd64/Packages\n \
9E0B5AABB2465B3D2E7A7FE27F9913846277833F7A2826E7767ACCCFF5B588C5  8790396 main/binary-amd64/Packages.xz\n \
nothex 12 main/x\nSHA512:\n aa 1 main/binary-amd64/Packages\n";

    #[test]
    fn release_sha256_section_only_with_lowercase_digests() {
        let got = release_sha256(RELEASE);
        assert_eq!(
            got,
            vec![
                ("515e692f2c4121c6fcec444ef100cc18f79a991910615f3a88c8b7becfc94d2f".to_string(), 50060337, "main/binary-amd64/Packages".to_string()),
                ("9e0b5aabb2465b3d2e7a7fe27f9913846277833f7a2826e7767acccff5b588c5".to_string(), 8790396, "main/binary-amd64/Packages.xz".to_string()),
            ]
        );
        assert!(release_sha256("Origin: x\n").is_empty());
    }

    const PACKAGES: &str = "Package: bsdutils\nSource: util-linux (2.38.1-5+deb12u3)\nVersion: 1:2.38.1-5+deb12u3\nArchitecture: amd64\n\
Description: basic utilities\n Filename: pool/fake_1_amd64.deb\nFilename: pool/main/u/util-linux/bsdutils_2.38.1-5+deb12u3_amd64.deb\n\
Size: 94412\nSHA256: ABCDEF0123\n\nPackage: adduser\nVersion: 3.134\nArchitecture: all\nFilename: pool/main/a/adduser/adduser_3.134_all.deb\n\
Size: 183272\nSHA256: 0011\n\nPackage: nosize\nVersion: 1\nArchitecture: all\nFilename: pool/n.deb\nSHA256: 22\n";

    #[test]
    fn packages_stanzas_give_apt_names_and_digests() {
        let wanted: HashSet<&str> = ["bsdutils_1%3a2.38.1-5+deb12u3_amd64.deb", "adduser_3.134_all.deb", "nosize_1_all.deb"].into();
        let got = packages_digests(PACKAGES, &wanted);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got["bsdutils_1%3a2.38.1-5+deb12u3_amd64.deb"], ("abcdef0123".to_string(), 94412));
        assert_eq!(got["adduser_3.134_all.deb"], ("0011".to_string(), 183272));
        let none: HashSet<&str> = ["other_1_all.deb"].into();
        assert!(packages_digests(PACKAGES, &none).is_empty());
    }

    #[test]
    fn archive_names_are_quoted_as_apt_quotes_them() {
        assert_eq!(archive_name("zlib1g", "1:1.2.13.dfsg-1", "amd64", "pool/main/z/zlib/zlib1g_1.2.13.dfsg-1_amd64.deb"), "zlib1g_1%3a1.2.13.dfsg-1_amd64.deb");
        assert_eq!(archive_name("a_b", "1.0 x%", "i.386", "p/a.udeb"), "a%5fb_1.0%20x%25_i%2e386.udeb");
        assert_eq!(archive_name("tzdata", "2026b-0+deb12u1", "all", "tzdata_2026b-0+deb12u1_all.deb"), "tzdata_2026b-0+deb12u1_all.deb");
    }

    #[test]
    fn only_plain_single_link_files_count() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.deb");
        std::fs::write(&p, b"x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(plain_file(&std::fs::symlink_metadata(&p).unwrap()));
        for mode in [0o4644, 0o2644, 0o755, 0o1644] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(!plain_file(&std::fs::symlink_metadata(&p).unwrap()), "{mode:o}");
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::hard_link(&p, d.path().join("b.deb")).unwrap();
        assert!(!plain_file(&std::fs::symlink_metadata(&p).unwrap()));
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("c.deb")).unwrap();
        assert!(!plain_file(&std::fs::symlink_metadata(d.path().join("c.deb")).unwrap()));
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
        std::fs::File::options().write(true).open(&f).unwrap().set_modified(meta.modified().unwrap()).unwrap();
        assert!(!back["x.deb"].unchanged(&std::fs::metadata(&f).unwrap()));
        std::fs::write(&path, "not json").unwrap();
        assert!(load_index(&path).is_empty());
    }

    #[test]
    fn tree_reads_never_leave_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join(LISTS)).unwrap();
        let outside = d.path().join("secret");
        std::fs::write(&outside, b"host file").unwrap();
        std::fs::write(root.join(LISTS).join("a_InRelease"), b"inside").unwrap();
        std::os::unix::fs::symlink(&outside, root.join(LISTS).join("b_InRelease")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("var/lib/apt/up")).unwrap();
        let tree = Tree::open(&root).unwrap();
        assert_eq!(tree.read(&format!("{LISTS}/a_InRelease"), 100).unwrap(), b"inside");
        assert!(tree.read(&format!("{LISTS}/b_InRelease"), 100).is_err(), "a symlinked list is refused");
        assert!(tree.read("var/lib/apt/up/secret", 100).is_err(), "`..` stops at the image root");
        assert!(tree.read(&format!("{LISTS}/a_InRelease"), 3).is_err(), "over the limit");
        assert!(tree.read(LISTS, 100).is_err(), "a directory is not a list");
        assert_eq!(tree.list(LISTS).unwrap().into_iter().filter(|n| !n.starts_with('.')).collect::<Vec<_>>(), ["a_InRelease", "b_InRelease"]);
        drop_lists(&root).unwrap();
        assert!(std::fs::read_dir(root.join(LISTS)).unwrap().next().is_none());
        assert!(outside.exists(), "unlinking a symlink leaves its target");
        // An absolute link in a directory component resolves inside the root.
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/x_InRelease"), b"image's own").unwrap();
        std::fs::remove_dir(root.join(LISTS)).unwrap();
        std::os::unix::fs::symlink("/etc", root.join(LISTS)).unwrap();
        assert_eq!(tree.read(&format!("{LISTS}/x_InRelease"), 100).unwrap(), b"image's own");
        // The lists directory itself must be a directory, not a link elsewhere.
        assert!(tree.list(LISTS).is_err());
        drop_lists(&root).unwrap();
        assert!(root.join("etc/x_InRelease").exists());
    }
}
